//! [`split_for_device`]: the scatter list for a buffer that is one contiguous IOVA range.
//!
//! Every pool buffer is virtually contiguous and mapped at one contiguous IOVA, so it is a
//! single segment unless the device's largest segment (SCA-1: CAP1 × 4 KiB, `accelerator.md §1`)
//! or the 32-bit length field of a scatter entry (§3) is smaller.

/// Split `len` bytes at `buffer_iova` into `(iova, length)` segments of at most `max_segment`
/// bytes (0 or more than `u32::MAX` means `u32::MAX`, the widest a scatter entry can say), in
/// order. An empty buffer has no segments.
///
/// When the limit is a whole number of pages, every boundary between two segments falls on a
/// page boundary, even for a buffer that starts inside a page (a command's data at an offset:
/// COMPARE AND WRITE's write half): NVMe's PRPs can describe only such a list (every segment
/// but the first starts on a page, every one but the last ends on one, NVMe 1.4 §4.3).
pub fn split_for_device(buffer_iova: u64, len: usize, max_segment: usize) -> Vec<(u64, u32)> {
    let mut segments = Vec::new();
    split_for_device_into(&mut segments, buffer_iova, len, max_segment);
    segments
}

/// [`split_for_device`] appending to `out`: a caller that keeps `out` between requests (cleared,
/// its capacity kept) describes every request without allocating once it has held the longest.
pub fn split_for_device_into(out: &mut Vec<(u64, u32)>, buffer_iova: u64, len: usize, max_segment: usize) {
    let max = match u32::try_from(max_segment) {
        Ok(0) | Err(_) => u32::MAX,
        Ok(max) => max,
    };
    let page = crate::PAGE_SIZE as u64;
    let page_multiple = u64::from(max).is_multiple_of(page);
    out.reserve(len.div_ceil(max as usize) + 1);
    let mut done = 0usize;
    while done < len {
        let at = buffer_iova + done as u64;
        // A segment starting inside a page is shortened to end on one.
        let room = if page_multiple {
            u64::from(max) - at % page
        } else {
            u64::from(max)
        };
        let n = (len - done).min(usize::try_from(room).unwrap_or(usize::MAX));
        out.push((at, n as u32));
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_segment_when_it_fits() {
        assert_eq!(split_for_device(0x1000, 8192, 1 << 20), vec![(0x1000, 8192)]);
        assert_eq!(split_for_device(0x1000, 8192, 0), vec![(0x1000, 8192)]);
        assert_eq!(split_for_device(0x1000, 0, 4096), vec![]);
    }

    /// A buffer starting inside a page (an offset of 512 bytes into it): the first segment ends
    /// on the page, the others start on pages.
    #[test]
    fn a_buffer_inside_a_page_is_split_on_pages() {
        assert_eq!(
            split_for_device(0x10_0200, 10_000, 4096),
            vec![(0x10_0200, 3584), (0x10_1000, 4096), (0x10_2000, 2320)]
        );
        assert_eq!(
            split_for_device(0x10_0200, 70_000, 65536),
            vec![(0x10_0200, 65024), (0x11_0000, 4976)]
        );
    }

    #[test]
    fn splits_at_the_device_limit() {
        assert_eq!(
            split_for_device(0x10_0000, 10_000, 4096),
            vec![(0x10_0000, 4096), (0x10_1000, 4096), (0x10_2000, 1808)]
        );
    }

    /// The appending form adds to what the caller's list holds and reuses its capacity.
    #[test]
    fn into_appends_and_keeps_the_capacity() {
        let mut out = vec![(0x9000, 512)];
        split_for_device_into(&mut out, 0x10_0000, 10_000, 4096);
        assert_eq!(
            out,
            vec![
                (0x9000, 512),
                (0x10_0000, 4096),
                (0x10_1000, 4096),
                (0x10_2000, 1808)
            ]
        );
        let capacity = out.capacity();
        out.clear();
        split_for_device_into(&mut out, 0x20_0000, 8192, 4096);
        assert_eq!(out, vec![(0x20_0000, 4096), (0x20_1000, 4096)]);
        assert_eq!(out.capacity(), capacity);
    }

    proptest! {
        #[test]
        fn segments_tile_the_buffer(iova in 1u64..1 << 40, len in 0usize..1 << 24, max in 0usize..1 << 22) {
            let segs = split_for_device(iova, len, max);
            let mut next = iova;
            for &(at, n) in &segs {
                prop_assert_eq!(at, next);
                prop_assert!(n > 0);
                prop_assert!(max == 0 || n as usize <= max);
                next += u64::from(n);
            }
            prop_assert_eq!(next - iova, len as u64);
        }

        /// With a limit of whole pages, inner boundaries are page boundaries wherever the
        /// buffer starts (what PRPs need), and no more segments than one extra are made.
        #[test]
        fn inner_boundaries_fall_on_pages(iova in 1u64..1 << 40, len in 1usize..1 << 22, pages in 1usize..64) {
            let max = pages * crate::PAGE_SIZE;
            let segs = split_for_device(iova, len, max);
            for w in segs.windows(2) {
                prop_assert_eq!((w[0].0 + u64::from(w[0].1)) % crate::PAGE_SIZE as u64, 0);
                prop_assert_eq!(w[1].0 % crate::PAGE_SIZE as u64, 0);
            }
            prop_assert!(segs.len() <= len.div_ceil(max) + 1);
        }
    }
}
