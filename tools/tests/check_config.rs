//! `scst-accel check-config`: a valid file is summarised (exit 0), an invalid one has every
//! error printed with its line (exit 78, sysexits CONFIG), and the shipped example is valid.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

/// Run `check-config` on `file`: exit code, stdout, stderr.
fn check(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run scst-accel");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr)
}

/// Write `text` to a file of its own under cargo's scratch directory for integration tests.
fn write(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("write the test file");
    path
}

#[test]
fn a_valid_file_is_summarised_with_exit_0() {
    let file = write(
        "check_config_valid.toml",
        "[[disk]]\nname = \"a\"\nboard = \"ram\"\n\n[[disk]]\nname = \"b\"\nboard = \"sim\"\n",
    );
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}: valid: 2 disks (a on ram, b on sim)", file.display())
    );
}

#[test]
fn an_invalid_file_lists_every_error_with_its_line_and_exits_78() {
    let text = "\
[service]
metrics_listen = \"0.0.0.0:9490\"

[[disk]]
name = \"a\"
board = \"sim\"
size = \"1000\"
block_size = 4096
colour = \"blue\"

[[disk]]
name = \"a\"
board = \"nvme\"
";
    let file = write("check_config_invalid.toml", text);
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, Some(78), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let origin = file.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        (2, "loopback"),
        (7, "not a multiple of the block size"),
        (9, "unknown key `colour`"),
        (11, "needs `pci`"),
        (12, "already used by the disk at line 5"),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (number, what)) in lines.iter().zip(expected) {
        assert!(line.starts_with(&format!("{origin}:{number}: ")), "{line}");
        assert!(line.contains(what), "{line} should say {what}");
        assert!(line.ends_with(')'), "every error has a hint: {line}");
    }
}

#[test]
fn a_missing_file_is_a_config_error() {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check_config_does_not_exist.toml");
    let (code, _, stderr) = check(&file);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn the_shipped_example_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/appliance.toml");
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("valid: 3 disks (accel0 on sim, nvme0 on nvme-sim, ram0 on ram)"),
        "{stdout}"
    );
}

#[test]
fn the_shipped_tcmu_example_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/appliance-tcmu.toml");
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("valid: 2 disks (accel0 on sim, ram0 on ram)"),
        "{stdout}"
    );
}
