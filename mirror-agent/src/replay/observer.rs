//! What the rest of the agent hears from replay, and the hooks it lends replay at run time.
//!
//! Owns the replay stage's outward interface. Replay imports no exporter and no comparison: the
//! app hands [`Replayer::start`](super::Replayer::start) a [`ReplayObserver`] (telemetry's spans
//! and histograms, the comparison's mirror side, or both composed as a pair) and the
//! [`ConnectionHooks`] (live mode keeps the agent's own mirror connections out of capture).
//!
//! Per copy an observer hears exactly one of: [`ReplayObserver::not_sent`] (never taken by a
//! worker: not sampled, filtered, too large, queue full, shut down), or
//! [`ReplayObserver::sending`] once, when a worker takes it, followed by
//! [`ReplayObserver::finished`] once, with its outcome. Observers run on the capture thread
//! (`not_sent`) and on mirror workers (`sending`, `finished`): they must not block.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::stats::{DropReason, Outcome};
use crate::http::response::ResponseSample;
use crate::http::{Text, TraceFields, Version};
use crate::pipeline::{CapturedRequest, RequestKey};

/// One mirror's copy of a captured request: the bytes to send and what the framer learned of
/// the request (its identity, method, target, version, keep-alive, trace fields), so nothing
/// downstream parses the bytes again. Small and allocation-free: the method and target are
/// ranges of the request line, which no rewrite option changes.
#[derive(Debug, Clone)]
pub struct MirrorCopy {
    /// What goes on the wire: the client's bytes, or the head rebuilt once by the rewrite
    /// options; an observer may change them in [`ReplayObserver::sending`].
    pub bytes: Bytes,
    pub head: CopyHead,
    /// Where the trace context fields sit in `bytes` (`None`: there are none).
    pub trace: Option<Arc<TraceFields>>,
}

/// The parts of a captured request every copy carries, by value.
#[derive(Debug, Clone, Copy)]
pub struct CopyHead {
    pub key: RequestKey,
    pub version: Version,
    /// The connection stays usable after this request (RFC 9112 9.3).
    pub keep_alive: bool,
    /// The method when it is one of RFC 9110's (most requests): no UTF-8 check per use.
    known_method: Option<&'static str>,
    /// End of the method in the request line (it starts the bytes).
    method_end: u32,
    /// The request target's range in the request line.
    target: (u32, u32),
    /// This copy goes to its mirror over HTTP/2 (set per mirror by its protocol).
    pub over_h2: bool,
}

impl CopyHead {
    /// From the captured request: the method and target as the framer located them in `raw`
    /// (a method or target not there as UTF-8 reads empty).
    pub fn of(captured: &CapturedRequest) -> Self {
        let req = &captured.request;
        let (known_method, method_end) = match &req.method {
            Text::Static(m) => (Some(*m), m.len() as u32),
            Text::At(0, to) => (None, *to),
            _ => (None, 0),
        };
        let target = match req.target {
            Text::At(from, to) => (from, to),
            _ => (0, 0),
        };
        Self {
            key: captured.key(),
            version: req.version,
            keep_alive: req.keep_alive,
            known_method,
            method_end,
            target,
            over_h2: false,
        }
    }
}

impl MirrorCopy {
    /// The request's identity in this run, for the comparison.
    pub fn key(&self) -> RequestKey {
        self.head.key
    }

    /// The request method, as the client sent it.
    pub fn method(&self) -> &str {
        match self.head.known_method {
            Some(m) => m,
            None => self.text(0, self.head.method_end),
        }
    }

    /// The request target, as the client sent it.
    pub fn target(&self) -> &str {
        self.text(self.head.target.0, self.head.target.1)
    }

    fn text(&self, from: u32, to: u32) -> &str {
        self.bytes
            .get(from as usize..to as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Where the trace context fields sit in `bytes`.
    pub fn trace_fields(&self) -> &TraceFields {
        self.trace.as_deref().unwrap_or(TraceFields::NONE)
    }
}

/// Why a copy never left for its mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSent {
    /// The mirror's sampling passed it over (not a loss: the mirror gets its share).
    NotSampled,
    /// Dropped before a worker took it (counted in the mirror's stats).
    Dropped(DropReason),
}

/// What the rest of the agent hears about each copy (see the module doc for the order).
pub trait ReplayObserver: Send + Sync + 'static {
    /// State an observer keeps per copy from `sending` to `finished` (a span, a start time).
    /// `Sync` because a batch is borrowed across the writes of its worker's task.
    type Flight: Send + Sync + 'static;

