//! Injected faults: latency, never-complete, media error, hang, gone, CFS, shutdown hang,
//! resets ignored, bus mastering stuck.

use super::super::spec::admin as op;
use super::super::spec::csts;
use super::super::spec::nvm;
use super::super::spec::reg;
use super::super::spec::status as st;
use super::super::NvmeFault;
use super::*;

#[test]
fn latency_delays_but_completes_and_a_reset_drops_the_waiting_command() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject("latency:1ms".parse().expect("fault"));
    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
    rig.sim.clear_faults();
    rig.sim.inject(NvmeFault::Latency { micros: 60_000_000 });
    let commands = rig.sim.stats().commands;
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(wait_until(|| rig.sim.stats().commands == commands + 1), "fetched");
    // The worker holds the command; a controller reset ends the wait without a completion
    // and RDY clears once it let go.
    rig.disable();
    assert!(rig.next_completion_within(1, QUIET).is_none());
    assert_eq!(rig.sim.faults(), [NvmeFault::Latency { micros: 60_000_000 }]);
    rig.sim.clear_faults();
    rig.enable();
    rig.create_io_queue(1, 8);
    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
}

#[test]
fn never_complete_drops_every_nth_completion_but_does_the_work() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject("never-complete:every=2".parse().expect("fault"));
    let data = pattern(512, 9);
    assert_eq!(rig.write_blocks(5, &data), Status::SUCCESS, "1st: completes");
    let buf = rig.alloc(4096);
    let lost = rig.submit(1, super::io::rw(nvm::READ, 5, 1, rig.iova(buf), 0));
    assert!(
        rig.next_completion_within(1, QUIET).is_none(),
        "2nd: never completes"
    );
    assert_eq!(rig.read_mem(buf, 0, 512), data, "but its data moved");
    let c = rig.command(1, sqe(nvm::FLUSH, 1));
    assert_ne!(c.cid, lost);
    assert_eq!(c.sqhd, 3, "the lost command was consumed");
    // Admin commands are not counted and not dropped; Abort answers "not aborted".
    let c = rig.admin(Sqe {
        cdw10: 1 | (u32::from(lost) << 16),
        ..sqe(op::ABORT, 0)
    });
    assert_eq!(c.dw0 & 1, 1);
}

#[test]
fn media_error_fails_reads_only() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject("error".parse().expect("fault"));
    assert_eq!(rig.write_blocks(1, &pattern(512, 1)), Status::SUCCESS);
    let (s, back) = rig.read_blocks(1, 1);
    assert_eq!(s, st::UNRECOVERED_READ_ERROR);
    assert_eq!((s.sct(), s.sc()), (2, 0x81));
    assert_eq!(back, vec![0; 512], "no data moved");
    rig.sim.clear_faults();
    assert_eq!(rig.read_blocks(1, 1).0, Status::SUCCESS);
}

#[test]
fn hang_completes_nothing_until_a_controller_reset() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject(NvmeFault::Hang);
    rig.submit(1, sqe(nvm::FLUSH, 1));
    rig.submit(0, identify(1, 0, 0, 0));
    assert!(rig.next_completion_within(1, QUIET).is_none());
    assert!(rig.next_completion_within(0, QUIET).is_none());
    assert_eq!(rig.csts() & (csts::RDY | csts::CFS), csts::RDY, "looks healthy");
    rig.disable();
    rig.enable();
    rig.create_io_queue(1, 8);
    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
}

#[test]
fn gone_reads_all_ones_and_does_nothing() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject("gone".parse().expect("fault"));
    for offset in [reg::CAP, reg::VS, reg::CC, reg::CSTS, reg::DOORBELLS] {
        assert_eq!(rig.read(offset), u32::MAX, "{offset:#x}");
    }
    assert_eq!(rig.bar().read64(reg::CAP), u64::MAX);
    let commands = rig.sim.stats().commands;
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(rig.next_completion_within(1, QUIET).is_none());
    assert_eq!(rig.sim.stats().commands, commands, "nothing fetched");
    // No reset revives it.
    rig.dev.reset().expect("reset");
    assert_eq!(rig.csts(), u32::MAX);
}

#[test]
fn cfs_stops_processing_until_a_controller_reset() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject(NvmeFault::Cfs);
    assert_ne!(rig.csts() & csts::CFS, 0);
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(rig.next_completion_within(1, QUIET).is_none());
    rig.disable();
    assert_eq!(rig.csts() & csts::CFS, 0, "reset clears CFS");
    rig.enable();
    assert_eq!(
        status(&rig.admin(identify(0x10, 0, 0, 0))),
        st::INVALID_FIELD,
        "working again"
    );
}

