//! Controller bring-up steps (NVMe 1.4 §7.6.1): the CC.EN / CSTS.RDY handshakes (§3.1.5,
//! §3.1.6), IDENTIFY of the controller and its first active namespace (§5.15), SET FEATURES
//! Number of Queues (§5.21.1.7), and what CAP and IDENTIFY imply for queue depth and transfer
//! geometry. Free functions over the device, its registers and the admin queue, so that
//! [`NvmeController`](super::NvmeController) runs them both before it exists (bring-up) and
//! during recovery.

use super::admin::AdminQueue;
use super::admin::ADMIN_ENTRIES;
use super::cmd;
use super::cmd::admin_opcode;
use super::cmd::IdentifyController;
use super::cmd::IdentifyControllerNvm;
use super::cmd::IdentifyNamespace;
use super::cmd::Sqe;
use super::cmd::IDENTIFY_LEN;
use super::controller::NvmeConfig;
use super::controller::NvmeInfo;
use super::controller::MAX_TRANSFER;
use super::controller::PAGE_SIZE;
use super::error::NvmeError;
use super::regs;
use super::regs::cc;
use super::regs::csts;
use super::regs::offset;
use super::regs::Cap;
use super::regs::Registers;
use super::regs::ALL_ONES_32;
use crate::engine::Geometry;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::DeviceBacking;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Poll CSTS until `done` (which decides what CFS means to the caller), the device is gone
/// (all-ones), or `timeout` passes.
pub(super) fn wait_csts(
    device: &dyn DeviceBacking,
    r: &Registers<'_>,
    what: &'static str,
    timeout: Duration,
    done: impl Fn(u32) -> bool,
) -> Result<(), NvmeError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(10);
    loop {
        let s = r.csts();
        if s == ALL_ONES_32 {
            return Err(NvmeError::Gone {
                device: device.id().to_owned(),
            });
        }
        if done(s) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NvmeError::Timeout {
                device: device.id().to_owned(),
                what,
                timeout,
            });
        }
        // A wait on the device: no lock may be held (asserted in test builds).
        scst_accel_hal::locks::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// CC.EN = 0 and wait for CSTS.RDY = 0 (NVMe 1.4 §3.1.5, §7.6.1). An enable still in
/// progress (EN = 1, RDY = 0, no CFS) is first waited out: clearing EN before RDY = 1 is
/// undefined (§3.1.5), as SPDK and FreeBSD also wait. Should RDY not come, EN is cleared anyway
/// and the wait for RDY = 0 (then a function reset) decides. Both waits are bounded by
/// [`Cap::ready_timeout`] (CAP.TO, or CRTO.CRWMT when larger): the first is an enable's.
pub(super) fn disable(device: &dyn DeviceBacking, r: &Registers<'_>, cap: Cap) -> Result<(), NvmeError> {
    let current = r.cc();
    if current == ALL_ONES_32 {
        return Err(NvmeError::Gone {
            device: device.id().to_owned(),
        });
    }
    if current & cc::EN != 0 && r.csts() & (csts::RDY | csts::CFS) == 0 {
        match wait_csts(
            device,
            r,
            "CSTS.RDY = 1 before CC.EN = 0",
            cap.ready_timeout(),
            |s| s & (csts::RDY | csts::CFS) != 0,
        ) {
            Ok(()) => {}
            Err(NvmeError::Gone { device }) => return Err(NvmeError::Gone { device }),
            Err(e) => log::warn!("{}: {e}; clearing CC.EN anyway", device.id()),
        }
    }
    if current & cc::EN != 0 {
        r.write32(offset::CC, current & !(cc::EN | cc::SHN_MASK));
    }
    wait_csts(
        device,
        r,
        "CSTS.RDY = 0 after CC.EN = 0",
        cap.ready_timeout(),
        |s| s & csts::RDY == 0,
    )
}

/// [`disable`], escalating to a function reset when the disable fails (other than by a gone
/// device) and disabling again after it: the escalation of a controller reset (NVMe 1.4
/// §7.3.2; Linux's `nvme_disable_ctrl()` failing leads to a PCI function reset in
/// `nvme_reset_work()`). `Ok` proves CSTS.RDY = 0: the controller does no DMA. On `Err` the
/// controller may still reach whatever memory it was given; the function reset's own failure
/// is logged and the disable's error returned.
pub(super) fn disable_or_reset(
    device: &dyn DeviceBacking,
    r: &Registers<'_>,
    cap: Cap,
) -> Result<(), NvmeError> {
    let id = device.id();
    match disable(device, r, cap) {
        Ok(()) => Ok(()),
        Err(NvmeError::Gone { device }) => Err(NvmeError::Gone { device }),
        Err(e) => {
            log::warn!("{id}: {e}; escalating to a function reset");
            let kind = device.reset().map_err(|source| {
                log::error!("{id}: function reset failed: {source}");
                e
            })?;
            log::info!("{id}: function reset done ({kind:?})");
            // The function reset returned the controller to its reset state (CC.EN = 0).
            disable(device, r, cap)
        }
    }
}

