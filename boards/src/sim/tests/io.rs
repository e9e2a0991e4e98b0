//! Data path: WRITE/READ (contiguous and SGL), FLUSH, WRITE_ZEROES, DEALLOCATE, descriptor
//! errors, phase and wrap, a full completion ring, stale descriptors, DMA faults, interrupts
//! (accelerator.md §3–§5, §8, §9).

use std::os::fd::AsFd;

use scst_accel_hal::fdio::poll_readable;

use super::*;
use crate::sca1::desc::cq_status;
use crate::sca1::desc::flags;
use crate::sim::Backing;

#[test]
fn write_then_read_contiguous_returns_the_data() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let data = pattern(8192, 3);
    assert_eq!(write_then_read(&mut rig, &mut tq, 10, &data), data);
    let stats = rig.sim.stats();
    assert_eq!((stats.bytes_written, stats.bytes_read), (8192, 8192));
    assert_eq!(
        (stats.descriptors, stats.completions, stats.iommu_faults),
        (2, 2, 0)
    );
}

/// A WRITE and a READ of up to 1 MiB, within a chunk of the RAM medium or across chunks,
/// contiguous or through a scatter list, are copied in place between the medium and host
/// memory (every transfer of a file medium goes through the engine's bounce buffer:
/// `a_sparse_file_backs_the_medium`): what one wrote the others read, each chunk at its place.
#[test]
fn transfers_in_place_across_chunks_and_pieces_agree() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let chunk_lba = 65536 / 512;
    let across = pattern(8192, 9);
    // 4 KiB before the chunk boundary and 4 KiB after it.
    assert_eq!(write_then_read(&mut rig, &mut tq, chunk_lba - 8, &across), across);
    // Each half alone lies inside one chunk...
    let (dst, dst_iova) = rig.map_data(4096);
    for (tag, lba, half) in [
        (10u16, chunk_lba - 8, &across[..4096]),
        (11, chunk_lba, &across[4096..]),
    ] {
        tq.submit(&rig, desc(opcode::READ, tag, lba, 4096, dst_iova));
        assert_eq!((tq.next(&rig).status), cq_status::OK);
        assert_eq!(rig.read_buf(dst, 0, 4096), half, "LBA {lba}");
    }
    // ...and a write inside one chunk is read across the boundary.
    let inside = pattern(4096, 10);
    assert_eq!(write_then_read(&mut rig, &mut tq, chunk_lba + 8, &inside), inside);
    let (whole, whole_iova) = rig.map_data(3 * 4096);
    tq.submit(&rig, desc(opcode::READ, 12, chunk_lba - 8, 3 * 4096, whole_iova));
    assert_eq!((tq.next(&rig).status), cq_status::OK);
    assert_eq!(rig.read_buf(whole, 0, 8192), across);
    assert_eq!(rig.read_buf(whole, 8192, 4096), inside);
    // The same 12 KiB through a scatter list of two buffers: each chunk scattered over them.
    let (a, a_iova) = rig.map_data(4096);
    let (b, b_iova) = rig.map_data(8192);
    let (sgl, sgl_iova) = rig.map_data(4096);
    rig.write_sgl(sgl, &[(a_iova, 4096), (b_iova, 8192)]);
    tq.submit(
        &rig,
        sgl_desc(opcode::READ, 14, chunk_lba - 8, 3 * 4096, sgl_iova, 2),
    );
    assert_eq!((tq.next(&rig).status), cq_status::OK);
    assert_eq!(rig.read_buf(a, 0, 4096), across[..4096]);
    assert_eq!(rig.read_buf(b, 0, 4096), across[4096..]);
    assert_eq!(rig.read_buf(b, 4096, 4096), inside);
    // Blocks never written read as zeroes in place too.
    rig.buf(dst).fill(0, 4096, 0xee);
    tq.submit(&rig, desc(opcode::READ, 13, 4 * chunk_lba, 4096, dst_iova));
    assert_eq!((tq.next(&rig).status), cq_status::OK);
    assert!(rig.read_buf(dst, 0, 4096).iter().all(|&b| b == 0));
}

