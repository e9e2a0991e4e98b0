//! The command-buffer table: every buffer the handler has handed to SCST, by user address.
//!
//! SCST refers to buffers only by address (`pbuf`), and the message that returns one
//! (ON_FREE_CMD, ON_CACHED_MEM_FREE) may reach any worker, so the table is shared. Its mutex is
//! a leaf lock held for one hash operation; allocation and unmapping happen outside it.
//!
//! The table's lock is not taken per command: each worker looks buffers up through its own
//! [`BufferCache`], which asks the table only for an address it has not seen since the table
//! last changed (a buffer released or replaced bumps the table's generation, and every cache
//! drops its entries when it sees a new one). In steady state (SCST's SGV cache warm, the same
//! buffers coming back in EXEC after EXEC) a command takes no lock here at all. A cache holds
//! `Arc`s, so a stale entry can never point at freed memory: it only keeps a released buffer
//! out of the pool until its worker next looks at the generation (each loop iteration; the
//! worker that released rings the others' doorbells so idle ones look at once).
//!
//! Every method takes the caller's [`LockToken`]: a worker owns one from the top of its thread
//! and passes it here, so the compiler checks that the table is never taken under a lock that
//! comes after it (the SGV pool's, the lease table's: SCST's inversion, `scst_user.md §5.5`).
//! Buffers are never freed while SCST may still use them: only ON_FREE_CMD with
//! `buffer_cached == 0`, ON_CACHED_MEM_FREE, or an EXEC reply the kernel ignores (spec §3.5,
//! §8.9) remove an entry; the memory is unmapped when the last command holding it finishes.

use crate::int_map::IntMap;
use crate::store::CmdBuffer;
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Byte and count figures of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferFigures {
    /// Buffers currently handed to SCST.
    pub buffers: u64,
    /// Bytes of those buffers.
    pub bytes: u64,
    /// Allocations made.
    pub allocated: u64,
    /// Buffers returned by SCST and released.
    pub released: u64,
    /// Allocations refused by the pool (cap reached or no memory).
    pub refused: u64,
}

/// Buffers handed to SCST, drawn from an SGV pool.
#[derive(Debug)]
pub struct BufferTable {
    map: OrderedMutex<HashMap<u64, Arc<CmdBuffer>>, levels::CmdTable>,
    pool: Arc<SgvPool>,
    /// Entries in `map` (kept beside it so that figures take no lock).
    buffers: AtomicU64,
    bytes: AtomicU64,
    allocated: AtomicU64,
    released: AtomicU64,
    refused: AtomicU64,
    /// Bumped after an entry is removed or replaced: caches built before are stale.
    generation: AtomicU64,
}

impl BufferTable {
    /// A table drawing from `pool` (whose cap bounds the memory SCST can hold).
    pub fn new(pool: Arc<SgvPool>) -> Self {
        Self {
            map: OrderedMutex::new(HashMap::new()),
            pool,
            buffers: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            released: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The command table (docs/locking.md, `frontend.cmd_table`): held for one hash operation,
    /// with nothing taken under it (removed entries are dropped after unlocking, so a buffer's
    /// return to the SGV pool never happens under it either).
    #[track_caller]
    fn lock<'a, L: LockBefore<levels::CmdTable>>(
        &'a self,
        token: &'a mut LockToken<'_, L>,
    ) -> OrderedMutexGuard<'a, HashMap<u64, Arc<CmdBuffer>>, levels::CmdTable> {
        self.map.lock(token).0
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<SgvPool> {
        &self.pool
    }

    /// A buffer of at least `len` bytes, recorded as handed to SCST; `None` when the pool
    /// refuses (the caller answers BUSY / TASK SET FULL, never waits). The root token: the
    /// pool may map a new buffer (an ioctl), so nothing may be held.
    pub fn allocate(&self, token: &mut LockToken<'_, Root>, len: usize) -> Option<Arc<CmdBuffer>> {
        let Some(buffer) = CmdBuffer::allocate(token, &self.pool, len) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::debug!("buffer of {len} bytes refused by the pool");
            return None;
        };
        self.allocated.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(buffer.len() as u64, Ordering::Relaxed);
        let replaced = self.lock(token).insert(buffer.addr(), Arc::clone(&buffer));
        match replaced {
            None => {
                self.buffers.fetch_add(1, Ordering::Relaxed);
            }
            // An address handed out twice (the old buffer was never returned by SCST): the
            // caches may hold the old one.
            Some(_) => self.invalidate(),
        }
        Some(buffer)
    }

    /// The buffer at user address `pbuf`, if SCST may legitimately hold it.
    pub fn get<L: LockBefore<levels::CmdTable>>(
        &self,
        token: &mut LockToken<'_, L>,
        pbuf: u64,
    ) -> Option<Arc<CmdBuffer>> {
        self.lock(token).get(&pbuf).cloned()
    }

