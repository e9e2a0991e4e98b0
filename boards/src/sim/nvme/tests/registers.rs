//! Registers: CAP and VS, the enable/disable handshake, enable checks, shutdown, function
//! reset, doorbells while disabled, and the worker thread's end.

use scst_accel_hal::DeviceBacking;

use super::super::spec::cc;
use super::super::spec::csts;
use super::super::spec::nvm;
use super::super::spec::reg;
use super::super::spec::status as st;
use super::*;
use crate::sim::nvme::controller::POSTED_DOORBELLS;

#[test]
fn cap_and_version_describe_the_controller() {
    let rig = Rig::new(small_config());
    let cap = rig.bar().read64(reg::CAP);
    assert_eq!(cap & 0xFFFF, 1023, "MQES");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_eq!((cap >> 24) & 0xFF, 20, "TO: 10 s");
    assert_eq!((cap >> 32) & 0xF, 0, "DSTRD");
    assert_eq!((cap >> 37) & 0xFF, 1, "CSS: NVM");
    assert_eq!((cap >> 48) & 0xFF, 0, "MPSMIN and MPSMAX");
    assert_eq!(rig.read(reg::VS), 0x0001_0400);
    assert_eq!(rig.csts(), 0, "power-on: not ready, no CFS, no shutdown");
    assert_eq!(rig.dev.bar0().len(), 0x2000);
}

#[test]
fn enable_and_disable_handshake() {
    let mut rig = Rig::new(small_config());
    assert_eq!(rig.csts() & csts::RDY, 0);
    rig.enable();
    assert_eq!(rig.csts() & csts::CFS, 0);
    assert_eq!(rig.read(reg::CC), CC_ENABLE);
    rig.disable();
    assert_eq!(rig.sim.stats().resets, 1);
    // Enabled again with the same admin queue registers, which a reset keeps.
    assert_eq!(rig.read(reg::AQA), 15 | (15 << 16));
    rig.enable();
    let c = rig.admin(sqe(0x7F, 0));
    assert_eq!(status(&c), st::INVALID_OPCODE);
}

#[test]
fn enable_with_an_unusable_configuration_sets_cfs() {
    let cases: [(&str, u32, u64, u32); 5] = [
        ("ASQ misaligned", 15 | (15 << 16), 0x800, CC_ENABLE),
        ("ASQS = 0", 15 << 16, 0, CC_ENABLE),
        (
            "IOSQES missing",
            15 | (15 << 16),
            0,
            cc::EN | (4 << cc::IOCQES_SHIFT),
        ),
        ("MPS = 1", 15 | (15 << 16), 0, CC_ENABLE | (1 << 7)),
        ("CSS = 1", 15 | (15 << 16), 0, CC_ENABLE | (1 << 4)),
    ];
    for (what, aqa, asq_offset, cc_value) in cases {
        let mut rig = Rig::new(small_config());
        let sq = rig.alloc(8192);
        let cq = rig.alloc(4096);
        rig.write(reg::AQA, aqa);
        rig.bar().write64(reg::ASQ, rig.iova(sq) + asq_offset);
        rig.bar().write64(reg::ACQ, rig.iova(cq));
        rig.write(reg::CC, cc_value);
        assert!(wait_until(|| rig.csts() & csts::CFS != 0), "{what}: CFS");
        assert_eq!(rig.csts() & csts::RDY, 0, "{what}: not ready");
        // A controller reset clears CFS.
        rig.write(reg::CC, 0);
        assert_eq!(rig.csts(), 0, "{what}: reset clears CFS");
    }
}

#[test]
fn admin_queue_registers_are_frozen_while_enabled() {
    let rig = Rig::enabled();
    let asq = rig.bar().read64(reg::ASQ);
    rig.write(reg::AQA, 1 | (1 << 16));
    rig.bar().write64(reg::ASQ, 0x1234_5000);
    assert_eq!(rig.read(reg::AQA), 15 | (15 << 16));
    assert_eq!(rig.bar().read64(reg::ASQ), asq);
    // CC.MPS cannot change while enabled either.
    rig.write(reg::CC, CC_ENABLE | (1 << 7));
    assert_eq!(rig.read(reg::CC), CC_ENABLE);
}

