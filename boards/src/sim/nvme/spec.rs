//! The parts of the NVMe base specification 1.4 the simulated controller implements, written
//! from the specification (not shared with the driver, so that a misreading on either side
//! shows up as a test failure): register offsets and fields (§3.1), the 64-byte submission
//! and 16-byte completion queue entries (§4.2, §4.6), opcodes (§5, §6) and status codes
//! (§4.6.1.2).

use static_assertions::assert_eq_size;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// Controller registers (§3.1), as offsets into BAR0.
pub(crate) mod reg {
    /// Controller Capabilities, 64 bits.
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0C;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1C;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue Base Address, 64 bits.
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue Base Address, 64 bits.
    pub const ACQ: u64 = 0x30;
    /// Controller Ready Timeouts (NVMe 2.0 §3.1.3.21, offset 68h): CRWMT in bits 15:0, CRIMT in
    /// 31:16, both in 500 ms units; meaningful when CAP.CRMS.CRWMS is set.
    pub const CRTO: u64 = 0x68;
    /// First doorbell: SQ y tail at `DOORBELLS + (2y) * 4`, CQ y head at `DOORBELLS + (2y+1) * 4`
    /// (§3.1.24, §3.1.25, with CAP.DSTRD = 0).
    pub const DOORBELLS: u64 = 0x1000;
}

/// CAP fields (§3.1.1) of this model.
pub(crate) mod cap {
    /// Maximum Queue Entries Supported, 0's based: 1024 entries.
    pub const MQES: u64 = 1023;
    /// Contiguous Queues Required (bit 16).
    pub const CQR: u64 = 1 << 16;
    /// Timeout in 500 ms units (bits 31:24), from the configuration (`cap_to`).
    pub const TO_SHIFT: u32 = 24;
    /// Command Sets Supported (bits 44:37): bit 37, the NVM command set.
    pub const CSS_NVM: u64 = 1 << 37;
    /// Controller Ready With Media Support (CRMS.CRWMS, bit 59, NVMe 2.0 §3.1.3.1): CRTO is
    /// implemented. CRIMS (bit 60) stays 0: this model has no ready-independent-of-media mode.
    pub const CRWMS: u64 = 1 << 59;
    /// The whole register with Timeout `to` and CRWMS when `crwms`: DSTRD = 0, MPSMIN = MPSMAX
    /// = 0 (4 KiB pages), no NSSR, no BPS.
    pub const fn value(to: u8, crwms: bool) -> u64 {
        MQES | CQR | ((to as u64) << TO_SHIFT) | CSS_NVM | if crwms { CRWMS } else { 0 }
    }
}

/// VS (§3.1.2): 1.4.0.
pub(crate) const VERSION: u32 = 0x0001_0400;

/// CC fields (§3.1.5).
pub(crate) mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// I/O Command Set Selected (6:4).
    pub const CSS_MASK: u32 = 0x7 << 4;
    /// Memory Page Size (10:7).
    pub const MPS_MASK: u32 = 0xF << 7;
    /// Arbitration Mechanism Selected (13:11).
    pub const AMS_MASK: u32 = 0x7 << 11;
    /// Shutdown Notification (15:14).
    pub const SHN_MASK: u32 = 0x3 << 14;
    /// I/O Submission Queue Entry Size (19:16), log2.
    pub const IOSQES_SHIFT: u32 = 16;
    /// I/O Completion Queue Entry Size (23:20), log2.
    pub const IOCQES_SHIFT: u32 = 20;
    /// Fields that "shall only be changed when EN is cleared to 0": CSS, MPS, AMS; and, in
    /// this model, IOSQES/IOCQES, which are checked when EN goes to 1.
    pub const FROZEN_WHILE_ENABLED: u32 = CSS_MASK | MPS_MASK | AMS_MASK | (0xFF << IOSQES_SHIFT);
    /// Writable bits; the rest are reserved and read as 0.
    pub const WRITABLE: u32 = EN | FROZEN_WHILE_ENABLED | SHN_MASK;
}

