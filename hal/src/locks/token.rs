//! [`LockToken`]: the compile-time half of the checker, in the manner of Fuchsia netstack3's
//! `Locked<T, L>`. A token carries, as a type, the level of the last lock its thread took;
//! `lock(&mut token)` compiles only when that level is before the lock's own
//! ([`LockBefore`](super::LockBefore)), and hands back a token of the new level that borrows the
//! old one, so the old one cannot be used again until the new guard and token are gone.

use std::marker::PhantomData;

use super::levels::Level;
use super::levels::LockBefore;
use super::levels::LockLevel;
use super::levels::Root;
use super::runtime::assert_no_locks_held;

/// Proof that the current thread holds no checked lock above level `L`.
///
/// Not `Send`, `Sync`, `Copy` or `Clone`: a token belongs to one thread and to one chain of
/// acquisitions. Using a token after moving it does not compile:
///
/// ```compile_fail
/// use scst_accel_hal::locks::{levels, LockToken, OrderedMutex};
/// fn takes(_: LockToken<'_, levels::Root>) {}
/// let m = OrderedMutex::<u32, levels::CmdTable>::new(0);
/// let mut token = LockToken::root();
/// takes(token);
/// let _ = m.lock(&mut token); // borrow of moved value
/// ```
#[derive(Debug)]
pub struct LockToken<'a, L: Level> {
    _level: PhantomData<fn() -> L>,
    /// Ties the token to the borrow of its parent token (or guard), and makes it `!Send`.
    _borrow: PhantomData<(&'a mut (), *const ())>,
}

impl LockToken<'static, Root> {
    /// The token of a thread that holds no checked lock: the start of every chain. Asserts
    /// (debug and test builds) that this thread really holds none, so a second root token made
    /// under a lock is caught at once.
    ///
    /// # Panics
    /// A violation aborts the process (docs/locking.md; a panic where the thread holds
    /// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when this thread holds a checked lock.
    #[track_caller]
    pub fn root() -> Self {
        assert_no_locks_held("LockToken::root");
        Self::new()
    }
}

impl<L: Level> LockToken<'_, L> {
    pub(crate) fn new() -> Self {
        Self {
            _level: PhantomData,
            _borrow: PhantomData,
        }
    }

    /// The token for a lock of level `M` that is not one of this module's types: the caller
    /// takes that lock itself (the handler's teardown primitives, whose mutexes are loom's in
    /// the model-checking build, `handler/src/sync.rs`). The order is checked by the compiler
    /// exactly as for [`OrderedMutex::lock`](super::OrderedMutex::lock); the runtime stack does
    /// not see the lock.
    pub fn for_foreign_lock<M: LockLevel>(&mut self) -> LockToken<'_, M>
    where
        L: LockBefore<M>,
    {
        LockToken::new()
    }

    /// The level this token stands for (0 for [`Root`]).
    pub fn level(&self) -> u32 {
        L::LEVEL
    }
}
