//! The checked lock hierarchy of scst-accel (architecture.md §4, docs/locking.md).
//!
//! Every lock of the product has a level ([`levels`], one ordered list; the exceptions, one
//! leaf mutex and a few flags, are listed in docs/locking.md). A thread may take a
//! lock only while every lock it holds is of a strictly lower level, so no two threads can wait
//! for each other's locks: the AB-BA deadlock of SCST's history (cleanup took the buffer-pool
//! lock then the command-list lock, I/O the other way round; scst_user.md §5.6) cannot happen.
//! Two checks enforce it:
//!
//! - **At compile time** (in the manner of Fuchsia netstack3's lock-order crate): a
//!   [`LockToken`] carries the level of the last lock taken as a type;
//!   [`OrderedMutex::lock`]`(&mut token)` compiles only if that level is
//!   [`LockBefore`] the mutex's, and returns the guard with a token of the new level:
//!
//!   ```
//!   use scst_accel_hal::locks::{levels, LockToken, OrderedMutex};
//!   let table = OrderedMutex::<Vec<u64>, levels::CmdTable>::new(Vec::new());
//!   let free = OrderedMutex::<Vec<u64>, levels::SgvPool>::new(vec![7]);
//!   let mut token = LockToken::root();
//!   let (mut entries, mut inner) = table.lock(&mut token);
//!   let (mut lists, _) = free.lock(&mut inner);
//!   entries.extend(lists.pop());
//!   ```
//!
//! - **At run time**, in debug and test builds, and in release builds with the `lock-check`
//!   feature (as tracing-mutex): every acquisition, with or without a token, checks a
//!   per-thread stack of held locks and fails at once, before blocking, on an inversion:
//!   "lock order violation: taking `frontend.cmd_table` (level 2) at src/x.rs:10:5 while
//!   holding `sgv.pool` (level 8) taken at src/y.rs:20:9", on stderr and in the log, and the
//!   process aborts, never deadlocks (a test that provokes a violation on purpose holds
//!   [`expect_violations`], and gets a panic there instead). Call sites that cannot thread a token (callbacks,
//!   trait objects, `Drop`) use [`OrderedMutex::lock_unchecked_at_runtime`] and rely on this.
//!   Locks of the same level are never nested, so the order is total and no cycle can form.
//!
//! And one rule no type sees: no lock is held across a blocking call. [`assert_no_locks_held`]
//! checks it at every blocking point (scst_user and VFIO ioctls, `poll`, condition-variable
//! waits); [`sleep`], [`join`], [`join_bounded`], [`recv_timeout`] and [`blocking`] assert
//! before they block.
//!
//! Without the runtime checker (release builds without `lock-check`) the checks compile to
//! nothing. Either way every lock level keeps [`lock_stats`]: acquisitions, contended
//! acquisitions and the longest hold. A poisoned lock is recovered (its value used as is, the
//! poisoning logged), never turned into a panic.

mod blocking;
mod condvar;
pub mod levels;
mod mutex;
mod runtime;
mod rwlock;
mod stats;
mod token;

#[cfg(test)]
mod tests;

pub use blocking::blocking;
pub use blocking::join;
pub use blocking::join_bounded;
pub use blocking::recv_timeout;
pub use blocking::sleep;
pub use blocking::TimedRecv;
pub use condvar::OrderedCondvar;
pub use levels::Level;
pub use levels::LockBefore;
pub use levels::LockLevel;
pub use mutex::OrderedMutex;
pub use mutex::OrderedMutexGuard;
pub use runtime::assert_no_locks_held;
pub use runtime::expect_violations;
pub use runtime::held_locks;
pub use runtime::no_checked_lock_held;
pub use runtime::observed_edges;
pub use runtime::ExpectViolations;
pub use runtime::LOCK_CHECK;
pub use rwlock::OrderedReadGuard;
pub use rwlock::OrderedRwLock;
pub use rwlock::OrderedWriteGuard;
pub use stats::lock_stats;
pub use stats::LockStat;
pub use token::LockToken;
