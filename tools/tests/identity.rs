//! Two processes with the default disk name get different identities unless they share a
//! state directory, and a restarted process keeps its own (the acceptance test).

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

fn identity(state_dir: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["identity", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("run scst-accel identity");
    assert!(
        out.status.success(),
        "scst-accel identity failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON identity")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scst-accel-it-identity-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn two_machines_differ_and_a_restart_keeps_the_identity() {
    let (a, b) = (temp_dir("a"), temp_dir("b"));
    let first = identity(&a);
    let other = identity(&b);
    assert_eq!(first["source"], "generated");
    assert_eq!(first["product"], "accel0");
    assert_ne!(first["naa"], other["naa"], "two appliances, same disk name");
    assert_ne!(first["serial"], other["serial"]);
    let restarted = identity(&a);
    assert_eq!(restarted["source"], "state");
    assert_eq!(restarted["naa"], first["naa"]);
    assert_eq!(restarted["serial"], first["serial"]);
    let naa = first["naa"].as_str().expect("naa");
    assert!(
        naa.len() == 16 && naa.starts_with('3'),
        "NAA 3 locally assigned: {naa}"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn a_corrupt_state_file_stops_the_process_with_advice() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(dir.join("identity")).expect("mkdir");
    std::fs::write(dir.join("identity/accel0.toml"), "not toml [").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["identity", "--state-dir"])
        .arg(&dir)
        .output()
        .expect("run scst-accel identity");
    assert_eq!(out.status.code(), Some(78), "exit::CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accel0.toml") && err.contains("remove it"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A state file that records the device id its identity was derived from (written by `serve`
/// on an NVMe board) loads where no device is consulted, as it was written.
#[test]
fn a_state_file_derived_from_a_device_id_loads() {
    let dir = temp_dir("device-id");
    std::fs::create_dir_all(dir.join("identity")).expect("mkdir");
    std::fs::write(
        dir.join("identity/accel0.toml"),
        "serial = \"0102030405060708090a0b0c0d0e0f10\"\n\
         naa = \"eui.0102030405060708090a0b0c0d0e0f10\"\n\
         device_id = \"eui.0102030405060708090a0b0c0d0e0f10\"\n\
         origin = \"device\"\n",
    )
    .expect("write");
    let id = identity(&dir);
    assert_eq!(id["source"], "state");
    assert_eq!(id["naa"], "eui.0102030405060708090a0b0c0d0e0f10");
    assert_eq!(id["serial"], "0102030405060708090a0b0c0d0e0f10");
    let _ = std::fs::remove_dir_all(&dir);
}
