//! The body of a copy sent over HTTP/2: its bytes in one DATA frame's worth (h2 splits it
//! to the peer's frame size and flow-control windows), then its trailers, if any.
//!
//! It also marks the copy *sent* once its last frame has been handed to the connection: that
//! is when an HTTP/1.1 copy counts as sent too (its last byte written). A stream without a
//! body is counted when its answer arrives (hyper never polls an empty body), so one whose
//! answer is lost (an io error) is not counted as sent, though the mirror may have it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::http::HeaderMap;

use crate::replay::stats::MirrorStats;

/// Counts one copy as sent, once, from whichever side sees it first: the body handing over
/// its last frame, or the exchange seeing the answer (a body that is empty is never polled).
#[derive(Debug)]
pub struct SentMark {
    stats: Arc<MirrorStats>,
    done: AtomicBool,
}

impl SentMark {
    pub fn new(stats: Arc<MirrorStats>) -> Arc<Self> {
        Arc::new(Self {
            stats,
            done: AtomicBool::new(false),
        })
    }

    pub fn mark(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.stats.on_sent();
        }
    }
}

/// A whole request body and its trailers.
#[derive(Debug)]
pub struct CopyBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    sent: Option<Arc<SentMark>>,
}

impl CopyBody {
    pub fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers,
            sent: None,
        }
    }

    /// Marks `sent` when the last frame is handed over.
    pub fn with_mark(mut self, sent: Arc<SentMark>) -> Self {
        self.sent = Some(sent);
        self
    }

    fn ended(&mut self) {
        if let Some(s) = self.sent.take() {
            s.mark();
        }
    }
}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            if this.trailers.is_none() {
                this.ended();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(t) = this.trailers.take() {
            this.ended();
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        this.ended();
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
