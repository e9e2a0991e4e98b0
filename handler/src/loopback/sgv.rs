//! The SGV buffer cache of one device (spec §3.6): pinned user buffers wrapped in pool objects,
//! each owned by the ucmd that first supplied it ("buffer owner", holding an extra ucmd
//! reference). Free objects sit in the pool by size class; eviction (purge, FLUSH_CACHE,
//! teardown) hands the owner back to the device, which queues ON_CACHED_MEM_FREE with the
//! OWNER's handle.
//!
//! Not modelled: `sgv_shared` pools across devices (each device has its own pools), and the
//! memory shrinker (only purge, FLUSH_CACHE and teardown evict).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use super::ownership::Fingerprint;
use crate::int_map::IntMap;

/// Pages of the largest cached class: order 10, 4 MiB (spec §3.6).
const MAX_CACHED_PAGES: u64 = 1024;
const PAGE: u64 = 4096;

/// One pool object: a pinned user buffer.
#[derive(Clone, Debug)]
pub(crate) struct SgvObject {
    /// User address of the buffer.
    pub pbuf: u64,
    /// Pages pinned (the class size when cached).
    pub pages: u64,
    /// Owner ucmd handle.
    pub owner: u32,
    /// Lives in the cache (returned to the pool when its command ends) or dies with it.
    pub cached: bool,
    /// Its command's buffer was "cached" in the kernel's sense (`ucmd->buff_cached`, spec
    /// §3.6): the owner gets it back with ON_CACHED_MEM_FREE when the object is destroyed,
    /// even right after use when it is too big for the pool (spec §8.9).
    pub return_to_owner: bool,
    /// Belongs to the clustered pool.
    pub clustered: bool,
    /// Attached to a live command.
    pub in_use: bool,
    /// Last time it went back to the pool.
    pub last_used: Instant,
    /// What the handler left in it at its last command's EXEC reply (a READ's data), checked
    /// when it goes back to the handler (`ownership.rs`).
    pub fingerprint: Option<Fingerprint>,
}

/// An object evicted from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Owner ucmd handle (the cmd_h of ON_CACHED_MEM_FREE).
    pub owner: u32,
    /// The buffer.
    pub pbuf: u64,
    /// What it held when the handler last gave it to SCST, to check at ON_CACHED_MEM_FREE.
    pub fingerprint: Option<Fingerprint>,
}

/// Both pools (normal and clustered) of one device.
#[derive(Debug)]
pub(crate) struct SgvPool {
    objects: IntMap<u64, SgvObject>,
    /// The free cached objects by (pages, clustered), in the order they went back to the pool
    /// (the device lock orders them, so by `last_used`): a hit pops the last one, the most
    /// recently used, without looking at the others.
    free: BTreeMap<(u64, bool), Vec<u64>>,
    next_id: u64,
    single_alloc_pages: u64,
    purge_interval: Option<Duration>,
    /// Fingerprints are taken (`KernelConfig::check_buffer_ownership`, `ownership.rs`).
    pub check_ownership: bool,
}

impl SgvPool {
    /// A pool; `single_alloc_pages` > 0 selects single-class mode.
    pub fn new(single_alloc_pages: i32, purge_interval: Option<Duration>) -> Self {
        Self {
            objects: IntMap::default(),
            free: BTreeMap::new(),
            next_id: 1,
            single_alloc_pages: u64::try_from(single_alloc_pages).unwrap_or(0),
            purge_interval,
            check_ownership: true,
        }
    }

    /// With fingerprints taken (`ownership.rs`) or not.
    pub fn checking_ownership(mut self, check: bool) -> Self {
        self.check_ownership = check;
        self
    }

    /// Pages of the size class for `bytes`, or `None` if such a buffer is never cached:
    /// power-of-two classes of 1..1024 pages, or the single class of `sgv_single_alloc_pages`.
    pub fn class_pages(&self, bytes: u64) -> Option<u64> {
        let pages = bytes.div_ceil(PAGE).max(1);
        if self.single_alloc_pages > 0 {
            return (pages <= self.single_alloc_pages).then_some(self.single_alloc_pages);
        }
        let class = pages.next_power_of_two();
        (class <= MAX_CACHED_PAGES).then_some(class)
    }

    /// Take a free object of exactly `pages` (most recently used first: the LRU tail is reused
    /// and the cold head gets purged). Its fingerprint stays until the check of the EXEC that
    /// hands it to the handler is made (`DeviceState::dequeue_for_user`): a command that ends
    /// before its EXEC is delivered leaves it for the next hit.
    pub fn take_free(&mut self, pages: u64, clustered: bool) -> Option<(u64, SgvObject)> {
        let id = self.free.get_mut(&(pages, clustered))?.pop()?;
        let obj = self.objects.get_mut(&id)?;
        obj.in_use = true;
        Some((id, obj.clone()))
    }

    /// Record what object `id` holds as its command hands it to SCST (`ownership.rs`), or
    /// forget it (`None`) as the object goes to the handler.
    pub fn set_fingerprint(&mut self, id: u64, fingerprint: Option<Fingerprint>) {
        if !self.check_ownership {
            return;
        }
        if let Some(obj) = self.objects.get_mut(&id) {
            obj.fingerprint = fingerprint;
        }
    }