/// CSTS fields (§3.1.6).
pub(crate) mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status (3:2).
    pub const SHST_SHIFT: u32 = 2;
    /// SHST: shutdown processing occurring.
    pub const SHST_OCCURRING: u32 = 1;
    /// SHST: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2;
}

/// AQA fields (§3.1.8): both sizes are 0's based, 12 bits.
pub(crate) mod aqa {
    /// Admin Submission Queue Size (11:0).
    pub const ASQS_MASK: u32 = 0xFFF;
    /// Admin Completion Queue Size (27:16).
    pub const ACQS_SHIFT: u32 = 16;
    /// Writable bits.
    pub const WRITABLE: u32 = ASQS_MASK | (0xFFF << ACQS_SHIFT);
}

/// The memory page size of CC.MPS = 0, the only one CAP offers (MPSMIN = MPSMAX = 0).
pub(crate) const PAGE_SIZE: u64 = 4096;
/// I/O submission queue entry size, log2 (Identify SQES = 0x66).
pub(crate) const SQES: u32 = 6;
/// I/O completion queue entry size, log2 (Identify CQES = 0x44).
pub(crate) const CQES: u32 = 4;
/// Bytes of a submission queue entry.
pub(crate) const SQE_BYTES: u64 = 1 << SQES;
/// Bytes of a completion queue entry.
pub(crate) const CQE_BYTES: u64 = 1 << CQES;

/// A submission queue entry (§4.2, Figure 105), read from host memory by copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Sqe {
    /// CDW0: opcode (7:0), FUSE (9:8), PSDT (15:14), CID (31:16).
    pub cdw0: u32,
    /// Namespace identifier.
    pub nsid: u32,
    /// CDW2, CDW3.
    pub cdw2: u32,
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2.
    pub prp2: u64,
    /// Command dwords 10..=15.
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
assert_eq_size!(Sqe, [u8; 64]);

impl Sqe {
    /// The opcode.
    pub(crate) fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// Fused operation (9:8).
    pub(crate) fn fuse(&self) -> u32 {
        (self.cdw0 >> 8) & 0x3
    }

    /// PRP or SGL for data transfer (15:14): 0 = PRPs.
    pub(crate) fn psdt(&self) -> u32 {
        (self.cdw0 >> 14) & 0x3
    }

    /// Command identifier.
    pub(crate) fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }
}

/// A completion queue entry (§4.6, Figure 121).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Cqe {
    /// Command specific.
    pub dw0: u32,
    /// Reserved.
    pub dw1: u32,
    /// SQ head pointer (15:0).
    pub sqhd: u16,
    /// SQ identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (15:1).
    pub status: u16,
}
assert_eq_size!(Cqe, [u8; 16]);

/// A status field without the phase bit (§4.6.1): SC in 8:1, SCT in 11:9, DNR in 15, as it
/// sits in the upper half of completion dword 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status(u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Self = Self(0);

    const fn new(sct: u16, sc: u16, dnr: bool) -> Self {
        Self((sc << 1) | (sct << 9) | if dnr { 1 << 15 } else { 0 })
    }

    /// Generic (SCT 0) status `sc`; `dnr` = Do Not Retry.
    pub const fn generic(sc: u8, dnr: bool) -> Self {
        Self::new(0, sc as u16, dnr)
    }

    /// Command specific (SCT 1) status `sc`, always Do Not Retry.
    pub const fn specific(sc: u8) -> Self {
        Self::new(1, sc as u16, true)
    }

    /// Status `sc` of type `sct` (an injected fault), retry allowed.
    pub const fn injected(sct: u8, sc: u8) -> Self {
        Self::new(sct as u16 & 0x7, sc as u16, false)
    }

    /// Media and data integrity (SCT 2) status `sc`.
    pub const fn media(sc: u8) -> Self {
        Self::new(2, sc as u16, false)
    }

    /// The 16-bit status field with phase tag `phase`.
    pub fn field(self, phase: bool) -> u16 {
        self.0 | u16::from(phase)
    }

    /// Status Code Type.
    #[cfg(test)]
    pub fn sct(self) -> u8 {
        ((self.0 >> 9) & 0x7) as u8
    }

    /// Status Code.
    #[cfg(test)]
    pub fn sc(self) -> u8 {
        (self.0 >> 1) as u8
    }

    /// Decode a status field read from a CQE (phase bit ignored).
    #[cfg(test)]
    pub fn from_field(field: u16) -> Self {
        Self(field & !1)
    }
}