#[test]
fn interrupt_mask_set_and_clear_are_kept() {
    let rig = Rig::new(small_config());
    rig.write(reg::INTMS, 0b101);
    assert_eq!(rig.read(reg::INTMS), 0b101);
    rig.write(reg::INTMC, 0b001);
    assert_eq!(rig.read(reg::INTMC), 0b100);
}

#[test]
fn doorbells_while_disabled_are_ignored_and_counted() {
    let rig = Rig::new(small_config());
    rig.write(reg::DOORBELLS, 1);
    rig.write(reg::DOORBELLS + 4, 1);
    let stats = rig.sim.stats();
    assert_eq!(stats.doorbell_writes, 2);
    assert_eq!(stats.invalid_doorbell_writes, 2);
    assert_eq!(stats.commands, 0);
}

/// More doorbell writes than the posted queue holds while nobody can drain it (the test holds
/// the state lock): the writes past its room are applied by their writer once the lock is free,
/// after the queued ones, and every write is applied (counted) once.
#[test]
fn doorbells_past_a_full_posted_queue_are_all_applied() {
    let rig = Rig::new(small_config());
    let shared = std::sync::Arc::clone(rig.sim.shared());
    let writes = 4 * POSTED_DOORBELLS as u64;
    let dev = std::sync::Arc::clone(&rig.dev);
    let mut token = crate::sim::nvme::controller::Token::root();
    let held = shared.lock(&mut token);
    let writer = std::thread::spawn(move || {
        for i in 0..writes {
            dev.bar0().write32(reg::DOORBELLS, (i % 2) as u32);
        }
    });
    // The write after the queue's room is in its writer's hands: the queue is full, since
    // draining it needs the lock held here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while shared
        .stats
        .doorbell_writes
        .load(std::sync::atomic::Ordering::SeqCst)
        <= POSTED_DOORBELLS as u64
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never got past the queue's room"
        );
        std::hint::spin_loop();
    }
    drop(held);
    writer.join().expect("writer");
    let stats = rig.sim.stats();
    assert_eq!(stats.doorbell_writes, writes);
    assert!(stats.doorbells_applied_by_writer > 0, "{stats:?}");
    assert_eq!(stats.invalid_doorbell_writes, writes);
}

#[test]
fn shutdown_completes_and_stops_fetching() {
    let mut rig = Rig::with_io_queue(8);
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    assert!(
        wait_until(|| (rig.csts() >> csts::SHST_SHIFT) & 3 == csts::SHST_COMPLETE),
        "SHST complete"
    );
    let before = rig.sim.stats().commands;
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(
        rig.next_completion_within(1, QUIET).is_none(),
        "no command after shutdown"
    );
    assert_eq!(rig.sim.stats().commands, before);
    // A controller reset clears SHST; the controller works again after enabling.
    rig.disable();
    assert_eq!(rig.csts(), 0);
    rig.enable();
    rig.create_io_queue(1, 8);
    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
}

