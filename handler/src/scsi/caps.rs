//! What the disk can do, in one record: the single source every advertisement is derived from.
//!
//! [`Capabilities::new`] turns a [`DiskConfig`] (itself built from the store's [`StoreInfo`] by
//! [`DiskConfig::for_store`], then narrowed by the operator) into the values the engine both
//! enforces and reports: INQUIRY and the VPD pages (`inquiry.rs`), READ CAPACITY(16)
//! (`capacity.rs`), the mode pages (`mode.rs`), REPORT SUPPORTED OPERATION CODES and the
//! decoder's limits (`opcodes.rs`, `cdb.rs`). Nothing there reads the configuration directly
//! for a capability, so what the disk says and what it does come from the same numbers.
//! `docs/scsi.md` has the table of fields, where each comes from and where it is reported.
//!
//! Normalisation (SBC-3 §6.6.3, and what Linux accepts):
//! - the transfer granularity is the physical block (2^exponent logical blocks);
//! - MAXIMUM TRANSFER LENGTH is rounded down to a multiple of the granularity (when at least
//!   one granule fits), so a maximal transfer never ends inside a physical block;
//! - OPTIMAL TRANSFER LENGTH is at most the maximum and a multiple of the granularity (Linux
//!   ignores an optimal above the maximum: "Optimal transfer size ... > dev_max");
//! - MAXIMUM COMPARE AND WRITE LENGTH: SCST's core executes COMPARE AND WRITE for a user-space
//!   disk (`scst_user.md` §6.4) as one READ(16) and one WRITE(16) of NUMBER OF LOGICAL BLOCKS
//!   each, sent to this engine; where the engine executes it itself (TCMU: LIO passes it on),
//!   its compare and its write are one store request of that many blocks each. Either way it
//!   is bounded by the maximum transfer length and by the one-byte NUMBER OF LOGICAL BLOCKS
//!   field (255).
//!
//! [`StoreInfo`]: crate::store::StoreInfo

use super::BlockLimits;
use super::DiskConfig;

/// Largest NUMBER OF LOGICAL BLOCKS a COMPARE AND WRITE CDB can carry (one byte, SBC-3 §5.2).
pub const COMPARE_AND_WRITE_FIELD_MAX: u32 = 255;

/// MEDIUM ROTATION RATE 0001h: a non-rotating medium (SBC-3 §6.6.2).
pub const NON_ROTATING: u16 = 1;

/// MEDIUM ROTATION RATE 0000h: not reported (a spinning medium whose rate is not known).
pub const ROTATION_NOT_REPORTED: u16 = 0;

/// Who runs COMPARE AND WRITE for this disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareAndWrite {
    /// Not offered: RSOC says unsupported, MAXIMUM COMPARE AND WRITE LENGTH is 0.
    None,
    /// SCST's core (`scst_cmp_wr_local`, a `SCST_LOCAL_CMD` with `SCST_SCSI_ATOMIC`): it holds
    /// back every overlapping command of the device while it reads the range with READ(16),
    /// compares, and writes it with WRITE(16) (CDB byte 1 passed on, so DPO and FUA reach the
    /// engine). The engine serves only those two commands.
    ScstCore {
        /// MAXIMUM COMPARE AND WRITE LENGTH in blocks (1..=255).
        max_blocks: u8,
    },
    /// This engine (the frontend passes 0x89 on: TCMU, where LIO's passthrough parser hands it
    /// to user space): a compare of the Data-Out's first half against the medium, then on a
    /// match a write of its second half, with the range held exclusively across both
    /// ([`super::ranges`]) against every other write of the disk, from every worker.
    Handler {
        /// MAXIMUM COMPARE AND WRITE LENGTH in blocks (1..=255).
        max_blocks: u8,
    },
}

/// Who is to run COMPARE AND WRITE for a disk: the frontend's choice, in [`DiskConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareAndWriteBy {
    /// Nobody: not offered (a device registered with parse_type CALL, whose PARSE of 0x89 the
    /// core would send here without running it).
    Nobody,
    /// SCST's core (scst_user with parse_type STANDARD: the default).
    ScstCore,
    /// This engine (TCMU). Only for a frontend that takes the disk's range locks around a
    /// command's store steps and hands each step its [`super::IoPlan::buffer_offset`] (the
    /// TCMU executor): the scst_user worker does neither, since SCST's core runs the command
    /// there.
    Handler,
}

impl CompareAndWrite {
    /// MAXIMUM COMPARE AND WRITE LENGTH (Block Limits byte 5): 0 when not offered.
    pub fn max_blocks(self) -> u8 {
        match self {
            Self::None => 0,
            Self::ScstCore { max_blocks } | Self::Handler { max_blocks } => max_blocks,
        }
    }

    /// Does this engine execute it (and so must writes take the range locks)?
    pub fn in_engine(self) -> bool {
        matches!(self, Self::Handler { .. })
    }
}

