//! `VfioDevice`: one PCIe function bound to vfio-pci, as a [`DeviceBacking`].
//!
//! Open order: the preflight checks (`preflight.rs`), then container (TYPE1v2), group and
//! device fd through vfio-ioctls, device info, BAR0 (mmap, else pread/pwrite), config space,
//! bus master on. Teardown order is the field order (see [`VfioDevice`]).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_PCI;
use vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET;
use vfio_bindings::bindings::vfio::VFIO_IRQ_INFO_EVENTFD;
use vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
use vfio_bindings::bindings::vfio::VFIO_PCI_REQ_IRQ_INDEX;
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_READ;
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_WRITE;
use vfio_ioctls::VfioContainer;
use vfio_ioctls::VfioOps;

use super::command;
use super::command::ConfigIo;
use super::command::PCI_COMMAND;
use super::command::PCI_COMMAND_MASTER;
use super::command::PCI_COMMAND_MEMORY;
use super::dma::VfioDma;
use super::error::VfioError;
use super::fd_region::FdRegion;
use super::mmio::Access64;
use super::mmio::MmioRegion;
use super::preflight;
use super::reset;
use super::sys;
use crate::DeviceBacking;
use crate::DmaMapper;
use crate::EventFd;
use crate::HalError;
use crate::PciIdentity;
use crate::RegisterIo;
use crate::RemovalRequest;
use crate::ResetKind;

/// A PCIe function driven through VFIO.
///
/// Fields drop in declaration order, which is the teardown order: BAR0's mapping and the
/// config-space fd hold references to the device file, so they go before the device; the
/// device goes before the container (whose fd, when closed, drops any DMA mapping left).
pub struct VfioDevice {
    id: String,
    bar0: Box<dyn RegisterIo>,
    config: ConfigSpace,
    handle: DeviceHandle,
    dma: VfioDma,
    reset_supported: bool,
    msix_vectors: u32,
    /// Whether MSI-X eventfds are installed (the kernel rejects disabling an index that is off).
    irqs_enabled: AtomicBool,
    /// The eventfd registered on `VFIO_PCI_REQ_IRQ_INDEX` ([`RemovalRequest`]); `None` when the
    /// function offers no device request or its registration failed (both logged at open).
    removal: Option<RemovalRequest>,
}

impl std::fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDevice")
            .field("id", &self.id)
            .field("bar0_len", &self.bar0.len())
            .field("reset_supported", &self.reset_supported)
            .field("msix_vectors", &self.msix_vectors)
            .finish_non_exhaustive()
    }
}

impl VfioDevice {
    /// Open the function at `pci_address` (`0000:00:04.0`): run every check with a fix in its
    /// error, set up container/group/device, map BAR0 and enable bus mastering.
    ///
    /// # Errors
    /// A [`VfioError`] naming the failed step and what to do about it.
    pub fn open(pci_address: &str) -> Result<Self, VfioError> {
        Self::open_with_sysfs(pci_address, Path::new("/sys"), Path::new("/dev"))
    }

    /// [`VfioDevice::open`] with the checks run against other roots (a fake tree in tests).
    /// vfio-ioctls opens `/dev/vfio` itself, so with any `dev_root` but `/dev` this stops after
    /// the checks with [`VfioError::AlternateDevRoot`].
    pub(crate) fn open_with_sysfs(addr: &str, sysfs_root: &Path, dev_root: &Path) -> Result<Self, VfioError> {
        let checked = preflight::preflight(addr, sysfs_root, dev_root)?;
        if dev_root != Path::new("/dev") {
            return Err(VfioError::AlternateDevRoot {
                dev_root: dev_root.to_owned(),
            });
        }
        Self::open_checked(addr, checked)
    }

