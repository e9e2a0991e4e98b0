//! The scst_user kernel ABI: ioctl request numbers, subcommand codes, structures and constants,
//! exactly as `scst/include/scst_user.h` and `scst_const.h` define them (spec §1–§2).
//!
//! Every structure is `#[repr(C)]` with explicit padding, derives zerocopy's byte traits, and is
//! checked at compile time against the sizes and offsets the spec measured with gcc on x86_64.
//! Kernel unions are modelled as fixed-size byte areas (`payload`) with one full-size view
//! struct per union arm; a view is read with [`zerocopy::FromBytes::read_from_prefix`] and
//! written with [`zerocopy::IntoBytes::write_to_prefix`], so no reference into a union is ever
//! formed. Pointer fields are user virtual addresses carried as `u64` (spec §2, `aligned_u64`).

use static_assertions::const_assert_eq;
use std::mem::offset_of;
use std::mem::size_of;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// `/dev/scst_user` (spec §1.1).
pub const DEV_USER_PATH: &str = "/dev/scst_user";
/// `SCST_MAX_CDB_SIZE`: CDB bytes carried inline in every payload.
pub const SCST_MAX_CDB_SIZE: usize = 16;
/// `SCST_MAX_NAME`: size of the device and SGV pool name buffers.
pub const SCST_MAX_NAME: usize = 50;
/// `SCST_MAX_EXTERNAL_NAME`: size of initiator and target names in `scst_user_sess`.
pub const SCST_MAX_EXTERNAL_NAME: usize = 256;
/// `SCST_SENSE_BUFFERSIZE`: the most sense bytes the kernel copies from a reply.
pub const SCST_SENSE_BUFFERSIZE: usize = 252;
/// `SCST_STANDARD_SENSE_LEN`.
pub const SCST_STANDARD_SENSE_LEN: usize = 18;
/// `SCST_MAX_LONG_CDB_SIZE`.
pub const SCST_MAX_LONG_CDB_SIZE: usize = 65536;
/// Kernel page size the SGV cache works in (spec §3.6, x86_64).
pub const KERNEL_PAGE_SIZE: usize = 4096;
/// Number of SGV size classes: orders 0..=10, 1 to 1024 pages (spec §3.6).
pub const SGV_POOL_ELEMENTS: u32 = 11;
/// The kernel reads at least this many bytes of the version and license strings (spec §1.4).
pub const VERSION_READ_MIN: usize = 20;
/// Licenses the kernel accepts (spec §1.4), checked before the version.
pub const ACCEPTED_LICENSES: [&str; 5] = ["GPL", "GPL v2", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"];

// ---------------------------------------------------------------------------------------------
// ioctl request numbers (Linux asm-generic _IOC encoding).

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` of the Linux generic ioctl encoding.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}
const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// ioctl magic of `/dev/scst_user`.
pub const IOCTL_MAGIC: u8 = b'u';
/// Subcode magic.
pub const SUBCODE_MAGIC: u8 = b's';

/// SCST_USER_REGISTER_DEVICE.
pub const SCST_USER_REGISTER_DEVICE: u32 = iow(IOCTL_MAGIC, 1, size_of::<DevDesc>());
/// SCST_USER_UNREGISTER_DEVICE (obsolete; flips the fd to non-blocking, spec §3.9).
pub const SCST_USER_UNREGISTER_DEVICE: u32 = ioc(IOC_NONE, IOCTL_MAGIC, 2, 0);
/// SCST_USER_SET_OPTIONS.
pub const SCST_USER_SET_OPTIONS: u32 = iow(IOCTL_MAGIC, 3, size_of::<Opt>());
/// SCST_USER_GET_OPTIONS.
pub const SCST_USER_GET_OPTIONS: u32 = ior(IOCTL_MAGIC, 4, size_of::<Opt>());
/// SCST_USER_REPLY_AND_GET_CMD.
pub const SCST_USER_REPLY_AND_GET_CMD: u32 = iowr(IOCTL_MAGIC, 5, size_of::<GetCmd>());
/// SCST_USER_REPLY_CMD.
pub const SCST_USER_REPLY_CMD: u32 = iow(IOCTL_MAGIC, 6, size_of::<ReplyCmd>());
/// SCST_USER_FLUSH_CACHE.
pub const SCST_USER_FLUSH_CACHE: u32 = ioc(IOC_NONE, IOCTL_MAGIC, 7, 0);
/// SCST_USER_DEVICE_CAPACITY_CHANGED.
pub const SCST_USER_DEVICE_CAPACITY_CHANGED: u32 = ioc(IOC_NONE, IOCTL_MAGIC, 8, 0);
/// SCST_USER_GET_EXTENDED_CDB.
pub const SCST_USER_GET_EXTENDED_CDB: u32 = iowr(IOCTL_MAGIC, 9, size_of::<GetExtCdb>());
/// SCST_USER_PREALLOC_BUFFER.
pub const SCST_USER_PREALLOC_BUFFER: u32 = iowr(IOCTL_MAGIC, 10, size_of::<PreallocBuffer>());
/// SCST_USER_REPLY_AND_GET_MULTI (the argument size is that of the 16-byte header).
pub const SCST_USER_REPLY_AND_GET_MULTI: u32 = iowr(IOCTL_MAGIC, 11, size_of::<GetMultiHeader>());

const_assert_eq!(SCST_USER_REGISTER_DEVICE, 0x40A0_7501);
const_assert_eq!(SCST_USER_UNREGISTER_DEVICE, 0x0000_7502);
const_assert_eq!(SCST_USER_SET_OPTIONS, 0x4014_7503);
const_assert_eq!(SCST_USER_GET_OPTIONS, 0x8014_7504);
const_assert_eq!(SCST_USER_REPLY_AND_GET_CMD, 0xC220_7505);
const_assert_eq!(SCST_USER_REPLY_CMD, 0x4038_7506);
const_assert_eq!(SCST_USER_FLUSH_CACHE, 0x0000_7507);
const_assert_eq!(SCST_USER_DEVICE_CAPACITY_CHANGED, 0x0000_7508);
const_assert_eq!(SCST_USER_GET_EXTENDED_CDB, 0xC010_7509);
const_assert_eq!(SCST_USER_PREALLOC_BUFFER, 0xC010_750A);
const_assert_eq!(SCST_USER_REPLY_AND_GET_MULTI, 0xC010_750B);

// ---------------------------------------------------------------------------------------------
// Subcommand codes (spec §1.3): `_IOx('s', state, payload)`; `_IOC_NR` is the ucmd state.

/// SCST_USER_ATTACH_SESS.
pub const SCST_USER_ATTACH_SESS: u32 = ior(SUBCODE_MAGIC, UCMD_STATE_ATTACH_SESS, size_of::<Sess>());
/// SCST_USER_DETACH_SESS.
pub const SCST_USER_DETACH_SESS: u32 = ior(SUBCODE_MAGIC, UCMD_STATE_DETACH_SESS, size_of::<Sess>());
/// SCST_USER_PARSE.
pub const SCST_USER_PARSE: u32 = iowr(SUBCODE_MAGIC, UCMD_STATE_PARSING, size_of::<ScsiCmdParse>());
/// SCST_USER_ALLOC_MEM.
pub const SCST_USER_ALLOC_MEM: u32 = iowr(
    SUBCODE_MAGIC,
    UCMD_STATE_BUF_ALLOCING,
    size_of::<ScsiCmdAllocMem>(),
);
/// SCST_USER_EXEC.
pub const SCST_USER_EXEC: u32 = iowr(SUBCODE_MAGIC, UCMD_STATE_EXECING, size_of::<ScsiCmdExec>());
/// SCST_USER_ON_FREE_CMD.
pub const SCST_USER_ON_FREE_CMD: u32 = ior(SUBCODE_MAGIC, UCMD_STATE_ON_FREEING, size_of::<ScsiOnFreeCmd>());
/// SCST_USER_ON_CACHED_MEM_FREE.
pub const SCST_USER_ON_CACHED_MEM_FREE: u32 = ior(
    SUBCODE_MAGIC,
    UCMD_STATE_ON_CACHE_FREEING,
    size_of::<OnCachedMemFree>(),
);
/// SCST_USER_EXT_COPY_REMAP.
pub const SCST_USER_EXT_COPY_REMAP: u32 = iowr(
    SUBCODE_MAGIC,
    UCMD_STATE_EXT_COPY_REMAPPING,
    size_of::<ExtCopyRemap>(),
);
/// SCST_USER_TASK_MGMT_RECEIVED.
pub const SCST_USER_TASK_MGMT_RECEIVED: u32 =
    iowr(SUBCODE_MAGIC, UCMD_STATE_TM_RECEIVED_EXECING, size_of::<Tm>());
/// SCST_USER_TASK_MGMT_DONE.
pub const SCST_USER_TASK_MGMT_DONE: u32 = iowr(SUBCODE_MAGIC, UCMD_STATE_TM_DONE_EXECING, size_of::<Tm>());

const_assert_eq!(SCST_USER_ATTACH_SESS, 0x8218_7320);
const_assert_eq!(SCST_USER_DETACH_SESS, 0x8218_7321);
const_assert_eq!(SCST_USER_PARSE, 0xC050_7301);
const_assert_eq!(SCST_USER_ALLOC_MEM, 0xC028_7302);
const_assert_eq!(SCST_USER_EXEC, 0xC068_7303);
const_assert_eq!(SCST_USER_ON_FREE_CMD, 0x8010_7304);
const_assert_eq!(SCST_USER_ON_CACHED_MEM_FREE, 0x8008_7305);
const_assert_eq!(SCST_USER_EXT_COPY_REMAP, 0xC030_7306);
const_assert_eq!(SCST_USER_TASK_MGMT_RECEIVED, 0xC018_7308);
const_assert_eq!(SCST_USER_TASK_MGMT_DONE, 0xC018_7309);

/// `_IOC_NR` of a subcode: the kernel's ucmd state it belongs to (spec §1.3, §3.4).
pub const fn subcode_state(subcode: u32) -> u8 {
    (subcode & 0xff) as u8
}

/// Internal ucmd states (`scst_user.h:69-81`); only some are ever sent as subcodes.
pub const UCMD_STATE_NEW: u8 = 0;
/// PARSE.
pub const UCMD_STATE_PARSING: u8 = 1;
/// ALLOC_MEM.
pub const UCMD_STATE_BUF_ALLOCING: u8 = 2;
/// EXEC.
pub const UCMD_STATE_EXECING: u8 = 3;
/// ON_FREE_CMD.
pub const UCMD_STATE_ON_FREEING: u8 = 4;
/// ON_CACHED_MEM_FREE.
pub const UCMD_STATE_ON_CACHE_FREEING: u8 = 5;
/// EXT_COPY_REMAP.
pub const UCMD_STATE_EXT_COPY_REMAPPING: u8 = 6;
/// Internal: ON_FREE skipped (never sent).
pub const UCMD_STATE_ON_FREE_SKIPPED: u8 = 7;
/// TASK_MGMT_RECEIVED.
pub const UCMD_STATE_TM_RECEIVED_EXECING: u8 = 8;
/// TASK_MGMT_DONE.
pub const UCMD_STATE_TM_DONE_EXECING: u8 = 9;
/// ATTACH_SESS.
pub const UCMD_STATE_ATTACH_SESS: u8 = 0x20;
/// DETACH_SESS.
pub const UCMD_STATE_DETACH_SESS: u8 = 0x21;

/// Bytes the kernel writes into a `scst_user_get_cmd` for a subcode: header plus that payload
/// only (`user_cmd_payload_len`, spec §2.3). The rest of the caller's buffer keeps stale bytes.
pub const fn payload_len(subcode: u32) -> Option<usize> {
    Some(match subcode {
        SCST_USER_ATTACH_SESS | SCST_USER_DETACH_SESS => 544,
        SCST_USER_PARSE => 88,
        SCST_USER_ALLOC_MEM => 48,
        SCST_USER_EXEC => 112,
        SCST_USER_ON_FREE_CMD => 24,
        SCST_USER_ON_CACHED_MEM_FREE => 16,
        SCST_USER_TASK_MGMT_RECEIVED | SCST_USER_TASK_MGMT_DONE => 32,
        SCST_USER_EXT_COPY_REMAP => 56,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Constants (spec §2.6).

/// `parse_type` values.
pub mod parse_type {
    /// SCST parses; PARSE never sent.
    pub const STANDARD: u8 = 0;
    /// Every command goes through PARSE.
    pub const CALL: u8 = 1;
    /// PARSE only for commands the built-in parser does not know.
    pub const EXCEPTION: u8 = 2;
}

/// `on_free_cmd_type` values.
pub mod on_free_cmd_type {
    /// ON_FREE_CMD is sent.
    pub const CALL: u8 = 0;
    /// ON_FREE_CMD is skipped.
    pub const IGNORE: u8 = 1;
}

/// `memory_reuse_type` values.
pub mod memory_reuse_type {
    /// No buffer is cached.
    pub const NO_REUSE: u8 = 0;
    /// READ buffers are cached.
    pub const REUSE_READ: u8 = 1;
    /// WRITE buffers are cached.
    pub const REUSE_WRITE: u8 = 2;
    /// All buffers are cached (BIDI included).
    pub const REUSE_ALL: u8 = 3;
}

/// `partial_transfers_type` values (stored by the kernel, never acted on, spec §2.6).
pub mod partial_transfers_type {
    /// Not supported.
    pub const NOT_SUPPORTED: u8 = 0;
    /// Supported, ordered.
    pub const SUPPORTED_ORDERED: u8 = 1;
    /// Supported.
    pub const SUPPORTED: u8 = 2;
}

/// SCST data direction (`scst_const.h:276-282`).
pub mod data_direction {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Data out (initiator to target).
    pub const WRITE: u8 = 1;
    /// Data in (target to initiator).
    pub const READ: u8 = 2;
    /// Both.
    pub const BIDI: u8 = 3;
    /// No data.
    pub const NONE: u8 = 4;
}

/// SCST queue types (`scst_const.h:211-215`).
pub mod queue_type {
    /// Untagged.
    pub const UNTAGGED: u8 = 0;
    /// Simple.
    pub const SIMPLE: u8 = 1;
    /// Ordered.
    pub const ORDERED: u8 = 2;
    /// Head of queue.
    pub const HEAD_OF_QUEUE: u8 = 3;
    /// ACA.
    pub const ACA: u8 = 4;
}

/// Task management functions (`scst_const.h:125-181`). Handlers tolerate all of 0..=11.
pub mod tm_fn {
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = 0;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = 1;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = 2;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = 3;
    /// LOGICAL UNIT RESET.
    pub const LUN_RESET: u32 = 4;
    /// TARGET RESET.
    pub const TARGET_RESET: u32 = 5;
    /// I_T nexus loss for one session.
    pub const NEXUS_LOSS_SESS: u32 = 6;
    /// Abort all tasks of one session.
    pub const ABORT_ALL_TASKS_SESS: u32 = 7;
    /// I_T nexus loss.
    pub const NEXUS_LOSS: u32 = 8;
    /// Abort all tasks.
    pub const ABORT_ALL_TASKS: u32 = 9;
    /// Internal: session unregistration.
    pub const UNREG_SESS_TM: u32 = 10;
    /// Internal: PR preempt-and-abort.
    pub const PR_ABORT_ALL: u32 = 11;
}

/// Task management results (`scst_const.h:186-194`).
pub mod tm_result {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Task does not exist (the kernel turns it into SUCCESS on TM_DONE).
    pub const TASK_NOT_EXIST: i32 = -1;
    /// LUN does not exist.
    pub const LUN_NOT_EXIST: i32 = -2;
    /// Function not supported.
    pub const FN_NOT_SUPPORTED: i32 = -5;
    /// Rejected.
    pub const REJECTED: i32 = -255;
    /// Failed; what the kernel sets when it unjams a TM_DONE on close (spec §5.3).
    pub const FAILED: i32 = -129;
}

/// `delivery_status` of ON_FREE_CMD; the kernel stores the signed value into a u8 (spec §2.6).
pub mod delivery_status {
    /// Delivered.
    pub const SUCCESS: u8 = 0;
    /// Delivery failed (-1).
    pub const FAILED: u8 = 0xff;
    /// Aborted (-2).
    pub const ABORTED: u8 = 0xfe;
}

/// SAM status codes (`scst_const.h:478-488`).
pub mod sam_status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: u8 = 0x30;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// `enum scst_cdb_flags` (`scst_const.h:224-270`), carried in `op_flags`.
pub mod op_flags {
    /// SCST_SMALL_TIMEOUT.
    pub const SMALL_TIMEOUT: u32 = 0x1;
    /// SCST_LONG_TIMEOUT.
    pub const LONG_TIMEOUT: u32 = 0x2;
    /// SCST_TRANSFER_LEN_TYPE_FIXED.
    pub const TRANSFER_LEN_TYPE_FIXED: u32 = 0x4;
    /// SCST_UNKNOWN_LBA.
    pub const UNKNOWN_LBA: u32 = 0x8;
    /// SCST_UNKNOWN_LENGTH.
    pub const UNKNOWN_LENGTH: u32 = 0x10;
    /// SCST_INFO_VALID: a PARSE reply must set it (spec §3.4).
    pub const INFO_VALID: u32 = 0x20;
    /// SCST_LBA_NOT_VALID.
    pub const LBA_NOT_VALID: u32 = 0x40;
    /// SCST_IMPLICIT_HQ.
    pub const IMPLICIT_HQ: u32 = 0x80;
    /// SCST_SKIP_UA.
    pub const SKIP_UA: u32 = 0x100;
    /// SCST_WRITE_MEDIUM.
    pub const WRITE_MEDIUM: u32 = 0x200;
    /// SCST_LOCAL_CMD.
    pub const LOCAL_CMD: u32 = 0x400;
    /// SCST_FULLY_LOCAL_CMD.
    pub const FULLY_LOCAL_CMD: u32 = 0x800;
    /// SCST_REG_RESERVE_ALLOWED.
    pub const REG_RESERVE_ALLOWED: u32 = 0x1000;
    /// SCST_WRITE_EXCL_ALLOWED.
    pub const WRITE_EXCL_ALLOWED: u32 = 0x2000;
    /// SCST_EXCL_ACCESS_ALLOWED.
    pub const EXCL_ACCESS_ALLOWED: u32 = 0x4000;
    /// SCST_SERIALIZED.
    pub const SERIALIZED: u32 = 0x10000;
    /// SCST_STRICTLY_SERIALIZED.
    pub const STRICTLY_SERIALIZED: u32 = 0x30000;
    /// SCST_CAN_GEN_3PARTY_COMMANDS.
    pub const CAN_GEN_3PARTY_COMMANDS: u32 = 0x40000;
    /// SCST_DESCRIPTORS_BASED.
    pub const DESCRIPTORS_BASED: u32 = 0x80000;
    /// SCST_SCSI_ATOMIC.
    pub const SCSI_ATOMIC: u32 = 0x100000;
}

/// EXEC reply types (`scst_user.h:287-289`).
pub mod exec_reply_type {
    /// Completed in the background: the kernel answers GOOD now, a second reply follows.
    pub const BACKGROUND: u8 = 0;
    /// Completed.
    pub const COMPLETED: u8 = 1;
    /// WRITE SAME remapped to the core.
    pub const DO_WRITE_SAME: u8 = 2;
}

/// SCSI peripheral device type of a direct-access block device.
pub const TYPE_DISK: u8 = 0x00;

// ---------------------------------------------------------------------------------------------
// Structures.

/// `struct scst_user_opt` (spec §2.1): size 20, align 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Opt {
    /// See [`parse_type`].
    pub parse_type: u8,
    /// See [`on_free_cmd_type`].
    pub on_free_cmd_type: u8,
    /// See [`memory_reuse_type`].
    pub memory_reuse_type: u8,
    /// See [`partial_transfers_type`].
    pub partial_transfers_type: u8,
    /// Partial transfer length (never acted on by the kernel).
    pub partial_len: i32,
    /// Task set type: 0 single, 1 separate.
    pub tst: u8,
    /// TMF_ONLY.
    pub tmf_only: u8,
    /// Queue algorithm modifier: 0 restricted, 1 unrestricted.
    pub queue_alg: u8,
    /// QERR: 0, 1 or 3 (2 is reserved and rejected).
    pub qerr: u8,
    /// TAS.
    pub tas: u8,
    /// SWP.
    pub swp: u8,
    /// D_SENSE: 0 fixed, 1 descriptor sense.
    pub d_sense: u8,
    /// Handler does its own command ordering.
    pub has_own_order_mgmt: u8,
    /// EXT_COPY_REMAP supported.
    pub ext_copy_remap_supported: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// `struct scst_user_dev_desc` (spec §2.2): size 160, align 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DevDesc {
    /// User address of the NUL-terminated version string (≥91 readable bytes, spec §1.4).
    pub version_str: u64,
    /// User address of the NUL-terminated license string.
    pub license_str: u64,
    /// SCSI peripheral device type.
    pub type_: u8,
    /// Share the SGV pool with devices of the same pool name.
    pub sgv_shared: u8,
    /// Do not create the clustered SGV pool.
    pub sgv_disable_clustered_pool: u8,
    /// Padding.
    pub _pad0: u8,
    /// Single size-class mode: pages of the one class (0 = power-of-two classes).
    pub sgv_single_alloc_pages: i32,
    /// SGV purge interval in seconds (0 = 60 s, <0 = never).
    pub sgv_purge_interval: i32,
    /// Options.
    pub opt: Opt,
    /// Logical block size.
    pub block_size: u32,
    /// Forward PERSISTENT RESERVE OUT after success.
    pub enable_pr_cmds_notifications: u8,
    /// Device name, NUL-terminated (truncated to 48 characters by the kernel, spec §8.8).
    pub name: [u8; SCST_MAX_NAME],
    /// SGV pool name (empty = device name).
    pub sgv_name: [u8; SCST_MAX_NAME],
    /// Padding.
    pub _pad1: [u8; 7],
}

/// `struct scst_user_sess` (spec §2.3): ATTACH_SESS / DETACH_SESS payload, size 536.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Sess {
    /// Opaque, non-zero session handle.
    pub sess_h: u64,
    /// LUN.
    pub lun: u64,
    /// Threads of the session.
    pub threads_num: u16,
    /// Read-only LUN.
    pub rd_only: u8,
    /// Padding.
    pub _pad: u8,
    /// SCSI transport version descriptor.
    pub scsi_transport_version: u16,
    /// Physical transport version descriptor.
    pub phys_transport_version: u16,
    /// Initiator name, NUL-terminated.
    pub initiator_name: [u8; SCST_MAX_EXTERNAL_NAME],
    /// Target name, NUL-terminated.
    pub target_name: [u8; SCST_MAX_EXTERNAL_NAME],
}

/// `struct scst_user_scsi_cmd_parse` (spec §2.3): size 80.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ScsiCmdParse {
    /// Session handle.
    pub sess_h: u64,
    /// First 16 CDB bytes.
    pub cdb: [u8; SCST_MAX_CDB_SIZE],
    /// Full CDB length.
    pub cdb_len: u16,
    /// Padding.
    pub _pad0: [u8; 6],
    /// LBA as SCST parsed it.
    pub lba: i64,
    /// Data length in bytes.
    pub data_len: i64,
    /// Buffer length.
    pub bufflen: i32,
    /// BIDI out buffer length.
    pub out_bufflen: i32,
    /// Timeout in seconds.
    pub timeout: i32,
    /// [`op_flags`].
    pub op_flags: u32,
    /// [`queue_type`].
    pub queue_type: u8,
    /// [`data_direction`].
    pub data_direction: u8,
    /// The expected_* fields are valid.
    pub expected_values_set: u8,
    /// Initiator's expected direction.
    pub expected_data_direction: u8,
    /// Initiator's expected transfer length.
    pub expected_transfer_len: i32,
    /// Initiator's expected out transfer length.
    pub expected_out_transfer_len: i32,
    /// Command SN.
    pub sn: u32,
}

/// `struct scst_user_scsi_cmd_alloc_mem` (spec §2.3): size 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ScsiCmdAllocMem {
    /// Session handle.
    pub sess_h: u64,
    /// First 16 CDB bytes.
    pub cdb: [u8; SCST_MAX_CDB_SIZE],
    /// Full CDB length.
    pub cdb_len: u16,
    /// Padding.
    pub _pad0: [u8; 2],
    /// Bytes to allocate (a whole size class when cached).
    pub alloc_len: i32,
    /// [`queue_type`].
    pub queue_type: u8,
    /// [`data_direction`].
    pub data_direction: u8,
    /// Padding.
    pub _pad1: [u8; 2],
    /// Command SN.
    pub sn: u32,
}

/// `struct scst_user_scsi_cmd_exec` (spec §2.3): size 104.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ScsiCmdExec {
    /// Session handle.
    pub sess_h: u64,
    /// First 16 CDB bytes.
    pub cdb: [u8; SCST_MAX_CDB_SIZE],
    /// Full CDB length.
    pub cdb_len: u16,
    /// Padding.
    pub _pad0: [u8; 6],
    /// LBA.
    pub lba: i64,
    /// Data length in bytes.
    pub data_len: i64,
    /// Buffer length.
    pub bufflen: i32,
    /// Set only when `pbuf` is 0 and the direction is not NONE; else stale (spec §3.5).
    pub alloc_len: i32,
    /// Current buffer, 0 if none yet.
    pub pbuf: u64,
    /// [`queue_type`].
    pub queue_type: u8,
    /// [`data_direction`].
    pub data_direction: u8,
    /// Always 0 (spec §2.6).
    pub partial: u8,
    /// Padding.
    pub _pad1: u8,
    /// Timeout in seconds.
    pub timeout: i32,
    /// BIDI out buffer (pbuf + sg_cnt pages).
    pub p_out_buf: u64,
    /// BIDI out buffer length.
    pub out_bufflen: i32,
    /// Command SN.
    pub sn: u32,
    /// Never filled by the kernel.
    pub parent_cmd_h: u32,
    /// Never filled by the kernel.
    pub parent_cmd_data_len: i32,
    /// Never filled by the kernel.
    pub partial_offset: u32,
    /// Padding.
    pub _pad2: [u8; 4],
}

/// `struct scst_user_scsi_on_free_cmd` (spec §2.3): size 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ScsiOnFreeCmd {
    /// The command's buffer.
    pub pbuf: u64,
    /// Response data length.
    pub resp_data_len: i32,
    /// The buffer went back to the SGV cache (do not free it now).
    pub buffer_cached: u8,
    /// The kernel aborted the command itself.
    pub aborted: u8,
    /// Final SAM status.
    pub status: u8,
    /// [`delivery_status`].
    pub delivery_status: u8,
}

/// `struct scst_user_on_cached_mem_free` (spec §2.3): size 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OnCachedMemFree {
    /// The evicted buffer.
    pub pbuf: u64,
}

/// `struct scst_user_tm` (spec §2.3): size 24.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Tm {
    /// Session handle.
    pub sess_h: u64,
    /// Function, see [`tm_fn`] (the C field is `fn`).
    pub fn_: u32,
    /// Handle of the command to abort (0 is ambiguous, spec §8.4).
    pub cmd_h_to_abort: u32,
    /// Command SN bound.
    pub cmd_sn: u32,
    /// `cmd_sn` is valid.
    pub cmd_sn_set: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// `struct scst_user_ext_copy_data_descr` (spec §2.3): size 24 (tail padding!).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtCopyDataDescr {
    /// Source LBA.
    pub src_lba: u64,
    /// Destination LBA.
    pub dst_lba: u64,
    /// Length in bytes.
    pub data_len: i32,
    /// Padding.
    pub _pad: [u8; 4],
}

/// `struct scst_user_ext_copy_remap` (spec §2.3): size 48.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtCopyRemap {
    /// Session handle.
    pub sess_h: u64,
    /// Source session.
    pub src_sess_h: u64,
    /// Destination session.
    pub dst_sess_h: u64,
    /// The segment.
    pub data_descr: ExtCopyDataDescr,
}

/// Size of the payload union of `scst_user_get_cmd`.
pub const GET_CMD_PAYLOAD_SIZE: usize = 536;

/// `struct scst_user_get_cmd` (spec §2.3): size 544. `payload` is the kernel's union; its first
/// eight bytes double as `preply` (pitfall §8.1: every delivered payload overwrites it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetCmd {
    /// Command handle.
    pub cmd_h: u32,
    /// Subcode, see [`payload_len`].
    pub subcode: u32,
    /// The union: `preply` or one of the payload structs.
    pub payload: [u64; GET_CMD_PAYLOAD_SIZE / 8],
}

impl GetCmd {
    /// An all-zero command buffer.
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }

    /// `preply`: the reply the kernel reads before fetching (0 = none).
    pub fn preply(&self) -> u64 {
        self.payload[0]
    }

    /// Set `preply`; must be done before every REPLY_AND_GET_CMD (spec §3.2.3).
    pub fn set_preply(&mut self, preply: u64) {
        self.payload[0] = preply;
    }

    /// Read payload view `T` (a copy) from the union.
    pub fn read_payload<T: FromBytes>(&self) -> T {
        match T::read_from_prefix(self.payload.as_bytes()) {
            Ok((value, _)) => value,
            // Every payload type is smaller than the union; asserted below for each of them.
            Err(_) => unreachable!("payload type larger than the get_cmd union"),
        }
    }

    /// Write payload view `T` into the union.
    pub fn write_payload<T: IntoBytes + Immutable>(&mut self, value: &T) {
        let bytes = value.as_bytes();
        self.payload.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
    }
}

/// Size of the payload union of `scst_user_reply_cmd`.
pub const REPLY_PAYLOAD_SIZE: usize = 48;

/// `struct scst_user_reply_cmd` (spec §2.4): size 56. The kernel always copies all 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReplyCmd {
    /// Handle of the command replied to.
    pub cmd_h: u32,
    /// Subcode of the message replied to.
    pub subcode: u32,
    /// The union: `result` or one of the reply structs.
    pub payload: [u64; REPLY_PAYLOAD_SIZE / 8],
}

impl ReplyCmd {
    /// A reply with a zeroed payload.
    pub fn new(cmd_h: u32, subcode: u32) -> Self {
        Self {
            cmd_h,
            subcode,
            payload: [0; REPLY_PAYLOAD_SIZE / 8],
        }
    }

    /// A reply carrying `result` (ATTACH_SESS, TM_DONE...).
    pub fn with_result(cmd_h: u32, subcode: u32, result: i32) -> Self {
        let mut reply = Self::new(cmd_h, subcode);
        reply.set_result(result);
        reply
    }

    /// A reply carrying payload view `T`.
    pub fn with_payload<T: IntoBytes + Immutable>(cmd_h: u32, subcode: u32, value: &T) -> Self {
        let mut reply = Self::new(cmd_h, subcode);
        reply.write_payload(value);
        reply
    }

    /// `result` (offset 8).
    pub fn result(&self) -> i32 {
        self.read_payload::<i32>()
    }

    /// Set `result`.
    pub fn set_result(&mut self, result: i32) {
        self.write_payload(&result);
    }

    /// Read payload view `T` (a copy) from the union.
    pub fn read_payload<T: FromBytes>(&self) -> T {
        match T::read_from_prefix(self.payload.as_bytes()) {
            Ok((value, _)) => value,
            Err(_) => unreachable!("reply type larger than the reply union"),
        }
    }

    /// Write payload view `T` into the union.
    pub fn write_payload<T: IntoBytes + Immutable>(&mut self, value: &T) {
        let bytes = value.as_bytes();
        self.payload.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
    }
}

/// `struct scst_user_scsi_cmd_reply_parse`, success arm (spec §2.4): size 48, inner union at 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ParseReply {
    /// 0 = parsed; otherwise a SAM status (use [`ParseReplySense`]).
    pub status: u8,
    /// Padding up to the inner union.
    pub _pad0: [u8; 7],
    /// [`queue_type`] (≤4).
    pub queue_type: u8,
    /// [`data_direction`] (1..=4).
    pub data_direction: u8,
    /// CDB length (0 = keep, ≤ original).
    pub cdb_len: u16,
    /// Padding.
    pub _pad1: [u8; 4],
    /// LBA (≥0).
    pub lba: i64,
    /// Data length (≥0).
    pub data_len: i64,
    /// Buffer length (≥0, ≠0 unless NONE).
    pub bufflen: i32,
    /// Must include INFO_VALID.
    pub op_flags: u32,
    /// BIDI out buffer length (≥0).
    pub out_bufflen: i32,
    /// Padding.
    pub _pad2: [u8; 4],
}

/// `struct scst_user_scsi_cmd_reply_parse`, error arm: status ≠ 0 with sense.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ParseReplySense {
    /// SAM status.
    pub status: u8,
    /// Padding up to the inner union.
    pub _pad0: [u8; 7],
    /// Sense length (≤252 honoured).
    pub sense_len: u8,
    /// Padding.
    pub _pad1: [u8; 7],
    /// User address of the sense bytes.
    pub psense_buffer: u64,
    /// Rest of the union.
    pub _pad2: [u8; 24],
}

/// `struct scst_user_scsi_cmd_reply_alloc_mem` (spec §2.4): size 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AllocMemReply {
    /// The buffer (0 → BUSY).
    pub pbuf: u64,
}

/// `struct scst_user_scsi_cmd_reply_exec`, sense arm (spec §2.4): size 40, inner union at 24.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExecReply {
    /// Response data length (≤ bufflen; 0 unless direction is READ).
    pub resp_data_len: i32,
    /// Padding.
    pub _pad0: [u8; 4],
    /// Buffer, when the EXEC arrived with pbuf 0.
    pub pbuf: u64,
    /// See [`exec_reply_type`].
    pub reply_type: u8,
    /// SAM status.
    pub status: u8,
    /// Padding up to the inner union.
    pub _pad1: [u8; 6],
    /// Sense length.
    pub sense_len: u8,
    /// Padding.
    pub _pad2: [u8; 7],
    /// User address of the sense bytes.
    pub psense_buffer: u64,
}

/// `struct scst_user_scsi_cmd_reply_exec`, DO_WRITE_SAME arm: size 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExecReplyWriteSame {
    /// Response data length.
    pub resp_data_len: i32,
    /// Padding.
    pub _pad0: [u8; 4],
    /// Buffer.
    pub pbuf: u64,
    /// [`exec_reply_type::DO_WRITE_SAME`].
    pub reply_type: u8,
    /// SAM status (must be 0).
    pub status: u8,
    /// Padding up to the inner union.
    pub _pad1: [u8; 6],
    /// Descriptor array length in bytes (multiple of 16, ≤4096; 0 = whole range).
    pub ws_descriptors_len: u16,
    /// Padding.
    pub _pad2: [u8; 6],
    /// User address of [`DataDescriptor`]s, terminated by one with `usdd_blocks == 0`.
    pub ws_descriptors: u64,
}

/// `struct scst_user_data_descriptor` (spec §2.4): size 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DataDescriptor {
    /// LBA.
    pub usdd_lba: u64,
    /// Blocks (0 terminates the array).
    pub usdd_blocks: u64,
}

/// `struct scst_user_ext_copy_reply_remap` (spec §2.4): size 24.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtCopyReplyRemap {
    /// User address of leftover [`ExtCopyDataDescr`]s.
    pub remap_descriptors: u64,
    /// Length of that array in bytes (multiple of 24, ≤4096).
    pub remap_descriptors_len: u16,
    /// SAM status.
    pub status: u8,
    /// Sense length.
    pub sense_len: u8,
    /// Padding.
    pub _pad: [u8; 4],
    /// User address of the sense bytes.
    pub psense_buffer: u64,
}

/// `struct scst_user_get_ext_cdb` (spec §2.5): size 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetExtCdb {
    /// Command handle.
    pub cmd_h: u32,
    /// Padding.
    pub _pad: u32,
    /// User address receiving CDB bytes 16..cdb_len.
    pub ext_cdb_buffer: u64,
}

/// `union scst_user_prealloc_buffer` (spec §2.5): size 16; `in` on entry, `out.cmd_h`
/// overwrites the low four bytes of `in.pbuf` on return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PreallocBuffer {
    /// In: page-aligned buffer. Out: low 4 bytes hold the owner `cmd_h`.
    pub pbuf: u64,
    /// In: length in bytes.
    pub bufflen: u32,
    /// In: put it into the clustered pool.
    pub for_clust_pool: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

impl PreallocBuffer {
    /// `out.cmd_h` after a successful PREALLOC_BUFFER.
    pub fn out_cmd_h(&self) -> u32 {
        self.pbuf as u32
    }
}

/// Header of `struct scst_user_get_multi` (spec §2.5): size 16; `cmds[]` follow at stride 544.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetMultiHeader {
    /// User address of `replies_cnt` replies.
    pub preplies: u64,
    /// Replies to process.
    pub replies_cnt: i16,
    /// Out: replies processed (the failing index on error, spec §3.3).
    pub replies_done: i16,
    /// In: room for commands; out: commands delivered.
    pub cmds_cnt: i16,
    /// Padding.
    pub _pad: i16,
}

/// The whole REPLY_AND_GET_MULTI argument: a [`GetMultiHeader`] followed by `cmds[]` at
/// stride 544, in one contiguous 8-byte-aligned allocation, exactly as the kernel reads and
/// writes it (spec §2.5).
#[derive(Debug, Clone)]
pub struct MultiBuffer {
    words: Vec<u64>,
    capacity: usize,
}

impl MultiBuffer {
    /// A zeroed buffer with room for `capacity` commands (at most `i16::MAX`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(i16::MAX as usize);
        let bytes = size_of::<GetMultiHeader>() + capacity * size_of::<GetCmd>();
        Self {
            words: vec![0; bytes / 8],
            capacity,
        }
    }

    /// A buffer with no room at all, allocating nothing: a placeholder while the real one is
    /// lent out (the worker reads its commands in place instead of copying each 544 bytes).
    /// Its header reads as all zero; it must not be passed to the kernel or written to.
    pub fn empty() -> Self {
        Self {
            words: Vec::new(),
            capacity: 0,
        }
    }

    /// Command slots in this buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The header (a copy).
    pub fn header(&self) -> GetMultiHeader {
        match GetMultiHeader::read_from_prefix(self.words.as_bytes()) {
            Ok((header, _)) => header,
            // Only [`MultiBuffer::empty`] has no header.
            Err(_) => <GetMultiHeader as zerocopy::FromZeros>::new_zeroed(),
        }
    }

    /// Replace the header.
    pub fn set_header(&mut self, header: GetMultiHeader) {
        self.words.as_mut_bytes()[..size_of::<GetMultiHeader>()].copy_from_slice(header.as_bytes());
    }

    fn cmd_range(&self, index: usize) -> std::ops::Range<usize> {
        assert!(
            index < self.capacity,
            "command slot {index} out of {}",
            self.capacity
        );
        let start = size_of::<GetMultiHeader>() + index * size_of::<GetCmd>();
        start..start + size_of::<GetCmd>()
    }

    /// Command slot `index`.
    ///
    /// # Panics
    /// If `index >= capacity()`.
    pub fn cmd(&self, index: usize) -> &GetCmd {
        let range = self.cmd_range(index);
        match GetCmd::ref_from_bytes(&self.words.as_bytes()[range]) {
            Ok(cmd) => cmd,
            // The slot is 544 bytes at an 8-aligned offset of a u64 allocation.
            Err(_) => unreachable!("command slot misaligned"),
        }
    }

    /// Command slot `index`, mutable.
    ///
    /// # Panics
    /// If `index >= capacity()`.
    pub fn cmd_mut(&mut self, index: usize) -> &mut GetCmd {
        let range = self.cmd_range(index);
        match GetCmd::mut_from_bytes(&mut self.words.as_mut_bytes()[range]) {
            Ok(cmd) => cmd,
            Err(_) => unreachable!("command slot misaligned"),
        }
    }

    /// The raw argument, as passed to the ioctl.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    /// The raw bytes (header and all slots).
    pub fn as_bytes(&self) -> &[u8] {
        self.words.as_bytes()
    }
}

// Compile-time layout checks against spec §2 (sizes, then every listed field offset).
const_assert_eq!(size_of::<Opt>(), 20);
const_assert_eq!(std::mem::align_of::<Opt>(), 4);
const_assert_eq!(offset_of!(Opt, partial_len), 4);
const_assert_eq!(offset_of!(Opt, tst), 8);
const_assert_eq!(offset_of!(Opt, tmf_only), 9);
const_assert_eq!(offset_of!(Opt, queue_alg), 10);
const_assert_eq!(offset_of!(Opt, qerr), 11);
const_assert_eq!(offset_of!(Opt, tas), 12);
const_assert_eq!(offset_of!(Opt, swp), 13);
const_assert_eq!(offset_of!(Opt, d_sense), 14);
const_assert_eq!(offset_of!(Opt, has_own_order_mgmt), 15);
const_assert_eq!(offset_of!(Opt, ext_copy_remap_supported), 16);

const_assert_eq!(size_of::<DevDesc>(), 160);
const_assert_eq!(std::mem::align_of::<DevDesc>(), 8);
const_assert_eq!(offset_of!(DevDesc, license_str), 8);
const_assert_eq!(offset_of!(DevDesc, type_), 16);
const_assert_eq!(offset_of!(DevDesc, sgv_shared), 17);
const_assert_eq!(offset_of!(DevDesc, sgv_disable_clustered_pool), 18);
const_assert_eq!(offset_of!(DevDesc, sgv_single_alloc_pages), 20);
const_assert_eq!(offset_of!(DevDesc, sgv_purge_interval), 24);
const_assert_eq!(offset_of!(DevDesc, opt), 28);
const_assert_eq!(offset_of!(DevDesc, block_size), 48);
const_assert_eq!(offset_of!(DevDesc, enable_pr_cmds_notifications), 52);
const_assert_eq!(offset_of!(DevDesc, name), 53);
const_assert_eq!(offset_of!(DevDesc, sgv_name), 103);

const_assert_eq!(size_of::<GetCmd>(), 544);
const_assert_eq!(std::mem::align_of::<GetCmd>(), 8);
const_assert_eq!(offset_of!(GetCmd, subcode), 4);
const_assert_eq!(offset_of!(GetCmd, payload), 8);

const_assert_eq!(size_of::<Sess>(), 536);
const_assert_eq!(offset_of!(Sess, lun), 8);
const_assert_eq!(offset_of!(Sess, threads_num), 16);
const_assert_eq!(offset_of!(Sess, rd_only), 18);
const_assert_eq!(offset_of!(Sess, scsi_transport_version), 20);
const_assert_eq!(offset_of!(Sess, phys_transport_version), 22);
const_assert_eq!(offset_of!(Sess, initiator_name), 24);
const_assert_eq!(offset_of!(Sess, target_name), 280);

const_assert_eq!(size_of::<ScsiCmdParse>(), 80);
const_assert_eq!(offset_of!(ScsiCmdParse, cdb), 8);
const_assert_eq!(offset_of!(ScsiCmdParse, cdb_len), 24);
const_assert_eq!(offset_of!(ScsiCmdParse, lba), 32);
const_assert_eq!(offset_of!(ScsiCmdParse, data_len), 40);
const_assert_eq!(offset_of!(ScsiCmdParse, bufflen), 48);
const_assert_eq!(offset_of!(ScsiCmdParse, out_bufflen), 52);
const_assert_eq!(offset_of!(ScsiCmdParse, timeout), 56);
const_assert_eq!(offset_of!(ScsiCmdParse, op_flags), 60);
const_assert_eq!(offset_of!(ScsiCmdParse, queue_type), 64);
const_assert_eq!(offset_of!(ScsiCmdParse, data_direction), 65);
const_assert_eq!(offset_of!(ScsiCmdParse, expected_values_set), 66);
const_assert_eq!(offset_of!(ScsiCmdParse, expected_data_direction), 67);
const_assert_eq!(offset_of!(ScsiCmdParse, expected_transfer_len), 68);
const_assert_eq!(offset_of!(ScsiCmdParse, expected_out_transfer_len), 72);
const_assert_eq!(offset_of!(ScsiCmdParse, sn), 76);

const_assert_eq!(size_of::<ScsiCmdAllocMem>(), 40);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, cdb), 8);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, cdb_len), 24);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, alloc_len), 28);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, queue_type), 32);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, data_direction), 33);
const_assert_eq!(offset_of!(ScsiCmdAllocMem, sn), 36);

const_assert_eq!(size_of::<ScsiCmdExec>(), 104);
const_assert_eq!(offset_of!(ScsiCmdExec, cdb), 8);
const_assert_eq!(offset_of!(ScsiCmdExec, cdb_len), 24);
const_assert_eq!(offset_of!(ScsiCmdExec, lba), 32);
const_assert_eq!(offset_of!(ScsiCmdExec, data_len), 40);
const_assert_eq!(offset_of!(ScsiCmdExec, bufflen), 48);
const_assert_eq!(offset_of!(ScsiCmdExec, alloc_len), 52);
const_assert_eq!(offset_of!(ScsiCmdExec, pbuf), 56);
const_assert_eq!(offset_of!(ScsiCmdExec, queue_type), 64);
const_assert_eq!(offset_of!(ScsiCmdExec, data_direction), 65);
const_assert_eq!(offset_of!(ScsiCmdExec, partial), 66);
const_assert_eq!(offset_of!(ScsiCmdExec, timeout), 68);
const_assert_eq!(offset_of!(ScsiCmdExec, p_out_buf), 72);
const_assert_eq!(offset_of!(ScsiCmdExec, out_bufflen), 80);
const_assert_eq!(offset_of!(ScsiCmdExec, sn), 84);
const_assert_eq!(offset_of!(ScsiCmdExec, parent_cmd_h), 88);
const_assert_eq!(offset_of!(ScsiCmdExec, parent_cmd_data_len), 92);
const_assert_eq!(offset_of!(ScsiCmdExec, partial_offset), 96);

const_assert_eq!(size_of::<ScsiOnFreeCmd>(), 16);
const_assert_eq!(offset_of!(ScsiOnFreeCmd, resp_data_len), 8);
const_assert_eq!(offset_of!(ScsiOnFreeCmd, buffer_cached), 12);
const_assert_eq!(offset_of!(ScsiOnFreeCmd, aborted), 13);
const_assert_eq!(offset_of!(ScsiOnFreeCmd, status), 14);
const_assert_eq!(offset_of!(ScsiOnFreeCmd, delivery_status), 15);

const_assert_eq!(size_of::<OnCachedMemFree>(), 8);

const_assert_eq!(size_of::<Tm>(), 24);
const_assert_eq!(offset_of!(Tm, fn_), 8);
const_assert_eq!(offset_of!(Tm, cmd_h_to_abort), 12);
const_assert_eq!(offset_of!(Tm, cmd_sn), 16);
const_assert_eq!(offset_of!(Tm, cmd_sn_set), 20);

const_assert_eq!(size_of::<ExtCopyDataDescr>(), 24);
const_assert_eq!(offset_of!(ExtCopyDataDescr, dst_lba), 8);
const_assert_eq!(offset_of!(ExtCopyDataDescr, data_len), 16);
const_assert_eq!(size_of::<ExtCopyRemap>(), 48);
const_assert_eq!(offset_of!(ExtCopyRemap, src_sess_h), 8);
const_assert_eq!(offset_of!(ExtCopyRemap, dst_sess_h), 16);
const_assert_eq!(offset_of!(ExtCopyRemap, data_descr), 24);

const_assert_eq!(size_of::<ReplyCmd>(), 56);
const_assert_eq!(std::mem::align_of::<ReplyCmd>(), 8);
const_assert_eq!(offset_of!(ReplyCmd, subcode), 4);
const_assert_eq!(offset_of!(ReplyCmd, payload), 8);

// Reply arms: offsets inside the union; absolute = 8 + these (spec §2.4 "Absolute offsets").
const_assert_eq!(size_of::<ParseReply>(), 48);
const_assert_eq!(offset_of!(ParseReply, queue_type), 8);
const_assert_eq!(offset_of!(ParseReply, data_direction), 9);
const_assert_eq!(offset_of!(ParseReply, cdb_len), 10);
const_assert_eq!(offset_of!(ParseReply, lba), 16);
const_assert_eq!(offset_of!(ParseReply, data_len), 24);
const_assert_eq!(offset_of!(ParseReply, bufflen), 32);
const_assert_eq!(offset_of!(ParseReply, op_flags), 36);
const_assert_eq!(offset_of!(ParseReply, out_bufflen), 40);
const_assert_eq!(size_of::<ParseReplySense>(), 48);
const_assert_eq!(offset_of!(ParseReplySense, sense_len), 8);
const_assert_eq!(offset_of!(ParseReplySense, psense_buffer), 16);

const_assert_eq!(size_of::<AllocMemReply>(), 8);

const_assert_eq!(size_of::<ExecReply>(), 40);
const_assert_eq!(offset_of!(ExecReply, pbuf), 8);
const_assert_eq!(offset_of!(ExecReply, reply_type), 16);
const_assert_eq!(offset_of!(ExecReply, status), 17);
const_assert_eq!(offset_of!(ExecReply, sense_len), 24);
const_assert_eq!(offset_of!(ExecReply, psense_buffer), 32);
const_assert_eq!(size_of::<ExecReplyWriteSame>(), 40);
const_assert_eq!(offset_of!(ExecReplyWriteSame, ws_descriptors_len), 24);
const_assert_eq!(offset_of!(ExecReplyWriteSame, ws_descriptors), 32);

const_assert_eq!(size_of::<DataDescriptor>(), 16);
const_assert_eq!(offset_of!(DataDescriptor, usdd_blocks), 8);

const_assert_eq!(size_of::<ExtCopyReplyRemap>(), 24);
const_assert_eq!(offset_of!(ExtCopyReplyRemap, remap_descriptors_len), 8);
const_assert_eq!(offset_of!(ExtCopyReplyRemap, status), 10);
const_assert_eq!(offset_of!(ExtCopyReplyRemap, sense_len), 11);
const_assert_eq!(offset_of!(ExtCopyReplyRemap, psense_buffer), 16);

const_assert_eq!(size_of::<GetExtCdb>(), 16);
const_assert_eq!(offset_of!(GetExtCdb, ext_cdb_buffer), 8);
const_assert_eq!(size_of::<PreallocBuffer>(), 16);
const_assert_eq!(offset_of!(PreallocBuffer, bufflen), 8);
const_assert_eq!(offset_of!(PreallocBuffer, for_clust_pool), 12);
const_assert_eq!(size_of::<GetMultiHeader>(), 16);
const_assert_eq!(offset_of!(GetMultiHeader, replies_cnt), 8);
const_assert_eq!(offset_of!(GetMultiHeader, replies_done), 10);
const_assert_eq!(offset_of!(GetMultiHeader, cmds_cnt), 12);

// Every union arm fits its union.
const_assert_eq!(size_of::<Sess>(), GET_CMD_PAYLOAD_SIZE);
static_assertions::const_assert!(size_of::<ScsiCmdExec>() <= GET_CMD_PAYLOAD_SIZE);
static_assertions::const_assert!(size_of::<ParseReply>() <= REPLY_PAYLOAD_SIZE);
static_assertions::const_assert!(size_of::<ExecReply>() <= REPLY_PAYLOAD_SIZE);

/// Copy `s` into a fixed, NUL-terminated C name buffer, truncating to leave room for the NUL.
pub fn fill_c_name<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N.saturating_sub(1));
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// The text of a NUL-terminated C name buffer (lossy UTF-8).
pub fn c_name(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lengths_match_header_plus_payload() {
        assert_eq!(payload_len(SCST_USER_EXEC), Some(8 + size_of::<ScsiCmdExec>()));
        assert_eq!(payload_len(SCST_USER_PARSE), Some(8 + size_of::<ScsiCmdParse>()));
        assert_eq!(
            payload_len(SCST_USER_ALLOC_MEM),
            Some(8 + size_of::<ScsiCmdAllocMem>())
        );
        assert_eq!(
            payload_len(SCST_USER_ON_FREE_CMD),
            Some(8 + size_of::<ScsiOnFreeCmd>())
        );
        assert_eq!(
            payload_len(SCST_USER_ON_CACHED_MEM_FREE),
            Some(8 + size_of::<OnCachedMemFree>())
        );
        assert_eq!(payload_len(SCST_USER_TASK_MGMT_DONE), Some(8 + size_of::<Tm>()));
        assert_eq!(
            payload_len(SCST_USER_EXT_COPY_REMAP),
            Some(8 + size_of::<ExtCopyRemap>())
        );
        assert_eq!(payload_len(SCST_USER_ATTACH_SESS), Some(544));
        assert_eq!(payload_len(0x1234), None);
    }

    #[test]
    fn preply_aliases_the_payload() {
        let mut cmd = GetCmd::zeroed();
        cmd.set_preply(0xdead_beef_0000);
        let exec: ScsiCmdExec = cmd.read_payload();
        assert_eq!(exec.sess_h, 0xdead_beef_0000, "preply and sess_h share offset 8");
    }

    #[test]
    fn exec_reply_bytes_sit_at_the_absolute_offsets() {
        let reply = ReplyCmd::with_payload(
            7,
            SCST_USER_EXEC,
            &ExecReply {
                resp_data_len: 0x1122,
                pbuf: 0x1000,
                reply_type: exec_reply_type::COMPLETED,
                status: sam_status::CHECK_CONDITION,
                sense_len: 18,
                psense_buffer: 0x2000,
                ..Default::default()
            },
        );
        let bytes = reply.as_bytes();
        assert_eq!(&bytes[8..12], &0x1122i32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x1000u64.to_le_bytes());
        assert_eq!(bytes[24], exec_reply_type::COMPLETED);
        assert_eq!(bytes[25], sam_status::CHECK_CONDITION);
        assert_eq!(bytes[32], 18);
        assert_eq!(&bytes[40..48], &0x2000u64.to_le_bytes());
    }

    #[test]
    fn subcode_state_is_the_ioc_nr() {
        assert_eq!(subcode_state(SCST_USER_EXEC), UCMD_STATE_EXECING);
        assert_eq!(subcode_state(SCST_USER_ATTACH_SESS), UCMD_STATE_ATTACH_SESS);
        assert_eq!(
            subcode_state(SCST_USER_TASK_MGMT_DONE),
            UCMD_STATE_TM_DONE_EXECING
        );
    }

    #[test]
    fn names_are_nul_terminated_and_truncated() {
        let name: [u8; SCST_MAX_NAME] = fill_c_name(&"x".repeat(80));
        assert_eq!(name[SCST_MAX_NAME - 1], 0);
        assert_eq!(c_name(&name).len(), SCST_MAX_NAME - 1);
        assert_eq!(c_name(&fill_c_name::<8>("disk1")), "disk1");
    }
}
