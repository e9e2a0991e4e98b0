//! The shared region: the one place where the TCMU mapping (mailbox, command ring, data area)
//! becomes memory accesses.
//!
//! The kernel writes the region concurrently with this process, so no Rust reference into it
//! is ever formed. Every access goes through [`Region`], which checks the range against the
//! region's length (and the alignment for atomics) with an `assert!` before one short unsafe
//! access: the mailbox indices are atomics (acquire load of `cmd_head`, release store of
//! `cmd_tail`, the ordering the kernel's `smp_*` barriers pair with); ring entries and the data
//! area are copied byte-wise atomically (`scst_accel_hal::shared_mem`), so a copy that races
//! another thread's (the simulated kernel's) tears bytes but is never undefined behaviour. A
//! command's data moves between the data area and its command buffer the same way, byte-wise
//! atomic on both sides (`copy_to_pages`, `copy_from_pages`): no slice of the data area is ever
//! lent, since the kernel does write a command's blocks while it is outstanding once the ring is
//! reset (`tcmu_reset_ring` frees them for the next commands).
//!
//! The asserts are the last line, not the first: [`super::ring`] validates every offset the
//! kernel supplies and turns a bad one into a typed error before it reaches this file, so an
//! assert here firing is a bug in the ring code, not in the kernel.
// UNSAFETY: reads and writes of memory shared with the kernel (or, in tests, with the simulated
// kernel), through raw pointers; and the heap allocation that backs the simulated region.
#![allow(unsafe_code)]

use super::abi;
use scst_accel_dma::PageBuffer;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;

/// Memory shared with the kernel: a mapping that stays valid while the value lives.
///
/// # Safety
/// An implementor guarantees that `base()..base() + len()` is mapped readable and writable for
/// the whole life of the value, that `base()` is aligned to at least 8 bytes and never changes,
/// and that no Rust reference covers that range (others may write it at any time).
pub unsafe trait SharedMemory: Send + Sync {
    /// Start of the mapping.
    fn base(&self) -> NonNull<u8>;
    /// Length of the mapping in bytes.
    fn len(&self) -> usize;
    /// Whether the mapping has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bounds-checked view of a [`SharedMemory`]; clones share the mapping, which lives until the
/// last clone is dropped.
#[derive(Clone)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    // Held, never read: keeps the mapping alive as long as any view of it.
    _owner: Arc<dyn SharedMemory>,
}

