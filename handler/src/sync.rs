//! The handler's synchronisation primitives, swappable for the loom model checker.
//!
//! Code whose correctness rests on an interleaving argument (the teardown's drain and lease
//! accounting, [`crate::teardown`]) imports its `Arc`, `Mutex`, `Condvar` and atomics from here,
//! never from `std::sync` directly. A normal build re-exports std's. A build with
//! `RUSTFLAGS="--cfg loom"` (the loom step of `.ci/run`) re-exports loom's instead, so
//! `tests/loom_teardown.rs` explores every interleaving of the *real* code, not of a copy.
//!
//! Time is not modelled by loom, so the two things that depend on it live here too:
//! - [`Deadline`]: under loom a non-zero timeout never expires (a wait ends only by its wake-up,
//!   so a lost wake-up shows as a loom deadlock instead of hiding behind a timeout), while a zero
//!   timeout is expired at once (the timeout path stays reachable, deterministically);
//! - [`wait_timeout`]: std's timed wait, or loom's wait (loom's `wait_timeout` never times out).

use std::time::Duration;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::Condvar;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::MutexGuard;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::Ordering;
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::Condvar;
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::MutexGuard;

/// Locks `mutex`, recovering the data if a previous holder panicked.
///
/// The teardown's state stays consistent across a panic (every critical section is a few plain
/// field updates), and teardown must go on after a worker died, so poison is logged, not
/// propagated.
pub(crate) fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        log::warn!("{what}: lock poisoned by a panicked thread; continuing with its state");
        poisoned.into_inner()
    })
}

/// Waits on `condvar` for at most `timeout` (see the module doc for loom), recovering poison.
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    what: &str,
) -> MutexGuard<'a, T> {
    let on_poison = |poisoned: std::sync::PoisonError<MutexGuard<'a, T>>| {
        log::warn!("{what}: lock poisoned by a panicked thread while waiting; continuing");
        poisoned.into_inner()
    };
    #[cfg(not(loom))]
    {
        condvar
            .wait_timeout(guard, timeout)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poisoned| on_poison(std::sync::PoisonError::new(poisoned.into_inner().0)))
    }
    #[cfg(loom)]
    {
        let _ = timeout;
        condvar.wait(guard).unwrap_or_else(on_poison)
    }
}

/// The end of a bounded wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    /// `None` when `now + timeout` overflows `Instant`: such a wait is still bounded, by the
    /// caller's absurd timeout, and is carried out in [`Self::FAR_STEP`] steps.
    #[cfg(not(loom))]
    at: Option<std::time::Instant>,
    #[cfg(loom)]
    timeout: Duration,
}

impl Deadline {
    /// Longest single wait when the deadline is not representable.
    #[cfg(not(loom))]
    const FAR_STEP: Duration = Duration::from_secs(3600);

    /// A deadline `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Self {
        #[cfg(not(loom))]
        {
            Self {
                at: std::time::Instant::now().checked_add(timeout),
            }
        }
        #[cfg(loom)]
        {
            Self { timeout }
        }
    }

    /// Time left, or `None` once the deadline has passed.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        #[cfg(not(loom))]
        {
            match self.at {
                Some(at) => at
                    .checked_duration_since(std::time::Instant::now())
                    .filter(|d| !d.is_zero()),
                None => Some(Self::FAR_STEP),
            }
        }
        #[cfg(loom)]
        {
            (!self.timeout.is_zero()).then_some(self.timeout)
        }
    }
}
