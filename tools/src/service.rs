//! The appliance service: many disks in one process, each with its own board, store, frontend,
//! workers and teardown.
//!
//! One supervisor (the thread that calls [`Service::supervise`]: `serve`'s main thread) owns
//! every disk: it starts them, watches each frontend's teardown trigger, tears a failed disk
//! down *alone* (its LUNs removed first) while the others keep serving, answers the control
//! socket's requests, and on stop tears every disk down in parallel, each bounded. Nothing here is shared behind a lock: other threads (the control
//! socket, the metrics endpoint, the watchdog) talk to the supervisor through a channel and wait
//! a bounded time for its answer. A supervisor that stops answering therefore also stops the
//! watchdog pings, so systemd sees a wedged service, not only a dead one.

use crate::backend::Backend;
use crate::backend::BackendReport;
use crate::backend::BoardArg;
use crate::config::DiskSpec;
use crate::config::ServiceSettings;
use crate::config::TargetDriver;
use crate::exit;
use crate::export::AppliedExports;
use crate::export::CreatedTargets;
use crate::export::ExportError;
use crate::export::Exporter;
use crate::export::LunNow;
use crate::export::Restored;
use crate::status::DeviceCounters;
use crate::status::DiskSnapshot;
use crate::status::DiskState;
use crate::status::IdentityView;
use crate::status::NotAnswered;
use crate::status::ServiceView;
use crate::status::TeardownRecord;
use crate::status::ViewError;
use crossbeam_channel::Receiver;
use crossbeam_channel::Sender;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::FrontendReport;
use scst_accel_handler::frontend::FrontendStats;
use scst_accel_handler::frontend::TeardownTrigger;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::transport::device::OpenError;
use scst_accel_handler::transport::device::ScstUserDevice;
use scst_accel_handler::transport::register::register;
use scst_accel_handler::transport::ScstUserFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

/// How long a caller of [`ServiceHandle`] waits for the supervisor's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How often the supervisor looks at its disks when nothing wakes it. A request, a disk's
/// teardown trigger ([`Frontend::on_trigger`]), the end of a teardown and (through `serve`'s
/// signal forwarder) a signal each wake it at once, so this is a backstop: an idle service's
/// supervisor wakes once a second (five times with the 200 ms turn it had).
///
/// [`Frontend::on_trigger`]: scst_accel_handler::frontend::Frontend::on_trigger
const TICK: Duration = Duration::from_secs(1);

/// The grace the iSCSI target deletions still running at the stop's bound get, all together.
const DELETION_GRACE: Duration = Duration::from_secs(1);

/// Log `said` about `key` when it differs from what was said last (a condition that lasts is
/// logged once); `None` (all is well again) is logged only after something was.
fn note(notes: &mut std::collections::BTreeMap<String, String>, key: &str, said: Option<String>) {
    match said {
        Some(text) => {
            if notes.get(key) != Some(&text) {
                log::warn!("{text}");
                notes.insert(key.to_string(), text);
            }
        }
        None => {
            if notes.remove(key).is_some() {
                log::info!("{key}: as configured again");
            }
        }
    }
}

/// Wait for the iSCSI target deletions still running at a stop: they share what is left of
/// the stop's budget (to `deadline`) and [`DELETION_GRACE`] past it (a sysfs write SCST holds
/// while it is busy), together and not a grace each, so the stop stays inside the margin
/// `serve` announced over the budget (EXTEND_TIMEOUT_USEC) however many targets there are.
/// A deletion still running then is left to finish on its own.
fn join_deletions(deletions: Vec<std::thread::JoinHandle<()>>, deadline: Instant) {
    let end = deadline.max(Instant::now() + DELETION_GRACE);
    for deletion in deletions {
        let left = end.saturating_duration_since(Instant::now());
        if scst_accel_hal::locks::join_bounded(deletion, left).is_err() {
            log::error!("an iSCSI target deletion did not end within the stop's budget; left to finish");
        }
    }
}

/// Which kernel side the disks register with.
#[derive(Clone)]
pub enum KernelSide {
    /// The real `/dev/scst_user` at this path.
    Real(PathBuf),
    /// The in-process loopback kernel (demo, tests, trying a configuration without SCST).
    Loopback(LoopbackKernel),
}

/// Why a disk could not start, with the exit code its class maps to (see [`crate::exit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    /// What failed and what to do.
    pub message: String,
    /// The exit code of its class: 78 configuration (bad PCI address, VFIO permission or
    /// binding, locked memory, registration refused), 69 unavailable (SCST or VFIO modules not
    /// loaded, the function busy), 77 permission on `/dev/scst_user`, 74 the device failed.
    pub exit_code: u8,
}

/// What one disk's teardown left: the figures `demo --json` reports per disk.
pub struct DiskOutcome {
    /// Disk name.
    pub name: String,
    /// How it ended (`Stopped` or `Failed`).
    pub state: DiskState,
    /// Why it failed.
    pub failure: Option<String>,
    /// The frontend's report (`None` when it never started).
    pub frontend: Option<FrontendReport>,
    /// The backend's release report (`None` when it never opened, or the teardown overran).
    pub backend: Option<BackendReport>,
    /// The exit code of a start failure or a failure while serving (0 when stopped cleanly).
    pub exit_code: u8,
}

/// A running disk.
struct Running {
    frontend: Frontend,
    backend: Backend,
    /// LUNs added for it through SCST's sysfs; removed first at its teardown.
    exports: Option<AppliedExports>,
}

/// Builds a disk's backend instead of the board named in its configuration: `Some` to take the
/// disk, `None` to leave it to its board. The seam for a store of one's own (see
/// [`Backend::from_store`]).
pub type StoreFactory =
    Arc<dyn Fn(&DiskSpec) -> Option<Result<Backend, crate::backend::BackendError>> + Send + Sync>;

/// How [`Service::start`] treats what lies outside the process.
#[derive(Clone)]
pub struct StartOptions {
    /// Apply each disk's export blocks through `scst_sysfs` (checked for every disk before any
    /// disk starts), and remove them at its teardown. Off for the demo, whose loopback sessions
    /// stand in for SCST's targets.
    pub apply_exports: bool,
    /// Keep identities (generated or device-derived) in `state_dir` (`identity/<name>.toml`)
    /// so a disk keeps its serial and designator across restarts. Off for the demo, whose
    /// disks are throwaway.
    pub persist_identities: bool,
    /// Stores of one's own for some disks (none by default: every disk gets its board's).
    pub stores: Option<StoreFactory>,
    /// How long a disk's teardown waits for SCST to remove its LUNs before it closes the
    /// device anyway ([`LUN_REMOVAL_BOUND`] by default).
    pub lun_removal_bound: Duration,
    /// How often the supervisor looks whether each serving disk's LUNs are still there, and
    /// applies again those that are gone ([`EXPORT_CHECK`] by default).
    pub export_check: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            apply_exports: true,
            persist_identities: true,
            stores: None,
            lun_removal_bound: LUN_REMOVAL_BOUND,
            export_check: EXPORT_CHECK,
        }
    }
}

/// How often a serving disk's exports are checked: each LUN's `device` link read (a
/// `readlink` in sysfs, which takes no SCST lock). A LUN found gone is added again (and its
/// iSCSI target created again when it went too: iscsi-scstd's exit deletes every iSCSI target,
/// so each restart of it took the service's exports away until the service restarted); a LUN
/// another device holds now is reported and left alone.
pub const EXPORT_CHECK: Duration = Duration::from_secs(5);