/// Program the admin queue and enable: AQA, ASQ, ACQ, CC, wait for CSTS.RDY = 1 (CFS fatal),
/// bounded by [`Cap::ready_timeout`]: CRTO.CRWMT when CAP.CRMS.CRWMS is set and it exceeds
/// CAP.TO, as Linux's `nvme_enable_ctrl()` waits.
pub(super) fn enable(
    device: &dyn DeviceBacking,
    r: &Registers<'_>,
    cap: Cap,
    admin: &AdminQueue,
) -> Result<(), NvmeError> {
    r.write32(offset::AQA, regs::aqa(ADMIN_ENTRIES));
    r.write64(offset::ASQ, admin.sq_iova());
    r.write64(offset::ACQ, admin.cq_iova());
    r.write32(offset::CC, cc::config(false));
    r.write32(offset::CC, cc::config(true));
    wait_csts(
        device,
        r,
        "CSTS.RDY = 1 after CC.EN = 1",
        cap.ready_timeout(),
        |s| s & (csts::RDY | csts::CFS) != 0,
    )?;
    let s = r.csts();
    if s & csts::CFS != 0 {
        return Err(NvmeError::Fatal {
            device: device.id().to_owned(),
            csts: s,
        });
    }
    admin.set_enabled(true);
    Ok(())
}

/// IDENTIFY into `page` (bring-up only: no buffer is shared between threads). The caller
/// owns the page: an IDENTIFY that timed out may still be written into it, so it must stay
/// mapped until the controller is proven disabled ([`disable_or_reset`]).
fn identify(
    admin: &AdminQueue,
    page: &MappedRegion,
    timeout: Duration,
    cns: u32,
    nsid: u32,
    cdw11: u32,
) -> Result<Box<[u8; IDENTIFY_LEN]>, NvmeError> {
    // Zeroed, as a fresh page was: what the controller does not write reads 0, not the last
    // IDENTIFY's data.
    page.region().fill(0, IDENTIFY_LEN, 0);
    let sqe = Sqe {
        opcode: admin_opcode::IDENTIFY,
        nsid,
        prp1: page.iova(),
        cdw10: cns,
        cdw11,
        ..Sqe::default()
    };
    admin.execute("IDENTIFY", sqe, timeout)?;
    let mut data = Box::new([0u8; IDENTIFY_LEN]);
    page.region().read_at(0, &mut data[..]);
    Ok(data)
}

/// VS of NVMe 1.2 (major in bits 31:16, minor in 15:8; NVMe 1.4 §3.1.2).
const VERSION_1_2: u32 = 0x0001_0200;

/// The NVM Command Set I/O Command Set specific Identify Controller data (CNS 06h, CSI 00h),
/// whose Dataset Management limits bound a deallocation ([`Geometry::max_deallocate_blocks`])
/// and whose WZSL bounds a Write Zeroes ([`Geometry::max_write_zeroes_blocks`]), as Linux's
/// `nvme_init_non_mdts_limits()` reads them. Asked only of a controller reporting
/// version 1.2 or later: Linux skips it below 1.1 (`nvme_ctrl_limited_cns()`), and below 1.2
/// for controllers with `NVME_QUIRK_IDENTIFY_CNS`, whose CNS decoding ignores the upper bits;
/// this driver has no such quirk table, so it takes the stricter bound for every controller
/// (a 1.1 controller then runs without limits, as before). A PCIe function is an I/O
/// controller, the other condition of Linux's. A completion with an error status (a
/// controller before NVMe 2.0 need not know CNS 06h and answers Invalid Field in Command) is
/// no limit known, as in Linux; a timeout or a lost controller fails the bring-up like any
/// other IDENTIFY. The data goes through the bring-up's one IDENTIFY `page`.
fn identify_nvm_limits(
    id: &str,
    admin: &AdminQueue,
    page: &MappedRegion,
    timeout: Duration,
    version: u32,
) -> Result<IdentifyControllerNvm, NvmeError> {
    if version < VERSION_1_2 {
        log::debug!(
            "{id}: version {version:#010x} is below 1.2: the NVM Command Set Identify Controller \
             data (CNS 06h) is not asked for; no Dataset Management limits"
        );
        return Ok(IdentifyControllerNvm::default());
    }
    let cdw11 = cmd::identify_cdw11(cmd::csi::NVM);
    match identify(
        admin,
        page,
        timeout,
        cmd::cns::IO_COMMAND_SET_CONTROLLER,
        0,
        cdw11,
    ) {
        Ok(data) => {
            let nvm = IdentifyControllerNvm::parse(&data);
            if nvm != IdentifyControllerNvm::default() {
                log::info!(
                    "{id}: Dataset Management limits: DMRL {} ranges, DMRSL {} blocks per range, \
                     DMSL {} blocks per command; Write Zeroes: WZSL {} (2^WZSL minimum pages) \
                     (0: none)",
                    nvm.dmrl,
                    nvm.dmrsl,
                    nvm.dmsl,
                    nvm.wzsl
                );
            }
            Ok(nvm)
        }
        Err(NvmeError::Command { status, .. }) => {
            log::info!(
                "{id}: no NVM Command Set Identify Controller data (CNS 06h: {status}); no \
                 Dataset Management limits known"
            );
            Ok(IdentifyControllerNvm::default())
        }
        Err(e) => Err(e),
    }
}

