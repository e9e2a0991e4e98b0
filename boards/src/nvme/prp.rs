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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: u64 = 4096;
    const LIST: u64 = 0xF000_0000;
    /// Entries of one PRP list page: PRP1 plus these make the most pages one command describes.
    const LIST_CAPACITY: usize = 512;

    /// The device's reading of PRP entries for a transfer of `len` bytes (NVMe 1.4 §4.3),
    /// written from the specification rather than from [`build`]: the (address, bytes) ranges
    /// it will touch, in order. `read_list(list_iova, index)` reads a PRP list entry.
    fn walk(
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

    fn run(segments: &[(u64, u32)]) -> Result<(PrpEntries, Vec<u64>), SubmitError> {
        let mut list = vec![0u64; LIST_CAPACITY];
        let prp = build(segments, PAGE, LIST_CAPACITY, LIST, |i, a| list[i] = a)?;
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

    /// The bytes the device touches for an accepted layout, merged; `Err` if it was refused.
    fn covered(segments: &[(u64, u32)]) -> Result<Vec<(u64, u64)>, TestCaseError> {
        let (prp, list) = run(segments).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        let total: u64 = segments.iter().map(|&(_, l)| u64::from(l)).sum();
        prop_assert_eq!(prp.list_entries > 0, prp.prp2 == LIST);
        let mut read_past = false;
        let ranges = walk(prp.prp1, prp.prp2, total, PAGE, |base, i| {
            read_past |= base != LIST || i >= prp.list_entries;
            list.get(i).copied().unwrap_or(0)
        });
        prop_assert!(!read_past, "the device reads past the list entries written");
        Ok(merge(ranges))
    }

    fn bytes(segments: &[(u64, u32)]) -> Vec<(u64, u64)> {
        merge(segments.iter().map(|&(a, l)| (a, u64::from(l))))
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

    /// A layout the rules allow, of `segments` segments: the first at a dword offset into its
    /// page, page-aligned middles that end on a page boundary, a last segment of any length.
    fn valid_layout(segments: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<(u64, u32)>> {
        (
            prop::collection::vec((1u64..1 << 20, 1u64..=8), segments),
            0..PAGE / 4,
            1..=8 * PAGE,
        )
            .prop_map(|(pages, dwords, last_len)| {
                let count = pages.len();
                pages
                    .iter()
                    .enumerate()
                    .map(|(i, &(page, n))| {
                        let offset = if i == 0 { dwords * 4 } else { 0 };
                        let len = if i == count - 1 {
                            last_len
                        } else {
                            n * PAGE - offset
                        };
                        (page * PAGE + offset, len as u32)
                    })
                    .collect()
            })
    }

    /// One way to break a valid layout.
    #[derive(Clone, Copy, Debug)]
    enum Break {
        /// A segment after the first starts off a page boundary.
        ShiftStart,
        /// A segment before the last ends off a page boundary.
        CutEnd,
        /// PRP1 is not dword aligned.
        MisalignFirst,
    }

    proptest! {
        // Each case builds and walks at most 50 pages: 1000 cases take well under a second in
        // a debug build. No persistence file: a failure prints its minimal layout.
        #![proptest_config(ProptestConfig {
            cases: 1000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn valid_layouts_cover_exactly_their_bytes(segs in valid_layout(1..=6)) {
            prop_assert_eq!(covered(&segs)?, bytes(&segs), "layout {:x?}", segs);
        }

        #[test]
        fn broken_layouts_are_refused(
            segs in valid_layout(2..=6),
            which in any::<prop::sample::Index>(),
            how in prop_oneof![Just(Break::ShiftStart), Just(Break::CutEnd), Just(Break::MisalignFirst)],
            amount in 1u64..PAGE,
        ) {
            let mut segs = segs;
            let i = 1 + which.index(segs.len() - 1);
            match how {
                Break::ShiftStart => segs[i].0 += 4 * (1 + amount % (PAGE / 4 - 1)),
                Break::CutEnd => {
                    // Less than a page off a page-aligned end, and never the whole segment.
                    let room = u64::from(segs[i - 1].1).min(PAGE);
                    segs[i - 1].1 -= (1 + amount % (room - 1)) as u32;
                }
                Break::MisalignFirst => segs[0].0 += 1 + amount % 3,
            }
            prop_assert!(
                matches!(run(&segs), Err(SubmitError::Unaligned(_))),
                "accepted {:x?}", segs
            );
        }

        /// One segment is accepted exactly when its pages fit PRP1 plus one list page, and then
        /// covers exactly its bytes.
        #[test]
        fn one_segment_fits_exactly_one_list_page(
            page in 1u64..1 << 20,
            dwords in 0..PAGE / 4,
            len in 1u64..=520 * PAGE,
        ) {
            let start = page * PAGE + dwords * 4;
            let pages = (dwords * 4 + len).div_ceil(PAGE);
            let segs = [(start, len as u32)];
            if pages <= 1 + LIST_CAPACITY as u64 {
                prop_assert_eq!(covered(&segs)?, bytes(&segs));
            } else {
                prop_assert!(matches!(run(&segs), Err(SubmitError::Unaligned(_))), "accepted {} pages", pages);
            }
        }
    }
}
