//! `scst-accel demo`: the loopback kernel + the frontend + a store, driven by a verified
//! workload, with live progress on a terminal and a summary (or one JSON object) at the end.

use crate::backend::Backend;
use crate::backend::BackendReport;
use crate::backend::BoardArg;
use crate::cpu::process_cpu_time;
use crate::cpu::simulated_device_cpu_time;
use crate::cpu::ThreadsSample;
use crate::disk::DiskArgs;
use crate::exit;
use crate::units::parse_duration;
use crate::units::parse_size;
use clap::Args;
use clap::ValueEnum;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::FrontendReport;
use scst_accel_handler::frontend::TeardownConfig;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ModelSyscalls;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::loopback::SessionSpec;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::transport::register::register;
use scst_accel_handler::transport::version;
use scst_accel_handler::workload;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::Mix;
use scst_accel_handler::workload::Pattern;
use scst_accel_handler::workload::Progress;
use scst_accel_handler::workload::ScanReport;
use scst_accel_handler::workload::WorkloadConfig;
use scst_accel_handler::workload::WorkloadReport;
use serde_json::json;
use std::io::IsTerminal;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Read/write mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Reads only (the region is prefilled first).
    Read,
    /// Writes only.
    Write,
    /// --read-percent reads, the rest writes.
    Mixed,
}

/// `demo` arguments.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Serve every disk of this configuration file on the loopback kernel and run the workload
    /// on each at once (the JSON then has a `disks` array and `totals`).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) disk: DiskArgs,
    /// What stands behind the engine.
    #[arg(long, value_enum, default_value_t = BoardArg::Sim)]
    pub(crate) board: BoardArg,
    /// PCI address of the function for a hardware board (sca1, nvme, qemu-nvme).
    #[arg(long)]
    pub(crate) pci: Option<String>,
    /// Inject a fault into the simulated board (repeatable). --board sim: latency:500us,
    /// never-complete:every=100, error:every=50,status=5, hang, gone, fatal,
    /// unknown-tag:every=200, duplicate:every=200, bad-phase:every=300, storm:hold=20ms,
    /// prefetch:4.
    /// --board nvme-sim: latency:500us, never-complete:every=N, error:every=N,
    /// status:sct=T,sc=C[,every=N], hang, gone, cfs, shutdown-hang.
    #[arg(long = "inject")]
    pub(crate) inject: Vec<String>,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = PatternArg::Random)]
    pattern: PatternArg,
    /// Read/write mix.
    #[arg(long, value_enum, default_value_t = Rw::Mixed)]
    rw: Rw,
    /// Percentage of reads with --rw mixed.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    read_percent: u8,
    /// Bytes per command.
    #[arg(long = "bs", default_value = "4k", value_parser = parse_size)]
    io_size: u64,
    /// Commands in flight, over all sessions.
    #[arg(long, default_value_t = 32)]
    queue_depth: usize,
    /// Initiator sessions (each one an ATTACH_SESS and a driver thread).
    #[arg(long, default_value_t = 1)]
    pub(crate) sessions: usize,
    /// Length of the timed phase.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Seed of the access pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the whole region once before the timed phase (default: on when the mix reads).
    #[arg(long)]
    prefill: Option<bool>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Tear the handler down halfway through the timed phase, with the workload still running.
    #[arg(long)]
    teardown_under_load: bool,
    /// Reset the controller halfway through the timed phase, with the workload still running:
    /// the commands in flight fail with ABORTED COMMAND, every queue is re-created, and the
    /// run goes on (accelerator boards only).
    #[arg(long, conflicts_with = "teardown_under_load")]
    reset_during_load: bool,
    /// Set by `bench`, not a flag: the medium is the bench's scratch, overwritten by its other
    /// runs and by fio, so the check of pre-existing data (an earlier run's stamps) is not run.
    #[arg(skip)]
    pub(crate) scratch_medium: bool,
    /// Set by `bench`, not a flag: the loopback kernel does not check that the handler leaves
    /// SCST's buffers alone (`KernelConfig::check_buffer_ownership`): the check reads every
    /// buffer back, a second copy of the data per command that would be counted as the
    /// command path's.
    #[arg(skip)]
    pub(crate) no_ownership_check: bool,
    /// Instead of the workload: clone this many bytes by EXTENDED COPY and by READ + WRITE
    /// through the initiator, and print the time and process CPU of both as JSON
    /// (docs/xcopy.md). --size must hold three times it.
    #[arg(long, value_parser = parse_size)]
    pub(crate) clone: Option<u64>,
}