/// How long a disk's teardown waits for SCST to remove its LUNs (`del LUN`) before it closes
/// the device anyway. SCST's `del` waits, without a bound, until the LUN has no command in
/// flight (`scst_acg_del_lun`), and the commands our handler holds end only when it answers
/// them: after a worker died, or the kernel stopped reading its replies, only the close answers
/// them (spec §5.3). Closing the device unregisters it, which removes its LUNs with it; the
/// `del` left waiting then ends on its own.
pub const LUN_REMOVAL_BOUND: Duration = Duration::from_secs(5);

/// A disk's teardown, on its own thread.
struct TeardownThread {
    handle: JoinHandle<Finished>,
    started: Instant,
    trigger: TeardownTrigger,
    /// Set by the thread when its teardown is done, just before it wakes the supervisor.
    done: Arc<AtomicBool>,
}

impl TeardownThread {
    /// Its teardown is done (or the thread ended otherwise: a panic).
    fn done(&self) -> bool {
        self.done.load(Ordering::Acquire) || self.handle.is_finished()
    }
}

/// What a teardown thread hands back.
struct Finished {
    frontend: FrontendReport,
    backend: BackendReport,
}

/// One configured disk, owned by the supervisor.
struct Slot {
    spec: DiskSpec,
    state: DiskState,
    failure: Option<String>,
    exit_code: u8,
    info: Option<StoreInfo>,
    identity: IdentityView,
    running: Option<Running>,
    teardown: Option<TeardownThread>,
    last_stats: Option<FrontendStats>,
    device: DeviceCounters,
    teardowns: Vec<TeardownRecord>,
    outcome: Option<Finished>,
    /// Its LUNs are (or may still be) in SCST: from a start that applied exports until a
    /// teardown that ended; an abandoned or panicked teardown leaves it set.
    holds_exports: bool,
    /// A restore of its gone LUNs, running on its own thread (a LUN `add` waits for the
    /// handler's ATTACH_SESS, an EAGAIN for SCST's result: the supervisor must not).
    restore: Option<JoinHandle<(Restored, Result<(), ExportError>)>>,
    /// What was last said of each LUN and of the last restore, so that a condition that
    /// lasts is logged once, not at every check.
    export_notes: std::collections::BTreeMap<String, String>,
    /// The LUNs the last check did not find holding the disk's device (status).
    exports_lost: Vec<String>,
}

/// What the control socket, the metrics endpoint and the watchdog ask a service's loop (the
/// scst_user supervisor's here, or the TCMU service's in `tcmu.rs`), each with where to answer.
pub(crate) enum Request {
    Snapshot(Sender<Vec<DiskSnapshot>>),
    Dump(String, Sender<Result<String, String>>),
    Resize(String, u64, Sender<Result<u64, String>>),
    Wedged(Duration, Sender<Vec<String>>),
    Stop,
    /// Something the loop looks at changed (a trigger fired, a teardown ended, a signal came):
    /// look now.
    Wake,
}

/// A cheap, cloneable way to talk to the supervisor from any thread: it implements
/// [`ServiceView`] for the control socket and the metrics endpoint.
#[derive(Clone)]
pub struct ServiceHandle {
    requests: Sender<Request>,
}

impl ServiceHandle {
    /// A handle on a loop that answers `requests` (the scst_user supervisor's, or the TCMU
    /// service's: `tcmu.rs`).
    pub(crate) fn new(requests: Sender<Request>) -> Self {
        Self { requests }
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests.send(make(tx)).ok()?;
        rx.recv_timeout(ANSWER_WAIT).ok()
    }

    /// Ask every disk to stop (what SIGTERM does): the supervisor tears them down in parallel.
    pub fn request_stop(&self) {
        let _ = self.requests.send(Request::Stop);
    }

    /// Have the loop look at once (and `Service::supervise` return): never blocks.
    pub fn wake(&self) {
        let _ = self.requests.send(Request::Wake);
    }

    /// Disks whose workers have not looped within `max_age` (or have exited while serving);
    /// `Err` when the supervisor itself did not answer within its bound. The watchdog withholds
    /// its ping on either.
    ///
    /// # Errors
    /// The supervisor did not answer.
    pub fn wedged(&self, max_age: Duration) -> Result<Vec<String>, String> {
        self.ask(|tx| Request::Wedged(max_age, tx))
            .ok_or_else(|| format!("the service supervisor did not answer within {ANSWER_WAIT:?}"))
    }
}

impl ServiceView for ServiceHandle {
    /// `Err` while `start_disks` runs (the control socket and the metrics endpoint are up
    /// before it, and the supervisor answers after), or when the supervisor is wedged or gone.
    fn snapshot(&self) -> Result<Vec<DiskSnapshot>, NotAnswered> {
        self.ask(Request::Snapshot)
            .ok_or(NotAnswered { waited: ANSWER_WAIT })
    }

    /// [`ViewError::NotAnswered`] as [`ServiceView::snapshot`] when the supervisor does not
    /// answer in time (the client exits 69 on it, as on a status).
    fn dump(&self, disk: &str) -> Result<String, ViewError> {
        self.ask(|tx| Request::Dump(disk.to_owned(), tx))
            .ok_or(NotAnswered { waited: ANSWER_WAIT })?
            .map_err(ViewError::Refused)
    }

    /// [`ViewError::NotAnswered`] when the supervisor does not answer in time, as
    /// [`Self::dump`]. The resize may still happen after the client gave up: `status` shows it.
    fn resize(&self, disk: &str, bytes: u64) -> Result<u64, ViewError> {
        self.ask(|tx| Request::Resize(disk.to_owned(), bytes, tx))
            .ok_or(NotAnswered { waited: ANSWER_WAIT })?
            .map_err(ViewError::Refused)
    }
}

/// The service: its disks and the supervisor's inbox.
pub struct Service {
    settings: ServiceSettings,
    kernel: KernelSide,
    slots: Vec<Slot>,
    requests: Receiver<Request>,
    handle: ServiceHandle,
    /// When the stop was requested: every teardown must have ended within
    /// [`Service::stop_budget`] of it.
    stop_began: Option<Instant>,
    last_status: String,
    exporter: Option<Exporter>,
    /// The iSCSI targets this service created, deleted once no disk exports there
    /// ([`Service::release_targets`]); with those an earlier run created and recorded.
    created_targets: Vec<String>,
    /// Set when a stop begins: a restore of exports still running writes nothing more.
    stopping: Arc<AtomicBool>,
    /// Deletions of those targets still running (joined, bounded, by [`Service::stop`]).
    target_deletions: Vec<std::thread::JoinHandle<()>>,
    persist_identities: bool,
    lun_removal_bound: Duration,
    stores: Option<StoreFactory>,
    export_check: Duration,
    /// When the exports are next checked ([`Service::keep_exports`]).
    next_export_check: Instant,
}

impl Service {
    /// Start every disk of `disks`, in order. A disk that cannot start is `Failed` (visible in
    /// status, logged) and the others go on; [`Service::serving`] tells how many serve.
    ///
    /// Export blocks are checked for every disk first (the target drivers are loaded, the
    /// scst_local targets exist): if any is not applicable, no disk starts at all, so a bad
    /// export never leaves half a configuration applied.
    pub fn start(
        settings: ServiceSettings,
        disks: Vec<DiskSpec>,
        kernel: KernelSide,
        options: StartOptions,
    ) -> Self {
        let mut service = Self::new(settings, disks, kernel, options);
        service.start_disks();
        service
    }

