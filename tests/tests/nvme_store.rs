//! The accelerator store on the NVMe engine (simulated controller), below the SCSI engine:
//! every store operation moves or checks the right bytes, WRITE SAME included (NVMe PRPs
//! cannot repeat a 512-byte block, so the store expands the pattern).

use scst_accel_boards::definition;
use scst_accel_boards::open::open_board;
use scst_accel_boards::open::BoardSource;
use scst_accel_boards::sca1::device_mapper;
use scst_accel_boards::sim::nvme::NvmeSimConfig;
use scst_accel_boards::sim::nvme::NvmeSimHandle;
use scst_accel_dma::SgvPool;
use scst_accel_handler::store::accel::AccelConfig;
use scst_accel_handler::store::accel::AccelStore;
use scst_accel_handler::store::CmdBuffer;
use scst_accel_handler::store::IoBuffer;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreCompletion;
use scst_accel_handler::store::StoreOp;
use scst_accel_handler::store::StoreQueue;
use scst_accel_handler::store::StoreRequest;
use scst_accel_handler::store::StoreStatus;
use scst_accel_handler::store::StoreToken;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

fn complete(q: &mut dyn StoreQueue, tag: u64, op: StoreOp, buffer: Option<IoBuffer>) -> StoreStatus {
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest { tag, op, buffer }],
    )
    .expect("submit");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out: Vec<StoreCompletion> = Vec::new();
    while out.is_empty() && Instant::now() < deadline {
        q.reap(&mut out);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(out.len(), 1, "request {tag} completed once");
    assert_eq!(out[0].tag, tag);
    out[0].status
}

/// The accelerator store over a simulated NVMe controller with one queue, the controller's
/// handle, and an SGV pool of command buffers mapped for it.
fn nvme_store(config: NvmeSimConfig) -> (AccelStore, NvmeSimHandle, Arc<SgvPool>) {
    nvme_store_as(&definition::NVME_SIM, config)
}

/// [`nvme_store`] with the board `definition` (its quirks).
fn nvme_store_as(
    definition: &'static definition::BoardDefinition,
    config: NvmeSimConfig,
) -> (AccelStore, NvmeSimHandle, Arc<SgvPool>) {
    let opened = open_board(definition, BoardSource::NvmeSim(config), 1).expect("open");
    let sim = opened.nvme_sim.clone().expect("simulated controller");
    let pool = Arc::new(SgvPool::new(
        Some(device_mapper(Arc::clone(opened.controller.device()))),
        Some(Arc::clone(opened.controller.iovas())),
        64 << 20,
    ));
    let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
    (store, sim, pool)
}

