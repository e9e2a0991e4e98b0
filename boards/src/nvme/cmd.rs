//! NVMe wire formats (NVMe base spec 1.4 §4.2, §4.6, §5.1, §5.14, §5.15, and NVM command set
//! §6): the 64-byte submission queue entry, the 16-byte completion queue entry, opcodes, status
//! codes and their device-independent meaning, the IDENTIFY data this driver reads, the ABORT
//! command dword and the Error Information log entry.

use crate::engine::DeviceStatus;
use static_assertions::assert_eq_size;
use std::mem::offset_of;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// Admin command opcodes (NVMe 1.4 §5, Figure 139).
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
}

/// NVM command set I/O opcodes (NVMe 1.4 §6, Figure 346).
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare (NVMe 1.4 §6.2).
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// Copy (NVMe 2.0 NVM Command Set §3.3.1).
    pub const COPY: u8 = 0x19;
}

/// IDENTIFY CNS values (NVMe 1.4 §5.15.1).
pub mod cns {
    /// Identify Namespace data structure for CDW1.NSID.
    pub const NAMESPACE: u32 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u32 = 0x01;
    /// Active Namespace ID list (NSIDs greater than CDW1.NSID).
    pub const ACTIVE_NSIDS: u32 = 0x02;
    /// I/O Command Set specific Identify Controller data structure for the command set named
    /// by CDW11.CSI (NVMe 2.0 Base Specification §5.17.1; defined since NVMe 2.0, so a 1.x
    /// controller may refuse it with Invalid Field in Command).
    pub const IO_COMMAND_SET_CONTROLLER: u32 = 0x06;
}

/// Command Set Identifiers (NVMe 2.0 Base Specification §5.17.1, the CSI field).
pub mod csi {
    /// NVM Command Set.
    pub const NVM: u8 = 0x00;
}

/// IDENTIFY CDW11 naming the command set `csi` in bits 31:24 (NVMe 2.0 Base Specification
/// §5.17.1, CDW11; reserved in NVMe 1.4, where CDW11 held only the NVM Set Identifier in bits
/// 15:0). Linux's `struct nvme_identify` places `csi` in the last byte of dword 11 likewise.
pub const fn identify_cdw11(csi: u8) -> u32 {
    (csi as u32) << 24
}

/// Feature identifiers (NVMe 1.4 §5.21.1).
pub mod feature {
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u32 = 0x07;
}

/// Log page identifiers (NVMe 1.4 §5.14.1).
pub mod log_page {
    /// Error Information (one 64-byte entry per error, ELPE + 1 entries at most).
    pub const ERROR_INFORMATION: u8 = 0x01;
}

/// GET LOG PAGE CDW10 bit: Retain Asynchronous Event (NVMe 1.4 §5.14). Set on every read this
/// driver makes, so a diagnostic read changes no controller state.
pub const LOG_RAE: u32 = 1 << 15;

/// GET LOG PAGE CDW10 and CDW11 for `bytes` (a multiple of 4, at least 4) of log `lid` from
/// offset 0, with RAE set: NUMD (0's based dwords) is split into NUMDL (CDW10 31:16) and NUMDU
/// (CDW11 15:0) (NVMe 1.4 §5.14).
pub const fn get_log_page_dwords(lid: u8, bytes: u32) -> (u32, u32) {
    let numd = bytes / 4 - 1;
    (lid as u32 | LOG_RAE | ((numd & 0xFFFF) << 16), numd >> 16)
}

/// ABORT CDW10 (NVMe 1.4 §5.1): the Submission Queue Identifier in bits 15:0 and
/// the Command Identifier of the command to abort in bits 31:16.
pub const fn abort_cdw10(sqid: u16, cid: u16) -> u32 {
    sqid as u32 | ((cid as u32) << 16)
}

/// ABORT completion dword 0 bit 0 (NVMe 1.4 §5.1.1): 0 = the command was aborted (its own
/// completion carries Command Abort Requested), 1 = it was not.
pub const fn abort_succeeded(dw0: u32) -> bool {
    dw0 & 1 == 0
}

/// SQE flags (CDW0 bits 9:8, the FUSE field): the first command of a fused operation
/// (NVMe 1.4 §4.12).
pub const FUSE_FIRST: u8 = 0b01;
/// SQE flags: the second command of a fused operation.
pub const FUSE_SECOND: u8 = 0b10;

/// Read/Write CDW12 bit: Force Unit Access (NVMe 1.4 §6.9).
pub const CDW12_FUA: u32 = 1 << 30;
/// Write Zeroes CDW12 bit: Deallocate (NVMe 1.4 §6.16, Figure 375).
pub const CDW12_DEAC: u32 = 1 << 25;
/// Dataset Management CDW11 bit: Attribute – Deallocate (NVMe 1.4 §6.7).
pub const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;
/// Create I/O CQ CDW11: Physically Contiguous.
pub const QUEUE_PC: u32 = 1 << 0;
/// Create I/O CQ CDW11: Interrupts Enabled.
pub const CQ_IEN: u32 = 1 << 1;

