//! `scst-accel serve`: the service an appliance boots. Registers every configured disk on
//! `/dev/scst_user` (or, with `--loopback`, on the in-process loopback kernel), serves them until
//! SIGINT/SIGTERM, then tears them all down in parallel, each bounded, and exits with a code a
//! service manager can act on (see [`crate::exit`]).
//!
//! The disks come from `--config FILE` or, for one disk, from the command line. With a file, a
//! disk flag given on the command line overrides that setting of the file's disk; it is refused
//! (exit 64) when the file declares more than one disk, where it would be ambiguous.

use crate::backend::BoardArg;
use crate::config::DiskSpec;
use crate::config::Frontend;
use crate::config::ServiceConfig;
use crate::config::ServiceSettings;
use crate::control::ControlServer;
use crate::disk::DiskArgs;
use crate::exit;
use crate::identity::IdentityFlags;
use crate::metrics::MetricsServer;
use crate::notify::Notifier;
use crate::notify::Watchdog;
use crate::service::KernelSide;
use crate::service::Service;
use crate::service::ServiceHandle;
use crate::service::StartOptions;
use crate::status::ServiceView;
use crate::tcmu::FrontendArg;
use crate::tcmu::TcmuArgs;
use clap::parser::ValueSource;
use clap::ArgMatches;
use clap::Args;
use scst_accel_handler::abi::DEV_USER_PATH;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::transport::version;
use signal_hook::consts::SIGHUP;
use signal_hook::consts::SIGINT;
use signal_hook::consts::SIGTERM;
use signal_hook::consts::SIGUSR1;
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `serve` arguments.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The service's configuration file (TOML: any number of disks, exports, identities;
    /// see examples/appliance.toml). Without it, one disk from the flags below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub disk: DiskArgs,
    /// The scst_user device node (overrides service.scst_device).
    #[arg(long, default_value = DEV_USER_PATH)]
    pub device: PathBuf,
    /// Serve on the in-process loopback kernel instead of /dev/scst_user: tries a
    /// configuration (boards, registration, identities, status) on a machine without SCST.
    #[arg(long)]
    pub loopback: bool,
    /// What stands behind the engine (one-disk use; serve defaults to RAM until a board is named).
    #[arg(long, value_enum, default_value_t = BoardArg::Ram)]
    pub board: BoardArg,
    /// PCI address of the function for a hardware board (sca1, nvme, qemu-nvme).
    #[arg(long)]
    pub pci: Option<String>,
    /// Buffers to hand to SCST's buffer cache at start (PREALLOC_BUFFER).
    #[arg(long, default_value_t = 0)]
    pub prealloc: usize,
    /// Size of each preallocated buffer.
    #[arg(long, default_value = "128k", value_parser = crate::units::parse_size)]
    pub prealloc_size: u64,
    /// Where identities (generated or device-derived) are kept, as `identity/<name>.toml`, so
    /// a disk keeps its serial and designator across restarts, and under TCMU each disk's
    /// current WCE, as `mode/<name>.toml`, for `--tcmu-adopt` (overrides service.state_dir;
    /// default /var/lib/scst-accel).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The control socket (overrides service.control_socket).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// The disk is read-only (one-disk use).
    #[arg(long)]
    pub read_only: bool,
    /// Logical block provisioning: UNMAP, WRITE SAME with UNMAP (one-disk use).
    #[arg(long)]
    pub thin_provisioning: bool,
    /// Identity overrides (one-disk use; with a file they override its one disk's
    /// `[disk.identity]`).
    #[command(flatten)]
    pub identity: IdentityFlags,
    /// Which kernel target serves the disk: SCST (scst_user) or LIO (target_core_user).
    #[arg(long, value_enum, default_value_t = FrontendArg::Scst)]
    pub frontend: FrontendArg,
    /// The TCMU frontend's settings (with `--frontend tcmu`).
    #[command(flatten)]
    pub tcmu: TcmuArgs,
}