#[test]
fn every_store_operation_works_on_the_nvme_engine_write_same_included() {
    // MDTS 5 (128 KiB) and 7 (512 KiB, as QEMU's controller): the store must not depend on
    // how many PRP entries a command may carry.
    for (block_size, mdts) in [(512u32, 5u8), (512, 7), (4096, 5), (4096, 7)] {
        let config = NvmeSimConfig {
            block_size,
            num_blocks: 4096,
            mdts,
            ..NvmeSimConfig::default()
        };
        let (store, sim, pool) = nvme_store(config);
        let mut q = store.open_queue().expect("queue");
        let bs = block_size as usize;
        let blocks = 300u32; // more than one WRITE SAME chunk (64 blocks)
        let len = blocks as usize * bs;
        let buf = |len| {
            IoBuffer::new(
                CmdBuffer::allocate(&mut StoreToken::root(), &pool, len).expect("buffer"),
                len,
            )
        };

        // WRITE SAME: one pattern block over 300 blocks.
        let pattern: Vec<u8> = (0..bs).map(|i| (i % 251) as u8).collect();
        let one = buf(bs);
        one.write_at(0, &pattern);
        let lba = 17;
        let st = complete(q.as_mut(), 1, StoreOp::WriteSame { lba, blocks }, Some(one));
        assert_eq!(st, StoreStatus::Good, "block size {block_size}, MDTS {mdts}");
        let back = buf(len);
        let st = complete(q.as_mut(), 2, StoreOp::Read { lba, blocks }, Some(back.clone()));
        assert_eq!(st, StoreStatus::Good);
        let mut got = vec![0u8; len];
        back.read_at(0, &mut got);
        for (i, block) in got.chunks(bs).enumerate() {
            assert!(
                block == pattern.as_slice(),
                "block {i} of the WRITE SAME range differs"
            );
        }

        // WRITE, then COMPARE equal and different, WRITE ZEROES, UNMAP, FLUSH.
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let w = buf(len);
        w.write_at(0, &data);
        assert_eq!(
            complete(
                q.as_mut(),
                3,
                StoreOp::Write {
                    lba: 1000,
                    blocks,
                    fua: true
                },
                Some(w.clone())
            ),
            StoreStatus::Good
        );
        assert_eq!(
            complete(
                q.as_mut(),
                4,
                StoreOp::Compare { lba: 1000, blocks },
                Some(w.clone())
            ),
            StoreStatus::Good
        );
        w.write_at(bs + 3, &[data[bs + 3] ^ 0xff]);
        assert_eq!(
            complete(q.as_mut(), 5, StoreOp::Compare { lba: 1000, blocks }, Some(w)),
            StoreStatus::Miscompare {
                offset: Some(bs as u64 + 3)
            }
        );
        let zeroes = StoreOp::WriteZeroes {
            lba: 1000,
            blocks: 8,
            deallocate: false,
        };
        assert_eq!(complete(q.as_mut(), 6, zeroes, None), StoreStatus::Good);
        let unmap = StoreOp::Unmap {
            ranges: vec![(1008, 8)].into_boxed_slice(),
        };
        assert_eq!(complete(q.as_mut(), 7, unmap, None), StoreStatus::Good);
        assert_eq!(complete(q.as_mut(), 8, StoreOp::Flush, None), StoreStatus::Good);
        let r = buf(16 * bs);
        let st = complete(
            q.as_mut(),
            9,
            StoreOp::Read {
                lba: 1000,
                blocks: 16,
            },
            Some(r.clone()),
        );
        assert_eq!(st, StoreStatus::Good);
        let mut got = vec![1u8; 16 * bs];
        r.read_at(0, &mut got);
        assert!(
            got.iter().all(|&b| b == 0),
            "zeroed and deallocated blocks read as zeroes"
        );
        assert_eq!(
            complete(
                q.as_mut(),
                10,
                StoreOp::Read { lba: 4090, blocks: 8 },
                Some(buf(8 * bs))
            ),
            StoreStatus::OutOfRange
        );
        drop(q);
        assert_eq!(store.failure(), None);
        let stats = sim.stats();
        assert_eq!(
            stats.invalid_doorbell_writes, 0,
            "the driver never wrote a doorbell the controller refused"
        );
        assert_eq!(stats.iommu_faults, 0);
    }
}

