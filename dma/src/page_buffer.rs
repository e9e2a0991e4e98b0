//! [`PageBuffer`]: an owning handle to anonymous, page-aligned memory handed to SCST as a
//! command buffer (scst_user spec §3.6, §8.9: page-aligned, writable anonymous memory,
//! `MADV_DONTFORK`).
//!
//! The memory is shared with other agents (the kernel copies initiator data into it through
//! pinned pages; a device, or the simulated device's engine threads, DMA into it), so no Rust
//! reference into it is ever handed out: access is by byte-wise atomic copy
//! ([`PageBuffer::read_at`], [`PageBuffer::write_at`], [`PageBuffer::fill`], through
//! [`scst_accel_hal::shared_mem`]) or by the kernel itself ([`PageBuffer::pread_from`]).
#![allow(unsafe_code)] // UNSAFETY: mmap/munmap and atomic copies into memory other agents write.

use crate::DmaRegion;
use scst_accel_hal::shared_mem;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// Page size this crate lays memory out in: the kernel's (SCST's buffers and every IOMMU
/// mapping are whole pages of it). Checked against the running kernel before any memory is
/// made (`kernel_page_size_matches`).
pub const PAGE_SIZE: usize = 4096;

/// The running kernel's page size, when it is not [`PAGE_SIZE`] (an aarch64 kernel with 16 or
/// 64 KiB pages): buffers rounded to 4 KiB would then be split pages, unmappable at their head
/// and tail and mapped on the IOMMU at the wrong granule.
pub(crate) fn kernel_page_size_matches() -> Result<(), usize> {
    // SAFETY: sysconf takes no pointer; it reads a value the C library keeps.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(size) {
        Ok(PAGE_SIZE) => Ok(()),
        Ok(other) => Err(other),
        Err(_) => Err(0),
    }
}

