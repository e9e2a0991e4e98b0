//! The pool's shared state: where buffers are mapped, the shared free lists and the arenas
//! buffers are carved from, the registry of per-thread stashes, the byte cap and the counters.
#![allow(unsafe_code)] // UNSAFETY: maps arenas and large buffers on the device (`DmaMapper::map` is unsafe).

use super::arena::Arena;
use super::arena::Arenas;
use super::arena::Chunk;
use super::refill::low_water;
use super::refill::Request;
use super::refill::Requests;
use super::stash::local_stash;
use super::stash::stash_limit;
use super::stash::StashRef;
use super::PoolStats;
use super::SGV_CLASSES;
use super::UNCACHED_CLASS;
use crate::mapping::lock_iovas;
use crate::mapping::IovaLock;
use crate::DmaRegion;
use crate::PageBuffer;
use crate::PAGE_SIZE;
use crossbeam_channel::Receiver;
use crossbeam_channel::Sender;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::DmaMapper;
use std::sync::atomic::fence;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Pool identities, never reused (thread-local stashes are keyed by them).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The largest arena: 64 of them hold a 1 GiB cap, and each is 8 huge pages. Every class size
/// (4 KiB..4 MiB) divides it.
pub(super) const ARENA_BYTES: usize = 16 << 20;

/// The arena length for chunks of `chunk_len` bytes in a pool capped at `max_bytes`:
/// [`ARENA_BYTES`], or less when the cap is smaller (a 64 KiB pool does not reserve 16 MiB
/// per class), never less than one chunk. Always a multiple of `chunk_len`.
pub(super) fn arena_len(max_bytes: u64, chunk_len: usize) -> usize {
    let cap = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    cap.div_ceil(chunk_len)
        .saturating_mul(chunk_len)
        .min(ARENA_BYTES)
        .max(chunk_len)
}

/// An idle or in-use buffer as the pool keeps it. A cached class's buffer is a chunk of an
/// arena (`chunk`), mapped as part of the arena; an exact buffer above 4 MiB has no chunk and,
/// while `iova` is `Some`, its own mapping, whose memory this `Arc` keeps alive.
pub(super) struct Slot {
    pub(super) pages: Arc<PageBuffer>,
    pub(super) iova: Option<u64>,
    pub(super) class: u8,
    pub(super) chunk: Option<Chunk>,
}

impl Slot {
    fn bytes(&self) -> u64 {
        self.pages.len() as u64
    }
}

/// Idle buffers by class, most recently returned last.
#[derive(Default)]
pub(super) struct Lists(pub(super) [Vec<Slot>; SGV_CLASSES]);

/// What the `sgv.pool` lock guards: the shared free lists and the arenas buffers are carved
/// from (one lock: a carve follows a free-list miss, a chunk's return follows its removal from
/// a list, and neither nests another pool lock).
#[derive(Default)]
pub(super) struct PoolLists {
    pub(super) idle: Lists,
    pub(super) arenas: Arenas,
}

impl Lists {
    fn take_all(&mut self) -> Vec<Slot> {
        self.0.iter_mut().flat_map(|list| list.drain(..)).collect()
    }
}

/// Where the pool's buffers are mapped.
enum Placement {
    /// Not mapped (RAM store, loopback).
    HostOnly,
    /// At IOVAs from an allocator shared with the domain's rings.
    Window {
        mapper: Arc<dyn DmaMapper>,
        iovas: Arc<IovaLock>,
    },
    /// At IOVA = host virtual address.
    Identity { mapper: Arc<dyn DmaMapper> },
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    in_use: AtomicU64,
    in_use_bytes: AtomicU64,
    cached: AtomicU64,
    cached_bytes: AtomicU64,
    mapped_bytes: AtomicU64,
    mappings: AtomicU64,
    arenas: AtomicU64,
    allocations: AtomicU64,
    pub(super) reuses: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
    pub(super) foreign_puts: AtomicU64,
    leaked: AtomicU64,
    worker_maps: AtomicU64,
    refill_maps: AtomicU64,
}

/// The token every pool operation takes: a thread holding no checked lock at all ([`Root`]).
///
/// Any pool operation may map or unmap a buffer (a VFIO ioctl: a blocking call, docs/locking.md
/// rule 2), so none may run under any lock; the type says so. Inside, the pool's locks are taken
/// one at a time from this token (they never nest), each checked by the compiler against the
/// order. Nothing panics while holding one, and every critical section leaves its lists
/// consistent, so poisoning is recovered by the lock.
pub(super) type PoolToken<'a> = LockToken<'a, Root>;

