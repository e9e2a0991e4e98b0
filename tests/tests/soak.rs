//! Randomized soak of start / load / inject / teardown cycles on the simulated board, with
//! random timing, in one test binary: bounded in count (`SCST_ACCEL_SOAK_CYCLES`, default 300)
//! and in time (`SCST_ACCEL_SOAK_SECONDS`, default 120). Every cycle must end with every command
//! answered, no wrong data, no zombie, no IOMMU fault and everything unmapped.

use scst_accel_boards::sim::Fault;
use scst_accel_handler::workload;
use scst_accel_handler::workload::stamp::Rng;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::Mix;
use scst_accel_handler::workload::Pattern;
use scst_accel_handler::workload::WorkloadConfig;
use scst_accel_tests::sim::SimRig;
use std::time::Duration;
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_fault(rng: &mut Rng) -> Option<Fault> {
    let text = match rng.below(10) {
        0 => "hang",
        1 => "never-complete:every=7",
        2 => "error:every=5",
        3 => "gone",
        4 => "fatal",
        5 => "latency:300us",
        6 => "duplicate:every=9",
        _ => return None,
    };
    text.parse().ok()
}

#[test]
fn random_teardown_cycles_never_violate_an_invariant() {
    let cycles = env_u64("SCST_ACCEL_SOAK_CYCLES", 300);
    let budget = Duration::from_secs(env_u64("SCST_ACCEL_SOAK_SECONDS", 120));
    let started = Instant::now();
    let mut rng = Rng::new(env_u64("SCST_ACCEL_SOAK_SEED", 2026));
    let mut done = 0;
    while done < cycles && started.elapsed() < budget {
        let name = format!("soak{done}");
        let rig = SimRig::new(&name, 512, 4096, Duration::from_millis(100 + rng.below(200)));
        let fault = random_fault(&mut rng);
        let queue_depth = 1 + rng.below(32) as usize;
        let io_size = 4096 << rng.below(4);
        let wait = Duration::from_millis(rng.below(40));
        let session = rig.rig.session(0);
        let config = WorkloadConfig {
            pattern: if rng.below(2) == 0 {
                Pattern::Random
            } else {
                Pattern::Sequential
            },
            mix: Mix::Mixed {
                read_percent: rng.below(101) as u8,
            },
            io_size: io_size as u32,
            queue_depth,
            duration: Duration::from_secs(30),
            seed: rng.next_u64(),
            completion_timeout: Duration::from_secs(10),
            ..WorkloadConfig::default()
        };
        let geometry = Geometry {
            block_size: 512,
            num_blocks: 4096,
        };
        let (report, released) = std::thread::scope(|scope| {
            let load =
                scope.spawn(|| workload::run(std::slice::from_ref(&session), geometry, &config, &mut |_| {}));
            std::thread::sleep(wait);
            if let Some(f) = fault {
                rig.sim.inject(f);
            }
            std::thread::sleep(wait);
            // Teardown with the load still running.
            let released = rig.release();
            (load.join(), released)
        });
        let report = report.expect("workload thread").expect("workload");
        let what = format!("cycle {done}: fault {fault:?}, QD {queue_depth}, {io_size} B, wait {wait:?}");
        assert_eq!(report.unanswered, 0, "{what}: {:?}", report.first_errors);
        assert_eq!(report.verify_errors, 0, "{what}: {:?}", report.first_errors);
        assert_eq!(released.iommu_faults, 0, "{what}: {released:?}");
        assert_eq!(released.mapped_after, 0, "{what}: {released:?}");
        assert_eq!(released.leaked, 0, "{what}: {released:?}");
        assert_eq!(released.zombies_left, 0, "{what}: {released:?}");
        done += 1;
    }
    eprintln!("soak: {done} cycles in {:?}", started.elapsed());
    assert!(done >= cycles.min(20), "only {done} cycles fit in {budget:?}");
}