impl DemoArgs {
    /// The disk's settings, for `main` to note which were given ([`DiskArgs::note_given`]).
    pub fn disk_mut(&mut self) -> &mut DiskArgs {
        &mut self.disk
    }
}

/// Access pattern argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PatternArg {
    /// Sequential.
    Sequential,
    /// Random.
    Random,
}

pub(crate) struct Outcome {
    pub(crate) workload: WorkloadReport,
    /// What the medium held before the run (a persistent board: file, blockdev).
    pub(crate) preexisting: Option<ScanReport>,
    pub(crate) frontend: FrontendReport,
    pub(crate) backend: BackendReport,
    pub(crate) cpu: Option<Duration>,
    pub(crate) worker_cpu: Option<Duration>,
    /// Of `cpu`, the simulated board's threads ([`simulated_device_cpu_time`]).
    pub(crate) device_cpu: Option<Duration>,
    pub(crate) devices_left: usize,
    /// Cached buffers the loopback kernel found changed while SCST owned them (the handler or
    /// its device wrote a buffer after its EXEC reply; `LoopbackKernel::buffer_ownership_violations`).
    pub(crate) ownership_violations: u64,
    /// The loopback kernel model's own syscalls during the timed phase (None where the
    /// kernel serves several disks and they cannot be told apart).
    pub(crate) model_syscalls: Option<ModelSyscalls>,
    /// Heap allocations of the whole process during the timed phase (None where the binary
    /// does not count them, or for several disks at once).
    pub(crate) allocations: Option<u64>,
}

/// Check the arguments; returns the disk's block count.
pub fn validate(args: &DemoArgs) -> Result<u64, String> {
    let blocks = args.disk.validate()?;
    if args.io_size == 0
        || !args.io_size.is_multiple_of(u64::from(args.disk.block_size))
        || args.io_size > 16 << 20
    {
        return Err("--bs must be a multiple of --block-size and at most 16M".into());
    }
    crate::backend::check_faults(args.board, &args.inject)?;
    Ok(blocks)
}

/// Run one demo and return its JSON summary and whether it was healthy.
pub fn measure(args: &DemoArgs) -> Result<(serde_json::Value, bool), String> {
    let blocks = validate(args)?;
    let outcome = demo(args, blocks).map_err(|e| crate::backend::error_chain(e.as_ref()))?;
    Ok((summary(args, &outcome), healthy(args, &outcome)))
}

/// Run the demo; returns the process exit code.
pub fn run(args: DemoArgs) -> u8 {
    if let Some(path) = args.config.clone() {
        return crate::demo_config::run(&args, &path);
    }
    if let Some(bytes) = args.clone {
        return match crate::clone::measure(&args, bytes) {
            Ok(v) => {
                println!("{v}");
                0
            }
            Err(e) => {
                eprintln!("scst-accel demo: {e}");
                exit::SOFTWARE
            }
        };
    }
    let blocks = match validate(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel demo: {e}");
            return exit::USAGE;
        }
    };
    match demo(&args, blocks) {
        Ok(outcome) => report(&args, &outcome),
        Err(e) => {
            eprintln!("scst-accel demo: {e}");
            // A backend that did not open has its own class (a missing image is the
            // configuration's, a failing medium is I/O); anything else is ours.
            e.downcast_ref::<crate::backend::BackendError>()
                .map_or(exit::SOFTWARE, |b| b.exit_code)
        }
    }
}

