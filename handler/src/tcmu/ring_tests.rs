//! The ring against the simulated kernel ([`crate::tcmu::sim`]): order, PAD at the wrap,
//! responses where the kernel reads them, every malformed entry refused with its typed error,
//! and random producer/consumer interleavings.

use super::*;
use crate::tcmu::abi::mailbox_flags;
use crate::tcmu::abi::CmdReq;
use crate::tcmu::region::HeapMemory;
use crate::tcmu::sim::raw_cmd_entry;
use crate::tcmu::sim::SimConfig;
use crate::tcmu::sim::SimError;
use crate::tcmu::sim::SimKernel;
use crate::tcmu::sim::SIM_CMDR_OFF;
use std::sync::Arc;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;

fn setup(cmdr_size: u32, flags: u16) -> (SimKernel, Ring) {
    let sim = SimKernel::new(SimConfig {
        cmdr_size,
        data_size: 64 * 1024,
        flags,
    });
    let ring = Ring::attach(sim.region().clone()).expect("attach");
    (sim, ring)
}

fn iov(off: usize, len: usize) -> Iovec {
    Iovec {
        iov_base: off as u64,
        iov_len: len as u64,
    }
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn next_command(ring: &mut Ring) -> TcmuCommand {
    match ring.next_entry() {
        Ok(Some(RingEntry::Command(c))) => c,
        other => panic!("expected a command, got {other:?}"),
    }
}

fn check_condition(sense: &[u8]) -> Response<'_> {
    Response {
        status: sam_status::CHECK_CONDITION,
        sense,
        read_len: None,
    }
}

#[test]
fn commands_come_in_order_with_their_cdb_and_data() {
    // Arrange
    let (mut sim, mut ring) = setup(4096, 0);
    let d = sim.data_off();
    for (i, id) in [(0usize, 10u16), (1, 11), (2, 12)] {
        sim.write_data(d + i * 512, &[id as u8; 512]);
        sim.post_cmd(id, &cdb10(WRITE_10, i as u32, 1), &[iov(d + i * 512, 512)], &[])
            .expect("post");
    }
    // Act
    let cmds: Vec<TcmuCommand> = (0..3).map(|_| next_command(&mut ring)).collect();
    assert_eq!(ring.next_entry(), Ok(None));
    // Assert
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(c.cmd_id(), 10 + i as u16);
        assert_eq!(c.cdb(), cdb10(WRITE_10, i as u32, 1));
        assert_eq!(c.data_len(), 512);
        let mut buf = [0u8; 512];
        assert_eq!(ring.read_data(c, 0, &mut buf), Ok(512));
        assert_eq!(buf, [10 + i as u8; 512]);
    }
    assert!(!ring.take_kick(), "nothing finished yet");
    for c in cmds {
        ring.complete(c, &Response::GOOD).expect("complete");
    }
    assert!(ring.take_kick());
    let done = sim.reap().expect("reap");
    assert_eq!(
        done.iter().map(|c| (c.cmd_id, c.status)).collect::<Vec<_>>(),
        [(10, 0), (11, 0), (12, 0)]
    );
    assert_eq!(ring.state().tail, sim.head());
    assert_eq!(ring.state().outstanding, 0);
}

#[test]
fn a_pad_at_the_ring_end_is_skipped_and_the_next_command_starts_at_zero() {
    // 1 iovec + a 10-byte CDB: the CDB at sizeof(tcmu_cmd_entry) = 112 (the iovec fits inside
    // it), rounded up to 8 -> 128 bytes. Two fit in 320, the third does not fit in the remaining
    // 64 and goes to offset 0 after a 64-byte PAD.
    let (mut sim, mut ring) = setup(320, 0);
    let d = sim.data_off();
    for id in 0..2 {
        sim.post_cmd(id, &cdb10(READ_10, 0, 1), &[iov(d, 512)], &[])
            .expect("post");
        let c = next_command(&mut ring);
        ring.complete(c, &Response::GOOD).expect("complete");
    }
    assert_eq!(sim.reap().expect("reap").len(), 2);
    let at = sim
        .post_cmd(7, &cdb10(READ_10, 9, 1), &[iov(d, 512)], &[])
        .expect("post after pad");
    assert_eq!(at, 0);
    assert_eq!(sim.posted(), 2, "the PAD and the command");
    let c = next_command(&mut ring);
    assert_eq!((c.cmd_id(), c.ring_offset()), (7, 0));
    assert_eq!(c.cdb(), cdb10(READ_10, 9, 1));
    assert_eq!(ring.state().tail, 0, "cmd_tail moved over the PAD at once");
    ring.complete(c, &Response::GOOD).expect("complete");
    let done = sim.reap().expect("reap");
    assert_eq!(done.iter().map(|c| c.cmd_id).collect::<Vec<_>>(), [7]);
}

#[test]
fn cmd_tail_moves_only_over_a_finished_prefix() {
    let (mut sim, mut ring) = setup(4096, 0);
    for id in [1, 2, 3] {
        sim.post_cmd(id, &cdb10(READ_10, 0, 0), &[], &[]).expect("post");
    }
    let a = next_command(&mut ring);
    let b = next_command(&mut ring);
    let c = next_command(&mut ring);
    ring.complete(c, &Response::GOOD).expect("c");
    assert!(!ring.take_kick(), "3 finished but 1 and 2 are before it");
    assert_eq!(sim.reap().expect("reap"), []);
    ring.complete(a, &Response::GOOD).expect("a");
    assert!(ring.take_kick());
    assert_eq!(
        sim.reap()
            .expect("reap")
            .iter()
            .map(|c| c.cmd_id)
            .collect::<Vec<_>>(),
        [1]
    );
    ring.complete(b, &Response::GOOD).expect("b");
    assert_eq!(
        sim.reap()
            .expect("reap")
            .iter()
            .map(|c| c.cmd_id)
            .collect::<Vec<_>>(),
        [2, 3]
    );
}

#[test]
fn responses_land_where_the_kernel_reads_them() {
    let (mut sim, mut ring) = setup(4096, mailbox_flags::CAP_READ_LEN);
    let d = sim.data_off();
    // Four iovecs fill the bytes the sense buffer overlays: stale request bytes must not leak
    // into the sense the kernel copies.
    let iovs: Vec<Iovec> = (0..4).map(|i| iov(d + i * 512, 512)).collect();
    sim.post_cmd(5, &cdb10(READ_10, 0, 4), &iovs, &[]).expect("post");
    sim.post_cmd(6, &cdb10(READ_10, 0, 4), &iovs, &[]).expect("post");
    let sense = [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0];
    let c = next_command(&mut ring);
    ring.complete(c, &check_condition(&sense)).expect("complete");
    let c = next_command(&mut ring);
    let short = Response {
        read_len: Some(1000),
        ..Response::GOOD
    };
    ring.complete(c, &short).expect("complete");
    let done = sim.reap().expect("reap");
    assert_eq!(done[0].status, sam_status::CHECK_CONDITION);
    assert_eq!(done[0].sense[..18], sense);
    assert!(done[0].sense[18..].iter().all(|&b| b == 0), "{:?}", done[0].sense);
    assert_eq!(done[0].uflags, 0);
    assert_eq!((done[1].status, done[1].read_len), (sam_status::GOOD, 1000));
    assert_eq!(done[1].uflags, abi::uflags::READ_LEN);
}

#[test]
fn the_simulated_kernel_reaps_the_header_it_finds_not_the_one_it_posted() {
    // The kernel takes an entry's opcode, length and cmd_id from the shared memory
    // (tcmu_handle_completions), so a response that damaged the header must not pass the sim.
    let (mut sim, mut ring) = setup(4096, 0);
    let at = sim.post_cmd(7, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let c = next_command(&mut ring);
    ring.complete(c, &Response::GOOD).expect("complete");
    let hdr_off = SIM_CMDR_OFF as usize + at as usize;
    let posted: EntryHdr = sim.region().read_obj(hdr_off);
    let found = EntryHdr { cmd_id: 8, ..posted };
    sim.region().write_obj(hdr_off, &found);
    assert_eq!(
        sim.reap(),
        Err(SimError::HeaderChanged { at, posted, found }),
        "another cmd_id in the header"
    );
    // Put back as posted, with a uflag set (user space's to write), it is reaped.
    let flagged = EntryHdr {
        uflags: abi::uflags::READ_LEN,
        ..posted
    };
    sim.region().write_obj(hdr_off, &flagged);
    let done = sim.reap().expect("reap");
    assert_eq!((done[0].cmd_id, done[0].uflags), (7, abi::uflags::READ_LEN));
}

#[test]
fn read_len_is_not_sent_to_a_kernel_without_the_capability() {
    let (mut sim, mut ring) = setup(4096, 0);
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let c = next_command(&mut ring);
    ring.complete(
        c,
        &Response {
            read_len: Some(3),
            ..Response::GOOD
        },
    )
    .expect("complete");
    let done = sim.reap().expect("reap");
    assert_eq!((done[0].uflags, done[0].read_len), (0, 0));
}

#[test]
fn data_in_is_scattered_over_the_iovecs_from_an_offset() {
    let (mut sim, mut ring) = setup(4096, 0);
    let d = sim.data_off();
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[iov(d + 4096, 3), iov(d, 5)], &[])
        .expect("post");
    let c = next_command(&mut ring);
    assert_eq!(
        ring.write_data(&c, 1, b"abcdefghij"),
        Ok(7),
        "8 bytes of buffer, from byte 1"
    );
    assert_eq!(sim.read_data(d + 4096, 3), b"\0ab");
    assert_eq!(sim.read_data(d, 5), b"cdefg");
    let mut back = [0u8; 8];
    assert_eq!(ring.read_data(&c, 0, &mut back), Ok(8));
    assert_eq!(&back, b"\0abcdefg");
    assert_eq!(ring.read_data(&c, 8, &mut back), Ok(0), "past the buffer");
    ring.complete(c, &Response::GOOD).expect("complete");
}

#[test]
fn a_bidi_command_reads_data_out_and_writes_data_in() {
    let (mut sim, mut ring) = setup(4096, 0);
    let d = sim.data_off();
    sim.write_data(d, b"out!");
    sim.post_cmd(1, &cdb10(0x53, 0, 1), &[iov(d, 4)], &[iov(d + 100, 4)])
        .expect("post");
    let c = next_command(&mut ring);
    assert_eq!((c.data().len(), c.bidi_in().len()), (1, 1));
    let mut out = [0u8; 4];
    ring.read_data(&c, 0, &mut out).expect("read");
    assert_eq!(&out, b"out!");
    ring.write_data(&c, 0, b"in!!").expect("write");
    assert_eq!(sim.read_data(d + 100, 4), b"in!!");
    assert_eq!(sim.read_data(d, 4), b"out!", "Data-Out untouched");
    ring.complete(c, &Response::GOOD).expect("complete");
}

