//! The NVMe engine against a real NVMe controller through VFIO (in CI: QEMU's NVMe model in a
//! guest with an emulated IOMMU, tests/hil/). Skipped, with the reason printed, unless
//! `SCST_ACCEL_NVME_PCI` names the controller's PCI address (bound to vfio-pci) and
//! `/dev/vfio/vfio` exists.
//!
//! Every step asserts: bring-up and IDENTIFY, verified write/read patterns on two queues at
//! queue depth > 1 (single block, PRP list, largest transfer, an unaligned first segment,
//! several segments), FLUSH, WRITE ZEROES, DATASET MANAGEMENT, an ABORT of a just-submitted
//! read (completed exactly once whatever the controller answers), a read past the end of the
//! namespace, the Error Information log (read, parsed, printed), a controller recovery with
//! commands in flight, and shutdown. DMA faults are checked outside, in the guest's kernel log.

use scst_accel_boards::engine::Controller;
use scst_accel_boards::engine::DeviceCompletion;
use scst_accel_boards::engine::DeviceOp;
use scst_accel_boards::engine::DeviceRequest;
use scst_accel_boards::engine::DeviceStatus;
use scst_accel_boards::engine::QueueEngine;
use scst_accel_boards::nvme::cmd::ERROR_LOG_ENTRY_LEN;
use scst_accel_boards::nvme::NvmeConfig;
use scst_accel_boards::nvme::NvmeController;
use scst_accel_boards::nvme::NvmeQueue;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::vfio::VfioDevice;
use scst_accel_hal::DeviceBacking;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

const ENV: &str = "SCST_ACCEL_NVME_PCI";

fn buffer(ctrl: &NvmeController, len: usize) -> MappedRegion {
    let region = DmaRegion::new(len).expect("DMA memory");
    let mapper = scst_accel_boards::sca1::device_mapper(Arc::clone(ctrl.device()));
    MappedRegion::new(region, mapper, Arc::clone(ctrl.iovas())).expect("DMA mapping")
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rq(tag: u64, op: DeviceOp, lba: u64, length: u32, segments: &[(u64, u32)]) -> DeviceRequest<'_> {
    DeviceRequest {
        user_tag: tag,
        op,
        fua: false,
        lba,
        length,
        segments,
    }
}

/// Wait (bounded by 20 s) for `n` completions, sleeping on the queue's MSI-X eventfd.
fn reap(q: &mut NvmeQueue, n: usize) -> Vec<DeviceCompletion> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if q.reap(&mut out) == 0 {
            match q.notify_fd() {
                Some(fd) => {
                    let _ = scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_millis(10));
                }
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    }
    assert_eq!(out.len(), n, "completions within 20 s: {}", q.dump());
    out
}

