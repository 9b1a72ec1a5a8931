//! HTTP/2 (RFC 9113) for mirroring: cuts a client connection's byte stream into requests,
//! one per stream, decoded from the connection's start, and (for comparison) the server's
//! into responses.
//!
//! Owns the frame layout ([`frame`]) and the decoder of either direction ([`decoder`]): the
//! connection preface, frames (HEADERS, CONTINUATION, DATA, RST_STREAM, SETTINGS, PING,
//! GOAWAY, PRIORITY, WINDOW_UPDATE, PUSH_PROMISE, padding, END_STREAM, trailers) and HPACK
//! with each direction's dynamic table ([`hpack`], around `httlib-huffman`; its module doc says why it is
//! not a whole HPACK crate). Like the
//! HTTP/1 framers it is a plain state machine: bytes in order in, events out, no I/O, no clock,
//! bounded memory, every byte it cannot use counted.
//!
//! A connection whose start was not seen cannot be decoded (the header table is gone); the
//! decoder never guesses a method or a path from the middle of one: [`midstream`] recognises
//! such connections and counts their streams and bytes.
//!
//! Each request is written as HTTP/1.1 ([`convert`]), the form filters, rewrites, recording and
//! comparison work on; replay sends it over HTTP/2 again where the mirror's protocol says so
//! (`replay::h2`).

pub mod convert;
pub mod decoder;
pub mod frame;
pub mod hpack;
pub mod midstream;

pub use decoder::{Decoder, H2Event, H2Limits, H2Request, H2Response, H2Stats, Side};
