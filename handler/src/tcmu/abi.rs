//! The target_core_user (TCMU) kernel ABI: the shared-memory layout and the generic netlink
//! numbers, exactly as the kernel's uapi header `include/uapi/linux/target_core_user.h` defines
//! them (kernel 5.9 and later: TMR notifications; 5.13 and later: KEEP_BUF), and as
//! `Documentation/target/tcmu-design.rst` describes them.
//!
//! The kernel structures are `__packed`; every field of them already sits at its natural
//! alignment, so `#[repr(C)]` structs with explicit padding reproduce them byte for byte. The
//! sizes and offsets below are checked at compile time against the values gcc gives for the
//! header on x86_64 (`sizeof(struct tcmu_cmd_entry) == 112`, `offsetof(.., req.iov) == 48`,
//! `offsetof(struct tcmu_mailbox, cmd_tail) == 64`, ...). The request/response union of
//! `tcmu_cmd_entry` is modelled as two full-size view structs, [`CmdEntryReq`] and
//! [`CmdEntryRsp`], read and written as bytes, as `crate::abi` does for scst_user's unions.
//!
//! Nothing here is ever placed in the shared mapping by reference: the ring reads and writes
//! these structs as byte copies ([`super::region`]).

use static_assertions::const_assert_eq;
use std::mem::offset_of;
use std::mem::size_of;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// `TCMU_VERSION`: the interface version string the kernel reports.
pub const TCMU_VERSION: &str = "2.0";
/// `TCMU_MAILBOX_VERSION`: the only mailbox layout this code understands. (tcmu-design.rst
/// still says 1; the header and every kernel since 4.1 write 2.)
pub const TCMU_MAILBOX_VERSION: u16 = 2;
/// `ALIGN_SIZE`: `cmd_tail` sits on its own cache line of this size.
pub const ALIGN_SIZE: usize = 64;
/// `TCMU_OP_ALIGN_SIZE`: every ring entry starts and ends on this alignment.
pub const TCMU_OP_ALIGN_SIZE: u32 = 8;
/// `TCMU_OP_MASK`: the opcode lives in the low bits of `len_op`, the length in the rest.
pub const TCMU_OP_MASK: u32 = 0x7;
/// `TCMU_SENSE_BUFFERSIZE`: sense bytes the kernel copies from a response.
pub const TCMU_SENSE_BUFFERSIZE: usize = 96;

/// `TCMU_MAILBOX_FLAG_CAP_*`: what the kernel supports, in [`Mailbox::flags`].
pub mod mailbox_flags {
    /// `TCMU_MAILBOX_FLAG_CAP_OOOC`: out-of-order completion: user space may write any
    /// finished command's response into the CMD entry at `cmd_tail`, with that entry's
    /// `cmd_id` rewritten to the finished command's (`tcmu_handle_completions` looks each
    /// passed entry's `cmd_id` up). `tcmu_configure_device` sets it in every kernel read for
    /// this module (since the data-area bitmap, Linux 4.6 or so: not confirmed against an
    /// older source); the ring decides at run time, out of order when it is set and in order
    /// when not ([`crate::tcmu::ring`], "The protocol").
    pub const CAP_OOOC: u16 = 1 << 0;
    /// `TCMU_MAILBOX_FLAG_CAP_READ_LEN`: `rsp.read_len` with `TCMU_UFLAG_READ_LEN` is honoured.
    pub const CAP_READ_LEN: u16 = 1 << 1;
    /// `TCMU_MAILBOX_FLAG_CAP_TMR`: the kernel posts `TCMU_OP_TMR` entries.
    pub const CAP_TMR: u16 = 1 << 2;
    /// `TCMU_MAILBOX_FLAG_CAP_KEEP_BUF`: the data buffer may outlive the completion.
    pub const CAP_KEEP_BUF: u16 = 1 << 3;
}

/// `enum tcmu_opcode`: the low [`TCMU_OP_MASK`] bits of `len_op`.
pub mod opcode {
    /// `TCMU_OP_PAD`: a no-op that fills the ring up to its end so the next entry is contiguous.
    pub const PAD: u32 = 0;
    /// `TCMU_OP_CMD`: a SCSI command ([`super::CmdEntryReq`]).
    pub const CMD: u32 = 1;
    /// `TCMU_OP_TMR`: a task management notification ([`super::TmrEntry`]), only with
    /// [`super::mailbox_flags::CAP_TMR`].
    pub const TMR: u32 = 2;
}

