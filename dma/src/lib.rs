//! DMA memory for scst-accel: page-aligned host buffers that SCST pins and a device DMAs into.
//!
//! This crate is the one place (with hal's MMIO) that touches raw memory. The SGV pool, IOVA
//! allocator and descriptor rings land here with the accelerator issue.

mod page_buffer;

pub use page_buffer::PageBuffer;
pub use page_buffer::PageBufferError;
pub use page_buffer::PAGE_SIZE;
