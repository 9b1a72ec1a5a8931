//! The agent's one mutex-poisoning policy: recover the data.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it. The agent's mutexes
//! guard counters, histograms, queues, caches and snapshots, and no critical section leaves its
//! data half-updated: each one either makes no change that breaks an invariant before its last
//! step, or can only panic before its first change. So the data behind a poisoned lock is still
//! good, and taking it back keeps the agent counting, queueing and exporting after a panic
//! elsewhere, where skipping would silently stop it. Every `std::sync::Mutex` in the agent is
//! locked through [`lock`]; a critical section that could not keep that promise must say so.
//!
//! The one known soft spot: the comparison's `Comparator` updates its pending entries, held
//! bytes and counters in several steps. Only an accounting bug (an integer underflow, which
//! panics in debug builds only) could stop it midway; the counters could then be off, which is
//! still better than a comparison that stops counting. The dispatcher queue marks a flow busy
//! before moving its batch, but nothing in between can panic.
//!
//! Owns this policy only; depends on nothing else in the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking the data back if a panic poisoned it (see the module docs for why that
/// is sound for the agent's mutexes).
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_gives_back_the_data() {
        let m = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let mut g = m.lock().expect("not poisoned yet");
            *g = 2;
            panic!("poison it");
        });
        assert!(m.is_poisoned(), "the panic poisons the mutex");
        assert_eq!(*lock(&m), 2, "the data written before the panic is kept");
    }
}
