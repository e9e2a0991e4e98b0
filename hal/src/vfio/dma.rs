//! The IOMMU domain of a VFIO container: `VFIO_IOMMU_MAP_DMA` / `UNMAP_DMA` (read + write)
//! through vfio-ioctls, with the errno kept and a count of live mappings for teardown logs.
#![allow(unsafe_code)] // UNSAFETY: `DmaMapper::map` is an unsafe trait method and calls the crate's unsafe map.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vfio_ioctls::VfioContainer;

use super::memlock;
use crate::DmaMapper;
use crate::HalError;

/// A container's DMA mappings. Mappings belong to whoever made them: nothing is unmapped
/// implicitly (closing the container drops them all in the kernel).
pub struct VfioDma {
    container: Arc<VfioContainer>,
    device: String,
    /// Live mappings made through this value.
    mappings: AtomicU64,
    /// Bytes they pin.
    pinned: AtomicU64,
}

impl VfioDma {
    pub(crate) fn new(container: Arc<VfioContainer>, device: String) -> Self {
        Self {
            container,
            device,
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
// reports), and type1 returns from that ioctl after the IOTLB flush, so the device can no
// longer reach the memory.
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
        let size = usize::try_from(len)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| unmap_error(io::Error::from_raw_os_error(libc::EINVAL)))?;
        crate::locks::assert_no_locks_held("VFIO_IOMMU_UNMAP_DMA");
        self.container
            .vfio_dma_unmap(iova, size)
            .map_err(|e| unmap_error(errno_of(e)))?;
        self.mappings.fetch_sub(1, Ordering::Relaxed);
        self.pinned.fetch_sub(len, Ordering::Relaxed);
        log::trace!("{}: unmapped {len:#x} bytes at IOVA {iova:#x}", self.device);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmap_of_another_size_is_not_found() {
        // (The errno-carrying variants hold vmm-sys-util's errno type, which this crate does
        // not depend on, so they cannot be built here; their mapping is one line above.)
        let e = errno_of(vfio_ioctls::VfioError::InvalidDmaUnmapSize);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = errno_of(vfio_ioctls::VfioError::GroupViable);
        assert!(e.to_string().contains("not viable"), "{e}");
    }
}
