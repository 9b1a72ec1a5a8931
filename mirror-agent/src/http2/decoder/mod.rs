//! One direction of an HTTP/2 connection, from its first byte: frames and header blocks
//! decoded with that direction's HPACK table. The client direction ([`Decoder::client`]) starts
//! with the preface and gives one [`H2Request`] per stream the client ends (END_STREAM); the
//! server direction ([`Decoder::server`], for comparison) gives one [`H2Response`] per stream
//! the server ends, 1xx heads counted and skipped, pushed streams decoded only to keep the
//! table in step. Both in the order the streams end.
//!
//! Every header block is decoded, also those of streams that are dropped: the dynamic table
//! is shared by the whole connection, so skipping one block would corrupt every later one.
//! Anything the decoder cannot use is counted in [`H2Stats`], whose byte counters add up to
//! the bytes pushed (`H2Stats::accounted`).
//!
//! Connection errors (no preface, a frame over the size bound, a header block over its bound,
//! an HPACK error, CONTINUATION out of place, a PUSH_PROMISE from a client, a HEADERS frame on
//! stream 0 or, from a client, on an even stream id) end decoding for the rest of the
//! connection: the primary's server closes such a connection too (RFC 9113 5.4.1), and
//! guessing after a lost header table could send a mirror requests nobody made. Stream
//! errors (a malformed request, a stream over a bound, a reset from the client) drop that
//! stream only.

use std::collections::HashMap;

use bytes::Bytes;

use super::frame::{self, FrameHeader, HEADER_LEN, PREFACE, flag, kind};

/// Bounds of one connection's decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Largest frame payload buffered. SETTINGS_MAX_FRAME_SIZE is 16 KiB unless the server
    /// raises it; a larger frame ends decoding (counted).
    pub max_frame: usize,
    /// Header block octets (HEADERS plus CONTINUATION) held at most.
    pub max_header_block: usize,
    /// Decoded header list size per block, counted as SETTINGS_MAX_HEADER_LIST_SIZE counts it
    /// (name + value + 32 per field); over it the stream is dropped.
    pub max_header_list: usize,
    /// Body bytes kept per stream. A request over it is dropped; a response keeps this prefix
    /// (the comparison's capture limit) and counts the rest in [`H2Response::body_len`].
    pub max_body: usize,
    /// Streams open at once; a stream beyond it is dropped.
    pub max_streams: usize,
    /// HPACK dynamic table size the decoder follows at most. The server may allow the client
    /// a larger table; a size update over this bound ends decoding (counted).
    pub max_table: usize,
}

impl Default for H2Limits {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_header_block: 256 << 10,
            max_header_list: 256 << 10,
            max_body: 64 << 20,
            max_streams: 1024,
            max_table: 64 << 10,
        }
    }
}

/// One request: a stream the client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Request {
    pub stream: u32,
    /// Header fields in wire order, pseudo-header fields first.
    pub headers: Vec<(Bytes, Bytes)>,
    /// DATA payloads, padding removed.
    pub body: Bytes,
    /// The trailer section (gRPC requests rarely have one; responses do).
    pub trailers: Vec<(Bytes, Bytes)>,
    /// The stream's frame bytes on the wire (headers included), in `H2Stats::message_bytes`.
    pub wire_bytes: u64,
}

impl H2Request {
    /// The value of the first field named `name` (pseudo-header fields included: `:path`).
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }
}

/// One response: a stream the server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Response {
    pub stream: u32,
    /// The final `:status`.
    pub status: u16,
    /// Header fields of the final head in wire order, without `:status`.
    pub headers: Vec<(Bytes, Bytes)>,
    /// DATA payloads, padding removed, at most [`H2Limits::max_body`] bytes.
    pub body: Bytes,
    /// All DATA bytes of the stream (padding removed).
    pub body_len: u64,
    /// `body` is a prefix: the stream carried more.
    pub truncated: bool,
    /// The trailer section (gRPC's `grpc-status` is here).
    pub trailers: Vec<(Bytes, Bytes)>,
    /// 1xx heads before the final one.
    pub informational: u32,
    /// The time given with the push that carried the stream's first frame, and its last.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// The stream's frame bytes on the wire (headers included), in `H2Stats::message_bytes`.
    pub wire_bytes: u64,
}

/// Which direction of the connection a decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's bytes: the preface, then requests.
    Client,
    /// The server's bytes: frames from the first (the server's SETTINGS), responses.
    Server,
}