    /// SCST gave the buffer back: forget it. It returns to the pool when the last holder
    /// (a store request still in flight) drops it, never under the table's lock.
    pub fn release<L: LockBefore<levels::CmdTable>>(&self, token: &mut LockToken<'_, L>, pbuf: u64) -> bool {
        let removed = self.lock(token).remove(&pbuf);
        match removed {
            Some(buffer) => {
                self.invalidate();
                self.buffers.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(buffer.len() as u64, Ordering::Relaxed);
                self.released.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The table changed in a way a [`BufferCache`] must see (after the change is made: a cache
    /// that reads the new generation finds the new table).
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Current figures.
    pub fn figures(&self) -> BufferFigures {
        BufferFigures {
            buffers: self.buffers.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            allocated: self.allocated.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Forget every buffer (SCST has closed: it holds none any more).
    pub fn clear<L: LockBefore<levels::CmdTable>>(&self, token: &mut LockToken<'_, L>) -> usize {
        let drained: Vec<_> = self.lock(token).drain().collect();
        self.invalidate();
        self.buffers.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        drained.len()
    }
}

/// One worker's view of the [`BufferTable`] (module doc): the buffers it looked up since the
/// table last changed. Not shared: its owner looks up without any lock.
#[derive(Debug, Default)]
pub struct BufferCache {
    generation: u64,
    map: IntMap<u64, Arc<CmdBuffer>>,
}

impl BufferCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop every entry if the table changed since they were looked up; true if it did.
    pub fn purge_if_stale(&mut self, table: &BufferTable) -> bool {
        let current = table.generation.load(Ordering::SeqCst);
        if current == self.generation {
            return false;
        }
        self.map.clear();
        self.generation = current;
        true
    }

    /// The buffer at `pbuf` ([`BufferTable::get`]): from this cache while the table has not
    /// changed, else from the table (one lock), remembered.
    pub fn get<L: LockBefore<levels::CmdTable>>(
        &mut self,
        table: &BufferTable,
        token: &mut LockToken<'_, L>,
        pbuf: u64,
    ) -> Option<Arc<CmdBuffer>> {
        self.purge_if_stale(table);
        if let Some(buffer) = self.map.get(&pbuf) {
            return Some(Arc::clone(buffer));
        }
        // The generation read above is older than this lookup: a change racing it bumps the
        // generation again, and the next call purges what this one adds.
        let buffer = table.get(token, pbuf)?;
        self.map.insert(pbuf, Arc::clone(&buffer));
        Some(buffer)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No entry held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_get_release_and_cap() {
        let table = BufferTable::new(Arc::new(SgvPool::new(None, None, 3 * 4096)));
        let mut t = LockToken::root();
        let a = table.allocate(&mut t, 100).expect("first");
        let b = table.allocate(&mut t, 8192).expect("second");
        assert!(table.allocate(&mut t, 1).is_none(), "cap reached");
        assert_eq!(table.figures().refused, 1);
        assert!(Arc::ptr_eq(&table.get(&mut t, a.addr()).expect("known"), &a));
        assert!(table.release(&mut t, b.addr()));
        assert!(
            !table.release(&mut t, b.addr()),
            "second release of the same buffer is refused"
        );
        assert!(table.get(&mut t, b.addr()).is_none());
        let f = table.figures();
        assert_eq!((f.buffers, f.bytes, f.allocated, f.released), (1, 4096, 2, 1));
        assert_eq!(table.clear(&mut t), 1);
        assert_eq!((table.figures().buffers, table.figures().bytes), (0, 0));
    }

    #[test]
    fn a_cache_serves_repeat_lookups_and_forgets_what_the_table_released() {
        let pool = Arc::new(SgvPool::new(None, None, 1 << 20));
        let table = BufferTable::new(Arc::clone(&pool));
        let mut t = LockToken::root();
        let a = table.allocate(&mut t, 4096).expect("a");
        let b = table.allocate(&mut t, 4096).expect("b");
        let mut cache = BufferCache::new();
        assert!(cache.get(&table, &mut t, 0x1000).is_none(), "never handed out");
        assert!(Arc::ptr_eq(&cache.get(&table, &mut t, a.addr()).expect("a"), &a));
        assert!(Arc::ptr_eq(&cache.get(&table, &mut t, b.addr()).expect("b"), &b));
        assert_eq!(cache.len(), 2);
        assert!(!cache.purge_if_stale(&table), "nothing changed");
        // SCST gives b back (another worker's ON_CACHED_MEM_FREE): this cache must not serve it.
        assert!(table.release(&mut t, b.addr()));
        let b_addr = b.addr();
        drop(b);
        let in_use = pool.stats().in_use;
        assert!(cache.purge_if_stale(&table));
        assert!(cache.is_empty());
        assert_eq!(
            pool.stats().in_use,
            in_use - 1,
            "the purge let b go back to the pool"
        );
        assert!(cache.get(&table, &mut t, b_addr).is_none());
        assert!(Arc::ptr_eq(&cache.get(&table, &mut t, a.addr()).expect("a"), &a));
        // The whole table forgotten (SCST closed): every cache forgets too.
        table.clear(&mut t);
        assert!(cache.get(&table, &mut t, a.addr()).is_none());
    }
}