// SAFETY: the mapping is `Send + Sync` (a `SharedMemory` bound) and every access through a
// `Region` is atomic (byte-wise, or the mailbox words) on memory no reference covers, so sharing
// the pointer between threads adds nothing the kernel does not already do concurrently.
unsafe impl Send for Region {}
// SAFETY: as for `Send`: no method hands out a reference into the mapping.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl Region {
    /// A view of all of `owner`.
    pub fn new(owner: Arc<dyn SharedMemory>) -> Self {
        Self {
            base: owner.base(),
            len: owner.len(),
            _owner: owner,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `off..off + len` lies inside the region.
    pub fn contains(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// The pointer to `off` after checking that `off..off + len` is inside the region.
    ///
    /// # Panics
    /// When it is not (a bug in the caller: kernel-supplied offsets are validated first).
    fn at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(
            self.contains(off, len),
            "tcmu region access {off}+{len} outside {} bytes",
            self.len
        );
        // SAFETY: `off <= self.len`, so the result stays inside (or one past) the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// The pointer to `off` for a byte-wise access of `len` bytes: inside the region (as
    /// [`Self::at`]) and clear of the mailbox's two indices, which are only ever touched as `u32`
    /// atomics (a byte copy racing the kernel's, or the simulated kernel's `AtomicU32`, store of
    /// `cmd_head` would be a mixed-size race; `cmd_tail` is ours, kept the same way).
    ///
    /// # Panics
    /// When the range is outside the region or covers a byte of either index (a caller's bug:
    /// [`Self::write_mailbox`] lays out a whole mailbox).
    fn bytes_at(&self, off: usize, len: usize) -> *mut u8 {
        let p = self.at(off, len);
        for index in [abi::MB_CMD_HEAD, abi::MB_CMD_TAIL] {
            assert!(
                off + len <= index || index + 4 <= off,
                "tcmu region byte access {off}+{len} covers the mailbox index at {index}"
            );
        }
        p
    }

    /// Write a whole mailbox at the start of the region: the bytes around the indices, then the
    /// indices as `u32` atomics (release: the layout is visible to whoever reads them). For a
    /// mailbox being made (the simulated kernel's, a test's), not one the kernel publishes.
    pub(crate) fn write_mailbox(&self, mb: &abi::Mailbox) {
        let bytes = mb.as_bytes();
        self.write(0, &bytes[..abi::MB_CMD_HEAD]);
        self.write(
            abi::MB_CMD_HEAD + 4,
            &bytes[abi::MB_CMD_HEAD + 4..abi::MB_CMD_TAIL],
        );
        self.write(abi::MB_CMD_TAIL + 4, &bytes[abi::MB_CMD_TAIL + 4..]);
        self.store_u32_release(abi::MB_CMD_HEAD, mb.cmd_head);
        self.store_u32_release(abi::MB_CMD_TAIL, mb.cmd_tail);
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4),
            "tcmu region atomic at unaligned offset {off}"
        );
        let p = self.at(off, 4);
        // SAFETY: `p` is inside the mapping (checked by `at`), 4-aligned (the base is 8-aligned
        // by the `SharedMemory` contract and `off` is a multiple of 4), and the mapping outlives
        // `&self`. An `AtomicU32` over shared memory is how both sides access these indices.
        unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }
    }

    /// Acquire load of the `u32` at `off` (the kernel's `cmd_head`): everything the kernel wrote
    /// before publishing it is visible after.
    pub fn load_u32_acquire(&self, off: usize) -> u32 {
        self.atomic_u32(off).load(Ordering::Acquire)
    }

    /// Release store of the `u32` at `off` (our `cmd_tail`): every response written before is
    /// visible to the kernel when it sees the new value.
    pub fn store_u32_release(&self, off: usize, value: u32) {
        self.atomic_u32(off).store(value, Ordering::Release);
    }

    /// Copy of `buf.len()` bytes at `off` into `buf`, byte-wise atomic
    /// ([`scst_accel_hal::shared_mem`]): a concurrent writer (the kernel, or the simulated
    /// kernel's thread) leaves torn bytes, never undefined behaviour.
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        let p = self.bytes_at(off, buf.len());
        // SAFETY: `p..p + buf.len()` is inside the mapping (checked), which outlives `&self`; every
        // access this process makes to the mapping is byte-wise atomic (this type's methods) or,
        // for the two ring indices, a `u32` atomic that no caller's byte copy covers; `buf` is a
        // Rust buffer, disjoint from memory no reference covers.
        unsafe { scst_accel_hal::shared_mem::copy_from_shared_into(p, buf) }
    }

    /// Copy of `buf` to `off`, byte-wise atomic (as [`Self::read`]).
    pub(crate) fn write(&self, off: usize, buf: &[u8]) {
        let p = self.bytes_at(off, buf.len());
        // SAFETY: as in `read`, with source and destination swapped.
        unsafe { scst_accel_hal::shared_mem::copy_to_shared(buf, p) }
    }

    /// `len` bytes at `off` set to `byte`, byte-wise atomic (as [`Self::write`]).
    pub(crate) fn fill(&self, off: usize, len: usize, byte: u8) {
        let p = self.bytes_at(off, len);
        // SAFETY: as in `write`.
        unsafe { scst_accel_hal::shared_mem::fill_shared(p, len, byte) }
    }

    /// A `T` read (byte-wise atomic) from `off`.
    pub(crate) fn read_obj<T: FromBytes + IntoBytes>(&self, off: usize) -> T {
        let mut value = T::new_zeroed();
        self.read(off, value.as_mut_bytes());
        value
    }

    /// `value` written (byte-wise atomic) to `off`.
    pub(crate) fn write_obj<T: IntoBytes + Immutable>(&self, off: usize, value: &T) {
        self.write(off, value.as_bytes());
    }

    /// Copy the `len` data-area bytes at `off` into `to` at `to_off` (a command's Data-Out into
    /// its command buffer): one copy, straight to where the data goes, byte-wise atomic on both
    /// sides, since both are shared: the kernel may write the data area (a ring reset hands a
    /// command's blocks to the next command), a device may DMA into the buffer.
    ///
    /// # Panics
    /// When either range is outside its memory (a bug in the caller).
    pub(super) fn copy_to_pages(&self, off: usize, to: &PageBuffer, to_off: usize, len: usize) {
        let from = self.at(off, len);
        let to = to.shared_range(to_off, len);
        // SAFETY: `from..from + len` is inside the mapping (checked), which outlives `&self`;
        // `to..to + len` inside the buffer (checked by `shared_range`), which outlives the borrow
        // `to`; every access this process makes to either is byte-wise atomic (this type's
        // methods, `PageBuffer`'s); the two are distinct mappings, so disjoint.
        unsafe { scst_accel_hal::shared_mem::copy_shared_to_shared(from, to.as_ptr(), len) }
    }

    /// Copy `len` bytes of `from` at `from_off` into the data area at `off` (a command's
    /// Data-In out of its command buffer), as [`Self::copy_to_pages`] the other way.
    ///
    /// # Panics
    /// When either range is outside its memory (a bug in the caller).
    pub(super) fn copy_from_pages(&self, off: usize, from: &PageBuffer, from_off: usize, len: usize) {
        let to = self.at(off, len);
        let from = from.shared_range(from_off, len);
        // SAFETY: as in `copy_to_pages`, with source and destination swapped.
        unsafe { scst_accel_hal::shared_mem::copy_shared_to_shared(from.as_ptr(), to, len) }
    }
}

