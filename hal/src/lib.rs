//! scst-accel hardware access layer: one device trait ([`DeviceBacking`]) with a VFIO backend
//! and a simulator backend, so that the same driver code runs on a real PCIe function and on a
//! simulated board (in the manner of openvmm's `user_driver`).
//!
//! Everything a driver needs from a device goes through the trait: BAR registers
//! ([`RegisterIo`]), IOMMU mappings ([`DmaMapper`]), interrupts (eventfds) and reset. hal knows
//! nothing of any board's register map and nothing of SCSI.

// MMIO ordering (vfio/mmio.rs: io_wmb, io_rmb) is written for these two architectures only.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("scst-accel's MMIO barriers are defined for x86_64 and aarch64 only (hal/src/vfio/mmio.rs)");

pub mod alloc_stats;
pub mod cycles;
pub mod fdio;
pub mod locks;
pub mod removal;
pub mod shared_mem;
pub mod sim;
pub mod skip;
pub mod vfio;

pub use fdio::EventFd;
pub use removal::RemovalRequest;

/// Errors of device access.
#[derive(Debug, thiserror::Error)]
pub enum HalError {
    /// The device is gone (registers read all-ones, the fd returned ENODEV...).
    #[error("device {device} is gone")]
    Gone {
        /// Device identifier.
        device: String,
    },
    /// An IOMMU mapping could not be made.
    #[error("cannot map {len} bytes at IOVA {iova:#x} for DMA on {device}")]
    Map {
        /// Device identifier.
        device: String,
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// Cause (errno kept).
        #[source]
        source: std::io::Error,
    },
    /// An unmap failed or named a range that is not mapped.
    #[error("cannot unmap {len} bytes at IOVA {iova:#x} on {device}")]
    Unmap {
        /// Device identifier.
        device: String,
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An unmap that does not name exactly one mapping made by one `map` call on this domain
    /// (a part of one, several of them, or none): refused before anything is unmapped, by every
    /// backend ([`DmaMapper::unmap`]).
    #[error(
        "cannot unmap {len} bytes at IOVA {iova:#x} on {device}: not exactly one mapping made there \
         by a map call, so nothing was unmapped; unmap each mapping with the IOVA and length it was \
         mapped with"
    )]
    NotOneMapping {
        /// Device identifier.
        device: String,
        /// IOVA asked.
        iova: u64,
        /// Length asked.
        len: u64,
    },
    /// Interrupt setup failed.
    #[error("cannot set up {vectors} interrupt vectors on {device}")]
    Interrupts {
        /// Device identifier.
        device: String,
        /// Vectors asked for.
        vectors: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel could allocate fewer MSI-X vectors than asked (VFIO: vfio_msi_enable), and
    /// enabled none.
    #[error(
        "only {available} of the {vectors} MSI-X vectors asked for {device} could be allocated, so none \
         is enabled: the kernel is short of interrupt vectors (in a VM, the hypervisor's interrupt \
         remapping may offer fewer; see dmesg and /proc/interrupts): give the disk fewer workers \
         (`--workers`, `workers` in the configuration: one queue, and one vector, each), or free \
         vectors held by other devices"
    )]
    TooFewVectors {
        /// Device identifier.
        device: String,
        /// Vectors asked for.
        vectors: u32,
        /// Vectors the kernel could allocate.
        available: u32,
    },
    /// The device offers no reset.
    #[error("device {device} offers no function reset")]
    NoReset {
        /// Device identifier.
        device: String,
    },
    /// A reset was attempted and failed.
    #[error("reset of {device} failed")]
    Reset {
        /// Device identifier.
        device: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Config space reads all-ones: the function is off the bus (removed, or its link down).
    /// Nothing can be written to it, and it can issue no memory requests either: Linux too
    /// cancels a removed function's requests (`nvme_dev_disable`, `pci_dev_is_disconnected`).
    #[error("{device} is off the bus: its config space reads all-ones (removed, or its link is down)")]
    OffTheBus {
        /// Device identifier.
        device: String,
    },
    /// Config space could not be read.
    #[error("cannot read the config space of {device}: {reason}")]
    Config {
        /// Device identifier.
        device: String,
        /// What failed.
        reason: String,
    },
    /// Bus mastering could not be disabled, or its clearing not confirmed.
    #[error("cannot disable bus mastering on {device}: {reason}; it may still DMA, so memory it could reach must stay mapped")]
    BusMaster {
        /// Device identifier.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// Other errors opening or driving the device, with what to do in the message.
    #[error("{message}")]
    Other {
        /// What failed and what to do.
        message: String,
        /// Cause.
        #[source]
        source: Option<std::io::Error>,
    },
}

/// Access to one memory BAR by offset. Implementations use volatile, naturally aligned
/// accesses; an access outside the BAR or misaligned is a driver bug and panics with the offset.
pub trait RegisterIo: Send + Sync {
    /// BAR length in bytes.
    fn len(&self) -> u64;
    /// Always false for a mapped BAR.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// 32-bit read.
    fn read32(&self, offset: u64) -> u32;
    /// 32-bit write.
    fn write32(&self, offset: u64, value: u32);
    /// 64-bit read (a device without 64-bit access may split it low-then-high).
    fn read64(&self, offset: u64) -> u64;
    /// 64-bit write (low then high when split).
    fn write64(&self, offset: u64, value: u64);
}

/// The device's IOMMU domain.
///
/// # Safety
/// Memory is freed, and handed to the next allocation, on the strength of [`DmaMapper::unmap`]
/// returning `Ok` (the SGV pool, `MappedRegion`, the rings): unsafe code relies on what an
/// implementation promises, so implementing this trait is `unsafe`. An implementation must act
/// on one IOMMU domain for its whole life, and return `Ok` from `unmap(iova, len)` only when
/// that range was mapped there and is not any more: no device access to the memory it
/// mapped is in progress or can start (the IOTLB flushed; for a simulated device, no copy of
/// its threads under way). A mapper that gives no device access at all (a test's ledger) keeps
/// this trivially.
// UNSAFETY: `map` hands the device access to memory Rust cannot track; its caller must promise
// the memory outlives the mapping, so the method is `unsafe`; and unsafe code trusts `unmap`,
// so the trait is.
#[allow(unsafe_code)]
pub unsafe trait DmaMapper: Send + Sync {
    /// Map `len` bytes of host memory at virtual address `host` to device address `iova`.
    ///
    /// # Safety
    /// `host..host+len` must be memory of this process that stays mapped, and is never
    /// accessed through Rust references, nor by plain (non-atomic) reads or writes, until
    /// [`DmaMapper::unmap`] of the same range returns: the device may read or write it at any
    /// time in between (the simulated device from Rust threads). Only byte-wise atomic access
    /// is allowed: the copies of [`shared_mem`] and `AtomicU8` loads and stores. Then a device
    /// and a thread touching the same bytes at once tear the data but cause no undefined
    /// behaviour; keeping them apart (a descriptor written before its doorbell, a completion
    /// read after its phase byte's acquire load) is the ring protocols' job, for correctness
    /// only.
    ///
    /// # Errors
    /// [`HalError::Map`] with the errno (ENOMEM: the locked-memory limit, EEXIST: overlap).
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError>;

    /// Remove the mapping of exactly `iova..iova+len` as made by one `map` call. When it
    /// returns, the device can no longer reach that memory (IOTLB flushed).
    ///
    /// Any other range is refused, with nothing unmapped, by every backend, although VFIO
    /// type1 v2 would take a range covering several whole mappings and unmap them all (and
    /// refuse only one that bisects a mapping): each owner of a mapping (a ring, an arena, a
    /// buffer) unmaps exactly what it mapped, so a wider range is a bookkeeping bug that would
    /// take a neighbour's memory from the device, and the two backends and the counts of
    /// `VfioDma` agree only when neither takes one (`take_one_mapping`, the rule both check).
    ///
    /// # Errors
    /// [`HalError::NotOneMapping`] for a range that is not exactly one mapping;
    /// [`HalError::Unmap`] with the errno when the unmap itself failed.
    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError>;
}

/// Take the mapping that `iova..iova + len` names exactly out of `table` (one backend's
/// mappings by first IOVA; `len_of` gives each one's length), or refuse with the table
/// unchanged: the one rule every backend's [`DmaMapper::unmap`] checks, so the simulator and
/// VFIO refuse the same ranges.
///
/// # Errors
/// [`HalError::NotOneMapping`] unless a mapping starts at `iova` and is `len` bytes long.
pub(crate) fn take_one_mapping<V>(
    table: &mut std::collections::BTreeMap<u64, V>,
    len_of: impl Fn(&V) -> u64,
    device: &str,
    iova: u64,
    len: u64,
) -> Result<V, HalError> {
    match table.entry(iova) {
        std::collections::btree_map::Entry::Occupied(mapping) if len_of(mapping.get()) == len => {
            Ok(mapping.remove())
        }
        _ => Err(HalError::NotOneMapping {
            device: device.to_owned(),
            iova,
            len,
        }),
    }
}

#[cfg(test)]
mod unmap_rule_tests;

/// What a PCI function says it is: the vendor and device IDs and the class code of its config
/// space header (offsets 00h, 02h, 09h-0Bh). A board definition is matched against it before a
/// driver touches the function's registers (as Linux matches its drivers' ID tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID (00h).
    pub vendor_id: u16,
    /// Device ID (02h).
    pub device_id: u16,
    /// Class code (0Bh base class, 0Ah sub-class, 09h programming interface), e.g. `0x010802`
    /// for an NVMe I/O controller.
    pub class_code: u32,
}