    /// The service with its inbox but no disk started yet: [`Service::handle`] works already
    /// (requests wait for [`Service::start_disks`] and the supervisor), so the control socket
    /// can be bound before anything is registered.
    pub fn new(
        settings: ServiceSettings,
        disks: Vec<DiskSpec>,
        kernel: KernelSide,
        options: StartOptions,
    ) -> Self {
        let (tx, requests) = crossbeam_channel::unbounded();
        let settings_root = settings.scst_sysfs.clone();
        // The targets an earlier run created, which it may not have deleted (a kill -9): this
        // run's as well, deleted at its stop once empty (`Exporter::delete_target` leaves a
        // target holding someone else's LUN).
        let target_record = CreatedTargets::at(
            (options.apply_exports && options.persist_identities).then_some(settings.state_dir.as_path()),
        );
        let created_targets = target_record.load();
        if !created_targets.is_empty() {
            log::info!(
                "iSCSI targets an earlier run created (the state directory's record): {}; \
                 deleted at stop once empty",
                created_targets.join(", ")
            );
        }
        Self {
            settings,
            kernel,
            slots: disks.into_iter().map(Slot::new).collect(),
            requests,
            handle: ServiceHandle { requests: tx },
            stop_began: None,
            last_status: String::new(),
            exporter: options
                .apply_exports
                .then(|| Exporter::new(&settings_root).with_record(target_record)),
            created_targets,
            stopping: Arc::new(AtomicBool::new(false)),
            target_deletions: Vec::new(),
            persist_identities: options.persist_identities,
            lun_removal_bound: options.lun_removal_bound,
            stores: options.stores,
            export_check: options.export_check,
            next_export_check: Instant::now() + options.export_check,
        }
    }

    /// Start every disk, in order (see [`Service::start`]).
    pub fn start_disks(&mut self) {
        self.start_disks_with(|_, _| true);
    }

    /// [`Service::start_disks`], asking `before(index, name)` before each disk: `false` (a stop
    /// was asked for meanwhile) starts no more, and the disks left are `Stopped`, never
    /// registered; those started are torn down by the stop as usual.
    pub fn start_disks_with(&mut self, mut before: impl FnMut(usize, &str) -> bool) {
        if let Some((refusal, code)) = self.preflight_exports() {
            for slot in &mut self.slots {
                slot.state = DiskState::Failed;
                slot.failure = Some(refusal.clone());
                slot.exit_code = code;
            }
            log::error!("{refusal}; no disk was started");
            return;
        }
        for index in 0..self.slots.len() {
            if !before(index, &self.slots[index].spec.args.name) {
                for slot in &mut self.slots[index..] {
                    slot.state = DiskState::Stopped;
                }
                log::info!(
                    "stop requested during the start: {} disk(s) not started",
                    self.slots.len() - index
                );
                return;
            }
            self.start_disk(index);
        }
    }

