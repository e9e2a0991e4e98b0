//! Bring-up and the I/O path: data through PRP lists, the optional commands, requests refused
//! before the device sees them, completion validation, interrupts, the admin queue under
//! several threads, the split-MMIO workaround.

use super::buffer;
use super::config;
use super::fault;
use super::interposer::Interposer;
use super::interposer::InterposerConfig;
use super::ok;
use super::pattern;
use super::reap_n;
use super::req;
use super::run;
use super::sim;
use super::verified_io;
use super::wait_until;
use super::Rig;
use crate::engine::Controller;
use crate::engine::DeviceOp;
use crate::engine::DeviceRequest;
use crate::engine::DeviceStatus;
use crate::engine::QueueEngine;
use crate::engine::SubmitError;
use crate::nvme::cmd::admin_opcode;
use crate::nvme::cmd::feature;
use crate::nvme::cmd::Cqe;
use crate::nvme::cmd::Sqe;
use crate::nvme::NvmeConfig;
use crate::nvme::NvmeQueue;
use crate::nvme::ADMIN_ENTRIES;
use crate::sim::nvme::NvmeSimConfig;
use scst_accel_hal::DeviceBacking;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// Get Features (admin opcode 0Ah): the driver has no use for it; the test needs an admin
/// command that any number of threads may repeat with the same answer. (Set Features Number of
/// Queues, which the driver does send, is refused once I/O queues exist: NVMe 1.4 §5.21.1.7.)
const GET_FEATURES: u8 = 0x0A;
/// ASQ (NVMe 1.4 §3.1.9).
const ASQ: u64 = 0x28;

#[test]
fn bring_up_identifies_and_moves_data_through_prp_lists() {
    // Arrange
    let mut rig = Rig::up("drv-bring-up", NvmeSimConfig::default(), &config());
    let g = rig.ctrl.geometry();
    assert_eq!((g.block_size, g.capacity_blocks), (512, (64 << 20) / 512));
    assert_eq!(g.max_transfer_bytes, 128 * 1024, "MDTS 5 = 32 pages");
    assert!(g.supports_deallocate && g.volatile_cache);
    assert_eq!(
        rig.ctrl.info().controller.mn,
        "scst-accel simulated NVMe controller"
    );
    assert_eq!(rig.ctrl.info().nsid, 1);
    assert_eq!(rig.queues.len(), 2);
    assert_eq!(rig.queues[0].depth(), 16);
    let buf = buffer(&rig.ctrl, 256 * 1024);
    let data = pattern(3584 + 57344 + 4096, 7);
    buf.region().write_at(512, &data);
    let base = buf.iova();
    // 127 blocks starting mid-page, then whole pages: a PRP list of 15 entries.
    let segs = [(base + 512, 3584), (base + 4096, 57344), (base + 61440, 4096)];
    assert_eq!(segs.iter().map(|s| s.1).sum::<u32>() as usize, data.len());
    let commands = rig.sim.stats().commands;

    // Act: write on queue 1, read back into another place on queue 2.
    let w = run(
        &mut rig.queues[0],
        &[req(1, DeviceOp::Write, 100, data.len() as u32, &segs)],
    );
    let rsegs = [(base + 128 * 1024, data.len() as u32)];
    let r = run(
        &mut rig.queues[1],
        &[req(2, DeviceOp::Read, 100, data.len() as u32, &rsegs)],
    );

    // Assert
    assert_eq!(w, vec![ok(1)]);
    assert_eq!(r, vec![ok(2)]);
    let mut back = vec![0u8; data.len()];
    buf.region().read_at(128 * 1024, &mut back);
    assert!(back == data, "data read back differs");
    assert_eq!(rig.sim.stats().commands, commands + 2, "one command each");

    // Write zeroes, flush, deallocate, out of range.
    let last = g.capacity_blocks - 1;
    let c = run(
        &mut rig.queues[0],
        &[
            req(3, DeviceOp::WriteZeroes { deallocate: false }, 100, 4096, &[]),
            req(4, DeviceOp::Flush, 0, 0, &[]),
            req(5, DeviceOp::Deallocate, 108, 4096, &[]),
            req(6, DeviceOp::Read, last, 1024, &[(base, 1024)]),
        ],
    );
    let statuses: Vec<_> = c.iter().map(|c| (c.user_tag, c.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (3, DeviceStatus::Ok),
            (4, DeviceStatus::Ok),
            (5, DeviceStatus::Ok),
            (6, DeviceStatus::LbaRange)
        ]
    );
    let r = run(
        &mut rig.queues[1],
        &[req(
            7,
            DeviceOp::Read,
            100,
            17 * 512,
            &[(base + 128 * 1024, 17 * 512)],
        )],
    );
    assert_eq!(r, vec![ok(7)]);
    let mut back = vec![0xAAu8; 17 * 512];
    buf.region().read_at(128 * 1024, &mut back);
    assert!(
        back[..16 * 512].iter().all(|&b| b == 0),
        "zeroed and deallocated blocks read zeroes"
    );
    assert_eq!(
        &back[16 * 512..],
        &data[16 * 512..17 * 512],
        "the next block is untouched"
    );

    drop(buf);
    rig.finish();
}

