//! SCSI block commands (SBC): the engine that turns a CDB into a response or a store plan.
//!
//! Pure and synchronous: [`Disk::start`] decodes the CDB (`cdb.rs`, driven by the one opcode
//! table in `opcodes.rs`) and either answers at once ([`Plan::Done`]: INQUIRY, MODE SENSE,
//! errors...) or says what the store must do ([`Plan::Io`]); the frontend runs the store op and
//! calls [`Disk::finish`] with its status, which answers or plans the next step (WRITE AND
//! VERIFY). Shared by all frontend workers: every method takes `&self`.
//!
//! - `caps.rs`: [`Capabilities`], the one record every advertisement is derived from;
//!   `cdb.rs`: typed CDB decoding; `opcodes.rs`: the command table, REPORT SUPPORTED OPERATION
//!   CODES; `info.rs`: what the PARSE reply needs; [`sense`]: fixed/descriptor sense;
//!   `inquiry.rs`: INQUIRY and VPD pages; `capacity.rs`: READ CAPACITY; `mode.rs`: mode pages,
//!   MODE SENSE/SELECT; `rw.rs`: store plans for READ/WRITE/VERIFY/WRITE SAME/UNMAP/SYNCHRONIZE
//!   CACHE/FORMAT UNIT and their completion.
//!
//! SCST core answers REPORT LUNS, persistent reservations and more itself (spec §6.4); those are
//! not reimplemented here.

use crate::abi::sam_status;
use crate::store::StoreOp;
use crate::store::StoreStatus;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

mod capacity;
mod caps;
mod cdb;
mod designator;
mod info;
mod inquiry;
mod mode;
mod opcodes;
pub mod ranges;
mod rw;
pub mod sense;

#[cfg(test)]
mod advertising_tests;
#[cfg(test)]
mod tests;

use cdb::Command;
use cdb::Decoded;
use cdb::Geometry;
use mode::ModePages;
use sense::Sense;
pub use sense::SenseBytes;

pub use caps::Capabilities;
pub use caps::CompareAndWrite;
pub use caps::CompareAndWriteBy;
pub use caps::CopyOffload;
pub use caps::Provisioning;
pub use caps::COPY_MANAGER_IO_BYTES;
pub use designator::Designator;
pub use designator::DesignatorParseError;
pub use inquiry::NAA_OUI;

/// Limits reported in the Block Limits VPD page (B0h) and enforced on commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// MAXIMUM TRANSFER LENGTH in blocks; longer READ/WRITE/VERIFY get INVALID FIELD IN CDB.
    pub max_transfer_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH in blocks.
    pub optimal_transfer_blocks: u32,
    /// MAXIMUM UNMAP LBA COUNT: blocks one UNMAP command may deallocate in total.
    pub max_unmap_lba_count: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// MAXIMUM WRITE SAME LENGTH in blocks.
    pub max_write_same_blocks: u64,
    /// OPTIMAL UNMAP GRANULARITY in blocks.
    pub unmap_granularity: u32,
}