    /// Insert a new object; returns its id.
    pub fn insert(&mut self, obj: SgvObject) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if obj.cached && !obj.in_use {
            self.free.entry((obj.pages, obj.clustered)).or_default().push(id);
        }
        self.objects.insert(id, obj);
        id
    }

    /// A command is done with `id`: cached objects return to the pool, the others are
    /// destroyed (their owner reference must then be dropped by the caller).
    pub fn release(&mut self, id: u64, now: Instant) -> Option<SgvObject> {
        let obj = self.objects.get_mut(&id)?;
        if obj.cached {
            obj.in_use = false;
            obj.last_used = now;
            let key = (obj.pages, obj.clustered);
            self.free.entry(key).or_default().push(id);
            None
        } else {
            self.objects.remove(&id)
        }
    }

    /// Evict every free cached object (FLUSH_CACHE, teardown).
    pub fn flush(&mut self) -> Vec<Evicted> {
        self.evict_where(|_| true)
    }

    /// Evict free objects unused for at least the purge interval.
    pub fn purge(&mut self, now: Instant) -> Vec<Evicted> {
        match self.purge_interval {
            Some(interval) => self.evict_where(|o| now.duration_since(o.last_used) >= interval),
            None => Vec::new(),
        }
    }

    fn evict_where(&mut self, pred: impl Fn(&SgvObject) -> bool) -> Vec<Evicted> {
        let ids: Vec<u64> = self
            .objects
            .iter()
            .filter(|(_, o)| !o.in_use && pred(o))
            .map(|(id, _)| *id)
            .collect();
        let mut out: Vec<(u64, Evicted)> = ids
            .into_iter()
            .filter_map(|id| {
                self.objects.remove(&id).map(|o| {
                    (
                        id,
                        Evicted {
                            owner: o.owner,
                            pbuf: o.pbuf,
                            fingerprint: o.fingerprint,
                        },
                    )
                })
            })
            .collect();
        // Only free objects are evicted: what is left on the free lists is what still exists.
        if !out.is_empty() {
            for ids in self.free.values_mut() {
                ids.retain(|id| self.objects.contains_key(id));
            }
        }
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Free (cached, unused) objects and their bytes.
    pub fn cached_totals(&self) -> (usize, u64) {
        self.objects
            .values()
            .filter(|o| o.cached && !o.in_use)
            .fold((0, 0), |(n, b), o| (n + 1, b + o.pages * PAGE))
    }

    /// Objects attached to live commands.
    pub fn in_use(&self) -> usize {
        self.objects.values().filter(|o| o.in_use).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pages: u64, owner: u32) -> SgvObject {
        SgvObject {
            pbuf: 0x1000 * u64::from(owner),
            pages,
            owner,
            cached: true,
            return_to_owner: true,
            clustered: false,
            in_use: true,
            last_used: Instant::now(),
            fingerprint: None,
        }
    }

    #[test]
    fn classes_are_powers_of_two_up_to_4_mib() {
        let pool = SgvPool::new(0, None);
        assert_eq!(pool.class_pages(1), Some(1));
        assert_eq!(pool.class_pages(4097), Some(2));
        assert_eq!(pool.class_pages(3 * 4096), Some(4));
        assert_eq!(pool.class_pages(4 << 20), Some(1024));
        assert_eq!(pool.class_pages((4 << 20) + 1), None);
        let single = SgvPool::new(8, None);
        assert_eq!(single.class_pages(4096), Some(8));
        assert_eq!(single.class_pages(9 * 4096), None);
    }

    /// A hit takes the most recently released object; a purge evicts only the old ones, and
    /// the free list keeps the rest (and nothing evicted).
    #[test]
    fn hits_take_the_newest_and_a_purge_leaves_the_rest_free() {
        let mut pool = SgvPool::new(0, Some(Duration::from_secs(60)));
        let old = pool.insert(obj(1, 1));
        let mid = pool.insert(obj(1, 2));
        let new = pool.insert(obj(1, 3));
        let t0 = Instant::now();
        pool.release(old, t0);
        pool.release(mid, t0 + Duration::from_secs(30));
        pool.release(new, t0 + Duration::from_secs(50));
        assert_eq!(
            pool.take_free(1, false).map(|(i, _)| i),
            Some(new),
            "newest first"
        );
        pool.release(new, t0 + Duration::from_secs(55));
        let evicted = pool.purge(t0 + Duration::from_secs(90));
        assert_eq!(
            evicted,
            vec![
                Evicted {
                    owner: 1,
                    pbuf: 0x1000,
                    fingerprint: None,
                },
                Evicted {
                    owner: 2,
                    pbuf: 0x2000,
                    fingerprint: None,
                }
            ]
        );
        assert_eq!(
            pool.free[&(1, false)],
            vec![new],
            "the evicted left the free list"
        );
        assert_eq!(pool.take_free(1, false).map(|(i, _)| i), Some(new));
        assert!(
            pool.take_free(1, false).is_none(),
            "evicted objects are not handed out"
        );
    }

    #[test]
    fn released_objects_are_reused_then_flushed_with_their_owner() {
        let mut pool = SgvPool::new(0, None);
        let id = pool.insert(obj(2, 7));
        assert!(pool.take_free(2, false).is_none(), "in use");
        assert!(pool.release(id, Instant::now()).is_none());
        assert_eq!(pool.take_free(2, false).map(|(i, _)| i), Some(id));
        pool.release(id, Instant::now());
        assert_eq!(pool.cached_totals(), (1, 8192));
        assert_eq!(
            pool.flush(),
            vec![Evicted {
                owner: 7,
                pbuf: 0x7000,
                fingerprint: None,
            }]
        );
        assert_eq!(pool.cached_totals(), (0, 0));
    }
}