pub(crate) fn workload_config(args: &DemoArgs) -> WorkloadConfig {
    let mix = match args.rw {
        Rw::Read => Mix::Read,
        Rw::Write => Mix::Write,
        Rw::Mixed => Mix::Mixed {
            read_percent: args.read_percent,
        },
    };
    let pattern = match args.pattern {
        PatternArg::Random => Pattern::Random,
        PatternArg::Sequential => Pattern::Sequential,
    };
    WorkloadConfig {
        pattern,
        mix,
        io_size: args.io_size as u32,
        queue_depth: args.queue_depth,
        duration: args.duration,
        seed: args.seed,
        prefill: args.prefill.unwrap_or(args.rw != Rw::Write),
        ..WorkloadConfig::default()
    }
}

fn demo(args: &DemoArgs, blocks: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
    let kernel = LoopbackKernel::new(KernelConfig {
        version: version::resolve(&args.disk.scst_version),
        check_buffer_ownership: !args.no_ownership_check,
        ..KernelConfig::default()
    });
    let backend = crate::backend::build(args.board, &args.disk, blocks, args.pci.as_deref(), &args.inject)?;
    let info = backend.store.info();
    let frontend = start_loopback_disk(&kernel, &args.disk, &backend, false, false)?;
    let sessions = attach(&kernel, &args.disk.name, args.sessions.max(1))?;
    // The workload's region: the disk, or the first --size bytes of a larger device (a
    // hardware board's disk is its whole namespace; the demo need not write all of it).
    let geometry = Geometry {
        block_size: info.block_size,
        num_blocks: info
            .num_blocks
            .min(args.disk.size / u64::from(info.block_size))
            .max(1),
    };
    // A medium that outlives the process may hold an earlier run's stamps: check every block
    // before this run overwrites them (zeroes, or a whole stamp of its own LBA), so a second run
    // over the same image proves the first one's data survived.
    let preexisting = (persistent(args.board) && !args.scratch_medium)
        .then(|| scan_preexisting(args, &sessions[0], geometry, &info));
    let live = std::io::stderr().is_terminal() && !args.json;
    // CPU is sampled when the timed phase starts (the first progress report, after any prefill)
    // and when it ends, so untimed prefill work is not charged to the timed commands.
    let mut cpu_at_start: Option<(Option<Duration>, Option<ThreadsSample>, Duration)> = None;
    let counting = scst_accel_hal::alloc_stats::start_counting();
    let mut allocations_at_start = 0;
    let mut syscalls_at_start: Option<ModelSyscalls> = None;
    let timed_phase = std::sync::atomic::AtomicBool::new(false);
    let mut progress = |p: Progress| {
        timed_phase.store(true, std::sync::atomic::Ordering::Release);
        if cpu_at_start.is_none() {
            log::info!("timed phase started");
            cpu_at_start = Some((
                process_cpu_time(),
                ThreadsSample::take("scst-worker"),
                simulated_device_cpu_time().unwrap_or_default(),
            ));
            syscalls_at_start = Some(kernel.syscalls());
            allocations_at_start = scst_accel_hal::alloc_stats::allocations();
        }
        if live {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            eprint!(
                "\r{:6.1}s {:>10} cmds {:>10.0} IOPS {:>8.1} MB/s verify errors {}   ",
                secs,
                p.commands,
                p.commands as f64 / secs,
                p.bytes as f64 / 1e6 / secs,
                p.verify_errors
            );
            let _ = std::io::stderr().flush();
        }
    };
    let workload_config = workload_config(args);
    let mut frontend = Some(frontend);
    let (result, torn_down) = if args.teardown_under_load {
        // Tear down halfway through the timed phase with the workload still running: new
        // commands get BUSY, then the device goes away under the initiator.
        let running = frontend.take();
        let timed = &timed_phase;
        std::thread::scope(|scope| {
            let teardown = scope.spawn(move || {
                // Halfway through the timed phase (after any prefill), bounded.
                let deadline = std::time::Instant::now() + Duration::from_secs(600);
                while !timed.load(std::sync::atomic::Ordering::Acquire)
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(args.duration / 2);
                // With commands in flight, as the flag promises: a device that holds its
                // completions back and then answers them in a burst (`storm`) leaves moments with
                // none in flight, the initiator not yet resubmitting. Bounded by a quarter of the
                // timed phase, so the teardown still comes under load (a device that fails every
                // command at once, `gone`, has none in flight at any moment).
                let until = std::time::Instant::now() + args.duration / 4;
                while running.as_ref().is_some_and(|f| f.stats().inflight == 0)
                    && std::time::Instant::now() < until
                {
                    std::thread::sleep(Duration::from_micros(100));
                }
                running.map(|f| f.teardown(TeardownConfig::default()))
            });
            let result = workload::run(&sessions, geometry, &workload_config, &mut progress);
            (result, Some(teardown.join()))
        })
    } else if args.reset_during_load {
        let controller = backend
            .controller()
            .ok_or("--reset-during-load needs an accelerator board (not --board ram)")?;
        let timed = &timed_phase;
        std::thread::scope(|scope| {
            let resetter = scope.spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(600);
                while !timed.load(std::sync::atomic::Ordering::Acquire)
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(args.duration / 2);
                log::warn!("--reset-during-load: resetting {} under load", controller.id());
                if let Err(e) = controller.recover() {
                    log::error!("--reset-during-load: recovery failed: {e}");
                }
            });
            let result = workload::run(&sessions, geometry, &workload_config, &mut progress);
            // Joined explicitly (issue 16): the recovery may return pool buffers on this
            // thread, and an implicit scope join does not wait for its thread-locals.
            if resetter.join().is_err() {
                log::error!("--reset-during-load: the reset thread panicked");
            }
            (result, None)
        })
    } else {
        (
            workload::run(&sessions, geometry, &workload_config, &mut progress),
            None,
        )
    };
    let allocations = (counting && cpu_at_start.is_some())
        .then(|| scst_accel_hal::alloc_stats::allocations() - allocations_at_start);
    let (cpu_before, worker_cpu_before, device_cpu_before) = cpu_at_start.unwrap_or_default();
    let model_syscalls = model_syscalls_since(syscalls_at_start.unwrap_or_default(), kernel.syscalls());
    let cpu = cpu_before
        .zip(process_cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    // Worker threads only: the handler's own work plus the loopback kernel's processing that runs
    // inside their ioctls (as SCST's does inside a real handler's ioctls, spec §3.1).
    // None when a worker exited inside the window (`--teardown-under-load` joins them halfway):
    // its CPU left /proc with it, and a figure without it would be made up.
    let worker_cpu = worker_cpu_before
        .zip(ThreadsSample::take("scst-worker"))
        .and_then(|(before, now)| before.since(&now));
    // The simulated board's own threads: on real hardware this work is the device's.
    let device_cpu = simulated_device_cpu_time().map(|now| now.saturating_sub(device_cpu_before));
    if live {
        eprintln!();
    }
    let mut frontend = match (torn_down, frontend) {
        (Some(Ok(Some(report))), _) => report,
        (Some(_), _) | (None, None) => return Err("the teardown thread failed".into()),
        (None, Some(frontend)) => {
            for session in sessions {
                session.detach();
            }
            // DETACH_SESS is answered by the workers; give them a bounded moment before
            // stopping, so the sessions end through the handler rather than the close path.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !frontend.sessions().is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            frontend.shutdown()
        }
    };
    let devices_left = kernel.registered_devices().len();
    // After the frontend's stop: the buffers its close gave back are checked too.
    let ownership_violations = kernel.buffer_ownership_violations();
    let backend = backend.shutdown(frontend.unmap.take());
    Ok(Outcome {
        workload: result?,
        preexisting,
        frontend,
        backend,
        cpu,
        worker_cpu,
        device_cpu,
        devices_left,
        ownership_violations,
        model_syscalls: Some(model_syscalls),
        allocations,
    })
}