/// CAP.TO and RTD3E are what the configuration says, and the shutdown and the disable take the
/// configured times: SHST stays 01b (occurring) and RDY stays 1 until they have passed.
#[test]
fn cap_to_rtd3e_and_the_shutdown_and_disable_times_are_configurable() {
    let mut rig = Rig::new(NvmeSimConfig {
        cap_to: 3,
        rtd3e_micros: 1_500_000,
        shutdown_micros: 300_000,
        disable_micros: 300_000,
        ..small_config()
    });
    assert_eq!((rig.bar().read64(reg::CAP) >> 24) & 0xFF, 3, "TO: 1.5 s");
    rig.enable();
    let page = rig.alloc(4096);
    assert_eq!(
        status(&rig.admin(identify(1, 0, rig.iova(page), 0))),
        Status::SUCCESS
    );
    let rtd3e = rig.read_mem(page, 88, 4);
    assert_eq!(
        u32::from_le_bytes([rtd3e[0], rtd3e[1], rtd3e[2], rtd3e[3]]),
        1_500_000,
        "RTD3E (bytes 91:88)"
    );
    let shst = |rig: &Rig| (rig.csts() >> csts::SHST_SHIFT) & 3;
    let start = Instant::now();
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    assert_eq!(shst(&rig), csts::SHST_OCCURRING);
    assert!(wait_until(|| shst(&rig) == csts::SHST_COMPLETE), "SHST complete");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    rig.write(reg::CC, 0);
    assert_eq!(
        rig.csts() & csts::RDY,
        csts::RDY,
        "RDY stays 1 during the disable"
    );
    assert!(wait_until(|| rig.csts() & csts::RDY == 0), "RDY cleared");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

/// A shutdown notification made while I/O queues exist is counted (the host should delete
/// them first, NVMe 1.4 §7.6.2); one made after deleting them is not.
#[test]
fn a_shutdown_with_io_queues_still_there_is_counted() {
    let mut rig = Rig::with_io_queue(8);
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    assert_eq!(rig.sim.stats().shutdowns_with_io_queues, 1);
    rig.disable();
    rig.enable();
    rig.create_io_queue(1, 8);
    let delete = |op: u8| Sqe {
        cdw10: 1,
        ..sqe(op, 0)
    };
    assert_eq!(
        status(&rig.admin(delete(admin_op::DELETE_IO_SQ))),
        Status::SUCCESS
    );
    assert_eq!(
        status(&rig.admin(delete(admin_op::DELETE_IO_CQ))),
        Status::SUCCESS
    );
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    let stats = rig.sim.stats();
    assert_eq!(
        (stats.shutdown_notifications, stats.shutdowns_with_io_queues),
        (2, 1)
    );
}

#[test]
fn function_reset_returns_registers_to_reset_values() {
    let mut rig = Rig::with_io_queue(8);
    rig.write(reg::INTMS, 1);
    rig.dev.reset().expect("function reset");
    for (name, offset) in [
        ("CC", reg::CC),
        ("CSTS", reg::CSTS),
        ("AQA", reg::AQA),
        ("ASQ", reg::ASQ),
        ("ACQ", reg::ACQ),
        ("INTMS", reg::INTMS),
    ] {
        assert_eq!(rig.read(offset), 0, "{name}");
    }
    assert_eq!(rig.sim.stats().resets, 1);
    rig.enable();
    rig.create_io_queue(1, 8);
    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
}

#[test]
fn a_controller_reset_deletes_every_queue_but_keeps_the_data() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(1024, 3);
    assert_eq!(rig.write_blocks(10, &data), Status::SUCCESS);
    rig.disable();
    rig.enable();
    // The I/O queues are gone: their doorbells are invalid now.
    let invalid = rig.sim.stats().invalid_doorbell_writes;
    rig.write(reg::DOORBELLS + 8, 1);
    assert_eq!(rig.sim.stats().invalid_doorbell_writes, invalid + 1);
    // Queue 1 can be made again (it would be Invalid Queue Identifier if it still existed).
    rig.create_io_queue(1, 8);
    let (s, back) = rig.read_blocks(10, 2);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);
}

/// Whether a thread named `name` runs in this process.
fn thread_exists(name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    })
}

#[test]
fn the_worker_threads_end_when_the_device_is_dropped() {
    let config = small_config();
    // One worker per submission queue: the admin queue's and one per I/O queue.
    let names: Vec<String> = (0..=config.queues).map(|w| format!("nvjoin-nvme{w}")).collect();
    let (dev, sim) = create_nvme_sim("nvjoin", config).expect("create");
    // The threads are named as they are spawned.
    assert!(
        wait_until(|| names.iter().all(|n| thread_exists(n))),
        "every worker runs"
    );
    drop(dev);
    // Joined by the SimDevice's drop: gone at once, even though the handle lives on.
    for name in &names {
        assert!(!thread_exists(name), "worker {name} was joined");
    }
    assert_eq!(sim.stats().commands, 0);
}