/// Serve; returns the process exit code. `matches` are the `serve` subcommand's, to tell which
/// flags were given on the command line (they override the file).
pub fn run(args: ServeArgs, matches: Option<&ArgMatches>) -> u8 {
    let config = match service_config(&args, matches) {
        Ok(c) => c,
        Err((message, code)) => {
            crate::journal::error_to_stderr(&format!("scst-accel serve: {message}"));
            return code;
        }
    };
    // Signals are blocked into an iterator before any worker starts, so a SIGTERM that arrives
    // during start-up is not lost and no worker thread is ever interrupted inside an ioctl.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            crate::journal::error_to_stderr(&format!(
                "scst-accel serve: cannot install signal handlers: {e}"
            ));
            return exit::SOFTWARE;
        }
    };
    if config.service.frontend == Frontend::Tcmu {
        if args.loopback {
            crate::journal::error_to_stderr(
                "scst-accel serve: --loopback is the scst_user frontend's; not with --frontend tcmu",
            );
            return exit::USAGE;
        }
        return crate::tcmu::run(&config, &mut signals);
    }
    let kernel = if args.loopback {
        KernelSide::Loopback(LoopbackKernel::new(KernelConfig {
            version: version::resolve(&args.disk.scst_version),
            ..KernelConfig::default()
        }))
    } else {
        KernelSide::Real(config.service.scst_device.clone())
    };
    // The loopback kernel has no SCST sysfs: an export names a target of a real SCST, which
    // this process's disks are not registered with, so exports are not applied (each disk that
    // has some says so). Identities are still kept in the state directory.
    if args.loopback {
        for disk in config.disks.iter().filter(|d| !d.exports.is_empty()) {
            log::warn!(
                "disk {}: {} export(s) not applied: --loopback serves no SCST target",
                disk.args.name,
                disk.exports.len()
            );
        }
    }
    let options = StartOptions {
        apply_exports: !args.loopback,
        ..StartOptions::default()
    };
    let notifier = Arc::new(Notifier::from_env());
    let total = config.disks.len();
    notifier.status(&format!("starting {total} disks"));
    let mut service = Service::new(config.service.clone(), config.disks, kernel, options);
    // The control socket and the metrics endpoint are bound before any disk registers: one
    // that cannot bind is a configuration error, and nothing has been applied yet.
    let servers = match Servers::start(&config.service, Arc::new(service.handle())) {
        Ok(s) => s,
        Err(message) => {
            crate::journal::error_to_stderr(&format!("scst-accel serve: {message}"));
            let _ = service.stop();
            return exit::CONFIG;
        }
    };
    // One disk at a time, each with a start budget of its own from systemd (the unit's
    // TimeoutStartSec would otherwise bound them all together), and a stop asked for meanwhile
    // starting no more. Other signals wait for the loop below.
    let mut early = Vec::new();
    service.start_disks_with(|index, name| {
        notifier.extend_timeout(DISK_START_BUDGET);
        notifier.status(&format!("starting disk {} of {total}: {name}", index + 1));
        early.extend(signals.pending());
        !early.iter().any(|&s| s == SIGINT || s == SIGTERM)
    });
    early.extend(signals.pending());
    if early.iter().any(|&s| s == SIGINT || s == SIGTERM) {
        log::info!("signal during the start: stopping every disk");
        announce_stop(&notifier, &service);
        service.begin_stop();
        early.retain(|&s| s != SIGINT && s != SIGTERM);
    }
    let failures = service.start_failures();
    if service.serving() == 0 && !service.stop_requested() {
        // A failure a restart may mend before a start class, wherever it is in the file.
        let code = match exit::of_service(failures.iter().map(|(_, f)| f.exit_code), false) {
            0 => exit::SOFTWARE,
            code => code,
        };
        for (name, failure) in &failures {
            crate::journal::error_to_stderr(&format!("scst-accel serve: disk {name}: {}", failure.message));
        }
        crate::journal::error_to_stderr(&format!("scst-accel serve: no disk could start; exiting {code}"));
        notifier.status(&format!("no disk could start (exit {code})"));
        let _ = service.stop();
        servers.stop();
        return code;
    }
    // Every disk is registered and exported, or has failed (visible in status): ready. Not
    // when a stop began during the start: STOPPING=1 has been said.
    let line = service.status_changed().unwrap_or_default();
    log::info!("{line}");
    notifier.status(&line);
    if !service.stop_requested() {
        notifier.ready();
    }
    let watchdog = start_watchdog(&notifier, service.handle());
    // A signal wakes the supervisor at once; the loop below then takes it from `signals`.
    let forwarder = SignalWake::start(&service);
    loop {
        // Signals first: one that came while the disks started (before the forwarder) is
        // taken now, not after a whole turn.
        for signal in early.drain(..).chain(signals.pending()) {
            match signal {
                SIGHUP => service.flush_caches(),
                SIGUSR1 => service.log_dumps(),
                _ => {
                    log::info!("signal {signal}: stopping every disk");
                    announce_stop(&notifier, &service);
                    service.begin_stop();
                }
            }
        }
        // Every teardown ended, or the stop's budget ran out: `service.stop()` below fails
        // the teardowns still running instead of waiting for them (the bound systemd's
        // extended stop timeout is sized for).
        if service.stop_settled() {
            break;
        }
        if !service.supervise(Duration::from_secs(1)) {
            break;
        }
        if let Some(line) = service.status_changed() {
            log::info!("{line}");
            notifier.status(&line);
        }
    }
    if !service.stop_requested() {
        // Every disk ended on its own (each failed): the stop below only collects them.
        announce_stop(&notifier, &service);
    }
    // The watchdog goes first: a teardown is not a hang, and systemd's stop timeout (extended
    // above) bounds it instead.
    if let Some(watchdog) = watchdog {
        watchdog.stop();
    }
    if let Some(forwarder) = forwarder {
        forwarder.stop();
    }
    // The control socket answers (state `stopping`) until every teardown has ended. The
    // extension counts from when it is sent (sd_notify(3)): the watchdog's and the forwarder's
    // stops above may have spent up to ten seconds of the one sent at STOPPING, so it is sent
    // again for what is left, the teardowns' budget and the servers' joins.
    notifier.extend_timeout(service.stop_budget() + AFTER_TEARDOWN);
    let requested = service.stop_requested();
    let outcomes = service.stop();
    servers.stop();
    let code = Service::exit_code(&outcomes, requested);
    notifier.status(&format!("stopped (exit {code})"));
    log::info!("stopped; exit code {code}");
    code
}

