//! NVM commands on namespace 1 (NVMe 1.4 §6): Read, Write (with FUA), Flush, Write Zeroes,
//! Dataset Management (deallocate) and, when configured, Copy (NVMe 2.0 NVM Command Set
//! §3.3.1, source range format 0), Compare (§6.2) and the fused Compare and Write (§4.12).
//! Data moves only through the IOMMU, via the command's PRPs; an IOMMU fault completes the
//! command with Data Transfer Error (QEMU's model completes such a command with success
//! instead, see the module doc of `sim::nvme`).

use super::controller::Counters;
use super::controller::Token;
use super::prp;
use super::prp::Piece;
use super::spec;
use super::spec::nvm;
use super::spec::status;
use super::spec::Sqe;
use super::spec::Status;
use super::worker::CmdResult;
use super::worker::Exec;
use super::worker::Failure;
use super::worker::Reply;
use crate::sim::scatter::gather_checked;
use crate::sim::scatter::Scatter;

/// Bytes of one Dataset Management range (§6.7, Figure 364).
const DSM_RANGE_BYTES: usize = 16;

/// Execute NVM command `sqe`; `media_error` is the fault plan's verdict for a READ.
pub(crate) fn execute(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe, media_error: bool) -> CmdResult {
    let opcode = sqe.opcode();
    let known = matches!(
        opcode,
        nvm::FLUSH | nvm::WRITE | nvm::READ | nvm::DATASET_MANAGEMENT
    ) || (opcode == nvm::WRITE_ZEROES && exec.shared.config.write_zeroes)
        || (opcode == nvm::COPY && exec.shared.config.copy_max_blocks > 0)
        || (opcode == nvm::COMPARE && exec.shared.config.compare_write_max_blocks > 0);
    if !known {
        return Err(status::INVALID_OPCODE.into());
    }
    // Flush may name every namespace (FFFFFFFFh); everything else only namespace 1.
    let broadcast_ok = opcode == nvm::FLUSH && sqe.nsid == u32::MAX;
    if sqe.nsid != 1 && !broadcast_ok {
        return Err(status::INVALID_NAMESPACE.into());
    }
    if sqe.psdt() != 0 {
        // SGLS = 0: PRPs only.
        return Err(status::INVALID_FIELD.into());
    }
    match opcode {
        nvm::FLUSH => {
            Counters::add(&exec.shared.stats.flushes);
            medium_result(exec, exec.shared.medium.flush(), status::WRITE_FAULT)
        }
        nvm::READ => read(exec, token, sqe, media_error),
        nvm::WRITE => write(exec, token, sqe),
        nvm::WRITE_ZEROES => write_zeroes(exec, token, sqe),
        nvm::COPY => copy(exec, token, sqe),
        nvm::COMPARE => compare(exec, token, sqe),
        _ => dataset_management(exec, token, sqe),
    }
}

/// A checked LBA range: byte offset and length on the medium.
struct Range {
    offset: u64,
    bytes: u64,
}

/// SLBA (CDW10-11) and NLB (CDW12 15:0, 0's based), checked against the namespace size.
fn lba_range(exec: &Exec<'_>, slba: u64, blocks: u64) -> Result<Range, Failure> {
    let config = &exec.shared.config;
    if slba.checked_add(blocks).is_none_or(|end| end > config.num_blocks) {
        return Err(status::LBA_OUT_OF_RANGE.into());
    }
    let block = u64::from(config.block_size);
    Ok(Range {
        offset: slba * block,
        bytes: blocks * block,
    })
}

fn slba(sqe: &Sqe) -> u64 {
    u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32)
}

fn nlb(sqe: &Sqe) -> u64 {
    u64::from(sqe.cdw12 & 0xFFFF) + 1
}

