//! The NVMe controller's lifecycle (NVMe 1.4 §7.6): bring-up, the resets recovery is built
//! from (§7.3.2), recovery, normal shutdown (§7.6.2), and the state the queues share. Generic
//! over [`DeviceBacking`], so the same code drives a VFIO function and a simulated controller.
//! The bring-up steps are in `bringup`, ABORT under the Abort Command Limit in `abort`, the
//! Error Information log in `error_log`.

use super::abort::AbortSlots;
use super::admin::AdminQueue;
use super::admin::ADMIN_ENTRIES;
use super::bringup::disable;
use super::bringup::disable_or_reset;
use super::bringup::enable;
use super::bringup::geometry;
use super::bringup::identify_and_configure;
use super::bringup::queue_depth;
use super::bringup::set_queue_count;
use super::bringup::wait_csts;
use super::cmd;
use super::cmd::IdentifyController;
use super::cmd::IdentifyControllerNvm;
use super::cmd::IdentifyNamespace;
use super::cmd::Sqe;
use super::cmd::IDENTIFY_LEN;
use super::error::NvmeError;
use super::error_log::ErrorLogPage;
use super::prp::PrpEntries;
use super::queue::NvmeQueue;
use super::regs;
use super::regs::cc;
use super::regs::csts;
use super::regs::offset;
use super::regs::Cap;
use super::regs::Registers;
use super::regs::ALL_ONES_32;
use crate::engine::Geometry;
use crate::engine::Recovered;
use crate::recovery::Outcome;
use crate::recovery::RecoveryWord;
use crate::recovery::Turn;
use crate::recovery::Waiting;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::IovaAllocator;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::HalError;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The memory page size this driver programs (CC.MPS = 0).
pub const PAGE_SIZE: u64 = 4096;
/// PRP list entries in one list page: the limit on pages per command after the first.
pub const PRP_LIST_ENTRIES: usize = (PAGE_SIZE / 8) as usize;
/// Largest transfer this driver issues: what one PRP list page describes (2 MiB).
pub const MAX_TRANSFER: u32 = PRP_LIST_ENTRIES as u32 * PAGE_SIZE as u32;
/// The default of [`NvmeConfig::shutdown_timeout`]: Linux's `nvme_core.shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest bound on a normal shutdown whatever RTD3E says (Linux's 60 s).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The bound on a normal shutdown (CC.SHN = 01b until CSTS.SHST = 10b, NVMe 1.4 §7.6.2) of a
/// controller reporting RTD3 Entry Latency `rtd3e_micros` (Identify Controller bytes 91:88, 0 =
/// not reported), as Linux bounds it (`nvme_init_identify`): RTD3E in whole seconds, at least
/// `default` and at most [`MAX_SHUTDOWN_TIMEOUT`] (or `default`, if that is longer). Linux
/// truncates to seconds; this rounds up, so the bound never falls short of what the controller
/// reports. CAP.TO does not bound a shutdown: it is the bound on CSTS.RDY transitions (§3.1.1).
pub fn shutdown_timeout(rtd3e_micros: u32, default: Duration) -> Duration {
    if rtd3e_micros == 0 {
        return default;
    }
    let reported = Duration::from_secs(u64::from(rtd3e_micros.div_ceil(1_000_000)));
    reported.max(default).min(MAX_SHUTDOWN_TIMEOUT.max(default))
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct NvmeConfig {
    /// I/O queue pairs to create (fewer when the controller grants fewer).
    pub queues: u16,
    /// Entries per I/O queue (rounded down to a power of two, capped by CAP.MQES + 1 and 4096).
    pub queue_depth: u32,
    /// Use MSI-X (vector q for I/O queue q; the admin queue is always polled).
    pub interrupts: bool,
    /// IOVA window for queues, PRP lists and data buffers.
    pub iova_base: u64,
    /// Size of the window.
    pub iova_size: u64,
    /// Bound on one admin command.
    pub admin_timeout: Duration,
    /// WORKAROUND: a board that cannot take 64-bit MMIO gets two 32-bit accesses, low first.
    pub split_64bit_mmio: bool,
    /// WORKAROUND: the controller completes a FUA write before the data is stable (the board
    /// quirk `fua_ignored`): the geometry says so ([`Geometry::fua_durable`] false), and the
    /// store follows each FUA write with a Flush.
    pub fua_ignored: bool,
    /// WORKAROUND: the namespace's NGUID/EUI64 are not unique to it (the board quirk
    /// `bogus_device_ids`): the controller reports no device ids, so the disk's identity is
    /// never derived from them.
    pub bogus_device_ids: bool,
    /// The bound on a normal shutdown when the controller reports no RTD3E, and the least
    /// bound when it does ([`shutdown_timeout`]); default [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// The largest transfer of one command the board handles well (the board definition's
    /// `max_transfer_bytes`), rounded down to whole pages; MDTS and one PRP list page
    /// ([`MAX_TRANSFER`]) cap it further.
    pub max_transfer_bytes: u32,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            queues: 2,
            queue_depth: 256,
            interrupts: true,
            iova_base: 1 << 32,
            iova_size: 1 << 40,
            admin_timeout: Duration::from_secs(5),
            split_64bit_mmio: false,
            fua_ignored: false,
            bogus_device_ids: false,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_transfer_bytes: MAX_TRANSFER,
        }
    }
}

/// What IDENTIFY reported.
#[derive(Clone, Debug)]
pub struct NvmeInfo {
    /// VS.
    pub version: u32,
    /// Controller data.
    pub controller: IdentifyController,
    /// The namespace served.
    pub nsid: u32,
    /// Its data.
    pub namespace: IdentifyNamespace,
    /// The NVM Command Set's Identify Controller data (CNS 06h): its Dataset Management limits,
    /// all 0 (none) when the controller does not report it.
    pub nvm: IdentifyControllerNvm,
}