/// A thread that wakes the supervisor when a signal `serve` handles arrives, so that the loop
/// takes it at once rather than at the supervisor's next turn. It has its own registration
/// (signal-hook delivers each signal to every one), so the loop's `Signals` still sees them.
struct SignalWake {
    close: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

/// How long stopping the forwarder waits for its thread (it ends as soon as it is closed).
const SIGNAL_WAKE_JOIN: Duration = Duration::from_secs(5);

impl SignalWake {
    /// `None` (logged) when the registration or the thread cannot be made: the supervisor's
    /// turn still brings the signals to the loop, within a second.
    fn start(service: &Service) -> Option<Self> {
        let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("signals reach the supervisor at its next turn: cannot register: {e}");
                return None;
            }
        };
        let close = signals.handle();
        let handle = service.handle();
        let thread = std::thread::Builder::new()
            .name("signal-wake".into())
            .spawn(move || {
                for _ in signals.forever() {
                    handle.wake();
                }
            });
        match thread {
            Ok(thread) => Some(Self { close, thread }),
            Err(e) => {
                log::warn!("signals reach the supervisor at its next turn: no thread: {e}");
                close.close();
                None
            }
        }
    }

    fn stop(self) {
        self.close.close();
        if scst_accel_hal::locks::join_bounded(self.thread, SIGNAL_WAKE_JOIN).is_err() {
            log::warn!("the signal-wake thread did not end within {SIGNAL_WAKE_JOIN:?}; left");
        }
    }
}

/// The control socket and, when configured, the Prometheus endpoint, over either frontend's
/// service.
pub(crate) struct Servers {
    control: ControlServer,
    metrics: Option<MetricsServer>,
}

impl Servers {
    /// Bind both; the first that cannot bind is the error (the other is closed again).
    pub(crate) fn start(settings: &ServiceSettings, view: Arc<dyn ServiceView>) -> Result<Self, String> {
        let control = ControlServer::start(&settings.control_socket, Arc::clone(&view)).map_err(|e| {
            format!(
                "control socket {}: {e} (set service.control_socket or --control-socket to a \
                 path this user may create)",
                settings.control_socket.display()
            )
        })?;
        log::info!(
            "control socket at {} (scst-accel status)",
            settings.control_socket.display()
        );
        let metrics = match settings.metrics_listen {
            None => None,
            Some(addr) => match MetricsServer::start(addr, view) {
                Ok(m) => {
                    log::info!("Prometheus metrics at http://{}/metrics", m.local_addr());
                    Some(m)
                }
                Err(e) => {
                    control.stop();
                    return Err(format!(
                        "metrics endpoint {addr}: {e} (another process on that port? change \
                         service.metrics_listen)"
                    ));
                }
            },
        };
        Ok(Self { control, metrics })
    }