    fn open_checked(addr: &str, checked: preflight::Preflight) -> Result<Self, VfioError> {
        let id = addr.to_owned();
        // Opening the container, group and device are ioctls (and may wait on the group): the
        // vfio-ioctls calls below run with no lock held.
        crate::locks::assert_no_locks_held("VFIO open (container, group, device)");
        let container = Arc::new(VfioContainer::new(None).map_err(|source| VfioError::Container {
            addr: id.clone(),
            source,
        })?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = vfio_ioctls::VfioDevice::new(&checked.device_dir, ops, false)
            .map_err(|e| device_open_error(addr, checked.group, e))?;
        let handle = DeviceHandle {
            device: Some(device),
            device_dir: checked.device_dir,
            group: checked.group,
            id: id.clone(),
        };
        let fd = handle.fd()?;

        let info = sys::device_info(fd).map_err(|source| info_error(addr, "VFIO_DEVICE_GET_INFO", source))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(info_error(
                addr,
                "VFIO_DEVICE_GET_INFO",
                io::Error::new(io::ErrorKind::Unsupported, "not a PCI device"),
            ));
        }
        let reset_supported = info.flags & VFIO_DEVICE_FLAGS_RESET != 0;
        let bar0 = map_bar0(addr, &handle)?;
        let config = ConfigSpace::open(addr, &handle)?;
        crate::locks::assert_no_locks_held("VFIO_DEVICE_GET_IRQ_INFO");
        let msix_vectors = handle
            .device()
            .and_then(|d| d.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX))
            .map_or(0, |irq| irq.count);
        let removal = register_removal_request(addr, &handle);
        let dev = Self {
            id,
            bar0,
            config,
            handle,
            dma: VfioDma::new(container, addr.to_owned()),
            reset_supported,
            msix_vectors,
            irqs_enabled: AtomicBool::new(false),
            removal,
        };
        dev.enable_bus_master()?;
        log::info!(
            "{addr}: opened through VFIO (IOMMU group {}, BAR0 {:#x} bytes, {msix_vectors} MSI-X vectors, \
             function reset: {reset_supported})",
            dev.handle.group,
            dev.bar0.len()
        );
        Ok(dev)
    }

    /// Set the memory-space and bus-master bits of the PCI command register (read, set, write
    /// back, read again to verify): without bus mastering the function cannot DMA.
    ///
    /// # Errors
    /// [`VfioError::Config`] when config space cannot be accessed or the bits do not stick.
    pub fn enable_bus_master(&self) -> Result<(), VfioError> {
        let config_error = |what, source| VfioError::Config {
            addr: self.id.clone(),
            what,
            source,
        };
        let cmd = self
            .config
            .read16(PCI_COMMAND)
            .map_err(|e| config_error("read", e))?;
        let wanted = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if wanted != cmd {
            self.config
                .write16(PCI_COMMAND, wanted)
                .map_err(|e| config_error("write", e))?;
        }
        let now = self
            .config
            .read16(PCI_COMMAND)
            .map_err(|e| config_error("read back", e))?;
        if now & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER) != PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER {
            return Err(config_error(
                "verify",
                io::Error::other(format!(
                    "command register reads {now:#06x} after writing {wanted:#06x}"
                )),
            ));
        }
        log::debug!(
            "{}: PCI command {cmd:#06x} -> {now:#06x} (memory space, bus master)",
            self.id
        );
        Ok(())
    }

    /// The PCI command register, read from config space (the real-device test's read-back).
    #[cfg(test)]
    pub(super) fn pci_command(&self) -> io::Result<u16> {
        self.config.read16(PCI_COMMAND)
    }

    /// Fire the device request from user space, as `vfio_pci_core_request` fires it on an
    /// unbind (the real-device test: proves the eventfd is registered where the kernel signals).
    #[cfg(test)]
    pub(super) fn trigger_removal_request(&self) -> io::Result<()> {
        let fd = self.handle.fd().map_err(|_| gone())?;
        sys::trigger_irq_loopback(fd, VFIO_PCI_REQ_IRQ_INDEX)
    }

    /// The DMA mapper with its live-mapping counts.
    pub fn vfio_dma(&self) -> &VfioDma {
        &self.dma
    }

    fn irq_error(&self, vectors: u32, source: io::Error) -> HalError {
        HalError::Interrupts {
            device: self.id.clone(),
            vectors,
            source,
        }
    }
}

impl DeviceBacking for VfioDevice {
    fn id(&self) -> &str {
        &self.id
    }

    fn bar0(&self) -> &dyn RegisterIo {
        self.bar0.as_ref()
    }

    fn dma(&self) -> &dyn DmaMapper {
        &self.dma
    }

    fn max_interrupts(&self) -> u32 {
        self.msix_vectors
    }

