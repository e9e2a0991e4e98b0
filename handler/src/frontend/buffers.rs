//! The command-buffer table: every buffer the handler has handed to SCST, by user address.
//!
//! SCST refers to buffers only by address (`pbuf`), and the message that returns one
//! (ON_FREE_CMD, ON_CACHED_MEM_FREE) may reach any worker, so the table is shared. Its mutex is
//! a leaf lock held for one hash operation; allocation and unmapping happen outside it.
//! Buffers are never freed while SCST may still use them: only ON_FREE_CMD with
//! `buffer_cached == 0`, ON_CACHED_MEM_FREE, or an EXEC reply the kernel ignores (spec §3.5,
//! §8.9) remove an entry; the memory is unmapped when the last command holding it finishes.

use scst_accel_dma::PageBuffer;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

/// Byte and count figures of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferFigures {
    /// Buffers currently handed to SCST.
    pub buffers: u64,
    /// Bytes of those buffers.
    pub bytes: u64,
    /// Allocations made.
    pub allocated: u64,
    /// Buffers returned by SCST and released.
    pub released: u64,
    /// Allocations refused because of the memory cap or mmap failure.
    pub refused: u64,
}

/// Buffers handed to SCST.
#[derive(Debug)]
pub struct BufferTable {
    map: Mutex<HashMap<u64, Arc<PageBuffer>>>,
    max_bytes: u64,
    bytes: AtomicU64,
    allocated: AtomicU64,
    released: AtomicU64,
    refused: AtomicU64,
}

impl BufferTable {
    /// A table that refuses allocations beyond `max_bytes` in total.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_bytes,
            bytes: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            released: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<PageBuffer>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocate a page-aligned buffer of at least `len` bytes and record it; `None` when over
    /// the cap or out of memory (the caller answers BUSY / TASK SET FULL, never waits).
    pub fn allocate(&self, len: usize) -> Option<Arc<PageBuffer>> {
        let rounded = len.div_ceil(scst_accel_dma::PAGE_SIZE) as u64 * scst_accel_dma::PAGE_SIZE as u64;
        let prev = self.bytes.fetch_add(rounded, Ordering::Relaxed);
        if prev + rounded > self.max_bytes {
            self.bytes.fetch_sub(rounded, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "buffer of {len} bytes refused: {prev} of {} bytes in use",
                self.max_bytes
            );
            return None;
        }
        let buffer = match PageBuffer::new(len) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                self.bytes.fetch_sub(rounded, Ordering::Relaxed);
                self.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!("buffer allocation failed: {e}");
                return None;
            }
        };
        self.allocated.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(buffer.addr(), Arc::clone(&buffer));
        Some(buffer)
    }

    /// The buffer at user address `pbuf`, if SCST may legitimately hold it.
    pub fn get(&self, pbuf: u64) -> Option<Arc<PageBuffer>> {
        self.lock().get(&pbuf).cloned()
    }

    /// SCST gave the buffer back: forget it. It is unmapped when the last holder drops it.
    pub fn release(&self, pbuf: u64) -> bool {
        let removed = self.lock().remove(&pbuf);
        match removed {
            Some(buffer) => {
                self.bytes.fetch_sub(buffer.len() as u64, Ordering::Relaxed);
                self.released.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Current figures.
    pub fn figures(&self) -> BufferFigures {
        BufferFigures {
            buffers: self.lock().len() as u64,
            bytes: self.bytes.load(Ordering::Relaxed),
            allocated: self.allocated.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_get_release_and_cap() {
        let table = BufferTable::new(3 * 4096);
        let a = table.allocate(100).expect("first");
        let b = table.allocate(8192).expect("second");
        assert!(table.allocate(1).is_none(), "cap reached");
        assert_eq!(table.figures().refused, 1);
        assert!(Arc::ptr_eq(&table.get(a.addr()).expect("known"), &a));
        assert!(table.release(b.addr()));
        assert!(
            !table.release(b.addr()),
            "second release of the same buffer is refused"
        );
        assert!(table.get(b.addr()).is_none());
        let f = table.figures();
        assert_eq!((f.buffers, f.bytes, f.allocated, f.released), (1, 4096, 2, 1));
    }
}
