//! Admin commands: Identify, Number of Queues, queue creation and deletion checks, Abort,
//! Get Log Page, Asynchronous Event Request.

use super::super::spec::admin as op;
use super::super::spec::reg;
use super::super::spec::status as st;
use super::*;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

#[test]
fn identify_controller_namespace_and_namespace_list() {
    let mut rig = Rig::enabled();
    let buf = rig.alloc(4096);
    let c = rig.admin(identify(1, 0, rig.iova(buf), 0));
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(c.sqhd, 1, "SQHD after the first admin command");
    let id = rig.read_mem(buf, 0, 4096);
    assert!(id[4..24].iter().any(|&b| b != b' '), "SN");
    assert!(String::from_utf8_lossy(&id[24..64]).contains("NVMe"), "MN");
    assert_eq!(id[77], 5, "MDTS");
    assert_eq!(u32_at(&id, 80), 0x0001_0400, "VER");
    assert_eq!(id[512], 0x66, "SQES");
    assert_eq!(id[513], 0x44, "CQES");
    assert_eq!(u32_at(&id, 516), 1, "NN");
    assert_eq!(
        u16_at(&id, 520),
        0x10D,
        "ONCS: Compare, DSM, Write Zeroes and Copy"
    );
    assert_eq!(u16_at(&id, 522), 1, "FUSES: Compare and Write");
    assert_eq!(u16_at(&id, 532), 15, "ACWU: 16 blocks, 0's based");
    assert_eq!(u16_at(&id, 534), 1, "OCFS: copy format 0");
    assert_eq!(id[525], 1, "VWC");

    let c = rig.admin(identify(0, 1, rig.iova(buf), 0));
    assert_eq!(status(&c), Status::SUCCESS);
    let ns = rig.read_mem(buf, 0, 4096);
    assert_eq!(u64_at(&ns, 0), 8192, "NSZE");
    assert_eq!(u64_at(&ns, 8), 8192, "NCAP");
    assert_eq!(ns[26] & 0xF, 0, "FLBAS");
    assert_eq!((u32_at(&ns, 128) >> 16) & 0xFF, 9, "LBAF0.LBADS: 512 bytes");
    assert_eq!(
        (u16_at(&ns, 74), u32_at(&ns, 76), ns[80]),
        (8192, 8192, 0),
        "MSSRL, MCL, MSRC"
    );
    assert!(
        ns[104..120].iter().any(|&b| b != 0),
        "NGUID (bytes 119:104) is reported"
    );
    assert!(
        ns[120..128].iter().any(|&b| b != 0),
        "EUI64 (bytes 127:120) is reported"
    );
    assert_eq!(
        &ns[128 - 8..128 - 5],
        &[0x5A, 0xCC, 0xE1],
        "EUI64 starts with its company id"
    );

    let c = rig.admin(identify(2, 0, rig.iova(buf), 0));
    assert_eq!(status(&c), Status::SUCCESS);
    let list = rig.read_mem(buf, 0, 4096);
    assert_eq!(u32_at(&list, 0), 1);
    assert!(list[4..].iter().all(|&b| b == 0));
    let c = rig.admin(identify(2, 1, rig.iova(buf), 0));
    assert_eq!(status(&c), Status::SUCCESS);
    assert!(
        rig.read_mem(buf, 0, 4096).iter().all(|&b| b == 0),
        "no NSID above 1"
    );

    assert_eq!(
        status(&rig.admin(identify(0, 2, rig.iova(buf), 0))),
        st::INVALID_NAMESPACE
    );
    assert_eq!(
        status(&rig.admin(identify(0x10, 0, rig.iova(buf), 0))),
        st::INVALID_FIELD
    );
}

#[test]
fn identify_with_an_offset_spans_prp1_and_prp2() {
    let mut rig = Rig::new(NvmeSimConfig {
        block_size: 4096,
        ..small_config()
    });
    rig.enable();
    let first = rig.alloc(4096);
    let second = rig.alloc(4096);
    let c = rig.admin(identify(0, 1, rig.iova(first) + 0x800, rig.iova(second)));
    assert_eq!(status(&c), Status::SUCCESS);
    // LBAF0 at byte 128 lands in the first page; bytes 2048.. continue in the second.
    let ns = rig.read_mem(first, 0x800, 0x800);
    assert_eq!((u32_at(&ns, 128) >> 16) & 0xFF, 12, "LBADS: 4096 bytes");
    assert_eq!(
        rig.read_mem(first, 0, 0x800),
        vec![0; 0x800],
        "nothing before the offset"
    );
    // A PRP2 that is not page aligned is refused.
    let c = rig.admin(identify(0, 1, rig.iova(first) + 0x800, rig.iova(second) + 8));
    assert_eq!(status(&c), st::INVALID_PRP_OFFSET);
}

fn features(opcode: u8, fid: u8, cdw11: u32) -> Sqe {
    Sqe {
        cdw10: u32::from(fid),
        cdw11,
        ..sqe(opcode, 0)
    }
}

