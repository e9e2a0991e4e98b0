//! Data survives the process (issue 10): `scst-accel demo` on a persistent board (a file, a
//! block device) first checks every block of the medium: zeroes, or a whole stamp of its own LBA
//! left by an earlier run. A second run over the same medium verifies the first run's stamps; a
//! block corrupted or misplaced between the runs fails the run and is named. Also: a second
//! handler on a held image is refused.

mod common;

use common::scratch;
use common::scst_accel;
use common::LoopDevice;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

/// 16 MiB of 512-byte blocks.
const BLOCKS: u64 = 32768;

/// A demo over `image` that passes; its JSON.
fn demo_passes(board: &str, image: &Path) -> serde_json::Value {
    let path = image.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = scst_accel(&[
        "demo",
        "--board",
        board,
        "--path",
        path,
        "--size",
        "16M",
        "--duration",
        "1s",
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
    assert_eq!(j["preexisting"]["blocks_checked"], BLOCKS, "{j}");
    assert_eq!(j["preexisting"]["errors"], 0, "{j}");
    j
}

/// Flip one byte of block 100 (torn or rotted) and copy block 200 over block 201 (a misplaced
/// write) of a medium every block of which a demo stamped.
fn corrupt(medium: &Path) {
    use std::io::Read;
    use std::io::Seek;
    use std::io::SeekFrom;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(medium)
        .expect("open the medium");
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(100 * 512 + 300)).expect("seek");
    f.read_exact(&mut byte).expect("read");
    byte[0] ^= 1;
    f.seek(SeekFrom::Start(100 * 512 + 300)).expect("seek");
    f.write_all(&byte).expect("write");
    let mut block = vec![0u8; 512];
    f.seek(SeekFrom::Start(200 * 512)).expect("seek");
    f.read_exact(&mut block).expect("read");
    f.seek(SeekFrom::Start(201 * 512)).expect("seek");
    f.write_all(&block).expect("write");
    f.sync_all().expect("sync");
}

/// A demo over a medium `corrupt` damaged: it fails (exit 65, EX_DATAERR) and names both
/// blocks in the pre-existing data report.
fn demo_reports_corruption(board: &str, medium: &Path) {
    let (code, stdout, stderr) = scst_accel(&[
        "demo",
        "--board",
        board,
        "--path",
        medium.to_str().expect("utf-8"),
        "--size",
        "16M",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(code, Some(65), "{stdout}\n{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let p = &j["preexisting"];
    assert_eq!(p["blocks_checked"], BLOCKS, "{j}");
    assert_eq!(p["errors"], 2, "{j}");
    assert_eq!(p["stamped"], BLOCKS - 2, "{j}");
    let errors = j["errors"].to_string();
    assert!(errors.contains("LBA 100: Corrupt"), "{errors}");
    assert!(errors.contains("LBA 201: WrongLba { found: 200 }"), "{errors}");
    assert_eq!(j["healthy"], false, "{j}");
}

/// Two demos on one image file: the first finds it new (all zeroes), the second finds every
/// block stamped by the first (it prefilled the whole disk) and intact; then a flipped byte and
/// a misplaced block fail the third.
#[test]
fn a_second_demo_on_a_file_verifies_the_first_runs_stamps() {
    let dir = scratch("persistence", "file");
    let image = dir.join("disk.img");
    let first = demo_passes("file", &image);
    assert_eq!(
        first["preexisting"]["stamped"], 0,
        "a new image is all zeroes: {first}"
    );
    let second = demo_passes("file", &image);
    assert_eq!(second["preexisting"]["stamped"], BLOCKS, "{second}");
    corrupt(&image);
    demo_reports_corruption("file", &image);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same on a block device: two demos on a loop device, the second verifying the first's
/// stamps; then a corrupted block is reported.
#[test]
fn demo_on_a_block_device_verifies_the_previous_run() {
    let dir = scratch("persistence", "blockdev");
    let backing = dir.join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .expect("backing file");
    let lo = match LoopDevice::attach(&backing, None) {
        Ok(lo) => lo,
        Err(reason) => {
            scst_accel_hal::skip::test_skipped("demo_on_a_block_device_verifies_the_previous_run", &reason);
            return;
        }
    };
    let first = demo_passes("blockdev", &lo.0);
    assert_eq!(first["preexisting"]["stamped"], 0, "{first}");
    let second = demo_passes("blockdev", &lo.0);
    assert_eq!(second["preexisting"]["stamped"], BLOCKS, "{second}");
    corrupt(&lo.0);
    demo_reports_corruption("blockdev", &lo.0);
    drop(lo);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A block device's size and block size are its own: a --size or --block-size given that is
/// not the device's refuses the disk (exit 78, the message saying what the device has and to
/// leave it out) instead of serving a disk of another geometry than asked; one that is the
/// device's, or none, serves.
#[test]
fn a_block_device_refuses_a_size_or_block_size_not_its_own() {
    let name = "a_block_device_refuses_a_size_or_block_size_not_its_own";
    let dir = scratch("persistence", "geometry");
    let backing = dir.join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .expect("backing file");
    let lo = match LoopDevice::attach(&backing, Some(512)) {
        Ok(lo) => lo,
        Err(reason) => {
            scst_accel_hal::skip::test_skipped(name, &reason);
            return;
        }
    };
    let path = lo.0.to_str().expect("utf-8 path").to_owned();
    let demo = |extra: &[&str]| {
        let mut args = vec!["demo", "--board", "blockdev", "--path", &path, "--duration", "1s"];
        args.extend_from_slice(extra);
        scst_accel(&args)
    };
    let (code, stdout, stderr) = demo(&["--size", "8M"]);
    assert_eq!(code, Some(78), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the device has 16777216 bytes, not the 8388608")
            && stderr.contains("leave the size out"),
        "{stderr}"
    );
    let (code, stdout, stderr) = demo(&["--block-size", "4096"]);
    assert_eq!(code, Some(78), "{stdout}\n{stderr}");
    assert!(stderr.contains("logical block size is 512, not 4096"), "{stderr}");
    let (code, stdout, stderr) = demo(&["--size", "16M", "--block-size", "512"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let (code, stdout, stderr) = demo(&[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    drop(lo);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An image another process holds (here `flock`, standing for another handler) is refused:
/// exit 69 (EX_UNAVAILABLE: the holder may go away), and the message names the image and how
/// to find the holder.
#[test]
fn a_held_image_is_refused() {
    let dir = scratch("persistence", "lock");
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let path = image.to_str().expect("utf-8");
    let holder = Command::new("flock")
        .args(["--exclusive", path, "sleep", "60"])
        .spawn();
    let Ok(holder) = holder else {
        scst_accel_hal::skip::test_skipped("a_held_image_is_refused", "no flock(1) to hold the image");
        return;
    };
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Reap(holder);
    // Until flock(1) holds it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("flock")
        .args(["--nonblock", "--exclusive", path, "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "flock(1) did not take the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    ]);
    assert_eq!(code, Some(69), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(path) && stderr.contains("another process") && stderr.contains("fuser"),
        "{stderr}"
    );
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --config` checks each persistent disk's medium too: a file disk beside a RAM disk,
/// twice; the second run finds the first's stamps on the file, and the RAM disk (nothing
/// persists) reports no check.
#[test]
fn demo_config_checks_the_file_disks_medium() {
    let dir = scratch("persistence", "democonfig");
    let image = dir.join("f.img");
    let config = dir.join("disks.toml");
    std::fs::write(
        &config,
        format!(
            "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = {:?}\nsize = \"16M\"\n\n[[disk]]\nname = \"r\"\nboard = \"ram\"\nsize = \"16M\"\n",
            image.display().to_string()
        ),
    )
    .expect("write the configuration");
    let run = || {
        let (code, stdout, stderr) = scst_accel(&[
            "demo",
            "--config",
            config.to_str().expect("utf-8"),
            "--duration",
            "1s",
            "--json",
        ]);
        let j: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        (code, j, stderr)
    };
    let disk = |j: &serde_json::Value, name: &str| {
        j["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no disk {name} in {j}"))
    };
    let (code, first, stderr) = run();
    assert_eq!(code, Some(0), "{first}\n{stderr}");
    assert_eq!(disk(&first, "f")["preexisting"]["stamped"], 0, "{first}");
    assert!(disk(&first, "r")["preexisting"].is_null(), "{first}");
    let (code, second, stderr) = run();
    assert_eq!(code, Some(0), "{second}\n{stderr}");
    let f = disk(&second, "f");
    assert_eq!(f["preexisting"]["blocks_checked"], BLOCKS, "{f}");
    assert_eq!(f["preexisting"]["stamped"], BLOCKS, "{f}");
    corrupt(&image);
    let (code, third, _) = run();
    assert_eq!(code, Some(65), "{third}");
    let f = disk(&third, "f");
    assert_eq!(f["preexisting"]["errors"], 2, "{f}");
    assert_eq!(f["healthy"], false, "{f}");
    let _ = std::fs::remove_dir_all(&dir);
}