/// A 128 KiB READ in place (two medium chunks, two DMA steps) into a host segment whose second
/// half is unmapped: the first 64 KiB arrive, the completion says so (`bytes`) and names the
/// first unmapped IOVA, as the bounce path's step by step copy does. Through a 256 KiB READ
/// starting inside a chunk (five chunks), every piece lands at its place.
#[test]
fn a_read_in_place_that_faults_reports_the_chunks_that_arrived() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let chunk_lba = 65536 / 512;
    let data = pattern(128 << 10, 21);
    assert_eq!(write_then_read(&mut rig, &mut tq, 2 * chunk_lba, &data), data);
    let (dst, dst_iova) = rig.map_data(64 << 10);
    rig.buf(dst).fill(0, 64 << 10, 0xee);
    tq.submit(&rig, desc(opcode::READ, 5, 2 * chunk_lba, 128 << 10, dst_iova));
    let c = tq.next(&rig);
    assert_eq!(
        (c.tag, c.status, c.bytes, c.detail),
        (5, cq_status::DMA_FAULT, 64 << 10, (dst_iova + (64 << 10)) as u32)
    );
    assert_eq!(rig.read_buf(dst, 0, 64 << 10), data[..64 << 10]);

    let big = pattern(256 << 10, 22);
    assert_eq!(write_then_read(&mut rig, &mut tq, 8, &big), big);
}