impl std::fmt::Display for PciIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:04x} class {:06x}",
            self.vendor_id, self.device_id, self.class_code
        )
    }
}

/// What a function reset did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// VFIO_DEVICE_RESET (FLR or a bus reset): all DMA of the function stopped.
    Function,
    /// The simulator's reset: the model's engines were stopped and joined.
    Simulated,
}

/// One PCIe function (or its simulation): the only way drivers reach hardware.
pub trait DeviceBacking: Send + Sync {
    /// Identifier for logs and errors (`0000:00:04.0`, `sim0`).
    fn id(&self) -> &str;
    /// BAR0 registers.
    fn bar0(&self) -> &dyn RegisterIo;
    /// The IOMMU domain: the same one for the device's whole life (a mapper reaching it
    /// through this method, `boards::sca1::device_mapper`, refuses to map or unmap once it
    /// changes).
    fn dma(&self) -> &dyn DmaMapper;
    /// MSI-X vectors the function offers (0: poll only).
    fn max_interrupts(&self) -> u32;
    /// Enable `vectors` MSI-X vectors, each signalling its own eventfd (index = vector),
    /// replacing any enabled before; 0 disables them all and returns none.
    ///
    /// # Errors
    /// [`HalError::TooFewVectors`] when the kernel could allocate only some of them (none is
    /// enabled then); [`HalError::Interrupts`] otherwise.
    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<EventFd>, HalError>;
    /// Disable every vector.
    ///
    /// # Errors
    /// [`HalError::Interrupts`].
    fn disable_interrupts(&self) -> Result<(), HalError>;
    /// Reset the function. When this returns `Ok`, no DMA of the function is in progress or
    /// will start until the driver enables it again.
    ///
    /// # Errors
    /// [`HalError::NoReset`] when the function offers none (the caller must use the board's
    /// soft reset, or treat the device as failed); [`HalError::Reset`] when it failed.
    fn reset(&self) -> Result<ResetKind, HalError>;
    /// Clear Bus Master Enable in the function's PCI command register and read it back: the
    /// device-independent way to stop a function's DMA when its reset failed (PCIe: a
    /// function with Bus Master Enable clear issues no memory requests). `Ok` only when the
    /// bit reads back clear; after it, memory the function could reach may be unmapped. The
    /// VFIO backend writes Memory Space Enable set with it, also where it was cleared under
    /// the driver: written clear, vfio-pci would revoke BAR0's mapping and the next register
    /// access would die of SIGBUS. So a BAR dark for that reason may answer again afterwards.
    ///
    /// # Errors
    /// [`HalError::OffTheBus`] when config space reads all-ones (the function is gone or its
    /// link is down: no write reaches it, and it can make no memory request either), before
    /// the write or at the read-back; through VFIO, the command register with all its bits
    /// set but INTx Disable (vfio-pci virtualises that one, so it reads either way);
    /// [`HalError::BusMaster`] when config space cannot be reached or the bit does not clear.
    /// No default: a backing that cannot do it says so in its own `Err` (a wrapper that
    /// inherited a default "cannot" would make its device look unable to stop DMA, and the
    /// teardown would take the no-proof path for it); a wrapper forwards it ([`BarInterposer`]
    /// does).
    fn disable_bus_master(&self) -> Result<(), HalError>;
    /// The function's identity from its config space header.
    ///
    /// # Errors
    /// [`HalError::OffTheBus`] when config space reads all-ones (through VFIO: the command
    /// register, as for [`DeviceBacking::disable_bus_master`]; vfio-pci answers the vendor and
    /// device IDs from its own copy); [`HalError::Config`] when it cannot be read.
    fn pci_identity(&self) -> Result<PciIdentity, HalError>;
    /// The channel on which the kernel asks for the function back (vfio-pci's device request,
    /// `VFIO_PCI_REQ_IRQ_INDEX`: an unbind from vfio-pci or a hot removal waits until the
    /// device fd is closed): the owner that sees [`RemovalRequest::is_requested`] must stop
    /// the disk and close the device. `None` when the function offers no such channel; the
    /// owner then cannot see the request. No default, for the reason given at
    /// [`DeviceBacking::disable_bus_master`]: a wrapper forwards it.
    fn removal_request(&self) -> Option<&RemovalRequest>;
}

