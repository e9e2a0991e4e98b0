//! A READ's data scattered in place: the simulators hand the medium's blocks to host memory
//! straight from the medium, one medium chunk at a time under its read lock
//! (`Medium::read_in_place`), and each chunk goes to the host pieces of the command's buffer it
//! covers (an SCA-1 scatter list's entries, NVMe PRP pages). One IOMMU access per host piece
//! that a chunk touches, as the buffered path makes one per piece, so a fault names the same
//! piece; what arrived before it is counted. A chunk's accesses share one hold of the IOMMU's
//! table ([`Iommu::dma_batch_under`]): a 64 KiB chunk over 4 KiB PRP pages is 16 accesses
//! and one translation lock.
//!
//! A WRITE's data gathered in place ([`gather_checked`]): the reverse, under the medium's write
//! lock (`Medium::write_in_place`) and one hold of the IOMMU's table for the whole transfer,
//! every DMA step checked before any block changes.
//!
//! [`Iommu::dma_batch_under`]: scst_accel_hal::sim::Iommu::dma_batch_under

use super::medium::ChunksMut;
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

/// A position among a transfer's host pieces: the piece the next byte belongs to, and how far
/// into it. Shared by the scatter and the gather, which walk the pieces the same way.
struct Cursor<'a, P> {
    pieces: &'a [P],
    index: usize,
    within: usize,
}

impl<'a, P: HostPiece> Cursor<'a, P> {
    fn new(pieces: &'a [P]) -> Self {
        Self {
            pieces,
            index: 0,
            within: 0,
        }
    }

    /// The host range of the next `at_most` bytes or fewer, up to the end of the current piece,
    /// and the cursor moved past it; `None` past the last piece.
    fn take(&mut self, at_most: usize) -> Option<(u64, usize)> {
        let piece = *self.pieces.get(self.index)?;
        let iova = piece.iova() + self.within as u64;
        let n = (piece.len() - self.within).min(at_most);
        self.within += n;
        if self.within == piece.len() {
            (self.index, self.within) = (self.index + 1, 0);
        }
        Some((iova, n))
    }
}

/// Where a transfer's next byte goes among its host pieces.
pub(crate) struct Scatter<'a, P> {
    cursor: Cursor<'a, P>,
    /// Bytes that reached host memory.
    arrived: usize,
}

impl<'a, P: HostPiece> Scatter<'a, P> {
    pub(crate) fn new(pieces: &'a [P]) -> Self {
        Self {
            cursor: Cursor::new(pieces),
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
            let Some((iova, n)) = self.cursor.take(blocks.len()) else {
                // More bytes than pieces: the caller sized the read by the pieces, so never.
                debug_assert!(false, "scatter past the host pieces");
                return Ok(());
            };
            batch.write(iova, &blocks[..n])?;
            blocks = &blocks[n..];
            self.arrived += n;
        }
        Ok(())
    }

    /// Bytes that reached host memory so far.
    pub(crate) fn arrived(&self) -> usize {
        self.arrived
    }
}

/// A WRITE's data gathered in place into `blocks` (the medium's range, lent under its write
/// lock by `Medium::write_in_place`) from the host `pieces` of the command's buffer, all in
/// `batch`. Every DMA step of the transfer (`steps`: `(iova, len)`, in the order the buffered
/// path makes them) is checked first, in the same hold of the IOMMU's table, so a step that
/// would fault is found before any block changes, and no copy after the checks can fault
/// (`DmaBatch::check_read`). Then each chunk of `blocks` is filled from the pieces it covers,
/// one IOMMU access per piece that a chunk touches.
///
/// # Errors
/// For the first step that would fault: the bytes of the steps before it (what the buffered
/// path had gathered) and the IOMMU's fault, recorded as a read of that step.
pub(crate) fn gather_checked<P: HostPiece>(
    batch: &mut DmaBatch<'_>,
    steps: impl IntoIterator<Item = (u64, usize)>,
    pieces: &[P],
    blocks: ChunksMut<'_>,
) -> Result<(), (usize, IommuFault)> {
    let mut checked = 0usize;
    for (iova, len) in steps {
        batch
            .check_read(iova, len as u64)
            .map_err(|fault| (checked, fault))?;
        checked += len;
    }
    let mut cursor = Cursor::new(pieces);
    blocks
        .try_for_each(|mut chunk| {
            while !chunk.is_empty() {
                let Some((iova, n)) = cursor.take(chunk.len()) else {
                    // More bytes than pieces: the caller sized the write by the pieces, so never.
                    debug_assert!(false, "gather past the host pieces");
                    return Ok(());
                };
                let (head, rest) = chunk.split_at_mut(n);
                batch.read(iova, head)?;
                chunk = rest;
            }
            Ok(())
        })
        // Every step was admitted above in this hold of the table: never.
        .map_err(|fault| (checked, fault))
}
