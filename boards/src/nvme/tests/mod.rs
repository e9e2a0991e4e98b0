//! The driver against a small NVMe model ([`model`]): bring-up, I/O with PRP lists, the
//! optional commands, completion validation, stop / restart, recovery with commands in flight,
//! timeouts, escalation and a gone device.

mod model;

use super::controller::map_region;
use super::NvmeConfig;
use super::NvmeController;
use super::NvmeError;
use super::NvmeQueue;
use crate::engine::Controller;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceOp;
use crate::engine::DeviceRequest;
use crate::engine::DeviceStatus;
use crate::engine::EngineError;
use crate::engine::QueueEngine;
use crate::engine::SubmitError;
use model::ModelConfig;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::DeviceBacking;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn config() -> NvmeConfig {
    NvmeConfig {
        queues: 2,
        queue_depth: 16,
        interrupts: false,
        iova_base: 1 << 32,
        iova_size: 1 << 30,
        admin_timeout: Duration::from_millis(300),
        split_64bit_mmio: false,
    }
}

fn up(model: ModelConfig, config: &NvmeConfig) -> (Arc<NvmeController>, Vec<NvmeQueue>, Arc<model::Knobs>) {
    let (dev, knobs) = model::device(model);
    let dev: Arc<dyn DeviceBacking> = dev;
    let (ctrl, queues) = NvmeController::bring_up(dev, config).expect("bring-up");
    (ctrl, queues, knobs)
}

fn buffer(ctrl: &NvmeController, len: usize) -> MappedRegion {
    map_region(ctrl.device(), ctrl.iovas(), len, "test buffer").expect("buffer")
}

fn req(tag: u64, op: DeviceOp, lba: u64, length: u32, segments: &[(u64, u32)]) -> DeviceRequest<'_> {
    DeviceRequest {
        user_tag: tag,
        op,
        fua: false,
        lba,
        length,
        segments,
    }
}