/// Largest READ(16) / WRITE(16) SCST's copy manager sends while it copies a segment itself
/// (`SCST_CM_MAX_EACH_IO_SIZE`, scst_copy_mgr.c:35): 512 KiB, whatever the device's Block
/// Limits say.
pub const COPY_MANAGER_IO_BYTES: u32 = 512 * 1024;

/// Copy offload the disk takes part in (`docs/xcopy.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOffload {
    /// Not advertised: 3PC = 0, EXTENDED COPY and RECEIVE COPY RESULTS not in RSOC.
    None,
    /// SCST's copy manager executes EXTENDED COPY(LID1) and answers RECEIVE COPY RESULTS for
    /// this disk (both core-local commands, the engine never sees them), once the device is a
    /// LUN of `copy_manager_tgt`. It copies with READ(16) / WRITE(16) of up to
    /// [`COPY_MANAGER_IO_BYTES`] through this engine, so it is offered only when the maximum
    /// transfer takes them. With `remap`, segments inside the disk are first offered to the
    /// handler (EXT_COPY_REMAP), which copies them in the store.
    ScstCopyManager {
        /// The handler registers `ext_copy_remap_supported = 1` and copies in the store.
        remap: bool,
    },
}

/// Logical block provisioning (SBC-3 §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provisioning {
    /// Thin provisioned: LBPME, VPD B2h, UNMAP and WRITE SAME with UNMAP.
    pub thin: bool,
    /// Deallocated blocks read as zeroes (LBPRZ); only ever true on a thin disk.
    pub unmapped_reads_zero: bool,
    /// GET LBA STATUS is offered; only ever true on a thin disk.
    pub lba_status: bool,
}

/// Everything the disk advertises, normalised. Built once per disk by [`Capabilities::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (0..=15).
    pub physical_block_exponent: u8,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY in blocks: the physical block (1 when the logical
    /// block is the physical one; the page then reports 0, "not reported").
    pub granularity_blocks: u32,
    /// The limits as enforced and reported (see the module doc for the normalisation).
    pub limits: BlockLimits,
    /// COMPARE AND WRITE.
    pub compare_and_write: CompareAndWrite,
    /// With [`CompareAndWrite::Handler`]: up to this many blocks the store compares and writes
    /// in one atomic step of the device ([`crate::store::StoreOp::CompareAndWrite`], NVMe's
    /// fused Compare and Write), atomic also against other hosts of the medium; longer ones,
    /// and every one when 0, compare then write under the engine's range lock.
    pub compare_and_write_in_device: u32,
    /// Provisioning.
    pub provisioning: Provisioning,
    /// The default WCE of the caching mode page (the initial one, and the one a reset
    /// restores): [`DiskConfig::write_cache`], and 0 without a volatile cache.
    pub write_cache: bool,
    /// A volatile write cache exists: V_SUP in the Extended INQUIRY Data page.
    pub volatile_cache: bool,
    /// D_SENSE of the control mode page (not changeable, [`DiskConfig::d_sense`]).
    pub d_sense: bool,
    /// DPO and FUA are accepted on READ/WRITE (DPOFUA in the mode parameter header). Always
    /// true: FUA is honoured (a write is durable before GOOD; a read with WCE 1 flushes the
    /// cache first, so its blocks come from the medium, and fails only if that flush may have
    /// lost a write of its blocks) and DPO, a cache hint, is accepted.
    pub dpo_fua: bool,
    /// Write protected (WP in the mode parameter header).
    pub read_only: bool,
    /// MEDIUM ROTATION RATE (VPD B1h).
    pub rotation_rate: u16,
    /// Copy offload.
    pub copy_offload: CopyOffload,
}

impl Capabilities {
    /// The capabilities of a disk configured as `config` (checked by `Disk::try_new`: block
    /// size a power of two, a non-zero maximum transfer).
    pub fn new(config: &DiskConfig) -> Self {
        let exponent = config.physical_block_exponent.min(15);
        let granularity = 1u32 << exponent;
        let mut limits = config.limits;
        limits.max_transfer_blocks = round_down(limits.max_transfer_blocks.max(1), granularity);
        limits.optimal_transfer_blocks = round_down(
            limits.optimal_transfer_blocks.min(limits.max_transfer_blocks),
            granularity,
        );
        limits.unmap_granularity = limits.unmap_granularity.max(1);
        let caw_max = limits.max_transfer_blocks.min(COMPARE_AND_WRITE_FIELD_MAX);
        let compare_and_write = match (u8::try_from(caw_max), config.compare_and_write) {
            (Ok(max_blocks), CompareAndWriteBy::ScstCore) if max_blocks > 0 => {
                CompareAndWrite::ScstCore { max_blocks }
            }
            (Ok(max_blocks), CompareAndWriteBy::Handler) if max_blocks > 0 => {
                CompareAndWrite::Handler { max_blocks }
            }
            _ => CompareAndWrite::None,
        };
        let thin = config.thin_provisioning;
        let compare_and_write_in_device = if compare_and_write.in_engine() {
            config
                .store_compare_and_write_blocks
                .min(u32::from(compare_and_write.max_blocks()))
        } else {
            0
        };
        Self {
            block_size: config.block_size,
            physical_block_exponent: exponent,
            granularity_blocks: granularity,
            limits,
            compare_and_write,
            compare_and_write_in_device,
            provisioning: Provisioning {
                thin,
                unmapped_reads_zero: thin && config.unmapped_reads_zero,
                lba_status: thin && config.lba_status,
            },
            write_cache: config.write_cache && config.volatile_cache,
            volatile_cache: config.volatile_cache,
            d_sense: config.d_sense,
            dpo_fua: true,
            read_only: config.read_only,
            rotation_rate: config.rotation_rate,
            copy_offload: match config.copy_offload {
                // SCST's copy manager refuses read-only devices ("Copy Manager does not support
                // read only devices", scst_copy_mgr.c:2781), and its 512 KiB READ/WRITEs must fit.
                Some(remap)
                    if !config.read_only
                        && u64::from(limits.max_transfer_blocks) * u64::from(config.block_size)
                            >= u64::from(COPY_MANAGER_IO_BYTES) =>
                {
                    CopyOffload::ScstCopyManager { remap }
                }
                _ => CopyOffload::None,
            },
        }
    }
}