    /// Every disk's exports checked against SCST's sysfs; the first refusal, if any, with its
    /// exit class ([`crate::export::ExportError::exit_code`]): a target driver whose module is
    /// not loaded yet, or iscsi-scstd not started yet (a boot race: the service started before
    /// their units), may be there at a restart (69); anything else is the configuration's (78).
    fn preflight_exports(&self) -> Option<(String, u8)> {
        let exporter = self.exporter.as_ref()?;
        self.slots.iter().find_map(|slot| {
            exporter.preflight(&slot.spec.exports).err().map(|e| {
                (
                    format!("disk {}: export: {e}", slot.spec.args.name),
                    e.exit_code(),
                )
            })
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ServiceHandle {
        self.handle.clone()
    }

    /// Disks serving now.
    pub fn serving(&self) -> usize {
        self.count(DiskState::Serving)
    }

    fn count(&self, state: DiskState) -> usize {
        self.slots.iter().filter(|s| s.state == state).count()
    }

    /// Every disk that failed to start, with why and its exit class, in configuration order.
    pub fn start_failures(&self) -> Vec<(String, StartFailure)> {
        self.slots
            .iter()
            .filter(|s| s.state == DiskState::Failed && s.running.is_none() && s.outcome.is_none())
            .map(|s| {
                (
                    s.spec.args.name.clone(),
                    StartFailure {
                        message: s.failure.clone().unwrap_or_default(),
                        exit_code: s.exit_code,
                    },
                )
            })
            .collect()
    }

    /// One line for systemd's STATUS= and the log: "3 disks serving, 0 failed".
    pub fn status_line(&self) -> String {
        let serving = self.serving();
        let failed = self.count(DiskState::Failed);
        let stopping = self.count(DiskState::Stopping);
        let mut line = format!("{serving} disks serving, {failed} failed");
        if stopping > 0 {
            line.push_str(&format!(", {stopping} stopping"));
        }
        line
    }

    /// The serving frontend of disk `name` (demo: to attach sessions and read figures).
    pub fn frontend(&self, name: &str) -> Option<&Frontend> {
        self.slot(name)
            .and_then(|s| s.running.as_ref())
            .map(|r| &r.frontend)
    }

    /// The backend of disk `name` while it serves (demo: fault injection, device figures).
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.slot(name)
            .and_then(|s| s.running.as_ref())
            .map(|r| &r.backend)
    }

    /// The store's geometry of disk `name`, once its board opened.
    pub fn info(&self, name: &str) -> Option<StoreInfo> {
        self.slot(name).and_then(|s| s.info)
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.spec.args.name == name)
    }

    /// Run the supervisor for at most `for_at_most` (or until every disk has ended): answer
    /// requests, tear down disks whose trigger fired, collect finished teardowns. Returns
    /// whether any disk is still serving or stopping; when none is, the requests queued are
    /// answered first.
    pub fn supervise(&mut self, for_at_most: Duration) -> bool {
        let deadline = Instant::now() + for_at_most;
        let mut woken = false;
        loop {
            self.watch_triggers();
            self.collect_teardowns();
            self.keep_exports();
            if !self.active() {
                // What is queued already is answered (a status asked while the last disk's
                // teardown ended), not left to its asker's 5 s bound.
                while let Ok(request) = self.requests.try_recv() {
                    self.answer(request);
                }
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || woken {
                return true;
            }
            match self.requests.recv_timeout(left.min(TICK)) {
                // Looked at above, then back to the caller (a signal it handles, a status line).
                Ok(Request::Wake) => woken = true,
                Ok(request) => self.answer(request),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    scst_accel_hal::locks::sleep(left.min(TICK));
                }
            }
        }
    }

    /// FLUSH_CACHE on every serving disk (SIGHUP: SCST hands back the buffers it caches), each
    /// on its own thread, so that the kernel's suspend (up to 90 s, spec §3.6) never stalls the
    /// supervisor, the watchdog or a teardown.
    pub fn flush_caches(&self) {
        for slot in &self.slots {
            let Some(running) = &slot.running else { continue };
            let flush = running.frontend.cache_flusher();
            let name = slot.spec.args.name.clone();
            let spawned =
                std::thread::Builder::new()
                    .name(format!("flush-{name}"))
                    .spawn(move || match flush() {
                        Ok(()) => log::info!("disk {name}: SCST buffer cache flushed"),
                        Err(e) => log::warn!("disk {name}: FLUSH_CACHE failed: {e}"),
                    });
            if let Err(e) = spawned {
                log::warn!(
                    "disk {}: cannot spawn the FLUSH_CACHE thread: {e}",
                    slot.spec.args.name
                );
            }
        }
    }

    /// Log every serving disk's dump (SIGUSR1): commands in flight, registers, rings.
    pub fn log_dumps(&self) {
        for slot in &self.slots {
            match &slot.running {
                Some(r) => log::warn!("disk {}: state dump\n{}", slot.spec.args.name, r.frontend.dump()),
                None => log::warn!("disk {}: {:?}, nothing to dump", slot.spec.args.name, slot.state),
            }
        }
    }

    /// Whether any disk is serving or stopping.
    pub fn active(&self) -> bool {
        self.slots.iter().any(|s| {
            matches!(
                s.state,
                DiskState::Serving | DiskState::Starting | DiskState::Stopping
            )
        })
    }

    /// Whether a stop was requested (SIGTERM, [`ServiceHandle::request_stop`]).
    pub fn stop_requested(&self) -> bool {
        self.stop_began.is_some()
    }

    /// Whether a requested stop is over for the process: every disk has ended, or the stop
    /// has run out of its budget ([`Service::stop_budget`] since it began), in which case
    /// [`Service::stop`] fails the teardowns still running rather than wait for them. `serve`
    /// loops until this says yes, so no teardown holds the process past the bound.
    pub fn stop_settled(&self) -> bool {
        self.stop_began
            .is_some_and(|began| !self.active() || began.elapsed() >= self.stop_budget())
    }

    /// Begin the teardown of every disk still serving, all at once (each in its own thread).
    pub fn begin_stop(&mut self) {
        self.stop_began.get_or_insert_with(Instant::now);
        self.stopping.store(true, Ordering::Release);
        for index in 0..self.slots.len() {
            if self.slots[index].state == DiskState::Serving {
                self.begin_teardown(index, TeardownTrigger::Requested);
            }
        }
    }

    /// Stop every disk and wait for all the teardowns, together bounded by
    /// [`Service::stop_budget`] from the moment the stop began (here, or at an earlier
    /// [`Service::begin_stop`]): a teardown still running then is left to finish on its own
    /// and its disk fails (exit 70). Returns every disk's outcome, in configuration order.
    pub fn stop(mut self) -> Vec<DiskOutcome> {
        self.begin_stop();
        let bound = self.stop_budget();
        let deadline = self.stop_began.unwrap_or_else(Instant::now) + bound;
        while self.active() && Instant::now() < deadline {
            self.supervise(deadline.saturating_duration_since(Instant::now()).min(TICK));
        }
        // A teardown that ended since the last look (the caller's loop may have stopped at
        // the bound) is collected, not counted as overrun.
        self.collect_teardowns();
        for slot in self.slots.iter_mut().filter(|s| s.state == DiskState::Stopping) {
            log::error!(
                "disk {}: teardown still running after {bound:?}; left to finish on its own",
                slot.spec.args.name
            );
            slot.teardown = None;
            slot.state = DiskState::Failed;
            slot.failure = Some(format!("teardown overran {bound:?}"));
            slot.exit_code = exit::SOFTWARE;
        }
        // A restore still running may create a target: waited for (bounded), so that the
        // target is deleted with the others; the LUNs it adds go with the device's
        // unregistration.
        self.collect_restores(Some(deadline));
        self.release_targets();
        join_deletions(std::mem::take(&mut self.target_deletions), deadline);
        self.slots.into_iter().map(Slot::into_outcome).collect()
    }

    /// The time the slowest disk's teardown may take, for systemd's EXTEND_TIMEOUT_USEC.
    pub fn stop_budget(&self) -> Duration {
        self.settings.stop_timeout + Duration::from_secs(1)
    }

    /// The status line if it changed since the last call (for STATUS= updates).
    pub fn status_changed(&mut self) -> Option<String> {
        let line = self.status_line();
        (line != self.last_status).then(|| {
            self.last_status = line.clone();
            line
        })
    }

    /// The exit code for how the service ended ([`exit::of_service`]): 0 when every disk
    /// stopped on request; otherwise a failure while serving (74, 69 or 70 as for one disk)
    /// before a start failure's class, and a start failure of class 78 or 64 not at all when
    /// the stop was requested (`stop_requested`, [`Service::stop_requested`] before the stop).
    pub fn exit_code(outcomes: &[DiskOutcome], stop_requested: bool) -> u8 {
        exit::of_service(outcomes.iter().map(|o| o.exit_code), stop_requested)
    }

    fn start_disk(&mut self, index: usize) {
        let kernel = self.kernel.clone();
        let exporter = self.exporter.as_ref();
        let state_dir = self
            .persist_identities
            .then_some(self.settings.state_dir.as_path());
        // The identities of the other disks, which this disk's must not repeat: those that
        // started, serving or not (a disk that failed comes back with the same one), and, for
        // a disk before this one that has none (its start failed), what its configuration and
        // state file say it will be: a state file copied from it makes this one, the later,
        // refused whether or not it came up this time.
        let others: Vec<(String, IdentityView)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .filter_map(|(i, s)| {
                let started = !s.identity.serial.is_empty() || !s.identity.naa.is_empty();
                let view = if started {
                    s.identity.clone()
                } else if i < index {
                    crate::identity::planned(&s.spec.args.name, &s.spec.identity, state_dir)
                } else {
                    return None;
                };
                Some((s.spec.args.name.clone(), view))
            })
            .collect();
        let slot = &mut self.slots[index];
        let name = slot.spec.args.name.clone();
        let custom = self.stores.as_ref().and_then(|make| make(&slot.spec));
        match start_one(&slot.spec, &kernel, exporter, state_dir, &others, custom) {
            Ok((running, info, identity)) => {
                log::info!(
                    "disk {name}: serving {} bytes ({} blocks of {}) from board {}{}; identity \
                     vendor {:?} product {:?} serial {} NAA {}",
                    info.num_blocks * u64::from(info.block_size),
                    info.num_blocks,
                    info.block_size,
                    board_name(slot.spec.board),
                    slot.spec
                        .pci
                        .as_deref()
                        .map(|p| format!(" at {p}"))
                        .unwrap_or_default(),
                    identity.vendor,
                    identity.product,
                    identity.serial,
                    identity.naa,
                );
                slot.info = Some(info);
                slot.identity = identity;
                // A trigger wakes the supervisor to tear the disk down at once.
                let handle = self.handle.clone();
                running.frontend.on_trigger(Box::new(move || handle.wake()));
                if let Some(applied) = &running.exports {
                    slot.holds_exports = true;
                    // Recorded in the state directory by the exporter already.
                    for target in applied.created_targets() {
                        if !self.created_targets.contains(&target) {
                            self.created_targets.push(target);
                        }
                    }
                }
                slot.running = Some(running);
                slot.state = DiskState::Serving;
            }
            Err(failure) => {
                log::error!("disk {name}: cannot start: {}", failure.message);
                slot.state = DiskState::Failed;
                slot.failure = Some(failure.message);
                slot.exit_code = failure.exit_code;
            }
        }
    }

    fn watch_triggers(&mut self) {
        for index in 0..self.slots.len() {
            let fired = match &self.slots[index].running {
                Some(r) if self.slots[index].state == DiskState::Serving => r.frontend.trigger(),
                _ => None,
            };
            if let Some(trigger) = fired {
                log::error!(
                    "disk {}: {trigger:?}; tearing it down alone, the other disks keep serving",
                    self.slots[index].spec.args.name
                );
                self.begin_teardown(index, trigger);
            }
        }
    }

    fn begin_teardown(&mut self, index: usize, trigger: TeardownTrigger) {
        let slot = &mut self.slots[index];
        let Some(running) = slot.running.take() else {
            return;
        };
        slot.last_stats = Some(running.frontend.stats());
        slot.device = running.backend.device_counters();
        slot.state = DiskState::Stopping;
        let name = slot.spec.args.name.clone();
        if trigger == TeardownTrigger::Requested {
            running.frontend.request_teardown();
        }
        let handle = self.handle.clone();
        let done = Arc::new(AtomicBool::new(false));
        let done_here = Arc::clone(&done);
        let lun_bound = self.lun_removal_bound;
        let spawned = std::thread::Builder::new()
            .name(format!("teardown-{name}"))
            .spawn(move || {
                let finished = teardown_one(running, lun_bound);
                // Done before the wake-up, so the woken supervisor collects it at once (the
                // thread may not have returned yet: `is_finished` could still say no).
                done_here.store(true, Ordering::Release);
                handle.wake();
                finished
            });
        match spawned {
            Ok(handle) => {
                slot.teardown = Some(TeardownThread {
                    handle,
                    started: Instant::now(),
                    trigger,
                    done,
                });
            }
            Err(e) => {
                // No thread: the disk's resources are gone with the closure (its frontend's Drop
                // stops the workers); say so rather than pretend it was torn down.
                log::error!("disk {name}: cannot spawn its teardown thread: {e}");
                slot.state = DiskState::Failed;
                slot.failure = Some(format!("teardown thread: {e}"));
                slot.exit_code = exit::SOFTWARE;
            }
        }
    }

    fn collect_teardowns(&mut self) {
        let mut collected = false;
        for slot in &mut self.slots {
            let done = slot.teardown.as_ref().is_some_and(TeardownThread::done);
            if !done {
                continue;
            }
            let Some(TeardownThread {
                handle,
                started,
                trigger,
                ..
            }) = slot.teardown.take()
            else {
                continue;
            };
            // Done may be said a moment before the thread returns, and `is_finished` before
            // its thread-locals are gone; the join waits for both (issue 16).
            collected = true;
            match scst_accel_hal::locks::join(handle) {
                Ok(finished) => slot.finish(finished, started, &trigger),
                Err(_) => {
                    log::error!("disk {}: its teardown thread panicked", slot.spec.args.name);
                    slot.state = DiskState::Failed;
                    slot.failure = Some("teardown panicked".into());
                    slot.exit_code = exit::SOFTWARE;
                }
            }
        }
        if collected {
            self.release_targets();
        }
    }

    /// Every [`Service::export_check`](StartOptions::export_check): for each serving disk
    /// whose restore is not running, what sysfs says of its LUNs; those gone are applied again
    /// on a thread of the disk's ([`Exporter::restore`]). Finished restores are collected at
    /// every call. Nothing once a stop began.
    fn keep_exports(&mut self) {
        self.collect_restores(None);
        let Some(exporter) = self.exporter.clone() else {
            return;
        };
        if self.stop_began.is_some() || Instant::now() < self.next_export_check {
            return;
        }
        self.next_export_check = Instant::now() + self.export_check;
        for slot in &mut self.slots {
            if slot.state != DiskState::Serving || slot.restore.is_some() {
                continue;
            }
            let Some(applied) = slot.running.as_ref().and_then(|r| r.exports.as_ref()) else {
                continue;
            };
            let name = slot.spec.args.name.clone();
            let now = applied.check();
            slot.exports_lost = now
                .iter()
                .filter(|(_, state)| *state != LunNow::Ours)
                .map(|(lun, _)| lun.clone())
                .collect();
            for (lun, state) in &now {
                let said = match state {
                    LunNow::Ours => None,
                    LunNow::Gone => Some(format!(
                        "disk {name}: LUN {lun} is gone (iscsi-scstd's restart deletes every iSCSI target; someone's `del`?): adding it again"
                    )),
                    LunNow::HeldBy(other) => Some(format!(
                        "disk {name}: LUN {lun} holds device {other} now, not this disk: left alone; give the disk another LUN number, or free this one, and restart"
                    )),
                    LunNow::Unreadable(e) => Some(format!("disk {name}: LUN {lun}: {e}")),
                };
                note(&mut slot.export_notes, &format!("disk {name}: LUN {lun}"), said);
            }
            let gone = applied.gone(&slot.spec.exports);
            if gone.is_empty() {
                continue;
            }
            let exporter = exporter.clone();
            let device = name.clone();
            let handle = self.handle.clone();
            let ours = self.created_targets.clone();
            let stopping = Arc::clone(&self.stopping);
            let spawned = std::thread::Builder::new()
                .name(format!("re-export-{name}"))
                .spawn(move || {
                    let restored = exporter.restore(&device, &gone, &ours, &stopping);
                    handle.wake();
                    restored
                });
            match spawned {
                Ok(thread) => slot.restore = Some(thread),
                Err(e) => log::error!("disk {name}: no thread to restore its exports: {e}"),
            }
        }
    }

    /// Take in the restores that ended (all of them, waiting at most until `until`, when
    /// given): what each did goes into its disk's exports (or, if the disk stopped meanwhile,
    /// its targets to the service's list and its LUNs to the device's unregistration).
    fn collect_restores(&mut self, until: Option<Instant>) {
        // One end for all, as `join_deletions` has: not a grace each.
        let end = until.map(|deadline| deadline.max(Instant::now() + DELETION_GRACE));
        for slot in &mut self.slots {
            let Some(thread) = slot.restore.take() else {
                continue;
            };
            let joined = match end {
                None if !thread.is_finished() => {
                    slot.restore = Some(thread);
                    continue;
                }
                None => scst_accel_hal::locks::join(thread).map_err(|_| "panicked"),
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    match scst_accel_hal::locks::join_bounded(thread, left) {
                        Ok(joined) => joined.map_err(|_| "panicked"),
                        Err(_) => Err("did not end within the stop's budget; left to finish"),
                    }
                }
            };
            let name = &slot.spec.args.name;
            let (restored, result) = match joined {
                Ok(r) => r,
                Err(why) => {
                    log::error!("disk {name}: the restore of its exports {why}");
                    continue;
                }
            };
            let luns = restored.describe();
            for target in restored.created_targets() {
                if !self.created_targets.contains(&target) {
                    self.created_targets.push(target);
                }
            }
            if !luns.is_empty() {
                log::warn!("disk {name}: exported again as {}", luns.join(", "));
                slot.exports_lost.retain(|lun| !luns.contains(lun));
            }
            match slot.running.as_mut().and_then(|r| r.exports.as_mut()) {
                Some(applied) => applied.absorb(restored),
                None => {
                    // Stopping: the teardown has the exports; the device's unregistration
                    // removes the LUNs this added.
                    drop(restored);
                }
            }
            let failure = result.err().map(|e| {
                format!(
                    "disk {name}: its exports could not be applied again: {e}; tried again every {:?}",
                    self.export_check
                )
            });
            note(
                &mut slot.export_notes,
                &format!("disk {name}: its exports"),
                failure,
            );
        }
    }