/// The NVMe driver rings its admin doorbells with `nvme.admin` held, and every simulator lock
/// comes after it: a doorbell write must take none of them (docs/locking.md). Held here is the
/// highest lock of the hierarchy, so any lock the model took inside the write would be a
/// lock-order panic; every command still completes, so the posted writes reached the worker,
/// and woken by them rather than by its 50 ms idle timeout: right after a completion the
/// worker has just parked, so twenty lost wake-ups would take about a second.
#[test]
fn a_doorbell_write_under_a_held_lock_takes_no_simulator_lock() {
    use scst_accel_hal::locks::levels;
    use scst_accel_hal::locks::LockToken;
    use scst_accel_hal::locks::OrderedMutex;

    const ROUNDS: u64 = 20;
    let mut rig = Rig::enabled();
    let highest = OrderedMutex::<(), levels::InterruptLines>::new(());
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let cid = {
            let mut token = LockToken::root();
            let _held = highest.lock(&mut token);
            // Get Features, Number of Queues (FID 07h).
            let get_queues = Sqe {
                cdw10: 0x07,
                ..sqe(super::super::spec::admin::GET_FEATURES, 0)
            };
            rig.submit(0, get_queues)
        };
        let cqe = rig.next_completion(0);
        assert_eq!(cqe.cid, cid);
        assert_eq!(status(&cqe), Status::SUCCESS);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "{ROUNDS} commands took {took:?}: doorbell wake-ups were lost"
    );
    let stats = rig.sim.stats();
    assert_eq!(stats.invalid_doorbell_writes, 0);
    // Each round rang the SQ tail and the CQ head doorbell.
    assert_eq!(stats.doorbell_writes, 2 * ROUNDS);
}

/// A BAR access other than a doorbell takes the state lock with no token (none reaches through
/// `RegisterIo`), so the order is checked at run time: under a driver lock (diag reads a spare
/// queue's registers under `accel.spare_queues`) it is allowed, as an MMIO access is not a
/// blocking call ...
#[test]
fn a_register_access_under_a_driver_lock_is_allowed() {
    use scst_accel_hal::locks::levels;
    use scst_accel_hal::locks::LockToken;
    use scst_accel_hal::locks::OrderedMutex;

    let rig = Rig::new(small_config());
    let spare = OrderedMutex::<(), levels::AccelSpareQueues>::new(());
    let mut token = LockToken::root();
    let _held = spare.lock(&mut token);
    rig.write(reg::INTMS, 1);
    assert_eq!(rig.read(reg::INTMS), 1);
}

/// ... and under a lock after the simulator's own it is a lock-order violation: an abort (a
/// panic here, where the test expects it; an unchecked release build does not look).
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "lock order violation")]
fn a_register_access_under_a_lock_after_the_simulators_is_refused() {
    use scst_accel_hal::locks::levels;
    use scst_accel_hal::locks::LockToken;
    use scst_accel_hal::locks::OrderedMutex;

    let rig = Rig::new(small_config());
    let table = OrderedMutex::<(), levels::IommuTable>::new(());
    let _expected = scst_accel_hal::locks::expect_violations();
    let mut token = LockToken::root();
    let _held = table.lock(&mut token);
    rig.read(reg::CSTS);
}

/// `crwmt` sets CAP.CRMS.CRWMS (bit 59) and is what CRTO (68h) reads as CRWMT; without it both
/// read 0. `enable_micros` holds CSTS.RDY at 0 that long after CC.EN = 1.
#[test]
fn crto_crwms_and_the_enable_time_are_configurable() {
    let rig = Rig::new(small_config());
    assert_eq!(rig.bar().read64(reg::CAP) >> 59 & 3, 0, "no CRMS");
    assert_eq!(rig.read(reg::CRTO), 0);
    let mut rig = Rig::new(NvmeSimConfig {
        cap_to: 1,
        crwmt: 8,
        enable_micros: 300_000,
        ..small_config()
    });
    let cap = rig.bar().read64(reg::CAP);
    assert_eq!(
        (cap >> 59 & 3, cap >> 24 & 0xFF),
        (1, 1),
        "CRWMS, not CRIMS; TO 500 ms"
    );
    assert_eq!(rig.read(reg::CRTO), 8, "CRWMT 4 s, CRIMT 0");
    let start = Instant::now();
    rig.enable();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}
