//! `scst-accel serve --frontend tcmu`: one disk served through LIO's `target_core_user` of a
//! mainline kernel instead of SCST (docs/tcmu.md). The same backend (board, store, buffer
//! pool), the same SBC engine and identity as the scst_user frontend; the kernel side is a
//! user backstore created in configfs, its UIO ring, and a tcm_loop target (a local
//! `/dev/sdX`) and optionally an iSCSI target.
//!
//! Start: the backend, the disk, the backstore (enable creates the UIO device), the worker on
//! its ring, then the targets (linking a LUN makes the kernel scan it through the ring, so the
//! ring is served first). Stop (SIGINT/SIGTERM, or the worker ending on its own): the targets
//! go first while the worker still serves (no new command from an initiator; what the
//! initiator has in flight completes), then the worker drains the store queue and unmaps the
//! ring, then the backstore goes, then the backend is released, its pool unmapped only with
//! the drain's proof.

use crate::backend;
use crate::backend::error_chain;
use crate::config::DiskSpec;
use crate::exit;
use crate::notify::Notifier;
use clap::Args;
use clap::ValueEnum;
use scst_accel_handler::scsi::CompareAndWriteBy;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::tcmu::configfs::IscsiSpec;
use scst_accel_handler::tcmu::configfs::KernelFs;
use scst_accel_handler::tcmu::configfs::Setup;
use scst_accel_handler::tcmu::configfs::SetupSpec;
use scst_accel_handler::tcmu::configfs::TARGET_ROOT;
use scst_accel_handler::tcmu::exec::Executor;
use scst_accel_handler::tcmu::uio;
use scst_accel_handler::tcmu::uio::UioDevice;
use scst_accel_handler::tcmu::uio::UioError;
use scst_accel_handler::tcmu::worker::TcmuWorker;
use scst_accel_handler::tcmu::worker::WorkerConfig;
use signal_hook::consts::SIGINT;
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// `--frontend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FrontendArg {
    /// SCST's scst_user (`/dev/scst_user`, or `--loopback`).
    #[default]
    Scst,
    /// LIO's target_core_user of a mainline kernel (one disk; needs root, configfs mounted and
    /// the target_core_user and tcm_loop modules).
    Tcmu,
}

/// The TCMU frontend's flags.
#[derive(Args, Debug, Clone)]
pub struct TcmuArgs {
    /// LIO's configfs directory.
    #[arg(long, default_value = TARGET_ROOT)]
    pub configfs_root: PathBuf,
    /// The user backstore's HBA number (`core/user_N`).
    #[arg(long, default_value_t = 7)]
    pub tcmu_hba: u32,
    /// The command ring's size in MiB (the kernel's default when absent).
    #[arg(long)]
    pub tcmu_ring_mb: Option<u32>,
    /// No tcm_loop target (then only --tcmu-iscsi exports the disk).
    #[arg(long)]
    pub tcmu_no_loop: bool,
    /// Also export the disk on an iSCSI portal (e.g. 127.0.0.1:3260), any initiator, no
    /// authentication (needs iscsi_target_mod).
    #[arg(long)]
    pub tcmu_iscsi: Option<String>,
    /// Take over the backstore and targets a killed `serve` left (its ring, with the
    /// initiator's commands still in it, is served from where that run stopped) instead of
    /// refusing them; what is missing is created. All of it is removed at the stop.
    #[arg(long)]
    pub tcmu_adopt: bool,
    /// How long the stop waits for the store's requests before aborting them (and then as
    /// long again).
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub tcmu_drain: Duration,
}

