//! Physical Region Page entries (NVMe 1.4 §4.3): PRP1, PRP2 and one PRP list page built from a
//! request's data segments (IOVA, bytes).
//!
//! The rules a PRP layout must keep, checked here so the device never sees a layout it would
//! misread:
//! - the first segment may start at any dword-aligned offset into its page (PRP1's offset);
//! - every later segment starts on a memory page boundary, and every segment but the last ends
//!   on one (PRP list entries other than the first have offset 0, §4.3);
//! - the pages after the first fit in one PRP list page (the driver limits the transfer size so
//!   that they always do: no list chaining).

use crate::engine::SubmitError;

/// PRP entries of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrpEntries {
    /// PRP Entry 1: the first byte.
    pub prp1: u64,
    /// PRP Entry 2: 0, the second page, or the PRP list's IOVA.
    pub prp2: u64,
    /// Entries written to the PRP list (0 when PRP2 is not a list pointer).
    pub list_entries: usize,
}

/// Build the PRP entries for `segments` with memory page size `page_size` (a power of two).
/// Pages after the first are handed to `write_list(index, address)` as PRP list entries (the
/// list lives at `list_iova`, holding `list_capacity` entries); when only two pages are
/// needed, the entry written at index 0 goes unused and PRP2 names the second page.
///
/// # Errors
/// [`SubmitError::Unaligned`] for a layout PRPs cannot describe, or one that needs more than one
/// PRP list page.
pub fn build(
    segments: &[(u64, u32)],
    page_size: u64,
    list_capacity: usize,
    list_iova: u64,
    mut write_list: impl FnMut(usize, u64),
) -> Result<PrpEntries, SubmitError> {
    debug_assert!(page_size.is_power_of_two());
    let mask = page_size - 1;
    let Some(&(first, _)) = segments.first() else {
        return Err(SubmitError::Unaligned("no data segments"));
    };
    if first & 0x3 != 0 {
        return Err(SubmitError::Unaligned(
            "the first segment is not dword aligned (PRP1 offset)",
        ));
    }
    let last = segments.len() - 1;
    let mut pages = 0usize;
    let mut second = 0u64;
    for (i, &(iova, len)) in segments.iter().enumerate() {
        if len == 0 {
            return Err(SubmitError::Unaligned("an empty segment"));
        }
        let Some(end) = iova.checked_add(u64::from(len)) else {
            return Err(SubmitError::Unaligned("a segment wraps the address space"));
        };
        if i > 0 && iova & mask != 0 {
            return Err(SubmitError::Unaligned(
                "a segment after the first does not start on a memory page boundary",
            ));
        }
        if i < last && end & mask != 0 {
            return Err(SubmitError::Unaligned(
                "a segment before the last does not end on a memory page boundary",
            ));
        }
        let mut at = iova;
        while at < end {
            match pages {
                0 => {}
                n if n > list_capacity => {
                    return Err(SubmitError::Unaligned(
                        "the transfer needs more than one PRP list page",
                    ));
                }
                n => {
                    if n == 1 {
                        second = at;
                    }
                    write_list(n - 1, at);
                }
            }
            pages += 1;
            at = (at & !mask) + page_size;
        }
    }
    Ok(match pages {
        1 => PrpEntries {
            prp1: first,
            prp2: 0,
            list_entries: 0,
        },
        2 => PrpEntries {
            prp1: first,
            prp2: second,
            list_entries: 0,
        },
        n => PrpEntries {
            prp1: first,
            prp2: list_iova,
            list_entries: n - 1,
        },
    })
}

