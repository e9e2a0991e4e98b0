//! The SCA-1 driver's queue against the simulated board, where the rule is the driver's own:
//! which completions it trusts.

use super::desc::opcode;
use super::regs::global;
use super::Sca1;
use super::Sca1Config;
use super::Sca1Queue;
use super::Sca1Request;
use crate::sim::create_sim_board;
use crate::sim::SimConfig;
use crate::sim::SimHandle;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::BarInterposer;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::RegisterIo;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

struct Rig {
    sim: SimHandle,
    driver: Sca1,
    queue: Sca1Queue,
    data: MappedRegion,
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::with_interrupts(name, false)
    }

    /// A rig whose queue is signalled by an MSI-X vector's eventfd when `interrupts`.
    fn with_interrupts(name: &str, interrupts: bool) -> Self {
        Self::with_driver(name, interrupts, Sca1Config::default())
    }

    /// A rig whose driver is configured as `driver_config` says (one queue of 16 entries).
    fn with_driver(name: &str, interrupts: bool, driver_config: Sca1Config) -> Self {
        Self::build(name, interrupts, driver_config, |device| device)
    }

    /// A rig whose driver reaches the board through `wrap(board)`.
    fn build(
        name: &str,
        interrupts: bool,
        driver_config: Sca1Config,
        wrap: impl FnOnce(Arc<dyn DeviceBacking>) -> Arc<dyn DeviceBacking>,
    ) -> Self {
        let config = SimConfig {
            queues: 1,
            vectors: u32::from(interrupts),
            num_blocks: 1024,
            ..SimConfig::default()
        };
        let (device, sim) = create_sim_board(name, config).expect("sim board");
        let device = wrap(device);
        let driver_config = Sca1Config {
            queues: 1,
            ring_entries: 16,
            interrupts,
            ..driver_config
        };
        let (driver, mut queues) = Sca1::bring_up(Arc::clone(&device), &driver_config).expect("bring-up");
        let data = MappedRegion::new(
            DmaRegion::new(4096).expect("data region"),
            super::device_mapper(device),
            Arc::clone(driver.iovas()),
        )
        .expect("data mapping");
        Self {
            sim,
            driver,
            queue: queues.remove(0),
            data,
        }
    }

    /// Submit one 4 KiB request with `user_tag` and ring the doorbell.
    /// (A FLUSH moves no data: length 0, no segments.)
    fn submit(&mut self, user_tag: u64, op: u8, lba: u64) {
        let data = [(self.data.iova(), 4096)];
        let segments: &[(u64, u32)] = if op == opcode::FLUSH { &[] } else { &data };
        self.queue
            .submit(&Sca1Request {
                user_tag,
                opcode: op,
                fua: false,
                lba,
                length: segments.iter().map(|s| s.1).sum(),
                segments,
                source: None,
            })
            .expect("submit");
        self.queue.ring_doorbell();
    }

    /// Wait (bounded) until the board has posted `n` completion entries in all.
    fn wait_posted(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sim.stats().completions < n {
            assert!(
                Instant::now() < deadline,
                "the board posted {:?}",
                self.sim.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reap_all(&mut self) -> Vec<super::Sca1Completion> {
        let mut out = Vec::new();
        self.queue.reap(&mut out);
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.driver.reset();
    }
}

/// A device that posts a tag it was never given cannot know which tags the host submits next,
/// so the tag may name a request the host submitted after the entry was posted (the CI failure
/// of 2026-12-04: the sim's unknown-tag fault, QD 8, completed a READ before its data moved).
/// The entry's `sq_head` does not cover the new descriptor (and OK carries 0 bytes): the driver
/// refuses it and completes the request once, from its real completion. Returns the
/// (user tag, bytes) of the completions accepted.
fn collide(name: &str, second: u8) -> Vec<(u64, u32)> {
    let mut rig = Rig::new(name);
    // Eight round trips on slot 0 (generations 0..7) make the board see tags 0x0000..0x7000,
    // so its next unknown tag is the first unseen one: 0x0001, slot 1 generation 0.
    for i in 0..8 {
        rig.submit(i, opcode::WRITE, 0);
        rig.wait_posted(i + 1);
        let done = rig.reap_all();
        assert_eq!(done.len(), 1);
    }
    rig.sim.inject("unknown-tag:every=1".parse().expect("fault"));
    rig.submit(100, opcode::READ, 0); // slot 0, tag 0x8000
    rig.wait_posted(10); // its completion and the unknown tag 0x0001
    rig.submit(200, second, 8); // slot 1 (slot 0 is in flight): tag 0x0001
    rig.wait_posted(12);
    let done = rig.reap_all();
    let stats = rig.queue.stats();
    assert_eq!(stats.refused, 1, "{stats:?}");
    assert_eq!(
        stats.unknown_tags, 1,
        "the second unknown tag names nothing: {stats:?}"
    );
    assert_eq!(rig.queue.in_flight(), 0);
    done.iter().map(|c| (c.user_tag, c.bytes)).collect()
}

#[test]
fn a_posted_tag_that_names_a_read_submitted_later_is_refused() {
    assert_eq!(
        collide("sca1-colliding-read", opcode::READ),
        [(100, 4096), (200, 4096)],
        "each request completed once, by its own entry"
    );
}

/// A FLUSH moves no bytes, so only the `sq_head` check can tell its real completion from a
/// lie (which would report the cache flushed before the engine saw the command).
#[test]
fn a_posted_tag_that_names_a_flush_submitted_later_is_refused() {
    assert_eq!(
        collide("sca1-colliding-flush", opcode::FLUSH),
        [(100, 4096), (200, 0)],
        "each request completed once, by its own entry"
    );
}

/// OK must account for every byte (accelerator.md §4): an entry for a request the engine has
/// consumed that reports fewer bytes is refused, and the request stays in flight for its
/// deadline; an honest entry is trusted.
#[test]
fn an_ok_completion_short_of_the_request_length_is_refused() {
    let mut rig = Rig::new("sca1-short-ok");
    rig.submit(1, opcode::READ, 0);
    rig.wait_posted(1);
    assert_eq!(rig.reap_all().len(), 1, "an honest completion is trusted");
    rig.sim.inject("short-ok:every=1".parse().expect("fault"));
    rig.submit(2, opcode::READ, 8);
    rig.wait_posted(2);
    assert!(
        rig.reap_all().is_empty(),
        "OK for 3584 of 4096 bytes is not a completion"
    );
    let stats = rig.queue.stats();
    assert_eq!((stats.refused, stats.completed), (1, 1), "{stats:?}");
    assert_eq!(rig.queue.in_flight(), 1, "the request waits for its deadline");
    assert_eq!(rig.queue.expired(Instant::now() + Duration::from_secs(1)), [2]);
}

/// Whether the queue's interrupt eventfd is readable now.
fn signalled(queue: &Sca1Queue) -> bool {
    let fd = queue.notify_fd().expect("the queue has an interrupt eventfd");
    scst_accel_hal::fdio::poll_readable(&[fd], Duration::ZERO).expect("poll")[0]
}

/// Whether the queue's interrupt eventfd becomes readable within 5 s.
fn raised(queue: &Sca1Queue) -> bool {
    let fd = queue.notify_fd().expect("the queue has an interrupt eventfd");
    scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_secs(5)).expect("poll")[0]
}

/// Signal the queue's eventfd as a late interrupt would (one raised for entries already
/// reaped): an eventfd counts 8-byte writes.
fn signal_stale(queue: &Sca1Queue) {
    use std::io::Write as _;
    let fd = queue
        .notify_fd()
        .expect("eventfd")
        .try_clone_to_owned()
        .expect("dup");
    std::fs::File::from(fd)
        .write_all(&1u64.to_ne_bytes())
        .expect("signal the eventfd");
}

/// A reap never reads the interrupt eventfd for posted entries, nor when the ring is empty right
/// after a doorbell (issue 13: a syscall per reap). For an owner that polls the eventfd
/// without `prepare_to_wait`, a stale signal (an interrupt for entries already reaped) is
/// cleared by the second empty reap in a row, so it never spins on it.
#[test]
fn a_reap_reads_the_eventfd_only_when_twice_empty() {
    let mut rig = Rig::with_interrupts("sca1-irq-gate", true);
    rig.submit(1, opcode::READ, 0);
    assert!(raised(&rig.queue), "the completion raised the vector");
    let reads = rig.queue.stats().irq_reads;
    assert_eq!(rig.reap_all().len(), 1);
    assert_eq!(
        rig.queue.stats().irq_reads,
        reads,
        "a posted entry is popped without a read"
    );
    assert!(signalled(&rig.queue), "its signal stays");

    // Opportunistic reaps right after a doorbell find nothing and read nothing.
    rig.sim.inject("latency:200ms".parse().expect("fault"));
    rig.submit(2, opcode::READ, 8);
    assert!(rig.reap_all().is_empty());
    assert_eq!(
        rig.queue.stats().irq_reads,
        reads,
        "an empty reap after a doorbell skips the read"
    );

    // The second empty reap in a row reads: the stale signal is gone.
    assert!(rig.reap_all().is_empty());
    assert_eq!(rig.queue.stats().irq_reads, reads + 1);
    assert!(
        !signalled(&rig.queue),
        "two empty reaps in a row clear a stale signal"
    );

    // After the next doorbell, the first empty reap cannot tell a stale signal from none and
    // leaves it; the second clears it: one extra pass of a polling worker, never a spin.
    rig.submit(3, opcode::READ, 16);
    signal_stale(&rig.queue);
    assert!(rig.reap_all().is_empty());
    assert!(
        signalled(&rig.queue),
        "left by the first empty reap after a doorbell"
    );
    assert!(rig.reap_all().is_empty());
    assert_eq!(rig.queue.stats().irq_reads, reads + 2);
    assert!(!signalled(&rig.queue), "cleared by the second");
}

/// `prepare_to_wait` before a sleep: with a completion posted it says so and reads nothing (the
/// owner reaps); otherwise it clears the signals of completions already reaped, so the sleep
/// does not end at once. From the first call on, reaps read nothing at all.
#[test]
fn a_wait_is_prepared_with_one_read_and_only_when_nothing_is_posted() {
    let mut rig = Rig::with_interrupts("sca1-irq-prepare", true);
    rig.submit(1, opcode::READ, 0);
    assert!(raised(&rig.queue), "the completion raised the vector");
    let reads = rig.queue.stats().irq_reads;
    assert!(rig.queue.prepare_to_wait(), "posted: reap, do not sleep");
    assert_eq!(rig.queue.stats().irq_reads, reads, "and no read");
    assert_eq!(rig.reap_all().len(), 1);
    assert!(signalled(&rig.queue), "the signal stays after the reap");
    assert!(
        !rig.queue.prepare_to_wait(),
        "nothing posted: the owner may sleep"
    );
    assert_eq!(
        rig.queue.stats().irq_reads,
        reads + 1,
        "one read before the sleep"
    );
    assert!(!signalled(&rig.queue), "cleared: the sleep does not end at once");

    // Empty reaps of a preparing owner read nothing, however many.
    rig.sim.inject("latency:200ms".parse().expect("fault"));
    rig.submit(2, opcode::READ, 8);
    for _ in 0..3 {
        assert!(rig.reap_all().is_empty());
    }
    assert_eq!(rig.queue.stats().irq_reads, reads + 1);
    // The delayed completion wakes the sleep the owner prepared.
    assert!(raised(&rig.queue), "the delayed completion raised the vector");
    assert!(rig.queue.prepare_to_wait());
    assert_eq!(rig.reap_all().len(), 1);
}

/// INT_COALESCE.REARM (contract 1.2, accelerator.md §9): while its owner reaps without
/// preparing a wait, a queue's vector is raised once, not per completion; `prepare_to_wait`
/// re-arms it, so a completion after the wait was prepared still wakes the owner. With REARM
/// off in the driver's configuration, every completion raises.
#[test]
fn rearm_raises_once_until_the_owner_prepares_its_wait() {
    for (rearm, busy_interrupts) in [(true, 0), (false, 4)] {
        let mut rig = Rig::with_driver(
            "sca1-rearm",
            true,
            Sca1Config {
                rearm,
                ..Sca1Config::default()
            },
        );
        assert!(!rig.queue.prepare_to_wait(), "nothing posted yet");
        rig.submit(1, opcode::READ, 0);
        assert!(raised(&rig.queue), "rearm {rearm}: the first completion raised");
        assert_eq!(rig.reap_all().len(), 1);
        let before = rig.sim.stats().interrupts;

        // Busy: four more, reaped with no wait prepared in between.
        for i in 0..4 {
            rig.submit(2 + i, opcode::READ, 8 * i);
        }
        rig.wait_posted(5);
        assert_eq!(
            rig.sim.stats().interrupts - before,
            busy_interrupts,
            "rearm {rearm}: interrupts while the owner was busy"
        );
        assert_eq!(rig.reap_all().len(), 4);

        // About to sleep: re-armed, and the next completion wakes the owner.
        assert!(!rig.queue.prepare_to_wait());
        assert!(!signalled(&rig.queue), "the wait starts with the fd clear");
        rig.submit(9, opcode::READ, 64);
        assert!(
            raised(&rig.queue),
            "rearm {rearm}: the completion after the prepared wait raised"
        );
        assert_eq!(rig.reap_all().len(), 1);
    }
}

/// A PCIe link that delivers INT_STATUS_CLEAR late: the write is held until the next BAR
/// access, which a posted write precedes (a read does not pass it, and posted writes keep
/// their order), as a clear still in flight when the device posts an entry would be.
struct LateClear {
    inner: Arc<dyn DeviceBacking>,
    /// The held clear's value, with bit 32 set while one is held.
    held: AtomicU64,
}

impl LateClear {
    fn deliver_held(&self) {
        let held = self.held.swap(0, Ordering::AcqRel);
        if held != 0 {
            self.inner.bar0().write32(global::INT_STATUS_CLEAR, held as u32);
        }
    }
}

impl RegisterIo for LateClear {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        self.deliver_held();
        self.inner.bar0().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.deliver_held();
        if offset == global::INT_STATUS_CLEAR {
            self.held.store(1 << 32 | u64::from(value), Ordering::Release);
            return;
        }
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.deliver_held();
        self.inner.bar0().read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.deliver_held();
        self.inner.bar0().write64(offset, value);
    }
}