/// COMPARE AND WRITE in the device (the fused Compare and Write): a match writes the buffer's
/// second half; a mismatch writes nothing and answers the offset of the first differing byte,
/// which NVMe does not report (the store reads the blocks back and compares); beyond the
/// store's limit (ACWU + 1 = 16 blocks here) or on a controller without FUSES it is refused,
/// as the store's info says.
#[test]
fn compare_and_write_in_the_device_finds_the_miscompare_offset() {
    for (block_size, fused) in [(512u32, 16u16), (4096, 16), (512, 0)] {
        let config = NvmeSimConfig {
            block_size,
            num_blocks: 4096,
            compare_write_max_blocks: fused,
            ..NvmeSimConfig::default()
        };
        let (store, sim, pool) = nvme_store(config);
        assert_eq!(store.info().compare_and_write_blocks, u32::from(fused));
        let mut q = store.open_queue().expect("queue");
        let bs = block_size as usize;
        let buf = |len| {
            IoBuffer::new(
                CmdBuffer::allocate(&mut StoreToken::root(), &pool, len).expect("buffer"),
                len,
            )
        };
        let blocks = 3u32;
        let len = blocks as usize * bs;
        let old: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
        let new: Vec<u8> = (0..len).map(|i| (i * 29 % 253) as u8).collect();
        let w = buf(len);
        w.write_at(0, &old);
        let write = StoreOp::Write {
            lba: 40,
            blocks,
            fua: false,
        };
        assert_eq!(complete(q.as_mut(), 1, write, Some(w)), StoreStatus::Good);
        let caw = |blocks| StoreOp::CompareAndWrite {
            lba: 40,
            blocks,
            fua: true,
        };
        let read_back = |q: &mut dyn StoreQueue, tag| {
            let r = buf(len);
            let read = StoreOp::Read { lba: 40, blocks };
            assert_eq!(complete(q, tag, read, Some(r.clone())), StoreStatus::Good);
            let mut got = vec![0u8; len];
            r.read_at(0, &mut got);
            got
        };
        if fused == 0 {
            let both = buf(2 * len);
            let st = complete(q.as_mut(), 2, caw(blocks), Some(both));
            assert_eq!(st, StoreStatus::InvalidRequest, "not offered: not taken");
            continue;
        }
        // Mismatches at the first byte, inside the second block and at the last byte.
        for (i, at) in [0, bs + 17, len - 1].into_iter().enumerate() {
            let both = buf(2 * len);
            let mut compare = old.clone();
            compare[at] ^= 0x40;
            both.write_at(0, &compare);
            both.write_at(len, &new);
            let st = complete(q.as_mut(), 10 + i as u64, caw(blocks), Some(both));
            assert_eq!(
                st,
                StoreStatus::Miscompare {
                    offset: Some(at as u64)
                },
                "bs {bs}"
            );
            assert!(read_back(q.as_mut(), 20 + i as u64) == old, "nothing written");
        }
        let both = buf(2 * len);
        both.write_at(0, &old);
        both.write_at(len, &new);
        assert_eq!(
            complete(q.as_mut(), 30, caw(blocks), Some(both)),
            StoreStatus::Good
        );
        assert!(read_back(q.as_mut(), 31) == new, "the second half written");
        let over = buf(2 * 17 * bs);
        let st = complete(q.as_mut(), 32, caw(17), Some(over));
        assert_eq!(st, StoreStatus::InvalidRequest, "beyond ACWU + 1");
        let stats = sim.stats();
        assert_eq!((stats.fused_compare_writes, stats.fused_miscompares), (4, 3));
        assert_eq!(stats.iommu_faults, 0);
        drop(q);
        assert_eq!(store.failure(), None);
    }
}

/// Write `blocks` blocks of a non-zero pattern at `lba`, run `op`, and read the blocks back.
fn write_then(
    q: &mut dyn StoreQueue,
    pool: &Arc<SgvPool>,
    bs: usize,
    lba: u64,
    blocks: u32,
    op: StoreOp,
) -> Vec<u8> {
    let len = blocks as usize * bs;
    let buf = |len| {
        IoBuffer::new(
            CmdBuffer::allocate(&mut StoreToken::root(), pool, len).expect("buffer"),
            len,
        )
    };
    let w = buf(len);
    w.write_at(0, &(0..len).map(|i| (i % 253) as u8 | 1).collect::<Vec<u8>>());
    let write = StoreOp::Write {
        lba,
        blocks,
        fua: false,
    };
    assert_eq!(complete(q, 1, write, Some(w)), StoreStatus::Good);
    assert_eq!(complete(q, 2, op, None), StoreStatus::Good);
    let r = buf(len);
    let read = StoreOp::Read { lba, blocks };
    assert_eq!(complete(q, 3, read, Some(r.clone())), StoreStatus::Good);
    let mut got = vec![0u8; len];
    r.read_at(0, &mut got);
    got
}

