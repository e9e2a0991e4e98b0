//! The SGV pool: command buffers handed to SCST, DMA-mapped once and reused.
//!
//! SCST caches the scatter-gather vectors of user buffers per size class and asks the
//! handler for memory only on a cache miss (`scst_user.md §3.6`). This pool mirrors that on our
//! side: power-of-two classes of 1..=1024 pages (orders 0..=10, SCST's `SGV_POOL_ELEMENTS`).
//! Larger requests get an exact buffer with its own memory and mapping, unmapped and freed as
//! soon as it comes back (SCST never caches them either).
//!
//! - Arenas (issue 13 item 3, docs/design/sgv-arenas.md): a buffer of a cached class is a
//!   page-aligned [`PageBuffer`](crate::PageBuffer) view of one chunk of an *arena*, one region
//!   of up to 16 MiB (2 MiB huge pages when the host has them reserved; smaller when the cap
//!   is) cut into equal chunks of one class and mapped on the device **once**, as one range
//!   (IOVA = arena IOVA + offset). So the IOMMU mapping count stays small: a 1 GiB cap of
//!   4 KiB buffers takes 64 mappings instead of 262,144 (VFIO type1 allows 65,535 per
//!   container by default), and a miss maps (pins) only when its class has no free chunk left:
//!   once per 4096 misses for 4 KiB buffers, and not at all for arenas mapped ahead with
//!   [`SgvPool::premap`]. A chunk goes back to its arena when its buffer is
//!   evicted or flushed (a cached buffer keeps its chunk); an arena left with no chunk in use
//!   is unmapped and freed then. An arena that cannot be had whole (no memory, no IOVA range
//!   that large, the IOMMU refused) falls back to one chunk, so a tight IOVA window or memlock
//!   limit costs mappings, not service. `PoolStats::mappings` and `arenas` count them.
//! - Refill ([`SgvPool::with_refill`]): when a miss leaves its class with a quarter of an arena
//!   free or less, the pool's `sgv-refill` thread maps one more arena for the class (within the
//!   cap's worth of arena bytes for the class), so a steady miss stream carves without mapping
//!   on the worker. A miss never waits for it: one that finds no free chunk maps on its own
//!   thread, counted in `PoolStats::worker_maps`. The thread is joined before shutdown unmaps.
//! - Fast path: a small per-thread stash per class (no shared lock); it spills half to the
//!   shared free lists when it grows past its limit, and is drained by [`SgvPool::flush`] and
//!   when its thread exits.
//! - A cap on the bytes the pool holds (in use + cached): a miss that would pass it first evicts
//!   idle cached buffers, then refuses at once with `None` (the caller answers BUSY or TASK SET
//!   FULL). The pool never waits for a buffer to come back.
//! - Buffers return by value ([`SgvPool::put`]) or by drop: a [`DmaBuffer`] is a moved handle,
//!   so returning one twice does not compile. Returning a cached-class buffer to an open pool
//!   takes no lock (a `Drop` has no lock token): the buffer goes to the pool's lock-free return
//!   queue, counted as cached, and the next pool call with a token (a get, a flush, an
//!   eviction) places it in that caller's stash or the shared lists. An uncached buffer (above
//!   4 MiB), or any buffer of a closed pool, is unmapped and freed at once, a blocking call, by
//!   the returning thread, which must hold no lock; one returned by a thread that holds a
//!   checked lock (cached class or not, the pool closing or not) is left queued instead and
//!   the bug logged, for the pool's next call or, once closed, its next return from a thread
//!   holding no lock. A closed pool's last reference dropped under a lock leaks what it still
//!   has mapped (logged) rather than unmap under the lock. Returning one to the wrong pool is
//!   counted (`foreign_puts`) and the buffer goes back to its own pool.
//! - Unwinding: memory this crate made is never freed while a panic unwinds (`unwinding.rs`):
//!   a panic half way through a release would otherwise free pages a device may still reach.
//! - Teardown: [`SgvPool::shutdown`] releases every cached buffer (unmapping every arena left
//!   empty) and refuses (with the count) while buffers are still out: their arenas stay
//!   mapped, because a device may still hold them, and are unmapped when the last of their
//!   buffers is finally returned. An unmap that fails leaks the arena (memory and IOVA range)
//!   rather than free memory a device may still reach.
//!
//! Locks (levels `sgv.stashes` < `sgv.pool` < `sgv.stash` < `dma.iova`, docs/locking.md): the
//! pool has three kinds (a thread's stash, the shared free lists with the arenas' chunk maps,
//! the stash registry) and never holds two at once; a new arena is made and mapped before the
//! `sgv.pool` lock is taken to add it, and an emptied one is unmapped after it is released; the IOVA allocator's lock is only taken with none of them held. Every
//! pool call takes the caller's root lock token (`&mut LockToken<'_, Root>`): a miss maps a new
//! buffer and a flush unmaps (ioctls on VFIO, blocking calls), so nothing may be held, and the
//! compiler refuses a call made under a held guard; inside, each pool lock is taken from that
//! token. So a pool call never blocks another thread's get/put on a system call, and the pool
//! never calls back into its users: no handler lock can be taken under a pool lock
//! (`handler/tests/compile_fail/scst_inversion.rs` takes the real command table under
//! [`SgvPool::idle_lists`] and does not compile).

