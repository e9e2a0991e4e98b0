//! A memory mapping used as device registers: volatile, naturally aligned, bounds-checked
//! accesses. It owns its mapping (of a VFIO region, or anonymous memory standing in for a BAR)
//! and unmaps it on drop.
//!
//! Registers are little-endian (`accelerator.md` preamble); values are converted with
//! `from_le`/`to_le`, which is free on the little-endian hosts we run on.
#![allow(unsafe_code)] // UNSAFETY: mmap(2)/munmap(2) and volatile accesses through a raw pointer.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use crate::RegisterIo;

/// Order every earlier write to normal memory (descriptors, DMA buffers) before the next MMIO
/// write as the device observes them: Linux's `__iowmb()` in `writel()`. A doorbell must never
/// reach the device before the descriptor it announces.
#[inline(always)]
fn io_wmb() {
    // x86_64: stores are not reordered with stores (TSO) and an uncached MMIO store follows
    // the write-back stores before it; only the compiler must not move them (Linux: barrier()).
    #[cfg(target_arch = "x86_64")]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    // aarch64: Device-memory stores are not ordered after Normal-memory stores to the outer
    // shareable domain without a barrier; Linux uses dma_wmb() = `dmb oshst`.
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a data memory barrier: no operands, no memory or register effects besides
    // ordering.
    unsafe {
        std::arch::asm!("dmb oshst", options(nostack, preserves_flags));
    }
}

/// Order the MMIO read just done before every later read of normal memory (a status register,
/// then the completions it announces): Linux's `__iormb()` in `readl()`.
#[inline(always)]
fn io_rmb() {
    #[cfg(target_arch = "x86_64")]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in io_wmb: a barrier with no operands.
    unsafe {
        std::arch::asm!("dmb oshld", options(nostack, preserves_flags));
    }
}

/// How a 64-bit register access reaches the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access64 {
    /// One 8-byte volatile access (one PCIe TLP on x86_64 and aarch64).
    Native,
    /// Two 4-byte accesses, low word (at `offset`) then high word (at `offset + 4`): for 32-bit
    /// hosts and for device IP whose register bus has no 64-bit access (XDMA's AXI-Lite is such).
    /// Another agent can observe the register between the halves; the device contract must
    /// allow that (SCA-1 ring bases are written while the queue is stopped).
    Split,
}

impl Access64 {
    /// `Native` where pointers are 64 bits wide, `Split` elsewhere.
    pub const fn platform_default() -> Self {
        if cfg!(target_pointer_width = "64") {
            Access64::Native
        } else {
            Access64::Split
        }
    }
}

/// A mapped register window. Accesses outside it or misaligned panic with the offset: they are
/// driver bugs (the `RegisterIo` contract), never values from the device.
#[derive(Debug)]
pub struct MmioRegion {
    /// Start of the mapping; valid for `len` bytes until Drop.
    base: NonNull<u8>,
    len: usize,
    access64: Access64,
}

// SAFETY: the mapping is reached only through volatile raw accesses, never through references,
// and is not tied to the thread that made it: moving the handle is as sound as moving the fd.
unsafe impl Send for MmioRegion {}
// SAFETY: `&MmioRegion` allows only volatile, naturally aligned reads and writes through the raw
// pointer. Threads racing on the same register is what device memory expects (each access is
// one bus transaction), and every region outside this module's tests is device memory: the one
// constructor callable from outside the module, `map_fd`, is crate-private and called only for a
// VFIO region of the device (`device.rs`, BAR0). On ordinary memory, racing volatile accesses
// would be a data race, which is why no safe way to build one over such memory is offered (the
// anonymous stand-in is for this module's single-threaded tests).
unsafe impl Sync for MmioRegion {}

