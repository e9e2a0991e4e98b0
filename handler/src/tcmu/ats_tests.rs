//! COMPARE AND WRITE (ATS) through the TCMU frontend: the simulated kernel side of the ring
//! ([`super::sim`]) posts the CDBs, [`super::exec::Executor`]s serve them over one disk whose
//! engine runs COMPARE AND WRITE (`CompareAndWriteBy::Handler`) and a RAM store.
//!
//! - match and mismatch end to end (the MISCOMPARE offset in the first and the last block, the
//!   medium untouched);
//! - two COMPARE AND WRITEs of one block in one ring turn: the second is parked behind the
//!   first and sees its write (without the range lock both compare the old value and both
//!   "win");
//! - a parked command on an idle worker is woken by its grant's eventfd, not by its timeout;
//! - the ATS stress test: sessions on two rings, each served by its own worker thread, race
//!   COMPARE AND WRITE on one block round after round: exactly one winner per round, and every
//!   read sees a whole value some winner wrote.

use super::exec::Executor;
use super::ring::Ring;
use super::sim::SimCompletion;
use super::sim::SimConfig;
use super::sim::SimKernel;
use super::uio::UioEvents;
use crate::abi::sam_status;
use crate::scsi::ranges::Acquire;
use crate::scsi::ranges::BlockRange;
use crate::scsi::ranges::Mailbox;
use crate::scsi::ranges::RangeMode;
use crate::scsi::CompareAndWriteBy;
use crate::scsi::Disk;
use crate::scsi::DiskConfig;
use crate::store::ram::RamStore;
use crate::store::Store;
use crate::store::StoreToken;
use crate::tcmu::abi::Iovec;
use scst_accel_dma::SgvPool;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

const BS: usize = 512;
/// Data area bytes one command may use (a COMPARE AND WRITE of 2 blocks is 4 blocks).
const SLOT: usize = 8 * BS;

fn caw_disk(store: &dyn Store) -> Arc<Disk> {
    let mut config = DiskConfig::for_store(&store.info());
    config.compare_and_write = CompareAndWriteBy::Handler;
    Arc::new(Disk::new(config))
}

fn sim_kernel() -> SimKernel {
    SimKernel::new(SimConfig {
        cmdr_size: 16384,
        data_size: 16 * SLOT,
        // A current kernel's: out-of-order completion and `read_len`.
        flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN | crate::tcmu::abi::mailbox_flags::CAP_OOOC,
    })
}

fn executor(disk: &Arc<Disk>, store: &dyn Store) -> Executor {
    executor_with(disk, store, Arc::new(SgvPool::new(None, None, 1 << 24)))
}

fn executor_with(disk: &Arc<Disk>, store: &dyn Store, pool: Arc<SgvPool>) -> Executor {
    let queue = store.open_queue().expect("queue");
    Executor::new(Arc::clone(disk), queue, pool)
}

