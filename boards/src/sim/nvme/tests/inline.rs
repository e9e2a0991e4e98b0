//! I/O commands executed by the thread that wrote their SQ's tail doorbell
//! (`worker::run_inline`, [`NvmeSimConfig::inline_doorbells`]), and what is left to the SQ's
//! worker thread: a fault standing, a writer holding a lock, more than the budget, and a fused
//! operation whose second needs CQ room the writer would have to wait for.
//!
//! A worker also looks at its SQ on its own (woken by a queue's creation or a change of the
//! controller, and on its 50 ms idle timer); one that looks between a doorbell's post and its
//! writer's claim takes the work itself, as it may. So a test that needs the writer to run the
//! work lets the workers settle first and tries on a fresh controller up to
//! [`ATTEMPTS`](crate::sim::attempts::ATTEMPTS) times ([`on_some_attempt`]): what it checks
//! must hold on one of them, and with the writer's path taken out it holds on none.

use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

use super::super::spec::nvm;
use super::io::rw_contiguous;
use super::*;
use crate::sim::attempts::check;
use crate::sim::attempts::on_some_attempt;
use crate::sim::nvme::NvmeFault;

/// FUSE field values in CDW0 bits 9:8.
const FIRST: u32 = 1 << 8;
const SECOND: u32 = 2 << 8;

/// A small controller with I/O queue pair 1 of `entries` entries, its workers asleep again
/// after the wake-ups of the queue's creation.
fn settled(entries: u16) -> Rig {
    let rig = Rig::with_io_queue(entries);
    std::thread::sleep(Duration::from_millis(10));
    rig
}

fn inline_completions(rig: &Rig) -> u64 {
    rig.sim.stats().inline_completions
}

/// A command whose doorbell finds the worker idle, no fault standing and CQ room is complete
/// when the doorbell write returns.
#[test]
fn a_doorbell_completes_its_commands_before_the_write_returns() {
    on_some_attempt("inline completions", || {
        let mut rig = settled(8);
        let data = pattern(2048, 9);
        let src = rig.alloc(data.len());
        rig.region(src).write_at(0, &data);
        let dst = rig.alloc(data.len());
        let write = rw_contiguous(&mut rig, nvm::WRITE, 40, 4, src);
        let read = rw_contiguous(&mut rig, nvm::READ, 40, 4, dst);
        let cids = rig.submit_together(1, &[write, read]);
        let by_writer = inline_completions(&rig);
        check(by_writer == 2, || format!("{by_writer} posted by the writer"))?;
        for cid in cids {
            let cqe = rig
                .next_completion_within(1, Duration::ZERO)
                .expect("counted as posted");
            assert_eq!((cqe.cid, status(&cqe)), (cid, Status::SUCCESS));
        }
        assert_eq!(rig.read_mem(dst, 0, data.len()), data);
        Ok(())
    });
}

/// With a fault standing, the SQ's worker thread executes every command: a fault may make it
/// wait (latency, a stopped controller), which a writer must never do. Once the plan is empty
/// the writer runs the SQ again.
#[test]
fn with_a_fault_standing_the_worker_thread_runs_the_queue() {
    on_some_attempt("the worker under a fault, the writer after", || {
        let mut rig = settled(8);
        rig.sim.inject(NvmeFault::MediaError { every: 1000 });
        let buf = rig.alloc(512);
        let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, buf);
        assert_eq!(status(&rig.command(1, read)), Status::SUCCESS);
        assert_eq!(inline_completions(&rig), 0);
        rig.sim.clear_faults();
        // The clearing woke every worker: let them look and sleep again.
        std::thread::sleep(Duration::from_millis(10));
        let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, buf);
        rig.submit(1, read);
        let by_writer = inline_completions(&rig);
        check(by_writer == 1, || format!("{by_writer} posted by the writer"))?;
        assert!(rig.next_completion_within(1, Duration::ZERO).is_some());
        Ok(())
    });
}

/// A writer holding a checked lock (a driver's) starts no DMA: the worker thread runs the
/// command.
#[test]
fn a_writer_holding_a_lock_leaves_the_queue_to_the_worker() {
    if !scst_accel_hal::locks::LOCK_CHECK {
        eprintln!("skipped: built without the lock checker, a writer cannot know it holds a lock");
        return;
    }
    let mut rig = Rig::with_io_queue(8);
    let buf = rig.alloc(512);
    let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, buf);
    {
        let spare = OrderedMutex::<(), levels::AccelSpareQueues>::new(());
        let mut token = LockToken::root();
        let _held = spare.lock(&mut token);
        rig.submit(1, read);
    }
    assert_eq!(status(&rig.next_completion(1)), Status::SUCCESS);
    assert_eq!(inline_completions(&rig), 0);
}

/// A writer runs at most `INLINE_BUDGET` (64) commands per doorbell and leaves the rest to the
/// worker thread.
#[test]
fn a_doorbell_beyond_the_budget_hands_the_rest_to_the_worker() {
    on_some_attempt("the budget", || {
        let mut rig = settled(128);
        let flushes = vec![sqe(nvm::FLUSH, 1); 100];
        let cids = rig.submit_together(1, &flushes);
        let by_writer = inline_completions(&rig);
        check(by_writer == 64, || format!("{by_writer} posted by the writer"))?;
        for cid in cids {
            let cqe = rig.next_completion(1);
            assert_eq!((cqe.cid, status(&cqe)), (cid, Status::SUCCESS));
        }
        assert_eq!(inline_completions(&rig), 64);
        Ok(())
    });
}