/// WRITE SAME of zeroes with UNMAP (the store's write zeroes with deallocate) reads back
/// zeroes whatever the namespace's DLFEAT: a controller reporting 000b may keep the data of a
/// deallocated block (the simulator then does), and Dataset Management is advisory anyway, so
/// the zeroes must come from Write Zeroes (with DEAC only where DLFEAT allows it).
#[test]
fn write_zeroes_with_deallocate_reads_zeroes_whatever_dlfeat() {
    for dlfeat in [0b0000u8, 0b0001, 0b1001, 0b1000] {
        let config = NvmeSimConfig {
            num_blocks: 4096,
            dlfeat,
            ..NvmeSimConfig::default()
        };
        let (store, sim, pool) = nvme_store(config);
        assert!(store.info().supports_unmap);
        assert!(
            !store.info().unmapped_reads_zero,
            "LBPRZ is never claimed on NVMe"
        );
        let mut q = store.open_queue().expect("queue");
        let zeroes = StoreOp::WriteZeroes {
            lba: 100,
            blocks: 16,
            deallocate: true,
        };
        let got = write_then(q.as_mut(), &pool, 512, 100, 16, zeroes);
        assert!(
            got.iter().all(|&b| b == 0),
            "DLFEAT {dlfeat:#b}: stale data read back"
        );
        drop(q);
        assert_eq!(store.failure(), None);
        assert_eq!(sim.stats().iommu_faults, 0);
    }
}

/// On a controller without Write Zeroes (ONCS bit 3 clear, which the specification allows)
/// the store zeroes a range by writing zero blocks, for WRITE SAME of zeroes with and without
/// UNMAP, over more than one WRITE SAME chunk and for both block sizes.
#[test]
fn write_zeroes_without_the_command_writes_zero_blocks() {
    for block_size in [512u32, 4096] {
        let config = NvmeSimConfig {
            block_size,
            num_blocks: 4096,
            write_zeroes: false,
            ..NvmeSimConfig::default()
        };
        let (store, sim, pool) = nvme_store(config);
        let mut q = store.open_queue().expect("queue");
        for (lba, deallocate) in [(100u64, false), (400, true)] {
            let zeroes = StoreOp::WriteZeroes {
                lba,
                blocks: 150,
                deallocate,
            };
            let got = write_then(q.as_mut(), &pool, block_size as usize, lba, 150, zeroes);
            assert!(
                got.iter().all(|&b| b == 0),
                "block size {block_size}, deallocate {deallocate}: not zeroed"
            );
        }
        drop(q);
        assert_eq!(store.failure(), None);
        assert_eq!(sim.stats().iommu_faults, 0);
    }
}