    /// A worker took the copy for mirror number `mirror` (in the order of
    /// [`super::ReplayConfig::mirrors`]) and is about to write it. The observer may replace
    /// `copy.bytes` (and must then keep `copy.trace` true), e.g. to rewrite `traceparent`.
    fn sending(&self, mirror: usize, copy: &mut MirrorCopy) -> Self::Flight;

    /// The copy for `mirror` will never be sent, and why (already counted by replay).
    fn not_sent(&self, mirror: usize, key: RequestKey, why: NotSent);

    /// The copy ended: answered, failed, timed out, or dropped after a worker took it.
    /// `response` holds the mirror's response head and body prefix when
    /// [`Self::response_sample_limit`] asked for it; an observer that keeps it takes it.
    fn finished(
        &self,
        mirror: usize,
        copy: &MirrorCopy,
        flight: Self::Flight,
        outcome: &Outcome,
        response: &mut Option<Box<ResponseSample>>,
    );

    /// Decoded body bytes of each mirror response to keep with its head (`None`: keep none).
    fn response_sample_limit(&self) -> Option<usize> {
        None
    }
}

/// Hears nothing: replay alone still counts every outcome in its own stats.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl ReplayObserver for NoObserver {
    type Flight = ();
    fn sending(&self, _: usize, _: &mut MirrorCopy) {}
    fn not_sent(&self, _: usize, _: RequestKey, _: NotSent) {}
    fn finished(
        &self,
        _: usize,
        _: &MirrorCopy,
        (): (),
        _: &Outcome,
        _: &mut Option<Box<ResponseSample>>,
    ) {
    }
}

/// An observer that may be off.
impl<O: ReplayObserver> ReplayObserver for Option<O> {
    type Flight = Option<O::Flight>;
    fn sending(&self, mirror: usize, copy: &mut MirrorCopy) -> Self::Flight {
        self.as_ref().map(|o| o.sending(mirror, copy))
    }
    fn not_sent(&self, mirror: usize, key: RequestKey, why: NotSent) {
        if let Some(o) = self {
            o.not_sent(mirror, key, why);
        }
    }
    fn finished(
        &self,
        mirror: usize,
        copy: &MirrorCopy,
        flight: Self::Flight,
        outcome: &Outcome,
        response: &mut Option<Box<ResponseSample>>,
    ) {
        if let (Some(o), Some(f)) = (self, flight) {
            o.finished(mirror, copy, f, outcome, response);
        }
    }
    fn response_sample_limit(&self) -> Option<usize> {
        self.as_ref().and_then(O::response_sample_limit)
    }
}

/// Two observers, told in order: the first may change the bytes before the second sees them.
impl<A: ReplayObserver, B: ReplayObserver> ReplayObserver for (A, B) {
    type Flight = (A::Flight, B::Flight);
    fn sending(&self, mirror: usize, copy: &mut MirrorCopy) -> Self::Flight {
        (self.0.sending(mirror, copy), self.1.sending(mirror, copy))
    }
    fn not_sent(&self, mirror: usize, key: RequestKey, why: NotSent) {
        self.0.not_sent(mirror, key, why);
        self.1.not_sent(mirror, key, why);
    }
    fn finished(
        &self,
        mirror: usize,
        copy: &MirrorCopy,
        (a, b): Self::Flight,
        outcome: &Outcome,
        response: &mut Option<Box<ResponseSample>>,
    ) {
        self.0.finished(mirror, copy, a, outcome, response);
        self.1.finished(mirror, copy, b, outcome, response);
    }
    fn response_sample_limit(&self) -> Option<usize> {
        match (
            self.0.response_sample_limit(),
            self.1.response_sample_limit(),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Called with (local, remote) of a mirror connection's socket.
pub type ConnectionHook = Arc<dyn Fn(SocketAddr, SocketAddr) + Send + Sync>;

/// What replay tells the runtime about its own connections.
#[derive(Clone, Default)]
pub struct ConnectionHooks {
    /// After the socket is bound and before it connects, so live capture can exclude the
    /// agent's own connections before their SYN leaves (no mirror loops).
    pub opened: Option<ConnectionHook>,
    /// Once a socket registered with `opened` is closed (or its connect failed), so the
    /// exclusion can be lifted before the kernel hands its port to another socket.
    pub closed: Option<ConnectionHook>,
}

impl std::fmt::Debug for ConnectionHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHooks")
            .field("opened", &self.opened.is_some())
            .field("closed", &self.closed.is_some())
            .finish()
    }
}
