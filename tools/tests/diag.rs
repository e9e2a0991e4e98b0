//! `scst-accel diag`: the on-demand register and ring dump of a board that is not serving.

use std::process::Command;

fn diag(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .arg("diag")
        .arg("--json")
        .args(args)
        .output()
        .expect("run scst-accel");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code(), json, stderr)
}

#[test]
fn diag_dumps_the_sim_boards_registers_and_every_queue_then_releases_it() {
    let (code, j, stderr) = diag(&["--board", "sim", "--workers", "3", "--size", "8M"]);
    assert_eq!(code, Some(0), "{j}\n{stderr}");
    let registers = j["registers"].as_str().expect("registers");
    assert!(registers.contains("SCA-1 ID 0x53434131"), "{registers}");
    assert!(
        registers.contains("STATUS 0x1 "),
        "enabled and READY: {registers}"
    );
    let queues = j["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 3, "one dump per queue brought up: {j}");
    for q in queues {
        let q = q.as_str().unwrap_or_default();
        assert!(q.contains("running true") && q.contains("in_flight 0"), "{q}");
    }
    assert_eq!(j["num_blocks"], 8 * 1024 * 1024 / 512);
    assert_eq!(j["released_cleanly"], true, "{j}");
}

#[test]
fn diag_on_the_ram_store_says_there_is_no_device() {
    let (code, j, stderr) = diag(&["--board", "ram", "--size", "8M"]);
    assert_eq!(code, Some(0), "{j}\n{stderr}");
    assert!(
        j["registers"].as_str().unwrap_or_default().contains("no device"),
        "{j}"
    );
    assert_eq!(j["queues"].as_array().map(Vec::len), Some(0));
}

#[test]
fn diag_without_a_pci_address_for_a_hardware_board_explains_what_to_pass() {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["diag", "--board", "sca1"])
        .output()
        .expect("run scst-accel");
    // A missing --pci is a configuration error (78), not "try again later" (69).
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--pci"), "{stderr}");
}

/// Under systemd, where stderr is the journal's stream (`JOURNAL_STREAM` names its device and
/// inode), each log line starts with its syslog priority (`<6>` info) and carries no timestamp;
/// where the variable names another stream (inherited by a process whose stderr was
/// redirected), the lines are the usual timestamped ones.
#[test]
fn log_lines_carry_their_priority_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("scst-accel-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let run = |stream: &dyn Fn(&std::fs::Metadata) -> String| {
        let path = dir.join("stderr.log");
        let file = std::fs::File::create(&path).expect("stderr file");
        let meta = file.metadata().expect("metadata");
        let status = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
            .args(["--log", "info", "diag", "--board", "sim"])
            .env("JOURNAL_STREAM", stream(&meta))
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .status()
            .expect("run scst-accel diag");
        assert!(status.success(), "{status}");
        std::fs::read_to_string(&path).expect("stderr")
    };
    let journal = run(&|m| format!("{}:{}", m.dev(), m.ino()));
    assert!(!journal.is_empty(), "no log line");
    assert!(
        journal
            .lines()
            .all(|l| l.starts_with("<6>") || l.starts_with("<4>") || l.starts_with("<3>")),
        "{journal}"
    );
    let elsewhere = run(&|m| format!("{}:{}", m.dev(), m.ino() + 1));
    assert!(elsewhere.lines().all(|l| l.starts_with('[')), "{elsewhere}");
    let _ = std::fs::remove_dir_all(&dir);
}
