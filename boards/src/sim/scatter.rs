//! A READ's data scattered in place: the simulators hand the medium's blocks to host memory
//! straight from the medium, one medium chunk at a time under its read lock
//! (`Medium::read_in_place`), and each chunk goes to the host pieces of the command's buffer it
//! covers (an SCA-1 scatter list's entries, NVMe PRP pages). One IOMMU access per host piece
//! that a chunk touches, as the buffered path makes one per piece, so a fault names the same
//! piece; what arrived before it is counted. A chunk's accesses share one hold of the IOMMU's
//! table ([`Iommu::dma_batch_under`]): a 64 KiB chunk over 4 KiB PRP pages is 16 accesses
//! and one translation lock.
//!
//! A WRITE's data gathered in place ([`Gather`]): the reverse, under the medium's write lock
//! (`Medium::write_in_place`) and one hold of the IOMMU's table for the whole transfer, every
//! host piece checked before any block changes.
//!
//! [`Iommu::dma_batch_under`]: scst_accel_hal::sim::Iommu::dma_batch_under

use scst_accel_hal::sim::DmaBatch;
use scst_accel_hal::sim::IommuFault;

/// One contiguous piece of a host buffer, in IOVA space.
pub(crate) trait HostPiece: Copy {
    fn iova(self) -> u64;
    fn len(self) -> usize;
}

/// An SCA-1 scatter list entry or inline address: (IOVA, length).
impl HostPiece for (u64, u32) {
    fn iova(self) -> u64 {
        self.0
    }
    fn len(self) -> usize {
        self.1 as usize
    }
}

/// Where a transfer's next byte goes among its host pieces.
pub(crate) struct Scatter<'a, P> {
    pieces: &'a [P],
    /// The piece the next byte goes to, and how far into it.
    index: usize,
    within: usize,
    /// Bytes that reached host memory.
    arrived: usize,
}

impl<'a, P: HostPiece> Scatter<'a, P> {
    pub(crate) fn new(pieces: &'a [P]) -> Self {
        Self {
            pieces,
            index: 0,
            within: 0,
            arrived: 0,
        }
    }

    /// Bytes the pieces hold in all.
    pub(crate) fn total(pieces: &[P]) -> usize {
        pieces.iter().map(|p| p.len()).sum()
    }

    /// Copy `blocks`, the transfer's next bytes, to the pieces they fall in, one IOMMU access
    /// per piece, all in `batch` (the caller opens it with the medium's child token:
    /// `sim.medium` -> `iommu.table`).
    ///
    /// # Errors
    /// The IOMMU's fault for the first piece that is not mapped whole: nothing of that piece
    /// was written, the pieces before it were ([`Scatter::arrived`]).
    pub(crate) fn copy(&mut self, batch: &mut DmaBatch<'_>, mut blocks: &[u8]) -> Result<(), IommuFault> {
        while !blocks.is_empty() {
            let Some(&piece) = self.pieces.get(self.index) else {
                // More bytes than pieces: the caller sized the read by the pieces, so never.
                debug_assert!(false, "scatter past the host pieces");
                return Ok(());
            };
            let n = (piece.len() - self.within).min(blocks.len());
            batch.write(piece.iova() + self.within as u64, &blocks[..n])?;
            blocks = &blocks[n..];
            self.arrived += n;
            self.within += n;
            if self.within == piece.len() {
                (self.index, self.within) = (self.index + 1, 0);
            }
        }
        Ok(())
    }

    /// Bytes that reached host memory so far.
    pub(crate) fn arrived(&self) -> usize {
        self.arrived
    }
}

/// A WRITE's data gathered in place: the host pieces of the command's buffer copied straight
/// into the medium's blocks, chunk by chunk under the medium's write lock
/// (`Medium::write_in_place`), each chunk from the pieces it covers, one IOMMU access per piece
/// that a chunk touches. The caller checks every piece first ([`DmaBatch::check_read`]) in the
/// same hold of the IOMMU's table, so no access here can fault and a faulting transfer changes
/// no block.
pub(crate) struct Gather<'a, P> {
    pieces: &'a [P],
    /// The piece the next byte comes from, and how far into it.
    index: usize,
    within: usize,
}

impl<'a, P: HostPiece> Gather<'a, P> {
    pub(crate) fn new(pieces: &'a [P]) -> Self {
        Self {
            pieces,
            index: 0,
            within: 0,
        }
    }

    /// Fill `blocks`, the transfer's next bytes, from the pieces they come from.
    ///
    /// # Errors
    /// The IOMMU's fault for a piece not mapped whole (after [`DmaBatch::check_read`] of every
    /// piece in the same batch: never).
    pub(crate) fn copy(&mut self, batch: &mut DmaBatch<'_>, mut blocks: &mut [u8]) -> Result<(), IommuFault> {
        while !blocks.is_empty() {
            let Some(&piece) = self.pieces.get(self.index) else {
                // More bytes than pieces: the caller sized the write by the pieces, so never.
                debug_assert!(false, "gather past the host pieces");
                return Ok(());
            };
            let n = (piece.len() - self.within).min(blocks.len());
            let (head, rest) = blocks.split_at_mut(n);
            batch.read(piece.iova() + self.within as u64, head)?;
            blocks = rest;
            self.within += n;
            if self.within == piece.len() {
                (self.index, self.within) = (self.index + 1, 0);
            }
        }
        Ok(())
    }
}