    /// Delete the iSCSI targets this service created that none of its disks exports to any
    /// more: a disk's teardown removes only its LUNs, since other disks may have theirs in a
    /// target it created (`del_target` would take them along). A disk whose teardown did not
    /// end keeps its targets; LUNs someone else added keep theirs too
    /// ([`Exporter::delete_target`]).
    fn release_targets(&mut self) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let slots = &self.slots;
        let mut deletions = Vec::new();
        self.created_targets.retain(|target| {
            let used = slots.iter().any(|slot| {
                slot.holds_exports
                    && slot
                        .spec
                        .exports
                        .iter()
                        .any(|e| e.driver == TargetDriver::Iscsi && e.target == *target)
            });
            if used {
                return true;
            }
            // On a thread of its own: SCST may hold a mgmt write for many seconds while it is
            // busy, and the supervisor must keep answering status and the watchdog.
            let (exporter, name) = (exporter.clone(), target.clone());
            let spawned = std::thread::Builder::new()
                .name("del-target".into())
                .spawn(move || match exporter.delete_target(&name) {
                    Ok(true) => log::info!("iSCSI target {name} deleted: no disk exports there any more"),
                    Ok(false) => log::warn!(
                        "iSCSI target {name} left in place: gone already, or it holds LUNs this \
                         service did not add"
                    ),
                    Err(e) => log::error!("deleting iSCSI target {name}: {e}"),
                });
            match spawned {
                Ok(handle) => deletions.push(handle),
                Err(e) => log::error!("iSCSI target {target} left in place: no thread to delete it: {e}"),
            }
            false
        });
        self.target_deletions.append(&mut deletions);
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Snapshot(tx) => {
                let _ = tx.send(self.slots.iter().map(Slot::snapshot).collect());
            }
            Request::Dump(name, tx) => {
                let _ = tx.send(self.dump(&name));
            }
            Request::Resize(name, bytes, tx) => {
                let _ = tx.send(self.resize(&name, bytes));
            }
            Request::Wedged(max_age, tx) => {
                let _ = tx.send(self.wedged(max_age));
            }
            Request::Stop => {
                log::info!("stop requested: tearing down every disk");
                self.begin_stop();
            }
            // Handled by `supervise`, which looks at once.
            Request::Wake => {}
        }
    }

    fn serving_slot(&self, name: &str) -> Result<&Running, String> {
        let slot = self
            .slot(name)
            .ok_or_else(|| format!("no disk named {name:?}; `scst-accel status` lists them"))?;
        slot.running
            .as_ref()
            .ok_or_else(|| format!("disk {name} is {:?}, not serving", slot.state))
    }

    fn dump(&self, name: &str) -> Result<String, String> {
        Ok(self.serving_slot(name)?.frontend.dump())
    }

    fn resize(&mut self, name: &str, bytes: u64) -> Result<u64, String> {
        let running = self.serving_slot(name)?;
        let block_size = running.backend.store.info().block_size;
        if bytes == 0 || !bytes.is_multiple_of(u64::from(block_size)) {
            return Err(format!(
                "{bytes} bytes is not a non-zero multiple of disk {name}'s block size ({block_size})"
            ));
        }
        let blocks = bytes / u64::from(block_size);
        running
            .frontend
            .resize(blocks)
            .map_err(|e| format!("disk {name}: {e}"))?;
        log::info!(
            "disk {name}: resized to {bytes} bytes ({blocks} blocks); initiators told (CAPACITY DATA HAS CHANGED)"
        );
        Ok(blocks)
    }

    fn wedged(&self, max_age: Duration) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let running = slot.running.as_ref()?;
                let wedged = running.frontend.wedged_workers(max_age);
                (!wedged.is_empty()).then(|| format!("disk {}: workers {wedged:?}", slot.spec.args.name))
            })
            .collect()
    }
}

