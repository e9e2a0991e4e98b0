//! I/O commands executed by the thread that wrote their SQ's tail doorbell
//! (`worker::run_inline`, [`NvmeSimConfig::inline_doorbells`]), and what is left to the SQ's
//! worker thread: a fault standing, and a fused operation whose second needs CQ room the
//! writer would have to wait for.

use super::super::spec::nvm;
use super::io::rw_contiguous;
use super::*;
use crate::sim::nvme::NvmeFault;

/// FUSE field values in CDW0 bits 9:8.
const FIRST: u32 = 1 << 8;
const SECOND: u32 = 2 << 8;

/// A command whose doorbell finds the worker idle, no fault standing and CQ room is complete
/// when the doorbell write returns.
#[test]
fn a_doorbell_completes_its_commands_before_the_write_returns() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(2048, 9);
    let src = rig.alloc(data.len());
    rig.region(src).write_at(0, &data);
    let dst = rig.alloc(data.len());
    let write = rw_contiguous(&mut rig, nvm::WRITE, 40, 4, src);
    let read = rw_contiguous(&mut rig, nvm::READ, 40, 4, dst);
    let cids = rig.submit_together(1, &[write, read]);
    for cid in cids {
        let cqe = rig
            .next_completion_within(1, Duration::ZERO)
            .expect("posted when the doorbell write returned");
        assert_eq!((cqe.cid, status(&cqe)), (cid, Status::SUCCESS));
    }
    assert_eq!(rig.read_mem(dst, 0, data.len()), data);
    assert_eq!(rig.sim.stats().inline_completions, 2);
}

/// With a fault standing, the SQ's worker thread executes every command: a fault may make it
/// wait (latency, a stopped controller), which a writer must never do.
#[test]
fn with_a_fault_standing_the_worker_thread_runs_the_queue() {
    let mut rig = Rig::with_io_queue(8);
    rig.sim.inject(NvmeFault::MediaError { every: 1000 });
    let buf = rig.alloc(512);
    let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, buf);
    assert_eq!(status(&rig.command(1, read)), Status::SUCCESS);
    assert_eq!(rig.sim.stats().inline_completions, 0);
    rig.sim.clear_faults();
    let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, buf);
    rig.submit(1, read);
    assert!(
        rig.next_completion_within(1, Duration::ZERO).is_some(),
        "inline again"
    );
    assert_eq!(rig.sim.stats().inline_completions, 1);
}

/// A fused Compare and Write whose second command finds no CQ room is given back untouched by
/// the writer (which may be the host that would free the room) and executed by the worker
/// thread once the host reaps.
#[test]
fn a_fused_operation_short_of_cq_room_is_given_back_to_the_worker() {
    // A 4-entry CQ holds 3 completions.
    let mut rig = Rig::with_io_queue(4);
    let old = pattern(1024, 1);
    assert_eq!(rig.write_blocks(10, &old), Status::SUCCESS);
    let inline_before = rig.sim.stats().inline_completions;
    let scratch = rig.alloc(512);
    for _ in 0..2 {
        let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, scratch);
        rig.submit(1, read);
    }
    // Two completions posted and not consumed: room for one, the pair needs two.
    let expected = rig.alloc(old.len());
    rig.region(expected).write_at(0, &old);
    let new = pattern(1024, 2);
    let data = rig.alloc(new.len());
    rig.region(data).write_at(0, &new);
    let mut compare = rw_contiguous(&mut rig, nvm::COMPARE, 10, 2, expected);
    compare.cdw0 |= FIRST;
    let mut write = rw_contiguous(&mut rig, nvm::WRITE, 10, 2, data);
    write.cdw0 |= SECOND;
    let pair = rig.submit_together(1, &[compare, write]);
    assert_eq!(rig.sim.stats().inline_completions, inline_before + 2);
    assert_eq!(rig.sim.stats().fused_compare_writes, 0, "nothing executed yet");
    // Consuming the two frees the room; the worker thread executes the pair.
    for _ in 0..2 {
        assert_eq!(status(&rig.next_completion(1)), Status::SUCCESS);
    }
    let mut done: Vec<_> = (0..2).map(|_| rig.next_completion(1)).collect();
    done.sort_by_key(|c| c.cid);
    assert_eq!(
        done.iter().map(|c| (c.cid, status(c))).collect::<Vec<_>>(),
        [(pair[0], Status::SUCCESS), (pair[1], Status::SUCCESS)]
    );
    let stats = rig.sim.stats();
    assert_eq!(stats.fused_compare_writes, 1);
    assert_eq!(stats.inline_completions, inline_before + 2, "{stats:?}");
    assert_eq!(rig.read_blocks(10, 2), (Status::SUCCESS, new));
}

/// Off, every command runs on the worker threads.
#[test]
fn with_inline_doorbells_off_the_worker_threads_run_everything() {
    let mut rig = Rig::new(NvmeSimConfig {
        inline_doorbells: false,
        ..small_config()
    });
    rig.enable();
    rig.create_io_queue(1, 8);
    let data = pattern(1024, 4);
    assert_eq!(rig.write_blocks(3, &data), Status::SUCCESS);
    assert_eq!(rig.read_blocks(3, 2), (Status::SUCCESS, data));
    assert_eq!(rig.sim.stats().inline_completions, 0);
}
