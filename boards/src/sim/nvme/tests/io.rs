//! NVM commands: Read and Write with PRP1 only, PRP1 + PRP2, PRP lists (chained), unmapped
//! IOVAs, LBA and MDTS checks, Write Zeroes, Dataset Management, Flush, CQ wrap and
//! interrupts.

use super::super::spec::nvm;
use super::super::spec::status as st;
use super::*;
use crate::sim::nvme::MAX_IRQ_HOLD_MICROS;

const PAGE: usize = 4096;

/// A READ or WRITE of `blocks` blocks at `slba` with explicit PRPs.
pub(super) fn rw(opcode: u8, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> Sqe {
    Sqe {
        prp1,
        prp2,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: blocks - 1,
        ..sqe(opcode, 1)
    }
}

/// A READ or WRITE whose data is all of region `buf` (contiguous in IOVA space), with the
/// PRPs a driver would build: PRP1 alone, PRP1 + PRP2, or PRP1 + a PRP list.
pub(super) fn rw_contiguous(rig: &mut Rig, opcode: u8, slba: u64, blocks: u32, buf: usize) -> Sqe {
    let len = blocks as usize * rig.config.block_size as usize;
    let base = rig.iova(buf);
    let prp2 = if len <= PAGE {
        0
    } else if len <= 2 * PAGE {
        base + PAGE as u64
    } else {
        let pages: Vec<u64> = (1..len.div_ceil(PAGE))
            .map(|i| base + (i * PAGE) as u64)
            .collect();
        let list = rig.alloc(PAGE);
        write_list(rig, list, 0, &pages);
        rig.iova(list)
    };
    rw(opcode, slba, blocks, base, prp2)
}

fn write_list(rig: &Rig, list: usize, offset: usize, entries: &[u64]) {
    for (i, e) in entries.iter().enumerate() {
        rig.region(list).write_at(offset + i * 8, &e.to_le_bytes());
    }
}

#[test]
fn write_and_read_with_prp1_only_at_an_offset() {
    let mut rig = Rig::with_io_queue(8);
    let buf = rig.alloc(PAGE);
    let data = pattern(1024, 1);
    rig.region(buf).write_at(0x400, &data);
    let c = rig.command(1, rw(nvm::WRITE, 100, 2, rig.iova(buf) + 0x400, 0));
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(c.sqhd, 1);
    let out = rig.alloc(PAGE);
    let c = rig.command(1, rw(nvm::READ, 100, 2, rig.iova(out) + 0xC00, 0));
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(rig.read_mem(out, 0xC00, 1024), data);
    assert_eq!(
        rig.read_mem(out, 0, 0xC00),
        vec![0; 0xC00],
        "nothing before PRP1's offset"
    );
    assert_eq!(rig.sim.stats().iommu_faults, 0);
}

#[test]
fn write_and_read_with_prp1_and_prp2() {
    let mut rig = Rig::with_io_queue(8);
    // 4 KiB starting 0x200 into a page: 0xE00 bytes at PRP1, 0x200 at PRP2, in another buffer.
    let first = rig.alloc(PAGE);
    let second = rig.alloc(PAGE);
    let data = pattern(PAGE, 2);
    rig.region(first).write_at(0x200, &data[..0xE00]);
    rig.region(second).write_at(0, &data[0xE00..]);
    let c = rig.command(1, rw(nvm::WRITE, 7, 8, rig.iova(first) + 0x200, rig.iova(second)));
    assert_eq!(status(&c), Status::SUCCESS);
    let (s, back) = rig.read_blocks(7, 8);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);
    // 8 KiB page aligned: both PRPs whole pages.
    let data = pattern(2 * PAGE, 3);
    assert_eq!(rig.write_blocks(64, &data), Status::SUCCESS);
    let (s, back) = rig.read_blocks(64, 16);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);
}