/// A data command's range: the transfer must fit MDTS (else Invalid Field, checked first as
/// QEMU does) and the namespace (else LBA Out of Range).
fn data_range(exec: &Exec<'_>, sqe: &Sqe) -> Result<Range, Failure> {
    let bytes = nlb(sqe) * u64::from(exec.shared.config.block_size);
    if bytes > exec.shared.config.max_transfer_bytes() {
        return Err(status::INVALID_FIELD.into());
    }
    lba_range(exec, slba(sqe), nlb(sqe))
}

fn medium_result(exec: &Exec<'_>, result: std::io::Result<()>, error: Status) -> CmdResult {
    match result {
        Ok(()) => Ok(Reply::Done(0)),
        Err(e) => {
            log::warn!("{}: medium error: {e}", exec.shared.id);
            Err(error.into())
        }
    }
}

/// Read (§6.9): medium → host.
fn read(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe, media_error: bool) -> CmdResult {
    let range = data_range(exec, sqe)?;
    let pieces = prp::pieces(exec, token, sqe.prp1, sqe.prp2, range.bytes)?;
    if media_error {
        log::debug!(
            "{}: READ at LBA {}: injected media error",
            exec.shared.id,
            slba(sqe)
        );
        return Err(status::UNRECOVERED_READ_ERROR.into());
    }
    if let Some(done) = read_in_place(exec, token, range.offset, &pieces) {
        return done;
    }
    let mut data = vec![0u8; range.bytes as usize];
    if let Err(e) = exec.shared.medium.read(token, range.offset, &mut data) {
        return medium_result(exec, Err(e), status::UNRECOVERED_READ_ERROR);
    }
    prp::write_to_host(exec, token, &pieces, &data)?;
    Ok(Reply::Done(0))
}

/// Whether a write's FUA bit (CDW12 bit 30) is acted on: set, and the model not told to
/// ignore it ([`crate::sim::nvme::NvmeSimConfig::fua_ignored`]).
fn fua(exec: &Exec<'_>, sqe: &Sqe) -> bool {
    sqe.cdw12 & (1 << 30) != 0 && !exec.shared.config.fua_ignored
}

/// Write (§6.15): host → medium. All data is gathered before the medium changes, so a Data
/// Transfer Error leaves the blocks as they were. FUA (CDW12 bit 30) flushes before
/// completing ([`fua`]).
fn write(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let range = data_range(exec, sqe)?;
    let pieces = prp::pieces(exec, token, sqe.prp1, sqe.prp2, range.bytes)?;
    if let Some(done) = write_in_place(exec, token, range.offset, &pieces) {
        done?;
    } else {
        let mut data = vec![0u8; range.bytes as usize];
        prp::read_from_host(exec, token, &pieces, &mut data)?;
        exec.checkpoint(token)?;
        medium_result(
            exec,
            exec.shared.medium.write(token, range.offset, &data),
            status::WRITE_FAULT,
        )?;
    }
    if fua(exec, sqe) {
        medium_result(exec, exec.shared.medium.flush(), status::WRITE_FAULT)?;
    }
    Ok(Reply::Done(0))
}

/// A Read's data moved from the medium's blocks to the host pieces in place, under the
/// medium's read lock (`Medium::read_in_place`), instead of through a buffer per command and
/// two copies. Each medium chunk is scattered over the PRP pieces it covers ([`Scatter`]), one
/// IOMMU access per piece as the buffered path makes them, so a fault names the same piece;
/// the pieces before it have arrived, as on the buffered path, and the command ends in Data
/// Transfer Error. A Read is bounded by MDTS, so is the time it holds the lock. `None` when
/// the medium cannot lend its blocks (a file): the caller goes through a buffer.
fn read_in_place(exec: &Exec<'_>, token: &mut Token<'_>, offset: u64, pieces: &[Piece]) -> Option<CmdResult> {
    if let Err(abandoned) = exec.checkpoint(token) {
        return Some(Err(abandoned));
    }
    let iommu = &exec.shared.iommu;
    let medium = &exec.shared.medium;
    let mut scatter = Scatter::new(pieces);
    let len = Scatter::total(pieces);
    let moved = medium.read_in_place(token, offset, len, |under, blocks| {
        iommu.dma_batch_under(under, |batch| scatter.copy(batch, blocks))
    })?;
    Some(match moved {
        Err(e) => medium_result(exec, Err(e), status::UNRECOVERED_READ_ERROR),
        Ok(Err(_)) => Err(status::DATA_TRANSFER_ERROR.into()),
        Ok(Ok(())) => Ok(Reply::Done(0)),
    })
}