/// A submission queue entry (NVMe 1.4 §4.2, Figure 104). CDW0 is split into its fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Sqe {
    /// Opcode.
    pub opcode: u8,
    /// FUSE (1:0) and PSDT (7:6); 0 = not fused, PRPs.
    pub flags: u8,
    /// Command Identifier.
    pub cid: u16,
    /// Namespace Identifier.
    pub nsid: u32,
    /// Command Dword 2.
    pub cdw2: u32,
    /// Command Dword 3.
    pub cdw3: u32,
    /// Metadata Pointer.
    pub mptr: u64,
    /// PRP Entry 1.
    pub prp1: u64,
    /// PRP Entry 2.
    pub prp2: u64,
    /// Command Dword 10.
    pub cdw10: u32,
    /// Command Dword 11.
    pub cdw11: u32,
    /// Command Dword 12.
    pub cdw12: u32,
    /// Command Dword 13.
    pub cdw13: u32,
    /// Command Dword 14.
    pub cdw14: u32,
    /// Command Dword 15.
    pub cdw15: u32,
}

assert_eq_size!(Sqe, [u8; 64]);
const _: () = assert!(offset_of!(Sqe, cid) == 2);
const _: () = assert!(offset_of!(Sqe, nsid) == 4);
const _: () = assert!(offset_of!(Sqe, mptr) == 16);
const _: () = assert!(offset_of!(Sqe, prp1) == 24);
const _: () = assert!(offset_of!(Sqe, prp2) == 32);
const _: () = assert!(offset_of!(Sqe, cdw10) == 40);
const _: () = assert!(offset_of!(Sqe, cdw15) == 60);

/// A completion queue entry (NVMe 1.4 §4.6, Figure 121).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Cqe {
    /// Command specific (DW0).
    pub dw0: u32,
    /// Reserved (DW1).
    pub dw1: u32,
    /// SQ Head Pointer.
    pub sq_head: u16,
    /// SQ Identifier.
    pub sq_id: u16,
    /// Command Identifier.
    pub cid: u16,
    /// Phase Tag (bit 0) and Status Field (15:1).
    pub status: u16,
}

assert_eq_size!(Cqe, [u8; 16]);
const _: () = assert!(offset_of!(Cqe, sq_head) == 8);
const _: () = assert!(offset_of!(Cqe, sq_id) == 10);
const _: () = assert!(offset_of!(Cqe, cid) == 12);
/// Byte offset of the status word in a CQE; bit 0 of this byte is the phase tag.
pub const CQE_STATUS_OFFSET: usize = 14;
const _: () = assert!(offset_of!(Cqe, status) == CQE_STATUS_OFFSET);

/// Status Code Types (NVMe 1.4 §4.6.1.1).
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0x0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    /// Media and Data Integrity Errors.
    pub const MEDIA: u8 = 0x2;
}

/// Status codes this driver distinguishes (NVMe 1.4 §4.6.1.2).
pub mod sc {
    /// Successful Completion (generic).
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode (generic).
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Command Abort Requested (generic).
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command Aborted due to SQ Deletion (generic).
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Command Aborted due to Failed Fused Command (generic): the other command of a fused
    /// operation failed.
    pub const ABORTED_FAILED_FUSED: u8 = 0x09;
    /// Invalid Field in Command (generic).
    pub const INVALID_FIELD: u8 = 0x02;
    /// Invalid Queue Identifier (command specific, Create I/O CQ and SQ, NVMe 1.4 Figures 152
    /// and 156): the queue ID is in use or above what the controller granted.
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    /// Namespace is Write Protected (generic, NVMe 1.4).
    pub const WRITE_PROTECTED: u8 = 0x20;
    /// Command Interrupted (generic, NVMe 1.4): the command may succeed if resubmitted.
    pub const INTERRUPTED: u8 = 0x21;
    /// Capacity Exceeded (generic, NVM command set).
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace Not Ready (generic, NVM command set).
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    /// Reservation Conflict (generic, NVM command set).
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    /// Format In Progress (generic, NVM command set).
    pub const FORMAT_IN_PROGRESS: u8 = 0x84;
    /// Access Denied (media).
    pub const ACCESS_DENIED: u8 = 0x86;
    /// Deallocated or Unwritten Logical Block (media): a read of a block with no data, where
    /// the namespace reports it as an error (DULBE).
    pub const DEALLOCATED_OR_UNWRITTEN: u8 = 0x87;
    /// LBA Out of Range (generic, NVM command set).
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Write Fault (media).
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered Read Error (media).
    pub const UNRECOVERED_READ: u8 = 0x81;
    /// Compare Failure (media): the medium differs from a Compare's data.
    pub const COMPARE_FAILURE: u8 = 0x85;
}

