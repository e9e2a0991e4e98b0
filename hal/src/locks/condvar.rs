//! [`OrderedCondvar`]: a condition variable for [`OrderedMutex`]es that keeps the held-lock
//! stack right: a wait releases the mutex, so its entry is popped for the wait and pushed again
//! (re-checked) when the mutex is re-taken.
//!
//! A wait is a blocking call: no other checked lock may be held across it (asserted in debug
//! and test builds), only the mutex being waited on. Waits are always bounded (`wait_timeout`);
//! there is no unbounded `wait`.
//!
//! A notification with nobody waiting is not sent: the std condition variable makes a futex
//! syscall on every notify, waiters or not, and the command paths notify far more often than
//! anyone waits (a loopback submit wakes the fetchers, a simulated device's command release
//! wakes its reset waiters). Waiters are counted while they hold the mutex, so the rule every
//! condition variable has is the one rule here: change what the waiters check under the mutex,
//! then notify (holding it or not); a waiter that checked before the change was counted before
//! the notifier took the mutex, and one that checks after it sees the change.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Condvar;
use std::time::Duration;

use super::levels::LockLevel;
use super::runtime::assert_no_locks_held;
use super::runtime::Held;
use super::OrderedMutexGuard;

/// A condition variable used with [`OrderedMutex`](super::OrderedMutex)es.
#[derive(Debug, Default)]
pub struct OrderedCondvar {
    inner: Condvar,
    /// Threads inside [`OrderedCondvar::wait_timeout`], counted with the mutex held.
    waiters: AtomicUsize,
}

impl OrderedCondvar {
    /// A new condition variable.
    pub const fn new() -> Self {
        Self {
            inner: Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    /// Release `guard`'s mutex, wait for a notification or `timeout`, re-take the mutex.
    /// Returns the guard and whether the wait timed out. A poisoned mutex is recovered.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: if this thread holds any checked lock other than `guard`'s.
    #[track_caller]
    pub fn wait_timeout<'a, T, L: LockLevel>(
        &self,
        guard: OrderedMutexGuard<'a, T, L>,
        timeout: Duration,
    ) -> (OrderedMutexGuard<'a, T, L>, bool) {
        let OrderedMutexGuard { inner, held, _level } = guard;
        drop(held);
        assert_no_locks_held("Condvar::wait_timeout");
        // Counted before the wait releases the mutex (see the module's comment).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let waited = self.inner.wait_timeout(inner, timeout);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        let (inner, result) = waited.unwrap_or_else(|poisoned| {
            log::warn!(
                "lock `{}` was poisoned by a panic while held; using its value as is",
                L::NAME
            );
            poisoned.into_inner()
        });
        let guard = OrderedMutexGuard {
            inner,
            held: Held::acquired(L::LEVEL, L::NAME, false),
            _level,
        };
        (guard, result.timed_out())
    }

    /// Wake one waiter, if one waits.
    pub fn notify_one(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.inner.notify_one();
        }
    }

    /// Wake every waiter, if one waits.
    pub fn notify_all(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.inner.notify_all();
        }
    }
}
