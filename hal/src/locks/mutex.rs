//! [`OrderedMutex`]: `std::sync::Mutex` with a place in the lock hierarchy.

use std::marker::PhantomData;
use std::sync::LockResult;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::TryLockError;
use std::time::Duration;
use std::time::Instant;

use super::levels::LockBefore;
use super::levels::LockLevel;
use super::runtime::Held;
use super::LockToken;

/// Spin hints between two tries of a spinning lock ([`OrderedMutex::lock_spinning`]).
const SPIN_HINTS_PER_TRY: u32 = 8;
/// Tries of a spinning lock between two looks at the clock.
const TRIES_PER_CLOCK_READ: u32 = 4;

/// A mutex of level `L`. Taken with a token ([`OrderedMutex::lock`], checked by the compiler and
/// at run time) or without one ([`OrderedMutex::lock_unchecked_at_runtime`], checked at run time
/// only). A poisoned mutex is recovered: its value is used as is, the poisoning is logged and
/// cleared; callers keep their data consistent at every step, as the project's rules require.
pub struct OrderedMutex<T: ?Sized, L: LockLevel> {
    _level: PhantomData<fn() -> L>,
    inner: Mutex<T>,
}

/// The guard of an [`OrderedMutex`]: dereferences to the value; dropping it unlocks.
#[must_use = "the lock is released when the guard is dropped"]
pub struct OrderedMutexGuard<'a, T: ?Sized, L: LockLevel> {
    pub(crate) inner: MutexGuard<'a, T>,
    pub(crate) held: Held,
    pub(crate) _level: PhantomData<fn() -> L>,
}

