//! Tests of the IOMMU model: the map/unmap rules, translation across mappings, faults that move
//! no data, and unmap waiting for copies in progress.
// UNSAFETY: the tests own raw anonymous memory (mmap/munmap) to map into the IOMMU, and `map`
// itself is an unsafe fn.
#![allow(unsafe_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use super::Iommu;
use super::IommuFault;
use crate::DmaMapper;
use crate::HalError;

const PAGE: u64 = 4096;

/// Anonymous page-aligned memory accessed only by copies, as DMA memory must be.
struct TestMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this handle and only copied to or from through raw pointers.
unsafe impl Send for TestMemory {}
// SAFETY: as for Send; concurrent raw copies are what the IOMMU model does to DMA memory.
unsafe impl Sync for TestMemory {}

impl TestMemory {
    fn new(len: usize, fill: u8) -> Self {
        // SAFETY: an anonymous private mapping with no address hint; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes failed");
        let mem = Self { ptr: ptr.cast(), len };
        // SAFETY: `ptr..ptr+len` is the mapping just made and nothing else refers to it.
        unsafe { std::ptr::write_bytes(mem.ptr, fill, len) };
        mem
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len);
        let mut out = vec![0; len];
        // SAFETY: the range was checked to lie inside the mapping, which lives as long as self;
        // it may be mapped on the model, so it is copied byte-wise atomically, as the model's
        // copies are (the `DmaMapper::map` contract).
        unsafe { crate::shared_mem::copy_from_shared_into(self.ptr.add(offset), &mut out) };
        out
    }

    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len);
        // SAFETY: as in `read`; the memory is never borrowed as a Rust reference.
        unsafe { crate::shared_mem::copy_to_shared(data, self.ptr.add(offset)) };
    }
}