/// `TCMU_UFLAG_*`: flags user space sets in [`EntryHdr::uflags`].
pub mod uflags {
    /// `TCMU_UFLAG_UNKNOWN_OP`: user space does not know this opcode. On a CMD entry the kernel
    /// ignores the response and completes the command CHECK CONDITION with no sense
    /// (`tcmu_handle_completion`); `target_complete_cmd` then fails it as LOGICAL UNIT
    /// COMMUNICATION FAILURE (ASC 08h; NOT READY in current kernels), not as INVALID COMMAND
    /// OPERATION CODE: a SCSI opcode we do not support is answered with our own sense instead.
    pub const UNKNOWN_OP: u8 = 0x1;
    /// `TCMU_UFLAG_READ_LEN`: `rsp.read_len` holds the bytes actually read.
    pub const READ_LEN: u8 = 0x2;
    /// `TCMU_UFLAG_KEEP_BUF`: keep the data buffer after completion.
    pub const KEEP_BUF: u8 = 0x4;
}

/// `TCMU_TMR_*`: [`TmrEntry::tmr_type`] values.
pub mod tmr_type {
    /// `TCMU_TMR_UNKNOWN`.
    pub const UNKNOWN: u8 = 0;
    /// `TCMU_TMR_ABORT_TASK`.
    pub const ABORT_TASK: u8 = 1;
    /// `TCMU_TMR_ABORT_TASK_SET`.
    pub const ABORT_TASK_SET: u8 = 2;
    /// `TCMU_TMR_CLEAR_ACA`.
    pub const CLEAR_ACA: u8 = 3;
    /// `TCMU_TMR_CLEAR_TASK_SET`.
    pub const CLEAR_TASK_SET: u8 = 4;
    /// `TCMU_TMR_LUN_RESET`.
    pub const LUN_RESET: u8 = 5;
    /// `TCMU_TMR_TARGET_WARM_RESET`.
    pub const TARGET_WARM_RESET: u8 = 6;
    /// `TCMU_TMR_TARGET_COLD_RESET`.
    pub const TARGET_COLD_RESET: u8 = 7;
    /// `TCMU_TMR_LUN_RESET_PRO`: pseudo reset after a PERSISTENT RESERVE OUT preempt.
    pub const LUN_RESET_PRO: u8 = 128;
}

/// The generic netlink family the kernel broadcasts device events on (tcmu-design.rst,
/// "Device Events").
pub const GENL_FAMILY_NAME: &str = "TCM-USER";
/// Its multicast group.
pub const GENL_MCGRP_CONFIG: &str = "config";

/// `enum tcmu_genl_cmd`.
pub mod genl_cmd {
    /// `TCMU_CMD_UNSPEC`.
    pub const UNSPEC: u8 = 0;
    /// `TCMU_CMD_ADDED_DEVICE`.
    pub const ADDED_DEVICE: u8 = 1;
    /// `TCMU_CMD_REMOVED_DEVICE`.
    pub const REMOVED_DEVICE: u8 = 2;
    /// `TCMU_CMD_RECONFIG_DEVICE`.
    pub const RECONFIG_DEVICE: u8 = 3;
    /// `TCMU_CMD_ADDED_DEVICE_DONE`: user space's reply to ADDED_DEVICE.
    pub const ADDED_DEVICE_DONE: u8 = 4;
    /// `TCMU_CMD_REMOVED_DEVICE_DONE`.
    pub const REMOVED_DEVICE_DONE: u8 = 5;
    /// `TCMU_CMD_RECONFIG_DEVICE_DONE`.
    pub const RECONFIG_DEVICE_DONE: u8 = 6;
    /// `TCMU_CMD_SET_FEATURES`: user space asks for replies to be awaited.
    pub const SET_FEATURES: u8 = 7;
}