/// The simulated controller reads in place, one 64 KiB medium chunk at a time scattered over
/// the PRP pages: a Read whose chunk boundary falls inside a page (LBA 127 of 512-byte blocks:
/// 512 bytes into the first page) still lands every byte at its place.
#[test]
fn a_read_across_a_medium_chunk_inside_a_page_lands_every_byte() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(3 * PAGE, 8);
    assert_eq!(rig.write_blocks(127, &data), Status::SUCCESS);
    let (s, back) = rig.read_blocks(127, 24);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);
}

#[test]
fn write_and_read_with_a_prp_list() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(64 * 1024, 4);
    assert_eq!(rig.write_blocks(1000, &data), Status::SUCCESS);
    let (s, back) = rig.read_blocks(1000, 128);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);
}

#[test]
fn a_prp_list_at_an_offset_chains_to_the_next_list_page() {
    let mut rig = Rig::with_io_queue(8);
    // Five data pages in separate buffers, used in reverse order, so each entry matters.
    let pages: Vec<usize> = (0..5).map(|_| rig.alloc(PAGE)).collect();
    let data = pattern(5 * PAGE, 5);
    for (i, &p) in pages.iter().enumerate() {
        rig.region(p).write_at(0, &data[i * PAGE..(i + 1) * PAGE]);
    }
    // The first list starts 16 bytes before its page's end: one data entry, then the pointer
    // to the second list page, which holds the remaining three entries.
    let list = rig.alloc(2 * PAGE);
    let list_iova = rig.iova(list);
    write_list(
        &rig,
        list,
        PAGE - 16,
        &[rig.iova(pages[1]), list_iova + PAGE as u64],
    );
    write_list(
        &rig,
        list,
        PAGE,
        &[rig.iova(pages[2]), rig.iova(pages[3]), rig.iova(pages[4])],
    );
    let sqe = rw(
        nvm::WRITE,
        2000,
        40,
        rig.iova(pages[0]),
        list_iova + (PAGE - 16) as u64,
    );
    assert_eq!(status(&rig.command(1, sqe)), Status::SUCCESS);
    let (s, back) = rig.read_blocks(2000, 40);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);

    // A list entry that is not page aligned is an Invalid PRP Offset.
    write_list(&rig, list, PAGE, &[rig.iova(pages[2]) + 0x10]);
    let sqe = rw(
        nvm::READ,
        2000,
        40,
        rig.iova(pages[0]),
        list_iova + (PAGE - 16) as u64,
    );
    assert_eq!(status(&rig.command(1, sqe)), st::INVALID_PRP_OFFSET);
    // So is a PRP1 that is not dword aligned.
    let sqe = rw(nvm::READ, 2000, 1, rig.iova(pages[0]) + 2, 0);
    assert_eq!(status(&rig.command(1, sqe)), st::INVALID_PRP_OFFSET);
}

#[test]
fn an_unmapped_iova_is_an_iommu_fault_and_a_data_transfer_error() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(PAGE, 6);
    assert_eq!(rig.write_blocks(0, &data), Status::SUCCESS);
    let faults = rig.sim.stats().iommu_faults;

    // A READ into unmapped memory: PRP2's page is not mapped.
    let buf = rig.alloc(PAGE);
    let c = rig.command(1, rw(nvm::READ, 0, 16, rig.iova(buf), UNMAPPED));
    assert_eq!(status(&c), st::DATA_TRANSFER_ERROR);
    assert_eq!(status(&c).sct(), 0);
    assert_eq!(status(&c).sc(), 0x04);
    assert_eq!(rig.sim.stats().iommu_faults, faults + 1);
    let fault = *rig.sim.iommu().faults().last().expect("recorded");
    assert_eq!(fault.iova, UNMAPPED);
    assert!(fault.write, "a device write to host memory");

    // A WRITE from unmapped memory leaves the medium unchanged.
    let c = rig.command(1, rw(nvm::WRITE, 0, 8, UNMAPPED, 0));
    assert_eq!(status(&c), st::DATA_TRANSFER_ERROR);
    let (s, back) = rig.read_blocks(0, 8);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, data);

    // A PRP list in unmapped memory.
    let c = rig.command(1, rw(nvm::READ, 0, 24, rig.iova(buf), UNMAPPED));
    assert_eq!(status(&c), st::DATA_TRANSFER_ERROR);
    assert_eq!(rig.sim.stats().iommu_faults, faults + 3);
}

