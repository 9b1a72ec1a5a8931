//! What the request and response framers share about consuming a stream, apart from bodies
//! (see the `body` module): the cursor over one push, the item in progress with its view, and
//! the drop pending while resyncing.

use bytes::BytesMut;

/// One pushed buffer being consumed. The view (bytes of the current item kept so far) is
/// `data[start..pos]` unless the item began in an earlier push (then the framer's own buffer
/// holds it). `D` is `Bytes` for the request framer (a request is a slice of the push) and
/// `[u8]` for the response framer.
pub(super) struct Cur<'a, D: ?Sized> {
    pub(super) data: &'a D,
    pub(super) pos: usize,
    pub(super) start: usize,
}

impl<'a, D: ?Sized + AsRef<[u8]>> Cur<'a, D> {
    pub(super) fn new(data: &'a D) -> Self {
        Self {
            data,
            pos: 0,
            start: 0,
        }
    }

    /// The bytes of the push not consumed yet.
    #[inline]
    pub(super) fn avail(&self) -> &'a [u8] {
        &self.data.as_ref()[self.pos..]
    }
}

/// The item in progress (a message, or bytes being tried as the start of one), as both
/// framers track it.
#[derive(Debug, Default)]
pub(super) struct Item {
    /// The view when the item spans pushes (else it is `data[start..pos]` of the [`Cur`]).
    pub(super) buf: BytesMut,
    pub(super) spanning: bool,
    /// Bytes consumed by the item, kept or not.
    pub(super) len: u64,
    /// Time of the item's first byte.
    pub(super) ts: u64,
    pub(super) head_len: usize,
    /// Decoded body length: the Content-Length, or the sum of chunk sizes so far.
    pub(super) body_len: u64,
    /// Bytes of the trailer section so far.
    pub(super) trailer_len: usize,
}

impl Item {
    /// The bytes of the item kept so far.
    #[inline]
    pub(super) fn view<'s, D: ?Sized + AsRef<[u8]>>(&'s self, cur: &'s Cur<'_, D>) -> &'s [u8] {
        if self.spanning {
            &self.buf
        } else {
            &cur.data.as_ref()[cur.start..cur.pos]
        }
    }

    /// Consumes `n` bytes into the view.
    #[inline]
    pub(super) fn take<D: ?Sized + AsRef<[u8]>>(&mut self, cur: &mut Cur<'_, D>, n: usize) {
        if self.spanning {
            self.buf
                .extend_from_slice(&cur.data.as_ref()[cur.pos..cur.pos + n]);
        }
        cur.pos += n;
        self.len += n as u64;
    }

    /// Counters back to zero for the next item; the view buffer is left to the framer.
    pub(super) fn reset_counts(&mut self) {
        self.len = 0;
        self.head_len = 0;
        self.body_len = 0;
        self.trailer_len = 0;
    }
}

/// Bytes dropped and not reported yet, and why. A bad message and the bytes skipped after it
/// while resyncing are reported as one drop; a drop for another reason reports the pending
/// one first. Each method returns the drop to report now, if any (never one of 0 bytes).
#[derive(Debug)]
pub(super) struct PendingDrop<R>(Option<(R, u64)>);

impl<R: Copy + PartialEq> PendingDrop<R> {
    pub(super) fn none() -> Self {
        Self(None)
    }

    /// A resync for `reason` under way from the first byte (a stream picked up mid-way).
    pub(super) fn from_start(reason: R) -> Self {
        Self(Some((reason, 0)))
    }

    /// A resync for `reason` begins (or goes on, if one for `reason` is pending).
    #[must_use]
    pub(super) fn start(&mut self, reason: R) -> Option<(R, u64)> {
        match self.0 {
            Some((r, _)) if r == reason => None,
            _ => Self::reportable(self.0.replace((reason, 0))),
        }
    }

    /// `bytes` dropped for `reason`: merged with a pending drop for the same reason.
    #[must_use]
    pub(super) fn add(&mut self, reason: R, bytes: u64) -> Option<(R, u64)> {
        match &mut self.0 {
            Some((r, b)) if *r == reason => {
                *b += bytes;
                None
            }
            _ => Self::reportable(self.0.replace((reason, bytes))),
        }
    }

    /// `bytes` skipped while resyncing join the pending drop, whatever its reason, or start
    /// one for `otherwise`.
    pub(super) fn add_any(&mut self, bytes: u64, otherwise: R) {
        match &mut self.0 {
            Some((_, b)) => *b += bytes,
            None => self.0 = Some((otherwise, bytes)),
        }
    }

    /// `bytes` skipped join the pending drop, if there is one.
    #[inline]
    pub(super) fn grow(&mut self, bytes: u64) {
        if let Some((_, b)) = &mut self.0 {
            *b += bytes;
        }
    }

    /// Ends the pending drop.
    #[must_use]
    pub(super) fn take(&mut self) -> Option<(R, u64)> {
        Self::reportable(self.0.take())
    }

    fn reportable(drop: Option<(R, u64)>) -> Option<(R, u64)> {
        drop.filter(|&(_, bytes)| bytes > 0)
    }
}