/// The model's syscalls between two samples.
fn model_syscalls_since(before: ModelSyscalls, now: ModelSyscalls) -> ModelSyscalls {
    ModelSyscalls {
        process_vm_readv: now.process_vm_readv.saturating_sub(before.process_vm_readv),
        process_vm_writev: now.process_vm_writev.saturating_sub(before.process_vm_writev),
        poll_pipe_writes: now.poll_pipe_writes.saturating_sub(before.poll_pipe_writes),
        poll_pipe_reads: now.poll_pipe_reads.saturating_sub(before.poll_pipe_reads),
    }
}

/// Bytes per READ of the pre-existing data scan, and READs in flight.
const SCAN_BYTES: u32 = 128 << 10;
const SCAN_DEPTH: usize = 8;

/// Boards whose medium outlives the process.
pub(crate) fn persistent(board: BoardArg) -> bool {
    matches!(board, BoardArg::File | BoardArg::Blockdev)
}

/// Check every block of the workload's region before the run writes it: zeroes, or a whole
/// stamp of its own LBA left by an earlier run ([`workload::scan`]).
pub(crate) fn scan_preexisting(
    args: &DemoArgs,
    session: &Session,
    geometry: Geometry,
    info: &scst_accel_handler::store::StoreInfo,
) -> ScanReport {
    let report = workload::scan(
        session,
        geometry,
        geometry.num_blocks,
        SCAN_BYTES
            .div_ceil(info.block_size)
            .min(info.max_transfer_blocks)
            .min(args.disk.max_transfer_blocks)
            .max(1),
        SCAN_DEPTH,
        workload_config(args).completion_timeout,
    );
    log::info!(
        "{}: pre-existing data: {} blocks checked, {} stamped by an earlier run, {} errors",
        args.disk.name,
        report.blocks_checked,
        report.stamped,
        report.errors
    );
    report
}

