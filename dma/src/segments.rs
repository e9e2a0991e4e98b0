//! [`split_for_device`]: the scatter list for a buffer that is one contiguous IOVA range.
//!
//! Every pool buffer is virtually contiguous and mapped at one contiguous IOVA, so it is a
//! single segment unless the device's largest segment (SCA-1: CAP1 × 4 KiB, `accelerator.md §1`)
//! or the 32-bit length field of a scatter entry (§3) is smaller.

/// Split `len` bytes at `buffer_iova` into `(iova, length)` segments of at most `max_segment`
/// bytes (0 or more than `u32::MAX` means `u32::MAX`, the widest a scatter entry can say), in
/// order. An empty buffer has no segments.
pub fn split_for_device(buffer_iova: u64, len: usize, max_segment: usize) -> Vec<(u64, u32)> {
    let max = match u32::try_from(max_segment) {
        Ok(0) | Err(_) => u32::MAX,
        Ok(max) => max,
    };
    let mut segments = Vec::with_capacity(len.div_ceil(max as usize));
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(max as usize);
        segments.push((buffer_iova + done as u64, n as u32));
        done += n;
    }
    segments
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

    #[test]
    fn splits_at_the_device_limit() {
        assert_eq!(
            split_for_device(0x10_0000, 10_000, 4096),
            vec![(0x10_0000, 4096), (0x10_1000, 4096), (0x10_2000, 1808)]
        );
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
    }
}
