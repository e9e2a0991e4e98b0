//! Allocation statistics: a global allocator that counts heap allocations, for the binaries
//! that install it (`scst-accel`, so that `bench --layers handler` can report allocations per
//! command). Counting is off until [`start_counting`]: a process that never asks pays one
//! relaxed load of a read-mostly flag per allocation.
// UNSAFETY: a global allocator is an `unsafe impl`; every method forwards to the system allocator
// with the caller's own arguments.
#![allow(unsafe_code)]

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting `alloc`, `alloc_zeroed` and `realloc` calls once
/// [`start_counting`] was called.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAllocator;

#[inline]
fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System`, which upholds GlobalAlloc's contract; counting
// touches only atomics and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's `layout` obeys `alloc`'s contract, forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`; `new_size` obeys `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Start counting allocations (process-wide, every thread); true if the count really moves, i.e.
/// this process's global allocator is [`CountingAllocator`] (checked with one allocation).
pub fn start_counting() -> bool {
    COUNTING.store(true, Ordering::Relaxed);
    let before = allocations();
    let probe = std::hint::black_box(Box::new(0u64));
    drop(probe);
    allocations() != before
}

/// Allocations counted so far (0 if [`start_counting`] was never called, or if the process
/// does not use [`CountingAllocator`]: [`start_counting`] tells).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}
