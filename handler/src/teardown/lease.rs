//! Device leases on DMA memory: teardown steps 3-5 (architecture.md §5, "drain before unmap").
//!
//! When a descriptor that points at a buffer is handed to the device, the buffer is leased to the
//! device: the device may DMA into or out of it until the lease ends. The lease holds the
//! device's reference to the buffer (its payload, typically an `Arc` of the pooled buffer whose
//! `Drop` returns it to the pool), so a buffer goes back to its pool only after the device's
//! lease on it ended, whichever reference (device or command table) is dropped last.
//!
//! A lease ends exactly once, in one of two ways:
//! - its completion: [`LeaseTable::release`] (the device reported the descriptor done), or
//! - [`LeaseTable::revoke_all`], called only after a function reset proved that no more DMA will
//!   happen (accelerator.md's stop contract; architecture.md §5 step 3). A completion that
//!   arrives after the revoke (a late completion racing with teardown) finds its lease already
//!   ended: its release is a counted no-op, never a second release of the buffer.
//!
//! The DMA memory may be unmapped only under an [`UnmapPermit`], which exists only while no lease
//! is outstanding and, while it lives, makes [`LeaseTable::grant`] refuse.
//!
//! The table's lock has a level (`teardown.leases`, docs/locking.md): every method takes the
//! caller's [`LockToken`], so the compiler refuses the table under a lock that comes after it
//! (the SGV pool's above all: a buffer's return must never wait for the table).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use scst_accel_hal::locks::levels::TeardownLeases;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;

use crate::sync;
use crate::sync::Arc;
use crate::sync::AtomicBool;
use crate::sync::Deadline;
use crate::sync::LevelCondvar;
use crate::sync::LevelGuard;
use crate::sync::LevelMutex;
use crate::sync::Ordering;

/// The table of outstanding device leases on DMA memory.
///
/// Invariants:
/// - every granted [`Lease`] ends exactly once: by [`LeaseTable::release`] or by
///   [`revoke_all`](Self::revoke_all); its payload is handed back exactly once, by whichever
///   ended it, and never while the lease is outstanding;
/// - [`unmap_guard`](Self::unmap_guard) returns a permit only when no lease is outstanding, at
///   most one permit exists, and no lease is granted while it lives;
/// - payloads are handed back to the caller, never dropped while the table's lock is held (a
///   buffer's `Drop` may take the pool's lock; the table must never nest it).
///
/// `T` is the device's reference to the memory (e.g. `Arc<Buffer>`); `()` when the caller keeps
/// the references itself.
pub struct LeaseTable<T = ()> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// This table's number, unique in the process: a lease names its table by it.
    table: u64,
    inner: LevelMutex<Inner<T>, TeardownLeases>,
    /// Signalled when the last outstanding lease ends.
    released: LevelCondvar,
    /// An [`UnmapPermit`] lives. Set under the lock (by `unmap_guard`, only with no lease
    /// outstanding) and read under it (by `grant`); cleared by the permit's `Drop`, which has
    /// no token and so takes no lock: clearing only ever allows grants again, so a `grant`
    /// that races it may refuse once more, never admit a lease during an unmap.
    unmapping: AtomicBool,
}

struct Inner<T> {
    /// Outstanding leases in a slab: a grant takes a free slot and a release frees it, so once
    /// the slab has grown to the most leases ever outstanding at once, granting and releasing
    /// allocate nothing (the command path's rule). Its order is deterministic (loom replays
    /// executions and needs the same order each time).
    slots: Vec<Option<Entry<T>>>,
    /// Free slots of `slots`.
    free: Vec<usize>,
    /// Occupied slots of `slots`.
    outstanding: usize,
    /// The next lease's sequence number: unique for the table's life, so a stale handle (a
    /// lease revoked, its slot reused) never matches a newer lease in the same slot.
    next_seq: u64,
    stats: LeaseStats,
}