/// Why a stream was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2DropReason {
    /// RST_STREAM from this side before it ended the stream.
    Reset,
    /// Missing or misplaced pseudo-header fields, DATA before HEADERS, HEADERS after the end,
    /// an END_STREAM on a 1xx head.
    Malformed,
    /// Over [`H2Limits::max_header_list`], [`H2Limits::max_body`] or
    /// [`H2Limits::max_streams`].
    OverLimit,
    /// The connection ended before this side ended the stream.
    Unfinished,
}

/// Why decoding stopped for the rest of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Failure {
    /// The connection did not start with the client preface (not HTTP/2, or its start was
    /// not seen).
    NoPreface,
    /// A frame or header block over the decoder's bounds.
    TooLarge,
    /// A connection error of the protocol (frame sequence, padding, stream ids).
    Protocol,
    /// The header block could not be decoded (or the table grew over the decoder's bound).
    Hpack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Event {
    Request(H2Request),
    Response(H2Response),
    Dropped { stream: u32, reason: H2DropReason },
    Failed(H2Failure),
}

/// What the decoder saw, and where each byte went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct H2Stats {
    pub frames: u64,
    /// Requests (client side) or responses (server side) given out.
    pub messages: u64,
    pub dropped_streams: u64,
    /// Server side: 1xx heads skipped.
    pub informational: u64,
    /// Server side: PUSH_PROMISEs seen (their streams' frames are in `dropped_bytes`).
    pub pushed_streams: u64,
    /// Bytes pushed in.
    pub pushed: u64,
    /// The preface.
    pub preface_bytes: u64,
    /// Frames (headers included) of streams that became requests or responses.
    pub message_bytes: u64,
    /// Frames of streams dropped, of streams no longer known (after a drop or a reset), and of
    /// pushed streams (PUSH_PROMISE included).
    pub dropped_bytes: u64,
    /// Connection-level and flow-control frames (SETTINGS, PING, GOAWAY, WINDOW_UPDATE,
    /// PRIORITY, RST_STREAM, unknown types).
    pub control_bytes: u64,
    /// Bytes after decoding stopped (or in the frame that stopped it).
    pub undecodable_bytes: u64,
}

impl H2Stats {
    /// Bytes in a bucket: pushed minus what is still held (open streams, a partial frame).
    pub fn accounted(&self) -> u64 {
        self.preface_bytes
            + self.message_bytes
            + self.dropped_bytes
            + self.control_bytes
            + self.undecodable_bytes
    }
}

#[derive(Debug)]
struct Stream {
    headers: Vec<(Bytes, Bytes)>,
    /// Headers decoded (the first HEADERS block is complete; for a response, the final one).
    open: bool,
    body: Vec<u8>,
    /// Response side: DATA bytes seen, kept or not.
    body_len: u64,
    status: u16,
    informational: u32,
    first_ts_ns: u64,
    trailers: Vec<(Bytes, Bytes)>,
    /// Frame bytes of this stream so far.
    bytes: u64,
    /// Set once the stream is dropped: its frames are counted, nothing is kept.
    dropped: Option<H2DropReason>,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// A PUSH_PROMISE's block: decoded for the table only.
    promise: bool,
    fragment: Vec<u8>,
    end_stream: bool,
    /// Frame bytes so far.
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface { seen: usize },
    Frames,
    Failed,
}