#[test]
fn invalid_requests_are_refused_before_the_device_sees_them() {
    let mut rig = Rig::up("drv-refused", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 64 * 1024);
    let b = buf.iova();
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    let err = |q: &mut NvmeQueue, r: DeviceRequest<'_>| q.submit(&r).expect_err("refused");
    assert!(matches!(
        err(q, req(1, DeviceOp::Read, 0, 500, &[(b, 500)])),
        SubmitError::Unaligned(_)
    ));
    assert!(matches!(
        err(q, req(1, DeviceOp::Read, 0, 1024, &[(b, 512)])),
        SubmitError::Unaligned(_)
    ));
    assert!(matches!(
        err(
            q,
            req(1, DeviceOp::Read, 0, 8192, &[(b, 4096), (b + 8192 + 512, 4096)])
        ),
        SubmitError::Unaligned(_)
    ));
    assert!(
        matches!(
            err(q, req(1, DeviceOp::Read, 0, 256 * 1024, &[(b, 256 * 1024)])),
            SubmitError::Unaligned(_)
        ),
        "beyond MDTS"
    );
    assert!(matches!(
        err(q, req(1, DeviceOp::Write, 0, 0, &[])),
        SubmitError::Unaligned(_)
    ));
    assert_eq!(q.in_flight(), 0);
    assert_eq!(rig.sim.stats().commands, commands, "nothing reached the device");
    // Depth 16: 15 usable slots.
    for tag in 0..15 {
        q.submit(&req(tag, DeviceOp::Flush, 0, 0, &[])).expect("fits");
    }
    assert_eq!(err(q, req(99, DeviceOp::Flush, 0, 0, &[])), SubmitError::Full);
    assert_eq!(q.in_flight(), 15);
    q.ring_doorbell();
    let mut tags: Vec<u64> = reap_n(q, 15).iter().map(|c| c.user_tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..15).collect::<Vec<_>>());
    assert_eq!(rig.sim.stats().commands, commands + 15);
    QueueEngine::stop(q).expect("stop");
    assert_eq!(
        err(q, req(1, DeviceOp::Flush, 0, 0, &[])),
        SubmitError::NotRunning
    );
    QueueEngine::restart(q).expect("restart");
    drop(buf);
    rig.finish();
}

/// The IOVA the driver gave the ring of queue `qid` in its CREATE I/O CQ or SQ command
/// (`opcode`), found in the admin SQ as the controller read it.
fn ring_iova(rig: &Rig, opcode: u8, qid: u16) -> u64 {
    let asq = rig.ctrl.device().bar0().read64(ASQ);
    let iommu = rig.sim.iommu();
    (0..u64::from(ADMIN_ENTRIES))
        .find_map(|i| {
            let mut raw = [0u8; 64];
            iommu.dma_read(asq + 64 * i, &mut raw).ok()?;
            let sqe = Sqe::read_from_bytes(&raw).ok()?;
            (sqe.opcode == opcode && sqe.cdw10 & 0xFFFF == u32::from(qid)).then_some(sqe.prp1)
        })
        .expect("the queue's create command is in the admin SQ")
}

