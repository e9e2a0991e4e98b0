//! [`SimHandle`]: the test and CLI side of a simulated board: fault injection and counters.

use std::sync::Arc;

use scst_accel_hal::sim::Iommu;

use super::board::Shared;
use super::Fault;

/// Counters of a simulated board since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Descriptors fetched from submission rings.
    pub descriptors: u64,
    /// Completion entries posted (injected extra and duplicate entries included).
    pub completions: u64,
    /// Data bytes moved medium → host (READ).
    pub bytes_read: u64,
    /// Data bytes moved host → medium (WRITE).
    pub bytes_written: u64,
    /// IOMMU faults ([`Iommu::fault_count`]): any non-zero value in a healthy run is a bug.
    pub iommu_faults: u64,
    /// Interrupts the board raised.
    pub interrupts: u64,
    /// Resets started (soft and function).
    pub resets: u64,
    /// Descriptors rejected as STALE.
    pub stale: u64,
    /// Descriptors an engine hung on ([`Fault::EngineHang`](super::Fault::EngineHang)), BUSY
    /// kept: counted when the hang begins.
    pub hangs: u64,
    /// Queues halted right now (Q_STATUS.ERROR = 1).
    pub halted_queues: u32,
    /// Of the descriptors, those executed by the thread that wrote their SQ_TAIL doorbell
    /// ([`SimConfig::inline_doorbells`](super::SimConfig::inline_doorbells)), not by an engine
    /// thread.
    pub inline_descriptors: u64,
}

/// A cloneable handle on a simulated board, for fault injection and statistics. It does not
/// keep the board's engines alive: they stop when the `SimDevice` is dropped.
#[derive(Clone, Debug)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl SimHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The board's shared state, for the model's own tests.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Inject `fault` now. [`Fault::DeviceGone`] and [`Fault::Fatal`] take effect at once and
    /// are not stored; the others apply to descriptors taken from now on until
    /// [`SimHandle::clear_faults`].
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    /// Remove every standing fault. A gone board stays gone and a FATAL board stays FATAL
    /// until reset: those are device state, not plan.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// The standing faults, oldest first.
    pub fn faults(&self) -> Vec<Fault> {
        self.shared.faults()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// The board's IOMMU domain.
    pub fn iommu(&self) -> Arc<Iommu> {
        Arc::clone(&self.shared.iommu)
    }
}
