//! Copies into and out of memory shared with a device: byte-wise atomic copies (the semantics of
//! C++'s proposed `atomic_load_per_byte_memcpy`, P1478, and of Rust's `AtomicPerByte` RFC 3301),
//! so that two agents touching the same bytes at once get torn data, never undefined behaviour.
//!
//! Memory a device may DMA into (`DmaRegion`, `PageBuffer` in the dma crate) is reached by other
//! agents behind any Rust borrow: the device itself, the simulated device's engine threads (Rust
//! threads, through [`crate::sim::Iommu`]) and the kernel. A plain `copy_nonoverlapping` into such
//! memory while another thread writes it is a data race, which is undefined behaviour in Rust's
//! memory model even when the torn bytes would be thrown away. Every access to that memory goes
//! through the functions here instead ([`copy_from_shared`] and its slice form, [`copy_to_shared`],
//! [`fill_shared`]), each of which acts as one relaxed atomic access per byte:
//!
//! - **Per byte, not per word.** Rust forbids racing atomic accesses that partially overlap
//!   ("mixed-size accesses", `std::sync::atomic`, *Memory model*): a copy that used `AtomicU64`
//!   where aligned and `AtomicU8` at its edges would be UB against another copy of the same bytes
//!   with other edges (the host reading a completion entry as words while the device writes its
//!   phase byte). Byte accesses never partially overlap, and the phase byte's acquire load
//!   ([`std::sync::atomic::AtomicU8`]) is one of them.
//! - **The C library's memcpy, called from an asm block, on x86_64.** An `AtomicU8` loop moves
//!   a byte per cycle, about 6x slower than memcpy even from DRAM, and a relaxed `AtomicU64`
//!   loop is 1.5x slower there (it cannot use vector registers), which the command path cannot
//!   afford (`docs/performance.md`, *Byte-wise atomic copies*). So on x86_64 copies of [`SHORT`]
//!   bytes and more call memcpy from an inline assembly block (fills are one `rep stosb`). An
//!   inline assembly block may do what some sequence of Rust operations could do (the
//!   Reference's rules for inline assembly), and the block is opaque to the compiler, which
//!   therefore assumes it reads and writes the memory behind its pointers and cannot turn it into
//!   its own non-atomic `memcpy`. What the block does, machine loads and stores of bytes of the
//!   two ranges (vector-wide, some bytes of overlapping pieces loaded and stored twice, the last
//!   value being the source's), is what relaxed `AtomicU8` loads and stores of those bytes
//!   could do: x86 byte accesses are single-copy atomic, and the liberties memcpy takes (stores
//!   that become visible out of order, fast strings or non-temporal stores, Intel SDM vol. 1
//!   §7.3.9.3 and vol. 3 §9.2) are ones relaxed ordering allows; glibc's memcpy touches nothing
//!   outside the two ranges. A `rep movsb` was the first choice (the same argument, one
//!   instruction), but it cost 6 % of the CPU of the RAM store's commands against glibc's
//!   AVX-512 memcpy on this machine (`docs/performance.md`); the C library's own routine is
//!   as fast as memcpy by construction.
//! - **Ordering is the caller's.** Nothing here orders the copy against other accesses: a ring
//!   protocol still publishes with a release store (or a release fence before the last atomic
//!   write) and consumes with an acquire load, as before.
//!
//! Elsewhere than x86_64 every copy is the `AtomicU8` loop: correct, but about a byte per cycle.
//!
//! **Under Miri (`cfg(miri)`) every copy is the `AtomicU8` loop too**, x86_64 included: Miri
//! cannot run inline assembly (nor call memcpy from it), and the loop is the semantics the asm
//! path claims to have, so Miri checks every caller's accesses to shared memory (bounds,
//! provenance, aliasing, races against other threads' byte-wise accesses) as if they were the
//! fast path. What Miri cannot check is the asm path's own claim above; the tests below hold
//! both paths to the same results natively (`docs/miri.md`).
// UNSAFETY: raw-pointer atomic accesses, memcpy called from asm and `rep stosb` on memory other
// agents share.
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;

/// Copies shorter than this take the per-byte atomic loop even on x86_64: a call out of an asm
/// block (every caller-saved register spilled) costs more than 16 bytes' loop.
pub const SHORT: usize = 16;