impl<T, L: LockLevel> OrderedMutex<T, L> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            _level: PhantomData,
            inner: Mutex::new(value),
        }
    }

    /// The value (a poisoned mutex's value is returned as is).
    pub fn into_inner(self) -> T {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized, L: LockLevel> OrderedMutex<T, L> {
    /// Lock, with `token` proving at compile time that this thread holds nothing at or above
    /// `L`. Returns the guard and the token for taking locks above `L` while it is held; both
    /// borrow `token`, which is usable again once they are dropped.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: if this thread holds a checked lock at or above `L` taken
    /// outside the token chain (the runtime check backs the types).
    #[track_caller]
    pub fn lock<'a, M>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> (OrderedMutexGuard<'a, T, L>, LockToken<'a, L>)
    where
        M: LockBefore<L>,
    {
        let _ = token;
        (self.lock_unchecked_at_runtime(), LockToken::new())
    }

    /// Lock without a token, where one cannot be threaded through (callbacks, trait objects,
    /// `Drop`). Not checked by the compiler; checked at run time in debug and test builds.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: at once (before blocking) if this thread holds a checked lock
    /// of level `L` or above: "lock order violation: taking `a` (level n) while holding `b`
    /// (level m)".
    #[track_caller]
    pub fn lock_unchecked_at_runtime(&self) -> OrderedMutexGuard<'_, T, L> {
        Held::check(L::LEVEL, L::NAME);
        self.acquire(Duration::ZERO)
    }

    /// Lock like [`OrderedMutex::lock`], except that a thread finding the mutex held first
    /// spins for up to `spin`, retrying between spin hints, and only then blocks. For a lock
    /// whose sections are short and bounded and whose holders never block inside them: there a
    /// futex sleep and the holder's wake-up (two syscalls and a context switch) cost more than
    /// the wait. The spin is bounded, so a holder preempted by the scheduler costs the waiter at
    /// most `spin` before it sleeps as with [`OrderedMutex::lock`].
    ///
    /// # Panics
    /// As [`OrderedMutex::lock`].
    #[track_caller]
    pub fn lock_spinning<'a, M>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
        spin: Duration,
    ) -> (OrderedMutexGuard<'a, T, L>, LockToken<'a, L>)
    where
        M: LockBefore<L>,
    {
        let _ = token;
        Held::check(L::LEVEL, L::NAME);
        (self.acquire(spin), LockToken::new())
    }

    /// Take the lock: one try (so a wait behind another thread is counted in lock_stats), then
    /// tries between spin hints for up to `spin`, then a blocking wait.
    fn acquire(&self, spin: Duration) -> OrderedMutexGuard<'_, T, L> {
        let (result, contended) = match self.inner.try_lock() {
            Ok(guard) => (Ok(guard), false),
            Err(TryLockError::Poisoned(poisoned)) => (Err(poisoned), false),
            Err(TryLockError::WouldBlock) => match self.spin_for(spin) {
                Some(result) => (result, true),
                None => (self.inner.lock(), true),
            },
        };
        let inner = result.unwrap_or_else(|poisoned| {
            log::warn!(
                "lock `{}` was poisoned by a panic while held; using its value as is",
                L::NAME
            );
            self.inner.clear_poison();
            poisoned.into_inner()
        });
        OrderedMutexGuard {
            inner,
            held: Held::acquired(L::LEVEL, L::NAME, contended),
            _level: PhantomData,
        }
    }

    /// Retry the lock for up to `spin`, [`SPIN_HINTS_PER_TRY`] spin hints between tries (a try
    /// is a compare-and-swap on the lock word: done back to back, the waiters would keep taking
    /// the holder's cache line away). `None` when the time is up.
    fn spin_for(&self, spin: Duration) -> Option<LockResult<MutexGuard<'_, T>>> {
        if spin.is_zero() {
            return None;
        }
        let until = Instant::now() + spin;
        let mut tries = 0u32;
        loop {
            for _ in 0..SPIN_HINTS_PER_TRY {
                std::hint::spin_loop();
            }
            match self.inner.try_lock() {
                Ok(guard) => return Some(Ok(guard)),
                Err(TryLockError::Poisoned(poisoned)) => return Some(Err(poisoned)),
                Err(TryLockError::WouldBlock) => {}
            }
            // The clock is read every few tries: a read costs about as much as a try.
            tries = tries.wrapping_add(1);
            if tries.is_multiple_of(TRIES_PER_CLOCK_READ) && Instant::now() >= until {
                return None;
            }
        }
    }

    /// Lock if free, without waiting (runtime-checked like
    /// [`OrderedMutex::lock_unchecked_at_runtime`]); `None` if another thread holds it.
    ///
    /// # Panics
    /// As [`OrderedMutex::lock_unchecked_at_runtime`].
    #[track_caller]
    pub fn try_lock_unchecked_at_runtime(&self) -> Option<OrderedMutexGuard<'_, T, L>> {
        Held::check(L::LEVEL, L::NAME);
        let inner = match self.inner.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => {
                log::warn!(
                    "lock `{}` was poisoned by a panic while held; using its value as is",
                    L::NAME
                );
                self.inner.clear_poison();
                poisoned.into_inner()
            }
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(OrderedMutexGuard {
            inner,
            held: Held::acquired(L::LEVEL, L::NAME, false),
            _level: PhantomData,
        })
    }

    /// The value, through exclusive access (no locking, so no check).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock's name (its level's).
    pub fn name(&self) -> &'static str {
        L::NAME
    }
}

impl<T: Default, L: LockLevel> Default for OrderedMutex<T, L> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized, L: LockLevel> std::fmt::Debug for OrderedMutex<T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never locks: Debug may be called with the lock held (or from a panic message).
        f.debug_struct("OrderedMutex")
            .field("name", &L::NAME)
            .field("level", &L::LEVEL)
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized, L: LockLevel> std::ops::Deref for OrderedMutexGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized, L: LockLevel> std::ops::DerefMut for OrderedMutexGuard<'_, T, L> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized + std::fmt::Debug, L: LockLevel> std::fmt::Debug for OrderedMutexGuard<'_, T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.inner, f)
    }
}