mod arena;
mod buffer;
mod refill;
#[cfg(test)]
mod refill_tests;
mod shared;
mod stash;
#[cfg(test)]
mod tests;

pub use buffer::DmaBuffer;
pub use refill::RefillStartError;
pub use refill::REFILL_THREAD_NAME;

use crate::mapping::IovaLock;
use crate::PAGE_SIZE;
use refill::RefillThread;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutexGuard;
use scst_accel_hal::DmaMapper;
use shared::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long `shutdown` waits for threads caught handing their stash back: the move is a few
/// list operations, so only a descheduled thread takes more than microseconds.
const ORPHAN_WAIT: Duration = Duration::from_secs(2);

/// Number of cached size classes: orders 0..=10, 4 KiB to 4 MiB (`scst_user.md §3.6`).
pub const SGV_CLASSES: usize = 11;

/// Largest cached buffer: 1024 pages.
pub const MAX_CACHED_LEN: usize = PAGE_SIZE << (SGV_CLASSES - 1);

/// [`DmaBuffer::class`] of an exact, uncached buffer (larger than [`MAX_CACHED_LEN`]).
pub const UNCACHED_CLASS: u8 = u8::MAX;

/// The class and buffer size serving a request of `len` bytes.
fn class_for(len: usize) -> (u8, usize) {
    if len <= MAX_CACHED_LEN {
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let order = pages.next_power_of_two().trailing_zeros() as u8;
        (order, PAGE_SIZE << order)
    } else {
        (UNCACHED_CLASS, len.div_ceil(PAGE_SIZE) * PAGE_SIZE)
    }
}

/// A snapshot of the pool's counters. Taken from independent atomics: under concurrent use the
/// fields may be from slightly different instants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out and not yet returned.
    pub in_use: u64,
    /// Their bytes.
    pub in_use_bytes: u64,
    /// Idle buffers kept for reuse (shared lists and per-thread stashes).
    pub cached: u64,
    /// Their bytes.
    pub cached_bytes: u64,
    /// Bytes currently mapped on the device (0 for a host-only pool): whole arenas, free
    /// chunks included, plus exact buffers above 4 MiB.
    pub mapped_bytes: u64,
    /// Live IOMMU mappings of the pool: one per mapped arena, one per exact buffer above
    /// 4 MiB (0 for a host-only pool). VFIO type1 allows 65,535 per container by default.
    pub mappings: u64,
    /// Arenas the pool holds (mapped or, for a host-only pool, not).
    pub arenas: u64,
    /// Buffers made (cache misses that succeeded).
    pub allocations: u64,
    /// Requests served from the cache.
    pub reuses: u64,
    /// Requests refused because of the byte cap.
    pub refused: u64,
    /// Requests that failed for another reason: no memory, no IOVA, the IOMMU refused.
    pub failures: u64,
    /// Buffers returned to this pool that belong to another (sent back to their own).
    pub foreign_puts: u64,
    /// Arenas (and exact buffers) whose unmap failed: leaked on purpose, still counted in
    /// `mapped_bytes` and `mappings`.
    pub leaked: u64,
    /// Arenas made (and, unless host-only, mapped: pinned) by a miss on the thread that
    /// missed, because its class had no free chunk. What the refill is there to avoid.
    pub worker_maps: u64,
    /// Arenas made ahead of need by the refill (its thread, or
    /// [`SgvPool::refill_pending`]). Arenas from [`SgvPool::premap`] are in neither count.
    pub refill_maps: u64,
}

