//! Typed CDB decoding: bytes → [`Command`], with every check that needs only the CDB and the
//! disk's geometry (field values, transfer limits, LBA range). Never panics: the table lookup
//! checks the CDB length first and every field read goes through [`Fields`], which yields 0 past
//! the end.

use super::opcodes;
use super::opcodes::Op;
use super::opcodes::OpcodeEntry;
use super::opcodes::RsocRequest;
use super::sense::Sense;
use super::BlockLimits;
use std::cell::Cell;

/// What decoding needs to know about the disk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    /// What the opcode table offers (thin provisioning, GET LBA STATUS, ...).
    pub features: opcodes::Features,
    pub limits: BlockLimits,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks (0 when not offered).
    pub compare_and_write_max: u8,
}

impl Geometry {
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    fn limits_compare_and_write(&self) -> u32 {
        u32::from(self.compare_and_write_max)
    }
}

/// A range of logical blocks, already checked to lie inside the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub lba: u64,
    pub count: u32,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ModeSense(ModeSenseCdb),
    ModeSelect {
        ten: bool,
        param_len: u32,
    },
    StartStopUnit {
        no_flush: bool,
        start: bool,
        loej: bool,
    },
    PreventAllow {
        prevent: bool,
    },
    ReserveRelease,
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    /// GET LBA STATUS from `lba`, already checked to lie inside the disk.
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    Read {
        blocks: Blocks,
        fua: bool,
    },
    Write {
        blocks: Blocks,
        fua: bool,
    },
    /// BYTCHK 1: compare the data-out; 0: verify the medium only.
    WriteAndVerify {
        blocks: Blocks,
        bytchk: bool,
    },
    Verify {
        blocks: Blocks,
        bytchk: bool,
    },
    /// The range is only checked: nothing is read ahead (GOOD, not CONDITION MET).
    PreFetch {
        lba: u64,
        count: u64,
    },
    /// The range is only checked: the store flushes its whole cache.
    SynchronizeCache {
        lba: u64,
        count: u64,
    },
    WriteSame {
        blocks: Blocks,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    /// COMPARE AND WRITE executed by this engine (`CompareAndWrite::Handler`).
    CompareAndWrite {
        blocks: Blocks,
        fua: bool,
    },
    ReportSupportedOpcodes {
        request: RsocRequest,
        alloc: u32,
    },
    /// SEND DIAGNOSTIC the disk performs: the default self-test, or SELF-TEST CODE 000b with
    /// no parameter list. Nothing to do: GOOD.
    SendDiagnostic,
    /// FORMAT UNIT without protection information; with `fmtdata` a parameter list header
    /// follows, long (8 bytes) with `longlist`, else short (4 bytes).
    FormatUnit {
        fmtdata: bool,
        longlist: bool,
    },
}

/// MODE SENSE(6)/(10) fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModeSenseCdb {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc: u32,
}

/// A CDB found in the table, and what it asks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decoded {
    pub entry: &'static OpcodeEntry,
    pub command: Command,
}

/// Where the decoder notes the CDB bits it reads: nowhere on the command path (`()`, which
/// compiles to nothing), a bit mask in the opcode table's property test
/// ([`decode_traced`]). On the command path the trace was a 16-byte `Cell` read and written
/// back on every field access: `decode` went from 8 % to 6 % of the handler's own time per
/// 4 KiB READ (`bench --layers handler`) without it.
pub(crate) trait ReadTrace {
    /// The bits `mask` of CDB byte `i` were read.
    fn note(&self, i: usize, mask: u8);
}

impl ReadTrace for () {
    #[inline(always)]
    fn note(&self, _i: usize, _mask: u8) {}
}

/// Bit `b` of byte `i` is `read[i] & (1 << b)`.
impl ReadTrace for Cell<[u8; READ_MASK_LEN]> {
    fn note(&self, i: usize, mask: u8) {
        let mut read = self.get();
        if let Some(slot) = read.get_mut(i) {
            *slot |= mask;
            self.set(read);
        }
    }
}