/// What the disk is: geometry, identity, features and initial mode page values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Logical block size: a power of two in 512..=65536, equal to the block size registered
    /// with SCST (spec §3.10: the core snoops READ CAPACITY).
    pub block_size: u32,
    /// Capacity in blocks.
    pub num_blocks: u64,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT of READ CAPACITY(16) (SBC-3 §5.16.2): the
    /// medium's physical block holds 2^exponent logical blocks (0..=15; 0 = one per block).
    pub physical_block_exponent: u8,
    /// INQUIRY T10 vendor identification (up to 8 ASCII characters, space padded).
    pub vendor: String,
    /// INQUIRY product identification (up to 16 characters).
    pub product: String,
    /// INQUIRY product revision level (up to 4 characters).
    pub revision: String,
    /// Unit serial number (VPD 80h; also the T10 vendor ID designator in VPD 83h).
    pub serial: String,
    /// The logical unit's designator, reported in VPD 83h (an NAA or an EUI-64 based
    /// designator, see [`Designator`]). It must be unique among every LU an initiator can see:
    /// multipath merges LUs that share one.
    pub designator: Designator,
    /// Writes end with DATA PROTECT / WRITE PROTECTED (SCST core also enforces this for
    /// WRITE_MEDIUM commands, spec §6.4); MODE SENSE reports WP.
    pub read_only: bool,
    /// Logical block provisioning: LBPME in READ CAPACITY(16), VPD B2h, UNMAP and WRITE SAME
    /// with UNMAP offered.
    pub thin_provisioning: bool,
    /// Deallocated blocks read as zeroes (LBPRZ). Set it only if the store guarantees it.
    pub unmapped_reads_zero: bool,
    /// GET LBA STATUS is offered on a thin disk (SBC-3 §5.7): set it only when the store
    /// answers [`StoreOp::LbaStatus`] (`StoreInfo::reports_lba_status`).
    pub lba_status: bool,
    /// The default WCE of the caching mode page: the value the disk starts with and a LOGICAL
    /// UNIT RESET restores (the page is not savable, so its default is what SAM-5 restores),
    /// and what MODE SENSE reports as the default (PC 10b). 1 only over a volatile cache
    /// ([`DiskConfig::volatile_cache`]; SBC-4: WCE 1 means writes may complete from a volatile
    /// cache). With WCE 0 every write is forced to FUA, and the writes without FUA (WRITE SAME,
    /// EXTENDED COPY segments, UNMAP where LBPRZ is claimed) are followed by a flush; a MODE
    /// SELECT that turns it from 1 to 0 flushes before its GOOD.
    pub write_cache: bool,
    /// The store has a volatile write cache ([`crate::store::StoreInfo::volatile_cache`]):
    /// V_SUP of the Extended INQUIRY Data page. Not the WCE: a cache the operator starts
    /// written through ([`DiskConfig::write_cache`] false) is still there for an initiator's
    /// MODE SELECT to turn on.
    pub volatile_cache: bool,
    /// D_SENSE of the control mode page: descriptor (0x72) rather than fixed (0x70) sense. Not
    /// changeable by MODE SELECT: it must be the value the target core was registered with
    /// (scst_user's `Opt::d_sense`, 0 in `transport::register::default_options`), whose
    /// sense (unit attentions, the copy manager's errors) is in that format.
    pub d_sense: bool,
    /// Who runs COMPARE AND WRITE, and so whether it is advertised (RSOC, MAXIMUM COMPARE AND
    /// WRITE LENGTH). [`CompareAndWriteBy::ScstCore`] (the default) whenever SCST parses the
    /// CDBs (parse_type STANDARD, what `transport::register::default_options` registers):
    /// the core runs it as READ(16) + WRITE(16) through this engine (`scst_user.md` §6.4);
    /// [`CompareAndWriteBy::Handler`] where the frontend passes 0x89 to the engine (TCMU);
    /// [`CompareAndWriteBy::Nobody`] with parse_type CALL, where the PARSE of 0x89 would reach
    /// an engine that the core then never asks to run it.
    pub compare_and_write: CompareAndWriteBy,
    /// The store's atomic compare and write, in blocks
    /// ([`crate::store::StoreInfo::compare_and_write_blocks`]; 0: none), used when this engine
    /// runs COMPARE AND WRITE.
    pub store_compare_and_write_blocks: u32,
    /// MEDIUM ROTATION RATE of VPD B1h (SBC-3 §6.6.2): 1 = non-rotating (the default, and
    /// what RAM, SCA-1 and NVMe stores are), 0 = not reported (a file store on a spinning
    /// disk, [`crate::store::StoreInfo::rotational`]).
    pub rotation_rate: u16,
    /// SCST's copy manager runs EXTENDED COPY for this disk (`docs/xcopy.md`): 3PC, and RSOC
    /// lists EXTENDED COPY(LID1) and RECEIVE COPY RESULTS. `Some(remap)` only where the device
    /// is made a LUN of the copy manager's target (scst_user devices are not added to it
    /// automatically, and without it every EXTENDED COPY naming the disk fails): set by
    /// [`DiskConfig::copy_manager_lun`]. `remap` says the store copies segments itself
    /// (EXT_COPY_REMAP, [`crate::transport::register::options_for_store`]). `None`: not
    /// advertised (the default, and what [`DiskConfig::for_store`] leaves).
    pub copy_offload: Option<bool>,
    /// Limits (VPD B0h), before normalisation (see [`Capabilities`]).
    pub limits: BlockLimits,
}

impl DiskConfig {
    /// A disk with sensible defaults: 4 MiB maximum transfer (SCST caches buffers up to 4 MiB,
    /// spec pitfall 9), 1 MiB optimal, 4 KiB unmap granularity, 1 GiB UNMAP / WRITE SAME limits,
    /// write cache on, fixed sense, thick provisioning, read-write.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        let blocks_of =
            |bytes: u64| u32::try_from((bytes / u64::from(block_size.max(1))).max(1)).unwrap_or(u32::MAX);
        Self {
            block_size,
            num_blocks,
            physical_block_exponent: 0,
            vendor: "SCST_ACC".to_owned(),
            product: "scst-accel disk".to_owned(),
            revision: "0001".to_owned(),
            serial: String::new(),
            designator: Designator::default(),
            read_only: false,
            thin_provisioning: false,
            unmapped_reads_zero: false,
            lba_status: false,
            write_cache: true,
            volatile_cache: true,
            d_sense: false,
            compare_and_write: CompareAndWriteBy::ScstCore,
            store_compare_and_write_blocks: 0,
            copy_offload: None,
            rotation_rate: caps::NON_ROTATING,
            limits: BlockLimits {
                max_transfer_blocks: blocks_of(4 << 20),
                optimal_transfer_blocks: blocks_of(1 << 20),
                max_unmap_lba_count: blocks_of(1 << 30),
                max_unmap_descriptors: 256,
                max_write_same_blocks: u64::from(blocks_of(1 << 30)),
                unmap_granularity: blocks_of(4096),
            },
        }
    }

    /// The disk a store describes: its geometry (block size, capacity, physical block), its
    /// largest request, its unmap granularity where it has one, its write cache (V_SUP, and a
    /// default WCE of 1, only over a volatile cache, SBC-3 §6.4.5) and
    /// what it knows about deallocation (LBPRZ, GET LBA STATUS). Thin provisioning stays off:
    /// it is the operator's choice, possible only where [`StoreInfo::supports_unmap`]; the
    /// identity, read-only and the operator's limits are applied by the caller, and so is copy
    /// offload ([`DiskConfig::copy_manager_lun`]): whether the disk becomes a LUN of SCST's
    /// copy manager is the caller's to know, not the store's.
    ///
    /// [`StoreInfo::supports_unmap`]: crate::store::StoreInfo::supports_unmap
    pub fn for_store(info: &crate::store::StoreInfo) -> Self {
        let mut config = Self::new(info.block_size, info.num_blocks);
        config.physical_block_exponent = info.physical_block_exponent();
        config.volatile_cache = info.volatile_cache;
        config.write_cache = info.volatile_cache;
        config.unmapped_reads_zero = info.unmapped_reads_zero;
        config.lba_status = info.reports_lba_status;
        config.limits.max_transfer_blocks = info.max_transfer_blocks.max(1);
        // A smaller UNMAP than the medium's granularity deallocates nothing there (dm-thin's
        // 64 KiB blocks): initiators that honour the page send none.
        if let Some(blocks) = info.unmap_granularity_blocks {
            config.limits.unmap_granularity = blocks.max(1);
        }
        // MEDIUM ROTATION RATE (SBC-3 §6.6.2): 0001h non-rotating; a spinning medium's rate is
        // not known here, so 0000h "not reported". Unknown (tmpfs...) stays non-rotating: no
        // file system without a block device sits on a spinning disk of its own.
        config.rotation_rate = match info.rotational {
            Some(true) => caps::ROTATION_NOT_REPORTED,
            Some(false) | None => caps::NON_ROTATING,
        };
        config.store_compare_and_write_blocks = info.compare_and_write_blocks;
        config
    }

    /// The disk is (made) a LUN of SCST's copy manager (`copy_manager_tgt`), which then runs
    /// EXTENDED COPY for it: advertise it (SPC-4: 3PC = 1 says a copy manager is addressable
    /// through the LU), with EXT_COPY_REMAP where the store `info` describes copies itself (as
    /// [`crate::transport::register::options_for_store`] registers). Call it only then: without
    /// the LUN every EXTENDED COPY naming the disk fails (`docs/xcopy.md` §2).
    pub fn copy_manager_lun(&mut self, info: &crate::store::StoreInfo) {
        self.copy_offload = Some(info.copy != crate::store::CopyPath::None);
    }
}