/// A 96 KiB WRITE in place from a scatter list, across three medium chunks, its second
/// segment mapped only in part: every DMA step is checked before any block changes, so the
/// completion is DMA_FAULT with `bytes` what the buffered path had gathered (the first
/// segment), `detail` and the recorded fault naming the step that failed (the second segment's
/// first 64 KiB, a device read), and no block changed in any of the chunks. The same WRITE with
/// that segment mapped whole lands every byte.
#[test]
fn a_write_in_place_that_faults_changes_no_block() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    // 12 KiB before the end of the first chunk: 12 KiB, 64 KiB and 20 KiB of three chunks.
    let lba = 65536 / 512 - 24;
    let old = pattern(96 << 10, 30);
    assert_eq!(write_then_read(&mut rig, &mut tq, lba, &old), old);
    let new = pattern(96 << 10, 31);
    let (a, a_iova) = rig.map_data(32 << 10);
    rig.buf(a).write_at(0, &new[..32 << 10]);
    let (sgl, sgl_iova) = rig.map_data(4096);
    let (b, b_iova) = rig.map_data(32 << 10);
    rig.buf(b).write_at(0, &new[32 << 10..64 << 10]);
    rig.write_sgl(sgl, &[(a_iova, 32 << 10), (b_iova, 64 << 10)]);
    tq.submit(&rig, sgl_desc(opcode::WRITE, 7, lba, 96 << 10, sgl_iova, 2));
    let c = tq.next(&rig);
    assert_eq!(
        (c.tag, c.status, c.bytes, c.detail),
        (7, cq_status::DMA_FAULT, 32 << 10, b_iova as u32)
    );
    let fault = *rig.sim.iommu().faults().last().expect("recorded");
    assert_eq!((fault.iova, fault.len, fault.write), (b_iova, 64 << 10, false));
    let (dst, dst_iova) = rig.map_data(96 << 10);
    tq.submit(&rig, desc(opcode::READ, 8, lba, 96 << 10, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert_eq!(rig.read_buf(dst, 0, 96 << 10), old, "no block changed");

    let (whole, whole_iova) = rig.map_data(64 << 10);
    rig.buf(whole).write_at(0, &new[32 << 10..]);
    rig.write_sgl(sgl, &[(a_iova, 32 << 10), (whole_iova, 64 << 10)]);
    tq.submit(&rig, sgl_desc(opcode::WRITE, 9, lba, 96 << 10, sgl_iova, 2));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    tq.submit(&rig, desc(opcode::READ, 10, lba, 96 << 10, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert_eq!(rig.read_buf(dst, 0, 96 << 10), new);
}

#[test]
fn write_then_read_through_scatter_lists() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 1, 16);
    let data = pattern(3 * 4096, 9);

    // WRITE gathers from three buffers: 4096 + 512 + 7680 bytes.
    let pieces = [4096usize, 512, 7680];
    let mut entries = Vec::new();
    let mut at = 0;
    for len in pieces {
        let (b, iova) = rig.map_data(len);
        rig.buf(b).write_at(0, &data[at..at + len]);
        entries.push((iova, len as u32));
        at += len;
    }
    let (sgl, sgl_iova) = rig.map_data(4096);
    rig.write_sgl(sgl, &entries);
    tq.submit(
        &rig,
        sgl_desc(opcode::WRITE, 7, 100, data.len() as u32, sgl_iova, 3),
    );
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.bytes), (7, cq_status::OK, data.len() as u32));

    // READ scatters into two buffers split differently: 6144 + 6144.
    let (a, a_iova) = rig.map_data(6144);
    let (b, b_iova) = rig.map_data(6144);
    let (sgl2, sgl2_iova) = rig.map_data(4096);
    rig.write_sgl(sgl2, &[(a_iova, 6144), (b_iova, 6144)]);
    tq.submit(
        &rig,
        sgl_desc(opcode::READ, 8, 100, data.len() as u32, sgl2_iova, 2),
    );
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.bytes), (8, cq_status::OK, data.len() as u32));
    let mut back = rig.read_buf(a, 0, 6144);
    back.extend(rig.read_buf(b, 0, 6144));
    assert_eq!(back, data);

    // A scatter list whose lengths do not add up is an invalid field; so is an empty one.
    rig.write_sgl(sgl2, &[(a_iova, 512)]);
    tq.submit(&rig, sgl_desc(opcode::READ, 9, 100, 1024, sgl2_iova, 1));
    assert_eq!(tq.next(&rig).status, cq_status::INVALID_FIELD);
    tq.submit(&rig, sgl_desc(opcode::READ, 10, 100, 512, sgl2_iova, 0));
    assert_eq!(tq.next(&rig).status, cq_status::INVALID_FIELD);
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let data = pattern(4096, 1);
    assert_eq!(write_then_read(&mut rig, &mut tq, 0, &data), data);

    tq.submit(
        &rig,
        Descriptor {
            flags: flags::FUA,
            ..desc(opcode::FLUSH, 3, 0, 0, 0)
        },
    );
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.bytes), (3, cq_status::OK, 0));

    // Zero blocks 1..3 (bytes 512..1536).
    tq.submit(&rig, desc(opcode::WRITE_ZEROES, 4, 1, 1024, 0));
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.bytes), (4, cq_status::OK, 1024));
    let (dst, dst_iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 5, 0, 4096, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    let back = rig.read_buf(dst, 0, 4096);
    assert_eq!(&back[..512], &data[..512]);
    assert!(back[512..1536].iter().all(|&b| b == 0), "zeroed blocks");
    assert_eq!(&back[1536..], &data[1536..]);

    tq.submit(&rig, desc(opcode::DEALLOCATE, 6, 0, 4096, 0));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    rig.buf(dst).fill(0, 4096, 0xee);
    tq.submit(&rig, desc(opcode::READ, 7, 0, 4096, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert!(
        rig.read_buf(dst, 0, 4096).iter().all(|&b| b == 0),
        "deallocated blocks read zeroes"
    );
}

#[test]
fn bad_descriptors_complete_with_their_status_and_the_queue_keeps_running() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let (_, iova) = rig.map_data(512 * 1024);
    let cases = [
        (
            desc(opcode::READ, 1, 8191, 1024, iova),
            cq_status::LBA_RANGE,
            8192,
        ),
        (
            desc(opcode::WRITE, 2, 9000, 512, iova),
            cq_status::LBA_RANGE,
            9000,
        ),
        (
            desc(opcode::WRITE_ZEROES, 3, 8000, 512 * 193, 0),
            cq_status::LBA_RANGE,
            8192,
        ),
        (desc(9, 4, 0, 512, iova), cq_status::INVALID_OPCODE, 9),
        (desc(opcode::READ, 5, 0, 100, iova), cq_status::INVALID_FIELD, 100),
        (desc(opcode::READ, 6, 0, 0, iova), cq_status::INVALID_FIELD, 0),
        (
            desc(opcode::READ, 7, 0, 512 * 1024, iova),
            cq_status::INVALID_FIELD,
            512 * 1024,
        ),
        (
            Descriptor {
                flags: 0x80,
                ..desc(opcode::READ, 8, 0, 512, iova)
            },
            cq_status::INVALID_FIELD,
            0,
        ),
        (
            Descriptor {
                reserved: 1,
                ..desc(opcode::READ, 9, 0, 512, iova)
            },
            cq_status::INVALID_FIELD,
            0,
        ),
    ];
    for (d, status, detail) in cases {
        tq.submit(&rig, d);
        let c = tq.next(&rig);
        assert_eq!((c.tag, c.status, c.detail), (d.tag, status, detail), "{d:?}");
    }
    assert_eq!(rig.qread(0, queue::Q_STATUS), 0, "not halted");
    tq.submit(&rig, desc(opcode::READ, 10, 8191, 512, iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK, "the last block is in range");
}

/// §3.1: a COPY whose source or destination range leaves the medium completes LBA_RANGE with
/// the low 32 bits of the offending range's first block, not the first block past the end.
#[test]
fn a_copy_out_of_range_reports_the_offending_ranges_first_block() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let copy = |tag, dst: u64, src: u64| desc(opcode::COPY, tag, dst, 1024, src);
    let cases = [
        (copy(1, 8191, 0), 8191, "destination straddles the end"),
        (copy(2, 9000, 0), 9000, "destination past the end"),
        (
            copy(3, (1 << 32) | 8191, 0),
            8191,
            "low 32 bits of the destination",
        ),
        (copy(4, 0, 8191), 8191, "source straddles the end"),
    ];
    for (d, detail, what) in cases {
        tq.submit(&rig, d);
        let c = tq.next(&rig);
        assert_eq!(
            (c.tag, c.status, c.detail),
            (d.tag, cq_status::LBA_RANGE, detail),
            "{what}"
        );
    }
}

#[test]
fn phase_flips_each_time_the_completion_ring_wraps() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 4);
    let (_, iova) = rig.map_data(4096);
    let mut seen = Vec::new();
    // Ten descriptors through a ring of four, at most three outstanding (one slot stays free).
    for batch in [&[0u16, 1, 2][..], &[3, 4], &[5, 6, 7], &[8, 9]] {
        for &tag in batch {
            tq.push(&rig, desc(opcode::READ, tag, u64::from(tag), 512, iova));
        }
        tq.ring(&rig);
        for _ in batch {
            let slot = tq.head;
            let phase = tq.phase;
            let c = tq.next(&rig);
            assert_eq!(c.flags & CQ_PHASE != 0, phase, "slot {slot}");
            assert_eq!(c.status, cq_status::OK);
            seen.push((c.tag, c.sq_head, phase));
        }
    }
    let tags: Vec<u16> = seen.iter().map(|s| s.0).collect();
    assert_eq!(tags, (0..10).collect::<Vec<u16>>());
    let heads: Vec<u16> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        heads,
        vec![1, 2, 3, 0, 1, 2, 3, 0, 1, 2],
        "sq_head after each descriptor"
    );
    let phases: Vec<bool> = seen.iter().map(|s| s.2).collect();
    let want = [true, true, true, true, false, false, false, false, true, true];
    assert_eq!(phases, want, "PHASE 1 on the first pass, flipped on every wrap");
}