#[test]
fn number_of_queues_grants_at_most_the_configured_pairs() {
    let mut rig = Rig::enabled();
    let c = rig.admin(features(op::GET_FEATURES, 0x07, 0));
    assert_eq!(c.dw0, (1 << 16) | 1, "two pairs offered, 0's based");
    let c = rig.admin(features(op::SET_FEATURES, 0x07, (7 << 16) | 7));
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(c.dw0, (1 << 16) | 1, "asked for 8, got 2");
    let c = rig.admin(features(op::SET_FEATURES, 0x07, 0));
    assert_eq!(c.dw0, 0, "asked for 1 pair");
    let c = rig.admin(features(op::SET_FEATURES, 0x07, 0xFFFF));
    assert_eq!(status(&c), st::INVALID_FIELD);
    // With one pair granted, queue 2 is refused.
    let mem = rig.alloc(4096);
    let c = rig.admin(create_cq(2, 8, rig.iova(mem), 0, false));
    assert_eq!(status(&c), st::INVALID_QUEUE_IDENTIFIER);
    rig.create_io_queue(1, 8);
    let c = rig.admin(features(op::SET_FEATURES, 0x07, (1 << 16) | 1));
    assert_eq!(status(&c), st::COMMAND_SEQUENCE_ERROR, "after I/O queues exist");
    // Volatile Write Cache and a stored feature.
    assert_eq!(rig.admin(features(op::GET_FEATURES, 0x06, 0)).dw0, 1);
    assert_eq!(
        status(&rig.admin(features(op::SET_FEATURES, 0x06, 0))),
        Status::SUCCESS
    );
    assert_eq!(rig.admin(features(op::GET_FEATURES, 0x06, 0)).dw0, 0);
    assert_eq!(
        status(&rig.admin(features(op::SET_FEATURES, 0x08, 0x0A05))),
        Status::SUCCESS
    );
    assert_eq!(rig.admin(features(op::GET_FEATURES, 0x08, 0)).dw0, 0x0A05);
    assert_eq!(
        status(&rig.admin(features(op::GET_FEATURES, 0x7E, 0))),
        st::INVALID_FIELD
    );
}

fn delete(opcode: u8, qid: u16) -> Sqe {
    Sqe {
        cdw10: u32::from(qid),
        ..sqe(opcode, 0)
    }
}

#[test]
fn queue_creation_and_deletion_follow_the_spec_checks() {
    let mut rig = Rig::enabled();
    let mem = rig.alloc(64 * 1024);
    let base = rig.iova(mem);
    let cases: [(&str, Sqe, Status); 9] = [
        (
            "CQ 0",
            create_cq(0, 8, base, 0, true),
            st::INVALID_QUEUE_IDENTIFIER,
        ),
        (
            "CQ 3 > queues",
            create_cq(3, 8, base, 0, true),
            st::INVALID_QUEUE_IDENTIFIER,
        ),
        (
            "CQ of 1 entry",
            create_cq(1, 1, base, 0, true),
            st::INVALID_QUEUE_SIZE,
        ),
        (
            "CQ above MQES",
            create_cq(1, 1025, base, 0, true),
            st::INVALID_QUEUE_SIZE,
        ),
        (
            "CQ vector 3",
            create_cq(1, 8, base, 3, true),
            st::INVALID_INTERRUPT_VECTOR,
        ),
        (
            "CQ misaligned",
            create_cq(1, 8, base + 0x100, 1, true),
            st::INVALID_PRP_OFFSET,
        ),
        (
            "CQ not contiguous",
            Sqe {
                cdw11: 2 | (1 << 16),
                ..create_cq(1, 8, base, 1, true)
            },
            st::INVALID_FIELD,
        ),
        (
            "SQ on missing CQ",
            create_sq(1, 8, base, 1),
            st::COMPLETION_QUEUE_INVALID,
        ),
        (
            "SQ on the admin CQ",
            create_sq(1, 8, base, 0),
            st::COMPLETION_QUEUE_INVALID,
        ),
    ];
    for (what, command, want) in cases {
        let c = rig.admin(command);
        assert_eq!(status(&c), want, "{what}");
        assert_eq!(c.status & 0x8000, 0x8000, "{what}: Do Not Retry");
    }
    // The largest queue CAP.MQES allows.
    assert_eq!(
        status(&rig.admin(create_cq(1, 1024, base, 1, true))),
        Status::SUCCESS
    );
    assert_eq!(
        status(&rig.admin(create_cq(1, 8, base, 1, true))),
        st::INVALID_QUEUE_IDENTIFIER,
        "CQ 1 exists"
    );
    assert_eq!(
        status(&rig.admin(create_sq(1, 8, base + 0x4000, 1))),
        Status::SUCCESS
    );
    assert_eq!(
        status(&rig.admin(create_sq(1, 8, base + 0x8000, 1))),
        st::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_CQ, 1))),
        st::INVALID_QUEUE_DELETION
    );
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_SQ, 2))),
        st::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_SQ, 0))),
        st::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_CQ, 2))),
        st::INVALID_QUEUE_IDENTIFIER,
        "CQ 2 was never created"
    );
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_CQ, 0))),
        st::INVALID_QUEUE_IDENTIFIER,
        "the admin CQ is not an I/O queue"
    );
    assert_eq!(rig.sim.deletions(), [], "the refused deletions deleted nothing");
    assert_eq!(status(&rig.admin(delete(op::DELETE_IO_SQ, 1))), Status::SUCCESS);
    assert_eq!(status(&rig.admin(delete(op::DELETE_IO_CQ, 1))), Status::SUCCESS);
    assert_eq!(
        status(&rig.admin(delete(op::DELETE_IO_CQ, 1))),
        st::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(rig.sim.deletions(), [QueueDeletion::Sq(1), QueueDeletion::Cq(1)]);
    assert_eq!(rig.sim.stats().iommu_faults, 0);
}