impl<T> Inner<T> {
    /// Put a new lease in a free slot; its key.
    fn insert(&mut self, id: u64, payload: T) -> LeaseKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Some(Entry { id, seq, payload });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.outstanding += 1;
        LeaseKey { slot, seq }
    }

    /// End the lease `key` on its completion: its payload, or `None` (counted as a late
    /// release) when `revoke_all` already ended it. The caller logs, after unlocking.
    fn end(&mut self, key: LeaseKey) -> Option<T> {
        let current = self
            .slots
            .get_mut(key.slot)
            .filter(|e| e.as_ref().is_some_and(|e| e.seq == key.seq));
        match current.and_then(Option::take) {
            Some(entry) => {
                self.free.push(key.slot);
                self.outstanding -= 1;
                self.stats.released += 1;
                Some(entry.payload)
            }
            None => {
                self.stats.late_releases += 1;
                None
            }
        }
    }

    /// The outstanding entries, oldest first.
    fn entries_by_age(&self) -> Vec<&Entry<T>> {
        let mut entries: Vec<&Entry<T>> = self.slots.iter().flatten().collect();
        entries.sort_unstable_by_key(|e| e.seq);
        entries
    }

    /// Take every outstanding entry out, oldest first; every slot is free after.
    fn take_all(&mut self) -> Vec<Entry<T>> {
        let mut entries: Vec<Entry<T>> = self.slots.iter_mut().filter_map(Option::take).collect();
        entries.sort_unstable_by_key(|e| e.seq);
        self.free.clear();
        self.free.extend((0..self.slots.len()).rev());
        self.outstanding = 0;
        entries
    }
}

/// How [`LeaseTable::end`] ended a lease.
enum Ending<T> {
    /// Ended by its completion: its payload.
    Ended(T),
    /// Already ended by `revoke_all` (a late completion): the lease's id, for the log.
    Late(u64),
    /// Another table's lease: not ended, handed back to be logged and dropped unlocked.
    Foreign(Lease<T>),
}

/// Where a lease lives in its table's slab, and which lease of that slot it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LeaseKey {
    slot: usize,
    seq: u64,
}

struct Entry<T> {
    id: u64,
    seq: u64,
    payload: T,
}

/// Counters of a [`LeaseTable`] since it was created, for the teardown report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases granted.
    pub granted: u64,
    /// Leases ended by their completion.
    pub released: u64,
    /// Leases ended by `revoke_all`.
    pub revoked: u64,
    /// Releases that found their lease already revoked (late completions): no-ops.
    pub late_releases: u64,
    /// Grants refused because an unmap permit lived.
    pub refused: u64,
}

/// A grant refused because the memory is being unmapped; the payload comes back untouched.
///
/// The command it was for must not reach the device: fail it (BUSY) instead.
pub struct Refused<T> {
    /// The caller's id for the lease.
    pub id: u64,
    /// The payload that would have been leased.
    pub payload: T,
}

/// Leases still outstanding when a bounded wait for their release gave up: reset the function,
/// then [`LeaseTable::revoke_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{outstanding} device lease(s) still outstanding at the deadline: reset the device, then revoke")]
pub struct Outstanding {
    /// Leases outstanding when the wait gave up.
    pub outstanding: usize,
}

