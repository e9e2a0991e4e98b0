//! The Error Information log (NVMe 1.4 §5.14.1.1): GET LOG PAGE into one page mapped for the
//! controller's life, one reader at a time, and its summary in
//! [`NvmeController::dump_registers`].

use super::cmd;
use super::cmd::admin_opcode;
use super::cmd::log_page;
use super::cmd::ErrorLogEntry;
use super::cmd::Sqe;
use super::cmd::ERROR_LOG_ENTRY_LEN;
use super::controller::NvmeController;
use super::controller::PAGE_SIZE;
use super::error::NvmeError;
use super::regs::csts;
use scst_accel_dma::MappedRegion;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// Error Information log entries read at most: what the one log page holds.
pub const ERROR_LOG_MAX_ENTRIES: usize = PAGE_SIZE as usize / ERROR_LOG_ENTRY_LEN;
/// Bound on the error log read of [`NvmeController::dump_registers`]: short, so that a dump
/// taken at an escalation of a controller that stopped answering does not delay the reset.
pub const DUMP_ERROR_LOG_TIMEOUT: Duration = Duration::from_millis(200);
/// Entries [`NvmeController::dump_registers`] shows, newest first.
const DUMP_ERROR_LOG_ENTRIES: usize = 8;
/// No error log read has timed out (the value of `timeout_epoch`).
const NO_EPOCH: u64 = u64::MAX;

/// The page GET LOG PAGE writes into, and who may use it.
pub(super) struct ErrorLogPage {
    /// Mapped for the controller's life rather than per read, so that a read whose waiter
    /// timed out can never DMA into unmapped memory.
    page: MappedRegion,
    /// A thread is reading the error log (the page has one reader at a time).
    busy: AtomicBool,
    /// The epoch in which an error log read last timed out ([`NO_EPOCH`]: none did).
    timeout_epoch: AtomicU64,
}

impl ErrorLogPage {
    /// Take `page` (at least [`PAGE_SIZE`] bytes, mapped on the device) as the log page.
    pub(super) fn new(page: MappedRegion) -> Self {
        Self {
            page,
            busy: AtomicBool::new(false),
            timeout_epoch: AtomicU64::new(NO_EPOCH),
        }
    }
}

/// The error log page taken (`ErrorLogPage::busy` set) for one reader; dropping it lets the next
/// one in. An atomic flag, not a lock of the hierarchy: its holder runs an admin command (a
/// blocking call), and its waiters sleep with [`scst_accel_hal::locks::sleep`], bounded by their
/// caller's timeout (docs/locking.md, "Flags that act as locks").
struct PageHeld<'a>(&'a AtomicBool);

impl Drop for PageHeld<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl NvmeController {
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
        let log = &self.error_log_page;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(10);
        while log
            .busy
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
        // Released by the guard's drop, also if the read panics (a panic under it would
        // otherwise leave the page taken, and every later read would time out on it).
        let _page = PageHeld(&log.busy);
        let result = self.read_error_log(deadline.saturating_duration_since(Instant::now()));
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

    /// The read itself; the caller holds the page (`busy`).
    fn read_error_log(&self, timeout: Duration) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let log = &self.error_log_page;
        let wanted = self.info().controller.error_log_entries() as usize;
        let entries = wanted.min(ERROR_LOG_MAX_ENTRIES);
        if entries < wanted {
            log::debug!(
                "{}: the error log holds {wanted} entries; reading the first {entries}",
                self.id()
            );
        }
        let len = entries * ERROR_LOG_ENTRY_LEN;
        let region = log.page.region();
        region.fill(0, len, 0);
        let (cdw10, cdw11) = cmd::get_log_page_dwords(log_page::ERROR_INFORMATION, len as u32);
        let sqe = Sqe {
            opcode: admin_opcode::GET_LOG_PAGE,
            // The log is global to the controller (§5.14.1.1): every namespace.
            nsid: u32::MAX,
            prp1: log.page.iova(),
            cdw10,
            cdw11,
            ..Sqe::default()
        };
        let epoch = self.epoch();
        match self.admin_within("GET LOG PAGE (Error Information)", sqe, timeout) {
            Ok(_) => {}
            Err(e) => {
                if matches!(e, NvmeError::Timeout { .. }) {
                    log.timeout_epoch.store(epoch, Ordering::Release);
                }
                return Err(e);
            }
        }
        let mut data = vec![0u8; len];
        region.read_at(0, &mut data);
        Ok(ErrorLogEntry::parse_all(&data))
    }

    /// The error log part of [`NvmeController::dump_registers`]: the newest entries, read with
    /// [`DUMP_ERROR_LOG_TIMEOUT`] only when the controller is ready (`status` has CSTS.RDY = 1,
    /// CFS = 0) and no earlier read timed out since the last reset; otherwise
    /// `error log: unavailable (reason)`.
    pub(super) fn describe_error_log(&self, status: u32) -> String {
        let unavailable = |why: String| format!("error log: unavailable ({why})\n");
        if status & (csts::RDY | csts::CFS) != csts::RDY {
            return unavailable(format!("controller not ready: CSTS {status:#010x}"));
        }
        if !self.is_enabled() {
            return unavailable("the driver has disabled the controller".to_owned());
        }
        if self.error_log_page.timeout_epoch.load(Ordering::Acquire) == self.epoch() {
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
}