/// Submit `reqs` as one batch (one doorbell) and expect every one to succeed.
fn run_ok(q: &mut NvmeQueue, reqs: &[DeviceRequest<'_>]) {
    for r in reqs {
        q.submit(r).unwrap_or_else(|e| panic!("submit {:?}: {e}", r.op));
    }
    q.ring_doorbell();
    let mut done = reap(q, reqs.len());
    done.sort_by_key(|c| c.user_tag);
    let mut want: Vec<u64> = reqs.iter().map(|r| r.user_tag).collect();
    want.sort_unstable();
    for (c, tag) in done.iter().zip(want) {
        assert_eq!(
            (c.user_tag, c.status),
            (tag, DeviceStatus::Ok),
            "queue {}",
            q.qid()
        );
    }
}

/// Write `len`-byte patterns at `lbas` on `q` (QD = lbas.len()) from buffers at `offset` into
/// their first page, read them back into other buffers, compare.
fn write_read_verify(q: &mut NvmeQueue, ctrl: &NvmeController, lbas: &[u64], len: u32, offset: u32) {
    let n = lbas.len();
    let stride = (len + offset).next_multiple_of(4096) as usize;
    let src = buffer(ctrl, stride * n);
    let dst = buffer(ctrl, stride * n);
    let data: Vec<Vec<u8>> = lbas
        .iter()
        .map(|&lba| pattern(len as usize, lba * 7 + u64::from(len)))
        .collect();
    for (i, d) in data.iter().enumerate() {
        src.region().write_at(i * stride + offset as usize, d);
    }
    let at = |buf: &MappedRegion, i: usize| [(buf.iova() + (i * stride) as u64 + u64::from(offset), len)];
    let segs: Vec<[(u64, u32); 1]> = (0..n).map(|i| at(&src, i)).collect();
    let writes: Vec<_> = (0..n)
        .map(|i| rq(i as u64, DeviceOp::Write, lbas[i], len, &segs[i]))
        .collect();
    run_ok(q, &writes);
    let rsegs: Vec<[(u64, u32); 1]> = (0..n).map(|i| at(&dst, i)).collect();
    let reads: Vec<_> = (0..n)
        .map(|i| rq(100 + i as u64, DeviceOp::Read, lbas[i], len, &rsegs[i]))
        .collect();
    run_ok(q, &reads);
    for (i, d) in data.iter().enumerate() {
        let mut back = vec![0u8; len as usize];
        dst.region().read_at(i * stride + offset as usize, &mut back);
        assert!(
            back == *d,
            "queue {}: {len} bytes at LBA {} read back differ",
            q.qid(),
            lbas[i]
        );
    }
}

fn read_back(q: &mut NvmeQueue, ctrl: &NvmeController, lba: u64, len: u32) -> Vec<u8> {
    let dst = buffer(ctrl, len as usize);
    dst.region().fill(0, len as usize, 0xA5);
    run_ok(q, &[rq(900, DeviceOp::Read, lba, len, &[(dst.iova(), len)])]);
    let mut back = vec![0u8; len as usize];
    dst.region().read_at(0, &mut back);
    back
}

#[test]
fn nvme_controller_through_vfio() {
    let Ok(addr) = std::env::var(ENV) else {
        scst_accel_hal::skip::test_skipped("nvme_controller_through_vfio", &format!("{ENV} is not set (the PCI address of an NVMe controller bound to vfio-pci; tests/hil runs the same driver in a guest)"));
        return;
    };
    if !std::path::Path::new("/dev/vfio/vfio").exists() {
        scst_accel_hal::skip::test_skipped(
            "nvme_controller_through_vfio",
            "/dev/vfio/vfio does not exist (load vfio-pci)",
        );
        return;
    }
    let _ = init_logging();

    // Bring-up.
    let device: Arc<dyn DeviceBacking> = Arc::new(VfioDevice::open(&addr).expect("VFIO open"));
    // SCST_ACCEL_NVME_POLL=1: no MSI-X (poll), and 64-bit registers split in two.
    let poll = std::env::var("SCST_ACCEL_NVME_POLL").is_ok_and(|v| v == "1");
    let config = NvmeConfig {
        queues: 2,
        queue_depth: 64,
        interrupts: !poll,
        split_64bit_mmio: poll,
        ..NvmeConfig::default()
    };
    let (ctrl, mut queues) = NvmeController::bring_up(device, &config).expect("bring-up");
    let info = ctrl.info().clone();
    let g = Controller::geometry(ctrl.as_ref());
    println!(
        "IDENTIFY: model {:?} serial {:?} firmware {:?} VID {:#06x} MDTS {} ONCS {:#x} VWC {} NN {}",
        info.controller.mn,
        info.controller.sn,
        info.controller.fr,
        info.controller.vid,
        info.controller.mdts,
        info.controller.oncs,
        info.controller.vwc,
        info.controller.nn
    );
    println!(
        "namespace {}: {} blocks of {} bytes ({} MiB), max transfer {} KiB, {} queues x {} entries, \
         interrupts {}",
        info.nsid,
        g.capacity_blocks,
        g.block_size,
        (g.capacity_blocks * u64::from(g.block_size)) >> 20,
        g.max_transfer_bytes / 1024,
        queues.len(),
        queues[0].depth(),
        queues[0].notify_fd().is_some()
    );
    println!("{}", ctrl.dump_registers());
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[0].notify_fd().is_some(), !poll);
    assert!(g.block_size >= 512 && g.capacity_blocks > 0);
    assert!(g.max_transfer_bytes >= 64 * 1024);
    let bs = u64::from(g.block_size);
    let blocks = |bytes: u32| u64::from(bytes) / bs;

    // Data on both queues at QD 4: one block, 64 KiB (a PRP list), the largest transfer, and
    // a first segment that starts mid-page.
    let max = g.max_transfer_bytes;
    let span = blocks(max);
    assert!(
        16 * span < g.capacity_blocks,
        "the test needs {} blocks",
        16 * span
    );
    for (qi, q) in queues.iter_mut().enumerate() {
        let base = qi as u64 * 8 * span;
        write_read_verify(q, &ctrl, &[base, base + 1, base + 2, base + 3], g.block_size, 0);
        let k64 = blocks(64 * 1024);
        write_read_verify(
            q,
            &ctrl,
            &[
                base + 16,
                base + 16 + k64,
                base + 16 + 2 * k64,
                base + 16 + 3 * k64,
            ],
            64 * 1024,
            0,
        );
        write_read_verify(
            q,
            &ctrl,
            &[base + span, base + 2 * span, base + 3 * span, base + 4 * span],
            max,
            0,
        );
        write_read_verify(q, &ctrl, &[base + 5 * span, base + 6 * span], 16 * 1024, 512);
        println!("queue {}: write/read/verify passed ({})", q.qid(), q.dump());
    }

    // Ring wrap: enough batches that every ring wraps several times (phase tag flips).
    for q in queues.iter_mut() {
        let depth = u64::from(q.depth());
        let buf = buffer(&ctrl, 8 * 4096);
        let segs: Vec<[(u64, u32); 1]> = (0..8).map(|i| [(buf.iova() + i * 4096, 4096)]).collect();
        for batch in 0..(5 * depth / 8 + 1) {
            let reqs: Vec<_> = (0..8)
                .map(|i: u64| rq(batch * 8 + i, DeviceOp::Read, i * 8, 4096, &segs[i as usize]))
                .collect();
            run_ok(q, &reqs);
        }
        assert!(q.stats().completed > 5 * depth, "{}", q.dump());
        assert_eq!(q.unknown_tags(), 0);
        println!("queue {}: ring wrap passed ({})", q.qid(), q.dump());
    }

    // A multi-segment request: the second half of a page, then 2.5 pages elsewhere.
    {
        let q = &mut queues[0];
        let a = buffer(&ctrl, 4096);
        let b = buffer(&ctrl, 3 * 4096);
        let len = 2048 + 8192 + 2048;
        let data = pattern(len, 99);
        a.region().write_at(2048, &data[..2048]);
        b.region().write_at(0, &data[2048..]);
        let segs = [(a.iova() + 2048, 2048), (b.iova(), 8192 + 2048)];
        let lba = 16 * span;
        run_ok(q, &[rq(1, DeviceOp::Write, lba, len as u32, &segs)]);
        assert!(
            read_back(q, &ctrl, lba, len as u32) == data,
            "multi-segment write read back"
        );
        println!("multi-segment write passed");
    }

    // FLUSH, WRITE ZEROES, DSM.
    {
        let q = &mut queues[1];
        run_ok(q, &[rq(1, DeviceOp::Flush, 0, 0, &[])]);
        let lba = 16 * span + 64;
        write_read_verify(q, &ctrl, &[lba], 8 * 4096, 0);
        if info.controller.supports_write_zeroes() {
            run_ok(
                q,
                &[rq(
                    2,
                    DeviceOp::WriteZeroes { deallocate: false },
                    lba,
                    4 * 4096,
                    &[],
                )],
            );
            let back = read_back(q, &ctrl, lba, 8 * 4096);
            assert!(
                back[..4 * 4096].iter().all(|&b| b == 0),
                "WRITE ZEROES read back zeroes"
            );
            assert!(
                back[4 * 4096..].iter().any(|&b| b != 0),
                "blocks after the range untouched"
            );
            println!("WRITE ZEROES passed");
        } else {
            println!(
                "WRITE ZEROES not supported (ONCS {:#x}): not tested",
                info.controller.oncs
            );
        }
        if g.supports_deallocate {
            run_ok(
                q,
                &[rq(3, DeviceOp::Deallocate, lba + blocks(4 * 4096), 4 * 4096, &[])],
            );
            // What deallocated blocks read is DLFEAT's business; the read must succeed.
            let _ = read_back(q, &ctrl, lba, 8 * 4096);
            println!("DSM deallocate passed");
        } else {
            println!("DSM not supported (ONCS {:#x}): not tested", info.controller.oncs);
        }
        run_ok(q, &[rq(4, DeviceOp::Flush, 0, 0, &[])]);
        println!("FLUSH passed");
    }

    // ABORT of a just-submitted read (NVMe 1.4 §5.1). QEMU answers "not aborted" for a command
    // it already executes; either answer is accepted, but the read must complete exactly once,
    // as Aborted when the controller agreed to abort it.
    {
        let q = &mut queues[0];
        let dst = buffer(&ctrl, max as usize);
        let seg = [(dst.iova(), max)];
        q.submit(&rq(500, DeviceOp::Read, 0, max, &seg)).expect("submit");
        q.ring_doorbell();
        let aborted = QueueEngine::abort(q, &[500]).expect("abort");
        assert!(aborted <= 1, "{aborted} aborted of one");
        assert_eq!(q.stats().aborts_sent, 1, "the read was in flight: one ABORT sent");
        let done = reap(q, 1);
        let want = if aborted == 1 {
            DeviceStatus::Aborted
        } else {
            DeviceStatus::Ok
        };
        assert_eq!((done[0].user_tag, done[0].status), (500, want));
        // Exactly once: no second completion for it, and nothing unknown.
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = Vec::new();
        assert_eq!(q.reap(&mut extra), 0, "second completion: {extra:?}");
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.unknown_tags(), 0, "{}", q.dump());
        // Tags not in flight send nothing.
        assert_eq!(QueueEngine::abort(q, &[500, 12345]).expect("abort"), 0);
        assert_eq!(q.stats().aborts_sent, 1);
        println!(
            "ABORT of a just-submitted read: {} by the controller; the read completed once ({:?})",
            if aborted == 1 { "aborted" } else { "not aborted" },
            done[0].status
        );
    }

    // A read past the end of the namespace fails with LBA Out of Range; then the Error
    // Information log (NVMe 1.4 §5.14.1.1) must read and parse, whatever it holds.
    {
        let q = &mut queues[1];
        let dst = buffer(&ctrl, 4096);
        q.submit(&rq(
            600,
            DeviceOp::Read,
            g.capacity_blocks,
            g.block_size,
            &[(dst.iova(), g.block_size)],
        ))
        .expect("submit");
        q.ring_doorbell();
        let done = reap(q, 1);
        assert_eq!((done[0].user_tag, done[0].status), (600, DeviceStatus::LbaRange));
        let log = ctrl.error_log(Duration::from_secs(5)).expect("error log");
        let entries = (info.controller.error_log_entries() as usize).min(4096 / ERROR_LOG_ENTRY_LEN);
        assert_eq!(
            log.len(),
            entries,
            "ELPE {} + 1 entries, one page at most",
            info.controller.elpe
        );
        let used: Vec<_> = log.iter().filter(|e| !e.is_empty()).collect();
        println!(
            "error log: {} entries read (ELPE {}, ACL {}), {} used",
            log.len(),
            info.controller.elpe,
            info.controller.acl,
            used.len()
        );
        for e in &used {
            println!("  {e}");
        }
        let dump = ctrl.dump_registers();
        assert!(dump.contains("error log: "), "{dump}");
        assert!(!dump.contains("error log: unavailable"), "{dump}");
        println!("{dump}");
    }

    // Recovery with commands in flight: the restart path abandons them, and new I/O works
    // after the restart.
    {
        let scratch: Vec<MappedRegion> = queues.iter().map(|_| buffer(&ctrl, 8 * 64 * 1024)).collect();
        for (q, buf) in queues.iter_mut().zip(&scratch) {
            for i in 0..8u64 {
                let seg = [(buf.iova() + i * 64 * 1024, 64 * 1024)];
                q.submit(&rq(i, DeviceOp::Read, i * 128, 64 * 1024, &seg))
                    .expect("submit");
            }
            q.ring_doorbell();
            assert_eq!(q.in_flight(), 8);
        }
        Controller::recover(ctrl.as_ref()).expect("recover");
        assert_eq!(Controller::reset_count(ctrl.as_ref()), 1);
        for q in &mut queues {
            assert!(!QueueEngine::is_running(q), "queue {} sees the reset", q.qid());
            let mut tags = QueueEngine::abandon_all(q);
            tags.sort_unstable();
            assert_eq!(tags, (0..8).collect::<Vec<u64>>(), "queue {}", q.qid());
            QueueEngine::restart(q).expect("restart");
            assert!(QueueEngine::is_running(q));
        }
        // The controller was reset: nothing can DMA into these any more.
        drop(scratch);
        for (qi, q) in queues.iter_mut().enumerate() {
            let base = 17 * span + qi as u64 * 1000;
            write_read_verify(q, &ctrl, &[base, base + 128, base + 256], 64 * 1024, 0);
            assert_eq!(q.unknown_tags(), 0, "{}", q.dump());
        }
        println!("recovery with commands in flight passed");
    }

    // Orderly stop: delete the queues, shut down.
    for q in &mut queues {
        QueueEngine::stop(q).expect("stop");
        assert!(QueueEngine::abandon_all(q).is_empty());
    }
    Controller::shutdown(ctrl.as_ref()).expect("shutdown");
    Controller::disable_interrupts(ctrl.as_ref());
    assert!(!Controller::is_gone(ctrl.as_ref()));
    assert_eq!(ctrl.admin_unknown_completions(), 0);
    drop(queues);
    println!("shutdown passed");
}

/// Log to stderr, at the level `RUST_LOG` names (warn when unset).
fn init_logging() -> Result<(), log::SetLoggerError> {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record<'_>) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    log::set_logger(&LOGGER)?;
    log::set_max_level(match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("info") => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    });
    Ok(())
}