impl MmioRegion {
    /// Map `len` bytes of `fd` at `offset`, shared, read-write (a VFIO region's mmap offset).
    /// For device memory only (see the `Sync` impl): crate-private for that reason.
    ///
    /// # Errors
    /// EINVAL for a zero or oversized length, else the errno of mmap(2).
    pub(crate) fn map_fd(fd: BorrowedFd<'_>, offset: u64, len: u64, access64: Access64) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        Self::mmap(len, libc::MAP_SHARED, fd.as_raw_fd(), offset, access64)
    }

    /// Map `len` bytes of zeroed anonymous memory: a stand-in BAR for this module's tests, each
    /// of which touches it from one thread (ordinary memory: see the `Sync` impl).
    ///
    /// # Errors
    /// EINVAL for a zero or oversized length, else the errno of mmap(2).
    #[cfg(test)]
    fn anonymous(len: u64, access64: Access64) -> io::Result<Self> {
        Self::mmap(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0, access64)
    }

    fn mmap(
        len: u64,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: libc::off_t,
        access64: Access64,
    ) -> io::Result<Self> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0 && l <= isize::MAX as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh mapping at an address the kernel chooses (no MAP_FIXED), so no existing
        // memory is affected; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Self { base, len, access64 })
    }

    /// How 64-bit accesses are made.
    pub fn access64(&self) -> Access64 {
        self.access64
    }

    /// The byte offset of a `width`-byte access at `offset`, after the checks.
    ///
    /// # Panics
    /// When the access is misaligned or not wholly inside the region.
    fn checked(&self, offset: u64, width: u64) -> usize {
        assert!(
            offset.is_multiple_of(width),
            "misaligned {width}-byte register access at offset {offset:#x}"
        );
        let end = offset.checked_add(width);
        assert!(
            end.is_some_and(|end| end <= self.len as u64),
            "register access at offset {offset:#x} ({width} bytes) outside the {:#x}-byte region",
            self.len
        );
        offset as usize
    }

    fn load32(&self, offset: u64) -> u32 {
        let at = self.checked(offset, 4);
        // SAFETY: `at..at+4` lies inside the live mapping and is 4-aligned (checked above; the
        // mapping itself is page-aligned); volatile because the device may change it.
        let raw = unsafe { self.base.as_ptr().add(at).cast::<u32>().read_volatile() };
        io_rmb();
        u32::from_le(raw)
    }

    fn store32(&self, offset: u64, value: u32) {
        let at = self.checked(offset, 4);
        io_wmb();
        // SAFETY: as in load32: inside the mapping, aligned; volatile so the store reaches the
        // device exactly once and in program order.
        unsafe {
            self.base
                .as_ptr()
                .add(at)
                .cast::<u32>()
                .write_volatile(value.to_le())
        }
    }
}

impl RegisterIo for MmioRegion {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read32(&self, offset: u64) -> u32 {
        self.load32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.store32(offset, value)
    }

    fn read64(&self, offset: u64) -> u64 {
        let at = self.checked(offset, 8);
        match self.access64 {
            Access64::Native => {
                // SAFETY: `at..at+8` is inside the mapping and 8-aligned (checked above).
                let raw = unsafe { self.base.as_ptr().add(at).cast::<u64>().read_volatile() };
                io_rmb();
                u64::from_le(raw)
            }
            Access64::Split => {
                let low = self.load32(offset);
                let high = self.load32(offset + 4);
                (u64::from(high) << 32) | u64::from(low)
            }
        }
    }

    fn write64(&self, offset: u64, value: u64) {
        let at = self.checked(offset, 8);
        match self.access64 {
            Access64::Native => {
                io_wmb();
                // SAFETY: `at..at+8` is inside the mapping and 8-aligned (checked above).
                unsafe {
                    self.base
                        .as_ptr()
                        .add(at)
                        .cast::<u64>()
                        .write_volatile(value.to_le())
                }
            }
            Access64::Split => {
                self.store32(offset, value as u32);
                self.store32(offset + 4, (value >> 32) as u32);
            }
        }
    }
}

