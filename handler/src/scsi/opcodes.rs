//! The one table of supported commands, and REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
//!
//! Every command the disk offers has exactly one [`OpcodeEntry`]: its opcode and service
//! action, its CDB usage data (which is also the CDB length and the mask of bits the decoder
//! accepts), who executes it, and its properties (media access, writes the medium, the
//! capability it needs). Decoding ([`super::cdb`]), `cdb_info` and the RSOC report all read
//! this table, and whether an entry is offered is decided from the disk's
//! [`Capabilities`](super::Capabilities) only, so what the engine executes and what it says it
//! supports cannot disagree.
//!
//! Usage data (SPC-4 §6.35.3): a bit is 1 where the decoder reads the bit, or accepts it with
//! no effect by design (DPO, a cache hint; GROUP NUMBER, no grouping function; IMMED, the
//! command simply completes after the work; the RESERVE/RELEASE CDBs the core already
//! performed). Every other bit is reserved here and refused with INVALID FIELD IN CDB pointing
//! at it, as SPC-4 recommends. The control byte's usage is 0: NACA is refused, the vendor
//! specific and obsolete bits are ignored.
//!
//! COMPARE AND WRITE is listed with [`Executor::Core`]: SCST's core runs it for a
//! user-space disk (`scst_user.md` §6.4) as READ(16) + WRITE(16) through this engine, so it is
//! reported as supported while the decoder itself never accepts its CDB. REPORT LUNS and
//! PERSISTENT RESERVE IN/OUT (each service action SCST and LIO implement) are listed with
//! [`Executor::Core`] too: the LU supports them (SPC-4 REPORT SUPPORTED OPERATION CODES lists
//! every command the LU supports) and the target core answers them under both frontends, SCST's
//! (`scst_report_luns_local`, `scst_persistent_reserve_in_local` / `_out_local`, for every
//! device) and LIO's (`passthrough_parse_cdb` emulates them for a TCMU device, whose PR
//! passthrough flag the TCMU setup leaves clear); their CDBs never reach the engine, which
//! would refuse them as unknown. The other MAINTENANCE IN/OUT service actions SCST's core
//! answers (REPORT TARGET PORT GROUPS, REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS, SET TARGET
//! PORT GROUPS) are not listed: LIO passes them to a TCMU device, where the engine refuses
//! them, and the table does not tell the frontends apart. EXTENDED COPY(LID1) and RECEIVE
//! COPY RESULTS are listed with [`Executor::Core`] where SCST's copy manager serves the
//! disk ([`super::CopyOffload`], `docs/xcopy.md`): it copies through this engine's READ(16) /
//! WRITE(16), or asks the handler to copy in the store (EXT_COPY_REMAP).
//! RESERVE/RELEASE are present: the core performs the reservation and then forwards the
//! command, which only has to succeed here.

use super::caps::Capabilities;
use super::sense::Sense;
use std::sync::OnceLock;

/// What a table entry is, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    TestUnitReady,
    RequestSense,
    FormatUnit,
    Read6,
    Write6,
    Inquiry,
    ModeSelect6,
    Reserve6,
    Release6,
    ModeSense6,
    StartStopUnit,
    SendDiagnostic,
    PreventAllowMediumRemoval,
    ReadCapacity10,
    Read10,
    Write10,
    WriteAndVerify10,
    Verify10,
    SynchronizeCache10,
    PreFetch10,
    PreFetch16,
    WriteSame10,
    Unmap,
    ModeSelect10,
    Reserve10,
    Release10,
    ModeSense10,
    Read16,
    Write16,
    WriteAndVerify16,
    Verify16,
    SynchronizeCache16,
    WriteSame16,
    ReadCapacity16,
    GetLbaStatus,
    ReportSupportedOpcodes,
    Read12,
    Write12,
    WriteAndVerify12,
    Verify12,
    CompareAndWrite,
    ExtendedCopy,
    ReceiveCopyResults,
    PersistentReserveIn,
    PersistentReserveOut,
    ReportLuns,
}

/// Who executes a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Executor {
    /// This engine: [`lookup`] finds the entry and [`super::cdb::decode`] decodes it.
    Engine,
    /// The target core: SCST's (a `SCST_LOCAL_CMD`) under scst_user, LIO's under TCMU where it
    /// says so (REPORT LUNS, PERSISTENT RESERVE IN/OUT); the engine only serves the commands
    /// the core derives from it. [`lookup`] returns such an entry only where the disk runs it
    /// in the engine instead ([`Features::compare_and_write_in_engine`], TCMU); elsewhere, if
    /// its CDB ever reached the engine (a device registered with parse_type CALL), it is
    /// refused as unknown.
    Core,
}

/// The capability an entry needs to be offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Always offered.
    Nothing,
    /// A thin provisioned disk (UNMAP).
    Thin,
    /// A thin disk whose store reports LBA status (GET LBA STATUS).
    LbaStatus,
    /// COMPARE AND WRITE offered ([`super::CompareAndWrite::ScstCore`]).
    CompareAndWrite,
    /// SCST's copy manager serves the disk ([`super::CopyOffload::ScstCopyManager`]).
    CopyOffload,
}

