//! The README's main command, run as a user would: `scst-accel demo --json`.

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

fn demo(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .arg("demo")
        .arg("--json")
        .args(args)
        .output()
        .expect("run scst-accel");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "demo took {:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code(), json, stderr)
}

#[test]
fn demo_json_reports_a_verified_mixed_workload() {
    let (code, j, stderr) = demo(&["--duration", "1s", "--size", "16M", "--queue-depth", "8"]);
    assert_eq!(code, Some(0), "{j}\n{stderr}");
    for key in [
        "iops",
        "mb_per_s",
        "commands",
        "verified_bytes",
        "verify_errors",
        "unanswered_commands",
    ] {
        assert!(j.get(key).is_some(), "missing {key} in {j}");
    }
    for key in ["p50", "p99", "p999"] {
        assert!(
            j["latency_us"][key].as_f64().is_some_and(|v| v > 0.0),
            "latency {key} in {j}"
        );
    }
    assert_eq!(j["verify_errors"], 0);
    assert_eq!(j["unanswered_commands"], 0);
    assert!(j["commands"].as_u64().unwrap_or(0) > 0);
    assert!(
        j["reads"].as_u64().unwrap_or(0) > 0 && j["writes"].as_u64().unwrap_or(0) > 0,
        "{j}"
    );
    assert!(j["verified_bytes"].as_u64().unwrap_or(0) > 0, "{j}");
}

#[test]
fn demo_sequential_large_reads_with_several_sessions() {
    let (code, j, stderr) = demo(&[
        "--duration",
        "1s",
        "--size",
        "32M",
        "--pattern",
        "sequential",
        "--rw",
        "read",
        "--bs",
        "128k",
        "--sessions",
        "3",
        "--queue-depth",
        "6",
        "--block-size",
        "4096",
    ]);
    assert_eq!(code, Some(0), "{j}\n{stderr}");
    assert_eq!(j["verify_errors"], 0);
    assert_eq!(j["writes"], 0, "timed phase is read-only");
    assert_eq!(j["frontend"]["attach"], 3);
    assert_eq!(j["frontend"]["detach"], 3);
}

#[test]
fn demo_rejects_bad_arguments_with_usage_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["demo", "--bs", "1000"])
        .output()
        .expect("run scst-accel");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bs"));
}

/// Issue 3's done-check, in small: every fault kind through the CLI ends healthy (all commands
/// answered, no wrong data, zero IOMMU faults, everything unmapped).
#[test]
fn demo_survives_every_injected_fault_kind() {
    for fault in [
        "latency:100us",
        "never-complete:every=50",
        "error:every=20",
        "hang:queue=1",
        "gone",
        "fatal",
        "unknown-tag:every=30",
        "duplicate:every=30",
        "bad-phase:every=30",
    ] {
        let (code, j, stderr) = demo(&[
            "--board",
            "sim",
            "--inject",
            fault,
            "--command-timeout",
            "300ms",
            "--duration",
            "1s",
            "--size",
            "16M",
            "--queue-depth",
            "8",
        ]);
        assert_eq!(code, Some(0), "{fault}: {j}\n{stderr}");
        assert_eq!(j["unanswered_commands"], 0, "{fault}");
        assert_eq!(j["verify_errors"], 0, "{fault}");
        assert_eq!(j["iommu_faults"], 0, "{fault}");
        assert_eq!(j["pool"]["mapped_bytes_after_release"], 0, "{fault}");
        assert_eq!(j["frontend"]["panicked_workers"], 0, "{fault}");
    }
}

#[test]
fn demo_rejects_an_unknown_fault_with_the_accepted_forms() {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["demo", "--inject", "meteor"])
        .output()
        .expect("run scst-accel");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never-complete"));
}

/// Issue 4's done-check, in small: teardown with the workload still running, healthy and under
/// faults, answers every command, leaves no zombie, takes no IOMMU fault, stays in budget.
#[test]
fn teardown_under_load_leaves_nothing_behind() {
    for fault in [
        None,
        Some("hang"),
        Some("never-complete:every=20"),
        Some("fatal"),
        Some("gone"),
    ] {
        let mut args = vec![
            "--board",
            "sim",
            "--teardown-under-load",
            "--duration",
            "1s",
            "--command-timeout",
            "300ms",
            "--size",
            "16M",
            "--queue-depth",
            "16",
        ];
        if let Some(f) = fault {
            args.extend(["--inject", f]);
        }
        let (code, j, stderr) = demo(&args);
        let t = &j["teardown"];
        assert_eq!(code, Some(0), "{fault:?}: {j}\n{stderr}");
        assert_eq!(j["unanswered_commands"], 0, "{fault:?}");
        assert_eq!(t["zombies_left"], 0, "{fault:?}");
        assert_eq!(t["iommu_faults"], 0, "{fault:?}");
        assert!(t["ms"].as_f64() <= t["budget_ms"].as_f64(), "{fault:?}: {t}");
        assert_eq!(j["pool"]["mapped_bytes_after_release"], 0, "{fault:?}");
    }
}