/// The configfs objects of `disk`: a backstore named after it whose `dev_config` is
/// `scst-accel/<board>` (the rest of the UIO name), a tcm_loop target whose WWN is derived
/// from the HBA number, an iSCSI target if asked.
pub fn setup_spec(disk: &DiskSpec, args: &TcmuArgs) -> SetupSpec {
    let name = &disk.args.name;
    // NAA type 5 with the IEEE OUI 00-14-05 LIO uses for its generated WWNs; the HBA number
    // keeps two handlers on one host apart.
    let wwn = |n: u32| format!("naa.5001405{n:09x}");
    SetupSpec {
        hba: args.tcmu_hba,
        name: name.clone(),
        size: disk.args.size,
        block_size: disk.args.block_size,
        dev_config: format!("scst-accel/{}", crate::service::board_name(disk.board)),
        ring_mb: args.tcmu_ring_mb,
        loopback: (!args.tcmu_no_loop).then(|| (wwn(args.tcmu_hba * 2), wwn(args.tcmu_hba * 2 + 1))),
        iscsi: args.tcmu_iscsi.as_ref().map(|portal| IscsiSpec {
            iqn: format!("iqn.2026-12.org.scst-accel:{name}"),
            portal: portal.clone(),
        }),
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
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Serve `disk` through TCMU until SIGINT/SIGTERM; returns the exit code.
pub fn run(disk: &DiskSpec, args: &TcmuArgs, state_dir: &Path, signals: &mut Signals) -> u8 {
    let fail = |message: String, code: u8| {
        eprintln!("scst-accel serve --frontend tcmu: {message}");
        code
    };
    let blocks = match disk.args.validate() {
        Ok(b) => b,
        Err(e) => return fail(e, exit::USAGE),
    };
    let backend = match backend::build(disk.board, &disk.args, blocks, disk.pci.as_deref(), &disk.inject) {
        Ok(b) => b,
        Err(e) => return fail(e.message, e.exit_code),
    };
    let info = backend.store.info();
    let identity = match crate::identity::resolve(
        &disk.args.name,
        &disk.identity,
        Some(state_dir),
        info.device_ids.as_ref(),
    ) {
        Ok(i) => i,
        Err(e) => {
            backend.shutdown_unserved();
            return fail(format!("identity: {e}"), exit::CONFIG);
        }
    };
    let mut config = disk.args.disk_config(&info, &identity);
    config.read_only = disk.read_only;
    config.thin_provisioning = disk.thin_provisioning && info.supports_unmap;
    config.unmapped_reads_zero &= config.thin_provisioning;
    // LIO's passthrough parser hands COMPARE AND WRITE to the TCMU device: the engine runs it,
    // atomic under the disk's range locks (docs/scsi.md "COMPARE AND WRITE").
    config.compare_and_write = CompareAndWriteBy::Handler;
    let engine = match Disk::try_new(config) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            backend.shutdown_unserved();
            return fail(e.to_string(), exit::CONFIG);
        }
    };
    let queue = match backend.store.open_queue() {
        Ok(q) => q,
        Err(e) => {
            backend.shutdown_unserved();
            return fail(format!("store queue: {e}"), exit::SOFTWARE);
        }
    };
    // The size the kernel reports is the store's (a board's namespace may differ from --size).
    let mut spec = setup_spec(disk, args);
    spec.size = info.num_blocks * u64::from(info.block_size);
    spec.block_size = info.block_size;
    let made = if args.tcmu_adopt {
        Setup::adopt(KernelFs, &args.configfs_root, &spec)
    } else {
        Setup::create(KernelFs, &args.configfs_root, &spec)
    };
    let mut setup = match made {
        Ok(s) => s,
        Err(e) => {
            drop(queue);
            backend.shutdown_unserved();
            let code = match e.source.kind() {
                std::io::ErrorKind::PermissionDenied => exit::NOPERM,
                std::io::ErrorKind::NotFound => exit::UNAVAILABLE,
                _ => exit::CONFIG,
            };
            return fail(error_chain(&e), code);
        }
    };
    log::info!(
        "tcmu: backstore {} {}",
        setup.backstore().display(),
        if args.tcmu_adopt {
            "adopted or created"
        } else {
            "created"
        }
    );
    let (hba, name) = spec.uio_names();
    let device = match open_uio(&hba, &name) {
        Ok(d) => d,
        Err(e) => {
            drop(queue);
            remove_logged(setup);
            backend.shutdown_unserved();
            return fail(
                format!(
                    "{}; is target_core_user loaded and udev running?",
                    error_chain(&e)
                ),
                exit::UNAVAILABLE,
            );
        }
    };
    let exec = Executor::new(Arc::clone(&engine), queue, Arc::clone(&backend.pool));
    let worker_config = WorkerConfig {
        command_timeout: disk.args.command_timeout,
        drain_budget: args.tcmu_drain,
        ..WorkerConfig::default()
    };
    let worker = match TcmuWorker::spawn(&format!("tcmu-{name}"), device, exec, worker_config) {
        Ok(w) => w,
        Err(e) => {
            remove_logged(setup);
            // The executor (and its queue) went with the failed spawn, before anything was
            // submitted.
            backend.shutdown_unserved();
            return fail(format!("worker: {e}"), exit::SOFTWARE);
        }
    };
    let notifier = Notifier::from_env();
    let mut code = 0;
    match setup.export(&spec) {
        Ok(()) => {
            let mut what = Vec::new();
            if let Some((wwn, _)) = &spec.loopback {
                what.push(format!("tcm_loop {wwn}"));
            }
            if let Some(iscsi) = &spec.iscsi {
                what.push(format!("iSCSI {} on {}", iscsi.iqn, iscsi.portal));
            }
            let line = format!(
                "serving {} ({} blocks of {}) through TCMU user_{hba}/{name}: {}",
                disk.args.name,
                info.num_blocks,
                info.block_size,
                what.join(", ")
            );
            log::info!("{line}");
            notifier.status(&line);
            notifier.ready();
            wait_for_stop(signals, &worker);
        }
        Err(e) => {
            eprintln!("scst-accel serve --frontend tcmu: {}", error_chain(&e));
            code = exit::CONFIG;
        }
    }
    notifier.stopping();
    // Targets first, while the worker still serves what the initiators have in flight.
    let started = Instant::now();
    if let Err(e) = setup.unexport() {
        log::error!("tcmu stop: {}", error_chain(&e));
        code = code.max(exit::SOFTWARE);
    }
    let unexported = started.elapsed();
    let report = worker.stop();
    let backend_report = match &report {
        Ok(r) => {
            log::info!(
                "tcmu: {} commands started, {} completed, {} refused, {} task management, {} \
                 deadline escalations; targets removed in {unexported:?}, drain {:?}",
                r.progress.started,
                r.progress.completed,
                r.progress.refused,
                r.progress.task_management,
                r.escalations,
                r.drain_time
            );
            if r.error.is_some() {
                code = code.max(exit::SOFTWARE);
            }
            match &r.drained {
                Ok(drained) => backend.shutdown_drained(drained),
                Err(e) => {
                    log::error!("tcmu stop: {e}; the buffer pool is leaked, not unmapped");
                    code = code.max(exit::SOFTWARE);
                    backend.shutdown(None)
                }
            }
        }
        Err(panic) => {
            log::error!("tcmu stop: the worker panicked ({panic}); the buffer pool is leaked");
            code = code.max(exit::SOFTWARE);
            backend.shutdown(None)
        }
    };
    // The ring is unmapped (the worker dropped the device after its drain): the backstore can go.
    if let Err(e) = setup.remove() {
        log::error!("tcmu stop: {}", error_chain(&e));
        code = code.max(exit::SOFTWARE);
    }
    if backend_report.mapped_after != 0 || backend_report.leaked_buffers != 0 {
        log::error!(
            "tcmu stop: {} bytes still mapped, {} buffers leaked",
            backend_report.mapped_after,
            backend_report.leaked_buffers
        );
    }
    log::info!(
        "tcmu: stopped in {:?} (release {:.1} ms); exit code {code}",
        started.elapsed(),
        backend_report.release_ms
    );
    code
}

