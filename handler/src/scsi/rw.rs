//! Store plans for the medium commands (READ, WRITE, WRITE AND VERIFY, VERIFY, SYNCHRONIZE
//! CACHE, WRITE SAME, UNMAP, FORMAT UNIT) and the mapping of store completions to SCSI status
//! and sense.
//!
//! The decoder already checked fields, limits and ranges; this file decides the store op(s).

use super::cdb::Blocks;
use super::cdb::Command;
use super::cdb::Geometry;
use super::read_param;
use super::sense::asc;
use super::sense::sense_key;
use super::sense::Sense;
use super::DataOut;
use super::IoPlan;
use super::Plan;
use super::Response;
use crate::abi::sam_status;
use crate::store::StoreOp;
use crate::store::StoreStatus;

/// Disk state a plan depends on.
pub(crate) struct Context {
    pub geometry: Geometry,
    /// Current WCE: with the write cache disabled every write is made durable before GOOD
    /// (FUA, or a flush after the ops that have no FUA: [`durable`]).
    pub write_cache: bool,
    /// COMPARE AND WRITE of up to this many blocks is one atomic store step
    /// ([`super::Capabilities::compare_and_write_in_device`]).
    pub compare_and_write_in_device: u32,
    /// LBPRZ: deallocated blocks read as zeroes ([`super::Provisioning::unmapped_reads_zero`]),
    /// so an UNMAP changes what reads return and, with WCE 0, is flushed like a write.
    pub unmapped_reads_zero: bool,
}

fn io(op: StoreOp) -> Plan {
    Plan::Io(IoPlan::single(op, 0))
}

/// A write the store has no FUA for (WRITE SAME, WRITE ZEROES, an EXTENDED COPY segment, an
/// UNMAP on a disk that claims LBPRZ):
/// with the write cache disabled (`write_cache` false, WCE = 0), a FLUSH follows it, so that
/// GOOD means the data is on the medium as for a FUA write (SBC-3 §6.4.5: with WCE 0 the
/// device server completes a write with GOOD only after the data is written to the medium).
pub(super) fn durable(op: StoreOp, write_cache: bool) -> Plan {
    Plan::Io(IoPlan {
        then: (!write_cache).then_some((StoreOp::Flush, 0)),
        ..IoPlan::single(op, 0)
    })
}

fn good() -> Result<Plan, Sense> {
    Ok(Plan::Done(Response::good()))
}

/// Plan a medium command. A transfer length of 0 is GOOD without I/O (SBC-3 §5.8).
pub(crate) fn plan(cmd: &Command, data_out: &dyn DataOut, ctx: &Context) -> Result<Plan, Sense> {
    let bs = ctx.geometry.block_size;
    match *cmd {
        Command::Read { blocks, .. } if blocks.count == 0 => good(),
        Command::Read {
            blocks: Blocks { lba, count },
            fua,
        } => {
            let len = usize::try_from(u64::from(count) * u64::from(bs)).unwrap_or(usize::MAX);
            let read = StoreOp::Read { lba, blocks: count };
            if fua && ctx.write_cache {
                // SBC-4 READ (10), FUA = 1: the blocks come from the medium, and a more recent
                // copy in a volatile cache is written to the medium first. With WCE = 1 the
                // cache may hold writes not yet on the medium: flush it, then read. All of it:
                // no store can make one range durable. The file store's volatile cache is
                // the device's own write cache under O_DIRECT (and the file system's
                // metadata for holes and allocation), which only fdatasync's cache flush
                // reaches, for the whole device; sync_file_range(2) writes page-cache pages
                // and flushes no device cache nor metadata (its man page: not for data
                // integrity); an NVMe Flush is per namespace; the RAM store has no cache.
                // With WCE = 0 every write went through (FUA), so the cache holds nothing
                // newer. A failed flush fails the READ only where the range may have lost a
                // write (`read_write_back_failed`). The Data-In length is the read's, carried
                // to the read step by `Disk::finish`.
                return Ok(Plan::Io(IoPlan {
                    then: Some((read, 0)),
                    ..IoPlan::single(StoreOp::Flush, len)
                }));
            }
            Ok(Plan::Io(IoPlan::single(read, len)))
        }
        Command::Write { blocks, .. } if blocks.count == 0 => good(),
        Command::Write {
            blocks: Blocks { lba, count },
            fua,
        } => Ok(io(StoreOp::Write {
            lba,
            blocks: count,
            fua: fua || !ctx.write_cache,
        })),
        Command::WriteAndVerify { blocks, .. } if blocks.count == 0 => good(),
        Command::WriteAndVerify {
            blocks: Blocks { lba, count },
            bytchk,
        } => {
            // The verification must see the medium, not the cache: write through.
            Ok(Plan::Io(IoPlan {
                then: Some((verify_op(lba, count, bytchk), 0)),
                ..IoPlan::single(
                    StoreOp::Write {
                        lba,
                        blocks: count,
                        fua: true,
                    },
                    0,
                )
            }))
        }
        Command::Verify { blocks, .. } if blocks.count == 0 => good(),
        Command::Verify {
            blocks: Blocks { lba, count },
            bytchk,
        } => Ok(io(verify_op(lba, count, bytchk))),
        // The store flushes everything; the range was only checked (SBC-3 §5.22 allows more).
        Command::SynchronizeCache { .. } => Ok(io(StoreOp::Flush)),
        Command::WriteSame { blocks, .. } if blocks.count == 0 => good(),
        Command::WriteSame {
            blocks: Blocks { lba, count },
            unmap,
            ndob,
        } => {
            // SBC-3 §4.7.3.4: with UNMAP the range may be deallocated only if the data equals
            // what deallocated blocks read (zeroes); NDOB means that data is zeroes.
            if ndob || block_is_zero(data_out, bs) {
                let deallocate = unmap && ctx.geometry.features.thin;
                let op = StoreOp::WriteZeroes {
                    lba,
                    blocks: count,
                    deallocate,
                };
                Ok(durable(op, ctx.write_cache))
            } else {
                Ok(durable(
                    StoreOp::WriteSame { lba, blocks: count },
                    ctx.write_cache,
                ))
            }
        }
        Command::Unmap { param_len } => unmap(&read_param(data_out, param_len), ctx),
        Command::FormatUnit { fmtdata, longlist } => format_unit(fmtdata, longlist, data_out, ctx),
        // SBC-3 §5.2: NUMBER OF LOGICAL BLOCKS 0 is not an error; nothing is compared or written.
        // With Data-Out nonetheless (2 × 256 blocks truncated to 0 in the one-byte field, as
        // libiscsi's CompareAndWrite.Miscompare sends), the CDB and the data disagree: refused as
        // any other Data-Out that is not 2 × N blocks, below (a TCMU handler cannot report the
        // overflow residual instead: LIO does not compare the lengths for it).
        Command::CompareAndWrite { blocks, .. } if blocks.count == 0 && data_out.is_empty() => good(),
        Command::CompareAndWrite {
            blocks: Blocks { lba, count },
            fua,
        } => {
            // The Data-Out holds the verify instance, then the write instance: 2 × N blocks
            // exactly (SCST's core refuses a mismatch the same way, scst_cmp_wr_local).
            let half = u64::from(count) * u64::from(bs);
            if data_out.len() as u64 != 2 * half {
                log::debug!(
                    "COMPARE AND WRITE of {count} blocks with {} bytes of Data-Out (need {})",
                    data_out.len(),
                    2 * half
                );
                return Err(Sense::invalid_cdb_field(13, None));
            }
            let fua = fua || !ctx.write_cache;
            if count <= ctx.compare_and_write_in_device {
                // The device compares and, on a match, writes, atomically against every other
                // access, from any host (the range is still held, `Disk::range_need`: the
                // miscompare offset is found by a read NVMe does not otherwise need).
                return Ok(io(StoreOp::CompareAndWrite {
                    lba,
                    blocks: count,
                    fua,
                }));
            }
            // Compare the first half; on a match write the second (the frontend holds the
            // range exclusively across both steps, `Disk::range_need`).
            let half = usize::try_from(half).unwrap_or(usize::MAX);
            Ok(Plan::Io(IoPlan {
                then: Some((
                    StoreOp::Write {
                        lba,
                        blocks: count,
                        fua,
                    },
                    half,
                )),
                ..IoPlan::single(StoreOp::Compare { lba, blocks: count }, 0)
            }))
        }
        _ => good(),
    }
}