/// A Write gathered in place: every PRP piece checked against the IOMMU, then copied from
/// host memory straight into the medium's blocks ([`gather_checked`]), under one hold of the medium's
/// write lock and of the IOMMU's table (`Medium::write_in_place`, `Iommu::dma_batch_under`),
/// instead of a buffer per command and two copies. A piece that would fault is found before
/// any block changes: Data Transfer Error with the blocks as they were, the fault recorded for
/// that piece as the buffered path's read of it recorded it. A Write is bounded by MDTS, so is
/// the time it holds the lock. `None` when the medium cannot lend its blocks (a file): the
/// caller goes through a buffer.
fn write_in_place(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    offset: u64,
    pieces: &[Piece],
) -> Option<CmdResult> {
    if let Err(abandoned) = exec.checkpoint(token) {
        return Some(Err(abandoned));
    }
    let iommu = &exec.shared.iommu;
    let medium = &exec.shared.medium;
    let moved = medium.write_in_place(token, offset, Scatter::total(pieces), |under, blocks| {
        iommu.dma_batch_under(under, |batch| {
            let steps = pieces.iter().map(|p| (p.iova, p.len));
            gather_checked(batch, steps, pieces, blocks)
        })
    })?;
    Some(match moved {
        Err(e) => medium_result(exec, Err(e), status::WRITE_FAULT),
        Ok(Err(_)) => Err(status::DATA_TRANSFER_ERROR.into()),
        Ok(Ok(())) => Ok(Reply::Done(0)),
    })
}

/// Compare (§6.2): the host's data against the medium, nothing written; Compare Failure when
/// any byte differs.
fn compare(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let range = data_range(exec, sqe)?;
    let pieces = prp::pieces(exec, token, sqe.prp1, sqe.prp2, range.bytes)?;
    let mut expected = vec![0u8; range.bytes as usize];
    prp::read_from_host(exec, token, &pieces, &mut expected)?;
    let mut held = vec![0u8; range.bytes as usize];
    if let Err(e) = exec.shared.medium.read(token, range.offset, &mut held) {
        return medium_result(exec, Err(e), status::UNRECOVERED_READ_ERROR);
    }
    if held == expected {
        Ok(Reply::Done(0))
    } else {
        Err(status::COMPARE_FAILURE.into())
    }
}