impl Slot {
    fn new(spec: DiskSpec) -> Self {
        Self {
            spec,
            state: DiskState::Starting,
            failure: None,
            exit_code: 0,
            info: None,
            identity: IdentityView::default(),
            running: None,
            teardown: None,
            last_stats: None,
            device: DeviceCounters::default(),
            teardowns: Vec::new(),
            outcome: None,
            holds_exports: false,
            restore: None,
            export_notes: std::collections::BTreeMap::new(),
            exports_lost: Vec::new(),
        }
    }

    fn finish(&mut self, finished: Finished, started: Instant, trigger: &TeardownTrigger) {
        let t = &finished.frontend.teardown;
        let name = &self.spec.args.name;
        log::info!(
            "disk {name}: torn down ({trigger:?}) in {:?}: {} in flight at start, {} drained, {} aborted, \
             {} zombies left, unmap permitted {}",
            started.elapsed(),
            t.in_flight_at_start,
            t.drained,
            t.aborted,
            t.zombies_left,
            t.unmap_permitted
        );
        self.teardowns.push(TeardownRecord {
            at: SystemTime::now(),
            trigger: format!("{trigger:?}"),
            duration_ms: t.duration.as_secs_f64() * 1e3 + finished.backend.release_ms,
            in_flight_at_start: t.in_flight_at_start,
            drained: t.drained,
            aborted: t.aborted,
            zombies_left: t.zombies_left,
            unmap_permitted: t.unmap_permitted,
        });
        self.last_stats = Some(finished.frontend.stats);
        self.holds_exports = false;
        self.device = DeviceCounters {
            device_errors: finished.backend.device_errors,
            timeouts: finished.backend.timeouts,
            resets: finished.backend.resets,
            controller_resets: finished.backend.controller_resets,
            unknown_tags: finished.backend.unknown_tags,
        };
        let code = failure_exit_code(trigger, finished.frontend.panicked_workers);
        if code == 0 {
            self.state = DiskState::Stopped;
        } else {
            self.state = DiskState::Failed;
            self.failure = Some(format!("{trigger:?}"));
            self.exit_code = code;
        }
        self.outcome = Some(finished);
    }

    fn snapshot(&self) -> DiskSnapshot {
        let running = self.running.as_ref();
        DiskSnapshot {
            name: self.spec.args.name.clone(),
            state: self.state,
            failure: self.failure.clone(),
            board: board_name(self.spec.board).into(),
            pci: self.spec.pci.clone(),
            identity: self.identity.clone(),
            block_size: self.info.map_or(self.spec.args.block_size, |i| i.block_size),
            num_blocks: running
                .map(|r| r.frontend.disk().num_blocks())
                .or(self.info.map(|i| i.num_blocks))
                .unwrap_or(0),
            exports: running
                .and_then(|r| r.exports.as_ref())
                .map(AppliedExports::describe)
                .unwrap_or_default(),
            exports_lost: running.map(|_| self.exports_lost.clone()).unwrap_or_default(),
            frontend: running.map(|r| r.frontend.stats()).or(self.last_stats),
            device: running.map_or(self.device, |r| r.backend.device_counters()),
            teardowns: self.teardowns.clone(),
        }
    }

    fn into_outcome(self) -> DiskOutcome {
        let (frontend, backend) = match self.outcome {
            Some(f) => (Some(f.frontend), Some(f.backend)),
            None => (None, None),
        };
        DiskOutcome {
            name: self.spec.args.name,
            state: self.state,
            failure: self.failure,
            frontend,
            backend,
            exit_code: self.exit_code,
        }
    }
}

/// The SCSI engine's configuration for a scst_user disk of the service: the store's facts and
/// the identity ([`crate::disk::DiskArgs::disk_config`]), the operator's read-only and thin
/// provisioning (where the store deallocates). EXTENDED COPY is advertised only where a
/// `copy_manager` export makes the disk a LUN of SCST's copy manager, which needs the exports
/// to be applied (`exports_applied`: not under `serve --loopback` nor `demo --config`, which
/// serve no SCST target).
fn scst_disk_config(
    spec: &DiskSpec,
    info: &StoreInfo,
    identity: &crate::identity::Identity,
    exports_applied: bool,
) -> scst_accel_handler::scsi::DiskConfig {
    let copy_manager = exports_applied && spec.exports.iter().any(|e| e.driver == TargetDriver::CopyManager);
    let mut config = spec.args.disk_config(info, identity, copy_manager);
    config.read_only = spec.read_only;
    config.thin_provisioning = spec.thin_provisioning && info.supports_unmap;
    // LBPRZ is a provisioning claim: only on a thin disk (SBC-3 §5.16.2).
    config.unmapped_reads_zero &= config.thin_provisioning;
    config
}

