//! The scst_user fd's POLLIN is level-triggered on SCST's active list as well as on the ready
//! list (scst_user.md §3.9). While SCST's activity is suspended (FLUSH_CACHE waits for every
//! command in flight, up to 90 s), new commands sit in the active list: the fd polls readable
//! and every fetch gets EAGAIN. A worker that polls again at once spins a core for as long as
//! the suspension lasts; it must back off and still wake for its store's completions.
//!
//! Alone in its test binary: it measures the process's CPU time, which other tests' threads
//! would disturb.

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi::queue_type;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::transport::register::default_options;
use scst_accel_tests::GatedStore;
use scst_accel_tests::Rig;
use scst_accel_tests::WAIT;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

const BLOCK: u32 = 512;
const BLOCKS: u64 = 2048;

/// CPU time (user + system) of this process so far, from /proc/self/stat (in USER_HZ ticks,
/// which Linux fixes at 100 per second for /proc).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn write(session: &scst_accel_handler::loopback::Session, tag: u64) {
    let mut cdb = vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[5] = tag as u8;
    session
        .submit(ScsiRequest {
            tag,
            cdb,
            data_out: vec![tag as u8; BLOCK as usize],
            expected_data_in: 0,
            queue_type: queue_type::SIMPLE,
            timeout_secs: 60,
        })
        .expect("submit");
}

#[test]
fn a_suspended_kernel_that_polls_readable_does_not_make_workers_spin() {
    let store = GatedStore::new(RamStore::new(BLOCK, BLOCKS, 2048));
    let config = FrontendConfig {
        workers: 2,
        cmds_per_call: 8,
        ..FrontendConfig::default()
    };
    let rig = Rig::with_config(
        "poll-backoff",
        BLOCK,
        BLOCKS,
        default_options(),
        Arc::new(store.clone()),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
    );
    let session = rig.session(0);
    for tag in 0..4 {
        write(&session, tag);
    }
    assert!(store.wait_held(4), "the store holds the first commands");

    // FLUSH_CACHE suspends SCST's activity until the held commands finish.
    let flush = rig.frontend().cache_flusher();
    let flusher = std::thread::spawn(flush);
    std::thread::sleep(Duration::from_millis(100));
    for tag in 4..8 {
        write(&session, tag);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(store.held(), 4, "new commands wait in the suspended active list");

    let wall = Duration::from_millis(600);
    let before = process_cpu();
    std::thread::sleep(wall);
    let used = process_cpu() - before;
    eprintln!("process CPU while suspended: {used:?} in {wall:?}");

    // End the suspension: the held commands finish, the flush returns, the rest is served.
    store.release_all();
    flusher.join().expect("flusher").expect("FLUSH_CACHE");
    let mut completed = 0;
    let deadline = Instant::now() + WAIT;
    while completed < 8 && Instant::now() < deadline {
        store.release_all();
        while let Ok(c) = session.completions().recv_timeout(Duration::from_millis(10)) {
            assert_eq!(c.status, sam_status::GOOD, "{c:?}");
            completed += 1;
        }
    }
    assert_eq!(completed, 8, "every command answered after the suspension");
    session.detach();
    // Two workers spinning on poll + EAGAIN burn up to two cores (1.2 s here); backing off,
    // they wake at most every 5 ms. A quarter of one core is far from both.
    assert!(
        used < wall / 4,
        "{used:?} of CPU in {wall:?} while the kernel was suspended: the workers spin"
    );
}
