//! The per-thread fast path: each thread keeps a small stash of idle buffers per class and per
//! pool, so a worker that gets and puts buffers in a loop touches no shared lock.
//!
//! The stash itself is an `Arc<OrderedMutex<Lists, SgvStash>>` (level `sgv.stash`) registered in its pool, so that the pool can
//! drain every thread's stash (flush, shutdown, eviction under the cap). Its owner thread is
//! the only one that locks it on the data path, so that lock is uncontended. When the thread
//! exits, its stash is handed back to the pool's shared lists.

use super::shared::Lists;
use super::shared::Shared;
use crate::PAGE_SIZE;
use scst_accel_hal::locks::levels;
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
        // The thread is exiting (or the entry is pruned): its idle buffers go back to the pool.
        if let Some(shared) = self.owner.upgrade() {
            shared.adopt_orphan(&self.lists);
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Vec<LocalStash>> = const { RefCell::new(Vec::new()) };
}

/// This thread's stash for `shared`, made and registered on first use. `None` while the
/// thread's locals are being torn down (the caller then uses the shared lists).
pub(super) fn local_stash(shared: &Arc<Shared>) -> Option<StashRef> {
    LOCAL
        .try_with(|cell| {
            let mut stashes = cell.try_borrow_mut().ok()?;
            if let Some(found) = stashes.iter().find(|s| s.pool_id == shared.id) {
                return Some(found.lists.clone());
            }
            // Forget stashes of pools that are gone (they were drained when the pool died).
            stashes.retain(|s| s.owner.strong_count() > 0);
            let lists = StashRef::default();
            shared.register_stash(lists.clone());
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
