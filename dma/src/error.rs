//! Errors of the dma crate: one enum for regions, mappings and rings, plus the data-path
//! [`RingFull`] that callers handle on every submission.

use scst_accel_hal::HalError;

/// Errors making DMA memory, mapping it on a device, or laying rings out in it.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// A region of zero or absurd length was asked for.
    #[error("invalid DMA region length {len}: must be 1..={max} bytes")]
    InvalidLength {
        /// Requested length.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// The kernel's pages are not [`crate::PAGE_SIZE`] bytes (0: it did not say).
    #[error("the kernel's page size is {size} bytes; scst-accel supports 4 KiB pages only")]
    UnsupportedPageSize {
        /// The kernel's page size.
        size: usize,
    },
    /// The kernel refused the anonymous mapping.
    #[error("cannot allocate {len} bytes of DMA memory (raise the memory limit or lower queue depth)")]
    Alloc {
        /// Length asked of mmap (rounded to pages).
        len: usize,
        /// The errno of mmap.
        #[source]
        source: std::io::Error,
    },
    /// The IOVA window has no free range of this size and alignment.
    #[error(
        "no free IOVA range of {len} bytes aligned to {align:#x} \
         (unmap unused regions, flush the buffer pool, or enlarge the IOVA window)"
    )]
    IovaExhausted {
        /// Length asked for.
        len: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// The device's IOMMU refused to map the region.
    #[error("cannot map {len} bytes at IOVA {iova:#x} for DMA (check RLIMIT_MEMLOCK and the IOMMU window)")]
    Map {
        /// IOVA tried.
        iova: u64,
        /// Length.
        len: u64,
        /// The device layer's error (errno kept inside).
        #[source]
        source: HalError,
    },
    /// The IOMMU refused to unmap the region. The memory is deliberately leaked: the device
    /// may still reach it, so it must never be reused or returned to the kernel.
    #[error(
        "cannot unmap {len} bytes at IOVA {iova:#x}; the memory is leaked to stay safe (reset the device)"
    )]
    Unmap {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// The device layer's error (errno kept inside).
        #[source]
        source: HalError,
    },
    /// A ring's geometry does not fit the rules or its region.
    #[error(
        "invalid ring of {entries} entries x {entry_size} bytes in a {region_len}-byte region: {reason}"
    )]
    InvalidRing {
        /// Entries asked for.
        entries: u32,
        /// Entry size asked for.
        entry_size: usize,
        /// Length of the region offered.
        region_len: usize,
        /// Which rule was broken.
        reason: &'static str,
    },
}

/// The submission ring has no free slot: wait for completions (which advance the head
/// through [`crate::SubmissionRing::update_head`]) or answer the command BUSY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("submission ring full ({entries} entries, one kept empty)")]
pub struct RingFull {
    /// Ring size in entries.
    pub entries: u32,
}
