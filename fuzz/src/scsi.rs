//! Target `scsi`: the CDB decoder and the SBC engine (`Disk::cdb_info`, `Disk::start`,
//! `Disk::finish`) with an arbitrary disk, arbitrary CDBs and data-out, and a store whose every
//! operation may fail in any way [`StoreStatus`] can say.
//!
//! The disk's COMPARE AND WRITE is run by SCST's core, by this engine (TCMU: a compare then a
//! write under the range lock, or the store's fused step of up to `store_compare_and_write_blocks`
//! blocks) or by nobody, as the input says.
//!
//! Invariants beyond "no panic":
//! - `cdb_info` returns values the kernel accepts (direction NONE exactly when nothing moves,
//!   lengths below `i32::MAX`, LBA and data length below `i64::MAX`), or CHECK CONDITION, and
//!   then `start` refuses the CDB with the same sense;
//! - every response is well formed: from `start` GOOD without sense or CHECK CONDITION with
//!   fixed (70h) or descriptor (72h) sense of at most 252 bytes, `data_in_len == data.len()`;
//!   after a store step the status and sense key the store's answer maps to (RESERVATION
//!   CONFLICT, without sense, exactly when the store said so);
//! - engine data-in never exceeds the transfer length the PARSE step reported;
//! - every planned store operation lies inside the medium, moves at least one block, and keeps
//!   the disk's limits (MAXIMUM TRANSFER LENGTH, MAXIMUM WRITE SAME LENGTH for WRITE SAME,
//!   MAXIMUM COMPARE AND WRITE LENGTH, the UNMAP limits); an op that uses the command's buffer
//!   uses exactly the PARSE transfer length from offset 0 (GET LBA STATUS: at most, checked on
//!   its data-in), except the engine's COMPARE AND WRITE: its compare takes the first half of
//!   the buffer, its write the second (at offset N blocks), its fused step all of it;
//! - a command takes at most two store steps (WRITE AND VERIFY), whatever the store answers.

use crate::check;
use arbitrary::Result;
use arbitrary::Unstructured;
use scst_accel_handler::abi::data_direction;
use scst_accel_handler::abi::op_flags;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::scsi::CompareAndWrite;
use scst_accel_handler::scsi::CompareAndWriteBy;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::scsi::IoPlan;
use scst_accel_handler::scsi::Plan;
use scst_accel_handler::scsi::Response;
use scst_accel_handler::store::StoreOp;
use scst_accel_handler::store::StoreStatus;

/// Commands per input.
const MAX_COMMANDS: usize = 8;