    /// Interrupt setup is the device owner's job: concurrent calls of this and
    /// `disable_interrupts` are not serialised (no lock is held across the VFIO ioctl).
    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<EventFd>, HalError> {
        if vectors > self.msix_vectors {
            return Err(self.irq_error(
                vectors,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the function offers {} MSI-X vectors", self.msix_vectors),
                ),
            ));
        }
        // Changing the vector count of an enabled MSI-X index is refused by vfio-pci.
        self.disable_interrupts()?;
        if vectors == 0 {
            return Ok(Vec::new());
        }
        let fds = (0..vectors)
            .map(|_| EventFd::new())
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| self.irq_error(vectors, e))?;
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let fd = self.handle.fd().map_err(|_| self.irq_error(vectors, gone()))?;
        sys::set_irq_eventfds(fd, VFIO_PCI_MSIX_IRQ_INDEX, &borrowed).map_err(|e| match e {
            sys::SetIrqsError::TooFewVectors(available) => HalError::TooFewVectors {
                device: self.id.clone(),
                vectors,
                available,
            },
            sys::SetIrqsError::Os(e) => self.irq_error(vectors, e),
        })?;
        self.irqs_enabled.store(true, Ordering::Release);
        log::info!("{}: {vectors} MSI-X vectors on eventfds", self.id);
        Ok(fds)
    }

    /// Clears Bus Master Enable and leaves Memory Space Enable set, setting it again if it
    /// was cleared under the driver (why: `command::clear_bus_master`).
    fn disable_bus_master(&self) -> Result<(), HalError> {
        let (cmd, now) = command::clear_bus_master(&self.config, &self.id)?;
        log::warn!(
            "{}: bus mastering disabled (PCI command {cmd:#06x} -> {now:#06x}): the function can no longer DMA",
            self.id
        );
        Ok(())
    }

    fn pci_identity(&self) -> Result<PciIdentity, HalError> {
        command::read_identity(&self.config, &self.id)
    }

    fn disable_interrupts(&self) -> Result<(), HalError> {
        if !self.irqs_enabled.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let fd = self.handle.fd().map_err(|_| self.irq_error(0, gone()))?;
        if let Err(e) = sys::disable_irq_index(fd, VFIO_PCI_MSIX_IRQ_INDEX) {
            self.irqs_enabled.store(true, Ordering::Release);
            return Err(self.irq_error(0, e));
        }
        log::debug!("{}: MSI-X disabled", self.id);
        Ok(())
    }

    fn removal_request(&self) -> Option<&RemovalRequest> {
        self.removal.as_ref()
    }

    fn reset(&self) -> Result<ResetKind, HalError> {
        if !self.reset_supported {
            return Err(HalError::NoReset {
                device: self.id.clone(),
            });
        }
        let reset_error = |source| HalError::Reset {
            device: self.id.clone(),
            source,
        };
        let fd = self.handle.fd().map_err(|_| reset_error(gone()))?;
        // A busy function (EAGAIN) is tried again, briefly: reset.rs says why. Not while the
        // kernel is taking the function back: the unbind (device_release_driver) holds its
        // device lock until we close the device, so every try would be EAGAIN.
        let removing = self.removal.as_ref().is_some_and(RemovalRequest::is_requested);
        let attempts = if removing { 1 } else { reset::ATTEMPTS };
        reset::retry_busy(&self.id, attempts, reset::FIRST_PAUSE, || sys::device_reset(fd)).map_err(|e| {
            match e.kind() {
                // retry_busy's answer for a function busy through every try (its one, here).
                io::ErrorKind::ResourceBusy if removing => reset_error(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the kernel is taking the function back (an unbind from vfio-pci or a hot \
                 removal holds its device lock until the device is closed), so it cannot be \
                 reset now; the teardown goes on as after a failed reset",
                )),
                _ => reset_error(e),
            }
        })?;
        // The kernel saves and restores config space around the reset (pci_reset_function), so
        // the command register (bus master) is as before; the device's own state is reset.
        log::info!("{}: function reset (VFIO_DEVICE_RESET)", self.id);
        Ok(ResetKind::Function)
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        if let Err(e) = self.disable_interrupts() {
            log::error!("{}: disabling MSI-X at close failed: {e}", self.id);
        }
        // The device request's eventfd goes before the device fd closes (vfio-pci would drop
        // it at close too, vfio_pci_core_close_device, but an fd-less close path is no reason
        // to leave the kernel a reference to our eventfd until then).
        if self.removal.is_some() {
            let unregistered = self
                .handle
                .fd()
                .map_err(|_| gone())
                .and_then(|fd| sys::disable_irq_index(fd, VFIO_PCI_REQ_IRQ_INDEX));
            if let Err(e) = unregistered {
                log::error!(
                    "{}: unregistering the device request eventfd at close failed: {e}",
                    self.id
                );
            }
        }
        let (live, bytes) = (self.dma.live_mappings(), self.dma.pinned_bytes());
        if live > 0 {
            // Not unmapped here: the mappings belong to whoever made them. Closing the container
            // (below, field order) removes them in the kernel; the owners must not DMA after this.
            log::warn!(
                "{}: closing with {live} DMA mappings ({bytes} bytes) still mapped",
                self.id
            );
        }
        log::info!("{}: closing VFIO device", self.id);
    }
}