fn preexisting_json(o: &Outcome) -> serde_json::Value {
    o.preexisting.as_ref().map_or(serde_json::Value::Null, |p| {
        json!({
            "blocks_checked": p.blocks_checked,
            "stamped": p.stamped,
            "errors": p.errors,
            "first_errors": p.first_errors,
        })
    })
}

/// Register `disk`'s device on the loopback `kernel`, over `backend`'s store and pool, and start
/// its frontend: what the demo, the crash writer and the clone benchmark each serve. These
/// tools persist nothing, so the identity is a fresh one each run (source "generated").
/// `copy_manager`: the disk is exported to SCST's copy manager (EXTENDED COPY advertised).
pub(crate) fn start_loopback_disk(
    kernel: &LoopbackKernel,
    disk: &DiskArgs,
    backend: &Backend,
    copy_manager: bool,
    thin: bool,
) -> Result<Frontend, Box<dyn std::error::Error>> {
    let info = backend.store.info();
    let fd = kernel.open(true);
    register(&fd, &disk.register_params(&info))?;
    let identity = crate::identity::resolve(
        &disk.name,
        &crate::config::IdentitySpec::default(),
        None,
        info.device_ids.as_ref(),
    )?;
    let mut config = disk.disk_config(&info, &identity, copy_manager);
    if thin && info.supports_unmap {
        // What service.rs does for a disk whose spec asks for it (the caller checked).
        config.thin_provisioning = true;
    }
    let config = Arc::new(Disk::try_new(config)?);
    Ok(Frontend::start(
        Arc::new(fd),
        config,
        Arc::clone(&backend.store),
        Arc::clone(&backend.pool),
        disk.frontend_config(),
    )?)
}