/// COMPARE AND WRITE commands whose write step (after the compare) the engine planned:
/// `fuzz_random run` prints it, so a harness that never reaches the engine's COMPARE AND WRITE
/// shows.
pub static COMPARE_AND_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// COMPARE AND WRITE commands the engine planned as the store's fused step.
pub static FUSED_COMPARE_AND_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Run one input.
pub fn target(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn disk(u: &mut Unstructured<'_>) -> Result<Option<Disk>> {
    let block_size = *u.choose(&[512u32, 1024, 4096, 512, 4096, 8192, 65536, 513, 0])?;
    let num_blocks = match u.int_in_range(0..=3u8)? {
        0 => u64::from(u.int_in_range(0..=64u8)?),
        1 => u64::from(u.arbitrary::<u32>()?),
        2 => u.arbitrary::<u64>()?,
        _ => 2048,
    };
    let mut cfg = DiskConfig::new(block_size, num_blocks);
    cfg.physical_block_exponent = u.int_in_range(0..=16)?;
    cfg.read_only = u.arbitrary()?;
    cfg.thin_provisioning = u.arbitrary()?;
    cfg.unmapped_reads_zero = u.arbitrary()?;
    cfg.lba_status = u.arbitrary()?;
    cfg.write_cache = u.arbitrary()?;
    cfg.d_sense = u.arbitrary()?;
    if u.arbitrary()? {
        cfg.limits.max_transfer_blocks = u.arbitrary()?;
        cfg.limits.optimal_transfer_blocks = u.arbitrary()?;
        cfg.limits.max_unmap_lba_count = u.arbitrary()?;
        cfg.limits.max_unmap_descriptors = u.int_in_range(0..=300)?;
        // Often small, so a WRITE SAME reaches past it (and past it only).
        cfg.limits.max_write_same_blocks = match u.int_in_range(0..=2u8)? {
            0 => u64::from(u.arbitrary::<u8>()?),
            1 => u64::from(u.arbitrary::<u16>()?),
            _ => u.arbitrary()?,
        };
        cfg.limits.unmap_granularity = u.arbitrary()?;
    }
    cfg.compare_and_write = *u.choose(&[
        CompareAndWriteBy::ScstCore,
        CompareAndWriteBy::Handler,
        CompareAndWriteBy::Handler,
        CompareAndWriteBy::Nobody,
    ])?;
    cfg.store_compare_and_write_blocks = match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => 1,
        2 => u32::from(u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    };
    Ok(Disk::try_new(cfg).ok())
}

fn cdb(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = match u.int_in_range(0..=7u8)? {
        0 => 6,
        1 | 2 => 10,
        3 => 12,
        4 | 5 => 16,
        6 => 32,
        _ => u.int_in_range(0..=40)?,
    };
    let mut cdb = vec![0u8; len];
    if len > 0 {
        // Mostly opcodes the engine knows, so the decoder's fields are reached.
        cdb[0] = if u.ratio(3, 4)? {
            *u.choose(&[
                0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2E, 0x2F, 0x34,
                0x35, 0x41, 0x42, 0x55, 0x5A, 0x88, 0x89, 0x8A, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0,
                0xA3, 0xA8, 0xAA, 0xAF,
            ])?
        } else {
            u.arbitrary()?
        };
    }
    for byte in cdb.iter_mut().skip(1) {
        // Mostly zero: small LBAs and lengths reach the I/O paths.
        *byte = if u.ratio(1, 3)? { u.arbitrary()? } else { 0 };
    }
    Ok(cdb)
}

/// Data-out: none, 4 KiB, random bytes, or as long as PARSE said (capped), the length a kernel
/// would transfer (COMPARE AND WRITE's 2 × N blocks).
fn data_out(u: &mut Unstructured<'_>, transfer_len: u32) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Vec::new(),
        1 => vec![0; 4096],
        2 => vec![u.arbitrary()?; transfer_len.min(1 << 18) as usize],
        _ => {
            let len = u.int_in_range(0..=600usize)?;
            u.bytes(len.min(u.len()))?.to_vec()
        }
    })
}

/// Every store answer, fields arbitrary; `Good` most often, so commands reach their later
/// steps. The match has an arm for each variant: a new [`StoreStatus`] does not compile here
/// until it is added (to `ANSWERS` too).
fn status(u: &mut Unstructured<'_>) -> Result<StoreStatus> {
    use StoreStatus::*;
    const ANSWERS: [StoreStatus; 19] = [
        Good,
        Good,
        Good,
        Good,
        Good,
        Miscompare { offset: None },
        ReadError { lba: 0 },
        WriteError { lba: 0 },
        SpaceExhausted { lba: 0 },
        OutOfRange,
        InvalidRequest,
        DeviceError,
        Aborted,
        NotReady,
        FormatInProgress,
        InvalidField,
        ReservationConflict,
        AccessDenied,
        WriteProtected,
    ];
    let answer = *u.choose(&ANSWERS)?;
    Ok(match answer {
        Miscompare { .. } => Miscompare {
            offset: u.arbitrary()?,
        },
        ReadError { .. } => ReadError { lba: u.arbitrary()? },
        WriteError { .. } => WriteError { lba: u.arbitrary()? },
        SpaceExhausted { .. } => SpaceExhausted { lba: u.arbitrary()? },
        Good | OutOfRange | InvalidRequest | DeviceError | Aborted | NotReady | FormatInProgress
        | InvalidField | ReservationConflict | AccessDenied | WriteProtected => answer,
    })
}