/// NVMe statuses the store translates rather than answering HARDWARE ERROR, injected by the
/// simulator (`status:sct=T,sc=C`): each request completes with the store status the SCSI
/// layer turns into the NVM Express SCSI Translation Reference's answer.
#[test]
fn device_statuses_reach_the_store_translated() {
    let config = NvmeSimConfig {
        num_blocks: 4096,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let cases = [
        ("status:sct=0,sc=0x82", StoreStatus::NotReady),
        ("status:sct=0,sc=0x84", StoreStatus::FormatInProgress),
        ("status:sct=0,sc=0x21", StoreStatus::Aborted),
        ("status:sct=0,sc=0x02", StoreStatus::InvalidField),
        ("status:sct=0,sc=0x81", StoreStatus::SpaceExhausted { lba: 8 }),
        ("status:sct=0,sc=0x83", StoreStatus::ReservationConflict),
        ("status:sct=0,sc=0x20", StoreStatus::WriteProtected),
        ("status:sct=2,sc=0x86", StoreStatus::AccessDenied),
        ("status:sct=2,sc=0x87", StoreStatus::ReadError { lba: 8 }),
    ];
    for (tag, (fault, want)) in cases.into_iter().enumerate() {
        sim.inject(fault.parse().expect("fault"));
        let buf = IoBuffer::new(
            CmdBuffer::allocate(&mut StoreToken::root(), &pool, 4 * 512).expect("buffer"),
            4 * 512,
        );
        let read = StoreOp::Read { lba: 8, blocks: 4 };
        assert_eq!(complete(q.as_mut(), tag as u64, read, Some(buf)), want, "{fault}");
        sim.clear_faults();
    }
    drop(q);
    assert_eq!(store.failure(), None, "answers, not a failing device");
    assert_eq!(sim.stats().iommu_faults, 0);
}

/// The NVMe simulator told to ignore FUA, as QEMU 7.2's controller does, under a board whose
/// definition has the `fua_ignored` quirk (what `qemu-nvme` has).
static NVME_SIM_FUA_IGNORED: definition::BoardDefinition = definition::BoardDefinition {
    name: "nvme-sim-fua-ignored",
    quirks: definition::Quirks {
        split_64bit_mmio: false,
        fua_ignored: true,
        bogus_device_ids: false,
    },
    ..definition::NVME_SIM
};

/// On a controller that ignores FUA (the board quirk `fua_ignored`), a FUA write is made
/// durable by a Flush after it, and completes only with that Flush: a failing Flush fails the
/// write, at the write's first block. A plain write sends no Flush; a board without the quirk
/// trusts the device's FUA and sends none either (the hazard the quirk answers).
#[test]
fn a_fua_write_on_a_controller_that_ignores_fua_completes_with_a_flush_after_it() {
    let config = NvmeSimConfig {
        num_blocks: 4096,
        fua_ignored: true,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store_as(&NVME_SIM_FUA_IGNORED, config.clone());
    let mut q = store.open_queue().expect("queue");
    let buf = || {
        IoBuffer::new(
            CmdBuffer::allocate(&mut StoreToken::root(), &pool, 8 * 512).expect("buffer"),
            8 * 512,
        )
    };
    let write = |fua| StoreOp::Write {
        lba: 1000,
        blocks: 8,
        fua,
    };
    let flushes = |sim: &NvmeSimHandle| sim.stats().flushes;
    assert_eq!(
        complete(q.as_mut(), 1, write(false), Some(buf())),
        StoreStatus::Good
    );
    assert_eq!(flushes(&sim), 0, "a plain write sends no Flush");
    assert_eq!(
        complete(q.as_mut(), 2, write(true), Some(buf())),
        StoreStatus::Good
    );
    assert_eq!(flushes(&sim), 1, "a FUA write is followed by a Flush");
    // A COMPARE AND WRITE with FUA: the fused pair, then the Flush.
    let caw = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 2 * 512).expect("buffer"),
        2 * 512,
    );
    let op = StoreOp::CompareAndWrite {
        lba: 1000,
        blocks: 1,
        fua: true,
    };
    assert_eq!(complete(q.as_mut(), 3, op.clone(), Some(caw)), StoreStatus::Good);
    assert_eq!(flushes(&sim), 2, "a FUA COMPARE AND WRITE is followed by a Flush");
    // One that miscompares wrote nothing: no Flush follows it.
    let differs = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 2 * 512).expect("buffer"),
        2 * 512,
    );
    differs.write_at(0, &[0xA5; 512]);
    assert!(matches!(
        complete(q.as_mut(), 30, op, Some(differs)),
        StoreStatus::Miscompare { .. }
    ));
    assert_eq!(flushes(&sim), 2, "no Flush after a miscompare");
    // The second I/O command from here, the Flush, fails with Write Fault: the write must
    // not be answered GOOD, and its error names its own first block, not the Flush's LBA 0.
    sim.inject("status:sct=2,sc=0x80,every=2".parse().expect("fault"));
    assert_eq!(
        complete(q.as_mut(), 4, write(true), Some(buf())),
        StoreStatus::WriteError { lba: 1000 }
    );
    sim.clear_faults();
    drop(q);
    assert_eq!(store.failure(), None);
    assert_eq!(sim.stats().iommu_faults, 0);

    // The same controller under the board without the quirk: nothing follows a FUA write.
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let data = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 8 * 512).expect("buffer"),
        8 * 512,
    );
    assert_eq!(
        complete(q.as_mut(), 1, write(true), Some(data)),
        StoreStatus::Good
    );
    assert_eq!(flushes(&sim), 0, "FUA trusted: no Flush");
}