/// The Status Field of a CQE (the status word without the phase tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// From the CQE's status word (drops the phase tag).
    pub const fn from_cqe(status_word: u16) -> Self {
        Self(status_word >> 1)
    }

    /// Build from a type and code (simulators, local completions).
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self(((sct as u16 & 0x7) << 8) | sc as u16)
    }

    /// Status Code.
    pub const fn sc(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Status Code Type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Successful completion.
    pub const fn is_success(self) -> bool {
        self.sct() == sct::GENERIC && self.sc() == sc::SUCCESS
    }

    /// The device-independent meaning of the status, the SCSI sense of which the store
    /// chooses as the NVM Express SCSI Translation Reference maps the NVMe status (§6).
    pub fn device_status(self) -> DeviceStatus {
        match (self.sct(), self.sc()) {
            (sct::GENERIC, sc::SUCCESS) => DeviceStatus::Ok,
            (sct::GENERIC, sc::LBA_OUT_OF_RANGE) => DeviceStatus::LbaRange,
            // Command Interrupted (NVMe 1.4 §4.6.1.2.1) asks for the command again: as aborted,
            // which the initiator retries.
            (sct::GENERIC, sc::ABORT_REQUESTED | sc::ABORTED_SQ_DELETION | sc::INTERRUPTED) => {
                DeviceStatus::Aborted
            }
            (sct::GENERIC, sc::INVALID_FIELD) => DeviceStatus::InvalidField,
            (sct::GENERIC, sc::WRITE_PROTECTED) => DeviceStatus::WriteProtected,
            (sct::GENERIC, sc::CAPACITY_EXCEEDED) => DeviceStatus::CapacityExceeded,
            (sct::GENERIC, sc::NAMESPACE_NOT_READY) => DeviceStatus::NotReady,
            (sct::GENERIC, sc::RESERVATION_CONFLICT) => DeviceStatus::ReservationConflict,
            (sct::GENERIC, sc::FORMAT_IN_PROGRESS) => DeviceStatus::FormatInProgress,
            // A block with no data cannot be returned: a medium error of the read.
            (sct::MEDIA, sc::UNRECOVERED_READ | sc::DEALLOCATED_OR_UNWRITTEN) => DeviceStatus::ReadError,
            (sct::MEDIA, sc::WRITE_FAULT) => DeviceStatus::WriteError,
            (sct::MEDIA, sc::COMPARE_FAILURE) => DeviceStatus::Miscompare,
            (sct::MEDIA, sc::ACCESS_DENIED) => DeviceStatus::AccessDenied,
            _ => DeviceStatus::Other(u32::from(self.0)),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCT {:#x} SC {:#04x}{}",
            self.sct(),
            self.sc(),
            if self.dnr() { " DNR" } else { "" }
        )
    }
}

/// Size of every IDENTIFY data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// ONCS bit: Compare supported (NVMe 1.4 §5.15.2.2).
pub const ONCS_COMPARE: u16 = 1 << 0;
/// FUSES bit: the fused Compare and Write supported (Identify Controller bytes 523:522).
pub const FUSES_COMPARE_AND_WRITE: u16 = 1 << 0;
/// ONCS bit: Dataset Management supported (NVMe 1.4 §5.15.2.2).
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit: Write Zeroes supported.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// ONCS bit: Copy supported (NVMe 2.0 Figure 275).
pub const ONCS_COPY: u16 = 1 << 8;
/// OCFS bit: Copy source range format 0 supported (Identify Controller bytes 535:534).
pub const OCFS_FORMAT_0: u16 = 1 << 0;

/// The fields of the Identify Controller data structure this driver uses (NVMe 1.4 Figure 247).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: u16,
    /// Serial Number (ASCII, trailing spaces trimmed).
    pub sn: String,
    /// Model Number.
    pub mn: String,
    /// Firmware Revision.
    pub fr: String,
    /// Maximum Data Transfer Size: 2^MDTS units of CAP.MPSMIN; 0 = no limit.
    pub mdts: u8,
    /// Submission Queue Entry Size (required 3:0, maximum 7:4, log2).
    pub sqes: u8,
    /// Completion Queue Entry Size.
    pub cqes: u8,
    /// Number of Namespaces (highest valid NSID).
    pub nn: u32,
    /// Optional NVM Command Support.
    pub oncs: u16,
    /// Optional Copy Formats Supported (bytes 535:534, NVMe 2.0).
    pub ocfs: u16,
    /// Fused Operation Support (bytes 523:522).
    pub fuses: u16,
    /// Atomic Compare & Write Unit: the blocks a fused Compare and Write covers atomically,
    /// 0's based (bytes 533:532).
    pub acwu: u16,
    /// Volatile Write Cache (bit 0: present).
    pub vwc: u8,
    /// Abort Command Limit: concurrent ABORT commands, 0's based (byte 258).
    pub acl: u8,
    /// Error Log Page Entries: Error Information log entries kept, 0's based (byte 262).
    pub elpe: u8,
    /// RTD3 Entry Latency (bytes 91:88): the microseconds a normal shutdown (CC.SHN = 01b to
    /// CSTS.SHST = 10b) may take, as the controller reports it; 0 = not reported.
    pub rtd3e: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

impl IdentifyController {
    /// Parse the 4096-byte structure.
    pub fn parse(data: &[u8; IDENTIFY_LEN]) -> Self {
        Self {
            vid: le16(data, 0),
            sn: ascii(&data[4..24]),
            mn: ascii(&data[24..64]),
            fr: ascii(&data[64..72]),
            mdts: data[77],
            sqes: data[512],
            cqes: data[513],
            nn: le32(data, 516),
            oncs: le16(data, 520),
            ocfs: le16(data, 534),
            fuses: le16(data, 522),
            acwu: le16(data, 532),
            vwc: data[525],
            acl: data[258],
            elpe: data[262],
            rtd3e: le32(data, 88),
        }
    }

    /// ABORT commands the controller accepts at once (ACL + 1).
    pub fn abort_limit(&self) -> u32 {
        u32::from(self.acl) + 1
    }

    /// Entries the Error Information log holds (ELPE + 1).
    pub fn error_log_entries(&self) -> u32 {
        u32::from(self.elpe) + 1
    }

    /// Dataset Management (deallocate) supported.
    pub fn supports_dsm(&self) -> bool {
        self.oncs & ONCS_DSM != 0
    }

    /// Write Zeroes supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & ONCS_WRITE_ZEROES != 0
    }

    /// Copy with source range format 0 supported (ONCS bit 8 and OCFS bit 0).
    pub fn supports_copy(&self) -> bool {
        self.oncs & ONCS_COPY != 0 && self.ocfs & OCFS_FORMAT_0 != 0
    }

    /// The fused Compare and Write supported (FUSES bit 0, with Compare in ONCS bit 0).
    pub fn supports_fused_compare_write(&self) -> bool {
        self.fuses & FUSES_COMPARE_AND_WRITE != 0 && self.oncs & ONCS_COMPARE != 0
    }

    /// A volatile write cache is present.
    pub fn volatile_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
}