fn caw_cdb(lba: u64, blocks: u8, byte1: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[1] = byte1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// INFORMATION of fixed-format sense with VALID set.
fn information(sense: &[u8]) -> Option<u32> {
    (sense.len() >= 18 && sense[0] == 0xF0)
        .then(|| u32::from_be_bytes([sense[3], sense[4], sense[5], sense[6]]))
}

fn is_miscompare(c: &SimCompletion) -> bool {
    c.status == sam_status::CHECK_CONDITION
        && c.sense.len() >= 14
        && (c.sense[2], c.sense[12], c.sense[13]) == (0x0E, 0x1D, 0x00)
}

/// Post `cdb` at data slot `slot` (with `out` written there first), `len` bytes of data.
fn post(sim: &mut SimKernel, id: u16, cdb: &[u8], slot: usize, len: usize, out: Option<&[u8]>) {
    let off = sim.data_off() + slot * SLOT;
    if let Some(out) = out {
        sim.write_data(off, out);
    }
    let iov = [Iovec {
        iov_base: off as u64,
        iov_len: len as u64,
    }];
    let iov: &[Iovec] = if len > 0 { &iov } else { &[] };
    sim.post_cmd(id, cdb, iov, &[]).expect("post");
}

/// One ring served on the test's own thread.
struct Lane {
    sim: SimKernel,
    ring: Ring,
    exec: Executor,
}

impl Lane {
    fn new(disk: &Arc<Disk>, store: &RamStore) -> Self {
        let sim = sim_kernel();
        let ring = Ring::attach(sim.region().clone()).expect("attach");
        Self {
            sim,
            ring,
            exec: executor(disk, store),
        }
    }

    /// Post, serve in one poll, reap the one completion (and the data slot's bytes).
    fn run(&mut self, id: u16, cdb: &[u8], len: usize, out: Option<&[u8]>) -> (SimCompletion, Vec<u8>) {
        post(&mut self.sim, id, cdb, 0, len, out);
        self.exec
            .poll(&mut StoreToken::root(), &mut self.ring)
            .expect("poll");
        let mut done = self.sim.reap().expect("reap");
        assert_eq!(done.len(), 1, "one completion");
        let data = self.sim.read_data(self.sim.data_off(), len);
        (done.remove(0), data)
    }

    fn read(&mut self, lba: u64, blocks: u32) -> Vec<u8> {
        let (c, data) = self.run(9, &rw16(0x88, lba, blocks), blocks as usize * BS, None);
        assert_eq!(c.status, sam_status::GOOD, "{:02x?}", c.sense);
        data
    }

    fn write(&mut self, lba: u64, data: &[u8]) {
        let (c, _) = self.run(
            8,
            &rw16(0x8A, lba, (data.len() / BS) as u32),
            data.len(),
            Some(data),
        );
        assert_eq!(c.status, sam_status::GOOD, "{:02x?}", c.sense);
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_match_writes_the_second_half_and_a_mismatch_reports_the_first_differing_byte() {
    let store = RamStore::new(BS as u32, 1024, 64);
    let disk = caw_disk(&store);
    let mut lane = Lane::new(&disk, &store);
    let old = pattern(1, 2 * BS);
    let new = pattern(2, 2 * BS);
    lane.write(40, &old);
    // Match: the medium now holds the write instance.
    let (c, _) = lane.run(
        1,
        &caw_cdb(40, 2, 0x08),
        4 * BS,
        Some(&[old.clone(), new.clone()].concat()),
    );
    assert_eq!(c.status, sam_status::GOOD, "{:02x?}", c.sense);
    assert_eq!(lane.read(40, 2), new);
    assert_eq!(lane.read(42, 1), vec![0; BS], "the next block untouched");
    // Mismatch in the first block, then in the last byte of the last block: MISCOMPARE with
    // the offset in the Data-Out, and nothing written.
    for at in [0usize, 300, BS, 2 * BS - 1] {
        let mut verify = new.clone();
        verify[at] ^= 0x5A;
        let (c, _) = lane.run(
            2,
            &caw_cdb(40, 2, 0),
            4 * BS,
            Some(&[verify, pattern(9, 2 * BS)].concat()),
        );
        assert!(is_miscompare(&c), "byte {at}: {:02x?}", c.sense);
        assert_eq!(information(&c.sense), Some(at as u32), "byte {at}");
        assert_eq!(lane.read(40, 2), new, "a miscompare writes nothing");
    }
    // Data-Out of another length than 2 x N blocks: INVALID FIELD IN CDB, nothing written.
    let (c, _) = lane.run(3, &caw_cdb(40, 2, 0), 3 * BS, Some(&pattern(3, 3 * BS)));
    assert_eq!(
        (c.status, c.sense[2], c.sense[12]),
        (sam_status::CHECK_CONDITION, 0x05, 0x24)
    );
    assert_eq!(lane.read(40, 2), new);
    assert_eq!(
        disk.ranges().counts(&mut StoreToken::root()),
        (0, 0),
        "every range given back"
    );
}

/// Two COMPARE AND WRITEs of one block taken in one poll: the first holds the block, the
/// second is parked and resumed by the first's release in the same turn. It must compare
/// against the first's write, so it miscompares. (Without the range lock both compares are
/// submitted together, both match the old value, and both write.)
#[test]
fn a_second_compare_and_write_of_the_block_waits_for_the_first_and_sees_its_write() {
    let store = RamStore::new(BS as u32, 1024, 64);
    let disk = caw_disk(&store);
    let mut lane = Lane::new(&disk, &store);
    let a = vec![0xAA; BS];
    let (b, c) = (vec![0xBB; BS], vec![0xCC; BS]);
    lane.write(7, &a);
    post(
        &mut lane.sim,
        1,
        &caw_cdb(7, 1, 0),
        1,
        2 * BS,
        Some(&[a.clone(), b.clone()].concat()),
    );
    post(
        &mut lane.sim,
        2,
        &caw_cdb(7, 1, 0),
        2,
        2 * BS,
        Some(&[a.clone(), c].concat()),
    );
    let p = lane
        .exec
        .poll(&mut StoreToken::root(), &mut lane.ring)
        .expect("poll");
    assert_eq!((p.started, p.completed, lane.exec.parked()), (2, 2, 0));
    let done: HashMap<u16, SimCompletion> = lane
        .sim
        .reap()
        .expect("reap")
        .into_iter()
        .map(|c| (c.cmd_id, c))
        .collect();
    assert_eq!(done[&1].status, sam_status::GOOD);
    assert!(is_miscompare(&done[&2]), "{:02x?}", done[&2].sense);
    assert_eq!(information(&done[&2].sense), Some(0));
    assert_eq!(lane.read(7, 1), b);
    assert_eq!(disk.ranges().counts(&mut StoreToken::root()), (0, 0));
}

/// A write parked behind another worker's COMPARE AND WRITE, on a worker asleep in
/// `Executor::step`, is served when the holder releases: the grant's eventfd wakes the step
/// long before its timeout.
#[test]
fn a_grant_wakes_a_sleeping_worker_through_its_mailbox() {
    let store = RamStore::new(BS as u32, 1024, 64);
    let disk = caw_disk(&store);
    let mut lane = Lane::new(&disk, &store);
    let (ours, _kernel) = std::os::unix::net::UnixStream::pair().expect("pair");
    let events = UioEvents::new(std::os::fd::OwnedFd::from(ours));
    // "Another worker" holds block 7 exclusively.
    let other = Mailbox::new();
    let Acquire::Granted(held) = disk.ranges().acquire(
        &mut StoreToken::root(),
        BlockRange::new(7, 1),
        RangeMode::Exclusive,
        &other,
    ) else {
        panic!("the block is free")
    };
    post(&mut lane.sim, 1, &rw16(0x8A, 7, 1), 0, BS, Some(&[0x11; BS]));
    let mut token = StoreToken::root();
    let p = lane.exec.poll(&mut token, &mut lane.ring).expect("poll");
    assert_eq!(
        (p.started, p.completed, lane.exec.parked()),
        (1, 0, 1),
        "parked, not waited for"
    );
    let releaser = {
        let disk = Arc::clone(&disk);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            disk.ranges().release(&mut StoreToken::root(), held);
        })
    };
    let timeout = Duration::from_secs(20);
    let start = Instant::now();
    let mut completed = 0;
    while completed == 0 && start.elapsed() < timeout {
        completed += lane
            .exec
            .step(&mut token, &mut lane.ring, &events, timeout)
            .expect("step")
            .completed;
    }
    let took = start.elapsed();
    releaser.join().expect("releaser");
    assert_eq!(completed, 1);
    assert!(
        took < timeout / 2,
        "woken by the grant, not the timeout: {took:?}"
    );
    assert_eq!(lane.sim.reap().expect("reap")[0].status, sam_status::GOOD);
    assert_eq!(lane.read(7, 1), vec![0x11; BS]);
}

/// The teardown's drain answers a parked command BUSY and leaves the disk's wait list empty.
#[test]
fn the_drain_cancels_parked_commands() {
    let store = RamStore::new(BS as u32, 1024, 64);
    let disk = caw_disk(&store);
    let mut lane = Lane::new(&disk, &store);
    let (ours, kernel) = std::os::unix::net::UnixStream::pair().expect("pair");
    kernel.set_nonblocking(true).expect("nonblocking");
    let events = UioEvents::new(std::os::fd::OwnedFd::from(ours));
    let other = Mailbox::new();
    let mut token = StoreToken::root();
    let Acquire::Granted(held) =
        disk.ranges()
            .acquire(&mut token, BlockRange::new(3, 1), RangeMode::Shared, &other)
    else {
        panic!("free")
    };
    post(
        &mut lane.sim,
        1,
        &caw_cdb(3, 1, 0),
        0,
        2 * BS,
        Some(&[0u8; 2 * BS]),
    );
    lane.exec.poll(&mut token, &mut lane.ring).expect("poll");
    assert_eq!(lane.exec.parked(), 1);
    assert_eq!(disk.ranges().counts(&mut token), (1, 1));
    let drained = lane
        .exec
        .drain(&mut token, &mut lane.ring, &events, Duration::from_secs(5));
    assert!(drained.is_ok(), "{drained:?}");
    assert_eq!(lane.exec.parked(), 0);
    assert_eq!(disk.ranges().counts(&mut token), (1, 0), "the wait list is empty");
    let done = lane.sim.reap().expect("reap");
    assert_eq!((done.len(), done[0].status), (1, sam_status::BUSY));
    disk.ranges().release(&mut token, held);
    assert_eq!(other.take(), None, "no grant for the cancelled command");
    assert_eq!(disk.ranges().counts(&mut token), (0, 0));
}

/// The simulated kernel of one ring, shared by the sessions posting to it: completions reaped
/// by any of them are kept for their owners.
struct Kernel {
    sim: SimKernel,
    done: HashMap<u16, SimCompletion>,
}

/// Run one command for a session on a shared ring: post it in the session's data slot, then
/// wait (bounded) for its completion; returns it and the slot's Data-In.
fn session_cmd(
    kernel: &Mutex<Kernel>,
    id: u16,
    cdb: &[u8],
    len: usize,
    out: Option<&[u8]>,
) -> (SimCompletion, Vec<u8>) {
    let slot = usize::from(id);
    post(&mut kernel.lock().expect("kernel").sim, id, cdb, slot, len, out);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let mut k = kernel.lock().expect("kernel");
            let reaped = k.sim.reap().expect("reap");
            for c in reaped {
                k.done.insert(c.cmd_id, c);
            }
            if let Some(c) = k.done.remove(&id) {
                let data = k.sim.read_data(k.sim.data_off() + slot * SLOT, len);
                return (c, data);
            }
        }
        assert!(Instant::now() < deadline, "command {id} not answered within 10 s");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// A barrier whose wait gives up (panics) after 10 s, so a session or worker that failed
/// ends the test instead of leaving the others waiting for ever.
struct BoundedBarrier {
    parties: usize,
    /// (arrived in this generation, generation)
    state: Mutex<(usize, u64)>,
    cond: Condvar,
}

impl BoundedBarrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            state: Mutex::new((0, 0)),
            cond: Condvar::new(),
        }
    }

    fn wait(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.state.lock().expect("barrier");
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.parties {
            *s = (0, generation + 1);
            self.cond.notify_all();
            return;
        }
        while s.1 == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "barrier: a party did not arrive within 10 s");
            s = self.cond.wait_timeout(s, left).expect("barrier").0;
        }
    }
}