impl BarInterposer for LateClear {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }
}

/// Under REARM the driver flushes its INT_STATUS_CLEAR with a read before it looks at the ring
/// (accelerator.md §9): over a link that delivers the clear late, a completion that lands after
/// the look still finds the queue re-armed and raises the vector.
#[test]
fn the_clear_before_a_sleep_is_flushed_before_the_look() {
    let mut rig = Rig::build("sca1-late-clear", true, Sca1Config::default(), |device| {
        Arc::new(LateClear {
            inner: device,
            held: AtomicU64::new(0),
        })
    });
    assert!(!rig.queue.prepare_to_wait(), "nothing posted yet");
    rig.submit(1, opcode::READ, 0);
    assert!(raised(&rig.queue), "the first completion raised the vector");
    assert_eq!(rig.reap_all().len(), 1, "reaped while busy: not re-armed");
    rig.sim.inject("latency:100ms".parse().expect("fault"));
    rig.submit(2, opcode::READ, 8);
    assert!(
        !rig.queue.prepare_to_wait(),
        "nothing posted yet: the owner may sleep"
    );
    assert!(
        raised(&rig.queue),
        "the completion after the look raised the vector"
    );
    assert_eq!(rig.reap_all().len(), 1);
}

/// An owner that never prepares its waits (a tool polling the eventfd) re-arms the vector with
/// every reap that pops, before it pops: each completion after such a reap raises again.
#[test]
fn each_reap_that_pops_re_arms_an_owner_that_polls_the_eventfd() {
    let mut rig = Rig::with_interrupts("sca1-rearm-poll", true);
    for i in 0..3 {
        let before = rig.sim.stats().interrupts;
        rig.submit(i, opcode::READ, 8 * i);
        rig.wait_posted(i + 1);
        // The board counts the raise just after it counts the completion.
        let deadline = Instant::now() + Duration::from_secs(1);
        while rig.sim.stats().interrupts == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rig.sim.stats().interrupts, before + 1, "completion {i} raised");
        assert_eq!(rig.reap_all().len(), 1);
    }
}