/// The Dataset Management limits of the NVM Command Set I/O Command Set specific Identify
/// Controller data structure (CNS 06h, CSI 00h; NVM Command Set Specification 1.0 §4.1.5.3,
/// laid out as Linux's `struct nvme_id_ctrl_nvm`). Each field is 0 where the controller
/// reports no limit, and [`Default`] (all 0) stands for a controller that does not report the
/// structure: Linux's `nvme_init_non_mdts_limits()` keeps its defaults then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyControllerNvm {
    /// Write Zeroes Size Limit (byte 1): the most data one Write Zeroes may cover, as a power
    /// of two in units of the minimum memory page size (2 ^ (12 + CAP.MPSMIN) bytes): 2 ^ WZSL
    /// such pages, as Linux's `nvme_mps_to_sectors()` reads it (and MDTS is read); 0 = no
    /// limit. A controller refuses a larger Write Zeroes with Invalid Field in Command.
    pub wzsl: u8,
    /// Dataset Management Ranges Limit (byte 3): the most ranges one Dataset Management
    /// command may carry; 0 = only the command format's 256 (NR is 8 bits, 0's based).
    pub dmrl: u8,
    /// Dataset Management Range Size Limit (bytes 7:4): the most logical blocks one range may
    /// cover; 0 = no limit. A controller refuses a larger range with Invalid Field in Command.
    pub dmrsl: u32,
    /// Dataset Management Size Limit (bytes 15:8): the most logical blocks all ranges of one
    /// command may cover together; 0 = no limit.
    pub dmsl: u64,
}

impl IdentifyControllerNvm {
    /// Parse the 4096-byte structure (only its first 16 bytes are read). Byte 0 (VSL) and 2
    /// (WUSL) limit Verify and Write Uncorrectable, which this driver does not send.
    pub fn parse(data: &[u8; IDENTIFY_LEN]) -> Self {
        Self {
            wzsl: data[1],
            dmrl: data[3],
            dmrsl: le32(data, 4),
            dmsl: le64(data, 8),
        }
    }

    /// The most blocks one Dataset Management command of a single range may deallocate: DMRSL
    /// and DMSL where reported (a zero field is no limit), and the range's 32-bit length field
    /// (NVMe 1.4 §6.7, Figure 364). Never 0: DMRSL and DMSL count logical blocks, so a
    /// reported limit holds at least one (unlike WZSL, in memory pages, which may hold none:
    /// [`Self::max_write_zeroes_blocks`]). Linux applies DMRSL the same way, as its discard
    /// limit per range (`nvme_config_discard()`); this driver sends one range per command, so
    /// DMRL (at least 1 when reported) never binds.
    pub fn max_deallocate_blocks(&self) -> u32 {
        let nonzero = |limit: u64| if limit == 0 { u64::MAX } else { limit };
        nonzero(u64::from(self.dmrsl))
            .min(nonzero(self.dmsl))
            .min(u64::from(u32::MAX)) as u32
    }

    /// The most blocks of `block_size` bytes one Write Zeroes may zero: WZSL where reported
    /// (2 ^ WZSL pages of `min_page_size` bytes; Linux's `ctrl->max_zeroes_sectors` from
    /// `nvme_mps_to_sectors()` in `nvme_init_non_mdts_limits()`), and the command's 16-bit
    /// NLB (65536 blocks, NVM Command Set Specification 1.0 §3.3.7). `None` when WZSL is below
    /// one block (WZSL 1 with 4 KiB pages is 8 KiB: blocks of 16 KiB or more): the command
    /// cannot zero less than a block, and the controller refuses even one with Invalid Field
    /// in Command, so the controller has no Write Zeroes this driver can use.
    pub fn max_write_zeroes_blocks(&self, min_page_size: u64, block_size: u32) -> Option<u32> {
        const NLB_BLOCKS: u64 = 65536;
        let limit = match self.wzsl {
            0 => NLB_BLOCKS,
            w => min_page_size
                .checked_shl(u32::from(w))
                .map_or(NLB_BLOCKS, |bytes| bytes / u64::from(block_size.max(1))),
        };
        (limit != 0).then(|| limit.min(NLB_BLOCKS) as u32)
    }
}

/// Bytes of one Error Information log entry.
pub const ERROR_LOG_ENTRY_LEN: usize = 64;

/// One Error Information log entry (NVMe 1.4 §5.14.1.1). An entry whose
/// `error_count` is 0 is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ErrorLogEntry {
    /// Error Count: a unique, incrementing identifier of the error (0 = unused entry).
    pub error_count: u64,
    /// Submission Queue ID of the failed command (0xFFFF: not specific to one).
    pub sqid: u16,
    /// Command ID of the failed command (0xFFFF: not specific to one).
    pub cid: u16,
    /// Status Field of its completion in bits 15:1, the phase tag it was posted with in bit 0.
    pub status_field: u16,
    /// Parameter Error Location: byte (7:0) and bit (10:8) of the command that was in error.
    pub parameter_error_location: u16,
    /// The first LBA that saw the error, where it applies.
    pub lba: u64,
    /// Namespace of the error (0xFFFF_FFFF: not specific to one).
    pub nsid: u32,
    /// Vendor Specific Information Available (log page identifier, or 0).
    pub vendor_specific: u8,
    /// Transport Type.
    pub trtype: u8,
    /// Reserved.
    pub reserved0: [u8; 2],
    /// Command Specific Information.
    pub command_specific: u64,
    /// Transport Type Specific Information.
    pub trtype_specific: u16,
    /// Reserved.
    pub reserved1: [u8; 22],
}

