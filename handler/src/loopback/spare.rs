//! Data buffers the model is done with, reused instead of allocated per command: the data-in
//! buffers the initiator hands back ([`Session::recycle`](super::Session::recycle)), taken for
//! the next copies out of the handler's buffers, and the data-out of delivered writes, offered
//! for the initiator's next requests ([`Session::spare_buffer`](super::Session::spare_buffer)).
//!
//! The model copies a READ's data from the handler's buffer into a buffer of its own, which
//! goes to the initiator in the completion. A fresh allocation per command cost more than the
//! copy at 128 KiB: `perf` showed the copy into it faulting its pages in and the kernel zeroing
//! them on every command (the allocator hands blocks that large back to the kernel), about a
//! fifth of the loopback's CPU at 128 KiB sequential read. A block layer reuses its pages; an
//! initiator that recycles its completions' buffers gets the same here. One that does not
//! loses nothing: the model allocates as before.

use crossbeam_channel::Receiver;
use crossbeam_channel::Sender;

/// Buffers kept at most (beyond this, a recycled buffer is dropped).
const KEPT: usize = 128;
/// Capacity above which a recycled buffer is dropped, so the pool holds at most
/// `KEPT * LARGEST` bytes (128 MiB) however large the commands were.
const LARGEST: usize = 1 << 20;

/// The free list: a bounded channel, so taking and giving never block and take no lock of ours.
#[derive(Debug)]
pub(crate) struct SpareBuffers {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Default for SpareBuffers {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(KEPT);
        Self { tx, rx }
    }
}

impl SpareBuffers {
    /// An empty buffer, with the capacity of a recycled one when there is one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Keep `buf` for a later [`SpareBuffers::take`] (emptied), unless it holds nothing worth
    /// keeping, is larger than [`LARGEST`] or the list is full.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > LARGEST {
            return;
        }
        buf.clear();
        let _ = self.tx.try_send(buf);
    }

    /// Buffers kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_capacity_and_the_list_is_bounded() {
        let spare = SpareBuffers::default();
        assert_eq!(spare.take().capacity(), 0, "nothing kept: a new, empty buffer");
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&[7u8; 100]);
        let ptr = buf.as_ptr();
        spare.give(buf);
        let back = spare.take();
        assert!(back.is_empty());
        assert_eq!(
            (back.as_ptr(), back.capacity()),
            (ptr, 4096),
            "the same allocation"
        );

        spare.give(Vec::new());
        spare.give(Vec::with_capacity(LARGEST + 1));
        assert_eq!(spare.len(), 0, "empty and oversized buffers are not kept");
        for _ in 0..KEPT + 10 {
            spare.give(Vec::with_capacity(512));
        }
        assert_eq!(spare.len(), KEPT);
    }
}