/// A Write of five PRP pages across a medium chunk boundary, the fourth page not mapped: every
/// piece is checked before any block changes, so the command ends in Data Transfer Error with
/// every block as it was (in the chunk before the boundary too), and the fault recorded is the
/// buffered path's: a device read of that page. With the page mapped the same Write lands.
#[test]
fn a_write_with_an_unmapped_page_changes_no_block() {
    let mut rig = Rig::with_io_queue(8);
    // 8 KiB before the end of the first 64 KiB chunk, 12 KiB after it.
    let slba = 65536 / 512 - 16;
    let old = pattern(5 * PAGE, 7);
    assert_eq!(rig.write_blocks(slba, &old), Status::SUCCESS);
    let new = pattern(5 * PAGE, 8);
    let pages: Vec<usize> = (0..5).map(|_| rig.alloc(PAGE)).collect();
    for (i, &p) in pages.iter().enumerate() {
        rig.region(p).write_at(0, &new[i * PAGE..(i + 1) * PAGE]);
    }
    let list = rig.alloc(PAGE);
    let faults = rig.sim.stats().iommu_faults;
    write_list(
        &rig,
        list,
        0,
        &[
            rig.iova(pages[1]),
            rig.iova(pages[2]),
            UNMAPPED,
            rig.iova(pages[4]),
        ],
    );
    let sqe = rw(nvm::WRITE, slba, 40, rig.iova(pages[0]), rig.iova(list));
    assert_eq!(status(&rig.command(1, sqe)), st::DATA_TRANSFER_ERROR);
    assert_eq!(rig.sim.stats().iommu_faults, faults + 1);
    let fault = *rig.sim.iommu().faults().last().expect("recorded");
    assert_eq!(
        (fault.iova, fault.len, fault.write),
        (UNMAPPED, PAGE as u64, false)
    );
    let (s, back) = rig.read_blocks(slba, 40);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, old, "no block changed");

    write_list(
        &rig,
        list,
        0,
        &[
            rig.iova(pages[1]),
            rig.iova(pages[2]),
            rig.iova(pages[3]),
            rig.iova(pages[4]),
        ],
    );
    let sqe = rw(nvm::WRITE, slba, 40, rig.iova(pages[0]), rig.iova(list));
    assert_eq!(status(&rig.command(1, sqe)), Status::SUCCESS);
    let (s, back) = rig.read_blocks(slba, 40);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(back, new);
}

#[test]
fn lba_range_mdts_and_namespace_are_checked() {
    let mut rig = Rig::with_io_queue(8);
    let buf = rig.alloc(256 * 1024);
    let base = rig.iova(buf);
    // The last block is fine, one past is not.
    assert_eq!(
        status(&rig.command(1, rw(nvm::READ, 8191, 1, base, 0))),
        Status::SUCCESS
    );
    assert_eq!(
        status(&rig.command(1, rw(nvm::READ, 8191, 2, base, 0))),
        st::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        status(&rig.command(1, rw(nvm::WRITE, 9000, 1, base, 0))),
        st::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        status(&rig.command(1, rw(nvm::READ, u64::MAX, 1, base, 0))),
        st::LBA_OUT_OF_RANGE,
        "SLBA + NLB wraps"
    );
    // MDTS 5: 128 KiB is the largest transfer; 128 KiB + 512 is Invalid Field.
    let full = rw_contiguous(&mut rig, nvm::READ, 0, 256, buf);
    assert_eq!(status(&rig.command(1, full)), Status::SUCCESS);
    let over = rw_contiguous(&mut rig, nvm::READ, 0, 257, buf);
    assert_eq!(status(&rig.command(1, over)), st::INVALID_FIELD);
    let c = rig.command(
        1,
        Sqe {
            nsid: 2,
            ..rw(nvm::READ, 0, 1, base, 0)
        },
    );
    assert_eq!(status(&c), st::INVALID_NAMESPACE);
    let c = rig.command(
        1,
        Sqe {
            cdw0: u32::from(nvm::READ) | (1 << 14),
            ..rw(nvm::READ, 0, 1, base, 0)
        },
    );
    assert_eq!(status(&c), st::INVALID_FIELD, "SGL requested");
    assert_eq!(status(&rig.command(1, sqe(0x7F, 1))), st::INVALID_OPCODE);
}

