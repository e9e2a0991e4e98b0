//! [`DmaRegion`]: page-aligned anonymous memory for descriptor rings, completion rings, scatter
//! lists and the SGV pool's arenas.
//!
//! The memory is shared with a device (or the simulated device's engine threads), which writes
//! it behind Rust's back. So no Rust reference into it is ever formed, and every access is
//! atomic: byte-wise atomic copies ([`DmaRegion::read_at`], [`DmaRegion::read_obj`],
//! [`DmaRegion::write_at`]..., through [`scst_accel_hal::shared_mem`]) and `AtomicU8` accesses
//! for the bytes that synchronise with the device (the completion phase byte,
//! `accelerator.md §4`). Two agents touching the same bytes at once get torn data, never
//! undefined behaviour.
#![allow(unsafe_code)] // UNSAFETY: mmap/munmap and atomic copies into memory a device writes.

use crate::DmaError;
use crate::PAGE_SIZE;
use scst_accel_hal::shared_mem;
use std::mem::size_of;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;

/// Size of an x86_64 huge page, the unit regions of at least this size try to use.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Largest region: rings and scatter lists are small; anything near this is a bug.
const MAX_REGION_LEN: usize = 1 << 30;

/// How a region's memory is backed ([`DmaRegion::backing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionBacking {
    /// Reserved 2 MiB huge pages (hugetlbfs, `vm.nr_hugepages`): every page is 2 MiB, taken
    /// from the reserve when the region is made.
    HugeTlb,
    /// 2 MiB-aligned memory advised for transparent huge pages (`MADV_HUGEPAGE`): where the
    /// kernel's THP is enabled (`madvise` or `always` in
    /// `/sys/kernel/mm/transparent_hugepage/enabled`), each whole 2 MiB of it is backed by
    /// one huge page when the kernel finds one at the first touch, else by 4 KiB pages (no
    /// guarantee: fragmentation or THP `never` leave it on 4 KiB pages).
    Transparent,
    /// 4 KiB pages.
    Pages,
}

/// Anonymous, page-aligned memory, unmapped on drop; never `mlock`ed (see [`DmaRegion::new`]).
///
/// Zero-filled when made. Accessors panic on an out-of-range offset: offsets come from the
/// driver's own ring arithmetic, never from the device, so a bad one is a driver bug.
#[derive(Debug)]
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    backing: RegionBacking,
}

