//! What SCST's PARSE reply needs for a decoded command (spec §3.4 PARSE row): data direction,
//! buffer length, LBA, medium length and op_flags.

use super::cdb::Command;
use super::cdb::Decoded;
use super::cdb::Geometry;
use super::CdbInfo;
use crate::abi::data_direction;
use crate::abi::op_flags;

/// Bytes of `count` blocks, saturating (only medium lengths, which are not buffers, can be large).
fn bytes(count: u64, geo: &Geometry) -> u64 {
    count.saturating_mul(u64::from(geo.block_size))
}

/// Largest buffer asked for engine-generated data. Allocation lengths may say up to 4 GiB but
/// the engine never returns more than a few hundred bytes (the longest is REPORT SUPPORTED
/// OPERATION CODES with timeouts, 724), and the kernel's bufflen is an i32: a shorter buffer
/// is a normal underflow (residual) for the initiator.
const MAX_ENGINE_DATA: u64 = 0xFFFF;

/// The PARSE values for `d`. Buffer lengths were bounded to i32 by the decoder; the kernel
/// requires a non-zero buffer unless the direction is NONE, so a zero length is NONE.
pub(crate) fn cdb_info(d: &Decoded, geo: &Geometry) -> CdbInfo {
    // (data-in?, transfer bytes, Some(lba) for commands addressing the medium, medium bytes)
    let (data_in, transfer, lba, medium): (bool, u64, Option<u64>, Option<u64>) = match d.command {
        Command::TestUnitReady
        | Command::ReserveRelease
        | Command::StartStopUnit { .. }
        | Command::PreventAllow { .. }
        | Command::SendDiagnostic => (false, 0, None, None),
        // The parameter list's length is not in the CDB: the header is what the engine reads
        // (a list with more, an initialization pattern or a defect list, is refused by it).
        Command::FormatUnit { fmtdata, longlist } => {
            let header = if !fmtdata {
                0
            } else if longlist {
                super::rw::FORMAT_HEADER_LONG
            } else {
                super::rw::FORMAT_HEADER_SHORT
            };
            (false, header as u64, None, None)
        }
        Command::RequestSense { alloc, .. }
        | Command::Inquiry { alloc, .. }
        | Command::ReadCapacity16 { alloc }
        | Command::ReportSupportedOpcodes { alloc, .. } => {
            (true, u64::from(alloc).min(MAX_ENGINE_DATA), None, None)
        }
        Command::ModeSense(ms) => (true, u64::from(ms.alloc).min(MAX_ENGINE_DATA), None, None),
        Command::ReadCapacity10 => (true, 8, None, None),
        Command::GetLbaStatus { alloc, .. } => (true, u64::from(alloc).min(MAX_ENGINE_DATA), None, None),
        Command::ModeSelect { param_len, .. } | Command::Unmap { param_len } => {
            (false, u64::from(param_len), None, None)
        }
        Command::Read { blocks, .. } => {
            let n = bytes(u64::from(blocks.count), geo);
            (true, n, Some(blocks.lba), Some(n))
        }
        Command::Write { blocks, .. } | Command::WriteAndVerify { blocks, .. } => {
            let n = bytes(u64::from(blocks.count), geo);
            (false, n, Some(blocks.lba), Some(n))
        }
        // Data-Out of 2 × N blocks (verify then write instance); N blocks of the medium.
        Command::CompareAndWrite { blocks, .. } => {
            let n = bytes(u64::from(blocks.count), geo);
            (false, 2 * n, Some(blocks.lba), Some(n))
        }
        Command::Verify { blocks, bytchk } => {
            let n = bytes(u64::from(blocks.count), geo);
            (false, if bytchk { n } else { 0 }, Some(blocks.lba), Some(n))
        }
        Command::SynchronizeCache { lba, count } | Command::PreFetch { lba, count } => {
            (false, 0, Some(lba), Some(bytes(count, geo)))
        }
        Command::WriteSame { blocks, ndob, .. } => {
            let block = if ndob || blocks.count == 0 {
                0
            } else {
                u64::from(geo.block_size)
            };
            (
                false,
                block,
                Some(blocks.lba),
                Some(bytes(u64::from(blocks.count), geo)),
            )
        }
    };
    let transfer_len = u32::try_from(transfer).unwrap_or(u32::MAX);
    let direction = match (transfer_len, data_in) {
        (0, _) => data_direction::NONE,
        (_, true) => data_direction::READ,
        (_, false) => data_direction::WRITE,
    };
    let mut flags = op_flags::INFO_VALID;
    if d.entry.writes_medium {
        flags |= op_flags::WRITE_MEDIUM;
    }
    if lba.is_none() {
        flags |= op_flags::LBA_NOT_VALID;
    }
    CdbInfo {
        direction,
        transfer_len,
        // The kernel's lba and data_len are i64 and must not be negative (spec §3.4).
        lba: lba.unwrap_or(0).min(i64::MAX as u64),
        data_len: medium.unwrap_or(u64::from(transfer_len)).min(i64::MAX as u64),
        op_flags: flags,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::disk_with;
    use super::super::CdbInfo;
    use super::super::DiskConfig;
    use crate::abi::data_direction;
    use crate::abi::op_flags;

    const INFO: u32 = op_flags::INFO_VALID;
    const NO_LBA: u32 = op_flags::INFO_VALID | op_flags::LBA_NOT_VALID;
    const WRITE: u32 = op_flags::INFO_VALID | op_flags::WRITE_MEDIUM;

    fn info(cdb: &[u8]) -> CdbInfo {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.thin_provisioning = true;
        disk_with(cfg).cdb_info(cdb).unwrap()
    }

    fn expect(direction: u8, transfer_len: u32, lba: u64, data_len: u64, op_flags: u32) -> CdbInfo {
        CdbInfo {
            direction,
            transfer_len,
            lba,
            data_len,
            op_flags,
        }
    }

    #[test]
    fn read_and_write() {
        assert_eq!(
            info(&[0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0]),
            expect(data_direction::READ, 1024, 5, 1024, INFO)
        );
        assert_eq!(
            info(&[0x0A, 0, 0, 7, 1, 0]),
            expect(data_direction::WRITE, 512, 7, 512, WRITE)
        );
        assert_eq!(
            info(&[0x28, 0, 0, 0, 0, 5, 0, 0, 0, 0]),
            expect(data_direction::NONE, 0, 5, 0, INFO)
        );
    }

    #[test]
    fn verify_and_write_same() {
        assert_eq!(
            info(&[0x2F, 0, 0, 0, 0, 1, 0, 0, 4, 0]),
            expect(data_direction::NONE, 0, 1, 2048, INFO)
        );
        assert_eq!(
            info(&[0x2F, 0x02, 0, 0, 0, 1, 0, 0, 4, 0]),
            expect(data_direction::WRITE, 2048, 1, 2048, INFO)
        );
        assert_eq!(
            info(&[0x41, 0, 0, 0, 0, 0, 0, 0, 10, 0]),
            expect(data_direction::WRITE, 512, 0, 5120, WRITE)
        );
        let mut ws16 = [0u8; 16];
        ws16[0] = 0x93;
        ws16[1] = 0x01; // NDOB
        ws16[13] = 10;
        assert_eq!(info(&ws16), expect(data_direction::NONE, 0, 0, 5120, WRITE));
    }

    #[test]
    fn engine_data_commands_use_allocation_length() {
        assert_eq!(
            info(&[0x12, 0, 0, 0x01, 0x00, 0]),
            expect(data_direction::READ, 256, 0, 256, NO_LBA)
        );
        assert_eq!(
            info(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            expect(data_direction::READ, 8, 0, 8, NO_LBA)
        );
        assert_eq!(
            info(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
            expect(data_direction::WRITE, 24, 0, 24, NO_LBA | op_flags::WRITE_MEDIUM)
        );
        assert_eq!(
            info(&[0x00, 0, 0, 0, 0, 0]),
            expect(data_direction::NONE, 0, 0, 0, NO_LBA)
        );
        assert_eq!(
            info(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            expect(data_direction::NONE, 0, 0, 512_000, INFO)
        );
    }

    #[test]
    fn huge_allocation_length_is_capped() {
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0];
        assert_eq!(
            info(&cdb),
            expect(data_direction::READ, 0xFFFF, 0, 0xFFFF, NO_LBA)
        );
        let cdb = [0xA3, 0x0C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0];
        assert_eq!(info(&cdb).transfer_len, 0xFFFF);
    }

    #[test]
    fn malformed_cdb_is_check_condition() {
        let disk = disk_with(DiskConfig::new(512, 1000));
        let r = disk.cdb_info(&[0xC5, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(r.status, crate::abi::sam_status::CHECK_CONDITION);
        assert_eq!(&r.sense[12..14], &[0x20, 0x00]);
        let r = disk
            .cdb_info(&[0x28, 0, 0, 0, 0x03, 0xE8, 0, 0, 1, 0])
            .unwrap_err();
        assert_eq!(&r.sense[12..14], &[0x21, 0x00]);
    }
}