#[test]
fn abort_answers_not_aborted_and_unknown_opcodes_are_refused() {
    let mut rig = Rig::enabled();
    let c = rig.admin(Sqe {
        cdw10: 1 | (7 << 16),
        ..sqe(op::ABORT, 0)
    });
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(c.dw0 & 1, 1, "not aborted");
    assert_eq!(status(&rig.admin(sqe(0xC0, 0))), st::INVALID_OPCODE);
    // Fused commands are not supported.
    let c = rig.admin(Sqe {
        cdw0: 1 << 8,
        ..identify(1, 0, 0, 0)
    });
    assert_eq!(status(&c), st::INVALID_FIELD);
}

fn log_page(lid: u8, dwords: u32, prp1: u64) -> Sqe {
    Sqe {
        prp1,
        cdw10: u32::from(lid) | ((dwords - 1) << 16),
        ..sqe(op::GET_LOG_PAGE, 0xFFFF_FFFF)
    }
}

#[test]
fn the_error_log_is_empty_and_other_logs_are_refused() {
    let mut rig = Rig::enabled();
    let buf = rig.alloc(4096);
    rig.region(buf).fill(0, 4096, 0xAA);
    assert_eq!(
        status(&rig.admin(log_page(1, 16, rig.iova(buf)))),
        Status::SUCCESS
    );
    assert_eq!(rig.read_mem(buf, 0, 64), vec![0; 64], "one unused entry");
    assert_eq!(
        rig.read_mem(buf, 64, 64),
        vec![0xAA; 64],
        "nothing past the request"
    );
    assert_eq!(
        status(&rig.admin(log_page(0x42, 16, rig.iova(buf)))),
        st::INVALID_LOG_PAGE
    );
}

#[test]
fn an_async_event_request_is_held_until_an_invalid_doorbell_write() {
    let mut rig = Rig::with_io_queue(8);
    let aer = rig.submit(0, sqe(op::ASYNC_EVENT_REQUEST, 0));
    assert!(rig.next_completion_within(0, QUIET).is_none(), "held");
    // An SQ tail beyond the queue's 8 entries.
    rig.write(reg::DOORBELLS + 8, 9);
    let c = rig.next_completion(0);
    assert_eq!(c.cid, aer);
    assert_eq!(status(&c), Status::SUCCESS);
    assert_eq!(c.dw0 & 0x7, 0, "event type: error status");
    assert_eq!((c.dw0 >> 8) & 0xFF, 0x01, "invalid doorbell write value");
    assert_eq!((c.dw0 >> 16) & 0xFF, 0x01, "log page: error information");
    // The next error event waits until the log page is read; a second AER stays held.
    let second = rig.submit(0, sqe(op::ASYNC_EVENT_REQUEST, 0));
    rig.write(reg::DOORBELLS + 2 * 8, 1); // SQ 2 does not exist
    assert!(
        rig.next_completion_within(0, QUIET).is_none(),
        "masked until the log is read"
    );
    let buf = rig.alloc(4096);
    let log_cid = rig.submit(0, log_page(1, 16, rig.iova(buf)));
    let c = rig.next_completion(0);
    assert_eq!(c.cid, log_cid);
    rig.write(reg::DOORBELLS + 2 * 8, 1);
    let c = rig.next_completion(0);
    assert_eq!(c.cid, second);
    assert_eq!((c.dw0 >> 8) & 0xFF, 0x00, "write to an invalid doorbell register");
    assert_eq!(rig.sim.stats().invalid_doorbell_writes, 3);
}

#[test]
fn at_most_four_async_event_requests_are_held() {
    let mut rig = Rig::enabled();
    for _ in 0..4 {
        rig.submit(0, sqe(op::ASYNC_EVENT_REQUEST, 0));
    }
    let c = rig.admin(sqe(op::ASYNC_EVENT_REQUEST, 0));
    assert_eq!(status(&c), st::AER_LIMIT_EXCEEDED);
}