/// Bounds-safe big-endian field reads, each noted in the read trace.
struct Fields<'a, T: ReadTrace> {
    cdb: &'a [u8],
    read: &'a T,
}

impl<T: ReadTrace> Fields<'_, T> {
    /// The bits `mask` of byte `i` (0 past the end).
    fn bits(&self, i: usize, mask: u8) -> u8 {
        self.read.note(i, mask);
        self.cdb.get(i).copied().unwrap_or(0) & mask
    }

    fn byte(&self, i: usize) -> u8 {
        self.bits(i, 0xFF)
    }

    fn bit(&self, i: usize, bit: u8) -> bool {
        self.bits(i, 1 << bit) != 0
    }

    fn be(&self, start: usize, len: usize) -> u64 {
        (start..start + len).fold(0u64, |acc, i| (acc << 8) | u64::from(self.byte(i)))
    }

    fn be32(&self, start: usize, len: usize) -> u32 {
        u32::try_from(self.be(start, len.min(4))).unwrap_or(u32::MAX)
    }
}

/// Where the LBA and length fields of a block command are, per CDB size.
struct Layout {
    lba: (usize, usize),
    len: (usize, usize),
}

fn layout(cdb_len: usize) -> Layout {
    match cdb_len {
        10 => Layout {
            lba: (2, 4),
            len: (7, 2),
        },
        12 => Layout {
            lba: (2, 4),
            len: (6, 4),
        },
        _ => Layout {
            lba: (2, 8),
            len: (10, 4),
        },
    }
}