#[test]
fn shutdown_hang_never_completes_the_shutdown() {
    let mut rig = Rig::enabled();
    rig.sim.inject("shutdown-hang".parse().expect("fault"));
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        assert_eq!((rig.csts() >> csts::SHST_SHIFT) & 3, csts::SHST_OCCURRING);
        std::thread::sleep(Duration::from_millis(5));
    }
    // A reset still works, and without the fault a shutdown completes.
    rig.disable();
    rig.sim.clear_faults();
    rig.enable();
    rig.write(reg::CC, CC_ENABLE | (1 << 14));
    assert!(wait_until(
        || (rig.csts() >> csts::SHST_SHIFT) & 3 == csts::SHST_COMPLETE
    ));
}

#[test]
fn an_unmapped_admin_queue_is_fatal() {
    let mut rig = Rig::new(small_config());
    // Program an admin SQ at an IOVA nobody mapped: the fetch faults, there is no CID to
    // complete, so the controller reports CFS.
    let cq = rig.alloc(4096);
    rig.write(reg::AQA, 15 | (15 << 16));
    rig.bar().write64(reg::ASQ, UNMAPPED);
    rig.bar().write64(reg::ACQ, rig.iova(cq));
    rig.write(reg::CC, CC_ENABLE);
    assert!(wait_until(|| rig.csts() & csts::RDY != 0));
    rig.write(reg::DOORBELLS, 1);
    assert!(wait_until(|| rig.csts() & csts::CFS != 0), "CFS");
    assert_eq!(rig.sim.stats().iommu_faults, 1);
}

#[test]
fn an_unmapped_completion_queue_is_fatal() {
    let mut rig = Rig::enabled();
    // An I/O CQ at an IOVA nobody mapped, its SQ mapped: the command is fetched and executed,
    // its completion cannot be written, and with no entry to report that in, the controller
    // sets CFS (the entry's two pieces go through the IOMMU as one ordered write).
    let sq = rig.alloc(8 * 64);
    let cq = rig.alloc(8 * 16);
    assert_eq!(
        status(&rig.admin(create_cq(1, 8, UNMAPPED, 1, true))),
        Status::SUCCESS
    );
    assert_eq!(
        status(&rig.admin(create_sq(1, 8, rig.iova(sq), 1))),
        Status::SUCCESS
    );
    rig.queues.resize_with(2, || None);
    rig.queues[1] = Some(TestQueue {
        size: 8,
        sq,
        cq,
        tail: 0,
        head: 0,
        phase: true,
    });
    let before = rig.sim.stats();
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(wait_until(|| rig.csts() & csts::CFS != 0), "CFS");
    let after = rig.sim.stats();
    assert_eq!(after.commands, before.commands + 1, "fetched and executed");
    assert_eq!(after.completions, before.completions, "nothing posted");
    assert_eq!(after.iommu_faults, before.iommu_faults + 1);
}

/// `no-reset`: a CC write clearing EN does not take (the controller keeps running, RDY stays
/// at 1) and a function reset is refused; `bus-master-stuck`: clearing Bus Master Enable cannot
/// be confirmed. Cleared, both work again.
#[test]
fn resets_ignored_and_bus_mastering_stuck() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject("no-reset".parse().expect("fault"));
    rig.sim.inject("bus-master-stuck".parse().expect("fault"));
    rig.write(reg::CC, 0);
    std::thread::sleep(QUIET);
    assert_eq!(rig.csts() & csts::RDY, csts::RDY, "RDY stays 1");
    assert_eq!(rig.read(reg::CC) & 1, 1, "CC.EN still reads 1");
    assert_eq!(
        status(&rig.command(1, sqe(nvm::FLUSH, 1))),
        Status::SUCCESS,
        "the controller keeps running"
    );
    let resets = rig.sim.stats().resets;
    rig.dev.reset().expect_err("the function reset is refused");
    assert_eq!(rig.sim.stats().resets, resets);
    rig.dev
        .disable_bus_master()
        .expect_err("Bus Master Enable sticks");
    assert!(!rig.sim.iommu().bus_master_disabled());
    rig.sim.clear_faults();
    rig.disable();
    rig.dev.reset().expect("function reset");
    rig.dev.disable_bus_master().expect("bus mastering cleared");
    assert!(rig.sim.iommu().bus_master_disabled());
}