/// A [`DiskConfig`] the engine cannot serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskConfigError {
    /// Block size is not a power of two in 512..=65536.
    #[error("block size {0} is not a power of two between 512 and 65536; use 512, 4096, ...")]
    BlockSize(u32),
    /// The maximum transfer cannot be expressed in the kernel's i32 buffer length, or is 0.
    #[error("max_transfer_blocks {blocks} × block size {block_size} must be 1 block .. 2 GiB; lower it")]
    MaxTransfer {
        /// Configured blocks.
        blocks: u32,
        /// Block size.
        block_size: u32,
    },
}

/// The fields of the current mode pages whose value matters for data safety and so must
/// outlive the process where the logical unit outlives it (TCMU adoption after a kill, where
/// LIO keeps the LUN and initiators are told nothing): WCE alone. The caching page has no other
/// changeable field, nothing of the control page is changeable, and the informational
/// exceptions page only says how failures are reported. An initiator that turned WCE to 0
/// takes GOOD to a write for durable (SBC-4 caching mode page) and stops sending SYNCHRONIZE
/// CACHE (Linux's sd strips PREFLUSH and FUA from its bios); a process that comes back with
/// WCE 1 would answer those writes from a volatile cache nothing flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentMode {
    /// WCE of the caching mode page.
    pub wce: bool,
}

/// Where a disk records its [`CurrentMode`] durably, installed by the service with
/// [`Disk::record_mode_with`]: the engine calls it, holding the mode pages' lock, before a
/// change of those fields takes effect, so the record always holds what the disk serves or the
/// change being made, in the order the changes were made.
pub trait ModeRecorder: Send + Sync + std::fmt::Debug {
    /// Make `mode` durable before returning; `Err` says why it is not (a MODE SELECT is then
    /// refused and changes nothing).
    ///
    /// # Errors
    /// What failed, for the log.
    fn record(&self, mode: CurrentMode) -> Result<(), String>;
}

/// Data the initiator sent with the command (data-out), read by the engine where it must look
/// at it: MODE SELECT and UNMAP parameter lists, the WRITE SAME block.
pub trait DataOut {
    /// Bytes available.
    fn len(&self) -> usize;
    /// Is there no data?
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy bytes from `offset` into `out`; bytes past [`DataOut::len`] read as zero.
    fn read(&self, offset: usize, out: &mut [u8]);
}

impl DataOut for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        let src = self.get(offset..).unwrap_or(&[]);
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
        out[n..].fill(0);
    }
}

/// A slice as `&dyn DataOut` (`[u8]` itself is unsized and cannot be a trait object):
/// `disk.start(cdb, &data)` with `data: &[u8]`.
impl DataOut for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        DataOut::read(*self, offset, out);
    }
}

impl DataOut for Vec<u8> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        DataOut::read(self.as_slice(), offset, out);
    }
}

impl<const N: usize> DataOut for [u8; N] {
    fn len(&self) -> usize {
        N
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        DataOut::read(self.as_slice(), offset, out);
    }
}

/// No data-out.
pub const NO_DATA: &[u8] = &[];

/// The engine's answer to a command step.
#[derive(Debug)]
pub enum Plan {
    /// Finished: send this response.
    Done(Response),
    /// Run this store op, then call [`Disk::finish`].
    Io(IoPlan),
}

/// A store step and what to do when it completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoPlan {
    /// The store operation, in blocks of [`Disk::block_size`]. Ops that
    /// [`StoreOp::uses_buffer`] use the command's SCST buffer ([`StoreOp::buffer_bytes`] of it).
    pub op: StoreOp,
    /// The step after this one succeeds (the verification of WRITE AND VERIFY, the write of
    /// COMPARE AND WRITE, the flush after a write without FUA while WCE is 0) and where its
    /// data starts in the command's buffer.
    then: Option<(StoreOp, usize)>,
    /// Where this op's data starts in the command's buffer (COMPARE AND WRITE's write takes
    /// the Data-Out's second half); 0 for every other command.
    buffer_offset: usize,
    /// Data-in bytes the command returns when its last step succeeds (READ): kept from step
    /// to step by [`Disk::finish`] (a READ with FUA flushes before it reads).
    data_in_len: usize,
}

