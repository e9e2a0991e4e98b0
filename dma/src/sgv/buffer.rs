//! [`DmaBuffer`]: one pool buffer in use, returned to its pool when put or dropped.

use super::arena::Chunk;
use super::shared::Shared;
use super::shared::Slot;
use crate::PageBuffer;
use std::sync::Arc;

/// A buffer taken from an [`SgvPool`](super::SgvPool): page-aligned host memory (its address
/// is the `pbuf` SCST sees) mapped on the device at [`DmaBuffer::iova`].
///
/// It goes back to its pool when passed to [`SgvPool::put`](super::SgvPool::put) or dropped.
/// Being a moved value, it cannot be returned twice:
///
/// ```compile_fail,E0382
/// let pool = scst_accel_dma::SgvPool::new(None, None, 1 << 20);
/// let mut token = scst_accel_hal::locks::LockToken::root();
/// let Some(buffer) = pool.get(&mut token, 4096) else { return };
/// pool.put(buffer);
/// pool.put(buffer); // error[E0382]: use of moved value
/// ```
///
/// ```
/// let pool = scst_accel_dma::SgvPool::new(None, None, 1 << 20);
/// let mut token = scst_accel_hal::locks::LockToken::root();
/// let Some(buffer) = pool.get(&mut token, 4096) else { return };
/// buffer.pages().write_at(0, b"data");
/// pool.put(buffer);
/// assert_eq!(pool.stats().cached, 1);
/// ```
pub struct DmaBuffer {
    pages: Arc<PageBuffer>,
    iova: Option<u64>,
    class: u8,
    /// The arena chunk this buffer is (`None` for an exact buffer above 4 MiB).
    chunk: Option<Chunk>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("iova", &self.iova.map(|i| format!("{i:#x}")))
            .field("len", &self.len())
            .field("class", &self.class)
            .field("pool", &self.shared.id)
            .finish()
    }
}

impl DmaBuffer {
    pub(super) fn new(slot: Slot, shared: Arc<Shared>) -> Self {
        shared.note_handed_out(slot.pages.len() as u64);
        Self {
            pages: slot.pages,
            iova: slot.iova,
            class: slot.class,
            chunk: slot.chunk,
            shared,
        }
    }

    pub(super) fn pool(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The memory (copy access only; see [`PageBuffer`]). Borrowed, not shared: the pool hands
    /// the same memory (and, for an arena chunk, the same IOVA) to the next command once this
    /// buffer is back, so nothing may keep it past that.
    pub fn pages(&self) -> &PageBuffer {
        &self.pages
    }

    /// The memory's own handle, for the pool's tests of what a handle kept too long does.
    #[cfg(test)]
    pub(super) fn pages_handle(&self) -> Arc<PageBuffer> {
        Arc::clone(&self.pages)
    }

    /// The host virtual address (the `pbuf` given to SCST).
    pub fn addr(&self) -> u64 {
        self.pages.addr()
    }

    /// The device address, or `None` for a host-only pool.
    pub fn iova(&self) -> Option<u64> {
        self.iova
    }

    /// Length in bytes: the class size (may exceed what was asked for; SCST's `alloc_len`
    /// can too, `scst_user.md §3.6`).
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Never empty; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The size class: the order (0..=10, size = 4 KiB << order), or
    /// [`UNCACHED_CLASS`](super::UNCACHED_CLASS) for an exact buffer above 4 MiB.
    pub fn class(&self) -> u8 {
        self.class
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let slot = Slot {
            pages: self.pages.clone(),
            iova: self.iova,
            class: self.class,
            chunk: self.chunk.take(),
        };
        Shared::give_back(&self.shared, slot);
    }
}
