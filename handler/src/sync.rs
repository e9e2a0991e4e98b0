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
pub(crate) use std::sync::atomic::AtomicBool;
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
pub(crate) use loom::sync::atomic::AtomicBool;
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

/// A mutex with a level in the lock hierarchy (docs/locking.md), taken with a [`LockToken`]
/// like every command-path lock: hal's `OrderedMutex` in a normal build (checked by the
/// compiler and at run time, counted in the lock statistics), loom's mutex behind the same
/// token API in the model-checking build (checked by the compiler only; loom explores the
/// interleavings).
///
/// [`LockToken`]: scst_accel_hal::locks::LockToken
#[cfg(not(loom))]
pub(crate) type LevelMutex<T, L> = scst_accel_hal::locks::OrderedMutex<T, L>;
/// The guard of a [`LevelMutex`].
#[cfg(not(loom))]
pub(crate) type LevelGuard<'a, T, L> = scst_accel_hal::locks::OrderedMutexGuard<'a, T, L>;
/// A condition variable waited on with a [`LevelGuard`].
#[cfg(not(loom))]
pub(crate) type LevelCondvar = scst_accel_hal::locks::OrderedCondvar;

#[cfg(loom)]
pub(crate) use level_loom::LevelCondvar;
#[cfg(loom)]
pub(crate) use level_loom::LevelGuard;
#[cfg(loom)]
pub(crate) use level_loom::LevelMutex;

#[cfg(loom)]
mod level_loom {
    use scst_accel_hal::locks::LockBefore;
    use scst_accel_hal::locks::LockLevel;
    use scst_accel_hal::locks::LockToken;
    use std::marker::PhantomData;

    pub(crate) struct LevelGuard<'a, T, L> {
        pub(crate) inner: loom::sync::MutexGuard<'a, T>,
        pub(crate) _level: PhantomData<fn() -> L>,
    }

    impl<T, L> std::ops::Deref for LevelGuard<'_, T, L> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.inner
        }
    }

    impl<T, L> std::ops::DerefMut for LevelGuard<'_, T, L> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.inner
        }
    }

    pub(crate) type LevelCondvar = loom::sync::Condvar;

    pub(crate) struct LevelMutex<T, L> {
        inner: loom::sync::Mutex<T>,
        _level: PhantomData<fn() -> L>,
    }

    impl<T, L: LockLevel> LevelMutex<T, L> {
        pub(crate) fn new(value: T) -> Self {
            Self {
                inner: loom::sync::Mutex::new(value),
                _level: PhantomData,
            }
        }

        pub(crate) fn lock<'a, M: LockBefore<L>>(
            &'a self,
            token: &'a mut LockToken<'_, M>,
        ) -> (LevelGuard<'a, T, L>, LockToken<'a, L>) {
            let inner = super::lock(&self.inner, L::NAME);
            (
                LevelGuard {
                    inner,
                    _level: PhantomData,
                },
                token.for_foreign_lock::<L>(),
            )
        }
    }
}

/// Waits on `condvar` with a [`LevelMutex`]'s guard for at most `timeout` (loom: until woken).
pub(crate) fn wait_level<'a, T, L: scst_accel_hal::locks::LockLevel>(
    condvar: &LevelCondvar,
    guard: LevelGuard<'a, T, L>,
    timeout: Duration,
) -> LevelGuard<'a, T, L> {
    #[cfg(not(loom))]
    {
        condvar.wait_timeout(guard, timeout).0
    }
    #[cfg(loom)]
    {
        let level_loom::LevelGuard { inner, _level } = guard;
        level_loom::LevelGuard {
            inner: wait_timeout(condvar, inner, timeout, L::NAME),
            _level,
        }
    }
}

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
