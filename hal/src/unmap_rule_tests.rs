//! The unmap rule every backend keeps ([`DmaMapper::unmap`]): one script of requests, run
//! against the simulator's IOMMU (`sim::iommu_tests`) and against `VfioDma` over a model of the
//! kernel's type1 v2 (`vfio::dma`'s tests), so the two are held to the same answers.
#![allow(unsafe_code)] // UNSAFETY: maps memory of its own (an anonymous mmap) on the mapper under test.

use crate::DmaMapper;
use crate::HalError;

const PAGE: u64 = 4096;

/// The mappings made: (IOVA, length). A and B are adjacent, C lies apart; each has its own
/// host pages, at the same offsets from the memory's start as from 0x10000.
const MAPPINGS: [(u64, u64); 3] = [(0x1_0000, 4 * PAGE), (0x1_4000, 4 * PAGE), (0x1_8000, PAGE)];

/// Ranges that are not one whole mapping. Type1 v2 refuses the ones bisecting a mapping
/// (EINVAL) and would unmap the others' whole mappings (A and B together; A, B and C with the
/// hole; C out of a larger range), reporting a size vfio-ioctls compares with the one asked.
const REFUSED: [(u64, u64, &str); 9] = [
    (0x1_0000, PAGE, "the head of A"),
    (0x1_1000, 3 * PAGE, "the tail of A"),
    (0x1_2000, 4 * PAGE, "the tail of A and the head of B"),
    (0x1_0000, 8 * PAGE, "A and B, whole"),
    (0x1_0000, 0x9000, "A, B and C, whole"),
    (0x1_8000, 8 * PAGE, "C and the hole after it"),
    (0x2_0000, PAGE, "nothing mapped there"),
    (0x1_8000, 0, "zero bytes at C"),
    (0x1_0000, 4 * PAGE + PAGE, "A and the head of B"),
];

/// Map [`MAPPINGS`] on `mapper`, check that every [`REFUSED`] request is refused with
/// [`HalError::NotOneMapping`] and unmaps nothing, then unmap each mapping whole (a second
/// unmap of it refused). `live` returns the mappings the backend holds (and may check its own
/// counts against its kernel's).
pub(crate) fn check(mapper: &dyn DmaMapper, live: &dyn Fn() -> usize) {
    let len = 0x9000;
    // SAFETY: an anonymous private mapping with no address hint; checked below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED, "mmap of {len} bytes failed");
    for (iova, bytes) in MAPPINGS {
        let at = host as u64 + (iova - MAPPINGS[0].0);
        // SAFETY: `at..at + bytes` is inside this function's own mapping, which nothing
        // references and nothing reads or writes (no device model copies here); every mapping
        // is unmapped below before the memory is, and a failed check leaks it instead.
        unsafe { mapper.map(iova, at, bytes) }.expect("map");
    }
    assert_eq!(live(), MAPPINGS.len());
    for (iova, bytes, what) in REFUSED {
        match mapper.unmap(iova, bytes) {
            Err(HalError::NotOneMapping { iova: i, len: l, .. }) => {
                assert_eq!((i, l), (iova, bytes), "{what}: the error names another range")
            }
            other => panic!("{what}: expected NotOneMapping, got {other:?}"),
        }
        assert_eq!(live(), MAPPINGS.len(), "{what}: something was unmapped");
    }
    for (n, (iova, bytes)) in MAPPINGS.into_iter().enumerate() {
        mapper.unmap(iova, bytes).expect("one whole mapping");
        assert_eq!(live(), MAPPINGS.len() - n - 1);
        let again = mapper.unmap(iova, bytes);
        assert!(
            matches!(again, Err(HalError::NotOneMapping { .. })),
            "a second unmap of {iova:#x}: {again:?}"
        );
    }
    // SAFETY: the mapping made above; nothing maps it any more (every unmap returned Ok).
    let rc = unsafe { libc::munmap(host, len) };
    assert_eq!(rc, 0, "munmap");
}