impl Drop for MmioRegion {
    fn drop(&mut self) {
        // SAFETY: `base..base+len` is the mapping this value created and still owns; no
        // reference into it exists (all accesses are raw), so unmapping cannot dangle anything.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::error!(
                "munmap of a {}-byte register window failed: {}",
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(access64: Access64) -> MmioRegion {
        MmioRegion::anonymous(0x1000, access64).expect("anonymous mmap")
    }

    #[test]
    fn registers_read_back_what_was_written() {
        for access in [Access64::Native, Access64::Split] {
            let r = bar(access);
            assert_eq!(r.len(), 0x1000);
            assert!(!r.is_empty());
            assert_eq!(r.read32(0x20), 0, "anonymous memory starts zeroed");
            r.write32(0x20, 0xdead_beef);
            assert_eq!(r.read32(0x20), 0xdead_beef);
            r.write64(0xff8, 0x0123_4567_89ab_cdef);
            assert_eq!(r.read64(0xff8), 0x0123_4567_89ab_cdef);
        }
    }

    #[test]
    fn a_64_bit_register_is_little_endian_low_word_first() {
        for access in [Access64::Native, Access64::Split] {
            let r = bar(access);
            r.write64(0x40, 0x1111_2222_3333_4444);
            assert_eq!(r.read32(0x40), 0x3333_4444, "{access:?}: low word at the offset");
            assert_eq!(r.read32(0x44), 0x1111_2222, "{access:?}: high word at offset + 4");
            r.write32(0x48, 0xaaaa_bbbb);
            r.write32(0x4c, 0xcccc_dddd);
            assert_eq!(r.read64(0x48), 0xcccc_dddd_aaaa_bbbb);
        }
    }

    #[test]
    #[should_panic(expected = "offset 0x1000")]
    fn read_past_the_end_panics_with_the_offset() {
        bar(Access64::Native).read32(0x1000);
    }

    #[test]
    #[should_panic(expected = "offset 0xffc")]
    fn a_64_bit_access_straddling_the_end_panics() {
        // 0xffc is 4- but not 8-aligned: caught as misaligned before the bounds check.
        bar(Access64::Split).write64(0xffc, 1);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn an_aligned_64_bit_access_past_the_end_panics() {
        bar(Access64::Split).read64(0x1000);
    }

    #[test]
    #[should_panic(expected = "misaligned 4-byte register access at offset 0x2")]
    fn misaligned_32_bit_access_panics() {
        bar(Access64::Native).write32(0x2, 1);
    }

    #[test]
    #[should_panic(expected = "misaligned 8-byte register access at offset 0x4")]
    fn misaligned_64_bit_access_panics() {
        bar(Access64::Native).read64(0x4);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn an_offset_that_would_wrap_panics_instead_of_wrapping() {
        bar(Access64::Native).read32(u64::MAX - 3);
    }

    #[test]
    fn zero_length_is_refused() {
        let err = MmioRegion::anonymous(0, Access64::Native).expect_err("empty region");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn mapping_a_file_shares_its_bytes() {
        // A file stands in for the VFIO device fd: the same mmap(MAP_SHARED) path as a BAR.
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("scst-accel-mmio-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        file.set_len(0x2000).expect("size");
        file.write_all_at(&0x5343_4131u32.to_le_bytes(), 0x1000)
            .expect("pwrite");
        let r = MmioRegion::map_fd(file.as_fd(), 0x1000, 0x1000, Access64::Native).expect("mmap");
        assert_eq!(
            r.read32(0),
            0x5343_4131,
            "offset 0 of the window is file offset 0x1000"
        );
        r.write32(4, 7);
        drop(r);
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, 0x1004).expect("pread");
        assert_eq!(
            u32::from_le_bytes(word),
            7,
            "a store through the window reaches the file"
        );
        let _ = std::fs::remove_file(&path);
    }
}