#[test]
fn write_zeroes_deallocate_flush_and_fua() {
    let mut rig = Rig::with_io_queue(8);
    let data = pattern(8 * 512, 7);
    assert_eq!(rig.write_blocks(200, &data), Status::SUCCESS);
    // Write Zeroes of blocks 201..=202.
    let c = rig.command(
        1,
        Sqe {
            cdw10: 201,
            cdw12: 1,
            ..sqe(nvm::WRITE_ZEROES, 1)
        },
    );
    assert_eq!(status(&c), Status::SUCCESS);
    let (_, back) = rig.read_blocks(200, 8);
    assert_eq!(&back[..512], &data[..512]);
    assert!(back[512..1536].iter().all(|&b| b == 0));
    assert_eq!(&back[1536..], &data[1536..]);
    let c = rig.command(
        1,
        Sqe {
            cdw10: 8191,
            cdw12: 1,
            ..sqe(nvm::WRITE_ZEROES, 1)
        },
    );
    assert_eq!(status(&c), st::LBA_OUT_OF_RANGE);

    // Dataset Management, deallocate two ranges: 204 (1 block) and 206..=207.
    let ranges = rig.alloc(PAGE);
    let mut raw = Vec::new();
    for (start, blocks) in [(204u64, 1u32), (206, 2)] {
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&blocks.to_le_bytes());
        raw.extend_from_slice(&start.to_le_bytes());
    }
    rig.region(ranges).write_at(0, &raw);
    let dsm = Sqe {
        prp1: rig.iova(ranges),
        cdw10: 1,
        cdw11: 1 << 2,
        ..sqe(nvm::DATASET_MANAGEMENT, 1)
    };
    assert_eq!(status(&rig.command(1, dsm)), Status::SUCCESS);
    let (_, back) = rig.read_blocks(200, 8);
    let mut before = data[..4 * 512].to_vec();
    before[512..1536].fill(0); // zeroed by Write Zeroes above
    assert_eq!(&back[..4 * 512], &before[..], "200..=203 as they were");
    assert!(back[4 * 512..5 * 512].iter().all(|&b| b == 0), "204 deallocated");
    assert_eq!(&back[5 * 512..6 * 512], &data[5 * 512..6 * 512], "205 kept");
    assert!(back[6 * 512..].iter().all(|&b| b == 0), "206..=207 deallocated");
    // A range past the end refuses the whole command.
    rig.region(ranges).write_at(8 + 16, &9000u64.to_le_bytes());
    assert_eq!(status(&rig.command(1, dsm)), st::LBA_OUT_OF_RANGE);

    assert_eq!(status(&rig.command(1, sqe(nvm::FLUSH, 1))), Status::SUCCESS);
    assert_eq!(
        status(&rig.command(1, sqe(nvm::FLUSH, u32::MAX))),
        Status::SUCCESS
    );
    let buf = rig.alloc(PAGE);
    rig.region(buf).write_at(0, &data[..512]);
    let fua = Sqe {
        cdw12: 1 << 30,
        ..rw(nvm::WRITE, 300, 1, rig.iova(buf), 0)
    };
    assert_eq!(status(&rig.command(1, fua)), Status::SUCCESS);
    assert_eq!(rig.read_blocks(300, 1).1, &data[..512]);
}