/// The (LBA, count) of a command whose count 0 means "up to the last LBA" (PRE-FETCH,
/// SYNCHRONIZE CACHE), checked to end inside the disk.
fn range_to_end(f: &Fields<'_, impl ReadTrace>, cdb_len: usize, geo: &Geometry) -> Result<(u64, u64), Sense> {
    let l = layout(cdb_len);
    let (lba, count) = (f.be(l.lba.0, l.lba.1), f.be(l.len.0, l.len.1));
    let count = if count == 0 {
        geo.num_blocks.saturating_sub(lba)
    } else {
        count
    };
    match lba.checked_add(count) {
        Some(end) if end <= geo.num_blocks => Ok((lba, count)),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// Decode `cdb` against the table and the disk's geometry.
pub(crate) fn decode(cdb: &[u8], geo: &Geometry) -> Result<Decoded, Sense> {
    decode_traced(cdb, geo, &())
}

/// Bytes of CDB the read trace covers (the longest CDB in the table is 16 bytes).
pub(crate) const READ_MASK_LEN: usize = 16;

/// [`decode`], recording in `read` every CDB bit the decoder looked at (bit `b` of byte `i`
/// is `read[i] & (1 << b)`). The opcode table's usage data must be exactly these bits plus the
/// ones accepted with no effect (the property test `usage_data_is_what_the_decoder_reads`).
pub(crate) fn decode_traced(cdb: &[u8], geo: &Geometry, read: &impl ReadTrace) -> Result<Decoded, Sense> {
    let entry = opcodes::lookup(cdb, geo.features)?;
    let f = Fields {
        cdb: &cdb[..entry.cdb_len().min(cdb.len())],
        read,
    };
    let command = match entry.op {
        Op::TestUnitReady => Command::TestUnitReady,
        Op::RequestSense => Command::RequestSense {
            desc: f.bit(1, 0),
            alloc: f.be32(4, 1),
        },
        Op::Inquiry => {
            let (evpd, page) = (f.bit(1, 0), f.byte(2));
            if !evpd && page != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::Inquiry {
                evpd,
                page,
                alloc: f.be32(3, 2),
            }
        }
        Op::ModeSense6 | Op::ModeSense10 => {
            let ten = entry.op == Op::ModeSense10;
            Command::ModeSense(ModeSenseCdb {
                ten,
                dbd: f.bit(1, 3),
                llbaa: ten && f.bit(1, 4),
                pc: f.byte(2) >> 6,
                page: f.byte(2) & 0x3F,
                subpage: f.byte(3),
                alloc: if ten { f.be32(7, 2) } else { f.be32(4, 1) },
            })
        }
        Op::ModeSelect6 | Op::ModeSelect10 => {
            let ten = entry.op == Op::ModeSelect10;
            if f.bit(1, 0) {
                // SP: saving pages is not supported (SPC-4 §6.11).
                return Err(Sense::invalid_cdb_field(1, Some(0)));
            }
            Command::ModeSelect {
                ten,
                param_len: if ten { f.be32(7, 2) } else { f.be32(4, 1) },
            }
        }
        Op::StartStopUnit => {
            if f.bits(4, 0xF0) != 0 {
                return Err(Sense::invalid_cdb_field(4, Some(7)));
            }
            Command::StartStopUnit {
                no_flush: f.bit(4, 2),
                loej: f.bit(4, 1),
                start: f.bit(4, 0),
            }
        }
        Op::PreventAllowMediumRemoval => match f.bits(4, 0x03) {
            0 => Command::PreventAllow { prevent: false },
            1 => Command::PreventAllow { prevent: true },
            // 10b/11b are obsolete (medium changer) in SBC.
            _ => return Err(Sense::invalid_cdb_field(4, Some(1))),
        },
        Op::Reserve6 | Op::Release6 | Op::Reserve10 | Op::Release10 => Command::ReserveRelease,
        Op::ReadCapacity10 => {
            // SBC-3 §5.15: with PMI=0 the LOGICAL BLOCK ADDRESS field must be 0.
            if !f.bit(8, 0) && f.be(2, 4) != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::ReadCapacity10
        }
        Op::ReadCapacity16 => {
            // SBC-3 §5.16.1, as READ CAPACITY(10): with PMI=0 the LOGICAL BLOCK ADDRESS field
            // must be 0; with PMI=1 the last LBA is reported whatever it says (no block is
            // slower than another).
            if !f.bit(14, 0) && f.be(2, 8) != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::ReadCapacity16 { alloc: f.be32(10, 4) }
        }
        Op::GetLbaStatus => {
            // SBC-3 §5.7.1: a STARTING LBA past the last LBA is LBA OUT OF RANGE.
            let lba = f.be(2, 8);
            if lba >= geo.num_blocks {
                return Err(Sense::lba_out_of_range());
            }
            Command::GetLbaStatus {
                lba,
                alloc: f.be32(10, 4),
            }
        }
        Op::SendDiagnostic => {
            // Both fields are read before either is judged, so the usage data's property test
            // sees each read from the all-zero CDB.
            let code = f.bits(1, 0xE0);
            let param_len = f.be(3, 2);
            // SPC-5 SEND DIAGNOSTIC: with SELFTEST 1 the SELF-TEST CODE field must be 000b, else
            // INVALID FIELD IN CDB. With SELFTEST 0, 000b is the only code this disk performs:
            // there is no short or extended self-test to run in the background or the
            // foreground, nor one to abort, so each of those codes is a field it cannot honour.
            if code != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            // No diagnostic page is supported (there is no RECEIVE DIAGNOSTIC RESULTS either),
            // in page format or not, and the default self-test takes no parameter data: any
            // parameter list is refused before it is transferred.
            if param_len != 0 {
                return Err(Sense::invalid_cdb_field(3, None));
            }
            // SELFTEST is not read: the default self-test (1) has nothing to test that could
            // fail, and code 000b without a list (0) asks for nothing; both are GOOD.
            Command::SendDiagnostic
        }
        Op::FormatUnit => {
            let fmtpinfo = f.bits(1, 0xC0);
            let longlist = f.bit(1, 5);
            let fmtdata = f.bit(1, 4);
            // SBC-4 §5.4.1: FMTPINFO asks for protection information, which this disk does not
            // offer (PROTECT 0 in INQUIRY): INVALID FIELD IN CDB, with or without FMTDATA.
            if fmtpinfo != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            Command::FormatUnit { fmtdata, longlist }
        }
        Op::ReportSupportedOpcodes => Command::ReportSupportedOpcodes {
            request: RsocRequest {
                rctd: f.bit(2, 7),
                options: f.bits(2, 0x07),
                opcode: f.byte(3),
                service_action: f.be(4, 2) as u16,
            },
            alloc: f.be32(6, 4),
        },
        Op::Read6 | Op::Write6 => {
            let lba = (u64::from(f.bits(1, 0x1F)) << 16) | f.be(2, 2);
            // SBC-3 §5.8: a TRANSFER LENGTH of 0 means 256 blocks in the 6-byte CDBs.
            let count = match f.byte(4) {
                0 => 256,
                n => u32::from(n),
            };
            let blocks = transfer_blocks(lba, count, 4, geo)?;
            if entry.op == Op::Read6 {
                Command::Read { blocks, fua: false }
            } else {
                Command::Write { blocks, fua: false }
            }
        }
        Op::Read10 | Op::Read12 | Op::Read16 | Op::Write10 | Op::Write12 | Op::Write16 => {
            check_protect(&f)?;
            let l = layout(entry.cdb_len());
            let blocks = transfer_blocks(f.be(l.lba.0, l.lba.1), f.be32(l.len.0, l.len.1), l.len.0, geo)?;
            let fua = f.bit(1, 3);
            if matches!(entry.op, Op::Read10 | Op::Read12 | Op::Read16) {
                Command::Read { blocks, fua }
            } else {
                Command::Write { blocks, fua }
            }
        }
        Op::WriteAndVerify10 | Op::WriteAndVerify12 | Op::WriteAndVerify16 => {
            check_protect(&f)?;
            let bytchk = bytchk(&f)?;
            let l = layout(entry.cdb_len());
            let blocks = transfer_blocks(f.be(l.lba.0, l.lba.1), f.be32(l.len.0, l.len.1), l.len.0, geo)?;
            Command::WriteAndVerify { blocks, bytchk }
        }
        Op::Verify10 | Op::Verify12 | Op::Verify16 => {
            check_protect(&f)?;
            let bytchk = bytchk(&f)?;
            let l = layout(entry.cdb_len());
            let (lba, count) = (f.be(l.lba.0, l.lba.1), f.be32(l.len.0, l.len.1));
            // Bound by MAXIMUM TRANSFER LENGTH with or without a data transfer (SBC-4's transfer
            // limits name VERIFY's VERIFICATION LENGTH): BYTCHK 0 reads the blocks from the
            // medium too, and an unbounded one (2^32 blocks) would outlast the command's
            // deadline, whose escalation aborts the whole store queue.
            let blocks = transfer_blocks(lba, count, l.len.0, geo)?;
            Command::Verify { blocks, bytchk }
        }
        Op::PreFetch10 | Op::PreFetch16 => {
            // PREFETCH LENGTH 0 = up to the last LBA (SBC-3 §5.9).
            let (lba, count) = range_to_end(&f, entry.cdb_len(), geo)?;
            if lba >= geo.num_blocks {
                return Err(Sense::lba_out_of_range());
            }
            Command::PreFetch { lba, count }
        }
        Op::SynchronizeCache10 | Op::SynchronizeCache16 => {
            // NUMBER OF LOGICAL BLOCKS 0 = up to the last LBA (SBC-3 §5.22).
            let (lba, count) = range_to_end(&f, entry.cdb_len(), geo)?;
            Command::SynchronizeCache { lba, count }
        }
        Op::WriteSame10 | Op::WriteSame16 => {
            check_protect(&f)?;
            // LBPWS=0: unmapping through WRITE SAME is not offered (SBC-3 §5.43): on a disk that
            // is not thin the bit is not in the usage data, so `lookup` refused it set.
            let unmap = geo.features.thin && f.bit(1, 3);
            let ndob = entry.op == Op::WriteSame16 && f.bit(1, 0);
            let l = layout(entry.cdb_len());
            let max = geo.limits.max_write_same_blocks;
            // NUMBER OF LOGICAL BLOCKS 0 = up to the last LBA (WSNZ=0 in the Block Limits page).
            let blocks = to_end(f.be(l.lba.0, l.lba.1), f.be(l.len.0, l.len.1), l.len.0, max, geo)?;
            Command::WriteSame { blocks, unmap, ndob }
        }
        // `lookup` returns the entry only where this engine runs it (`CompareAndWrite::Handler`);
        // elsewhere SCST's core does and the CDB never gets here.
        Op::CompareAndWrite => {
            if !geo.features.compare_and_write_in_engine {
                return Err(Sense::invalid_opcode());
            }
            // WRPROTECT: no protection information. DPO (a cache hint) and FUA_NV (obsolete)
            // are accepted without effect.
            check_protect(&f)?;
            let fua = f.bit(1, 3);
            // SBC-3 §5.2: above MAXIMUM COMPARE AND WRITE LENGTH → INVALID FIELD IN CDB.
            let count = u32::from(f.byte(13));
            if count > geo.limits_compare_and_write() {
                return Err(Sense::invalid_cdb_field(13, None));
            }
            let blocks = in_range(f.be(2, 8), u64::from(count), geo)?;
            Command::CompareAndWrite { blocks, fua }
        }
        // The target core executes them (`Executor::Core`); `lookup` never returns the entry.
        Op::ExtendedCopy
        | Op::ReceiveCopyResults
        | Op::PersistentReserveIn
        | Op::PersistentReserveOut
        | Op::ReportLuns => return Err(Sense::invalid_opcode()),
        Op::Unmap => Command::Unmap {
            param_len: f.be32(7, 2),
        },
    };
    Ok(Decoded { entry, command })
}

/// RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7..5) must be 0: no protection information.
fn check_protect(f: &Fields<'_, impl ReadTrace>) -> Result<(), Sense> {
    if f.bits(1, 0xE0) != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

/// BYTCHK (byte 1 bits 2..1): 00b verify, 01b compare; 10b/11b are not supported.
fn bytchk(f: &Fields<'_, impl ReadTrace>) -> Result<bool, Sense> {
    match f.bits(1, 0x06) >> 1 {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Sense::invalid_cdb_field(1, Some(2))),
    }
}

/// A data-transferring range: bound by MAXIMUM TRANSFER LENGTH (and by the kernel's i32
/// buffer length), then by the capacity.
fn transfer_blocks(lba: u64, count: u32, len_byte: usize, geo: &Geometry) -> Result<Blocks, Sense> {
    let bytes = u64::from(count) * u64::from(geo.block_size);
    if count > geo.limits.max_transfer_blocks || bytes > i32::MAX as u64 {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    in_range(lba, u64::from(count), geo)
}

/// A range where a count of 0 means "to the last LBA", bound by `max` blocks.
fn to_end(lba: u64, count: u64, len_byte: usize, max: u64, geo: &Geometry) -> Result<Blocks, Sense> {
    let count = if count == 0 {
        geo.num_blocks.checked_sub(lba).ok_or(Sense::lba_out_of_range())?
    } else {
        count
    };
    if count > max || count > u64::from(u32::MAX) {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    in_range(lba, count, geo)
}

/// SBC-3 §4.5: LBA + count must not pass the capacity → LBA OUT OF RANGE.
fn in_range(lba: u64, count: u64, geo: &Geometry) -> Result<Blocks, Sense> {
    match lba.checked_add(count) {
        Some(end) if end <= geo.num_blocks => Ok(Blocks {
            lba,
            count: u32::try_from(count).map_err(|_| Sense::lba_out_of_range())?,
        }),
        _ => Err(Sense::lba_out_of_range()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        let mut limits = super::super::DiskConfig::new(512, 1000).limits;
        limits.max_transfer_blocks = 128;
        limits.max_write_same_blocks = 500;
        Geometry {
            block_size: 512,
            num_blocks: 1000,
            features: opcodes::Features {
                thin: true,
                lba_status: true,
                compare_and_write: true,
                compare_and_write_in_engine: false,
                copy_offload: false,
            },
            limits,
            compare_and_write_max: 128,
        }
    }

    fn cmd(cdb: &[u8]) -> Result<Command, Sense> {
        decode(cdb, &geo()).map(|d| d.command)
    }

    #[test]
    fn read6_length_zero_means_256_and_lba_is_21_bits() {
        let mut g = geo();
        g.num_blocks = 0x20_0000;
        g.limits.max_transfer_blocks = 256;
        let d = decode(&[0x08, 0x1F, 0x00, 0x10, 0, 0], &g).unwrap();
        assert_eq!(
            d.command,
            Command::Read {
                blocks: Blocks {
                    lba: 0x1F_0010,
                    count: 256
                },
                fua: false
            }
        );
    }

    #[test]
    fn read10_fields() {
        let c = cmd(&[0x28, 0x08, 0, 0, 0x01, 0x00, 0, 0, 0x10, 0]).unwrap();
        assert_eq!(
            c,
            Command::Read {
                blocks: Blocks { lba: 256, count: 16 },
                fua: true
            }
        );
    }

    #[test]
    fn read16_and_write12_fields() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[9] = 7;
        cdb[13] = 3;
        assert_eq!(
            cmd(&cdb).unwrap(),
            Command::Read {
                blocks: Blocks { lba: 7, count: 3 },
                fua: false
            }
        );
        let c = cmd(&[0xAA, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0]).unwrap();
        assert_eq!(
            c,
            Command::Write {
                blocks: Blocks { lba: 9, count: 2 },
                fua: false
            }
        );
    }

    #[test]
    fn protect_field_is_rejected() {
        assert_eq!(
            cmd(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(Sense::invalid_cdb_field(1, Some(7)))
        );
    }

    #[test]
    fn transfer_over_limit_points_at_length_field() {
        assert_eq!(
            cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 129, 0]),
            Err(Sense::invalid_cdb_field(7, None))
        );
        assert_eq!(
            cmd(&[0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 129, 0, 0]),
            Err(Sense::invalid_cdb_field(6, None))
        );
    }

    #[test]
    fn range_past_the_end_is_out_of_range() {
        assert_eq!(
            cmd(&[0x28, 0, 0, 0, 0x03, 0xE0, 0, 0, 9, 0]),
            Err(Sense::lba_out_of_range())
        );
        assert!(cmd(&[0x28, 0, 0, 0, 0x03, 0xE0, 0, 0, 8, 0]).is_ok());
        let mut cdb = [0xFFu8; 16];
        cdb[0] = 0x88;
        cdb[1] = 0;
        cdb[10..14].copy_from_slice(&[0, 0, 0, 1]);
        cdb[14] = 0;
        cdb[15] = 0;
        assert_eq!(cmd(&cdb), Err(Sense::lba_out_of_range()));
    }

    #[test]
    fn bytchk_values() {
        assert_eq!(
            cmd(&[0x2F, 0x02, 0, 0, 0, 0, 0, 0, 1, 0]),
            Ok(Command::Verify {
                blocks: Blocks { lba: 0, count: 1 },
                bytchk: true
            })
        );
        assert_eq!(
            cmd(&[0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(Sense::invalid_cdb_field(1, Some(2)))
        );
        assert_eq!(
            cmd(&[0x2E, 0x06, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(Sense::invalid_cdb_field(1, Some(2)))
        );
        // A medium verification (BYTCHK 0) is bound by the transfer limit too (SBC-4's
        // transfer limits): 256 blocks is over this geometry's.
        assert_eq!(
            cmd(&[0x2F, 0, 0, 0, 0, 0, 0, 0x01, 0, 0]),
            Err(Sense::invalid_cdb_field(7, None))
        );
        assert!(cmd(&[0x2F, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]).is_ok());
    }

    #[test]
    fn write_same_zero_blocks_runs_to_the_end_within_limit() {
        assert_eq!(
            cmd(&[0x41, 0, 0, 0, 0x01, 0xF4, 0, 0, 0, 0]),
            Ok(Command::WriteSame {
                blocks: Blocks { lba: 500, count: 500 },
                unmap: false,
                ndob: false
            })
        );
        assert_eq!(
            cmd(&[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Sense::invalid_cdb_field(7, None))
        );
        assert_eq!(
            cmd(&[0x41, 0, 0, 0, 0, 0, 0, 0x01, 0xF5, 0]),
            Err(Sense::invalid_cdb_field(7, None))
        );
    }

    #[test]
    fn write_same_anchor_and_unmap_without_thin_are_invalid() {
        assert_eq!(
            cmd(&[0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(Sense::invalid_cdb_field(1, Some(4)))
        );
        let mut g = geo();
        g.features.thin = false;
        let r = decode(&[0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], &g).map(|d| d.command);
        assert_eq!(r, Err(Sense::invalid_cdb_field(1, Some(3))));
    }

    #[test]
    fn pre_fetch_checks_its_range_and_zero_means_to_end() {
        assert_eq!(
            cmd(&[0x34, 0x02, 0, 0, 0, 10, 0, 0, 20, 0]),
            Ok(Command::PreFetch { lba: 10, count: 20 })
        );
        assert_eq!(
            cmd(&[0x34, 0, 0, 0, 0x03, 0xE7, 0, 0, 0, 0]),
            Ok(Command::PreFetch { lba: 999, count: 1 })
        );
        assert_eq!(
            cmd(&[0x34, 0, 0, 0, 0x03, 0xE8, 0, 0, 0, 0]),
            Err(Sense::lba_out_of_range())
        );
        let mut sixteen = [0u8; 16];
        sixteen[0] = 0x90;
        sixteen[9] = 100;
        sixteen[13] = 1;
        assert_eq!(cmd(&sixteen), Ok(Command::PreFetch { lba: 100, count: 1 }));
        assert_eq!(
            cmd(&[0x34, 0, 0, 0, 0x03, 0xE8, 0, 0, 1, 0]),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            cmd(&[0x34, 0, 0, 0, 0x03, 0xE9, 0, 0, 0, 0]),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn sync_cache_zero_means_to_end() {
        assert_eq!(
            cmd(&[0x35, 0, 0, 0, 0, 10, 0, 0, 0, 0]),
            Ok(Command::SynchronizeCache { lba: 10, count: 990 })
        );
        assert_eq!(
            cmd(&[0x35, 0, 0, 0, 0x03, 0xE9, 0, 0, 0, 0]),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn inquiry_page_without_evpd_is_invalid() {
        assert_eq!(
            cmd(&[0x12, 0, 0x80, 0, 0xFF, 0]),
            Err(Sense::invalid_cdb_field(2, None))
        );
    }

    #[test]
    fn mode_select_save_pages_is_invalid() {
        assert_eq!(
            cmd(&[0x15, 0x11, 0, 0, 0, 0]),
            Err(Sense::invalid_cdb_field(1, Some(0)))
        );
    }

    #[test]
    fn start_stop_power_condition_is_invalid() {
        assert_eq!(
            cmd(&[0x1B, 0, 0, 0, 0x10, 0]),
            Err(Sense::invalid_cdb_field(4, Some(7)))
        );
        assert_eq!(
            cmd(&[0x1B, 0, 0, 0x01, 0, 0]),
            Err(Sense::invalid_cdb_field(3, Some(0)))
        );
    }

    #[test]
    fn read_capacity10_lba_without_pmi_is_invalid() {
        assert_eq!(
            cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(Sense::invalid_cdb_field(2, None))
        );
        assert_eq!(
            cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
            Ok(Command::ReadCapacity10)
        );
    }
}