/// `value` rounded down to a multiple of `granule`, unless that would be 0 (a limit below one
/// granule stays as it is: the granularity is then only a hint the limit cannot follow).
fn round_down(value: u32, granule: u32) -> u32 {
    if granule > 1 && value >= granule {
        value - value % granule
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: u32, optimal: u32, exponent: u8) -> Capabilities {
        let mut cfg = DiskConfig::new(512, 1 << 20);
        cfg.limits.max_transfer_blocks = max;
        cfg.limits.optimal_transfer_blocks = optimal;
        cfg.physical_block_exponent = exponent;
        Capabilities::new(&cfg)
    }

    #[test]
    fn optimal_is_clamped_to_the_maximum_and_aligned() {
        let c = caps(1024, 2048, 0);
        assert_eq!(
            (c.limits.max_transfer_blocks, c.limits.optimal_transfer_blocks),
            (1024, 1024)
        );
        let c = caps(1020, 2048, 3);
        assert_eq!(
            (c.limits.max_transfer_blocks, c.limits.optimal_transfer_blocks),
            (1016, 1016)
        );
        let c = caps(4, 2048, 3);
        assert_eq!(
            (c.limits.max_transfer_blocks, c.limits.optimal_transfer_blocks),
            (4, 4),
            "a maximum below one physical block is kept"
        );
    }

    #[test]
    fn compare_and_write_limit_follows_the_transfer_limit() {
        assert_eq!(
            caps(1024, 2048, 0).compare_and_write,
            CompareAndWrite::ScstCore { max_blocks: 255 }
        );
        assert_eq!(
            caps(64, 64, 0).compare_and_write,
            CompareAndWrite::ScstCore { max_blocks: 64 }
        );
        let mut cfg = DiskConfig::new(512, 100);
        cfg.compare_and_write = CompareAndWriteBy::Nobody;
        assert_eq!(Capabilities::new(&cfg).compare_and_write, CompareAndWrite::None);
        cfg.compare_and_write = CompareAndWriteBy::Handler;
        cfg.limits.max_transfer_blocks = 16;
        assert_eq!(
            Capabilities::new(&cfg).compare_and_write,
            CompareAndWrite::Handler { max_blocks: 16 }
        );
    }

    #[test]
    fn copy_offload_needs_a_writable_disk_that_takes_the_copy_managers_transfers() {
        let mut cfg = DiskConfig::new(512, 100);
        assert_eq!(
            Capabilities::new(&cfg).copy_offload,
            CopyOffload::None,
            "not asked for"
        );
        cfg.copy_offload = Some(true);
        assert_eq!(
            Capabilities::new(&cfg).copy_offload,
            CopyOffload::ScstCopyManager { remap: true }
        );
        // 512 KiB in 512-byte blocks is 1024 blocks: one fewer and the core's READ(16) fails.
        cfg.limits.max_transfer_blocks = 1023;
        assert_eq!(Capabilities::new(&cfg).copy_offload, CopyOffload::None);
        cfg.limits.max_transfer_blocks = 1024;
        cfg.read_only = true;
        assert_eq!(Capabilities::new(&cfg).copy_offload, CopyOffload::None);
    }

    #[test]
    fn provisioning_claims_need_a_thin_disk() {
        let mut cfg = DiskConfig::new(512, 100);
        cfg.unmapped_reads_zero = true;
        cfg.lba_status = true;
        let p = Capabilities::new(&cfg).provisioning;
        assert!(!p.unmapped_reads_zero && !p.lba_status);
        cfg.thin_provisioning = true;
        let p = Capabilities::new(&cfg).provisioning;
        assert!(p.thin && p.unmapped_reads_zero && p.lba_status);
    }
}
