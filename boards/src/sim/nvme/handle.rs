//! [`NvmeSimHandle`]: the test and CLI side of a simulated NVMe controller: fault injection
//! and counters.

use std::sync::Arc;

use scst_accel_hal::sim::Iommu;

use super::controller::Shared;
use super::state::QueueDeletion;
use super::NvmeFault;

/// Counters of a simulated NVMe controller since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeSimStats {
    /// Submission queue entries fetched (admin and I/O).
    pub commands: u64,
    /// Completion queue entries posted.
    pub completions: u64,
    /// MSI-X vectors raised.
    pub interrupts: u64,
    /// IOMMU faults ([`Iommu::fault_count`]): any non-zero value in a healthy run is a bug.
    pub iommu_faults: u64,
    /// Controller resets (CC.EN 1→0) and function resets.
    pub resets: u64,
    /// Doorbell register writes, valid or not.
    pub doorbell_writes: u64,
    /// Of them, those that found the posted-write queue full and were applied by their writer
    /// under the state lock (the queue holds 256).
    pub doorbells_applied_by_writer: u64,
    /// Doorbell writes the controller ignored: while not ready, to a queue that does not
    /// exist, or with a value out of range (§4.1).
    pub invalid_doorbell_writes: u64,
    /// Fused Compare and Write operations executed (each both commands, either outcome).
    pub fused_compare_writes: u64,
    /// Of them, those whose compare failed (nothing written).
    pub fused_miscompares: u64,
    /// Shutdown notifications: CC writes setting SHN while enabled and SHN was 00b (§7.6.2).
    pub shutdown_notifications: u64,
    /// Of them, those made while I/O queues still existed (the host should delete every I/O
    /// submission queue, then every I/O completion queue, first: §7.6.2).
    pub shutdowns_with_io_queues: u64,
    /// Flush commands executed (the medium's flush a FUA write makes is not counted).
    pub flushes: u64,
    /// Of the completions, those posted by the thread that wrote their SQ's tail doorbell
    /// ([`NvmeSimConfig::inline_doorbells`](super::NvmeSimConfig::inline_doorbells)), not by
    /// a worker thread.
    pub inline_completions: u64,
    /// Fused operations a doorbell's writer gave back to their worker thread untouched, their
    /// second short of CQ room.
    pub fused_given_back: u64,
}

/// A cloneable handle on a simulated NVMe controller, for fault injection and statistics. It
/// does not keep the worker alive: that stops when the `SimDevice` is dropped.
#[derive(Clone, Debug)]
pub struct NvmeSimHandle {
    shared: Arc<Shared>,
}

impl NvmeSimHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The controller's shared state, for tests that hold its lock.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Inject `fault` now. [`NvmeFault::Hang`], [`NvmeFault::Gone`] and [`NvmeFault::Cfs`]
    /// change the controller at once and are not stored; the others apply from now on until
    /// [`NvmeSimHandle::clear_faults`].
    pub fn inject(&self, fault: NvmeFault) {
        self.shared.inject(fault);
    }

    /// Remove every standing fault. A gone controller stays gone; a hung or CFS one stays so
    /// until a reset: those are controller state, not plan.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// The standing faults, oldest first.
    pub fn faults(&self) -> Vec<NvmeFault> {
        self.shared.faults()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NvmeSimStats {
        self.shared.stats()
    }

    /// The newest I/O queue deletions the controller carried out (at most 256), oldest first.
    pub fn deletions(&self) -> Vec<QueueDeletion> {
        self.shared.deletions()
    }

    /// The controller's IOMMU domain.
    pub fn iommu(&self) -> Arc<Iommu> {
        Arc::clone(&self.shared.iommu)
    }
}
