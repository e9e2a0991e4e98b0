//! Crash consistency of the file store across SIGKILLs of the handler process: no acknowledged
//! write is lost and no block holds data never written (`scst-accel crash-writer`, whose module
//! doc, tools/src/crash.rs, says what a SIGKILL proves and what it does not).
//!
//! Each cycle starts the writer on the same image and journal, lets it write for a random
//! 50-300 ms after it says it is writing, SIGKILLs it, and checks the image offline against the
//! journal. Bounded in count (`SCST_ACCEL_CRASH_CYCLES`, default 100) and in time
//! (`SCST_ACCEL_CRASH_SECONDS`, default 90). Every fourth cycle runs with --buffered: the
//! page cache survives the kill, so this shows the handler never acknowledges before pwrite(2)
//! returned, whatever the I/O mode. Every third cycle runs on a disk of 4 KiB blocks. Four
//! cycles in a row take the file store's `auto` I/O engine (io_uring where the kernel offers
//! it), the next four `threads`, so both engines are killed with writes in flight.

mod common;

use common::scratch;
use common::LoopDevice;
use scst_accel::crash;
use scst_accel::log_writes::in_band_mark;
use scst_accel_handler::workload::stamp::Rng;
use std::io::BufRead;
use std::io::BufReader;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The writer, killed and reaped when dropped (a failing assertion must not leave it running).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const IMAGE_SIZE: &str = "8M";

fn start(
    image: &Path,
    journal: &Path,
    block_size: usize,
    seed: u64,
    buffered: bool,
    engine: &str,
    in_band_marks: bool,
) -> Writer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scst-accel"));
    // The board follows the medium: a block device (a loop device) is served as one.
    let board = if std::fs::metadata(image).is_ok_and(|m| m.file_type().is_block_device()) {
        "blockdev"
    } else {
        "file"
    };
    cmd.args([
        "crash-writer",
        "--board",
        board,
        "--size",
        IMAGE_SIZE,
        "--duration",
        "60s",
    ])
    .args(["--block-size", &block_size.to_string()])
    .arg("--path")
    .arg(image)
    .arg("--journal")
    .arg(journal)
    .args(["--seed", &seed.to_string()])
    .args(["--io-engine", engine])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if buffered {
        cmd.arg("--buffered");
    }
    if in_band_marks {
        // The power-cut-vfio scenario's writer: marks in band and UNMAPs (a thin disk).
        cmd.args(["--in-band-marks", "--unmaps"]);
    }
    Writer(cmd.spawn().expect("start scst-accel crash-writer"))
}