/// `enum tcmu_genl_attr`.
pub mod genl_attr {
    /// `TCMU_ATTR_UNSPEC`.
    pub const UNSPEC: u16 = 0;
    /// `TCMU_ATTR_DEVICE`: the UIO name string.
    pub const DEVICE: u16 = 1;
    /// `TCMU_ATTR_MINOR`: the UIO minor number.
    pub const MINOR: u16 = 2;
    /// `TCMU_ATTR_PAD`.
    pub const PAD: u16 = 3;
    /// `TCMU_ATTR_DEV_CFG`.
    pub const DEV_CFG: u16 = 4;
    /// `TCMU_ATTR_DEV_SIZE`.
    pub const DEV_SIZE: u16 = 5;
    /// `TCMU_ATTR_WRITECACHE`.
    pub const WRITECACHE: u16 = 6;
    /// `TCMU_ATTR_CMD_STATUS`.
    pub const CMD_STATUS: u16 = 7;
    /// `TCMU_ATTR_DEVICE_ID`.
    pub const DEVICE_ID: u16 = 8;
    /// `TCMU_ATTR_SUPP_KERN_CMD_REPLY`.
    pub const SUPP_KERN_CMD_REPLY: u16 = 9;
}

/// `struct tcmu_mailbox`: at offset 0 of the mapping. The kernel writes everything but
/// `cmd_tail`; user space writes only `cmd_tail`, which has a cache line to itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Mailbox {
    /// [`TCMU_MAILBOX_VERSION`].
    pub version: u16,
    /// [`mailbox_flags`].
    pub flags: u16,
    /// Offset of the command ring from the start of the mapping.
    pub cmdr_off: u32,
    /// Size of the command ring in bytes (not necessarily a power of two).
    pub cmdr_size: u32,
    /// Producer index, a byte offset into the ring, written by the kernel.
    pub cmd_head: u32,
    /// Padding up to the `__aligned__(ALIGN_SIZE)` of `cmd_tail`.
    pub _pad0: [u8; 48],
    /// Consumer index, a byte offset into the ring, written by user space.
    pub cmd_tail: u32,
    /// Padding to the end of the cache line (the struct's size is a multiple of its alignment).
    pub _pad1: [u8; 60],
}

/// Byte offset of [`Mailbox::version`].
pub const MB_VERSION: usize = offset_of!(Mailbox, version);
/// Byte offset of [`Mailbox::flags`].
pub const MB_FLAGS: usize = offset_of!(Mailbox, flags);
/// Byte offset of [`Mailbox::cmdr_off`].
pub const MB_CMDR_OFF: usize = offset_of!(Mailbox, cmdr_off);
/// Byte offset of [`Mailbox::cmdr_size`].
pub const MB_CMDR_SIZE: usize = offset_of!(Mailbox, cmdr_size);
/// Byte offset of [`Mailbox::cmd_head`].
pub const MB_CMD_HEAD: usize = offset_of!(Mailbox, cmd_head);
/// Byte offset of [`Mailbox::cmd_tail`].
pub const MB_CMD_TAIL: usize = offset_of!(Mailbox, cmd_tail);

const_assert_eq!(size_of::<Mailbox>(), 128);
const_assert_eq!(MB_VERSION, 0);
const_assert_eq!(MB_FLAGS, 2);
const_assert_eq!(MB_CMDR_OFF, 4);
const_assert_eq!(MB_CMDR_SIZE, 8);
const_assert_eq!(MB_CMD_HEAD, 12);
const_assert_eq!(MB_CMD_TAIL, ALIGN_SIZE);

/// `struct tcmu_cmd_entry_hdr`: the first 8 bytes of every ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EntryHdr {
    /// Length in bytes (a multiple of 8) in the high bits, opcode in [`TCMU_OP_MASK`].
    pub len_op: u32,
    /// The kernel's command id; a completion is matched to its command by it.
    pub cmd_id: u16,
    /// Kernel flags (none defined).
    pub kflags: u8,
    /// [`uflags`], written by user space.
    pub uflags: u8,
}

impl EntryHdr {
    /// `tcmu_hdr_get_op`.
    pub const fn op(&self) -> u32 {
        self.len_op & TCMU_OP_MASK
    }

    /// `tcmu_hdr_get_len`: always a multiple of 8, because the opcode bits are masked off.
    pub const fn entry_len(&self) -> u32 {
        self.len_op & !TCMU_OP_MASK
    }

