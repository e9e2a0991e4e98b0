//! `scst-accel bench` as a user runs it: the file store against RAM on both layers, fio side by
//! side (or reported as skipped, with the reason), and what happens to the image. Behaviour
//! only (shape, verification, the image's fate): never timings, this machine is shared.

use scst_accel_hal::skip::test_skipped;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

const WORKLOADS: [&str; 4] = [
    "4k-randread-qd32",
    "4k-randwrite-qd32",
    "128k-seqread-qd8",
    "128k-seqwrite-qd8",
];

/// A directory of its own under cargo's scratch directory (a real file system, not tmpfs).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Run `scst-accel bench ARGS`, with `PATH` replaced when given; (exit code, stdout, stderr).
fn bench(args: &[&str], path_env: Option<&Path>) -> (Option<i32>, String, String) {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_scst-accel"));
    command.arg("bench").args(args);
    if let Some(path) = path_env {
        command.env("PATH", path);
    }
    let out = command.output().expect("run scst-accel");
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "bench took {:?}",
        started.elapsed()
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str, stderr: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

/// Every row: verified, nothing failed or unanswered, figures present.
fn assert_clean(row: &serde_json::Value) {
    assert_eq!(row["verify_errors"], 0, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["unanswered_commands"], 0, "{row}");
    assert_eq!(row["healthy"], true, "{row}");
    assert!(row["commands"].as_u64().unwrap_or(0) > 0, "{row}");
    for key in ["iops", "mb_per_s", "ratio_to_first"] {
        assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
    }
    for key in ["p50", "p99"] {
        assert!(
            row["latency_us"][key].as_f64().is_some(),
            "latency {key} in {row}"
        );
    }
}

/// A row's command path allocated nothing: at most a warm-up's few allocations in the whole
/// run (first uses of scratch lists, kept afterwards) and under one per hundred commands, so
/// one allocation per command, or one per few dozen (a channel's block), fails.
fn assert_allocation_free(row: &serde_json::Value) {
    let per = row["allocations_per_command"]
        .as_f64()
        .unwrap_or_else(|| panic!("allocations not counted: {row}"));
    let commands = row["commands"].as_f64().unwrap_or(0.0);
    assert!(commands > 0.0, "{row}");
    assert!(
        per * commands <= 32.0 + 0.01 * commands,
        "{per} allocations per command over {commands} commands: {row}"
    );
}

/// The handler-alone row and the reference row of `workload`, and their ratio: measured,
/// healthy (every replayed command answered right, every buffer back), figures present.
fn assert_handler_and_reference(j: &serde_json::Value, workload: &str) {
    let rows = j["results"].as_array().expect("results");
    let row = |layer: &str| {
        rows.iter()
            .find(|r| r["workload"] == workload && r["layer"] == layer)
            .unwrap_or_else(|| panic!("no {workload} {layer} row in {j}"))
    };
    let handler = row("handler");
    assert_eq!(handler["board"], "null", "{handler}");
    assert_eq!(handler["healthy"], true, "{handler}");
    assert_eq!(handler["replay"]["finished"], true, "{handler}");
    assert_eq!(handler["replay"]["bad_replies"], 0, "{handler}");
    assert_eq!(handler["buffers_left_in_handler"], 0, "{handler}");
    assert!(handler["commands"].as_u64().unwrap_or(0) > 0, "{handler}");
    assert!(
        handler["cpu_us_per_command"].as_f64().is_some_and(|v| v > 0.0),
        "{handler}"
    );
    // The binary's counting allocator is installed: the figure is a number, not null, and
    // the command path allocates nothing (issue 13's goal): the few allocations of a run are
    // its warm-up's.
    assert_allocation_free(handler);
    assert!(
        handler["reply_and_get_multi_per_command"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{handler}"
    );
    let (all, shared) = (
        handler["lock_acquisitions_per_command"].as_f64().expect("locks"),
        handler["shared_lock_acquisitions_per_command"]
            .as_f64()
            .expect("shared locks"),
    );
    assert!(shared <= all, "{handler}");
    // Every lock the handler takes per command is its worker's own (issue 13's goal).
    assert_eq!(shared, 0.0, "shared lock acquisitions per command: {handler}");
    let reference = row("reference");
    for key in ["memcpy_us", "empty_ioctl_us"] {
        assert!(
            reference[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {reference}"
        );
    }
    for key in [
        "handler cpu per command / memcpy",
        "handler cpu per command / memcpy in cache",
    ] {
        let ratio = &j["ratios"][workload][key];
        assert!(ratio.as_f64().is_some_and(|v| v > 0.0), "{key}: {ratio} in {j}");
    }
}

/// ram,file on both layers, every workload, in a directory: 16 verified rows, each file row
/// with its mode and its ratio to RAM; the image made for the run is gone afterwards; and with
/// a PATH that has no fio, `--fio` is reported as skipped with the reason, not silently.
#[test]
fn ram_and_file_on_both_layers_with_fio_missing() {
    let dir = scratch("ram-file");
    let empty_path = scratch("no-fio");
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "ram,file",
            "--path",
            dir.to_str().expect("utf-8"),
            "--size",
            "16M",
            "--duration",
            "200ms",
            "--fio",
            "--json",
        ],
        Some(&empty_path),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    let rows = j["results"].as_array().expect("results");
    // Per workload: 2 boards x 2 layers, plus the handler alone and the reference, once each.
    assert_eq!(rows.len(), WORKLOADS.len() * (2 * 2 + 2), "{j}");
    for workload in WORKLOADS {
        assert_handler_and_reference(&j, workload);
        for board in ["ram", "file"] {
            for layer in ["loopback", "store"] {
                let row = rows
                    .iter()
                    .find(|r| r["workload"] == workload && r["board"] == board && r["layer"] == layer)
                    .unwrap_or_else(|| panic!("no {workload} {board} {layer} in {j}"));
                assert_clean(row);
                if board == "file" {
                    assert!(row["io_mode"].is_string(), "{row}");
                    let engine = row["io_engine"].as_str().unwrap_or("");
                    assert!(engine == "uring" || engine == "threads", "{row}");
                    assert!(row.get("ratio_to_fio").is_none(), "no fio ran: {row}");
                }
            }
        }
        for layer in ["loopback", "store"] {
            let key = format!("file/ram ({layer})");
            assert!(j["ratios"][workload][&key].as_f64().is_some(), "{key} in {j}");
            // Each board's cost against one copy of its block, per CPU and per wall second.
            for board in ["ram", "file"] {
                for what in ["memcpy / cpu per command", "MB/s / memcpy MB/s"] {
                    let key = format!("{board} {what} ({layer})");
                    let r = j["ratios"][workload][&key].as_f64();
                    assert!(r.is_some_and(|r| r > 0.0), "{key} in {j}");
                }
            }
        }
    }
    assert_eq!(j["healthy"], true);
    assert!(j["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{j}");
    // The image: made for the run in the directory, in the mode reported, removed afterwards.
    let mode = j["file"]["io_mode"].as_str().expect("io_mode");
    assert!(mode == "direct" || mode == "buffered", "{j}");
    assert_eq!(j["file"]["created_and_removed"], true, "{j}");
    let image = PathBuf::from(j["file"]["path"].as_str().expect("path"));
    assert_eq!(image.parent(), Some(dir.as_path()));
    assert!(!image.exists(), "{} left behind", image.display());
    // fio: skipped, loudly, with the reason and how to install it.
    assert_eq!(j["fio"]["status"], "skipped", "{j}");
    let reason = j["fio"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("fio not found") && reason.contains("install-fio.sh"),
        "{reason}"
    );
    assert!(stderr.contains("fio skipped"), "{stderr}");
    assert!(!rows.iter().any(|r| r["board"] == "fio"), "{j}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty_path);
}

/// The table names the layers, the fio status and the fairness caveat.
#[test]
fn the_table_says_what_was_compared() {
    let dir = scratch("table");
    let empty_path = scratch("table-no-fio");
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "ram,file",
            "--path",
            dir.join("x.img").to_str().expect("utf-8"),
            "--size",
            "16M",
            "--duration",
            "100ms",
            "--workloads",
            "4k-randread-qd32",
            "--fio",
        ],
        Some(&empty_path),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for text in [
        "4k-randread-qd32",
        "loopback",
        "store",
        "file/ram (store)",
        "fio: skipped: fio not found",
        "note: loopback:",
        "machine: ",
    ] {
        assert!(stdout.contains(text), "{text:?} missing from:\n{stdout}");
    }
    assert!(
        !dir.join("x.img").exists(),
        "the image made for the run is removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty_path);
}

/// `--sessions` splits the loopback layer's queue depth over that many initiator sessions:
/// the handler sees each attach, every read is verified; zero is refused.
#[test]
fn the_loopback_layer_runs_the_sessions_asked_for() {
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "ram",
            "--layers",
            "loopback",
            "--size",
            "16M",
            "--duration",
            "100ms",
            "--workloads",
            "4k-randread-qd32",
            "--sessions",
            "3",
            "--json",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    assert_eq!(j["sessions"], 3, "{j}");
    let rows = j["results"].as_array().expect("results");
    assert_eq!(rows.len(), 1, "{j}");
    assert_clean(&rows[0]);
    assert_eq!(
        rows[0]["sessions"], 3,
        "the handler saw three attaches: {}",
        rows[0]
    );
    assert_eq!(
        rows[0]["device_cpu_us_per_command"], 0.0,
        "no simulated board, no device CPU: {}",
        rows[0]
    );
    assert!(rows[0]["verified_bytes"].as_u64().unwrap_or(0) > 0, "{}", rows[0]);

    let (code, stdout, stderr) = bench(&["--boards", "ram", "--sessions", "0"], None);
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("--sessions"), "{stderr}");
}

/// An existing image is used as is: at its own size, never truncated, and kept; the engine
/// asked for is the one that runs.
#[test]
fn an_existing_image_is_used_at_its_size_and_kept() {
    let dir = scratch("existing");
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "file",
            "--layers",
            "store",
            "--workloads",
            "4k-randread-qd32,128k-seqwrite-qd8",
            "--path",
            image.to_str().expect("utf-8"),
            "--size",
            "64M",
            "--duration",
            "100ms",
            "--io-engine",
            "threads",
            "--json",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    assert_eq!(j["file"]["size"], 8 << 20, "{j}");
    assert_eq!(j["file"]["created_and_removed"], false, "{j}");
    for row in j["results"].as_array().expect("results") {
        assert_clean(row);
        assert_eq!(row["region_bytes"], 8 << 20, "{row}");
        assert_eq!(row["io_engine"], "threads", "{row}");
    }
    assert_eq!(std::fs::metadata(&image).expect("kept").len(), 8 << 20);
    assert_eq!(j["fio"]["status"], "not requested");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file board without --path is a usage error that says what to give.
#[test]
fn a_file_board_needs_a_path() {
    let (code, stdout, stderr) = bench(&["--boards", "ram,file", "--duration", "100ms"], None);
    assert_eq!(code, Some(64), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--path") && stderr.contains("/dev/shm"),
        "{stderr}"
    );
}

/// With fio installed: fio runs on the same file, its row and the file rows' ratio to it are
/// reported. Without it (or where the kernel refuses its ioengine) this says so and stops.
#[test]
fn fio_side_by_side_when_installed() {
    let Ok(paths) = std::env::var("PATH") else {
        test_skipped("fio_side_by_side_when_installed", "no PATH");
        return;
    };
    if !std::env::split_paths(&paths).any(|d| d.join("fio").is_file()) {
        test_skipped(
            "fio_side_by_side_when_installed",
            "fio is not installed (tools/bench/install-fio.sh)",
        );
        return;
    }
    let dir = scratch("fio");
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "ram,file",
            "--path",
            dir.to_str().expect("utf-8"),
            "--size",
            "16M",
            "--duration",
            "200ms",
            "--workloads",
            "4k-randread-qd32,128k-seqwrite-qd8",
            "--fio",
            "--json",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    if j["fio"]["status"] == "failed" {
        test_skipped(
            "fio_side_by_side_when_installed",
            &format!("fio is installed but failed here: {}", j["fio"]["errors"]),
        );
        return;
    }
    assert_eq!(j["fio"]["status"], "ran", "{j}");
    let direct = j["file"]["io_mode"] == "direct";
    assert_eq!(j["fio"]["direct"], direct, "fio runs in the store's mode: {j}");
    let rows = j["results"].as_array().expect("results");
    for workload in ["4k-randread-qd32", "128k-seqwrite-qd8"] {
        let fio = rows
            .iter()
            .find(|r| r["workload"] == workload && r["board"] == "fio")
            .unwrap_or_else(|| panic!("no fio row for {workload}: {j}"));
        assert!(fio["iops"].as_f64().is_some_and(|v| v > 0.0), "{fio}");
        assert!(fio["cpu_us_per_command"].as_f64().is_some(), "{fio}");
        for layer in ["loopback", "store"] {
            let key = format!("file/fio ({layer})");
            assert!(j["ratios"][workload][&key].as_f64().is_some(), "{key} in {j}");
        }
    }
    assert!(
        std::fs::read_dir(&dir).expect("dir").next().is_none(),
        "image removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--baseline`: the handler/copy ratio of this run against a record; more than twice the
/// record fails the run (exit 70, said on stderr), a record not measured is a usage error.
/// The records are extreme on purpose (this is about the check, not about a timing).
#[test]
fn the_baseline_check_fails_a_run_whose_handler_cost_more_than_doubled() {
    let dir = scratch("baseline");
    let run = |recorded: f64, workload: &str| {
        let file = dir.join(format!("baseline-{recorded}.json"));
        std::fs::write(
            &file,
            format!(r#"{{"workload": "{workload}", "handler_cpu_per_copy": {recorded}}}"#),
        )
        .expect("baseline file");
        bench(
            &[
                "--layers",
                "handler,reference",
                "--workloads",
                "4k-randread-qd32",
                "--size",
                "16M",
                "--duration",
                "100ms",
                "--baseline",
                file.to_str().expect("utf-8"),
                "--json",
            ],
            None,
        )
    };
    let (code, stdout, stderr) = run(1e9, "4k-randread-qd32");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    assert_eq!(j["baseline"]["passed"], true, "{j}");
    assert!(
        stderr.contains("handler cost check") && stderr.contains("passed"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(1e-9, "4k-randread-qd32");
    assert_eq!(code, Some(70), "{stdout}\n{stderr}");
    assert_eq!(json(&stdout, &stderr)["baseline"]["passed"], false);
    assert!(stderr.contains("FAILED"), "{stderr}");
    let (code, _, stderr) = run(1.0, "128k-seqread-qd8");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--layers handler,reference"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store layer on the simulated accelerators is their engine alone (queues, doorbells,
/// completions, DMA into the pool's mapped buffers): verified rows whose device counters say
/// nothing timed out or reset.
#[test]
fn the_store_layer_runs_the_simulated_engines_alone() {
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "sim,nvme-sim",
            "--layers",
            "store",
            "--workloads",
            "4k-randread-qd32,128k-seqwrite-qd8",
            "--size",
            "16M",
            "--duration",
            "100ms",
            "--json",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j = json(&stdout, &stderr);
    let rows = j["results"].as_array().expect("results");
    assert_eq!(rows.len(), 4, "{j}");
    for row in rows {
        assert_eq!(row["layer"], "store", "{row}");
        assert_clean(row);
        // The simulated board's threads did the transfers: their CPU is counted apart.
        let device = row["device_cpu_us_per_command"].as_f64().unwrap_or(0.0);
        assert!(device > 0.0, "the device's CPU in {row}");
        let host = row["host_cpu_us_per_command"].as_f64().expect("host CPU");
        let cpu = row["cpu_us_per_command"].as_f64().expect("CPU");
        assert!(
            (host - (cpu - device).max(0.0)).abs() < 1e-9,
            "host = CPU less the device's: {row}"
        );
        assert_eq!(row["device"]["timeouts"], 0, "{row}");
        assert_eq!(row["device"]["resets"], 0, "{row}");
        assert_eq!(row["device"]["unknown_tags"], 0, "{row}");
        // Neither the store's queue nor the simulated device allocates per command: not the
        // scatter lists of a 128 KiB command, not the PRP lists, not a posted doorbell.
        assert_allocation_free(row);
    }
    assert_eq!(j["healthy"], true);
}

/// A hardware board needs its PCI function; without one the run stops before measuring
/// anything and says which flag is missing.
#[test]
fn a_hardware_board_without_pci_is_refused_with_the_flag_to_add() {
    let (code, stdout, stderr) = bench(
        &[
            "--boards",
            "qemu-nvme",
            "--layers",
            "store",
            "--workloads",
            "4k-randread-qd32",
            "--duration",
            "100ms",
        ],
        None,
    );
    assert_ne!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("--pci"), "{stderr}");
}