impl<T> LeaseTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        /// Tables made so far in the process: the next table's number.
        static TABLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            shared: Arc::new(Shared {
                table: TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                inner: LevelMutex::new(Inner {
                    slots: Vec::new(),
                    free: Vec::new(),
                    outstanding: 0,
                    next_seq: 0,
                    stats: LeaseStats::default(),
                }),
                released: LevelCondvar::new(),
                unmapping: AtomicBool::new(false),
            }),
        }
    }

    /// Leases `payload` to the device under the caller's `id` (a tag, for logs).
    ///
    /// # Errors
    /// [`Refused`] (with the payload) while an [`UnmapPermit`] lives: do not hand the memory to
    /// the device.
    pub fn grant<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        id: u64,
        payload: T,
    ) -> Result<Lease<T>, Refused<T>> {
        let mut inner = self.lock(token);
        if self.shared.unmapping.load(Ordering::SeqCst) {
            inner.stats.refused += 1;
            drop(inner);
            log::debug!("lease {id} refused: DMA memory is being unmapped");
            return Err(Refused { id, payload });
        }
        let key = inner.insert(id, payload);
        inner.stats.granted += 1;
        Ok(self.lease(key, id))
    }

    /// Leases every `(id, payload)` of `requests` under one acquisition of the table's lock (a
    /// worker's submission batch: one lock per batch instead of one per request), in order, into
    /// `granted`: each as [`grant`](Self::grant) alone would, a lease or the [`Refused`] payload
    /// while an [`UnmapPermit`] lives. `requests` is emptied; with reused vectors nothing is
    /// allocated once the table's slab has grown.
    pub fn grant_batch<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        requests: &mut Vec<(u64, T)>,
        granted: &mut Vec<Result<Lease<T>, Refused<T>>>,
    ) {
        if requests.is_empty() {
            return;
        }
        let mut refused = 0usize;
        {
            let mut inner = self.lock(token);
            let unmapping = self.shared.unmapping.load(Ordering::SeqCst);
            for (id, payload) in requests.drain(..) {
                if unmapping {
                    inner.stats.refused += 1;
                    refused += 1;
                    granted.push(Err(Refused { id, payload }));
                    continue;
                }
                let key = inner.insert(id, payload);
                inner.stats.granted += 1;
                granted.push(Ok(self.lease(key, id)));
            }
        }
        if refused > 0 {
            log::debug!("{refused} lease(s) refused: DMA memory is being unmapped");
        }
    }

    /// Leases outstanding now.
    pub fn outstanding<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> usize {
        self.lock(token).outstanding
    }

    /// Caller ids of the outstanding leases, oldest first (for the teardown's stuck-command dump).
    pub fn outstanding_ids<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> Vec<u64> {
        self.lock(token).entries_by_age().iter().map(|e| e.id).collect()
    }

    /// Counters since creation.
    pub fn stats<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> LeaseStats {
        self.lock(token).stats
    }

    /// Ends every outstanding lease and hands back their `(id, payload)`s, oldest first.
    ///
    /// Call it only after a reset proved the device does no more DMA (architecture.md §5 step 3):
    /// it is what lets the memory be unmapped with descriptors still unanswered. A later
    /// [`LeaseTable::release`] of a revoked lease is a counted no-op. Drop the returned payloads
    /// outside any command-path lock (their `Drop` may return buffers to the pool).
    pub fn revoke_all<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> Vec<(u64, T)> {
        let mut inner = self.lock(token);
        let revoked: Vec<(u64, T)> = inner.take_all().into_iter().map(|e| (e.id, e.payload)).collect();
        inner.stats.revoked += revoked.len() as u64;
        if !revoked.is_empty() {
            self.shared.released.notify_all();
        }
        drop(inner);
        if !revoked.is_empty() {
            log::info!(
                "leases: revoked {} outstanding lease(s) after reset",
                revoked.len()
            );
        }
        revoked
    }

    /// A lease of this table (no handle to it: a lease costs no reference count).
    fn lease(&self, key: LeaseKey, id: u64) -> Lease<T> {
        Lease {
            table: self.shared.table,
            key,
            id,
            ended: false,
            payload: PhantomData,
        }
    }

    /// Ends `lease` on its completion and hands the payload back; `None` if `revoke_all`
    /// already ended it (a late completion after a reset: nothing to do, and it is counted), or
    /// if the lease is another table's (a caller's bug, logged: that lease stays outstanding in
    /// its own table, as an unreleased lease does, until its `revoke_all`).
    pub fn release<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        lease: Lease<T>,
    ) -> Option<T> {
        let mut inner = self.lock(token);
        let ending = self.end(&mut inner, lease);
        if matches!(ending, Ending::Ended(_)) && inner.outstanding == 0 {
            self.shared.released.notify_all();
        }
        drop(inner);
        // Logged (and a foreign lease dropped, which logs too) with the lock released.
        match ending {
            Ending::Ended(payload) => Some(payload),
            Ending::Late(id) => {
                log::debug!("lease {id}: released after revoke_all; no-op");
                None
            }
            Ending::Foreign(lease) => {
                self.log_foreign(&lease);
                None
            }
        }
    }

    /// Ends a batch of leases on their completions, under one acquisition of the table's lock
    /// (a worker's reap: one lock per batch instead of one per completion). Each lease is
    /// [`released`](Self::release) as alone it would be: its payload is pushed to `payloads`
    /// (the caller drops them, after this returns, outside the lock), or counted as a late
    /// release after a revoke. `leases` is emptied.
    pub fn release_batch<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        leases: &mut Vec<Lease<T>>,
        payloads: &mut Vec<T>,
    ) {
        if leases.is_empty() {
            return;
        }
        let mut late = 0usize;
        // Empty (no allocation) unless a caller's bug hands this table another's lease.
        let mut foreign = Vec::new();
        let mut inner = self.lock(token);
        for lease in leases.drain(..) {
            match self.end(&mut inner, lease) {
                Ending::Ended(payload) => payloads.push(payload),
                Ending::Late(_) => late += 1,
                Ending::Foreign(lease) => foreign.push(lease),
            }
        }
        if inner.outstanding == 0 {
            self.shared.released.notify_all();
        }
        drop(inner);
        if late > 0 {
            log::debug!("{late} lease(s) released after revoke_all; no-op");
        }
        for lease in &foreign {
            self.log_foreign(lease);
        }
    }

    /// End `lease` under the table's lock (`inner`). Logs nothing: the caller logs once the lock
    /// is released.
    fn end(&self, inner: &mut Inner<T>, mut lease: Lease<T>) -> Ending<T> {
        if lease.table != self.shared.table {
            return Ending::Foreign(lease);
        }
        lease.ended = true;
        match inner.end(lease.key) {
            Some(payload) => Ending::Ended(payload),
            None => Ending::Late(lease.id),
        }
    }

    /// A lease of another table was released on this one (a caller's bug): it stays outstanding
    /// in its own table (its `Drop` says so too).
    fn log_foreign(&self, lease: &Lease<T>) {
        log::error!(
            "lease {} is table {}'s, released on table {}: it stays outstanding until that table's revoke_all",
            lease.id,
            lease.table,
            self.shared.table
        );
    }

    /// Waits at most `timeout` for every outstanding lease to end.
    ///
    /// # Errors
    /// [`Outstanding`] with the count if some are still outstanding at the deadline: escalate
    /// (reset, then [`revoke_all`](Self::revoke_all)).
    pub fn wait_released<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        timeout: Duration,
    ) -> Result<(), Outstanding> {
        let deadline = Deadline::after(timeout);
        let mut inner = self.lock(token);
        loop {
            let outstanding = inner.outstanding;
            if outstanding == 0 {
                return Ok(());
            }
            let Some(left) = deadline.remaining() else {
                log::warn!("leases: deadline passed with {outstanding} lease(s) outstanding");
                return Err(Outstanding { outstanding });
            };
            inner = sync::wait_level(&self.shared.released, inner, left);
        }
    }

    /// The permission to unmap the leased memory: `Some` only when no lease is outstanding and no
    /// other permit lives. While the permit lives, [`grant`](Self::grant) refuses, so nothing can
    /// race the unmap; drop it when the unmap is done.
    pub fn unmap_guard<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
    ) -> Option<UnmapPermit<T>> {
        let inner = self.lock(token);
        if self.shared.unmapping.load(Ordering::SeqCst) || inner.outstanding != 0 {
            return None;
        }
        self.shared.unmapping.store(true, Ordering::SeqCst);
        drop(inner);
        Some(UnmapPermit {
            shared: Arc::clone(&self.shared),
        })
    }

    fn lock<'a, L: LockBefore<TeardownLeases>>(
        &'a self,
        token: &'a mut LockToken<'_, L>,
    ) -> LevelGuard<'a, Inner<T>, TeardownLeases> {
        self.shared.lock(token)
    }
}

