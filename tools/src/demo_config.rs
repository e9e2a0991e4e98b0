//! `scst-accel demo --config FILE`: every disk of a service configuration served at once on the
//! loopback kernel, through the same [`Service`] that `serve` runs, with a verified workload on
//! each disk at the same time. A disk whose device fails is torn down alone; the others finish
//! verified. The JSON has one entry per disk (the figures `demo --json` gives for one disk) and
//! the totals.

use crate::demo::DemoArgs;
use crate::demo::Outcome;
use crate::exit;
use crate::service::DiskOutcome;
use crate::service::KernelSide;
use crate::service::Service;
use crate::service::StartOptions;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::transport::version;
use scst_accel_handler::workload;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::ScanReport;
use scst_accel_handler::workload::WorkloadReport;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

/// One disk's part of the run.
struct Load {
    name: String,
    sessions: Vec<Session>,
    geometry: Geometry,
    /// The arguments of the disk (its board, name, limits), for the pre-existing data scan.
    disk_args: DemoArgs,
    info: StoreInfo,
}

/// One disk's workload, and what its medium held before (a persistent board).
type LoadReport = (Result<WorkloadReport, String>, Option<ScanReport>);

/// Run; returns the process exit code (0 only when every disk is healthy by `demo`'s rules).
pub fn run(args: &DemoArgs, path: &Path) -> u8 {
    let config = match crate::config::load::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let kernel = LoopbackKernel::new(KernelConfig {
        version: version::resolve(&args.disk.scst_version),
        ..KernelConfig::default()
    });
    let specs = config.disks.clone();
    let started = Instant::now();
    let cpu_before = crate::cpu::process_cpu_time();
    // The loopback sessions stand in for SCST's targets: export blocks are not applied.
    let options = StartOptions {
        apply_exports: false,
        persist_identities: false,
        ..StartOptions::default()
    };
    let mut service = Service::start(
        config.service,
        config.disks,
        KernelSide::Loopback(kernel.clone()),
        options,
    );
    let mut loads = Vec::new();
    for spec in &specs {
        let name = &spec.args.name;
        let (Some(info), Some(_)) = (service.info(name), service.frontend(name)) else {
            log::error!("disk {name} did not start; the others run");
            continue;
        };
        let sessions = match crate::demo::attach(&kernel, name, args.sessions.max(1)) {
            Ok(s) => s,
            Err(e) => {
                log::error!("disk {name}: {e}");
                continue;
            }
        };
        let geometry = Geometry {
            block_size: info.block_size,
            num_blocks: info
                .num_blocks
                .min(spec.args.size / u64::from(info.block_size))
                .max(1),
        };
        let mut disk_args = args.clone();
        disk_args.disk = spec.args.clone();
        disk_args.board = spec.board;
        loads.push(Load {
            name: name.clone(),
            sessions,
            geometry,
            disk_args,
            info,
        });
    }
    let reports = run_loads(args, &mut service, &loads);
    detach_all(&mut service, loads);
    let outcomes = service.stop();
    let cpu = cpu_before
        .zip(crate::cpu::process_cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    let devices_left = kernel.registered_devices().len();
    let ownership_violations = kernel.buffer_ownership_violations();
    let (value, healthy) = summary(
        args,
        &specs,
        outcomes,
        reports,
        (devices_left, ownership_violations),
        cpu,
        started.elapsed(),
    );
    if args.json {
        println!("{value}");
    } else {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    }
    if healthy {
        0
    } else {
        exit::DATA
    }
}

/// Every disk's workload at once (one thread per disk, joined explicitly), while this thread
/// keeps supervising: a disk whose trigger fires is torn down alone during the run.
fn run_loads(args: &DemoArgs, service: &mut Service, loads: &[Load]) -> Vec<(String, LoadReport)> {
    let config = crate::demo::workload_config(args);
    std::thread::scope(|scope| {
        let handles: Vec<_> = loads
            .iter()
            .map(|load| {
                let config = &config;
                let handle = std::thread::Builder::new()
                    .name(format!("demo-{}", load.name))
                    .spawn_scoped(scope, move || {
                        // A persistent medium is checked first, as `demo` does, on this thread so
                        // the disk stays supervised meanwhile.
                        let preexisting = crate::demo::persistent(load.disk_args.board).then(|| {
                            crate::demo::scan_preexisting(
                                &load.disk_args,
                                &load.sessions[0],
                                load.geometry,
                                &load.info,
                            )
                        });
                        let report = workload::run(&load.sessions, load.geometry, config, &mut |_| {})
                            .map_err(|e| e.to_string());
                        (report, preexisting)
                    });
                (load.name.clone(), handle)
            })
            .collect();
        while handles
            .iter()
            .any(|(_, h)| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            service.supervise(Duration::from_millis(50));
        }
        handles
            .into_iter()
            .map(|(name, handle)| {
                let result = match handle {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| (Err("the workload thread panicked".into()), None)),
                    Err(e) => (Err(format!("cannot spawn the workload thread: {e}")), None),
                };
                (name, result)
            })
            .collect()
    })
}

