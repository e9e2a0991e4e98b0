//! NVMe wire formats (NVMe base spec 1.4 §4.2, §4.6, §5.15, and NVM command set §6): the
//! 64-byte submission queue entry, the 16-byte completion queue entry, opcodes, status codes and
//! their device-independent meaning, and the IDENTIFY data this driver reads.

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
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// IDENTIFY CNS values (NVMe 1.4 §5.15.1).
pub mod cns {
    /// Identify Namespace data structure for CDW1.NSID.
    pub const NAMESPACE: u32 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u32 = 0x01;
    /// Active Namespace ID list (NSIDs greater than CDW1.NSID).
    pub const ACTIVE_NSIDS: u32 = 0x02;
}

/// Feature identifiers (NVMe 1.4 §5.21.1).
pub mod feature {
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u32 = 0x07;
}

/// Read/Write CDW12 bit: Force Unit Access (NVMe 1.4 §6.9).
pub const CDW12_FUA: u32 = 1 << 30;
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
    /// LBA Out of Range (generic, NVM command set).
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Write Fault (media).
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered Read Error (media).
    pub const UNRECOVERED_READ: u8 = 0x81;
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

    /// The device-independent meaning of the status.
    pub fn device_status(self) -> DeviceStatus {
        match (self.sct(), self.sc()) {
            (sct::GENERIC, sc::SUCCESS) => DeviceStatus::Ok,
            (sct::GENERIC, sc::LBA_OUT_OF_RANGE) => DeviceStatus::LbaRange,
            (sct::GENERIC, sc::ABORT_REQUESTED | sc::ABORTED_SQ_DELETION) => DeviceStatus::Aborted,
            (sct::MEDIA, sc::UNRECOVERED_READ) => DeviceStatus::ReadError,
            (sct::MEDIA, sc::WRITE_FAULT) => DeviceStatus::WriteError,
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

/// ONCS bit: Dataset Management supported (NVMe 1.4 §5.15.2.2).
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit: Write Zeroes supported.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

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
    /// Volatile Write Cache (bit 0: present).
    pub vwc: u8,
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
            vwc: data[525],
        }
    }

    /// Dataset Management (deallocate) supported.
    pub fn supports_dsm(&self) -> bool {
        self.oncs & ONCS_DSM != 0
    }

    /// Write Zeroes supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & ONCS_WRITE_ZEROES != 0
    }

    /// A volatile write cache is present.
    pub fn volatile_cache(&self) -> bool {
        self.vwc & 1 != 0
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

/// The fields of the Identify Namespace data structure this driver uses (NVMe 1.4 Figure 249).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: u64,
    /// Namespace Capacity.
    pub ncap: u64,
    /// Formatted LBA Size (bits 3:0 index the LBA format in use).
    pub flbas: u8,
    /// LBA formats (NLBAF + 1 of them).
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// Parse the 4096-byte structure.
    pub fn parse(data: &[u8; IDENTIFY_LEN]) -> Self {
        let nlbaf = usize::from(data[25]).min(15) + 1;
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
        }
    }

    /// The LBA format in use, if FLBAS names one that exists.
    pub fn format(&self) -> Option<LbaFormat> {
        self.lbaf.get(usize::from(self.flbas & 0xF)).copied()
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
        assert_eq!(st(sct::COMMAND_SPECIFIC, 0x80), DeviceStatus::Other(0x180));
        // The phase tag is not part of the status field; DNR is kept in the raw value.
        let word = (Status::new(sct::MEDIA, sc::UNRECOVERED_READ).0 << 1) | 1 | (1 << 15);
        let s = Status::from_cqe(word);
        assert!(s.dnr());
        assert_eq!(s.device_status(), DeviceStatus::ReadError);
        assert!(!s.is_success());
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
        let id = IdentifyController::parse(&c);
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
}