impl<T> Shared<T> {
    /// The table's lock (level `teardown.leases`): a leaf, held for a few map and counter
    /// updates; poisoning is recovered (the state is consistent after every step).
    fn lock<'a, L: LockBefore<TeardownLeases>>(
        &'a self,
        token: &'a mut LockToken<'_, L>,
    ) -> LevelGuard<'a, Inner<T>, TeardownLeases> {
        self.inner.lock(token).0
    }
}

impl<T> Default for LeaseTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for LeaseTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No token reaches `fmt`: no lock is taken, so only the lock-free state is shown.
        f.debug_struct("LeaseTable")
            .field("unmapping", &self.shared.unmapping.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The device's hold on one piece of DMA memory. Not `Clone`: it ends once.
///
/// End it with [`LeaseTable::release`] (or `release_batch`) on the table that granted it when
/// its completion arrives. Dropping it unreleased does NOT end it (the device may still be using
/// the memory): the lease stays outstanding until [`LeaseTable::revoke_all`] after a reset, and a
/// warning is logged. It names its table by number, not by a handle: granting and ending one
/// takes no atomic reference count (the command path's cost).
pub struct Lease<T = ()> {
    table: u64,
    key: LeaseKey,
    id: u64,
    ended: bool,
    payload: PhantomData<fn() -> T>,
}

impl<T> Lease<T> {
    /// The caller's id given at grant.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if !self.ended {
            log::warn!(
                "lease {} dropped without release: it stays outstanding until revoke_all after a reset",
                self.id
            );
        }
    }
}