/// An enabled NVMe controller, shared by its queues.
pub struct NvmeController {
    device: Arc<dyn DeviceBacking>,
    config: NvmeConfig,
    cap: Cap,
    iovas: Arc<IovaLock>,
    admin: AdminQueue,
    info: NvmeInfo,
    geometry: Geometry,
    /// I/O queue pairs granted by SET FEATURES Number of Queues.
    io_queues: u16,
    /// Bumped by every successful recovery (the trait's reset count).
    resets: AtomicU64,
    /// Bumped whenever the controller is disabled: I/O queues created before it are gone.
    epoch: AtomicU64,
    /// The latest epoch whose disable was proven (CSTS.RDY = 0 observed after CC.EN = 0, also
    /// after a function reset): the controller does no DMA for a queue of an earlier epoch.
    quiesced: AtomicU64,
    /// Resets and shutdowns under way, whose outcome a queue that finds the controller
    /// disabled under it waits for (`NvmeController::await_quiesced`).
    disabling: AtomicU64,
    /// What the callers meant the controller to be. Bits 63:1 count the resets and shutdowns
    /// meant to leave it disabled, a caller's [`NvmeController::reset`] or
    /// [`NvmeController::shutdown`] (the teardown, a store that gave up), each counted before
    /// it touches the controller. Bit 0 ([`LEFT_DISABLED`]): the latest reset was one of those,
    /// not a recovery's: a queue that must reset the controller itself because that reset
    /// proved nothing leaves it disabled then; after a recovery's, it recovers it
    /// (`NvmeController::await_quiesced`). A recovery (`NvmeController::recover_now`)
    /// clears bit 0 only if the count has not moved since its caller looked, and gives way
    /// (leaves the controller disabled and fails) when the count moves while it runs: it never
    /// re-enables a controller such a reset or shutdown disabled meanwhile.
    intent: AtomicU64,
    /// What a stop does just before it takes its recovery's turn (`recover_unproven`), for
    /// the tests of what may happen between its look and its turn: 0 nothing, 1 another
    /// recovery, 2 the start of a caller's reset or shutdown.
    #[cfg(test)]
    before_turn: std::sync::atomic::AtomicU8,
    /// The recoveries ([`NvmeController::recover`]): one at a time, running from before its
    /// reset until after it published its reset count; a second caller waits for the running
    /// one and takes its outcome, and no I/O queue is re-created while one runs
    /// ([`NvmeController::recovery_under_way`]).
    recovery: RecoveryWord,
    /// Per I/O queue id (index 0 unused): the controller epoch in which that queue was
    /// created on the device, plus 1; 0 once deleted. What the shutdown deletes first.
    live_queues: Vec<AtomicU64>,
    /// MSI-X vectors the host granted at bring-up (vector 0 the admin queue's, vector q I/O
    /// queue q's; 0 when the queues were polled by configuration), for the register dump.
    vectors_granted: AtomicU32,
    /// ABORT slots under the Abort Command Limit (NVMe 1.4 §5.1), see `abort`.
    pub(super) aborts: AbortSlots,
    /// The Error Information log page and its reader, see `error_log`.
    pub(super) error_log_page: ErrorLogPage,
}

