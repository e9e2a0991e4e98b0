//! [`MappedRegion`]: a [`DmaRegion`] mapped on a device at an IOVA of its own.
//!
//! Ownership makes the `DmaMapper::map` contract hold: the region is owned by the mapping and
//! is only given back (or dropped) after the IOMMU mapping is gone. When an unmap fails, the
//! device may still reach the memory, so the region is leaked rather than freed.
#![allow(unsafe_code)] // UNSAFETY: calls the unsafe `DmaMapper::map` on memory this type owns.

use crate::DmaError;
use crate::DmaRegion;
use crate::IovaAllocator;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use scst_accel_hal::DmaMapper;
use std::sync::Arc;

/// An IOMMU domain's IOVA allocator behind its lock (level `dma.iova`, docs/locking.md),
/// shared by the domain's rings and SGV pool: `Arc<IovaLock>`.
pub type IovaLock = OrderedMutex<IovaAllocator, levels::DmaIova>;

/// Lock the IOVA allocator. A leaf: held for one alloc or free, never across the map or unmap
/// it brackets, so the token is the root's (every caller is about to make, or has just made,
/// a map or unmap ioctl, which must run with no lock held). Poisoning is recovered by the
/// lock: the allocator's state is consistent after any panic (no multi-step update a panic
/// could interrupt in a way that matters more than a leak), and teardown must never panic.
pub(crate) fn lock_iovas<'a>(
    iovas: &'a IovaLock,
    token: &'a mut LockToken<'_, Root>,
) -> (
    OrderedMutexGuard<'a, IovaAllocator, levels::DmaIova>,
    LockToken<'a, levels::DmaIova>,
) {
    iovas.lock(token)
}

/// A region mapped on a device. Unmapped by [`MappedRegion::unmap`] or, as a safety net, on
/// drop (errors logged). Only unmap once the device can no longer use it (queue stopped and
/// idle, or the function reset: `accelerator.md §6`, `§7`).
pub struct MappedRegion {
    /// `None` only after the region was taken by `unmap` or leaked.
    region: Option<DmaRegion>,
    iova: u64,
    mapper: Arc<dyn DmaMapper>,
    iovas: Arc<IovaLock>,
    /// Dropped, the region stays mapped and its IOVA allocated ([`MappedRegion::leak_on_drop`]).
    leak: bool,
}

impl std::fmt::Debug for MappedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRegion")
            .field("region", &self.region)
            .field("iova", &format_args!("{:#x}", self.iova))
            .finish_non_exhaustive()
    }
}

impl MappedRegion {
    /// Give `region` an IOVA from `iovas` (aligned as [`DmaRegion::iova_alignment`] says: 2 MiB
    /// for regions placed for huge pages, so the IOMMU can use large pages, else 4 KiB) and
    /// map it on `mapper`'s device.
    ///
    /// # Errors
    /// [`DmaError::IovaExhausted`] when the window is full; [`DmaError::Map`] when the IOMMU
    /// refuses (the IOVA is returned and `region` dropped).
    pub fn new(
        region: DmaRegion,
        mapper: Arc<dyn DmaMapper>,
        iovas: Arc<IovaLock>,
    ) -> Result<Self, DmaError> {
        let len = region.len() as u64;
        let align = region.iova_alignment();
        // The map ioctl below is a blocking call: this thread must hold no lock (asserted).
        let mut token = LockToken::root();
        let iova = lock_iovas(&iovas, &mut token)
            .0
            .alloc(len, align)
            .ok_or(DmaError::IovaExhausted { len, align })?;
        // SAFETY: `region` is anonymous memory of this process that `Self` owns from here on:
        // it stays mapped until the IOMMU mapping is removed (unmap/drop below unmap first and
        // leak the region if that fails), and it is only accessed byte-wise atomically
        // (`DmaRegion`'s copies and phase-byte atomics).
        if let Err(source) = unsafe { mapper.map(iova, region.addr(), len) } {
            lock_iovas(&iovas, &mut token).0.free(iova, len);
            return Err(DmaError::Map { iova, len, source });
        }
        log::debug!(
            "mapped DMA region of {len} bytes at {:#x} to IOVA {iova:#x}",
            region.addr()
        );
        Ok(Self {
            region: Some(region),
            iova,
            mapper,
            iovas,
            leak: false,
        })
    }

    /// When dropped, leave the region mapped, its memory allocated and its IOVA taken: for a
    /// device that may still DMA into it (neither a stop, a reset nor a cleared bus master
    /// proved otherwise). Unmapped, the IOVA would be handed to the next mapping, and the
    /// device's late writes would land there.
    pub fn leak_on_drop(&mut self) {
        self.leak = true;
    }

    /// The device address of the region's first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The host side of the region.
    ///
    /// # Panics
    /// Never in practice: the region is only absent while `unmap`/drop run, which consume or
    /// end `self`.
    pub fn region(&self) -> &DmaRegion {
        match &self.region {
            Some(region) => region,
            None => unreachable!("MappedRegion used after its region was taken"),
        }
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.region().len()
    }

    /// Never empty; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove the mapping and give the region back (e.g. to reuse it after a reset).
    ///
    /// # Errors
    /// [`DmaError::Unmap`] when the IOMMU refuses: the region is then leaked on purpose (the
    /// device may still reach it) and its IOVA stays allocated.
    pub fn unmap(mut self) -> Result<DmaRegion, DmaError> {
        let Some(region) = self.region.take() else {
            unreachable!("MappedRegion unmapped twice");
        };
        let len = region.len() as u64;
        self.release(region).map_err(|source| DmaError::Unmap {
            iova: self.iova,
            len,
            source,
        })
    }

