//! `scst-accel serve --frontend tcmu` (or `frontend = "tcmu"` in the configuration file): the
//! service's disks served through LIO's `target_core_user` of a mainline kernel instead of
//! SCST (docs/tcmu.md). Each disk has the same backend (board, store, buffer pool), SBC engine
//! and identity as under the scst_user frontend; on the kernel side each is a user backstore
//! `core/user_<hba>/<name>` with its own UIO ring and worker, and LUN N (its place in the
//! configuration) of one tcm_loop target and optionally one iSCSI target the disks share.
//!
//! Start: the shared targets (empty), then disk by disk: the backend, the engine, the
//! backstore (enable creates the UIO device), the worker on its ring, then its LUNs (linking
//! a LUN makes the kernel scan it through the ring, so the ring is served first). A disk that
//! cannot start is removed again (its objects newest first) and shown failed; the others serve.
//! Stop (SIGINT/SIGTERM, or every disk ended): the iSCSI target disabled, then every disk's stop
//! at once, each on a thread of its own: its LUNs removed while its worker still serves (what
//! the initiator has in flight completes), its worker stopped (the drain awaited, the ring
//! unmapped; a worker stuck in a store call left at its bound), its backend released (its pool
//! unmapped only with the drain's proof), its backstore removed; the whole bounded by
//! `stop_budget`, past which a disk's stop still running is left and its disk failed; the
//! shared targets last.
//!
//! The service answers `scst-accel status`, the control socket and the metrics endpoint as the
//! scst_user service does, from each worker's live figures.

use crate::backend;
use crate::backend::error_chain;
use crate::backend::Backend;
use crate::backend::BackendReport;
use crate::config::DiskSpec;
use crate::config::ServiceConfig;
use crate::config::TcmuSettings;
use crate::exit;
use crate::identity::Identity;
use crate::notify::Notifier;
use crate::serve::Servers;
use crate::service::Request;
use crate::service::ServiceHandle;
use crate::status::DeviceCounters;
use crate::status::DiskSnapshot;
use crate::status::DiskState;
use crate::status::IdentityView;
use crate::status::ServiceView;
use crate::status::TeardownRecord;
use clap::Args;
use clap::ValueEnum;
use scst_accel_handler::frontend::FrontendStats;
use scst_accel_handler::scsi::CompareAndWriteBy;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::tcmu::configfs::ConfigfsError;
use scst_accel_handler::tcmu::configfs::ConfigfsFs;
use scst_accel_handler::tcmu::configfs::IscsiSpec;
use scst_accel_handler::tcmu::configfs::KernelFs;
use scst_accel_handler::tcmu::configfs::RingReset;
use scst_accel_handler::tcmu::configfs::Setup;
use scst_accel_handler::tcmu::configfs::SetupSpec;
use scst_accel_handler::tcmu::configfs::TargetSpec;
use scst_accel_handler::tcmu::configfs::Targets;
use scst_accel_handler::tcmu::exec::CapacityNotice;
use scst_accel_handler::tcmu::exec::Executor;
use scst_accel_handler::tcmu::netlink::DeviceEvent;
use scst_accel_handler::tcmu::netlink::EventKind;
use scst_accel_handler::tcmu::netlink::EventListener;
use scst_accel_handler::tcmu::uio;
use scst_accel_handler::tcmu::uio::TcmuUioName;
use scst_accel_handler::tcmu::uio::UioDevice;
use scst_accel_handler::tcmu::uio::UioError;
use scst_accel_handler::tcmu::worker::command_timeout_under;
use scst_accel_handler::tcmu::worker::StopError;
use scst_accel_handler::tcmu::worker::TcmuWorker;
use scst_accel_handler::tcmu::worker::WorkerConfig;
use scst_accel_handler::tcmu::worker::WorkerReport;
use scst_accel_handler::tcmu::worker::WorkerStats;
use scst_accel_handler::tcmu::worker::KERNEL_CMD_TIME_OUT;
use signal_hook::consts::SIGINT;
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

/// `--frontend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FrontendArg {
    /// SCST's scst_user (`/dev/scst_user`, or `--loopback`).
    #[default]
    Scst,
    /// LIO's target_core_user of a mainline kernel (needs root, configfs mounted and the
    /// target_core_user and tcm_loop modules).
    Tcmu,
}

/// The TCMU frontend's flags.
#[derive(Args, Debug, Clone)]
pub struct TcmuArgs {
    /// LIO's configfs directory.
    #[arg(long, default_value = scst_accel_handler::tcmu::configfs::TARGET_ROOT)]
    pub configfs_root: PathBuf,
    /// The user backstores' HBA number (`core/user_N`), shared by the service's disks.
    #[arg(long, default_value_t = 7)]
    pub tcmu_hba: u32,
    /// The command ring's size in MiB (the kernel's default when absent).
    #[arg(long)]
    pub tcmu_ring_mb: Option<u32>,
    /// No tcm_loop target (then only --tcmu-iscsi exports the disks).
    #[arg(long)]
    pub tcmu_no_loop: bool,
    /// Also export the disks (one target, a LUN each) on an iSCSI portal (e.g. 127.0.0.1:3260), any initiator, no
    /// authentication (needs iscsi_target_mod).
    #[arg(long)]
    pub tcmu_iscsi: Option<String>,
    /// Take over the backstore and targets a killed `serve` left instead of refusing them;
    /// what is missing is created. The adopted ring is reset before it is served (device
    /// blocked, every command still in it answered BUSY for the initiator to retry, unblocked:
    /// nothing is replayed), and the backstore gets `attrib/nl_reply_supported=-1` and
    /// `attrib/tmr_notification=1`. All of it is removed at the stop.
    #[arg(long)]
    pub tcmu_adopt: bool,
    /// How long the stop waits for the store's requests before aborting them (and then as
    /// long again).
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub tcmu_drain: Duration,
    /// Do not follow the kernel's TCMU netlink events (device removed, reconfigured).
    #[arg(long)]
    pub tcmu_no_netlink: bool,
}

/// The configfs objects of one disk: a backstore named after it whose `dev_config` is
/// `scst-accel/<board>` (the rest of the UIO name).
pub fn setup_spec(disk: &DiskSpec, settings: &TcmuSettings) -> SetupSpec {
    SetupSpec {
        hba: settings.hba,
        name: disk.args.name.clone(),
        size: disk.args.size,
        block_size: disk.args.block_size,
        dev_config: format!("scst-accel/{}", crate::service::board_name(disk.board)),
        ring_mb: settings.ring_mb,
        // The service's targets are shared ([`target_spec`]); each disk links its LUN.
        loopback: None,
        iscsi: None,
    }
}

/// The targets the service's disks share: a tcm_loop target whose WWN is derived from the HBA
/// number (two services on one host keep apart), an iSCSI target if asked, whose IQN is the
/// one disk's name when there is one disk (as `serve --frontend tcmu` always named it), else
/// `hba<N>`.
pub fn target_spec(settings: &TcmuSettings, disks: &[DiskSpec]) -> TargetSpec {
    // NAA type 5 with the IEEE OUI 00-14-05 LIO uses for its generated WWNs.
    let wwn = |n: u32| format!("naa.5001405{n:09x}");
    let hba = settings.hba;
    let suffix = match disks {
        [one] => one.args.name.clone(),
        _ => format!("hba{hba}"),
    };
    TargetSpec {
        hba: Some(hba),
        loopback: settings
            .loopback
            .then(|| (wwn(hba.wrapping_mul(2)), wwn(hba.wrapping_mul(2).wrapping_add(1)))),
        iscsi: settings.iscsi_portal.as_ref().map(|portal| IscsiSpec {
            iqn: format!("iqn.2026-12.org.scst-accel:{suffix}"),
            portal: portal.clone(),
        }),
    }
}

/// The command line's TCMU flags over the file's `[service.tcmu]`: without a file every flag
/// counts (defaults included); with one, only those given on the command line.
pub fn apply_args(settings: &mut TcmuSettings, args: &TcmuArgs, given: &dyn Fn(&str) -> bool) {
    if given("configfs_root") {
        settings.configfs_root = args.configfs_root.clone();
    }
    if given("tcmu_hba") {
        settings.hba = args.tcmu_hba;
    }
    if given("tcmu_ring_mb") {
        settings.ring_mb = args.tcmu_ring_mb;
    }
    if given("tcmu_no_loop") {
        settings.loopback = !args.tcmu_no_loop;
    }
    if given("tcmu_iscsi") {
        settings.iscsi_portal = args.tcmu_iscsi.clone();
    }
    if given("tcmu_adopt") {
        settings.adopt = args.tcmu_adopt;
    }
    if given("tcmu_drain") {
        settings.drain = args.tcmu_drain;
    }
    if given("tcmu_no_netlink") {
        settings.netlink = !args.tcmu_no_netlink;
    }
}

/// Where the UIO device is looked for.
const SYSFS: &str = "/sys";
const DEV_DIR: &str = "/dev";

/// The UIO device appears with `enable`; udev may still be creating `/dev/uioN`.
fn open_uio(hba: &str, name: &str) -> Result<UioDevice, UioError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tried = uio::find_backstore(Path::new(SYSFS), hba, name)
            .and_then(|info| UioDevice::open(Path::new(DEV_DIR), &info));
        match tried {
            Ok(device) => return Ok(device),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => scst_accel_hal::locks::sleep(Duration::from_millis(50)),
        }
    }
}

/// The configfs the service writes: the kernel's ([`KernelFs`]), or in a test a stand-in that
/// can block or refuse as the kernel may (a LUN's removal waits for the LUN's commands).
type ServiceFs = Arc<dyn ConfigfsFs + Send + Sync>;

/// Why a disk did not start, and the exit code it stands for.
#[derive(Debug)]
struct StartFailure {
    message: String,
    code: u8,
}

/// A serving disk's parts, dropped in the stop's order by [`TcmuService::finish`].
struct Running {
    backend: Backend,
    engine: Arc<Disk>,
    /// Tells the worker's executor that the capacity changed (a resize).
    capacity: CapacityNotice,
    setup: Setup<ServiceFs>,
    worker: TcmuWorker,
    /// The UIO device's number (`/dev/uioN`): the kernel's events name it as the minor.
    uio_index: u32,
}

/// A disk's parts once its worker has stopped, or been left at its bound ([`halt`]), for
/// [`finish`].
struct Halted {
    backend: Backend,
    engine: Arc<Disk>,
    setup: Setup<ServiceFs>,
    report: Result<WorkerReport, StopError>,
    /// Commands in flight when the worker was asked to stop.
    in_flight_at_start: u64,
}

/// What a disk's stop did ([`stop_running`]), made on the thread that ran it and recorded into
/// the disk on the service loop ([`record`]).
struct Finished {
    /// The exit code the stop makes the disk's: 0, or 70 (a LUN or the backstore not removed,
    /// the worker's error, panic or abandonment, a drain without proof).
    code: u8,
    /// The worker's totals from its report (`None` when it gave none: it panicked or was left).
    totals: Option<WorkerStats>,
    num_blocks: u64,
    backend: BackendReport,
    /// Store requests the stop left in flight.
    zombies: u64,
    /// The buffer pool was unmapped with the drain's proof.
    permitted: bool,
    in_flight_at_start: u64,
}

/// A disk's stop thread ([`spawn_stop`]): the whole stop, LUNs to backstore (`None` if it never
/// got the disk's parts).
type StopThread = JoinHandle<Option<Finished>>;

/// A disk's stop running on a thread of its own ([`TcmuService::begin_stop`]), recorded by
/// [`TcmuService::collect_stops`] once the thread has ended, or left by
/// [`TcmuService::join_stops`] at the service stop's bound.
struct Stopping {
    thread: StopThread,
    trigger: &'static str,
    started: Instant,
    /// The disk is shown failed once stopped (it was stopped alone, for a failure).
    failed: bool,
}

/// One disk of the service.
struct TcmuDisk {
    spec: DiskSpec,
    lun: u32,
    state: DiskState,
    failure: Option<String>,
    exit_code: u8,
    identity: IdentityView,
    block_size: u32,
    num_blocks: u64,
    running: Option<Running>,
    /// Its stop, while it runs off the service loop.
    stopping: Option<Stopping>,
    /// The worker's last figures once it is gone.
    last: Option<WorkerStats>,
    device: DeviceCounters,
    teardowns: Vec<TeardownRecord>,
    /// Its LUNs, as "fabric/target/lun".
    exports: Vec<String>,
}

impl TcmuDisk {
    fn snapshot(&self) -> DiskSnapshot {
        let stats = self.running.as_ref().map(|r| r.worker.stats()).or(self.last);
        DiskSnapshot {
            name: self.spec.args.name.clone(),
            state: self.state,
            failure: self.failure.clone(),
            board: crate::service::board_name(self.spec.board).into(),
            pci: self.spec.pci.clone(),
            identity: self.identity.clone(),
            block_size: self.block_size,
            num_blocks: self
                .running
                .as_ref()
                .map_or(self.num_blocks, |r| r.engine.num_blocks()),
            exports: if self.running.is_some() {
                self.exports.clone()
            } else {
                Vec::new()
            },
            // LIO's fabric links are made once at start and not watched.
            exports_lost: Vec::new(),
            frontend: stats.map(frontend_stats),
            device: self
                .running
                .as_ref()
                .map_or(self.device, |r| r.backend.device_counters()),
            teardowns: self.teardowns.clone(),
        }
    }
}

/// A TCMU worker's figures in the scst_user frontend's terms, which status and metrics
/// render: commands (`exec`), errors (non-GOOD answers and refused ring entries), in flight,
/// deadline escalations, task management notices. The per-direction counts, bytes and latency
/// are not measured by the TCMU executor and stay 0.
fn frontend_stats(s: WorkerStats) -> FrontendStats {
    FrontendStats {
        exec: s.started,
        exec_errors: s.errors + s.refused,
        inflight: s.in_flight(),
        deadline_escalations: s.escalations,
        task_mgmt: s.task_management,
        ..FrontendStats::default()
    }
}

/// The disks, the shared targets and the settings.
struct TcmuService {
    settings: TcmuSettings,
    /// `[service] stop_timeout`: with the drains' own bound, what the stop may take
    /// ([`TcmuService::stop_budget`]).
    stop_timeout: Duration,
    state_dir: PathBuf,
    fs: ServiceFs,
    targets: Option<Targets<ServiceFs>>,
    disks: Vec<TcmuDisk>,
}