    /// `len_op` for `len` (a multiple of 8) and `op`, as `tcmu_hdr_set_len`/`set_op` build it.
    pub const fn len_op(len: u32, op: u32) -> u32 {
        (len & !TCMU_OP_MASK) | (op & TCMU_OP_MASK)
    }
}

/// Byte offset of [`EntryHdr::uflags`] inside an entry.
pub const HDR_UFLAGS: usize = offset_of!(EntryHdr, uflags);
/// Byte offset of [`EntryHdr::cmd_id`] inside an entry (rewritten by an out-of-order
/// completion, [`mailbox_flags::CAP_OOOC`]).
pub const HDR_CMD_ID: usize = offset_of!(EntryHdr, cmd_id);

const_assert_eq!(size_of::<EntryHdr>(), 8);
const_assert_eq!(HDR_CMD_ID, 4);
const_assert_eq!(offset_of!(EntryHdr, kflags), 6);
const_assert_eq!(HDR_UFLAGS, 7);

/// The `req` arm of the `tcmu_cmd_entry` union.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CmdReq {
    /// Iovecs of the data buffer (Data-Out of a BIDI command).
    pub iov_cnt: u32,
    /// Iovecs after those of the Data-In buffer of a BIDI command.
    pub iov_bidi_cnt: u32,
    /// Iovecs of protection information (the kernel always writes 0).
    pub iov_dif_cnt: u32,
    /// Alignment padding before the `__u64` (the inner struct is not packed).
    pub _pad0: u32,
    /// Offset of the CDB from the start of the mapping (not of the entry).
    pub cdb_off: u64,
    /// `__pad1`.
    pub _pad1: u64,
    /// `__pad2`.
    pub _pad2: u64,
}

const_assert_eq!(size_of::<CmdReq>(), 40);

/// The `rsp` arm of the `tcmu_cmd_entry` union.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CmdRsp {
    /// SAM status.
    pub scsi_status: u8,
    /// `__pad1`.
    pub _pad1: u8,
    /// `__pad2`.
    pub _pad2: u16,
    /// Bytes actually transferred to the initiator, with [`uflags::READ_LEN`].
    pub read_len: u32,
    /// Sense data, read by the kernel when the status is CHECK CONDITION.
    pub sense_buffer: [u8; TCMU_SENSE_BUFFERSIZE],
}

const_assert_eq!(size_of::<CmdRsp>(), 104);

/// `struct tcmu_cmd_entry` seen through its `req` arm; the iovec array follows at
/// [`IOV_ARRAY_OFFSET`] (it overlaps `_rest` for the first four iovecs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CmdEntryReq {
    /// Header.
    pub hdr: EntryHdr,
    /// Request.
    pub req: CmdReq,
    /// The rest of the union (the response arm is longer).
    pub _rest: [u8; 64],
}

/// `struct tcmu_cmd_entry` seen through its `rsp` arm.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CmdEntryRsp {
    /// Header.
    pub hdr: EntryHdr,
    /// Response.
    pub rsp: CmdRsp,
}

/// `sizeof(struct tcmu_cmd_entry)`: the least length of a CMD entry, since the response is
/// written over its whole union.
pub const CMD_ENTRY_SIZE: usize = 112;
/// `offsetof(struct tcmu_cmd_entry, req.iov)`.
pub const IOV_ARRAY_OFFSET: usize = offset_of!(CmdEntryReq, _rest);
/// Byte offset of `rsp.scsi_status` inside an entry.
pub const RSP_SCSI_STATUS: usize = offset_of!(CmdEntryRsp, rsp) + offset_of!(CmdRsp, scsi_status);
/// Byte offset of `rsp.read_len` inside an entry.
pub const RSP_READ_LEN: usize = offset_of!(CmdEntryRsp, rsp) + offset_of!(CmdRsp, read_len);
/// Byte offset of `rsp.sense_buffer` inside an entry.
pub const RSP_SENSE: usize = offset_of!(CmdEntryRsp, rsp) + offset_of!(CmdRsp, sense_buffer);