/// WZSL bounds a Write Zeroes in bytes (2 ^ `wzsl` pages of 4 KiB), not in blocks: 8 KiB
/// (`wzsl` 1) holds two 4 KiB blocks, and not one 16 KiB block, so even a one-block Write
/// Zeroes completes Invalid Field in Command, as a controller reporting that WZSL refuses it.
#[test]
fn a_wzsl_below_one_block_refuses_every_write_zeroes() {
    for (block_size, most) in [(4096u32, Some(2u32)), (16384, None)] {
        let mut rig = Rig::new(NvmeSimConfig {
            block_size,
            wzsl: 1,
            ..small_config()
        });
        rig.enable();
        rig.create_io_queue(1, 8);
        let zeroes = |blocks: u32| Sqe {
            cdw10: 16,
            cdw12: blocks - 1,
            ..sqe(nvm::WRITE_ZEROES, 1)
        };
        let last_accepted = most.unwrap_or(0);
        if last_accepted > 0 {
            assert_eq!(status(&rig.command(1, zeroes(last_accepted))), Status::SUCCESS);
        }
        assert_eq!(
            status(&rig.command(1, zeroes(last_accepted + 1))),
            st::INVALID_FIELD,
            "{block_size} B blocks"
        );
    }
}

#[test]
fn the_completion_queue_wraps_with_the_phase_flipped_and_interrupts_follow() {
    let mut rig = Rig::with_io_queue(4);
    let fds = rig.dev.enable_interrupts(2).expect("MSI-X");
    let raised = rig.dev.interrupts().raised();
    for i in 0..10u16 {
        let c = rig.command(1, sqe(nvm::FLUSH, 1));
        assert_eq!(status(&c), Status::SUCCESS);
        assert_eq!(c.sqhd, (i + 1) % 4, "SQHD");
    }
    assert_eq!(
        rig.dev.interrupts().raised() - raised,
        10,
        "one vector raise per completion"
    );
    assert!(fds[1].clear(), "vector 1, the CQ's IV, was signalled");
    assert!(!fds[0].clear(), "vector 0 (admin) was not");
    assert_eq!(rig.sim.stats().completions, 2 + 10);
}

#[test]
fn a_full_completion_queue_stalls_until_the_host_frees_a_slot() {
    let mut rig = Rig::with_io_queue(4);
    // Three commands fill the 4-entry CQ (it holds 3); a fourth waits for a head update.
    let (sq, size) = rig.queues[1].as_ref().map(|q| (q.sq, q.size)).expect("queue 1");
    for i in 0..4u16 {
        let entry = Sqe {
            cdw0: u32::from(nvm::FLUSH) | (u32::from(100 + i) << 16),
            ..sqe(nvm::FLUSH, 1)
        };
        rig.region(sq).write_obj(usize::from(i % size) * 64, &entry);
    }
    rig.write(reg::DOORBELLS + 8, 3);
    assert!(
        wait_until(|| rig.sim.stats().completions == 2 + 3),
        "three completions"
    );
    rig.write(reg::DOORBELLS + 8, 0); // tail wraps to 0: the fourth entry
    assert!(
        !wait_until_quiet(|| rig.sim.stats().completions > 5),
        "no fourth completion while the CQ is full"
    );
    for cid in 100..103 {
        assert_eq!(rig.next_completion(1).cid, cid);
    }
    assert_eq!(rig.next_completion(1).cid, 103, "posted once a slot was freed");
}