/// Post `cqe` with phase tag 1 into entry `index` of the CQ at `cq`, as a misbehaving
/// controller would (the simulator never posts a completion twice).
fn post_forged(rig: &Rig, cq: u64, index: u64, mut cqe: Cqe) {
    cqe.status |= 1;
    rig.sim
        .iommu()
        .dma_write(cq + 16 * index, cqe.as_bytes())
        .expect("the CQ is mapped");
}

fn read_cqe(rig: &Rig, cq: u64, index: u64) -> Cqe {
    let mut raw = [0u8; 16];
    rig.sim
        .iommu()
        .dma_read(cq + 16 * index, &mut raw)
        .expect("the CQ is mapped");
    Cqe::read_from_bytes(&raw).expect("16 bytes")
}

/// The one misbehaviour the simulator cannot produce, a completion posted twice or with a
/// stale command identifier, is forged here by writing entries into the queue's CQ through
/// the simulated IOMMU. That puts the CQ out of step with the controller, so each step ends
/// with a stop and restart, as the store's escalation would.
#[test]
fn duplicate_and_stale_completions_are_counted_and_ignored() {
    let mut rig = Rig::up("drv-duplicates", NvmeSimConfig::default(), &config());
    let cq = ring_iova(&rig, admin_opcode::CREATE_CQ, 1);
    let sq = ring_iova(&rig, admin_opcode::CREATE_SQ, 1);

    // A fresh CQ: the two completions are its entries 0 and 1; post each again as 2 and 3.
    let out = run(
        &mut rig.queues[0],
        &[
            req(1, DeviceOp::Flush, 0, 0, &[]),
            req(2, DeviceOp::Flush, 0, 0, &[]),
        ],
    );
    assert_eq!(out, vec![ok(1), ok(2)]);
    for i in 0..2 {
        post_forged(&rig, cq, 2 + i, read_cqe(&rig, cq, i));
    }
    let q = &mut rig.queues[0];
    let mut more = Vec::new();
    assert_eq!(q.reap(&mut more), 0);
    assert!(more.is_empty());
    assert_eq!(q.unknown_tags(), 2, "{}", q.dump());
    assert_eq!(q.in_flight(), 0);
    QueueEngine::stop(q).expect("stop");
    QueueEngine::restart(q).expect("restart");

    // A command the device holds (executed, never completed); a completion naming its slot
    // with another generation must not complete it.
    rig.sim.inject(fault("never-complete"));
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(3, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.ring_doorbell();
    assert!(wait_until(|| rig.sim.stats().commands == commands + 1));
    let mut raw = [0u8; 64];
    rig.sim.iommu().dma_read(sq, &mut raw).expect("the SQ is mapped");
    let held = Sqe::read_from_bytes(&raw).expect("64 bytes");
    let slot_bits = q.depth().trailing_zeros();
    let stale = Cqe {
        sq_id: 1,
        cid: held.cid ^ (1 << slot_bits),
        ..Cqe::default()
    };
    post_forged(&rig, cq, 0, stale);
    let q = &mut rig.queues[0];
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0);
    assert_eq!(q.unknown_tags(), 3);
    assert_eq!(q.in_flight(), 1, "the held command is still in flight");
    // Its own completion with another SQID is not trusted either.
    post_forged(
        &rig,
        cq,
        1,
        Cqe {
            sq_id: 2,
            cid: held.cid,
            ..Cqe::default()
        },
    );
    let q = &mut rig.queues[0];
    assert_eq!(q.reap(&mut out), 0);
    assert_eq!(q.unknown_tags(), 4);
    QueueEngine::stop(q).expect("stop");
    assert_eq!(q.abandon_all(), vec![3]);
    rig.sim.clear_faults();
    QueueEngine::restart(q).expect("restart");
    assert_eq!(run(q, &[req(4, DeviceOp::Flush, 0, 0, &[])]), vec![ok(4)]);
    assert_eq!(q.unknown_tags(), 4);
    rig.finish();
}