/// One supported command.
#[derive(Debug)]
pub(crate) struct OpcodeEntry {
    /// Dispatch key.
    pub op: Op,
    /// Operation code (CDB byte 0).
    pub opcode: u8,
    /// Service action (CDB byte 1 bits 4..0) for opcodes that have them.
    pub service_action: Option<u8>,
    /// Name, for logs.
    pub name: &'static str,
    /// CDB usage data (SPC-4 §6.35.3): byte 0 is the opcode, each other bit set is a bit the
    /// engine evaluates or accepts. Its length is the CDB length. The control byte (last) is 0:
    /// NACA is not supported and the vendor/obsolete bits are ignored.
    pub usage: &'static [u8],
    /// The usage data on a disk that is not thin provisioned, where it differs from
    /// [`Self::usage`] (WRITE SAME without its UNMAP bit: LBPWS=0); see [`Self::usage_for`].
    pub usage_thick: Option<&'static [u8]>,
    /// Reaches the medium: refused with NOT READY while the unit is stopped.
    pub media_access: bool,
    /// Writes the medium: WRITE_MEDIUM in the PARSE reply, DATA PROTECT when read-only.
    pub writes_medium: bool,
    /// The capability it needs to be offered.
    pub needs: Needs,
    /// Who executes it.
    pub executor: Executor,
}

/// The capabilities the opcode table depends on, taken from [`Capabilities`]. A `bool` is
/// thin provisioning (true) or not, without GET LBA STATUS nor COMPARE AND WRITE (tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// LBPME: UNMAP, WRITE SAME with UNMAP.
    pub thin: bool,
    /// GET LBA STATUS (SBC-3 §5.7), only meaningful when thin.
    pub lba_status: bool,
    /// COMPARE AND WRITE offered (by SCST's core or this engine).
    pub compare_and_write: bool,
    /// ... and executed by this engine (`CompareAndWrite::Handler`).
    pub compare_and_write_in_engine: bool,
    /// EXTENDED COPY and RECEIVE COPY RESULTS, executed by SCST's copy manager.
    pub copy_offload: bool,
}

impl Features {
    /// The features of a disk with these capabilities.
    pub fn of(caps: &Capabilities) -> Self {
        Self {
            thin: caps.provisioning.thin,
            lba_status: caps.provisioning.lba_status,
            compare_and_write: caps.compare_and_write.max_blocks() > 0,
            compare_and_write_in_engine: caps.compare_and_write.in_engine(),
            copy_offload: caps.copy_offload != super::CopyOffload::None,
        }
    }

    /// Does this engine decode and execute `e` on such a disk?
    pub fn executes(&self, e: &OpcodeEntry) -> bool {
        match e.executor {
            Executor::Engine => true,
            Executor::Core => e.op == Op::CompareAndWrite && self.compare_and_write_in_engine,
        }
    }
}

impl From<bool> for Features {
    fn from(thin: bool) -> Self {
        Self {
            thin,
            ..Self::default()
        }
    }
}

impl OpcodeEntry {
    /// CDB length.
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }

    /// The CDB usage data on a disk with these features: what RSOC reports and the bits
    /// [`lookup`] lets through to the decoder (the rest is INVALID FIELD IN CDB).
    pub fn usage_for(&self, features: impl Into<Features>) -> &'static [u8] {
        match self.usage_thick {
            Some(thick) if !features.into().thin => thick,
            _ => self.usage,
        }
    }

    /// Is this entry offered on a disk with these features?
    pub fn offered(&self, features: impl Into<Features>) -> bool {
        let f = features.into();
        match self.needs {
            Needs::Nothing => true,
            Needs::Thin => f.thin,
            Needs::LbaStatus => f.thin && f.lba_status,
            Needs::CompareAndWrite => f.compare_and_write,
            Needs::CopyOffload => f.copy_offload,
        }
    }
}

/// The usage-data bits of `e` that the engine accepts with no effect (see the module doc): set
/// in the usage data, never read by the decoder. Bit `b` of byte `i` is `mask[i] & (1 << b)`.
#[cfg(test)] // Only the usage-data property reads it; the decoder ignores these bits by not reading them.
pub(crate) fn accepted_without_effect(e: &OpcodeEntry) -> [u8; 16] {
    const DPO: u8 = 0x10;
    const RARC: u8 = 0x04;
    const FUA_NV: u8 = 0x02;
    const IMMED: u8 = 0x02;
    const SYNC_NV: u8 = 0x04;
    const PF: u8 = 0x10;
    let mut m = [0u8; 16];
    // GROUP NUMBER (SBC-3 §4.22): no grouping function is offered.
    let group = match e.cdb_len() {
        10 => Some(6),
        12 => Some(10),
        16 => Some(14),
        _ => None,
    };
    let group_number = |m: &mut [u8; 16]| {
        if let Some(i) = group {
            m[i] = e.usage[i];
        }
    };
    match e.op {
        Op::Read10 | Op::Read12 | Op::Read16 => {
            m[1] = DPO | RARC | FUA_NV;
            group_number(&mut m);
        }
        Op::Write10 | Op::Write12 | Op::Write16 => {
            m[1] = DPO | FUA_NV;
            group_number(&mut m);
        }
        // COMPARE AND WRITE in the engine: DPO is a cache hint, FUA_NV obsolete.
        Op::CompareAndWrite => m[1] = DPO | FUA_NV,
        Op::WriteAndVerify10
        | Op::WriteAndVerify12
        | Op::WriteAndVerify16
        | Op::Verify10
        | Op::Verify12
        | Op::Verify16 => {
            m[1] = DPO;
            group_number(&mut m);
        }
        // IMMED: GOOD after the work is done is allowed (SBC-3 §5.9, §5.22).
        Op::PreFetch10 | Op::PreFetch16 => {
            m[1] = IMMED;
            group_number(&mut m);
        }
        Op::SynchronizeCache10 | Op::SynchronizeCache16 => {
            m[1] = IMMED | SYNC_NV;
            group_number(&mut m);
        }
        Op::WriteSame10 | Op::WriteSame16 | Op::Unmap => group_number(&mut m),
        Op::StartStopUnit => m[1] = 0x01, // IMMED
        // CMPLST and DEFECT LIST FORMAT: this medium has no defect list (no PLIST, an empty
        // GLIST) and a parameter list with one is refused, so neither whether a list replaces
        // the GLIST nor the format of its (absent) descriptors changes anything.
        Op::FormatUnit => m[1] = 0x0F,
        // SEND DIAGNOSTIC (SPC-5): SELFTEST, because the default self-test has nothing to test
        // that could fail, so it ends GOOD as SELF-TEST CODE 000b without a list does (the
        // code is read either way: 000b is all SELFTEST 1 allows). PF: no parameter list is
        // accepted (PARAMETER LIST LENGTH 0), so its format is moot. DEVOFFL, UNITOFFL:
        // permissions for the default self-test, which here affects neither the medium nor
        // another logical unit; with SELFTEST 0 they apply to nothing.
        Op::SendDiagnostic => m[1] = 0x10 | 0x04 | 0x02 | 0x01,
        // PF: the parameter list is always parsed as SPC page format.
        Op::ModeSelect6 | Op::ModeSelect10 => m[1] = PF,
        // The core already performed the reservation (spec §6.4): every field is accepted.
        Op::Reserve6 | Op::Release6 | Op::Reserve10 | Op::Release10 => {
            let last = e.cdb_len() - 1;
            m[1..last].copy_from_slice(&e.usage[1..last]);
        }
        _ => {}
    }
    m
}

