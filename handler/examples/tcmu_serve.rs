//! Serve one TCMU backstore from a RAM store for a while: the ring, the UIO device and the
//! executor of `scst_accel_handler::tcmu` against a real kernel (LIO's target_core_user), by
//! hand or in the QEMU guest (docs/tcmu.md, "Against the real kernel"). Not the product's
//! frontend: no deadlines, no teardown, one thread.
//!
//! `tcmu_serve HBA DEVICE BLOCK_SIZE BLOCKS SECONDS` serves backstore
//! `/sys/kernel/config/target/core/user_HBA/DEVICE` for SECONDS, then prints what it did.

use scst_accel_dma::SgvPool;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreToken;
use scst_accel_handler::tcmu::exec::Executor;
use scst_accel_handler::tcmu::exec::Progress;
use scst_accel_handler::tcmu::ring::Ring;
use scst_accel_handler::tcmu::uio;
use scst_accel_handler::tcmu::uio::UioDevice;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [hba, device, block_size, blocks, seconds] = args.as_slice() else {
        eprintln!("usage: tcmu_serve HBA DEVICE BLOCK_SIZE BLOCKS SECONDS");
        return ExitCode::from(2);
    };
    let (Ok(block_size), Ok(blocks), Ok(seconds)) = (
        block_size.parse::<u32>(),
        blocks.parse::<u64>(),
        seconds.parse::<u64>(),
    ) else {
        eprintln!("BLOCK_SIZE, BLOCKS and SECONDS are numbers");
        return ExitCode::from(2);
    };
    match serve(hba, device, block_size, blocks, Duration::from_secs(seconds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("tcmu_serve: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    hba: &str,
    device: &str,
    block_size: u32,
    blocks: u64,
    time: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let info = uio::find_backstore(Path::new("/sys"), hba, device)?;
    let dev = UioDevice::open(Path::new("/dev"), &info)?;
    let mut ring = Ring::attach(dev.region())?;
    eprintln!(
        "tcmu_serve: uio{} {:?}, {} bytes mapped, mailbox flags {:#x}, ring {:?}",
        info.index,
        info.name,
        info.map_size,
        ring.flags(),
        ring.state()
    );
    let store = RamStore::new(block_size, blocks, 256);
    let disk = Arc::new(Disk::new(DiskConfig::for_store(&store.info())));
    let pool = Arc::new(SgvPool::new(None, None, 64 << 20));
    let mut exec = Executor::new(disk, store.open_queue()?, pool);
    let mut token = StoreToken::root();
    let mut total = Progress::default();
    let deadline = Instant::now() + time;
    while Instant::now() < deadline {
        let p = exec.step(&mut token, &mut ring, dev.events(), Duration::from_millis(100))?;
        total.started += p.started;
        total.completed += p.completed;
        total.refused += p.refused;
        total.task_management += p.task_management;
    }
    eprintln!(
        "tcmu_serve: {} commands started, {} completed, {} refused, {} task management; ring {:?}",
        total.started,
        total.completed,
        total.refused,
        total.task_management,
        ring.state()
    );
    Ok(())
}