/// COPY (contract 1.1, accelerator.md §3.1): blocks move inside the medium, `addr` naming the
/// source; overlapping ranges and a source past the end are refused; a 1.0 engine offers none.
#[test]
fn copy_moves_blocks_inside_the_medium_on_a_1_1_engine() {
    use super::desc::cq_status;
    use crate::engine::Controller;
    let mut rig = Rig::new("sca1-copy");
    assert_eq!(
        rig.driver.geometry().max_copy_blocks,
        (1 << 20) / 512,
        "one transfer's worth"
    );
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    rig.data.region().write_at(0, &pattern);
    rig.submit(1, opcode::WRITE, 10);
    rig.wait_posted(1);
    let copy = |rig: &mut Rig, tag: u64, src: u64, dst: u64| {
        rig.queue
            .submit(&Sca1Request {
                user_tag: tag,
                opcode: opcode::COPY,
                fua: false,
                lba: dst,
                length: 4096,
                segments: &[],
                source: Some(src),
            })
            .expect("submit");
        rig.queue.ring_doorbell();
    };
    copy(&mut rig, 2, 10, 100);
    copy(&mut rig, 3, 10, 14); // overlaps
    copy(&mut rig, 4, 1020, 200); // source past the end
    rig.wait_posted(4);
    rig.data.region().write_at(0, &[0u8; 4096]);
    rig.submit(5, opcode::READ, 100);
    rig.wait_posted(5);
    let mut done: Vec<_> = rig.reap_all().iter().map(|c| (c.user_tag, c.status)).collect();
    done.sort_unstable();
    assert_eq!(
        done,
        vec![
            (1, cq_status::OK),
            (2, cq_status::OK),
            (3, cq_status::INVALID_FIELD),
            (4, cq_status::LBA_RANGE),
            (5, cq_status::OK)
        ]
    );
    let mut back = vec![0u8; 4096];
    rig.data.region().read_at(0, &mut back);
    assert!(back == pattern, "the copied blocks read back as the source");

    let config = SimConfig {
        queues: 1,
        vectors: 0,
        num_blocks: 1024,
        minor: 0,
        ..SimConfig::default()
    };
    let (device, _sim) = create_sim_board("sca1-no-copy", config).expect("sim board");
    let device: Arc<dyn DeviceBacking> = device;
    let driver_config = Sca1Config {
        queues: 1,
        ring_entries: 16,
        ..Sca1Config::default()
    };
    let (driver, _queues) = Sca1::bring_up(device, &driver_config).expect("bring-up");
    assert_eq!(driver.geometry().max_copy_blocks, 0, "a 1.0 engine has no COPY");
    let _ = driver.reset();
}