assert_eq_size!(ErrorLogEntry, [u8; ERROR_LOG_ENTRY_LEN]);
const _: () = assert!(offset_of!(ErrorLogEntry, sqid) == 8);
const _: () = assert!(offset_of!(ErrorLogEntry, cid) == 10);
const _: () = assert!(offset_of!(ErrorLogEntry, status_field) == 12);
const _: () = assert!(offset_of!(ErrorLogEntry, parameter_error_location) == 14);
const _: () = assert!(offset_of!(ErrorLogEntry, lba) == 16);
const _: () = assert!(offset_of!(ErrorLogEntry, nsid) == 24);
const _: () = assert!(offset_of!(ErrorLogEntry, vendor_specific) == 28);
const _: () = assert!(offset_of!(ErrorLogEntry, trtype) == 29);
const _: () = assert!(offset_of!(ErrorLogEntry, command_specific) == 32);
const _: () = assert!(offset_of!(ErrorLogEntry, trtype_specific) == 40);

impl ErrorLogEntry {
    /// Parse entries from log page bytes (a trailing partial entry is ignored).
    pub fn parse_all(data: &[u8]) -> Vec<ErrorLogEntry> {
        data.chunks_exact(ERROR_LOG_ENTRY_LEN)
            .filter_map(|chunk| ErrorLogEntry::read_from_bytes(chunk).ok())
            .collect()
    }

    /// The entry is unused (Error Count 0).
    pub fn is_empty(&self) -> bool {
        self.error_count == 0
    }

    /// The failed command's status (the phase tag dropped).
    pub fn status(&self) -> Status {
        Status::from_cqe(self.status_field)
    }
}

impl std::fmt::Display for ErrorLogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error #{}: SQID {} CID {:#06x} status {} NSID {:#x} LBA {:#x} parameter byte {} bit {}",
            self.error_count,
            self.sqid,
            self.cid,
            self.status(),
            self.nsid,
            self.lba,
            self.parameter_error_location & 0xFF,
            (self.parameter_error_location >> 8) & 0x7
        )
    }
}

/// One LBA Format descriptor (NVMe 1.4 Figure 250).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata Size per LBA.
    pub ms: u16,
    /// LBA Data Size: 2^LBADS bytes.
    pub lbads: u8,
    /// Relative Performance.
    pub rp: u8,
}

/// Entries of the LBA Format table: bytes 383:128 of Identify Namespace, NLBAF at most 63
/// (NVM Command Set Specification 1.0 §4.1.5.1, Figure 97; NVMe 1.4 had 16 at bytes 191:128).
pub const MAX_LBA_FORMATS: usize = 64;

/// The fields of the Identify Namespace data structure this driver uses (NVMe 1.4 Figure 249).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: u64,
    /// Namespace Capacity.
    pub ncap: u64,
    /// Formatted LBA Size (byte 26): bits 3:0, and with more than 16 formats bits 6:5 above
    /// them, index the LBA format in use ([`IdentifyNamespace::format_index`]).
    pub flbas: u8,
    /// LBA formats (NLBAF + 1 of them, at most [`MAX_LBA_FORMATS`]).
    pub lbaf: Vec<LbaFormat>,
    /// Namespace Globally Unique Identifier (bytes 119:104; all zero: not supported).
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier (bytes 127:120; all zero: not supported).
    pub eui64: [u8; 8],
    /// Maximum Single Source Range Length of a Copy, in blocks (bytes 75:74, NVMe 2.0).
    pub mssrl: u16,
    /// Maximum Copy Length, in blocks (bytes 79:76).
    pub mcl: u32,
    /// Namespace Features (byte 24); bit 1: the NAWUN, NAWUPF and NACWU fields are defined.
    pub nsfeat: u8,
    /// Deallocate Logical Block Features (byte 33): bits 2:0 what a deallocated block reads
    /// (001b: zeroes; 000b: not reported, anything), bit 3 Write Zeroes supports DEAC.
    pub dlfeat: u8,
    /// Namespace Atomic Compare & Write Unit, 0's based (bytes 39:38, after NAWUN at 35:34 and
    /// NAWUPF at 37:36; bytes 31:30 are NMIC and RESCAP); with NSFEAT bit 1 and not 0 it
    /// replaces the controller's ACWU for this namespace.
    pub nacwu: u16,
}

impl IdentifyNamespace {
    /// Parse the 4096-byte structure.
    pub fn parse(data: &[u8; IDENTIFY_LEN]) -> Self {
        // NLBAF is 0's based; a value above 63 would run past the table, so it is capped.
        let nlbaf = usize::from(data[25]).min(MAX_LBA_FORMATS - 1) + 1;
        let lbaf = (0..nlbaf)
            .map(|i| {
                let d = le32(data, 128 + 4 * i);
                LbaFormat {
                    ms: (d & 0xFFFF) as u16,
                    lbads: ((d >> 16) & 0xFF) as u8,
                    rp: ((d >> 24) & 0x3) as u8,
                }
            })
            .collect();
        Self {
            nsze: le64(data, 0),
            ncap: le64(data, 8),
            flbas: data[26],
            lbaf,
            // Byte arrays, big-endian in the structure (NVMe 1.4 Figure 245): copied, not
            // byte-swapped like the little-endian integer fields.
            nguid: data[104..120].try_into().unwrap_or_default(),
            eui64: data[120..128].try_into().unwrap_or_default(),
            mssrl: le16(data, 74),
            mcl: le32(data, 76),
            nsfeat: data[24],
            dlfeat: data[33],
            nacwu: le16(data, 38),
        }
    }