    pub(crate) fn stop(self) {
        if let Some(metrics) = self.metrics {
            metrics.stop();
        }
        self.control.stop();
    }
}

/// STOPPING=1, and systemd's stop timeout extended to cover the stop's budget: the teardowns
/// run in parallel, together bounded by `stop_timeout` (plus a second), after which the
/// process exits whatever is still running ([`Service::stop_settled`]).
fn announce_stop(notifier: &Notifier, service: &Service) {
    notifier.stopping();
    notifier.status("stopping: tearing every disk down");
    notifier.extend_timeout(service.stop_budget() + AFTER_TEARDOWN);
}

/// What the stop spends past the teardowns' budget: the control and metrics servers' joins
/// (up to 5 s each, a connection being served ends within its own 2 s budget) and a margin.
pub(crate) const AFTER_TEARDOWN: Duration = Duration::from_secs(15);

/// How long systemd is asked to wait for each disk's start (EXTEND_TIMEOUT_USEC before each):
/// every wait of a start is bounded by the device's own timeouts (an NVMe controller's
/// bring-up by about four CAP.TO, eight and a half minutes at the largest), so this only keeps
/// the unit's start timeout, which would bound every disk together, from killing a slow but
/// healthy start.
pub(crate) const DISK_START_BUDGET: Duration = Duration::from_secs(600);

/// How old a worker's heartbeat may be before its disk counts as wedged. A worker beats at the
/// top of each loop iteration (at most `idle_poll`, 50 ms, apart, plus its store calls); an idle
/// worker parked in poll sets its heartbeat ahead to the end of its park first, and a store
/// call that runs a device recovery (longer than this: an NVMe reset waits up to several
/// CAP.TO) sets it ahead by the recovery's bound (`StoreQueue::set_heartbeat`); a few seconds
/// past all of those means stuck.
pub(crate) const WEDGED_AFTER: Duration = Duration::from_secs(10);

/// The systemd watchdog, when the unit asks for one (WatchdogSec=): pings only while the
/// service's loop (the supervisor, or the TCMU service's loop) answers and no serving disk has
/// a wedged worker.
pub(crate) fn start_watchdog(notifier: &Arc<Notifier>, handle: ServiceHandle) -> Option<Watchdog> {
    let interval = notifier.watchdog_interval()?;
    let max_age = WEDGED_AFTER.min(interval);
    let health = Box::new(move || match handle.wedged(max_age) {
        Ok(wedged) if wedged.is_empty() => Ok(()),
        Ok(wedged) => Err(format!("wedged: {}", wedged.join("; "))),
        Err(e) => Err(e),
    });
    match Watchdog::start(Arc::clone(notifier), interval, health) {
        Ok(w) => Some(w),
        Err(e) => {
            log::error!("cannot start the watchdog thread: {e}; systemd will restart the service");
            None
        }
    }
}

/// The configuration to serve: the file's (with command-line overrides) or one disk from the
/// flags. `Err((message, exit code))`.
fn service_config(args: &ServeArgs, matches: Option<&ArgMatches>) -> Result<ServiceConfig, (String, u8)> {
    let given = |id: &str| matches.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    let mut config = match &args.config {
        Some(path) => crate::config::load::load(path).map_err(|e| (e.to_string(), exit::CONFIG))?,
        None => ServiceConfig {
            service: ServiceSettings::default(),
            disks: vec![one_disk(args)],
        },
    };
    if args.config.is_some() {
        let disk_flags: Vec<&str> = DISK_FLAGS.iter().copied().filter(|id| given(id)).collect();
        if !disk_flags.is_empty() {
            if config.disks.len() != 1 {
                return Err((
                    format!(
                        "--{} override one disk, but {} declares {}; change the file instead",
                        disk_flags.join(", --").replace('_', "-"),
                        args.config
                            .as_deref()
                            .unwrap_or_else(|| std::path::Path::new(""))
                            .display(),
                        config.disks.len()
                    ),
                    exit::USAGE,
                ));
            }
            override_disk(&mut config.disks[0], args, &given);
        }
        if given("device") {
            config.service.scst_device = args.device.clone();
        }
    } else {
        config.service.scst_device = args.device.clone();
    }
    if let Some(dir) = &args.state_dir {
        config.service.state_dir = dir.clone();
    }
    if let Some(path) = &args.control_socket {
        config.service.control_socket = path.clone();
    }
    // The frontend and its settings: the command line's over the file's (without a file, the
    // command line's throughout).
    let from_flags = |id: &str| args.config.is_none() || given(id);
    if from_flags("frontend") {
        config.service.frontend = match args.frontend {
            FrontendArg::Scst => Frontend::Scst,
            FrontendArg::Tcmu => Frontend::Tcmu,
        };
    }
    crate::tcmu::apply_args(&mut config.service.tcmu, &args.tcmu, &from_flags);
    if config.service.frontend == Frontend::Tcmu {
        refuse_exports_under_tcmu(&config, args.config.as_deref())?;
    }
    for disk in &config.disks {
        disk.args
            .validate()
            .map_err(|e| (format!("disk {}: {e}", disk.args.name), exit::USAGE))?;
    }
    Ok(config)
}