pub(crate) fn attach(
    kernel: &LoopbackKernel,
    device: &str,
    count: usize,
) -> Result<Vec<Session>, Box<dyn std::error::Error>> {
    (0..count)
        .map(|i| {
            let spec = SessionSpec {
                initiator_name: format!("iqn.2026-11.io.scst-accel:demo-initiator-{i}"),
                target_name: "iqn.2026-11.io.scst-accel:demo-target".into(),
                lun: 0,
                rd_only: false,
            };
            kernel
                .attach_session(device, spec)
                .map_err(|e| format!("attaching session {i}: {e}").into())
        })
        .collect()
}

pub(crate) fn summary(args: &DemoArgs, o: &Outcome) -> serde_json::Value {
    let w = &o.workload;
    let cpu_us_per_command = o.cpu.map(|c| c.as_secs_f64() * 1e6 / (w.commands.max(1) as f64));
    let s = &o.frontend.stats;
    json!({
        "board": crate::service::board_name(args.board),
        "io_engine": o.backend.io_engine,
        "workload": {
            "pattern": format!("{:?}", args.pattern).to_lowercase(),
            "rw": format!("{:?}", args.rw).to_lowercase(),
            "bs": args.io_size,
            "queue_depth": args.queue_depth,
            "sessions": args.sessions,
            "duration_s": args.duration.as_secs_f64(),
            "block_size": args.disk.block_size,
            "size": args.disk.size,
        },
        "iops": w.iops(),
        "mb_per_s": w.mb_per_s(),
        "latency_us": { "p50": w.latency.p50, "p99": w.latency.p99, "p999": w.latency.p999,
                        "max": w.latency.max, "mean": w.latency.mean },
        "commands": w.commands,
        "reads": w.reads,
        "writes": w.writes,
        "verified_bytes": w.verified_bytes,
        "verify_errors": w.verify_errors,
        "preexisting": preexisting_json(o),
        "scsi_errors": w.scsi_errors,
        "unanswered_commands": w.unanswered,
        "elapsed_s": w.elapsed.as_secs_f64(),
        "cpu_s": o.cpu.map(|c| c.as_secs_f64()),
        "cpu_us_per_command": cpu_us_per_command,
        "worker_cpu_us_per_command": o.worker_cpu.map(|c| c.as_secs_f64() * 1e6 / (w.commands.max(1) as f64)),
        "device_cpu_us_per_command": o.device_cpu.map(|c| c.as_secs_f64() * 1e6 / (w.commands.max(1) as f64)),
        // The whole process's (initiator, loopback kernel model, handler, board) in the timed
        // phase; the workload's own records grow by doubling (a few per run).
        "allocations_per_command": o.allocations.map(|a| a as f64 / w.commands.max(1) as f64),
        "frontend": {
            "exec": s.exec, "exec_errors": s.exec_errors, "alloc_mem": s.alloc_mem, "parse": s.parse,
            "on_free": s.on_free, "on_cached_mem_free": s.on_cached_mem_free, "task_mgmt": s.task_mgmt,
            "attach": s.attach, "detach": s.detach, "reply_errors": s.reply_errors, "busy": s.busy,
            "ioctls": s.ioctls, "wakeups": s.wakeups, "cap_flushes": s.cap_flushes,
            "linger_looks": s.linger_looks,
            // The handler's own syscalls on the command path: one ioctl per REPLY_AND_GET_MULTI,
            // one poll per wake-up, two per look while lingering (sched_yield, then a poll
            // that does not wait) and one per look at the store's completions (sched_yield),
            // per EXEC over the whole run. Not counted: the eventfd read of a rung doorbell
            // (teardown steps, dumps) and the store's own syscalls (an accelerator queue's
            // interrupt eventfd read before a sleep, the file store's I/O).
            "handler_syscalls_per_exec": (s.ioctls + s.wakeups + 2 * s.linger_looks + s.completion_polls) as f64 / (s.exec.max(1) as f64),
            "commands_per_ioctl": s.exec as f64 / (s.ioctls.max(1) as f64),
            "buffers": { "allocated": s.buffers.allocated, "released": s.buffers.released,
                         "held_at_exit": s.buffers.buffers, "refused": s.buffers.refused },
            "panicked_workers": o.frontend.panicked_workers,
        },
        "devices_left_registered": o.devices_left,
        "buffer_ownership_violations": o.ownership_violations,
        "buffer_ownership_checked": !args.no_ownership_check,
        "kernel_model": o.model_syscalls.map(|m| json!({
            "process_vm_readv": m.process_vm_readv,
            "process_vm_writev": m.process_vm_writev,
            "poll_pipe_writes": m.poll_pipe_writes,
            "poll_pipe_reads": m.poll_pipe_reads,
            "syscalls_per_command": m.total() as f64 / (w.commands.max(1) as f64),
        })),
        "iommu_faults": o.backend.iommu_faults,
        "device_errors": o.backend.device_errors,
        "device": {
            "timeouts": o.backend.timeouts, "resets": o.backend.resets, "unknown_tags": o.backend.unknown_tags,
            "controller_resets": o.backend.controller_resets,
        },
        "pool": {
            "allocations": o.backend.pool.allocations, "reuses": o.backend.pool.reuses,
            "refused": o.backend.pool.refused, "cached_at_exit": o.backend.pool.cached,
            "mapped_bytes_at_exit": o.backend.pool.mapped_bytes,
            "mappings_at_exit": o.backend.pool.mappings, "arenas_at_exit": o.backend.pool.arenas,
            "worker_maps": o.backend.pool.worker_maps, "refill_maps": o.backend.pool.refill_maps,
            "mapped_bytes_after_release": o.backend.mapped_after, "leaked_buffers": o.backend.leaked_buffers,
        },
        "teardown": teardown_json(o),
        "locks": crate::status::locks_json(Some(w.commands)),
        "injected": args.inject,
        "healthy": healthy(args, o),
        "errors": o.preexisting.iter().flat_map(|p| p.first_errors.iter().map(|e| format!("pre-existing data: {e}")))
            .chain(w.first_errors.iter().cloned()).collect::<Vec<_>>(),
    })
}

