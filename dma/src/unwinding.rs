//! What memory owners do while a panic unwinds: keep the memory.
//!
//! The memory this crate makes may be mapped on a device's IOMMU (an SGV arena or buffer, a
//! ring), and the simulated device reaches it from Rust threads. Its owners free it only after
//! the unmap that ends the device's access returned, on paths that consume them explicitly
//! (`MappedRegion::unmap`, the pool's release). A panic that unwinds through one of those paths
//! half way (a lock-order check failing in a debug build, a logger that panics) drops the owner
//! without that proof: freeing the memory then would hand pages the device may still write to
//! the next allocation, use after free for the simulated device. So while the thread is
//! panicking, every owner here leaks its memory instead, mapped or not: a leak during a panic is
//! bounded by what was in use, and the process is failing anyway.

/// `true` (logged) when the current thread is panicking: the caller, a `Drop` that would free
/// `len` bytes of `what` at `addr`, must leave the memory allocated.
pub(crate) fn leaks_memory(what: &str, addr: u64, len: usize) -> bool {
    if !std::thread::panicking() {
        return false;
    }
    log::error!(
        "{what} of {len} bytes at {addr:#x} dropped while a panic unwinds: left allocated, a \
         device may still reach it"
    );
    true
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code)] // UNSAFETY: mincore(2) asks whether the memory is still mapped.

    use crate::mapping::IovaLock;
    use crate::test_mapper::LedgerMapper;
    use crate::DmaRegion;
    use crate::IovaAllocator;
    use crate::MappedRegion;
    use crate::PageBuffer;
    use crate::PAGE_SIZE;
    use scst_accel_hal::locks::LockToken;
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    /// Is `addr..addr + len` still mapped in this process?
    fn still_mapped(addr: u64, len: usize) -> bool {
        let mut pages = vec![0u8; len.div_ceil(PAGE_SIZE)];
        // SAFETY: mincore only reads the page tables of the range and writes one byte per page
        // to `pages`, which holds that many.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, pages.as_mut_ptr()) };
        rc == 0
    }

    /// Drop `value` from a panic's unwinding, as a panic half way through a release would.
    fn drop_while_panicking<T>(value: T) {
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let _held = value;
            panic!("unwinding on purpose, with memory a device may reach");
        }));
        assert!(unwound.is_err());
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "asks mincore(2), which Miri does not have, whether the memory is still mapped"
    )]
    fn memory_dropped_while_a_panic_unwinds_stays_allocated() {
        let buffer = PageBuffer::new(PAGE_SIZE).expect("buffer");
        let region = DmaRegion::new(2 * PAGE_SIZE).expect("region");
        let (buffer_at, region_at) = (buffer.addr(), region.addr());
        drop_while_panicking((buffer, region));
        assert!(still_mapped(buffer_at, PAGE_SIZE), "the buffer was freed");
        assert!(still_mapped(region_at, 2 * PAGE_SIZE), "the region was freed");
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "asks mincore(2), which Miri does not have, whether the memory is still mapped"
    )]
    fn a_mapped_region_dropped_while_a_panic_unwinds_stays_mapped() {
        let mapper = Arc::new(LedgerMapper::default());
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(0, 1 << 30)));
        let region = DmaRegion::new(PAGE_SIZE).expect("region");
        let host = region.addr();
        let mapped = MappedRegion::new(region, mapper.clone(), iovas.clone()).expect("map");
        let iova = mapped.iova();
        drop_while_panicking(mapped);
        assert_eq!(mapper.live(), vec![(iova, host, PAGE_SIZE as u64)], "unmapped");
        let allocated = crate::mapping::lock_iovas(&iovas, &mut LockToken::root())
            .0
            .allocated();
        assert_eq!(allocated, PAGE_SIZE as u64, "its IOVA went back for reuse");
        assert!(still_mapped(host, PAGE_SIZE), "its memory was freed");
    }
}
