//! The simulator backend of the device trait: a [`SimDevice`] is a [`DeviceBacking`] whose BAR0
//! accesses go to a device model ([`SimModel`], e.g. the SCA-1 board in `boards/src/sim/`),
//! whose DMA goes through an IOMMU model ([`Iommu`]) and whose MSI-X vectors are eventfds
//! ([`InterruptLines`]).
//!
//! The model sees host memory only through [`Iommu::dma_read`] and [`Iommu::dma_write`]: an
//! access to an IOVA that is not mapped is a recorded fault that touches no memory, exactly as
//! on hardware (architecture.md §1). That makes "a buffer was unmapped while the device could
//! still reach it" a detectable, countable bug instead of silent corruption.
//!
//! hal knows no board: everything board-specific lives behind [`SimModel`].
//!
//! [`DeviceBacking`]: crate::DeviceBacking

mod device;
mod interrupts;
mod iommu;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod iommu_tests;

use std::sync::Arc;

pub use device::SimDevice;
pub use interrupts::InterruptLines;
pub use iommu::DmaBatch;
pub use iommu::Iommu;
pub use iommu::IommuFault;
pub use iommu::FAULTS_KEPT;
pub use iommu::IOMMU_PAGE_SIZE;

/// The device model behind a [`SimDevice`]: receives every BAR0 access.
///
/// [`SimDevice`] has already checked each access for alignment and bounds (an access outside
/// BAR0 panics there, as a driver bug), so a model only sees aligned offsets inside the BAR.
/// The methods take `&self` because driver threads and the model's own engine threads use the
/// model at the same time: a model keeps its register file behind atomics or locks.
pub trait SimModel: Send + Sync + 'static {
    /// 32-bit register read at `offset` (4-byte aligned, inside BAR0).
    fn read32(&self, offset: u64) -> u32;

    /// 32-bit register write at `offset` (4-byte aligned, inside BAR0).
    fn write32(&self, offset: u64, value: u32);

    /// 64-bit register read at `offset` (8-byte aligned, inside BAR0). The default splits it
    /// like a device without 64-bit access: the low half at `offset`, then the high half at
    /// `offset + 4`.
    fn read64(&self, offset: u64) -> u64 {
        let low = self.read32(offset);
        let high = self.read32(offset + 4);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// 64-bit register write at `offset` (8-byte aligned, inside BAR0). The default splits it:
    /// the low half at `offset`, then the high half at `offset + 4` (so a model that latches a
    /// 64-bit register on its high-half write sees the whole value).
    fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// Function reset (the `VFIO_DEVICE_RESET` equivalent, accelerator.md §7): stop every
    /// engine and return registers to their reset values. Returns only when no DMA of the
    /// model is in progress or will start until the driver enables it again. Must be bounded.
    fn function_reset(&self);

    /// The function refuses a function reset (an injected fault): [`SimDevice`]'s reset then
    /// fails without touching the model, as a real function whose FLR does not complete.
    fn reset_refused(&self) -> bool {
        false
    }

    /// What the function's config space header says it is (vendor, device, class code). No
    /// default: a model says what it models, and a board definition is matched against it.
    fn pci_identity(&self) -> crate::PciIdentity;

    /// Config space answers (a removed function's reads all-ones): clearing Bus Master Enable
    /// can be done and confirmed only then.
    fn config_space_responds(&self) -> bool {
        true
    }

    /// Bus Master Enable does not clear when written (a broken function): clearing it cannot
    /// be confirmed.
    fn bus_master_sticks(&self) -> bool {
        false
    }

    /// The [`SimDevice`] is being dropped: stop and join the model's threads, with a bounded
    /// wait. Called once, from `Drop`, so it must not panic.
    fn shutdown(&self);
}

/// What a model gets to reach the host: built by [`SimDevice::new`] and handed to the model's
/// constructor.
#[derive(Clone, Debug)]
pub struct SimContext {
    /// The device's IOMMU domain: the model's only path to host memory.
    pub iommu: Arc<Iommu>,
    /// The device's MSI-X vectors.
    pub interrupts: Arc<InterruptLines>,
}