/// [`SgvPool::shutdown`] found buffers still in use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{in_use} pool buffers ({in_use_bytes} bytes) are still in use: they stay mapped until returned \
     (answer or abort their commands, after stopping or resetting the device, then return them)"
)]
pub struct PoolShutdownError {
    /// Buffers still out.
    pub in_use: u64,
    /// Their bytes.
    pub in_use_bytes: u64,
    /// The counters after the flush (boxed: the error stays small on the `Ok` path).
    pub stats: Box<PoolStats>,
}

/// The SGV pool. `Send + Sync`: share it by reference or `Arc` among worker threads.
#[derive(Debug)]
pub struct SgvPool {
    shared: Arc<Shared>,
    /// The `sgv-refill` thread, when started ([`SgvPool::with_refill`]); stopped and joined
    /// before the pool unmaps anything at shutdown or drop.
    refill: Option<RefillThread>,
}

impl SgvPool {
    /// A pool holding at most `max_bytes` (in use + cached). Where buffers are mapped:
    /// - `mapper` and `iovas`: each buffer at an IOVA from `iovas` (shared with the rings of
    ///   the same IOMMU domain);
    /// - `mapper` only: IOVA = host virtual address (DPDK's "IOVA as VA" mode): only for an
    ///   IOMMU whose window covers the process's addresses, and no other allocator may hand
    ///   out IOVAs in that domain;
    /// - neither: host-only buffers (RAM store, loopback); `iovas` alone is ignored.
    pub fn new(mapper: Option<Arc<dyn DmaMapper>>, iovas: Option<Arc<IovaLock>>, max_bytes: u64) -> Self {
        Self {
            shared: Shared::new(mapper, iovas, max_bytes),
            refill: None,
        }
    }

    /// The same pool with arenas mapped ahead of need by its own thread, named
    /// [`REFILL_THREAD_NAME`]: when a miss leaves its class with a quarter of an arena free
    /// or less, the thread maps one more arena for the class (within the cap's worth of arena
    /// bytes for the class, as [`SgvPool::premap`]), so the misses that follow carve without
    /// mapping. A miss that still finds no free chunk maps on its own thread, never waiting
    /// for the refill (counted in `PoolStats::worker_maps`). The thread is stopped and joined
    /// by [`SgvPool::shutdown`] (and the pool's drop) before anything is unmapped. The first
    /// miss of a class still maps unless the class was pre-mapped.
    ///
    /// # Errors
    /// [`RefillStartError`] when the thread cannot be spawned.
    pub fn with_refill(self) -> Result<Self, RefillStartError> {
        let mut pool = self.with_refill_requests();
        // One thread per pool: a second would only race the first for the same requests.
        if pool.refill.is_none() {
            pool.refill = Some(RefillThread::start(&pool.shared)?);
        }
        Ok(pool)
    }

    /// The same pool with refill requests made but no thread to serve them: the owner calls
    /// [`SgvPool::refill_pending`] from a thread of its own (a supervisor's loop; the tests,
    /// one step at a time).
    pub fn with_refill_requests(self) -> Self {
        self.shared.refill.enable();
        self
    }

    /// Serve the refill requests queued now on this thread (one arena per class asked for,
    /// if the class is still low): for a pool from [`SgvPool::with_refill_requests`]. Returns
    /// how many arenas were mapped. `token` is the root's: mapping is a blocking call.
    pub fn refill_pending(&self, token: &mut LockToken<'_, levels::Root>) -> usize {
        self.shared.refill_pending(token)
    }