/// Copy `len` bytes of shared memory at `src` to `dst`, as a relaxed atomic load of each byte: a
/// concurrent writer of those bytes (a device, another thread copying with [`copy_to_shared`])
/// leaves some old and some new bytes at `dst`, never undefined behaviour.
///
/// `dst` is a raw pointer so that a caller can fill a `MaybeUninit<T>` (a `FromBytes` value
/// read out of a ring); [`copy_from_shared_into`] takes a slice.
///
/// # Safety
/// `src..src + len` must be valid for reads for the whole call, and every access to it by
/// other threads of this process that may run at the same time must itself be a byte-wise atomic
/// access: a copy from this module or an `AtomicU8` operation (other agents, devices and the
/// kernel, are outside this rule). `dst..dst + len` must be valid for writes, not read or written
/// by anyone else during the call, and disjoint from `src`.
pub unsafe fn copy_from_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if len >= SHORT {
        // SAFETY: `src` is valid for `len` reads and `dst` for `len` writes, disjoint (the
        // caller's contract); memcpy moves exactly `len` bytes.
        unsafe { opaque_memcpy(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract, which `load_bytes` repeats.
    unsafe { load_bytes(src, dst, len) }
}

/// [`copy_from_shared`] into a slice: `dst.len()` bytes.
///
/// # Safety
/// As [`copy_from_shared`] for `src..src + dst.len()`.
pub unsafe fn copy_from_shared_into(src: *const u8, dst: &mut [u8]) {
    // SAFETY: `dst` is a slice of `dst.len()` writable bytes this call borrows exclusively; a
    // Rust reference cannot overlap shared memory (the caller's contract); the rest is the
    // caller's.
    unsafe { copy_from_shared(src, dst.as_mut_ptr(), dst.len()) }
}

/// Copy `src` into shared memory at `dst`, as a relaxed atomic store of each byte.
///
/// # Safety
/// `dst..dst + src.len()` must be valid for writes for the whole call, with the same contract
/// for concurrent access as [`copy_from_shared`]; `src` cannot overlap it.
pub unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if src.len() >= SHORT {
        // SAFETY: as in `copy_from_shared`, with the roles swapped: `src` is a `&[u8]` of
        // `src.len()` bytes, `dst` valid for that many writes (the caller's contract), disjoint.
        unsafe { opaque_memcpy(src.as_ptr(), dst, src.len()) };
        return;
    }
    // SAFETY: the caller's contract, which `store_bytes` repeats.
    unsafe { store_bytes(src, dst) }
}

/// Copy `len` bytes of shared memory at `src` to shared memory at `dst`, as a relaxed atomic
/// load and store of each byte: both sides may be touched by other agents meanwhile (the TCMU
/// data area, which the kernel writes, to a command buffer a device may DMA into).
///
/// # Safety
/// `src..src + len` as for [`copy_from_shared`], `dst..dst + len` as for [`copy_to_shared`]: both
/// valid for the whole call, every concurrent access to either by this process's threads
/// byte-wise atomic; and the two ranges disjoint.
pub unsafe fn copy_shared_to_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if len >= SHORT {
        // SAFETY: `src` valid for `len` reads and `dst` for `len` writes, disjoint (the caller's
        // contract); memcpy from the asm block is per byte what relaxed atomic loads of one side
        // and stores to the other may do (module doc), whichever side is shared.
        unsafe { opaque_memcpy(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract, which `move_bytes` repeats.
    unsafe { move_bytes(src, dst, len) }
}

/// Set `len` bytes of shared memory at `dst` to `byte`, as a relaxed atomic store of each.
///
/// # Safety
/// As [`copy_to_shared`] for `dst..dst + len`.
pub unsafe fn fill_shared(dst: *mut u8, len: usize, byte: u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if len >= SHORT {
        // SAFETY: `dst` is valid for `len` writes (the caller's contract); `rep stosb` stores
        // exactly `len` bytes forward from it.
        unsafe { rep_stosb(dst, len, byte) };
        return;
    }
    // SAFETY: the caller's contract, which `fill_bytes` repeats.
    unsafe { fill_bytes(dst, len, byte) }
}

/// The portable [`copy_from_shared`]: an `AtomicU8` load per byte.
///
/// # Safety
/// As [`copy_from_shared`].
unsafe fn load_bytes(src: *const u8, dst: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: `src + i` and `dst + i` are inside the caller's ranges; a u8 is always
        // aligned; every concurrent access to the source byte is atomic and byte-sized, and
        // nothing else touches `dst`.
        unsafe {
            dst.add(i)
                .write(AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed))
        };
    }
}

/// The portable [`copy_shared_to_shared`]: an `AtomicU8` load and an `AtomicU8` store per byte.
///
/// # Safety
/// As [`copy_shared_to_shared`].
unsafe fn move_bytes(src: *const u8, dst: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: `src + i` and `dst + i` are inside the caller's ranges; a u8 is always
        // aligned; every concurrent access to either byte is atomic and byte-sized.
        let byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}

/// The portable [`copy_to_shared`]: an `AtomicU8` store per byte.
///
/// # Safety
/// As [`copy_to_shared`].
unsafe fn store_bytes(src: &[u8], dst: *mut u8) {
    for (i, &byte) in src.iter().enumerate() {
        // SAFETY: as in `load_bytes`: inside the caller's range, aligned, and every concurrent
        // access to the byte is atomic and byte-sized.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}

/// The portable [`fill_shared`]: an `AtomicU8` store per byte.
///
/// # Safety
/// As [`fill_shared`].
unsafe fn fill_bytes(dst: *mut u8, len: usize, byte: u8) {
    for i in 0..len {
        // SAFETY: as in `store_bytes`.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}

/// `len` bytes from `src` to `dst` by the C library's memcpy, called from an asm block the
/// compiler cannot see into: per byte, what a relaxed atomic load and store may do (module doc).
///
/// # Safety
/// `src` valid for `len` reads, `dst` for `len` writes, not overlapping.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
unsafe fn opaque_memcpy(src: *const u8, dst: *mut u8, len: usize) {
    let memcpy: unsafe extern "C" fn(*mut libc::c_void, *const libc::c_void, usize) -> *mut libc::c_void =
        libc::memcpy;
    // SAFETY: the caller's contract bounds both ranges; the block calls the C library's memcpy
    // with them under the C ABI (every register it may clobber declared), the stack aligned
    // for a call on entry (no `nostack`).
    unsafe {
        std::arch::asm!(
            "call {memcpy}",
            memcpy = in(reg) memcpy,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rdx") len => _,
            clobber_abi("C"),
        );
    }
}

/// `len` copies of `byte` from `dst`, forward, by one `rep stosb`: per byte, a relaxed atomic
/// store (module doc).
///
/// # Safety
/// `dst` valid for `len` writes.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
unsafe fn rep_stosb(dst: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller's contract bounds the range; `rep stosb` stores exactly `len` bytes
    // forward from `dst` (DF is clear on entry and not changed).
    unsafe {
        std::arch::asm!(
            "rep stosb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            in("al") byte,
            options(nostack, preserves_flags),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Load = unsafe fn(*const u8, *mut u8, usize);
    type Store = unsafe fn(&[u8], *mut u8);
    type Fill = unsafe fn(*mut u8, usize, u8);

    /// The public copies (on x86_64: memcpy from an asm block from [`SHORT`] bytes up) and the portable loops
    /// they fall back on, so both are held to the same results on any host.
    const LOADS: [(&str, Load); 2] = [("copy_from_shared", copy_from_shared), ("load_bytes", load_bytes)];
    const STORES: [(&str, Store); 2] = [("copy_to_shared", copy_to_shared), ("store_bytes", store_bytes)];
    const FILLS: [(&str, Fill); 2] = [("fill_shared", fill_shared), ("fill_bytes", fill_bytes)];

    /// A pattern no two nearby bytes share, so a shifted or short copy shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every length to 70 (both sides of [`SHORT`], every word edge), page-sized ones and 128 KiB
    /// (under Miri, which interprets every byte's access and takes the loop for every length,
    /// a few around [`SHORT`] and a word's edges).
    fn lengths() -> Vec<usize> {
        if cfg!(miri) {
            vec![0, 1, 7, 8, 9, 15, 16, 17, 40, 257]
        } else {
            (0..=70).chain([4095, 4096, 4097, 128 << 10]).collect()
        }
    }

    /// Offsets of the shared side's first byte: every alignment against a word (0..=8) and a few
    /// against a cache line (under Miri, fewer).
    fn offsets() -> Vec<usize> {
        if cfg!(miri) {
            vec![0, 1, 7, 63]
        } else {
            (0..=8).chain([61, 63, 64]).collect()
        }
    }

    const ROOM: usize = if cfg!(miri) { 257 + 128 } else { (128 << 10) + 256 };

    type Move = unsafe fn(*const u8, *mut u8, usize);
    const MOVES: [(&str, Move); 2] = [
        ("copy_shared_to_shared", copy_shared_to_shared),
        ("move_bytes", move_bytes),
    ];

    #[test]
    fn copies_between_shared_memories_land_exactly_at_every_alignment_and_length() {
        let mut to = vec![0u8; ROOM];
        for (name, copy) in MOVES {
            for len in lengths() {
                for off in offsets() {
                    to.fill(0xa5);
                    let mut from = vec![0u8; ROOM];
                    let data = pattern(len, off as u8);
                    from[off..off + len].copy_from_slice(&data);
                    // SAFETY: both ranges lie inside their own allocations, which nothing else
                    // touches during the copy.
                    unsafe { copy(from.as_ptr().add(off), to.as_mut_ptr().add(64 - off.min(64)), len) };
                    let at = 64 - off.min(64);
                    let what = format!("{name}: {len} bytes from {off} to {at}");
                    assert_eq!(&to[at..at + len], &data[..], "{what}");
                    assert!(to[..at].iter().all(|&b| b == 0xa5), "wrote before, {what}");
                    assert!(to[at + len..].iter().all(|&b| b == 0xa5), "wrote past, {what}");
                }
            }
        }
    }

    #[test]
    fn copies_into_shared_memory_land_exactly_at_every_alignment_and_length() {
        let mut shared = vec![0u8; ROOM];
        for (name, store) in STORES {
            for len in lengths() {
                for off in offsets() {
                    shared.fill(0xa5);
                    let data = pattern(len, off as u8);
                    // SAFETY: `off + len` is within `shared`, which nothing else touches; `data`
                    // is another allocation.
                    unsafe { store(&data, shared.as_mut_ptr().add(off)) };
                    let at = format!("{name}: {len} bytes at {off}");
                    assert_eq!(&shared[off..off + len], &data[..], "{at}");
                    assert!(shared[..off].iter().all(|&b| b == 0xa5), "wrote before, {at}");
                    assert!(shared[off + len..].iter().all(|&b| b == 0xa5), "wrote past, {at}");
                }
            }
        }
    }

    #[test]
    fn copies_out_of_shared_memory_read_exactly_at_every_alignment_and_length() {
        let shared = pattern(ROOM, 7);
        for (name, load) in LOADS {
            for len in lengths() {
                for off in offsets() {
                    let mut out = vec![0x5au8; len + 2];
                    // SAFETY: `off + len` is within `shared`, which nothing writes; `out` is
                    // another allocation with room for `len` bytes after its first.
                    unsafe { load(shared.as_ptr().add(off), out.as_mut_ptr().add(1), len) };
                    let at = format!("{name}: {len} bytes at {off}");
                    assert_eq!(&out[1..=len], &shared[off..off + len], "{at}");
                    assert_eq!((out[0], out[len + 1]), (0x5a, 0x5a), "wrote outside, {at}");
                }
            }
        }
    }

    #[test]
    fn fills_of_shared_memory_cover_exactly_the_range_at_every_alignment_and_length() {
        let mut shared = vec![0u8; ROOM];
        for (name, fill) in FILLS {
            for len in lengths() {
                for off in offsets() {
                    shared.fill(0x11);
                    // SAFETY: `off + len` is within `shared`, which nothing else touches.
                    unsafe { fill(shared.as_mut_ptr().add(off), len, 0xee) };
                    let at = format!("{name}: {len} bytes at {off}");
                    assert!(shared[off..off + len].iter().all(|&b| b == 0xee), "{at}");
                    assert!(shared[..off].iter().all(|&b| b == 0x11), "filled before, {at}");
                    assert!(
                        shared[off + len..].iter().all(|&b| b == 0x11),
                        "filled past, {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_slice_copy_out_reads_its_whole_slice() {
        let shared = pattern(100, 3);
        let mut out = [0u8; 40];
        // SAFETY: 40 bytes at 30 are within `shared`, which nothing writes.
        unsafe { copy_from_shared_into(shared.as_ptr().add(30), &mut out) };
        assert_eq!(&out[..], &shared[30..70]);
    }

    /// A writer and a reader of the same bytes at once: the reader sees, byte by byte, one of the
    /// values written (torn between copies, nothing else). That the race is defined is what the
    /// module argues; this checks the values a race yields.
    #[test]
    fn racing_copies_tear_but_only_into_bytes_that_were_written() {
        // Under Miri, which checks every byte's accesses for races, fewer and shorter rounds (still
        // at least SHORT bytes, the length that takes the fast path natively).
        const LEN: usize = if cfg!(miri) { 64 } else { 4096 };
        const ROUNDS: u32 = if cfg!(miri) { 20 } else { 2000 };
        let shared: Vec<AtomicU8> = (0..LEN).map(|_| AtomicU8::new(0)).collect();
        let shared = &shared[..];
        std::thread::scope(|s| {
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let data = [if round % 2 == 0 { 0xaa } else { 0x55 }; LEN];
                    // SAFETY: `shared` outlives the scope; every access to it is one of this
                    // module's byte-wise atomic copies.
                    unsafe { copy_to_shared(&data, shared.as_ptr().cast::<u8>().cast_mut()) };
                }
            });
            let mut out = [0u8; LEN];
            for _ in 0..ROUNDS {
                // SAFETY: as above.
                unsafe { copy_from_shared_into(shared.as_ptr().cast::<u8>(), &mut out) };
                assert!(out.iter().all(|&b| matches!(b, 0 | 0xaa | 0x55)));
            }
        });
    }
}