/// Under TCMU, export blocks are refused as the file's own `frontend = "tcmu"` refuses them
/// (config::load, exit 78): they write SCST's sysfs, and under TCMU every disk is LUN N of the
/// service's shared targets instead. `--frontend tcmu` over a file written for SCST reaches
/// here with the blocks already read; serving on without them would drop the exports the file
/// asks for without a word.
fn refuse_exports_under_tcmu(
    config: &ServiceConfig,
    file: Option<&std::path::Path>,
) -> Result<(), (String, u8)> {
    let with_exports: Vec<String> = config
        .disks
        .iter()
        .filter(|d| !d.exports.is_empty())
        .map(|d| format!("{} ({})", d.args.name, d.exports.len()))
        .collect();
    if with_exports.is_empty() {
        return Ok(());
    }
    Err((
        format!(
            "{}: [[disk.export]] blocks of disk(s) {} add the disk to an SCST target; under \
             --frontend tcmu every disk is LUN N (its place in the file) of the targets \
             [service.tcmu] declares; remove the export blocks, or serve with --frontend scst",
            file.unwrap_or_else(|| std::path::Path::new("the configuration"))
                .display(),
            with_exports.join(", ")
        ),
        exit::CONFIG,
    ))
}

/// Disk flags that, given on the command line, override the file's one disk.
const DISK_FLAGS: &[&str] = &[
    "name",
    "size",
    "block_size",
    "workers",
    "batch",
    "buffer_memory",
    "scst_version",
    "command_timeout",
    "max_transfer_blocks",
    "path",
    "buffered",
    "io_engine",
    "premap",
    "board",
    "pci",
    "prealloc",
    "prealloc_size",
    "read_only",
    "thin_provisioning",
    "write_cache",
    "vendor",
    "product",
    "serial",
    "naa",
];

fn override_disk(disk: &mut DiskSpec, args: &ServeArgs, given: &dyn Fn(&str) -> bool) {
    let a = &args.disk;
    let d = &mut disk.args;
    macro_rules! take {
        ($($field:ident),*) => { $( if given(stringify!($field)) { d.$field = a.$field.clone(); } )* };
    }
    take!(
        name,
        size,
        block_size,
        workers,
        batch,
        buffer_memory,
        scst_version,
        command_timeout,
        max_transfer_blocks,
        path,
        buffered,
        io_engine,
        premap,
        write_cache
    );
    d.size_given |= given("size");
    d.block_size_given |= given("block_size");
    if given("board") {
        disk.board = args.board;
    }
    if given("pci") {
        disk.pci = args.pci.clone();
    }
    if given("prealloc") {
        disk.prealloc = args.prealloc;
    }
    if given("prealloc_size") {
        disk.prealloc_size = args.prealloc_size;
    }
    if given("read_only") {
        disk.read_only = args.read_only;
    }
    if given("thin_provisioning") {
        disk.thin_provisioning = args.thin_provisioning;
    }
    let flags = args.identity.spec();
    let identity = &mut disk.identity;
    identity.vendor = flags.vendor.or(identity.vendor.take());
    identity.product = flags.product.or(identity.product.take());
    identity.serial = flags.serial.or(identity.serial.take());
    identity.naa = flags.naa.or(identity.naa.take());
}

fn one_disk(args: &ServeArgs) -> DiskSpec {
    DiskSpec {
        args: args.disk.clone(),
        board: args.board,
        pci: args.pci.clone(),
        inject: Vec::new(),
        read_only: args.read_only,
        thin_provisioning: args.thin_provisioning,
        identity: args.identity.spec(),
        exports: Vec::new(),
        prealloc: args.prealloc,
        prealloc_size: args.prealloc_size,
    }
}