pub(super) struct Shared {
    pub(super) id: u64,
    placement: Placement,
    max_bytes: u64,
    /// Bytes in use + cached (+ leaked): what the cap limits.
    held: AtomicU64,
    /// Set by shutdown/drop: returned buffers are released, not cached.
    closed: AtomicBool,
    /// Level `sgv.pool`: the shared free lists and the arenas.
    free: OrderedMutex<PoolLists, levels::SgvPool>,
    /// Level `sgv.stashes`.
    stashes: OrderedMutex<Vec<StashRef>, levels::SgvStashes>,
    /// Buffers dropped since the last drain: a `Drop` cannot be given a token, so it takes no
    /// lock; it queues the buffer here (lock-free), and the next pool call with a token (a get,
    /// a flush, an eviction) moves it to a stash or the shared lists. Counted as cached.
    returned: (Sender<Slot>, Receiver<Slot>),
    /// Stashes being moved to the shared lists by [`Shared::adopt_orphan`] right now.
    orphans_in_transit: AtomicU64,
    /// Refill requests (off unless the pool was built with a refill).
    pub(super) refill: Requests,
    pub(super) counters: Counters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let placement = match self.placement {
            Placement::HostOnly => "host-only",
            Placement::Window { .. } => "iova-window",
            Placement::Identity { .. } => "iova-as-va",
        };
        f.debug_struct("SgvPool")
            .field("id", &self.id)
            .field("placement", &placement)
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
    pub(super) fn new(
        mapper: Option<Arc<dyn DmaMapper>>,
        iovas: Option<Arc<IovaLock>>,
        max_bytes: u64,
    ) -> Arc<Self> {
        let placement = match (mapper, iovas) {
            (Some(mapper), Some(iovas)) => Placement::Window { mapper, iovas },
            (Some(mapper), None) => Placement::Identity { mapper },
            (None, iovas) => {
                if iovas.is_some() {
                    log::debug!("SGV pool given an IOVA allocator but no mapper: buffers are host-only");
                }
                Placement::HostOnly
            }
        };
        Arc::new(Self {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            placement,
            max_bytes,
            held: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            free: OrderedMutex::default(),
            stashes: OrderedMutex::default(),
            returned: crossbeam_channel::unbounded(),
            orphans_in_transit: AtomicU64::new(0),
            refill: Requests::default(),
            counters: Counters::default(),
        })
    }