/// BYTCHK 1 compares the data-out with the medium, BYTCHK 0 only checks it is readable.
fn verify_op(lba: u64, blocks: u32, bytchk: bool) -> StoreOp {
    if bytchk {
        StoreOp::Compare { lba, blocks }
    } else {
        StoreOp::Verify { lba, blocks }
    }
}

/// Is the first block of the data-out all zeroes? A data-out shorter than a block is not
/// (the store then reports the short buffer).
fn block_is_zero(data_out: &dyn DataOut, block_size: u32) -> bool {
    let bs = usize::try_from(block_size).unwrap_or(usize::MAX);
    if data_out.len() < bs {
        return false;
    }
    let mut chunk = [0u8; 512];
    (0..bs).step_by(chunk.len()).all(|off| {
        let n = chunk.len().min(bs - off);
        data_out.read(off, &mut chunk[..n]);
        chunk[..n].iter().all(|&b| b == 0)
    })
}

/// UNMAP parameter list (SBC-3 §5.28): 8-byte header (UNMAP DATA LENGTH, UNMAP BLOCK
/// DESCRIPTOR DATA LENGTH), then 16-byte descriptors (LBA, NUMBER OF LOGICAL BLOCKS).
/// A partial trailing descriptor is ignored; zero-length descriptors are skipped.
fn unmap(param: &[u8], ctx: &Context) -> Result<Plan, Sense> {
    let geo = &ctx.geometry;
    if param.is_empty() {
        return good(); // PARAMETER LIST LENGTH 0: nothing to do
    }
    let Some(header) = param.get(..8) else {
        return Err(Sense::param_list_length());
    };
    let descriptor_bytes = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let Some(descriptors) = param.get(8..8 + descriptor_bytes) else {
        return Err(Sense::param_list_length());
    };
    let count = descriptors.len() / 16;
    if count > usize::try_from(geo.limits.max_unmap_descriptors).unwrap_or(usize::MAX) {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for (i, d) in descriptors.chunks_exact(16).enumerate() {
        let at = 8 + 16 * i;
        let lba = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let blocks = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        total += u64::from(blocks);
        if total > u64::from(geo.limits.max_unmap_lba_count) {
            return Err(Sense::invalid_param_field(at + 8, None));
        }
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= geo.num_blocks => {}
            _ => return Err(Sense::lba_out_of_range()),
        }
        if blocks != 0 {
            ranges.push((lba, blocks));
        }
    }
    if ranges.is_empty() {
        return good();
    }
    Ok(deallocate(ranges.into_boxed_slice(), ctx))
}

/// The store op that deallocates `ranges` (UNMAP, a thin disk's FORMAT UNIT), and what must
/// follow it before GOOD.
fn deallocate(ranges: Box<[(u64, u32)]>, ctx: &Context) -> Plan {
    let op = StoreOp::Unmap { ranges };
    if ctx.unmapped_reads_zero {
        // LBPRZ: a block the store deallocated reads as zeroes, so the UNMAP changed what
        // reads return, as a write of zeroes would; with WCE 0 that change must be durable
        // at GOOD like any other (a hole punched in a file is a metadata change fdatasync
        // makes durable; the RAM store has nothing to flush). Same rule as WRITE SAME.
        return durable(op, ctx.write_cache);
    }
    // No LBPRZ: a deallocated block may read as anything (SBC-4, logical block provisioning:
    // LBPRZ 0), its old data included, so an UNMAP lost with the cache leaves a state a read
    // could have returned anyway: no flush. The stores that deallocate without LBPRZ: a block
    // device whose discard does not say it zeroes (`file.rs`), and the accelerator boards,
    // whose NVMe Deallocate is advisory (`store/accel.rs`, NVMe 1.4 §6.7).
    io(op)
}

/// FORMAT UNIT's short parameter list header (SBC-4 §5.4.2.2), LONGLIST 0.
pub(super) const FORMAT_HEADER_SHORT: usize = 4;
/// FORMAT UNIT's long parameter list header, LONGLIST 1.
pub(super) const FORMAT_HEADER_LONG: usize = 8;

/// Most ranges one FORMAT UNIT's deallocation is split into: a disk whose MAXIMUM UNMAP LBA
/// COUNT is small next to its capacity gets larger ranges instead, so the list stays a bounded
/// allocation (1 MiB of 16-byte ranges). 2^16 ranges of up to 2^32 - 1 blocks cover 2^48 - 2^16
/// blocks, 128 PiB in 512-byte blocks; a larger thin disk's FORMAT UNIT fails (MEDIUM ERROR,
/// FORMAT COMMAND FAILED) rather than build a list of billions of ranges.
const FORMAT_MAX_RANGES: u64 = 1 << 16;