#[test]
fn a_full_completion_ring_stalls_the_engine_until_the_head_moves() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 4);
    let (_, iova) = rig.map_data(4096);
    for tag in 1..=3 {
        tq.push(&rig, desc(opcode::READ, tag, 0, 512, iova));
    }
    tq.ring(&rig);
    assert!(
        wait_until(|| tq.peek(&rig, 2).is_some()),
        "three completions posted"
    );
    // The SQ slots were consumed (sq_head 3): a fourth descriptor may go in.
    tq.submit(&rig, desc(opcode::READ, 4, 0, 512, iova));
    assert!(
        wait_until(|| rig.sim.stats().descriptors == 4),
        "fourth descriptor fetched"
    );
    assert!(
        holds_for_a_while(|| tq.busy(&rig) && tq.peek(&rig, 3).is_none()),
        "engine holds the fourth completion while the ring is full"
    );
    for tag in 1..=3 {
        // Consume without telling the device until all three are read.
        assert_eq!(tq.peek(&rig, tag - 1).map(|c| c.tag), Some(tag as u16));
    }
    assert_eq!(rig.sim.stats().completions, 3);
    for _ in 0..3 {
        tq.poll(&rig).expect("posted");
    }
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status), (4, cq_status::OK));
    assert!(wait_until(|| !tq.busy(&rig)), "BUSY clears once posted");
}

