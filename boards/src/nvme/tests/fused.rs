//! The fused Compare and Write (NVMe 1.4 §4.12) through the driver: offered by the geometry
//! only where FUSES and ONCS say so, within ACWU; the two commands in adjacent SQ entries with
//! one doorbell, completing as one request (a match writes, a mismatch is `Miscompare` and
//! writes nothing); one request in flight, expired, aborted and abandoned, not two.

use super::buffer;
use super::config;
use super::fault;
use super::ok;
use super::pattern;
use super::req;
use super::run;
use super::verified_io;
use super::Rig;
use crate::engine::DeviceOp;
use crate::engine::DeviceStatus;
use crate::engine::QueueEngine;
use crate::engine::SubmitError;
use crate::sim::nvme::NvmeSimConfig;
use std::time::Duration;
use std::time::Instant;

const BS: u32 = 512;

/// Write `data` at `lba` through queue 0.
fn write(rig: &mut Rig, lba: u64, data: &[u8], tag: u64) {
    let buf = buffer(&rig.ctrl, data.len());
    buf.region().write_at(0, data);
    let len = data.len() as u32;
    let r = run(
        &mut rig.queues[0],
        &[req(tag, DeviceOp::Write, lba, len, &[(buf.iova(), len)])],
    );
    assert_eq!(r, vec![ok(tag)]);
}

/// Read `len` bytes at `lba` through queue 0.
fn read(rig: &mut Rig, lba: u64, len: u32, tag: u64) -> Vec<u8> {
    let buf = buffer(&rig.ctrl, len as usize);
    let r = run(
        &mut rig.queues[0],
        &[req(tag, DeviceOp::Read, lba, len, &[(buf.iova(), len)])],
    );
    assert_eq!(r, vec![ok(tag)]);
    let mut out = vec![0u8; len as usize];
    buf.region().read_at(0, &mut out);
    out
}

