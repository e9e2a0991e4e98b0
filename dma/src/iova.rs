//! [`IovaAllocator`]: device addresses in an IOMMU window, first fit over a sorted free list.
//!
//! Every mapping a device can reach (rings, scatter lists, pool buffers) gets its own IOVA
//! range from one allocator per IOMMU domain, shared behind a mutex. Allocation is rare (the
//! pool maps each buffer once and reuses it), so a `BTreeMap` free list is plenty.

use crate::PAGE_SIZE;
use std::collections::BTreeMap;

/// Hands out ranges of `[base, base + size)`, aligned as asked, first fit, coalescing freed
/// neighbours. Never returns IOVA 0: a window starting at 0 loses its first page, so a zeroed
/// descriptor (`addr` 0) can never point at live memory.
#[derive(Debug)]
pub struct IovaAllocator {
    base: u64,
    end: u64,
    /// Free ranges: start → length, disjoint, never adjacent (adjacent ones are merged).
    free: BTreeMap<u64, u64>,
    allocated: u64,
}

impl IovaAllocator {
    /// An allocator for `[base, base + size)` (clamped at the top of the address space). When
    /// `base` is 0 the first page is held back (never handed out).
    pub fn new(base: u64, size: u64) -> Self {
        let end = base.saturating_add(size);
        let start = if base == 0 {
            (PAGE_SIZE as u64).min(end)
        } else {
            base
        };
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        Self {
            base: start,
            end,
            free,
            allocated: 0,
        }
    }