/// Run `crash-writer --end-mark TEXT` on `image` (a file), without a journal: it must succeed.
fn end_mark(image: &Path, block_size: usize, text: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["crash-writer", "--board", "file", "--size", IMAGE_SIZE])
        .args(["--block-size", &block_size.to_string(), "--end-mark", text])
        .arg("--path")
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .expect("run scst-accel crash-writer --end-mark");
    assert!(
        out.status.success(),
        "crash-writer --end-mark failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait (bounded) until the writer says it is writing.
fn wait_ready(writer: &mut Writer) {
    let stdout = writer.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // The reader thread ends when the writer dies (EOF), so it never outlives the cycle long.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == crash::READY_LINE {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let status = writer.0.try_wait().ok().flatten();
        panic!("the writer did not start writing within 30 s (exit: {status:?})");
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_write_nor_leaves_foreign_data() {
    let cycles = env_u64("SCST_ACCEL_CRASH_CYCLES", 100);
    let budget = Duration::from_secs(env_u64("SCST_ACCEL_CRASH_SECONDS", 90));
    let mut rng = Rng::new(env_u64("SCST_ACCEL_CRASH_SEED", 2026));
    let dir = scratch("crash", "sigkill");
    let started = Instant::now();
    let (mut done, mut buffered_cycles, mut checked, mut in_band_cycles) = (0u64, 0u64, 0u64, 0u64);
    let mut durable_writes = [0u64; 4];
    while done < cycles && started.elapsed() < budget {
        let buffered = done % 4 == 3;
        let engine = if (done / 4) % 2 == 0 { "auto" } else { "threads" };
        // Every third cycle on a disk of 4 KiB blocks (an image and journal of its own).
        let block_size = if done % 3 == 2 { 4096 } else { 512 };
        // Every fifth cycle marks in band and unmaps (the HIL power-cut-vfio scenario's
        // writer), on a disk and journal of its own (the marks take the last unit): the marks'
        // unit must not upset the check, the marks must be there, and punched holes where the
        // journal has an UNMAP after the durable write pass.
        let in_band = done % 5 == 4;
        let marked = if in_band { "-marked" } else { "" };
        let image = dir.join(format!("disk-{block_size}{marked}.img"));
        let journal = dir.join(format!("journal-{block_size}{marked}"));
        let mut writer = start(
            &image,
            &journal,
            block_size,
            rng.next_u64(),
            buffered,
            engine,
            in_band,
        );
        wait_ready(&mut writer);
        std::thread::sleep(Duration::from_millis(50 + rng.below(251)));
        // Child::kill is SIGKILL: nothing of the handler runs after it.
        writer.0.kill().expect("SIGKILL the writer");
        let status = writer.0.wait().expect("reap the writer");
        assert!(
            status.code().is_none(),
            "cycle {done}: the writer exited by itself ({status}) before it was killed"
        );
        drop(writer);

        let records = crash::read_journal(&journal).expect("journal");
        let bytes = std::fs::read(&image).expect("read the image");
        let report = crash::check(&bytes, block_size, &records);
        assert_eq!(
            (report.lost, report.stale_or_torn),
            (0, 0),
            "cycle {done} ({}, {engine}): {:?}",
            if buffered { "buffered" } else { "O_DIRECT" },
            report.first_errors
        );
        if in_band {
            let unit = &bytes[bytes.len() - 4096..];
            let mark = in_band_mark(unit);
            assert!(
                mark.as_deref()
                    .is_some_and(|m| m.starts_with(crash::START_MARK) || m.starts_with(crash::ACK_MARK)),
                "cycle {done}: the disk's last 4 KiB hold no mark of the writer: {mark:?}"
            );
            // The end mark of a killed run (`--end-mark`, no journal) replaces the last
            // unit and writes nothing else.
            let text = format!("scst-accel-end-{done}");
            end_mark(&image, block_size, &text);
            let after = std::fs::read(&image).expect("read the image");
            let (data, unit) = after.split_at(after.len() - 4096);
            assert_eq!(
                in_band_mark(unit).as_deref(),
                Some(text.as_str()),
                "cycle {done}: the end mark"
            );
            assert!(
                data == &bytes[..data.len()],
                "cycle {done}: --end-mark wrote outside its unit"
            );
            in_band_cycles += 1;
        }
        checked += report.durable_blocks;
        // The journals only grow: the last check of each holds all its durable writes.
        durable_writes[usize::from(block_size == 4096) + 2 * usize::from(in_band)] = report.durable_writes;
        buffered_cycles += u64::from(buffered);
        done += 1;
    }
    assert!(done > 0, "no cycle ran within {budget:?}");
    let durable_writes: u64 = durable_writes.iter().sum();
    assert!(
        durable_writes > 0,
        "no write was ever acknowledged durable: the test proved nothing"
    );
    println!(
        "crash: {done} cycles ({buffered_cycles} buffered, {} on 4 KiB blocks, {in_band_cycles} marked in band) in {:.1}s, {durable_writes} acknowledged durable writes \
         in the journals, {checked} durable blocks checked over all cycles, lost 0, stale/torn 0",
        done / 3,
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loop device of `sector_size`-byte blocks over a new file of the image's size in `dir`.
fn loop_device(dir: &Path, sector_size: usize) -> Result<LoopDevice, String> {
    let backing = dir.join(format!("backing-{sector_size}.img"));
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(8 << 20))
        .map_err(|e| format!("backing file: {e}"))?;
    LoopDevice::attach(&backing, Some(sector_size))
}

/// The same on a block device (`--board blockdev` on loop devices of 512 B and 4 KiB sectors):
/// the handler opens it O_EXCL and writes through O_DIRECT or the device's page cache; after
/// each SIGKILL the device itself is read and checked. Smaller than the file run for CI: 30
/// cycles, 40 s (`SCST_ACCEL_CRASH_BLOCKDEV_CYCLES`, `SCST_ACCEL_CRASH_BLOCKDEV_SECONDS`).
#[test]
fn sigkill_on_a_block_device_never_loses_an_acknowledged_write() {
    let name = "sigkill_on_a_block_device_never_loses_an_acknowledged_write";
    let cycles = env_u64("SCST_ACCEL_CRASH_BLOCKDEV_CYCLES", 30);
    let budget = Duration::from_secs(env_u64("SCST_ACCEL_CRASH_BLOCKDEV_SECONDS", 40));
    let mut rng = Rng::new(env_u64("SCST_ACCEL_CRASH_SEED", 2026));
    let dir = scratch("crash", "blockdev");
    let devices = match (loop_device(&dir, 512), loop_device(&dir, 4096)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(reason), _) | (_, Err(reason)) => {
            scst_accel_hal::skip::test_skipped(name, &reason);
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    };
    let started = Instant::now();
    let (mut done, mut buffered_cycles, mut checked) = (0u64, 0u64, 0u64);
    let mut durable_writes = [0u64; 2];
    while done < cycles && started.elapsed() < budget {
        let buffered = done % 4 == 3;
        // Every third cycle on the device of 4 KiB sectors (a journal of its own).
        let block_size = if done % 3 == 2 { 4096 } else { 512 };
        let device = &devices[usize::from(block_size == 4096)].0;
        let journal = dir.join(format!("journal-{block_size}"));
        // Both engines on the device too: four cycles `auto` (io_uring here), four `threads`.
        let engine = if (done / 4) % 2 == 0 { "auto" } else { "threads" };
        let mut writer = start(
            device,
            &journal,
            block_size,
            rng.next_u64(),
            buffered,
            engine,
            false,
        );
        wait_ready(&mut writer);
        std::thread::sleep(Duration::from_millis(50 + rng.below(251)));
        writer.0.kill().expect("SIGKILL the writer");
        let status = writer.0.wait().expect("reap the writer");
        assert!(
            status.code().is_none(),
            "cycle {done}: the writer exited by itself ({status}) before it was killed"
        );
        drop(writer);

        let records = crash::read_journal(&journal).expect("journal");
        let bytes = std::fs::read(device).expect("read the device");
        let report = crash::check(&bytes, block_size, &records);
        assert_eq!(
            (report.lost, report.stale_or_torn),
            (0, 0),
            "cycle {done} on {} ({}): {:?}",
            device.display(),
            if buffered { "buffered" } else { "O_DIRECT" },
            report.first_errors
        );
        checked += report.durable_blocks;
        durable_writes[usize::from(block_size == 4096)] = report.durable_writes;
        buffered_cycles += u64::from(buffered);
        done += 1;
    }
    assert!(done > 0, "no cycle ran within {budget:?}");
    let durable_writes: u64 = durable_writes.iter().sum();
    assert!(
        durable_writes > 0,
        "no write was ever acknowledged durable: the test proved nothing"
    );
    println!(
        "crash (block device): {done} cycles ({buffered_cycles} buffered, {} on 4 KiB sectors) in {:.1}s, {durable_writes} \
         acknowledged durable writes in the journals, {checked} durable blocks checked over all cycles, lost 0, stale/torn 0",
        done / 3,
        started.elapsed().as_secs_f64()
    );
    drop(devices);
    let _ = std::fs::remove_dir_all(&dir);
}