/// FORMAT UNIT (SBC-4 §5.4) without protection information (the decoder refused FMTPINFO).
///
/// With FMTDATA the parameter list header is checked first: only what the disk does exactly is
/// accepted, a header with no option set but IMMED (the command's GOOD after the work is what
/// IMMED 0 asks, and IMMED 1 only allows earlier status) and no defect list.
///
/// Then, on a thin disk (LBPME), every block is deallocated, as SCST's vdisk does, through the
/// path of UNMAP: one [`StoreOp::Unmap`] over the whole capacity in ranges of at most MAXIMUM
/// UNMAP LBA COUNT blocks (fewer, larger ranges past [`FORMAT_MAX_RANGES`]), followed by a
/// flush while WCE is 0 where LBPRZ is claimed ([`deallocate`]). On a fully provisioned disk
/// nothing is written: without an initialization pattern (IP 0; one is refused) SBC-4 leaves
/// the blocks' contents after a format unspecified, so the old data is a valid result, and
/// rewriting the medium would only cost time.
fn format_unit(fmtdata: bool, longlist: bool, data_out: &dyn DataOut, ctx: &Context) -> Result<Plan, Sense> {
    if fmtdata {
        check_format_header(longlist, data_out)?;
    }
    let n = ctx.geometry.num_blocks;
    if !ctx.geometry.features.thin || n == 0 {
        return good();
    }
    let per = u64::from(ctx.geometry.limits.max_unmap_lba_count.max(1))
        .max(n.div_ceil(FORMAT_MAX_RANGES))
        .min(u64::from(u32::MAX));
    if n.div_ceil(per) > FORMAT_MAX_RANGES {
        return Err(Sense::new(sense_key::MEDIUM_ERROR, asc::FORMAT_COMMAND_FAILED));
    }
    let mut ranges = Vec::with_capacity(usize::try_from(n.div_ceil(per)).unwrap_or(0));
    let mut lba = 0;
    while lba < n {
        let blocks = (n - lba).min(per);
        // `per` ≤ u32::MAX.
        ranges.push((lba, blocks as u32));
        lba += blocks;
    }
    Ok(deallocate(ranges.into_boxed_slice(), ctx))
}

/// The FORMAT UNIT parameter list header (SBC-4 §5.4.2.2): byte 0 PROTECTION FIELD USAGE
/// (bits 2..0, the rest reserved); byte 1 FOV, DPRY, DCRT, STPF, IP, obsolete, IMMED, vendor
/// specific; then the DEFECT LIST LENGTH (bytes 2-3), or in the long header a reserved byte 2,
/// P_I_INFORMATION and PROTECTION INTERVAL EXPONENT (byte 3) and the DEFECT LIST LENGTH (bytes
/// 4-7). Fewer bytes than the header: PARAMETER LIST LENGTH ERROR. Any field set but IMMED:
/// INVALID FIELD IN PARAMETER LIST pointing at it: no protection information; with FOV 0,
/// DPRY, DCRT, STPF and IP must be 0 (SBC-4 §5.4.2.2); FOV 1 makes each option a request, DCRT
/// 0 one to certify the medium and IP 1 one to write an initialization pattern, which this disk
/// does not do; no defect list is taken (the medium has none to add to or replace).
fn check_format_header(longlist: bool, data_out: &dyn DataOut) -> Result<(), Sense> {
    const IMMED: u8 = 0x02;
    let len = if longlist {
        FORMAT_HEADER_LONG
    } else {
        FORMAT_HEADER_SHORT
    };
    if data_out.len() < len {
        return Err(Sense::param_list_length());
    }
    let mut h = [0u8; FORMAT_HEADER_LONG];
    data_out.read(0, &mut h[..len]);
    let field = |byte: usize, bits: u8| -> Result<(), Sense> {
        match h[byte] & bits {
            0 => Ok(()),
            bad => Err(Sense::invalid_param_field(
                byte,
                Some(super::opcodes::highest_bit(bad)),
            )),
        }
    };
    // PROTECTION FIELD USAGE is a field: the pointer names its most significant bit.
    if h[0] & 0x07 != 0 {
        return Err(Sense::invalid_param_field(0, Some(2)));
    }
    field(0, 0xF8)?;
    field(1, !IMMED)?;
    let defect_list_length = if longlist {
        field(2, 0xFF)?;
        // P_I_INFORMATION and PROTECTION INTERVAL EXPONENT: fields, pointed at by their most
        // significant bit.
        if h[3] & 0xF0 != 0 {
            return Err(Sense::invalid_param_field(3, Some(7)));
        }
        if h[3] & 0x0F != 0 {
            return Err(Sense::invalid_param_field(3, Some(3)));
        }
        4
    } else {
        2
    };
    if h[defect_list_length..len].iter().any(|&b| b != 0) {
        return Err(Sense::invalid_param_field(defect_list_length, None));
    }
    Ok(())
}

