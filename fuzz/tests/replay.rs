//! The fuzz targets in the normal test suite: every seed and regression input of
//! `fuzz/corpus/<target>` is replayed, then each target runs structured random inputs from a
//! fixed seed, bounded in number and time (a regression guard, not a campaign: the campaign is
//! `fuzz/run.sh`, docs/fuzzing.md).

use std::time::Duration;
use std::time::Instant;

/// Random inputs per target, at most.
const RANDOM_INPUTS: u64 = 20_000;
/// Wall time per target, at most (the suite runs unoptimized on 2 shared cores).
const RANDOM_TIME: Duration = Duration::from_secs(3);

fn replay_and_run(name: &str) {
    let target = scst_accel_fuzz::target(name).expect("a target of the list");
    let corpus = scst_accel_fuzz::corpus(name).expect("the corpus directory is readable");
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seed");
    for (file, data) in &corpus {
        eprintln!("{name}: replaying {file}");
        target(data);
    }
    let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let run = scst_accel_fuzz::random_run(
        target,
        &inputs,
        0x5C57,
        RANDOM_INPUTS,
        Some(Instant::now() + RANDOM_TIME),
        |_| {},
    );
    eprintln!("{name}: {} structured random inputs", run.executions);
    assert!(run.executions > 0);
}

#[test]
fn scsi() {
    replay_and_run("scsi");
}

#[test]
fn config() {
    replay_and_run("config");
}

#[test]
fn sca1() {
    replay_and_run("sca1");
}

#[test]
fn nvme() {
    replay_and_run("nvme");
}

#[test]
fn loopback() {
    replay_and_run("loopback");
}

#[test]
fn tcmu_netlink() {
    replay_and_run("tcmu_netlink");
}