    /// A buffer of at least `len` bytes: its class size (a power of two of pages up to
    /// 4 MiB) or, above that, `len` rounded to pages. From the cache when one is idle,
    /// otherwise carved from a mapped arena of its class, or, when none has a free chunk, from
    /// a new arena mapped now (an exact buffer above 4 MiB is made and mapped on its own).
    /// `None` at once when the cap would be passed even after
    /// evicting idle buffers (`refused`), or when memory, IOVA space or the IOMMU says no
    /// (`failures`, logged): answer the command BUSY / TASK SET FULL.
    ///
    /// `token` is the root's: a miss may map a new arena (a VFIO ioctl, a blocking call), so
    /// the caller must hold no lock, and the compiler sees to it (a token borrowed by a guard
    /// cannot be passed).
    pub fn get(&self, token: &mut LockToken<'_, levels::Root>, len: usize) -> Option<DmaBuffer> {
        let (class, size) = class_for(len);
        if class != UNCACHED_CLASS {
            if let Some(slot) = Shared::take_cached(&self.shared, token, class) {
                self.shared.counters.reuses.fetch_add(1, Ordering::Relaxed);
                return Some(DmaBuffer::new(slot, self.shared.clone()));
            }
        }
        let slot = self.shared.allocate(token, class, size)?;
        Some(DmaBuffer::new(slot, self.shared.clone()))
    }

    /// Map arenas now, so that the next `buffers` misses for buffers of `len` bytes carve
    /// from them without mapping (no pinning on the worker that misses): call it at start-up,
    /// off the command path, for the classes the workload uses. Bounded by the cap: the class
    /// never gets more arena bytes than `max_bytes` this way. The arenas are mapped memory
    /// outside the cap's byte count until buffers are carved from them; a flush unmaps those
    /// still unused. Returns the free chunks the class now has (less than `buffers` when the
    /// cap or a failed map stopped it; 0 for an exact size above 4 MiB, which is never
    /// pre-mapped).
    ///
    /// `token` is the root's: mapping is a blocking call.
    pub fn premap(&self, token: &mut LockToken<'_, levels::Root>, len: usize, buffers: usize) -> usize {
        let (class, size) = class_for(len);
        if class == UNCACHED_CLASS {
            return 0;
        }
        self.shared.premap(token, class, size, buffers)
    }