/// Errors allocating a buffer.
#[derive(Debug, thiserror::Error)]
pub enum PageBufferError {
    /// Zero or absurd length.
    #[error("invalid buffer length {0}: must be 1..=1 GiB")]
    InvalidLength(usize),
    /// The kernel's pages are not [`PAGE_SIZE`] bytes (0: it did not say).
    #[error("the kernel's page size is {0} bytes; scst-accel supports 4 KiB pages only")]
    UnsupportedPageSize(usize),
    /// mmap failed.
    #[error("cannot map {len} bytes of anonymous memory (raise the memory limit or lower queue depth)")]
    Map {
        /// Requested length.
        len: usize,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Anonymous page-aligned memory: its own mapping (made by [`PageBuffer::new`], unmapped on
/// drop), or a view of part of a larger region (an SGV pool buffer carved from an arena,
/// `sgv.rs`), which it keeps alive. Both behave the same to their users.
#[derive(Debug)]
pub struct PageBuffer {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

/// Who owns the memory a [`PageBuffer`] points into.
#[derive(Debug)]
enum Backing {
    /// This buffer's own anonymous mapping: unmapped when it drops.
    Own,
    /// A range of a region shared with other views: the `Arc` keeps the region mapped while
    /// this view exists, even past its arena's IOMMU unmap.
    View(#[expect(dead_code, reason = "held only to keep the region alive")] Arc<DmaRegion>),
}

// SAFETY: the buffer is plain memory owned by this handle (or a view keeping its region alive
// through an `Arc`); nothing about it is tied to the thread that made it, and every access is a
// bounds-checked atomic copy or a system call, so moving the handle to another thread is sound.
unsafe impl Send for PageBuffer {}
// SAFETY: no Rust reference into the memory is ever handed out, and every access Rust makes
// through `&PageBuffer` is atomic per byte (`read_at`, `write_at`, `fill` go through
// `shared_mem`, as do the simulated device's copies through its IOMMU model). Threads sharing a
// buffer may touch the same bytes at once: the bytes tear, but no data race and no mixed-size
// atomic access can happen, whatever safe code does. The kernel's accesses (SCST's copies
// through pinned pages, `pread_from`/`pwrite_to`, a device's DMA) are outside Rust's memory
// model and are byte-atomic on the hardware, like these copies. One owner per command buffer at
// a time (the worker serving its command, the store request, then the device through the ring
// protocol) is what keeps the data whole: correctness, not soundness.
unsafe impl Sync for PageBuffer {}

impl PageBuffer {
    /// Map `len` bytes (rounded up to whole pages), zero-filled.
    ///
    /// # Errors
    /// [`PageBufferError`] if the length is invalid or the kernel refuses the mapping.
    pub fn new(len: usize) -> Result<Self, PageBufferError> {
        if len == 0 || len > (1 << 30) {
            return Err(PageBufferError::InvalidLength(len));
        }
        kernel_page_size_matches().map_err(PageBufferError::UnsupportedPageSize)?;
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(PageBufferError::Map {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `ptr..ptr+len` is the mapping just created. DONTFORK keeps a forked child from
        // sharing pinned pages (spec §8.9); failure only matters for forking programs, so it is
        // logged rather than fatal. Miri has no madvise (and no fork): skipped under it.
        if !cfg!(miri) && unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) } != 0 {
            log::debug!(
                "madvise(MADV_DONTFORK) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(PageBufferError::InvalidLength(len))?;
        Ok(Self {
            ptr,
            len,
            backing: Backing::Own,
        })
    }

    /// A view of `len` bytes of `region` at `offset` (both whole pages), keeping the region
    /// alive: an SGV buffer carved from an arena.
    ///
    /// # Panics
    /// If the range is empty, not page-aligned or outside the region: offsets come from the
    /// pool's own chunk arithmetic, so a bad one is a pool bug.
    pub(crate) fn view(region: Arc<DmaRegion>, offset: usize, len: usize) -> Self {
        assert!(
            len > 0 && offset.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE),
            "view {offset}+{len} of a DMA region is not whole pages"
        );
        let ptr = region.ptr_at(offset, len);
        Self {
            ptr,
            len,
            backing: Backing::View(region),
        }
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The user virtual address SCST sees (`pbuf`).
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn check(&self, offset: usize, len: usize) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|end| end <= self.len),
            "access {offset}+{len} outside buffer of {} bytes",
            self.len
        );
    }

    /// Copy `out.len()` bytes starting at `offset` out of the buffer.
    ///
    /// # Concurrency
    /// A byte-wise atomic copy ([`shared_mem`]): when another thread, the kernel or a device
    /// writes these bytes meanwhile, `out` gets some old and some new bytes (the same holds for
    /// the writers below). Defined behaviour, but torn data: one owner per buffer at a time is
    /// what keeps it whole.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: the range was checked to lie inside the mapping, which lives as long as self
        // and is only accessed byte-wise atomically (the type's `Sync`); `out` is a distinct
        // Rust allocation, so the ranges cannot overlap.
        unsafe { shared_mem::copy_from_shared_into(self.ptr.as_ptr().add(offset), out) }
    }

    /// Copy `data` into the buffer at `offset`.
    ///
    /// # Concurrency
    /// A byte-wise atomic copy, as [`Self::read_at`].
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: as in `read_at`: in bounds of the live mapping, only ever accessed byte-wise
        // atomically, and disjoint from `data`.
        unsafe { shared_mem::copy_to_shared(data, self.ptr.as_ptr().add(offset)) }
    }

    /// The address of the `len` bytes at `offset`, for a copy between this buffer and other
    /// memory shared with the kernel or a device (`shared_mem::copy_shared_to_shared`: the TCMU
    /// data area). A raw pointer, never a reference: the bytes may be written by others at any
    /// time, so they may be reached only by byte-wise atomic access, and only while `self`
    /// lives (the pointer carries no lifetime; its user's `unsafe` block argues both).
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn shared_range(&self, offset: usize, len: usize) -> NonNull<u8> {
        self.check(offset, len);
        // SAFETY: `offset <= self.len` (checked), so the result stays inside (or one past) the
        // mapping.
        unsafe { self.ptr.add(offset) }
    }

    /// Fill `len` bytes at `offset` with `byte`.
    ///
    /// # Concurrency
    /// As [`Self::write_at`].
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: the range was checked to lie inside the mapping, which is only accessed
        // byte-wise atomically; no reference into it is formed.
        unsafe { shared_mem::fill_shared(self.ptr.as_ptr().add(offset), len, byte) }
    }
}

impl PageBuffer {
    /// One pread(2) of up to `len` bytes from `fd` at `file_offset`, straight into the buffer
    /// at `offset`: the kernel fills the pages itself (with O_DIRECT, by DMA from the device),
    /// so file stores move data between the medium and a command buffer with no copy in the
    /// handler. Returns the bytes read (short at the end of the file, 0 past it).
    ///
    /// # Concurrency
    /// The kernel's copy is outside Rust's memory model and, like a device's DMA, made of
    /// hardware byte accesses: a Rust copy of the same bytes meanwhile (atomic, as all of this
    /// type's are) reads or leaves torn data, nothing worse.
    ///
    /// # Errors
    /// The errno of pread(2) (EINTR included: the caller retries); InvalidInput when
    /// `file_offset` does not fit an `off_t`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn pread_from(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> io::Result<usize> {
        self.check(offset, len);
        let at =
            libc::off_t::try_from(file_offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the range was checked to lie inside the mapping, which lives as long as self;
        // the kernel writes at most `len` bytes there. No Rust reference into the memory exists
        // (the type's contract), so a write by the kernel aliases nothing, and Rust's own
        // accesses to it are atomic ("Concurrency" above).
        let n = unsafe { libc::pread(fd.as_raw_fd(), self.ptr.as_ptr().add(offset).cast(), len, at) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// One pwrite(2) of up to `len` bytes of the buffer at `offset` to `fd` at `file_offset`.
    /// Returns the bytes written.
    ///
    /// # Errors
    /// The errno of pwrite(2) (EINTR included: the caller retries); InvalidInput when
    /// `file_offset` does not fit an `off_t`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn pwrite_to(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> io::Result<usize> {
        self.check(offset, len);
        let at =
            libc::off_t::try_from(file_offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: as in `pread_from`; the kernel only reads the checked range.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), self.ptr.as_ptr().add(offset).cast(), len, at) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        if matches!(self.backing, Backing::View(_)) {
            // The region is unmapped by its own drop, when its last view and arena are gone.
            return;
        }
        if crate::unwinding::leaks_memory("command buffer", self.addr(), self.len) {
            return;
        }
        // SAFETY: unmapping exactly the mapping created in `new`; no reference into it exists.
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            log::error!(
                "munmap of {} bytes at {:#x} failed: {}",
                self.len,
                self.addr(),
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_rounded() {
        let b = PageBuffer::new(5000).expect("map");
        assert_eq!(b.len(), 8192);
        assert_eq!(b.addr() % PAGE_SIZE as u64, 0);
    }

    #[test]
    fn copies_round_trip() {
        let b = PageBuffer::new(4096).expect("map");
        b.write_at(100, b"scst");
        let mut out = [0u8; 4];
        b.read_at(100, &mut out);
        assert_eq!(&out, b"scst");
        b.fill(0, 4096, 0xab);
        b.read_at(4092, &mut out);
        assert_eq!(out, [0xab; 4]);
    }

    #[test]
    #[should_panic(expected = "outside buffer")]
    fn out_of_range_access_panics() {
        let b = PageBuffer::new(4096).expect("map");
        b.write_at(4095, b"xy");
    }

    #[test]
    fn pread_and_pwrite_move_file_data_in_place() {
        use std::io::Read;
        use std::io::Seek;
        use std::os::fd::AsFd;
        let mut file = tempfile_in_target();
        let b = PageBuffer::new(8192).expect("map");
        b.fill(4096, 4096, 0x5a);
        // pread(2) and pwrite(2) may move fewer bytes than asked (Miri makes them short on
        // purpose): each call's count is checked, and the rest asked for again, as callers do.
        let mut done = 0;
        while done < 100 {
            let n = b.pwrite_to(file.as_fd(), 512 + done as u64, 4096 + done, 100 - done);
            let n = n.expect("pwrite");
            assert!(
                (1..=100 - done).contains(&n),
                "pwrite moved {n} of {}",
                100 - done
            );
            done += n;
        }
        let mut bytes = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut bytes).expect("read");
        assert_eq!(bytes.len(), 612);
        assert!(bytes[512..].iter().all(|&x| x == 0x5a));
        let mut done = 0;
        loop {
            let n = b
                .pread_from(file.as_fd(), done as u64, done, 4096 - done)
                .expect("pread");
            assert!(n <= 4096 - done);
            if n == 0 {
                break;
            }
            done += n;
        }
        assert_eq!(done, 612, "pread stops at the end of the file");
        let mut out = [0u8; 2];
        b.read_at(511, &mut out);
        assert_eq!(out, [0, 0x5a]);
        assert_eq!(b.pread_from(file.as_fd(), 612, 0, 10).expect("pread at end"), 0);
    }

    /// An anonymous file (no tempfile dependency in this crate).
    fn tempfile_in_target() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "pagebuf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("unlink");
        file
    }

    /// As `region::tests::racing_copies_through_a_shared_region_read_only_written_bytes`, for
    /// the command buffers: copies of the same bytes from two threads through `&PageBuffer`.
    #[test]
    fn racing_copies_through_a_shared_buffer_read_only_written_bytes() {
        // Miri checks each byte's accesses for races (the copies are its `AtomicU8` loop there):
        // a few rounds of a shorter run are enough for it.
        const ROUNDS: u32 = if cfg!(miri) { 6 } else { 2000 };
        const LEN: usize = if cfg!(miri) { 300 } else { 4000 };
        let b = PageBuffer::new(PAGE_SIZE).expect("map");
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..ROUNDS {
                    if round % 2 == 0 {
                        b.write_at(3, &[0xaa; LEN]);
                    } else {
                        b.fill(3, LEN, 0x55);
                    }
                }
            });
            let mut out = [0u8; LEN];
            for _ in 0..ROUNDS {
                b.read_at(3, &mut out);
                assert!(out.iter().all(|&x| matches!(x, 0 | 0xaa | 0x55)));
            }
        });
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(matches!(
            PageBuffer::new(0),
            Err(PageBufferError::InvalidLength(0))
        ));
    }
}
