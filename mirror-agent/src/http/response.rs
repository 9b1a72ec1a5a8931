//! Response framing: a server byte stream in, responses (status, timing) out.