    /// The blocks a fused Compare and Write covers atomically on this namespace: NACWU + 1
    /// where the namespace defines it (NSFEAT bit 1, NACWU not 0), else the controller's
    /// ACWU + 1 (NVMe 1.4 Figure 245).
    pub fn compare_write_unit(&self, controller: &IdentifyController) -> u32 {
        if self.nsfeat & 0b10 != 0 && self.nacwu != 0 {
            u32::from(self.nacwu) + 1
        } else {
            u32::from(controller.acwu) + 1
        }
    }

    /// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b, NVMe 1.4 Figure 245).
    pub fn deallocated_reads_zeroes(&self) -> bool {
        self.dlfeat & 0b111 == 0b001
    }

    /// A Write Zeroes may carry DEAC (the controller then deallocates where it can and the
    /// blocks still read zeroes): DLFEAT bit 3 with deallocated blocks reading zeroes, as
    /// Linux sets NVME_NS_DEAC. Without 001b the controller would write the zeroes anyway
    /// (NVMe 1.4 §6.16).
    pub fn write_zeroes_may_deallocate(&self) -> bool {
        self.dlfeat & 0b1000 != 0 && self.deallocated_reads_zeroes()
    }

    /// The most blocks one Copy with a single source range may move: MSSRL and MCL (0 in
    /// either means nothing can be copied), and the 16-bit NLB (65536).
    pub fn copy_blocks(&self) -> u32 {
        u32::from(self.mssrl).min(self.mcl).min(65536)
    }

    /// The index of the LBA format in use. FLBAS bits 3:0 are its low 4 bits; with more than
    /// 16 formats, bits 6:5 are its 2 high ones (NVMe 2.0 Base Specification Figure 276, NVM
    /// Command Set Specification 1.0 Figure 97), as Linux's `nvme_lbaf_index()` reads them.
    /// With 16 or fewer the bits are reserved and the host ignores them: a format index above
    /// 15 cannot exist then.
    pub fn format_index(&self) -> usize {
        let low = usize::from(self.flbas & 0xF);
        if self.lbaf.len() > 16 {
            low | usize::from(self.flbas & 0x60) >> 1
        } else {
            low
        }
    }

    /// The LBA format in use, if FLBAS names one that exists.
    pub fn format(&self) -> Option<LbaFormat> {
        self.lbaf.get(self.format_index()).copied()
    }

    /// LBADS of the format in use (log2 of the block size), if valid (9..=16: 512 B..64 KiB).
    pub fn lbads(&self) -> Option<u8> {
        self.format().map(|f| f.lbads).filter(|l| (9..=16).contains(l))
    }
}