impl std::fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeController")
            .field("device", &self.device.id())
            .field("cap", &self.cap)
            .field("info", &self.info)
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl NvmeController {
    /// Bring the controller up (NVMe 1.4 §7.6.1): disable it if enabled, program and enable
    /// the admin queue, IDENTIFY the controller and its first active namespace, ask for
    /// `config.queues` I/O queue pairs, and create them.
    ///
    /// # Errors
    /// [`NvmeError`]; on failure the controller is left disabled (no DMA).
    pub fn bring_up(
        device: Arc<dyn DeviceBacking>,
        config: &NvmeConfig,
    ) -> Result<(Arc<NvmeController>, Vec<NvmeQueue>), NvmeError> {
        let id = device.id().to_owned();
        let r = Registers::new(device.bar0(), config.split_64bit_mmio);
        let cap_bits = r.cap();
        let version = r.read32(offset::VS);
        if cap_bits == u64::MAX || version == ALL_ONES_32 {
            return Err(NvmeError::Gone { device: id });
        }
        let mut cap = Cap::from_bits(cap_bits);
        if cap.crwms {
            // Read before the first disable: its wait for an enable in progress is bounded by
            // the same ready timeout as the enable (`Cap::ready_timeout`). Once, not at every
            // enable as Linux's `nvme_enable_ctrl()` does: CRTO is fixed by the controller, and
            // a recovery re-reading it could only move the bounds a waiter already took. CAP was
            // read before this driver's CC write: a previous owner's CC.CRIME = 1 makes CAP.TO
            // hold CRIMT rather than CRWMT (NVMe 2.0 §3.1.3.1; Linux reads CAP again after its CC
            // write), which the larger of CAP.TO and CRWMT covers.
            let crto = r.crto();
            if crto == ALL_ONES_32 {
                return Err(NvmeError::Gone { device: id });
            }
            cap = cap.with_crto(crto);
            if cap.crwmt > super::regs::MAX_CRWMT_UNITS {
                log::warn!(
                    "{id}: CRTO {crto:#010x}: CRWMT {} s taken as {} s, the most this driver waits \
                     for CSTS.RDY (every reset's and recovery's bound is a multiple of it)",
                    u32::from(cap.crwmt) / 2,
                    u32::from(super::regs::MAX_CRWMT_UNITS) / 2
                );
            }
            if cap.crwmt < u16::from(cap.to) {
                // Linux's "bad crto" warning: CRWMT should be at least CAP.TO (NVMe 2.0
                // §3.1.3.1); the larger is kept.
                log::warn!(
                    "{id}: CRTO {crto:#010x}: CRWMT {} ms is below CAP.TO {} ms; waiting CAP.TO",
                    u32::from(cap.crwmt) * 500,
                    u32::from(cap.to) * 500
                );
            } else {
                log::info!(
                    "{id}: CRTO {crto:#010x}: ready timeout {:?} (CRWMT; CAP.TO {} ms)",
                    cap.ready_timeout(),
                    u32::from(cap.to) * 500
                );
            }
        }
        let unsupported = |what: String| NvmeError::Unsupported {
            device: id.clone(),
            what,
        };
        if cap.css & 1 == 0 {
            return Err(unsupported(format!(
                "CAP.CSS {:#x} lacks the NVM command set",
                cap.css
            )));
        }
        if cap.mpsmin != 0 {
            return Err(unsupported(format!(
                "CAP.MPSMIN {} (this driver uses 4 KiB memory pages)",
                cap.mpsmin
            )));
        }
        if r.cc() & cc::EN != 0 || r.csts() & csts::RDY != 0 {
            log::info!("{id}: controller was enabled; disabling it first");
        }
        // Disabled before anything is mapped for it: a controller left enabled (a driver that
        // died) may still reach the rings and buffers its last owner gave it, at IOVAs this
        // bring-up's window may hold. Mapped only after CSTS.RDY = 0 is proven, this
        // bring-up's memory is reached only through what it programs itself. A disable that
        // fails here (function reset included) leaves nothing of this bring-up mapped, so no
        // memory waits for a proof: the error returns at once, not after a second disable and
        // function reset (the failure path below, for a controller given the admin queue).
        disable_or_reset(device.as_ref(), &r, cap)?;
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(
            config.iova_base,
            config.iova_size,
        )));
        let mut admin = AdminQueue::new(
            Arc::clone(&device),
            config.split_64bit_mmio,
            (cap.doorbell(0, false), cap.doorbell(0, true)),
            map_region(&device, &iovas, usize::from(ADMIN_ENTRIES) * 64, "the admin SQ")?,
            map_region(&device, &iovas, usize::from(ADMIN_ENTRIES) * 16, "the admin CQ")?,
        )?;
        let log_page = map_region(&device, &iovas, PAGE_SIZE as usize, "the error log page")?;
        let mut identify_page = map_region(&device, &iovas, IDENTIFY_LEN, "the IDENTIFY buffer")?;
        let start = Instant::now();
        let result = identify_and_configure(&device, config, cap, &admin, &identify_page, version);
        let (info, io_queues) = match result {
            Ok(v) => v,
            Err(e) => {
                // An admin command that timed out may still be executed: the controller may
                // fetch from the admin SQ, write the IDENTIFY buffer and post to the admin CQ
                // until CSTS.RDY = 0 (NVMe 1.4 §3.1.6, §7.3.2). Only a proven disable, or a
                // function reset, lets this memory be unmapped; otherwise it stays mapped
                // (leaked), as a late write into an IOVA given to another mapping would corrupt
                // it.
                admin.set_enabled(false);
                if let Err(d) = disable_or_reset(device.as_ref(), &r, cap) {
                    log::error!(
                        "{id}: the controller is not proven disabled after a failed bring-up: {d}; \
                         its admin queue and IDENTIFY buffer stay mapped"
                    );
                    admin.leak_on_drop();
                    identify_page.leak_on_drop();
                }
                return Err(e);
            }
        };
        // Every IDENTIFY completed: the controller no longer writes the buffer.
        drop(identify_page);
        let geometry = Geometry {
            fua_durable: !config.fua_ignored,
            ..geometry(cap, &info, config.max_transfer_bytes)
        };
        if info.controller.supports_write_zeroes() && !geometry.supports_write_zeroes {
            log::warn!(
                "{id}: Write Zeroes not used: WZSL {} (2^WZSL pages of {} bytes) is below one \
                 block of {} bytes, so the controller would refuse every one (Invalid Field in \
                 Command); ranges are zeroed by writing zero blocks, as without Write Zeroes in \
                 ONCS",
                info.nvm.wzsl,
                cap.min_page_size(),
                geometry.block_size
            );
        }
        let controller = Arc::new(NvmeController {
            device: Arc::clone(&device),
            config: config.clone(),
            cap,
            iovas,
            admin,
            info,
            geometry,
            io_queues,
            resets: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            quiesced: AtomicU64::new(0),
            disabling: AtomicU64::new(0),
            intent: AtomicU64::new(0),
            #[cfg(test)]
            before_turn: std::sync::atomic::AtomicU8::new(0),
            recovery: RecoveryWord::default(),
            live_queues: (0..=io_queues).map(|_| AtomicU64::new(0)).collect(),
            vectors_granted: AtomicU32::new(0),
            aborts: AbortSlots::new(),
            error_log_page: ErrorLogPage::new(log_page),
        });
        let mut controller = controller;
        let queues = match controller.create_queues() {
            Ok(queues) => queues,
            Err((e, failed)) => {
                // The queue that failed may exist on the controller (its CREATE I/O CQ took, or
                // timed out and may yet take): its rings, and the admin rings, stay mapped
                // until the reset proves the controller disabled.
                if let Err(d) = controller.reset() {
                    log::error!(
                        "{id}: resetting the controller after a failed bring-up: {d}; its admin \
                         queue and the failed I/O queue's rings stay mapped"
                    );
                    if let Some(mut q) = failed {
                        q.leak_on_drop();
                    }
                    // No queue holds the controller any more: the failed one was dropped just
                    // above (its rings leaked, not unmapped) and those created before it with
                    // the error, so this is its last reference and its admin rings are leaked
                    // with it. (Were another holder left, the rings would be unmapped at its
                    // drop: there is none on this path.)
                    if let Some(c) = Arc::get_mut(&mut controller) {
                        c.admin.leak_on_drop();
                    }
                }
                return Err(e);
            }
        };
        let info = &controller.info;
        log::info!(
            "{id}: NVMe {}.{} controller up in {:?}: {} ({}, fw {}), namespace {}: {} blocks of {} bytes, \
             {} I/O queues x {} entries, max transfer {} KiB, MDTS {}, ONCS {:#x}, VWC {}, \
             Copy: OCFS {:#x} MSSRL {} MCL {} (up to {} blocks per Copy)",
            info.version >> 16,
            (info.version >> 8) & 0xFF,
            start.elapsed(),
            info.controller.mn,
            info.controller.sn,
            info.controller.fr,
            info.nsid,
            geometry.capacity_blocks,
            geometry.block_size,
            queues.len(),
            queues.first().map_or(0, |q| q.depth()),
            geometry.max_transfer_bytes / 1024,
            info.controller.mdts,
            info.controller.oncs,
            info.controller.vwc,
            info.controller.ocfs,
            info.namespace.mssrl,
            info.namespace.mcl,
            geometry.max_copy_blocks
        );
        Ok((controller, queues))
    }

    /// Create the I/O queues on the device. On failure, the queue whose creation failed comes
    /// back with the error (when its rings were mapped): the controller may hold its CQ, so
    /// the caller drops it only after a reset (queues created before it delete themselves when
    /// dropped).
    fn create_queues(self: &Arc<Self>) -> Result<Vec<NvmeQueue>, (NvmeError, Option<Box<NvmeQueue>>)> {
        let count = self.io_queues;
        let depth = queue_depth(self.config.queue_depth, self.cap);
        let max_vectors = self.device.max_interrupts();
        let mut irqs = Vec::new();
        if self.config.interrupts && max_vectors > 1 {
            let vectors = max_vectors.min(u32::from(count) + 1);
            // Vector 0 is the (polled) admin queue's, vector q I/O queue q's: fewer than 2
            // granted gives no I/O queue one, and all are polled (crate::vectors).
            irqs = crate::vectors::enable_available(self.device.as_ref(), vectors, 2)
                .map_err(|source| (self.hal(source), None))?
                .into_iter()
                .map(Some)
                .collect();
        }
        self.vectors_granted.store(irqs.len() as u32, Ordering::Relaxed);
        let mut queues = Vec::with_capacity(usize::from(count));
        for qid in 1..=count {
            let irq = irqs.get_mut(usize::from(qid)).and_then(Option::take);
            let mut q = NvmeQueue::new(Arc::clone(self), qid, depth, irq).map_err(|e| (e, None))?;
            if let Err(e) = q.create_on_device(self.epoch()) {
                return Err((e, Some(Box::new(q))));
            }
            queues.push(q);
        }
        Ok(queues)
    }

    fn hal(&self, source: HalError) -> NvmeError {
        NvmeError::Hal {
            device: self.id().to_owned(),
            source: Box::new(source),
        }
    }

    /// Device identifier.
    pub fn id(&self) -> &str {
        self.device.id()
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn DeviceBacking> {
        &self.device
    }

    /// The IOVA window shared by queues, PRP lists and the SGV pool.
    pub fn iovas(&self) -> &Arc<IovaLock> {
        &self.iovas
    }

    /// IDENTIFY data.
    pub fn info(&self) -> &NvmeInfo {
        &self.info
    }

    /// Geometry and limits.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// CAP as read at bring-up, with CRTO.CRWMT when CAP.CRMS.CRWMS is set
    /// ([`Cap::ready_timeout`] is the larger of the two).
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The settings the controller was brought up with.
    pub fn config(&self) -> &NvmeConfig {
        &self.config
    }

    /// Completions on the admin queue that matched no command.
    pub fn admin_unknown_completions(&self) -> u64 {
        self.admin.unknown_completions()
    }

    pub(crate) fn registers(&self) -> Registers<'_> {
        Registers::new(self.device.bar0(), self.config.split_64bit_mmio)
    }

    /// The disable count: I/O queues created under an older epoch no longer exist.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// I/O queue `qid` was created on the device in controller epoch `epoch`.
    pub(crate) fn queue_created(&self, qid: u16, epoch: u64) {
        if let Some(live) = self.live_queues.get(usize::from(qid)) {
            live.store(epoch + 1, Ordering::Release);
        }
    }

    /// I/O queue `qid` was deleted on the device (its SQ, then its CQ).
    pub(crate) fn queue_deleted(&self, qid: u16) {
        if let Some(live) = self.live_queues.get(usize::from(qid)) {
            live.store(0, Ordering::Release);
        }
    }

    /// The controller accepts commands.
    pub fn is_enabled(&self) -> bool {
        self.admin.is_enabled()
    }

    /// The admin queue, for tests that hold its state.
    #[cfg(test)]
    pub(super) fn admin_queue(&self) -> &AdminQueue {
        &self.admin
    }

    /// Run one admin command, bounded by the configured admin timeout.
    pub(crate) fn admin(&self, command: &'static str, sqe: Sqe) -> Result<cmd::Cqe, NvmeError> {
        self.admin.execute(command, sqe, self.config.admin_timeout)
    }

    /// Run one admin command, bounded by `timeout` (for callers with their own bound).
    pub(super) fn admin_within(
        &self,
        command: &'static str,
        sqe: Sqe,
        timeout: Duration,
    ) -> Result<cmd::Cqe, NvmeError> {
        self.admin.execute(command, sqe, timeout)
    }

    /// CSTS reads all-ones.
    pub fn is_gone(&self) -> bool {
        self.registers().csts() == ALL_ONES_32
    }

    /// CSTS when CFS (controller fatal status) is set.
    pub fn fatal(&self) -> Option<u32> {
        let s = self.registers().csts();
        (s != ALL_ONES_32 && s & csts::CFS != 0).then_some(s)
    }

    /// Controller reset (NVMe 1.4 §7.3.2): CC.EN = 0, then wait (bounded by
    /// [`Cap::ready_timeout`]) for CSTS.RDY = 0, escalating to a function reset when it does not come. `Ok` means the
    /// controller is disabled: no DMA of it can happen, every I/O queue is deleted. It stays
    /// disabled until a [`NvmeController::recover`] called after it: a queue that finds this
    /// reset failed resets again, and does not recover it
    /// (`NvmeController::await_quiesced`), and a recovery that runs meanwhile gives way
    /// rather than enable the controller again (`intent`).
    ///
    /// # Errors
    /// [`NvmeError::Gone`], or the timeout when no function reset is available or it failed.
    pub fn reset(&self) -> Result<(), NvmeError> {
        self.mean_disabled();
        self.reset_now()
    }

    /// A caller's reset or shutdown begins: count it, and say the controller is to stay
    /// disabled (`intent`).
    fn mean_disabled(&self) {
        let mut seen = self.intent.load(Ordering::SeqCst);
        loop {
            let next = (((seen >> 1) + 1) << 1) | LEFT_DISABLED;
            match self
                .intent
                .compare_exchange_weak(seen, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// A caller's reset or shutdown came after `seen` was read from `intent`.
    fn intent_moved(&self, seen: u64) -> bool {
        self.intent.load(Ordering::SeqCst) >> 1 != seen >> 1
    }

    /// [`NvmeController::reset`], saying nothing of what comes after it.
    fn reset_now(&self) -> Result<(), NvmeError> {
        // Counted before the epoch moves: a queue that sees the new epoch also sees this reset
        // under way until its outcome is published.
        let _disabling = Disabling::start(&self.disabling);
        self.admin.set_enabled(false);
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let r = self.registers();
        let result = disable_or_reset(self.device.as_ref(), &r, self.cap);
        if result.is_ok() {
            // The disabled controller dropped every command, abandoned ABORTs included.
            self.aborts.forget_abandoned();
            self.quiesced.fetch_max(epoch, Ordering::AcqRel);
        }
        result
    }

    /// Wait until the end of DMA is proven for an I/O queue created in `epoch`, which finds
    /// the controller disabled under it: the reset or shutdown that disabled it proved CSTS.RDY
    /// = 0 (NVMe 1.4 §3.1.6, §7.3.2: only then are the queue's commands dropped for good, and
    /// their buffers the host's again). One still under way is waited for, bounded by what it
    /// may take ([`NvmeController::reset_bound`]) or by the caller's `bound`, if shorter. One
    /// that failed, or did not end in that time without a caller's bound, is followed by this
    /// thread's own reset: a plain one when the controller was meant to stay disabled (a
    /// caller's reset or shutdown), otherwise a recovery ([`NvmeController::recover_unproven`]),
    /// so that the controller serves again and every queue sees the reset count move.
    ///
    /// [`Quiesced::Recovered`] when the proof is a recovery this thread ran (the caller counts
    /// it: `QueueEngine::recoveries`), [`Quiesced::Proven`] otherwise.
    ///
    /// # Errors
    /// [`NvmeError::DisableUnproven`] when the caller's `bound` ran out with a reset still
    /// under way (it may prove the end of DMA later: ask again); otherwise as
    /// [`NvmeController::reset`] or [`NvmeController::recover`]: no proof, or a recovery that
    /// failed (the caller escalates), and nothing of the queue may be released.
    pub(crate) fn await_quiesced(
        &self,
        epoch: u64,
        caller_bound: Option<Duration>,
    ) -> Result<Quiesced, NvmeError> {
        let proven = || self.quiesced.load(Ordering::Acquire) > epoch;
        let full = self.reset_bound();
        let bound = caller_bound.map_or(full, |b| b.min(full));
        let mut deadline = Instant::now() + bound;
        loop {
            if proven() {
                return Ok(Quiesced::Proven);
            }
            while self.disabling.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                if proven() {
                    return Ok(Quiesced::Proven);
                }
                // A wait on another thread's reset: no lock is held here.
                scst_accel_hal::locks::sleep(Duration::from_millis(1));
            }
            if proven() {
                return Ok(Quiesced::Proven);
            }
            if caller_bound.is_some() && self.disabling.load(Ordering::Acquire) > 0 {
                // The reset under way may still prove it; a reset of our own would outlast the
                // caller's bound and only disturb that one.
                log::warn!(
                    "{}: another thread's controller reset has not proven CSTS.RDY = 0 within \
                     {bound:?}; the queue's requests and rings are held until it does",
                    self.id()
                );
                return Err(NvmeError::DisableUnproven {
                    device: self.id().to_owned(),
                    waited: bound,
                });
            }
            let intent = self.intent.load(Ordering::SeqCst);
            if intent & LEFT_DISABLED != 0 {
                log::warn!(
                    "{}: the controller was disabled without proof that it stopped DMA (a reset or \
                     shutdown failed, or took longer than {bound:?}); resetting it before any buffer \
                     is released, and leaving it disabled",
                    self.id()
                );
                // A plain reset, leaving the controller disabled: no recovery.
                return self.reset_now().map(|()| Quiesced::Proven);
            }
            log::warn!(
                "{}: a recovery disabled the controller without proof that it stopped DMA (its reset \
                 failed, or took longer than {bound:?}); recovering it before any buffer is released",
                self.id()
            );
            match self.recover_unproven(epoch, intent, caller_bound.map(|_| (deadline, bound))) {
                Unproven::Done(result) => return result.map(|()| Quiesced::Proven),
                Unproven::Recovered => return Ok(Quiesced::Recovered),
                // A caller's reset or shutdown came after `intent` was read: look again, now
                // that the controller is meant to stay disabled (waiting for that reset, when
                // it is still under way, as for any other).
                Unproven::IntentMoved => {
                    if caller_bound.is_none() {
                        deadline = Instant::now() + bound;
                    }
                }
            }
        }
    }

    /// The end of DMA for an I/O queue created in `epoch` is not proven, and no reset that
    /// might prove it is under way: a recovery's reset failed or overran. Recover the
    /// controller, as one recovery at a time ([`RecoveryWord`]): its reset is the proof, and
    /// the controller serves again, its reset count moved after that reset and before any
    /// queue restarts, so the other queues fail what they had in flight and restart as after
    /// any recovery. A plain reset here used to leave the controller disabled with the count
    /// unmoved: every restart failed (`Disabled`) until the store gave up. A recovery that
    /// began meanwhile on another thread is waited for instead, its reset the proof: until the
    /// caller's deadline, when it has one (`bounded`: the deadline and the bound it came
    /// from), else as long as that recovery may take. A turn withdrawn meanwhile (it reset
    /// nothing: [`Outcome::Withdrawn`]) ends no wait and proves nothing: the stop takes a turn
    /// again, waiting by the same deadline (past it, the withdrawn turn is `Disabled`).
    ///
    /// [`Unproven::Recovered`] when this thread ran the recovery and it succeeded: a recovery
    /// the stop's caller counts as its own (`QueueEngine::recoveries`).
    ///
    /// `intent` is what `await_quiesced` read of the callers' intent when it chose to recover.
    /// Once the turn is this thread's, it looks again before it resets anything: a recovery
    /// that ended since its look (its reset proved the end of DMA) makes this one needless,
    /// and the turn is withdrawn, counting no recovery (`Recovering::withdraw`); a caller's
    /// reset or shutdown since that look means the controller is to stay disabled, and the
    /// turn is withdrawn too ([`Unproven::IntentMoved`]: the caller looks again). Either can
    /// still happen after that second look; the recovery then gives way to the caller's reset
    /// (`NvmeController::recover_now`), or runs once more on a controller that serves,
    /// which costs the other queues their requests in flight and nothing else.
    ///
    /// # Errors
    /// As [`NvmeController::recover`] (except a recovery that gave way to a caller's reset
    /// after its own reset proved the end of DMA: that stop is done);
    /// [`NvmeError::DisableUnproven`] when the caller's deadline passed with the other
    /// recovery's reset still under way;
    /// [`NvmeError::Disabled`] when that recovery ended without proving it.
    fn recover_unproven(&self, epoch: u64, intent: u64, bounded: Option<(Instant, Duration)>) -> Unproven {
        let proven = || self.quiesced.load(Ordering::Acquire) > epoch;
        let timeout = self.recovery_wait_bound();
        // Set by the first wait and kept across the turns taken again after a withdrawn one,
        // so that the waits together end by that one deadline.
        let mut first_deadline = None;
        loop {
            #[cfg(test)]
            self.run_before_turn();
            let waiting = match self.recovery.begin() {
                Turn::Mine(turn) => {
                    if proven() {
                        log::info!(
                            "{}: another recovery proved the end of DMA meanwhile; no recovery \
                             of this queue's own",
                            self.id()
                        );
                        turn.withdraw();
                        return Unproven::Done(Ok(()));
                    }
                    if self.intent_moved(intent) {
                        turn.withdraw();
                        return Unproven::IntentMoved;
                    }
                    let result = self.recover_now(intent);
                    turn.finish(result.is_ok());
                    if result.is_ok() {
                        return Unproven::Recovered;
                    }
                    if proven() && self.intent_moved(intent) {
                        // It gave way to a caller's reset or shutdown after its own reset
                        // proved the end of DMA: the controller stays disabled, as that caller
                        // meant, and the stop has its proof (no recovery: the count did not
                        // move).
                        return Unproven::Done(Ok(()));
                    }
                    return Unproven::Done(result);
                }
                Turn::Running(waiting) => waiting,
            };
            let deadline = *first_deadline.get_or_insert_with(|| {
                bounded.map_or_else(|| Instant::now() + timeout, |(deadline, _)| deadline)
            });
            let mut outcome = self.recovery.outcome(waiting);
            while !proven() && outcome == Outcome::Running && Instant::now() < deadline {
                // A wait on another thread's recovery: no lock is held here.
                scst_accel_hal::locks::sleep(Duration::from_millis(1));
                outcome = self.recovery.outcome(waiting);
            }
            if proven() {
                return Unproven::Done(Ok(()));
            }
            if outcome == Outcome::Withdrawn && Instant::now() < deadline {
                // Nothing was reset in the turn waited for: take a turn again.
                continue;
            }
            let device = self.id().to_owned();
            return Unproven::Done(match (outcome == Outcome::Running, bounded) {
                (true, Some((_, waited))) => Err(NvmeError::DisableUnproven { device, waited }),
                (true, None) => Err(NvmeError::Timeout {
                    device,
                    what: "another thread's controller recovery",
                    timeout,
                }),
                (false, _) => Err(NvmeError::Disabled { device }),
            });
        }
    }

    /// Reset, then enable with fresh admin rings and ask for the I/O queues again; bump the
    /// reset count. I/O queues are re-created by each queue's own restart (only the owner
    /// thread touches its queue's memory), not before the count moved: the admin queue serves
    /// again from the enable on, but a queue re-created between the reset and the count's move
    /// would take requests the store then fails ABORTED when it sees the new count, while the
    /// controller may still run them ([`NvmeQueue::restart`] refuses with
    /// [`NvmeError::ResetUnderWay`] until then). Concurrent callers wait for the one running
    /// and share the outcome of that very recovery (or of one begun after it); a turn withdrawn
    /// meanwhile is no outcome to share, and its waiters take a turn again
    /// (`wait_for_other_recovery`). A caller's [`NvmeController::reset`] or
    /// [`NvmeController::shutdown`] that begins after this call wins: the recovery leaves the
    /// controller disabled and fails (`NvmeController::recover_now`).
    ///
    /// [`Recovered::Ran`] when this call ran the recovery, [`Recovered::Shared`] when it waited
    /// for another caller's (which that caller counts).
    ///
    /// # Errors
    /// As [`NvmeController::reset`], the bounded wait for CSTS.RDY, or SET FEATURES;
    /// [`NvmeError::Disabled`] when a caller's reset or shutdown began meanwhile; for a
    /// caller that waited, [`NvmeError::Disabled`] when the other recovery failed, or the
    /// bounded wait for it.
    pub fn recover(&self) -> Result<Recovered, NvmeError> {
        self.recover_unless(None)
    }

    /// [`NvmeController::recover`] for a caller that chose to recover after reading
    /// `seen_resets` from [`NvmeController::reset_count`] (the store: its count had not moved).
    /// Once the recovery's turn is its own, it looks again, as a stop that must recover the
    /// controller does (`recover_unproven`): a recovery that ended since that read proved the
    /// end of DMA for everything submitted before it, and left the controller serving (its
    /// count moved, its outcome the last one, the controller enabled without CSTS.CFS, no
    /// caller's reset or shutdown begun since). The turn is then withdrawn, no recovery
    /// counted, and the call shares that recovery's outcome ([`Recovered::Shared`]) instead of
    /// resetting a controller that serves, which failed every other queue's requests in flight
    /// for nothing. A recovery that ends after this second look still costs a second one.
    ///
    /// # Errors
    /// As [`NvmeController::recover`].
    pub fn recover_since(&self, seen_resets: u64) -> Result<Recovered, NvmeError> {
        self.recover_unless(Some(seen_resets))
    }

    fn recover_unless(&self, seen_resets: Option<u64>) -> Result<Recovered, NvmeError> {
        // Read once, when the caller chose to recover: also for a turn taken again after a
        // withdrawn one, so that a caller's reset or shutdown begun since is not missed.
        let intent = self.intent.load(Ordering::SeqCst);
        // A turn withdrawn while waited for is asked for again, the waits bounded together by
        // one recovery (`RecoveryWord::take_turn`, `wait_for_other_recovery`).
        let turn = self
            .recovery
            .take_turn(self.recovery_wait_bound(), |waiting, deadline| {
                self.wait_for_other_recovery(waiting, deadline)
            })?;
        let Some(turn) = turn else {
            return Ok(Recovered::Shared);
        };
        let serving = |seen| {
            self.reset_count() != seen
                && self.is_enabled()
                && self.fatal().is_none()
                && !self.intent_moved(intent)
        };
        if seen_resets.is_some_and(serving) && turn.after_success() {
            log::info!(
                "{}: another recovery ended since the caller looked and the controller serves; \
                 no second recovery",
                self.id()
            );
            turn.withdraw();
            return Ok(Recovered::Shared);
        }
        let result = self.recover_now(intent);
        turn.finish(result.is_ok());
        result.map(|()| Recovered::Ran)
    }

    /// The recovery itself, in the caller's turn, for a caller that read `intent` when it
    /// chose to recover. A reset or shutdown meant to leave the controller disabled (the
    /// teardown's, which then unmaps memory on the strength of it) may begin at any point of
    /// it, and never takes the recovery's turn: so the recovery checks the count of those
    /// (`intent`) before its reset, after it, and after its enable and before the first admin
    /// command, and again before it publishes its reset count. Moved, it gives way: it resets
    /// the controller again (plain) if it had enabled it, and fails with
    /// [`NvmeError::Disabled`] (a failed recovery for the word and its waiters), the controller
    /// left disabled. A reset or shutdown that begins after the last check disables the
    /// controller itself, after this recovery's enable.
    fn recover_now(&self, intent: u64) -> Result<(), NvmeError> {
        log::warn!(
            "{}: recovering the controller (reset #{})",
            self.id(),
            self.reset_count() + 1
        );
        // This reset is meant to be followed by the enable: should it prove nothing, a queue
        // that must reset the controller itself recovers it (`await_quiesced`). Unless a
        // caller's reset or shutdown came since `intent` was read: then nothing is touched.
        let base = intent & !LEFT_DISABLED;
        if self
            .intent
            .compare_exchange(intent, base, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(self.give_way("before its reset", false));
        }
        self.reset_now()?;
        if self.intent_moved(base) {
            return Err(self.give_way("during its reset", false));
        }
        self.admin.reset_rings();
        let r = self.registers();
        let enabled = enable(self.device.as_ref(), &r, self.cap, &self.admin);
        // Checked whether or not the enable succeeded: it wrote CC.EN = 1 either way.
        if self.intent_moved(base) {
            return Err(self.give_way("before its enable ended", true));
        }
        enabled?;
        let granted = set_queue_count(&self.admin, self.config.admin_timeout, self.io_queues)?;
        if granted < self.io_queues {
            return Err(NvmeError::Unsupported {
                device: self.id().to_owned(),
                what: format!(
                    "after reset the controller grants {granted} I/O queues, not {}",
                    self.io_queues
                ),
            });
        }
        if self.intent_moved(base) {
            return Err(self.give_way("before it published its reset count", true));
        }
        // Published only once the controller serves again, so a queue that sees the new count
        // can restart at once, and while the recovery word still says it runs: no queue was
        // re-created since the reset, so every request this count fails was submitted before it.
        self.resets.fetch_add(1, Ordering::AcqRel);
        log::info!("{}: controller recovered", self.id());
        Ok(())
    }

    /// A caller's reset or shutdown began during this thread's recovery (`when`): leave the
    /// controller disabled, resetting it again when the recovery had enabled it (`reset`), and
    /// fail the recovery. The error to return: [`NvmeError::Disabled`], or that reset's.
    fn give_way(&self, when: &str, reset: bool) -> NvmeError {
        log::warn!(
            "{}: a reset or shutdown meant to leave the controller disabled began {when} of the \
             recovery; the recovery gives way and leaves the controller disabled",
            self.id()
        );
        if reset {
            if let Err(e) = self.reset_now() {
                log::error!("{}: resetting the controller again: {e}", self.id());
                return e;
            }
        }
        NvmeError::Disabled {
            device: self.id().to_owned(),
        }
    }

    /// Wait for another thread's recovery, the one `waiting` found running, until `deadline`
    /// (the first wait's: what a recovery may take, [`NvmeController::recovery_bound`], plus
    /// [`RECOVERY_WAIT_SLACK`], from its start), then share its outcome
    /// ([`RecoveryWord::outcome`]): `Ok(true)`. `Ok(false)` when its turn was withdrawn
    /// ([`Outcome::Withdrawn`]): the outcome then in the word is that of a recovery that ended
    /// before this caller looked, whose reset proves nothing for requests submitted since, so
    /// the caller takes a turn again (it recovers itself, or waits for the recovery that runs
    /// by then, until the same deadline): the deadline bounds all its waits, and past it a
    /// withdrawn turn is a timeout, so it takes no turn again after it (a turn of its own runs
    /// one recovery, bounded as any, and ends the call). A withdrawn turn holds the word only for
    /// its owner's second look (register reads, nothing reset), so a recovery begun after it began
    /// about when this caller's first wait did: the slack allows for that.
    fn wait_for_other_recovery(&self, waiting: Waiting, deadline: Instant) -> Result<bool, NvmeError> {
        let timeout = self.recovery_wait_bound();
        let recovered = loop {
            match self.recovery.outcome(waiting) {
                Outcome::Ended(recovered) => break recovered,
                Outcome::Withdrawn if Instant::now() < deadline => return Ok(false),
                Outcome::Withdrawn | Outcome::Running => {}
            }
            if Instant::now() >= deadline {
                return Err(NvmeError::Timeout {
                    device: self.id().to_owned(),
                    what: "another thread's controller recovery",
                    timeout,
                });
            }
            scst_accel_hal::locks::sleep(Duration::from_millis(1));
        };
        if recovered {
            Ok(true)
        } else {
            Err(NvmeError::Disabled {
                device: self.id().to_owned(),
            })
        }
    }

    /// The longest a controller reset ([`NvmeController::reset`]) may take: a disable waits up
    /// to the ready timeout T for CSTS.RDY = 1 (an enable in progress: EN = 1, RDY = 0) and up
    /// to T for RDY = 0 after clearing EN; when that fails, a function reset (given the admin
    /// timeout: no bound of the driver's covers `VFIO_DEVICE_RESET`) and a second disable, as
    /// long. 4 T + the admin timeout, T being [`Cap::ready_timeout`]: CAP.TO, or CRTO.CRWMT
    /// when larger.
    pub(crate) fn reset_bound(&self) -> Duration {
        self.cap.ready_timeout() * 4 + self.config.admin_timeout
    }

    /// The longest a recovery (`recover_now`) may take, what a second caller of
    /// [`NvmeController::recover`] waits for it: the reset ([`NvmeController::reset_bound`]),
    /// the enable's wait for CSTS.RDY = 1 (the ready timeout T, [`Cap::ready_timeout`]) and
    /// SET FEATURES (the admin timeout). 5 T + twice the admin timeout. (The admin rings' reset takes the admin queue's lock,
    /// which no one holds across a wait.)
    pub(crate) fn recovery_bound(&self) -> Duration {
        self.reset_bound() + self.cap.ready_timeout() + self.config.admin_timeout
    }

    /// What a second caller of [`NvmeController::recover`] waits for the running one:
    /// [`NvmeController::recovery_bound`] and [`RECOVERY_WAIT_SLACK`]. The engine contract's
    /// `Controller::recovery_bound`: the longest a restart may be refused because of one
    /// recovery.
    pub(crate) fn recovery_wait_bound(&self) -> Duration {
        self.recovery_bound() + RECOVERY_WAIT_SLACK
    }

    /// Recoveries so far.
    pub fn reset_count(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    /// A recovery runs: from before its reset moves the epoch until after it published its
    /// reset count. A queue that reads the epoch, then finds no recovery under way, either read
    /// an epoch no reset of a running recovery made (a later reset moves it, and the queue,
    /// created in the epoch it read, stops counting as live), or one of a recovery whose count
    /// it then sees (the flag is set before the reset and cleared after the count's move).
    pub(crate) fn recovery_under_way(&self) -> bool {
        self.recovery.running()
    }

    /// The bound on the wait for CSTS.SHST = 10b after CC.SHN = 01b: RTD3E as Linux reads it
    /// ([`shutdown_timeout`]).
    pub fn shutdown_timeout(&self) -> Duration {
        shutdown_timeout(self.info.controller.rtd3e, self.config.shutdown_timeout)
    }

    /// Delete every I/O queue that exists on the controller: every I/O submission queue, then
    /// every I/O completion queue (NVMe 1.4 §7.6.2: the host should do so before the shutdown
    /// notification), the whole step bounded by one admin timeout, as Linux's
    /// `nvme_disable_io_queues` bounds each of its two passes. Returns the queue pairs deleted.
    ///
    /// # Errors
    /// The first deletion that fails or does not complete in time: the rest are not tried.
    fn delete_io_queues(&self) -> Result<usize, NvmeError> {
        let epoch = self.epoch();
        let live: Vec<u16> = (1..self.live_queues.len())
            .filter(|&q| self.live_queues[q].load(Ordering::Acquire) == epoch + 1)
            .filter_map(|q| u16::try_from(q).ok())
            .collect();
        let deadline = Instant::now() + self.config.admin_timeout;
        for (command, opcode) in [
            ("DELETE I/O SQ", cmd::admin_opcode::DELETE_SQ),
            ("DELETE I/O CQ", cmd::admin_opcode::DELETE_CQ),
        ] {
            for &qid in &live {
                let left = deadline.saturating_duration_since(Instant::now());
                let sqe = Sqe {
                    opcode,
                    cdw10: u32::from(qid),
                    ..Sqe::default()
                };
                self.admin_within(command, sqe, left)?;
            }
        }
        for &qid in &live {
            self.queue_deleted(qid);
        }
        Ok(live.len())
    }

    /// Normal shutdown (NVMe 1.4 §7.6.2): delete every I/O queue (submission queues, then
    /// completion queues, bounded by the admin timeout; a deletion that fails or times out is
    /// logged and the shutdown goes on), CC.SHN = 01b, wait for CSTS.SHST = 10b (bounded by
    /// [`NvmeController::shutdown_timeout`]), then disable.
    ///
    /// # Errors
    /// [`NvmeError::Gone`] or [`NvmeError::Timeout`] (the caller falls back to a reset).
    pub fn shutdown(&self) -> Result<(), NvmeError> {
        // Counted first: a recovery running meanwhile gives way (`intent`).
        self.mean_disabled();
        if self.admin.is_enabled() {
            match self.delete_io_queues() {
                Ok(n) => log::info!("{}: {n} I/O queue pairs deleted before the shutdown", self.id()),
                Err(e) => log::warn!(
                    "{}: deleting the I/O queues before the shutdown: {e}; shutting down with them",
                    self.id()
                ),
            }
        }
        let _disabling = Disabling::start(&self.disabling);
        let r = self.registers();
        let timeout = self.shutdown_timeout();
        self.admin.set_enabled(false);
        let current = r.cc();
        if current == ALL_ONES_32 {
            return Err(NvmeError::Gone {
                device: self.id().to_owned(),
            });
        }
        if current & cc::EN != 0 {
            r.write32(offset::CC, (current & !cc::SHN_MASK) | cc::SHN_NORMAL);
            wait_csts(
                self.device.as_ref(),
                &r,
                "CSTS.SHST = shutdown complete",
                timeout,
                |s| s & csts::SHST_MASK == csts::SHST_COMPLETE,
            )?;
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        disable(self.device.as_ref(), &r, self.cap)?;
        self.quiesced.fetch_max(epoch, Ordering::AcqRel);
        log::info!("{}: controller shut down", self.id());
        Ok(())
    }

    /// Mask every interrupt (teardown).
    pub fn disable_interrupts(&self) {
        if let Err(e) = self.device.disable_interrupts() {
            log::warn!("{}: disabling interrupts: {e}", self.id());
        }
    }

    /// CAP, VS, CC, CSTS, AQA, INTMS decoded, the I/O queues polled for want of an MSI-X
    /// vector if any, then the newest entries of the Error Information log, read with
    /// [`DUMP_ERROR_LOG_TIMEOUT`](super::DUMP_ERROR_LOG_TIMEOUT) only when the controller is
    /// ready (CSTS.RDY = 1, CFS = 0) and no earlier read timed out since the last reset;
    /// otherwise `error log: unavailable (reason)`.
    pub fn dump_registers(&self) -> String {
        let r = self.registers();
        let status = r.csts();
        if status == ALL_ONES_32 {
            return format!("{}: registers read all-ones (device gone)\n", self.id());
        }
        let mut s = regs::describe(&r);
        s.push_str(&self.describe_vectors());
        s.push_str(&self.describe_error_log(status));
        s
    }

    /// `MSI-X: ...` when the host granted fewer vectors than the I/O queues asked
    /// (crate::vectors): which queues are polled; empty otherwise.
    fn describe_vectors(&self) -> String {
        let granted = self.vectors_granted.load(Ordering::Relaxed);
        let count = u32::from(self.io_queues);
        if !self.config.interrupts || granted > count {
            return String::new();
        }
        // Vector 0 is the admin queue's: I/O queues 1..granted have theirs.
        let first_polled = granted.max(1);
        format!(
            "MSI-X: {granted} vectors for the admin queue and {count} I/O queues: I/O queues \
             {first_polled}..{count} polled\n"
        )
    }
}

/// `NvmeController::intent`'s bit 0: the latest reset was a caller's, meant to leave the
/// controller disabled.
const LEFT_DISABLED: u64 = 1;

/// How `NvmeController::await_quiesced` found the end of a queue's DMA proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quiesced {
    /// By a reset or recovery another thread ran, or a plain reset of this thread's.
    Proven,
    /// By a recovery this thread ran ([`NvmeController::recover_unproven`]): the controller
    /// serves again, its reset count moved.
    Recovered,
}

/// What [`NvmeController::recover_unproven`] came to.
enum Unproven {
    /// This stop ran a recovery, which succeeded: its reset is the proof.
    Recovered,
    /// The stop's outcome without a recovery of its own: proven (`Ok`), or why not.
    Done(Result<(), NvmeError>),
    /// A caller's reset or shutdown began after the stop chose to recover: nothing was done.
    IntentMoved,
}

/// What a waiter for another thread's recovery allows beyond [`NvmeController::recovery_bound`]:
/// each of the recovery's polls may overshoot its deadline by a pause (up to 1 ms) and a
/// reschedule, the waiter may be the one that finds the word changed late, and the recovery it
/// waits for may have begun after a turn withdrawn after its first look (its owner's second
/// look: register reads, nothing reset).
const RECOVERY_WAIT_SLACK: Duration = Duration::from_millis(100);

#[cfg(test)]
impl NvmeController {
    /// The recovery word and the reset count, for tests that stand in for a recovery's steps.
    pub(super) fn recovery_state(&self) -> (&RecoveryWord, &AtomicU64) {
        (&self.recovery, &self.resets)
    }

    /// The next stop that recovers the controller runs another recovery to its end (1), or
    /// the start of a caller's reset or shutdown (2: its count in `intent`, taken before it
    /// touches the controller; a shutdown then deletes I/O queues first), between its look
    /// and its turn.
    pub(super) fn before_turn(&self, what: u8) {
        self.before_turn.store(what, Ordering::SeqCst);
    }

    fn run_before_turn(&self) {
        match self.before_turn.swap(0, Ordering::SeqCst) {
            1 => {
                if let Err(e) = self.recover() {
                    log::warn!("{}: the test's recovery before the turn: {e}", self.id());
                }
            }
            2 => self.mean_disabled(),
            _ => {}
        }
    }
}

/// One reset or shutdown under way, counted in [`NvmeController`]'s `disabling` while it lives.
struct Disabling<'a>(&'a AtomicU64);

impl<'a> Disabling<'a> {
    fn start(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Disabling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for NvmeController {
    /// Safety net: a controller still enabled when dropped is disabled before its admin rings
    /// are unmapped (bounded; errors logged, never a panic).
    fn drop(&mut self) {
        if self.admin.is_enabled() {
            log::warn!("{}: controller dropped while enabled; disabling it", self.id());
            if let Err(e) = self.reset() {
                log::error!("{}: disabling the controller on drop: {e}", self.id());
            }
        }
    }
}

/// Map one zeroed region of at least `bytes` (whole pages) on the device.
pub(crate) fn map_region(
    device: &Arc<dyn DeviceBacking>,
    iovas: &Arc<IovaLock>,
    bytes: usize,
    what: &str,
) -> Result<MappedRegion, NvmeError> {
    let memory = |source| NvmeError::Memory {
        device: device.id().to_owned(),
        what: what.to_owned(),
        source: Box::new(source),
    };
    let region = DmaRegion::new(bytes.max(PAGE_SIZE as usize)).map_err(memory)?;
    MappedRegion::new(
        region,
        crate::sca1::device_mapper(Arc::clone(device)),
        Arc::clone(iovas),
    )
    .map_err(memory)
}

/// The PRP entries of a request, with the PRP list in `list` at `list_offset`.
pub(crate) fn build_prps(
    segments: &[(u64, u32)],
    list: &MappedRegion,
    list_offset: usize,
) -> Result<PrpEntries, crate::engine::SubmitError> {
    let region = list.region();
    super::prp::build(
        segments,
        PAGE_SIZE,
        PRP_LIST_ENTRIES,
        list.iova() + list_offset as u64,
        |i, addr| region.write_obj(list_offset + i * 8, &addr),
    )
}
