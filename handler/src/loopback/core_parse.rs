//! The SCST core's own CDB parser, as used for `parse_type` STANDARD (and EXCEPTION for the
//! opcodes it knows). This is the loopback's OWN small SBC/SPC table, deliberately independent
//! of the handler's SCSI engine (`crate::scsi`): the two must agree only through the wire.
//!
//! For each known opcode it yields the direction, the transfer length in bytes (blocks ×
//! block_size, allocation length, parameter list length), the LBA and the op_flags SCST sets
//! (WRITE_MEDIUM; LOCAL_CMD for REQUEST SENSE, PERSISTENT RESERVE IN, MAINTENANCE IN, spec §3.6).

use crate::abi::data_direction;
use crate::abi::op_flags;

/// REPORT LUNS: answered by the core itself, never reaches the handler (spec §6.4).
pub(crate) const REPORT_LUNS: u8 = 0xa0;
/// INQUIRY (skips unit attentions).
pub(crate) const INQUIRY: u8 = 0x12;
/// TEST UNIT READY.
pub(crate) const TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE (the core reports a pending unit attention itself).
pub(crate) const REQUEST_SENSE: u8 = 0x03;
/// WRITE SAME(10).
pub(crate) const WRITE_SAME_10: u8 = 0x41;
/// WRITE SAME(16).
pub(crate) const WRITE_SAME_16: u8 = 0x93;