/// A device seen through an interposer on its BAR 0: tests and fuzzers that watch, delay or
/// bend register accesses implement [`RegisterIo`] and this, and get every other
/// [`DeviceBacking`] method forwarded to [`BarInterposer::device`] by the blanket impl below, so
/// none is forgotten or left to a default.
pub trait BarInterposer: RegisterIo + Send + Sync {
    /// The device everything but BAR 0 goes to.
    fn device(&self) -> &dyn DeviceBacking;

    /// Called just before the device's function reset is forwarded: an interposer whose own
    /// state describes the registers resets it here.
    fn before_reset(&self) {}
}

impl<T: BarInterposer> DeviceBacking for T {
    fn id(&self) -> &str {
        self.device().id()
    }

    fn bar0(&self) -> &dyn RegisterIo {
        self
    }

    fn dma(&self) -> &dyn DmaMapper {
        self.device().dma()
    }

    fn max_interrupts(&self) -> u32 {
        self.device().max_interrupts()
    }

    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<EventFd>, HalError> {
        self.device().enable_interrupts(vectors)
    }

    fn disable_interrupts(&self) -> Result<(), HalError> {
        self.device().disable_interrupts()
    }

    fn reset(&self) -> Result<ResetKind, HalError> {
        self.before_reset();
        self.device().reset()
    }

    fn disable_bus_master(&self) -> Result<(), HalError> {
        self.device().disable_bus_master()
    }

    fn pci_identity(&self) -> Result<PciIdentity, HalError> {
        self.device().pci_identity()
    }

    fn removal_request(&self) -> Option<&RemovalRequest> {
        self.device().removal_request()
    }
}
