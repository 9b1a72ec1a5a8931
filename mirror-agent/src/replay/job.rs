//! One copy in a mirror's hands ([`Job`]) and where its outcome is told ([`Tell`]): the
//! observer first, then the mirror's counters. Shared by the queue ([`super::dispatcher`]) and
//! the exchange on a connection ([`super::exchange`]), which both end copies.

use std::sync::Arc;

use super::observer::{MirrorCopy, NotSent, ReplayObserver};
use super::stats::{Outcome, Ticket};
use crate::http::response::ResponseSample;

/// A copy waiting for, or being sent to, a mirror; `F` is the observer's per-copy state.
pub struct Job<F> {
    pub copy: MirrorCopy,
    pub ticket: Ticket,
    /// The queue line the copy waits in, behind the earlier copies of the same line: the
    /// client connection's flow id (ordered), or a number of its own.
    pub line: u64,
    /// The observer's state, from when a worker takes the copy ([`ReplayObserver::sending`]).
    pub flight: Option<F>,
}

impl<F> std::fmt::Debug for Job<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("key", &self.copy.key())
            .field("bytes", &self.copy.bytes.len())
            .field("taken", &self.flight.is_some())
            .finish()
    }
}

/// One mirror's observer and its index: where every outcome of its copies is told.
pub struct Tell<O> {
    pub mirror: usize,
    pub observer: Arc<O>,
}

impl<O: ReplayObserver> Tell<O> {
    /// Every outcome of a copy goes through here: the observer first, then the counters.
    pub fn resolve(&self, job: Job<O::Flight>, outcome: Outcome) {
        self.resolve_with(job, outcome, None);
    }

    /// [`Self::resolve`] with the mirror's response sample (head and body prefix), which the
    /// pool keeps only when the observer asked for it.
    pub fn resolve_with(
        &self,
        job: Job<O::Flight>,
        outcome: Outcome,
        mut sample: Option<Box<ResponseSample>>,
    ) {
        match (job.flight, outcome) {
            (Some(flight), _) => {
                self.observer
                    .finished(self.mirror, &job.copy, flight, &outcome, &mut sample);
            }
            (None, Outcome::Dropped(reason)) => {
                self.observer
                    .not_sent(self.mirror, job.copy.key(), NotSent::Dropped(reason));
            }
            // Only drops end a copy before a worker took it.
            (None, _) => {}
        }
        job.ticket.resolve(outcome);
    }

    /// No connection for `batch`: the mirror is in backoff (`failed` is `None`), or connecting
    /// failed with `failed` just now. The first copy paid for a failed attempt and gets its
    /// error; the rest are backoff drops, as they would have been one by one.
    pub(super) fn unreachable(
        &self,
        batch: &mut std::collections::VecDeque<Job<O::Flight>>,
        failed: Option<super::stats::ErrorKind>,
    ) {
        if let Some(kind) = failed
            && let Some(job) = batch.pop_front()
        {
            self.resolve(job, Outcome::Error(kind));
        }
        for job in batch.drain(..) {
            self.resolve(job, Outcome::Dropped(super::stats::DropReason::Backoff));
        }
    }

    /// The worker took the copy: the observer starts its flight (and may change the bytes).
    pub(super) fn take(&self, job: &mut Job<O::Flight>) {
        if job.flight.is_none() {
            job.flight = Some(self.observer.sending(self.mirror, &mut job.copy));
        }
    }
}
