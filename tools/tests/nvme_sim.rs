//! The NVMe engine through the CLI on the simulated NVMe controller (`--board nvme-sim`): the
//! same teardown-under-load checks as the SCA-1 matrix in `demo.rs`, for every fault the NVMe
//! simulator offers, and recovery from a hung controller while serving.

use std::process::Command;

fn demo(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args([
            "demo",
            "--json",
            "--board",
            "nvme-sim",
            "--size",
            "16M",
            "--prefill",
            "false",
        ])
        .args(args)
        .output()
        .expect("run scst-accel");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code(), json, stderr)
}

fn number(j: &serde_json::Value, what: &str) -> f64 {
    j.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {j}"))
}

/// Every command answered, none verified wrong, no zombie, no IOMMU fault, within budget, the
/// pool unmapped under the frontend's permit (or, for a gone controller that cannot be
/// quiesced, leaked whole).
fn assert_clean_teardown(name: &str, code: Option<i32>, j: &serde_json::Value, stderr: &str) {
    let t = &j["teardown"];
    assert_eq!(code, Some(0), "{name}: {j}\n{stderr}");
    assert_eq!(j["unanswered_commands"], 0, "{name}: {j}");
    assert_eq!(j["verify_errors"], 0, "{name}: {j}");
    assert_eq!(t["zombies_left"], 0, "{name}: {t}");
    assert_eq!(j["iommu_faults"], 0, "{name}: {j}");
    assert_eq!(t["unmap_permitted"], true, "{name}: {t}");
    assert!(
        number(&t["ms"], "ms") <= number(&t["budget_ms"], "budget_ms"),
        "{name}: over budget: {t}"
    );
    if t["device_quiesced"] == true {
        assert_eq!(j["pool"]["leaked_buffers"], 0, "{name}: {j}");
        assert_eq!(j["pool"]["mapped_bytes_after_release"], 0, "{name}: {j}");
    } else {
        // A gone controller can be neither reset nor confirmed off the bus: its queues and
        // pool are leaked on purpose, never unmapped.
        assert!(
            j["injected"]
                .as_array()
                .is_some_and(|f| f.contains(&"gone".into())),
            "{name}: {j}"
        );
        assert_eq!(
            j["pool"]["leaked_buffers"], j["pool"]["cached_at_exit"],
            "{name}: {j}"
        );
    }
    assert_eq!(j["frontend"]["panicked_workers"], 0, "{name}: {j}");
}

#[test]
fn teardown_under_load_on_the_nvme_engine_leaves_nothing_behind() {
    // (name, faults, command timeout, commands certainly in flight at teardown, only the
    // teardown's abort can end them)
    let behaviours: [(&str, &[&str], &str, bool, bool); 7] = [
        ("healthy", &[], "300ms", false, false),
        ("slow", &["latency:2ms"], "300ms", true, false),
        ("media errors", &["error:every=7"], "300ms", false, false),
        ("lost completions", &["never-complete:every=4"], "30s", true, true),
        ("hung controller", &["hang"], "30s", true, true),
        ("controller fatal status", &["cfs"], "300ms", false, false),
        ("device gone", &["gone"], "300ms", false, false),
    ];
    for (name, faults, timeout, in_flight, stuck) in behaviours {
        let mut args = vec![
            "--teardown-under-load",
            "--duration",
            "1s",
            "--command-timeout",
            timeout,
            "--queue-depth",
            "16",
        ];
        for fault in faults {
            args.extend(["--inject", fault]);
        }
        let (code, j, stderr) = demo(&args);
        assert_clean_teardown(name, code, &j, &stderr);
        let t = &j["teardown"];
        if in_flight {
            assert!(
                number(&t["in_flight_at_start"], "in_flight_at_start") > 0.0,
                "{name}: {t}"
            );
        }
        if stuck {
            assert!(
                number(&t["aborted"], "aborted") > 0.0,
                "{name}: the abort ended nothing: {t}"
            );
        }
    }
}

#[test]
fn a_hung_nvme_controller_is_reset_and_serving_goes_on() {
    let (code, j, stderr) = demo(&[
        "--inject",
        "hang",
        "--command-timeout",
        "500ms",
        "--duration",
        "3s",
    ]);
    assert_clean_teardown("hang while serving", code, &j, &stderr);
    assert!(
        number(&j["device"]["controller_resets"], "controller_resets") >= 1.0,
        "the controller was never reset: {j}"
    );
    assert!(number(&j["commands"], "commands") > 0.0, "{j}");
}

#[test]
fn a_controller_reset_under_load_fails_only_what_was_in_flight() {
    let (code, j, stderr) = demo(&["--reset-during-load", "--duration", "2s", "--queue-depth", "32"]);
    assert_clean_teardown("reset during load", code, &j, &stderr);
    assert!(
        number(&j["device"]["controller_resets"], "controller_resets") >= 1.0,
        "{j}"
    );
}