/// A recovery is one long store call (here the controller's disable, 700 ms, inside the reset of
/// a function that reported CFS): the worker making it must not look wedged to a liveness check
/// of a shorter `max_age` (the service's watchdog), because the store sets the worker's
/// heartbeat ahead by the call's bound for it.
#[test]
fn a_worker_inside_a_device_recovery_is_not_taken_for_wedged() {
    use scst_accel_boards::sim::nvme::NvmeFault;
    use scst_accel_handler::heartbeat::Heartbeat;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    const MAX_AGE: Duration = Duration::from_millis(300);
    let config = NvmeSimConfig {
        num_blocks: 4096,
        disable_micros: 700_000,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let heartbeat = Heartbeat::new();
    q.set_heartbeat(heartbeat.clone());
    let buffer = || {
        IoBuffer::new(
            CmdBuffer::allocate(&mut StoreToken::root(), &pool, 4096).expect("buffer"),
            4096,
        )
    };
    let read = StoreOp::Read { lba: 8, blocks: 8 };
    assert_eq!(
        complete(q.as_mut(), 1, read.clone(), Some(buffer())),
        StoreStatus::Good
    );

    // The checker, as the service's watchdog runs it, beside the worker.
    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let (done, heartbeat) = (Arc::clone(&done), heartbeat.clone());
        std::thread::spawn(move || {
            let mut wedged = 0u32;
            while !done.load(Ordering::Relaxed) {
                wedged += u32::from(heartbeat.is_wedged(MAX_AGE));
                std::thread::sleep(Duration::from_millis(10));
            }
            wedged
        })
    };
    sim.inject(NvmeFault::Cfs);
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest {
            tag: 2,
            op: read,
            buffer: Some(buffer()),
        }],
    )
    .expect("submit");
    // The worker's loop: a beat per turn, then the store.
    let (mut out, mut longest) = (Vec::new(), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.is_empty() && Instant::now() < deadline {
        heartbeat.beat();
        let call = Instant::now();
        q.reap(&mut out);
        longest = longest.max(call.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    done.store(true, Ordering::Relaxed);
    let wedged = checker.join().expect("checker");
    assert_eq!(out.len(), 1, "the request ended after the recovery");
    assert_eq!(out[0].status, StoreStatus::Aborted, "failed by the recovery");
    assert!(
        store.counters().resets.load(Ordering::Relaxed) >= 1,
        "the function was reset"
    );
    assert!(
        longest > MAX_AGE,
        "the recovery took {longest:?} in one call: not longer than MAX_AGE, the test proves nothing"
    );
    assert_eq!(
        wedged, 0,
        "the worker looked wedged during its recovery ({longest:?})"
    );
    // After the call the heartbeat is the worker's own again: one that stops beating is wedged.
    std::thread::sleep(MAX_AGE * 2);
    assert!(
        heartbeat.is_wedged(MAX_AGE),
        "a worker that stopped beating looks wedged"
    );
}

/// A deallocation moves no data, so MAXIMUM TRANSFER does not split it: an UNMAP of a whole
/// 4 GiB namespace (a thin disk's FORMAT UNIT) is two Dataset Management commands (each range
/// up to what a request's u32 byte length holds), not 32 768 of MDTS each; and it deallocates.
#[test]
fn a_whole_disk_unmap_is_a_few_device_commands_not_one_per_transfer() {
    let config = NvmeSimConfig {
        num_blocks: 8 << 20, // 4 GiB of 512-byte blocks, RAM allocated only where written
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let buf = page_of(&pool, 0x5a);
    let lba = (8 << 20) - 8;
    let write = StoreOp::Write {
        lba,
        blocks: 8,
        fua: false,
    };
    assert_eq!(
        complete(q.as_mut(), 1, write, Some(buf.clone())),
        StoreStatus::Good
    );
    let before = sim.stats().commands;
    let unmap = StoreOp::Unmap {
        ranges: vec![(0, 8 << 20)].into(),
    };
    assert_eq!(complete(q.as_mut(), 2, unmap, None), StoreStatus::Good);
    let commands = sim.stats().commands - before;
    assert!(
        (2..=4).contains(&commands),
        "{commands} device commands for a whole-disk deallocation"
    );
    assert_reads_zeroes(q.as_mut(), 3, lba, &buf);
}

/// A 4 KiB command buffer of `pool`, every byte `fill`.
fn page_of(pool: &Arc<SgvPool>, fill: u8) -> IoBuffer {
    let buf = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), pool, 4096).expect("buffer"),
        4096,
    );
    buf.write_at(0, &[fill; 4096]);
    buf
}

