//! [`OrderedRwLock`]: `std::sync::RwLock` with a place in the lock hierarchy. Readers and
//! writers are checked alike: holding a read guard while taking a lock of the same or a lower
//! level is as much a deadlock risk as a write guard (a writer queued between two readers
//! blocks the second).

use std::marker::PhantomData;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::TryLockError;

use super::levels::LockBefore;
use super::levels::LockLevel;
use super::runtime::Held;
use super::LockToken;

/// A reader-writer lock of level `L`; see [`OrderedMutex`](super::OrderedMutex) for the two
/// ways of taking it and for poisoning.
pub struct OrderedRwLock<T: ?Sized, L: LockLevel> {
    _level: PhantomData<fn() -> L>,
    inner: RwLock<T>,
}

/// Shared access to an [`OrderedRwLock`]'s value.
#[must_use = "the lock is released when the guard is dropped"]
pub struct OrderedReadGuard<'a, T: ?Sized, L: LockLevel> {
    inner: RwLockReadGuard<'a, T>,
    _held: Held,
    _level: PhantomData<fn() -> L>,
}

/// Exclusive access to an [`OrderedRwLock`]'s value.
#[must_use = "the lock is released when the guard is dropped"]
pub struct OrderedWriteGuard<'a, T: ?Sized, L: LockLevel> {
    inner: RwLockWriteGuard<'a, T>,
    _held: Held,
    _level: PhantomData<fn() -> L>,
}

fn recovered<G>(name: &str, poisoned: PoisonError<G>) -> G {
    log::warn!("lock `{name}` was poisoned by a panic while held; using its value as is");
    poisoned.into_inner()
}

impl<T, L: LockLevel> OrderedRwLock<T, L> {
    /// A lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            _level: PhantomData,
            inner: RwLock::new(value),
        }
    }

    /// The value (a poisoned lock's value is returned as is).
    pub fn into_inner(self) -> T {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized, L: LockLevel> OrderedRwLock<T, L> {
    /// Shared lock, checked at compile time by `token` (see
    /// [`OrderedMutex::lock`](super::OrderedMutex::lock)).
    ///
    /// # Panics
    /// As [`OrderedRwLock::read_unchecked_at_runtime`].
    #[track_caller]
    pub fn read<'a, M>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> (OrderedReadGuard<'a, T, L>, LockToken<'a, L>)
    where
        M: LockBefore<L>,
    {
        let _ = token;
        (self.read_unchecked_at_runtime(), LockToken::new())
    }

    /// Exclusive lock, checked at compile time by `token`.
    ///
    /// # Panics
    /// As [`OrderedRwLock::write_unchecked_at_runtime`].
    #[track_caller]
    pub fn write<'a, M>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> (OrderedWriteGuard<'a, T, L>, LockToken<'a, L>)
    where
        M: LockBefore<L>,
    {
        let _ = token;
        (self.write_unchecked_at_runtime(), LockToken::new())
    }

    /// Shared lock without a token; checked at run time in debug and test builds.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: at once if this thread holds a checked lock of level `L` or
    /// above (including this one: a recursive read can deadlock behind a queued writer).
    #[track_caller]
    pub fn read_unchecked_at_runtime(&self) -> OrderedReadGuard<'_, T, L> {
        Held::check(L::LEVEL, L::NAME);
        // One try first, so a wait behind another thread is counted (lock_stats).
        let (result, contended) = match self.inner.try_read() {
            Ok(guard) => (Ok(guard), false),
            Err(TryLockError::Poisoned(poisoned)) => (Err(poisoned), false),
            Err(TryLockError::WouldBlock) => (self.inner.read(), true),
        };
        let inner = result.unwrap_or_else(|p| {
            self.inner.clear_poison();
            recovered(L::NAME, p)
        });
        OrderedReadGuard {
            inner,
            _held: Held::acquired(L::LEVEL, L::NAME, contended),
            _level: PhantomData,
        }
    }

    /// Exclusive lock without a token; checked at run time in debug and test builds.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: at once if this thread holds a checked lock of level `L` or
    /// above.
    #[track_caller]
    pub fn write_unchecked_at_runtime(&self) -> OrderedWriteGuard<'_, T, L> {
        Held::check(L::LEVEL, L::NAME);
        // One try first, so a wait behind another thread is counted (lock_stats).
        let (result, contended) = match self.inner.try_write() {
            Ok(guard) => (Ok(guard), false),
            Err(TryLockError::Poisoned(poisoned)) => (Err(poisoned), false),
            Err(TryLockError::WouldBlock) => (self.inner.write(), true),
        };
        let inner = result.unwrap_or_else(|p| {
            self.inner.clear_poison();
            recovered(L::NAME, p)
        });
        OrderedWriteGuard {
            inner,
            _held: Held::acquired(L::LEVEL, L::NAME, contended),
            _level: PhantomData,
        }
    }

    /// The value, through exclusive access (no locking, so no check).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Default, L: LockLevel> Default for OrderedRwLock<T, L> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized, L: LockLevel> std::fmt::Debug for OrderedRwLock<T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedRwLock")
            .field("name", &L::NAME)
            .field("level", &L::LEVEL)
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized, L: LockLevel> std::ops::Deref for OrderedReadGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized, L: LockLevel> std::ops::Deref for OrderedWriteGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized, L: LockLevel> std::ops::DerefMut for OrderedWriteGuard<'_, T, L> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}
