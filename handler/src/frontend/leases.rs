//! The device leases on the frontend's command buffers, one [`LeaseTable`] per worker.
//!
//! A worker grants and ends the leases of its own commands in its own table, so the command
//! path takes no lock another worker takes: each table's lock is shared only with the teardown
//! and dumps, which take the tables one at a time (never two at once: they have one level,
//! `teardown.leases`). The teardown sees the tables together through [`WorkerLeases`], with the
//! guarantees of one table: its permit to unmap exists only while no table has a lease
//! outstanding, and while it lives every table refuses grants.

use crate::store::CmdBuffer;
use crate::teardown::LeaseStats;
use crate::teardown::LeaseTable;
use crate::teardown::Outstanding;
use crate::teardown::UnmapPermit;
use scst_accel_hal::locks::levels::TeardownLeases;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Permission to unmap the command-buffer pool: no device lease on any of its buffers is
/// outstanding in any worker's table, and none can be granted while it lives
/// ([`crate::teardown::UnmapPermit`], one per table). The teardown hands it out in
/// [`super::FrontendReport::unmap`]; whoever shuts the pool down takes it and drops it after.
#[derive(Debug)]
pub struct PoolPermit {
    _tables: Vec<UnmapPermit<Arc<CmdBuffer>>>,
}

/// The workers' lease tables (module doc).
pub(crate) struct WorkerLeases {
    tables: Box<[LeaseTable<Arc<CmdBuffer>>]>,
}

impl WorkerLeases {
    /// One empty table per worker.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            tables: (0..workers.max(1)).map(|_| LeaseTable::new()).collect(),
        }
    }

    /// Worker `index`'s table.
    pub(crate) fn worker(&self, index: usize) -> &LeaseTable<Arc<CmdBuffer>> {
        &self.tables[index]
    }

    /// Leases outstanding in every table.
    pub(crate) fn outstanding<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> usize {
        self.tables.iter().map(|t| t.outstanding(token)).sum()
    }

    /// Caller ids (cmd_h) of the outstanding leases, table by table, oldest first in each.
    pub(crate) fn outstanding_ids<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
    ) -> Vec<u64> {
        self.tables
            .iter()
            .flat_map(|t| t.outstanding_ids(token))
            .collect()
    }

    /// The tables' counters, summed.
    pub(crate) fn stats<L: LockBefore<TeardownLeases>>(&self, token: &mut LockToken<'_, L>) -> LeaseStats {
        self.tables.iter().fold(LeaseStats::default(), |sum, t| {
            let s = t.stats(token);
            LeaseStats {
                granted: sum.granted + s.granted,
                released: sum.released + s.released,
                revoked: sum.revoked + s.revoked,
                late_releases: sum.late_releases + s.late_releases,
                refused: sum.refused + s.refused,
            }
        })
    }

    /// [`LeaseTable::revoke_all`] on every table (only after a reset proved no more DMA).
    pub(crate) fn revoke_all<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
    ) -> Vec<(u64, Arc<CmdBuffer>)> {
        self.tables.iter().flat_map(|t| t.revoke_all(token)).collect()
    }

    /// Waits at most `timeout` in all for every table's leases to end.
    ///
    /// # Errors
    /// [`Outstanding`] with the count of every table if some are still outstanding at the
    /// deadline.
    pub(crate) fn wait_released<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
        timeout: Duration,
    ) -> Result<(), Outstanding> {
        let deadline = Instant::now() + timeout;
        for table in self.tables.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            if table.wait_released(token, left).is_err() {
                return Err(Outstanding {
                    outstanding: self.outstanding(token),
                });
            }
        }
        Ok(())
    }

    /// The permission to unmap the pool: `Some` only when no table has a lease outstanding.
    /// Each table's permit is taken in turn; if one table still has a lease, the permits taken
    /// so far are dropped (those tables grant again) and the answer is `None`.
    pub(crate) fn unmap_guard<L: LockBefore<TeardownLeases>>(
        &self,
        token: &mut LockToken<'_, L>,
    ) -> Option<PoolPermit> {
        let tables = self
            .tables
            .iter()
            .map(|t| t.unmap_guard(token))
            .collect::<Option<Vec<_>>>()?;
        Some(PoolPermit { _tables: tables })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scst_accel_dma::SgvPool;
    use scst_accel_hal::locks::LockToken;

    fn buffer(pool: &Arc<SgvPool>) -> Arc<CmdBuffer> {
        CmdBuffer::allocate(&mut LockToken::root(), pool, 4096).expect("a buffer")
    }

    #[test]
    fn the_permit_needs_every_table_empty_and_stops_grants_in_all_of_them() {
        let pool = Arc::new(SgvPool::new(None, None, 1 << 20));
        let leases = WorkerLeases::new(2);
        let t = &mut LockToken::root();
        let lease = leases.worker(1).grant(t, 5, buffer(&pool)).expect("granted");
        assert_eq!((leases.outstanding(t), leases.outstanding_ids(t)), (1, vec![5]));
        assert!(leases.unmap_guard(t).is_none(), "worker 1 has a lease");
        // The refused attempt released worker 0's permit: it grants again.
        let other = leases
            .worker(0)
            .grant(t, 6, buffer(&pool))
            .expect("granted again");
        drop(leases.worker(0).release(t, other));
        drop(leases.worker(1).release(t, lease));
        assert!(leases.wait_released(t, Duration::ZERO).is_ok());
        let permit = leases.unmap_guard(t).expect("every table empty");
        assert!(leases.worker(0).grant(t, 7, buffer(&pool)).is_err());
        assert!(leases.worker(1).grant(t, 8, buffer(&pool)).is_err());
        drop(permit);
        assert!(leases
            .worker(1)
            .grant(t, 9, buffer(&pool))
            .is_ok_and(|l| leases.worker(1).release(t, l).is_some()));
        let s = leases.stats(t);
        assert_eq!((s.granted, s.released, s.refused), (3, 3, 2));
    }

    #[test]
    fn revoke_and_wait_cover_every_table() {
        let pool = Arc::new(SgvPool::new(None, None, 1 << 20));
        let leases = WorkerLeases::new(3);
        let t = &mut LockToken::root();
        let a = leases.worker(0).grant(t, 1, buffer(&pool)).expect("granted");
        let b = leases.worker(2).grant(t, 2, buffer(&pool)).expect("granted");
        assert_eq!(
            leases.wait_released(t, Duration::from_millis(5)),
            Err(Outstanding { outstanding: 2 })
        );
        let revoked: Vec<u64> = leases.revoke_all(t).into_iter().map(|(id, _)| id).collect();
        assert_eq!(revoked, vec![1, 2]);
        assert!(leases.wait_released(t, Duration::ZERO).is_ok());
        assert!(
            leases.worker(0).release(t, a).is_none() && leases.worker(2).release(t, b).is_none(),
            "late after the revoke"
        );
    }
}