    /// Allocate `len` bytes aligned to `align` (a power of two; 0 means 1). Returns the lowest
    /// fitting address, or `None` when no free range fits (or `len` is 0, or `align` is not a
    /// power of two: both are caller bugs, logged at debug).
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(1);
        if len == 0 || !align.is_power_of_two() {
            log::debug!("IOVA allocation of {len} bytes aligned to {align:#x} refused: invalid request");
            return None;
        }
        let (start, flen, at) = self.free.iter().find_map(|(&start, &flen)| {
            let at = start.checked_next_multiple_of(align)?;
            let fits = at.checked_add(len)? <= start + flen;
            fits.then_some((start, flen, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let tail = start + flen - (at + len);
        if tail > 0 {
            self.free.insert(at + len, tail);
        }
        self.allocated += len;
        Some(at)
    }

    /// Return `iova..iova + len` to the free list, merging it with free neighbours. A range
    /// outside the window or overlapping a free range (a double free) is a caller bug: it is
    /// logged and ignored, so the free list is never corrupted.
    pub fn free(&mut self, iova: u64, len: u64) {
        let Some(end) = iova.checked_add(len) else {
            log::error!("IOVA free of {len} bytes at {iova:#x} overflows; ignored");
            return;
        };
        if len == 0 || iova < self.base || end > self.end {
            log::error!(
                "IOVA free of {len} bytes at {iova:#x} is outside the window {:#x}..{:#x}; ignored",
                self.base,
                self.end
            );
            return;
        }
        let before = self.free.range(..end).next_back().map(|(&s, &l)| (s, l));
        if before.is_some_and(|(s, l)| s + l > iova) {
            log::error!(
                "IOVA free of {len} bytes at {iova:#x} overlaps a free range (double free?); ignored"
            );
            return;
        }
        let mut start = iova;
        let mut total = len;
        if let Some((s, l)) = before.filter(|&(s, l)| s + l == iova) {
            self.free.remove(&s);
            start = s;
            total += l;
        }
        if let Some(l) = self.free.remove(&end) {
            total += l;
        }
        self.free.insert(start, total);
        self.allocated = self.allocated.saturating_sub(len);
    }

    /// Bytes currently handed out.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Number of disjoint free ranges (1 when everything is free: proof of coalescing).
    pub fn free_ranges(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: u64 = PAGE_SIZE as u64;

    #[test]
    fn allocations_are_aligned_first_fit_and_in_the_window() {
        let mut a = IovaAllocator::new(0x1_0000_0000, 64 * P);
        let x = a.alloc(P, P).expect("x");
        assert_eq!(x, 0x1_0000_0000);
        let y = a.alloc(100, 16 * P).expect("y");
        assert_eq!(y % (16 * P), 0);
        assert_eq!(y, 0x1_0000_0000 + 16 * P);
        // The gap left by alignment is used first by a small request.
        assert_eq!(a.alloc(P, P), Some(0x1_0000_0000 + P));
        assert_eq!(a.allocated(), 2 * P + 100);
    }

    #[test]
    fn never_returns_zero() {
        let mut a = IovaAllocator::new(0, 4 * P);
        let first = a.alloc(1, 1).expect("alloc");
        assert_ne!(first, 0);
        assert_eq!(first, P, "the first page of a window at 0 is held back");
        assert_eq!(a.alloc(3 * P, 1), None, "only 3 pages minus one byte remain");
        // A window that is only the zero page has nothing to give.
        assert_eq!(IovaAllocator::new(0, P).alloc(1, 1), None);
    }

    #[test]
    fn exhaustion_and_reuse() {
        let mut a = IovaAllocator::new(P, 4 * P);
        let v: Vec<u64> = (0..4).map(|_| a.alloc(P, P).expect("fits")).collect();
        assert_eq!(a.alloc(1, 1), None);
        a.free(v[2], P);
        assert_eq!(a.alloc(P, P), Some(v[2]));
        assert_eq!(a.alloc(0, 1), None, "zero length is refused");
        assert_eq!(a.alloc(1, 3), None, "non power-of-two alignment is refused");
    }

    #[test]
    fn freeing_coalesces_neighbours_in_any_order() {
        let mut a = IovaAllocator::new(P, 8 * P);
        let v: Vec<u64> = (0..8).map(|_| a.alloc(P, P).expect("fits")).collect();
        for i in [1usize, 3, 2, 7, 0, 5, 6, 4] {
            a.free(v[i], P);
        }
        assert_eq!(a.free_ranges(), 1);
        assert_eq!(a.allocated(), 0);
        assert_eq!(a.alloc(8 * P, P), Some(P), "the whole window is one range again");
    }

    #[test]
    fn double_and_foreign_frees_are_ignored() {
        let mut a = IovaAllocator::new(P, 8 * P);
        let x = a.alloc(2 * P, P).expect("x");
        a.free(x, 2 * P);
        a.free(x, 2 * P); // double free
        a.free(x + P, P); // overlaps a free range
        a.free(100 * P, P); // outside the window
        a.free(u64::MAX, 2); // overflows
        assert_eq!(a.allocated(), 0);
        assert_eq!(a.free_ranges(), 1);
        assert_eq!(a.alloc(8 * P, 1), Some(P));
        assert_eq!(a.alloc(1, 1), None, "no range was invented by the bad frees");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { len: u64, align_log2: u32 },
        Free { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..48, 0u32..5).prop_map(|(len, align_log2)| Op::Alloc { len, align_log2 }),
            any::<usize>().prop_map(|pick| Op::Free { pick }),
        ]
    }

    /// The model: the lowest aligned address whose range overlaps no live allocation.
    fn model_first_fit(live: &[(u64, u64)], base: u64, end: u64, len: u64, align: u64) -> Option<u64> {
        let mut at = base.next_multiple_of(align);
        while at + len <= end {
            if live.iter().all(|&(s, l)| at + len <= s || s + l <= at) {
                return Some(at);
            }
            at += align;
        }
        None
    }

    proptest! {
        #[test]
        fn matches_a_first_fit_model(ops in proptest::collection::vec(op(), 1..120)) {
            let (base, size) = (1000u64, 300u64);
            let mut a = IovaAllocator::new(base, size);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { len, align_log2 } => {
                        let align = 1u64 << align_log2;
                        let expected = model_first_fit(&live, base, base + size, len, align);
                        let got = a.alloc(len, align);
                        prop_assert_eq!(got, expected);
                        if let Some(at) = got {
                            prop_assert!(at != 0 && at % align == 0);
                            live.push((at, len));
                        }
                    }
                    Op::Free { pick } => {
                        if !live.is_empty() {
                            let (s, l) = live.swap_remove(pick % live.len());
                            a.free(s, l);
                        }
                    }
                }
                prop_assert_eq!(a.allocated(), live.iter().map(|&(_, l)| l).sum::<u64>());
            }
            for (s, l) in live.drain(..) {
                a.free(s, l);
            }
            prop_assert_eq!(a.free_ranges(), 1);
            prop_assert_eq!(a.alloc(size, 1), Some(base));
        }
    }
}