impl TcmuService {
    fn new(config: &ServiceConfig) -> Self {
        let settings = config.service.tcmu.clone();
        let disks = config
            .disks
            .iter()
            .enumerate()
            .map(|(i, spec)| TcmuDisk {
                spec: spec.clone(),
                lun: u32::try_from(i).unwrap_or(u32::MAX),
                state: DiskState::Starting,
                failure: None,
                exit_code: 0,
                identity: IdentityView::default(),
                block_size: spec.args.block_size,
                num_blocks: 0,
                running: None,
                stopping: None,
                last: None,
                device: DeviceCounters::default(),
                teardowns: Vec::new(),
                exports: Vec::new(),
            })
            .collect();
        Self {
            settings,
            stop_timeout: config.service.stop_timeout,
            state_dir: config.service.state_dir.clone(),
            fs: Arc::new(KernelFs),
            targets: None,
            disks,
        }
    }

    /// The shared targets, then every disk in order. `Err` only when the targets cannot be
    /// made (nothing started then).
    #[cfg(test)]
    fn start(&mut self, target_spec: &TargetSpec) -> Result<(), StartFailure> {
        self.start_with(target_spec, |_, _| true)
    }

    /// [`TcmuService::start`], asking `before(index, name)` before each disk: `false` (a stop
    /// was asked for meanwhile) starts no more, and the disks left are `Stopped`.
    fn start_with(
        &mut self,
        target_spec: &TargetSpec,
        mut before: impl FnMut(usize, &str) -> bool,
    ) -> Result<(), StartFailure> {
        let targets = Targets::create(
            Arc::clone(&self.fs),
            &self.settings.configfs_root,
            target_spec,
            self.settings.adopt,
        )
        .map_err(|e| StartFailure {
            code: configfs_code(&e),
            message: error_chain(&e),
        })?;
        for i in 0..self.disks.len() {
            if !before(i, &self.disks[i].spec.args.name) {
                for disk in &mut self.disks[i..] {
                    disk.state = DiskState::Stopped;
                }
                log::info!(
                    "tcmu: stop requested during the start: {} disk(s) not started",
                    self.disks.len() - i
                );
                break;
            }
            // The disks started before this one: its identity must not repeat theirs.
            let others: Vec<(String, IdentityView)> = self.disks[..i]
                .iter()
                .map(|d| (d.spec.args.name.clone(), d.identity.clone()))
                .collect();
            let disk = &mut self.disks[i];
            match start_disk(disk, &others, &self.settings, &self.state_dir, &self.fs, &targets) {
                Ok(()) => {
                    disk.state = DiskState::Serving;
                    log::info!("disk {}: LUN {} linked", disk.spec.args.name, disk.lun);
                }
                Err(f) => {
                    log::error!("disk {}: {}", disk.spec.args.name, f.message);
                    disk.state = DiskState::Failed;
                    disk.failure = Some(f.message);
                    disk.exit_code = f.code;
                }
            }
        }
        self.targets = Some(targets);
        Ok(())
    }

    fn serving(&self) -> usize {
        self.disks.iter().filter(|d| d.running.is_some()).count()
    }

    /// Disks whose stop still runs on its thread.
    fn stopping(&self) -> usize {
        self.disks.iter().filter(|d| d.stopping.is_some()).count()
    }

    fn status_line(&self) -> String {
        let failed = self.disks.iter().filter(|d| d.state == DiskState::Failed).count();
        format!(
            "serving {} of {} disks through TCMU{}",
            self.serving(),
            self.disks.len(),
            if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            }
        )
    }

    /// Answer one request of the control socket or metrics endpoint; `true` for a stop request.
    fn answer(&mut self, request: Request) -> bool {
        match request {
            Request::Snapshot(tx) => {
                let _ = tx.send(self.disks.iter().map(TcmuDisk::snapshot).collect());
            }
            Request::Dump(name, tx) => {
                let _ = tx.send(self.dump(&name));
            }
            Request::Wedged(max_age, tx) => {
                let _ = tx.send(self.wedged(max_age));
            }
            Request::Resize(name, bytes, tx) => {
                let _ = tx.send(self.resize(&name, bytes, true));
            }
            Request::Stop => return true,
            // The loop looks at its disks after every request anyway.
            Request::Wake => {}
        }
        false
    }

    fn wedged(&self, max_age: Duration) -> Vec<String> {
        self.disks
            .iter()
            .filter_map(|d| {
                let running = d.running.as_ref()?;
                let age = running.worker.heartbeat_age();
                if running.worker.is_finished() {
                    Some(format!("disk {}: its worker ended", d.spec.args.name))
                } else if age > max_age {
                    Some(format!(
                        "disk {}: its worker has not turned for {age:?}",
                        d.spec.args.name
                    ))
                } else {
                    None
                }
            })
            .collect()
    }

    fn disk_index(&self, name: &str) -> Result<usize, String> {
        self.disks
            .iter()
            .position(|d| d.spec.args.name == name)
            .ok_or_else(|| format!("no disk {name}"))
    }

    /// What status cannot show: the worker's figures as they are, its heartbeat, the ring's
    /// device. The executor's own dump (commands in the store) lives on the worker thread and
    /// is logged by its deadline escalation.
    fn dump(&self, name: &str) -> Result<String, String> {
        let disk = &self.disks[self.disk_index(name)?];
        let running = disk
            .running
            .as_ref()
            .ok_or_else(|| format!("disk {name} is not serving"))?;
        let s = running.worker.stats();
        Ok(format!(
            "disk {name}: TCMU user_{}/{name}, /dev/uio{}, LUN {}; {} commands taken, {} answered, \
             {} in flight, {} errors, {} refused entries, {} task management notices, {} deadline \
             escalations; the worker's last turn {:?} ago",
            self.settings.hba,
            running.uio_index,
            disk.lun,
            s.started,
            s.completed,
            s.in_flight(),
            s.errors,
            s.refused,
            s.task_management,
            s.escalations,
            running.worker.heartbeat_age()
        ))
    }

    /// Grow disk `name` to `bytes`: the store first (no initiator may address a block it does
    /// not have yet), then the engine (READ CAPACITY answers the new size), then, when
    /// `tell_kernel`, the backstore's `dev_size` (the kernel's own figure; it broadcasts it as
    /// a reconfiguration, which finds the size already served). target_core_user refuses that
    /// write with ESRCH when no process listens to its netlink group (`tcmu_dev_size_store`:
    /// `tcmu_netlink_event_send` waits only for an ADDED_DEVICE nobody heard), as with
    /// `netlink = false` and no tcmu-runner: the disk serves the new size all the same, the
    /// kernel keeps its old figure (configfs shows it), and that is said at warn, not failed.
    fn resize(&mut self, name: &str, bytes: u64, tell_kernel: bool) -> Result<u64, String> {
        let i = self.disk_index(name)?;
        let disk = &mut self.disks[i];
        let running = disk
            .running
            .as_ref()
            .ok_or_else(|| format!("disk {name} is not serving"))?;
        let block_size = u64::from(disk.block_size);
        if bytes == 0 || !bytes.is_multiple_of(block_size) {
            return Err(format!(
                "{bytes} bytes is not a non-zero multiple of disk {name}'s block size ({block_size})"
            ));
        }
        let blocks = bytes / block_size;
        if blocks == running.engine.num_blocks() {
            return Ok(blocks);
        }
        running
            .backend
            .store
            .resize(blocks)
            .map_err(|e| format!("disk {name}: the store refused {bytes} bytes: {e}"))?;
        running.engine.set_num_blocks(blocks);
        running.capacity.raise();
        disk.num_blocks = blocks;
        if tell_kernel {
            match running.setup.set_dev_size(bytes) {
                Ok(()) => {}
                Err(e) if e.source.raw_os_error() == Some(libc::ESRCH) => log::warn!(
                    "disk {name}: served at {blocks} blocks; the kernel keeps its own dev_size at the old \
                     figure: target_core_user takes a size change only when a process listens to \
                     its netlink events (ESRCH: nobody does; this service listens unless netlink \
                     = false)"
                ),
                Err(e) => {
                    return Err(format!(
                        "disk {name}: served at {blocks} blocks, but {}",
                        error_chain(&e)
                    ))
                }
            }
        }
        log::info!(
            "disk {name}: resized to {bytes} bytes ({blocks} blocks); the next command is told \
             CAPACITY DATA HAS CHANGED, other initiators see it at their next rescan"
        );
        Ok(blocks)
    }

    /// A device event from the kernel (docs/tcmu.md, "Netlink events"). Events of devices
    /// this service did not create, or no longer serves, are logged and ignored.
    fn on_event(&mut self, event: &DeviceEvent) {
        let ours = TcmuUioName::parse(&event.device).and_then(|n| {
            if n.hba != self.settings.hba.to_string() {
                return None;
            }
            self.disks
                .iter()
                .position(|d| d.spec.args.name == n.device && d.running.is_some())
        });
        let Some(i) = ours else {
            let level = if event.kind == EventKind::Added {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "tcmu event {:?} for {}: not a device this service serves; ignored",
                event.kind,
                event.device
            );
            return;
        };
        let name = self.disks[i].spec.args.name.clone();
        match event.kind {
            EventKind::Added => log::debug!("tcmu event: disk {name}'s backstore enabled ({})", event.device),
            EventKind::Removed => {
                log::warn!(
                    "disk {name}: the kernel is removing its backstore ({}, REMOVED_DEVICE); \
                     stopping the disk: drain, unmap, release",
                    event.device
                );
                self.stop_disk(
                    i,
                    KERNEL_REMOVED,
                    "the kernel removed its backstore (REMOVED_DEVICE)".into(),
                );
            }
            EventKind::Reconfig => self.on_reconfig(i, event),
        }
    }

    /// RECONFIG_DEVICE: `dev_size` grows the store and the engine (a size the store cannot
    /// take is refused and said); `dev_config` and the write cache are not applied: the board
    /// is chosen at start, and initiators set the write cache with MODE SELECT, which the
    /// engine answers (the kernel's `emulate_write_cache` never reaches them under TCMU).
    fn on_reconfig(&mut self, i: usize, event: &DeviceEvent) {
        let name = self.disks[i].spec.args.name.clone();
        if let Some(bytes) = event.dev_size {
            let served = self.disks[i]
                .running
                .as_ref()
                .map_or(0, |r| r.engine.num_blocks() * u64::from(self.disks[i].block_size));
            if bytes == served {
                log::debug!("disk {name}: dev_size {bytes} is the size served already");
            } else {
                match self.resize(&name, bytes, false) {
                    Ok(blocks) => log::info!(
                        "disk {name}: the kernel's dev_size is now {bytes} bytes: serving {blocks} blocks"
                    ),
                    Err(e) => log::error!(
                        "disk {name}: the kernel's dev_size is now {bytes} bytes, not applied: {e}; \
                         READ CAPACITY still says {served} bytes (write that to attrib/dev_size to \
                         agree again)"
                    ),
                }
            }
        }
        if let Some(config) = &event.dev_config {
            log::warn!(
                "disk {name}: dev_config changed to {config:?}; not applied (the board was chosen \
                 at start; restart the service to change it)"
            );
        }
        if let Some(wce) = event.write_cache {
            log::warn!(
                "disk {name}: the kernel's emulate_write_cache is now {wce}; not applied (under \
                 TCMU initiators see the engine's caching mode page, set with MODE SELECT)"
            );
        }
    }

    /// A worker that ended on its own (its ring broke, its UIO device went), or a store that
    /// failed ([`Store::failure`]: its device gone, a fatal error or a timeout its recovery
    /// could not clear): that disk is stopped and shown failed (a failed store: exit 74, as
    /// under scst_user); the others go on.
    fn reap_finished(&mut self) {
        for i in 0..self.disks.len() {
            let failed = self.disks[i]
                .running
                .as_ref()
                .and_then(|r| r.backend.store.failure());
            if let Some(why) = failed {
                let name = self.disks[i].spec.args.name.clone();
                log::error!("disk {name}: its store failed: {why}; stopping the disk");
                self.disks[i].exit_code = self.disks[i].exit_code.max(exit::IOERR);
                self.stop_disk(i, "StoreFailed", format!("its store failed: {why}"));
                continue;
            }
            let ended = self.disks[i]
                .running
                .as_ref()
                .is_some_and(|r| r.worker.is_finished());
            if !ended {
                continue;
            }
            // The kernel unregisters the UIO device right after its REMOVED_DEVICE event; the
            // worker may see that before the listener's event arrives. A backstore gone from
            // configfs says which it was.
            let gone = self.disks[i]
                .running
                .as_ref()
                .is_some_and(|r| !r.setup.backstore().exists());
            let name = self.disks[i].spec.args.name.clone();
            if gone {
                log::warn!(
                    "disk {name}: its backstore was removed (its worker saw it first); stopping the disk"
                );
                self.stop_disk(i, KERNEL_REMOVED, "the kernel removed its backstore".into());
            } else {
                log::error!("disk {name}: its TCMU worker ended; stopping the disk");
                self.stop_disk(
                    i,
                    "WorkerEnded",
                    "its TCMU worker ended (a broken ring or a UIO error: see the log)".into(),
                );
            }
        }
    }

    /// Stop one disk while the others serve, shown failed with `failure`
    /// ([`TcmuService::begin_stop`]).
    fn stop_disk(&mut self, i: usize, trigger: &'static str, failure: String) {
        self.begin_stop(i, trigger, Some(failure));
    }

    /// Begin disk `i`'s stop on a thread of its own ([`stop_running`]: its LUNs, its worker
    /// (drain, unmap; left at its bound), its backend, its backstore), recorded by
    /// [`Self::collect_stops`] or [`Self::join_stops`]. Off the service loop: removing a LUN
    /// waits in the kernel for the LUN's commands, up to the backstore's `cmd_time_out` (for
    /// ever if 0) when its ring's commands have nobody to answer them and the kernel refused
    /// to reset the ring ([`release_dead_ring`]); the worker's stop takes up to
    /// [`TcmuWorker::stop_bound`]; an NVMe function's shutdown at the release up to a minute.
    /// Meanwhile the loop answers status, the control socket and the watchdog, and the
    /// service's stop runs every disk's at once. `failure` shows the disk failed, with why;
    /// `None` is a requested stop. With no thread to be had, the stop runs here.
    fn begin_stop(&mut self, i: usize, trigger: &'static str, failure: Option<String>) {
        let disk = &mut self.disks[i];
        let Some(running) = disk.running.take() else {
            return;
        };
        disk.state = DiskState::Stopping;
        let failed = failure.is_some();
        if failure.is_some() {
            disk.failure = failure;
        }
        // Status shows the worker's figures as they were when its stop began.
        disk.last = Some(running.worker.stats());
        let started = Instant::now();
        let name = disk.spec.args.name.clone();
        match spawn_stop(&name, running, trigger) {
            Ok(thread) => {
                disk.stopping = Some(Stopping {
                    thread,
                    trigger,
                    started,
                    failed,
                });
            }
            Err(refused) => {
                let (running, e) = *refused;
                log::error!(
                    "disk {name}: no thread for its stop ({e}); stopping it here (its worker's stop is \
                     bounded, its LUNs' removal and its backend's release are not)"
                );
                let finished = stop_running(&name, running, trigger);
                record(disk, finished, trigger, started, failed);
            }
        }
    }

    /// Record the disks whose stop thread has ended ([`Self::begin_stop`]). Never waits: a
    /// stop still running is looked at again on the loop's next turn.
    fn collect_stops(&mut self) {
        for disk in &mut self.disks {
            if disk.stopping.as_ref().is_some_and(|s| s.thread.is_finished()) {
                if let Some(Stopping {
                    thread,
                    trigger,
                    started,
                    failed,
                }) = disk.stopping.take()
                {
                    // Finished: the join returns at once.
                    let joined = scst_accel_hal::locks::join(thread);
                    settle_stop(disk, joined, trigger, started, failed);
                }
            }
        }
    }

    /// At the service's stop: wait for the disks' stop threads until `deadline` (past it, one
    /// look at each), recording each that ends; one still running is left to finish on its
    /// own (the process exits without it), its disk failed (exit 70).
    fn join_stops(&mut self, deadline: Instant) {
        for disk in &mut self.disks {
            let Some(Stopping {
                thread,
                trigger,
                started,
                failed,
            }) = disk.stopping.take()
            else {
                continue;
            };
            // Past the deadline a stop gets only a look (a thread that ended just now is
            // recorded): the stop's bound is what systemd's extended timeout allows.
            let left = deadline.saturating_duration_since(Instant::now());
            match scst_accel_hal::locks::join_bounded(thread, left) {
                Ok(joined) => settle_stop(disk, joined, trigger, started, failed),
                Err(_still_running) => {
                    log::error!(
                        "disk {}: its stop (LUN removal, drain, backend release, backstore removal) \
                         still runs after {:?}, past the service stop's bound; left to finish on its \
                         own: its LUNs and backstore may stay in configfs (restart with --tcmu-adopt, \
                         or remove them), its buffer pool is not unmapped, and a function not reset \
                         yet is reset by the kernel when the process exits (VFIO's release)",
                        disk.spec.args.name,
                        started.elapsed()
                    );
                    disk.state = DiskState::Failed;
                    disk.failure.get_or_insert_with(|| {
                        format!(
                            "its stop overran the service stop's bound ({:?})",
                            started.elapsed()
                        )
                    });
                    disk.exit_code = exit::SOFTWARE;
                }
            }
        }
    }

    /// What the service's stop may take: every disk's stop (LUNs, worker, backend, backstore)
    /// runs at once, together bounded by `stop_timeout`, as under scst_user, but never below
    /// the drains' own bound (twice the drain budget and [`STOP_SLACK`]); plus a second. A
    /// disk's stop still running then is left ([`Self::join_stops`]).
    fn stop_budget(&self) -> Duration {
        self.stop_timeout
            .max(self.settings.drain.saturating_mul(2).saturating_add(STOP_SLACK))
            .saturating_add(Duration::from_secs(1))
    }

    /// Stop every serving disk: the iSCSI target disabled, then every disk's stop at once, each
    /// on its own thread ([`Self::begin_stop`]: its LUNs removed while its worker serves, its
    /// worker stopped, its backend released, its backstore removed), awaited with the stops of
    /// disks stopped alone earlier until [`Self::stop_budget`] from here, then the shared
    /// targets.
    fn stop_all(&mut self, trigger: &'static str) {
        let started = Instant::now();
        let budget = self.stop_budget();
        if let Some(targets) = &mut self.targets {
            if let Err(e) = targets.disable() {
                log::error!("tcmu stop: {}", error_chain(&e));
            }
        }
        for i in (0..self.disks.len()).rev() {
            self.begin_stop(i, trigger, None);
        }
        log::info!(
            "tcmu stop: {} disk stop(s) running, bounded by {budget:?}",
            self.stopping()
        );
        // Their LUNs must be gone before the shared targets can go.
        self.join_stops(started + budget);
        if let Some(targets) = self.targets.take() {
            if let Err(e) = targets.remove() {
                log::error!("tcmu stop: {}", error_chain(&e));
            }
        }
    }

    /// [`exit::of_service`] over the disks, in configuration order.
    fn exit_code(&self, stop_requested: bool) -> u8 {
        exit::of_service(self.disks.iter().map(|d| d.exit_code), stop_requested)
    }
}