/// SET FEATURES Number of Queues (NVMe 1.4 §5.21.1.7); returns the I/O queue pairs granted.
pub(super) fn set_queue_count(admin: &AdminQueue, timeout: Duration, wanted: u16) -> Result<u16, NvmeError> {
    let n = u32::from(wanted.max(1) - 1);
    let sqe = Sqe {
        opcode: admin_opcode::SET_FEATURES,
        cdw10: cmd::feature::NUMBER_OF_QUEUES,
        cdw11: n | (n << 16),
        ..Sqe::default()
    };
    let cqe = admin.execute("SET FEATURES (Number of Queues)", sqe, timeout)?;
    let nsqa = (cqe.dw0 & 0xFFFF) + 1;
    let ncqa = (cqe.dw0 >> 16) + 1;
    Ok(u32::from(wanted.max(1)).min(nsqa).min(ncqa) as u16)
}

/// From disabled (CSTS.RDY = 0 proven by the caller's [`disable_or_reset`]) to enabled and
/// identified: enable, IDENTIFY the controller and its first active namespace, check both
/// suit this driver, and ask for `config.queues` I/O queue pairs. Returns the IDENTIFY data
/// and the pairs granted. `page` (at least [`IDENTIFY_LEN`] bytes) receives each IDENTIFY; on
/// failure the caller keeps it mapped until the controller is proven disabled.
pub(super) fn identify_and_configure(
    device: &Arc<dyn DeviceBacking>,
    config: &NvmeConfig,
    cap: Cap,
    admin: &AdminQueue,
    page: &MappedRegion,
    version: u32,
) -> Result<(NvmeInfo, u16), NvmeError> {
    let id = device.id();
    let r = Registers::new(device.bar0(), config.split_64bit_mmio);
    enable(device.as_ref(), &r, cap, admin)?;
    let timeout = config.admin_timeout;
    let data = identify(admin, page, timeout, cmd::cns::CONTROLLER, 0, 0)?;
    let controller = IdentifyController::parse(&data);
    let unsupported = |what: String| NvmeError::Unsupported {
        device: id.to_owned(),
        what,
    };
    if controller.sqes & 0xF > 6 || controller.cqes & 0xF > 4 {
        return Err(unsupported(format!(
            "required entry sizes SQES {:#x} CQES {:#x} exceed 64/16 bytes",
            controller.sqes, controller.cqes
        )));
    }
    let list = identify(admin, page, timeout, cmd::cns::ACTIVE_NSIDS, 0, 0)?;
    let nsid = cmd::first_active_nsid(&list).ok_or_else(|| unsupported("no active namespace".to_owned()))?;
    let data = identify(admin, page, timeout, cmd::cns::NAMESPACE, nsid, 0)?;
    let namespace = IdentifyNamespace::parse(&data);
    match namespace.format() {
        Some(f) if f.ms == 0 && namespace.lbads().is_some() => {}
        f => {
            return Err(unsupported(format!(
                "namespace {nsid} LBA format {f:?} (FLBAS {:#x}): need 512 B..64 KiB blocks without metadata",
                namespace.flbas
            )))
        }
    }
    let nvm = identify_nvm_limits(id, admin, page, timeout, version)?;
    let io_queues = set_queue_count(admin, timeout, config.queues)?;
    Ok((
        NvmeInfo {
            version,
            controller,
            nsid,
            namespace,
            nvm,
        },
        io_queues,
    ))
}

