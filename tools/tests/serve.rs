//! `scst-accel serve` as a process: exit codes by failure class, a clean stop on SIGTERM, and
//! the info line per disk. `--loopback` stands in for /dev/scst_user, which this machine lacks.

use std::io::Read;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

fn serve(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scst-accel"));
    cmd.arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = serve(args).output().expect("run scst-accel serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (bounded) for the child to exit; kill it if it does not.
fn wait_exit(child: &mut Child, bound: Duration) -> Option<i32> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("serve did not exit within {bound:?}");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_hardware_board_without_pci_is_a_configuration_error() {
    let (code, stderr) = run(&["--loopback", "--board", "nvme", "--name", "x-nopci"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("--pci"), "{stderr}");
}

#[test]
fn a_missing_scst_user_node_is_unavailable() {
    let (code, stderr) = run(&["--device", "/nonexistent/scst_user", "--name", "x-nodev"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("scst_user"), "{stderr}");
}

#[test]
fn a_bad_size_is_a_usage_error() {
    let (code, stderr) = run(&["--loopback", "--size", "1000", "--block-size", "4096"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("multiple of the block size"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let (code, stderr) = run(&["--config", "/nonexistent/scst-accel.toml"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("/nonexistent/scst-accel.toml"), "{stderr}");
}

#[test]
fn sigterm_stops_cleanly_and_serving_is_logged_at_info() {
    let mut child = serve(&[
        "--loopback",
        "--board",
        "sim",
        "--name",
        "x-term",
        "--size",
        "16M",
    ])
    .spawn()
    .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read the log until the disk serves (bounded), then ask it to stop.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if all.contains("disks serving") {
                        let _ = tx.send(());
                    }
                }
            }
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("serve reported serving");
    sigterm(&child);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let log = reader.join().expect("reader");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("disk x-term: serving 16777216 bytes"), "{log}");
    assert!(log.contains("1 disks serving, 0 failed"), "{log}");
    assert!(log.contains("torn down (Requested)"), "{log}");
}