/// The first step of a disk's stop, its worker asked to stop only after it: the ring emptied
/// if its worker has ended (a dead ring's commands would hold the LUNs' removal,
/// [`release_dead_ring`]), then its LUNs removed while a live worker still answers their
/// commands. A failure of either is logged; returns the exit code it makes the disk's (70),
/// or 0.
fn remove_luns(name: &str, running: &mut Running) -> u8 {
    let mut code = release_dead_ring(name, running);
    if let Err(e) = running.setup.unexport() {
        log::error!("disk {name}: removing its LUNs: {}", error_chain(&e));
        code = exit::SOFTWARE;
    }
    code
}

/// A disk's whole stop, on whichever thread runs it: [`remove_luns`] (while its worker still
/// answers their commands), the worker asked to stop and awaited within its bound ([`halt`]),
/// then [`finish`] (backend released, backstore removed).
fn stop_running(name: &str, mut running: Running, trigger: &str) -> Finished {
    let code = remove_luns(name, &mut running);
    running.worker.request_stop();
    let mut finished = finish(name, halt(running), trigger);
    finished.code = finished.code.max(code);
    finished
}

/// [`stop_running`] on a thread of its own ([`TcmuService::begin_stop`]). `Err` gives
/// `running` back untouched when no thread can be had.
fn spawn_stop(
    name: &str,
    running: Running,
    trigger: &'static str,
) -> Result<StopThread, Box<(Running, String)>> {
    // Handed over once the thread runs: a failed spawn drops its closure, and the disk's parts
    // must not go with it (a setup dropped leaves its objects in configfs, a backend dropped
    // unmaps nothing with proof).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Running>(1);
    let thread_name = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("stop-{name}"))
        .spawn(move || {
            // Sent right after the spawn, from the service loop; the bound only covers a loop
            // that panicked in between (the sender is dropped then, and this returns at once).
            let running = scst_accel_hal::locks::recv_timeout(&rx, Duration::from_secs(10)).ok()?;
            Some(stop_running(&thread_name, running, trigger))
        });
    match spawned {
        Ok(thread) => match tx.send(running) {
            Ok(()) => Ok(thread),
            Err(std::sync::mpsc::SendError(running)) => {
                Err(Box::new((running, "its thread ended at once".into())))
            }
        },
        Err(e) => Err(Box::new((running, e.to_string()))),
    }
}

/// Record the end of a disk's stop thread ([`TcmuService::collect_stops`],
/// [`TcmuService::join_stops`]).
fn settle_stop(
    disk: &mut TcmuDisk,
    joined: std::thread::Result<Option<Finished>>,
    trigger: &'static str,
    started: Instant,
    failed: bool,
) {
    match joined {
        Ok(Some(finished)) => record(disk, finished, trigger, started, failed),
        Ok(None) | Err(_) => {
            log::error!(
                "disk {}: its stop thread ended without stopping it (it panicked, or never got \
                 the disk); its backstore and buffer pool are not released",
                disk.spec.args.name
            );
            disk.state = DiskState::Failed;
            disk.exit_code = exit::SOFTWARE;
        }
    }
}

/// Before the LUNs of a disk whose worker has ended are removed: empty its ring. Removing a
/// LUN waits for every command the LUN still has (core_tpg_remove_lun ->
/// transport_clear_lun_ref), and the commands in the ring of a dead worker end only when the
/// kernel times them out (`attrib/cmd_time_out`, 30 s by default, never if 0), all that time
/// in the disk's stop, which the service's stop bounds and then leaves. So, as tcmu-runner
/// does with a ring it cannot serve: block the device (new commands fail at once with BUSY
/// instead of entering the ring) and reset the ring with BUSY (the kernel completes every
/// command in it so; initiators retry). Only once the worker has stopped using the ring: an ended worker
/// thread has unmapped it (the UIO device is dropped at the end of its serve, worker.rs). The
/// device stays blocked: it is removed next. Each write is one bounded configfs store. If the
/// kernel refuses, the LUNs' removal that follows waits for those commands (off the service
/// loop, on the disk's stop thread, [`TcmuService::begin_stop`]); said, with why. Returns the
/// exit code a refusal makes the disk's (70), or 0.
fn release_dead_ring(name: &str, running: &Running) -> u8 {
    if !running.worker.is_finished() || !running.setup.backstore().exists() {
        // Serving: it answers its commands while its LUNs go. Gone: nothing to reset.
        return 0;
    }
    let started = Instant::now();
    let blocked = running.setup.block(true);
    if let Err(e) = &blocked {
        log::error!("disk {name}: blocking its ended ring: {}", error_chain(e));
    }
    match running.setup.reset_ring(RingReset::Busy) {
        Ok(()) => {
            log::warn!(
                "disk {name}: its worker ended: ring reset, the commands in it answered BUSY (to be \
             retried){}, in {:?}",
                if blocked.is_ok() {
                    ", new ones refused BUSY"
                } else {
                    ""
                },
                started.elapsed()
            );
            0
        }
        Err(e) => {
            let timeout = match running.setup.cmd_time_out() {
                Ok(Some(t)) => format!("{t:?}"),
                Ok(None) => "never: cmd_time_out is 0".into(),
                Err(_) => format!("{KERNEL_CMD_TIME_OUT:?} by default"),
            };
            log::error!(
                "disk {name}: resetting its ended ring: {}; removing its LUNs waits until the \
                 kernel times out the commands left in the ring ({timeout})",
                error_chain(&e)
            );
            exit::SOFTWARE
        }
    }
}

/// Before a worker maps an adopted backstore's ring: empty it. Its unretired commands are the
/// earlier run's, and some may be older than the kernel's `cmd_time_out`: the kernel has
/// failed those to the initiator already but kept their entries
/// (`tcmu_check_expired_ring_cmd`), so executing them now could land a WRITE after the
/// initiator's retry of it. Which entries expired cannot be read from the ring, so none is
/// replayed: as tcmu-runner does on a reopen (libtcmu.c `device_add`), block the device,
/// reset the ring with BUSY (every command still waiting is retried by its initiator; the
/// expired ones are only dropped), unblock. New commands that arrive before the worker runs
/// wait in the emptied ring.
///
/// # Errors
/// What the kernel refused, and what to do; the device is unblocked again where it can be.
fn clear_adopted_ring(setup: &Setup<ServiceFs>) -> Result<(), String> {
    setup.block(true).map_err(|e| {
        format!(
            "blocking the adopted backstore to reset its ring: {}; its ring may hold commands \
             the kernel failed already, which are not replayed: remove the backstore (rmdir) \
             and start again without it",
            error_chain(&e)
        )
    })?;
    let reset = setup.reset_ring(RingReset::Busy).map_err(|e| {
        format!(
            "resetting the adopted backstore's ring: {}; its commands may include some the \
             kernel failed already, which are not replayed: remove the backstore (rmdir) and \
             start again without it",
            error_chain(&e)
        )
    });
    let unblocked = setup.block(false).map_err(|e| {
        format!(
            "unblocking the adopted backstore after its ring reset: {}; the kernel answers \
             every command BUSY until 0 is written to {}",
            error_chain(&e),
            setup.backstore().join("action/block_dev").display()
        )
    });
    reset.and(unblocked)
}

/// The worker's per-command deadline: the disk's `command_timeout`, kept below the
/// backstore's own `cmd_time_out` by [`command_timeout_under`]'s rule (escalate, and answer,
/// before the kernel fails the command itself); the kernel's default where it cannot be read.
fn worker_command_timeout(
    name: &str,
    wanted: Duration,
    kernel: Result<Option<Duration>, ConfigfsError>,
) -> Duration {
    let kernel = kernel.unwrap_or_else(|e| {
        log::warn!(
            "disk {name}: the kernel's command timeout is unknown ({}); assuming its default, \
             {KERNEL_CMD_TIME_OUT:?}",
            error_chain(&e)
        );
        Some(KERNEL_CMD_TIME_OUT)
    });
    let timeout = command_timeout_under(kernel, wanted);
    if timeout < wanted {
        log::warn!(
            "disk {name}: command_timeout {wanted:?} is not below half the backstore's \
             cmd_time_out ({:?}): commands escalate after {timeout:?}, before the kernel fails them",
            kernel.unwrap_or_default()
        );
    }
    timeout
}

/// The teardown trigger of a disk whose backstore the kernel removed (REMOVED_DEVICE).
const KERNEL_REMOVED: &str = "KernelRemoved";

/// A disk whose LUNs are gone and whose worker was asked to stop: the drain awaited (the ring
/// unmapped by the worker after it), at most [`TcmuWorker::stop_bound`] (twice the drain budget
/// and a second); a worker still running then is left ([`StopError::Detached`]).
fn halt(running: Running) -> Halted {
    let in_flight_at_start = running.worker.stats().in_flight();
    let Running {
        backend,
        engine,
        setup,
        worker,
        ..
    } = running;
    Halted {
        report: worker.stop(),
        backend,
        engine,
        setup,
        in_flight_at_start,
    }
}