    /// Return `buffer` for reuse (the same as dropping it: it is queued without a lock and
    /// placed in this thread's stash by the next call with a token). A buffer from another pool
    /// is counted in `foreign_puts`, logged at debug, and returned to its own pool.
    pub fn put(&self, buffer: DmaBuffer) {
        if !Arc::ptr_eq(buffer.pool(), &self.shared) {
            self.shared.counters.foreign_puts.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "pool buffer at {:#x} returned to pool {} but belongs to pool {}; sent back to its own",
                buffer.addr(),
                self.shared.id,
                buffer.pool().id
            );
        }
        drop(buffer);
    }

    /// Release every cached (idle) buffer, on every thread: each chunk goes back to its arena,
    /// and every arena left with no buffer is unmapped and freed. Buffers in use (and their
    /// arenas) are not touched. Returns how many buffers were released. Call it outside
    /// command-path locks: it makes one unmap ioctl per emptied arena (hence the root token).
    pub fn flush(&self, token: &mut LockToken<'_, levels::Root>) -> usize {
        self.shared.flush(token)
    }

    /// The idle buffers per class on the shared lists, under the pool's lock (level
    /// `sgv.pool`), with the token for what may still be taken while it is held: only locks
    /// after the pool's in docs/locking.md. The command table, the lease table and every other
    /// handler lock come before it, so reaching one of them from here (SCST's cleanup did:
    /// `scst_user.md §5.5`) does not compile. For diagnostics; hold it briefly.
    pub fn idle_lists<'a, M: LockBefore<levels::SgvPool>>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> (IdleLists<'a>, LockToken<'a, levels::SgvPool>) {
        let (lists, under_pool) = self.shared.lock_free_lists(token);
        (IdleLists { lists }, under_pool)
    }

    /// Hand this thread's idle buffers for this pool back now (to the shared lists, or
    /// released when the pool is closed) instead of at thread exit. A thread that served the
    /// pool calls it last: thread-local destructors run after `thread::scope`'s implicit join
    /// and after `JoinHandle::is_finished` says true, so their timing is nothing to build on.
    /// Returns whether this thread had a stash for the pool.
    /// `token` is the root's: the hand-back may unmap (a closed pool).
    pub fn return_thread_stash(&self, token: &mut LockToken<'_, levels::Root>) -> bool {
        let _ = token;
        stash::return_local_stash(&self.shared)
    }

    /// The counters now.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Close the pool: flush it, and from now on release each buffer as it comes back (its
    /// arena is unmapped and freed with its last buffer).
    ///
    /// # Errors
    /// [`PoolShutdownError`] when buffers are still in use: they stay mapped (a device may
    /// still reach them) until they are returned.
    pub fn shutdown(mut self) -> Result<PoolStats, PoolShutdownError> {
        // Unmaps: a blocking call, so no lock may be held (asserted by the root token).
        let mut token = LockToken::root();
        // The refill maps; it ends before anything is unmapped, so no arena it maps can
        // join the set after the flush below.
        self.stop_refill(&mut token);
        self.shared.close();
        let mut released = self.shared.flush(&mut token);
        // A thread that was handing its stash back when the pool closed releases those buffers
        // itself (it sees `closed`); wait for it so that "shut down" means "unmapped".
        let stalled = self.shared.wait_for_orphans(ORPHAN_WAIT);
        if stalled > 0 {
            log::warn!(
                "SGV pool {}: {stalled} thread stashes still being returned after {ORPHAN_WAIT:?}; \
                 their buffers are released when those threads go on",
                self.shared.id
            );
        }
        released += self.shared.flush(&mut token);
        let stats = self.shared.stats();
        log::info!(
            "SGV pool {} shut down: {released} cached buffers released, {} in use, {} bytes still mapped",
            self.shared.id,
            stats.in_use,
            stats.mapped_bytes
        );
        if stats.in_use > 0 {
            return Err(PoolShutdownError {
                in_use: stats.in_use,
                in_use_bytes: stats.in_use_bytes,
                stats: Box::new(stats),
            });
        }
        Ok(stats)
    }
}

impl SgvPool {
    /// Stop and join the refill thread, if any (bounded; see `RefillThread::stop`).
    fn stop_refill(&mut self, token: &mut LockToken<'_, levels::Root>) {
        if let Some(refill) = self.refill.take() {
            refill.stop(token);
        }
    }
}

impl Drop for SgvPool {
    fn drop(&mut self) {
        // Safety net when shutdown was skipped: the same stop, close and flush (joins and
        // unmaps: the thread dropping the pool must hold no lock, which the root token
        // asserts).
        let mut token = LockToken::root();
        self.stop_refill(&mut token);
        self.shared.close();
        self.shared.flush(&mut token);
    }
}

/// A view of the pool's shared free lists while their lock is held ([`SgvPool::idle_lists`]).
pub struct IdleLists<'a> {
    lists: OrderedMutexGuard<'a, shared::PoolLists, levels::SgvPool>,
}

impl IdleLists<'_> {
    /// Idle buffers of size class `class` (order 0..=10) on the shared lists.
    pub fn idle(&self, class: usize) -> usize {
        self.lists.idle.0.get(class).map_or(0, Vec::len)
    }

    /// Arenas the pool holds, every class (the set the counter `PoolStats::arenas` follows).
    pub fn arenas(&self) -> usize {
        self.lists.arenas.count()
    }
}

impl std::fmt::Debug for IdleLists<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: Vec<usize> = (0..SGV_CLASSES).map(|c| self.idle(c)).collect();
        f.debug_struct("IdleLists")
            .field("idle", &idle)
            .field("arenas", &self.arenas())
            .finish()
    }
}
