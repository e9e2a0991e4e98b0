//! `scst-accel demo --config`: every disk of a service configuration at once on the loopback
//! kernel, through the same service `serve` runs; a failed device takes down its disk alone.

use std::process::Command;

fn demo_config(path: &str) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["demo", "--config", path, "--duration", "1s", "--json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run scst-accel demo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code(), json, stderr)
}

fn disk<'a>(j: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    j["disks"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no disk {name} in {j}"))
}

/// A disk that served a verified workload and released everything.
fn assert_verified(j: &serde_json::Value, name: &str) {
    let d = disk(j, name);
    assert_eq!(d["state"], "stopped", "{d}");
    assert!(
        d["commands"].as_u64().unwrap_or(0) > 0,
        "{name} ran commands: {d}"
    );
    assert!(d["verified_bytes"].as_u64().unwrap_or(0) > 0, "{d}");
    for field in ["verify_errors", "unanswered_commands", "scsi_errors"] {
        assert_eq!(d[field], 0, "{name} {field}: {d}");
    }
    // Counted (0) on the simulated boards, null where nothing can count them (RAM).
    let simulated = d["board"] == "sim" || d["board"] == "nvme-sim";
    let expected = if simulated {
        serde_json::json!(0)
    } else {
        serde_json::Value::Null
    };
    assert_eq!(d["iommu_faults"], expected, "{name}: {d}");
    assert_eq!(d["teardown"]["zombies_left"], 0, "{d}");
    assert_eq!(d["pool"]["mapped_bytes_after_release"], 0, "{d}");
    assert_eq!(d["healthy"], true, "{d}");
}

#[test]
fn the_shipped_example_serves_three_boards_at_once_verified() {
    let (code, j, stderr) = demo_config("examples/appliance.toml");
    assert_eq!(code, Some(0), "{j}\n{stderr}");
    let disks = j["disks"].as_array().expect("disks");
    assert!(disks.len() >= 3, "{j}");
    let boards: std::collections::BTreeSet<&str> = disks.iter().filter_map(|d| d["board"].as_str()).collect();
    assert!(boards.len() >= 3, "three different boards: {boards:?}");
    for d in disks {
        assert_verified(&j, d["name"].as_str().expect("name"));
    }
    assert_eq!(j["totals"]["disks"], disks.len());
    assert_eq!(j["totals"]["verify_errors"], 0);
    assert_eq!(j["totals"]["devices_left_registered"], 0);
    assert_eq!(j["healthy"], true);
}

#[test]
fn a_device_that_fails_takes_down_its_disk_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("faulty.toml");
    std::fs::write(
        &path,
        r#"
[[disk]]
name = "fail-sim"
board = "sim"
size = "16M"
block_size = 4096
inject = ["gone"]

[[disk]]
name = "ok-nvme"
board = "nvme-sim"
size = "16M"

[[disk]]
name = "ok-ram"
board = "ram"
size = "16M"
block_size = 4096
"#,
    )
    .expect("write config");
    let (code, j, stderr) = demo_config(path.to_str().expect("utf-8 path"));
    let failed = disk(&j, "fail-sim");
    assert_eq!(failed["state"], "failed", "{failed}\n{stderr}");
    assert!(
        failed["failure"].as_str().unwrap_or_default().contains("gone"),
        "{failed}"
    );
    assert_eq!(failed["exit_code"], 74, "{failed}");
    assert_eq!(
        failed["unanswered_commands"], 0,
        "every command answered: {failed}"
    );
    assert_eq!(failed["iommu_faults"], 0, "{failed}");
    assert_verified(&j, "ok-nvme");
    assert_verified(&j, "ok-ram");
    assert_eq!(j["totals"]["devices_left_registered"], 0);
    // Injected faults are expected failures: the demo stays healthy when everything else holds.
    assert_eq!(code, Some(0), "{j}");
}
