//! DMA memory for scst-accel: page-aligned host buffers that SCST pins and a device DMAs into.
//!
//! This crate is the one place (with hal's MMIO) that touches raw memory shared with a device.
//! One concept per module:
//! - [`region`]: [`DmaRegion`], locked anonymous memory for rings and scatter lists;
//! - [`iova`]: [`IovaAllocator`], device addresses in an IOMMU window;
//! - [`mapping`]: [`MappedRegion`], a region mapped on a device at its own IOVA;
//! - [`ring`]: [`SubmissionRing`] and [`CompletionRing`] (`accelerator.md §3`, `§4`);
//! - [`sgv`]: [`SgvPool`], SCST command buffers mapped once and reused (`scst_user.md §3.6`);
//! - [`segments`]: [`split_for_device`], scatter lists for a device's largest segment;
//! - `page_buffer`: [`PageBuffer`], the page-aligned memory the pool hands to SCST.

mod error;
pub mod iova;
pub mod mapping;
mod page_buffer;
pub mod region;
pub mod ring;
pub mod segments;
pub mod sgv;

#[cfg(test)]
mod test_mapper;
mod unwinding;

pub use error::DmaError;
pub use error::RingFull;
pub use iova::IovaAllocator;
pub use mapping::MappedRegion;
pub use page_buffer::PageBuffer;
pub use page_buffer::PageBufferError;
pub use page_buffer::PAGE_SIZE;
pub use region::DmaRegion;
pub use region::RegionBacking;
pub use region::HUGE_PAGE_SIZE;
pub use ring::CompletionRing;
pub use ring::InvalidHead;
pub use ring::SubmissionRing;
pub use segments::split_for_device;
pub use segments::split_for_device_into;
pub use sgv::DmaBuffer;
pub use sgv::PoolShutdownError;
pub use sgv::PoolStats;
pub use sgv::RefillStartError;
pub use sgv::SgvPool;
pub use sgv::MAX_CACHED_LEN;
pub use sgv::SGV_CLASSES;
pub use sgv::UNCACHED_CLASS;