/// The end of a disk whose worker has stopped or been left ([`halt`]): the backend released
/// (the pool unmapped only with the drain's proof, else leaked; a left worker's function reset,
/// its pool leaked), the backstore removed (not under a left worker, which still maps its
/// ring), what happened returned for [`record`].
fn finish(name: &str, halted: Halted, trigger: &str) -> Finished {
    let Halted {
        backend,
        engine,
        setup,
        report,
        in_flight_at_start,
    } = halted;
    let mut code = 0;
    let mut ring_unmapped = true;
    let (backend, zombies, permitted, totals) = match &report {
        Ok(r) => {
            log::info!(
                "disk {name}: {} commands started, {} completed, {} refused, {} task management, \
                 {} deadline escalations; drain {:?}",
                r.progress.started,
                r.progress.completed,
                r.progress.refused,
                r.progress.task_management,
                r.escalations,
                r.drain_time
            );
            match &r.error {
                // The kernel unregisters the UIO device right after its REMOVED_DEVICE event:
                // a worker that saw its device go first is what that removal looks like.
                Some(e) if trigger == KERNEL_REMOVED => {
                    log::info!(
                        "disk {name}: its worker saw the removal first: {}",
                        error_chain(e)
                    );
                }
                Some(_) => code = exit::SOFTWARE,
                None => {}
            }
            let totals = Some(WorkerStats {
                started: r.progress.started as u64,
                completed: r.progress.completed as u64,
                refused: r.progress.refused as u64,
                task_management: r.progress.task_management as u64,
                escalations: r.escalations,
                ..WorkerStats::default()
            });
            match &r.drained {
                Ok(drained) => (backend.shutdown_drained(drained), 0, true, totals),
                Err(e) => {
                    log::error!("disk {name}: {e}; the buffer pool is leaked, not unmapped");
                    code = exit::SOFTWARE;
                    (backend.shutdown(None), e.in_flight as u64, false, totals)
                }
            }
        }
        Err(e @ StopError::Panicked(_)) => {
            log::error!("disk {name}: {e}");
            code = exit::SOFTWARE;
            (backend.shutdown(None), 0, false, None)
        }
        Err(e @ StopError::Detached(_)) => {
            // Without a permit the release resets the function (no more DMA into the pool),
            // or, if it cannot be confirmed, leaks its rings too, and leaks the pool either way.
            log::error!(
                "disk {name}: {e}; its function is reset, its buffer pool leaked, not unmapped, and \
                 its backstore {} left in configfs (the worker maps its ring): once the process \
                 has exited, restart with --tcmu-adopt or remove it (rmdir)",
                setup.backstore().display()
            );
            code = exit::SOFTWARE;
            ring_unmapped = false;
            (backend.shutdown(None), in_flight_at_start, false, None)
        }
    };
    if ring_unmapped {
        // The ring is unmapped (the worker dropped the device after its drain, or as it
        // unwound): the backstore can go.
        if let Err(e) = setup.remove() {
            log::error!("disk {name}: {}", error_chain(&e));
            code = exit::SOFTWARE;
        }
    }
    if backend.mapped_after != 0 || backend.leaked_buffers != 0 {
        log::error!(
            "disk {name}: {} bytes still mapped, {} buffers leaked",
            backend.mapped_after,
            backend.leaked_buffers
        );
    }
    Finished {
        code,
        totals,
        num_blocks: engine.num_blocks(),
        backend,
        zombies,
        permitted,
        in_flight_at_start,
    }
}

/// Record a disk's [`Finished`] stop: its figures, its teardown, its exit code and state
/// (failed when `failed`, a stop for a failure, or when the stop gave a code).
fn record(disk: &mut TcmuDisk, finished: Finished, trigger: &str, started: Instant, failed: bool) {
    let Finished {
        code,
        totals,
        num_blocks,
        backend,
        zombies,
        permitted,
        in_flight_at_start,
    } = finished;
    disk.num_blocks = num_blocks;
    if let Some(totals) = totals {
        // The report has no error or turn counts: those of the stop's start stay.
        let last = disk.last.unwrap_or_default();
        disk.last = Some(WorkerStats {
            errors: last.errors,
            turns: last.turns,
            ..totals
        });
    }
    disk.teardowns.push(TeardownRecord {
        at: SystemTime::now(),
        trigger: trigger.to_owned(),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        in_flight_at_start,
        drained: if permitted { in_flight_at_start } else { 0 },
        aborted: 0,
        zombies_left: zombies,
        unmap_permitted: permitted,
    });
    disk.device = DeviceCounters {
        device_errors: backend.device_errors,
        timeouts: backend.timeouts,
        resets: backend.resets,
        controller_resets: backend.controller_resets,
        unknown_tags: backend.unknown_tags,
    };
    disk.exit_code = disk.exit_code.max(code);
    disk.state = if failed || disk.exit_code != 0 {
        DiskState::Failed
    } else {
        DiskState::Stopped
    };
    if disk.state == DiskState::Failed && disk.failure.is_none() {
        // A worker left detached, a release that failed: the log has the details.
        disk.failure = Some(format!("its stop failed (exit {}); see the log", disk.exit_code));
    }
    log::info!(
        "disk {}: stopped in {:?} (release {:.1} ms)",
        disk.spec.args.name,
        started.elapsed(),
        backend.release_ms
    );
}

/// The SCSI engine's configuration for a TCMU disk: what [`DiskArgs::disk_config`] makes for
/// scst_user, less what only SCST's core would serve.
///
/// [`DiskArgs::disk_config`]: crate::disk::DiskArgs::disk_config
fn engine_config(spec: &DiskSpec, info: &StoreInfo, identity: &Identity) -> DiskConfig {
    // EXTENDED COPY and RECEIVE COPY RESULTS are SCST's copy manager's under scst_user; LIO's
    // passthrough parser sends them to the TCMU device, where nothing would run them. Not
    // advertised (3PC 0, not in REPORT SUPPORTED OPERATION CODES), so initiators do not try.
    let mut config = spec.args.disk_config(info, identity, false);
    config.read_only = spec.read_only;
    config.thin_provisioning = spec.thin_provisioning && info.supports_unmap;
    config.unmapped_reads_zero &= config.thin_provisioning;
    // LIO's passthrough parser hands COMPARE AND WRITE to the TCMU device: the engine runs it,
    // atomic under the disk's range locks (docs/scsi.md "COMPARE AND WRITE").
    config.compare_and_write = CompareAndWriteBy::Handler;
    // LIO builds its own sense for the LUN (unit attentions, reservation conflicts) in
    // descriptor format once the last LBA passes FFFFFFFFh (`target_sense_desc_format`), and a
    // fixed-format INFORMATION cannot name such an LBA (VALID 0: an initiator then fails the
    // whole request instead of counting the blocks before a MEDIUM ERROR). The engine's sense
    // follows, so the LUN answers in one format, the one MODE SENSE's D_SENSE reports.
    config.d_sense = descriptor_sense_for(config.num_blocks);
    config
}

/// Whether LIO makes a TCMU LUN of `num_blocks` answer in descriptor sense: its last LBA does
/// not fit 32 bits.
fn descriptor_sense_for(num_blocks: u64) -> bool {
    num_blocks.saturating_sub(1) > u64::from(u32::MAX)
}

fn configfs_code(e: &ConfigfsError) -> u8 {
    match e.source.kind() {
        std::io::ErrorKind::PermissionDenied => exit::NOPERM,
        std::io::ErrorKind::NotFound => exit::UNAVAILABLE,
        _ => exit::CONFIG,
    }
}

/// One disk: backend, identity, engine, backstore, UIO device, worker, LUNs. On a failure
/// what was made is undone, newest first, before the error returns.
fn start_disk(
    disk: &mut TcmuDisk,
    others: &[(String, IdentityView)],
    settings: &TcmuSettings,
    state_dir: &Path,
    fs: &ServiceFs,
    targets: &Targets<ServiceFs>,
) -> Result<(), StartFailure> {
    let fail = |message: String, code: u8| StartFailure { message, code };
    let spec = &disk.spec;
    let blocks = spec.args.validate().map_err(|e| fail(e, exit::USAGE))?;
    let backend = backend::build(spec.board, &spec.args, blocks, spec.pci.as_deref(), &spec.inject)
        .map_err(|e| fail(e.message, e.exit_code))?;
    let info = backend.store.info();
    let identity = match crate::identity::resolve_unique(
        &spec.args.name,
        &spec.identity,
        Some(state_dir),
        info.device_ids.as_ref(),
        others,
    ) {
        Ok(i) => i,
        Err(e) => {
            backend.shutdown_unserved();
            return Err(fail(format!("identity: {e}"), exit::CONFIG));
        }
    };
    let engine = match Disk::try_new(engine_config(spec, &info, &identity)) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            backend.shutdown_unserved();
            return Err(fail(e.to_string(), exit::CONFIG));
        }
    };
    let queue = match backend.store.open_queue() {
        Ok(q) => q,
        Err(e) => {
            backend.shutdown_unserved();
            return Err(fail(format!("store queue: {e}"), exit::SOFTWARE));
        }
    };
    // The size the kernel reports is the store's (a board's namespace may differ from `size`).
    let mut setup_spec = setup_spec(spec, settings);
    setup_spec.size = info.num_blocks * u64::from(info.block_size);
    setup_spec.block_size = info.block_size;
    let made = if settings.adopt {
        Setup::adopt(Arc::clone(fs), &settings.configfs_root, &setup_spec)
    } else {
        Setup::create(Arc::clone(fs), &settings.configfs_root, &setup_spec)
    };
    let mut setup = match made {
        Ok(s) => s,
        Err(e) => {
            drop(queue);
            backend.shutdown_unserved();
            return Err(fail(error_chain(&e), configfs_code(&e)));
        }
    };
    log::info!(
        "tcmu: backstore {} {}",
        setup.backstore().display(),
        if settings.adopt {
            "adopted or created"
        } else {
            "created"
        }
    );
    if setup.adopted() {
        if let Err(message) = clear_adopted_ring(&setup) {
            drop(queue);
            remove_logged(setup);
            backend.shutdown_unserved();
            return Err(fail(message, exit::SOFTWARE));
        }
        log::info!(
            "tcmu: backstore {}: the earlier run's ring reset (its commands answered BUSY, to be \
             retried)",
            setup.backstore().display()
        );
    }
    // Before the first command: an adopted LU's initiators were told nothing of the kill and
    // keep the WCE they set (crate::mode_state); a new one starts from the default, recorded.
    let mode = crate::mode_state::ModeState::new(state_dir, &spec.args.name)
        .and_then(|state| crate::mode_state::prepare(&engine, state, setup.adopted()));
    if let Err(e) = mode {
        drop(queue);
        remove_logged(setup);
        backend.shutdown_unserved();
        return Err(fail(e.to_string(), exit::CONFIG));
    }
    let command_timeout =
        worker_command_timeout(&spec.args.name, spec.args.command_timeout, setup.cmd_time_out());
    let (hba, name) = setup_spec.uio_names();
    let device = match open_uio(&hba, &name) {
        Ok(d) => d,
        Err(e) => {
            drop(queue);
            remove_logged(setup);
            backend.shutdown_unserved();
            return Err(fail(
                format!(
                    "{}; is target_core_user loaded and udev running?",
                    error_chain(&e)
                ),
                exit::UNAVAILABLE,
            ));
        }
    };
    let uio_index = device.info().index;
    let exec = Executor::new(Arc::clone(&engine), queue, Arc::clone(&backend.pool));
    let capacity = exec.capacity_notice();
    let worker_config = WorkerConfig {
        command_timeout,
        drain_budget: settings.drain,
        ..WorkerConfig::default()
    };
    let worker = match TcmuWorker::spawn(&format!("tcmu-{name}"), device, exec, worker_config) {
        Ok(w) => w,
        Err(e) => {
            remove_logged(setup);
            // The executor (and its queue) went with the failed spawn, before anything was
            // submitted.
            backend.shutdown_unserved();
            return Err(fail(format!("worker: {e}"), exit::SOFTWARE));
        }
    };
    if let Err(e) = setup.export_lun(targets, disk.lun, &name) {
        // The LUN is half made: undo it while the worker still serves (the kernel may have
        // begun its scan), then the worker, the backstore and the backend, as a stop does.
        let message = error_chain(&e);
        let code = configfs_code(&e);
        let running = Running {
            backend,
            engine,
            capacity,
            setup,
            worker,
            uio_index,
        };
        let started = Instant::now();
        let finished = stop_running(&name, running, "StartFailed");
        record(disk, finished, "StartFailed", started, true);
        return Err(fail(message, code));
    }
    disk.exports = targets
        .tpgs()
        .iter()
        .map(|tpg| {
            let fabric = tpg
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = tpg
                .parent()
                .and_then(Path::file_name)
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{fabric}/{target}/{}", disk.lun)
        })
        .collect();
    disk.identity = identity.view();
    disk.block_size = info.block_size;
    disk.num_blocks = info.num_blocks;
    disk.running = Some(Running {
        backend,
        engine,
        capacity,
        setup,
        worker,
        uio_index,
    });
    Ok(())
}