/// Register an eventfd on `VFIO_PCI_REQ_IRQ_INDEX`, the channel on which vfio-pci asks for the
/// function back (an unbind or a hot removal waits until the device fd is closed:
/// [`RemovalRequest`]). vfio-pci reports one such vector on every function
/// (`vfio_pci_get_irq_count`); a function that reports none, or a registration the kernel
/// refuses, leaves the disk serving without it: logged, not an error, since all it costs is
/// that an unbind blocks until the service stops.
fn register_removal_request(addr: &str, handle: &DeviceHandle) -> Option<RemovalRequest> {
    crate::locks::assert_no_locks_held("VFIO_DEVICE_GET_IRQ_INFO");
    let offered = handle
        .device()
        .and_then(|d| d.get_irq_info(VFIO_PCI_REQ_IRQ_INDEX))
        .is_some_and(|irq| irq.count >= 1 && irq.flags & VFIO_IRQ_INFO_EVENTFD != 0);
    if !offered {
        log::info!(
            "{addr}: the function offers no VFIO device request (VFIO_PCI_REQ_IRQ_INDEX): an unbind \
             from vfio-pci or a hot removal cannot be seen, and blocks until the service stops"
        );
        return None;
    }
    let registered = RemovalRequest::new().and_then(|request| {
        let fd = handle.fd().map_err(|_| gone())?;
        sys::set_irq_eventfds(fd, VFIO_PCI_REQ_IRQ_INDEX, &[request.fd()]).map_err(io::Error::from)?;
        Ok(request)
    });
    match registered {
        Ok(request) => {
            log::debug!("{addr}: device request eventfd registered (VFIO_PCI_REQ_IRQ_INDEX)");
            Some(request)
        }
        Err(e) => {
            log::warn!(
                "{addr}: cannot register the VFIO device request eventfd ({e}): an unbind from \
                 vfio-pci or a hot removal cannot be seen, and blocks until the service stops"
            );
            None
        }
    }
}

/// The error for "the device handle is no longer there" (only reachable during Drop).
fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::ENODEV)
}

fn info_error(addr: &str, what: &'static str, source: io::Error) -> VfioError {
    VfioError::DeviceInfo {
        addr: addr.to_owned(),
        what,
        source,
    }
}

/// Map vfio-ioctls' errors from group/device setup onto ours.
fn device_open_error(addr: &str, group: u32, e: vfio_ioctls::VfioError) -> VfioError {
    use vfio_ioctls::VfioError as E;
    match e {
        E::OpenGroup(source, _) => {
            preflight::group_open_error(addr, group, PathBuf::from(format!("/dev/vfio/{group}")), source)
        }
        e @ (E::GroupSetContainer | E::ContainerSetIOMMU(_) | E::VfioExtension | E::VfioType1V2) => {
            VfioError::Container {
                addr: addr.to_owned(),
                source: e,
            }
        }
        source => VfioError::DeviceFd {
            addr: addr.to_owned(),
            source,
        },
    }
}