    fn mapper(&self) -> Option<&Arc<dyn DmaMapper>> {
        match &self.placement {
            Placement::HostOnly => None,
            Placement::Window { mapper, .. } | Placement::Identity { mapper } => Some(mapper),
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(super) fn note_handed_out(&self, bytes: u64) {
        self.counters.in_use.fetch_add(1, Ordering::Relaxed);
        self.counters.in_use_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn note_cached(&self, n: u64, bytes: u64) {
        self.counters.cached.fetch_add(n, Ordering::Relaxed);
        self.counters.cached_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn note_uncached(&self, n: u64, bytes: u64) {
        self.counters.cached.fetch_sub(n, Ordering::Relaxed);
        self.counters.cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The shared free lists' lock, taken from any token before it (for [`super::IdleLists`]).
    pub(super) fn lock_free_lists<'a, M: scst_accel_hal::locks::LockBefore<levels::SgvPool>>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> (
        scst_accel_hal::locks::OrderedMutexGuard<'a, PoolLists, levels::SgvPool>,
        LockToken<'a, levels::SgvPool>,
    ) {
        self.free.lock(token)
    }

    pub(super) fn register_stash(&self, token: &mut PoolToken<'_>, stash: StashRef) {
        self.stashes.lock(token).0.push(stash);
    }

    /// An idle buffer of `class`: this thread's stash first, then the shared list. Buffers
    /// dropped since the last call are put in place first.
    pub(super) fn take_cached(this: &Arc<Self>, token: &mut PoolToken<'_>, class: u8) -> Option<Slot> {
        Self::place_returned(this, token);
        let index = usize::from(class);
        let from_stash = if stash_limit(class) > 0 {
            local_stash(this, token).and_then(|stash| stash.lock(token).0 .0[index].pop())
        } else {
            None
        };
        let slot = from_stash.or_else(|| this.free.lock(token).0.idle.0[index].pop())?;
        this.note_uncached(1, slot.bytes());
        Some(slot)
    }

    /// Move the buffers dropped since the last drain into this thread's stash (spilling to the
    /// shared lists) or, for a closed pool, release them.
    pub(super) fn place_returned(this: &Arc<Self>, token: &mut PoolToken<'_>) {
        while let Ok(slot) = this.returned.1.try_recv() {
            this.note_uncached(1, slot.bytes());
            Self::cache(this, token, slot);
        }
    }

    /// Make (and map) a new buffer of `size` bytes, within the cap.
    pub(super) fn allocate(&self, token: &mut PoolToken<'_>, class: u8, size: usize) -> Option<Slot> {
        let bytes = size as u64;
        if !self.reserve(bytes) {
            self.reclaim(token, bytes);
            if !self.reserve(bytes) {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "SGV pool {}: {size}-byte buffer refused, cap of {} bytes reached",
                    self.id,
                    self.max_bytes
                );
                return None;
            }
        }
        let made = if class == UNCACHED_CLASS {
            self.allocate_exact(token, size)
        } else {
            self.carve(token, class, size)
        };
        let Some(slot) = made else {
            return self.allocation_failed(bytes);
        };
        self.counters.allocations.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// An exact buffer above the largest class: its own memory and its own mapping (SCST
    /// never caches these either, and they are rare).
    fn allocate_exact(&self, token: &mut PoolToken<'_>, size: usize) -> Option<Slot> {
        let pages = match PageBuffer::new(size) {
            Ok(pages) => Arc::new(pages),
            Err(e) => {
                log::warn!("SGV pool {}: cannot allocate a {size}-byte buffer: {e}", self.id);
                return None;
            }
        };
        let len = pages.len() as u64;
        // What `map` relies on: the slot made from `pages` holds this `Arc` until `release`
        // has unmapped the range, and leaks it if the unmap fails.
        let iova = self.map(token, pages.addr(), len, PAGE_SIZE as u64)?;
        Some(Slot {
            pages,
            iova,
            class: UNCACHED_CLASS,
            chunk: None,
        })
    }

    /// A buffer of `class` carved from an arena: a free chunk of an arena already mapped (no
    /// map, no system call), else a new arena mapped for the class (the only map on this path,
    /// once per `arena_len / size` misses).
    fn carve(&self, token: &mut PoolToken<'_>, class: u8, size: usize) -> Option<Slot> {
        let refill = self.refill.enabled();
        let (taken, free_left) = {
            let (mut lists, _) = self.free.lock(token);
            let taken = lists.arenas.take(class);
            // Counted only when a refill would act on it (a walk of the class's arenas).
            let free_left = if refill { lists.arenas.room(class).0 } else { 0 };
            (taken, free_left)
        };
        if refill && taken.is_some() && free_left <= self.low_water(size) {
            self.refill.ask(class);
        }
        let chunk = match taken {
            Some(chunk) => chunk,
            None => {
                // No free chunk: this miss maps on its own thread; it never waits for the
                // refill (that would put the refill's pace on the command path). Made and
                // mapped with no lock held (the map is a blocking call). Two threads missing
                // at once may each map one: both join the set.
                let arena = Arc::new(self.new_arena(token, class, size)?);
                self.counters.worker_maps.fetch_add(1, Ordering::Relaxed);
                let inserted = self.free.lock(token).0.arenas.insert(arena.clone());
                let Some(chunk) = inserted else {
                    // Unreachable (a new arena has a free chunk and `class` is a cached
                    // class); never leave its mapping behind.
                    log::error!("SGV pool {}: a new arena of class {class} had no chunk", self.id);
                    self.retire(token, arena);
                    return None;
                };
                chunk
            }
        };
        let (pages, iova) = chunk.arena.chunk(chunk.index);
        Some(Slot {
            pages: Arc::new(pages),
            iova,
            class,
            chunk: Some(chunk),
        })
    }

    /// Make and map an arena for chunks of `size` bytes: [`arena_len`] bytes, or one chunk when
    /// that does not fit (no memory, no IOVA range that large, the IOMMU refused: a pool that
    /// still works, with more mappings, rather than one that refuses everything).
    fn new_arena(&self, token: &mut PoolToken<'_>, class: u8, size: usize) -> Option<Arena> {
        let len = arena_len(self.max_bytes, size);
        if let Some(arena) = self.make_arena(token, class, size, len) {
            return Some(arena);
        }
        if len == size {
            return None;
        }
        log::warn!(
            "SGV pool {}: no {len}-byte arena for class {class}; falling back to one {size}-byte chunk",
            self.id
        );
        self.make_arena(token, class, size, size)
    }

    fn make_arena(&self, token: &mut PoolToken<'_>, class: u8, size: usize, len: usize) -> Option<Arena> {
        let region = match DmaRegion::new(len) {
            Ok(region) => region,
            Err(e) => {
                log::warn!("SGV pool {}: cannot allocate a {len}-byte arena: {e}", self.id);
                return None;
            }
        };
        // Memory placed for huge pages (reserved or transparent) is mapped at a 2 MiB-aligned
        // IOVA, so the IOMMU can use a 2 MiB entry for each physically contiguous huge page.
        let align = region.iova_alignment();
        let mapped = Arena::mapped_len_of(region.len(), size);
        // What `map` relies on: the arena owns the region, and the pool holds the arena (in
        // its set, and through each chunk handed out) until `retire` has unmapped the range,
        // and leaks it if that unmap fails. Views hold the region too, never less long.
        let iova = self.map(token, region.addr(), mapped, align)?;
        self.counters.arenas.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "SGV pool {}: new arena of {mapped} bytes for class {class} at {:#x} ({:?})",
            self.id,
            region.addr(),
            region.backing()
        );
        Some(Arena::new(region, iova, class, size))
    }

    fn allocation_failed(&self, bytes: u64) -> Option<Slot> {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Map `len` bytes at `host` (an arena or an exact buffer; callers argue the memory
    /// outlives the mapping): `Some(None)` for host-only, `Some(Some(iova))` when mapped,
    /// `None` (logged) when no IOVA is free or the IOMMU refused.
    fn map(&self, token: &mut PoolToken<'_>, host: u64, len: u64, align: u64) -> Option<Option<u64>> {
        let (mapper, iova) = match &self.placement {
            Placement::HostOnly => return Some(None),
            Placement::Window { mapper, iovas } => match lock_iovas(iovas, token).0.alloc(len, align) {
                Some(iova) => (mapper, iova),
                None => {
                    log::warn!(
                        "SGV pool {}: no free IOVA range of {len} bytes (flush the pool or \
                         enlarge the IOVA window)",
                        self.id
                    );
                    return None;
                }
            },
            Placement::Identity { mapper } => (mapper, host),
        };
        // SAFETY: `host..host + len` is anonymous memory of this process, accessed only by
        // byte-wise atomic copies (`PageBuffer` forms no reference into it and copies through
        // `shared_mem`) and by the kernel; both callers (`make_arena`,
        // `allocate_exact`) keep it alive until `retire` or `release` has unmapped the range,
        // and leak it when that unmap fails.
        match unsafe { mapper.map(iova, host, len) } {
            Ok(()) => {
                self.counters.mapped_bytes.fetch_add(len, Ordering::Relaxed);
                self.counters.mappings.fetch_add(1, Ordering::Relaxed);
                Some(Some(iova))
            }
            Err(e) => {
                log::warn!("SGV pool {}: cannot map {len} bytes: {e}", self.id);
                if let Placement::Window { iovas, .. } = &self.placement {
                    lock_iovas(iovas, token).0.free(iova, len);
                }
                None
            }
        }
    }

    fn reserve(&self, bytes: u64) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.max_bytes)
            })
            .is_ok()
    }

    /// Evict idle buffers (largest classes first, shared lists before stashes) until `bytes`
    /// more fit under the cap, or nothing idle is left.
    fn reclaim(&self, token: &mut PoolToken<'_>, bytes: u64) {
        let need = (self.held.load(Ordering::Relaxed).saturating_add(bytes)).saturating_sub(self.max_bytes);
        let mut victims = Vec::new();
        let mut got = 0u64;
        let evict = |lists: &mut Lists, victims: &mut Vec<Slot>, got: &mut u64| {
            for list in lists.0.iter_mut().rev() {
                while *got < need {
                    let Some(slot) = list.pop() else { break };
                    *got += slot.bytes();
                    victims.push(slot);
                }
            }
        };
        // Dropped buffers first: they are idle and in no list yet.
        while got < need {
            let Ok(slot) = self.returned.1.try_recv() else {
                break;
            };
            got += slot.bytes();
            victims.push(slot);
        }
        if got < need {
            evict(&mut self.free.lock(token).0.idle, &mut victims, &mut got);
        }
        if got < need {
            let stashes = self.stashes.lock(token).0.clone();
            for stash in stashes {
                evict(&mut stash.lock(token).0, &mut victims, &mut got);
            }
        }
        if victims.is_empty() {
            return;
        }
        self.note_uncached(victims.len() as u64, got);
        log::debug!(
            "SGV pool {}: evicting {} idle buffers ({got} bytes) to stay under the cap",
            self.id,
            victims.len()
        );
        for slot in victims {
            self.release(token, slot);
        }
    }

    /// Give a buffer up: an arena chunk goes back to its arena, and an arena left wholly free
    /// is unmapped and freed ([`Shared::retire`]); an exact buffer is unmapped (if mapped), its
    /// IOVA returned and its memory freed. On an unmap failure the memory and the IOVA are
    /// leaked (the device may still reach them), the buffer's bytes stay counted against the
    /// cap, and `false` is returned.
    fn release(&self, token: &mut PoolToken<'_>, slot: Slot) -> bool {
        let bytes = slot.bytes();
        if let Some(chunk) = slot.chunk {
            drop(slot.pages);
            let emptied = self.free.lock(token).0.arenas.give(&chunk);
            drop(chunk);
            match emptied {
                Ok(None) => {}
                Ok(Some(arena)) => {
                    if !self.retire(token, arena) {
                        return false;
                    }
                }
                Err(e) => {
                    // A pool bug; the chunk stays marked in use (never handed out twice), and
                    // its bytes stay counted.
                    log::error!("SGV pool {}: chunk bookkeeping: {e}", self.id);
                    return false;
                }
            }
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return true;
        }
        if let (Some(iova), Some(mapper)) = (slot.iova, self.mapper()) {
            if let Err(e) = mapper.unmap(iova, bytes) {
                std::mem::forget(slot.pages);
                self.counters.leaked.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "SGV pool {}: unmap of buffer at IOVA {iova:#x} ({bytes} bytes) failed: {e}; \
                     leaking it, the device may still reach it",
                    self.id
                );
                return false;
            }
            if let Placement::Window { iovas, .. } = &self.placement {
                lock_iovas(iovas, token).0.free(iova, bytes);
            }
            self.counters.mapped_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.counters.mappings.fetch_sub(1, Ordering::Relaxed);
        }
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        true
    }