/// The teardown budget: the sum of the steps' bounds plus the workers' stop grace and a
/// second for closing the fd and resetting the board.
fn teardown_budget() -> Duration {
    let t = TeardownConfig::default();
    t.drain
        + t.abort
        + t.flush
        + scst_accel_handler::frontend::FrontendConfig::default().stop_grace
        + Duration::from_secs(1)
}

fn teardown_json(o: &Outcome) -> serde_json::Value {
    let t = &o.frontend.teardown;
    let ms = t.duration.as_secs_f64() * 1e3 + o.backend.release_ms;
    json!({
        "ms": ms,
        "budget_ms": teardown_budget().as_secs_f64() * 1e3,
        "in_flight_at_start": t.in_flight_at_start,
        "drained": t.drained,
        "aborted": t.aborted,
        "resets": o.backend.resets,
        "answered": t.answered,
        "zombies_left": t.zombies_left,
        "buffers_held_at_close": t.buffers_held_at_close,
        "trigger": format!("{:?}", t.trigger),
        "abort_proven": t.abort_proven,
        "leases_revoked": t.leases_revoked,
        "leases_outstanding": t.leases_outstanding,
        "unmap_permitted": t.unmap_permitted,
        "pool_leaked_without_permit": o.backend.pool_leaked_without_permit,
        "device_quiesced": !o.backend.device_not_quiesced,
        "iommu_faults": o.backend.iommu_faults,
        "steps": t.steps.iter().map(|s| json!({
            "name": s.name, "ms": s.duration.as_secs_f64() * 1e3, "count": s.count, "within_bound": s.within_bound,
        })).chain(o.backend.steps.iter().map(|s| json!({
            "name": s.name, "ms": s.duration.as_secs_f64() * 1e3, "count": s.count, "within_bound": s.within_bound,
        }))).collect::<Vec<_>>(),
        "buffers_unmapped": o.backend.pool.cached + o.backend.pool.in_use - o.backend.leaked_buffers,
    })
}