/// Serve every disk of `config` through TCMU until SIGINT/SIGTERM or until none serves;
/// returns the exit code.
pub fn run(config: &ServiceConfig, signals: &mut Signals) -> u8 {
    let fail = |message: String, code: u8| {
        crate::journal::error_to_stderr(&format!("scst-accel serve --frontend tcmu: {message}"));
        code
    };
    let (tx, requests) = crossbeam_channel::unbounded();
    let handle = ServiceHandle::new(tx);
    let view: Arc<dyn ServiceView> = Arc::new(handle.clone());
    // The control socket and the metrics endpoint are bound before any disk starts: one that
    // cannot bind is a configuration error, and nothing has been applied yet.
    let servers = match Servers::start(&config.service, view) {
        Ok(s) => s,
        Err(message) => return fail(message, exit::CONFIG),
    };
    let notifier = Arc::new(Notifier::from_env());
    notifier.status(&format!("starting {} disks through TCMU", config.disks.len()));
    let mut service = TcmuService::new(config);
    // Events are followed from before the first disk starts, so none of ours is missed.
    let (events_tx, events) = crossbeam_channel::unbounded();
    let listener = if service.settings.netlink {
        match EventListener::spawn(move |e| {
            let _ = events_tx.send(e);
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!(
                    "tcmu: device events are not followed: {}; a backstore removed or resized \
                     through configfs is not noticed",
                    error_chain(&e)
                );
                None
            }
        }
    } else {
        None
    };
    let targets = target_spec(&service.settings, &config.disks);
    // One disk at a time, each with a start budget of its own from systemd, and a stop asked
    // for meanwhile starting no more (as `serve` under scst_user does).
    let total = service.disks.len();
    let mut stop_asked = false;
    let started = service.start_with(&targets, |index, name| {
        notifier.extend_timeout(crate::serve::DISK_START_BUDGET);
        notifier.status(&format!("starting disk {} of {total}: {name}", index + 1));
        stop_asked |= signals.pending().any(|s| s == SIGINT || s == SIGTERM);
        !stop_asked
    });
    stop_asked |= signals.pending().any(|s| s == SIGINT || s == SIGTERM);
    if stop_asked && started.is_ok() {
        log::info!("tcmu: signal during the start: stopping every disk");
        notifier.stopping();
        notifier.status("stopping: tearing every disk down");
        notifier.extend_timeout(service.stop_budget() + AFTER_STOP);
        drop(requests);
        service.stop_all("Requested");
        if let Some(listener) = listener {
            listener.stop();
        }
        servers.stop();
        let code = service.exit_code(true);
        notifier.status(&format!("stopped (exit {code})"));
        return code;
    }
    if let Err(f) = started {
        drop(requests);
        if let Some(listener) = listener {
            listener.stop();
        }
        servers.stop();
        return fail(f.message, f.code);
    }
    if service.serving() == 0 {
        for disk in &service.disks {
            if let Some(message) = &disk.failure {
                crate::journal::error_to_stderr(&format!(
                    "scst-accel serve: disk {}: {message}",
                    disk.spec.args.name
                ));
            }
        }
        // As under scst_user: a failure a restart may mend before a start class.
        let code = match exit::of_service(service.disks.iter().map(|d| d.exit_code), false) {
            0 => exit::SOFTWARE,
            code => code,
        };
        drop(requests);
        service.stop_all("NothingServed");
        if let Some(listener) = listener {
            listener.stop();
        }
        servers.stop();
        return fail(format!("no disk could start; exiting {code}"), code);
    }
    // The LUNs are linked: logins may begin.
    if let Some(Err(e)) = service.targets.as_mut().map(Targets::enable) {
        log::error!("tcmu: enabling the iSCSI target: {}", error_chain(&e));
        service
            .disks
            .iter_mut()
            .for_each(|d| d.exit_code = d.exit_code.max(exit::CONFIG));
        drop(requests);
        service.stop_all("StartFailed");
        if let Some(listener) = listener {
            listener.stop();
        }
        servers.stop();
        return fail(error_chain(&e), exit::CONFIG);
    }
    // Said once the iSCSI target is enabled too: a script that waits for this line finds the
    // disk reachable.
    for disk in service.disks.iter().filter(|d| d.running.is_some()) {
        log::info!(
            "serving {} ({} blocks of {}) through TCMU user_{}/{} as LUN {}: {}",
            disk.spec.args.name,
            disk.num_blocks,
            disk.block_size,
            service.settings.hba,
            disk.spec.args.name,
            disk.lun,
            disk.exports.join(", ")
        );
    }
    let line = service.status_line();
    log::info!("{line}");
    notifier.status(&line);
    notifier.ready();
    let watchdog = crate::serve::start_watchdog(&notifier, handle);
    // Signals come through a channel from a thread of their own, so the loop sleeps until a
    // request, a device event or a signal, and otherwise looks at the disks once a second.
    let signal_handle = signals.handle();
    let requested = std::thread::scope(|scope| {
        // Closed on every way out of the loop (a panic included), which ends the signal
        // thread, whose forwarding never blocks (`forward_stop_signals`); the receiver is this
        // closure's, so it goes with it too: the scope's join cannot wait for ever.
        let _close = CloseSignals(signal_handle);
        let (signal_tx, signal_rx) = crossbeam_channel::bounded(8);
        scope.spawn(move || forward_stop_signals(signals.forever(), &signal_tx));
        let events = if listener.is_some() {
            events
        } else {
            crossbeam_channel::never()
        };
        serve_until_stop(&mut service, &requests, &events, &signal_rx, &notifier, line)
    });
    // The watchdog goes first: a teardown is not a hang; systemd's stop timeout, extended by
    // the stop's bound (every disk's stop at once, left at `stop_budget`) and what follows it,
    // bounds it instead.
    if let Some(watchdog) = watchdog {
        watchdog.stop();
    }
    notifier.stopping();
    notifier.status("stopping: tearing every disk down");
    notifier.extend_timeout(service.stop_budget() + AFTER_STOP);
    let started = Instant::now();
    // The loop no longer answers: the request channel is closed, so the control socket's
    // and the metrics' questions fail at once (a snapshot is empty) instead of each waiting
    // ANSWER_WAIT, which held the control server's stop for 5 s.
    drop(requests);
    service.stop_all("Requested");
    if let Some(listener) = listener {
        if listener.lost() > 0 {
            log::warn!(
                "tcmu: {} device event(s) were lost or unreadable",
                listener.lost()
            );
        }
        listener.stop();
    }
    servers.stop();
    let code = service.exit_code(requested);
    log::info!("tcmu: stopped in {:?}; exit code {code}", started.elapsed());
    notifier.status(&format!("stopped (exit {code})"));
    code
}

/// How often the service's loop looks at its disks when nothing wakes it (a worker that ended,
/// a disk's stop that ended, the status line, stuck workers).
const SERVICE_LOOK: Duration = Duration::from_secs(1);

/// What systemd's stop timeout is extended by beyond [`TcmuService::stop_budget`]: what
/// `serve` allows after the scst_user teardowns (the control and metrics servers' joins and a
/// margin, which also covers the shared targets' removal) and the netlink listener's join.
const AFTER_STOP: Duration = Duration::from_secs(
    crate::serve::AFTER_TEARDOWN.as_secs() + scst_accel_handler::tcmu::netlink::STOP_BOUND.as_secs(),
);

/// What the service's stop allows a disk beyond its drain (twice the budget) at the least,
/// whatever `stop_timeout` says: the LUNs' removal, the worker's last pass, the backend's
/// release and the backstore's removal ([`TcmuService::stop_budget`]).
const STOP_SLACK: Duration = Duration::from_secs(5);

/// Forward the stop signals among `signals` (SIGINT, SIGTERM) to the service's loop, until
/// `signals` ends (its handle closed) or the loop's receiver is gone. Never waits on the
/// channel: a full one holds that many stops the loop has not read, and one more changes
/// nothing (the loop stops at the first), whereas a blocking send, once the loop had stopped
/// reading, would keep this thread, and the scope that joins it, for ever. SIGHUP and SIGUSR1,
/// registered for the scst_user frontend, mean nothing under TCMU and are not forwarded, so
/// only stops can fill the channel.
fn forward_stop_signals(signals: impl Iterator<Item = i32>, tx: &crossbeam_channel::Sender<i32>) {
    for signal in signals {
        if signal != SIGINT && signal != SIGTERM {
            log::debug!("signal {signal}: nothing to do under TCMU");
            continue;
        }
        match tx.try_send(signal) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => {}
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => break,
        }
    }
}

/// Closes the service's signal iterator when dropped, ending the thread that forwards it.
struct CloseSignals(signal_hook::iterator::Handle);

impl Drop for CloseSignals {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The service's loop: answer requests, act on device events, keep the status line and warn
/// of stuck workers, until a stop request, SIGINT or SIGTERM, or no disk serves any more.
/// It sleeps until one of its channels has something, at most [`SERVICE_LOOK`]. Returns
/// whether the stop was asked for (a request or a signal) rather than every disk ending.
fn serve_until_stop(
    service: &mut TcmuService,
    requests: &crossbeam_channel::Receiver<Request>,
    events: &crossbeam_channel::Receiver<DeviceEvent>,
    signals: &crossbeam_channel::Receiver<i32>,
    notifier: &Notifier,
    mut last_line: String,
) -> bool {
    let mut events = events.clone();
    let mut requests = requests.clone();
    let mut warned: Option<Instant> = None;
    loop {
        let mut stop_asked = false;
        let mut signalled = false;
        crossbeam_channel::select! {
            recv(requests) -> request => {
                match request {
                    Ok(request) => stop_asked |= service.answer(request),
                    // Nobody can ask any more (the control server holds a sender for the
                    // service's life): no busy loop on a closed channel.
                    Err(_) => requests = crossbeam_channel::never(),
                }
                // Whatever else queued meanwhile (status and metrics may ask at once).
                for request in requests.try_iter() {
                    stop_asked |= service.answer(request);
                }
            }
            recv(signals) -> signal => {
                signalled |= signal.is_ok_and(|s| s == SIGINT || s == SIGTERM);
            }
            recv(events) -> event => match event {
                Ok(event) => service.on_event(&event),
                // The listener ended (it said why): no more events, and no busy loop on a
                // closed channel.
                Err(_) => events = crossbeam_channel::never(),
            },
            default(SERVICE_LOOK) => {}
        }
        signalled |= signals.try_iter().any(|s| s == SIGINT || s == SIGTERM);
        if stop_asked {
            log::info!("stop requested: stopping every disk");
            return true;
        }
        if signalled {
            log::info!("signal: stopping every disk");
            return true;
        }
        for event in events.try_iter() {
            service.on_event(&event);
        }
        service.reap_finished();
        service.collect_stops();
        // A disk stopping alone is awaited here, answering status meanwhile, not in the
        // service's stop, where nothing answers.
        if service.serving() == 0 && service.stopping() == 0 {
            log::error!("tcmu: no disk serves any more; stopping");
            return false;
        }
        let line = service.status_line();
        if line != last_line {
            log::info!("{line}");
            notifier.status(&line);
            last_line = line;
        }
        // A busy worker turns every 50 ms, a parked one sets its heartbeat to the end of its
        // park (1 s): an age of 10 s means a stuck serving pass. Said every 10 s.
        for disk in &service.disks {
            let Some(running) = &disk.running else { continue };
            let age = running.worker.heartbeat_age();
            if age > Duration::from_secs(10) && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                log::warn!(
                    "disk {}: its worker has not turned for {age:?}",
                    disk.spec.args.name
                );
                warned = Some(Instant::now());
            }
        }
    }
}