/// BAR0 as registers: mmap when the region allows it, else pread/pwrite on the device fd.
/// Through the mapping a 64-bit access is the platform's (one 8-byte access on x86_64); a
/// board whose register bus takes no 8-byte access has its driver split them (the board
/// definition's `split_64bit_mmio` quirk). Through the fd it is always two 4-byte accesses
/// (`fd_region.rs`).
fn map_bar0(addr: &str, handle: &DeviceHandle) -> Result<Box<dyn RegisterIo>, VfioError> {
    let bar_error = |reason: String| VfioError::Bar0 {
        addr: addr.to_owned(),
        reason,
    };
    let fd = handle.fd()?;
    let region = sys::region_info(fd, VFIO_PCI_BAR0_REGION_INDEX)
        .map_err(|e| bar_error(format!("VFIO_DEVICE_GET_REGION_INFO: {e}")))?;
    if region.size == 0 {
        return Err(bar_error("the function has no BAR0".into()));
    }
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if region.flags & rw != rw {
        return Err(bar_error(format!(
            "region flags {:#x} lack read/write",
            region.flags
        )));
    }
    if region.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
        match MmioRegion::map_fd(fd, region.offset, region.size, Access64::platform_default()) {
            Ok(m) => return Ok(Box::new(m)),
            // E.g. the MSI-X table lives in BAR0 and this kernel forbids mapping over it.
            Err(e) => {
                log::warn!("{addr}: BAR0 mmap failed ({e}); using pread/pwrite, one syscall per access")
            }
        }
    } else {
        log::warn!("{addr}: BAR0 cannot be mmapped; using pread/pwrite, one syscall per access");
    }
    let file = dup_file(fd).map_err(|e| bar_error(format!("dup of the device fd: {e}")))?;
    Ok(Box::new(FdRegion::new(
        file,
        region.offset,
        region.size,
        format!("{addr} BAR0"),
    )))
}

fn dup_file(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

/// PCI configuration space through the device fd (vfio-pci virtualises parts of it).
struct ConfigSpace {
    file: File,
    offset: u64,
    size: u64,
}

impl ConfigSpace {
    fn open(addr: &str, handle: &DeviceHandle) -> Result<Self, VfioError> {
        let fd = handle.fd()?;
        let region = sys::region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| info_error(addr, "VFIO_DEVICE_GET_REGION_INFO(config)", e))?;
        let file = dup_file(fd).map_err(|e| info_error(addr, "dup of the device fd", e))?;
        Ok(Self {
            file,
            offset: region.offset,
            size: region.size,
        })
    }

    fn at(&self, offset: u64) -> io::Result<u64> {
        if offset + 2 > self.size {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(self.offset + offset)
    }
}

impl ConfigIo for ConfigSpace {
    fn read16(&self, offset: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.file.read_exact_at(&mut b, self.at(offset)?)?;
        Ok(u16::from_le_bytes(b))
    }

    fn write16(&self, offset: u64, value: u16) -> io::Result<()> {
        self.file.write_all_at(&value.to_le_bytes(), self.at(offset)?)
    }
}

/// The vfio-ioctls device, dropped without risking its panics.
///
/// WORKAROUND: vfio-ioctls 0.10's `Drop for VfioDevice` unwraps a re-read of the device's
/// `iommu_group` link. If that link no longer names the group we opened (device removed), it
/// would panic in Drop; we check first and leak the fd (logged) instead. The check narrows the
/// window, it cannot close it.
struct DeviceHandle {
    device: Option<vfio_ioctls::VfioDevice>,
    device_dir: PathBuf,
    group: u32,
    id: String,
}

impl DeviceHandle {
    fn device(&self) -> Option<&vfio_ioctls::VfioDevice> {
        self.device.as_ref()
    }

    /// The device fd (absent only while dropping).
    fn fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, VfioError> {
        self.device()
            .map(sys::device_fd)
            .ok_or_else(|| VfioError::DeviceInfo {
                addr: self.id.clone(),
                what: "device fd",
                source: gone(),
            })
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        let Some(device) = self.device.take() else {
            return;
        };
        match preflight::iommu_group(&self.device_dir) {
            Ok(g) if g == self.group => drop(device),
            other => {
                log::error!(
                    "{}: iommu_group link changed or vanished ({other:?}); leaking the VFIO device fd \
                     rather than letting vfio-ioctls panic in Drop",
                    self.id
                );
                std::mem::forget(device);
            }
        }
    }
}
