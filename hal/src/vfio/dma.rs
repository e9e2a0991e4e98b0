//! The IOMMU domain of a VFIO container: `VFIO_IOMMU_MAP_DMA` / `UNMAP_DMA` (read + write)
//! through vfio-ioctls, with the errno kept and a count of live mappings for teardown logs.
//!
//! Unmaps are exact. The kernel's type1 v2 `VFIO_IOMMU_UNMAP_DMA` (drivers/vfio/
//! vfio_iommu_type1.c, `vfio_dma_do_unmap`) takes a range: it refuses one whose first or last
//! byte falls inside a mapping that starts before or ends after it (EINVAL: a bisected
//! mapping), and otherwise unmaps every mapping inside the range, reporting the bytes it
//! unmapped (vfio-ioctls fails the call when they are not the size asked, after the fact). The
//! [`DmaMapper::unmap`] contract, the simulator and every caller are narrower: one unmap
//! removes exactly the mapping one `map` call made. So `VfioDma` keeps the mappings it made
//! (IOVA → length) and refuses any other range with [`HalError::NotOneMapping`] before the
//! ioctl, as the simulator does (`crate::take_one_mapping`, the one rule for both): a range
//! over several mappings never reaches the kernel, which would unmap them all while the live
//! count fell by one, and a range over a mapping and a hole cannot unmap the mapping and fail.
//! The counts below change only by whole mappings, so they stay exact. This value is the only
//! mapper of its container (one container per device, `device.rs`), so its record is the
//! container's.
#![allow(unsafe_code)] // UNSAFETY: `DmaMapper::map` is an unsafe trait method and calls the crate's unsafe map.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vfio_ioctls::VfioOps;

use super::memlock;
use crate::locks::levels;
use crate::locks::LockToken;
use crate::locks::OrderedMutex;
use crate::DmaMapper;
use crate::HalError;

/// A container's DMA mappings. Mappings belong to whoever made them: nothing is unmapped
/// implicitly (closing the container drops them all in the kernel).
pub struct VfioDma {
    /// The container (its `VfioOps`: a stand-in of the kernel in this module's tests).
    container: Arc<dyn VfioOps>,
    device: String,
    /// The mappings made through this value and not unmapped: first IOVA → length. Level
    /// `iommu.table` (this backend's counterpart of the simulator's page table): a leaf, taken
    /// from a root token and never held across the ioctls.
    made: OrderedMutex<BTreeMap<u64, u64>, levels::IommuTable>,
    /// Live mappings made through this value (`made`'s size, readable without its lock).
    mappings: AtomicU64,
    /// Bytes they pin.
    pinned: AtomicU64,
}

impl VfioDma {
    pub(crate) fn new(container: Arc<dyn VfioOps>, device: String) -> Self {
        Self {
            container,
            device,
            made: OrderedMutex::new(BTreeMap::new()),
            mappings: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
        }
    }

    /// Mappings made and not yet unmapped.
    pub fn live_mappings(&self) -> u64 {
        self.mappings.load(Ordering::Relaxed)
    }

    /// Bytes those mappings pin (what RLIMIT_MEMLOCK is charged).
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    fn map_error(&self, iova: u64, len: u64, source: io::Error) -> HalError {
        HalError::Map {
            device: self.device.clone(),
            iova,
            len,
            source,
        }
    }
}

/// The errno inside a vfio-ioctls error, or the error itself when it carries none.
fn errno_of(e: vfio_ioctls::VfioError) -> io::Error {
    match e {
        vfio_ioctls::VfioError::IommuDmaMap(s) | vfio_ioctls::VfioError::IommuDmaUnmap(s) => {
            io::Error::from_raw_os_error(s.errno())
        }
        // Type1 reported unmapping another size than asked: the range was not one mapping.
        vfio_ioctls::VfioError::InvalidDmaUnmapSize => io::Error::new(
            io::ErrorKind::NotFound,
            "the kernel unmapped a different size: the range was not made by one map call",
        ),
        other => io::Error::other(other),
    }
}