/// Watch `cond` for [`QUIET`]; returns whether it ever held.
fn wait_until_quiet(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A controller with I/O queue pair 1 of `entries` entries on vector 1 and the given interrupt
/// batching, its vectors enabled; the raises counted so far.
fn batching_rig(entries: u16, irq_batch: u32, irq_hold_micros: u32) -> (Rig, u64) {
    let mut rig = Rig::new(NvmeSimConfig {
        irq_batch,
        irq_hold_micros,
        ..small_config()
    });
    rig.enable();
    rig.create_io_queue(1, entries);
    // The tests count the vector's raises; the host ends of the eventfds are not read.
    rig.dev.enable_interrupts(2).expect("MSI-X");
    let raised = rig.dev.interrupts().raised();
    (rig, raised)
}

/// Submit `n` FLUSH commands with one doorbell on queue 1 and take their completions.
fn flush_together(rig: &mut Rig, n: usize) {
    rig.submit_together(1, &vec![sqe(nvm::FLUSH, 1); n]);
    for _ in 0..n {
        assert_eq!(status(&rig.next_completion(1)), Status::SUCCESS);
    }
}

#[test]
fn completions_of_commands_taken_back_to_back_share_a_raise() {
    // A hold no test run reaches: only the batch size and the worker's waits raise.
    let (mut rig, raised) = batching_rig(32, 8, MAX_IRQ_HOLD_MICROS);
    flush_together(&mut rig, 16);
    assert!(wait_until(|| rig.sim.stats().completions == 2 + 16));
    assert_eq!(
        rig.dev.interrupts().raised() - raised,
        2,
        "16 completions taken back to back, 8 per raise"
    );

    // Batching off: a raise per completion, as the specification's default reads.
    let (mut rig, raised) = batching_rig(32, 1, MAX_IRQ_HOLD_MICROS);
    flush_together(&mut rig, 16);
    assert_eq!(rig.dev.interrupts().raised() - raised, 16);
}

#[test]
fn a_zero_hold_raises_before_every_next_command() {
    let (mut rig, raised) = batching_rig(32, 8, 0);
    flush_together(&mut rig, 16);
    assert_eq!(rig.dev.interrupts().raised() - raised, 16);
}

#[test]
fn a_worker_raises_what_it_owes_before_it_sleeps() {
    // One command alone: the SQ is empty after it, so its raise is not held for company.
    let (mut rig, raised) = batching_rig(32, 8, MAX_IRQ_HOLD_MICROS);
    rig.submit(1, sqe(nvm::FLUSH, 1));
    assert!(
        wait_until(|| rig.dev.interrupts().raised() - raised == 1),
        "the lone completion was signalled"
    );

    // A full CQ: 4 commands taken from an 8-entry SQ by one doorbell onto a 4-entry CQ (it
    // holds 3). The worker posts 3 back to back, then waits for the host to free a slot; a
    // host that reaps on interrupts must get one first.
    let (mut rig, _) = batching_rig(32, 8, MAX_IRQ_HOLD_MICROS);
    let (cq, sq) = (rig.alloc(4 * 16), rig.alloc(8 * 64));
    let c = rig.admin(create_cq(2, 4, rig.iova(cq), 1, true));
    assert_eq!(status(&c), Status::SUCCESS);
    let c = rig.admin(create_sq(2, 8, rig.iova(sq), 2));
    assert_eq!(status(&c), Status::SUCCESS);
    let raised = rig.dev.interrupts().raised();
    for i in 0..4u16 {
        let entry = Sqe {
            cdw0: u32::from(nvm::FLUSH) | (u32::from(200 + i) << 16),
            ..sqe(nvm::FLUSH, 1)
        };
        rig.region(sq).write_obj(usize::from(i) * 64, &entry);
    }
    let completions = rig.sim.stats().completions;
    rig.write(reg::DOORBELLS + 2 * 8, 4);
    assert!(wait_until(|| rig.sim.stats().completions == completions + 3));
    assert!(
        wait_until(|| rig.dev.interrupts().raised() - raised == 1),
        "the three completions before the stall were signalled, once"
    );
    assert!(
        !wait_until_quiet(|| rig.sim.stats().completions > completions + 3),
        "the fourth waits for a slot"
    );
}
