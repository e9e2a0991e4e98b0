//! `scst-accel serve`: register a disk on the real `/dev/scst_user` and serve it until SIGINT or
//! SIGTERM, then stop cleanly (every command in flight answered) and exit with a code a service
//! manager can act on (see [`crate::exit`]).

use crate::backend::BoardArg;
use crate::disk::DiskArgs;
use crate::exit;
use crate::identity::IdentityFlags;
use clap::Args;
use scst_accel_handler::abi::DEV_USER_PATH;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::TeardownTrigger;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::transport::device::OpenError;
use scst_accel_handler::transport::device::ScstUserDevice;
use scst_accel_handler::transport::register::register;
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
    #[command(flatten)]
    disk: DiskArgs,
    /// The scst_user device node.
    #[arg(long, default_value = DEV_USER_PATH)]
    device: PathBuf,
    /// What stands behind the engine (serve defaults to RAM until a board is named).
    #[arg(long, value_enum, default_value_t = BoardArg::Ram)]
    board: BoardArg,
    /// PCI address of the function for a hardware board (sca1, nvme, qemu-nvme).
    #[arg(long)]
    pci: Option<String>,
    /// Buffers to hand to SCST's buffer cache at start (PREALLOC_BUFFER).
    #[arg(long, default_value_t = 0)]
    prealloc: usize,
    /// Size of each preallocated buffer.
    #[arg(long, default_value = "128k", value_parser = crate::units::parse_size)]
    prealloc_size: u64,
    /// Generated identities are persisted here (`identity/<name>.toml`), so the disk keeps its
    /// serial and designator across restarts.
    #[arg(long, default_value = "/var/lib/scst-accel")]
    state_dir: PathBuf,
    #[command(flatten)]
    identity: IdentityFlags,
}

/// Serve; returns the process exit code.
pub fn run(args: ServeArgs) -> u8 {
    let blocks = match args.disk.validate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            return exit::USAGE;
        }
    };
    // Signals are blocked into an iterator before any worker starts, so a SIGTERM that arrives
    // during start-up is not lost and no worker thread is ever interrupted inside an ioctl.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scst-accel serve: cannot install signal handlers: {e}");
            return exit::SOFTWARE;
        }
    };
    // The board first: a board that cannot be opened leaves nothing registered with SCST.
    let backend = match crate::backend::build(args.board, &args.disk, blocks, args.pci.as_deref(), &[]) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let info = backend.store.info();
    let identity = match crate::identity::resolve(
        &args.disk.name,
        &args.identity.spec(),
        Some(&args.state_dir),
        info.device_ids.as_ref(),
    ) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            backend.shutdown_unserved();
            return exit::CONFIG;
        }
    };
    log::info!(
        "{}: identity serial {} designator {} ({})",
        args.disk.name,
        identity.serial,
        identity.naa,
        identity.source
    );
    let disk = match Disk::try_new(args.disk.disk_config(&info, &identity)) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            backend.shutdown_unserved();
            return exit::USAGE;
        }
    };
    let fd = match ScstUserDevice::open(&args.device) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            backend.shutdown_unserved();
            return match e {
                OpenError::ModuleNotLoaded { .. } => exit::UNAVAILABLE,
                OpenError::PermissionDenied { .. } => exit::NOPERM,
                _ => exit::UNAVAILABLE,
            };
        }
    };
    if let Err(e) = register(&fd, &args.disk.register_params(info.block_size)) {
        eprintln!(
            "scst-accel serve: registration of {} refused: {e}",
            args.disk.name
        );
        backend.shutdown_unserved();
        return exit::CONFIG;
    }
    let frontend = match Frontend::start(
        Arc::new(fd),
        disk,
        Arc::clone(&backend.store),
        Arc::clone(&backend.pool),
        args.disk.frontend_config(),
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scst-accel serve: {e}");
            backend.shutdown_unserved();
            return exit::SOFTWARE;
        }
    };
    log::info!(
        "serving {} ({} blocks of {} bytes) on {}; add it as a LUN now (see README)",
        args.disk.name,
        info.num_blocks,
        info.block_size,
        args.device.display()
    );
    if args.prealloc > 0 {
        match frontend.prealloc_buffers(args.prealloc, args.prealloc_size as usize) {
            Ok(n) => log::info!("preallocated {n} buffers of {} bytes", args.prealloc_size),
            Err(e) => log::warn!("PREALLOC_BUFFER refused: {e}; continuing without preallocation"),
        }
    }
    // Serve until a signal asks for the teardown or the frontend triggers it itself (the
    // device failed, SCST closed the device, a worker died): one sequence for every trigger.
    let trigger = loop {
        if let Some(trigger) = frontend.wait_trigger(Duration::from_millis(200)) {
            break trigger;
        }
        for signal in signals.pending() {
            match signal {
                SIGHUP => match frontend.flush_cache() {
                    // Return every cached buffer to us (FLUSH_CACHE), e.g. to shrink memory.
                    Ok(()) => log::info!("SIGHUP: SCST buffer cache flushed"),
                    Err(e) => log::warn!("SIGHUP: FLUSH_CACHE failed: {e}"),
                },
                SIGUSR1 => log::warn!("SIGUSR1: state dump\n{}", frontend.dump()),
                _ => {
                    log::info!("signal {signal}: stopping");
                    frontend.request_teardown();
                }
            }
        }
    };
    log::info!("teardown: {trigger:?}");
    let mut report = frontend.shutdown();
    log::info!(
        "stopped: {} EXEC served, {} reply errors, {} store requests abandoned; teardown {:?} \
         (zombies left {}, unmap permitted {})",
        report.stats.exec,
        report.stats.reply_errors,
        report.workers.iter().map(|w| w.abandoned).sum::<usize>(),
        report.teardown.duration,
        report.teardown.zombies_left,
        report.teardown.unmap_permitted,
    );
    let released = backend.shutdown(report.unmap.take());
    if released.leaked_buffers > 0 || released.mapped_after > 0 {
        log::error!(
            "{} buffers still held, {} bytes still mapped at exit",
            released.leaked_buffers,
            released.mapped_after
        );
    }
    exit_code(&trigger, report.panicked_workers)
}

/// The exit code for how serving ended (see [`crate::exit`] and the README's table).
fn exit_code(trigger: &TeardownTrigger, panicked_workers: usize) -> u8 {
    match trigger {
        _ if panicked_workers > 0 => exit::SOFTWARE,
        TeardownTrigger::Requested => 0,
        TeardownTrigger::StoreFailed(_) => exit::IOERR,
        TeardownTrigger::ScstClosed => exit::UNAVAILABLE,
        TeardownTrigger::WorkerFailed => exit::SOFTWARE,
    }
}