fn value_block(v: u64) -> Vec<u8> {
    v.to_le_bytes().repeat(BS / 8)
}

/// The value a block holds, `None` if it is torn (not one u64 repeated).
fn block_value(b: &[u8]) -> Option<u64> {
    let first: [u8; 8] = b[..8].try_into().ok()?;
    b.chunks_exact(8)
        .all(|w| w == first)
        .then(|| u64::from_le_bytes(first))
}

/// The ATS stress test (issue 15) over the RAM store; [`race`] says what it checks.
#[test]
fn sessions_racing_compare_and_write_on_one_block_have_one_winner_per_round_and_no_torn_block() {
    let store = RamStore::new(BS as u32, 1024, 64);
    race(&store, || Arc::new(SgvPool::new(None, None, 1 << 24)), 40);
}

/// The same race over the simulated NVMe controller through the accelerator store, whose
/// requests complete asynchronously (a range stays held across worker turns): once where the
/// controller reports the fused Compare and Write (FUSES, ACWU 16: every COMPARE AND WRITE is
/// one fused pair, the device compares, and a miscompare's offset comes from a re-read), once
/// where it does not (QEMU 7.2's controller: the Compare reads the medium into scratch memory
/// by DMA and compares on the host, then the Write, under the range lock).
#[test]
fn the_race_over_the_simulated_nvme_controller_has_one_winner_per_round() {
    for fused in [16u16, 0] {
        let sim = race_over_nvme_sim(fused, 20);
        let stats = sim.stats();
        if fused > 0 {
            // SESSIONS (6) COMPARE AND WRITEs per round, one winner: every one fused, and
            // the losers' miscompares found by the device.
            assert_eq!(stats.fused_compare_writes, 6 * 20, "fused ACWU {fused}");
            assert_eq!(stats.fused_miscompares, 5 * 20, "fused ACWU {fused}");
        } else {
            assert_eq!(stats.fused_compare_writes, 0, "no fused operation without FUSES");
        }
        assert_eq!(stats.iommu_faults, 0);
    }
}

