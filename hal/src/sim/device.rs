//! [`SimDevice`]: a [`DeviceBacking`] made of a device model ([`SimModel`]) behind a checked
//! BAR0, an IOMMU model and MSI-X eventfds. The same driver code runs on it and on a VFIO
//! function.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::InterruptLines;
use super::Iommu;
use super::SimContext;
use super::SimModel;
use crate::DeviceBacking;
use crate::DmaMapper;
use crate::EventFd;
use crate::HalError;
use crate::PciIdentity;
use crate::RegisterIo;
use crate::RemovalRequest;
use crate::ResetKind;

/// BAR0 of a simulated function: checks every access as a mapped BAR would fault on it, then
/// hands it to the model.
struct SimBar {
    device: String,
    len: u64,
    model: Arc<dyn SimModel>,
}

impl SimBar {
    /// A misaligned or out-of-range access is a driver bug (see [`RegisterIo`]): panic, naming
    /// the offset, rather than let the model see it.
    fn check(&self, offset: u64, width: u64) {
        assert!(
            offset.is_multiple_of(width),
            "{}: misaligned {width}-byte BAR0 access at offset {offset:#x}",
            self.device
        );
        assert!(
            offset.checked_add(width).is_some_and(|end| end <= self.len),
            "{}: {width}-byte BAR0 access at offset {offset:#x} is outside the {:#x}-byte BAR",
            self.device,
            self.len
        );
    }
}

impl RegisterIo for SimBar {
    fn len(&self) -> u64 {
        self.len
    }

    fn read32(&self, offset: u64) -> u32 {
        self.check(offset, 4);
        self.model.read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.check(offset, 4);
        self.model.write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.check(offset, 8);
        self.model.read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.check(offset, 8);
        self.model.write64(offset, value);
    }
}

/// A simulated PCIe function.
///
/// Dropping it calls [`SimModel::shutdown`] so the model's engine threads end with the device.
pub struct SimDevice {
    bar0: SimBar,
    iommu: Arc<Iommu>,
    interrupts: Arc<InterruptLines>,
    /// Always offered, as vfio-pci offers its device request on every function; `None` only
    /// when the eventfd could not be made (logged).
    removal: Option<RemovalRequest>,
}

impl SimDevice {
    /// Build the function named `id` with a BAR0 of `bar0_len` bytes and `vectors` MSI-X vectors;
    /// `build` makes the model from the IOMMU and interrupt lines it may use.
    ///
    /// # Panics
    /// If `bar0_len` is zero or not a multiple of 4: a board definition bug.
    pub fn new(
        id: &str,
        bar0_len: u64,
        vectors: u32,
        build: impl FnOnce(SimContext) -> Arc<dyn SimModel>,
    ) -> Self {
        assert!(
            bar0_len > 0 && bar0_len.is_multiple_of(4),
            "{id}: BAR0 length {bar0_len:#x} must be a non-zero multiple of 4"
        );
        let iommu = Arc::new(Iommu::new(id));
        let interrupts = Arc::new(InterruptLines::new(id, vectors));
        let model = build(SimContext {
            iommu: Arc::clone(&iommu),
            interrupts: Arc::clone(&interrupts),
        });
        log::info!("{id}: simulated function created (BAR0 {bar0_len:#x} bytes, {vectors} MSI-X vectors)");
        let removal = RemovalRequest::new()
            .inspect_err(|e| {
                log::warn!("{id}: no removal request channel ({e}): removal requests cannot be simulated")
            })
            .ok();
        Self {
            bar0: SimBar {
                device: id.to_owned(),
                len: bar0_len,
                model,
            },
            iommu,
            interrupts,
            removal,
        }
    }

    /// Ask for the function back as the kernel does on an unbind from vfio-pci or a hot
    /// removal ([`RemovalRequest`]): the device model keeps running, as the real function
    /// does until its owner closes it.
    pub fn request_removal(&self) {
        log::warn!("{}: removal requested (simulated unbind)", self.bar0.device);
        if let Some(removal) = &self.removal {
            removal.raise();
        }
    }