#[test]
fn a_task_management_entry_is_handed_out_in_order_and_needs_no_response() {
    let (mut sim, mut ring) = setup(4096, mailbox_flags::CAP_TMR);
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    sim.post_tmr(abi::tmr_type::ABORT_TASK, &[1]).expect("tmr");
    sim.post_cmd(2, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let a = next_command(&mut ring);
    assert_eq!(
        ring.next_entry(),
        Ok(Some(RingEntry::TaskManagement(TmrNotice {
            tmr_type: abi::tmr_type::ABORT_TASK,
            cmd_ids: vec![1],
        })))
    );
    let b = next_command(&mut ring);
    assert_eq!(ring.state().unretired, 3);
    ring.complete(a, &Response::GOOD).expect("a");
    assert_eq!(
        ring.state().unretired,
        1,
        "the TMR went with the command before it"
    );
    ring.complete(b, &Response::GOOD).expect("b");
    assert_eq!(
        sim.reap()
            .expect("reap")
            .iter()
            .map(|c| c.cmd_id)
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn unknown_opcodes_are_flagged_and_skipped() {
    // Without CAP_TMR a TMR opcode is as unknown as opcode 5.
    let (mut sim, mut ring) = setup(4096, 0);
    let tmr_at = sim.post_tmr(abi::tmr_type::LUN_RESET, &[]).expect("tmr");
    let mut odd = vec![0u8; 16];
    odd[..4].copy_from_slice(&EntryHdr::len_op(16, 5).to_le_bytes());
    let odd_at = sim.post_raw(&odd).expect("raw");
    sim.post_cmd(3, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let c = next_command(&mut ring);
    assert_eq!(c.cmd_id(), 3);
    assert_eq!(sim.uflags_at(tmr_at), abi::uflags::UNKNOWN_OP);
    assert_eq!(sim.uflags_at(odd_at), abi::uflags::UNKNOWN_OP);
    ring.complete(c, &Response::GOOD).expect("complete");
    assert_eq!(sim.reap().expect("reap").len(), 1);
}

#[test]
fn a_restarted_consumer_resumes_at_cmd_tail_with_the_requests_intact() {
    // What a handler restarted after kill -9 sees: commands read but never finished are still
    // in the ring, because cmd_tail never passed them; so is one finished after an unfinished
    // one, whose response was held back: its request is read again intact, not as response
    // bytes.
    let (mut sim, mut ring) = setup(4096, 0);
    let d = sim.data_off();
    for id in [1u16, 2, 3] {
        sim.post_cmd(
            id,
            &cdb10(READ_10, id.into(), 1),
            &[iov(d + 512 * usize::from(id), 512)],
            &[],
        )
        .expect("post");
    }
    let a = next_command(&mut ring);
    let _lost = next_command(&mut ring);
    let c = next_command(&mut ring);
    let c_off = SIM_CMDR_OFF as usize + c.ring_offset() as usize;
    let c_entry: CmdEntryReq = sim.region().read_obj(c_off);
    ring.complete(a, &Response::GOOD).expect("a");
    ring.complete(c, &check_condition(&[0x70, 0, 3])).expect("c");
    let c_after: CmdEntryReq = sim.region().read_obj(c_off);
    assert_eq!(c_after, c_entry, "an entry beyond cmd_tail is not written");
    drop(ring);
    let mut ring = Ring::attach(sim.region().clone()).expect("reattach");
    for id in [2u16, 3] {
        let again = next_command(&mut ring);
        assert_eq!(
            (again.cmd_id(), again.cdb()),
            (id, &cdb10(READ_10, id.into(), 1)[..])
        );
        assert_eq!(
            again.data(),
            [DataSegment {
                off: d + 512 * usize::from(id),
                len: 512
            }]
        );
        ring.complete(again, &Response::GOOD).expect("complete");
    }
    let done = sim.reap().expect("reap");
    assert_eq!(
        done.iter().map(|c| (c.cmd_id, c.status)).collect::<Vec<_>>(),
        [(1, 0), (2, 0), (3, 0)]
    );
}

#[test]
fn a_full_ring_refuses_the_producer_until_completions_free_space() {
    let (mut sim, mut ring) = setup(400, 0);
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post"); // 128 bytes
    sim.post_cmd(2, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    sim.post_cmd(3, &cdb10(READ_10, 0, 1), &[], &[]).expect("post"); // 384 used, 15 free
    assert!(matches!(
        sim.post_cmd(4, &cdb10(READ_10, 0, 1), &[], &[]),
        Err(SimError::RingFull { .. })
    ));
    let a = next_command(&mut ring);
    ring.complete(a, &Response::GOOD).expect("a");
    sim.reap().expect("reap");
    // 143 bytes free, but the entry needs a 16-byte PAD to the ring's end first.
    assert_eq!(
        sim.post_cmd(4, &cdb10(READ_10, 0, 1), &[], &[]),
        Err(SimError::RingFull { need: 144, free: 143 })
    );
    let b = next_command(&mut ring);
    ring.complete(b, &Response::GOOD).expect("b");
    sim.reap().expect("reap");
    assert_eq!(
        sim.post_cmd(4, &cdb10(READ_10, 0, 1), &[], &[]),
        Ok(0),
        "after a PAD, at 0"
    );
}

#[test]
fn a_ring_reset_by_the_kernel_breaks_the_ring_and_nothing_more_is_written_into_it() {
    let (mut sim, mut ring) = setup(4096, 0);
    let cdb = cdb10(READ_10, 0, 1);
    let a = sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    let b = sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    sim.post_cmd(3, &cdb, &[], &[]).expect("post");
    let first = next_command(&mut ring);
    let second = next_command(&mut ring);
    ring.complete(first, &Response::GOOD).expect("complete");
    assert_eq!(sim.reap().expect("reap").len(), 1);
    let ours = ring.state().tail;
    assert_eq!(ours, b, "cmd_tail passed the first entry");
    // action/reset_ring: head = tail = 0, every cmd_id dropped; the kernel posts anew at 0.
    sim.reset_ring();
    assert_eq!(sim.post_cmd(4, &cdb, &[], &[]).expect("post"), a);
    // Not the third command's stale entry: the ring is broken.
    assert_eq!(
        ring.next_entry(),
        Err(RingError::Broken(RingFault::TailMoved { ours, found: 0 }))
    );
    // The kernel reuses the second command's place; its late answer must not land there.
    assert_eq!(sim.post_cmd(5, &cdb, &[], &[]).expect("post"), b);
    assert_eq!(
        ring.complete(second, &Response::GOOD),
        Err(RingError::Broken(RingFault::TailMoved { ours, found: 0 }))
    );
    assert_eq!(
        sim.region().load_u32_acquire(abi::MB_CMD_TAIL),
        0,
        "cmd_tail left alone"
    );
    // A handler started afresh, as a reset expects, reads the new entries intact.
    let mut fresh = Ring::attach(sim.region().clone()).expect("attach");
    assert_eq!(next_command(&mut fresh).cmd_id(), 4);
    let after = next_command(&mut fresh);
    assert_eq!((after.cmd_id(), after.cdb()), (5, &cdb[..]));
}

#[test]
fn completing_a_command_of_another_ring_is_refused() {
    let (mut sim_a, mut ring_a) = setup(4096, 0);
    let (mut sim_b, mut ring_b) = setup(4096, 0);
    sim_a.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    sim_b.post_cmd(2, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let a = next_command(&mut ring_a);
    let _b = next_command(&mut ring_b);
    assert_eq!(
        ring_b.complete(a, &Response::GOOD),
        Err(RingError::NotOutstanding { cmd_id: 1, seq: 0 })
    );
    assert_eq!(sim_b.reap().expect("reap"), []);
}

// ---------------------------------------------------------------------------------------------
// Layout refused at attach.

fn attach_with(edit: impl FnOnce(&mut Mailbox), len: usize) -> Result<Ring, LayoutError> {
    let region = Region::new(Arc::new(HeapMemory::new(len)));
    let mut mb = Mailbox::new_zeroed();
    mb.version = abi::TCMU_MAILBOX_VERSION;
    mb.cmdr_off = SIM_CMDR_OFF;
    mb.cmdr_size = 1024;
    edit(&mut mb);
    if len >= size_of::<Mailbox>() {
        region.write_mailbox(&mb);
    }
    Ring::attach(region)
}

#[test]
fn a_mailbox_that_does_not_describe_a_ring_in_the_mapping_is_refused() {
    let len = 4096;
    assert!(attach_with(|_| {}, len).is_ok());
    assert_eq!(
        attach_with(|_| {}, 64).err(),
        Some(LayoutError::TooSmall { len: 64 })
    );
    assert_eq!(
        attach_with(|m| m.version = 1, len).err(),
        Some(LayoutError::Version { found: 1 })
    );
    for (off, size) in [
        (64, 1024),
        (132, 1024),
        (128, 1020),
        (128, 0),
        (128, 4096),
        (u32::MAX - 7, 8),
    ] {
        let err = attach_with(
            |m| {
                m.cmdr_off = off;
                m.cmdr_size = size;
            },
            len,
        )
        .err();
        assert_eq!(
            err,
            Some(LayoutError::Ring {
                cmdr_off: off,
                cmdr_size: size,
                len
            }),
            "cmdr_off {off} cmdr_size {size}"
        );
    }
    for tail in [4, 1024, u32::MAX] {
        assert_eq!(
            attach_with(|m| m.cmd_tail = tail, len).err(),
            Some(LayoutError::Tail {
                tail,
                cmdr_size: 1024
            })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Faults in the entry stream: the ring is broken and stays so.

fn assert_broken(ring: &mut Ring, fault: RingFault) {
    let tail = ring.state().tail;
    assert_eq!(ring.next_entry(), Err(RingError::Broken(fault.clone())));
    assert_eq!(ring.next_entry(), Err(RingError::Broken(fault)), "stays broken");
    assert_eq!(
        ring.state().tail,
        tail,
        "cmd_tail does not move over a broken entry"
    );
}

#[test]
fn a_head_outside_the_ring_or_misaligned_breaks_the_ring() {
    for head in [1024, 4, u32::MAX] {
        let (sim, mut ring) = setup(1024, 0);
        sim.corrupt_head(head);
        assert_broken(
            &mut ring,
            RingFault::Head {
                head,
                cmdr_size: 1024,
            },
        );
    }
}

#[test]
fn a_zero_length_entry_breaks_the_ring_instead_of_spinning() {
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_raw(&[0u8; 8]).expect("raw");
    assert_broken(&mut ring, RingFault::ZeroLength { at: 0 });
}

#[test]
fn an_entry_past_the_ring_end_or_past_the_head_breaks_the_ring() {
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_raw(&raw_cmd_entry(1032, 1, CmdReq::default())[..112])
        .expect("raw");
    let mut bytes = raw_cmd_entry(112, 1, CmdReq::default());
    bytes[..4].copy_from_slice(&EntryHdr::len_op(1032, abi::opcode::CMD).to_le_bytes());
    let (mut sim2, mut ring2) = setup(1024, 0);
    sim2.post_raw(&bytes).expect("raw");
    assert_broken(&mut ring2, RingFault::CrossesRingEnd { at: 0, len: 1032 });

    // The header claims 256 bytes but the kernel published 112.
    bytes[..4].copy_from_slice(&EntryHdr::len_op(256, abi::opcode::CMD).to_le_bytes());
    let (mut sim3, mut ring3) = setup(1024, 0);
    sim3.post_raw(&bytes).expect("raw");
    assert_broken(
        &mut ring3,
        RingFault::BeyondHead {
            at: 0,
            len: 256,
            head: 112,
        },
    );
    // (The first ring's entry claims 1032 of a 1024-byte ring: also past the end.)
    assert_broken(&mut ring, RingFault::CrossesRingEnd { at: 0, len: 1032 });
    let _ = sim.reap();
}

#[test]
fn a_command_entry_too_short_for_its_response_breaks_the_ring() {
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_raw(&raw_cmd_entry(64, 1, CmdReq::default()))
        .expect("raw");
    assert_broken(&mut ring, RingFault::CmdTooShort { at: 0, len: 64 });
}

#[test]
fn a_cmd_id_still_in_the_ring_reused_breaks_the_ring() {
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_cmd(7, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    sim.post_cmd(7, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let _first = next_command(&mut ring);
    assert_broken(&mut ring, RingFault::DuplicateCmdId { at: 128, cmd_id: 7 });

    // Finished is not enough: the kernel frees an id only once cmd_tail has passed its entry.
    let (mut sim, mut ring) = setup(1024, 0);
    for id in [5, 6, 6] {
        sim.post_cmd(id, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    }
    let _a = next_command(&mut ring);
    let b = next_command(&mut ring);
    ring.complete(b, &Response::GOOD).expect("b");
    assert_eq!(ring.state().outstanding, 1);
    assert_broken(&mut ring, RingFault::DuplicateCmdId { at: 256, cmd_id: 6 });

    // Once retired, the id may come back.
    let (mut sim, mut ring) = setup(1024, 0);
    for id in [6, 6] {
        sim.post_cmd(id, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    }
    let b = next_command(&mut ring);
    ring.complete(b, &Response::GOOD).expect("b");
    assert_eq!(next_command(&mut ring).cmd_id(), 6);
}

// ---------------------------------------------------------------------------------------------
// Faults inside one entry: refused, answered with CHECK CONDITION, the ring goes on.

/// Post `bytes`, then a good command; the ring must refuse the first with `fault`, answer it
/// with HARDWARE ERROR / INTERNAL TARGET FAILURE, and serve the second.
fn assert_refused(flags: u16, bytes: &[u8], fault: EntryFault) {
    let (mut sim, mut ring) = setup(4096, flags);
    let at = sim.post_raw(bytes).expect("raw");
    sim.post_cmd(99, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    match ring.next_entry() {
        Err(RingError::Refused { at: a, fault: f, .. }) => {
            assert_eq!((a, &f), (at, &fault));
        }
        other => panic!("expected {fault:?}, got {other:?}"),
    }
    let good = next_command(&mut ring);
    assert_eq!(good.cmd_id(), 99);
    ring.complete(good, &Response::GOOD).expect("complete");
    let done = sim.reap().unwrap_or_else(|e| panic!("{e}"));
    let answered: Vec<u16> = done.iter().map(|c| c.cmd_id).collect();
    if bytes[..4] == EntryHdr::len_op(bytes.len() as u32, abi::opcode::CMD).to_le_bytes() {
        // The raw entry was not posted through post_cmd, so the simulated kernel does not list
        // it as a command: read its response straight from the ring.
        let rsp: abi::CmdEntryRsp = sim.region().read_obj(SIM_CMDR_OFF as usize + at as usize);
        assert_eq!(rsp.rsp.scsi_status, sam_status::CHECK_CONDITION, "{fault:?}");
        assert_eq!((rsp.rsp.sense_buffer[2], rsp.rsp.sense_buffer[12]), (0x04, 0x44));
    }
    assert_eq!(answered, [99]);
}

fn cmd_bytes(len: u32, req: CmdReq, tail: &[(usize, &[u8])]) -> Vec<u8> {
    let mut b = raw_cmd_entry(len, 1, req);
    for (off, bytes) in tail {
        b[*off..off + bytes.len()].copy_from_slice(bytes);
    }
    b
}

#[test]
fn a_cdb_outside_its_entry_is_refused() {
    // The raw entry goes at ring offset 0, region offset 128; its CDB belongs at 128 + 112.
    let entry = SIM_CMDR_OFF as u64;
    let ok_cdb = entry + 112;
    for cdb_off in [0, entry, entry + 40, entry + 128, 1 << 40, u64::MAX] {
        let req = CmdReq {
            cdb_off,
            ..CmdReq::default()
        };
        let bytes = cmd_bytes(128, req, &[(112, &cdb10(READ_10, 0, 1))]);
        assert_refused(0, &bytes, EntryFault::CdbOutsideEntry { cdb_off });
    }
    // The CDB starts inside but its opcode says 16 bytes and the entry ends after 8.
    let req = CmdReq {
        cdb_off: ok_cdb + 8,
        ..CmdReq::default()
    };
    let bytes = cmd_bytes(128, req, &[(120, &[0x88])]);
    assert_refused(0, &bytes, EntryFault::CdbOutsideEntry { cdb_off: ok_cdb + 8 });
    // A variable-length CDB whose additional length runs past the entry.
    let req = CmdReq {
        cdb_off: ok_cdb,
        ..CmdReq::default()
    };
    let bytes = cmd_bytes(128, req, &[(112, &[0x7f, 0, 0, 0, 0, 0, 0, 0x40])]);
    assert_refused(0, &bytes, EntryFault::CdbOutsideEntry { cdb_off: ok_cdb });
}

#[test]
fn an_iovec_array_larger_than_its_entry_is_refused() {
    // 48 + 5 * 16 = 128 bytes would fit a 128-byte entry; 6 do not.
    for (iov_cnt, iov_bidi_cnt, iov_dif_cnt) in [
        (6, 0, 0),
        (0, 6, 0),
        (0, 0, 6),
        (2, 2, 2),
        (u32::MAX, u32::MAX, u32::MAX),
    ] {
        let req = CmdReq {
            iov_cnt,
            iov_bidi_cnt,
            iov_dif_cnt,
            cdb_off: SIM_CMDR_OFF as u64 + 112,
            ..CmdReq::default()
        };
        let bytes = cmd_bytes(128, req, &[(112, &cdb10(READ_10, 0, 1))]);
        let iovs = u64::from(iov_cnt) + u64::from(iov_bidi_cnt) + u64::from(iov_dif_cnt);
        assert_refused(0, &bytes, EntryFault::IovArrayOutsideEntry { iovs });
    }
}

#[test]
fn an_iovec_outside_the_data_area_is_refused() {
    let data_off = (SIM_CMDR_OFF + 4096) as u64;
    let end = data_off + 64 * 1024;
    let cases = [
        (0, 8),                   // the mailbox
        (SIM_CMDR_OFF as u64, 8), // the ring itself
        (data_off - 1, 8),        // straddles the ring's end
        (end - 4, 8),             // past the mapping
        (data_off, u64::MAX),     // wraps around
        (u64::MAX, 1),
    ];
    for (base, len) in cases {
        let req = CmdReq {
            iov_cnt: 1,
            cdb_off: SIM_CMDR_OFF as u64 + 128,
            ..CmdReq::default()
        };
        let v = Iovec {
            iov_base: base,
            iov_len: len,
        };
        let bytes = cmd_bytes(144, req, &[(48, v.as_bytes()), (128, &cdb10(READ_10, 0, 1))]);
        assert_refused(0, &bytes, EntryFault::IovOutsideData { index: 0, base, len });
    }
    // The second, BIDI, iovec is checked too.
    let req = CmdReq {
        iov_cnt: 1,
        iov_bidi_cnt: 1,
        cdb_off: SIM_CMDR_OFF as u64 + 144,
        ..CmdReq::default()
    };
    let good = Iovec {
        iov_base: data_off,
        iov_len: 512,
    };
    let bad = Iovec {
        iov_base: 16,
        iov_len: 512,
    };
    let bytes = cmd_bytes(
        160,
        req,
        &[
            (48, good.as_bytes()),
            (64, bad.as_bytes()),
            (144, &cdb10(READ_10, 0, 1)),
        ],
    );
    assert_refused(
        0,
        &bytes,
        EntryFault::IovOutsideData {
            index: 1,
            base: 16,
            len: 512,
        },
    );
}

#[test]
fn a_task_management_entry_with_too_many_ids_is_skipped() {
    let mut tmr = abi::TmrEntry::new_zeroed();
    tmr.hdr.len_op = EntryHdr::len_op(40, abi::opcode::TMR);
    tmr.cmd_cnt = 5; // 10 bytes of ids in 8
    let mut bytes = tmr.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 8]);
    assert_refused(
        mailbox_flags::CAP_TMR,
        &bytes,
        EntryFault::TmrIdsOutsideEntry { cmd_cnt: 5 },
    );
    let short = EntryHdr::len_op(16, abi::opcode::TMR).to_le_bytes();
    let mut bytes = short.to_vec();
    bytes.resize(16, 0);
    assert_refused(
        mailbox_flags::CAP_TMR,
        &bytes,
        EntryFault::TmrTooShort { len: 16 },
    );
}

// ---------------------------------------------------------------------------------------------
// Random producer/consumer interleavings.

mod random {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::collections::VecDeque;

    const SLOTS: u16 = 16;
    const SLOT_SIZE: usize = 2048;

    #[derive(Debug, Clone)]
    enum Op {
        /// Post a command: CDB opcode, iovec lengths (each inside its command's data slot).
        Post(u8, Vec<u16>),
        /// Post a TMR naming some outstanding commands.
        Tmr,
        /// Consumer reads the next entry.
        Consume,
        /// Consumer completes the held command at this index (modulo).
        Complete(usize),
        /// Kernel reaps.
        Reap,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (
                prop::sample::select(vec![0x00u8, 0x28, 0x2a, 0x88, 0xa8, 0x7f]),
                prop::collection::vec(1u16..300, 0..7)
            )
                .prop_map(|(o, l)| Op::Post(o, l)),
            1 => Just(Op::Tmr),
            3 => Just(Op::Consume),
            3 => any::<usize>().prop_map(Op::Complete),
            2 => Just(Op::Reap),
        ]
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Expected {
        Cmd(u16, Vec<u8>, Vec<u8>),
        Tmr(Vec<u16>),
    }

    fn cdb_for(opcode: u8, id: u16) -> Vec<u8> {
        let len = abi::cdb_len(opcode, 0x10);
        let mut c: Vec<u8> = (0..len).map(|i| (i as u16 * 7 + id) as u8).collect();
        c[0] = opcode;
        if opcode == 0x7f {
            c[7] = 0x10;
        }
        c
    }

    fn response_for(id: u16) -> (u8, Vec<u8>) {
        if id.is_multiple_of(3) {
            (
                sam_status::CHECK_CONDITION,
                vec![0x70, 0, 3, id as u8, (id >> 8) as u8],
            )
        } else {
            (sam_status::GOOD, vec![])
        }
    }

    struct World {
        sim: SimKernel,
        ring: Ring,
        /// What the consumer must read next, in order.
        to_read: VecDeque<Expected>,
        /// Commands the kernel posted and not yet reaped, in ring order.
        in_ring: VecDeque<u16>,
        held: Vec<TcmuCommand>,
        completed: HashMap<u16, u8>,
        next_id: u16,
        reaped: usize,
        tmr: bool,
        /// `CAP_OOOC` advertised: completions are reaped in the order the commands finished.
        out_of_order: bool,
        /// Out of order: the ids finished and not yet reaped, in finishing order.
        finished: VecDeque<u16>,
    }

    impl World {
        fn free_id(&mut self) -> Option<u16> {
            for _ in 0..SLOTS {
                let id = self.next_id;
                self.next_id = (self.next_id + 1) % SLOTS;
                if !self.in_ring.contains(&id) {
                    return Some(id);
                }
            }
            None
        }

        fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Post(opcode, lens) => {
                    let Some(id) = self.free_id() else { return Ok(()) };
                    let slot = self.sim.data_off() + usize::from(id) * SLOT_SIZE;
                    let mut at = slot;
                    let mut iovs = Vec::new();
                    let mut data = Vec::new();
                    for len in lens {
                        let bytes: Vec<u8> = (0..len).map(|i| (i ^ id.wrapping_mul(31)) as u8).collect();
                        self.sim.write_data(at, &bytes);
                        iovs.push(iov(at, bytes.len()));
                        data.extend_from_slice(&bytes);
                        at += bytes.len();
                    }
                    let cdb = cdb_for(opcode, id);
                    match self.sim.post_cmd(id, &cdb, &iovs, &[]) {
                        Ok(_) => {
                            self.to_read.push_back(Expected::Cmd(id, cdb, data));
                            self.in_ring.push_back(id);
                        }
                        Err(SimError::RingFull { .. }) => {}
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                Op::Tmr => {
                    let ids: Vec<u16> = self.held.iter().map(|c| c.cmd_id()).take(3).collect();
                    // Without CAP_TMR the opcode is unknown to the ring: flagged and skipped.
                    if self.sim.post_tmr(abi::tmr_type::ABORT_TASK_SET, &ids).is_ok() && self.tmr {
                        self.to_read.push_back(Expected::Tmr(ids));
                    }
                }
                Op::Consume => match self.ring.next_entry() {
                    Ok(None) => prop_assert!(
                        self.to_read.is_empty(),
                        "ring empty but {:?} posted",
                        self.to_read
                    ),
                    Ok(Some(RingEntry::Command(c))) => {
                        let mut data = vec![0u8; c.data_len()];
                        self.ring.read_data(&c, 0, &mut data).expect("read");
                        let got = Expected::Cmd(c.cmd_id(), c.cdb().to_vec(), data);
                        prop_assert_eq!(Some(got), self.to_read.pop_front());
                        self.held.push(c);
                    }
                    Ok(Some(RingEntry::TaskManagement(t))) => {
                        prop_assert_eq!(Some(Expected::Tmr(t.cmd_ids)), self.to_read.pop_front());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("ring error {e}"))),
                },
                Op::Complete(i) => {
                    if !self.held.is_empty() {
                        let c = self.held.swap_remove(i % self.held.len());
                        let id = c.cmd_id();
                        let (status, sense) = response_for(id);
                        self.ring
                            .complete(
                                c,
                                &Response {
                                    status,
                                    sense: &sense,
                                    read_len: None,
                                },
                            )
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        self.completed.insert(id, status);
                        if self.out_of_order {
                            self.finished.push_back(id);
                        }
                    }
                }
                Op::Reap => {
                    let done = self.sim.reap().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for c in done {
                        if self.out_of_order {
                            // In finishing order, each answer in the next CMD entry at the tail.
                            prop_assert_eq!(Some(c.cmd_id), self.finished.pop_front());
                            let at = self.in_ring.iter().position(|&id| id == c.cmd_id);
                            prop_assert!(at.is_some(), "cmd {} not in the ring", c.cmd_id);
                            self.in_ring.remove(at.unwrap_or_default());
                        } else {
                            // The kernel sees completions in ring order, each of a finished
                            // command.
                            prop_assert_eq!(Some(c.cmd_id), self.in_ring.pop_front());
                        }
                        let status = self.completed.remove(&c.cmd_id);
                        prop_assert_eq!(status, Some(c.status), "cmd {} not finished", c.cmd_id);
                        let (_, sense) = response_for(c.cmd_id);
                        prop_assert_eq!(&c.sense[..sense.len()], &sense[..]);
                        self.reaped += 1;
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn random_producer_and_consumer_sequences_agree(
            ring_words in 40u32..160,
            tmr in any::<bool>(),
            out_of_order in any::<bool>(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let sim = SimKernel::new(SimConfig {
                cmdr_size: ring_words * 8,
                data_size: usize::from(SLOTS) * SLOT_SIZE,
                flags: if tmr { mailbox_flags::CAP_TMR } else { 0 }
                    | if out_of_order { mailbox_flags::CAP_OOOC } else { 0 },
            });
            let ring = Ring::attach(sim.region().clone()).expect("attach");
            let mut w = World {
                sim,
                ring,
                to_read: VecDeque::new(),
                in_ring: VecDeque::new(),
                held: Vec::new(),
                completed: HashMap::new(),
                next_id: 0,
                reaped: 0,
                tmr,
                out_of_order,
                finished: VecDeque::new(),
            };
            for op in ops {
                w.step(op)?;
            }
            // Drain: read everything, finish everything, reap everything.
            while !w.to_read.is_empty() {
                w.step(Op::Consume)?;
            }
            // Once more: entries after the last command (an unknown opcode) are consumed on
            // the way to "caught up".
            w.step(Op::Consume)?;
            while !w.held.is_empty() {
                w.step(Op::Complete(0))?;
            }
            w.step(Op::Reap)?;
            prop_assert!(w.in_ring.is_empty(), "never reaped: {:?}", w.in_ring);
            prop_assert!(w.completed.is_empty());
            prop_assert_eq!(w.sim.posted(), 0);
            prop_assert_eq!(w.sim.free(), ring_words * 8 - 1);
            let state = w.ring.state();
            prop_assert_eq!((state.next, state.tail, state.unretired), (w.sim.head(), w.sim.head(), 0));
        }
    }

    /// One entry of a hostile ring: mostly shaped like the kernel's, with one field or another
    /// wrong.
    #[derive(Debug, Clone)]
    struct Hostile {
        kind: u8,
        a: u64,
        b: u64,
        c: u64,
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        (0u8..10, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(kind, a, b, c)| Hostile {
            kind,
            a,
            b,
            c,
        })
    }

    /// One hostile entry for ring offset `at` (its CDB offset is made from it): its length by
    /// its header, and its bytes (at least that many; more where the length was jittered short).
    fn hostile_entry(e: &Hostile, at: usize, data_off: u64, data_size: u64) -> (usize, Vec<u8>) {
        let jitter = |x: u64, every: u64| x.is_multiple_of(every);
        match e.kind {
            0..=6 => {
                let iovs = (e.a % 4) as usize;
                let base = abi::CMD_ENTRY_SIZE + 16 * iovs;
                let opcode = [0x00u8, 0x28, 0x2a, 0x88, 0xa8, 0x7f, 0x12][(e.b % 7) as usize];
                let mut len = (base + 16).next_multiple_of(8);
                if jitter(e.c, 5) {
                    len = ((e.c >> 8) % 320) as usize & !7;
                }
                let mut b = vec![0u8; len.max(abi::CMD_ENTRY_SIZE + 16 * 4 + 32)];
                b[..4].copy_from_slice(&EntryHdr::len_op(len as u32, abi::opcode::CMD).to_le_bytes());
                b[4..6].copy_from_slice(&((e.a >> 16) as u16 % 8).to_le_bytes());
                b[8..12].copy_from_slice(
                    &(if jitter(e.c, 7) {
                        (e.c >> 20) as u32
                    } else {
                        iovs as u32
                    })
                    .to_le_bytes(),
                );
                let mut cdb_off = SIM_CMDR_OFF as u64 + at as u64 + base as u64;
                if jitter(e.c, 3) {
                    cdb_off = cdb_off.wrapping_add((e.b >> 8) % 64).wrapping_sub(32);
                }
                b[24..32].copy_from_slice(&cdb_off.to_le_bytes());
                for i in 0..iovs {
                    let mut base = data_off + ((e.a >> 24) + i as u64 * 512) % data_size;
                    let mut len = (e.b >> (16 + i)) % 1024;
                    if jitter(e.c >> 8, 11) {
                        base = e.b.rotate_left(i as u32 * 7);
                        len = e.a.rotate_left(i as u32 * 13);
                    }
                    let o = abi::IOV_ARRAY_OFFSET + 16 * i;
                    b[o..o + 8].copy_from_slice(&base.to_le_bytes());
                    b[o + 8..o + 16].copy_from_slice(&len.to_le_bytes());
                }
                b[base] = opcode;
                b[base + 7] = (e.c >> 32) as u8;
                (len, b)
            }
            7 => {
                let len = ((e.a % 64) * 8) as usize;
                let mut b = vec![0u8; len.max(8)];
                b[..4].copy_from_slice(&EntryHdr::len_op(len as u32, abi::opcode::PAD).to_le_bytes());
                (len, b)
            }
            8 => {
                let cnt = if jitter(e.c, 4) {
                    (e.b >> 32) as u32
                } else {
                    (e.b % 8) as u32
                };
                let len = if jitter(e.c, 6) {
                    ((e.a % 8) * 8) as usize
                } else {
                    (32 + 2 * cnt as usize).next_multiple_of(8).min(512)
                };
                let mut b = vec![0u8; len.max(32)];
                b[..4].copy_from_slice(&EntryHdr::len_op(len as u32, abi::opcode::TMR).to_le_bytes());
                b[12..16].copy_from_slice(&cnt.to_le_bytes());
                (len, b)
            }
            _ => {
                let len = ((e.a % 8 + 1) * 8) as usize;
                let mut b = vec![0u8; len];
                b[..4].copy_from_slice(&EntryHdr::len_op(len as u32, 3 + (e.b % 5) as u32).to_le_bytes());
                (len, b)
            }
        }
    }

    /// Lay `entries` out from ring offset 0 into `ring` (cmdr_size bytes); returns where the
    /// last one ends (the head a kernel would publish).
    fn lay_out(entries: &[Hostile], ring: &mut [u8], data_off: u64, data_size: u64) -> usize {
        let mut at = 0usize;
        for e in entries {
            if at + 8 > ring.len() {
                break;
            }
            let (len, bytes) = hostile_entry(e, at, data_off, data_size);
            let n = bytes.len().min(ring.len() - at);
            ring[at..at + n].copy_from_slice(&bytes[..n]);
            if len == 0 {
                break;
            }
            at += len;
        }
        at
    }

    /// A command handed out from a hostile ring: its CDB as long as its opcode says, its data
    /// inside the data area (`data_off` to `region_len`).
    fn check_sound(c: &TcmuCommand, data_off: u64, region_len: usize) -> Result<(), TestCaseError> {
        let cdb = c.cdb();
        let want = abi::cdb_len(cdb[0], cdb.get(7).copied().unwrap_or(0));
        prop_assert_eq!(cdb.len(), want);
        for s in c.data().iter().chain(c.bidi_in()) {
            prop_assert!(s.off as u64 >= data_off && s.off + s.len <= region_len, "{s:?}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// A ring full of garbage (as after a kernel bug or a stale mapping): the consumer never
        /// panics, never spins, and hands out only commands whose CDB and data lie where they
        /// must.
        #[test]
        fn a_ring_of_garbage_is_refused_without_panics_or_spinning(
            ring_words in 16u32..96,
            flags in 0u16..16,
            entries in prop::collection::vec(hostile(), 1..12),
            head_kind in 0u8..8,
            head_word in any::<u32>(),
        ) {
            let cmdr_size = ring_words * 8;
            let data_size = 4096;
            let data_off = (SIM_CMDR_OFF + cmdr_size) as u64;
            let region = Region::new(Arc::new(HeapMemory::new(data_off as usize + data_size)));
            let mut bytes = vec![0u8; cmdr_size as usize];
            let end = lay_out(&entries, &mut bytes, data_off, data_size as u64);
            let mut mb = Mailbox::new_zeroed();
            mb.version = abi::TCMU_MAILBOX_VERSION;
            mb.flags = flags;
            mb.cmdr_off = SIM_CMDR_OFF;
            mb.cmdr_size = cmdr_size;
            // Mostly where the entries end (as the kernel would publish), else anywhere.
            mb.cmd_head = match head_kind {
                0 => head_word,
                1 => (head_word % ring_words) * 8,
                _ => (end % cmdr_size as usize) as u32,
            };
            region.write_mailbox(&mb);
            region.write(SIM_CMDR_OFF as usize, &bytes);
            let mut ring = Ring::attach(region.clone()).expect("the mailbox is valid");
            // Every successful step consumes at least 8 bytes of at most cmdr_size published.
            let mut steps = 0;
            loop {
                steps += 1;
                prop_assert!(steps <= ring_words as usize + 2, "no progress after {steps} steps");
                match ring.next_entry() {
                    Ok(None) | Err(RingError::Broken(_)) => break,
                    Ok(Some(RingEntry::Command(c))) => {
                        check_sound(&c, data_off, region.len())?;
                        ring.complete(c, &Response::GOOD).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                    Ok(Some(RingEntry::TaskManagement(_))) | Err(RingError::Refused { .. }) => {}
                    Err(e @ RingError::NotOutstanding { .. }) => return Err(TestCaseError::fail(e.to_string())),
                }
                let state = ring.state();
                prop_assert!(state.tail < cmdr_size && state.tail.is_multiple_of(8), "{state:?}");
            }
        }
    }

    /// The hostile ring out of order (`CAP_OOOC`): well-formed commands, forged entries (from
    /// [`hostile`], under fresh ids), a command posted under the id of one still held, ring
    /// resets, and the commands held and released in an order the strategy chooses, answered
    /// through the simulated kernel, which reaps by `cmd_id` and breaks on an unknown one.
    mod out_of_order {
        use super::*;
        use std::collections::HashSet;

        /// Data slots of the well-formed commands (one each), then the zone of forged iovecs.
        const SLOTS: usize = 8;
        const SLOT_SIZE: usize = 256;
        const FORGED_SIZE: usize = 2048;

        #[derive(Debug, Clone)]
        enum Op {
            /// The kernel posts a command: CDB opcode, Data-Out length in its slot.
            Post(u8, u16),
            /// The kernel posts a forged entry (under a fresh id if its header says CMD).
            Forged(Hostile),
            /// The kernel posts a command under the id of the held one at this index (modulo).
            Duplicate(usize),
            Tmr,
            Consume,
            /// The test releases the held command at this index (modulo), its Data-In first if
            /// asked.
            Release(usize, bool),
            Reap,
            /// `action/reset_ring`; the handler restarts on a fresh ring, and the commands held
            /// stay with the old one.
            Reset,
            /// A command held when the ring was reset is handed to its old ring.
            Stale(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            // A duplicate and most stream faults break the ring for good, and nothing is served
            // until a reset: few of them, and resets often enough that most of a sequence runs
            // on a sound ring.
            prop_oneof![
                8 => (prop::sample::select(vec![0x00u8, 0x28, 0x2a, 0x88, 0xa8]), 1..=SLOT_SIZE as u16)
                    .prop_map(|(o, l)| Op::Post(o, l)),
                3 => hostile().prop_map(Op::Forged),
                1 => any::<usize>().prop_map(Op::Duplicate),
                1 => Just(Op::Tmr),
                8 => Just(Op::Consume),
                8 => (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Op::Release(i, d)),
                4 => Just(Op::Reap),
                2 => Just(Op::Reset),
                2 => any::<usize>().prop_map(Op::Stale),
            ]
        }

        fn data_in(id: u16, len: usize) -> Vec<u8> {
            (0..len)
                .map(|i| (i as u16 ^ id.wrapping_mul(57) ^ 0xa5) as u8)
                .collect()
        }

        struct World {
            sim: SimKernel,
            ring: Ring,
            /// The ring reported itself broken (the kernel's commands may go unanswered).
            broken: bool,
            held: Vec<TcmuCommand>,
            /// The commands the kernel posted and has not reaped (`udev->commands`).
            in_kernel: HashSet<u16>,
            /// Answers given (a command released, a CMD entry refused) and not yet reaped, in
            /// the order given: the order the kernel must reap them in.
            answered: VecDeque<(u16, u8, Vec<u8>)>,
            /// The slot of each well-formed command not yet reaped, and its Data-Out.
            slot_of: HashMap<u16, (usize, Vec<u8>)>,
            /// What the slots must hold: the Data-Out posted, then the Data-In given, kept after
            /// the command is reaped (nothing touches a block after its completion).
            slots: Vec<u8>,
            /// The ring as the kernel posted it: what lies from `cmd_tail` to `cmd_head` must be
            /// this.
            posted: Vec<u8>,
            next_id: u16,
            /// Old rings of resets, each with the commands it held.
            stale: Vec<(Ring, Vec<TcmuCommand>)>,
        }

        impl World {
            fn new(cmdr_size: u32, flags: u16) -> Self {
                let sim = SimKernel::new(SimConfig {
                    cmdr_size,
                    data_size: SLOTS * SLOT_SIZE + FORGED_SIZE,
                    flags,
                });
                let ring = Ring::attach(sim.region().clone()).expect("attach");
                Self {
                    sim,
                    ring,
                    broken: false,
                    held: Vec::new(),
                    in_kernel: HashSet::new(),
                    answered: VecDeque::new(),
                    slot_of: HashMap::new(),
                    slots: vec![0; SLOTS * SLOT_SIZE],
                    posted: vec![0; cmdr_size as usize],
                    next_id: 1,
                    stale: Vec::new(),
                }
            }

            /// A new id: the kernel's are cyclic (`xa_alloc_cyclic`), never one still posted.
            fn fresh_id(&mut self) -> u16 {
                self.next_id = self.next_id.wrapping_add(1).max(1);
                self.next_id
            }

            fn forged_off(&self) -> u64 {
                (self.sim.data_off() + SLOTS * SLOT_SIZE) as u64
            }

            fn region_bytes(&self, off: usize, len: usize) -> Vec<u8> {
                self.sim.read_data(off, len)
            }

            /// `cmd_tail`, the ring and the data area: what a ring that must write nothing
            /// leaves as it was.
            fn snapshot(&self) -> (u32, Vec<u8>) {
                let tail = self.sim.region().load_u32_acquire(abi::MB_CMD_TAIL);
                let from = SIM_CMDR_OFF as usize;
                (tail, self.region_bytes(from, self.sim.region().len() - from))
            }

            /// The kernel posted (a command under `kernel_id`, if any): note what the ring now
            /// holds.
            fn note_posted(&mut self, kernel_id: Option<u16>) {
                self.posted = self.region_bytes(SIM_CMDR_OFF as usize, self.posted.len());
                self.in_kernel.extend(kernel_id);
            }

            /// No entry ahead of `cmd_tail` was written: from there to `cmd_head`, the ring is
            /// as the kernel posted it.
            fn check_ahead(&self) -> Result<(), TestCaseError> {
                let tail = self.sim.region().load_u32_acquire(abi::MB_CMD_TAIL) as usize;
                let head = self.sim.head() as usize;
                let now = self.region_bytes(SIM_CMDR_OFF as usize, self.posted.len());
                let n = self.posted.len();
                let mut at = tail;
                while at != head {
                    prop_assert_eq!(
                        now[at],
                        self.posted[at],
                        "ring byte {} ahead of cmd_tail {} written",
                        at,
                        tail
                    );
                    at = (at + 1) % n;
                }
                Ok(())
            }

            /// The data slots hold what the kernel and the test put there, nothing else.
            fn check_slots(&self) -> Result<(), TestCaseError> {
                let now = self.region_bytes(self.sim.data_off(), self.slots.len());
                prop_assert!(now == self.slots, "a data slot was touched");
                Ok(())
            }

            fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
                match op {
                    Op::Post(opcode, len) => {
                        self.post(opcode, len, None)?;
                    }
                    Op::Forged(e) => self.forge(&e)?,
                    Op::Duplicate(i) => {
                        if self.broken || self.held.is_empty() {
                            return Ok(());
                        }
                        let id = self.held[i % self.held.len()].cmd_id();
                        if self.post(0x28, 0, Some(id))? {
                            // Read up to it: the ring must break there (or before), not catch
                            // up past it (`consume` refuses a second command under one id).
                            let mut steps = 0;
                            while self.consume()? {
                                steps += 1;
                                prop_assert!(steps <= self.posted.len() / 8 + 2, "no progress");
                            }
                            prop_assert!(self.broken, "cmd_id {} of a held command accepted again", id);
                        }
                    }
                    Op::Tmr => {
                        let ids: Vec<u16> = self.held.iter().map(|c| c.cmd_id()).take(3).collect();
                        if self.sim.post_tmr(abi::tmr_type::ABORT_TASK, &ids).is_ok() {
                            self.note_posted(None);
                        }
                    }
                    Op::Consume => {
                        self.consume()?;
                    }
                    Op::Release(i, data) => {
                        if !self.held.is_empty() {
                            let c = self.held.swap_remove(i % self.held.len());
                            self.release(c, data)?;
                        }
                    }
                    Op::Reap => self.reap()?,
                    Op::Reset => self.reset(),
                    Op::Stale(i) => {
                        if let Some(k) = (!self.stale.is_empty()).then(|| i % self.stale.len()) {
                            self.stale_release(k)?;
                        }
                    }
                }
                Ok(())
            }

            /// A well-formed command in a free slot (under `id` if given, else a fresh one);
            /// whether it was posted.
            fn post(&mut self, opcode: u8, len: u16, id: Option<u16>) -> Result<bool, TestCaseError> {
                let busy: HashSet<usize> = self.slot_of.values().map(|(s, _)| *s).collect();
                let Some(slot) = (0..SLOTS).find(|s| !busy.contains(s)) else {
                    return Ok(false);
                };
                let id = id.unwrap_or_else(|| self.fresh_id());
                let off = self.sim.data_off() + slot * SLOT_SIZE;
                let out: Vec<u8> = (0..usize::from(len)).map(|i| (i as u16 * 3 + id) as u8).collect();
                let iovs = if len == 0 {
                    vec![]
                } else {
                    vec![iov(off, out.len())]
                };
                match self.sim.post_cmd(id, &cdb_for(opcode, id), &iovs, &[]) {
                    Ok(_) => {}
                    Err(SimError::RingFull { .. }) => return Ok(false),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
                // The Data-Out, copied in by the kernel (before the post, in its order; same here).
                self.sim.write_data(off, &out);
                self.slots[slot * SLOT_SIZE..][..out.len()].copy_from_slice(&out);
                self.slot_of.entry(id).or_insert((slot, out));
                self.note_posted(Some(id));
                Ok(true)
            }

            /// A forged entry where the kernel would put it, its posted length that of its
            /// header (8 bytes for length 0), under a fresh id if it says CMD.
            fn forge(&mut self, e: &Hostile) -> Result<(), TestCaseError> {
                let forged = (self.forged_off(), FORGED_SIZE as u64);
                let (len, _) = hostile_entry(e, 0, forged.0, forged.1);
                let len = len.max(8);
                let head = self.sim.head() as usize;
                let at = if len > self.posted.len() - head { 0 } else { head };
                let (_, mut bytes) = hostile_entry(e, at, forged.0, forged.1);
                bytes.truncate(len);
                let is_cmd = u32::from_le_bytes(bytes[..4].try_into().expect("4")) & abi::TCMU_OP_MASK
                    == abi::opcode::CMD;
                let id = is_cmd.then(|| self.fresh_id());
                if let Some(id) = id {
                    bytes[abi::HDR_CMD_ID..][..2].copy_from_slice(&id.to_ne_bytes());
                }
                match self.sim.post_raw(&bytes) {
                    Ok(_) => self.note_posted(id),
                    Err(SimError::RingFull { .. }) => {}
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
                Ok(())
            }

            /// One `next_entry`; false once the ring has nothing more to hand out (caught up or
            /// broken).
            fn consume(&mut self) -> Result<bool, TestCaseError> {
                let more = match self.ring.next_entry() {
                    Ok(None) => false,
                    Ok(Some(RingEntry::Command(c))) => {
                        let id = c.cmd_id();
                        prop_assert!(self.in_kernel.contains(&id), "cmd_id {} never posted", id);
                        prop_assert!(
                            self.held.iter().all(|h| h.cmd_id() != id),
                            "cmd_id {} handed out twice",
                            id
                        );
                        check_sound(&c, self.sim.data_off() as u64, self.sim.region().len())?;
                        if let Some((slot, out)) = self.slot_of.get(&id) {
                            let mut data = vec![0u8; c.data_len()];
                            self.ring
                                .read_data(&c, 0, &mut data)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(&data, out, "slot {}", slot);
                        }
                        self.held.push(c);
                        true
                    }
                    Ok(Some(RingEntry::TaskManagement(_))) => true,
                    Err(RingError::Refused { cmd_id, fault, .. }) => {
                        if !matches!(
                            fault,
                            EntryFault::TmrTooShort { .. } | EntryFault::TmrIdsOutsideEntry { .. }
                        ) {
                            prop_assert!(self.in_kernel.contains(&cmd_id), "cmd_id {} never posted", cmd_id);
                            let sense = INTERNAL_TARGET_FAILURE.to_vec();
                            self.answered
                                .push_back((cmd_id, sam_status::CHECK_CONDITION, sense));
                        }
                        true
                    }
                    Err(RingError::Broken(_)) => {
                        self.broken = true;
                        false
                    }
                    Err(e @ RingError::NotOutstanding { .. }) => {
                        return Err(TestCaseError::fail(e.to_string()))
                    }
                };
                self.check_ahead()?;
                Ok(more)
            }

            fn release(&mut self, c: TcmuCommand, data: bool) -> Result<(), TestCaseError> {
                let id = c.cmd_id();
                let fill = data_in(id, c.data_len().min(FORGED_SIZE));
                let forged = self.forged_off() as usize..self.sim.region().len();
                let own = self.slot_of.get(&id).map(|(slot, _)| *slot);
                let writable = own.is_some()
                    || c.data()
                        .iter()
                        .all(|s| forged.contains(&s.off) && s.off + s.len <= forged.end);
                if self.broken {
                    let before = self.snapshot();
                    prop_assert!(self.ring.write_data(&c, 0, &fill).is_err());
                    prop_assert!(self.ring.complete(c, &Response::GOOD).is_err());
                    prop_assert!(self.snapshot() == before, "a broken ring wrote");
                    return Ok(());
                }
                if data && writable {
                    prop_assert_eq!(self.ring.write_data(&c, 0, &fill), Ok(fill.len()));
                    if let Some(slot) = own {
                        self.slots[slot * SLOT_SIZE..][..fill.len()].copy_from_slice(&fill);
                    }
                }
                let (status, sense) = response_for(id);
                let rsp = Response {
                    status,
                    sense: &sense,
                    read_len: None,
                };
                self.ring
                    .complete(c, &rsp)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.answered.push_back((id, status, sense));
                self.check_ahead()?;
                self.check_slots()
            }

            fn reap(&mut self) -> Result<(), TestCaseError> {
                let done = self.sim.reap().map_err(|e| TestCaseError::fail(e.to_string()))?;
                for c in done {
                    // Each answer once, in the order given, for a command the kernel posted.
                    let Some((id, status, sense)) = self.answered.pop_front() else {
                        return Err(TestCaseError::fail(format!(
                            "cmd_id {} answered, none given",
                            c.cmd_id
                        )));
                    };
                    prop_assert_eq!((c.cmd_id, c.status), (id, status));
                    prop_assert_eq!(&c.sense[..sense.len()], &sense[..]);
                    prop_assert!(self.in_kernel.remove(&id));
                    self.slot_of.remove(&id);
                }
                self.check_slots()
            }

            fn reset(&mut self) {
                self.sim.reset_ring();
                let fresh = Ring::attach(self.sim.region().clone()).expect("attach");
                let old = std::mem::replace(&mut self.ring, fresh);
                if !self.held.is_empty() {
                    self.stale.push((old, std::mem::take(&mut self.held)));
                }
                // The kernel forgets every command and frees their blocks.
                self.broken = false;
                self.in_kernel.clear();
                self.answered.clear();
                self.slot_of.clear();
                self.note_posted(None);
            }

            /// The old ring hands out nothing more, and neither writes the command's Data-In
            /// (its blocks are the kernel's again) nor answers it: not a byte changes.
            fn stale_release(&mut self, k: usize) -> Result<(), TestCaseError> {
                let before = self.snapshot();
                let (old, cmds) = &mut self.stale[k];
                let c = cmds.pop().expect("a stale ring keeps commands");
                let entry = old.next_entry();
                prop_assert!(
                    !matches!(entry, Ok(Some(_))),
                    "a reset ring handed out {:?}",
                    entry
                );
                let fill = data_in(c.cmd_id(), c.data_len().min(FORGED_SIZE));
                prop_assert!(matches!(old.write_data(&c, 0, &fill), Err(RingError::Broken(_))));
                let done = old.complete(c, &Response::GOOD);
                prop_assert!(matches!(done, Err(RingError::Broken(_))), "{:?}", done);
                if cmds.is_empty() {
                    self.stale.swap_remove(k);
                }
                prop_assert!(self.snapshot() == before, "a reset ring wrote");
                Ok(())
            }

            /// Read everything, release everything (last held first), reap.
            fn drain(&mut self) -> Result<(), TestCaseError> {
                let mut steps = 0;
                while self.consume()? {
                    steps += 1;
                    prop_assert!(
                        steps <= self.posted.len() / 8 + 2,
                        "no progress after {} steps",
                        steps
                    );
                }
                while let Some(c) = self.held.pop() {
                    self.release(c, true)?;
                }
                self.reap()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            /// Every command the kernel posted is answered exactly once, in the order answered,
            /// with its own answer, or the ring says it is broken; no answer names an id not
            /// posted (the simulated kernel breaks on one); nothing ahead of `cmd_tail` is
            /// written; a command's data blocks are not touched after its completion (a reset
            /// completes every command); and after a reset a fresh ring serves cleanly while the
            /// old one refuses everything.
            #[test]
            fn a_hostile_ring_out_of_order_answers_each_command_once_or_breaks(
                ring_words in 40u32..160,
                flags in 0u16..8,
                ops in prop::collection::vec(op(), 1..160),
            ) {
                let mut w = World::new(ring_words * 8, (flags << 1) | mailbox_flags::CAP_OOOC);
                for op in ops {
                    w.step(op)?;
                }
                w.drain()?;
                if !w.broken {
                    prop_assert!(w.in_kernel.is_empty(), "never answered: {:?}", w.in_kernel);
                    prop_assert!(w.answered.is_empty());
                    let state = w.ring.state();
                    prop_assert_eq!((state.tail, state.unretired, state.outstanding), (w.sim.head(), 0, 0));
                }
                while !w.stale.is_empty() {
                    w.step(Op::Stale(0))?;
                }
                // A reset, and the fresh ring serves two commands (all the smallest ring holds)
                // answered last first.
                w.reset();
                for len in [16, 64] {
                    prop_assert!(w.post(0x28, len, None)?);
                }
                w.drain()?;
                prop_assert!(!w.broken && w.in_kernel.is_empty());
                prop_assert_eq!(w.sim.posted(), 0);
            }
        }
    }
}

#[test]
fn a_head_that_would_lap_the_unretired_entries_breaks_the_ring() {
    // (Audit: a forged cmd_head walking round the ring was read as ever new entries over the
    // outstanding command's own, and the slot table grew without bound.)
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let _cmd = next_command(&mut ring);
    let pad = |len: u32| EntryHdr {
        len_op: EntryHdr::len_op(len, abi::opcode::PAD),
        ..EntryHdr::default()
    };
    // A PAD from 128 to the ring's end and cmd_head at 0 again: the 128 bytes at 0 are not
    // retired, so the kernel (one byte kept free, `spc_free`) could not have posted it.
    sim.region().write_obj(SIM_CMDR_OFF as usize + 128, &pad(896));
    // The extent check alone refuses it (the bytes to the tail are not free)...
    assert_eq!(
        ring.check_extent(128, 896, 0),
        Err(RingError::Broken(RingFault::Lapped {
            at: 128,
            len: 896,
            unretired: 128,
        }))
    );
    // ...and before it, cmd_head at our tail with entries unretired is behind our read
    // position: a reset (the audit's forged head, as the ring reports it).
    sim.corrupt_head(0);
    assert_broken(
        &mut ring,
        RingFault::HeadBehind {
            head: 0,
            next: 128,
            tail: 0,
        },
    );
    assert_eq!(ring.state().unretired, 1);
}

#[test]
fn entries_filling_the_ring_but_one_byte_are_read() {
    // The largest the kernel posts: everything but the one byte it keeps free (here 8, the
    // alignment), in two entries.
    let (mut sim, mut ring) = setup(1024, 0);
    sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let _cmd = next_command(&mut ring);
    let pad = EntryHdr {
        len_op: EntryHdr::len_op(888, abi::opcode::PAD),
        ..EntryHdr::default()
    };
    sim.region().write_obj(SIM_CMDR_OFF as usize + 128, &pad);
    sim.corrupt_head(1016);
    assert_eq!(ring.next_entry(), Ok(None));
    assert_eq!(ring.state().unretired, 2);
}

#[test]
fn an_answer_writes_the_entrys_uflags_exactly() {
    // (Audit: the answer's flags were ORed into the entry's, and not written at all when 0, so
    // a corrupted KEEP_BUF or UNKNOWN_OP bit went back to the kernel.)
    let (mut sim, mut ring) = setup(4096, mailbox_flags::CAP_READ_LEN);
    let a = sim.post_cmd(1, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let b = sim.post_cmd(2, &cdb10(READ_10, 0, 1), &[], &[]).expect("post");
    let first = next_command(&mut ring);
    let second = next_command(&mut ring);
    let stray = abi::uflags::KEEP_BUF | abi::uflags::UNKNOWN_OP;
    for at in [a, b] {
        sim.region()
            .write_obj(SIM_CMDR_OFF as usize + at as usize + abi::HDR_UFLAGS, &stray);
    }
    ring.complete(first, &Response::GOOD).expect("complete");
    let short = Response {
        read_len: Some(100),
        ..Response::GOOD
    };
    ring.complete(second, &short).expect("complete");
    let done = sim.reap().expect("reap");
    assert_eq!(
        done.iter().map(|c| (c.cmd_id, c.uflags)).collect::<Vec<_>>(),
        [(1, 0), (2, abi::uflags::READ_LEN)]
    );
}

#[test]
fn a_reset_while_our_tail_is_zero_is_seen_before_an_answer_lands_on_a_new_entry() {
    // (Audit: commands 1 and 2 in flight with cmd_tail 0; action/reset_ring; the kernel posts
    // new writes 4 and 5 at 0 and 128, where our late answers to 1 and 2 went: the kernel
    // reaped GOOD for writes that never ran.)
    let (mut sim, mut ring) = setup(4096, 0);
    let cdb = cdb10(WRITE_10, 0, 1);
    sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    let first = next_command(&mut ring);
    let second = next_command(&mut ring);
    assert_eq!(ring.state().tail, 0);
    let read: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    sim.reset_ring();
    sim.post_cmd(4, &cdb, &[], &[]).expect("post");
    sim.post_cmd(5, &cdb, &[], &[]).expect("post");
    // cmd_head is back where we read up to: nothing to see yet.
    assert_eq!(ring.next_entry(), Ok(None));
    let found: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    let fault = RingFault::EntryChanged { at: 0, read, found };
    assert_eq!(found.cmd_id, 4);
    assert_eq!(
        ring.complete(first, &Response::GOOD),
        Err(RingError::Broken(fault.clone()))
    );
    assert_eq!(
        ring.complete(second, &Response::GOOD),
        Err(RingError::Broken(fault))
    );
    assert_eq!(
        sim.region().load_u32_acquire(abi::MB_CMD_TAIL),
        0,
        "cmd_tail left alone"
    );
    assert_eq!(sim.reap().expect("reap"), [], "nothing answered");
    // The new entries are intact for a handler started afresh.
    let mut fresh = Ring::attach(sim.region().clone()).expect("attach");
    assert_eq!(next_command(&mut fresh).cmd_id(), 4);
    assert_eq!(next_command(&mut fresh).cmd_id(), 5);
}

/// A reset while our `cmd_tail` is 0, and the kernel posts past our read position before we
/// look again: `cmd_head` is ahead of it, so neither `TailMoved` nor `HeadBehind` shows the
/// reset, and reading on would take the kernel's new stream from the middle (here its third
/// entry, its first two never read; with other lengths, bytes inside an entry read as a
/// header). The oldest entry not retired is at our `cmd_tail`, where the kernel's first new
/// entry lands, so its header shows it.
#[test]
fn a_reset_at_tail_zero_with_the_head_past_our_read_position_is_seen_before_reading_on() {
    let (mut sim, mut ring) = setup(4096, mailbox_flags::CAP_OOOC);
    let cdb = cdb10(WRITE_10, 0, 1);
    sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    let first = next_command(&mut ring);
    let _second = next_command(&mut ring);
    let read: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    sim.reset_ring();
    for id in [4, 5, 6] {
        sim.post_cmd(id, &cdb, &[], &[]).expect("post");
    }
    let found: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    let fault = RingFault::EntryChanged { at: 0, read, found };
    assert_broken(&mut ring, fault.clone());
    assert_eq!(
        ring.complete(first, &Response::GOOD),
        Err(RingError::Broken(fault))
    );
    assert_eq!(sim.reap().expect("reap"), [], "nothing answered");
    // The new entries are intact for a handler started afresh.
    let mut fresh = Ring::attach(sim.region().clone()).expect("attach");
    for id in [4, 5, 6] {
        assert_eq!(next_command(&mut fresh).cmd_id(), id);
    }
}

#[test]
fn a_head_behind_our_read_position_is_a_reset() {
    // Reset with our cmd_tail 0: nothing posted since (cmd_head 0), or one entry (cmd_head
    // 128, short of the 256 bytes we read).
    for posted in [0, 1] {
        let (mut sim, mut ring) = setup(4096, 0);
        let cdb = cdb10(WRITE_10, 0, 1);
        sim.post_cmd(1, &cdb, &[], &[]).expect("post");
        sim.post_cmd(2, &cdb, &[], &[]).expect("post");
        let first = next_command(&mut ring);
        let _second = next_command(&mut ring);
        sim.reset_ring();
        for id in 0..posted {
            sim.post_cmd(10 + id, &cdb, &[], &[]).expect("post");
        }
        let fault = RingFault::HeadBehind {
            head: 128 * u32::from(posted),
            next: 256,
            tail: 0,
        };
        assert_broken(&mut ring, fault.clone());
        assert_eq!(
            ring.complete(first, &Response::GOOD),
            Err(RingError::Broken(fault))
        );
        assert_eq!(sim.region().load_u32_acquire(abi::MB_CMD_TAIL), 0);
    }
}

#[test]
fn a_broken_ring_lends_and_takes_no_data() {
    // (Audit: after TailMoved, a completion's Data-In still went into the data area, into
    // blocks the kernel had handed to new commands, or unmapped: SIGBUS.)
    let (mut sim, mut ring) = setup(4096, 0);
    let cdb = cdb10(READ_10, 0, 1);
    let off = sim.data_off();
    sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    sim.post_cmd(2, &cdb, &[iov(off, 512)], &[]).expect("post");
    let first = next_command(&mut ring);
    let second = next_command(&mut ring);
    ring.complete(first, &Response::GOOD).expect("complete");
    sim.reap().expect("reap");
    let ours = ring.state().tail;
    sim.reset_ring();
    sim.write_data(off, &[0xaa; 512]); // a new command's Data-Out in that block
    let fault = RingFault::TailMoved { ours, found: 0 };
    let broken = Err(RingError::Broken(fault));
    assert_eq!(ring.write_data(&second, 0, &[0x55; 512]), broken);
    assert_eq!(ring.zero_data_in(&second, 0), broken);
    let pages = scst_accel_dma::PageBuffer::new(512).expect("pages");
    pages.fill(0, 512, 0x55);
    assert_eq!(ring.copy_data_in(&second, 512, &pages, 0), broken);
    pages.fill(0, 512, 0x33);
    assert_eq!(ring.copy_data_out(&second, &pages, 0), broken);
    assert_eq!(ring.read_data(&second, 0, &mut [0u8; 8]), broken);
    let mut copied = vec![0u8; 512];
    pages.read_at(0, &mut copied);
    assert_eq!(copied, vec![0x33; 512], "nothing copied out of the data area");
    assert_eq!(
        sim.read_data(off, 512),
        vec![0xaa; 512],
        "the new command's data untouched"
    );
}

#[test]
fn data_is_refused_once_a_reset_at_tail_zero_changed_the_commands_entry() {
    let (mut sim, mut ring) = setup(4096, 0);
    let cdb = cdb10(READ_10, 0, 1);
    let off = sim.data_off();
    sim.post_cmd(1, &cdb, &[iov(off, 512)], &[]).expect("post");
    let cmd = next_command(&mut ring);
    let read: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    sim.reset_ring();
    sim.post_cmd(9, &cdb, &[iov(off, 512)], &[]).expect("post");
    sim.write_data(off, &[0xaa; 512]);
    let found: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    let fault = RingFault::EntryChanged { at: 0, read, found };
    assert_eq!(
        ring.write_data(&cmd, 0, &[0x55; 512]),
        Err(RingError::Broken(fault.clone()))
    );
    assert_eq!(
        ring.next_entry(),
        Err(RingError::Broken(fault)),
        "recorded: the ring is broken"
    );
    assert_eq!(sim.read_data(off, 512), vec![0xaa; 512]);
}

/// Out of order (`CAP_OOOC`) across the ring's wrap: answers go into the CMD entries at
/// `cmd_tail` in the order the commands finish, under their own `cmd_id`s, with the PAD at the
/// ring's end passed over; a command whose entry carried another's answer still reads and
/// writes its data from the copy taken when it was read, and its answer lands in a later entry.
/// READ(10) entries with one iovec are 128 bytes; the ring is 448, so the fourth command needs
/// a PAD of 64 at 384 and goes to 0.
#[test]
fn out_of_order_answers_fill_the_entries_at_the_tail_across_a_pad() {
    let (mut sim, mut ring) = setup(448, mailbox_flags::CAP_OOOC);
    let d = sim.data_off();
    for (i, id) in [(0usize, 1u16), (1, 2), (2, 3)] {
        sim.post_cmd(id, &cdb10(READ_10, i as u32, 1), &[iov(d + i * 512, 512)], &[])
            .expect("post");
    }
    let mut cmds: Vec<TcmuCommand> = (0..3).map(|_| next_command(&mut ring)).collect();
    let c3 = cmds.pop().expect("3");
    let c2 = cmds.pop().expect("2");
    let c1 = cmds.pop().expect("1");
    // 3 then 2 finish: 3 into 1's entry at 0, 2 into its own at 128.
    ring.complete(c3, &Response::GOOD).expect("complete 3");
    ring.complete(c2, &Response::GOOD).expect("complete 2");
    assert!(ring.take_kick());
    let done = sim.reap().expect("reap");
    assert_eq!(done.iter().map(|c| c.cmd_id).collect::<Vec<_>>(), [3, 2]);
    assert_eq!(ring.state().tail, 256);
    // 4 goes to 0 after a PAD at 384; 1's entry (at 256) is next at the tail.
    assert_eq!(
        sim.post_cmd(4, &cdb10(READ_10, 3, 1), &[iov(d + 3 * 512, 512)], &[]),
        Ok(0)
    );
    let c4 = next_command(&mut ring);
    ring.complete(c4, &Response::GOOD).expect("complete 4");
    assert!(ring.take_kick());
    let done = sim.reap().expect("reap");
    assert_eq!(done.iter().map(|c| c.cmd_id).collect::<Vec<_>>(), [4]);
    assert_eq!(ring.state().tail, 0, "past 1's entry and the PAD");
    // 1's entry is gone (4's answer is in it); 1 still has its CDB and its Data-In.
    assert_eq!(c1.cdb(), cdb10(READ_10, 0, 1));
    assert_eq!(ring.write_data(&c1, 0, &[0x11; 512]), Ok(512));
    let sense = [0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0];
    ring.complete(c1, &check_condition(&sense)).expect("complete 1");
    assert!(ring.take_kick());
    let done = sim.reap().expect("reap");
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].cmd_id, done[0].status, done[0].sense[12]),
        (1, sam_status::CHECK_CONDITION, 0x11),
        "1's own answer, in 4's entry at 0"
    );
    assert_eq!(sim.read_data(d, 512), vec![0x11; 512]);
    assert_eq!(ring.state().tail, 128);
    assert_eq!((ring.state().unretired, ring.state().outstanding), (0, 0));
    assert_eq!(sim.commands(), 0);
    assert_eq!(sim.free(), 448 - 1);
}

/// Out of order, a command whose entry carried another's answer has no entry of its own to
/// compare: after a ring reset while our `cmd_tail` was 0, with the kernel's first new entry
/// at 0 and `cmd_head` back where we had read up to, its Data-In must still not be written
/// (the reset freed its data blocks). The entry at `cmd_tail`, which we read and have not
/// passed, shows the reset.
#[test]
fn out_of_order_a_reset_is_seen_by_a_command_whose_entry_is_gone() {
    let (mut sim, mut ring) = setup(448, mailbox_flags::CAP_OOOC);
    let d = sim.data_off();
    for (i, id) in [(0usize, 1u16), (1, 2), (2, 3)] {
        sim.post_cmd(id, &cdb10(READ_10, i as u32, 1), &[iov(d + i * 512, 512)], &[])
            .expect("post");
    }
    let a = next_command(&mut ring);
    let b = next_command(&mut ring);
    let c = next_command(&mut ring);
    ring.complete(c, &Response::GOOD).expect("complete 3");
    ring.complete(b, &Response::GOOD).expect("complete 2");
    assert_eq!(sim.reap().expect("reap").len(), 2);
    // 4 at 0 after a PAD; its answer goes into 3's entry at 256 and cmd_tail past the PAD to 0.
    assert_eq!(
        sim.post_cmd(4, &cdb10(READ_10, 3, 1), &[iov(d + 3 * 512, 512)], &[]),
        Ok(0)
    );
    let dcmd = next_command(&mut ring);
    ring.complete(dcmd, &Response::GOOD).expect("complete 4");
    assert_eq!(sim.reap().expect("reap").len(), 1);
    assert_eq!(ring.state().tail, 0);
    let read: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    sim.reset_ring();
    assert_eq!(sim.post_cmd(5, &cdb10(READ_10, 4, 1), &[iov(d, 512)], &[]), Ok(0));
    let found: EntryHdr = sim.region().read_obj(SIM_CMDR_OFF as usize);
    let fault = RingFault::EntryChanged { at: 0, read, found };
    assert_eq!(
        ring.write_data(&a, 0, &[0x11; 512]),
        Err(RingError::Broken(fault.clone()))
    );
    assert_ne!(sim.read_data(d, 512), vec![0x11; 512], "nothing written");
    assert_eq!(ring.complete(a, &Response::GOOD), Err(RingError::Broken(fault)));
    assert_eq!(sim.reap().expect("reap"), [], "nothing answered");
}

/// Out of order, with a TMR entry among the commands: `cmd_tail` passes the TMR along with the
/// answers around it, and a command whose entry carried another's answer still writes its
/// Data-In (its checks look at the CMD entry at `cmd_tail`, never at the TMR) and is answered
/// in a later entry.
#[test]
fn out_of_order_a_tmr_entry_is_passed_and_a_displaced_command_still_serves() {
    let (mut sim, mut ring) = setup(4096, mailbox_flags::CAP_OOOC | mailbox_flags::CAP_TMR);
    let d = sim.data_off();
    for (i, id) in [(0usize, 1u16), (1, 2)] {
        sim.post_cmd(id, &cdb10(READ_10, i as u32, 1), &[iov(d + i * 512, 512)], &[])
            .expect("post");
    }
    sim.post_tmr(abi::tmr_type::ABORT_TASK, &[1]).expect("tmr");
    sim.post_cmd(3, &cdb10(READ_10, 2, 1), &[iov(d + 1024, 512)], &[])
        .expect("post");
    let a = next_command(&mut ring);
    let b = next_command(&mut ring);
    assert!(matches!(
        ring.next_entry(),
        Ok(Some(RingEntry::TaskManagement(_)))
    ));
    let c = next_command(&mut ring);
    // 2's answer goes into 1's entry (1 displaced), 3's into 2's, and cmd_tail passes the TMR.
    ring.complete(b, &Response::GOOD).expect("complete 2");
    ring.complete(c, &Response::GOOD).expect("complete 3");
    let ids: Vec<u16> = sim.reap().expect("reap").iter().map(|r| r.cmd_id).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(ring.state().unretired, 1, "only 3's entry is ahead of cmd_tail");
    ring.write_data(&a, 0, &[0x5a; 512])
        .expect("the displaced command's Data-In");
    assert_eq!(sim.read_data(d, 512), vec![0x5a; 512]);
    ring.complete(a, &Response::GOOD).expect("complete 1");
    let ids: Vec<u16> = sim.reap().expect("reap").iter().map(|r| r.cmd_id).collect();
    assert_eq!(ids, [1], "1 answered in 3's entry");
    assert_eq!(ring.state().unretired, 0);
}

/// The simulated kernel reaps by `cmd_id` as `tcmu_handle_completions` does: with `CAP_OOOC`
/// an entry may carry another command's id, but an id that names no outstanding command
/// (never posted, or reaped already) breaks it for good, until a ring reset; without
/// `CAP_OOOC` a rewritten id is a changed header.
#[test]
fn the_simulated_kernel_breaks_on_an_unknown_or_reaped_cmd_id() {
    let id_at = |at: u32| SIM_CMDR_OFF as usize + at as usize + abi::HDR_CMD_ID;
    let cdb = cdb10(READ_10, 0, 1);
    // Unknown.
    let (mut sim, _ring) = setup(4096, mailbox_flags::CAP_OOOC);
    let at = sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    sim.region().write_obj(id_at(at), &9u16);
    sim.region().store_u32_release(abi::MB_CMD_TAIL, sim.head());
    let unknown = SimError::UnknownCmdId { at, cmd_id: 9 };
    assert_eq!(sim.reap(), Err(unknown.clone()));
    assert_eq!(sim.reap(), Err(unknown.clone()), "broken for good");
    assert_eq!(
        sim.post_cmd(2, &cdb, &[], &[]),
        Err(unknown),
        "and queues nothing more"
    );
    sim.reset_ring();
    assert_eq!(sim.reap(), Ok(vec![]), "a reset clears it");
    // Reaped already: the second entry names the first command again.
    let (mut sim, _ring) = setup(4096, mailbox_flags::CAP_OOOC);
    sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    let second = sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    sim.region().write_obj(id_at(second), &1u16);
    sim.region().store_u32_release(abi::MB_CMD_TAIL, sim.head());
    assert_eq!(
        sim.reap(),
        Err(SimError::UnknownCmdId {
            at: second,
            cmd_id: 1
        })
    );
    let before: Vec<u16> = sim.completed_before_break().iter().map(|c| c.cmd_id).collect();
    assert_eq!(
        before,
        [1],
        "the kernel completed the first command before it broke"
    );
    // Another outstanding command's id, out of order: fine.
    let (mut sim, _ring) = setup(4096, mailbox_flags::CAP_OOOC);
    let first = sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    let second = sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    sim.region().write_obj(id_at(first), &2u16);
    sim.region().write_obj(id_at(second), &1u16);
    sim.region().store_u32_release(abi::MB_CMD_TAIL, sim.head());
    let ids: Vec<u16> = sim.reap().expect("reap").iter().map(|c| c.cmd_id).collect();
    assert_eq!(ids, [2, 1]);
    // In order: the id must stay.
    let (mut sim, _ring) = setup(4096, 0);
    let first = sim.post_cmd(1, &cdb, &[], &[]).expect("post");
    sim.post_cmd(2, &cdb, &[], &[]).expect("post");
    sim.region().write_obj(id_at(first), &2u16);
    sim.region().store_u32_release(abi::MB_CMD_TAIL, sim.head());
    assert!(matches!(sim.reap(), Err(SimError::HeaderChanged { at: 0, .. })));
}