/// A reap takes at most depth - 1 entries (what an honest controller can post before the host
/// writes the CQ head doorbell at the end of the reap): a controller that ignores the CQ head
/// doorbell and keeps writing valid-phase entries cannot hold the queue's owner in one reap.
/// Here it fills all 16 entries (none left empty) with completions for commands never given:
/// the first reap takes 15, the entry left stays posted for the owner's `prepare_to_wait`, and
/// the next reap takes it.
#[test]
fn a_reap_takes_at_most_one_queue_less_one_entry() {
    let mut rig = Rig::up("drv-reap-budget", NvmeSimConfig::default(), &config());
    let cq = ring_iova(&rig, admin_opcode::CREATE_CQ, 1);
    let q = &mut rig.queues[0];
    assert_eq!(q.depth(), 16);
    for index in 0..16 {
        let stray = Cqe {
            sq_id: 1,
            cid: 0x0fff,
            ..Cqe::default()
        };
        post_forged(&rig, cq, index, stray);
    }
    let q = &mut rig.queues[0];
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0);
    assert_eq!(q.unknown_tags(), 15, "one queue less one entry per reap");
    assert!(
        q.prepare_to_wait(),
        "the entry left is reported posted: the owner reaps rather than sleeps"
    );
    assert_eq!(q.reap(&mut out), 0);
    assert_eq!(q.unknown_tags(), 16, "the rest on the next reap");
    assert!(out.is_empty());
    // The CQ is out of step with the controller: stop and restart, as the store would.
    QueueEngine::stop(q).expect("stop");
    QueueEngine::restart(q).expect("restart");
    assert_eq!(run(q, &[req(1, DeviceOp::Flush, 0, 0, &[])]), vec![ok(1)]);
    rig.finish();
}

#[test]
fn a_controller_granting_fewer_queues_gets_fewer() {
    let sim_config = NvmeSimConfig {
        queues: 1,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-one-queue", sim_config, &config());
    assert_eq!(rig.queues.len(), 1, "the controller granted one I/O queue");
    verified_io(&mut rig.queues[0], 0, 1);
    rig.finish();
}

#[test]
fn a_media_error_reaches_the_store_as_a_read_error() {
    let mut rig = Rig::up("drv-media-error", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 4096);
    rig.sim.inject(fault("error"));
    let q = &mut rig.queues[0];
    let out = run(
        q,
        &[
            req(1, DeviceOp::Read, 0, 512, &[(buf.iova(), 512)]),
            req(2, DeviceOp::Write, 0, 512, &[(buf.iova(), 512)]),
        ],
    );
    let statuses: Vec<_> = out.iter().map(|c| (c.user_tag, c.status)).collect();
    assert_eq!(
        statuses,
        vec![(1, DeviceStatus::ReadError), (2, DeviceStatus::Ok)]
    );
    rig.sim.clear_faults();
    drop(buf);
    verified_io(&mut rig.queues[0], 0, 2);
    rig.finish();
}

#[test]
fn split_64bit_mmio_uses_only_32_bit_accesses() {
    let split = NvmeConfig {
        split_64bit_mmio: true,
        ..config()
    };
    for (config, split) in [(split, true), (config(), false)] {
        let (device, handle) = sim("drv-split", NvmeSimConfig::default());
        let (device, knobs) = Interposer::new(device, InterposerConfig::default());
        let device: Arc<dyn DeviceBacking> = device;
        let mut rig = Rig::up_on(device, handle, &config);
        verified_io(&mut rig.queues[0], 0, 3);
        assert!(rig.ctrl.dump_registers().contains("MQES 1024"));
        let access64 = knobs.access64.load(Ordering::Relaxed);
        if split {
            assert_eq!(access64, 0, "split: 32-bit accesses only");
        } else {
            assert!(access64 > 0, "CAP, ASQ and ACQ are 64-bit accesses");
        }
        rig.finish();
    }
}

#[test]
fn interrupts_signal_the_queue_eventfd() {
    let irq = NvmeConfig {
        interrupts: true,
        ..config()
    };
    let mut rig = Rig::up("drv-msix", NvmeSimConfig::default(), &irq);
    for q in &mut rig.queues {
        assert!(q.notify_fd().is_some());
        q.submit(&req(1, DeviceOp::Flush, 0, 0, &[])).expect("submit");
        q.ring_doorbell();
        let fd = q.notify_fd().expect("fd");
        let ready = scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_secs(5)).expect("poll");
        assert_eq!(ready, vec![true], "vector {} fired", q.qid());
        assert_eq!(reap_n(q, 1), vec![ok(1)]);
    }
    assert!(rig.sim.stats().interrupts >= 2);
    rig.finish();
}