#[test]
fn a_fused_compare_and_write_writes_on_a_match_and_nothing_on_a_mismatch() {
    let mut rig = Rig::up("drv-fused", NvmeSimConfig::default(), &config());
    assert!(rig.ctrl.info().controller.supports_fused_compare_write());
    assert_eq!(rig.ctrl.geometry().max_compare_write_blocks, 16, "ACWU + 1");
    // 24 requests of 1..=3 blocks at distinct LBAs in one batch: 48 SQ entries through a
    // 16-entry queue, so pairs wrap the ring and reuse slots.
    let mut old = Vec::new();
    for i in 0..24u64 {
        let blocks = (i % 3 + 1) as usize;
        let data = pattern(blocks * BS as usize, i as u8);
        write(&mut rig, 100 * i, &data, 1000 + i);
        old.push(data);
    }
    let both = buffer(&rig.ctrl, 24 * 2 * 3 * BS as usize);
    let mut expected_after = Vec::new();
    for (i, data) in old.iter().enumerate() {
        let at = i * 2 * 3 * BS as usize;
        let mut compare = data.clone();
        if i % 4 == 3 {
            compare[data.len() / 2] ^= 0x80; // a mismatch in every fourth
        }
        let new = pattern(data.len(), 100 + i as u8);
        both.region().write_at(at, &compare);
        both.region().write_at(at + data.len(), &new);
        expected_after.push(if i % 4 == 3 { data.clone() } else { new });
    }
    let lens: Vec<u32> = old.iter().map(|d| d.len() as u32).collect();
    let segs: Vec<[(u64, u32); 1]> = (0..24)
        .map(|i| [(both.iova() + (i * 2 * 3 * BS as usize) as u64, 2 * lens[i])])
        .collect();
    let reqs: Vec<_> = (0..24)
        .map(|i| {
            req(
                i as u64,
                DeviceOp::CompareAndWrite,
                100 * i as u64,
                lens[i],
                &segs[i],
            )
        })
        .collect();
    let q = &mut rig.queues[1];
    let submitted = q.stats().submitted;
    let mut done = Vec::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < reqs.len() && Instant::now() < deadline {
        while next < reqs.len() {
            match q.submit(&reqs[next]) {
                Ok(()) => next += 1,
                Err(SubmitError::Full) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
        q.ring_doorbell();
        q.reap(&mut done);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(done.len(), 24, "{}", q.dump());
    assert_eq!(q.stats().submitted - submitted, 48, "two commands per request");
    assert_eq!(q.in_flight(), 0);
    done.sort_by_key(|c| c.user_tag);
    for c in &done {
        let want = if c.user_tag % 4 == 3 {
            DeviceStatus::Miscompare
        } else {
            DeviceStatus::Ok
        };
        assert_eq!(c.status, want, "request {}", c.user_tag);
    }
    for (i, want) in expected_after.iter().enumerate() {
        let got = read(&mut rig, 100 * i as u64, want.len() as u32, 2000 + i as u64);
        assert!(&got == want, "blocks at {} after request {i}", 100 * i);
    }
    drop(both);
    rig.finish();
}

#[test]
fn requests_the_fused_operation_cannot_carry_are_refused_before_the_device() {
    let mut rig = Rig::up("drv-fused-limits", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 64 * 1024);
    let base = buf.iova();
    let q = &mut rig.queues[0];
    let mut caw = |len: u32, segs: &[(u64, u32)]| {
        let r = req(1, DeviceOp::CompareAndWrite, 0, len, segs);
        QueueEngine::submit(q, &r)
    };
    assert!(matches!(
        caw(17 * BS, &[(base, 34 * BS)]),
        Err(SubmitError::Unaligned(_))
    ));
    assert!(matches!(
        caw(2 * BS, &[(base, 2 * BS)]),
        Err(SubmitError::Unaligned(_))
    ));
    assert!(matches!(caw(0, &[]), Err(SubmitError::Unaligned(_))));
    assert_eq!(q.in_flight(), 0, "nothing queued");
    drop(buf);
    rig.finish();

    // A controller without FUSES (QEMU 7.2's): not offered, and refused if asked.
    let cfg = NvmeSimConfig {
        compare_write_max_blocks: 0,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-no-fused", cfg, &config());
    assert_eq!(rig.ctrl.geometry().max_compare_write_blocks, 0);
    let buf = buffer(&rig.ctrl, 4096);
    let segs = [(buf.iova(), 2 * BS)];
    let r = req(1, DeviceOp::CompareAndWrite, 0, BS, &segs);
    assert!(matches!(
        QueueEngine::submit(&mut rig.queues[0], &r),
        Err(SubmitError::Unsupported(_))
    ));
    drop(buf);
    rig.finish();
}

/// A pair the device never completes is one request: once in `in_flight` and `expired`, both
/// commands sent an ABORT (the simulator refuses every ABORT), one tag from `abandon_all`.
#[test]
fn a_fused_pair_is_one_request_in_flight_expired_aborted_and_abandoned() {
    let mut rig = Rig::up("drv-fused-abort", NvmeSimConfig::default(), &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let q = &mut rig.queues[0];
    let segs = [(buf.iova(), 2 * BS)];
    let r = req(7, DeviceOp::CompareAndWrite, 10, BS, &segs);
    QueueEngine::submit(q, &r).expect("submit");
    q.ring_doorbell();
    assert_eq!(q.in_flight(), 1);
    let later = Instant::now() + Duration::from_secs(3600);
    assert_eq!(q.expired(later), vec![7]);
    assert_eq!(QueueEngine::abort(q, &[7]).expect("abort"), 0);
    assert_eq!(q.stats().aborts_sent, 2, "one ABORT per command of the pair");
    QueueEngine::stop(q).expect("stop");
    assert_eq!(q.abandon_all(), vec![7]);
    assert_eq!(q.in_flight(), 0);
    rig.sim.clear_faults();
    QueueEngine::restart(q).expect("restart");
    verified_io(q, 0, 1);
    drop(buf);
    rig.finish();
}

/// The device's atomicity, with no lock of the host's in the way: two queues (two worker
/// threads of the simulator) each add 1 to a counter block 200 times by COMPARE AND WRITE
/// (read V, fused compare V / write V + 1, again on a miscompare). Had a compare and a write
/// of one queue ever let the other queue's pair in between, both would have written V + 1 and
/// an increment would be lost: the counter ends at exactly 400.
#[test]
fn fused_increments_from_two_queues_lose_no_update() {
    const PER_QUEUE: u64 = 200;
    const LBA: u64 = 77;
    let mut rig = Rig::up("drv-fused-race", NvmeSimConfig::default(), &config());
    write(&mut rig, LBA, &[0u8; BS as usize], 1);
    let ctrl = std::sync::Arc::clone(&rig.ctrl);
    let (left, right) = rig.queues.split_at_mut(1);
    let misses: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = [&mut left[0], &mut right[0]]
            .into_iter()
            .map(|q| {
                let ctrl = std::sync::Arc::clone(&ctrl);
                s.spawn(move || {
                    let buf = buffer(&ctrl, 4096);
                    let mut misses = 0u64;
                    let mut tag = 10u64;
                    for _ in 0..PER_QUEUE {
                        loop {
                            tag += 1;
                            let r = run(q, &[req(tag, DeviceOp::Read, LBA, BS, &[(buf.iova(), BS)])]);
                            assert_eq!(r, vec![ok(tag)]);
                            let mut v = [0u8; 8];
                            buf.region().read_at(0, &mut v);
                            let next = u64::from_le_bytes(v) + 1;
                            buf.region().write_at(BS as usize, &next.to_le_bytes());
                            tag += 1;
                            let segs = [(buf.iova(), 2 * BS)];
                            let c = run(q, &[req(tag, DeviceOp::CompareAndWrite, LBA, BS, &segs)]);
                            match c[0].status {
                                DeviceStatus::Ok => break,
                                DeviceStatus::Miscompare => misses += 1,
                                other => panic!("compare and write: {other:?}"),
                            }
                        }
                    }
                    misses
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).collect()
    });
    drop(ctrl);
    let got = read(&mut rig, LBA, BS, 5);
    let counter = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
    assert_eq!(counter, 2 * PER_QUEUE, "misses {misses:?}");
    assert_eq!(rig.sim.stats().fused_miscompares, misses.iter().sum::<u64>());
    rig.finish();
}