/// The response (or next step) after the store ended `io` with `status`, on a thin
/// provisioned disk when `thin`.
pub(crate) fn finish(io: &IoPlan, status: StoreStatus, thin: bool) -> Result<Plan, Sense> {
    if let (
        StoreOp::Flush,
        Some((StoreOp::Read { lba, blocks }, _)),
        StoreStatus::WriteError { lba: lost } | StoreStatus::SpaceExhausted { lba: lost },
    ) = (&io.op, &io.then, status)
    {
        let space = matches!(status, StoreStatus::SpaceExhausted { .. });
        return read_write_back_failed(io, *lba, *blocks, lost, space, thin);
    }
    match status {
        StoreStatus::Good => Ok(match &io.then {
            Some((next, offset)) => Plan::Io(IoPlan {
                buffer_offset: *offset,
                ..IoPlan::single(next.clone(), 0)
            }),
            None => Plan::Done(Response {
                data_in_len: io.data_in_len,
                ..Response::good()
            }),
        }),
        // SBC-3 §5.34: INFORMATION is the offset in the data-out of the first miscompare;
        // not VALID when the store could not tell where it is.
        StoreStatus::Miscompare { offset } => {
            let sense = Sense::new(sense_key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
            Err(match offset {
                Some(offset) => sense.with_information(offset),
                None => sense,
            })
        }
        StoreStatus::ReadError { lba } => {
            Err(Sense::new(sense_key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR).with_information(lba))
        }
        StoreStatus::WriteError { lba } => {
            Err(Sense::new(sense_key::MEDIUM_ERROR, asc::WRITE_ERROR).with_information(lba))
        }
        // SBC-3 §4.7.3.6 (thin provisioning, resource exhaustion): a thin provisioned logical unit
        // that cannot map an LBA for a write ends it with DATA PROTECT / SPACE ALLOCATION FAILED
        // WRITE PROTECT (Linux turns it into ENOSPC, not a retried I/O error). That code is
        // defined for thin provisioning only: a fully provisioned logical unit has every LBA
        // mapped by definition (SBC-3 §4.7.2), so a write its medium cannot store is a write
        // error at that LBA. INFORMATION is the LBA either way (SPC-4 §4.5.2.2: for a
        // direct-access device, the LBA the sense is about).
        StoreStatus::SpaceExhausted { lba } if thin => Err(Sense::new(
            sense_key::DATA_PROTECT,
            asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        )
        .with_information(lba)),
        StoreStatus::SpaceExhausted { lba } => {
            Err(Sense::new(sense_key::MEDIUM_ERROR, asc::WRITE_ERROR).with_information(lba))
        }
        StoreStatus::OutOfRange => Err(Sense::lba_out_of_range()),
        StoreStatus::InvalidRequest | StoreStatus::DeviceError => Err(Sense::new(
            sense_key::HARDWARE_ERROR,
            asc::INTERNAL_TARGET_FAILURE,
        )),
        StoreStatus::Aborted => Err(Sense::new(sense_key::ABORTED_COMMAND, asc::NO_ADDITIONAL_SENSE)),
        // The device's own answers, as the NVM Express SCSI Translation Reference (§6) maps
        // the NVMe statuses they come from.
        StoreStatus::NotReady => Err(Sense::new(
            sense_key::NOT_READY,
            asc::NOT_READY_CAUSE_NOT_REPORTABLE,
        )),
        StoreStatus::FormatInProgress => Err(Sense::new(
            sense_key::NOT_READY,
            asc::NOT_READY_FORMAT_IN_PROGRESS,
        )),
        StoreStatus::InvalidField => Err(Sense::new(sense_key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)),
        StoreStatus::ReservationConflict => Ok(Plan::Done(Response {
            status: sam_status::RESERVATION_CONFLICT,
            ..Response::good()
        })),
        StoreStatus::AccessDenied => Err(Sense::new(
            sense_key::DATA_PROTECT,
            asc::ACCESS_DENIED_NO_ACCESS_RIGHTS,
        )),
        StoreStatus::WriteProtected => Err(Sense::new(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED)),
    }
}

/// The flush before a FUA READ of `blocks` at `lba` failed, writes from `lost` on possibly
/// lost (the [`StoreOp::Flush`] contract: every block below `lost` is on the medium).
///
/// - The range ends at or below `lost`: its newest data is on the medium, which is all SBC-4
///   asks of FUA on a READ (write a newer cached copy of *those* blocks first), so it is
///   read. Without this, once a flush failed (the file store's failure is sticky) every FUA
///   READ failed, of blocks never written included.
/// - Else the READ cannot be served from the medium: CHECK CONDITION, MEDIUM ERROR / WRITE
///   ERROR, the failure of the write the READ had to do first. A current error, not a deferred
///   one (SPC-5: for a cached write whose GOOD went before), because the write-back is a step
///   of this READ, and Linux retries a command answered with a deferred error (scsi_error.c,
///   `scsi_check_sense`), which would flush again into the same sticky failure; it fails a
///   MEDIUM ERROR at once. INFORMATION is `lost` where it lies before the range, else the
///   READ's first block: never inside the range past its first block, since nothing was
///   read, and Linux takes the blocks before INFORMATION as transferred when the transport
///   reports no residual (sd.c `sd_completed_bytes`; TCMU cannot say a Data-In of 0).
/// - A flush that failed for want of space (`space`: the store's
///   [`StoreStatus::SpaceExhausted`], an fdatasync's ENOSPC) fails the READ as it fails a
///   write on this disk: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT when thin
///   provisioned, else WRITE ERROR as above, with the same INFORMATION.
fn read_write_back_failed(
    io: &IoPlan,
    lba: u64,
    blocks: u32,
    lost: u64,
    space: bool,
    thin: bool,
) -> Result<Plan, Sense> {
    if lost >= lba.saturating_add(u64::from(blocks)) {
        log::debug!(
            "FUA READ of {blocks} blocks at {lba}: a flush failed from LBA {lost}, above the range: read"
        );
        return finish(io, StoreStatus::Good, thin);
    }
    let sense = if space && thin {
        Sense::new(
            sense_key::DATA_PROTECT,
            asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        )
    } else {
        Sense::new(sense_key::MEDIUM_ERROR, asc::WRITE_ERROR)
    };
    Err(sense.with_information(lost.min(lba)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_sense;
    use super::super::tests::disk_with;
    use super::super::tests::good;
    use super::super::tests::io_op;
    use super::super::Disk;
    use super::super::DiskConfig;
    use super::super::Plan;
    use super::super::NO_DATA;
    use crate::abi::sam_status;
    use crate::store::StoreOp;
    use crate::store::StoreStatus;

    fn thin() -> Disk {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.thin_provisioning = true;
        cfg.limits.max_unmap_descriptors = 2;
        cfg.limits.max_unmap_lba_count = 100;
        cfg.limits.max_transfer_blocks = 64;
        disk_with(cfg)
    }

    fn done(plan: Plan) -> super::Response {
        match plan {
            Plan::Done(r) => r,
            Plan::Io(io) => panic!("expected a response, got {:?}", io.op),
        }
    }

    #[test]
    fn read_plans_store_read_and_reports_bytes_moved() {
        let disk = thin();
        let Plan::Io(io) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0],
            &NO_DATA,
        ) else {
            panic!()
        };
        assert_eq!(io.op, StoreOp::Read { lba: 10, blocks: 4 });
        let r = done(disk.finish(&io, StoreStatus::Good));
        assert_eq!(
            (r.status, r.data_in_len, r.data.len()),
            (sam_status::GOOD, 2048, 0)
        );
    }

    /// SBC-3 READ (10) FUA: the blocks come from the medium, so with WCE = 1 (a cache that may
    /// hold newer data) the cache is flushed before the read, and the command still returns
    /// the read's Data-In; with WCE = 0 nothing newer is cached and the read goes straight.
    #[test]
    fn read_with_fua_flushes_a_write_back_cache_first() {
        let disk = thin();
        assert!(disk.write_cache_enabled());
        let reads: [&[u8]; 3] = [
            &[0x28, 0x08, 0, 0, 0, 10, 0, 0, 4, 0],
            &[0xA8, 0x08, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0],
            &[0x88, 0x08, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0],
        ];
        for cdb in reads {
            let Plan::Io(flush) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &NO_DATA)
            else {
                panic!("{cdb:02x?}: no I/O")
            };
            assert_eq!(flush.op, StoreOp::Flush, "{cdb:02x?}");
            let Plan::Io(read) = disk.finish(&flush, StoreStatus::Good) else {
                panic!("{cdb:02x?}: no read after the flush")
            };
            assert_eq!(read.op, StoreOp::Read { lba: 10, blocks: 4 }, "{cdb:02x?}");
            assert_eq!(read.buffer_offset(), 0);
            let r = done(disk.finish(&read, StoreStatus::Good));
            assert_eq!((r.status, r.data_in_len), (sam_status::GOOD, 2048), "{cdb:02x?}");
        }
        // A failed flush ends the command: nothing is read, no Data-In.
        let Plan::Io(flush) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), reads[0], &NO_DATA)
        else {
            panic!()
        };
        let r = done(disk.finish(&flush, StoreStatus::WriteError { lba: 3 }));
        assert_eq!((r.status, r.data_in_len), (sam_status::CHECK_CONDITION, 0));
        // FUA = 0: a plain read.
        assert_eq!(
            io_op(&disk, &[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0], &[]),
            StoreOp::Read { lba: 10, blocks: 4 }
        );
        // WCE = 0: every write reached the medium, nothing to flush.
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.write_cache = false;
        let disk = disk_with(cfg);
        assert_eq!(io_op(&disk, reads[0], &[]), StoreOp::Read { lba: 10, blocks: 4 });
    }

    /// After a failed flush (the file store's stays failed), a FUA READ of blocks below the
    /// lowest LBA whose write the failure may have lost is read: their newest data is on the
    /// medium, all SBC-4 asks of FUA on a READ. One that reaches that LBA fails with MEDIUM
    /// ERROR / WRITE ERROR, INFORMATION never inside the range past its first block (nothing
    /// was read; Linux's sd counts the blocks before INFORMATION as transferred).
    #[test]
    fn a_fua_read_fails_only_where_a_failed_flush_may_have_lost_writes() {
        let disk = thin();
        let fua_read = |lba: u8| [0x28, 0x08, 0, 0, 0, lba, 0, 0, 4, 0];
        let flush = |lba: u8| {
            let io = plan(&disk, &fua_read(lba), &[]);
            assert_eq!(io.op, StoreOp::Flush);
            io
        };
        // Blocks 10..14, writes from 14 on may be lost: read, with the READ's Data-In.
        let Plan::Io(read) = disk.finish(&flush(10), StoreStatus::WriteError { lba: 14 }) else {
            panic!("the range is below the loss: read it")
        };
        assert_eq!(read.op, StoreOp::Read { lba: 10, blocks: 4 });
        let r = done(disk.finish(&read, StoreStatus::Good));
        assert_eq!((r.status, r.data_in_len), (sam_status::GOOD, 2048));
        // The loss reaches the range: MEDIUM ERROR / WRITE ERROR, VALID, INFORMATION the
        // loss where it lies before the range, else the READ's first block.
        for (lost, information) in [(13u64, 10u32), (10, 10), (11, 10), (3, 3), (0, 0)] {
            let r = done(disk.finish(&flush(10), StoreStatus::WriteError { lba: lost }));
            assert_eq!((r.status, r.data_in_len), (sam_status::CHECK_CONDITION, 0));
            assert_eq!(
                (r.sense[0], r.sense[2], r.sense[12], r.sense[13]),
                (0xF0, 0x03, 0x0C, 0x00),
                "loss from {lost}: {:02x?}",
                r.sense
            );
            assert_eq!(
                u32::from_be_bytes([r.sense[3], r.sense[4], r.sense[5], r.sense[6]]),
                information,
                "loss from {lost}"
            );
        }
        // Out of space (a thin disk): read below the loss; from it on, DATA PROTECT / SPACE
        // ALLOCATION FAILED WRITE PROTECT (27/07) as for a write, same INFORMATION.
        let space = |lba| StoreStatus::SpaceExhausted { lba };
        let Plan::Io(read) = disk.finish(&flush(10), space(14)) else {
            panic!("the range is below the loss: read it")
        };
        assert_eq!(read.op, StoreOp::Read { lba: 10, blocks: 4 });
        let r = done(disk.finish(&flush(10), space(3)));
        assert_eq!(
            (r.status, r.sense[2], r.sense[12], r.sense[13], r.sense[6]),
            (sam_status::CHECK_CONDITION, 0x07, 0x27, 0x07, 3),
            "{:02x?}",
            r.sense
        );
        // A flush that failed otherwise says nothing of where: the READ fails.
        let r = done(disk.finish(&flush(10), StoreStatus::DeviceError));
        assert_eq!((r.status, r.sense[2]), (sam_status::CHECK_CONDITION, 0x04));
        // A plain SYNCHRONIZE CACHE's failure is its own, whatever the LBA.
        let sync = plan(&disk, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        let r = done(disk.finish(&sync, StoreStatus::WriteError { lba: 900 }));
        assert_eq!((r.status, r.sense[6]), (sam_status::CHECK_CONDITION, 0x84));
    }

    /// UNMAP on a disk that claims LBPRZ changes what reads return, as a write of zeroes
    /// does: with WCE 0 a flush follows it and only its GOOD answers the command (its failure
    /// fails it). Without LBPRZ (a deallocated block may read as anything, its old data
    /// included) or with WCE 1 it ends at once.
    #[test]
    fn unmap_is_flushed_under_wce_0_where_unmapped_blocks_read_zero() {
        let list = unmap_list(&[(10, 5), (40, 2)]);
        for lbprz in [false, true] {
            for write_cache in [false, true] {
                let mut cfg = DiskConfig::new(512, 1000);
                cfg.thin_provisioning = true;
                cfg.unmapped_reads_zero = lbprz;
                cfg.write_cache = write_cache;
                let disk = disk_with(cfg);
                let first = plan(&disk, &unmap_cdb(list.len()), &list);
                assert_eq!(
                    first.op,
                    StoreOp::Unmap {
                        ranges: vec![(10, 5), (40, 2)].into()
                    }
                );
                let after = disk.finish(&first, StoreStatus::Good);
                if write_cache || !lbprz {
                    assert_eq!(
                        done(after),
                        super::Response::good(),
                        "LBPRZ {lbprz}, WCE {write_cache}"
                    );
                    continue;
                }
                let Plan::Io(flush) = after else {
                    panic!("UNMAP with LBPRZ under WCE 0 ended before a flush")
                };
                assert_eq!(flush.op, StoreOp::Flush);
                assert_eq!(
                    done(disk.finish(&flush, StoreStatus::Good)),
                    super::Response::good()
                );
                let failed = done(disk.finish(&flush, StoreStatus::WriteError { lba: 12 }));
                assert_eq!(
                    (failed.status, failed.sense[2], failed.sense[12]),
                    (sam_status::CHECK_CONDITION, 0x03, 0x0C),
                    "MEDIUM ERROR / WRITE ERROR"
                );
            }
        }
    }

    #[test]
    fn zero_length_transfer_is_good_without_io() {
        let disk = thin();
        good(&disk, &[0x28, 0, 0, 0, 0, 10, 0, 0, 0, 0], &[]);
        good(&disk, &[0x2A, 0, 0, 0, 0, 10, 0, 0, 0, 0], &[]);
        good(&disk, &[0x2F, 0, 0, 0, 0, 10, 0, 0, 0, 0], &[]);
    }

    #[test]
    fn write_fua_follows_cdb_and_write_cache() {
        let disk = thin();
        let w = |fua: u8| io_op(&disk, &[0x2A, fua, 0, 0, 0, 1, 0, 0, 1, 0], &[]);
        assert_eq!(
            w(0),
            StoreOp::Write {
                lba: 1,
                blocks: 1,
                fua: false
            }
        );
        assert_eq!(
            w(0x08),
            StoreOp::Write {
                lba: 1,
                blocks: 1,
                fua: true
            }
        );
        // WCE off: every write is FUA.
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.write_cache = false;
        let disk = disk_with(cfg);
        assert_eq!(
            io_op(&disk, &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[]),
            StoreOp::Write {
                lba: 1,
                blocks: 1,
                fua: true
            }
        );
    }

    #[test]
    fn write_and_verify_writes_then_compares() {
        let disk = thin();
        let Plan::Io(first) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x2E, 0x02, 0, 0, 0, 3, 0, 0, 2, 0],
            &NO_DATA,
        ) else {
            panic!()
        };
        assert_eq!(
            first.op,
            StoreOp::Write {
                lba: 3,
                blocks: 2,
                fua: true
            }
        );
        let Plan::Io(second) = disk.finish(&first, StoreStatus::Good) else {
            panic!()
        };
        assert_eq!(second.op, StoreOp::Compare { lba: 3, blocks: 2 });
        let r = done(disk.finish(&second, StoreStatus::Miscompare { offset: Some(700) }));
        assert_eq!(r.status, sam_status::CHECK_CONDITION);
        assert_eq!(
            r.sense,
            [0xF0, 0, 0x0E, 0, 0, 0x02, 0xBC, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
        );
        // BYTCHK 0: write then verify.
        let Plan::Io(first) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x2E, 0, 0, 0, 0, 3, 0, 0, 2, 0],
            &NO_DATA,
        ) else {
            panic!()
        };
        let Plan::Io(second) = disk.finish(&first, StoreStatus::Good) else {
            panic!()
        };
        assert_eq!(second.op, StoreOp::Verify { lba: 3, blocks: 2 });
        assert_eq!(
            done(disk.finish(&second, StoreStatus::Good)),
            super::Response::good()
        );
    }

    #[test]
    fn verify_bytchk_selects_op() {
        let disk = thin();
        assert_eq!(
            io_op(&disk, &[0x2F, 0, 0, 0, 0, 3, 0, 0, 2, 0], &[]),
            StoreOp::Verify { lba: 3, blocks: 2 }
        );
        assert_eq!(
            io_op(&disk, &[0xAF, 2, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0], &[]),
            StoreOp::Compare { lba: 3, blocks: 2 }
        );
    }

    #[test]
    fn sync_cache_flushes() {
        let disk = thin();
        assert_eq!(
            io_op(&disk, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
            StoreOp::Flush
        );
        let mut c16 = [0u8; 16];
        c16[0] = 0x91;
        assert_eq!(io_op(&disk, &c16, &[]), StoreOp::Flush);
    }

    #[test]
    fn write_same_variants() {
        let disk = thin();
        let zero = vec![0u8; 512];
        let mut ones = vec![0u8; 512];
        ones[511] = 1;
        let ws10 = |unmap: u8| [0x41, unmap, 0, 0, 0, 5, 0, 0, 9, 0];
        assert_eq!(
            io_op(&disk, &ws10(0), &ones),
            StoreOp::WriteSame { lba: 5, blocks: 9 }
        );
        assert_eq!(
            io_op(&disk, &ws10(0), &zero),
            StoreOp::WriteZeroes {
                lba: 5,
                blocks: 9,
                deallocate: false
            }
        );
        assert_eq!(
            io_op(&disk, &ws10(0x08), &zero),
            StoreOp::WriteZeroes {
                lba: 5,
                blocks: 9,
                deallocate: true
            }
        );
        assert_eq!(
            io_op(&disk, &ws10(0x08), &ones),
            StoreOp::WriteSame { lba: 5, blocks: 9 }
        );
        let mut ws16 = [0u8; 16];
        ws16[0] = 0x93;
        ws16[1] = 0x09; // UNMAP, NDOB
        ws16[13] = 9;
        assert_eq!(
            io_op(&disk, &ws16, &[]),
            StoreOp::WriteZeroes {
                lba: 0,
                blocks: 9,
                deallocate: true
            }
        );
    }

    /// With WCE 0 GOOD must mean durable: WRITE SAME, WRITE SAME of zeroes (with or without
    /// UNMAP) and an EXTENDED COPY segment have no FUA in the store, so a FLUSH follows them
    /// and only its GOOD answers the command (its failure fails it); with WCE 1 they end at once.
    #[test]
    fn writes_without_fua_are_flushed_when_the_write_cache_is_off() {
        let zero = vec![0u8; 512];
        let ones = vec![1u8; 512];
        let ws10 = |unmap: u8| [0x41, unmap, 0, 0, 0, 5, 0, 0, 9, 0];
        for write_cache in [false, true] {
            let mut cfg = DiskConfig::new(512, 1000);
            cfg.thin_provisioning = true;
            cfg.write_cache = write_cache;
            let disk = disk_with(cfg);
            let mut firsts: Vec<super::super::IoPlan> =
                [(ws10(0), &ones), (ws10(0), &zero), (ws10(0x08), &zero)]
                    .iter()
                    .map(|(cdb, data)| plan(&disk, cdb, data))
                    .collect();
            let Plan::Io(copy) = disk.copy_segment(0, 100, 8 * 512) else {
                panic!("a copy segment goes to the store")
            };
            firsts.push(copy);
            for first in &firsts {
                assert!(
                    matches!(
                        first.op,
                        StoreOp::WriteSame { .. } | StoreOp::WriteZeroes { .. } | StoreOp::Copy { .. }
                    ),
                    "{:?}",
                    first.op
                );
                let after = disk.finish(first, StoreStatus::Good);
                if write_cache {
                    assert_eq!(done(after), super::Response::good(), "{:?}", first.op);
                    continue;
                }
                let Plan::Io(flush) = after else {
                    panic!("{:?} with WCE 0 ended before a flush", first.op)
                };
                assert_eq!(flush.op, StoreOp::Flush, "after {:?}", first.op);
                assert_eq!(
                    done(disk.finish(&flush, StoreStatus::Good)),
                    super::Response::good()
                );
                let failed = done(disk.finish(&flush, StoreStatus::WriteError { lba: 7 }));
                assert_eq!(failed.status, sam_status::CHECK_CONDITION);
                assert_eq!(
                    (failed.sense[2], failed.sense[12]),
                    (3, 0x0C),
                    "MEDIUM ERROR / WRITE ERROR"
                );
            }
        }
    }

    fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let mut p = vec![0u8; 8];
        p[0..2].copy_from_slice(&((6 + 16 * descriptors.len()) as u16).to_be_bytes());
        p[2..4].copy_from_slice(&((16 * descriptors.len()) as u16).to_be_bytes());
        for &(lba, n) in descriptors {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        p
    }

    fn unmap_cdb(len: usize) -> [u8; 10] {
        [0x42, 0, 0, 0, 0, 0, 0, (len >> 8) as u8, len as u8, 0]
    }

    #[test]
    fn unmap_plans_ranges_and_skips_empty_descriptors() {
        let disk = thin();
        let p = unmap_list(&[(10, 5), (900, 0)]);
        assert_eq!(
            io_op(&disk, &unmap_cdb(p.len()), &p),
            StoreOp::Unmap {
                ranges: vec![(10, 5)].into()
            }
        );
        good(&disk, &unmap_cdb(0), &[]);
        let p = unmap_list(&[(1, 0)]);
        good(&disk, &unmap_cdb(p.len()), &p);
    }

    #[test]
    fn unmap_errors() {
        let disk = thin();
        // Short parameter list.
        check_sense(&disk, &unmap_cdb(4), &[0; 4], [5, 0x1A, 0], None);
        // Descriptor data length past the list.
        let mut p = unmap_list(&[(1, 1)]);
        p[3] = 32;
        check_sense(&disk, &unmap_cdb(p.len()), &p, [5, 0x1A, 0], None);
        // Too many descriptors.
        let p = unmap_list(&[(1, 1), (2, 1), (3, 1)]);
        check_sense(&disk, &unmap_cdb(p.len()), &p, [5, 0x26, 0], Some([0x80, 0, 2]));
        // Too many blocks in total: pointer at the second descriptor's count.
        let p = unmap_list(&[(0, 60), (100, 41)]);
        check_sense(&disk, &unmap_cdb(p.len()), &p, [5, 0x26, 0], Some([0x80, 0, 32]));
        // Out of range.
        let p = unmap_list(&[(999, 2)]);
        check_sense(&disk, &unmap_cdb(p.len()), &p, [5, 0x21, 0], None);
        // Not thin: no such command.
        let plain = disk_with(DiskConfig::new(512, 1000));
        let p = unmap_list(&[(1, 1)]);
        check_sense(&plain, &unmap_cdb(p.len()), &p, [5, 0x20, 0], None);
    }

    #[test]
    fn read_only_refuses_writes_but_reads() {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.read_only = true;
        let disk = disk_with(cfg);
        check_sense(&disk, &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], [7, 0x27, 0], None);
        check_sense(
            &disk,
            &[0x41, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            &[0; 512],
            [7, 0x27, 0],
            None,
        );
        assert_eq!(
            io_op(&disk, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[]),
            StoreOp::Read { lba: 1, blocks: 1 }
        );
    }

    #[test]
    fn store_errors_map_to_sense() {
        let disk = thin();
        let Plan::Io(io) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0],
            &NO_DATA,
        ) else {
            panic!()
        };
        let sense = |s| done(disk.finish(&io, s)).sense;
        assert_eq!(
            &sense(StoreStatus::ReadError { lba: 12 })[..14],
            &[0xF0, 0, 3, 0, 0, 0, 12, 10, 0, 0, 0, 0, 0x11, 0]
        );
        assert_eq!(
            &sense(StoreStatus::WriteError { lba: 13 })[..14],
            &[0xF0, 0, 3, 0, 0, 0, 13, 10, 0, 0, 0, 0, 0x0C, 0]
        );
        assert_eq!(
            &sense(StoreStatus::OutOfRange)[..14],
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0]
        );
        assert_eq!(
            &sense(StoreStatus::DeviceError)[..14],
            &[0x70, 0, 4, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0]
        );
        assert_eq!(
            &sense(StoreStatus::InvalidRequest)[..14],
            &[0x70, 0, 4, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0]
        );
        assert_eq!(
            &sense(StoreStatus::Aborted)[..14],
            &[0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0]
        );
        // The device's own answers (NVM Express SCSI Translation Reference §6).
        let key_asc = |s| {
            let b = sense(s);
            (b[2], b[12], b[13])
        };
        assert_eq!(key_asc(StoreStatus::NotReady), (2, 0x04, 0x00));
        assert_eq!(key_asc(StoreStatus::FormatInProgress), (2, 0x04, 0x04));
        assert_eq!(key_asc(StoreStatus::InvalidField), (5, 0x24, 0x00));
        assert_eq!(key_asc(StoreStatus::AccessDenied), (7, 0x20, 0x02));
        assert_eq!(key_asc(StoreStatus::WriteProtected), (7, 0x27, 0x00));
        let conflict = done(disk.finish(&io, StoreStatus::ReservationConflict));
        assert_eq!(conflict.status, sam_status::RESERVATION_CONFLICT);
        assert!(conflict.sense.is_empty(), "RESERVATION CONFLICT carries no sense");
    }

    /// Out of space: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT with the LBA on a thin
    /// disk (SBC-3 §4.7.3.6), MEDIUM ERROR / WRITE ERROR with the LBA on a fully provisioned one.
    #[test]
    fn space_exhausted_depends_on_provisioning() {
        let write = [0x2a, 0, 0, 0, 0, 10, 0, 0, 4, 0];
        let data = vec![0u8; 2048];
        let thin = thin();
        let Plan::Io(io) = thin.start(&mut scst_accel_hal::locks::LockToken::root(), &write, &data) else {
            panic!()
        };
        assert_eq!(
            &done(thin.finish(&io, StoreStatus::SpaceExhausted { lba: 12 })).sense[..14],
            &[0xF0, 0, 7, 0, 0, 0, 12, 10, 0, 0, 0, 0, 0x27, 0x07]
        );
        let thick = disk_with(DiskConfig::new(512, 1000));
        let Plan::Io(io) = thick.start(&mut scst_accel_hal::locks::LockToken::root(), &write, &data) else {
            panic!()
        };
        assert_eq!(
            &done(thick.finish(&io, StoreStatus::SpaceExhausted { lba: 12 })).sense[..14],
            &[0xF0, 0, 3, 0, 0, 0, 12, 10, 0, 0, 0, 0, 0x0C, 0]
        );
    }

    /// A disk whose engine executes COMPARE AND WRITE (TCMU), limit 8 blocks.
    fn caw_disk() -> Disk {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.compare_and_write = super::super::CompareAndWriteBy::Handler;
        cfg.limits.max_transfer_blocks = 8;
        disk_with(cfg)
    }

    fn caw(lba: u64, blocks: u8, byte1: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x89;
        c[1] = byte1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = blocks;
        c
    }

    fn plan(disk: &Disk, cdb: &[u8], data_out: &[u8]) -> super::super::IoPlan {
        match disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &data_out) {
            Plan::Io(io) => io,
            Plan::Done(r) => panic!("{cdb:02x?}: expected a store op, got {r:02x?}"),
        }
    }

    /// Match: the compare of the Data-Out's first half, then the write of its second half
    /// (buffer offset N blocks), FUA from the CDB, then GOOD.
    #[test]
    fn compare_and_write_compares_the_first_half_then_writes_the_second() {
        use super::super::ranges::BlockRange;
        use super::super::ranges::RangeMode;
        let disk = caw_disk();
        let data = vec![0u8; 2 * 2 * 512];
        for (byte1, fua) in [(0x00, false), (0x08, true), (0x10, false), (0x18, true)] {
            let first = plan(&disk, &caw(3, 2, byte1), &data);
            assert_eq!(first.op, StoreOp::Compare { lba: 3, blocks: 2 });
            assert_eq!(first.buffer_offset(), 0);
            assert_eq!(
                disk.range_need(&first),
                Some((BlockRange::new(3, 2), RangeMode::Exclusive)),
                "held exclusively across both steps"
            );
            let Plan::Io(second) = disk.finish(&first, StoreStatus::Good) else {
                panic!("the write follows a match")
            };
            assert_eq!(
                second.op,
                StoreOp::Write {
                    lba: 3,
                    blocks: 2,
                    fua
                },
                "byte 1 {byte1:#04x}"
            );
            assert_eq!(second.buffer_offset(), 1024, "the write instance");
            assert_eq!(
                done(disk.finish(&second, StoreStatus::Good)),
                super::Response::good()
            );
        }
    }

    /// Mismatch: MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with VALID and INFORMATION
    /// the offset of the first differing byte (SBC-3 §5.2), and nothing written.
    #[test]
    fn compare_and_write_mismatch_reports_the_offset_and_writes_nothing() {
        let disk = caw_disk();
        let first = plan(&disk, &caw(3, 2, 0), &[0u8; 2048]);
        for offset in [0u64, 511, 512, 1023] {
            let r = done(disk.finish(&first, StoreStatus::Miscompare { offset: Some(offset) }));
            assert_eq!(r.status, sam_status::CHECK_CONDITION);
            assert_eq!(r.sense[0], 0xF0, "fixed format, VALID set");
            assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (0x0E, 0x1D, 0x00));
            assert_eq!(
                u32::from_be_bytes([r.sense[3], r.sense[4], r.sense[5], r.sense[6]]),
                offset as u32
            );
        }
    }

    #[test]
    fn compare_and_write_field_errors() {
        let disk = caw_disk();
        // NUMBER OF LOGICAL BLOCKS 0: nothing compared or written, GOOD (SBC-3 §5.2).
        good(&disk, &caw(3, 0, 0), &[]);
        // ... but 0 with Data-Out (256 blocks truncated to the one-byte field) is a mismatch.
        check_sense(
            &disk,
            &caw(0, 0, 0),
            &[0; 2 * 512],
            [5, 0x24, 0],
            Some([0xC0, 0, 13]),
        );
        // Above MAXIMUM COMPARE AND WRITE LENGTH (8 here): INVALID FIELD IN CDB at byte 13.
        check_sense(
            &disk,
            &caw(0, 9, 0),
            &[0; 18 * 512],
            [5, 0x24, 0],
            Some([0xC0, 0, 13]),
        );
        // Data-Out not exactly 2 × N blocks.
        for len in [512, 3 * 512, 4 * 512 + 1, 0] {
            check_sense(
                &disk,
                &caw(0, 2, 0),
                &vec![0; len],
                [5, 0x24, 0],
                Some([0xC0, 0, 13]),
            );
        }
        // WRPROTECT without protection information.
        check_sense(
            &disk,
            &caw(0, 1, 0x20),
            &[0; 1024],
            [5, 0x24, 0],
            Some([0xCF, 0, 1]),
        );
        // Past the end of the medium.
        check_sense(&disk, &caw(999, 2, 0), &[0; 2048], [5, 0x21, 0], None);
        // Read-only: DATA PROTECT.
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.compare_and_write = super::super::CompareAndWriteBy::Handler;
        cfg.read_only = true;
        check_sense(&disk_with(cfg), &caw(0, 1, 0), &[0; 1024], [7, 0x27, 0], None);
        // Where SCST's core runs it, the engine never executes it.
        let core = disk_with(DiskConfig::new(512, 1000));
        check_sense(&core, &caw(0, 1, 0), &[0; 1024], [5, 0x20, 0], None);
    }

    /// Writes hold their range shared, reads nothing, and only on a disk whose engine runs
    /// COMPARE AND WRITE: elsewhere a write costs no lock.
    #[test]
    fn only_writes_and_compare_and_write_need_a_range() {
        use super::super::ranges::BlockRange;
        use super::super::ranges::RangeMode;
        let disk = caw_disk();
        let need = |cdb: &[u8], data: &[u8]| disk.range_need(&plan(&disk, cdb, data));
        let shared = |lba, n| Some((BlockRange::new(lba, n), RangeMode::Shared));
        assert_eq!(need(&[0x28, 0, 0, 0, 0, 5, 0, 0, 4, 0], &[]), None, "READ");
        assert_eq!(need(&[0x2F, 0, 0, 0, 0, 5, 0, 0, 4, 0], &[]), None, "VERIFY");
        assert_eq!(need(&[0x2A, 0, 0, 0, 0, 5, 0, 0, 4, 0], &[0; 2048]), shared(5, 4));
        assert_eq!(need(&[0x2E, 0, 0, 0, 0, 5, 0, 0, 4, 0], &[0; 2048]), shared(5, 4));
        assert_eq!(need(&[0x41, 0, 0, 0, 0, 5, 0, 0, 9, 0], &[1; 512]), shared(5, 9));
        assert_eq!(need(&[0x41, 0, 0, 0, 0, 5, 0, 0, 9, 0], &[0; 512]), shared(5, 9));
        let core = disk_with(DiskConfig::new(512, 1000));
        let io = plan(&core, &[0x2A, 0, 0, 0, 0, 5, 0, 0, 4, 0], &[0; 2048]);
        assert_eq!(core.range_need(&io), None);
    }

    #[test]
    fn store_error_in_descriptor_format() {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.d_sense = true;
        let disk = disk_with(cfg);
        let Plan::Io(io) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0],
            &NO_DATA,
        ) else {
            panic!()
        };
        let r = done(disk.finish(&io, StoreStatus::ReadError { lba: 0x1_0000_0000 }));
        assert_eq!(
            r.sense,
            [0x72, 3, 0x11, 0, 0, 0, 0, 12, 0, 0x0A, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
    }
}