/// The 8 blocks of 512 at `lba` read zeroes (into `buf`, filled with ones first).
fn assert_reads_zeroes(q: &mut dyn StoreQueue, tag: u64, lba: u64, buf: &IoBuffer) {
    buf.write_at(0, &[0xff; 4096]);
    let read = StoreOp::Read { lba, blocks: 8 };
    assert_eq!(complete(q, tag, read, Some(buf.clone())), StoreStatus::Good);
    let mut back = [0u8; 4096];
    buf.read_at(0, &mut back);
    assert!(
        back.iter().all(|&b| b == 0),
        "blocks {lba}.. read zeroes after the UNMAP"
    );
}

/// A controller whose Write Zeroes is limited (NVM Command Set Identify Controller WZSL, CNS
/// 06h byte 1: 2^1 pages of 4 KiB, 16 blocks of 512 bytes) refuses a longer one with Invalid
/// Field in Command: the store splits a WRITE SAME of zeroes without UNMAP (its write zeroes)
/// at WZSL, so one over 200 blocks, within MAXIMUM TRANSFER (MDTS 5: 256 blocks), succeeds in
/// 13 Write Zeroes and reads zeroes. Before the engine read WZSL it was one Write Zeroes of
/// 200 blocks, and failed.
#[test]
fn a_write_zeroes_is_split_at_the_controllers_write_zeroes_size_limit() {
    let config = NvmeSimConfig {
        num_blocks: 4096,
        wzsl: 1,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let zeroes = StoreOp::WriteZeroes {
        lba: 10,
        blocks: 200,
        deallocate: false,
    };
    let got = write_then(q.as_mut(), &pool, 512, 10, 200, zeroes);
    assert!(got.iter().all(|&b| b == 0), "the zeroed blocks read zeroes");
    drop(q);
    assert_eq!(store.failure(), None);
    assert_eq!(sim.stats().iommu_faults, 0);
}

/// A controller with Write Zeroes whose WZSL (CNS 06h byte 1: 1, 8 KiB) is below one block
/// (16 KiB) refuses every Write Zeroes, even of one block: the store zeroes a range as on a
/// controller without Write Zeroes, by writing zero blocks, for WRITE SAME of zeroes with and
/// without UNMAP, over more than one WRITE SAME chunk (64 blocks). It used to send Write
/// Zeroes of one block each, which the controller refused.
#[test]
fn a_wzsl_below_one_block_zeroes_by_writing_zero_blocks() {
    const BS: u32 = 16384;
    let config = NvmeSimConfig {
        block_size: BS,
        num_blocks: 1024,
        wzsl: 1,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    for (lba, deallocate) in [(10u64, false), (300, true)] {
        let zeroes = StoreOp::WriteZeroes {
            lba,
            blocks: 100,
            deallocate,
        };
        let got = write_then(q.as_mut(), &pool, BS as usize, lba, 100, zeroes);
        assert!(got.iter().all(|&b| b == 0), "deallocate {deallocate}: not zeroed");
    }
    drop(q);
    assert_eq!(store.failure(), None);
    assert_eq!(sim.stats().iommu_faults, 0);
}

/// A controller whose Dataset Management range is limited (NVM Command Set Identify Controller
/// DMRSL, CNS 06h) refuses a longer range with Invalid Field in Command: the store splits an
/// UNMAP at DMRSL, so a thin disk's UNMAP (and FORMAT UNIT) of 2^20 blocks succeeds in 16
/// Dataset Management commands and deallocates. Before the engine read DMRSL, the UNMAP was
/// one range of 2^20 blocks and failed.
#[test]
fn an_unmap_is_split_at_the_controllers_dataset_management_range_limit() {
    const DMRSL: u64 = 65536;
    const BLOCKS: u64 = 1 << 20;
    let config = NvmeSimConfig {
        num_blocks: 2 * BLOCKS, // 1 GiB of 512-byte blocks, RAM allocated only where written
        dmrsl: DMRSL as u32,
        ..NvmeSimConfig::default()
    };
    let (store, sim, pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    let buf = page_of(&pool, 0xa5);
    // Written at the start, across the first DMRSL boundary and at the end of the range.
    let written = [0, DMRSL - 4, BLOCKS - 8];
    for (tag, &lba) in written.iter().enumerate() {
        let write = StoreOp::Write {
            lba,
            blocks: 8,
            fua: false,
        };
        assert_eq!(
            complete(q.as_mut(), tag as u64 + 1, write, Some(buf.clone())),
            StoreStatus::Good
        );
    }
    let before = sim.stats().commands;
    let unmap = StoreOp::Unmap {
        ranges: vec![(0, BLOCKS as u32)].into(),
    };
    assert_eq!(
        complete(q.as_mut(), 10, unmap, None),
        StoreStatus::Good,
        "an UNMAP of 2^20 blocks on a controller with DMRSL 65536"
    );
    let commands = sim.stats().commands - before;
    assert_eq!(
        commands,
        BLOCKS / DMRSL,
        "one Dataset Management command per DMRSL blocks"
    );
    for (tag, &lba) in written.iter().enumerate() {
        assert_reads_zeroes(q.as_mut(), tag as u64 + 20, lba, &buf);
    }
}

/// VERIFY with BYTCHK 0 reads its blocks from the medium (SBC-4), so a block the device cannot
/// read fails it, naming the first: the store reads the range into a scratch chunk a window of
/// pieces at a time (1000 blocks here: 16 device reads of at most 64 blocks). It used to check
/// the range only and answer GOOD without reading anything.
#[test]
fn a_verify_reads_the_medium_and_fails_where_a_block_cannot_be_read() {
    let config = NvmeSimConfig {
        num_blocks: 4096,
        ..NvmeSimConfig::default()
    };
    let (store, sim, _pool) = nvme_store(config);
    let mut q = store.open_queue().expect("queue");
    // Nothing to read: GOOD, before any scratch is mapped.
    let nothing = StoreOp::Verify { lba: 100, blocks: 0 };
    assert_eq!(complete(q.as_mut(), 0, nothing, None), StoreStatus::Good);
    let verify = StoreOp::Verify {
        lba: 100,
        blocks: 1000,
    };
    let before = sim.stats().commands;
    assert_eq!(complete(q.as_mut(), 1, verify.clone(), None), StoreStatus::Good);
    let reads = sim.stats().commands - before;
    assert!(reads >= 16, "{reads} device commands for 1000 blocks");
    sim.inject("status:sct=2,sc=0x81".parse().expect("fault"));
    assert_eq!(
        complete(q.as_mut(), 2, verify, None),
        StoreStatus::ReadError { lba: 100 }
    );
    sim.clear_faults();
    drop(q);
    assert_eq!(store.failure(), None);
    assert_eq!(sim.stats().iommu_faults, 0);
}
