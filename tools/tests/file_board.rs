//! The file board as a user runs it: `scst-accel demo --board file --path IMG`, with each I/O
//! engine over the same image (the later runs find the file and its data), and `check-config`
//! on file disks.

mod common;

use common::scratch;
use common::scst_accel;
use std::path::Path;

/// A healthy demo over `image` with I/O engine `engine`; returns the engine it reports.
fn demo_passes(image: &Path, engine: &str) -> String {
    let path = image.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = scst_accel(&[
        "demo",
        "--board",
        "file",
        "--path",
        path,
        "--size",
        "16M",
        "--duration",
        "1s",
        "--io-engine",
        engine,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(j["verify_errors"], 0, "{j}");
    assert_eq!(j["scsi_errors"], 0, "{j}");
    assert_eq!(j["unanswered_commands"], 0, "{j}");
    assert!(j["verified_bytes"].as_u64().unwrap_or(0) > 0, "{j}");
    assert!(
        j["reads"].as_u64().unwrap_or(0) > 0 && j["writes"].as_u64().unwrap_or(0) > 0,
        "{j}"
    );
    j["io_engine"]
        .as_str()
        .unwrap_or_else(|| panic!("no io_engine: {j}"))
        .to_owned()
}

#[test]
fn demo_on_a_file_passes_with_each_io_engine_over_the_same_image() {
    let dir = scratch("file_board", "demo");
    let image = dir.join("disk.img");
    let auto = demo_passes(&image, "auto");
    assert_eq!(std::fs::metadata(&image).expect("created").len(), 16 << 20);
    assert_eq!(demo_passes(&image, "threads"), "threads");
    // Auto is io_uring where the kernel offers it; then forcing it works, else forcing it is
    // a configuration error that says what to do.
    match auto.as_str() {
        "uring" => assert_eq!(demo_passes(&image, "uring"), "uring"),
        "threads" => {
            let (code, _, stderr) = scst_accel(&[
                "demo",
                "--board",
                "file",
                "--path",
                image.to_str().expect("utf-8"),
                "--size",
                "16M",
                "--duration",
                "1s",
                "--io-engine",
                "uring",
            ]);
            assert_eq!(code, Some(78), "{stderr}");
            assert!(stderr.contains("--io-engine threads"), "{stderr}");
        }
        other => panic!("engine {other:?}"),
    }

    // Another size is refused, and the file is left as it was.
    let (code, _, stderr) = scst_accel(&[
        "demo",
        "--board",
        "file",
        "--path",
        image.to_str().expect("utf-8"),
        "--size",
        "32M",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("never truncated"), "{stderr}");
    assert_eq!(std::fs::metadata(&image).expect("stat").len(), 16 << 20);

    // No --path: a configuration error that says what to add.
    let (code, _, stderr) = scst_accel(&["demo", "--board", "file", "--duration", "1s"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("--path"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_accepts_a_file_disk_and_refuses_one_without_path() {
    let dir = scratch("file_board", "config");
    let image = dir.join("disk0.img");
    let valid = dir.join("valid.toml");
    std::fs::write(
        &valid,
        format!(
            "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = {:?}\nsize = \"16M\"\nbuffered = true\n",
            image.display().to_string()
        ),
    )
    .expect("write");
    let (code, stdout, stderr) = scst_accel(&["check-config", valid.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("f on file"), "{stdout}");
    assert!(!image.exists(), "checking a configuration creates nothing");

    let invalid = dir.join("invalid.toml");
    let text = format!(
        "[[disk]]\nname = \"f\"\nboard = \"file\"\n\n[[disk]]\nname = \"r\"\nboard = \"ram\"\npath = \"/srv/x.img\"\n\n\
         [[disk]]\nname = \"g\"\nboard = \"file\"\npath = {p:?}\n\n[[disk]]\nname = \"h\"\nboard = \"file\"\npath = {p:?}\n",
        p = image.display().to_string()
    );
    std::fs::write(&invalid, text).expect("write");
    let (code, stdout, stderr) = scst_accel(&["check-config", invalid.to_str().expect("utf-8")]);
    assert_eq!(code, Some(78), "{stdout}\n{stderr}");
    let origin = invalid.display().to_string();
    let expected = [
        (1, "needs `path`"),
        (8, "only for the file and blockdev boards"),
        (18, "already the medium of disk \"g\" (line 13)"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (number, what)) in lines.iter().zip(expected) {
        assert!(line.starts_with(&format!("{origin}:{number}: ")), "{line}");
        assert!(line.contains(what), "{line} should say {what}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