/// The status and sense key a store answer ends a command with (`None`: the next step, or
/// GOOD), on `disk`; a WRITE ERROR of the flush before a FUA READ may also let the read run.
fn expected(disk: &Disk, status: StoreStatus) -> Option<(u8, u8)> {
    use StoreStatus::*;
    let check = |key: u8| Some((sam_status::CHECK_CONDITION, key));
    match status {
        Good => None,
        Miscompare { .. } => check(0x0E),
        ReadError { .. } | WriteError { .. } => check(0x03),
        SpaceExhausted { .. } if disk.capabilities().provisioning.thin => check(0x07),
        SpaceExhausted { .. } => check(0x03),
        OutOfRange | InvalidField => check(0x05),
        InvalidRequest | DeviceError => check(0x04),
        Aborted => check(0x0B),
        NotReady | FormatInProgress => check(0x02),
        ReservationConflict => Some((sam_status::RESERVATION_CONFLICT, 0)),
        AccessDenied | WriteProtected => check(0x07),
    }
}

/// The sense key of fixed (70h/71h) or descriptor (72h/73h) sense.
fn sense_key(sense: &[u8]) -> Option<u8> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 => sense.get(2).map(|b| b & 0x0F),
        0x72 | 0x73 => sense.get(1).map(|b| b & 0x0F),
        _ => None,
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let Some(disk) = disk(u)? else {
        return Ok(());
    };
    for _ in 0..MAX_COMMANDS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=15u8)? {
            0 => disk.reset(&mut scst_accel_hal::locks::LockToken::root()),
            1 => disk.set_num_blocks(u.arbitrary()?),
            _ => command(&disk, u)?,
        }
    }
    Ok(())
}