    /// Unmap the region; on success free the IOVA and hand the region back, on failure leak
    /// both (the device may still reach the memory, and the IOVA may still be mapped).
    fn release(&self, region: DmaRegion) -> Result<DmaRegion, scst_accel_hal::HalError> {
        let len = region.len() as u64;
        // The unmap is a blocking call: this thread must hold no lock (asserted).
        let mut token = LockToken::root();
        match self.mapper.unmap(self.iova, len) {
            Ok(()) => {
                lock_iovas(&self.iovas, &mut token).0.free(self.iova, len);
                Ok(region)
            }
            Err(e) => {
                // Leaked before anything else can run (a logger that panics would otherwise
                // drop it mapped).
                std::mem::forget(region);
                log::error!(
                    "unmap of DMA region at IOVA {:#x} ({len} bytes) failed: {e}; leaking it, \
                     the device may still reach it",
                    self.iova
                );
                Err(e)
            }
        }
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // A panic unwinding through the region's owner (a queue whose device may still run)
        // is no proof that the device stopped: leave it mapped, as `leak_on_drop` does, rather
        // than hand its IOVA to the next mapping (`unwinding.rs`). This also keeps `release`'s
        // lock-order assertion from panicking again inside the unwind.
        if self.leak || std::thread::panicking() {
            if let Some(region) = self.region.take() {
                let len = region.len();
                std::mem::forget(region);
                log::error!(
                    "DMA region at IOVA {:#x} ({len} bytes) left mapped: the device may still reach it",
                    self.iova,
                );
            }
            return;
        }
        if let Some(region) = self.region.take() {
            // Errors were logged by `release`; Drop must not panic.
            let _ = self.release(region);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_mapper::LedgerMapper;
    use crate::PAGE_SIZE;
    use std::sync::atomic::Ordering;

    fn setup() -> (Arc<LedgerMapper>, Arc<IovaLock>) {
        (
            Arc::new(LedgerMapper::default()),
            Arc::new(IovaLock::new(IovaAllocator::new(0, 1 << 30))),
        )
    }

    #[test]
    fn map_then_unmap_returns_region_and_iova() {
        let (mapper, iovas) = setup();
        let region = DmaRegion::new(3 * PAGE_SIZE).expect("region");
        let host = region.addr();
        let m = MappedRegion::new(region, mapper.clone(), iovas.clone()).expect("map");
        assert_ne!(m.iova(), 0);
        assert_eq!(m.iova() % PAGE_SIZE as u64, 0);
        assert_eq!(mapper.live(), vec![(m.iova(), host, 3 * PAGE_SIZE as u64)]);
        m.region().write_at(0, b"ring");
        let region = m.unmap().expect("unmap");
        assert_eq!(region.addr(), host);
        assert_eq!(mapper.live(), vec![]);
        assert_eq!(lock_iovas(&iovas, &mut LockToken::root()).0.allocated(), 0);
        assert_eq!(mapper.counts(), (1, 1, 0));
    }

    #[test]
    fn drop_unmaps() {
        let (mapper, iovas) = setup();
        let a = MappedRegion::new(
            DmaRegion::new(PAGE_SIZE).expect("r"),
            mapper.clone(),
            iovas.clone(),
        )
        .expect("a");
        let b = MappedRegion::new(
            DmaRegion::new(PAGE_SIZE).expect("r"),
            mapper.clone(),
            iovas.clone(),
        )
        .expect("b");
        assert_ne!(a.iova(), b.iova());
        drop(a);
        drop(b);
        assert_eq!(mapper.counts(), (2, 2, 0));
        assert_eq!(lock_iovas(&iovas, &mut LockToken::root()).0.allocated(), 0);
    }

    #[test]
    fn map_failure_returns_the_iova() {
        let (mapper, iovas) = setup();
        mapper.fail_maps.store(true, Ordering::Relaxed);
        let err = MappedRegion::new(
            DmaRegion::new(PAGE_SIZE).expect("r"),
            mapper.clone(),
            iovas.clone(),
        )
        .expect_err("must fail");
        assert!(matches!(err, DmaError::Map { .. }));
        assert!(
            std::error::Error::source(&err).is_some(),
            "HalError kept as source"
        );
        assert_eq!(lock_iovas(&iovas, &mut LockToken::root()).0.allocated(), 0);
    }

    #[test]
    fn iova_exhaustion_is_an_error() {
        let mapper = Arc::new(LedgerMapper::default());
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(
            PAGE_SIZE as u64,
            PAGE_SIZE as u64,
        )));
        let _a = MappedRegion::new(
            DmaRegion::new(PAGE_SIZE).expect("r"),
            mapper.clone(),
            iovas.clone(),
        )
        .expect("a");
        let err = MappedRegion::new(DmaRegion::new(PAGE_SIZE).expect("r"), mapper, iovas).expect_err("full");
        assert!(matches!(err, DmaError::IovaExhausted { .. }));
    }

    #[test]
    fn failed_unmap_leaks_and_keeps_the_iova() {
        let (mapper, iovas) = setup();
        let m = MappedRegion::new(
            DmaRegion::new(PAGE_SIZE).expect("r"),
            mapper.clone(),
            iovas.clone(),
        )
        .expect("m");
        mapper.fail_unmaps.store(true, Ordering::Relaxed);
        let err = m.unmap().expect_err("unmap fails");
        assert!(matches!(err, DmaError::Unmap { .. }));
        assert_eq!(
            lock_iovas(&iovas, &mut LockToken::root()).0.allocated(),
            PAGE_SIZE as u64,
            "IOVA not reused"
        );
        assert_eq!(mapper.live().len(), 1);
    }
}