/// The first NSID of an Active Namespace ID list (CNS 02h), if any.
pub fn first_active_nsid(data: &[u8; IDENTIFY_LEN]) -> Option<u32> {
    let nsid = le32(data, 0);
    (nsid != 0 && nsid != u32::MAX).then_some(nsid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_maps_to_device_status() {
        let st = |sct, sc| Status::new(sct, sc).device_status();
        assert_eq!(st(sct::GENERIC, sc::SUCCESS), DeviceStatus::Ok);
        assert_eq!(st(sct::GENERIC, sc::LBA_OUT_OF_RANGE), DeviceStatus::LbaRange);
        assert_eq!(st(sct::MEDIA, sc::UNRECOVERED_READ), DeviceStatus::ReadError);
        assert_eq!(st(sct::MEDIA, sc::WRITE_FAULT), DeviceStatus::WriteError);
        assert_eq!(st(sct::GENERIC, sc::ABORT_REQUESTED), DeviceStatus::Aborted);
        assert_eq!(st(sct::GENERIC, sc::ABORTED_SQ_DELETION), DeviceStatus::Aborted);
        assert_eq!(st(sct::GENERIC, sc::INVALID_OPCODE), DeviceStatus::Other(0x001));
        assert_eq!(st(sct::GENERIC, sc::INTERRUPTED), DeviceStatus::Aborted);
        assert_eq!(st(sct::GENERIC, sc::INVALID_FIELD), DeviceStatus::InvalidField);
        assert_eq!(
            st(sct::GENERIC, sc::WRITE_PROTECTED),
            DeviceStatus::WriteProtected
        );
        assert_eq!(
            st(sct::GENERIC, sc::CAPACITY_EXCEEDED),
            DeviceStatus::CapacityExceeded
        );
        assert_eq!(st(sct::GENERIC, sc::NAMESPACE_NOT_READY), DeviceStatus::NotReady);
        assert_eq!(
            st(sct::GENERIC, sc::RESERVATION_CONFLICT),
            DeviceStatus::ReservationConflict
        );
        assert_eq!(
            st(sct::GENERIC, sc::FORMAT_IN_PROGRESS),
            DeviceStatus::FormatInProgress
        );
        assert_eq!(st(sct::MEDIA, sc::ACCESS_DENIED), DeviceStatus::AccessDenied);
        assert_eq!(
            st(sct::MEDIA, sc::DEALLOCATED_OR_UNWRITTEN),
            DeviceStatus::ReadError
        );
        // The same codes under another type mean something else.
        assert_eq!(
            st(sct::MEDIA, sc::NAMESPACE_NOT_READY),
            DeviceStatus::Other(0x282)
        );
        assert_eq!(st(sct::COMMAND_SPECIFIC, 0x80), DeviceStatus::Other(0x180));
        // The phase tag is not part of the status field; DNR is kept in the raw value.
        let word = (Status::new(sct::MEDIA, sc::UNRECOVERED_READ).0 << 1) | 1 | (1 << 15);
        let s = Status::from_cqe(word);
        assert!(s.dnr());
        assert_eq!(s.device_status(), DeviceStatus::ReadError);
        assert!(!s.is_success());
    }

    #[test]
    fn nacwu_is_read_from_bytes_39_38() {
        let c = IdentifyController::parse(&[0u8; IDENTIFY_LEN]);
        let mut n = [0u8; IDENTIFY_LEN];
        n[24] = 0b10; // NSFEAT: NAWUN, NAWUPF, NACWU defined
        n[30] = 1; // NMIC: may be shared
        n[31] = 0xFF; // RESCAP: every reservation type
        n[38..40].copy_from_slice(&3u16.to_le_bytes()); // NACWU: 4 blocks, 0's based
        n[33] = 0b1001; // DLFEAT: deallocated blocks read zeroes, DEAC supported
        let ns = IdentifyNamespace::parse(&n);
        assert!(ns.deallocated_reads_zeroes() && ns.write_zeroes_may_deallocate());
        assert_eq!(ns.nacwu, 3);
        assert_eq!(ns.compare_write_unit(&c), 4);
        // DLFEAT 000b: nothing reported about deallocated blocks, so no DEAC either.
        n[33] = 0b1000;
        let ns = IdentifyNamespace::parse(&n);
        assert!(!ns.deallocated_reads_zeroes() && !ns.write_zeroes_may_deallocate());
        // Without NSFEAT bit 1 the controller's ACWU (0: one block) applies.
        n[24] = 0;
        assert_eq!(IdentifyNamespace::parse(&n).compare_write_unit(&c), 1);
    }

    #[test]
    fn abort_and_get_log_page_dwords() {
        assert_eq!(abort_cdw10(3, 0x1234), 0x1234_0003);
        assert!(abort_succeeded(0) && !abort_succeeded(1));
        // One 64-byte entry: NUMD 15; a page: 1023; 256 KiB: NUMDU 1, NUMDL 0xFFFF.
        assert_eq!(get_log_page_dwords(1, 64), (0x000F_8001, 0));
        assert_eq!(get_log_page_dwords(1, 4096), (0x03FF_8001, 0));
        assert_eq!(get_log_page_dwords(1, 256 * 1024), (0xFFFF_8001, 0));
        assert_eq!(get_log_page_dwords(1, 256 * 1024 + 4), (0x0000_8001, 1));
    }

    #[test]
    fn entries_have_the_wire_layout() {
        let sqe = Sqe {
            opcode: 0x02,
            cid: 0x1234,
            nsid: 1,
            prp1: 0x1000,
            cdw10: 7,
            cdw15: 9,
            ..Sqe::default()
        };
        let b = sqe.as_bytes();
        assert_eq!(&b[0..4], &[0x02, 0, 0x34, 0x12]);
        assert_eq!(b[24], 0x00);
        assert_eq!(b[25], 0x10);
        assert_eq!(b[40], 7);
        assert_eq!(b[60], 9);
        let mut raw = [0u8; 16];
        raw[8] = 5; // SQHD
        raw[10] = 1; // SQID
        raw[12] = 0x34;
        raw[13] = 0x12;
        raw[14] = 0x01; // phase
        let cqe = Cqe::read_from_bytes(&raw).expect("16 bytes");
        assert_eq!((cqe.sq_head, cqe.sq_id, cqe.cid, cqe.status), (5, 1, 0x1234, 1));
    }

    #[test]
    fn identify_structures_parse() {
        let mut c = [0u8; IDENTIFY_LEN];
        c[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        c[4..24].copy_from_slice(b"SERIAL01            ");
        c[24..64].copy_from_slice(b"QEMU NVMe Ctrl                          ");
        c[64..72].copy_from_slice(b"7.2.0   ");
        c[77] = 7;
        c[512] = 0x66;
        c[513] = 0x44;
        c[516..520].copy_from_slice(&256u32.to_le_bytes());
        c[520..522].copy_from_slice(&(ONCS_DSM | ONCS_WRITE_ZEROES).to_le_bytes());
        c[525] = 1;
        c[258] = 3;
        c[262] = 63;
        let id = IdentifyController::parse(&c);
        assert_eq!(
            (id.acl, id.abort_limit(), id.elpe, id.error_log_entries()),
            (3, 4, 63, 64)
        );
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.sn, "SERIAL01");
        assert_eq!(id.mn, "QEMU NVMe Ctrl");
        assert_eq!(id.fr, "7.2.0");
        assert_eq!((id.mdts, id.sqes, id.cqes, id.nn), (7, 0x66, 0x44, 256));
        assert!(id.supports_dsm() && id.supports_write_zeroes() && id.volatile_cache());

        let mut n = [0u8; IDENTIFY_LEN];
        n[0..8].copy_from_slice(&2048u64.to_le_bytes());
        n[8..16].copy_from_slice(&2048u64.to_le_bytes());
        n[25] = 1; // two formats
        n[26] = 1; // the second in use
        n[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        n[132..136].copy_from_slice(&((12u32 << 16) | 8).to_le_bytes());
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!(ns.nsze, 2048);
        assert_eq!(ns.lbaf.len(), 2);
        assert_eq!(
            ns.format(),
            Some(LbaFormat {
                ms: 8,
                lbads: 12,
                rp: 0
            })
        );
        assert_eq!(ns.lbads(), Some(12));

        let mut list = [0u8; IDENTIFY_LEN];
        assert_eq!(first_active_nsid(&list), None);
        list[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(first_active_nsid(&list), Some(3));
    }

    #[test]
    fn identify_controller_nvm_reads_the_dataset_management_limits() {
        assert_eq!(identify_cdw11(csi::NVM), 0);
        assert_eq!(identify_cdw11(0x02), 0x0200_0000, "CSI is CDW11 bits 31:24");
        let mut d = [0u8; IDENTIFY_LEN];
        // All zero: no limit but the range's 32-bit length.
        let none = IdentifyControllerNvm::parse(&d);
        assert_eq!(none, IdentifyControllerNvm::default());
        assert_eq!(none.max_deallocate_blocks(), u32::MAX);
        d[0] = 0x11; // VSL
        d[1] = 0x22; // WZSL
        d[2] = 0x33; // WUSL
        d[3] = 0x04; // DMRL
        d[4..8].copy_from_slice(&65536u32.to_le_bytes()); // DMRSL
        d[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes()); // DMSL
        d[16] = 0xFF; // past the fields read
        let nvm = IdentifyControllerNvm::parse(&d);
        assert_eq!((nvm.dmrl, nvm.dmrsl, nvm.dmsl), (4, 65536, 1 << 40));
        assert_eq!(nvm.max_deallocate_blocks(), 65536, "DMRSL binds");
        // DMSL binds when it is the smaller; a DMSL above u32 does not widen a range.
        d[8..16].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(IdentifyControllerNvm::parse(&d).max_deallocate_blocks(), 1000);
        d[4..8].copy_from_slice(&0u32.to_le_bytes());
        d[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(IdentifyControllerNvm::parse(&d).max_deallocate_blocks(), u32::MAX);
    }

    /// WZSL (byte 1) is a power of two of minimum memory pages, as MDTS is (Linux's
    /// `nvme_mps_to_sectors()`), 0 no limit; the 16-bit NLB bounds it either way, and a WZSL
    /// below one block leaves no usable Write Zeroes (it was taken as one block, which the
    /// controller refuses).
    #[test]
    fn identify_controller_nvm_reads_wzsl_in_minimum_pages() {
        let mut d = [0u8; IDENTIFY_LEN];
        let none = IdentifyControllerNvm::parse(&d);
        assert_eq!(none.wzsl, 0);
        assert_eq!(none.max_write_zeroes_blocks(4096, 512), Some(65536), "NLB only");
        assert_eq!(none.max_write_zeroes_blocks(4096, 65536), Some(65536), "no WZSL");
        d[1] = 1;
        let nvm = IdentifyControllerNvm::parse(&d);
        assert_eq!(nvm.wzsl, 1);
        assert_eq!(
            nvm.max_write_zeroes_blocks(4096, 512),
            Some(16),
            "8 KiB of 512-byte blocks"
        );
        assert_eq!(nvm.max_write_zeroes_blocks(4096, 4096), Some(2));
        assert_eq!(
            nvm.max_write_zeroes_blocks(4096, 8192),
            Some(1),
            "exactly one block"
        );
        // 8 KiB holds no 16 KiB or 64 KiB block: the controller refuses every Write Zeroes.
        assert_eq!(nvm.max_write_zeroes_blocks(4096, 16384), None);
        assert_eq!(nvm.max_write_zeroes_blocks(4096, 65536), None);
        assert_eq!(
            nvm.max_write_zeroes_blocks(8192, 512),
            Some(32),
            "in CAP.MPSMIN pages"
        );
        assert_eq!(nvm.max_write_zeroes_blocks(8192, 16384), Some(1));
        d[1] = 20; // 4 GiB: more than NLB holds
        assert_eq!(
            IdentifyControllerNvm::parse(&d).max_write_zeroes_blocks(4096, 512),
            Some(65536)
        );
        d[1] = 0xFF; // beyond u64: no limit but NLB
        assert_eq!(
            IdentifyControllerNvm::parse(&d).max_write_zeroes_blocks(4096, 512),
            Some(65536)
        );
    }

    #[test]
    fn flbas_bits_6_5_index_formats_above_16() {
        let mut n = [0u8; IDENTIFY_LEN];
        n[0..8].copy_from_slice(&2048u64.to_le_bytes());
        n[25] = 17; // 18 formats (0's based)
        let lbaf = |i: usize| 128 + 4 * i;
        n[lbaf(1)..lbaf(1) + 4].copy_from_slice(&(9u32 << 16).to_le_bytes());
        n[lbaf(17)..lbaf(17) + 4].copy_from_slice(&(12u32 << 16).to_le_bytes());
        n[26] = 0x21; // format 17: low bits 0001b, bits 6:5 = 01b
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!(ns.lbaf.len(), 18);
        assert_eq!(ns.format_index(), 17);
        assert_eq!(ns.lbads(), Some(12), "format 17, not format 1");

        // With 16 formats or fewer bits 6:5 are reserved and ignored.
        n[25] = 15;
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!((ns.lbaf.len(), ns.format_index(), ns.lbads()), (16, 1, Some(9)));

        // The whole 64-entry table (bytes 383:128) is read; NLBAF above 63 is capped.
        n[25] = 0xFF;
        n[lbaf(63)..lbaf(63) + 4].copy_from_slice(&(13u32 << 16).to_le_bytes());
        n[26] = 0x6F; // format 63
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!((ns.lbaf.len(), ns.format_index(), ns.lbads()), (64, 63, Some(13)));
    }
}
