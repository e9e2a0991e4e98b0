//! Target `scsi`: the CDB decoder and the SBC engine (`Disk::cdb_info`, `Disk::start`,
//! `Disk::finish`) with an arbitrary disk, arbitrary CDBs and data-out, and a store whose every
//! operation may fail in any way [`StoreStatus`] can say.
//!
//! Invariants beyond "no panic":
//! - `cdb_info` returns values the kernel accepts (direction NONE exactly when nothing moves,
//!   lengths below `i32::MAX`, LBA and data length below `i64::MAX`), or CHECK CONDITION, and
//!   then `start` refuses the CDB with the same sense;
//! - every response is well formed: GOOD without sense, CHECK CONDITION with fixed (70h) or
//!   descriptor (72h) sense of at most 252 bytes, `data_in_len == data.len()`;
//! - engine data-in never exceeds the transfer length the PARSE step reported;
//! - every planned store operation lies inside the medium, moves at least one block, and keeps
//!   the disk's limits (MAXIMUM TRANSFER LENGTH, MAXIMUM WRITE SAME LENGTH, the UNMAP limits);
//!   an op that uses the command's buffer uses exactly the PARSE transfer length (GET LBA
//!   STATUS: at most, checked on its data-in);
//! - a command takes at most two store steps (WRITE AND VERIFY), whatever the store answers.

use crate::check;
use arbitrary::Result;
use arbitrary::Unstructured;
use scst_accel_handler::abi::data_direction;
use scst_accel_handler::abi::op_flags;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::scsi::IoPlan;
use scst_accel_handler::scsi::Plan;
use scst_accel_handler::scsi::Response;
use scst_accel_handler::store::StoreOp;
use scst_accel_handler::store::StoreStatus;

/// Commands per input.
const MAX_COMMANDS: usize = 8;

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
        cfg.limits.max_write_same_blocks = u.arbitrary()?;
        cfg.limits.unmap_granularity = u.arbitrary()?;
    }
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

fn data_out(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Vec::new(),
        1 => vec![0; 4096],
        _ => {
            let len = u.int_in_range(0..=600usize)?;
            u.bytes(len.min(u.len()))?.to_vec()
        }
    })
}

fn status(u: &mut Unstructured<'_>) -> Result<StoreStatus> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => StoreStatus::Miscompare {
            offset: u.arbitrary()?,
        },
        1 => StoreStatus::ReadError { lba: u.arbitrary()? },
        2 => StoreStatus::WriteError { lba: u.arbitrary()? },
        3 => StoreStatus::SpaceExhausted { lba: u.arbitrary()? },
        4 => StoreStatus::OutOfRange,
        5 => StoreStatus::InvalidRequest,
        6 => StoreStatus::DeviceError,
        7 => StoreStatus::Aborted,
        _ => StoreStatus::Good,
    })
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
    let data_out = data_out(u)?;
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
            io_inside(disk, &cdb, &io, transfer_len);
            match disk.finish(&io, status(u)?) {
                Plan::Done(r) => well_formed(&cdb, &r, Some(transfer_len)),
                Plan::Io(next) => {
                    io_inside(disk, &cdb, &next, transfer_len);
                    match disk.finish(&next, status(u)?) {
                        Plan::Done(r) => well_formed(&cdb, &r, Some(transfer_len)),
                        Plan::Io(third) => check!(false, "{cdb:02x?}: a third store step {:?}", third.op),
                    }
                }
            }
        }
    }
    Ok(())
}

/// A response from `start` carries engine data (`data_in_len == data.len()`); one from `finish`
/// (`after_store`) carries none, and the data-in the store moved fits the PARSE transfer length.
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
        other => check!(
            matches!(
                other,
                sam_status::CONDITION_MET | sam_status::BUSY | sam_status::TASK_SET_FULL
            ),
            "{cdb:02x?}: status {other:#x}"
        ),
    }
}

fn io_inside(disk: &Disk, cdb: &[u8], io: &IoPlan, transfer_len: u32) {
    let n = disk.num_blocks();
    // The limits the disk enforces and advertises (normalised from the configuration).
    let limits = disk.capabilities().limits;
    let inside = |lba: u64, blocks: u64| lba.checked_add(blocks).is_some_and(|end| end <= n);
    match &io.op {
        StoreOp::Read { lba, blocks } | StoreOp::Write { lba, blocks, .. } => {
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
        StoreOp::Verify { lba, blocks }
        | StoreOp::Compare { lba, blocks }
        | StoreOp::CompareAndWrite { lba, blocks, .. } => {
            check!(
                *blocks > 0 && inside(*lba, u64::from(*blocks)),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
        }
        StoreOp::WriteSame { lba, blocks } | StoreOp::WriteZeroes { lba, blocks, .. } => {
            check!(
                *blocks > 0 && inside(*lba, u64::from(*blocks)),
                "{cdb:02x?}: {:?} on {n} blocks",
                io.op
            );
            check!(
                u64::from(*blocks)
                    <= limits
                        .max_write_same_blocks
                        .max(u64::from(limits.max_transfer_blocks)),
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
            check!(
                ranges.len() as u64 <= u64::from(limits.max_unmap_descriptors)
                    && total <= u64::from(limits.max_unmap_lba_count),
                "{cdb:02x?}: {:?} over {limits:?}",
                io.op
            );
        }
        StoreOp::Flush => {}
        StoreOp::LbaStatus { lba } => check!(*lba < n, "{cdb:02x?}: {:?} on {n} blocks", io.op),
    }
    // GET LBA STATUS fills the buffer with as many descriptors as fit (`buffer_bytes` is 0):
    // its data-in is checked against the PARSE length when the store answers.
    if io.op.uses_buffer() && !matches!(io.op, StoreOp::LbaStatus { .. }) {
        check!(
            io.op.buffer_bytes(disk.block_size()) == u64::from(transfer_len),
            "{cdb:02x?}: {:?} uses {} buffer bytes, PARSE said {transfer_len}",
            io.op,
            io.op.buffer_bytes(disk.block_size())
        );
    }
}
