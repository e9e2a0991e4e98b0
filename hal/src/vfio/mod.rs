//! The VFIO backend: a PCIe function bound to vfio-pci, driven from user space.
//!
//! [`VfioDevice::open`] checks, in the order a user fixes them, everything that commonly stands
//! in the way (address, device, vfio-pci loaded, IOMMU on, driver binding, group viability,
//! permission on the group node), each failure a [`VfioError`] that says what to do; then it
//! sets up the container (TYPE1v2 IOMMU), group and device through vfio-ioctls, maps BAR0
//! ([`MmioRegion`], or [`FdRegion`] when the BAR cannot be mmapped) and enables bus mastering.
//! DMA is [`VfioDma`]; interrupts are MSI-X vectors on eventfds; `reset()` is
//! VFIO_DEVICE_RESET when the function offers it (tried again briefly while the kernel finds
//! the function busy: `reset.rs`) and an honest `NoReset` when not.
//!
//! Raw system calls the crate does not offer usably live in `sys.rs` (it says why, per call).

mod command;
mod device;
mod dma;
mod error;
mod fd_region;
mod memlock;
mod mmio;
mod preflight;
mod reset;
mod sys;
#[cfg(test)]
mod tests;

pub use device::VfioDevice;
pub use dma::VfioDma;
pub use error::VfioError;
pub use fd_region::FdRegion;
pub use memlock::check_memlock;
pub use memlock::memlock_limit;
pub use mmio::Access64;
pub use mmio::MmioRegion;