/// The NVMe queue's interrupt eventfd is read only when a sleep is prepared with nothing
/// posted (`irq_gate.rs`): a reap that finds the completion reads nothing; the wait's
/// preparation reads the signal, and then the fd is quiet.
#[test]
fn the_interrupt_eventfd_is_read_only_to_prepare_a_wait() {
    let irq = NvmeConfig {
        interrupts: true,
        ..config()
    };
    let mut rig = Rig::up("drv-irq-gate", NvmeSimConfig::default(), &irq);
    let q = &mut rig.queues[0];
    let reads = q.stats().irq_reads;
    q.submit(&req(1, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.ring_doorbell();
    let fd = q.notify_fd().expect("fd");
    let ready = scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_secs(5)).expect("poll");
    assert_eq!(ready, vec![true], "the completion raised the vector");
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 1);
    assert_eq!(
        q.stats().irq_reads,
        reads,
        "a posted entry is popped without a read"
    );
    assert!(!q.prepare_to_wait(), "nothing posted");
    assert_eq!(q.stats().irq_reads, reads + 1, "the preparation read the signal");
    let fd = q.notify_fd().expect("fd");
    let ready = scst_accel_hal::fdio::poll_readable(&[fd], Duration::ZERO).expect("poll");
    assert_eq!(ready, vec![false], "no stale signal left to wake the sleep");
    rig.finish();
}

#[test]
fn the_admin_queue_serves_several_threads() {
    let rig = Rig::up("drv-admin-threads", NvmeSimConfig::default(), &config());
    let ctrl = &rig.ctrl;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..50 {
                        let sqe = Sqe {
                            opcode: GET_FEATURES,
                            cdw10: feature::NUMBER_OF_QUEUES,
                            ..Default::default()
                        };
                        let cqe = ctrl.admin("GET FEATURES", sqe).expect("admin");
                        assert_eq!(cqe.dw0, 0x0001_0001, "two queue pairs granted");
                    }
                })
            })
            .collect();
        // Explicit joins (issue 16): an implicit scope join does not wait for thread-locals.
        for t in threads {
            t.join().expect("admin thread");
        }
    });
    assert_eq!(rig.ctrl.admin_unknown_completions(), 0);
    assert!(!Controller::is_gone(rig.ctrl.as_ref()));
    rig.finish();
}