/// Entries per I/O queue: a power of two in 2..=min(MQES + 1, 4096).
pub(super) fn queue_depth(wanted: u32, cap: Cap) -> u16 {
    let max = (u32::from(cap.mqes) + 1).min(4096);
    let depth = wanted.clamp(2, max.max(2));
    (1u32 << (31 - depth.leading_zeros())) as u16
}

/// Geometry from CAP and IDENTIFY: MDTS (in CAP.MPSMIN units, 0 = no limit), the PRP list
/// page and `limit` (the board's own, in whole pages and blocks, at least one of each) bound
/// the transfer size.
pub(super) fn geometry(cap: Cap, info: &NvmeInfo, limit: u32) -> Geometry {
    let block_size = 1u32 << info.namespace.lbads().unwrap_or(9);
    let unit = u64::from(block_size).max(PAGE_SIZE);
    let limit = (u64::from(limit) / unit).max(1) * unit;
    let mdts_bytes = match info.controller.mdts {
        0 => u64::MAX,
        m => cap.min_page_size().checked_shl(u32::from(m)).unwrap_or(u64::MAX),
    };
    let max_blocks_bytes = u64::from(block_size) * 65536; // NLB is 16 bits
    let max_transfer = mdts_bytes
        .min(u64::from(MAX_TRANSFER))
        .min(max_blocks_bytes)
        .min(limit) as u32;
    // WZSL and NLB (`NvmeQueue::submit` refuses more); no PRP, so not MDTS. A WZSL below one
    // block is no Write Zeroes at all: the controller would refuse every one.
    let write_zeroes_blocks = info.nvm.max_write_zeroes_blocks(cap.min_page_size(), block_size);
    Geometry {
        block_size,
        capacity_blocks: info.namespace.nsze,
        max_transfer_bytes: max_transfer,
        max_segments: max_transfer / PAGE_SIZE as u32 + 1,
        segment_alignment: PAGE_SIZE as u32,
        supports_deallocate: info.controller.supports_dsm(),
        supports_write_zeroes: info.controller.supports_write_zeroes() && write_zeroes_blocks.is_some(),
        max_write_zeroes_blocks: write_zeroes_blocks.unwrap_or(0),
        volatile_cache: info.controller.volatile_cache(),
        // NVMe 1.4 §6.15: a Write with FUA completes once its data is non-volatile; a board
        // whose controller does not keep that says so by its quirk (`NvmeController::bring_up`).
        fua_durable: true,
        max_copy_blocks: if info.controller.supports_copy() {
            info.namespace.copy_blocks()
        } else {
            0
        },
        // One range per Dataset Management command (`NvmeQueue::submit`): DMRSL and DMSL.
        max_deallocate_blocks: info.nvm.max_deallocate_blocks(),
        // Each command of the fused pair carries one half: both must fit a transfer.
        max_compare_write_blocks: if info.controller.supports_fused_compare_write() {
            info.namespace
                .compare_write_unit(&info.controller)
                .min(max_transfer / block_size)
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_is_a_capped_power_of_two() {
        let cap = |mqes| Cap {
            mqes,
            ..Cap::from_bits(0)
        };
        assert_eq!(queue_depth(256, cap(2047)), 256);
        assert_eq!(queue_depth(300, cap(2047)), 256);
        assert_eq!(queue_depth(9999, cap(2047)), 2048);
        assert_eq!(queue_depth(9999, cap(u16::MAX)), 4096);
        assert_eq!(queue_depth(64, cap(31)), 32);
        assert_eq!(queue_depth(0, cap(1)), 2);
    }

    fn info(mdts: u8, lbads: u8, oncs: u16) -> NvmeInfo {
        let mut c = [0u8; IDENTIFY_LEN];
        c[77] = mdts;
        c[520..522].copy_from_slice(&oncs.to_le_bytes());
        let mut n = [0u8; IDENTIFY_LEN];
        n[0..8].copy_from_slice(&1000u64.to_le_bytes());
        n[128..132].copy_from_slice(&(u32::from(lbads) << 16).to_le_bytes());
        NvmeInfo {
            version: 0x0001_0400,
            controller: IdentifyController::parse(&c),
            nsid: 1,
            namespace: IdentifyNamespace::parse(&n),
            nvm: IdentifyControllerNvm::default(),
        }
    }

    #[test]
    fn geometry_honours_mdts_and_the_prp_list() {
        let cap = Cap::from_bits(0);
        let g = geometry(cap, &info(7, 9, cmd::ONCS_DSM), MAX_TRANSFER);
        assert_eq!(g.max_transfer_bytes, 512 * 1024, "QEMU's MDTS 7 = 128 pages");
        assert_eq!(g.max_segments, 129);
        assert_eq!((g.block_size, g.capacity_blocks), (512, 1000));
        assert!(g.supports_deallocate && !g.supports_write_zeroes && !g.volatile_cache);
        assert!(geometry(cap, &info(7, 9, cmd::ONCS_WRITE_ZEROES), MAX_TRANSFER).supports_write_zeroes);
        let g = geometry(cap, &info(0, 12, 0), MAX_TRANSFER);
        assert_eq!(g.max_transfer_bytes, MAX_TRANSFER, "no MDTS: one PRP list page");
        assert_eq!(g.block_size, 4096);
        assert!(!g.supports_deallocate);
        assert_eq!(
            geometry(cap, &info(10, 9, 0), MAX_TRANSFER).max_transfer_bytes,
            2 << 20
        );
        // The board's own limit, in whole pages (and blocks), never below one.
        assert_eq!(
            geometry(cap, &info(10, 9, 0), 1 << 20).max_transfer_bytes,
            1 << 20
        );
        let g = geometry(cap, &info(10, 9, 0), 70_000);
        assert_eq!((g.max_transfer_bytes, g.max_segments), (17 * 4096, 18));
        assert_eq!(geometry(cap, &info(10, 12, 0), 100).max_transfer_bytes, 4096);
        // A deallocation is bounded by DMRSL (and DMSL) only, not by the transfer limits.
        assert_eq!(g.max_deallocate_blocks, u32::MAX, "no limit reported");
        let mut limited = info(7, 9, cmd::ONCS_DSM);
        limited.nvm.dmrsl = 65536;
        assert_eq!(geometry(cap, &limited, MAX_TRANSFER).max_deallocate_blocks, 65536);
        // Write Zeroes: the 16-bit NLB, or WZSL (2 ^ WZSL pages of CAP.MPSMIN) when smaller.
        assert_eq!(g.max_write_zeroes_blocks, 65536, "no WZSL");
        limited.nvm.wzsl = 2;
        assert_eq!(geometry(cap, &limited, MAX_TRANSFER).max_write_zeroes_blocks, 32);
    }

    /// A WZSL below one block (WZSL 1: 8 KiB, blocks of 16 and 64 KiB) leaves the controller no
    /// Write Zeroes it accepts: the geometry offers none, as for a controller without it (ONCS
    /// bit 3 clear), and its limit is 0, so the queue refuses one before the controller sees it.
    /// With WZSL 0 (no limit), or a block that fits, the same controller's Write Zeroes is used.
    #[test]
    fn a_wzsl_below_one_block_is_no_write_zeroes() {
        let cap = Cap::from_bits(0);
        for lbads in [14, 16] {
            let mut limited = info(7, lbads, cmd::ONCS_DSM | cmd::ONCS_WRITE_ZEROES);
            assert!(
                geometry(cap, &limited, MAX_TRANSFER).supports_write_zeroes,
                "no WZSL"
            );
            limited.nvm.wzsl = 1;
            let g = geometry(cap, &limited, MAX_TRANSFER);
            assert!(!g.supports_write_zeroes, "{} B blocks, WZSL 8 KiB", g.block_size);
            assert_eq!(g.max_write_zeroes_blocks, 0);
            limited.nvm.wzsl = lbads - 12;
            let g = geometry(cap, &limited, MAX_TRANSFER);
            assert!(g.supports_write_zeroes, "WZSL of one block");
            assert_eq!(g.max_write_zeroes_blocks, 1);
        }
    }

    #[test]
    fn identify_namespace_keeps_nguid_and_eui64() {
        let mut n = [0u8; IDENTIFY_LEN];
        let nguid: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        n[104..120].copy_from_slice(&nguid);
        n[120..128].copy_from_slice(&[0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7]);
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!(ns.nguid, nguid);
        assert_eq!(ns.eui64, [0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7]);
        let ids = crate::engine::DeviceIds::from_raw(ns.nguid, [0; 8]).expect("an NGUID");
        assert_eq!(
            (ids.nguid, ids.eui64),
            (Some(nguid), None),
            "all-zero EUI64 is absent"
        );
        assert_eq!(crate::engine::DeviceIds::from_raw([0; 16], [0; 8]), None);
    }
}
