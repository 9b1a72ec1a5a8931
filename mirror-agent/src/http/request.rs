//! Request framing: a client byte stream in, [`super::Request`]s out.