/// What the core's parser found in a CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParsedCdb {
    /// [`data_direction`] value.
    pub direction: u8,
    /// Buffer length in bytes (data-in for BIDI).
    pub bufflen: i32,
    /// BIDI data-out length.
    pub out_bufflen: i32,
    /// Data length (for WRITE SAME: the whole range, while bufflen is one block).
    pub data_len: i64,
    /// LBA (0 when the command has none).
    pub lba: i64,
    /// `op_flags`, always with INFO_VALID.
    pub op_flags: u32,
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// CDB length implied by the group code of the opcode, if the group is standard.
pub(crate) fn cdb_len_for(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Parse `cdb` as the SCST core would; `None` for an opcode the table does not know (or a CDB
/// too short for its opcode), which sends it to PARSE under EXCEPTION and fails it with
/// INVALID COMMAND OPERATION CODE under STANDARD.
pub(crate) fn parse(cdb: &[u8], block_size: u32) -> Option<ParsedCdb> {
    let opcode = *cdb.first()?;
    if cdb.len() < cdb_len_for(opcode)? {
        return None;
    }
    let bs = u64::from(block_size.max(1));
    use data_direction::NONE;
    use data_direction::READ;
    use data_direction::WRITE;
    // (direction, bytes, lba, extra flags)
    let rw = |lba: u64, blocks: u64| (lba, blocks * bs);
    let (direction, bytes, lba, flags, data_len): (u8, u64, u64, u32, Option<u64>) = match opcode {
        0x00 | 0x1b | 0x1e | 0x16 | 0x17 | 0x56 | 0x57 | 0x35 | 0x91 => (NONE, 0, 0, 0, None),
        REQUEST_SENSE => (READ, be(&cdb[4..5]), 0, op_flags::LOCAL_CMD, None),
        INQUIRY => (READ, be(&cdb[3..5]), 0, op_flags::SKIP_UA, None),
        0x1a => (READ, be(&cdb[4..5]), 0, 0, None),
        0x5a | 0x4d | 0x43 => (READ, be(&cdb[7..9]), 0, 0, None),
        0x15 => (WRITE, be(&cdb[4..5]), 0, 0, None),
        0x55 => (WRITE, be(&cdb[7..9]), 0, 0, None),
        0x25 => (READ, 8, 0, 0, None),
        0x9e => (READ, be(&cdb[10..14]), 0, 0, None),
        0x5e => (READ, be(&cdb[7..9]), 0, op_flags::LOCAL_CMD, None),
        0x5f => (WRITE, be(&cdb[5..9]), 0, 0, None),
        0xa3 => (READ, be(&cdb[6..10]), 0, op_flags::LOCAL_CMD, None),
        REPORT_LUNS => (
            READ,
            be(&cdb[6..10]),
            0,
            op_flags::FULLY_LOCAL_CMD | op_flags::SKIP_UA,
            None,
        ),
        0x42 => (WRITE, be(&cdb[7..9]), 0, op_flags::WRITE_MEDIUM, None),
        0x08 | 0x0a => {
            let blocks = match cdb[4] {
                0 => 256,
                n => u64::from(n),
            };
            let (lba, bytes) = rw(be(&cdb[1..4]) & 0x1f_ffff, blocks);
            let dir = if opcode == 0x08 { READ } else { WRITE };
            let f = if dir == WRITE { op_flags::WRITE_MEDIUM } else { 0 };
            (dir, bytes, lba, f, None)
        }
        0x28 | 0x2a | 0x2e | 0x2f => {
            let (lba, bytes) = rw(be(&cdb[2..6]), be(&cdb[7..9]));
            rw_flags(opcode, cdb, lba, bytes)
        }
        0xa8 | 0xaa | 0xae | 0xaf => {
            let (lba, bytes) = rw(be(&cdb[2..6]), be(&cdb[6..10]));
            rw_flags(opcode, cdb, lba, bytes)
        }
        0x88 | 0x8a | 0x8e | 0x8f => {
            let (lba, bytes) = rw(be(&cdb[2..10]), be(&cdb[10..14]));
            rw_flags(opcode, cdb, lba, bytes)
        }
        WRITE_SAME_10 => (
            WRITE,
            bs,
            be(&cdb[2..6]),
            op_flags::WRITE_MEDIUM,
            Some(be(&cdb[7..9]) * bs),
        ),
        WRITE_SAME_16 => (
            WRITE,
            bs,
            be(&cdb[2..10]),
            op_flags::WRITE_MEDIUM,
            Some(be(&cdb[10..14]) * bs),
        ),
        _ => return None,
    };
    let bytes = i32::try_from(bytes).ok()?;
    let direction = if bytes == 0 { NONE } else { direction };
    Some(ParsedCdb {
        direction,
        bufflen: bytes,
        out_bufflen: 0,
        data_len: data_len.map_or(i64::from(bytes), |d| d as i64),
        lba: lba as i64,
        op_flags: flags | op_flags::INFO_VALID,
    })
}

/// Direction and flags of the READ/WRITE/WRITE AND VERIFY/VERIFY families.
fn rw_flags(opcode: u8, cdb: &[u8], lba: u64, bytes: u64) -> (u8, u64, u64, u32, Option<u64>) {
    match opcode {
        0x28 | 0xa8 | 0x88 => (data_direction::READ, bytes, lba, 0, None),
        // VERIFY: data-out only with BYTCHK.
        0x2f | 0xaf | 0x8f if cdb[1] & 0x02 == 0 => (data_direction::NONE, 0, lba, 0, Some(bytes)),
        0x2f | 0xaf | 0x8f => (data_direction::WRITE, bytes, lba, 0, None),
        _ => (data_direction::WRITE, bytes, lba, op_flags::WRITE_MEDIUM, None),
    }
}

/// The core's REPORT LUNS answer for a session that sees exactly `lun`, truncated to the
/// allocation length (SAM-5 single-level LUN addressing).
pub(crate) fn report_luns_data(lun: u64, alloc_len: usize) -> Vec<u8> {
    let mut data = vec![0u8; 16];
    data[3] = 8;
    if lun < 256 {
        data[9] = lun as u8;
    } else {
        data[8] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        data[9] = lun as u8;
    }
    data.truncate(alloc_len);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read10_is_blocks_times_block_size() {
        let cdb = [0x28, 0, 0, 0, 0, 7, 0, 0, 3, 0];
        let p = parse(&cdb, 512).unwrap();
        assert_eq!((p.direction, p.bufflen, p.lba), (data_direction::READ, 1536, 7));
        assert!(p.op_flags & op_flags::INFO_VALID != 0);
        assert_eq!(p.op_flags & op_flags::WRITE_MEDIUM, 0);
    }

    #[test]
    fn write16_sets_write_medium_and_request_sense_is_local() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        cdb[9] = 2;
        cdb[13] = 1;
        let p = parse(&cdb, 4096).unwrap();
        assert_eq!((p.direction, p.bufflen, p.lba), (data_direction::WRITE, 4096, 2));
        assert!(p.op_flags & op_flags::WRITE_MEDIUM != 0);
        let rs = parse(&[0x03, 0, 0, 0, 18, 0], 512).unwrap();
        assert!(rs.op_flags & op_flags::LOCAL_CMD != 0);
    }

    #[test]
    fn unknown_and_short_cdbs_are_not_parsed() {
        assert_eq!(parse(&[0xc0, 0, 0, 0, 0, 0], 512), None);
        assert_eq!(parse(&[0x28, 0, 0], 512), None);
        let tur = parse(&[0; 6], 512).unwrap();
        assert_eq!(tur.direction, data_direction::NONE);
    }

    #[test]
    fn write_same_moves_one_block_over_a_range() {
        let cdb = [0x41, 0, 0, 0, 0, 4, 0, 0, 8, 0];
        let p = parse(&cdb, 512).unwrap();
        assert_eq!((p.bufflen, p.data_len, p.lba), (512, 4096, 4));
    }
}