/// accelerator.md §4: the host keeps at most N − 1 descriptors outstanding on a ring of N. An
/// engine that fetches ahead (§3, the sim's `prefetch` fault) reports `sq_head` past
/// descriptors it has not completed, freeing submission slots while their requests are still
/// in flight, so the ring's own empty slot does not bound what is outstanding: the tags must.
/// Greedy submission against such an engine never has more than 15 requests in flight on a
/// ring of 16, reaches 15, and every request completes once, OK, with its data written.
#[test]
fn at_most_ring_size_minus_one_requests_are_in_flight_when_the_engine_fetches_ahead() {
    use super::desc::cq_status;
    use super::SubmitError;
    use crate::sim::Fault;
    let mut rig = Rig::new("sca1-prefetch");
    rig.sim.inject(Fault::Prefetch {
        queue: None,
        depth: 8,
    });
    // Slow enough that the host refills the ring while the engine holds what it fetched.
    rig.sim.inject(Fault::Latency {
        queue: None,
        micros: 200,
    });
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 11 % 253) as u8).collect();
    rig.data.region().write_at(0, &pattern);
    let segments = [(rig.data.iova(), 4096)];
    let total = 300u64;
    let (mut submitted, mut most) = (0u64, 0usize);
    let mut done = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.len() < total as usize {
        assert!(Instant::now() < deadline, "{} of {total} completed", done.len());
        while submitted < total {
            let request = Sca1Request {
                user_tag: submitted,
                opcode: opcode::WRITE,
                fua: false,
                lba: (submitted % 128) * 8,
                length: 4096,
                segments: &segments,
                source: None,
            };
            match rig.queue.submit(&request) {
                Ok(()) => {
                    submitted += 1;
                    most = most.max(rig.queue.in_flight());
                }
                Err(SubmitError::Full) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
        rig.queue.ring_doorbell();
        for c in rig.reap_all() {
            assert_eq!((c.status, c.bytes), (cq_status::OK, 4096), "{c:?}");
            assert!(done.insert(c.user_tag), "tag {} completed twice", c.user_tag);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(
        most, 15,
        "never more than RING_SIZE - 1 in flight, and the bound reached"
    );
    assert_eq!(rig.queue.stats().refused, 0);
    rig.sim.clear_faults();
    rig.data.region().write_at(0, &[0u8; 4096]);
    rig.submit(total, opcode::READ, 8 * 5);
    rig.wait_posted(total + 1);
    assert_eq!(rig.reap_all().len(), 1);
    let mut back = vec![0u8; 4096];
    rig.data.region().read_at(0, &mut back);
    assert!(back == pattern, "the WRITEs landed");
}

/// A device whose IOMMU domain is another one once `switched`: a `DeviceBacking` bug that
/// `device_mapper` must not trust (it would unmap through a domain that never mapped the range,
/// and the memory would be freed while the first still maps it).
struct TwoDomains {
    first: Arc<dyn DeviceBacking>,
    second: Arc<dyn DeviceBacking>,
    switched: std::sync::atomic::AtomicBool,
}

impl RegisterIo for TwoDomains {
    fn len(&self) -> u64 {
        self.first.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        self.first.bar0().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.first.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.first.bar0().read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.first.bar0().write64(offset, value);
    }
}

impl BarInterposer for TwoDomains {
    fn device(&self) -> &dyn DeviceBacking {
        if self.switched.load(Ordering::Acquire) {
            self.second.as_ref()
        } else {
            self.first.as_ref()
        }
    }
}

#[test]
#[allow(unsafe_code)] // UNSAFETY: DmaMapper::map; both regions outlive their mappings.
fn a_device_mapper_refuses_a_domain_other_than_the_one_it_was_made_with() {
    let (first, _first_sim) = create_sim_board("dm-first", SimConfig::default()).expect("sim");
    let (second, _second_sim) = create_sim_board("dm-second", SimConfig::default()).expect("sim");
    let device = Arc::new(TwoDomains {
        first: first.clone(),
        second: second.clone(),
        switched: std::sync::atomic::AtomicBool::new(false),
    });
    let mapper = super::device_mapper(device.clone());
    let ours = DmaRegion::new(4096).expect("region");
    let theirs = DmaRegion::new(4096).expect("region");
    let iova = 1 << 20;
    // SAFETY: `ours` lives until the end of the test, after its unmap; accessed by nobody.
    unsafe { mapper.map(iova, ours.addr(), 4096) }.expect("map on the first domain");
    // SAFETY: as above, for `theirs` on the second domain.
    unsafe { second.dma().map(iova, theirs.addr(), 4096) }.expect("map on the second domain");
    device.switched.store(true, Ordering::Release);
    mapper
        .unmap(iova, 4096)
        .expect_err("an unmap through another domain than the mapper's");
    // SAFETY: see above.
    unsafe { mapper.map(iova + 4096, ours.addr(), 4096) }.expect_err("a map through it too");
    device.switched.store(false, Ordering::Release);
    mapper
        .unmap(iova, 4096)
        .expect("the first domain still maps the range");
    second
        .dma()
        .unmap(iova, 4096)
        .expect("the second domain's mapping was left alone");
}