/// A CQ_HEAD write wakes the queue's engine only while it waits for a free completion slot: a
/// host consuming the completions of an engine that is not stalled signals it nothing (each
/// such wake-up cost the simulator a look that found nothing); a stalled engine is woken by
/// the write that frees a slot, not left to its idle timer.
#[test]
fn a_cq_head_write_wakes_the_engine_only_while_it_waits_for_a_slot() {
    let mut rig = Rig::enabled();
    let shared = std::sync::Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 0, 4);
    let (_, iova) = rig.map_data(4096);

    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(wait_until(|| tq.peek(&rig, 0).is_some() && !tq.busy(&rig)));
    let before = shared.wakes(0);
    assert_eq!(tq.poll(&rig).map(|c| c.tag), Some(1));
    assert_eq!(
        shared.wakes(0),
        before,
        "CQ_HEAD of an engine not waiting for a slot"
    );

    // Three completions fill the 4-entry ring (§4, N - 1); the fourth waits for a slot.
    for tag in 2..=4 {
        tq.push(&rig, desc(opcode::READ, tag, 0, 512, iova));
    }
    tq.ring(&rig);
    assert!(
        wait_until(|| tq.peek(&rig, 2).is_some()),
        "three completions posted"
    );
    tq.submit(&rig, desc(opcode::READ, 5, 0, 512, iova));
    assert!(
        wait_until(|| shared.awaits_cq_slot(0)),
        "the engine waits for a completion slot"
    );
    let stalled = shared.wakes(0);
    assert_eq!(tq.poll(&rig).map(|c| c.tag), Some(2));
    assert_eq!(
        shared.wakes(0),
        stalled + 1,
        "the write that frees a slot wakes the engine"
    );
    for tag in 3..=5 {
        assert_eq!(tq.next(&rig).tag, tag);
    }
    assert!(wait_until(|| !tq.busy(&rig) && !shared.awaits_cq_slot(0)));
}

#[test]
fn a_stale_sequence_number_halts_the_queue_until_restarted() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    rig.write(global::INT_STATUS_CLEAR, 1);

    // Index 1 carries seq 7 instead of 1, then a well-formed descriptor follows.
    tq.push_raw(
        &rig,
        Descriptor {
            seq: 7,
            ..desc(opcode::READ, 2, 0, 512, iova)
        },
    );
    tq.seq += 1;
    tq.push(&rig, desc(opcode::READ, 3, 0, 512, iova));
    tq.ring(&rig);
    assert!(
        wait_until(|| rig.qread(0, queue::Q_STATUS) & queue::ERROR != 0),
        "halted"
    );
    assert_eq!(rig.qread(0, queue::Q_ERROR), u32::from(cq_status::STALE));
    assert_eq!(rig.qread(0, queue::Q_ERROR_INDEX), 1);
    assert!(tq.stays_empty(&rig), "nothing after the stale slot is executed");
    let stats = rig.sim.stats();
    assert_eq!((stats.stale, stats.halted_queues, stats.completions), (1, 1, 1));
    assert_ne!(
        rig.read(global::INT_STATUS) & 1,
        0,
        "the halt is signalled in INT_STATUS"
    );

    tq.stop(&rig);
    tq.restart(&rig);
    assert_eq!(rig.qread(0, queue::Q_STATUS), 0, "RUN clears the error");
    tq.submit(&rig, desc(opcode::READ, 4, 0, 512, iova));
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.sq_head), (4, cq_status::OK, 1));
}