fn remove_logged(setup: Setup<ServiceFs>) {
    if let Err(e) = setup.remove() {
        log::error!("tcmu: removing the configfs objects: {}", error_chain(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str) -> DiskSpec {
        DiskSpec {
            args: crate::disk::DiskArgs {
                name: name.into(),
                size: 1 << 20,
                ..crate::disk::DiskArgs::default()
            },
            board: crate::backend::BoardArg::Ram,
            pci: None,
            inject: Vec::new(),
            read_only: false,
            thin_provisioning: false,
            identity: crate::config::IdentitySpec::default(),
            exports: Vec::new(),
            prealloc: 0,
            prealloc_size: 0,
        }
    }

    /// What SCST's core serves under scst_user is not advertised under TCMU, where nothing
    /// would run it: EXTENDED COPY (3PC, REPORT SUPPORTED OPERATION CODES). COMPARE AND WRITE
    /// is the engine's.
    #[test]
    fn a_tcmu_disk_advertises_no_copy_offload() {
        use scst_accel_handler::scsi::CopyOffload;
        use scst_accel_handler::store::ram::RamStore;
        use scst_accel_handler::store::Store;
        let info = RamStore::new(512, 1 << 16, 1 << 12).info();
        let mut spec = disk("vol1");
        spec.exports.push(crate::config::ExportSpec {
            driver: crate::config::TargetDriver::CopyManager,
            target: "copy_manager_tgt".into(),
            lun: 1,
            enable: false,
        });
        let identity = crate::identity::resolve("vol1", &spec.identity, None, None).expect("identity");
        // The same disk under scst_user, a LUN of SCST's copy manager, advertises it: not
        // under TCMU, even with a copy_manager export in its configuration.
        let scst = Disk::try_new(spec.args.disk_config(&info, &identity, true)).expect("disk");
        assert_ne!(scst.capabilities().copy_offload, CopyOffload::None);
        let tcmu = Disk::try_new(engine_config(&spec, &info, &identity)).expect("disk");
        assert_eq!(tcmu.capabilities().copy_offload, CopyOffload::None);
        assert_eq!(tcmu.config().compare_and_write, CompareAndWriteBy::Handler);
        assert!(
            !tcmu.descriptor_sense(),
            "a small disk answers in fixed format, as LIO does"
        );
    }

    /// Above 2^32 blocks LIO's own sense for the LUN is descriptor format; the engine's follows.
    #[test]
    fn a_tcmu_disk_past_32_bit_lbas_answers_in_descriptor_sense() {
        assert!(!descriptor_sense_for(1 << 32), "last LBA FFFFFFFFh still fits");
        assert!(descriptor_sense_for((1 << 32) + 1));
        use scst_accel_handler::store::ram::RamStore;
        use scst_accel_handler::store::Store;
        let mut info = RamStore::new(512, 1 << 16, 1 << 12).info();
        info.num_blocks = (1 << 32) + 8;
        let spec = disk("big");
        let identity = crate::identity::resolve("big", &spec.identity, None, None).expect("identity");
        let tcmu = Disk::try_new(engine_config(&spec, &info, &identity)).expect("disk");
        assert!(tcmu.descriptor_sense());
        // A READ past the end: LOGICAL BLOCK ADDRESS OUT OF RANGE, in descriptor format (72h).
        let read16 = [0x88, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        let Err(sense) = tcmu.cdb_info(&read16) else {
            panic!("a READ past the end was accepted")
        };
        assert_eq!(sense.sense[0] & 0x7F, 0x72, "{:02x?}", sense.sense);
    }

    #[test]
    fn the_backstore_is_named_after_the_disk_and_the_hba_keeps_wwns_apart() {
        let settings = TcmuSettings {
            iscsi_portal: Some("127.0.0.1:3260".into()),
            ..TcmuSettings::default()
        };
        let spec = setup_spec(&disk("vol1"), &settings);
        assert_eq!((spec.hba, spec.name.as_str()), (7, "vol1"));
        assert_eq!(spec.dev_config, "scst-accel/ram");
        assert_eq!(
            (spec.loopback, spec.iscsi),
            (None, None),
            "the targets are shared"
        );
        let one = target_spec(&settings, &[disk("vol1")]);
        assert_eq!(one.hba, Some(7));
        assert_eq!(
            one.loopback,
            Some(("naa.500140500000000e".into(), "naa.500140500000000f".into()))
        );
        assert_eq!(one.iscsi.expect("iscsi").iqn, "iqn.2026-12.org.scst-accel:vol1");
        let two = target_spec(&settings, &[disk("a"), disk("b")]);
        assert_eq!(two.iscsi.expect("iscsi").iqn, "iqn.2026-12.org.scst-accel:hba7");
        let other = target_spec(
            &TcmuSettings {
                hba: 8,
                ..settings.clone()
            },
            &[disk("vol1")],
        );
        assert_ne!(other.loopback, one.loopback);
        let none = target_spec(
            &TcmuSettings {
                loopback: false,
                iscsi_portal: None,
                ..settings
            },
            &[disk("vol1")],
        );
        assert_eq!((none.loopback, none.iscsi), (None, None));
    }

    #[test]
    fn the_workers_figures_become_the_frontend_figures_status_renders_task_management_included() {
        let s = WorkerStats {
            started: 10,
            completed: 7,
            refused: 1,
            task_management: 2,
            errors: 3,
            escalations: 4,
            turns: 5,
        };
        let f = frontend_stats(s);
        assert_eq!(
            (
                f.exec,
                f.exec_errors,
                f.inflight,
                f.deadline_escalations,
                f.task_mgmt
            ),
            (10, 4, 3, 4, 2)
        );
        // And as status renders them: a disk's snapshot from its worker's last figures, in
        // the control socket's reply (`status --json`), its table (`status`) and the metrics.
        let (dir, _root, _config, mut service) = scratch_service("render", 4244, &["vol1"]);
        service.disks[0].last = Some(s);
        let snapshot = service.disks[0].snapshot();
        let reply = crate::control::status_reply(std::slice::from_ref(&snapshot), &[]);
        let frontend = &reply["disks"][0]["frontend"];
        assert_eq!(frontend["exec"], 10, "{reply}");
        assert_eq!(frontend["errors"], 4, "{reply}");
        assert_eq!(frontend["deadline_escalations"], 4, "{reply}");
        assert_eq!(frontend["task_mgmt"], 2, "{reply}");
        assert_eq!(reply["disks"][0]["in_flight"], 3, "{reply}");
        let table = crate::control::status_table(&reply);
        let row = table.lines().find(|l| l.starts_with("vol1")).unwrap_or_default();
        let figures: Vec<&str> = row.split_whitespace().rev().take(2).collect();
        assert_eq!(
            figures,
            ["2", "4"],
            "task management, then errors, from the right: {table}"
        );
        let text = crate::metrics::prometheus_text(&[snapshot], &[]);
        assert!(
            text.contains("scst_accel_task_management_total{disk=\"vol1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("scst_accel_deadline_escalations_total{disk=\"vol1\"} 4"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A configfs root that does not exist: the shared targets cannot be made, nothing
    /// starts, and the error says to mount configfs.
    #[test]
    fn without_configfs_nothing_starts_and_the_error_says_why() {
        let dir = std::env::temp_dir().join(format!("scst-accel-tcmu-svc-{}", std::process::id()));
        let config = ServiceConfig {
            service: crate::config::ServiceSettings {
                tcmu: TcmuSettings {
                    configfs_root: dir.join("target"),
                    ..TcmuSettings::default()
                },
                ..crate::config::ServiceSettings::default()
            },
            disks: vec![disk("a"), disk("b")],
        };
        let mut service = TcmuService::new(&config);
        let err = service
            .start(&target_spec(&service.settings, &config.disks))
            .expect_err("no configfs");
        assert!(err.message.contains("mount configfs"), "{}", err.message);
        assert_eq!(err.code, exit::UNAVAILABLE);
        assert_eq!(service.serving(), 0);
        assert!(service.disks.iter().all(|d| d.running.is_none()));
    }

    /// A scratch configfs tree with the HBA's parent but no UIO device behind it: every disk's
    /// backstore is made, its UIO device not found, and each is removed again; the targets go
    /// at the stop; the tree ends as it began. (Runs only where /sys/class/uio has no TCMU
    /// device of HBA 4242, which is everywhere but a host using that number.)
    /// A service over a scratch directory tree laid out as configfs's `target` (scratch `name`,
    /// HBA `hba`, the disks `names`): a plain directory tree stands in for configfs, whose
    /// attribute files the kernel's mkdir would make (KernelFs writes without creating), so
    /// no disk's ring opens. The scratch directory, its `target` root, the config, the service.
    fn scratch_service(
        name: &str,
        hba: u32,
        names: &[&str],
    ) -> (PathBuf, PathBuf, ServiceConfig, TcmuService) {
        let dir = std::env::temp_dir().join(format!("scst-accel-tcmu-{name}-{}", std::process::id()));
        let root = dir.join("target");
        std::fs::create_dir_all(root.join("core")).expect("scratch");
        let config = ServiceConfig {
            service: crate::config::ServiceSettings {
                state_dir: dir.join("state"),
                tcmu: TcmuSettings {
                    configfs_root: root.clone(),
                    hba,
                    loopback: false,
                    ..TcmuSettings::default()
                },
                ..crate::config::ServiceSettings::default()
            },
            disks: names.iter().map(|n| disk(n)).collect(),
        };
        let service = TcmuService::new(&config);
        (dir, root, config, service)
    }

    #[test]
    fn disks_that_cannot_open_their_ring_leave_nothing_behind() {
        let (dir, root, config, mut service) = scratch_service("svc2", 4242, &["a"]);
        service
            .start(&target_spec(&service.settings, &config.disks))
            .expect("the shared objects (the HBA) are made");
        assert_eq!(service.serving(), 0);
        let failure = service.disks[0].failure.clone().unwrap_or_default();
        // KernelFs cannot create configfs's attribute files: the first write fails, and the
        // backstore directory is removed again.
        assert!(failure.contains("control"), "{failure}");
        assert_eq!(service.disks[0].state, DiskState::Failed);
        assert!(
            root.join("core/user_4242").is_dir(),
            "the shared HBA stays until the stop"
        );
        assert!(!root.join("core/user_4242/a").exists());
        service.stop_all("Requested");
        assert!(!root.join("core/user_4242").exists(), "the HBA went at the stop");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stop asked for during the start (`start_with`'s question before each disk) starts no
    /// more disks: those left are `Stopped`, never made in configfs, and the requested stop
    /// exits 0 over them.
    #[test]
    fn a_stop_during_the_start_starts_no_more_disks() {
        let (dir, root, config, mut service) = scratch_service("svc3", 4243, &["a", "b", "c"]);
        let mut asked = Vec::new();
        service
            .start_with(&target_spec(&service.settings, &config.disks), |index, name| {
                asked.push((index, name.to_owned()));
                index < 1
            })
            .expect("the shared objects (the HBA) are made");
        assert_eq!(asked, [(0, "a".to_owned()), (1, "b".to_owned())]);
        // Disk a was tried (its ring cannot open here: failed); b and c were not.
        assert_eq!(service.disks[0].state, DiskState::Failed);
        assert_eq!(service.disks[1].state, DiskState::Stopped);
        assert_eq!(service.disks[2].state, DiskState::Stopped);
        assert!(!root.join("core/user_4243/b").exists(), "b was never made");
        // The disks not started count as stopped (0): the code is disk a's failure's.
        assert_eq!(
            service.exit_code(true),
            exit::of_service([service.disks[0].exit_code], true)
        );
        assert_eq!((service.disks[1].exit_code, service.disks[2].exit_code), (0, 0));
        service.stop_all("Requested");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A service whose one disk serves the simulated kernel's ring over a RAM store of 2048
    /// blocks of 512, with its backstore "adopted" from a scratch tree laid out as configfs
    /// would (attribute files included), and the simulated kernel's side.
    struct Rig {
        service: TcmuService,
        sim: scst_accel_handler::tcmu::sim::SimKernel,
        kernel: std::os::unix::net::UnixStream,
        root: PathBuf,
        dir: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The backstore's attribute files in the rig's scratch configfs.
    const RIG_ATTRIBUTES: [&str; 5] = [
        "control",
        "enable",
        "attrib/dev_size",
        "action/block_dev",
        "action/reset_ring",
    ];

    fn serving_rig(tag: &str) -> Rig {
        serving_rig_on(tag, Arc::new(KernelFs))
    }

    /// [`serving_rig`] with its configfs written through `fs`.
    fn serving_rig_on(tag: &str, fs: ServiceFs) -> Rig {
        use scst_accel_handler::store::ram::RamStore;
        serving_rig_over(tag, fs, Arc::new(RamStore::new(512, 2048, 256)))
    }

    /// [`serving_rig_on`] over `store` (512-byte blocks, 2048 of them).
    fn serving_rig_over(tag: &str, fs: ServiceFs, store: Arc<dyn scst_accel_handler::store::Store>) -> Rig {
        use scst_accel_handler::scsi::DiskConfig;
        use scst_accel_handler::tcmu::sim::SimConfig;
        use scst_accel_handler::tcmu::sim::SimKernel;
        use scst_accel_handler::tcmu::uio::UioEvents;
        use scst_accel_handler::tcmu::uio::UioInfo;
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;

        let dir = std::env::temp_dir().join(format!("scst-accel-tcmu-rig-{tag}-{}", std::process::id()));
        let root = dir.join("target");
        let backstore = root.join("core/user_4243/d0");
        std::fs::create_dir_all(backstore.join("attrib")).expect("scratch");
        std::fs::create_dir_all(backstore.join("action")).expect("scratch");
        for f in RIG_ATTRIBUTES {
            std::fs::write(backstore.join(f), "").expect("attribute");
        }
        let config = ServiceConfig {
            service: crate::config::ServiceSettings {
                tcmu: TcmuSettings {
                    configfs_root: root.clone(),
                    hba: 4243,
                    loopback: false,
                    adopt: true,
                    drain: Duration::from_secs(1),
                    ..TcmuSettings::default()
                },
                ..crate::config::ServiceSettings::default()
            },
            disks: vec![disk("d0")],
        };
        let mut service = TcmuService::new(&config);
        service.fs = Arc::clone(&fs);
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 64 * 1024,
            flags: scst_accel_handler::tcmu::abi::mailbox_flags::CAP_READ_LEN,
        });
        let (ours, kernel) = UnixStream::pair().expect("pair");
        kernel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let info = UioInfo {
            index: 3,
            name: TcmuUioName::parse("tcm-user/4243/d0/scst-accel/ram").expect("name"),
            map_size: sim.region().len(),
        };
        let device = UioDevice::from_parts(info, sim.region().clone(), UioEvents::new(OwnedFd::from(ours)));
        let backend = Backend::from_store(store, 1 << 22);
        let engine = Arc::new(Disk::new(DiskConfig::for_store(&backend.store.info())));
        let exec = Executor::new(
            Arc::clone(&engine),
            backend.store.open_queue().expect("queue"),
            Arc::clone(&backend.pool),
        );
        let capacity = exec.capacity_notice();
        let worker = TcmuWorker::spawn(
            "tcmu-rig",
            device,
            exec,
            WorkerConfig {
                idle_poll: Duration::from_millis(10),
                drain_budget: Duration::from_secs(1),
                ..WorkerConfig::default()
            },
        )
        .expect("spawn");
        let setup = Setup::adopt(fs, &root, &setup_spec(&config.disks[0], &service.settings)).expect("adopt");
        let d = &mut service.disks[0];
        d.block_size = 512;
        d.num_blocks = 2048;
        d.state = DiskState::Serving;
        d.running = Some(Running {
            backend,
            engine,
            capacity,
            setup,
            worker,
            uio_index: 3,
        });
        Rig {
            service,
            sim,
            kernel,
            root,
            dir,
        }
    }

    /// One command through the ring (8 bytes of Data-In at most): its status and sense key,
    /// ASC, ASCQ (fixed format).
    fn run_command(rig: &mut Rig, id: u16, cdb: &[u8]) -> (u8, [u8; 3]) {
        use scst_accel_handler::tcmu::abi::Iovec;
        use std::io::Read;
        use std::io::Write;
        let iov = [Iovec {
            iov_base: rig.sim.data_off() as u64,
            iov_len: 8,
        }];
        rig.sim.post_cmd(id, cdb, &iov, &[]).expect("post");
        rig.kernel.write_all(&1u32.to_ne_bytes()).expect("event");
        let mut kick = [0u8; 4];
        rig.kernel.read_exact(&mut kick).expect("kicked");
        let done = rig.sim.reap().expect("reap");
        assert_eq!(done.len(), 1);
        let sense = done[0].sense;
        (done[0].status, [sense[2] & 0x0f, sense[12], sense[13]])
    }

    /// READ CAPACITY(10) through the simulated ring: the last LBA the engine reports.
    fn read_capacity(rig: &mut Rig, id: u16) -> u32 {
        assert_eq!(
            run_command(rig, id, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (0, [0, 0, 0])
        );
        let data = rig.sim.read_data(rig.sim.data_off(), 4);
        u32::from_be_bytes([data[0], data[1], data[2], data[3]])
    }

    /// What the service loop does with its disks' stops ([`TcmuService::collect_stops`] every
    /// look), until none runs (at most 10 s).
    fn collect_all_stops(service: &mut TcmuService) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.stopping() > 0 && Instant::now() < deadline {
            service.collect_stops();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(service.stopping(), 0, "every stop ended");
    }

    fn event(kind: EventKind, device: &str) -> DeviceEvent {
        DeviceEvent {
            kind,
            device: device.into(),
            minor: Some(3),
            device_id: Some(1),
            dev_size: None,
            dev_config: None,
            write_cache: None,
        }
    }

    #[test]
    fn a_reconfigured_size_is_served_and_a_removed_backstore_stops_its_disk() {
        let mut rig = serving_rig("events");
        assert_eq!(read_capacity(&mut rig, 1), 2047);
        // Another handler's device, and our own ADDED: ignored.
        rig.service
            .on_event(&event(EventKind::Removed, "tcm-user/9/other/tcmu-runner/x"));
        rig.service
            .on_event(&event(EventKind::Added, "tcm-user/4243/d0/scst-accel/ram"));
        assert_eq!(rig.service.serving(), 1);
        // dev_size written through configfs: the store grows, the next command (INQUIRY
        // exempt) is told CAPACITY DATA HAS CHANGED, once, and READ CAPACITY says so.
        rig.service.on_event(&DeviceEvent {
            dev_size: Some(4096 * 512),
            ..event(EventKind::Reconfig, "tcm-user/4243/d0/scst-accel/ram")
        });
        assert_eq!(
            run_command(&mut rig, 2, &[0x12, 0, 0, 0, 8, 0]).0,
            0,
            "INQUIRY is exempt"
        );
        assert_eq!(
            run_command(&mut rig, 3, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (
                scst_accel_handler::abi::sam_status::CHECK_CONDITION,
                [0x06, 0x2a, 0x09]
            ),
            "the unit attention"
        );
        assert_eq!(read_capacity(&mut rig, 4), 4095, "once, then the new size");
        // A size the RAM store cannot take (a shrink): refused, the size served stays, and no
        // unit attention.
        rig.service.on_event(&DeviceEvent {
            dev_size: Some(1024 * 512),
            ..event(EventKind::Reconfig, "tcm-user/4243/d0/scst-accel/ram")
        });
        assert_eq!(read_capacity(&mut rig, 5), 4095);
        // The status figures: five commands, none in flight, one answered CHECK CONDITION.
        let snapshot = rig.service.disks[0].snapshot();
        assert_eq!(snapshot.num_blocks, 4096);
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.service.disks[0].snapshot().frontend.unwrap_or_default().exec < 5
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let f = rig.service.disks[0].snapshot().frontend.expect("figures");
        assert_eq!((f.exec, f.exec_errors, f.inflight), (5, 1, 0));
        // The kernel destroys the backstore (an operator's rmdir): the disk is stopped, its
        // store drained, shown failed; its configfs objects, gone already, are not an error.
        std::fs::remove_dir_all(rig.root.join("core/user_4243/d0")).expect("the kernel's rmdir");
        rig.service
            .on_event(&event(EventKind::Removed, "tcm-user/4243/d0/scst-accel/ram"));
        assert!(rig.service.disks[0].running.is_none());
        collect_all_stops(&mut rig.service);
        let d = &rig.service.disks[0];
        assert_eq!(d.state, DiskState::Failed);
        assert!(
            d.failure.as_deref().unwrap_or("").contains("REMOVED_DEVICE"),
            "{:?}",
            d.failure
        );
        let record = d.teardowns.last().expect("a teardown record");
        assert_eq!(
            (record.trigger.as_str(), record.unmap_permitted),
            ("KernelRemoved", true)
        );
        assert_eq!(d.exit_code, 0, "nothing was left behind");
        assert_eq!(rig.service.serving(), 0);
    }

    #[test]
    fn the_control_sockets_view_answers_from_the_service_loop() {
        let mut rig = serving_rig("view");
        let (tx, requests) = crossbeam_channel::unbounded();
        let view = ServiceHandle::new(tx);
        let asker = std::thread::spawn(move || {
            let snapshot = view.snapshot().expect("answered");
            let grown = view.resize("d0", 3072 * 512);
            let odd = view.resize("d0", 1000);
            let dump = view.dump("d0");
            let wedged = view.wedged(Duration::from_secs(10));
            let unknown = view.dump("nope");
            (snapshot, grown, odd, dump, unknown, wedged)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !asker.is_finished() && Instant::now() < deadline {
            if let Ok(r) = requests.recv_timeout(Duration::from_millis(20)) {
                rig.service.answer(r);
            }
        }
        let (snapshot, grown, odd, dump, unknown, wedged) = asker.join().expect("asker");
        assert_eq!(wedged, Ok(Vec::new()), "a serving worker turns every 10 ms");
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            (snapshot[0].name.as_str(), snapshot[0].state),
            ("d0", DiskState::Serving)
        );
        assert_eq!(grown, Ok(3072));
        assert_eq!(
            std::fs::read_to_string(rig.root.join("core/user_4243/d0/attrib/dev_size")).expect("dev_size"),
            (3072 * 512).to_string(),
            "the kernel was told the new size"
        );
        assert!(odd
            .expect_err("not a multiple")
            .to_string()
            .contains("block size"));
        assert!(dump.expect("dump").contains("/dev/uio3"));
        assert!(unknown.expect_err("unknown").to_string().contains("no disk nope"));
        assert_serves_3072_blocks_after_its_attention(&mut rig);
        // The stop: drained, unmapped, the backstore and the HBA removed.
        stop_serving_rig(&mut rig);
        assert!(
            !rig.root.join("core/user_4243").exists(),
            "backstore and HBA removed"
        );
    }

    /// The kernel's removal seen by the worker first (its device gone: here the event fd's
    /// peer closes) with the backstore gone from configfs: a removal, not a failure of ours;
    /// the same end with the backstore still there is the worker's failure (exit 70).
    #[test]
    fn a_worker_that_saw_its_device_go_is_a_removal_only_if_the_backstore_went() {
        for removed in [true, false] {
            let mut rig = serving_rig(if removed { "gone" } else { "failed" });
            if removed {
                std::fs::remove_dir_all(rig.root.join("core/user_4243/d0")).expect("the kernel's rmdir");
            }
            let Rig { kernel, .. } = &mut rig;
            kernel
                .shutdown(std::net::Shutdown::Both)
                .expect("the device goes");
            let deadline = Instant::now() + Duration::from_secs(5);
            let ended = |s: &TcmuService| {
                s.disks[0]
                    .running
                    .as_ref()
                    .is_some_and(|r| r.worker.is_finished())
            };
            while !ended(&rig.service) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Until it is reaped, the watchdog's health check names it.
            assert_eq!(
                rig.service.wedged(Duration::from_secs(10)),
                ["disk d0: its worker ended"]
            );
            while rig.service.serving() == 1 && Instant::now() < deadline {
                rig.service.reap_finished();
                std::thread::sleep(Duration::from_millis(10));
            }
            collect_all_stops(&mut rig.service);
            let d = &rig.service.disks[0];
            assert_eq!(d.state, DiskState::Failed, "removed {removed}");
            let trigger = d.teardowns.last().map(|t| t.trigger.clone()).unwrap_or_default();
            if removed {
                assert_eq!((trigger.as_str(), d.exit_code), (KERNEL_REMOVED, 0));
                assert!(d
                    .failure
                    .as_deref()
                    .unwrap_or("")
                    .contains("removed its backstore"));
            } else {
                assert_eq!((trigger.as_str(), d.exit_code), ("WorkerEnded", exit::SOFTWARE));
                // Before its LUNs went, the dead ring was emptied (BUSY, retried) and the
                // device blocked, so the LUNs' removal waited for no command in it.
                let action = |f: &str| {
                    std::fs::read_to_string(rig.root.join("core/user_4243/d0/action").join(f))
                        .expect("action")
                };
                assert_eq!(
                    (action("block_dev"), action("reset_ring")),
                    ("1".to_owned(), "1".to_owned()),
                    "the ended worker's ring was reset before its LUNs were removed"
                );
            }
        }
    }

    /// An adopted backstore's ring is emptied before any worker maps it (block, reset with
    /// BUSY, unblock): its commands may include some the kernel failed already, which must not
    /// run again. Where the kernel refuses the reset (here: no `action/` files), the disk does
    /// not start, and says why, before its UIO device is even looked for.
    #[test]
    fn an_adopted_backstores_ring_is_reset_before_it_is_served() {
        for with_actions in [true, false] {
            let dir = std::env::temp_dir().join(format!(
                "scst-accel-tcmu-adopt-{with_actions}-{}",
                std::process::id()
            ));
            let root = dir.join("target");
            let backstore = root.join("core/user_4244/a");
            std::fs::create_dir_all(backstore.join("attrib")).expect("scratch");
            let mut files = vec!["control", "enable", "attrib/dev_size", "attrib/cmd_time_out"];
            if with_actions {
                std::fs::create_dir_all(backstore.join("action")).expect("scratch");
                files.extend(["action/block_dev", "action/reset_ring"]);
            }
            for f in &files {
                std::fs::write(backstore.join(f), "").expect("attribute");
            }
            std::fs::write(backstore.join("attrib/cmd_time_out"), "30\n").expect("cmd_time_out");
            let config = ServiceConfig {
                service: crate::config::ServiceSettings {
                    state_dir: dir.join("state"),
                    tcmu: TcmuSettings {
                        configfs_root: root.clone(),
                        hba: 4244,
                        loopback: false,
                        adopt: true,
                        ..TcmuSettings::default()
                    },
                    ..crate::config::ServiceSettings::default()
                },
                disks: vec![disk("a")],
            };
            let mut service = TcmuService::new(&config);
            service
                .start(&target_spec(&service.settings, &config.disks))
                .expect("the shared objects (the HBA) are there");
            // No UIO device of HBA 4244 here: the disk fails after the reset, or at it.
            assert_eq!(service.serving(), 0);
            let failure = service.disks[0].failure.clone().unwrap_or_default();
            if with_actions {
                let read = |f: &str| std::fs::read_to_string(backstore.join(f)).expect("action");
                // A plain file keeps the last write: unblocked (0) after the reset (1).
                assert_eq!(
                    (read("action/reset_ring"), read("action/block_dev")),
                    ("1".to_owned(), "0".to_owned()),
                    "the adopted ring was reset and the device unblocked again"
                );
                assert!(failure.contains("udev"), "{failure}");
                // The adopted disk's WCE was settled before its ring was looked for: with no
                // record of the killed run's (none here), WCE 0, recorded (crate::mode_state).
                let mode = crate::mode_state::ModeState::new(&dir.join("state"), "a").expect("name");
                assert_eq!(
                    mode.load().expect("recorded"),
                    Some(scst_accel_handler::scsi::CurrentMode { wce: false })
                );
            } else {
                assert!(
                    failure.contains("resetting the adopted backstore's ring")
                        || failure.contains("blocking the adopted backstore"),
                    "{failure}"
                );
                assert!(failure.contains("not replayed"), "{failure}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// The worker's deadline stays below half the backstore's `cmd_time_out`; with none (0)
    /// the disk's own; unreadable, below half the kernel's default.
    #[test]
    fn the_workers_deadline_comes_before_the_kernels_command_timeout() {
        let s = Duration::from_secs;
        assert_eq!(worker_command_timeout("a", s(60), Ok(Some(s(30)))), s(15));
        assert_eq!(worker_command_timeout("a", s(5), Ok(Some(s(30)))), s(5));
        assert_eq!(worker_command_timeout("a", s(60), Ok(None)), s(60));
        let unreadable = ConfigfsError {
            action: "read",
            path: "attrib/cmd_time_out".into(),
            hint: String::new(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(worker_command_timeout("a", s(60), Err(unreadable)), s(15));
    }

    /// The scratch configfs of [`serving_rig`] as the kernel's can also behave: the ring's
    /// reset refused (`action/reset_ring`, EINVAL) and the removal of one LUN link held until
    /// [`StallingFs::release`] (the kernel's LUN removal waits for every command of the LUN,
    /// those in a dead ring until `cmd_time_out`); held at most 30 s, so a test that fails
    /// still ends.
    struct StallingFs {
        stall: PathBuf,
        stalled: std::sync::atomic::AtomicBool,
        released: std::sync::atomic::AtomicBool,
    }

    impl StallingFs {
        fn release(&self) {
            self.released.store(true, std::sync::atomic::Ordering::Release);
        }

        fn stalled(&self) -> bool {
            self.stalled.load(std::sync::atomic::Ordering::Acquire)
        }
    }

    /// A RAM store whose failure can be set (a device gone under it).
    struct FailingStore {
        ram: scst_accel_handler::store::ram::RamStore,
        failed: std::sync::OnceLock<String>,
    }

    impl scst_accel_handler::store::Store for FailingStore {
        fn info(&self) -> scst_accel_handler::store::StoreInfo {
            self.ram.info()
        }

        fn open_queue(
            &self,
        ) -> Result<Box<dyn scst_accel_handler::store::StoreQueue>, scst_accel_handler::store::StoreError>
        {
            self.ram.open_queue()
        }

        fn failure(&self) -> Option<String> {
            self.failed.get().cloned()
        }
    }

    /// A store that fails (its device gone, a fatal error its recovery could not clear) stops
    /// its disk under TCMU too, shown failed with exit 74, as under scst_user; it used to serve
    /// on, answering errors, with nothing in status.
    #[test]
    fn a_failed_store_stops_its_disk() {
        let store = Arc::new(FailingStore {
            ram: scst_accel_handler::store::ram::RamStore::new(512, 2048, 256),
            failed: std::sync::OnceLock::new(),
        });
        let mut rig = serving_rig_over("store-failed", Arc::new(KernelFs), store.clone());
        rig.service.reap_finished();
        assert!(
            rig.service.disks[0].running.is_some(),
            "a healthy store serves on"
        );
        let _ = store.failed.set("the device is gone".into());
        rig.service.reap_finished();
        assert!(rig.service.disks[0].running.is_none(), "the disk is stopped");
        collect_all_stops(&mut rig.service);
        let d = &rig.service.disks[0];
        assert_eq!((d.state, d.exit_code), (DiskState::Failed, exit::IOERR));
        assert!(
            d.failure.as_deref().unwrap_or("").contains("the device is gone"),
            "{:?}",
            d.failure
        );
        assert_eq!(
            d.teardowns.last().map(|t| t.trigger.as_str()),
            Some("StoreFailed")
        );
    }

    /// A RAM store whose queues' `submit` blocks once `stuck` is set, until `released` (at
    /// most 30 s, so a test that fails still ends): a store call stuck in a device recovery or
    /// a VFIO reset that does not return.
    struct StuckStore {
        ram: scst_accel_handler::store::ram::RamStore,
        stuck: Arc<std::sync::atomic::AtomicBool>,
        entered: Arc<std::sync::atomic::AtomicBool>,
        released: Arc<std::sync::atomic::AtomicBool>,
    }

    struct StuckQueue {
        inner: Box<dyn scst_accel_handler::store::StoreQueue>,
        stuck: Arc<std::sync::atomic::AtomicBool>,
        entered: Arc<std::sync::atomic::AtomicBool>,
        released: Arc<std::sync::atomic::AtomicBool>,
    }

    impl scst_accel_handler::store::Store for StuckStore {
        fn info(&self) -> scst_accel_handler::store::StoreInfo {
            self.ram.info()
        }

        fn open_queue(
            &self,
        ) -> Result<Box<dyn scst_accel_handler::store::StoreQueue>, scst_accel_handler::store::StoreError>
        {
            Ok(Box::new(StuckQueue {
                inner: self.ram.open_queue()?,
                stuck: Arc::clone(&self.stuck),
                entered: Arc::clone(&self.entered),
                released: Arc::clone(&self.released),
            }))
        }
    }

    impl scst_accel_handler::store::StoreQueue for StuckQueue {
        fn submit(
            &mut self,
            token: &mut scst_accel_handler::store::StoreToken<'_>,
            batch: &mut Vec<scst_accel_handler::store::StoreRequest>,
        ) -> Result<(), scst_accel_handler::store::StoreError> {
            use std::sync::atomic::Ordering;
            if self.stuck.load(Ordering::Acquire) {
                self.entered.store(true, Ordering::Release);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !self.released.load(Ordering::Acquire) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            self.inner.submit(token, batch)
        }

        fn reap(&mut self, out: &mut Vec<scst_accel_handler::store::StoreCompletion>) -> usize {
            self.inner.reap(out)
        }

        fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            self.inner.notify_fd()
        }

        fn in_flight(&self) -> usize {
            self.inner.in_flight()
        }
    }

    /// Sets a flag however the test ends (a failed assertion must not leave a thread stuck).
    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The service's stop with a worker stuck in a store call far longer than the worker's
    /// stop bound (twice the drain budget and a second, 3 s here): the stop ends at that
    /// bound instead of waiting for the call (it joined the worker without limit), and the
    /// disk is failed, exit 70, its pool leaked without the drain's proof and its backstore
    /// left in configfs (the left worker still maps its ring). The service's bound, which
    /// systemd's extended stop timeout covers, is never below the worker's.
    #[test]
    fn a_worker_stuck_in_a_store_call_fails_its_disk_within_the_stops_bound() {
        use std::sync::atomic::Ordering;
        let store = Arc::new(StuckStore {
            ram: scst_accel_handler::store::ram::RamStore::new(512, 2048, 256),
            stuck: Arc::default(),
            entered: Arc::default(),
            released: Arc::default(),
        });
        let _release = SetOnDrop(Arc::clone(&store.released));
        let mut rig = serving_rig_over("stuck", Arc::new(KernelFs), store.clone());
        let bound = rig.service.disks[0]
            .running
            .as_ref()
            .map(|r| r.worker.stop_bound())
            .unwrap_or_default();
        assert_eq!(bound, Duration::from_secs(3));
        assert!(
            rig.service.stop_budget() >= bound + STOP_SLACK,
            "the service's bound covers the worker's"
        );
        store.stuck.store(true, Ordering::Release);
        let iov = [scst_accel_handler::tcmu::abi::Iovec {
            iov_base: rig.sim.data_off() as u64,
            iov_len: 512,
        }];
        rig.sim
            .post_cmd(1, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], &iov, &[])
            .expect("post");
        std::io::Write::write_all(&mut rig.kernel, &1u32.to_ne_bytes()).expect("event");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.entered.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            store.entered.load(Ordering::Acquire),
            "the worker is in the store call"
        );
        let started = Instant::now();
        rig.service.stop_all("Requested");
        let took = started.elapsed();
        assert!(
            took >= bound && took < bound + Duration::from_secs(4),
            "the stop took {took:?}, its worker's bound is {bound:?}"
        );
        let d = &rig.service.disks[0];
        assert_eq!((d.state, d.exit_code), (DiskState::Failed, exit::SOFTWARE));
        let teardown = d.teardowns.last().expect("recorded");
        assert!(!teardown.unmap_permitted, "{teardown:?}");
        assert!(
            rig.root.join("core/user_4243/d0").exists(),
            "the backstore whose ring the left worker maps stays"
        );
    }

    /// configfs as target_core_user answers with nobody listening to its netlink group: an
    /// enabled backstore's `attrib/dev_size` write fails with ESRCH (`tcmu_dev_size_store`).
    struct UnheardFs;

    impl ConfigfsFs for UnheardFs {
        fn mkdir(&self, path: &Path) -> std::io::Result<()> {
            KernelFs.mkdir(path)
        }

        fn write_attr(&self, path: &Path, value: &str) -> std::io::Result<()> {
            if path.ends_with("attrib/dev_size") {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            KernelFs.write_attr(path, value)
        }

        fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
            KernelFs.symlink(target, link)
        }

        fn unlink(&self, link: &Path) -> std::io::Result<()> {
            KernelFs.unlink(link)
        }

        fn rmdir(&self, path: &Path) -> std::io::Result<()> {
            KernelFs.rmdir(path)
        }
    }

    /// A resize with nobody listening to the kernel's events (netlink off, no tcmu-runner):
    /// the kernel refuses its `dev_size` write, and the resize is done all the same (the disk
    /// serves the new size; the kernel's figure is its own), not reported failed.
    #[test]
    fn a_resize_nobody_hears_is_served_though_the_kernel_keeps_its_size() {
        let mut rig = serving_rig_on("unheard", Arc::new(UnheardFs));
        assert_eq!(rig.service.resize("d0", 3072 * 512, true), Ok(3072));
        assert_eq!(rig.service.disks[0].num_blocks, 3072);
        assert_serves_3072_blocks_after_its_attention(&mut rig);
        stop_serving_rig(&mut rig);
    }

    /// After a resize to 3072 blocks of 512: the next command is told CAPACITY DATA HAS
    /// CHANGED, and READ CAPACITY answers the new last LBA.
    fn assert_serves_3072_blocks_after_its_attention(rig: &mut Rig) {
        assert_eq!(
            run_command(rig, 1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (
                scst_accel_handler::abi::sam_status::CHECK_CONDITION,
                [0x06, 0x2a, 0x09]
            ),
            "the resize's unit attention first"
        );
        assert_eq!(read_capacity(rig, 2), 3071);
    }

    /// A requested stop of a [`serving_rig`]'s disk, which ends Stopped with exit 0 (the
    /// attribute files go first here by hand: configfs removes them with their directory, a
    /// plain one does not).
    fn stop_serving_rig(rig: &mut Rig) {
        for f in RIG_ATTRIBUTES {
            std::fs::remove_file(rig.root.join("core/user_4243/d0").join(f)).expect("rm");
        }
        std::fs::remove_dir(rig.root.join("core/user_4243/d0/attrib")).expect("rm");
        std::fs::remove_dir(rig.root.join("core/user_4243/d0/action")).expect("rm");
        rig.service.stop_all("Requested");
        let d = &rig.service.disks[0];
        assert_eq!((d.state, d.exit_code), (DiskState::Stopped, 0));
    }

    impl ConfigfsFs for StallingFs {
        fn mkdir(&self, path: &Path) -> std::io::Result<()> {
            KernelFs.mkdir(path)
        }

        fn write_attr(&self, path: &Path, value: &str) -> std::io::Result<()> {
            if path.ends_with("action/reset_ring") {
                return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
            }
            KernelFs.write_attr(path, value)
        }

        fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
            KernelFs.symlink(target, link)
        }

        fn unlink(&self, link: &Path) -> std::io::Result<()> {
            if link == self.stall {
                self.stalled.store(true, std::sync::atomic::Ordering::Release);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !self.released.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            KernelFs.unlink(link)
        }

        fn rmdir(&self, path: &Path) -> std::io::Result<()> {
            KernelFs.rmdir(path)
        }
    }

    /// Releases a [`StallingFs`] however the test ends (a failed assertion must not leave the
    /// service loop's thread held, which the scope would wait for).
    struct Release<'a>(&'a StallingFs);

    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    /// A serving disk (configfs under a scratch directory, `tag` in its name) exported as LUN 0
    /// of a tcm_loop target `wwn` (initiator `nexus`) whose LUN link's removal stalls until the
    /// test releases it ([`StallingFs`]); the scratch directory and the TPG with it.
    fn serving_with_a_stalling_lun(
        tag: &str,
        wwn: &str,
        nexus: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, Arc<StallingFs>, Rig) {
        let dir = std::env::temp_dir().join(format!("scst-accel-tcmu-rig-{tag}-{}", std::process::id()));
        let tpg = dir.join(format!("target/loopback/{wwn}/tpgt_1"));
        let fs = Arc::new(StallingFs {
            stall: tpg.join("lun/lun_0/d0"),
            stalled: false.into(),
            released: false.into(),
        });
        let mut rig = serving_rig_on(tag, Arc::clone(&fs) as ServiceFs);
        // The shared tcm_loop TPG (there already, adopted) and the disk's LUN 0 in it.
        std::fs::create_dir_all(tpg.join("lun")).expect("scratch");
        let targets = Targets::create(
            Arc::clone(&fs) as ServiceFs,
            &rig.root,
            &TargetSpec {
                hba: None,
                loopback: Some((wwn.into(), nexus.into())),
                iscsi: None,
            },
            true,
        )
        .expect("targets");
        rig.service.disks[0]
            .running
            .as_mut()
            .expect("serving")
            .setup
            .export_lun(&targets, 0, "d0")
            .expect("LUN 0");
        (dir, tpg, fs, rig)
    }

    /// A disk whose worker ended and whose ring the kernel will not reset: its LUN's removal
    /// blocks (here for as long as the test holds it). The service loop must still turn: it
    /// takes the ended worker, starts the stop, answers a snapshot showing the disk stopping
    /// while the removal blocks, settles the disk once the removal ends (failed, exit 70: the
    /// reset was refused; its LUN gone), and only then, with nothing left to serve, returns.
    /// With the stop run on the loop (as before) the snapshot goes unanswered until the
    /// removal ends.
    #[test]
    fn a_lun_removal_that_blocks_does_not_stop_the_service_loop() {
        let (dir, tpg, fs, mut rig) =
            serving_with_a_stalling_lun("stall", "naa.5001405000000042", "naa.5001405000000043");
        assert!(fs.stall.exists(), "LUN 0 linked");
        // The worker ends (its device went), the backstore stays.
        rig.kernel
            .shutdown(std::net::Shutdown::Both)
            .expect("the device goes");
        let (tx, requests) = crossbeam_channel::unbounded();
        let view = ServiceHandle::new(tx);
        let (_signal, signals) = crossbeam_channel::bounded(1);
        let notifier = Notifier::disabled();
        let service = &mut rig.service;
        std::thread::scope(|scope| {
            let _release = Release(&fs);
            let turning = scope.spawn(|| {
                let _requested = serve_until_stop(
                    service,
                    &requests,
                    &crossbeam_channel::never(),
                    &signals,
                    &notifier,
                    String::new(),
                );
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !fs.stalled() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                fs.stalled(),
                "the ended worker was taken and its LUN's removal began"
            );
            let asked = Instant::now();
            let snapshot = view.snapshot();
            assert!(
                asked.elapsed() < Duration::from_secs(3),
                "answered in {:?}",
                asked.elapsed()
            );
            let snapshot = snapshot.expect("the loop answers while the LUN's removal blocks");
            assert_eq!(snapshot[0].state, DiskState::Stopping);
            assert!(!turning.is_finished(), "a disk still stopping keeps the loop");
            fs.release();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !turning.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(turning.is_finished(), "the loop ended once the stop was settled");
        });
        let d = &rig.service.disks[0];
        assert_eq!((d.state, d.exit_code), (DiskState::Failed, exit::SOFTWARE));
        let trigger = d.teardowns.last().map(|t| t.trigger.clone()).unwrap_or_default();
        assert_eq!(trigger, "WorkerEnded");
        assert!(!tpg.join("lun/lun_0").exists(), "its LUN is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A disk's stop that does not end (its LUN's removal held in the kernel: a dead ring's
    /// commands wait for `cmd_time_out`, never if 0) is left at the service stop's bound,
    /// `stop_budget` (here the drains' own: twice 100 ms, 5 s of slack and a second, with
    /// `stop_timeout` 0): the stop returns, the disk failed, exit 70, and the process could
    /// exit within what systemd was told. Without the bound the stop waited for the removal.
    #[test]
    fn a_disk_stop_that_overruns_the_services_bound_is_left_and_fails_its_disk() {
        let (dir, _tpg, fs, mut rig) =
            serving_with_a_stalling_lun("overrun", "naa.5001405000000044", "naa.5001405000000045");
        let _release = Release(&fs);
        rig.service.stop_timeout = Duration::ZERO;
        rig.service.settings.drain = Duration::from_millis(100);
        let budget = rig.service.stop_budget();
        assert_eq!(budget, Duration::from_millis(6200));
        let started = Instant::now();
        rig.service.stop_all("Requested");
        let took = started.elapsed();
        assert!(fs.stalled(), "the LUN's removal was held");
        assert!(
            took >= budget && took < budget + Duration::from_secs(3),
            "the stop took {took:?}, its bound is {budget:?}"
        );
        let d = &rig.service.disks[0];
        assert_eq!((d.state, d.exit_code), (DiskState::Failed, exit::SOFTWARE));
        assert!(
            d.failure.as_deref().unwrap_or("").contains("overran"),
            "{:?}",
            d.failure
        );
        assert!(d.stopping.is_none(), "left, not awaited");
        fs.release();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The signal forwarder never blocks: with the loop's channel full (8 stops it has not
    /// read, as when the loop has already stopped reading) and the receiver alive, every
    /// further signal is dropped and the forwarder ends with its iterator, so the scope that
    /// joins it ends. With a blocking send it waited for ever on the ninth. SIGHUP and SIGUSR1
    /// are not forwarded.
    #[test]
    fn the_signal_forwarder_ends_with_its_signals_even_when_the_loop_reads_none() {
        use signal_hook::consts::SIGHUP;
        use signal_hook::consts::SIGUSR1;
        let (tx, rx) = crossbeam_channel::bounded(8);
        let signals: Vec<i32> = [SIGHUP, SIGUSR1]
            .into_iter()
            .chain(std::iter::repeat_n(SIGTERM, 20))
            .collect();
        let forwarder = std::thread::spawn(move || forward_stop_signals(signals.into_iter(), &tx));
        let joined = scst_accel_hal::locks::join_bounded(forwarder, Duration::from_secs(5));
        assert!(
            matches!(joined, Ok(Ok(()))),
            "the forwarder blocked on the full channel"
        );
        let forwarded: Vec<i32> = rx.try_iter().collect();
        assert_eq!(
            forwarded,
            vec![SIGTERM; 8],
            "stops only, as many as the channel holds"
        );
    }
}
