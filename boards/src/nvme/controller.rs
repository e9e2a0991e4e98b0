//! The NVMe controller (NVMe base spec 1.4 §7.6): bring-up, identify, the resets recovery is
//! built from, shutdown, ABORT under the Abort Command Limit (§5.1) and the Error Information
//! log (§5.14.1.1). Generic over [`DeviceBacking`], so the same code drives a VFIO function and
//! a simulated controller.

use super::admin::AdminQueue;
use super::admin::ADMIN_ENTRIES;
use super::cmd;
use super::cmd::admin_opcode;
use super::cmd::log_page;
use super::cmd::ErrorLogEntry;
use super::cmd::IdentifyController;
use super::cmd::IdentifyNamespace;
use super::cmd::Sqe;
use super::cmd::ERROR_LOG_ENTRY_LEN;
use super::cmd::IDENTIFY_LEN;
use super::error::NvmeError;
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
use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::IovaAllocator;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::HalError;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
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
/// Error Information log entries read at most: what the one log page holds.
pub const ERROR_LOG_MAX_ENTRIES: usize = PAGE_SIZE as usize / ERROR_LOG_ENTRY_LEN;
/// Bound on the error log read of [`NvmeController::dump_registers`]: short, so that a dump
/// taken at an escalation of a controller that stopped answering does not delay the reset.
pub const DUMP_ERROR_LOG_TIMEOUT: Duration = Duration::from_millis(200);
/// Entries [`NvmeController::dump_registers`] shows, newest first.
const DUMP_ERROR_LOG_ENTRIES: usize = 8;
/// No error log read has timed out (the value of `log_timeout_epoch`).
const NO_EPOCH: u64 = u64::MAX;

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
    recovering: AtomicBool,
    /// ABORT commands outstanding on the controller, held by [`AbortPermit`]s.
    aborts_outstanding: AtomicU32,
    /// ABORT commands whose waiter timed out: still outstanding as far as the controller's
    /// Abort Command Limit is concerned, until the next reset drops them.
    aborts_abandoned: AtomicU32,
    /// The page GET LOG PAGE writes into. Mapped for the controller's life rather than per
    /// read, so that a read whose waiter timed out can never DMA into unmapped memory.
    log_page: MappedRegion,
    /// A thread is reading the error log (the page has one reader at a time).
    log_busy: AtomicBool,
    /// The epoch in which an error log read last timed out ([`NO_EPOCH`]: none did).
    log_timeout_epoch: AtomicU64,
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
        let cap = Cap::from_bits(cap_bits);
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
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(
            config.iova_base,
            config.iova_size,
        )));
        let admin = AdminQueue::new(
            Arc::clone(&device),
            config.split_64bit_mmio,
            (cap.doorbell(0, false), cap.doorbell(0, true)),
            map_region(&device, &iovas, usize::from(ADMIN_ENTRIES) * 64, "the admin SQ")?,
            map_region(&device, &iovas, usize::from(ADMIN_ENTRIES) * 16, "the admin CQ")?,
        )?;
        let log_page = map_region(&device, &iovas, PAGE_SIZE as usize, "the error log page")?;
        let start = Instant::now();
        let result = identify_and_configure(&device, config, cap, &admin, &iovas, version);
        let (info, io_queues) = match result {
            Ok(v) => v,
            Err(e) => {
                admin.set_enabled(false);
                if let Err(d) = disable(device.as_ref(), &r, cap) {
                    log::error!("{id}: disabling the controller after a failed bring-up: {d}");
                }
                return Err(e);
            }
        };
        let geometry = geometry(cap, &info);
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
            recovering: AtomicBool::new(false),
            aborts_outstanding: AtomicU32::new(0),
            aborts_abandoned: AtomicU32::new(0),
            log_page,
            log_busy: AtomicBool::new(false),
            log_timeout_epoch: AtomicU64::new(NO_EPOCH),
        });
        let queues = controller.create_queues().inspect_err(|_| {
            if let Err(d) = controller.reset() {
                log::error!("{id}: resetting the controller after a failed bring-up: {d}");
            }
        })?;
        let info = &controller.info;
        log::info!(
            "{id}: NVMe {}.{} controller up in {:?}: {} ({}, fw {}), namespace {}: {} blocks of {} bytes, \
             {} I/O queues x {} entries, max transfer {} KiB, MDTS {}, ONCS {:#x}, VWC {}",
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
            info.controller.vwc
        );
        Ok((controller, queues))
    }

    fn create_queues(self: &Arc<Self>) -> Result<Vec<NvmeQueue>, NvmeError> {
        let count = self.io_queues;
        let depth = queue_depth(self.config.queue_depth, self.cap);
        let max_vectors = self.device.max_interrupts();
        let mut irqs = Vec::new();
        if self.config.interrupts && max_vectors > 1 {
            let vectors = max_vectors.min(u32::from(count) + 1);
            irqs = self
                .device
                .enable_interrupts(vectors)
                .map_err(|source| self.hal(source))?
                .into_iter()
                .map(Some)
                .collect();
        }
        let mut queues = Vec::with_capacity(usize::from(count));
        for qid in 1..=count {
            let irq = irqs.get_mut(usize::from(qid)).and_then(Option::take);
            queues.push(NvmeQueue::create(Arc::clone(self), qid, depth, irq)?);
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

    /// CAP as read at bring-up.
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

    /// The controller accepts commands.
    pub fn is_enabled(&self) -> bool {
        self.admin.is_enabled()
    }

    /// Run one admin command, bounded by the configured admin timeout.
    pub(crate) fn admin(&self, command: &'static str, sqe: Sqe) -> Result<cmd::Cqe, NvmeError> {
        self.admin.execute(command, sqe, self.config.admin_timeout)
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

    /// Controller reset (NVMe 1.4 §7.3.2): CC.EN = 0, then wait (bounded by CAP.TO) for
    /// CSTS.RDY = 0, escalating to a function reset when it does not come. `Ok` means the
    /// controller is disabled: no DMA of it can happen, every I/O queue is deleted.
    ///
    /// # Errors
    /// [`NvmeError::Gone`], or the timeout when no function reset is available or it failed.
    pub fn reset(&self) -> Result<(), NvmeError> {
        self.admin.set_enabled(false);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let r = self.registers();
        let result = match disable(self.device.as_ref(), &r, self.cap) {
            Ok(()) => Ok(()),
            Err(NvmeError::Gone { device }) => Err(NvmeError::Gone { device }),
            Err(e) => {
                log::warn!("{}: {e}; escalating to a function reset", self.id());
                let kind = self.device.reset().map_err(|source| {
                    log::error!("{}: function reset failed: {source}", self.id());
                    e
                })?;
                log::info!("{}: function reset done ({kind:?})", self.id());
                // The function reset returned the controller to its reset state (CC.EN = 0).
                disable(self.device.as_ref(), &r, self.cap)
            }
        };
        if result.is_ok() {
            // The disabled controller dropped every command, abandoned ABORTs included.
            self.aborts_abandoned.store(0, Ordering::Release);
        }
        result
    }

    /// Reset, then enable with fresh admin rings and ask for the I/O queues again; bump the
    /// reset count. I/O queues are re-created by each queue's own restart (only the owner
    /// thread touches its queue's memory). Concurrent callers wait for the one running.
    ///
    /// # Errors
    /// As [`NvmeController::reset`], the bounded wait for CSTS.RDY, or SET FEATURES.
    pub fn recover(&self) -> Result<(), NvmeError> {
        let before = self.resets.load(Ordering::Acquire);
        if self
            .recovering
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.wait_for_other_recovery(before);
        }
        let result = self.recover_now();
        self.recovering.store(false, Ordering::Release);
        result
    }

    fn recover_now(&self) -> Result<(), NvmeError> {
        log::warn!(
            "{}: recovering the controller (reset #{})",
            self.id(),
            self.reset_count() + 1
        );
        self.reset()?;
        self.admin.reset_rings();
        let r = self.registers();
        enable(self.device.as_ref(), &r, self.cap, &self.admin)?;
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
        // Published only once the controller serves again, so a queue that sees the new count
        // can restart at once.
        self.resets.fetch_add(1, Ordering::AcqRel);
        log::info!("{}: controller recovered", self.id());
        Ok(())
    }

    fn wait_for_other_recovery(&self, before: u64) -> Result<(), NvmeError> {
        let timeout = self.cap.ready_timeout() * 2 + self.config.admin_timeout * 2;
        let deadline = Instant::now() + timeout;
        while self.recovering.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return Err(NvmeError::Timeout {
                    device: self.id().to_owned(),
                    what: "another thread's controller recovery",
                    timeout,
                });
            }
            scst_accel_hal::locks::sleep(Duration::from_millis(1));
        }
        if self.resets.load(Ordering::Acquire) != before {
            Ok(())
        } else {
            Err(NvmeError::Disabled {
                device: self.id().to_owned(),
            })
        }
    }

    /// Recoveries so far.
    pub fn reset_count(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    /// Normal shutdown (NVMe 1.4 §7.6.2): CC.SHN = 01b, wait (bounded) for CSTS.SHST = 10b,
    /// then disable. I/O queues should be deleted first.
    ///
    /// # Errors
    /// [`NvmeError::Gone`] or [`NvmeError::Timeout`] (the caller falls back to a reset).
    pub fn shutdown(&self) -> Result<(), NvmeError> {
        let r = self.registers();
        let timeout = self.cap.ready_timeout();
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
        self.epoch.fetch_add(1, Ordering::AcqRel);
        disable(self.device.as_ref(), &r, self.cap)?;
        log::info!("{}: controller shut down", self.id());
        Ok(())
    }

    /// Mask every interrupt (teardown).
    pub fn disable_interrupts(&self) {
        if let Err(e) = self.device.disable_interrupts() {
            log::warn!("{}: disabling interrupts: {e}", self.id());
        }
    }

    /// CAP, VS, CC, CSTS, AQA, INTMS decoded, then the newest entries of the Error Information
    /// log, read with [`DUMP_ERROR_LOG_TIMEOUT`] only when the controller is ready (CSTS.RDY = 1,
    /// CFS = 0) and no earlier read timed out since the last reset; otherwise
    /// `error log: unavailable (reason)`.
    pub fn dump_registers(&self) -> String {
        let r = self.registers();
        let status = r.csts();
        if status == ALL_ONES_32 {
            return format!("{}: registers read all-ones (device gone)\n", self.id());
        }
        let mut s = regs::describe(&r);
        s.push_str(&self.describe_error_log(status));
        s
    }

    /// The error log part of [`NvmeController::dump_registers`].
    fn describe_error_log(&self, status: u32) -> String {
        let unavailable = |why: String| format!("error log: unavailable ({why})\n");
        if status & (csts::RDY | csts::CFS) != csts::RDY {
            return unavailable(format!("controller not ready: CSTS {status:#010x}"));
        }
        if !self.is_enabled() {
            return unavailable("the driver has disabled the controller".to_owned());
        }
        if self.log_timeout_epoch.load(Ordering::Acquire) == self.epoch() {
            return unavailable(
                "an earlier read timed out and the controller was not reset since".to_owned(),
            );
        }
        let entries = match self.error_log(DUMP_ERROR_LOG_TIMEOUT) {
            Ok(entries) => entries,
            Err(e) => return unavailable(e.to_string()),
        };
        let mut used: Vec<&ErrorLogEntry> = entries.iter().filter(|e| !e.is_empty()).collect();
        if used.is_empty() {
            return format!("error log: no errors ({} entries read)\n", entries.len());
        }
        // Error Count is the error's unique, incrementing identifier: highest = newest.
        used.sort_by_key(|e| std::cmp::Reverse(e.error_count));
        let mut s = format!(
            "error log: {} of {} entries used, newest first:\n",
            used.len(),
            entries.len()
        );
        for e in used.iter().take(DUMP_ERROR_LOG_ENTRIES) {
            let _ = writeln!(s, "  {e}");
        }
        if used.len() > DUMP_ERROR_LOG_ENTRIES {
            let _ = writeln!(s, "  ... {} older", used.len() - DUMP_ERROR_LOG_ENTRIES);
        }
        s
    }

    /// GET LOG PAGE, Error Information (NVMe 1.4 §5.14.1.1): the ELPE + 1 entries IDENTIFY
    /// reported (at most [`ERROR_LOG_MAX_ENTRIES`], one page), in the controller's order;
    /// unused entries have `error_count` 0 (a controller may also transfer fewer bytes than
    /// asked, QEMU's sends one entry: the page is zeroed before each read). RAE is set, so the
    /// read changes no asynchronous event state. One reader at a time; the whole call,
    /// including the wait for another reader, is bounded by `timeout`.
    ///
    /// # Errors
    /// As [`NvmeController`]'s admin commands; [`NvmeError::Timeout`] also when another
    /// thread's read did not end in time.
    pub fn error_log(&self, timeout: Duration) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(10);
        while self
            .log_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if Instant::now() >= deadline {
                return Err(NvmeError::Timeout {
                    device: self.id().to_owned(),
                    what: "another thread's error log read",
                    timeout,
                });
            }
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        let result = self.read_error_log(deadline.saturating_duration_since(Instant::now()));
        self.log_busy.store(false, Ordering::Release);
        result.map_err(|e| match e {
            // The bound the caller gave, not what was left of it after the wait for the page.
            NvmeError::Timeout { device, what, .. } => NvmeError::Timeout {
                device,
                what,
                timeout,
            },
            other => other,
        })
    }

    fn read_error_log(&self, timeout: Duration) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let wanted = self.info.controller.error_log_entries() as usize;
        let entries = wanted.min(ERROR_LOG_MAX_ENTRIES);
        if entries < wanted {
            log::debug!(
                "{}: the error log holds {wanted} entries; reading the first {entries}",
                self.id()
            );
        }
        let len = entries * ERROR_LOG_ENTRY_LEN;
        let region = self.log_page.region();
        region.fill(0, len, 0);
        let (cdw10, cdw11) = cmd::get_log_page_dwords(log_page::ERROR_INFORMATION, len as u32);
        let sqe = Sqe {
            opcode: admin_opcode::GET_LOG_PAGE,
            // The log is global to the controller (§5.14.1.1): every namespace.
            nsid: u32::MAX,
            prp1: self.log_page.iova(),
            cdw10,
            cdw11,
            ..Sqe::default()
        };
        let epoch = self.epoch();
        match self
            .admin
            .execute("GET LOG PAGE (Error Information)", sqe, timeout)
        {
            Ok(_) => {}
            Err(e) => {
                if matches!(e, NvmeError::Timeout { .. }) {
                    self.log_timeout_epoch.store(epoch, Ordering::Release);
                }
                return Err(e);
            }
        }
        let mut data = vec![0u8; len];
        region.read_at(0, &mut data);
        Ok(ErrorLogEntry::parse_all(&data))
    }

    /// ABORT (NVMe 1.4 §5.1) the command `cid` of submission queue `sqid`, bounded by the admin
    /// timeout (once for a free abort slot, once for the command). Never more than ACL + 1
    /// ABORTs are outstanding on the controller, whichever threads send them (§5.1: more
    /// fail with Abort Command Limit Exceeded). Returns whether the controller aborted it (its
    /// own completion then carries Command Abort Requested).
    ///
    /// # Errors
    /// As [`NvmeController`]'s admin commands.
    pub(crate) fn abort_command(&self, sqid: u16, cid: u16) -> Result<bool, NvmeError> {
        let timeout = self.config.admin_timeout;
        let permit = self.abort_permit(timeout)?;
        let sqe = Sqe {
            opcode: admin_opcode::ABORT,
            cdw10: cmd::abort_cdw10(sqid, cid),
            ..Sqe::default()
        };
        match self.admin.execute("ABORT", sqe, timeout) {
            Ok(cqe) => Ok(cmd::abort_succeeded(cqe.dw0)),
            Err(e) => {
                if matches!(e, NvmeError::Timeout { .. }) {
                    // Still outstanding on the controller until a reset drops it.
                    self.aborts_abandoned.fetch_add(1, Ordering::AcqRel);
                }
                drop(permit);
                Err(e)
            }
        }
    }

    /// Wait, bounded by `timeout`, until fewer than ACL + 1 ABORTs are outstanding, and take
    /// one of the slots.
    fn abort_permit(&self, timeout: Duration) -> Result<AbortPermit<'_>, NvmeError> {
        let limit = self.info.controller.abort_limit();
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(10);
        loop {
            let outstanding = self.aborts_outstanding.load(Ordering::Acquire);
            let abandoned = self.aborts_abandoned.load(Ordering::Acquire);
            if outstanding.saturating_add(abandoned) < limit
                && self
                    .aborts_outstanding
                    .compare_exchange(outstanding, outstanding + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Ok(AbortPermit { ctrl: self });
            }
            if Instant::now() >= deadline {
                return Err(NvmeError::Timeout {
                    device: self.id().to_owned(),
                    what: "a free ABORT slot (Abort Command Limit)",
                    timeout,
                });
            }
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Count `n` ABORTs as abandoned (outstanding until the next reset), to test the limit.
    #[cfg(test)]
    pub(crate) fn abandon_abort_slots(&self, n: u32) {
        self.aborts_abandoned.fetch_add(n, Ordering::AcqRel);
    }
}