#[test]
fn an_unmapped_data_iova_is_a_dma_fault_that_touches_nothing() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let data = pattern(4096, 5);
    assert_eq!(write_then_read(&mut rig, &mut tq, 0, &data), data);

    // READ of 8 KiB into a 4 KiB mapping: the access reaches an unmapped page.
    let (dst, dst_iova) = rig.map_data(4096);
    rig.buf(dst).fill(0, 4096, 0xee);
    tq.submit(&rig, desc(opcode::READ, 3, 0, 8192, dst_iova));
    let c = tq.next(&rig);
    assert_eq!(
        (c.tag, c.status, c.detail),
        (3, cq_status::DMA_FAULT, dst_iova as u32)
    );
    assert!(
        rig.read_buf(dst, 0, 4096).iter().all(|&b| b == 0xee),
        "host memory untouched"
    );
    let faults = rig.sim.iommu().faults();
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0].iova, faults[0].write), (dst_iova, true));

    // WRITE from an unmapped IOVA: DMA_FAULT, medium unchanged.
    tq.submit(&rig, desc(opcode::WRITE, 4, 0, 4096, 0x7000_0000));
    let c = tq.next(&rig);
    assert_eq!(
        (c.status, c.detail, c.bytes),
        (cq_status::DMA_FAULT, 0x7000_0000, 0)
    );
    assert_eq!(rig.sim.stats().iommu_faults, 2);
    let (dst2, dst2_iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 5, 0, 4096, dst2_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert_eq!(rig.read_buf(dst2, 0, 4096), data, "medium unchanged");
    assert_eq!(
        rig.qread(0, queue::Q_STATUS),
        0,
        "a data fault does not halt the queue"
    );
}

#[test]
fn a_fault_on_the_rings_or_a_scatter_list_halts_the_queue() {
    let mut rig = Rig::enabled();
    // Submission ring not mapped.
    rig.bar().write64(queue::reg(1, queue::SQ_BASE), 0x6000_0000);
    rig.bar().write64(queue::reg(1, queue::CQ_BASE), 0x6100_0000);
    rig.qwrite(1, queue::RING_SIZE, 4);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    rig.write(doorbell::sq_tail(1), 1);
    assert!(
        wait_until(|| rig.qread(1, queue::Q_STATUS) & queue::ERROR != 0),
        "halted on fetch"
    );
    assert_eq!(rig.qread(1, queue::Q_ERROR), u32::from(cq_status::DMA_FAULT));
    assert!(!rig.sim.iommu().faults()[0].write, "a device read");

    // Scatter list not mapped.
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    tq.submit(&rig, sgl_desc(opcode::READ, 1, 0, 512, 0x6200_0000, 1));
    assert!(
        wait_until(|| rig.qread(0, queue::Q_STATUS) & queue::ERROR != 0),
        "halted on SGL"
    );
    assert_eq!(rig.qread(0, queue::Q_ERROR), u32::from(cq_status::DMA_FAULT));
    assert_eq!(rig.qread(0, queue::Q_ERROR_INDEX), 0);
    assert!(tq.stays_empty(&rig));
    assert_eq!(rig.sim.stats().halted_queues, 2);
}

#[test]
fn completions_raise_the_queue_vector_and_int_status() {
    let mut rig = Rig::enabled();
    let fds = rig.dev.enable_interrupts(2).expect("MSI-X");
    let mut tq = TestQueue::start(&mut rig, 1, 8);
    let (_, iova) = rig.map_data(4096);
    let readable = |i: usize, timeout: Duration| poll_readable(&[fds[i].as_fd()], timeout).expect("poll")[0];

    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(readable(1, WAIT), "vector 1 signalled");
    assert!(!readable(0, Duration::ZERO), "vector 0 not signalled");
    assert_eq!(tq.next(&rig).tag, 1);
    assert_eq!(rig.read(global::INT_STATUS), 0b10);
    rig.write(global::INT_STATUS_CLEAR, 0b10);
    assert_eq!(rig.read(global::INT_STATUS), 0);
    fds[1].clear();

    // Masked: the completion posts, INT_STATUS says so, no interrupt until unmasked.
    rig.write(global::INT_MASK_SET, 0b10);
    tq.submit(&rig, desc(opcode::READ, 2, 0, 512, iova));
    assert_eq!(tq.next(&rig).tag, 2);
    assert_eq!(rig.read(global::INT_STATUS), 0b10);
    assert!(!readable(1, Duration::ZERO), "masked");
    rig.write(global::INT_MASK_CLEAR, 0b10);
    assert!(readable(1, WAIT), "the latched interrupt arrives on unmask");
    fds[1].clear();

    // Coalescing by count with a timer: one completion short of the count still interrupts
    // when the time has elapsed.
    rig.write(global::INT_COALESCE, 8 | (500 << 8));
    tq.submit(&rig, desc(opcode::READ, 3, 0, 512, iova));
    assert!(readable(1, WAIT), "coalescing timer fires");
    assert_eq!(tq.next(&rig).tag, 3);
    assert!(rig.sim.stats().interrupts >= 3);
}