/// Submit, ring once, reap until `n` completions (the model completes at the doorbell).
fn run(q: &mut NvmeQueue, reqs: &[DeviceRequest<'_>]) -> Vec<DeviceCompletion> {
    for r in reqs {
        q.submit(r).expect("submit");
    }
    q.ring_doorbell();
    reap_n(q, reqs.len())
}

/// Reap until `n` completions arrived (bounded: the test fails rather than hangs).
fn reap_n(q: &mut NvmeQueue, n: usize) -> Vec<DeviceCompletion> {
    let mut out = Vec::new();
    wait_until(|| {
        q.reap(&mut out);
        out.len() >= n
    });
    assert_eq!(out.len(), n, "every request completed: {}", q.dump());
    out
}

/// Poll `done` for up to 5 s.
fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn bring_up_identifies_and_moves_data_through_prp_lists() {
    // Arrange
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    let g = ctrl.geometry();
    assert_eq!((g.block_size, g.capacity_blocks), (512, 4096));
    assert_eq!(g.max_transfer_bytes, 128 * 1024, "MDTS 5 = 32 pages");
    assert!(g.supports_deallocate && g.volatile_cache);
    assert_eq!(ctrl.info().controller.mn, "scst-accel test NVMe");
    assert_eq!(ctrl.info().nsid, 1);
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[0].depth(), 16);
    let buf = buffer(&ctrl, 256 * 1024);
    let data = pattern(3584 + 57344 + 4096, 7);
    buf.region().write_at(512, &data);
    let base = buf.iova();
    // 127 blocks starting mid-page, then whole pages: a PRP list of 15 entries.
    let segs = [(base + 512, 3584), (base + 4096, 57344), (base + 61440, 4096)];
    assert_eq!(segs.iter().map(|s| s.1).sum::<u32>() as usize, data.len());

    // Act: write on queue 1, read back into another place on queue 2.
    let w = run(
        &mut queues[0],
        &[req(1, DeviceOp::Write, 100, data.len() as u32, &segs)],
    );
    let rsegs = [(base + 128 * 1024, data.len() as u32)];
    let r = run(
        &mut queues[1],
        &[req(2, DeviceOp::Read, 100, data.len() as u32, &rsegs)],
    );

    // Assert
    assert_eq!(
        w,
        vec![DeviceCompletion {
            user_tag: 1,
            status: DeviceStatus::Ok
        }]
    );
    assert_eq!(
        r,
        vec![DeviceCompletion {
            user_tag: 2,
            status: DeviceStatus::Ok
        }]
    );
    let mut back = vec![0u8; data.len()];
    buf.region().read_at(128 * 1024, &mut back);
    assert!(back == data, "data read back differs");
    assert_eq!(knobs.io_commands.load(Ordering::Relaxed), 2);

    // Write zeroes, flush, deallocate, out of range.
    let c = run(
        &mut queues[0],
        &[
            req(3, DeviceOp::WriteZeroes, 100, 4096, &[]),
            req(4, DeviceOp::Flush, 0, 0, &[]),
            req(5, DeviceOp::Deallocate, 108, 4096, &[]),
            req(6, DeviceOp::Read, 4095, 1024, &[(base, 1024)]),
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
        &mut queues[1],
        &[req(
            7,
            DeviceOp::Read,
            100,
            16 * 512,
            &[(base + 128 * 1024, 16 * 512)],
        )],
    );
    assert_eq!(r[0].status, DeviceStatus::Ok);
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

    // Teardown in order: stop queues, shut down.
    for q in &mut queues {
        q.stop().expect("stop");
        assert!(q.abandon_all().is_empty());
    }
    Controller::shutdown(ctrl.as_ref()).expect("shutdown");
    assert!(!ctrl.is_enabled());
    assert_eq!(ctrl.admin_unknown_completions(), 0);
}

#[test]
fn invalid_requests_are_refused_before_the_device_sees_them() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    let buf = buffer(&ctrl, 64 * 1024);
    let b = buf.iova();
    let q = &mut queues[0];
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
    // Depth 16: 15 usable slots.
    for tag in 0..15 {
        q.submit(&req(tag, DeviceOp::Flush, 0, 0, &[])).expect("fits");
    }
    assert_eq!(err(q, req(99, DeviceOp::Flush, 0, 0, &[])), SubmitError::Full);
    assert_eq!(q.in_flight(), 15);
    q.ring_doorbell();
    assert_eq!(reap_n(q, 15).len(), 15);
    assert_eq!(knobs.io_commands.load(Ordering::Relaxed), 15);
    q.stop().expect("stop");
    assert_eq!(
        err(q, req(1, DeviceOp::Flush, 0, 0, &[])),
        SubmitError::NotRunning
    );
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn duplicate_completions_are_counted_and_ignored() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    knobs.duplicate_completions.store(true, Ordering::Relaxed);
    let q = &mut queues[0];
    let out = run(
        q,
        &[
            req(1, DeviceOp::Flush, 0, 0, &[]),
            req(2, DeviceOp::Flush, 0, 0, &[]),
        ],
    );
    assert_eq!(out.len(), 2);
    wait_until(|| {
        q.reap(&mut Vec::new());
        q.unknown_tags() == 2
    });
    assert_eq!(q.unknown_tags(), 2, "{}", q.dump());
    assert_eq!(q.in_flight(), 0);
    // The slot's generation moved on: the next command in the same slot is not confused.
    let out = run(q, &[req(3, DeviceOp::Flush, 0, 0, &[])]);
    assert_eq!(
        out,
        vec![DeviceCompletion {
            user_tag: 3,
            status: DeviceStatus::Ok
        }]
    );
    wait_until(|| {
        q.reap(&mut Vec::new());
        q.unknown_tags() == 3
    });
    assert_eq!(q.unknown_tags(), 3);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn stop_deletes_the_queue_and_the_device_aborts_what_it_held() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    knobs.hold_io.store(true, Ordering::Relaxed);
    let q = &mut queues[0];
    q.submit(&req(1, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.submit(&req(2, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.ring_doorbell();
    QueueEngine::stop(q).expect("stop");
    assert!(!q.is_running());
    // DELETE SQ posted aborts for both before it completed (NVMe 1.4 §5.7).
    let mut out = Vec::new();
    q.reap(&mut out);
    let statuses: Vec<_> = out.iter().map(|c| (c.user_tag, c.status)).collect();
    assert_eq!(
        statuses,
        vec![(1, DeviceStatus::Aborted), (2, DeviceStatus::Aborted)]
    );
    assert!(q.abandon_all().is_empty());
    knobs.hold_io.store(false, Ordering::Relaxed);
    QueueEngine::restart(q).expect("restart");
    assert!(q.is_running());
    let out = run(q, &[req(3, DeviceOp::Flush, 0, 0, &[])]);
    assert_eq!(out[0].status, DeviceStatus::Ok);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn recover_with_commands_in_flight_then_restart_serves_again() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    let buf = buffer(&ctrl, 8192);
    knobs.hold_io.store(true, Ordering::Relaxed);
    for (i, q) in queues.iter_mut().enumerate() {
        for t in 0..3 {
            q.submit(&req(
                10 * i as u64 + t,
                DeviceOp::Read,
                t,
                512,
                &[(buf.iova(), 512)],
            ))
            .expect("submit");
        }
        q.ring_doorbell();
        assert_eq!(q.in_flight(), 3);
    }
    assert_eq!(ctrl.reset_count(), 0);

    Controller::recover(ctrl.as_ref()).expect("recover");

    assert_eq!(ctrl.reset_count(), 1);
    knobs.hold_io.store(false, Ordering::Relaxed);
    for (i, q) in queues.iter_mut().enumerate() {
        assert!(!q.is_running(), "a queue sees the reset");
        assert_eq!(
            q.submit(&req(99, DeviceOp::Flush, 0, 0, &[])),
            Err(SubmitError::NotRunning)
        );
        assert!(
            matches!(QueueEngine::restart(q), Err(EngineError::Failed { .. })),
            "in flight"
        );
        let mut tags = q.abandon_all();
        tags.sort_unstable();
        let base = 10 * i as u64;
        assert_eq!(tags, vec![base, base + 1, base + 2]);
        QueueEngine::restart(q).expect("restart");
        let out = run(q, &[req(50, DeviceOp::Read, 0, 512, &[(buf.iova(), 512)])]);
        assert_eq!(out[0].status, DeviceStatus::Ok);
        assert_eq!(q.unknown_tags(), 0);
    }
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn admin_timeout_is_reported_and_recovery_clears_it() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    knobs.drop_admin.store(true, Ordering::Relaxed);
    let err = QueueEngine::stop(&mut queues[0]).expect_err("the delete never completes");
    assert!(matches!(err, EngineError::Timeout { .. }), "{err}");
    knobs.drop_admin.store(false, Ordering::Relaxed);
    ctrl.recover().expect("recover");
    for q in &mut queues {
        assert!(q.abandon_all().is_empty());
        q.restart().expect("restart");
        assert_eq!(
            run(q, &[req(1, DeviceOp::Flush, 0, 0, &[])])[0].status,
            DeviceStatus::Ok
        );
    }
    assert_eq!(ctrl.admin_unknown_completions(), 0);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn a_stuck_disable_escalates_to_a_function_reset() {
    let (ctrl, queues, knobs) = up(ModelConfig::default(), &config());
    knobs.stuck_disable.store(true, Ordering::Relaxed);
    Controller::reset(ctrl.as_ref()).expect("reset through the function reset");
    assert_eq!(knobs.function_resets.load(Ordering::Relaxed), 1);
    assert!(!ctrl.is_enabled());
    knobs.stuck_disable.store(false, Ordering::Relaxed);
    drop(queues); // not on the device any more: no admin commands
    ctrl.recover().expect("recover");
    assert!(ctrl.is_enabled());
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn a_gone_device_is_reported() {
    let (ctrl, mut queues, knobs) = up(ModelConfig::default(), &config());
    knobs.gone.store(true, Ordering::Relaxed);
    assert!(Controller::is_gone(ctrl.as_ref()));
    assert!(ctrl.fatal().is_none());
    assert!(QueueEngine::stop(&mut queues[0]).expect_err("gone").is_gone());
    assert!(Controller::recover(ctrl.as_ref()).expect_err("gone").is_gone());
    assert!(ctrl.dump_registers().contains("gone"));
    let (dev, k) = model::device(ModelConfig::default());
    k.gone.store(true, Ordering::Relaxed);
    let dev: Arc<dyn DeviceBacking> = dev;
    assert!(matches!(
        NvmeController::bring_up(dev, &config()),
        Err(NvmeError::Gone { .. })
    ));
}

#[test]
fn optional_commands_the_controller_lacks_complete_locally() {
    let model = ModelConfig {
        oncs: 0,
        queues_granted: 1,
        ..ModelConfig::default()
    };
    let (ctrl, mut queues, knobs) = up(model, &config());
    assert_eq!(queues.len(), 1, "the controller granted one I/O queue");
    assert!(!ctrl.geometry().supports_deallocate);
    let out = run(
        &mut queues[0],
        &[
            req(1, DeviceOp::WriteZeroes, 0, 512, &[]),
            req(2, DeviceOp::Deallocate, 0, 512, &[]),
        ],
    );
    assert!(out.iter().all(|c| c.status == DeviceStatus::Other(0x001)));
    assert_eq!(knobs.io_commands.load(Ordering::Relaxed), 0);
    assert_eq!(queues[0].stats().refused, 2);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn split_64bit_mmio_uses_only_32_bit_accesses() {
    let split = NvmeConfig {
        split_64bit_mmio: true,
        ..config()
    };
    let (ctrl, queues, knobs) = up(ModelConfig::default(), &split);
    assert_eq!(knobs.access64.load(Ordering::Relaxed), 0);
    assert!(ctrl.dump_registers().contains("MQES 64"));
    drop(queues);
    ctrl.shutdown().expect("shutdown");
    let (ctrl, queues, knobs) = up(ModelConfig::default(), &config());
    assert!(knobs.access64.load(Ordering::Relaxed) > 0);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn interrupts_signal_the_queue_eventfd() {
    let model = ModelConfig {
        vectors: 3,
        ..ModelConfig::default()
    };
    let irq = NvmeConfig {
        interrupts: true,
        ..config()
    };
    let (ctrl, mut queues, _knobs) = up(model, &irq);
    for q in &mut queues {
        assert!(q.notify_fd().is_some());
        q.submit(&req(1, DeviceOp::Flush, 0, 0, &[])).expect("submit");
        q.ring_doorbell();
        let fd = q.notify_fd().expect("fd");
        let ready = scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_secs(2)).expect("poll");
        assert_eq!(ready, vec![true], "vector {} fired", q.qid());
        assert_eq!(reap_n(q, 1)[0].status, DeviceStatus::Ok);
    }
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}

#[test]
fn the_admin_queue_serves_several_threads() {
    let (ctrl, queues, _knobs) = up(ModelConfig::default(), &config());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    let sqe = super::cmd::Sqe {
                        opcode: super::cmd::admin_opcode::SET_FEATURES,
                        cdw10: super::cmd::feature::NUMBER_OF_QUEUES,
                        ..Default::default()
                    };
                    let cqe = ctrl.admin("SET FEATURES", sqe).expect("admin");
                    assert_eq!(cqe.dw0, 0x0003_0003);
                }
            });
        }
    });
    assert_eq!(ctrl.admin_unknown_completions(), 0);
    drop(queues);
    ctrl.shutdown().expect("shutdown");
}