/// Control byte usage: nothing evaluated (NACA is rejected separately, see [`check_cdb_bits`]).
const CTL: u8 = 0x00;

/// PERSISTENT RESERVE IN usage data (byte 1, the SERVICE ACTION, is reported as the service
/// action itself).
const PR_IN: [u8; 10] = [0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL];
/// PERSISTENT RESERVE OUT usage data.
const PR_OUT: [u8; 10] = [0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL];

const fn entry(
    op: Op,
    opcode: u8,
    service_action: Option<u8>,
    name: &'static str,
    usage: &'static [u8],
    media_access: bool,
    writes_medium: bool,
) -> OpcodeEntry {
    OpcodeEntry {
        op,
        opcode,
        service_action,
        name,
        usage,
        usage_thick: None,
        media_access,
        writes_medium,
        needs: Needs::Nothing,
        executor: Executor::Engine,
    }
}

/// The table, in ascending (opcode, service action) order (the RSOC "all commands" order).
/// Columns: dispatch key, opcode, service action, name, CDB usage data, media access, writes medium.
#[rustfmt::skip]
pub(crate) static TABLE: &[OpcodeEntry] = &[
    entry(Op::TestUnitReady, 0x00, None, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, CTL], true, false),
    entry(Op::RequestSense, 0x03, None, "REQUEST SENSE", &[0x03, 0x01, 0, 0, 0xFF, CTL], false, false),
    // FORMAT UNIT (SBC-4 §5.4): FMTPINFO (refused unless 0), LONGLIST and FMTDATA are read;
    // CMPLST and DEFECT LIST FORMAT accepted with no effect (`accepted_without_effect`). The
    // vendor-specific byte 2, the obsolete byte 3 and byte 4 (FFMT: no fast format) are 0.
    entry(Op::FormatUnit, 0x04, None, "FORMAT UNIT", &[0x04, 0xFF, 0, 0, 0, CTL], true, true),
    entry(Op::Read6, 0x08, None, "READ(6)", &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, CTL], true, false),
    entry(Op::Write6, 0x0A, None, "WRITE(6)", &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CTL], true, true),
    entry(Op::Inquiry, 0x12, None, "INQUIRY", &[0x12, 0x01, 0xFF, 0xFF, 0xFF, CTL], false, false),
    entry(Op::ModeSelect6, 0x15, None, "MODE SELECT(6)", &[0x15, 0x11, 0, 0, 0xFF, CTL], false, false),
    // RESERVE/RELEASE: the core already checked and performed them (spec §6.4); accept any bits.
    entry(Op::Reserve6, 0x16, None, "RESERVE(6)", &[0x16, 0xFF, 0xFF, 0xFF, 0xFF, CTL], false, false),
    entry(Op::Release6, 0x17, None, "RELEASE(6)", &[0x17, 0xFF, 0xFF, 0xFF, 0xFF, CTL], false, false),
    entry(Op::ModeSense6, 0x1A, None, "MODE SENSE(6)", &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTL], false, false),
    // Power condition modifiers are not supported; the POWER CONDITION field is evaluated
    // (only 0h, START_VALID, is accepted).
    entry(Op::StartStopUnit, 0x1B, None, "START STOP UNIT", &[0x1B, 0x01, 0, 0, 0xF7, CTL], false, false),
    // SEND DIAGNOSTIC (SPC-5): SELF-TEST CODE and PARAMETER LIST LENGTH are read; PF,
    // SELFTEST, DEVOFFL and UNITOFFL accepted with no effect (`accepted_without_effect`).
    entry(Op::SendDiagnostic, 0x1D, None, "SEND DIAGNOSTIC", &[0x1D, 0xF7, 0, 0xFF, 0xFF, CTL], false, false),
    entry(Op::PreventAllowMediumRemoval, 0x1E, None, "PREVENT ALLOW MEDIUM REMOVAL", &[0x1E, 0, 0, 0, 0x03, CTL], false, false),
    entry(Op::ReadCapacity10, 0x25, None, "READ CAPACITY(10)", &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, CTL], false, false),
    entry(Op::Read10, 0x28, None, "READ(10)", &[0x28, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, false),
    entry(Op::Write10, 0x2A, None, "WRITE(10)", &[0x2A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, true),
    entry(Op::WriteAndVerify10, 0x2E, None, "WRITE AND VERIFY(10)", &[0x2E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, true),
    entry(Op::Verify10, 0x2F, None, "VERIFY(10)", &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, false),
    // PRE-FETCH (SBC-3 §5.9, §5.10): the range is checked and GOOD returned (nothing is
    // guaranteed to be in a cache, which is what GOOD rather than CONDITION MET says).
    entry(Op::PreFetch10, 0x34, None, "PRE-FETCH(10)", &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, false),
    entry(Op::SynchronizeCache10, 0x35, None, "SYNCHRONIZE CACHE(10)", &[0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, false),
    // ANCHOR (byte 1 bit 4) is not supported (ANC_SUP=0), so it is not in the usage data.
    // UNMAP (byte 1 bit 3) only on a thin disk (LBPWS=1): elsewhere a reserved bit.
    OpcodeEntry { usage_thick: Some(&[0x41, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL]), ..entry(Op::WriteSame10, 0x41, None, "WRITE SAME(10)", &[0x41, 0xE8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, CTL], true, true) },
    // UNMAP exists only on thin disks (needs_thin); ANCHOR is not supported.
    OpcodeEntry { needs: Needs::Thin, ..entry(Op::Unmap, 0x42, None, "UNMAP", &[0x42, 0x00, 0, 0, 0, 0, 0x3F, 0xFF, 0xFF, CTL], true, true) },
    entry(Op::ModeSelect10, 0x55, None, "MODE SELECT(10)", &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL], false, false),
    entry(Op::Reserve10, 0x56, None, "RESERVE(10)", &[0x56, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, CTL], false, false),
    entry(Op::Release10, 0x57, None, "RELEASE(10)", &[0x57, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, CTL], false, false),
    entry(Op::ModeSense10, 0x5A, None, "MODE SENSE(10)", &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, CTL], false, false),
    // PERSISTENT RESERVE IN and OUT (SPC-4), answered by the target core (module doc): the service actions both SCST (scst_local_cmd.c) and LIO (target_core_pr.c)
    // implement, with the usage data both report (scst_op_descr_pr_in / _out; LIO's
    // tcm_opcode_pri_* / pro_*): PR IN the ALLOCATION LENGTH; PR OUT SCOPE and TYPE and the
    // PARAMETER LIST LENGTH. REPLACE LOST RESERVATION (PR OUT 08h) is in neither.
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveIn, 0x5E, Some(0x00), "PERSISTENT RESERVE IN(READ KEYS)", &PR_IN, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveIn, 0x5E, Some(0x01), "PERSISTENT RESERVE IN(READ RESERVATION)", &PR_IN, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveIn, 0x5E, Some(0x02), "PERSISTENT RESERVE IN(REPORT CAPABILITIES)", &PR_IN, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveIn, 0x5E, Some(0x03), "PERSISTENT RESERVE IN(READ FULL STATUS)", &PR_IN, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x00), "PERSISTENT RESERVE OUT(REGISTER)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x01), "PERSISTENT RESERVE OUT(RESERVE)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x02), "PERSISTENT RESERVE OUT(RELEASE)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x03), "PERSISTENT RESERVE OUT(CLEAR)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x04), "PERSISTENT RESERVE OUT(PREEMPT)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x05), "PERSISTENT RESERVE OUT(PREEMPT AND ABORT)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x06), "PERSISTENT RESERVE OUT(REGISTER AND IGNORE EXISTING KEY)", &PR_OUT, false, false) },
    OpcodeEntry { executor: Executor::Core, ..entry(Op::PersistentReserveOut, 0x5F, Some(0x07), "PERSISTENT RESERVE OUT(REGISTER AND MOVE)", &PR_OUT, false, false) },
    // EXTENDED COPY(LID1) (SPC-4 §6.3) and RECEIVE COPY RESULTS (SPC-4 §6.18, the service
    // actions SCST answers: COPY STATUS, OPERATING PARAMETERS, FAILED SEGMENT DETAILS), run by
    // SCST's copy manager (scst_targ.c:2586-2591; docs/xcopy.md). Usage data as the copy
    // manager reads the CDBs: EXTENDED COPY only its PARAMETER LIST LENGTH (byte 1 must be 0,
    // LID4 is refused); RECEIVE COPY RESULTS the LIST IDENTIFIER (not for OPERATING
    // PARAMETERS) and the ALLOCATION LENGTH.
    OpcodeEntry { needs: Needs::CopyOffload, executor: Executor::Core, ..entry(Op::ExtendedCopy, 0x83, Some(0x00), "EXTENDED COPY(LID1)", &[0x83, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], true, true) },
    OpcodeEntry { needs: Needs::CopyOffload, executor: Executor::Core, ..entry(Op::ReceiveCopyResults, 0x84, Some(0x00), "RECEIVE COPY RESULTS(COPY STATUS)", &[0x84, 0x1F, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], false, false) },
    OpcodeEntry { needs: Needs::CopyOffload, executor: Executor::Core, ..entry(Op::ReceiveCopyResults, 0x84, Some(0x03), "RECEIVE COPY RESULTS(OPERATING PARAMETERS)", &[0x84, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], false, false) },
    OpcodeEntry { needs: Needs::CopyOffload, executor: Executor::Core, ..entry(Op::ReceiveCopyResults, 0x84, Some(0x04), "RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)", &[0x84, 0x1F, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], false, false) },
    entry(Op::Read16, 0x88, None, "READ(16)", &[0x88, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
    // COMPARE AND WRITE (SBC-3 §5.2), run by SCST's core as READ(16) with byte 1 & 1Fh and
    // WRITE(16) with byte 1 (scst_cmp_wr_local): WRPROTECT is evaluated by the core (non-zero
    // refused without protection information); DPO and FUA reach the engine's READ/WRITE(16),
    // FUA_NV (obsolete) is accepted there. Bits 0 and 2 of byte 1 are reserved: the engine's
    // READ(16) refuses bit 0, its WRITE(16) bit 2. Bytes 10-12 (reserved) and GROUP NUMBER are
    // ignored by the core: 0 in the usage data (SPC-4: ignored), but not refused.
    OpcodeEntry { needs: Needs::CompareAndWrite, executor: Executor::Core, ..entry(Op::CompareAndWrite, 0x89, None, "COMPARE AND WRITE", &[0x89, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, CTL], true, true) },
    entry(Op::Write16, 0x8A, None, "WRITE(16)", &[0x8A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, true),
    entry(Op::WriteAndVerify16, 0x8E, None, "WRITE AND VERIFY(16)", &[0x8E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, true),
    entry(Op::Verify16, 0x8F, None, "VERIFY(16)", &[0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
    entry(Op::PreFetch16, 0x90, None, "PRE-FETCH(16)", &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
    entry(Op::SynchronizeCache16, 0x91, None, "SYNCHRONIZE CACHE(16)", &[0x91, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
    // UNMAP (byte 1 bit 3) only on a thin disk (LBPWS=1), as WRITE SAME(10); NDOB (bit 0) always.
    OpcodeEntry { usage_thick: Some(&[0x93, 0xE1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL]), ..entry(Op::WriteSame16, 0x93, None, "WRITE SAME(16)", &[0x93, 0xE9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, true) },
    entry(Op::ReadCapacity16, 0x9E, Some(0x10), "READ CAPACITY(16)", &[0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, CTL], false, false),
    // GET LBA STATUS (SBC-3 §5.7): thin disks whose store knows its mapping.
    OpcodeEntry { needs: Needs::LbaStatus, ..entry(Op::GetLbaStatus, 0x9E, Some(0x12), "GET LBA STATUS", &[0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], true, false) },
    // REPORT LUNS (SPC-4), answered by the target core (module doc): SELECT REPORT and the
    // ALLOCATION LENGTH, as scst_op_descr_report_luns and LIO's tcm_opcode_report_luns report.
    OpcodeEntry { executor: Executor::Core, ..entry(Op::ReportLuns, 0xA0, None, "REPORT LUNS", &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], false, false) },
    entry(Op::ReportSupportedOpcodes, 0xA3, Some(0x0C), "REPORT SUPPORTED OPERATION CODES", &[0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL], false, false),
    entry(Op::Read12, 0xA8, None, "READ(12)", &[0xA8, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
    entry(Op::Write12, 0xAA, None, "WRITE(12)", &[0xAA, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, true),
    entry(Op::WriteAndVerify12, 0xAE, None, "WRITE AND VERIFY(12)", &[0xAE, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, true),
    entry(Op::Verify12, 0xAF, None, "VERIFY(12)", &[0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTL], true, false),
];

/// The entries for `opcode`: [`TABLE`] is sorted by opcode (a test asserts it), so they are one
/// run, indexed once by opcode byte (every command is looked up: scans of the table showed in
/// the handler's profile).
fn entries(opcode: u8) -> &'static [OpcodeEntry] {
    static RUNS: OnceLock<[(u8, u8); 256]> = OnceLock::new();
    let runs = RUNS.get_or_init(|| {
        let mut runs = [(0u8, 0u8); 256];
        for (i, e) in TABLE.iter().enumerate() {
            let run = &mut runs[usize::from(e.opcode)];
            if run.1 == 0 {
                run.0 = i as u8;
            }
            run.1 += 1;
        }
        runs
    });
    let (start, len) = runs[usize::from(opcode)];
    &TABLE[usize::from(start)..usize::from(start) + usize::from(len)]
}

/// Does any entry for `opcode` have service actions (for RSOC)?
fn has_service_actions(opcode: u8) -> bool {
    entries(opcode).iter().any(|e| e.service_action.is_some())
}

/// Does any entry the engine executes for `opcode` have service actions? An opcode only SCST's
/// core executes (EXTENDED COPY, RECEIVE COPY RESULTS) is unknown to the engine as a whole:
/// INVALID COMMAND OPERATION CODE, whatever its service action.
fn engine_has_service_actions(opcode: u8) -> bool {
    entries(opcode)
        .iter()
        .any(|e| e.service_action.is_some() && e.executor == Executor::Engine)
}

/// The entry for `opcode` / `service_action` if the disk offers it (whoever executes it).
fn find(opcode: u8, service_action: Option<u8>, thin: Features) -> Option<&'static OpcodeEntry> {
    entries(opcode)
        .iter()
        .find(|e| e.service_action == service_action && e.offered(thin))
}

/// Look the CDB up in the table and check its length and reserved bits. Only entries the
/// engine executes are found ([`Executor::Engine`]).
///
/// Unknown opcode (or one SCST's core executes) → INVALID COMMAND OPERATION CODE; known opcode with an unknown service action
/// → INVALID FIELD IN CDB at byte 1 (SPC-4 §4.3.4.2); short CDB → INVALID FIELD IN CDB at the
/// first missing byte; a set bit outside the usage data or NACA → INVALID FIELD IN CDB there.
pub(crate) fn lookup(cdb: &[u8], thin: impl Into<Features>) -> Result<&'static OpcodeEntry, Sense> {
    let thin = thin.into();
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let entry = if engine_has_service_actions(opcode) {
        let Some(&b1) = cdb.get(1) else {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        };
        find(opcode, Some(b1 & 0x1F), thin)
            .filter(|e| thin.executes(e))
            .ok_or(Sense::invalid_cdb_field(1, Some(4)))?
    } else {
        find(opcode, None, thin)
            .filter(|e| thin.executes(e))
            .ok_or(Sense::invalid_opcode())?
    };
    if cdb.len() < entry.cdb_len() {
        return Err(Sense::invalid_cdb_field(cdb.len(), None));
    }
    check_cdb_bits(&cdb[..entry.cdb_len()], entry.usage_for(thin))?;
    Ok(entry)
}

/// Reject set bits the usage data does not cover, and NACA in the control byte (SAM-5 §5.2:
/// ACA is not supported, NormACA=0 in INQUIRY).
fn check_cdb_bits(cdb: &[u8], usage: &[u8]) -> Result<(), Sense> {
    let last = cdb.len().saturating_sub(1);
    for (i, (&b, &mask)) in cdb.iter().zip(usage).enumerate().skip(1) {
        let bad = if i == last { b & 0x04 } else { b & !mask };
        if bad != 0 {
            return Err(Sense::invalid_cdb_field(i, Some(highest_bit(bad))));
        }
    }
    Ok(())
}

/// Bit number of the most significant set bit of a non-zero byte.
pub(crate) fn highest_bit(b: u8) -> u8 {
    7u8.saturating_sub(b.leading_zeros() as u8)
}

/// Fields of the REPORT SUPPORTED OPERATION CODES CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RsocRequest {
    /// Return command timeouts descriptors.
    pub rctd: bool,
    /// REPORTING OPTIONS (byte 2 bits 2..0).
    pub options: u8,
    /// REQUESTED OPERATION CODE.
    pub opcode: u8,
    /// REQUESTED SERVICE ACTION.
    pub service_action: u16,
}

/// Command timeouts descriptor (SPC-4 §6.35.4): nominal and recommended timeouts 0 mean "not
/// specified"; the engine itself never takes long, the store's time is not known here.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Build the REPORT SUPPORTED OPERATION CODES parameter data (untruncated).
pub(crate) fn report(req: RsocRequest, thin: impl Into<Features>) -> Result<Vec<u8>, Sense> {
    let thin = thin.into();
    match req.options {
        0 => Ok(report_all(req.rctd, thin)),
        1 => {
            if has_service_actions(req.opcode) {
                return Err(Sense::invalid_cdb_field(3, None));
            }
            Ok(report_one(find(req.opcode, None, thin), req.rctd, thin))
        }
        2 => {
            if !has_service_actions(req.opcode) {
                return Err(Sense::invalid_cdb_field(3, None));
            }
            let sa = u8::try_from(req.service_action).ok();
            Ok(report_one(
                sa.and_then(|sa| find(req.opcode, Some(sa), thin)),
                req.rctd,
                thin,
            ))
        }
        3 => {
            // SPC-4: opcode with or without service action; SA ignored when it has none.
            let entry = if has_service_actions(req.opcode) {
                u8::try_from(req.service_action)
                    .ok()
                    .and_then(|sa| find(req.opcode, Some(sa), thin))
            } else {
                find(req.opcode, None, thin)
            };
            Ok(report_one(entry, req.rctd, thin))
        }
        _ => Err(Sense::invalid_cdb_field(2, Some(2))),
    }
}

fn report_all(rctd: bool, thin: Features) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    for e in TABLE.iter().filter(|e| e.offered(thin)) {
        let sa = e.service_action.unwrap_or(0);
        let mut flags = 0u8;
        if e.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        if rctd {
            flags |= 0x02; // CTDP
        }
        let len = e.cdb_len() as u16;
        out.extend_from_slice(&[e.opcode, 0, 0, sa, 0, flags]);
        out.extend_from_slice(&len.to_be_bytes());
        if rctd {
            out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
        }
    }
    let data_len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&data_len.to_be_bytes());
    out
}

fn report_one(entry: Option<&OpcodeEntry>, rctd: bool, features: Features) -> Vec<u8> {
    let Some(e) = entry else {
        // SUPPORT 001b: not supported, no usage data.
        return vec![0, 0x01, 0, 0];
    };
    let mut b1 = 0x03; // SUPPORT 011b: supported as in the standard
    if rctd {
        b1 |= 0x80; // CTDP
    }
    let mut out = vec![0, b1];
    out.extend_from_slice(&(e.cdb_len() as u16).to_be_bytes());
    out.extend_from_slice(e.usage_for(features));
    if let Some(sa) = e.service_action {
        out[5] = sa; // usage data byte 1 holds the service action
    }
    if rctd {
        out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_what_a_scan_of_the_table_finds() {
        assert!(
            TABLE.len() <= usize::from(u8::MAX),
            "the index holds u8 positions"
        );
        for opcode in 0..=u8::MAX {
            let scanned: Vec<&OpcodeEntry> = TABLE.iter().filter(|e| e.opcode == opcode).collect();
            let searched: Vec<&OpcodeEntry> = entries(opcode).iter().collect();
            assert_eq!(searched.len(), scanned.len(), "opcode {opcode:#04x}");
            assert!(searched.iter().zip(&scanned).all(|(a, b)| std::ptr::eq(*a, *b)));
        }
    }

    #[test]
    fn table_is_sorted_unique_and_opcode_bytes_match() {
        for pair in TABLE.windows(2) {
            let a = (pair[0].opcode, pair[0].service_action);
            let b = (pair[1].opcode, pair[1].service_action);
            assert!(a < b, "{a:?} !< {b:?}");
        }
        for e in TABLE {
            assert_eq!(e.usage[0], e.opcode, "{}", e.name);
            let group_len = match e.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(e.cdb_len(), group_len, "{}", e.name);
        }
    }

    #[test]
    fn unknown_opcode_is_invalid_opcode() {
        assert_eq!(
            lookup(&[0xC0, 0, 0, 0, 0, 0], false).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(lookup(&[], false).unwrap_err(), Sense::invalid_opcode());
    }

    #[test]
    fn unmap_exists_only_when_thin() {
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(lookup(&cdb, false).unwrap_err(), Sense::invalid_opcode());
        assert_eq!(lookup(&cdb, true).map(|e| e.op), Ok(Op::Unmap));
    }

    #[test]
    fn unknown_service_action_points_at_byte_1() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x11;
        assert_eq!(
            lookup(&cdb, false).unwrap_err(),
            Sense::invalid_cdb_field(1, Some(4))
        );
    }

    #[test]
    fn reserved_bit_and_naca_are_rejected_with_pointer() {
        // TEST UNIT READY with byte 2 bit 3 set.
        assert_eq!(
            lookup(&[0, 0, 0x08, 0, 0, 0], false).unwrap_err(),
            Sense::invalid_cdb_field(2, Some(3))
        );
        // NACA in the control byte; vendor bits are ignored.
        assert_eq!(
            lookup(&[0, 0, 0, 0, 0, 0x04], false).unwrap_err(),
            Sense::invalid_cdb_field(5, Some(2))
        );
        assert!(lookup(&[0, 0, 0, 0, 0, 0xC0], false).is_ok());
    }

    #[test]
    fn short_cdb_points_at_first_missing_byte() {
        assert_eq!(
            lookup(&[0x28, 0, 0], false).unwrap_err(),
            Sense::invalid_cdb_field(3, None)
        );
    }

    #[test]
    fn report_all_lists_every_offered_command() {
        let data = report(
            RsocRequest {
                rctd: false,
                options: 0,
                opcode: 0,
                service_action: 0,
            },
            false,
        )
        .unwrap();
        let n = TABLE.iter().filter(|e| e.offered(false)).count();
        assert_eq!(data.len(), 4 + 8 * n);
        assert_eq!(
            u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize,
            8 * n
        );
        // READ CAPACITY(16) descriptor: SERVACTV and service action 0x10.
        let rc16 = data[4..].chunks(8).find(|d| d[0] == 0x9E).unwrap();
        assert_eq!(rc16, &[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
        assert!(
            !data[4..].chunks(8).any(|d| d[0] == 0x42),
            "UNMAP not offered without thin"
        );
    }

    #[test]
    fn report_all_with_timeouts_has_20_byte_descriptors() {
        let data = report(
            RsocRequest {
                rctd: true,
                options: 0,
                opcode: 0,
                service_action: 0,
            },
            Features {
                thin: true,
                lba_status: true,
                compare_and_write: true,
                compare_and_write_in_engine: false,
                copy_offload: true,
            },
        )
        .unwrap();
        let n = TABLE.len();
        assert_eq!(data.len(), 4 + 20 * n);
        // GET LBA STATUS needs both; thin alone leaves it out.
        let gls = TABLE.iter().find(|e| e.op == Op::GetLbaStatus).unwrap();
        assert!(!gls.offered(true) && !gls.offered(false));
        let both = Features {
            thin: true,
            lba_status: true,
            compare_and_write: false,
            compare_and_write_in_engine: false,
            copy_offload: false,
        };
        assert!(gls.offered(both));
        assert!(!gls.offered(Features {
            thin: false,
            lba_status: true,
            compare_and_write: true,
            compare_and_write_in_engine: false,
            copy_offload: false,
        }));
        assert_eq!(&data[4..12], &[0x00, 0, 0, 0, 0, 0x02, 0, 6]);
        assert_eq!(&data[12..14], &[0x00, 0x0A]);
    }

    /// WRITE SAME's UNMAP bit (byte 1 bit 3) is in the usage data only where the disk unmaps
    /// through it (thin, LBPWS=1), and is refused, pointing at it, elsewhere.
    #[test]
    fn write_same_usage_data_has_the_unmap_bit_only_on_a_thin_disk() {
        for (opcode, len) in [(0x41u8, 10usize), (0x93, 16)] {
            for thin in [false, true] {
                let data = report(
                    RsocRequest {
                        rctd: false,
                        options: 1,
                        opcode,
                        service_action: 0,
                    },
                    thin,
                )
                .unwrap();
                assert_eq!(usize::from(u16::from_be_bytes([data[2], data[3]])), len);
                assert_eq!(
                    data[5] & 0x08 != 0,
                    thin,
                    "{opcode:02x}, thin {thin}: {data:02x?}"
                );
                // WRPROTECT is evaluated either way; NDOB is WRITE SAME(16)'s only.
                assert_eq!(data[5] & !0x08, if opcode == 0x93 { 0xE1 } else { 0xE0 });
                let mut cdb = vec![0u8; len];
                cdb[0] = opcode;
                cdb[1] = 0x08;
                let looked_up = lookup(&cdb, thin).map(|e| e.op);
                if thin {
                    assert!(looked_up.is_ok(), "{opcode:02x}");
                } else {
                    assert_eq!(
                        looked_up,
                        Err(Sense::invalid_cdb_field(1, Some(3))),
                        "{opcode:02x}"
                    );
                }
            }
        }
    }

    #[test]
    fn report_one_gives_usage_data() {
        let data = report(
            RsocRequest {
                rctd: false,
                options: 1,
                opcode: 0x28,
                service_action: 0,
            },
            false,
        )
        .unwrap();
        assert_eq!(
            data,
            [0, 0x03, 0, 10, 0x28, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0]
        );
        let data = report(
            RsocRequest {
                rctd: false,
                options: 2,
                opcode: 0x9E,
                service_action: 0x10,
            },
            false,
        )
        .unwrap();
        assert_eq!(&data[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
        let data = report(
            RsocRequest {
                rctd: false,
                options: 1,
                opcode: 0xC0,
                service_action: 0,
            },
            false,
        )
        .unwrap();
        assert_eq!(data, [0, 0x01, 0, 0]);
    }

    /// SPC-4 REPORT SUPPORTED OPERATION CODES lists every command the LU supports: REPORT LUNS
    /// and PERSISTENT RESERVE IN/OUT (its service actions SCST and LIO implement), which the
    /// target core answers under scst_user and TCMU alike, with the cores' usage data; their
    /// CDBs never reach the engine, which refuses them as unknown.
    #[test]
    fn rsoc_lists_report_luns_and_persistent_reservations() {
        let scst_user = Features::default();
        let tcmu = Features {
            compare_and_write: true,
            compare_and_write_in_engine: true,
            ..Features::default()
        };
        for features in [scst_user, tcmu] {
            let one = |options: u8, opcode: u8, sa: u16| {
                report(
                    RsocRequest {
                        rctd: false,
                        options,
                        opcode,
                        service_action: sa,
                    },
                    features,
                )
                .unwrap()
            };
            assert_eq!(
                one(1, 0xA0, 0),
                [0, 0x03, 0, 12, 0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]
            );
            for sa in 0..=3u8 {
                assert_eq!(
                    one(2, 0x5E, u16::from(sa)),
                    [0, 0x03, 0, 10, 0x5E, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
                    "PR IN {sa:02x}"
                );
            }
            assert_eq!(one(2, 0x5E, 4), [0, 0x01, 0, 0]);
            for sa in 0..=7u8 {
                assert_eq!(
                    one(2, 0x5F, u16::from(sa)),
                    [0, 0x03, 0, 10, 0x5F, sa, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
                    "PR OUT {sa:02x}"
                );
            }
            assert_eq!(one(2, 0x5F, 8), [0, 0x01, 0, 0], "REPLACE LOST RESERVATION");
            let all = one(0, 0, 0);
            let listed: Vec<&[u8]> = all[4..].chunks(8).collect();
            assert!(listed.contains(&&[0xA0, 0, 0, 0, 0, 0, 0, 12][..]));
            for sa in 0..=3u8 {
                assert!(
                    listed.contains(&&[0x5E, 0, 0, sa, 0, 0x01, 0, 10][..]),
                    "PR IN {sa:02x}"
                );
            }
            for sa in 0..=7u8 {
                assert!(
                    listed.contains(&&[0x5F, 0, 0, sa, 0, 0x01, 0, 10][..]),
                    "PR OUT {sa:02x}"
                );
            }
            // Answered by the core: the engine never decodes them.
            assert_eq!(
                lookup(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], features).unwrap_err(),
                Sense::invalid_opcode()
            );
            assert_eq!(
                lookup(&[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], features).unwrap_err(),
                Sense::invalid_opcode()
            );
            assert_eq!(
                lookup(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], features).unwrap_err(),
                Sense::invalid_opcode()
            );
        }
    }

    #[test]
    fn report_one_rejects_mismatched_service_action_use() {
        let r = report(
            RsocRequest {
                rctd: false,
                options: 1,
                opcode: 0x9E,
                service_action: 0,
            },
            false,
        );
        assert_eq!(r.unwrap_err(), Sense::invalid_cdb_field(3, None));
        let r = report(
            RsocRequest {
                rctd: false,
                options: 2,
                opcode: 0x28,
                service_action: 0,
            },
            false,
        );
        assert_eq!(r.unwrap_err(), Sense::invalid_cdb_field(3, None));
        let r = report(
            RsocRequest {
                rctd: false,
                options: 5,
                opcode: 0x28,
                service_action: 0,
            },
            false,
        );
        assert_eq!(r.unwrap_err(), Sense::invalid_cdb_field(2, Some(2)));
    }
}