impl Drop for TestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`; no reference into it exists.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Map `mem` at `iova`.
fn map(iommu: &Iommu, iova: u64, mem: &TestMemory) -> Result<(), HalError> {
    // SAFETY: every test unmaps (or drops the Iommu) before dropping `mem`, and touches `mem`
    // only through raw copies.
    unsafe { iommu.map(iova, mem.addr(), mem.len as u64) }
}

fn map_errno(result: Result<(), HalError>) -> Option<i32> {
    match result {
        Err(HalError::Map { source, .. }) => source.raw_os_error(),
        other => panic!("expected a map error, got {other:?}"),
    }
}

#[test]
fn map_refuses_zero_unaligned_null_and_wrapping_ranges() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(2 * PAGE as usize, 0);
    let host = mem.addr();
    let cases = [
        (0x1_0000, host, 0),                   // zero length
        (0x1_0800, host, PAGE),                // unaligned IOVA
        (0x1_0000, host + 8, PAGE),            // unaligned host address
        (0x1_0000, host, PAGE + 512),          // unaligned length
        (0x1_0000, 0, PAGE),                   // null host address
        (u64::MAX - PAGE + 1, host, 2 * PAGE), // IOVA range wraps
    ];
    for (iova, host, len) in cases {
        // SAFETY: every case is refused, so nothing is mapped.
        let result = unsafe { iommu.map(iova, host, len) };
        assert_eq!(
            map_errno(result),
            Some(libc::EINVAL),
            "iova {iova:#x} host {host:#x} len {len:#x}"
        );
    }
    assert_eq!(iommu.mappings(), 0);
    assert_eq!(iommu.mapped_bytes(), 0);
}

#[test]
fn map_refuses_overlaps_and_accepts_neighbours() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(4 * PAGE as usize, 0);
    // Existing mapping: 0x10000..0x12000.
    // SAFETY: `mem` outlives `iommu`'s mappings (unmapped by dropping `iommu` first).
    unsafe { iommu.map(0x1_0000, mem.addr(), 2 * PAGE) }.expect("first mapping");
    let overlapping = [
        (0x1_0000, 2 * PAGE), // identical
        (0x1_1000, PAGE),     // inside
        (0xF000, 2 * PAGE),   // ends inside
        (0x1_1000, 2 * PAGE), // starts inside
        (0xF000, 4 * PAGE),   // contains it
    ];
    for (iova, len) in overlapping {
        // SAFETY: refused, nothing mapped.
        let result = unsafe { iommu.map(iova, mem.addr(), len) };
        assert_eq!(
            map_errno(result),
            Some(libc::EEXIST),
            "iova {iova:#x} len {len:#x}"
        );
    }
    // Neighbours on both sides touch but do not overlap.
    // SAFETY: as above.
    unsafe { iommu.map(0xF000, mem.addr(), PAGE) }.expect("mapping below");
    // SAFETY: as above.
    unsafe { iommu.map(0x1_2000, mem.addr(), PAGE) }.expect("mapping above");
    assert_eq!(iommu.mappings(), 3);
    assert_eq!(iommu.mapped_bytes(), 4 * PAGE);
    drop(iommu);
}

/// Every unmap but one of a whole mapping is refused with nothing unmapped: the requests
/// `VfioDma` refuses too (`crate::unmap_rule_tests`).
#[test]
fn the_simulator_refuses_every_unmap_but_one_whole_mapping() {
    let iommu = Iommu::new("sim-test");
    crate::unmap_rule_tests::check(&iommu, &|| iommu.mappings());
}

#[test]
fn an_unmapped_range_is_out_of_the_devices_reach() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(4 * PAGE as usize, 0);
    map(&iommu, 0x2_0000, &mem).expect("map");
    iommu.unmap(0x2_0000, 4 * PAGE).expect("exact unmap");
    assert_eq!(iommu.mappings(), 0);
    assert_eq!(iommu.mapped_bytes(), 0);
    let mut out = [0u8; 4];
    assert!(iommu.dma_read(0x2_0000, &mut out).is_err());
}

#[test]
fn map_beyond_the_limit_is_refused_with_enomem() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(4 * PAGE as usize, 0);
    iommu.set_map_limit(Some(3 * PAGE));
    // SAFETY: `mem` outlives the mappings (unmapped below).
    unsafe { iommu.map(0x1_0000, mem.addr(), 2 * PAGE) }.expect("within the limit");
    // SAFETY: refused, nothing mapped.
    let result = unsafe { iommu.map(0x8_0000, mem.addr(), 2 * PAGE) };
    assert_eq!(map_errno(result), Some(libc::ENOMEM));
    assert_eq!(iommu.mapped_bytes(), 2 * PAGE);
    iommu.set_map_limit(None);
    // SAFETY: as above.
    unsafe { iommu.map(0x8_0000, mem.addr(), 2 * PAGE) }.expect("no limit");
    iommu.unmap(0x1_0000, 2 * PAGE).expect("unmap");
    iommu.unmap(0x8_0000, 2 * PAGE).expect("unmap");
}

#[test]
fn dma_crosses_adjacent_mappings_of_separate_host_memory() {
    let iommu = Iommu::new("sim-test");
    // Two host buffers that are not adjacent in host memory, adjacent in IOVA space.
    let low = TestMemory::new(PAGE as usize, 0);
    let high = TestMemory::new(2 * PAGE as usize, 0);
    map(&iommu, 0x10_0000, &low).expect("map low");
    map(&iommu, 0x10_1000, &high).expect("map high");

    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let iova = 0x10_1000 - 1000;
    iommu.dma_write(iova, &data).expect("write across the boundary");
    assert_eq!(low.read(PAGE as usize - 1000, 1000), data[..1000]);
    assert_eq!(high.read(0, 2000), data[1000..]);
    // Bytes around the written range are untouched.
    assert_eq!(low.read(0, PAGE as usize - 1000), vec![0; PAGE as usize - 1000]);
    assert_eq!(high.read(2000, 100), vec![0; 100]);

    let mut back = vec![0u8; 3000];
    iommu.dma_read(iova, &mut back).expect("read across the boundary");
    assert_eq!(back, data);

    // The device sees what the host wrote, across the boundary too.
    low.write(PAGE as usize - 4, b"host");
    high.write(0, b"data");
    let mut seen = [0u8; 8];
    iommu
        .dma_read(0x10_1000 - 4, &mut seen)
        .expect("read host-written bytes");
    assert_eq!(&seen, b"hostdata");
    assert_eq!(iommu.fault_count(), 0);

    iommu.unmap(0x10_0000, PAGE).expect("unmap low");
    iommu.unmap(0x10_1000, 2 * PAGE).expect("unmap high");
}

#[test]
fn access_to_any_unmapped_byte_faults_and_moves_no_data() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(PAGE as usize, 0x5A);
    map(&iommu, 0x20_0000, &mem).expect("map");

    // A write that runs one byte past the mapping: nothing at all is written.
    let write = iommu.dma_write(0x20_0000 + 100, &vec![0xEE; PAGE as usize - 99]);
    assert_eq!(
        write,
        Err(IommuFault {
            iova: 0x20_0000 + 100,
            len: PAGE - 99,
            write: true
        })
    );
    assert_eq!(mem.read(0, PAGE as usize), vec![0x5A; PAGE as usize]);

    // A read that starts before the mapping: the destination is left as it was.
    let mut out = vec![0xAAu8; 64];
    let read = iommu.dma_read(0x20_0000 - 32, &mut out);
    assert_eq!(
        read,
        Err(IommuFault {
            iova: 0x20_0000 - 32,
            len: 64,
            write: false
        })
    );
    assert_eq!(out, vec![0xAA; 64]);

    // An access whose range wraps around the IOVA space.
    let mut small = [0u8; 8];
    assert!(iommu.dma_read(u64::MAX - 3, &mut small).is_err());

    assert_eq!(iommu.fault_count(), 3);
    let faults = iommu.faults();
    assert_eq!(faults.len(), 3);
    assert_eq!(faults[0], write.expect_err("fault"));
    assert_eq!(faults[1], read.expect_err("fault"));
    assert!(!faults[2].write);

    // A zero-length access touches no byte, so it is not a fault.
    iommu.dma_write(0x99_0000, &[]).expect("empty write");
    assert_eq!(iommu.fault_count(), 3);
    iommu.unmap(0x20_0000, PAGE).expect("unmap");
}

#[test]
fn fault_log_keeps_the_first_faults_and_counts_all() {
    let iommu = Iommu::new("sim-test");
    for i in 0..100u64 {
        assert!(iommu.dma_write(i * PAGE, &[1]).is_err());
    }
    assert_eq!(iommu.fault_count(), 100);
    let faults = iommu.faults();
    assert_eq!(faults.len(), super::iommu::FAULTS_KEPT);
    assert_eq!(faults[0].iova, 0);
    assert_eq!(
        faults[super::iommu::FAULTS_KEPT - 1].iova,
        (super::iommu::FAULTS_KEPT as u64 - 1) * PAGE
    );
}

#[test]
fn unmap_waits_for_a_copy_in_progress() {
    // A large copy keeps the read lock long enough that the unmap below almost always lands in
    // the middle of one; the unmap must then wait for it to finish before returning.
    const LEN: usize = 64 << 20;
    const IOVA: u64 = 0x1_0000_0000;
    let iommu = Arc::new(Iommu::new("sim-test"));
    let mem = TestMemory::new(LEN, 0xC3);
    map(&iommu, IOVA, &mem).expect("map");

    let (done_tx, done_rx) = mpsc::channel();
    let device = Arc::clone(&iommu);
    std::thread::spawn(move || {
        let mut out = vec![0u8; LEN];
        let mut complete_copies = 0u64;
        // Copy until the mapping is gone; every copy that succeeds must be complete and intact.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            out.fill(0);
            match device.dma_read(IOVA, &mut out) {
                Ok(()) => {
                    if out.iter().any(|&b| b != 0xC3) {
                        let _ = done_tx.send(Err("a copy returned torn data"));
                        return;
                    }
                    complete_copies += 1;
                }
                Err(_) => {
                    let _ = done_tx.send(Ok(complete_copies));
                    return;
                }
            }
        }
        let _ = done_tx.send(Err("the mapping never went away"));
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    while iommu.copies_in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the device thread never started a copy"
        );
        std::thread::yield_now();
    }
    iommu.unmap(IOVA, LEN as u64).expect("unmap");
    // The copy that was in progress has finished, and no new copy can translate this range.
    assert_eq!(iommu.copies_in_flight(), 0);
    // Freeing the memory now is what a pool does after unmap; a copy still running would fault.
    drop(mem);

    let copies = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("device thread finished")
        .expect("device thread saw only whole copies");
    assert!(copies >= 1, "the copy in progress during unmap completed");
    assert_eq!(iommu.fault_count(), 1);
}

/// Clearing Bus Master Enable stops every later DMA, read or write, before it touches memory:
/// refused and counted as blocked, not as IOMMU faults (nothing reached the IOMMU).
#[test]
fn no_dma_passes_once_bus_mastering_is_disabled() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(PAGE as usize, 0x5A);
    map(&iommu, 0x1_0000, &mem).expect("map");
    let mut out = [0u8; 16];
    iommu
        .dma_read(0x1_0000, &mut out)
        .expect("DMA while bus mastering");
    assert_eq!(out, [0x5A; 16]);

    iommu.disable_bus_master();
    let mut out = [0u8; 16];
    assert!(iommu.dma_read(0x1_0000, &mut out).is_err());
    assert_eq!(out, [0u8; 16], "nothing was read");
    assert!(iommu.dma_write(0x1_0000, &[0xFF; 16]).is_err());
    assert_eq!(mem.read(0, 16), [0x5A; 16], "nothing was written");
    assert_eq!((iommu.blocked_dmas(), iommu.fault_count()), (2, 0));
    iommu.unmap(0x1_0000, PAGE).expect("unmap");
}

/// A completion entry's pieces in one call: all land when every piece is mapped; when any is
/// not, the fault names that piece and nothing at all is written, not even the mapped pieces.
#[test]
fn an_ordered_write_lands_whole_or_not_at_all() {
    let iommu = Iommu::new("sim-test");
    let mem = TestMemory::new(PAGE as usize, 0x00);
    map(&iommu, 0x40_0000, &mem).expect("map");
    iommu
        .dma_write_ordered(&[(0x40_0000, &[1, 2, 3]), (0x40_0004, &[5; 12]), (0x40_0003, &[4])])
        .expect("every piece mapped");
    let mut entry = vec![1, 2, 3, 4];
    entry.extend([5; 12]);
    assert_eq!(mem.read(0, 16), entry);

    let fault = iommu
        .dma_write_ordered(&[(0x40_0010, &[9; 4]), (0x40_1000 - 2, &[9; 4])])
        .expect_err("the second piece runs past the mapping");
    assert_eq!(
        fault,
        IommuFault {
            iova: 0x40_1000 - 2,
            len: 4,
            write: true
        }
    );
    assert_eq!(
        mem.read(16, 4),
        [0; 4],
        "the mapped first piece was not written either"
    );
    assert_eq!(mem.read(PAGE as usize - 2, 2), [0; 2]);
    assert_eq!(iommu.fault_count(), 1);

    iommu.disable_bus_master();
    assert!(iommu.dma_write_ordered(&[(0x40_0000, &[7])]).is_err());
    assert_eq!(mem.read(0, 1), [1], "nothing was written with bus mastering off");
    assert_eq!(iommu.blocked_dmas(), 1);
    iommu.unmap(0x40_0000, PAGE).expect("unmap");
}

/// Writes batched under one hold of the table behave as the same writes one by one: each lands
/// whole or faults alone (naming itself, writing nothing, the earlier ones landed), a write
/// just past the mapping the one before it hit is checked against the table, not waved through
/// by the remembered mapping, and writes across two mappings or after a fault go on landing.
#[test]
fn batched_writes_land_or_fault_one_by_one() {
    let iommu = Iommu::new("sim-test");
    let low = TestMemory::new(2 * PAGE as usize, 0);
    let high = TestMemory::new(PAGE as usize, 0);
    map(&iommu, 0x50_0000, &low).expect("map low");
    map(&iommu, 0x50_2000, &high).expect("map high");
    // 0x50_3000.. is unmapped.
    let mut token = crate::locks::LockToken::root();
    let results = iommu.dma_batch_under(&mut token, |writes| {
        [
            writes.write(0x50_0000, &[1; 8]),
            // In the mapping of the write before it.
            writes.write(0x50_1ff8, &[2; 8]),
            // Starts in the same mapping, runs into the next: the general path.
            writes.write(0x50_1ffc, &[3; 8]),
            // Inside the high mapping, then one starting there and running past its end.
            writes.write(0x50_2100, &[4; 4]),
            writes.write(0x50_2ffe, &[5; 4]),
            // Entirely unmapped, then a good write after the faults.
            writes.write(0x50_3000, &[6; 4]),
            writes.write(0x50_0100, &[7; 4]),
        ]
    });
    let fault = |iova, len| {
        Err(IommuFault {
            iova,
            len,
            write: true,
        })
    };
    assert_eq!(
        results,
        [
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            fault(0x50_2ffe, 4),
            fault(0x50_3000, 4),
            Ok(())
        ]
    );
    assert_eq!(low.read(0, 8), [1; 8]);
    assert_eq!(low.read(0x1ff8, 4), [2; 4]);
    assert_eq!(low.read(0x1ffc, 4), [3; 4]);
    assert_eq!(high.read(0, 4), [3; 4]);
    assert_eq!(high.read(0x100, 4), [4; 4]);
    assert_eq!(high.read(0xffe, 2), [0; 2], "the faulting write wrote nothing");
    assert_eq!(low.read(0x100, 4), [7; 4]);
    assert_eq!(iommu.fault_count(), 2);
    assert_eq!(
        iommu.faults(),
        [fault(0x50_2ffe, 4).unwrap_err(), fault(0x50_3000, 4).unwrap_err()]
    );
    assert_eq!(
        iommu.copies_in_flight(),
        0,
        "the batch counted as a copy only while open"
    );

    iommu.disable_bus_master();
    let refused = iommu.dma_batch_under(&mut token, |writes| writes.write(0x50_0000, &[9]));
    assert!(refused.is_err());
    assert_eq!(low.read(0, 1), [1], "nothing was written with bus mastering off");
    assert_eq!((iommu.blocked_dmas(), iommu.fault_count()), (1, 2));
    iommu.unmap(0x50_0000, 2 * PAGE).expect("unmap low");
    iommu.unmap(0x50_2000, PAGE).expect("unmap high");
}

/// An unmap waits for a batch of writes as for one copy: the batch is a copy in flight from its
/// first translation to its last byte.
#[test]
fn unmap_waits_for_a_batch_of_writes() {
    let iommu = Arc::new(Iommu::new("sim-test"));
    let mem = TestMemory::new(PAGE as usize, 0);
    map(&iommu, 0x60_0000, &mem).expect("map");
    let (in_batch_tx, in_batch_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let device = Arc::clone(&iommu);
    let writer = std::thread::spawn(move || {
        let mut token = crate::locks::LockToken::root();
        device.dma_batch_under(&mut token, |writes| {
            let first = writes.write(0x60_0000, &[1; 4]);
            in_batch_tx.send(()).expect("send");
            // The test's unmap starts meanwhile and must wait for this write too.
            let _ = go_rx.recv_timeout(Duration::from_millis(200));
            let second = writes.write(0x60_0004, &[2; 4]);
            (first, second)
        })
    });
    in_batch_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the batch began");
    assert_eq!(iommu.copies_in_flight(), 1);
    let unmapper = {
        let iommu = Arc::clone(&iommu);
        std::thread::spawn(move || iommu.unmap(0x60_0000, PAGE))
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !unmapper.is_finished(),
        "unmap returned while a batch held the mapping"
    );
    drop(go_tx);
    assert_eq!(writer.join().expect("writer"), (Ok(()), Ok(())));
    unmapper.join().expect("unmapper").expect("unmap");
    assert_eq!(mem.read(0, 8), [1, 1, 1, 1, 2, 2, 2, 2]);
    assert_eq!(iommu.copies_in_flight(), 0);
}

/// Reads in a batch: `check_read` refuses what a read would (recording the same fault, or the
/// blocked count with bus mastering off) and moves nothing; a read it admitted then passes in
/// the same batch, across two mappings too. Bus mastering is read once per batch: cleared while
/// a batch is open, it stops the next batch, not the open one, and `disable_bus_master` returns
/// only once that batch has ended.
#[test]
fn a_batch_checks_reads_before_it_moves_anything() {
    let iommu = Arc::new(Iommu::new("sim-test"));
    let low = TestMemory::new(PAGE as usize, 0x11);
    let high = TestMemory::new(PAGE as usize, 0x22);
    map(&iommu, 0x70_0000, &low).expect("map low");
    map(&iommu, 0x70_1000, &high).expect("map high");
    let mut token = crate::locks::LockToken::root();
    let mut out = [0u8; 8];
    let (unmapped, across) = iommu.dma_batch_under(&mut token, |batch| {
        let unmapped = batch.check_read(0x70_1ffc, 8);
        let across = batch.check_read(0x70_0ffc, 8);
        (unmapped, across.and_then(|()| batch.read(0x70_0ffc, &mut out)))
    });
    assert_eq!(
        unmapped,
        Err(IommuFault {
            iova: 0x70_1ffc,
            len: 8,
            write: false
        })
    );
    assert_eq!(iommu.faults(), [unmapped.unwrap_err()]);
    assert_eq!(across, Ok(()));
    assert_eq!(out, [0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x22, 0x22]);

    let (opened_tx, opened_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let device = Arc::clone(&iommu);
    let reader = std::thread::spawn(move || {
        let mut token = crate::locks::LockToken::root();
        device.dma_batch_under(&mut token, |batch| {
            opened_tx.send(()).expect("send");
            // Bus mastering is cleared meanwhile: this batch read it when it opened.
            let _ = go_rx.recv_timeout(Duration::from_millis(200));
            let mut byte = [0u8; 1];
            batch.read(0x70_0000, &mut byte).map(|()| byte[0])
        })
    });
    opened_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the batch opened");
    let disabler = {
        let iommu = Arc::clone(&iommu);
        std::thread::spawn(move || iommu.disable_bus_master())
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !disabler.is_finished(),
        "disable_bus_master returned while a batch was open"
    );
    drop(go_tx);
    assert_eq!(reader.join().expect("reader"), Ok(0x11));
    disabler.join().expect("disabler");
    let refused = iommu.dma_batch_under(&mut token, |batch| batch.check_read(0x70_0000, 1));
    assert!(refused.is_err());
    assert_eq!((iommu.blocked_dmas(), iommu.fault_count()), (1, 1));
    iommu.unmap(0x70_0000, PAGE).expect("unmap low");
    iommu.unmap(0x70_1000, PAGE).expect("unmap high");
}