/// NVMe Copy (NVMe 2.0 NVM Command Set §3.3.1): offered by the geometry only when ONCS bit 8
/// and OCFS format 0 say so, limited by MSSRL/MCL; one source range moves the blocks with no
/// host data; out of range is LBA Out of Range; over the limit is refused before the device.
#[test]
fn copy_moves_blocks_inside_the_namespace_when_oncs_reports_it() {
    let cfg = NvmeSimConfig {
        copy_max_blocks: 64,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-copy", cfg, &config());
    let g = rig.ctrl.geometry();
    assert_eq!(g.max_copy_blocks, 64, "MSSRL = MCL = 64");
    assert!(rig.ctrl.info().controller.supports_copy());
    let buf = buffer(&rig.ctrl, 64 * 1024);
    let data = pattern(64 * 512, 11);
    buf.region().write_at(0, &data);
    let base = buf.iova();
    assert_eq!(
        run(
            &mut rig.queues[0],
            &[req(
                1,
                DeviceOp::Write,
                200,
                data.len() as u32,
                &[(base, data.len() as u32)]
            )]
        ),
        vec![ok(1)]
    );
    let copy = |tag, src_lba, dst, len| req(tag, DeviceOp::Copy { src_lba }, dst, len, &[]);
    let last = g.capacity_blocks - 1;
    let c = run(
        &mut rig.queues[1],
        &[copy(2, 200, 5000, 64 * 512), copy(3, last, 10, 2 * 512)],
    );
    let statuses: Vec<_> = c.iter().map(|c| (c.user_tag, c.status)).collect();
    assert_eq!(statuses, vec![(2, DeviceStatus::Ok), (3, DeviceStatus::LbaRange)]);
    let r = run(
        &mut rig.queues[0],
        &[req(
            4,
            DeviceOp::Read,
            5000,
            data.len() as u32,
            &[(base + 32 * 1024, data.len() as u32)],
        )],
    );
    assert_eq!(r, vec![ok(4)]);
    let mut back = vec![0u8; data.len()];
    buf.region().read_at(32 * 1024, &mut back);
    assert!(back == data, "copied blocks differ");
    let q = &mut rig.queues[0];
    assert!(matches!(
        q.submit(&copy(5, 0, 1000, 65 * 512)),
        Err(SubmitError::Unaligned(_))
    ));
    drop(buf);
    rig.finish();

    // Without Copy in ONCS: no device copy offered, and a Copy is completed as unsupported.
    let cfg = NvmeSimConfig {
        copy_max_blocks: 0,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-no-copy", cfg, &config());
    assert_eq!(rig.ctrl.geometry().max_copy_blocks, 0);
    let c = run(&mut rig.queues[0], &[copy(1, 0, 100, 512)]);
    assert!(matches!(c[0].status, DeviceStatus::Other(_)), "{c:?}");
    rig.finish();
}

/// A namespace formatted with LBA format 17 (of 18): FLBAS bits 6:5 carry the index's high
/// bits (NVMe 2.0 Base Specification Figure 276). Read as format 1, the block size would be
/// the other one, silently.
#[test]
fn an_lba_format_above_15_gives_its_own_block_size() {
    let sim_config = NvmeSimConfig {
        block_size: 4096,
        num_blocks: 4096,
        lba_format_index: 17,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-lbaf-17", sim_config, &config());
    assert_eq!(rig.ctrl.info().namespace.format_index(), 17);
    assert_eq!(rig.ctrl.geometry().block_size, 4096);
    verified_io(&mut rig.queues[0], 8, 3);
    rig.finish();
}

/// The NVM Command Set Identify Controller data (CNS 06h) is read at bring-up: its DMRSL
/// bounds a deallocation ([`Geometry::max_deallocate_blocks`]), a longer one is refused before
/// it reaches the controller (which would answer Invalid Field in Command), and one within it
/// deallocates. A controller that refuses CNS 06h (NVMe 1.x) is brought up with no limit.
///
/// [`Geometry::max_deallocate_blocks`]: crate::engine::Geometry::max_deallocate_blocks
#[test]
fn dmrsl_bounds_a_deallocation_and_a_refused_cns_06h_is_no_limit() {
    let sim_config = NvmeSimConfig {
        dmrsl: 64,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-dmrsl", sim_config.clone(), &config());
    assert_eq!(rig.ctrl.info().nvm.dmrsl, 64);
    assert_eq!(rig.ctrl.geometry().max_deallocate_blocks, 64);
    let q = &mut rig.queues[0];
    assert!(matches!(
        q.submit(&req(1, DeviceOp::Deallocate, 0, 65 * 512, &[])),
        Err(SubmitError::Unaligned(_))
    ));
    let c = run(q, &[req(2, DeviceOp::Deallocate, 0, 64 * 512, &[])]);
    assert_eq!(c, vec![ok(2)]);
    rig.finish();

    let refused = NvmeSimConfig {
        identify_io_command_set: false,
        ..sim_config
    };
    let rig = Rig::up("drv-no-cns-06h", refused, &config());
    assert_eq!(rig.ctrl.info().nvm, Default::default());
    assert_eq!(rig.ctrl.geometry().max_deallocate_blocks, u32::MAX);
    rig.finish();
}

/// A controller with Write Zeroes in ONCS whose WZSL (CNS 06h byte 1: 1, 8 KiB) is below one
/// block (16 KiB) would refuse every Write Zeroes, even of one block, with Invalid Field in
/// Command: the geometry offers none, as for a controller without it, and the queue refuses
/// one before the controller sees it. It used to offer Write Zeroes of one block, each of
/// which the controller refused. The same WZSL with 4 KiB blocks is two blocks.
#[test]
fn a_wzsl_below_one_block_offers_no_write_zeroes() {
    let sim_config = NvmeSimConfig {
        block_size: 16384,
        num_blocks: 256,
        wzsl: 1,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-wzsl-below-block", sim_config.clone(), &config());
    let g = rig.ctrl.geometry();
    assert!(rig.ctrl.info().controller.supports_write_zeroes(), "ONCS bit 3");
    assert_eq!((g.block_size, rig.ctrl.info().nvm.wzsl), (16384, 1));
    assert!(!g.supports_write_zeroes);
    assert_eq!(g.max_write_zeroes_blocks, 0);
    let before = rig.sim.stats().commands;
    let zeroes = DeviceOp::WriteZeroes { deallocate: false };
    assert!(matches!(
        rig.queues[0].submit(&req(1, zeroes, 0, 16384, &[])),
        Err(SubmitError::Unaligned(_))
    ));
    assert_eq!(rig.sim.stats().commands, before, "nothing reached the controller");
    verified_io(&mut rig.queues[0], 8, 4);
    rig.finish();

    let four_k = NvmeSimConfig {
        block_size: 4096,
        ..sim_config
    };
    let mut rig = Rig::up("drv-wzsl-two-blocks", four_k, &config());
    let g = rig.ctrl.geometry();
    assert!(g.supports_write_zeroes);
    assert_eq!(g.max_write_zeroes_blocks, 2);
    let c = run(&mut rig.queues[0], &[req(2, zeroes, 0, 2 * 4096, &[])]);
    assert_eq!(c, vec![ok(2)]);
    rig.finish();
}

/// The host short of MSI-X vectors: 4 I/O queues want 5 (vector 0 is the admin queue's), the
/// kernel grants 3. The controller comes up with 3: I/O queues 1 and 2 signal their vectors,
/// 3 and 4 are polled (their dumps and the controller's say so), and every queue moves
/// verified data. Before, the
/// bring-up failed with TooFewVectors.
#[test]
fn four_queues_with_three_granted_vectors_serve_with_two_polled() {
    four_queues_on_a_host_short_of_vectors(false, 3);
}

/// The host short of vectors as x86's vfio-pci says it: ENOSPC and no count. The start halves
/// its ask (5, then 2): the admin vector and I/O queue 1's, queues 2 to 4 polled.
#[test]
fn a_host_answering_enospc_gets_half_the_vectors_until_it_accepts() {
    four_queues_on_a_host_short_of_vectors(true, 2);
}

/// Four I/O queues asking five vectors of a host that grants three, answering its shortfall
/// with ENOSPC or with the count; `enabled` vectors come up (vector q is I/O queue q's, the
/// rest polled), and every queue serves.
fn four_queues_on_a_host_short_of_vectors(enospc: bool, enabled: u32) {
    let irq = NvmeConfig {
        queues: 4,
        interrupts: true,
        ..config()
    };
    let sim_config = NvmeSimConfig {
        queues: 4,
        interrupts: 5,
        ..NvmeSimConfig::default()
    };
    let (device, handle) = sim("drv-3-of-5-vectors", sim_config);
    device.interrupts().limit_grants(3);
    device.interrupts().answer_shortfall_with_enospc(enospc);
    let mut rig = Rig::up_on(device.clone(), handle, &irq);
    assert_eq!(device.interrupts().enabled(), enabled);
    assert_eq!(rig.queues.len(), 4);
    for (i, q) in rig.queues.iter_mut().enumerate() {
        let polled = u32::from(q.qid()) >= enabled;
        assert_eq!(q.notify_fd().is_none(), polled, "queue {}", q.qid());
        assert_eq!(
            q.dump().contains("polled (no MSI-X vector)"),
            polled,
            "{}",
            q.dump()
        );
        verified_io(q, 64 * i as u64, i as u8);
    }
    let dump = rig.ctrl.dump_registers();
    let polled = format!(
        "MSI-X: {enabled} vectors for the admin queue and 4 I/O queues: I/O queues {enabled}..4 polled"
    );
    assert!(dump.contains(&polled), "{dump}");
    rig.finish();
}