fn race_over_nvme_sim(fused: u16, rounds: usize) -> scst_accel_boards::sim::nvme::NvmeSimHandle {
    use crate::store::accel::AccelConfig;
    use crate::store::accel::AccelStore;
    use scst_accel_boards::definition;
    use scst_accel_boards::open::open_board;
    use scst_accel_boards::open::BoardSource;
    use scst_accel_boards::sca1::device_mapper;
    use scst_accel_boards::sim::nvme::NvmeSimConfig;
    let config = NvmeSimConfig {
        block_size: BS as u32,
        num_blocks: 1024,
        compare_write_max_blocks: fused,
        ..NvmeSimConfig::default()
    };
    let opened = open_board(&definition::NVME_SIM, BoardSource::NvmeSim(config), 2).expect("nvme-sim");
    let mapper = device_mapper(Arc::clone(opened.controller.device()));
    let iovas = Arc::clone(opened.controller.iovas());
    let sim = opened.nvme_sim.expect("an nvme-sim board has its handle");
    let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
    assert_eq!(store.info().compare_and_write_blocks, u32::from(fused));
    race(
        &store,
        || {
            Arc::new(SgvPool::new(
                Some(Arc::clone(&mapper)),
                Some(Arc::clone(&iovas)),
                1 << 24,
            ))
        },
        rounds,
    );
    sim
}