impl IoPlan {
    /// A single store step at the start of the command's buffer.
    fn single(op: StoreOp, data_in_len: usize) -> Self {
        Self {
            op,
            then: None,
            buffer_offset: 0,
            data_in_len,
        }
    }

    /// Byte offset in the command's buffer where [`Self::op`]'s data starts: the frontend
    /// hands the store the buffer from there.
    pub fn buffer_offset(&self) -> usize {
        self.buffer_offset
    }

    /// The blocks this command must hold across its store steps, and how, on a disk whose
    /// engine executes COMPARE AND WRITE ([`ranges`]): COMPARE AND WRITE (a compare followed by
    /// a write) exclusively, every other medium write shared; reads and the rest nothing.
    fn range_need(&self) -> Option<(ranges::BlockRange, ranges::RangeMode)> {
        use ranges::BlockRange;
        use ranges::RangeMode;
        match (&self.op, &self.then) {
            // The device's atomic COMPARE AND WRITE too: atomic in the device against every
            // other command, but the read that finds a miscompare's offset must see what the
            // device compared with (no writer of this disk comes between).
            (StoreOp::Compare { lba, blocks }, Some((StoreOp::Write { .. }, _)))
            | (StoreOp::CompareAndWrite { lba, blocks, .. }, _) => {
                Some((BlockRange::new(*lba, u64::from(*blocks)), RangeMode::Exclusive))
            }
            (
                StoreOp::Write { lba, blocks, .. }
                | StoreOp::WriteSame { lba, blocks }
                | StoreOp::WriteZeroes { lba, blocks, .. },
                _,
            ) => Some((BlockRange::new(*lba, u64::from(*blocks)), RangeMode::Shared)),
            // A copy in the store writes its destination like any other write.
            (StoreOp::Copy { dst_lba, blocks, .. }, _) => {
                Some((BlockRange::new(*dst_lba, u64::from(*blocks)), RangeMode::Shared))
            }
            // One span over every descriptor: UNMAP is rare next to COMPARE AND WRITE, and a
            // wider shared hold only delays an overlapping COMPARE AND WRITE, never a write.
            (StoreOp::Unmap { ranges }, _) => {
                let lba = ranges.iter().map(|&(lba, _)| lba).min()?;
                let end = ranges
                    .iter()
                    .map(|&(lba, n)| lba.saturating_add(u64::from(n)))
                    .max()?;
                Some((BlockRange { lba, end }, RangeMode::Shared))
            }
            _ => None,
        }
    }
}

/// A finished command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// SAM status (`crate::abi::sam_status`).
    pub status: u8,
    /// Sense data; empty unless CHECK CONDITION.
    pub sense: SenseBytes,
    /// Data-in generated by the engine, already truncated to the CDB's allocation length.
    pub data: Vec<u8>,
    /// Data-in bytes of the command: `data.len()` for engine data, the bytes the store moved
    /// for a READ.
    pub data_in_len: usize,
}

impl Response {
    /// GOOD, no data.
    pub fn good() -> Self {
        Self {
            status: sam_status::GOOD,
            sense: SenseBytes::new(),
            data: Vec::new(),
            data_in_len: 0,
        }
    }

    /// GOOD with engine data, truncated to `alloc` bytes.
    fn with_data(mut data: Vec<u8>, alloc: u32) -> Self {
        data.truncate(usize::try_from(alloc).unwrap_or(usize::MAX));
        let data_in_len = data.len();
        Self {
            status: sam_status::GOOD,
            sense: SenseBytes::new(),
            data,
            data_in_len,
        }
    }

    /// CHECK CONDITION with these sense bytes.
    pub fn check_condition(sense: SenseBytes) -> Self {
        Self {
            status: sam_status::CHECK_CONDITION,
            sense,
            data: Vec::new(),
            data_in_len: 0,
        }
    }
}

/// What SCST's PARSE reply needs (spec §3.4 PARSE row). `op_flags` are to be OR-ed into the
/// op_flags the kernel sent, which carry the core's own flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdbInfo {
    /// `crate::abi::data_direction` (NONE when nothing is transferred).
    pub direction: u8,
    /// Buffer bytes (bufflen).
    pub transfer_len: u32,
    /// First LBA (0 for commands without one).
    pub lba: u64,
    /// Bytes of the medium the command covers (WRITE SAME: the whole range; else transfer_len).
    pub data_len: u64,
    /// INFO_VALID always; WRITE_MEDIUM for commands that write the medium; LBA_NOT_VALID for
    /// commands without an LBA.
    pub op_flags: u32,
}