/// With injected faults, commands may fail (with proper sense); they must still all be
/// answered, verified when they succeed, and leave no DMA behind.
pub(crate) fn healthy(args: &DemoArgs, o: &Outcome) -> bool {
    let w = &o.workload;
    w.verify_errors == 0
        && o.preexisting.as_ref().is_none_or(|p| p.errors == 0)
        && w.unanswered == 0
        && (w.scsi_errors == 0
            || !args.inject.is_empty()
            || args.teardown_under_load
            || args.reset_during_load)
        && o.frontend.teardown.zombies_left == 0
        && o.frontend.teardown.duration + Duration::from_secs_f64(o.backend.release_ms / 1e3)
            <= teardown_budget()
        && o.backend.iommu_faults.unwrap_or(0) == 0
        && (released_everything(o) || deliberate_leak(args, o))
        && o.frontend.panicked_workers == 0
        && o.devices_left == 0
        && o.ownership_violations == 0
        && (w.commands > 0 || !args.inject.is_empty())
}

/// Every buffer and ring was unmapped under the teardown's permit.
fn released_everything(o: &Outcome) -> bool {
    o.backend.leaked_buffers == 0
        && o.frontend.teardown.unmap_permitted
        && !o.backend.pool_leaked_without_permit
        && !o.backend.device_not_quiesced
        && o.backend.mapped_after == 0
}

/// An injected fault left a function that could be neither reset nor stopped from bus
/// mastering (a gone device, `no-reset` on a function whose config space is gone): leaking its
/// rings and pool is then the right outcome, never an unmap. Without an injected fault it is
/// not healthy.
fn deliberate_leak(args: &DemoArgs, o: &Outcome) -> bool {
    !args.inject.is_empty() && o.backend.device_not_quiesced
}

fn report(args: &DemoArgs, o: &Outcome) -> u8 {
    let w = &o.workload;
    let value = summary(args, o);
    let cpu_us_per_command = o.cpu.map(|c| c.as_secs_f64() * 1e6 / (w.commands.max(1) as f64));
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{} {} {} B, QD {}: {:.0} IOPS, {:.1} MB/s, latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us",
            format!("{:?}", args.pattern).to_lowercase(),
            format!("{:?}", args.rw).to_lowercase(),
            args.io_size,
            args.queue_depth,
            w.iops(),
            w.mb_per_s(),
            w.latency.p50,
            w.latency.p99,
            w.latency.p999
        );
        println!(
            "{} commands ({} reads, {} writes), {} bytes verified, {} verify errors, {} SCSI errors, {} unanswered",
            w.commands, w.reads, w.writes, w.verified_bytes, w.verify_errors, w.scsi_errors, w.unanswered
        );
        if let Some(us) = cpu_us_per_command {
            println!(
                "CPU {:.2} s, {:.2} us per command (whole process: initiator, loopback kernel, handler)",
                o.cpu.map_or(0.0, |c| c.as_secs_f64()),
                us
            );
        }
        if let Some(p) = &o.preexisting {
            println!(
                "pre-existing data: {} blocks checked, {} stamped by an earlier run, {} errors",
                p.blocks_checked, p.stamped, p.errors
            );
            for e in &p.first_errors {
                println!("error: pre-existing data: {e}");
            }
        }
        for e in &w.first_errors {
            println!("error: {e}");
        }
        if o.ownership_violations > 0 {
            println!(
                "error: {} buffers changed while SCST owned them (written after their EXEC reply): \
                 on a real kernel, corrupt data sent or reused",
                o.ownership_violations
            );
        }
    }
    if healthy(args, o) {
        0
    } else {
        exit::DATA
    }
}
