//! Command buffers: the SGV pool's DMA-mapped pages, handed to SCST as `pbuf` and to the store
//! as the I/O buffer (zero copies in the handler). A [`CmdBuffer`] goes back to its pool when
//! the last holder lets go: the buffer table (SCST still has it) and any store request in flight.

use scst_accel_dma::DmaBuffer;
use scst_accel_dma::PageBuffer;
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use std::sync::Arc;

/// One buffer from an [`SgvPool`].
#[derive(Debug)]
pub struct CmdBuffer {
    buffer: Option<DmaBuffer>,
    pool: Arc<SgvPool>,
}

impl CmdBuffer {
    /// A buffer of at least `len` bytes, or `None` when the pool is exhausted (the caller
    /// answers BUSY / TASK SET FULL; nothing waits).
    /// The root token: a pool miss maps the new buffer (an ioctl), so nothing may be held.
    pub fn allocate(token: &mut LockToken<'_, Root>, pool: &Arc<SgvPool>, len: usize) -> Option<Arc<Self>> {
        let buffer = pool.get(token, len)?;
        Some(Arc::new(Self {
            buffer: Some(buffer),
            pool: Arc::clone(pool),
        }))
    }

    /// Another buffer from the same pool (scratch memory for a compare).
    pub fn pool_sibling(&self, token: &mut LockToken<'_, Root>, len: usize) -> Option<Arc<Self>> {
        Self::allocate(token, &self.pool, len)
    }

    fn dma(&self) -> &DmaBuffer {
        match &self.buffer {
            Some(b) => b,
            // Only `drop` takes the buffer out.
            None => unreachable!("CmdBuffer used after drop"),
        }
    }

    /// The pages.
    pub fn pages(&self) -> &PageBuffer {
        self.dma().pages()
    }

    /// User virtual address (`pbuf`).
    pub fn addr(&self) -> u64 {
        self.dma().addr()
    }

    /// Device address, when the pool maps its buffers for DMA.
    pub fn iova(&self) -> Option<u64> {
        self.dma().iova()
    }

    /// Length in bytes (the size class).
    pub fn len(&self) -> usize {
        self.dma().len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for CmdBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.put(buffer);
        }
    }
}