/// One logical unit: configuration plus the state commands change (mode pages, stopped,
/// prevent-removal, capacity).
#[derive(Debug)]
pub struct Disk {
    config: DiskConfig,
    /// What the disk advertises and enforces, derived from `config` once.
    caps: Capabilities,
    num_blocks: AtomicU64,
    /// START STOP UNIT with START=0: media access gets NOT READY.
    stopped: AtomicBool,
    /// PREVENT ALLOW MEDIUM REMOVAL.
    prevent_removal: AtomicBool,
    /// Mirror of the current WCE, read on every command without the lock.
    wce: AtomicBool,
    /// Current mode pages; the lock is held only to read or replace them.
    /// Level `scsi.mode_pages`: a leaf, held while pages are read or replaced.
    mode: OrderedMutex<ModePages, levels::ScsiModePages>,
    /// The block-range locks that make COMPARE AND WRITE atomic where this engine runs it
    /// (level `scsi.ranges`, a leaf); untouched on every other disk.
    ranges: ranges::RangeLocks,
    /// Where a change of [`CurrentMode`] is recorded before it takes effect (TCMU, for an
    /// adopting process); none elsewhere.
    recorder: std::sync::OnceLock<Box<dyn ModeRecorder>>,
}

static_assertions::assert_impl_all!(Disk: Send, Sync);

impl Disk {
    /// A disk for `config`.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`Disk::try_new`]): that is a programming error of
    /// the caller, not something the initiator or kernel can cause.
    pub fn new(config: DiskConfig) -> Self {
        match Self::try_new(config) {
            Ok(disk) => disk,
            Err(e) => panic!("invalid disk configuration: {e}"),
        }
    }