#[test]
fn a_sparse_file_backs_the_medium() {
    let path = std::env::temp_dir().join(format!("scst-accel-simboard-{}.img", std::process::id()));
    {
        let mut rig = Rig::new(SimConfig {
            backing: Backing::SparseFile(path.clone()),
            ..small_config()
        });
        rig.enable();
        let mut tq = TestQueue::start(&mut rig, 0, 8);
        let data = pattern(8192, 77);
        assert_eq!(write_then_read(&mut rig, &mut tq, 4000, &data), data);
    }
    let mut on_disk = vec![0u8; 8192];
    let read = std::fs::File::open(&path).and_then(|f| {
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut on_disk, 4000 * 512)
    });
    let len = std::fs::metadata(&path).map(|m| m.len());
    let _ = std::fs::remove_file(&path);
    read.expect("read the backing file");
    assert_eq!(on_disk, pattern(8192, 77));
    assert_eq!(len.expect("metadata"), 8192 * 512);
}

/// A doorbell wakes its own queue's engine (unpark), not every engine and not its idle
/// timeout: right after a completion the engine has just parked for up to 50 ms, so twenty
/// round trips that each waited the timeout out would take about a second.
#[test]
fn a_doorbell_wakes_its_queues_engine_at_once() {
    const ROUNDS: u16 = 20;
    let mut rig = Rig::new(threaded_config());
    rig.enable();
    let shared = std::sync::Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 1, 16);
    let queues = shared.config.queues;
    let others = |shared: &crate::sim::board::Shared| -> Vec<u64> {
        (0..queues).filter(|&q| q != 1).map(|q| shared.wakes(q)).collect()
    };
    let (own, other) = (shared.wakes(1), others(&shared));
    let start = std::time::Instant::now();
    for tag in 0..ROUNDS {
        tq.submit(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        let c = tq.next(&rig);
        assert_eq!((c.tag, c.status), (tag, cq_status::OK));
    }
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(500),
        "{ROUNDS} round trips took {took:?}: doorbell wake-ups were lost"
    );
    // Each doorbell was signalled to queue 1's engine, and to no other.
    assert!(
        shared.wakes(1) >= own + u64::from(ROUNDS),
        "queue 1's engine not woken per doorbell"
    );
    assert_eq!(
        others(&shared),
        other,
        "a doorbell of queue 1 woke another queue's engine"
    );
}

/// An idle engine sleeps until a wake-up signalled after its last look (or its 50 ms idle
/// timer); a doorbell rung to it must be served at once, whether it went idle straight from
/// its last descriptor or after a wake-up left over from a doorbell rung while it was busy.
/// A lost wake-up would leave each round to the idle timer, which runs out about 45 ms after
/// the submission (the engine went to sleep about 3 ms before it): no round would finish within
/// 25 ms, and a loaded machine still finishes nearly all of them well within it.
#[test]
fn an_idle_engine_serves_a_doorbell_at_once() {
    let mut rig = Rig::new(threaded_config());
    rig.enable();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let rounds = 20;
    let mut prompt = 0;
    for round in 0..rounds {
        // Let the engine finish and go to sleep.
        std::thread::sleep(Duration::from_millis(3));
        let started = Instant::now();
        let tags: &[u16] = if round % 2 == 0 { &[1] } else { &[2, 3] };
        for &tag in tags {
            // One doorbell per descriptor: the second one rings while the engine is busy.
            tq.submit(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        for &tag in tags {
            let c = tq.next(&rig);
            assert_eq!((c.tag, c.status), (tag, cq_status::OK));
        }
        if started.elapsed() < Duration::from_millis(25) {
            prompt += 1;
        }
    }
    assert!(
        prompt >= rounds * 3 / 4,
        "only {prompt} of {rounds} rounds completed within 25 ms"
    );
}