/// One of the controller's ACL + 1 ABORT slots, returned on drop.
struct AbortPermit<'a> {
    ctrl: &'a NvmeController,
}

impl Drop for AbortPermit<'_> {
    fn drop(&mut self) {
        self.ctrl.aborts_outstanding.fetch_sub(1, Ordering::AcqRel);
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

/// Poll CSTS until `done`, the device is gone, CFS is set, or `timeout` passes.
fn wait_csts(
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

/// CC.EN = 0 and wait for CSTS.RDY = 0, bounded by CAP.TO (NVMe 1.4 §3.1.5, §7.6.1).
fn disable(device: &dyn DeviceBacking, r: &Registers<'_>, cap: Cap) -> Result<(), NvmeError> {
    let current = r.cc();
    if current == ALL_ONES_32 {
        return Err(NvmeError::Gone {
            device: device.id().to_owned(),
        });
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

/// Program the admin queue and enable: AQA, ASQ, ACQ, CC, wait for CSTS.RDY = 1 (CFS fatal).
fn enable(
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

/// IDENTIFY into a fresh mapped page (bring-up only: no buffer is shared between threads).
fn identify(
    device: &Arc<dyn DeviceBacking>,
    admin: &AdminQueue,
    iovas: &Arc<IovaLock>,
    timeout: Duration,
    cns: u32,
    nsid: u32,
) -> Result<Box<[u8; IDENTIFY_LEN]>, NvmeError> {
    let page = map_region(device, iovas, IDENTIFY_LEN, "an IDENTIFY buffer")?;
    let sqe = Sqe {
        opcode: admin_opcode::IDENTIFY,
        nsid,
        prp1: page.iova(),
        cdw10: cns,
        ..Sqe::default()
    };
    admin.execute("IDENTIFY", sqe, timeout)?;
    let mut data = Box::new([0u8; IDENTIFY_LEN]);
    page.region().read_at(0, &mut data[..]);
    Ok(data)
}

/// SET FEATURES Number of Queues (NVMe 1.4 §5.21.1.7); returns the I/O queue pairs granted.
fn set_queue_count(admin: &AdminQueue, timeout: Duration, wanted: u16) -> Result<u16, NvmeError> {
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

fn identify_and_configure(
    device: &Arc<dyn DeviceBacking>,
    config: &NvmeConfig,
    cap: Cap,
    admin: &AdminQueue,
    iovas: &Arc<IovaLock>,
    version: u32,
) -> Result<(NvmeInfo, u16), NvmeError> {
    let id = device.id();
    let r = Registers::new(device.bar0(), config.split_64bit_mmio);
    if r.cc() & cc::EN != 0 || r.csts() & csts::RDY != 0 {
        log::info!("{id}: controller was enabled; disabling it first");
    }
    disable(device.as_ref(), &r, cap).or_else(|e| match e {
        NvmeError::Timeout { .. } => {
            log::warn!("{id}: {e}; escalating to a function reset");
            device.reset().map_err(|source| NvmeError::Hal {
                device: id.to_owned(),
                source: Box::new(source),
            })?;
            disable(device.as_ref(), &r, cap)
        }
        other => Err(other),
    })?;
    enable(device.as_ref(), &r, cap, admin)?;
    let timeout = config.admin_timeout;
    let data = identify(device, admin, iovas, timeout, cmd::cns::CONTROLLER, 0)?;
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
    let list = identify(device, admin, iovas, timeout, cmd::cns::ACTIVE_NSIDS, 0)?;
    let nsid = cmd::first_active_nsid(&list).ok_or_else(|| unsupported("no active namespace".to_owned()))?;
    let data = identify(device, admin, iovas, timeout, cmd::cns::NAMESPACE, nsid)?;
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
    let io_queues = set_queue_count(admin, timeout, config.queues)?;
    Ok((
        NvmeInfo {
            version,
            controller,
            nsid,
            namespace,
        },
        io_queues,
    ))
}

/// Entries per I/O queue: a power of two in 2..=min(MQES + 1, 4096).
pub(crate) fn queue_depth(wanted: u32, cap: Cap) -> u16 {
    let max = (u32::from(cap.mqes) + 1).min(4096);
    let depth = wanted.clamp(2, max.max(2));
    (1u32 << (31 - depth.leading_zeros())) as u16
}

/// Geometry from CAP and IDENTIFY: MDTS (in CAP.MPSMIN units, 0 = no limit) and the PRP list
/// page bound the transfer size.
fn geometry(cap: Cap, info: &NvmeInfo) -> Geometry {
    let block_size = 1u32 << info.namespace.lbads().unwrap_or(9);
    let mdts_bytes = match info.controller.mdts {
        0 => u64::MAX,
        m => cap.min_page_size().checked_shl(u32::from(m)).unwrap_or(u64::MAX),
    };
    let max_blocks_bytes = u64::from(block_size) * 65536; // NLB is 16 bits
    let max_transfer = mdts_bytes.min(u64::from(MAX_TRANSFER)).min(max_blocks_bytes) as u32;
    Geometry {
        block_size,
        capacity_blocks: info.namespace.nsze,
        max_transfer_bytes: max_transfer,
        max_segments: max_transfer / PAGE_SIZE as u32 + 1,
        supports_deallocate: info.controller.supports_dsm(),
        volatile_cache: info.controller.volatile_cache(),
    }
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
        }
    }

    #[test]
    fn geometry_honours_mdts_and_the_prp_list() {
        let cap = Cap::from_bits(0);
        let g = geometry(cap, &info(7, 9, cmd::ONCS_DSM));
        assert_eq!(g.max_transfer_bytes, 512 * 1024, "QEMU's MDTS 7 = 128 pages");
        assert_eq!(g.max_segments, 129);
        assert_eq!((g.block_size, g.capacity_blocks), (512, 1000));
        assert!(g.supports_deallocate && !g.volatile_cache);
        let g = geometry(cap, &info(0, 12, 0));
        assert_eq!(g.max_transfer_bytes, MAX_TRANSFER, "no MDTS: one PRP list page");
        assert_eq!(g.block_size, 4096);
        assert!(!g.supports_deallocate);
        assert_eq!(geometry(cap, &info(10, 9, 0)).max_transfer_bytes, 2 << 20);
    }
}