/// A fused Compare and Write whose second command finds no CQ room is given back untouched by
/// the writer (which may be the host that would free the room) and executed by the worker
/// thread once the host reaps.
#[test]
fn a_fused_operation_short_of_cq_room_is_given_back_to_the_worker() {
    on_some_attempt("a fused operation given back", || {
        // A 4-entry CQ holds 3 completions.
        let mut rig = settled(4);
        let old = pattern(1024, 1);
        assert_eq!(rig.write_blocks(10, &old), Status::SUCCESS);
        let before = rig.sim.stats();
        let scratch = rig.alloc(512);
        for _ in 0..2 {
            let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, scratch);
            rig.submit(1, read);
        }
        let reads_by_writer = inline_completions(&rig) - before.inline_completions;
        check(reads_by_writer == 2, || {
            format!("{reads_by_writer} reads posted by the writer")
        })?;
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
        let given_back = rig.sim.stats().fused_given_back;
        check(given_back == 1, || {
            format!("{given_back} fused operations given back")
        })?;
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
        assert_eq!(
            stats.inline_completions,
            before.inline_completions + 2,
            "{stats:?}"
        );
        // Four commands fetched, the first of the pair once though the writer gave it back.
        assert_eq!(stats.commands, before.commands + 4, "{stats:?}");
        assert_eq!(rig.read_blocks(10, 2), (Status::SUCCESS, new));
        Ok(())
    });
}

/// A writer takes every command its doorbell made waiting (as many as the CQ has room for)
/// and fetches them in one burst: here six that run past the end of both queues, completed in
/// order, the phase tag flipped from the queue's first slot on (§4.6).
#[test]
fn a_burst_across_the_end_of_the_queues_completes_in_order() {
    on_some_attempt("a burst across the wrap", || {
        let mut rig = settled(8);
        let before = inline_completions(&rig);
        let cids = rig.submit_together(1, &vec![sqe(nvm::FLUSH, 1); 5]);
        for cid in cids {
            assert_eq!(rig.next_completion(1).cid, cid);
        }
        let cids = rig.submit_together(1, &vec![sqe(nvm::FLUSH, 1); 6]);
        let by_writer = inline_completions(&rig) - before;
        check(by_writer == 11, || format!("{by_writer} posted by the writer"))?;
        for cid in cids {
            let cqe = rig
                .next_completion_within(1, Duration::ZERO)
                .expect("posted when the write returned");
            assert_eq!((cqe.cid, status(&cqe)), (cid, Status::SUCCESS));
        }
        Ok(())
    });
}

/// A burst takes no more commands than the CQ has room for (a queue of N entries holds N - 1
/// completions, §4.1): with two completions of a four-entry CQ not reaped, a doorbell of two
/// runs one, and the worker thread runs the other once the host reaps.
#[test]
fn a_burst_takes_no_more_than_the_cq_has_room_for() {
    on_some_attempt("a burst bounded by the CQ's room", || {
        let mut rig = settled(4);
        let before = inline_completions(&rig);
        let first = rig.submit_together(1, &[sqe(nvm::FLUSH, 1); 2]);
        check(inline_completions(&rig) - before == 2, || {
            "the first two not posted by the writer".into()
        })?;
        let second = rig.submit_together(1, &[sqe(nvm::FLUSH, 1); 2]);
        let by_writer = inline_completions(&rig) - before;
        check(by_writer == 3, || format!("{by_writer} posted by the writer"))?;
        for cid in first.into_iter().chain(second) {
            let cqe = rig.next_completion(1);
            assert_eq!((cqe.cid, status(&cqe)), (cid, Status::SUCCESS));
        }
        assert_eq!(inline_completions(&rig) - before, 3);
        Ok(())
    });
}

/// A fused Compare and Write in the middle of a burst runs as the worker runs it: the
/// commands before it first, then the pair (its first takes its second), then the command
/// after it, all by the writer (the CQ has room for every completion).
#[test]
fn a_fused_operation_inside_a_burst_runs_in_its_place() {
    on_some_attempt("a fused operation inside a burst", || {
        let mut rig = settled(16);
        let old = pattern(1024, 3);
        assert_eq!(rig.write_blocks(20, &old), Status::SUCCESS);
        let before = rig.sim.stats();
        let scratch = rig.alloc(512);
        let read = rw_contiguous(&mut rig, nvm::READ, 0, 1, scratch);
        let expected = rig.alloc(old.len());
        rig.region(expected).write_at(0, &old);
        let new = pattern(1024, 4);
        let data = rig.alloc(new.len());
        rig.region(data).write_at(0, &new);
        let mut compare = rw_contiguous(&mut rig, nvm::COMPARE, 20, 2, expected);
        compare.cdw0 |= FIRST;
        let mut write = rw_contiguous(&mut rig, nvm::WRITE, 20, 2, data);
        write.cdw0 |= SECOND;
        let flush = sqe(nvm::FLUSH, 1);
        let cids = rig.submit_together(1, &[read, read, compare, write, flush]);
        let by_writer = inline_completions(&rig) - before.inline_completions;
        check(by_writer == 5, || format!("{by_writer} posted by the writer"))?;
        let done: Vec<_> = (0..5)
            .map(|_| {
                let cqe = rig
                    .next_completion_within(1, Duration::ZERO)
                    .expect("posted when the write returned");
                (cqe.cid, status(&cqe))
            })
            .collect();
        assert_eq!(
            done,
            cids.iter().map(|&cid| (cid, Status::SUCCESS)).collect::<Vec<_>>()
        );
        let stats = rig.sim.stats();
        assert_eq!(stats.fused_compare_writes, before.fused_compare_writes + 1);
        assert_eq!(stats.commands, before.commands + 5, "{stats:?}");
        assert_eq!(rig.read_blocks(20, 2), (Status::SUCCESS, new));
        Ok(())
    });
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
    assert_eq!(inline_completions(&rig), 0);
}