/// End the sessions through the handler (DETACH_SESS answered by the workers), bounded, so they
/// do not end through the close path.
fn detach_all(service: &mut Service, loads: Vec<Load>) {
    let names: Vec<String> = loads.iter().map(|l| l.name.clone()).collect();
    for load in loads {
        for session in load.sessions {
            session.detach();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && names
            .iter()
            .any(|n| service.frontend(n).is_some_and(|f| !f.sessions().is_empty()))
    {
        service.supervise(Duration::from_millis(2));
    }
}

fn summary(
    args: &DemoArgs,
    specs: &[crate::config::DiskSpec],
    outcomes: Vec<DiskOutcome>,
    mut reports: Vec<(String, LoadReport)>,
    (devices_left, ownership_violations): (usize, u64),
    cpu: Option<Duration>,
    elapsed: Duration,
) -> (serde_json::Value, bool) {
    let mut disks = Vec::new();
    let mut healthy = devices_left == 0 && ownership_violations == 0 && !outcomes.is_empty();
    let mut totals = WorkloadReport::default();
    for (spec, outcome) in specs.iter().zip(outcomes) {
        let report = reports
            .iter()
            .position(|(n, _)| *n == outcome.name)
            .map(|i| reports.swap_remove(i).1);
        let mut disk_args = args.clone();
        disk_args.disk = spec.args.clone();
        disk_args.board = spec.board;
        disk_args.pci = spec.pci.clone();
        disk_args.inject = spec.inject.clone();
        let (report, preexisting) = report.map_or((None, None), |(r, p)| (Some(r), p));
        let (entry, ok) = disk_entry(&disk_args, outcome, report, preexisting, &mut totals);
        healthy &= ok;
        disks.push(entry);
    }
    let secs = totals.elapsed.as_secs_f64().max(1e-9);
    let value = json!({
        "config": args.config.as_ref().map(|p| p.display().to_string()),
        "disks": disks,
        "totals": {
            "disks": disks.len(),
            "commands": totals.commands,
            "iops": totals.commands as f64 / secs,
            "mb_per_s": totals.bytes as f64 / 1e6 / secs,
            "verified_bytes": totals.verified_bytes,
            "verify_errors": totals.verify_errors,
            "scsi_errors": totals.scsi_errors,
            "unanswered_commands": totals.unanswered,
            // Whole process from start to end: board bring-up, prefill and teardown included
            // (per-command CPU is `demo --json`'s, one disk at a time).
            "process_cpu_s": cpu.map(|c| c.as_secs_f64()),
            "wall_s": elapsed.as_secs_f64(),
            "devices_left_registered": devices_left,
            "buffer_ownership_violations": ownership_violations,
        },
        "healthy": healthy,
    });
    (value, healthy)
}

/// One disk's JSON entry (`demo --json`'s figures plus name, state and failure) and whether it
/// is healthy; adds its workload to `totals`.
fn disk_entry(
    args: &DemoArgs,
    outcome: DiskOutcome,
    report: Option<Result<WorkloadReport, String>>,
    preexisting: Option<ScanReport>,
    totals: &mut WorkloadReport,
) -> (serde_json::Value, bool) {
    let base = json!({
        "name": outcome.name,
        "state": outcome.state,
        "failure": outcome.failure,
        "exit_code": outcome.exit_code,
    });
    let (Some(frontend), Some(backend), Some(Ok(workload))) = (outcome.frontend, outcome.backend, report)
    else {
        let mut entry = base;
        entry["healthy"] = json!(false);
        entry["errors"] = json!(["the disk did not start or its workload did not run"]);
        return (entry, false);
    };
    totals.commands += workload.commands;
    totals.bytes += workload.bytes;
    totals.verified_bytes += workload.verified_bytes;
    totals.verify_errors += workload.verify_errors;
    totals.scsi_errors += workload.scsi_errors;
    totals.unanswered += workload.unanswered;
    totals.elapsed = totals.elapsed.max(workload.elapsed);
    let outcome_figures = Outcome {
        workload,
        preexisting,
        frontend,
        backend,
        cpu: None,
        worker_cpu: None,
        device_cpu: None,
        devices_left: 0,
        // One kernel serves every disk of the file: its buffer checks and syscalls are not per
        // disk (the summary checks the kernel's count).
        ownership_violations: 0,
        model_syscalls: None,
        allocations: None,
    };
    let mut entry = crate::demo::summary(args, &outcome_figures);
    let ok = crate::demo::healthy(args, &outcome_figures);
    if let (Some(entry), Some(base)) = (entry.as_object_mut(), base.as_object()) {
        for (k, v) in base {
            entry.insert(k.clone(), v.clone());
        }
    }
    (entry, ok)
}