fn command(disk: &Disk, u: &mut Unstructured<'_>) -> Result<()> {
    let cdb = cdb(u)?;
    let info = match disk.cdb_info(&cdb) {
        Ok(info) => {
            check!(info.op_flags & op_flags::INFO_VALID != 0, "{cdb:02x?}: {info:?}");
            check!(info.transfer_len <= i32::MAX as u32, "{cdb:02x?}: {info:?}");
            check!(
                (info.direction == data_direction::NONE) == (info.transfer_len == 0),
                "{cdb:02x?}: {info:?}"
            );
            check!(
                info.lba <= i64::MAX as u64 && info.data_len <= i64::MAX as u64,
                "{cdb:02x?}: {info:?}"
            );
            Some(info)
        }
        Err(r) => {
            let data_out = data_out(u, 0)?;
            check!(r.status == sam_status::CHECK_CONDITION, "{cdb:02x?}: {r:?}");
            well_formed(&cdb, &r, None);
            match disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &data_out) {
                Plan::Done(s) => check!(s.sense == r.sense, "{cdb:02x?}: {s:?} vs {r:?}"),
                Plan::Io(io) => check!(false, "{cdb:02x?}: cdb_info refused, start planned {:?}", io.op),
            }
            return Ok(());
        }
    };
    let transfer_len = info.map_or(0, |i| i.transfer_len);
    let data_out = data_out(u, transfer_len)?;
    match disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &data_out) {
        Plan::Done(r) => {
            well_formed(&cdb, &r, None);
            check!(
                r.data.len() as u64 <= u64::from(transfer_len),
                "{cdb:02x?}: {} bytes of data-in, PARSE said {transfer_len}",
                r.data.len()
            );
        }
        Plan::Io(io) => {
            io_inside(disk, &cdb, &io, None, transfer_len);
            let answer = status(u)?;
            match disk.finish(&io, answer) {
                Plan::Done(r) => after_store(disk, &cdb, &io, answer, &r, transfer_len),
                Plan::Io(next) => {
                    check!(
                        expected(disk, answer).is_none() || is_fua_read_flush(&cdb, &io, answer),
                        "{cdb:02x?}: {:?} answered {answer:?}, then {:?}",
                        io.op,
                        next.op
                    );
                    io_inside(disk, &cdb, &next, Some(&io), transfer_len);
                    let answer = status(u)?;
                    match disk.finish(&next, answer) {
                        Plan::Done(r) => after_store(disk, &cdb, &next, answer, &r, transfer_len),
                        Plan::Io(third) => check!(false, "{cdb:02x?}: a third store step {:?}", third.op),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The flush before a FUA READ, answered with a write error or with no space left (an
/// fdatasync's EIO or ENOSPC): the read may still run, where the loss lies above its range
/// (`rw::read_write_back_failed`).
fn is_fua_read_flush(cdb: &[u8], io: &IoPlan, answer: StoreStatus) -> bool {
    matches!(cdb.first(), Some(0x08 | 0x28 | 0x88 | 0xA8))
        && matches!(io.op, StoreOp::Flush)
        && matches!(
            answer,
            StoreStatus::WriteError { .. } | StoreStatus::SpaceExhausted { .. }
        )
}

/// The response after the store answered `io`'s step with `answer`: well formed, with the
/// status and sense key that answer maps to.
fn after_store(disk: &Disk, cdb: &[u8], io: &IoPlan, answer: StoreStatus, r: &Response, transfer_len: u32) {
    well_formed(cdb, r, Some(transfer_len));
    let got = (r.status, sense_key(&r.sense).unwrap_or(0));
    match expected(disk, answer) {
        None => check!(
            r.status == sam_status::GOOD,
            "{cdb:02x?}: {:?} GOOD, then {r:?}",
            io.op
        ),
        Some(want) if is_fua_read_flush(cdb, io, answer) => check!(
            got == want || r.status == sam_status::GOOD,
            "{cdb:02x?}: {:?} answered {answer:?}, then {r:?}",
            io.op
        ),
        Some(want) => check!(
            got == want,
            "{cdb:02x?}: {:?} answered {answer:?}, then {r:?} (expected {want:02x?})",
            io.op
        ),
    }
}

/// A response from `start` carries engine data (`data_in_len == data.len()`) and is GOOD or
/// CHECK CONDITION; one from `finish` (`after_store`) carries none, the data-in the store moved
/// fits the PARSE transfer length, and it may also be RESERVATION CONFLICT (a store's answer).
fn well_formed(cdb: &[u8], r: &Response, after_store: Option<u32>) {
    match after_store {
        None => check!(r.data_in_len == r.data.len(), "{cdb:02x?}: {r:?}"),
        Some(transfer_len) => check!(
            r.data.is_empty() && r.data_in_len as u64 <= u64::from(transfer_len),
            "{cdb:02x?}: {r:?} after the store, PARSE said {transfer_len}"
        ),
    }
    match r.status {
        sam_status::GOOD => check!(r.sense.is_empty(), "{cdb:02x?}: GOOD with sense {r:?}"),
        sam_status::CHECK_CONDITION => {
            check!(!r.sense.is_empty() && r.sense.len() <= 252, "{cdb:02x?}: {r:?}");
            check!(matches!(r.sense[0] & 0x7F, 0x70 | 0x72), "{cdb:02x?}: {r:?}");
            check!(r.data.is_empty(), "{cdb:02x?}: CHECK CONDITION with data {r:?}");
        }
        sam_status::RESERVATION_CONFLICT if after_store.is_some() => check!(
            r.sense.is_empty() && r.data.is_empty() && r.data_in_len == 0,
            "{cdb:02x?}: RESERVATION CONFLICT with sense or data {r:?}"
        ),
        other => check!(false, "{cdb:02x?}: status {other:#x}: {r:?}"),
    }
}

/// `io` (after `prev`, the step before it) stays inside the medium and the disk's limits, and
/// uses the part of the command's buffer its command gives it.
fn io_inside(disk: &Disk, cdb: &[u8], io: &IoPlan, prev: Option<&IoPlan>, transfer_len: u32) {
    let n = disk.num_blocks();
    // The limits the disk enforces and advertises (normalised from the configuration).
    let caps = disk.capabilities();
    let limits = caps.limits;
    let inside = |lba: u64, blocks: u64| lba.checked_add(blocks).is_some_and(|end| end <= n);
    match &io.op {
        // Bound by MAXIMUM TRANSFER LENGTH: READ, WRITE, and VERIFY with or without BYTCHK.
        StoreOp::Read { lba, blocks }
        | StoreOp::Write { lba, blocks, .. }
        | StoreOp::Verify { lba, blocks }
        | StoreOp::Compare { lba, blocks } => {
            check!(
                *blocks > 0 && inside(*lba, u64::from(*blocks)),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
            check!(
                *blocks <= limits.max_transfer_blocks,
                "{cdb:02x?}: {:?} over {limits:?}",
                io.op
            );
        }
        StoreOp::CompareAndWrite { lba, blocks, .. } => {
            check!(
                *blocks > 0 && inside(*lba, u64::from(*blocks)),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
        }
        // WRITE SAME (with or without UNMAP, NDOB) is bound by MAXIMUM WRITE SAME LENGTH only.
        StoreOp::WriteSame { lba, blocks } | StoreOp::WriteZeroes { lba, blocks, .. } => {
            check!(
                *blocks > 0 && inside(*lba, u64::from(*blocks)),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
            check!(
                u64::from(*blocks) <= limits.max_write_same_blocks,
                "{cdb:02x?}: {:?} over {limits:?}",
                io.op
            );
        }
        // Only EXT_COPY_REMAP makes a copy (`Disk::copy_segment`), never a CDB.
        StoreOp::Copy { .. } => check!(false, "{cdb:02x?}: a CDB made {:?}", io.op),
        StoreOp::Unmap { ranges } => {
            check!(!ranges.is_empty(), "{cdb:02x?}: empty UNMAP");
            check!(
                ranges.iter().all(|&(lba, b)| b > 0 && inside(lba, u64::from(b))),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
            let total: u64 = ranges.iter().map(|&(_, b)| u64::from(b)).sum();
            if cdb.first() == Some(&0x04) {
                // FORMAT UNIT on a thin disk deallocates the whole capacity, in order, in ranges
                // of MAXIMUM UNMAP LBA COUNT (larger, and at most 2^16 of them, on a disk that
                // would need more): UNMAP's limits are the initiator's, not the format's.
                let mut next = 0u64;
                let in_order = ranges.iter().all(|&(lba, b)| {
                    let ok = lba == next;
                    next = lba + u64::from(b);
                    ok
                });
                check!(
                    in_order && total == n && ranges.len() <= 1 << 16,
                    "{cdb:02x?}: FORMAT UNIT's {:?} is not the whole disk of {n} blocks",
                    io.op
                );
            } else {
                check!(
                    ranges.len() as u64 <= u64::from(limits.max_unmap_descriptors)
                        && total <= u64::from(limits.max_unmap_lba_count),
                    "{cdb:02x?}: {:?} over {limits:?}",
                    io.op
                );
            }
        }
        StoreOp::Flush => {}
        StoreOp::LbaStatus { lba } => check!(*lba < n, "{cdb:02x?}: {:?} on {n} blocks", io.op),
    }
    if cdb.first() == Some(&0x89) {
        compare_and_write(disk, cdb, io, prev, transfer_len);
        return;
    }
    // GET LBA STATUS fills the buffer with as many descriptors as fit (`buffer_bytes` is 0):
    // its data-in is checked against the PARSE length when the store answers.
    if io.op.uses_buffer() && !matches!(io.op, StoreOp::LbaStatus { .. }) {
        check!(
            io.buffer_offset() == 0 && io.op.buffer_bytes(disk.block_size()) == u64::from(transfer_len),
            "{cdb:02x?}: {:?} uses {} buffer bytes at {}, PARSE said {transfer_len}",
            io.op,
            io.op.buffer_bytes(disk.block_size()),
            io.buffer_offset()
        );
    }
}

/// The engine's COMPARE AND WRITE of N blocks (PARSE: 2 × N blocks of Data-Out): a compare of
/// the buffer's first N blocks (offset 0), then on a match a write of its last N blocks
/// (offset N blocks) of the same range, or one fused step of the whole buffer when the store
/// does it in the device; nothing else, and only on a disk whose engine runs it.
fn compare_and_write(disk: &Disk, cdb: &[u8], io: &IoPlan, prev: Option<&IoPlan>, transfer_len: u32) {
    let caps = disk.capabilities();
    check!(
        matches!(caps.compare_and_write, CompareAndWrite::Handler { .. }),
        "{cdb:02x?}: {:?} planned with {:?}",
        io.op,
        caps.compare_and_write
    );
    let bytes = io.op.buffer_bytes(disk.block_size());
    let offset = io.buffer_offset() as u64;
    let transfer = u64::from(transfer_len);
    let within = |blocks: u32| blocks <= u32::from(caps.compare_and_write.max_blocks());
    match (prev.map(|p| &p.op), &io.op) {
        (None, StoreOp::Compare { blocks, .. }) => check!(
            offset == 0
                && 2 * bytes == transfer
                && within(*blocks)
                && *blocks > caps.compare_and_write_in_device,
            "{cdb:02x?}: {:?} uses {bytes} buffer bytes at {offset}, PARSE said {transfer_len}, {caps:?}",
            io.op
        ),
        (None, StoreOp::CompareAndWrite { blocks, .. }) => check!(
            offset == 0
                && bytes == transfer
                && within(*blocks)
                && *blocks <= caps.compare_and_write_in_device,
            "{cdb:02x?}: {:?} uses {bytes} buffer bytes at {offset}, PARSE said {transfer_len}, {caps:?}",
            io.op
        ),
        (
            Some(StoreOp::Compare { lba, blocks }),
            StoreOp::Write {
                lba: wlba,
                blocks: wblocks,
                ..
            },
        ) => {
            check!(
                (lba, blocks) == (wlba, wblocks) && offset == bytes && offset + bytes == transfer,
                "{cdb:02x?}: {:?} then {:?} at {offset}, PARSE said {transfer_len}",
                prev.map(|p| &p.op),
                io.op
            );
            COMPARE_AND_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        _ => check!(
            false,
            "{cdb:02x?}: COMPARE AND WRITE planned {:?} after {:?}",
            io.op,
            prev.map(|p| &p.op)
        ),
    }
    if matches!(io.op, StoreOp::CompareAndWrite { .. }) {
        FUSED_COMPARE_AND_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    fn reaches(counter: &AtomicU64, seed: &str) -> bool {
        let corpus = crate::corpus("scsi").expect("the corpus is readable");
        let (_, data) = corpus
            .iter()
            .find(|(name, _)| name == seed)
            .expect("the seed exists");
        let before = counter.load(Ordering::Relaxed);
        super::target(data);
        counter.load(Ordering::Relaxed) > before
    }

    /// The seeds keep the engine's COMPARE AND WRITE in the fuzzed paths: the compare then the
    /// write at the buffer's second half, and the store's fused step.
    #[test]
    fn the_compare_and_write_seeds_reach_the_engine() {
        assert!(reaches(&super::COMPARE_AND_WRITES, "seed-compare-and-write"));
        assert!(reaches(
            &super::FUSED_COMPARE_AND_WRITES,
            "seed-compare-and-write-fused"
        ));
    }
}