impl<T> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

/// Permission to unmap the leased DMA memory (teardown step 5). While it lives no lease is
/// outstanding and none can be granted. Dropping it allows grants again.
pub struct UnmapPermit<T = ()> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for UnmapPermit<T> {
    fn drop(&mut self) {
        // No token reaches a `Drop`: the flag is cleared without the lock (see `Shared`).
        self.shared.unmapping.store(false, Ordering::SeqCst);
    }
}

impl<T> fmt::Debug for UnmapPermit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnmapPermit")
    }
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lease {} refused: the DMA memory is being unmapped; fail the command",
            self.id
        )
    }
}

impl<T> std::error::Error for Refused<T> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use scst_accel_hal::locks::levels::Root;

    /// The test thread's token: it holds no lock.
    fn t() -> LockToken<'static, Root> {
        LockToken::root()
    }

    static_assertions::assert_impl_all!(LeaseTable<std::sync::Arc<u8>>: Send, Sync);
    static_assertions::assert_impl_all!(Lease<std::sync::Arc<u8>>: Send);
    static_assertions::assert_not_impl_any!(Lease: Clone);

    /// Counts its drops: stands for a pooled buffer whose `Drop` returns it to the pool.
    struct Buf<'a>(&'a AtomicUsize);
    impl Drop for Buf<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn grant_release_counts() {
        let table = LeaseTable::<u32>::new();
        let a = table.grant(&mut t(), 7, 70).expect("no permit");
        let b = table.grant(&mut t(), 8, 80).expect("no permit");
        assert_eq!(table.outstanding(&mut t()), 2);
        assert_eq!(table.outstanding_ids(&mut t()), vec![7, 8]);
        assert_eq!(a.id(), 7);
        assert_eq!(table.release(&mut t(), a), Some(70));
        assert_eq!(table.outstanding(&mut t()), 1);
        assert_eq!(table.release(&mut t(), b), Some(80));
        assert_eq!(table.outstanding(&mut t()), 0);
        let stats = table.stats(&mut t());
        assert_eq!(
            (stats.granted, stats.released, stats.revoked, stats.late_releases),
            (2, 2, 0, 0)
        );
    }

    #[test]
    fn a_batch_grant_leases_each_in_order_and_refuses_all_under_a_permit() {
        let table = LeaseTable::<u32>::new();
        let mut requests = vec![(1, 10), (2, 20)];
        let mut granted = Vec::new();
        table.grant_batch(&mut t(), &mut requests, &mut granted);
        assert!(requests.is_empty());
        let leases: Vec<Lease<u32>> = granted.drain(..).map(|g| g.expect("granted")).collect();
        assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(table.outstanding_ids(&mut t()), vec![1, 2]);
        for lease in leases {
            assert!(table.release(&mut t(), lease).is_some());
        }
        let permit = table.unmap_guard(&mut t()).expect("nothing outstanding");
        let mut requests = vec![(3, 30), (4, 40)];
        table.grant_batch(&mut t(), &mut requests, &mut granted);
        let refused: Vec<(u64, u32)> = granted
            .drain(..)
            .map(|g| match g {
                Err(Refused { id, payload }) => (id, payload),
                Ok(_) => panic!("granted under a permit"),
            })
            .collect();
        assert_eq!(refused, vec![(3, 30), (4, 40)], "payloads back untouched");
        drop(permit);
        let s = table.stats(&mut t());
        assert_eq!((s.granted, s.released, s.refused), (2, 2, 2));
    }

    #[test]
    fn slots_are_reused_and_a_stale_release_never_ends_the_slots_next_lease() {
        let table = LeaseTable::<u32>::new();
        // Steady state: as many slots as leases ever outstanding at once, whatever the count
        // of grants.
        for round in 0..100 {
            let a = table.grant(&mut t(), round, 1).expect("no permit");
            let b = table.grant(&mut t(), round, 2).expect("no permit");
            assert_eq!(table.release(&mut t(), b), Some(2));
            assert_eq!(table.release(&mut t(), a), Some(1));
        }
        assert_eq!(
            table.shared.lock(&mut t()).slots.len(),
            2,
            "no growth past the peak"
        );
        // A lease revoked, its slot taken by a new lease: the old one's release is late, and the
        // new lease stays outstanding.
        let old = table.grant(&mut t(), 1, 10).expect("no permit");
        assert_eq!(table.revoke_all(&mut t()), vec![(1, 10)]);
        let new = table.grant(&mut t(), 2, 20).expect("no permit");
        assert_eq!(table.release(&mut t(), old), None, "late: revoked");
        assert_eq!(table.outstanding_ids(&mut t()), vec![2]);
        assert_eq!(table.release(&mut t(), new), Some(20));
        let s = table.stats(&mut t());
        assert_eq!(
            (s.granted, s.released, s.revoked, s.late_releases),
            (202, 201, 1, 1)
        );
    }

    #[test]
    fn a_batch_release_ends_each_lease_once() {
        let table = LeaseTable::<u32>::new();
        let other = LeaseTable::<u32>::new();
        let mut batch = vec![
            table.grant(&mut t(), 1, 10).expect("no permit"),
            table.grant(&mut t(), 2, 20).expect("no permit"),
            other.grant(&mut t(), 3, 30).expect("no permit"),
        ];
        let kept = table.grant(&mut t(), 4, 40).expect("no permit");
        let mut payloads = Vec::new();
        table.release_batch(&mut t(), &mut batch, &mut payloads);
        assert!(batch.is_empty());
        payloads.sort_unstable();
        assert_eq!(payloads, vec![10, 20], "each payload handed back once");
        assert_eq!(table.outstanding(&mut t()), 1);
        assert_eq!(
            other.outstanding(&mut t()),
            1,
            "a foreign lease is not ended by a table that did not grant it"
        );
        assert_eq!(
            other.revoke_all(&mut t()),
            vec![(3, 30)],
            "its own table still has it"
        );
        let s = table.stats(&mut t());
        assert_eq!((s.released, s.late_releases), (2, 0));
        // A revoked lease in a batch is a counted no-op.
        assert_eq!(table.revoke_all(&mut t()).len(), 1);
        let mut late = vec![kept];
        let mut none = Vec::new();
        table.release_batch(&mut t(), &mut late, &mut none);
        assert!(none.is_empty());
        assert_eq!(table.stats(&mut t()).late_releases, 1);
    }

    #[test]
    fn revoke_then_late_release_is_a_counted_noop() {
        let returned = AtomicUsize::new(0);
        let table = LeaseTable::new();
        let lease = table.grant(&mut t(), 1, Buf(&returned)).expect("no permit");
        let revoked = table.revoke_all(&mut t());
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].0, 1);
        assert_eq!(table.outstanding(&mut t()), 0);
        drop(revoked);
        assert_eq!(returned.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            table.release(&mut t(), lease).is_none(),
            "a revoked lease has nothing to hand back"
        );
        assert_eq!(
            returned.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "never released twice"
        );
        let stats = table.stats(&mut t());
        assert_eq!((stats.revoked, stats.late_releases, stats.released), (1, 1, 0));
        assert!(table.revoke_all(&mut t()).is_empty());
    }

    #[test]
    fn wait_released_times_out_then_succeeds() {
        let table = LeaseTable::<()>::new();
        assert_eq!(table.wait_released(&mut t(), Duration::ZERO), Ok(()));
        let lease = table.grant(&mut t(), 3, ()).expect("no permit");
        assert_eq!(
            table.wait_released(&mut t(), Duration::from_millis(20)),
            Err(Outstanding { outstanding: 1 })
        );
        std::thread::scope(|s| {
            let table = &table;
            let releaser = s.spawn(move || table.release(&mut t(), lease));
            assert_eq!(table.wait_released(&mut t(), Duration::from_secs(30)), Ok(()));
            releaser.join().expect("releaser"); // explicit: see issue 16
        });
    }

    #[test]
    fn unmap_permit_excludes_leases() {
        let table = LeaseTable::<u8>::new();
        let lease = table.grant(&mut t(), 1, 1).expect("no permit");
        assert!(table.unmap_guard(&mut t()).is_none(), "a lease is outstanding");
        assert_eq!(table.release(&mut t(), lease), Some(1));
        let permit = table.unmap_guard(&mut t()).expect("nothing outstanding");
        assert!(table.unmap_guard(&mut t()).is_none(), "one permit at a time");
        let refused = table
            .grant(&mut t(), 2, 2)
            .expect_err("grant refused while unmapping");
        assert_eq!((refused.id, refused.payload), (2, 2));
        assert_eq!(table.stats(&mut t()).refused, 1);
        drop(permit);
        let again = table.grant(&mut t(), 3, 3).expect("permit dropped");
        assert_eq!(table.release(&mut t(), again), Some(3));
    }

    #[test]
    fn dropped_lease_stays_outstanding_until_revoked() {
        let returned = AtomicUsize::new(0);
        let table = LeaseTable::new();
        drop(table.grant(&mut t(), 9, Buf(&returned)).expect("no permit"));
        assert_eq!(table.outstanding(&mut t()), 1, "the device may still use it");
        assert_eq!(returned.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(table.unmap_guard(&mut t()).is_none());
        drop(table.revoke_all(&mut t()));
        assert_eq!(returned.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(table.unmap_guard(&mut t()).is_some());
    }
}
