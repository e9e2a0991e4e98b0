//! Physical Region Page walking (NVMe 1.4 §4.3): turn a command's PRP1/PRP2 and transfer
//! length into the host IOVA pieces of its data buffer, reading PRP lists through the IOMMU.
//!
//! The rules applied, with the memory page size of CC.MPS = 0 (4 KiB):
//! - PRP1 may carry an offset into its page; it must be dword aligned (bits 1:0 = 0). The
//!   first piece runs from PRP1 to the end of its page or of the transfer.
//! - If the rest fits in one page, PRP2 points at it and must be page aligned.
//! - Otherwise PRP2 points at a PRP list (qword aligned, with an offset allowed). Each list
//!   entry is a page-aligned data page. When more entries are needed than fit in the rest of
//!   the list's page, the last entry of the page instead points at the next list page, which
//!   must be page aligned.
//!
//! An offset that breaks these rules completes with Invalid PRP Offset; a list page the IOMMU
//! refuses, with Data Transfer Error.

use std::cell::Cell;
use std::ops::Deref;

use super::controller::Token;
use super::spec::status;
use super::spec::PAGE_SIZE;
use super::worker::Exec;
use super::worker::Failure;
use crate::sim::scatter::HostPiece;

/// One contiguous piece of a data buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub iova: u64,
    pub len: usize,
}

impl HostPiece for Piece {
    fn iova(self) -> u64 {
        self.iova
    }
    fn len(self) -> usize {
        self.len
    }
}

/// A worker's list of pieces, kept from one command to the next (cleared, its capacity
/// kept): a command allocates no list once the worker has walked its longest.
#[derive(Default)]
pub(crate) struct PrpScratch(Cell<Vec<Piece>>);

/// One command's pieces, in the worker's [`PrpScratch`]: the list goes back there when this is
/// dropped. (A second walk while one is held, the fused Compare and Write's Write, gets a list
/// of its own.)
pub(crate) struct Pieces<'a> {
    list: Vec<Piece>,
    home: &'a PrpScratch,
}

impl Deref for Pieces<'_> {
    type Target = [Piece];
    fn deref(&self) -> &[Piece] {
        &self.list
    }
}

impl Drop for Pieces<'_> {
    fn drop(&mut self) {
        self.home.0.set(std::mem::take(&mut self.list));
    }
}

/// The pieces of a `len`-byte transfer described by `prp1` and `prp2`.
///
/// # Errors
/// [`Failure::Status`] with Invalid PRP Offset or Data Transfer Error; [`Failure::Abandoned`]
/// if a reset takes the command away while a list is read.
pub(crate) fn pieces<'a>(
    exec: &Exec<'a>,
    token: &mut Token<'_>,
    prp1: u64,
    prp2: u64,
    len: u64,
) -> Result<Pieces<'a>, Failure> {
    let mut out = Pieces {
        list: exec.prp.0.take(),
        home: exec.prp,
    };
    out.list.clear();
    walk(exec, token, prp1, prp2, len, &mut out.list)?;
    Ok(out)
}

/// [`pieces`] into `out`.
fn walk(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    prp1: u64,
    prp2: u64,
    len: u64,
    out: &mut Vec<Piece>,
) -> Result<(), Failure> {
    if len == 0 {
        return Ok(());
    }
    if prp1 & 0x3 != 0 {
        return Err(status::INVALID_PRP_OFFSET.into());
    }
    let first = len.min(PAGE_SIZE - prp1 % PAGE_SIZE);
    out.push(Piece {
        iova: prp1,
        len: first as usize,
    });
    let mut rest = len - first;
    if rest == 0 {
        return Ok(());
    }
    if rest <= PAGE_SIZE {
        if !prp2.is_multiple_of(PAGE_SIZE) {
            return Err(status::INVALID_PRP_OFFSET.into());
        }
        out.push(Piece {
            iova: prp2,
            len: rest as usize,
        });
        return Ok(());
    }
    if prp2 & 0x7 != 0 {
        return Err(status::INVALID_PRP_OFFSET.into());
    }
    // One list page's entries, read with one DMA (a page holds PAGE_SIZE / 8 of them).
    let mut raw = [0u8; PAGE_SIZE as usize];
    let mut list = prp2;
    while rest > 0 {
        let needed = rest.div_ceil(PAGE_SIZE);
        let room = (PAGE_SIZE - list % PAGE_SIZE) / 8;
        // All remaining entries fit here, or this page ends with a pointer to the next one.
        let (data_entries, chained) = if needed <= room {
            (needed, false)
        } else {
            (room - 1, true)
        };
        let read = (data_entries + u64::from(chained)) as usize;
        let raw = &mut raw[..read * 8];
        exec.dma_read(token, list, raw)?;
        let mut entries = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        for entry in entries.by_ref().take(data_entries as usize) {
            if !entry.is_multiple_of(PAGE_SIZE) {
                return Err(status::INVALID_PRP_OFFSET.into());
            }
            let n = rest.min(PAGE_SIZE);
            out.push(Piece {
                iova: entry,
                len: n as usize,
            });
            rest -= n;
        }
        if chained {
            let next = entries.next().unwrap_or_default();
            if !next.is_multiple_of(PAGE_SIZE) {
                return Err(status::INVALID_PRP_OFFSET.into());
            }
            list = next;
        }
    }
    Ok(())
}

/// Copy `data` to the host pieces in order.
pub(crate) fn write_to_host(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    pieces: &[Piece],
    data: &[u8],
) -> Result<(), Failure> {
    let mut at = 0usize;
    for p in pieces {
        exec.dma_write(token, p.iova, &data[at..at + p.len])?;
        at += p.len;
    }
    Ok(())
}

/// Copy the host pieces in order into `out`.
pub(crate) fn read_from_host(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    pieces: &[Piece],
    out: &mut [u8],
) -> Result<(), Failure> {
    let mut at = 0usize;
    for p in pieces {
        exec.dma_read(token, p.iova, &mut out[at..at + p.len])?;
        at += p.len;
    }
    Ok(())
}

/// Move `len` bytes of `data` to the buffer described by `prp1`/`prp2` (a controller →
/// host transfer such as Identify or Get Log Page).
pub(crate) fn send(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    prp1: u64,
    prp2: u64,
    data: &[u8],
) -> Result<(), Failure> {
    let pieces = pieces(exec, token, prp1, prp2, data.len() as u64)?;
    write_to_host(exec, token, &pieces, data)
}