/// Until SIGINT/SIGTERM, or the worker ends on its own.
fn wait_for_stop(signals: &mut Signals, worker: &TcmuWorker) {
    let mut warned: Option<Instant> = None;
    loop {
        for signal in signals.pending() {
            if signal == SIGINT || signal == SIGTERM {
                log::info!("signal {signal}: stopping");
                return;
            }
        }
        if worker.is_finished() {
            log::error!("tcmu: the worker ended; stopping");
            return;
        }
        // A turn is at most 50 ms plus one serving pass; 10 s means stuck. Said every 10 s.
        if worker.heartbeat_age() > Duration::from_secs(10)
            && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            log::warn!("tcmu: the worker has not turned for {:?}", worker.heartbeat_age());
            warned = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_logged(setup: Setup<KernelFs>) {
    if let Err(e) = setup.remove() {
        log::error!("tcmu: removing the configfs objects: {}", error_chain(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_is_named_after_the_disk_and_the_hba_keeps_wwns_apart() {
        let disk = DiskSpec {
            args: crate::disk::DiskArgs {
                name: "vol1".into(),
                size: 1 << 30,
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
        };
        let args = TcmuArgs {
            configfs_root: TARGET_ROOT.into(),
            tcmu_hba: 7,
            tcmu_ring_mb: None,
            tcmu_no_loop: false,
            tcmu_adopt: false,
            tcmu_iscsi: Some("127.0.0.1:3260".into()),
            tcmu_drain: Duration::from_secs(5),
        };
        let spec = setup_spec(&disk, &args);
        assert_eq!(spec.name, "vol1");
        assert_eq!(spec.dev_config, "scst-accel/ram");
        assert_eq!(
            spec.loopback,
            Some(("naa.500140500000000e".into(), "naa.500140500000000f".into()))
        );
        assert_eq!(spec.iscsi.expect("iscsi").iqn, "iqn.2026-12.org.scst-accel:vol1");
        let other = setup_spec(&disk, &TcmuArgs { tcmu_hba: 8, ..args });
        assert_ne!(other.loopback, spec.loopback);
    }
}