    /// An arena has left the set (no chunk in use): unmap it, return its IOVA range, and drop
    /// it (its memory is freed with the last view). Called with no lock held: the unmap is a
    /// blocking call. On an unmap failure the arena is leaked, memory and IOVA range, still
    /// counted in `mapped_bytes` and `mappings`, and `false` is returned.
    fn retire(&self, token: &mut PoolToken<'_>, arena: Arc<Arena>) -> bool {
        self.counters.arenas.fetch_sub(1, Ordering::Relaxed);
        let len = arena.mapped_len();
        if let (Some(iova), Some(mapper)) = (arena.iova(), self.mapper()) {
            if let Err(e) = mapper.unmap(iova, len) {
                std::mem::forget(arena);
                self.counters.leaked.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "SGV pool {}: unmap of arena at IOVA {iova:#x} ({len} bytes) failed: {e}; \
                     leaking it, the device may still reach it",
                    self.id
                );
                return false;
            }
            if let Placement::Window { iovas, .. } = &self.placement {
                lock_iovas(iovas, token).0.free(iova, len);
            }
            self.counters.mapped_bytes.fetch_sub(len, Ordering::Relaxed);
            self.counters.mappings.fetch_sub(1, Ordering::Relaxed);
        }
        log::debug!(
            "SGV pool {}: arena at {:#x} ({len} bytes) released",
            self.id,
            arena.addr()
        );
        true
    }

    /// A buffer comes back (put or drop). `Drop` has no token, so a cached-class buffer of an
    /// open pool takes no lock: it is queued for the next pool call with a token
    /// ([`Shared::place_returned`]). An uncached one (its own mapping) is unmapped at once, and
    /// so is every buffer of a closed pool, with the buffers queued before it: an unmap, a
    /// blocking call, so only on a thread that holds no checked lock. On a thread that holds
    /// one (a caller's bug, which [`LockToken::root`] would report by a panic in a test build
    /// and an abort in a checked release build) the buffer is left queued instead and the bug
    /// logged, whichever way it came back: a panic here would unwind through memory the
    /// device may still reach. The queue is then drained by the pool's next call, or, once the
    /// pool is closed, by the next return to it from a thread that holds no lock, or by its
    /// last reference's drop (which leaks what it cannot unmap).
    pub(super) fn give_back(this: &Arc<Self>, slot: Slot) {
        let bytes = slot.bytes();
        this.counters.in_use.fetch_sub(1, Ordering::Relaxed);
        this.counters.in_use_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if slot.class == UNCACHED_CLASS && !this.is_closed() {
            match this.unmap_token(bytes) {
                Some(mut token) => {
                    this.release(&mut token, slot);
                }
                // Placed (so released) by the pool's next call, as any queued buffer.
                None => this.queue_returned(slot),
            }
            return;
        }
        #[cfg(test)]
        tests_hook::pause_return_if_armed(this.id);
        this.queue_returned(slot);
        // A close racing this return: `close` stores `closed` then drains the queue; here the
        // queue was written, then `closed` is read. With a SeqCst fence on each side, either the
        // close's drain sees this buffer or this read sees `closed` and drains it: never left
        // mapped in a closed pool (unless this thread holds a lock: then left queued, see above).
        fence(Ordering::SeqCst);
        if this.is_closed() {
            if let Some(mut token) = this.unmap_token(bytes) {
                // Placing a buffer in a closed pool releases it (`cache`): this one and any
                // left queued by a thread that held a lock.
                Self::place_returned(this, &mut token);
            }
        }
    }

    /// The root token for unmapping on this thread, or `None` (the caller's bug logged) when
    /// the thread holds a checked lock: no lock may be held across an unmap, and taking the
    /// root token there would panic (test builds) or abort (checked release builds) in a
    /// `Drop`, with a buffer half returned.
    fn unmap_token(&self, bytes: u64) -> Option<PoolToken<'static>> {
        let held = scst_accel_hal::locks::held_locks();
        if held.is_empty() {
            return Some(LockToken::root());
        }
        log::error!(
            "SGV pool {}: a {bytes}-byte buffer to unmap was dropped while holding {held:?}; left \
             queued for the pool's next call, or once closed its next return or its last \
             reference from a thread holding no lock (drop pool buffers after unlocking)",
            self.id
        );
        None
    }

    /// Queue a returned buffer for the next drain, counted as cached.
    fn queue_returned(&self, slot: Slot) {
        self.note_cached(1, slot.bytes());
        if let Err(unsent) = self.returned.0.send(slot) {
            // The receiver lives in `self`: unreachable while `self` exists. Leaked, not
            // dropped: the buffer may still be mapped.
            std::mem::forget(unsent.into_inner());
            log::error!("SGV pool {}: return queue closed; buffer leaked", self.id);
        }
    }

    /// Keep an idle buffer: into this thread's stash, spilling half past the stash's limit,
    /// else the shared lists; released when uncached or when the pool is closed.
    fn cache(this: &Arc<Self>, token: &mut PoolToken<'_>, slot: Slot) {
        let bytes = slot.bytes();
        if slot.class == UNCACHED_CLASS || this.is_closed() {
            this.release(token, slot);
            return;
        }
        let limit = stash_limit(slot.class);
        let stash = if limit > 0 { local_stash(this, token) } else { None };
        let Some(stash) = stash else {
            this.note_cached(1, bytes);
            this.to_shared_lists(token, vec![slot]);
            return;
        };
        let (mut lists, _) = stash.lock(token);
        // Checked under the stash lock: `flush` after `close` locks every stash, so a buffer
        // either lands before that drain or sees `closed` here. Never stranded while mapped.
        if this.is_closed() {
            drop(lists);
            this.release(token, slot);
            return;
        }
        let list = &mut lists.0[usize::from(slot.class)];
        list.push(slot);
        this.note_cached(1, bytes);
        let spill: Vec<Slot> = if list.len() > limit {
            let keep = limit / 2;
            list.drain(..list.len() - keep).collect()
        } else {
            Vec::new()
        };
        drop(lists);
        this.to_shared_lists(token, spill);
    }

    /// Move cached slots to the shared lists (released instead if the pool is closed).
    fn to_shared_lists(&self, token: &mut PoolToken<'_>, slots: Vec<Slot>) {
        if slots.is_empty() {
            return;
        }
        let (mut free, _) = self.free.lock(token);
        if self.is_closed() {
            drop(free);
            let bytes = slots.iter().map(Slot::bytes).sum();
            self.note_uncached(slots.len() as u64, bytes);
            for slot in slots {
                self.release(token, slot);
            }
            return;
        }
        for slot in slots {
            free.idle.0[usize::from(slot.class)].push(slot);
        }
    }

    /// A thread is done with its stash (explicit return, or its thread-local destructor): the
    /// stash joins the shared lists and leaves the registry.
    ///
    /// Between `take_all` and `to_shared_lists` the slots are in neither place, so a concurrent
    /// drain cannot see them. They are counted in `orphans_in_transit` from *under the stash
    /// lock*: a drain that then locks this stash (or clones a registry without it) is ordered
    /// after the increment, and `shutdown` waits for the count to fall to zero.
    pub(super) fn adopt_orphan(&self, token: &mut PoolToken<'_>, stash: &StashRef) {
        let slots = {
            let (mut lists, _) = stash.lock(token);
            self.orphans_in_transit.fetch_add(1, Ordering::SeqCst);
            lists.take_all()
        };
        #[cfg(test)]
        tests_hook::pause_if_armed(self.id);
        self.stashes.lock(token).0.retain(|s| !Arc::ptr_eq(s, stash));
        self.to_shared_lists(token, slots);
        self.orphans_in_transit.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wait (bounded by `bound`, 1 ms sleeps, no lock held) until no stash is in transit.
    /// Returns how many still are at the end (0 unless a thread stalled mid-move).
    pub(super) fn wait_for_orphans(&self, bound: std::time::Duration) -> u64 {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = self.orphans_in_transit.load(Ordering::SeqCst);
            if left == 0 || std::time::Instant::now() >= deadline {
                return left;
            }
            scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Take every idle buffer out of every stash and the shared lists.
    fn drain_all(&self, token: &mut PoolToken<'_>) -> Vec<Slot> {
        let mut slots: Vec<Slot> = self.returned.1.try_iter().collect();
        let stashes = self.stashes.lock(token).0.clone();
        for stash in stashes {
            slots.append(&mut stash.lock(token).0.take_all());
        }
        slots.append(&mut self.free.lock(token).0.idle.take_all());
        let bytes = slots.iter().map(Slot::bytes).sum();
        self.note_uncached(slots.len() as u64, bytes);
        slots
    }

    pub(super) fn flush(&self, token: &mut PoolToken<'_>) -> usize {
        // A close is ordered before this drain (see `give_back`).
        fence(Ordering::SeqCst);
        let slots = self.drain_all(token);
        let count = slots.len();
        let released = slots
            .into_iter()
            .map(|slot| self.release(token, slot))
            .filter(|&ok| ok)
            .count();
        if count > 0 {
            log::debug!("SGV pool {}: flushed {released} of {count} idle buffers", self.id);
        }
        // Pre-mapped arenas never used hold no buffer, so no release above retired them.
        let unused = self.free.lock(token).0.arenas.take_unused();
        for arena in unused {
            self.retire(token, arena);
        }
        released
    }

    /// Map arenas for `class` (chunks of `size` bytes) until `buffers` chunks of it are free,
    /// within the cap's worth of arena bytes for the class. Returns the free chunks now.
    pub(super) fn premap(&self, token: &mut PoolToken<'_>, class: u8, size: usize, buffers: usize) -> usize {
        loop {
            let (free, bytes) = self.free.lock(token).0.arenas.room(class);
            let len = arena_len(self.max_bytes, size) as u64;
            if free >= buffers || bytes.saturating_add(len) > self.max_bytes || self.is_closed() {
                return free;
            }
            let Some(arena) = self.new_arena(token, class, size) else {
                return free;
            };
            self.free.lock(token).0.arenas.insert_free(Arc::new(arena));
        }
    }

    /// The low-water mark of the class of `size`-byte chunks in this pool.
    fn low_water(&self, size: usize) -> usize {
        low_water(arena_len(self.max_bytes, size) / size)
    }

    /// One refill step for `class`: map one more arena if the class is at or below its
    /// low-water mark, within the cap's worth of arena bytes for the class (as `premap`), and
    /// the pool is open. Runs on the refill thread (or the caller of
    /// [`Shared::refill_pending`]), never on a miss. Returns whether it mapped an arena.
    pub(super) fn refill_class(&self, token: &mut PoolToken<'_>, class: u8) -> bool {
        if usize::from(class) >= SGV_CLASSES {
            return false;
        }
        let size = PAGE_SIZE << class;
        let len = arena_len(self.max_bytes, size) as u64;
        let (free, bytes) = self.free.lock(token).0.arenas.room(class);
        if free > self.low_water(size) || bytes.saturating_add(len) > self.max_bytes || self.is_closed() {
            return false;
        }
        let Some(arena) = self.new_arena(token, class, size) else {
            // Logged by `new_arena`; the next miss that finds the class low asks again, and
            // one that finds no chunk maps on its worker.
            return false;
        };
        let arena = Arc::new(arena);
        {
            let (mut lists, _) = self.free.lock(token);
            // Checked under the lock a flush after `close` takes to collect unused arenas:
            // either that flush sees this arena, or this sees `closed` and retires it below.
            if !self.is_closed() {
                lists.arenas.insert_free(arena);
                drop(lists);
                self.counters.refill_maps.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        self.retire(token, arena);
        false
    }

    /// Serve every refill request queued now, on the caller's thread. Returns how many
    /// arenas were mapped.
    pub(super) fn refill_pending(&self, token: &mut PoolToken<'_>) -> usize {
        let mut mapped = 0;
        while let Some(request) = self.refill.try_take() {
            if let Request::Class(class) = request {
                mapped += usize::from(self.refill_class(token, class));
            }
        }
        mapped
    }

    pub(super) fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            in_use: get(&c.in_use),
            in_use_bytes: get(&c.in_use_bytes),
            cached: get(&c.cached),
            cached_bytes: get(&c.cached_bytes),
            mapped_bytes: get(&c.mapped_bytes),
            mappings: get(&c.mappings),
            arenas: get(&c.arenas),
            allocations: get(&c.allocations),
            reuses: get(&c.reuses),
            refused: get(&c.refused),
            failures: get(&c.failures),
            foreign_puts: get(&c.foreign_puts),
            leaked: get(&c.leaked),
            worker_maps: get(&c.worker_maps),
            refill_maps: get(&c.refill_maps),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last reference gone: the pool and every buffer. Nothing should be cached (the pool's
        // drop flushed), but never leave memory mapped behind. The flush unmaps (a blocking
        // call), so it runs only on a thread that holds no checked lock. The last reference
        // can go on one that does: a buffer still out at shutdown, dropped under a lock (a
        // caller's bug; `give_back` left it queued). Then nothing can be unmapped, and what is
        // left is leaked below rather than unmapped under the lock or freed while mapped.
        let held = scst_accel_hal::locks::held_locks();
        if held.is_empty() {
            let released = self.flush(&mut LockToken::root());
            if released > 0 {
                log::debug!("SGV pool {}: released {released} buffers at final drop", self.id);
            }
        } else {
            // The thread stashes' buffers are chunks of arenas leaked below; their registry
            // is leaked too, so not even a view of them is dropped.
            std::mem::forget(std::mem::take(self.stashes.get_mut()));
            log::error!(
                "SGV pool {}: its last reference was dropped while holding {held:?}; nothing \
                 can be unmapped under a lock (drop pool buffers after unlocking)",
                self.id
            );
        }
        // Whatever is still here may be mapped: buffers the flush did not run for, arenas a
        // bookkeeping error kept in the set. Dropping them would free memory a device may
        // still reach (an arena's region is unmapped from the process with its last `Arc`),
        // so they are leaked.
        let queued: Vec<Slot> = self.returned.1.try_iter().collect();
        let lists = std::mem::take(self.free.get_mut());
        let idle: usize = lists.idle.0.iter().map(Vec::len).sum();
        let arenas = lists.arenas.count();
        if queued.is_empty() && idle == 0 && arenas == 0 {
            return;
        }
        let buffers = queued.len() + idle;
        std::mem::forget((queued, lists));
        log::error!(
            "SGV pool {}: {buffers} buffers and {arenas} arenas left at its final drop, possibly \
             still mapped: leaked, a device may still reach them",
            self.id
        );
    }
}

/// Test-only: make `adopt_orphan` of one pool stop between taking a stash's slots and placing
/// them, so a test can run `shutdown` inside that window on purpose.
#[cfg(test)]
pub(super) mod tests_hook {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use std::time::Duration;

    static ARMED_POOL: AtomicU64 = AtomicU64::new(0);
    static ENTERED: Mutex<Option<std::sync::mpsc::Sender<()>>> = Mutex::new(None);

    /// The next `adopt_orphan` of pool `id` signals `entered`, then stalls for `pause`.
    pub(in crate::sgv) fn arm(id: u64, entered: std::sync::mpsc::Sender<()>) {
        *ENTERED.lock().expect("hook") = Some(entered);
        ARMED_POOL.store(id, Ordering::SeqCst);
    }

    static RETURN_ARMED_POOL: AtomicU64 = AtomicU64::new(0);
    #[allow(clippy::type_complexity)] // One test's two signals, kept together.
    static RETURN_SIGNALS: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>> =
        Mutex::new(None);

    /// The next return to pool `id` that goes through the queue (a cached-class buffer, or any
    /// buffer of a closed pool: `give_back`, after its first look at `closed`, before the
    /// buffer is queued) signals `entered`, then waits for `go`: a test closes the pool inside
    /// that window on purpose.
    pub(in crate::sgv) fn arm_return(
        id: u64,
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    ) {
        *RETURN_SIGNALS.lock().expect("hook") = Some((entered, go));
        RETURN_ARMED_POOL.store(id, Ordering::SeqCst);
    }

    pub(super) fn pause_return_if_armed(id: u64) {
        if RETURN_ARMED_POOL
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            if let Some((entered, go)) = RETURN_SIGNALS.lock().expect("hook").take() {
                let _ = entered.send(());
                // Bounded like every wait: a test that never says go fails on its own
                // assertions instead of hanging the suite.
                let _ = go.recv_timeout(Duration::from_secs(10));
            }
        }
    }

    pub(super) fn pause_if_armed(id: u64) {
        if ARMED_POOL
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            if let Some(tx) = ENTERED.lock().expect("hook").take() {
                let _ = tx.send(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