/// Open the board, register with SCST, start the frontend: one disk, or why not (with the
/// exit code of its class). A failure leaves nothing behind: the board is released, and the
/// registration goes with the fd.
fn start_one(
    spec: &DiskSpec,
    kernel: &KernelSide,
    exporter: Option<&Exporter>,
    state_dir: Option<&std::path::Path>,
    others: &[(String, IdentityView)],
    custom: Option<Result<Backend, crate::backend::BackendError>>,
) -> Result<(Running, StoreInfo, IdentityView), StartFailure> {
    let usage = |message: String| StartFailure {
        message,
        exit_code: exit::CONFIG,
    };
    let blocks = spec.args.validate().map_err(usage)?;
    // The board first: a board that cannot be opened leaves nothing registered with SCST.
    let backend = custom
        .unwrap_or_else(|| {
            crate::backend::build(spec.board, &spec.args, blocks, spec.pci.as_deref(), &spec.inject)
        })
        .map_err(|e| StartFailure {
            message: e.message,
            exit_code: e.exit_code,
        })?;
    let info = backend.store.info();
    let resolved = crate::identity::resolve_unique(
        &spec.args.name,
        &spec.identity,
        state_dir,
        info.device_ids.as_ref(),
        others,
    );
    let identity = match resolved {
        Ok(identity) => identity,
        Err(e) => {
            backend.shutdown_unserved();
            return Err(usage(format!("identity: {e}")));
        }
    };
    let config = scst_disk_config(spec, &info, &identity, exporter.is_some());
    if spec.thin_provisioning && !info.supports_unmap {
        log::warn!(
            "disk {}: thin_provisioning asked, but store {} cannot deallocate (a block device \
             without discard support, an image on a file system that cannot punch holes?): the \
             disk is served thick",
            spec.args.name,
            board_name(spec.board)
        );
    }
    let identity = identity.view();
    let disk = match Disk::try_new(config) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            backend.shutdown_unserved();
            return Err(usage(e.to_string()));
        }
    };
    let fd: Arc<dyn ScstUserFd> = match kernel {
        KernelSide::Loopback(kernel) => Arc::new(kernel.open(true)),
        KernelSide::Real(path) => match ScstUserDevice::open(path) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                backend.shutdown_unserved();
                let exit_code = match e {
                    OpenError::PermissionDenied { .. } => exit::NOPERM,
                    _ => exit::UNAVAILABLE,
                };
                return Err(StartFailure {
                    message: e.to_string(),
                    exit_code,
                });
            }
        },
    };
    if let Err(e) = register_waiting_for_a_release(fd.as_ref(), &spec.args.register_params(&info)) {
        backend.shutdown_unserved();
        return Err(usage(format!("registration of {} refused: {e}", spec.args.name)));
    }
    let frontend = match Frontend::start(
        fd,
        disk,
        Arc::clone(&backend.store),
        Arc::clone(&backend.pool),
        spec.args.frontend_config(),
    ) {
        Ok(f) => f,
        Err(e) => {
            backend.shutdown_unserved();
            return Err(StartFailure {
                message: e.to_string(),
                exit_code: exit::SOFTWARE,
            });
        }
    };
    if spec.prealloc > 0 {
        match frontend.prealloc_buffers(spec.prealloc, spec.prealloc_size as usize) {
            Ok(n) => log::info!(
                "disk {}: preallocated {n} buffers of {} bytes",
                spec.args.name,
                spec.prealloc_size
            ),
            Err(e) => log::warn!(
                "disk {}: PREALLOC_BUFFER refused: {e}; continuing without preallocation",
                spec.args.name
            ),
        }
    }
    let mut running = Running {
        frontend,
        backend,
        exports: None,
    };
    if let Some(exporter) = exporter.filter(|_| !spec.exports.is_empty()) {
        match exporter.apply(&spec.args.name, &spec.exports) {
            Ok(applied) => {
                log::info!(
                    "disk {}: exported as {}",
                    spec.args.name,
                    applied.describe().join(", ")
                );
                running.exports = Some(applied);
            }
            Err(e) => {
                // `apply` undid what it had applied; the disk goes as it came.
                drop(teardown_one(running, LUN_REMOVAL_BOUND));
                return Err(StartFailure {
                    message: format!("export: {e}"),
                    exit_code: e.exit_code(),
                });
            }
        }
    }
    Ok((running, info, identity))
}

/// How long a registration refused because the name is in use (EEXIST) is tried again.
/// SCST unregisters a closed device on a kernel thread of its own (`dev_user_release`,
/// scst_user.c: `kthread_run(__dev_user_release)`), so a restart right after the previous
/// process died (kill -9, a crash) can find its name still registered for a moment.
pub const NAME_RELEASE_WAIT: Duration = Duration::from_secs(15);

/// [`register`], a refusal for a name in use tried again every 250 ms for at most
/// [`NAME_RELEASE_WAIT`] (said once at warn): past it the name belongs to another handler.
fn register_waiting_for_a_release(
    fd: &dyn scst_accel_handler::transport::ScstUserFd,
    params: &scst_accel_handler::transport::register::RegisterParams,
) -> Result<(), scst_accel_handler::transport::register::RegisterError> {
    use scst_accel_handler::transport::register::RegisterError;
    let deadline = Instant::now() + NAME_RELEASE_WAIT;
    let mut said = false;
    loop {
        match register(fd, params) {
            Err(RegisterError::NameInUse { name }) if Instant::now() < deadline => {
                if !std::mem::replace(&mut said, true) {
                    log::warn!(
                        "a device named {name:?} is still registered with SCST (a previous \
                         process's device, which SCST releases on a thread of its own?): trying \
                         again for up to {NAME_RELEASE_WAIT:?}"
                    );
                }
                scst_accel_hal::locks::sleep(Duration::from_millis(250));
            }
            result => return result,
        }
    }
}

/// One disk's teardown, on its own thread: the frontend's sequence (drain, abort on the
/// device, return buffers, leave, close), then the board's release in the safe order.
fn teardown_one(running: Running, lun_bound: Duration) -> Finished {
    let Running {
        frontend,
        backend,
        exports,
    } = running;
    // The LUNs go first, while the workers still serve: SCST finishes the commands it holds for
    // them before it removes them, and no initiator sends new ones to a disk being torn down.
    // Not waited for past `lun_bound` ([`LUN_REMOVAL_BOUND`]): the close below removes them.
    if let Some(exports) = exports {
        remove_luns_within(exports, lun_bound);
    }
    let mut frontend = frontend.shutdown();
    let backend = backend.shutdown(frontend.unmap.take());
    if backend.leaked_buffers > 0 || backend.mapped_after > 0 {
        log::error!(
            "{} buffers still held, {} bytes still mapped after the release",
            backend.leaked_buffers,
            backend.mapped_after
        );
    }
    Finished { frontend, backend }
}