/// The race: `SESSIONS` sessions, spread over two rings each served by its own worker thread
/// (two workers of one disk, each with its own store queue), race COMPARE AND WRITE on one
/// block for `rounds` rounds. In a round every session reads the block's value V, all wait for each
/// other, then each sends CAW(V → V + its id) and reads the block again while the others'
/// commands run. Exactly one wins each round (GOOD; the others MISCOMPARE at the first byte
/// where V and the winner's value differ), the block then holds V + the winner's id, and
/// every read sees a whole block of a value some winner wrote. The outcome does not depend on
/// timing: all sessions compare against the same V, so a second winner in a round can only
/// come from a compare and write that were not atomic.
fn race(store: &dyn Store, pool: impl Fn() -> Arc<SgvPool>, rounds: usize) {
    const SESSIONS: u16 = 6;
    const LBA: u64 = 100;
    let disk = caw_disk(store);
    let stop = Arc::new(AtomicBool::new(false));
    let mut kernels = Vec::new();
    let mut workers = Vec::new();
    for w in 0..2 {
        let sim = sim_kernel();
        let mut ring = Ring::attach(sim.region().clone()).expect("attach");
        kernels.push(Arc::new(Mutex::new(Kernel {
            sim,
            done: HashMap::new(),
        })));
        let mut exec = executor_with(&disk, store, pool());
        let stop = Arc::clone(&stop);
        workers.push(
            std::thread::Builder::new()
                .name(format!("ats-worker-{w}"))
                .spawn(move || {
                    let mut token = StoreToken::root();
                    let mut served = 0;
                    loop {
                        let p = exec.poll(&mut token, &mut ring).expect("poll");
                        served += p.completed;
                        let _ = ring.take_kick();
                        if stop.load(Ordering::Acquire) && exec.in_flight() == 0 && exec.parked() == 0 {
                            return served;
                        }
                        if p.started == 0 && p.completed == 0 {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                })
                .expect("spawn"),
        );
    }
    let barrier = Arc::new(BoundedBarrier::new(usize::from(SESSIONS)));
    // (round, winning session) of every GOOD compare and write.
    let winners = Arc::new(Mutex::new(Vec::<(usize, u16)>::new()));
    let started = Instant::now();
    let sessions: Vec<_> = (1..=SESSIONS)
        .map(|id| {
            let kernel = Arc::clone(&kernels[usize::from(id) % 2]);
            let (barrier, winners) = (Arc::clone(&barrier), Arc::clone(&winners));
            std::thread::spawn(move || {
                let read = |k: &Mutex<Kernel>| {
                    let (c, data) = session_cmd(k, id, &rw16(0x88, LBA, 1), BS, None);
                    assert_eq!(c.status, sam_status::GOOD, "{:02x?}", c.sense);
                    block_value(&data).unwrap_or_else(|| panic!("session {id}: torn block {data:02x?}"))
                };
                let mut history = vec![0u64];
                for round in 0..rounds {
                    barrier.wait();
                    let v = read(&kernel);
                    assert_eq!(
                        v,
                        *history.last().expect("value"),
                        "session {id} round {round}: V"
                    );
                    barrier.wait();
                    let mine = v + u64::from(id);
                    let out = [value_block(v), value_block(mine)].concat();
                    let (c, _) = session_cmd(&kernel, id, &caw_cdb(LBA, 1, 0), 2 * BS, Some(&out));
                    if c.status == sam_status::GOOD {
                        winners.lock().expect("winners").push((round, id));
                    } else {
                        assert!(is_miscompare(&c), "session {id} round {round}: {:02x?}", c.sense);
                        let offset = information(&c.sense).expect("INFORMATION") as usize;
                        assert!(
                            offset < 8,
                            "the first differing byte is in the first word: {offset}"
                        );
                    }
                    // While the others' commands may still run: a whole value, V or a winner's.
                    let seen = read(&kernel);
                    assert!(
                        seen == v || (v + 1..=v + u64::from(SESSIONS)).contains(&seen),
                        "session {id} round {round}: {seen} is no value a winner wrote"
                    );
                    barrier.wait();
                    let round_winners: Vec<u16> = winners
                        .lock()
                        .expect("winners")
                        .iter()
                        .filter(|&&(r, _)| r == round)
                        .map(|&(_, w)| w)
                        .collect();
                    assert_eq!(round_winners.len(), 1, "round {round}: winners {round_winners:?}");
                    history.push(v + u64::from(round_winners[0]));
                    assert_eq!(
                        read(&kernel),
                        *history.last().expect("value"),
                        "round {round}: the winner's value"
                    );
                }
                history
            })
        })
        .collect();
    let histories: Vec<Vec<u64>> = sessions
        .into_iter()
        .map(|s| s.join().expect("a session failed"))
        .collect();
    stop.store(true, Ordering::Release);
    let served: usize = workers
        .into_iter()
        .map(|w| w.join().expect("a worker failed"))
        .sum();
    assert!(
        histories.windows(2).all(|h| h[0] == h[1]),
        "every session saw the same history"
    );
    assert_eq!(served, usize::from(SESSIONS) * rounds * 4);
    assert_eq!(winners.lock().expect("winners").len(), rounds);
    assert_eq!(
        disk.ranges().counts(&mut StoreToken::root()),
        (0, 0),
        "nothing held or parked at the end"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