/// The device's reading of PRP entries for a transfer of `len` bytes: the (address, bytes)
/// ranges it will touch, in order. `read_list(list_iova, index)` reads a PRP list entry. Used by
/// the tests and the test model to check [`build`] against the spec's rules, not its own.
#[cfg(test)]
pub(crate) fn walk(
    prp1: u64,
    prp2: u64,
    len: u64,
    page_size: u64,
    mut read_list: impl FnMut(u64, usize) -> u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let first = len.min(page_size - (prp1 & (page_size - 1)));
    out.push((prp1, first));
    let mut left = len - first;
    if left == 0 {
        return out;
    }
    if left <= page_size {
        out.push((prp2, left));
        return out;
    }
    let mut index = 0;
    while left > 0 {
        let page = read_list(prp2, index);
        let n = left.min(page_size);
        out.push((page, n));
        left -= n;
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const LIST: u64 = 0xF000_0000;

    fn run(segments: &[(u64, u32)]) -> Result<(PrpEntries, Vec<u64>), SubmitError> {
        let mut list = vec![0u64; 512];
        let prp = build(segments, PAGE, 512, LIST, |i, a| list[i] = a)?;
        Ok((prp, list))
    }

    /// Merge adjacent ranges so layouts compare by the bytes they cover.
    fn merge(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, n) in ranges {
            match out.last_mut() {
                Some((s, l)) if *s + *l == a => *l += n,
                _ => out.push((a, n)),
            }
        }
        out
    }

    fn covered(segments: &[(u64, u32)]) -> Vec<(u64, u64)> {
        let (prp, list) = run(segments).expect("valid layout");
        let total: u64 = segments.iter().map(|&(_, l)| u64::from(l)).sum();
        assert_eq!(prp.list_entries > 0, prp.prp2 == LIST);
        merge(walk(prp.prp1, prp.prp2, total, PAGE, |base, i| {
            assert_eq!(base, LIST);
            assert!(i < prp.list_entries, "device reads past the list entries written");
            list[i]
        }))
    }

    #[test]
    fn small_layouts_use_prp1_and_prp2_directly() {
        let (p, _) = run(&[(0x10_0200, 512)]).expect("one page");
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0200, 0, 0));
        let (p, _) = run(&[(0x10_0200, 4096)]).expect("two pages");
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0200, 0x10_1000, 0));
        let (p, list) = run(&[(0x10_0000, 4096), (0x20_0000, 8192)]).expect("three pages");
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0000, LIST, 2));
        assert_eq!(&list[..2], &[0x20_0000, 0x20_1000]);
    }

    #[test]
    fn invalid_layouts_are_refused() {
        let bad = |s: &[(u64, u32)]| matches!(run(s), Err(SubmitError::Unaligned(_)));
        assert!(bad(&[]));
        assert!(bad(&[(0x1002, 512)]), "PRP1 must be dword aligned");
        assert!(bad(&[(0x1000, 0)]));
        assert!(bad(&[(0x1000, 512), (0x3000, 4096)]), "first ends mid-page");
        assert!(bad(&[(0x1000, 4096), (0x3200, 512)]), "second starts mid-page");
        assert!(bad(&[(0x1000, 4096), (0x3000, 100), (0x5000, 4096)]));
        // 513 pages fit (PRP1 + 512 list entries), 514 do not.
        assert!(run(&[(0x10_0000, 513 * 4096)]).is_ok());
        assert!(bad(&[(0x10_0000, 514 * 4096)]));
        assert!(
            bad(&[(0x10_0800, 513 * 4096)]),
            "an offset start needs one more page"
        );
    }

    /// A small deterministic generator (xorshift), so the property runs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random layout the rules allow: a first segment at a dword offset, page-aligned middles,
    /// a last segment of any length.
    fn valid_layout(rng: &mut Rng) -> Vec<(u64, u32)> {
        let count = 1 + rng.below(6) as usize;
        let mut segs = Vec::new();
        for i in 0..count {
            let base = (1 + rng.below(1 << 20)) * PAGE;
            let offset = if i == 0 { rng.below(PAGE / 4) * 4 } else { 0 };
            let last = i == count - 1;
            let len = if last {
                1 + rng.below(8 * PAGE)
            } else {
                // Ends on a page boundary.
                (1 + rng.below(8)) * PAGE - offset
            };
            segs.push((base + offset, len as u32));
        }
        segs
    }

    #[test]
    fn property_valid_layouts_cover_exactly_their_bytes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let segs = valid_layout(&mut rng);
            let want = merge(segs.iter().map(|&(a, l)| (a, u64::from(l))));
            assert_eq!(covered(&segs), want, "layout {segs:x?}");
        }
    }

    #[test]
    fn property_broken_layouts_are_refused() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut refused = 0;
        for _ in 0..2000 {
            let mut segs = valid_layout(&mut rng);
            if segs.len() < 2 {
                continue;
            }
            // Break one rule: shift a later segment's start, or cut a middle segment short.
            let i = 1 + rng.below(segs.len() as u64 - 1) as usize;
            if rng.below(2) == 0 {
                segs[i].0 += 4 * (1 + rng.below(PAGE / 4 - 1));
            } else {
                let j = i - 1;
                let room = u64::from(segs[j].1).min(PAGE) / 4;
                if room < 2 {
                    continue;
                }
                segs[j].1 -= 4 * (1 + rng.below(room - 1)) as u32;
            }
            assert!(
                matches!(run(&segs), Err(SubmitError::Unaligned(_))),
                "accepted {segs:x?}"
            );
            refused += 1;
        }
        assert!(refused > 1000);
    }
}