/// Remove a disk's LUNs on a thread of their own, waiting for it at most `bound`: past it the
/// thread is left to end when SCST lets its `del` go (the device's close), logged.
fn remove_luns_within(exports: crate::export::AppliedExports, bound: Duration) {
    let luns = exports.describe().join(", ");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("lun-removal".into())
        .spawn(move || {
            let errors = exports.remove_luns();
            for e in &errors {
                log::error!("removing an export: {e}");
            }
            let _ = tx.send(errors.len());
        });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to remove the LUNs {luns}: {e}; closing the device removes them");
        return;
    }
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = scst_accel_hal::locks::recv_timeout(&rx, bound) {
        log::error!(
            "SCST did not remove the LUNs {luns} within {bound:?} (it waits for the commands they \
             have in flight, which this disk's handler may no longer answer); closing the \
             device, which removes them"
        );
    }
}

/// The exit code for how a disk's serving ended (see [`crate::exit`] and the README's table).
pub fn failure_exit_code(trigger: &TeardownTrigger, panicked_workers: usize) -> u8 {
    match trigger {
        _ if panicked_workers > 0 => exit::SOFTWARE,
        TeardownTrigger::Requested => 0,
        TeardownTrigger::StoreFailed(_) => exit::IOERR,
        TeardownTrigger::ScstClosed => exit::UNAVAILABLE,
        TeardownTrigger::WorkerFailed => exit::SOFTWARE,
        TeardownTrigger::RepliesRefused(_) => exit::SOFTWARE,
    }
}

/// The board's name as the configuration file and `--board` spell it.
pub fn board_name(board: BoardArg) -> &'static str {
    match board {
        BoardArg::Ram => "ram",
        BoardArg::Sim => "sim",
        BoardArg::Sca1 => "sca1",
        BoardArg::Nvme => "nvme",
        BoardArg::QemuNvme => "qemu-nvme",
        BoardArg::NvmeSim => "nvme-sim",
        BoardArg::File => "file",
        BoardArg::Blockdev => "blockdev",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scst_accel_handler::scsi::Plan;
    use scst_accel_handler::store::ram::RamStore;
    use scst_accel_handler::store::Store;

    /// Target deletions stuck at the stop's bound share one grace: three deletions that do
    /// not end while they are waited for, the budget spent, are left after one grace in all,
    /// not one each (the stop would overrun the margin announced to systemd with a few more).
    #[test]
    fn stuck_target_deletions_share_one_grace() {
        let release = std::sync::Arc::new(std::sync::Barrier::new(4));
        let deletions: Vec<_> = (0..3)
            .map(|_| {
                let release = release.clone();
                std::thread::spawn(move || {
                    release.wait();
                })
            })
            .collect();
        let began = Instant::now();
        join_deletions(deletions, began);
        let took = began.elapsed();
        release.wait();
        assert!(
            took >= DELETION_GRACE && took < DELETION_GRACE * 2,
            "three stuck deletions took {took:?} past the bound; their grace is {DELETION_GRACE:?} in all"
        );
    }

    /// An export that fails for a cause a restart may mend (iscsi-scstd not connected: EPERM)
    /// fails the disk's start with 69, which systemd restarts; a configuration error (the LUN
    /// taken: EEXIST) with 78, which it does not.
    #[test]
    fn an_export_failure_a_restart_may_mend_exits_69() {
        let text = "[[disk]]\nname = \"a\"\nboard = \"ram\"\nsize = \"16M\"\n\
                    [[disk.export]]\ndriver = \"iscsi\"\ntarget = \"iqn.2026-12.com.example:t\"\nlun = 0\n\
                    [[disk]]\nname = \"b\"\nboard = \"ram\"\nsize = \"16M\"\n\
                    [[disk.export]]\ndriver = \"scst_local\"\ntarget = \"scst_local_tgt\"\nlun = 0\n";
        let cfg = crate::config::load::parse(text, "t.toml").expect("parses");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("targets/iscsi")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("targets/scst_local/scst_local_tgt")).expect("mkdir");
        let script = crate::export::tests::Script::default()
            .refuse("add_target iqn.2026-12.com.example:t", libc::EPERM)
            .refuse("add b 0", libc::EEXIST);
        let exporter = Exporter::with_io(
            dir.path(),
            std::sync::Arc::new(script),
            crate::export::MgmtWait::default(),
        );
        let kernel = KernelSide::Loopback(scst_accel_handler::loopback::LoopbackKernel::new(
            scst_accel_handler::loopback::KernelConfig::default(),
        ));
        let start = |spec: &DiskSpec| match start_one(spec, &kernel, Some(&exporter), None, &[], None) {
            Ok(_) => panic!("disk {} started", spec.args.name),
            Err(failure) => failure,
        };
        let failure = start(&cfg.disks[0]);
        assert_eq!(failure.exit_code, exit::UNAVAILABLE, "{}", failure.message);
        assert!(
            failure.message.contains("start iscsi-scstd"),
            "{}",
            failure.message
        );
        let failure = start(&cfg.disks[1]);
        assert_eq!(failure.exit_code, exit::CONFIG, "{}", failure.message);
    }

    /// SPC-4: 3PC = 1 says a copy manager is addressable through the LU. SCST's copy manager
    /// serves a scst_user disk only once it is one of its LUNs (docs/xcopy.md §2), so 3PC
    /// and EXTENDED COPY / RECEIVE COPY RESULTS in REPORT SUPPORTED OPERATION CODES come only
    /// with an applied `copy_manager` export: not without one, not with other exports only,
    /// not when exports are not applied (`serve --loopback`).
    #[test]
    fn copy_offload_is_advertised_only_for_a_copy_manager_lun() {
        let info = RamStore::new(512, 1 << 16, 1 << 12).info();
        let cm = "[[disk.export]]\ndriver = \"copy_manager\"\ntarget = \"copy_manager_tgt\"\nlun = 1\n";
        let local = "[[disk.export]]\ndriver = \"scst_local\"\ntarget = \"scst_local_tgt\"\nlun = 0\n";
        let advertised = |exports: &str, applied: bool| {
            let text = format!("[[disk]]\nname = \"a\"\nboard = \"ram\"\n{exports}");
            let cfg = crate::config::load::parse(&text, "t.toml").expect("parses");
            let spec = &cfg.disks[0];
            let identity = crate::identity::resolve("a", &spec.identity, None, None).expect("identity");
            let disk = Disk::try_new(scst_disk_config(spec, &info, &identity, applied)).expect("disk");
            let run = |cdb: &[u8]| match disk.start(
                &mut scst_accel_hal::locks::LockToken::root(),
                cdb,
                &[0u8; 0],
            ) {
                Plan::Done(r) => r.data,
                Plan::Io(io) => panic!("{cdb:02x?}: {:?}", io.op),
            };
            let tpc = run(&[0x12, 0, 0, 0, 0xFF, 0])[5] & 0x08 != 0;
            // RSOC, one command (reporting options 011b): SUPPORT 011b or 001b.
            let support = |op: u8, sa: u8| run(&[0xA3, 0x0C, 0x03, op, 0, sa, 0, 0, 0, 0xFF, 0, 0])[1] & 0x07;
            let listed = [
                support(0x83, 0),
                support(0x84, 0),
                support(0x84, 3),
                support(0x84, 4),
            ];
            let expected = if tpc { 3 } else { 1 };
            assert!(
                listed.iter().all(|&s| s == expected),
                "{exports:?}: 3PC {tpc}, RSOC support {listed:?}"
            );
            tpc
        };
        assert!(!advertised("", true), "no export");
        assert!(!advertised(local, true), "exported to scst_local only");
        assert!(advertised(&format!("{local}{cm}"), true), "a copy manager LUN");
        assert!(!advertised(cm, false), "exports not applied");
    }
}