    /// The function's IOMMU domain (also reachable as [`DeviceBacking::dma`]), for fault
    /// counts and mapping checks.
    pub fn iommu(&self) -> &Arc<Iommu> {
        &self.iommu
    }

    /// The function's MSI-X vectors, for interrupt counts.
    pub fn interrupts(&self) -> &Arc<InterruptLines> {
        &self.interrupts
    }
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("id", &self.bar0.device)
            .field("bar0_len", &self.bar0.len)
            .field("iommu", &self.iommu)
            .field("interrupts", &self.interrupts)
            .finish_non_exhaustive()
    }
}

impl DeviceBacking for SimDevice {
    fn id(&self) -> &str {
        &self.bar0.device
    }

    fn bar0(&self) -> &dyn RegisterIo {
        &self.bar0
    }

    fn dma(&self) -> &dyn DmaMapper {
        self.iommu.as_ref()
    }

    fn max_interrupts(&self) -> u32 {
        self.interrupts.vectors()
    }

    /// # Errors
    /// [`HalError::Interrupts`] with EINVAL when `vectors` is 0 or more than the function has,
    /// or the errno of eventfd creation; [`HalError::TooFewVectors`] when more are asked than
    /// the host grants ([`InterruptLines::limit_grants`]).
    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<EventFd>, HalError> {
        self.interrupts.enable(vectors)
    }

    fn disable_interrupts(&self) -> Result<(), HalError> {
        self.interrupts.disable();
        Ok(())
    }

    /// Runs [`SimModel::function_reset`], which returns only when the model's DMA has stopped.
    /// Interrupt wiring is kept, as vfio-pci restores MSI-X state around a reset.
    fn reset(&self) -> Result<ResetKind, HalError> {
        if self.bar0.model.reset_refused() {
            log::error!("{}: function reset refused (injected)", self.bar0.device);
            return Err(HalError::Reset {
                device: self.bar0.device.clone(),
                source: std::io::Error::other("the function did not complete its reset"),
            });
        }
        log::info!("{}: function reset", self.bar0.device);
        self.bar0.model.function_reset();
        Ok(ResetKind::Simulated)
    }

    /// Clears the simulated Bus Master Enable: every later DMA of the model fails (counted in
    /// [`SimDevice::blocked_dmas`]), and the copies already running are waited out. A model
    /// whose config space does not answer (a removed function) cannot confirm it.
    fn disable_bus_master(&self) -> Result<(), HalError> {
        if !self.bar0.model.config_space_responds() {
            return Err(HalError::OffTheBus {
                device: self.bar0.device.clone(),
            });
        }
        if self.bar0.model.bus_master_sticks() {
            return Err(HalError::BusMaster {
                device: self.bar0.device.clone(),
                reason: "Bus Master Enable still reads 1 after it was cleared (injected)".to_owned(),
            });
        }
        self.iommu.disable_bus_master();
        log::warn!(
            "{}: bus mastering disabled: the function can no longer DMA",
            self.bar0.device
        );
        Ok(())
    }

    /// The model's identity ([`SimModel::pci_identity`]); a model whose config space does not
    /// answer reads all-ones there, as a removed function does.
    fn pci_identity(&self) -> Result<PciIdentity, HalError> {
        if !self.bar0.model.config_space_responds() {
            return Err(HalError::OffTheBus {
                device: self.bar0.device.clone(),
            });
        }
        Ok(self.bar0.model.pci_identity())
    }

    fn removal_request(&self) -> Option<&RemovalRequest> {
        self.removal.as_ref()
    }
}

impl SimDevice {
    /// DMAs refused since bus mastering was disabled ([`DeviceBacking::disable_bus_master`]).
    pub fn blocked_dmas(&self) -> u64 {
        self.iommu.blocked_dmas()
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        log::debug!("{}: shutting down the device model", self.bar0.device);
        // Never panic in Drop: a model whose shutdown panics is logged, not propagated.
        let model = &self.bar0.model;
        if std::panic::catch_unwind(AssertUnwindSafe(|| model.shutdown())).is_err() {
            log::error!("{}: the device model panicked during shutdown", self.bar0.device);
        }
    }
}
