//! The per-thread fast path: each thread keeps a small stash of idle buffers per class and per
//! pool, so a worker that gets and puts buffers in a loop touches no shared lock.
//!
//! The stash itself is an `Arc<OrderedMutex<Lists, SgvStash>>` (level `sgv.stash`) registered in its pool, so that the pool can
//! drain every thread's stash (flush, shutdown, eviction under the cap). Its owner thread is
//! the only one that locks it on the data path, so that lock is uncontended.
//!
//! A thread that is done with a pool hands its stash back explicitly with
//! [`return_local_stash`] (`SgvPool::return_thread_stash`). The thread-local destructor does the
//! same as a safety net, but nothing may rely on *when* it runs: `std::thread::scope`'s implicit
//! join and `JoinHandle::is_finished` both report a thread done before its thread-local
//! destructors have run (rust-lang/rust#116237). The pool counts a stash whose buffers are being
//! moved as in transit, and `shutdown` waits (bounded) for those moves, so a late destructor
//! cannot leave a buffer mapped after `shutdown` returned.

use super::shared::Lists;
use super::shared::PoolToken;
use super::shared::Shared;
use crate::PAGE_SIZE;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::Weak;

/// A thread's stash for one pool.
pub(super) type StashRef = Arc<OrderedMutex<Lists, levels::SgvStash>>;

/// Bytes a thread keeps per class before spilling to the shared lists.
const STASH_BYTES: usize = 1 << 20;

/// Buffers a thread keeps per class, at most.
const STASH_MAX_BUFFERS: usize = 16;

/// How many idle buffers of `class` a thread may keep: 16 small ones, fewer large ones, none
/// above 1 MiB (those go straight to the shared lists: too big to strand on one thread).
pub(super) fn stash_limit(class: u8) -> usize {
    (STASH_BYTES / (PAGE_SIZE << class.min(31))).min(STASH_MAX_BUFFERS)
}

struct LocalStash {
    pool_id: u64,
    owner: Weak<Shared>,
    lists: StashRef,
}

impl Drop for LocalStash {
    fn drop(&mut self) {
        // The thread is exiting (its thread-local destructor), or handing the stash back
        // (`return_local_stash`), or the entry is pruned: its idle buffers go back to the pool.
        // No token reaches a destructor, so the chain starts here: a thread-local destructor
        // runs after the thread's closure returned (no guard can be alive), and the explicit
        // paths are pool calls made with no lock held; the root token asserts it.
        if let Some(shared) = self.owner.upgrade() {
            shared.adopt_orphan(&mut LockToken::root(), &self.lists);
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Vec<LocalStash>> = const { RefCell::new(Vec::new()) };
}

/// This thread's stash for `shared`, made and registered on first use. `None` while the
/// thread's locals are being torn down (the caller then uses the shared lists).
pub(super) fn local_stash(shared: &Arc<Shared>, token: &mut PoolToken<'_>) -> Option<StashRef> {
    LOCAL
        .try_with(|cell| {
            let mut stashes = cell.try_borrow_mut().ok()?;
            if let Some(found) = stashes.iter().find(|s| s.pool_id == shared.id) {
                return Some(found.lists.clone());
            }
            // Forget stashes of pools that are gone (they were drained when the pool died).
            stashes.retain(|s| s.owner.strong_count() > 0);
            let lists = StashRef::default();
            shared.register_stash(token, lists.clone());
            stashes.push(LocalStash {
                pool_id: shared.id,
                owner: Arc::downgrade(shared),
                lists: lists.clone(),
            });
            Some(lists)
        })
        .ok()
        .flatten()
}

/// Hand this thread's stash for `shared` back to the pool now (its buffers join the shared
/// lists, or are released if the pool is closed) and forget it. Returns whether the thread
/// had one. A later `get`/`put` on this thread makes a new stash.
pub(super) fn return_local_stash(shared: &Shared) -> bool {
    let taken = LOCAL
        .try_with(|cell| {
            let mut stashes = cell.try_borrow_mut().ok()?;
            let at = stashes.iter().position(|s| s.pool_id == shared.id)?;
            Some(stashes.swap_remove(at))
        })
        .ok()
        .flatten();
    // Dropped outside the RefCell borrow: the drop hands the stash to the pool.
    taken.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_shrink_with_class_size() {
        assert_eq!(stash_limit(0), 16);
        assert_eq!(stash_limit(4), 16);
        assert_eq!(stash_limit(5), 8);
        assert_eq!(stash_limit(8), 1);
        assert_eq!(stash_limit(9), 0);
        assert_eq!(stash_limit(10), 0);
        assert_eq!(stash_limit(u8::MAX), 0);
    }
}