/// One direction of one connection (see the module doc).
pub struct Decoder {
    side: Side,
    limits: H2Limits,
    state: State,
    /// A partial frame.
    pending: Vec<u8>,
    hpack: super::hpack::Decoder,
    streams: HashMap<u32, Stream>,
    block: Option<Block>,
    last_stream: u32,
    /// The time given with the bytes being decoded.
    now_ns: u64,
    stats: H2Stats,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Whether a client byte stream starts like HTTP/2 with prior knowledge: `Some(true)` when it
/// starts with the preface, `Some(false)` when it cannot, `None` when too short to tell.
pub fn starts_with_preface(b: &[u8]) -> Option<bool> {
    let n = b.len().min(PREFACE.len());
    if b[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

impl Decoder {
    /// The client direction: the preface, then frames.
    pub fn client(limits: H2Limits) -> Self {
        Self::new(Side::Client, limits)
    }

    /// The server direction: frames from the first byte (the server's preface is a SETTINGS
    /// frame).
    pub fn server(limits: H2Limits) -> Self {
        Self::new(Side::Server, limits)
    }

    fn new(side: Side, limits: H2Limits) -> Self {
        let hpack = super::hpack::Decoder::new(limits.max_table);
        Self {
            side,
            limits,
            state: match side {
                Side::Client => State::Preface { seen: 0 },
                Side::Server => State::Frames,
            },
            pending: Vec::new(),
            hpack,
            streams: HashMap::new(),
            block: None,
            last_stream: 0,
            now_ns: 0,
            stats: H2Stats::default(),
        }
    }

    pub fn stats(&self) -> H2Stats {
        self.stats
    }

    /// Decoding stopped for this connection.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Bytes held: open streams' bodies and header blocks, and a partial frame.
    pub fn buffered_bytes(&self) -> usize {
        self.pending.len()
            + self.block.as_ref().map_or(0, |b| b.fragment.len())
            + self.streams.values().map(|s| s.body.len()).sum::<usize>()
    }

    /// The connection ended (FIN, RST, gap, eviction): open streams are dropped as
    /// unfinished and everything held is counted, so [`H2Stats::accounted`] equals
    /// [`H2Stats::pushed`]. The decoder takes nothing more after this.
    pub fn finish(&mut self, out: &mut Vec<H2Event>) {
        let mut open: Vec<(u32, Stream)> = self.streams.drain().collect();
        open.sort_by_key(|(id, _)| *id);
        for (id, s) in open {
            self.stats.dropped_bytes += s.bytes;
            if s.dropped.is_none() {
                self.stats.dropped_streams += 1;
                out.push(H2Event::Dropped {
                    stream: id,
                    reason: H2DropReason::Unfinished,
                });
            }
        }
        let partial = self.block.take().map_or(0, |b| b.bytes) + self.pending.len() as u64;
        self.pending = Vec::new();
        if let State::Preface { seen } = self.state {
            self.stats.undecodable_bytes += seen as u64;
        }
        self.stats.undecodable_bytes += partial;
        self.state = State::Failed;
    }

    /// Takes the next in-order bytes of this direction.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<H2Event>) {
        self.push_at(data, self.now_ns, out);
    }

    /// [`Self::push`] with the bytes' capture time, which responses carry
    /// ([`H2Response::first_ts_ns`]).
    pub fn push_at(&mut self, mut data: &[u8], ts_ns: u64, out: &mut Vec<H2Event>) {
        self.now_ns = ts_ns;
        self.stats.pushed += data.len() as u64;
        if let State::Preface { seen } = self.state {
            let want = &PREFACE[seen..];
            let n = want.len().min(data.len());
            if data[..n] != want[..n] {
                self.fail(H2Failure::NoPreface, (seen + data.len()) as u64, out);
                return;
            }
            data = &data[n..];
            self.state = if seen + n == PREFACE.len() {
                self.stats.preface_bytes = PREFACE.len() as u64;
                State::Frames
            } else {
                State::Preface { seen: seen + n }
            };
        }
        if self.state == State::Failed {
            self.stats.undecodable_bytes += data.len() as u64;
            return;
        }
        if self.state != State::Frames {
            return;
        }
        // A partial frame first: its header, then its payload.
        if !self.pending.is_empty() {
            if self.pending.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.pending.len() < HEADER_LEN {
                    return;
                }
                self.check_pending(out);
                if self.state == State::Failed {
                    self.stats.undecodable_bytes += data.len() as u64;
                    return;
                }
            }
            let need = self.frame_len(&self.pending).unwrap_or(HEADER_LEN);
            let take = (need - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < need {
                return;
            }
            let frame = std::mem::take(&mut self.pending);
            self.frame(&frame, out);
            if self.state == State::Failed {
                self.stats.undecodable_bytes += data.len() as u64;
                return;
            }
        }
        while !data.is_empty() {
            match self.frame_len(data) {
                Some(n) if data.len() >= n => {
                    let (f, rest) = data.split_at(n);
                    self.frame(f, out);
                    data = rest;
                    if self.state == State::Failed {
                        self.stats.undecodable_bytes += data.len() as u64;
                        return;
                    }
                }
                _ => {
                    self.pending.extend_from_slice(data);
                    return self.check_pending(out);
                }
            }
        }
    }

    /// Fails the connection when the partial frame announces a frame over the bound.
    fn check_pending(&mut self, out: &mut Vec<H2Event>) {
        if let Some(h) = FrameHeader::parse(&self.pending)
            && h.len > self.limits.max_frame
        {
            let held = std::mem::take(&mut self.pending).len() as u64;
            self.fail(H2Failure::TooLarge, held, out);
        }
    }

    /// Length of the frame at the start of `b` (header included), once its header is there.
    fn frame_len(&self, b: &[u8]) -> Option<usize> {
        FrameHeader::parse(b).map(|h| HEADER_LEN + h.len)
    }

    /// Stops decoding; `bytes` (already pushed) and everything held go to undecodable.
    fn fail(&mut self, why: H2Failure, bytes: u64, out: &mut Vec<H2Event>) {
        self.state = State::Failed;
        let held: u64 = self.streams.drain().map(|(_, s)| s.bytes).sum::<u64>()
            + self.block.take().map_or(0, |b| b.bytes);
        self.stats.undecodable_bytes += bytes + held;
        out.push(H2Event::Failed(why));
    }

    /// One whole frame (header and payload).
    fn frame(&mut self, f: &[u8], out: &mut Vec<H2Event>) {
        let Some(h) = FrameHeader::parse(f) else {
            return;
        };
        let total = f.len() as u64;
        self.stats.frames += 1;
        if h.len > self.limits.max_frame {
            return self.fail(H2Failure::TooLarge, total, out);
        }
        let payload = &f[HEADER_LEN..];
        // Between HEADERS and its last CONTINUATION nothing else may come (RFC 9113 6.10).
        if let Some(b) = &self.block
            && (h.kind != kind::CONTINUATION || h.stream != b.stream)
        {
            return self.fail(H2Failure::Protocol, total, out);
        }
        match h.kind {
            kind::HEADERS => self.headers(&h, payload, total, out),
            kind::CONTINUATION => self.continuation(&h, payload, total, out),
            kind::DATA => self.data(&h, payload, total, out),
            kind::RST_STREAM => {
                self.stats.control_bytes += total;
                if let Some(s) = self.streams.remove(&h.stream) {
                    self.stats.dropped_bytes += s.bytes;
                    if s.dropped.is_none() {
                        self.stats.dropped_streams += 1;
                        out.push(H2Event::Dropped {
                            stream: h.stream,
                            reason: H2DropReason::Reset,
                        });
                    }
                }
            }
            kind::PUSH_PROMISE if self.side == Side::Server => {
                self.push_promise(&h, payload, total, out)
            }
            kind::PUSH_PROMISE => self.fail(H2Failure::Protocol, total, out),
            // SETTINGS size the other direction's encoder;
            // PING, GOAWAY, WINDOW_UPDATE and PRIORITY carry no request bytes; unknown
            // types are ignored (RFC 9113 5.5).
            _ => self.stats.control_bytes += total,
        }
    }

    fn headers(&mut self, h: &FrameHeader, payload: &[u8], total: u64, out: &mut Vec<H2Event>) {
        if h.stream == 0 {
            return self.fail(H2Failure::Protocol, total, out);
        }
        let Ok(fragment) = frame::body(h, payload) else {
            return self.fail(H2Failure::Protocol, total, out);
        };
        // Client streams are odd (RFC 9113 5.1.1). A known stream gets trailers (or, from a
        // server, its final head after 1xx ones). From a client a new id opens a stream and
        // an old id that is gone (reset, dropped) still has its block decoded, for the table,
        // and counted with the drops. A server answers the client's (odd) streams in any
        // order, so any odd id it is not answering opens one; its even ids are pushed
        // streams, decoded for the table only.
        if !self.streams.contains_key(&h.stream) {
            let odd = !h.stream.is_multiple_of(2);
            match self.side {
                Side::Client if !odd => return self.fail(H2Failure::Protocol, total, out),
                Side::Client if h.stream > self.last_stream => self.open_stream(h.stream, out),
                Side::Server if odd => self.open_stream(h.stream, out),
                _ => {}
            }
        }
        self.start_block(h, fragment, false, total, out);
    }

    /// A PUSH_PROMISE (server side): its header block is decoded for the table; the promised
    /// stream is never compared (no client asked for it), its frames are counted as drops.
    fn push_promise(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        total: u64,
        out: &mut Vec<H2Event>,
    ) {
        let Ok(rest) = frame::body(h, payload) else {
            return self.fail(H2Failure::Protocol, total, out);
        };
        // The promised stream id (4 octets) precedes the fragment.
        let Some(fragment) = rest.get(4..) else {
            return self.fail(H2Failure::Protocol, total, out);
        };
        self.stats.pushed_streams += 1;
        self.start_block(h, fragment, true, total, out);
    }

    /// The first frame of a header block: complete, or waiting for CONTINUATION.
    fn start_block(
        &mut self,
        h: &FrameHeader,
        fragment: &[u8],
        promise: bool,
        total: u64,
        out: &mut Vec<H2Event>,
    ) {
        let block = Block {
            stream: h.stream,
            promise,
            fragment: fragment.to_vec(),
            // PUSH_PROMISE defines no END_STREAM flag.
            end_stream: !promise && h.has(flag::END_STREAM),
            bytes: total,
        };
        if fragment.len() > self.limits.max_header_block {
            return self.fail(H2Failure::TooLarge, total, out);
        }
        if h.has(flag::END_HEADERS) {
            self.end_block(block, out);
        } else {
            self.block = Some(block);
        }
    }

    fn open_stream(&mut self, id: u32, out: &mut Vec<H2Event>) {
        self.last_stream = id;
        let over = self.streams.len() >= self.limits.max_streams;
        self.streams.insert(
            id,
            Stream {
                headers: Vec::new(),
                open: false,
                body: Vec::new(),
                body_len: 0,
                status: 0,
                informational: 0,
                first_ts_ns: self.now_ns,
                trailers: Vec::new(),
                bytes: 0,
                dropped: over.then_some(H2DropReason::OverLimit),
            },
        );
        if over {
            self.stats.dropped_streams += 1;
            out.push(H2Event::Dropped {
                stream: id,
                reason: H2DropReason::OverLimit,
            });
        }
    }

    fn continuation(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        total: u64,
        out: &mut Vec<H2Event>,
    ) {
        let Some(mut block) = self.block.take() else {
            return self.fail(H2Failure::Protocol, total, out);
        };
        block.bytes += total;
        if block.fragment.len() + payload.len() > self.limits.max_header_block {
            self.block = Some(block);
            return self.fail(H2Failure::TooLarge, 0, out);
        }
        block.fragment.extend_from_slice(payload);
        if h.has(flag::END_HEADERS) {
            self.end_block(block, out);
        } else {
            self.block = Some(block);
        }
    }

    /// A complete header block: decoded (always), then a request head, trailers, or nothing
    /// (a stream already gone).
    fn end_block(&mut self, block: Block, out: &mut Vec<H2Event>) {
        let mut fields: Vec<(Bytes, Bytes)> = Vec::new();
        let decoded = self.hpack.decode(&block.fragment, &mut fields);
        let list_size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        if decoded.is_err() {
            return self.fail(H2Failure::Hpack, block.bytes, out);
        }
        if block.promise {
            self.stats.dropped_bytes += block.bytes;
            return;
        }
        let Some(s) = self.streams.get_mut(&block.stream) else {
            // A stream already closed or dropped (e.g. reset): nothing to keep.
            self.stats.dropped_bytes += block.bytes;
            return;
        };
        s.bytes += block.bytes;
        if s.dropped.is_none() {
            // A response head: `:status` first and alone; 1xx heads come before the final
            // one and never end the stream.
            let status = match self.side {
                Side::Server if !s.open => response_status(&fields),
                _ => None,
            };
            let informational = status.is_some_and(|st| st < 200);
            let reason = if list_size > self.limits.max_header_list {
                Some(H2DropReason::OverLimit)
            } else if !s.open {
                let valid = match self.side {
                    Side::Client => valid_request_head(&fields),
                    Side::Server => status.is_some() && !(informational && block.end_stream),
                };
                (!valid).then_some(H2DropReason::Malformed)
            } else {
                // Trailers: they end the stream and hold no pseudo-header field.
                (!block.end_stream || fields.iter().any(|(n, _)| n.starts_with(b":")))
                    .then_some(H2DropReason::Malformed)
            };
            match reason {
                Some(r) => drop_stream(s, block.stream, r, &mut self.stats, out),
                None if informational => {
                    s.informational += 1;
                    self.stats.informational += 1;
                    // Still waiting for the final head.
                    return;
                }
                None if !s.open => {
                    fields.retain(|(n, _)| n.as_ref() != b":status");
                    s.status = status.unwrap_or(0);
                    s.headers = fields;
                }
                None => s.trailers = fields,
            }
        }
        s.open = true;
        if block.end_stream {
            self.end_stream(block.stream, out);
        }
    }

    fn data(&mut self, h: &FrameHeader, payload: &[u8], total: u64, out: &mut Vec<H2Event>) {
        let Ok(data) = frame::body(h, payload) else {
            return self.fail(H2Failure::Protocol, total, out);
        };
        let Some(s) = self.streams.get_mut(&h.stream) else {
            // Stream 0 is a connection error; a stream we no longer know was dropped or
            // reset: its bytes are counted with the drops.
            if h.stream == 0 {
                return self.fail(H2Failure::Protocol, total, out);
            }
            self.stats.dropped_bytes += total;
            return;
        };
        s.bytes += total;
        if s.dropped.is_none() {
            s.body_len += data.len() as u64;
            if !s.open || !s.trailers.is_empty() {
                drop_stream(s, h.stream, H2DropReason::Malformed, &mut self.stats, out);
            } else if s.body.len() + data.len() <= self.limits.max_body {
                s.body.extend_from_slice(data);
            } else if self.side == Side::Server {
                // A response keeps the prefix the comparison looks at.
                let room = self.limits.max_body - s.body.len();
                s.body.extend_from_slice(&data[..room]);
            } else {
                drop_stream(s, h.stream, H2DropReason::OverLimit, &mut self.stats, out);
            }
        }
        if h.has(flag::END_STREAM) {
            self.end_stream(h.stream, out);
        }
    }

    /// This side ended the stream: a request or a response, or the end of a dropped one.
    fn end_stream(&mut self, id: u32, out: &mut Vec<H2Event>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if s.dropped.is_some() {
            self.stats.dropped_bytes += s.bytes;
            return;
        }
        self.stats.message_bytes += s.bytes;
        self.stats.messages += 1;
        out.push(match self.side {
            Side::Client => H2Event::Request(H2Request {
                stream: id,
                headers: s.headers,
                body: Bytes::from(s.body),
                trailers: s.trailers,
                wire_bytes: s.bytes,
            }),
            Side::Server => H2Event::Response(H2Response {
                stream: id,
                status: s.status,
                headers: s.headers,
                truncated: s.body_len > s.body.len() as u64,
                body: Bytes::from(s.body),
                body_len: s.body_len,
                trailers: s.trailers,
                informational: s.informational,
                first_ts_ns: s.first_ts_ns,
                last_ts_ns: self.now_ns,
                wire_bytes: s.bytes,
            }),
        });
    }
}

fn drop_stream(
    s: &mut Stream,
    stream: u32,
    reason: H2DropReason,
    stats: &mut H2Stats,
    out: &mut Vec<H2Event>,
) {
    s.dropped = Some(reason);
    s.body = Vec::new();
    stats.dropped_streams += 1;
    out.push(H2Event::Dropped { stream, reason });
}

/// The status of a response head (RFC 9113 8.3.2): `:status` as its only pseudo-header field,
/// first, three digits from 100 to 599.
fn response_status(fields: &[(Bytes, Bytes)]) -> Option<u16> {
    let ((first, value), rest) = fields.split_first()?;
    if first.as_ref() != b":status" || rest.iter().any(|(n, _)| n.starts_with(b":")) {
        return None;
    }
    if value.len() != 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status: u16 = std::str::from_utf8(value).ok()?.parse().ok()?;
    (100..600).contains(&status).then_some(status)
}

/// A request head (RFC 9113 8.3.1): pseudo-header fields first, each at most once, only the
/// request ones; `:method` always; `:scheme` and `:path` unless the method is CONNECT.
fn valid_request_head(fields: &[(Bytes, Bytes)]) -> bool {
    let mut regular = false;
    let mut seen = [false; 4];
    for (n, _) in fields {
        if let Some(p) = n.strip_prefix(b":") {
            let i = match p {
                b"method" => 0,
                b"scheme" => 1,
                b"path" => 2,
                b"authority" => 3,
                _ => return false,
            };
            if regular || seen[i] {
                return false;
            }
            seen[i] = true;
        } else {
            regular = true;
        }
    }
    let connect = fields
        .iter()
        .any(|(n, v)| n.as_ref() == b":method" && v.as_ref() == b"CONNECT");
    seen[0] && (connect || (seen[1] && seen[2]))
}

#[cfg(test)]
mod tests;