/// Status codes used by the model (§4.6.1.2).
pub(crate) mod status {
    use super::Status;

    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::generic(0x01, true);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::generic(0x02, true);
    /// Data Transfer Error (an IOMMU fault on a data or PRP list access).
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04, false);
    /// Command Aborted due to Failed Fused Command: the second command of a fused operation
    /// whose first failed (§4.12).
    pub const ABORTED_FAILED_FUSED: Status = Status::generic(0x09, false);
    /// Command Aborted due to Missing Fused Command: a fused command without its partner.
    pub const ABORTED_MISSING_FUSED: Status = Status::generic(0x0A, false);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B, true);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C, true);
    /// Invalid PRP Offset.
    pub const INVALID_PRP_OFFSET: Status = Status::generic(0x13, true);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80, true);
    /// Command Size Limit Exceeded (NVMe 2.0 Figure 102): a Copy over MSSRL, MCL or MSRC.
    pub const COMMAND_SIZE_LIMIT_EXCEEDED: Status = Status::generic(0x83, true);
    /// Completion Queue Invalid (Create I/O SQ).
    pub const COMPLETION_QUEUE_INVALID: Status = Status::specific(0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::specific(0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: Status = Status::specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    /// Invalid Queue Deletion (Delete I/O CQ with an SQ still on it).
    pub const INVALID_QUEUE_DELETION: Status = Status::specific(0x0C);
    /// Write Fault.
    pub const WRITE_FAULT: Status = Status::media(0x80);
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
    /// Compare Failure (§6.2): the medium differs from the data of a Compare.
    pub const COMPARE_FAILURE: Status = Status::media(0x85);
}

/// Admin command opcodes (§5, Figure 139).
pub(crate) mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
}

/// NVM command set opcodes (§6, Figure 346).
pub(crate) mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare (§6.2).
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Copy (NVMe 2.0 NVM Command Set §3.3.1).
    pub const COPY: u8 = 0x19;
}

/// Feature identifiers (§5.21.1).
pub(crate) mod feature {
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Features the model stores and returns unchanged: Arbitration, Power Management,
    /// Temperature Threshold, Error Recovery, Interrupt Coalescing, Interrupt Vector
    /// Configuration, Write Atomicity Normal, Asynchronous Event Configuration.
    pub const STORED: &[u8] = &[0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0A, 0x0B];
}

/// Asynchronous event completion dword 0 (§5.2, Figure 146): type Error Status (0), log page
/// Error Information (01h), with `info` (00h: write to an invalid doorbell register, 01h:
/// invalid doorbell write value).
pub(crate) fn async_error_event(info: u8) -> u32 {
    (u32::from(info) << 8) | (0x01 << 16)
}

/// Asynchronous event information: write to an invalid doorbell register.
pub(crate) const AEI_INVALID_DOORBELL_REGISTER: u8 = 0x00;
/// Asynchronous event information: invalid doorbell write value.
pub(crate) const AEI_INVALID_DOORBELL_VALUE: u8 = 0x01;
/// Asynchronous Event Request Limit, 0's based (Identify AERL): 4 outstanding.
pub(crate) const AERL: u8 = 3;
/// Abort Command Limit, 0's based (Identify ACL).
pub(crate) const ACL: u8 = 3;
/// Log page identifier: Error Information.
pub(crate) const LOG_ERROR_INFORMATION: u8 = 0x01;
/// Bytes of one Error Information log entry; Identify ELPE = 0 means one entry.
pub(crate) const ERROR_LOG_ENTRY_BYTES: u64 = 64;