// SAFETY: one container (one IOMMU domain) for the value's life; `unmap` returns `Ok` only when
// VFIO_IOMMU_UNMAP_DMA removed exactly the range asked (vfio-ioctls checks the size the kernel
// reports, and the range is one mapping this value made), and type1 returns from that ioctl
// after the IOTLB flush, so the device can no longer reach the memory.
unsafe impl DmaMapper for VfioDma {
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError> {
        let size = match usize::try_from(len) {
            Ok(size) if size > 0 && host != 0 => size,
            _ => return Err(self.map_error(iova, len, io::Error::from_raw_os_error(libc::EINVAL))),
        };
        // A blocking ioctl (it pins the pages): never under a lock.
        crate::locks::assert_no_locks_held("VFIO_IOMMU_MAP_DMA");
        // SAFETY: our caller promised (DmaMapper::map # Safety) that host..host+len is memory of
        // this process that stays mapped until the unmap returns, that no Rust reference into
        // it is live or formed meanwhile, and that Rust touches it only by byte-wise atomic
        // access (`shared_mem`'s copies, `AtomicU8`) and system calls: vfio_dma_map's contract,
        // which allows atomic or volatile raw access only.
        let result = unsafe { self.container.vfio_dma_map(iova, size, host as *mut u8) };
        match result {
            Ok(()) => {
                // Recorded once made: an unmap racing this map (a caller's bug) is refused
                // rather than sent for a mapping the kernel may not have yet. The kernel
                // refuses overlapping maps (EEXIST), so no recorded range overlaps another.
                self.made.lock(&mut LockToken::root()).0.insert(iova, len);
                self.mappings.fetch_add(1, Ordering::Relaxed);
                self.pinned.fetch_add(len, Ordering::Relaxed);
                log::trace!("{}: mapped {len:#x} bytes at IOVA {iova:#x}", self.device);
                Ok(())
            }
            Err(e) => {
                let source = errno_of(e);
                if source.raw_os_error() == Some(libc::ENOMEM) {
                    log::error!(
                        "{}: {}",
                        self.device,
                        memlock::explain_map_enomem(self.pinned_bytes(), len)
                    );
                }
                Err(self.map_error(iova, len, source))
            }
        }
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError> {
        let unmap_error = |source| HalError::Unmap {
            device: self.device.clone(),
            iova,
            len,
            source,
        };
        let size =
            usize::try_from(len).map_err(|_| unmap_error(io::Error::from_raw_os_error(libc::EINVAL)))?;
        crate::locks::assert_no_locks_held("VFIO_IOMMU_UNMAP_DMA");
        let mut token = LockToken::root();
        // Taken out of the record before the ioctl, which runs with no lock held: a second
        // unmap of the same range meanwhile finds it gone and is refused.
        crate::take_one_mapping(
            &mut self.made.lock(&mut token).0,
            |&len| len,
            &self.device,
            iova,
            len,
        )?;
        if let Err(e) = self.container.vfio_dma_unmap(iova, size) {
            // Still mapped as far as this value knows: the caller keeps (leaks) the memory, and
            // the record and counts keep the mapping.
            self.made.lock(&mut token).0.insert(iova, len);
            return Err(unmap_error(errno_of(e)));
        }
        self.mappings.fetch_sub(1, Ordering::Relaxed);
        self.pinned.fetch_sub(len, Ordering::Relaxed);
        log::trace!("{}: unmapped {len:#x} bytes at IOVA {iova:#x}", self.device);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vfio_ioctls::VfioError;

    #[test]
    fn an_unmap_of_another_size_is_not_found() {
        // (The errno-carrying variants hold vmm-sys-util's errno type, which this crate does
        // not depend on, so they cannot be built here; their mapping is one line above.)
        let e = errno_of(VfioError::InvalidDmaUnmapSize);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = errno_of(VfioError::GroupViable);
        assert!(e.to_string().contains("not viable"), "{e}");
    }

    /// The kernel's side of a type1 v2 container as `vfio_dma_do_unmap` in
    /// drivers/vfio/vfio_iommu_type1.c handles it, seen through vfio-ioctls: a range bisecting
    /// a mapping at either end is refused with nothing unmapped (EINVAL there; here
    /// `InvalidDmaUnmapSize`, vmm-sys-util's errno type not being a dependency); any other
    /// range unmaps every mapping inside it, and vfio-ioctls fails the call when their total is
    /// not the size asked (after the kernel unmapped them).
    #[derive(Default)]
    struct Type1v2 {
        /// First IOVA → length.
        table: Mutex<BTreeMap<u64, u64>>,
    }

    impl Type1v2 {
        fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
            self.table.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl VfioOps for Type1v2 {
        unsafe fn vfio_dma_map(
            &self,
            iova: u64,
            size: usize,
            _user_addr: *mut u8,
        ) -> vfio_ioctls::Result<()> {
            let mut table = self.table();
            let end = iova + size as u64;
            let overlaps = table
                .range(..end)
                .next_back()
                .is_some_and(|(&s, &l)| s + l > iova);
            assert!(!overlaps, "the scripts never map over a mapping");
            table.insert(iova, size as u64);
            Ok(())
        }

        fn vfio_dma_unmap(&self, iova: u64, size: usize) -> vfio_ioctls::Result<()> {
            let mut table = self.table();
            let end = iova + size as u64;
            let holding = |table: &BTreeMap<u64, u64>, at: u64| {
                table
                    .range(..=at)
                    .next_back()
                    .filter(|&(&s, &l)| s + l > at)
                    .map(|(&s, &l)| (s, l))
            };
            let bisected = size > 0
                && (holding(&table, iova).is_some_and(|(s, _)| s != iova)
                    || holding(&table, end - 1).is_some_and(|(s, l)| s + l != end));
            if size == 0 || bisected {
                return Err(VfioError::InvalidDmaUnmapSize);
            }
            let inside: Vec<u64> = table.range(iova..end).map(|(&s, _)| s).collect();
            let unmapped: u64 = inside.iter().map(|s| table.remove(s).unwrap_or(0)).sum();
            if unmapped != size as u64 {
                return Err(VfioError::InvalidDmaUnmapSize);
            }
            Ok(())
        }
    }

    /// `VfioDma` refuses every unmap but one of a whole mapping it made before the kernel sees
    /// it, so a range the kernel would take (several whole mappings) unmaps nothing, and its
    /// live count and bytes stay the kernel's after every request: the same requests the
    /// simulator refuses (`crate::unmap_rule_tests`).
    #[test]
    fn every_unmap_but_one_whole_mapping_is_refused_before_the_kernel_sees_it() {
        let kernel = Arc::new(Type1v2::default());
        let dma = VfioDma::new(kernel.clone(), "type1v2-model".into());
        crate::unmap_rule_tests::check(&dma, &|| {
            let table = kernel.table();
            assert_eq!(dma.live_mappings(), table.len() as u64, "live count drifted");
            assert_eq!(
                dma.pinned_bytes(),
                table.values().sum::<u64>(),
                "pinned bytes drifted"
            );
            table.len()
        });
    }
}