// SAFETY: the region is plain memory owned by this handle (the pointer is not tied to the
// thread that mapped it); every access is a bounds-checked atomic copy or atomic access, so
// moving the handle to another thread is sound.
unsafe impl Send for DmaRegion {}
// SAFETY: no Rust reference into the memory is ever handed out, and every access made through
// `&DmaRegion` is atomic per byte: the copies (`read_at`, `read_obj`, `write_at`, `write_obj`,
// `fill`) go through `shared_mem`, the phase byte through `AtomicU8`. Threads sharing the
// region (and the simulated device's engines, whose copies through the IOMMU model are the same
// byte-wise atomic copies) may therefore touch the same bytes at once: the bytes tear, but no
// data race and no mixed-size atomic access can happen, whatever safe code does. Getting whole
// descriptors and completions across is the ring protocols' part (a doorbell after the
// descriptor, the phase byte with release/acquire), a matter of correctness, not soundness.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Map `len` bytes rounded up to whole pages. From [`HUGE_PAGE_SIZE`] up, reserved 2 MiB
    /// huge pages are tried first (fewer IOTLB and TLB entries, one pin per 2 MiB) with the
    /// length rounded to 2 MiB; when the system has none reserved (the common case), the
    /// memory is placed at a 2 MiB-aligned address and advised for transparent huge pages
    /// ([`RegionBacking::Transparent`]), and only where that advice is refused is it plain 4 KiB
    /// pages (each fallback logged at debug). The memory is
    /// `MADV_DONTFORK` (a forked child must not share pages a device writes).
    ///
    /// It is not `mlock`ed: what a device reaches is mapped through the IOMMU, and VFIO type1
    /// pins the pages it maps and charges them to the process's `locked_vm` against
    /// RLIMIT_MEMLOCK (vfio_pin_pages_remote checks `mm->locked_vm + lock_acct` against the
    /// limit, vfio_lock_acct adds them), whether or not they are mlocked, and an mlock charges
    /// `locked_vm` too: locked, every ring counted twice against the limit. Memory a simulated
    /// device reaches needs no locking. Unmapped memory may be paged out, like any other.
    ///
    /// # Errors
    /// [`DmaError::InvalidLength`] for 0 or more than 1 GiB; [`DmaError::Alloc`] when the
    /// kernel refuses the mapping.
    pub fn new(len: usize) -> Result<Self, DmaError> {
        if len == 0 || len > MAX_REGION_LEN {
            return Err(DmaError::InvalidLength {
                len,
                max: MAX_REGION_LEN,
            });
        }
        crate::page_buffer::kernel_page_size_matches()
            .map_err(|size| DmaError::UnsupportedPageSize { size })?;
        // Miri has no huge pages, no madvise, and munmaps only whole mappings (no trimming to a
        // 2 MiB boundary): under it every region is plain pages (docs/miri.md).
        #[cfg(miri)]
        let (ptr, len, backing) = {
            let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let alloc = |source| DmaError::Alloc { len, source };
            (map_anonymous(len, 0).map_err(alloc)?, len, RegionBacking::Pages)
        };
        #[cfg(not(miri))]
        let (ptr, len, backing) = match map_huge(len) {
            Some((ptr, huge_len)) => (ptr, huge_len, RegionBacking::HugeTlb),
            None => {
                let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                let alloc = |source| DmaError::Alloc { len, source };
                if len >= HUGE_PAGE_SIZE {
                    let ptr = map_anonymous_huge_aligned(len).map_err(alloc)?;
                    (ptr, len, advise_transparent(ptr, len))
                } else {
                    (map_anonymous(len, 0).map_err(alloc)?, len, RegionBacking::Pages)
                }
            }
        };
        advise_dontfork(ptr, len);
        Ok(Self { ptr, len, backing })
    }

    /// A pointer to `offset`, checked so that `offset..offset + len` lies inside the region:
    /// for [`crate::PageBuffer`] views of an SGV arena, which keep the region alive.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> NonNull<u8> {
        self.check(offset, len);
        // SAFETY: `offset <= self.len` (checked), so the result is inside the mapping or one
        // past its end, and not null because the mapping is not.
        unsafe { self.ptr.add(offset) }
    }

    /// The host virtual address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes (whole pages, or whole huge pages when [`RegionBacking::HugeTlb`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the region is backed.
    pub fn backing(&self) -> RegionBacking {
        self.backing
    }

    /// The alignment of the IOVA a mapping of this region should start on: 2 MiB for a region
    /// placed for huge pages ([`RegionBacking::HugeTlb`] or [`RegionBacking::Transparent`]: it
    /// starts on a 2 MiB boundary), so that the IOMMU can use one entry for each physically
    /// contiguous 2 MiB page; else 4 KiB.
    pub fn iova_alignment(&self) -> u64 {
        match self.backing {
            RegionBacking::HugeTlb | RegionBacking::Transparent => HUGE_PAGE_SIZE as u64,
            RegionBacking::Pages => PAGE_SIZE as u64,
        }
    }

    fn check(&self, offset: usize, len: usize) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|end| end <= self.len),
            "access {offset}+{len} outside DMA region of {} bytes",
            self.len
        );
    }

    /// Copy `out.len()` bytes at `offset` out of the region.
    ///
    /// # Concurrency
    /// A byte-wise atomic copy ([`shared_mem`]): when another thread or the device writes these
    /// bytes meanwhile, `out` gets some old and some new bytes (the same holds for
    /// [`Self::read_obj`], and for the writers below). Defined behaviour, but torn data: the
    /// ring protocols are what keep reader and writer apart.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: the range lies inside the mapping (checked), which lives as long as `self`;
        // every access to the mapping is byte-wise atomic (the type's `Sync`, the `map`
        // contract for the device side); `out` is a distinct Rust allocation, so the ranges
        // cannot overlap.
        unsafe { shared_mem::copy_from_shared_into(self.ptr.as_ptr().add(offset), out) }
    }

    /// Copy `data` into the region at `offset`.
    ///
    /// # Concurrency
    /// A byte-wise atomic copy, as [`Self::read_at`]: racing with another copy of the same
    /// bytes tears them, nothing worse.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: as in `read_at`: in bounds of the live mapping, only ever accessed byte-wise
        // atomically, and disjoint from `data`.
        unsafe { shared_mem::copy_to_shared(data, self.ptr.as_ptr().add(offset)) }
    }

    /// Copy a `T` out of the region at `offset` (any alignment).
    ///
    /// # Panics
    /// If `offset..offset + size_of::<T>()` is outside the region.
    pub fn read_obj<T: FromBytes>(&self, offset: usize) -> T {
        self.check(offset, size_of::<T>());
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the source range lies inside the mapping (checked) and is only accessed
        // byte-wise atomically; the destination is the local `value`, exactly size_of::<T>()
        // bytes, distinct from the mapping.
        unsafe {
            shared_mem::copy_from_shared(
                self.ptr.as_ptr().add(offset),
                value.as_mut_ptr().cast::<u8>(),
                size_of::<T>(),
            )
        };
        // SAFETY: every byte of `value` was written just above (padding included), and
        // `T: FromBytes` makes every byte pattern a valid `T`.
        unsafe { value.assume_init() }
    }

    /// Copy `value`'s bytes into the region at `offset` (any alignment).
    ///
    /// # Panics
    /// If `offset..offset + size_of::<T>()` is outside the region.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, offset: usize, value: &T) {
        self.write_at(offset, value.as_bytes());
    }

    fn atomic_u8(&self, offset: usize) -> &AtomicU8 {
        self.check(offset, 1);
        // SAFETY: the byte lies inside the mapping (checked), which outlives the returned
        // borrow of `self`; a u8 is always aligned; every access made through the result is
        // atomic, which is how the device's writes and ours synchronise (accelerator.md §4).
        unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) }
    }

    /// Load the byte at `offset` with acquire ordering: after it, the rest of an entry whose
    /// phase byte the device wrote last is visible (`accelerator.md §4`).
    ///
    /// # Panics
    /// If `offset` is outside the region.
    pub fn load_u8_acquire(&self, offset: usize) -> u8 {
        self.atomic_u8(offset).load(Ordering::Acquire)
    }

    /// Store `v` at `offset` with release ordering: everything written before is visible to
    /// whoever acquire-loads this byte (the simulated device's side of the phase protocol).
    ///
    /// # Panics
    /// If `offset` is outside the region.
    pub fn store_u8_release(&self, offset: usize, v: u8) {
        self.atomic_u8(offset).store(v, Ordering::Release);
    }

    /// Set `len` bytes at `offset` to `byte`.
    ///
    /// # Concurrency
    /// As [`Self::write_at`].
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: the range lies inside the mapping (checked), which is only accessed byte-wise
        // atomically; no reference into it is formed.
        unsafe { shared_mem::fill_shared(self.ptr.as_ptr().add(offset), len, byte) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if crate::unwinding::leaks_memory("DMA region", self.addr(), self.len) {
            return;
        }
        // SAFETY: unmapping exactly the mapping made in `new`; no reference into it exists, and
        // a region still mapped on a device is never dropped (MappedRegion leaks it instead).
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            log::error!(
                "munmap of DMA region ({} bytes at {:#x}) failed: {}",
                self.len,
                self.addr(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Try 2 MiB huge pages for regions of at least that size; `None` means "use 4 KiB pages".
#[cfg(not(miri))] // Miri: `DmaRegion::map` maps plain pages
fn map_huge(len: usize) -> Option<(NonNull<u8>, usize)> {
    if len < HUGE_PAGE_SIZE {
        return None;
    }
    let huge_len = len.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
    match map_anonymous(huge_len, libc::MAP_HUGETLB | libc::MAP_HUGE_2MB) {
        Ok(ptr) => Some((ptr, huge_len)),
        Err(e) => {
            // The common case on hosts without reserved huge pages (vm.nr_hugepages = 0).
            log::debug!("no 2 MiB huge pages for a {huge_len}-byte DMA region ({e}); using 4 KiB pages");
            None
        }
    }
}

/// Anonymous memory of `len` bytes (whole pages) starting on a 2 MiB boundary: `len` plus
/// 2 MiB mapped, and the unaligned head and the tail beyond `len` unmapped again, so the
/// region is exactly `len` bytes and a [`DmaRegion`]'s drop unmaps all of it.
#[cfg(not(miri))] // Miri: `DmaRegion::map` maps plain pages
fn map_anonymous_huge_aligned(len: usize) -> std::io::Result<NonNull<u8>> {
    let whole = len + HUGE_PAGE_SIZE;
    let base = map_anonymous(whole, 0)?;
    let addr = base.as_ptr() as usize;
    let head = addr.next_multiple_of(HUGE_PAGE_SIZE) - addr;
    let tail = whole - head - len;
    // SAFETY: `head` and `tail` are the parts of the mapping just made that the region does
    // not keep (both whole pages: the mapping and `len` are page multiples); nothing refers
    // to them. `head < HUGE_PAGE_SIZE`, so `start + len` lies inside the mapping.
    let start = unsafe {
        unmap_part(base.as_ptr(), head);
        let start = base.as_ptr().add(head);
        unmap_part(start.add(len), tail);
        start
    };
    NonNull::new(start).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Unmap `len` bytes at `ptr` (nothing when 0). A failure leaves the pages mapped and unused:
/// address space lost, nothing unsafe; logged.
///
/// # Safety
/// `ptr..ptr+len` must be whole pages of a mapping this process made, that nothing refers to.
#[cfg(not(miri))] // Miri: `DmaRegion::map` maps plain pages
unsafe fn unmap_part(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller's contract.
    if unsafe { libc::munmap(ptr.cast(), len) } != 0 {
        log::debug!(
            "munmap of {len} unused bytes beside a DMA region failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Advise `ptr..ptr+len` (2 MiB-aligned) for transparent huge pages: [`RegionBacking::Transparent`],
/// or [`RegionBacking::Pages`] where the kernel refuses the advice (built without THP).
#[cfg(not(miri))] // Miri: `DmaRegion::map` maps plain pages
fn advise_transparent(ptr: NonNull<u8>, len: usize) -> RegionBacking {
    // SAFETY: `ptr..ptr+len` is a mapping this process just made; madvise does not touch data.
    if unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) } == 0 {
        RegionBacking::Transparent
    } else {
        log::debug!(
            "madvise(MADV_HUGEPAGE) on a {len}-byte DMA region failed ({}); using 4 KiB pages",
            std::io::Error::last_os_error()
        );
        RegionBacking::Pages
    }
}

fn map_anonymous(len: usize, extra_flags: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: anonymous private mapping with no address hint and no fd; the result is checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))
}

fn advise_dontfork(ptr: NonNull<u8>, len: usize) {
    // Miri has no madvise; it is advice about paging, nothing a Rust access depends on.
    if cfg!(miri) {
        return;
    }
    // SAFETY: `ptr..ptr+len` is a mapping this process just made; madvise does not touch data.
    if unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK) } != 0 {
        log::debug!(
            "madvise(MADV_DONTFORK) on a DMA region failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::KnownLayout;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct Entry {
        tag: u16,
        status: u8,
        flags: u8,
        bytes: u32,
        detail: u64,
    }

    #[test]
    fn small_regions_are_page_aligned_and_rounded() {
        let r = DmaRegion::new(100).expect("map");
        assert_eq!(r.len(), PAGE_SIZE);
        assert_eq!(r.addr() % PAGE_SIZE as u64, 0);
        assert_eq!(r.backing(), RegionBacking::Pages);
        let mut out = [0xffu8; 64];
        r.read_at(0, &mut out);
        assert_eq!(out, [0; 64], "fresh regions are zero-filled");
    }

    #[test]
    fn large_regions_use_huge_pages_or_fall_back() {
        let r = DmaRegion::new(HUGE_PAGE_SIZE + 1).expect("map");
        match r.backing() {
            RegionBacking::HugeTlb => assert_eq!(r.len(), 2 * HUGE_PAGE_SIZE),
            RegionBacking::Transparent | RegionBacking::Pages => {
                assert_eq!(r.len(), HUGE_PAGE_SIZE + PAGE_SIZE)
            }
        }
        if r.iova_alignment() == HUGE_PAGE_SIZE as u64 {
            assert_eq!(r.addr() % HUGE_PAGE_SIZE as u64, 0);
        }
        r.write_at(r.len() - 4, b"last");
        let mut out = [0u8; 4];
        r.read_at(r.len() - 4, &mut out);
        assert_eq!(&out, b"last");
    }

    /// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
    fn vm_flags_at(addr: u64) -> Option<Vec<String>> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.split_whitespace().map(str::to_owned).collect());
                }
            }
        }
        None
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "Miri has no huge pages nor madvise (regions are plain pages) and cannot read /proc/self/smaps"
    )]
    fn without_reserved_huge_pages_a_large_region_is_placed_and_advised_for_thp() {
        let r = DmaRegion::new(3 * HUGE_PAGE_SIZE + 5 * PAGE_SIZE).expect("map");
        if r.backing() == RegionBacking::HugeTlb {
            scst_accel_hal::skip::test_skipped(
                "without_reserved_huge_pages_a_large_region_is_placed_and_advised_for_thp",
                "this host has reserved 2 MiB huge pages, so the region took them",
            );
            return;
        }
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        assert_eq!(
            r.backing() == RegionBacking::Transparent,
            thp,
            "a kernel with THP takes the advice, one without refuses it"
        );
        if !thp {
            scst_accel_hal::skip::test_skipped(
                "without_reserved_huge_pages_a_large_region_is_placed_and_advised_for_thp",
                "this kernel has no transparent huge pages",
            );
            return;
        }
        assert_eq!(r.addr() % HUGE_PAGE_SIZE as u64, 0, "placed on a 2 MiB boundary");
        assert_eq!(
            r.len(),
            3 * HUGE_PAGE_SIZE + 5 * PAGE_SIZE,
            "exactly the pages asked for"
        );
        for at in [r.addr(), r.addr() + r.len() as u64 - 1] {
            let flags = vm_flags_at(at).expect("the region is a mapping of this process");
            assert!(
                flags.iter().any(|f| f == "hg"),
                "MADV_HUGEPAGE at {at:#x}: {flags:?}"
            );
        }
        // Touch every byte's page: the memory is usable end to end.
        r.fill(0, r.len(), 0x5a);
        assert_eq!(r.load_u8_acquire(r.len() - 1), 0x5a);
    }

    /// Rings and arenas alike are pinned by the VFIO map that gives the device access; an
    /// mlock of them would charge RLIMIT_MEMLOCK a second time for the same pages.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot read /proc/self/smaps")]
    fn no_region_is_mlocked() {
        for len in [PAGE_SIZE, HUGE_PAGE_SIZE + PAGE_SIZE] {
            let r = DmaRegion::new(len).expect("map");
            let flags = vm_flags_at(r.addr()).expect("the region is a mapping of this process");
            assert!(
                !flags.iter().any(|f| f == "lo"),
                "a {len}-byte region is mlocked (VM_LOCKED): {flags:?}"
            );
        }
    }

    #[test]
    fn small_regions_are_not_advised_for_thp() {
        let r = DmaRegion::new(HUGE_PAGE_SIZE - PAGE_SIZE).expect("map");
        assert_eq!(r.backing(), RegionBacking::Pages);
        assert_eq!(r.iova_alignment(), PAGE_SIZE as u64);
    }

    #[test]
    fn bytes_and_objects_round_trip_at_any_offset() {
        let r = DmaRegion::new(PAGE_SIZE).expect("map");
        r.write_at(7, b"scst");
        let mut out = [0u8; 4];
        r.read_at(7, &mut out);
        assert_eq!(&out, b"scst");

        let e = Entry {
            tag: 0x1234,
            status: 4,
            flags: 1,
            bytes: 4096,
            detail: 0xdead_beef_0000_0001,
        };
        r.write_obj(33, &e); // unaligned on purpose
        assert_eq!(r.read_obj::<Entry>(33), e);
        assert_eq!(r.read_obj::<u16>(33), 0x1234);
        let mut raw = [0u8; 16];
        r.read_at(33, &mut raw);
        assert_eq!(&raw[..4], &[0x34, 0x12, 4, 1], "little-endian wire layout");
    }

    #[test]
    fn fill_and_phase_atomics() {
        let r = DmaRegion::new(PAGE_SIZE).expect("map");
        r.fill(0, PAGE_SIZE, 0xff);
        assert_eq!(r.load_u8_acquire(PAGE_SIZE - 1), 0xff);
        r.fill(16, 16, 0);
        assert_eq!(r.read_obj::<[u8; 18]>(15), {
            let mut v = [0u8; 18];
            v[0] = 0xff;
            v[17] = 0xff;
            v
        });
        r.store_u8_release(19, 1);
        assert_eq!(r.load_u8_acquire(19), 1);
        assert_eq!(
            r.read_obj::<Entry>(16).flags,
            1,
            "atomic and copy access see the same byte"
        );
    }

    #[test]
    fn phase_byte_publishes_an_entry_across_threads() {
        // The device side writes the body, then the flags byte with release; the host side
        // acquire-loads the flags and must then see the body (accelerator.md §4).
        let r = std::sync::Arc::new(DmaRegion::new(PAGE_SIZE).expect("map"));
        let writer = {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 1..=200u32 {
                    let off = (i as usize % 200) * 16;
                    r.write_obj(off + 4, &i);
                    r.store_u8_release(off + 3, 1);
                }
            })
        };
        let mut seen = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen < 200 && std::time::Instant::now() < deadline {
            seen = 0;
            for slot in 0..200usize {
                if r.load_u8_acquire(slot * 16 + 3) == 1 {
                    let v: u32 = r.read_obj(slot * 16 + 4);
                    let expected = if slot == 0 { 200 } else { slot as u32 };
                    assert_eq!(v, expected);
                    seen += 1;
                }
            }
        }
        writer.join().expect("writer");
        assert_eq!(seen, 200);
    }

    #[test]
    fn invalid_lengths_are_refused() {
        assert!(matches!(
            DmaRegion::new(0),
            Err(DmaError::InvalidLength { len: 0, .. })
        ));
        assert!(matches!(
            DmaRegion::new(MAX_REGION_LEN + 1),
            Err(DmaError::InvalidLength { .. })
        ));
    }

    /// Safe code may copy into and out of the same bytes from two threads at once (the type is
    /// `Sync`): that must be defined behaviour, with each byte read being one that was written.
    /// The values are checked here; the data race is ThreadSanitizer's to see
    /// (`RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer" cargo +nightly
    /// test -p scst-accel-dma --lib --target x86_64-unknown-linux-gnu racing`): with the plain
    /// copies it reported this test's `write_at`/`read_at`/`fill`/`read_obj` racing in `memcpy`;
    /// now only std's own thread hand-off (std is not built with the sanitizer). It cannot see
    /// into the asm block that calls memcpy, so that part of the argument is `shared_mem`'s, not the tool's.
    #[test]
    fn racing_copies_through_a_shared_region_read_only_written_bytes() {
        // Miri checks each byte's accesses for races (the copies are its `AtomicU8` loop there):
        // a few rounds are enough for it.
        const ROUNDS: u32 = if cfg!(miri) { 10 } else { 2000 };
        let r = DmaRegion::new(PAGE_SIZE).expect("map");
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..ROUNDS {
                    if round % 2 == 0 {
                        r.write_at(8, &[0xaa; 200]);
                    } else {
                        r.fill(8, 200, 0x55);
                    }
                    r.write_obj(
                        64,
                        &Entry {
                            tag: 0x5555,
                            status: 0x55,
                            flags: 0x55,
                            bytes: 0x5555_5555,
                            detail: 0x5555_5555_5555_5555,
                        },
                    );
                }
            });
            let mut out = [0u8; 200];
            for _ in 0..ROUNDS {
                r.read_at(8, &mut out);
                assert!(out.iter().all(|&b| matches!(b, 0 | 0xaa | 0x55)));
                let e: Entry = r.read_obj(64);
                assert!(e.as_bytes().iter().all(|&b| matches!(b, 0 | 0xaa | 0x55)));
            }
        });
    }

    #[test]
    #[should_panic(expected = "outside DMA region")]
    fn out_of_range_object_read_panics() {
        let r = DmaRegion::new(PAGE_SIZE).expect("map");
        let _: u64 = r.read_obj(PAGE_SIZE - 4);
    }
}