const_assert_eq!(size_of::<CmdEntryReq>(), CMD_ENTRY_SIZE);
const_assert_eq!(size_of::<CmdEntryRsp>(), CMD_ENTRY_SIZE);
const_assert_eq!(offset_of!(CmdEntryReq, req), 8);
const_assert_eq!(offset_of!(CmdEntryReq, req) + offset_of!(CmdReq, iov_cnt), 8);
const_assert_eq!(
    offset_of!(CmdEntryReq, req) + offset_of!(CmdReq, iov_bidi_cnt),
    12
);
const_assert_eq!(offset_of!(CmdEntryReq, req) + offset_of!(CmdReq, iov_dif_cnt), 16);
const_assert_eq!(offset_of!(CmdEntryReq, req) + offset_of!(CmdReq, cdb_off), 24);
const_assert_eq!(IOV_ARRAY_OFFSET, 48);
const_assert_eq!(RSP_SCSI_STATUS, 8);
const_assert_eq!(RSP_READ_LEN, 12);
const_assert_eq!(RSP_SENSE, 16);

/// `struct iovec` of a 64-bit process, as the kernel writes it into the ring: `iov_base` is an
/// offset from the start of the mapping, not an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Iovec {
    /// Offset from the start of the mapping.
    pub iov_base: u64,
    /// Length in bytes.
    pub iov_len: u64,
}

const_assert_eq!(size_of::<Iovec>(), 16);
const_assert_eq!(offset_of!(Iovec, iov_len), 8);

/// `struct tcmu_tmr_entry`: the fixed part; `cmd_cnt` `u16` command ids follow at
/// [`TMR_CMD_IDS_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TmrEntry {
    /// Header.
    pub hdr: EntryHdr,
    /// [`tmr_type`].
    pub tmr_type: u8,
    /// `__pad1`.
    pub _pad1: u8,
    /// `__pad2`.
    pub _pad2: u16,
    /// Number of ids in `cmd_ids`: the commands in the ring that the function aborts.
    pub cmd_cnt: u32,
    /// `__pad3`.
    pub _pad3: u64,
    /// `__pad4`.
    pub _pad4: u64,
}

/// `offsetof(struct tcmu_tmr_entry, cmd_ids)`.
pub const TMR_CMD_IDS_OFFSET: usize = size_of::<TmrEntry>();

const_assert_eq!(size_of::<TmrEntry>(), 32);
const_assert_eq!(offset_of!(TmrEntry, tmr_type), 8);
const_assert_eq!(offset_of!(TmrEntry, cmd_cnt), 12);
const_assert_eq!(TMR_CMD_IDS_OFFSET, 32);

/// The length of the CDB that starts with `opcode`, as the kernel's `scsi_command_size` computes
/// it (the kernel copies exactly this many bytes into the entry): by opcode group, except the
/// variable-length CDB (0x7f), whose byte 7 holds the additional length.
pub const fn cdb_len(opcode: u8, byte7: u8) -> usize {
    const VARIABLE_LENGTH_CMD: u8 = 0x7f;
    const BY_GROUP: [usize; 8] = [6, 10, 10, 12, 16, 12, 10, 10];
    if opcode == VARIABLE_LENGTH_CMD {
        byte7 as usize + 8
    } else {
        BY_GROUP[(opcode >> 5) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn len_op_round_trips_and_masks_the_opcode() {
        let hdr = EntryHdr {
            len_op: EntryHdr::len_op(136, opcode::CMD),
            ..EntryHdr::default()
        };
        assert_eq!(hdr.entry_len(), 136);
        assert_eq!(hdr.op(), opcode::CMD);
        // A length that is not a multiple of 8 cannot be expressed: its low bits are the opcode.
        assert_eq!(EntryHdr::len_op(13, opcode::PAD) & !TCMU_OP_MASK, 8);
    }

    #[test]
    fn cdb_lengths_follow_the_opcode_groups() {
        assert_eq!(cdb_len(0x00, 0), 6); // TEST UNIT READY
        assert_eq!(cdb_len(0x28, 0), 10); // READ(10)
        assert_eq!(cdb_len(0x5a, 0), 10); // MODE SENSE(10), group 2
        assert_eq!(cdb_len(0x88, 0), 16); // READ(16)
        assert_eq!(cdb_len(0xa8, 0), 12); // READ(12)
        assert_eq!(cdb_len(0x7f, 0x18), 32); // variable length: 8 + additional length
        assert_eq!(cdb_len(0x7f, 0xff), 263);
    }
}