    /// A disk for `config`, checking it first.
    ///
    /// # Errors
    /// [`DiskConfigError`] when the block size or transfer limit cannot be served.
    pub fn try_new(config: DiskConfig) -> Result<Self, DiskConfigError> {
        let bs = config.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(DiskConfigError::BlockSize(bs));
        }
        let max = config.limits.max_transfer_blocks;
        if max == 0 || u64::from(max) * u64::from(bs) > i32::MAX as u64 {
            return Err(DiskConfigError::MaxTransfer {
                blocks: max,
                block_size: bs,
            });
        }
        let caps = Capabilities::new(&config);
        Ok(Self {
            num_blocks: AtomicU64::new(config.num_blocks),
            stopped: AtomicBool::new(false),
            prevent_removal: AtomicBool::new(false),
            wce: AtomicBool::new(caps.write_cache),
            mode: OrderedMutex::new(ModePages::defaults(&caps)),
            ranges: ranges::RangeLocks::new(),
            recorder: std::sync::OnceLock::new(),
            caps,
            config,
        })
    }

    /// The configuration the disk was built with (initial values; see the getters for state).
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// What the disk advertises (and enforces): the one source of INQUIRY, the VPD pages, READ
    /// CAPACITY(16), the mode pages and REPORT SUPPORTED OPERATION CODES.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The disk's block-range locks ([`ranges`]).
    pub fn ranges(&self) -> &ranges::RangeLocks {
        &self.ranges
    }

    /// What `io` (a command's first store step) must hold in [`Self::ranges`] until the
    /// command is answered: `None` for reads and everything else, and for every command on a
    /// disk whose COMPARE AND WRITE this engine does not run (SCST's core then keeps
    /// overlapping commands apart itself, and a write costs no lock).
    pub fn range_need(&self, io: &IoPlan) -> Option<(ranges::BlockRange, ranges::RangeMode)> {
        if self.caps.compare_and_write.in_engine() {
            io.range_need()
        } else {
            None
        }
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// Current capacity in blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    /// Resize; READ CAPACITY reports the new size from now on. The caller tells SCST with
    /// DEVICE_CAPACITY_CHANGED (spec §3.9) so initiators get the unit attention.
    pub fn set_num_blocks(&self, blocks: u64) {
        log::info!("disk resized: {} -> {} blocks", self.num_blocks(), blocks);
        self.num_blocks.store(blocks, Ordering::Release);
    }

    /// D_SENSE: descriptor sense rather than fixed (not changeable, [`DiskConfig::d_sense`]).
    pub fn descriptor_sense(&self) -> bool {
        self.caps.d_sense
    }

    /// Current WCE of the caching mode page.
    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Acquire)
    }

    /// The current mode fields a [`ModeRecorder`] keeps.
    pub fn current_mode(&self) -> CurrentMode {
        CurrentMode {
            wce: self.write_cache_enabled(),
        }
    }

    /// Serve `mode` as the current values from now on: what a process that takes over a
    /// logical unit another one served (TCMU adoption) restores before its first command, so
    /// initiators, told nothing, find the page as they left it. The default values (PC 10b)
    /// stay the configuration's. Not recorded: it is what the record says.
    pub fn restore_mode<L: LockBefore<levels::ScsiModePages>>(
        &self,
        token: &mut LockToken<'_, L>,
        mode: CurrentMode,
    ) {
        let mut pages = self.mode_pages(token);
        let mut restored = pages.clone();
        restored.set_wce(mode.wce);
        self.publish_mode(&restored);
        *pages = restored;
    }

    /// Record every later change of [`CurrentMode`] with `recorder` before it takes effect (a
    /// MODE SELECT is answered only after its record; a reset's is logged when it fails).
    /// Once per disk: a second recorder is handed back.
    ///
    /// # Errors
    /// `recorder` itself when one is installed already.
    pub fn record_mode_with(&self, recorder: Box<dyn ModeRecorder>) -> Result<(), Box<dyn ModeRecorder>> {
        self.recorder.set(recorder)
    }

    /// Record `new` where a recorder is installed and it differs from `old`.
    fn record_mode(&self, old: &ModePages, new: &ModePages) -> Result<(), String> {
        match self.recorder.get() {
            Some(recorder) if old.wce() != new.wce() => recorder.record(CurrentMode { wce: new.wce() }),
            _ => Ok(()),
        }
    }

    /// Stopped by START STOP UNIT?
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Medium removal prevented by PREVENT ALLOW MEDIUM REMOVAL?
    pub fn removal_prevented(&self) -> bool {
        self.prevent_removal.load(Ordering::Acquire)
    }

    /// Start a command. `data_out` is the data the initiator sent (MODE SELECT / UNMAP
    /// parameter lists, WRITE SAME block, VERIFY BYTCHK data); empty for commands without it.
    /// `token` is the calling thread's lock token (the worker's): MODE SENSE and MODE SELECT
    /// take the mode pages' lock from it.
    pub fn start<L: LockBefore<levels::ScsiModePages>>(
        &self,
        token: &mut LockToken<'_, L>,
        cdb: &[u8],
        data_out: &dyn DataOut,
    ) -> Plan {
        let decoded = match cdb::decode(cdb, &self.geometry()) {
            Ok(d) => d,
            Err(sense) => return self.fail(cdb.first().copied(), "unsupported or malformed CDB", sense),
        };
        match self.execute(token, &decoded, data_out) {
            Ok(plan) => plan,
            Err(sense) => self.fail(Some(decoded.entry.opcode), decoded.entry.name, sense),
        }
    }

    /// Continue after the store finished `io` with `status`: the final response, or the next
    /// store step (WRITE AND VERIFY: the write, then the compare or verify).
    pub fn finish(&self, io: &IoPlan, status: StoreStatus) -> Plan {
        match rw::finish(io, status, self.caps.provisioning.thin) {
            // The next step answers with the command's Data-In (a FUA READ's read after its
            // flush).
            Ok(Plan::Io(next)) => Plan::Io(IoPlan {
                data_in_len: io.data_in_len,
                ..next
            }),
            // A write planned while WCE was 1 went to the cache; a MODE SELECT turned WCE to 0
            // while it was in the store, and its flush may have run before this write reached
            // the cache. GOOD under WCE 0 says the data is on the medium, and the initiator
            // sends no SYNCHRONIZE CACHE any more: flush first (as a drive that flushes its
            // whole cache, writes it had taken included).
            Ok(Plan::Done(done))
                if done.status == sam_status::GOOD
                    && io.then.is_none()
                    && self.left_in_cache(&io.op)
                    && !self.write_cache_enabled() =>
            {
                Plan::Io(IoPlan::single(StoreOp::Flush, io.data_in_len))
            }
            Ok(plan) => plan,
            Err(sense) => {
                log::debug!("store op {:?} ended {status}", io.op);
                Plan::Done(Response::check_condition(sense.encode(self.descriptor_sense())))
            }
        }
    }

    /// Whether `op`, the last step of its plan, may have left what it wrote in the volatile
    /// cache: a write without FUA, or one the store has no FUA for (WRITE SAME, WRITE ZEROES, a
    /// copy, an UNMAP that changes what reads return under LBPRZ). Planned while WCE was 0,
    /// each has FUA or a flush after it, so it is never the last step then.
    fn left_in_cache(&self, op: &StoreOp) -> bool {
        match op {
            StoreOp::Write { fua, .. } | StoreOp::CompareAndWrite { fua, .. } => !fua,
            StoreOp::WriteSame { .. } | StoreOp::WriteZeroes { .. } | StoreOp::Copy { .. } => true,
            StoreOp::Unmap { .. } => self.caps.provisioning.unmapped_reads_zero,
            _ => false,
        }
    }

    /// An EXTENDED COPY segment SCST's copy manager hands over in EXT_COPY_REMAP (spec §3.8,
    /// `docs/xcopy.md`): `data_len` bytes from `src_lba` to `dst_lba` of this disk, as one
    /// [`StoreOp::Copy`], followed by a [`StoreOp::Flush`] while WCE is 0 (as WRITE SAME:
    /// `rw::durable`); [`Disk::finish`] ends it like any store step. Before the remap the core
    /// checked reservations only (it prepared READ(16) / WRITE(16) of the range for that and
    /// sent neither), so the checks of those two commands happen here: NOT READY when stopped,
    /// DATA PROTECT when read-only, LBA OUT OF RANGE; a length that is not whole blocks (the
    /// core's segment parser refuses those) is INVALID FIELD IN PARAMETER LIST.
    ///
    /// [`StoreOp::Copy`]: crate::store::StoreOp::Copy
    pub fn copy_segment(&self, src_lba: u64, dst_lba: u64, data_len: i32) -> Plan {
        let bs = u64::from(self.block_size());
        let fail =
            |sense: Sense| Plan::Done(Response::check_condition(sense.encode(self.descriptor_sense())));
        let bytes = match u64::try_from(data_len) {
            Ok(b) if b > 0 && b % bs == 0 => b,
            _ => {
                return fail(Sense::new(
                    sense::sense_key::ILLEGAL_REQUEST,
                    sense::asc::INVALID_FIELD_IN_PARAMETER_LIST,
                ))
            }
        };
        let blocks = bytes / bs;
        if self.is_stopped() {
            return fail(Sense::not_ready_stopped());
        }
        if self.config.read_only {
            return fail(Sense::write_protected());
        }
        let end_ok = |lba: u64| {
            lba.checked_add(blocks)
                .is_some_and(|end| end <= self.num_blocks())
        };
        if !end_ok(src_lba) || !end_ok(dst_lba) {
            return fail(Sense::lba_out_of_range());
        }
        // blocks ≤ i32::MAX / 512: always fits.
        let blocks = u32::try_from(blocks).unwrap_or(u32::MAX);
        // The copy writes its destination without FUA: with WCE 0 a flush follows it.
        rw::durable(
            StoreOp::Copy {
                src_lba,
                dst_lba,
                blocks,
            },
            self.write_cache_enabled(),
        )
    }

    /// What SCST's PARSE reply needs for this CDB (spec §3.4). Unsupported or malformed CDB →
    /// `Err` with CHECK CONDITION and sense.
    pub fn cdb_info(&self, cdb: &[u8]) -> Result<CdbInfo, Response> {
        let geo = self.geometry();
        match cdb::decode(cdb, &geo) {
            Ok(d) => Ok(info::cdb_info(&d, &geo)),
            Err(sense) => Err(Response::check_condition(sense.encode(self.descriptor_sense()))),
        }
    }

    /// LOGICAL UNIT RESET / TARGET RESET: clear PREVENT ALLOW MEDIUM REMOVAL and return the
    /// mode pages to their defaults. The stopped state is left as it is: only START STOP UNIT
    /// changes it (SBC-3 §4.20; SCST's fileio likewise only clears prevent-removal, §6.3).
    pub fn reset<L: LockBefore<levels::ScsiModePages>>(&self, token: &mut LockToken<'_, L>) {
        self.prevent_removal.store(false, Ordering::Release);
        let defaults = ModePages::defaults(&self.caps);
        let mut pages = self.mode_pages(token);
        // A reset cannot be refused (SAM-5): a record that fails leaves the previous value
        // there, which a process adopting the LU would serve instead of the default.
        if let Err(e) = self.record_mode(&pages, &defaults) {
            log::error!(
                "reset: the mode pages' return to their defaults (WCE {}) could not be recorded: {e}; a process that takes this logical unit over would serve WCE {}",
                u8::from(defaults.wce()),
                u8::from(pages.wce())
            );
        }
        self.publish_mode(&defaults);
        *pages = defaults;
    }

    /// PERSISTENT RESERVE OUT PREEMPT AND ABORT (SCST's `PR_ABORT_ALL`, LIO's
    /// `TCMU_TMR_LUN_RESET_PRO`): the preempted initiator's tasks are aborted, but it is no
    /// reset (SPC-4 §5.12.11.2.6): only PREVENT ALLOW MEDIUM REMOVAL is cleared, as SCST's
    /// vdisk and usr/fileio do; the mode pages keep what MODE SELECT made them (a WCE an
    /// initiator cleared must not come back on behind it).
    pub fn preempt_and_abort(&self) {
        self.prevent_removal.store(false, Ordering::Release);
    }

    /// Sense bytes (fixed or descriptor per D_SENSE) for key/asc/ascq, for callers
    /// that need sense without a CDB (BUSY handling, aborted commands).
    pub fn sense(&self, key: u8, asc: u8, ascq: u8) -> SenseBytes {
        Sense::new(key, (asc, ascq)).encode(self.descriptor_sense())
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.caps.block_size,
            num_blocks: self.num_blocks(),
            features: opcodes::Features::of(&self.caps),
            limits: self.caps.limits,
            compare_and_write_max: self.caps.compare_and_write.max_blocks(),
        }
    }

    fn fail(&self, opcode: Option<u8>, what: &str, sense: Sense) -> Plan {
        log::debug!(
            "opcode {:02x?} ({what}): CHECK CONDITION {:x}/{:02x}/{:02x}",
            opcode,
            sense.key,
            sense.asc,
            sense.ascq
        );
        Plan::Done(Response::check_condition(sense.encode(self.descriptor_sense())))
    }

    /// The mode pages (level `scsi.mode_pages`, a leaf); a poisoned lock still holds valid
    /// pages (they are replaced whole), so it is recovered rather than propagated as a panic.
    fn mode_pages<'a, L: LockBefore<levels::ScsiModePages>>(
        &'a self,
        token: &'a mut LockToken<'_, L>,
    ) -> OrderedMutexGuard<'a, ModePages, levels::ScsiModePages> {
        self.mode.lock(token).0
    }

    fn publish_mode(&self, pages: &ModePages) {
        self.wce.store(pages.wce(), Ordering::Release);
    }

    fn execute<L: LockBefore<levels::ScsiModePages>>(
        &self,
        token: &mut LockToken<'_, L>,
        d: &Decoded,
        data_out: &dyn DataOut,
    ) -> Result<Plan, Sense> {
        if d.entry.media_access && self.is_stopped() {
            return Err(Sense::not_ready_stopped());
        }
        if d.entry.writes_medium && self.caps.read_only {
            return Err(Sense::write_protected());
        }
        let done = |r: Response| Ok(Plan::Done(r));
        match d.command {
            // SEND DIAGNOSTIC: the default self-test has nothing to test that could fail (the
            // store's own faults are reported by the commands that meet them), and the decoder
            // refused every other form.
            Command::TestUnitReady
            | Command::ReserveRelease
            | Command::PreFetch { .. }
            | Command::SendDiagnostic => done(Response::good()),
            Command::RequestSense { desc, alloc } => {
                // SPC-4 §6.39: no pending sense (SCST core answers those, spec §6.4), so report
                // the unit's condition: NOT READY while stopped, else NO SENSE.
                let sense = if self.is_stopped() {
                    Sense::not_ready_stopped()
                } else {
                    Sense::new(sense::sense_key::NO_SENSE, sense::asc::NO_ADDITIONAL_SENSE)
                };
                done(Response::with_data(sense.encode(desc).to_vec(), alloc))
            }
            Command::Inquiry { evpd, page, alloc } => {
                let data = if evpd {
                    inquiry::vpd_page(page, &self.config, &self.caps)?
                } else {
                    inquiry::standard(&self.config, &self.caps)
                };
                done(Response::with_data(data, alloc))
            }
            Command::ReadCapacity10 => done(Response::with_data(
                capacity::read_capacity_10(self.num_blocks(), self.block_size()).to_vec(),
                u32::MAX,
            )),
            Command::ReadCapacity16 { alloc } => done(Response::with_data(
                capacity::read_capacity_16(self.num_blocks(), &self.caps).to_vec(),
                alloc,
            )),
            // The store writes the parameter data into the command's buffer: one descriptor,
            // truncated to the allocation length (SBC-3 §5.7.2). Nothing to ask for 0 bytes.
            Command::GetLbaStatus { alloc: 0, .. } => done(Response::good()),
            Command::GetLbaStatus { lba, alloc } => Ok(Plan::Io(IoPlan::single(
                StoreOp::LbaStatus { lba },
                crate::store::LBA_STATUS_DATA_LEN.min(alloc as usize),
            ))),
            Command::ModeSense(ms) => {
                let data = mode::mode_sense(&ms, &self.mode_pages(token), &self.caps, self.num_blocks())?;
                done(Response::with_data(data, ms.alloc))
            }
            Command::ModeSelect { ten, param_len } => {
                let param = read_param(data_out, param_len);
                let mut pages = self.mode_pages(token);
                let new = mode::mode_select(ten, &param, &pages, self.block_size(), self.num_blocks())?;
                // Recorded before it takes effect, under the lock, so the records follow the
                // changes in their order. A kill after the record leaves the new value recorded
                // and the MODE SELECT unanswered; a TCMU adoption answers the ring's commands
                // BUSY and the initiator retries it. Turning WCE off, the process that takes
                // the LU over then serves WCE 0 to an initiator that still believes 1, which
                // is safe (it sends SYNCHRONIZE CACHE); turning it on, WCE 1 to one that
                // believes 0 until its retry makes the same change.
                if let Err(e) = self.record_mode(&pages, &new) {
                    log::error!("MODE SELECT refused: its change could not be recorded: {e}");
                    return Err(Sense::new(
                        sense::sense_key::HARDWARE_ERROR,
                        sense::asc::INTERNAL_TARGET_FAILURE,
                    ));
                }
                let clears_wce = pages.wce() && !new.wce();
                self.publish_mode(&new);
                *pages = new;
                drop(pages);
                if clears_wce {
                    // WCE 1 -> 0 (SBC-4 caching mode page): from now on GOOD to a write means
                    // the data is on the medium, and the initiator, which no longer sends
                    // SYNCHRONIZE CACHE, takes the earlier writes to be there too. The cache
                    // may still hold them: flush it before GOOD, a failure answered as the
                    // flush's sense (the `rw::finish` of any flush). WCE is 0 before the flush
                    // begins, so every write planned from here on is FUA and none slips into
                    // the cache behind it. The change stays made if the flush fails (the
                    // writes go on written through; MODE SENSE shows WCE 0): see
                    // docs/scsi.md, "MODE SELECT, and the other initiators".
                    return Ok(Plan::Io(IoPlan::single(StoreOp::Flush, 0)));
                }
                done(Response::good())
            }
            Command::StartStopUnit {
                no_flush,
                start,
                loej,
            } => self.start_stop(start, loej, no_flush),
            Command::PreventAllow { prevent } => {
                self.prevent_removal.store(prevent, Ordering::Release);
                done(Response::good())
            }
            Command::ReportSupportedOpcodes { request, alloc } => done(Response::with_data(
                opcodes::report(request, opcodes::Features::of(&self.caps))?,
                alloc,
            )),
            Command::Read { .. }
            | Command::Write { .. }
            | Command::WriteAndVerify { .. }
            | Command::Verify { .. }
            | Command::SynchronizeCache { .. }
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::FormatUnit { .. }
            | Command::CompareAndWrite { .. } => rw::plan(&d.command, data_out, &self.rw_context()),
        }
    }

    fn rw_context(&self) -> rw::Context {
        rw::Context {
            geometry: self.geometry(),
            write_cache: self.write_cache_enabled(),
            compare_and_write_in_device: self.caps.compare_and_write_in_device,
            unmapped_reads_zero: self.caps.provisioning.unmapped_reads_zero,
        }
    }

    /// START STOP UNIT (SBC-3 §5.25). Stopping flushes the cache unless NO_FLUSH; an eject
    /// (LOEJ with START=0) is refused while removal is prevented.
    fn start_stop(&self, start: bool, loej: bool, no_flush: bool) -> Result<Plan, Sense> {
        if start {
            self.stopped.store(false, Ordering::Release);
            return Ok(Plan::Done(Response::good()));
        }
        if loej && self.removal_prevented() {
            return Err(Sense::new(
                sense::sense_key::ILLEGAL_REQUEST,
                sense::asc::MEDIUM_REMOVAL_PREVENTED,
            ));
        }
        self.stopped.store(true, Ordering::Release);
        if no_flush {
            Ok(Plan::Done(Response::good()))
        } else {
            Ok(Plan::Io(IoPlan::single(StoreOp::Flush, 0)))
        }
    }
}

/// The first `param_len` bytes of the data-out (fewer if the initiator sent fewer).
fn read_param(data_out: &dyn DataOut, param_len: u32) -> Vec<u8> {
    let n = data_out
        .len()
        .min(usize::try_from(param_len).unwrap_or(usize::MAX));
    let mut v = vec![0u8; n];
    data_out.read(0, &mut v);
    v
}