/// The fused Compare and Write (§4.12): `first` a Compare (FUSE 01b), `second` a Write (FUSE
/// 10b) of the same blocks, at most ACWU + 1 of them. Both commands' data is gathered first;
/// then the medium compares and, only on a match, writes, as one step no other command's
/// access comes between ([`Medium::compare_and_write`]). The statuses of the two: success
/// for both; Compare Failure for the first and Command Aborted due to Failed Fused Command for
/// the second on a mismatch; an error of either aborts the other the same way.
///
/// [`Medium::compare_and_write`]: crate::sim::medium::Medium::compare_and_write
pub(crate) fn fused_compare_write(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    first: &Sqe,
    second: &Sqe,
) -> (CmdResult, CmdResult) {
    let failed_fused = || Err(Failure::Status(status::ABORTED_FAILED_FUSED));
    let same_blocks = first.nsid == second.nsid && slba(first) == slba(second) && nlb(first) == nlb(second);
    if first.opcode() != nvm::COMPARE || second.opcode() != nvm::WRITE || !same_blocks {
        // §4.12: the two commands name the same blocks; Compare then Write is the one
        // fused operation the controller reports (FUSES bit 0).
        return (Err(status::INVALID_FIELD.into()), failed_fused());
    }
    if nlb(first) > u64::from(exec.shared.config.compare_write_max_blocks) {
        return (Err(status::INVALID_FIELD.into()), failed_fused());
    }
    if first.nsid != 1 {
        return (Err(status::INVALID_NAMESPACE.into()), failed_fused());
    }
    if first.psdt() != 0 || second.psdt() != 0 {
        return (Err(status::INVALID_FIELD.into()), failed_fused());
    }
    let gathered = (|| {
        let range = data_range(exec, first)?;
        let mut expected = vec![0u8; range.bytes as usize];
        let pieces = prp::pieces(exec, token, first.prp1, first.prp2, range.bytes)?;
        prp::read_from_host(exec, token, &pieces, &mut expected)?;
        let mut data = vec![0u8; range.bytes as usize];
        let pieces = prp::pieces(exec, token, second.prp1, second.prp2, range.bytes)?;
        prp::read_from_host(exec, token, &pieces, &mut data)?;
        Ok::<_, Failure>((range, expected, data))
    })();
    let (range, expected, data) = match gathered {
        Ok(g) => g,
        Err(Failure::Abandoned) => return (Err(Failure::Abandoned), Err(Failure::Abandoned)),
        Err(e) => return (Err(e), failed_fused()),
    };
    if let Err(e) = exec.checkpoint(token) {
        return (Err(e), Err(Failure::Abandoned));
    }
    let written = exec
        .shared
        .medium
        .compare_and_write(token, range.offset, &expected, &data);
    Counters::add(&exec.shared.stats.fused_compare_writes);
    match written {
        Ok(true) => {}
        Ok(false) => {
            Counters::add(&exec.shared.stats.fused_miscompares);
            return (Err(status::COMPARE_FAILURE.into()), failed_fused());
        }
        Err(e) => {
            log::warn!("{}: medium error: {e}", exec.shared.id);
            return (Err(status::UNRECOVERED_READ_ERROR.into()), failed_fused());
        }
    }
    let flushed = if fua(exec, second) {
        medium_result(exec, exec.shared.medium.flush(), status::WRITE_FAULT)
    } else {
        Ok(Reply::Done(0))
    };
    (Ok(Reply::Done(0)), flushed)
}

/// Write Zeroes (§6.16): no data transfer, so MDTS does not apply, but a configured WZSL does:
/// more than 2^`wzsl` pages of 4 KiB is Invalid Field in Command (NVM Command Set
/// Specification 1.0 §4.1.5.3), checked before the range. The blocks read zeroes afterwards
/// whatever DEAC (CDW12 bit 25) says: this model writes the zeroes either way.
fn write_zeroes(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let config = &exec.shared.config;
    if config.wzsl != 0 && nlb(sqe) * u64::from(config.block_size) > spec::PAGE_SIZE << config.wzsl {
        return Err(status::INVALID_FIELD.into());
    }
    let range = lba_range(exec, slba(sqe), nlb(sqe))?;
    exec.checkpoint(token)?;
    medium_result(
        exec,
        exec.shared.medium.write_zeroes(token, range.offset, range.bytes),
        status::WRITE_FAULT,
    )
}

/// Bytes of one Copy source range entry, format 0 (NVMe 2.0 NVM Command Set Figure 42).
const COPY_RANGE_BYTES: usize = 32;