/// Zeroed heap memory standing in for the kernel's mapping (the simulated kernel of
/// [`super::sim`]), 8-byte aligned.
pub struct HeapMemory {
    base: NonNull<u64>,
    words: usize,
}

impl HeapMemory {
    /// `len` zeroed bytes, rounded up to a multiple of 8.
    pub fn new(len: usize) -> Self {
        let words = len.div_ceil(8);
        let boxed: Box<[u64]> = vec![0u64; words].into_boxed_slice();
        // The allocation is only ever reached through the raw pointer from here on, so no
        // reference aliases the writes that go through `Region`.
        let raw = Box::into_raw(boxed);
        let base = NonNull::new(raw.cast::<u64>()).unwrap_or(NonNull::dangling());
        Self { base, words }
    }
}

// SAFETY: the allocation is owned by this value and freed only in its `Drop`.
unsafe impl Send for HeapMemory {}
// SAFETY: the value hands out only the raw base pointer; accesses go through `Region`.
unsafe impl Sync for HeapMemory {}

// SAFETY: `base..base + words * 8` is a live allocation until `Drop`, 8-aligned (a `u64` slice),
// and no reference to it exists after `new` (`Box::into_raw`).
unsafe impl SharedMemory for HeapMemory {
    fn base(&self) -> NonNull<u8> {
        self.base.cast()
    }

    fn len(&self) -> usize {
        self.words * 8
    }
}

impl Drop for HeapMemory {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.words);
        // SAFETY: `slice` is exactly the pointer and length `Box::into_raw` returned in `new`
        // (a zero-length slice's dangling pointer is also what `Box` expects), freed once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(len: usize) -> Region {
        Region::new(Arc::new(HeapMemory::new(len)))
    }

    #[test]
    fn bytes_atomics_and_objects_round_trip() {
        let r = region(72);
        r.write(3, &[1, 2, 3]);
        let mut b = [0u8; 5];
        r.read(2, &mut b);
        assert_eq!(b, [0, 1, 2, 3, 0]);
        r.store_u32_release(8, 0xdead_beef);
        assert_eq!(r.load_u32_acquire(8), 0xdead_beef);
        assert_eq!(r.read_obj::<u32>(8), 0xdead_beef);
        r.store_u32_release(64, 0x0102_0304);
        assert_eq!(r.load_u32_acquire(64), 0x0102_0304);
        r.write_obj(16, &0x0102_0304_0506_0708u64);
        let mut d = [0u8; 8];
        r.read(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x0102_0304_0506_0708);
        r.write(60, &[9, 9, 9, 9]);
        assert_eq!(r.read_obj::<u32>(60), 0x0909_0909);
    }

    #[test]
    fn clones_keep_the_mapping_alive() {
        let r = region(16);
        let c = r.clone();
        drop(r);
        c.write(0, &[7]);
        assert_eq!(c.read_obj::<u8>(0), 7);
    }

    #[test]
    #[should_panic(expected = "outside 16 bytes")]
    fn an_access_past_the_end_panics_before_touching_memory() {
        region(16).read(12, &mut [0u8; 5]);
    }

    #[test]
    #[should_panic(expected = "covers the mailbox index at 12")]
    fn a_byte_access_over_cmd_head_panics() {
        region(64).read(10, &mut [0u8; 4]);
    }

    #[test]
    #[should_panic(expected = "covers the mailbox index at 64")]
    fn a_byte_access_over_cmd_tail_panics() {
        region(128).write(66, &[0u8; 1]);
    }

    #[test]
    fn a_mailbox_is_written_around_its_indices() {
        use zerocopy::FromZeros;
        let r = region(128);
        let mut mb = abi::Mailbox::new_zeroed();
        mb.version = 2;
        mb.cmdr_off = 128;
        mb.cmd_head = 24;
        mb.cmd_tail = 16;
        r.write_mailbox(&mb);
        assert_eq!(r.read_obj::<u16>(0), 2);
        assert_eq!(r.load_u32_acquire(abi::MB_CMD_HEAD), 24);
        assert_eq!(r.load_u32_acquire(abi::MB_CMD_TAIL), 16);
    }

    #[test]
    #[should_panic(expected = "unaligned")]
    fn an_unaligned_atomic_panics() {
        region(16).load_u32_acquire(2);
    }

    #[test]
    fn contains_does_not_overflow() {
        let r = region(16);
        assert!(r.contains(16, 0));
        assert!(!r.contains(usize::MAX, 2));
        assert!(!r.contains(8, 9));
    }
}