/// Copy (NVMe 2.0 NVM Command Set §3.3.1): NR + 1 source ranges (format 0: SLBA at bytes
/// 15:8, NLB 0's based at 17:16) read from the host through PRP1/PRP2, copied in order to the
/// blocks from SDLBA (CDW10-11). Only format 0 (CDW12 bits 11:8); a range over MSSRL, more
/// ranges than MSRC + 1 or more blocks than MCL is Command Size Limit Exceeded. Every range is
/// checked and every source block read before the medium changes (an overlap copies what the
/// source held), no host data moves.
fn copy(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let max = u64::from(exec.shared.config.copy_max_blocks);
    let count = (sqe.cdw12 & 0xFF) as usize + 1;
    if (sqe.cdw12 >> 8) & 0xF != 0 {
        return Err(status::INVALID_FIELD.into());
    }
    // MSRC = 0: one range.
    if count > 1 {
        return Err(status::COMMAND_SIZE_LIMIT_EXCEEDED.into());
    }
    let mut raw = vec![0u8; count * COPY_RANGE_BYTES];
    let pieces = prp::pieces(exec, token, sqe.prp1, sqe.prp2, raw.len() as u64)?;
    prp::read_from_host(exec, token, &pieces, &mut raw)?;
    let mut sources = Vec::with_capacity(count);
    let mut total = 0u64;
    for entry in raw.chunks_exact(COPY_RANGE_BYTES) {
        let mut start = [0u8; 8];
        start.copy_from_slice(&entry[8..16]);
        let blocks = u64::from(u16::from_le_bytes([entry[16], entry[17]])) + 1;
        if blocks > max {
            return Err(status::COMMAND_SIZE_LIMIT_EXCEEDED.into());
        }
        total += blocks;
        sources.push(lba_range(exec, u64::from_le_bytes(start), blocks)?);
    }
    if total > max {
        return Err(status::COMMAND_SIZE_LIMIT_EXCEEDED.into());
    }
    let destination = lba_range(exec, slba(sqe), total)?;
    let mut data = vec![0u8; destination.bytes as usize];
    let mut at = 0usize;
    for source in &sources {
        let piece = &mut data[at..at + source.bytes as usize];
        if let Err(e) = exec.shared.medium.read(token, source.offset, piece) {
            return medium_result(exec, Err(e), status::UNRECOVERED_READ_ERROR);
        }
        at += source.bytes as usize;
    }
    exec.checkpoint(token)?;
    medium_result(
        exec,
        exec.shared.medium.write(token, destination.offset, &data),
        status::WRITE_FAULT,
    )
}

/// Dataset Management (§6.7): NR + 1 ranges read from the host; with AD (CDW11 bit 2) each is
/// deallocated (reads back as zeroes) when DLFEAT bits 2:0 are 001b; with 000b the model
/// keeps the data, as a controller may (the command is advisory, and DLFEAT 000b promises
/// nothing about what a deallocated block reads). Every range is checked (its LBAs, and its
/// length against a configured DMRSL) before any is deallocated. Without AD the attributes are hints and nothing happens.
fn dataset_management(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let count = (sqe.cdw10 & 0xFF) as usize + 1;
    let deallocate = sqe.cdw11 & (1 << 2) != 0;
    let mut raw = vec![0u8; count * DSM_RANGE_BYTES];
    let pieces = prp::pieces(exec, token, sqe.prp1, sqe.prp2, raw.len() as u64)?;
    prp::read_from_host(exec, token, &pieces, &mut raw)?;
    let reads_zeroes = exec.shared.config.dlfeat & 0b111 == super::config::DLFEAT_READS_ZEROES;
    if !deallocate {
        return Ok(Reply::Done(0));
    }
    let mut ranges = Vec::with_capacity(count);
    for entry in raw.chunks_exact(DSM_RANGE_BYTES) {
        let blocks = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&entry[8..16]);
        let start = u64::from_le_bytes(start);
        // DMRSL: a controller refuses a longer range (NVM Command Set Specification 1.0
        // §4.1.5.3), before deallocating any.
        let dmrsl = exec.shared.config.dmrsl;
        if dmrsl != 0 && blocks > dmrsl {
            return Err(status::INVALID_FIELD.into());
        }
        if blocks > 0 {
            ranges.push(lba_range(exec, start, u64::from(blocks))?);
        }
    }
    if !reads_zeroes {
        return Ok(Reply::Done(0));
    }
    for range in ranges {
        exec.checkpoint(token)?;
        medium_result(
            exec,
            exec.shared.medium.deallocate(token, range.offset, range.bytes),
            status::WRITE_FAULT,
        )?;
    }
    Ok(Reply::Done(0))
}
