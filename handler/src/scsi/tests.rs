//! Engine-level tests: helpers shared by the per-file tests, the state commands (TEST UNIT
//! READY, REQUEST SENSE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, reset) and the
//! properties over arbitrary CDBs and data-out.

use super::Disk;
use super::DiskConfig;
use super::IoPlan;
use super::Plan;
use super::Response;
use super::NO_DATA;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::store::StoreOp;
use crate::store::StoreStatus;
use proptest::prelude::*;

pub(crate) fn disk_with(config: DiskConfig) -> Disk {
    Disk::try_new(config).expect("test configuration is valid")
}

fn response(disk: &Disk, cdb: &[u8], data_out: &[u8]) -> Response {
    match disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &data_out) {
        Plan::Done(r) => r,
        Plan::Io(io) => panic!("{cdb:02x?}: expected a response, got store op {:?}", io.op),
    }
}

/// Run a command that must end GOOD; return its data-in.
pub(crate) fn good_data(disk: &Disk, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    let r = response(disk, cdb, data_out);
    assert_eq!(r.status, sam_status::GOOD, "{cdb:02x?}: sense {:02x?}", r.sense);
    assert!(r.sense.is_empty());
    assert_eq!(r.data_in_len, r.data.len());
    r.data
}

/// Run a command that must end GOOD without data.
pub(crate) fn good(disk: &Disk, cdb: &[u8], data_out: &[u8]) {
    assert!(
        good_data(disk, cdb, data_out).is_empty(),
        "{cdb:02x?}: unexpected data"
    );
}

/// Run a command that must plan a store op; return the op.
pub(crate) fn io_op(disk: &Disk, cdb: &[u8], data_out: &[u8]) -> StoreOp {
    match disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &data_out) {
        Plan::Io(io) => io.op,
        Plan::Done(r) => panic!("{cdb:02x?}: expected a store op, got {r:02x?}"),
    }
}

/// Run a command that must end CHECK CONDITION with fixed sense `key/asc/ascq` and, if given,
/// these sense-key-specific bytes (else none).
pub(crate) fn check_sense(disk: &Disk, cdb: &[u8], data_out: &[u8], kcq: [u8; 3], sks: Option<[u8; 3]>) {
    let r = response(disk, cdb, data_out);
    assert_eq!(r.status, sam_status::CHECK_CONDITION, "{cdb:02x?}");
    assert_eq!(r.sense.len(), 18, "{cdb:02x?}: {:02x?}", r.sense);
    assert_eq!(r.sense[0] & 0x7F, 0x70);
    assert_eq!(
        [r.sense[2], r.sense[12], r.sense[13]],
        kcq,
        "{cdb:02x?}: {:02x?}",
        r.sense
    );
    assert_eq!(
        r.sense[15..18],
        sks.unwrap_or([0; 3]),
        "{cdb:02x?}: {:02x?}",
        r.sense
    );
    assert!(r.data.is_empty());
}

fn disk() -> Disk {
    disk_with(DiskConfig::new(512, 1000))
}

const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];

#[test]
fn test_unit_ready_and_invalid_opcode() {
    let disk = disk();
    good(&disk, &TUR, &[]);
    check_sense(&disk, &[0xC8, 0, 0, 0, 0, 0], &[], [5, 0x20, 0], None);
    check_sense(&disk, &[], &[], [5, 0x20, 0], None);
}

#[test]
fn request_sense_reports_no_sense_in_requested_format() {
    let disk = disk();
    let fixed = good_data(&disk, &[0x03, 0, 0, 0, 0xFF, 0], &[]);
    assert_eq!(fixed, [0x70, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let desc = good_data(&disk, &[0x03, 1, 0, 0, 0xFF, 0], &[]);
    assert_eq!(desc, [0x72, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(good_data(&disk, &[0x03, 0, 0, 0, 4, 0], &[]).len(), 4);
}

#[test]
fn stopped_unit_is_not_ready_for_media_access() {
    let disk = disk();
    // STOP (flush first), then media access is NOT READY / 04/02.
    assert_eq!(io_op(&disk, &[0x1B, 0, 0, 0, 0, 0], &[]), StoreOp::Flush);
    assert!(disk.is_stopped());
    check_sense(&disk, &TUR, &[], [2, 0x04, 0x02], None);
    check_sense(&disk, &READ10, &[], [2, 0x04, 0x02], None);
    // Non-media commands still work; REQUEST SENSE reports the condition.
    good_data(&disk, &[0x12, 0, 0, 0, 36, 0], &[]);
    let s = good_data(&disk, &[0x03, 0, 0, 0, 0xFF, 0], &[]);
    assert_eq!([s[2], s[12], s[13]], [2, 0x04, 0x02]);
    // Reset leaves the stopped state alone; START UNIT ends it.
    disk.reset(&mut scst_accel_hal::locks::LockToken::root());
    assert!(disk.is_stopped());
    good(&disk, &[0x1B, 0, 0, 0, 0x01, 0], &[]);
    good(&disk, &TUR, &[]);
    // NO_FLUSH: stop without I/O.
    good(&disk, &[0x1B, 0, 0, 0, 0x04, 0], &[]);
    assert!(disk.is_stopped());
}

#[test]
fn prevent_medium_removal_blocks_eject_until_allowed_or_reset() {
    let disk = disk();
    good(&disk, &[0x1E, 0, 0, 0, 1, 0], &[]);
    assert!(disk.removal_prevented());
    check_sense(&disk, &[0x1B, 0, 0, 0, 0x02, 0], &[], [5, 0x53, 0x02], None);
    check_sense(
        &disk,
        &[0x1E, 0, 0, 0, 2, 0],
        &[],
        [5, 0x24, 0],
        Some([0xC9, 0, 4]),
    );
    disk.reset(&mut scst_accel_hal::locks::LockToken::root());
    assert!(!disk.removal_prevented());
    assert_eq!(io_op(&disk, &[0x1B, 0, 0, 0, 0x02, 0], &[]), StoreOp::Flush);
}

#[test]
fn reserve_release_are_accepted() {
    let disk = disk();
    good(&disk, &[0x16, 0, 0, 0, 0, 0], &[]);
    good(&disk, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
}

#[test]
fn report_supported_opcodes_through_the_disk() {
    let disk = disk();
    let d = good_data(&disk, &[0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 0, 0xFF, 0, 0], &[]);
    assert_eq!(&d[..5], &[0, 3, 0, 10, 0x28]);
    let d = good_data(&disk, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[]);
    assert_eq!(d.len(), 8);
    check_sense(
        &disk,
        &[0xA3, 0x05, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        &[],
        [5, 0x24, 0],
        Some([0xCC, 0, 1]),
    );
}

#[test]
fn sense_helper_follows_d_sense() {
    let disk = disk();
    assert_eq!(
        disk.sense(0x0B, 0, 0),
        [0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let mut cfg = DiskConfig::new(512, 8);
    cfg.d_sense = true;
    let disk = disk_with(cfg);
    assert_eq!(disk.sense(0x0B, 0x47, 0x03), [0x72, 0x0B, 0x47, 0x03, 0, 0, 0, 0]);
    // Errors use the same format.
    let r = response(&disk, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(
        r.sense,
        [0x72, 5, 0x24, 0, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xCF, 0, 1, 0]
    );
}

#[test]
fn invalid_configuration_is_refused() {
    assert!(Disk::try_new(DiskConfig::new(1000, 8)).is_err());
    assert!(Disk::try_new(DiskConfig::new(256, 8)).is_err());
    let mut cfg = DiskConfig::new(65536, 8);
    cfg.limits.max_transfer_blocks = 1 << 16;
    assert!(Disk::try_new(cfg).is_err());
    for bs in [512, 4096, 65536] {
        assert!(Disk::try_new(DiskConfig::new(bs, 8)).is_ok());
    }
}

/// Sense is well formed: 0x70 fixed with additional length 10, or 0x72 descriptor whose
/// additional length covers exactly the descriptors that follow.
fn assert_well_formed_sense(sense: &[u8]) {
    match sense.first().map(|b| b & 0x7F) {
        Some(0x70) => {
            assert_eq!(sense.len(), 18);
            assert_eq!(usize::from(sense[7]), sense.len() - 8);
        }
        Some(0x72) => {
            assert!(sense.len() >= 8);
            assert_eq!(usize::from(sense[7]), sense.len() - 8);
            let mut off = 8;
            while off < sense.len() {
                off += 2 + usize::from(sense[off + 1]);
            }
            assert_eq!(off, sense.len());
        }
        other => panic!("bad sense response code {other:?}: {sense:02x?}"),
    }
}

fn assert_well_formed_response(r: &Response) {
    match r.status {
        sam_status::GOOD => {
            assert!(r.sense.is_empty());
            assert!(r.data_in_len == r.data.len() || r.data.is_empty());
        }
        sam_status::CHECK_CONDITION => {
            assert!(r.data.is_empty());
            assert_eq!(r.data_in_len, 0);
            assert_well_formed_sense(&r.sense);
        }
        sam_status::RESERVATION_CONFLICT => {
            assert!(r.sense.is_empty() && r.data.is_empty());
            assert_eq!(r.data_in_len, 0);
        }
        other => panic!("unexpected status {other:#x}"),
    }
}

/// A store op stays inside the disk and needs no more buffer than PARSE asked for.
fn assert_io_consistent(disk: &Disk, cdb: &[u8], io: &IoPlan) {
    let n = disk.num_blocks();
    let inside = |lba: u64, blocks: u32| lba.checked_add(u64::from(blocks)).is_some_and(|end| end <= n);
    match &io.op {
        StoreOp::Read { lba, blocks }
        | StoreOp::Write { lba, blocks, .. }
        | StoreOp::WriteSame { lba, blocks }
        | StoreOp::WriteZeroes { lba, blocks, .. }
        | StoreOp::Verify { lba, blocks }
        | StoreOp::Compare { lba, blocks }
        | StoreOp::CompareAndWrite { lba, blocks, .. } => {
            assert!(*blocks > 0, "{:?}", io.op);
            assert!(inside(*lba, *blocks), "{:?} outside {n} blocks", io.op);
        }
        StoreOp::Unmap { ranges } => {
            assert!(!ranges.is_empty());
            assert!(
                ranges.iter().all(|&(lba, b)| b > 0 && inside(lba, b)),
                "{:?}",
                io.op
            );
        }
        StoreOp::Flush => {}
        // Only EXT_COPY_REMAP makes it (`Disk::copy_segment`), never a CDB.
        StoreOp::Copy { .. } => panic!("a CDB made a copy: {:?}", io.op),
        StoreOp::LbaStatus { lba } => {
            assert!(*lba < n, "{:?} outside {n} blocks", io.op);
            let info = disk.cdb_info(cdb).expect("a CDB that starts I/O parses");
            assert_eq!(info.direction, data_direction::READ);
            assert!(io.data_in_len as u64 <= u64::from(info.transfer_len));
            return;
        }
    }
    let info = disk.cdb_info(cdb).expect("a CDB that starts I/O parses");
    if io.op.uses_buffer() {
        assert_ne!(info.direction, data_direction::NONE);
        let bytes = io.op.buffer_bytes(disk.block_size());
        if cdb.first() == Some(&0x89) {
            // COMPARE AND WRITE in the engine: each step uses one half of the 2N-block buffer.
            assert_eq!(2 * bytes, u64::from(info.transfer_len), "{:?}", io.op);
            assert!(io.buffer_offset() as u64 + bytes <= u64::from(info.transfer_len));
        } else {
            assert_eq!(bytes, u64::from(info.transfer_len), "{:?}", io.op);
            assert_eq!(io.buffer_offset(), 0);
        }
    }
    if matches!(io.op, StoreOp::Read { .. }) {
        assert_eq!(info.direction, data_direction::READ);
        assert_eq!(io.data_in_len as u64, u64::from(info.transfer_len));
    }
}

const ALL_STATUSES: [StoreStatus; 15] = [
    StoreStatus::Good,
    StoreStatus::Miscompare { offset: Some(17) },
    StoreStatus::ReadError { lba: 3 },
    StoreStatus::WriteError { lba: u64::MAX },
    StoreStatus::SpaceExhausted { lba: 5 },
    StoreStatus::OutOfRange,
    StoreStatus::InvalidRequest,
    StoreStatus::DeviceError,
    StoreStatus::Aborted,
    StoreStatus::NotReady,
    StoreStatus::FormatInProgress,
    StoreStatus::InvalidField,
    StoreStatus::ReservationConflict,
    StoreStatus::AccessDenied,
    StoreStatus::WriteProtected,
];

/// Arbitrary bytes, or a CDB built from a table entry: each byte zero with probability 6/7
/// (small LBAs and lengths, so I/O paths are reached), else random within the usage data (or,
/// rarely, fully random), sometimes followed by padding as in SCST's 16-byte CDB array.
fn any_cdb() -> impl Strategy<Value = Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..=32);
    let table = super::opcodes::TABLE;
    let structured = (
        0..table.len(),
        prop::collection::vec((any::<u8>(), any::<u8>()), 16),
        0usize..=16,
        any::<u8>(),
    )
        .prop_map(move |(i, bytes, pad, strict)| {
            let e = &table[i];
            let mut cdb: Vec<u8> = e
                .usage
                .iter()
                .zip(&bytes)
                .map(|(&mask, &(keep, v))| match (keep, strict) {
                    (0..=215, _) => 0,
                    (_, 0..=230) => v & mask,
                    _ => v,
                })
                .collect();
            cdb[0] = e.opcode;
            if let Some(sa) = e.service_action {
                cdb[1] = (cdb[1] & 0xE0) | sa;
            }
            cdb.resize(cdb.len() + pad, 0);
            cdb
        });
    prop_oneof![1 => raw, 3 => structured]
}

/// Arbitrary bytes, or mostly-zero bytes (parameter lists with small lengths and counts).
fn any_data_out() -> impl Strategy<Value = Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..=600);
    let sparse = prop::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 0..=600);
    prop_oneof![raw, sparse]
}

/// A medium-access CDB with an LBA and length near the disk sizes used here, so the I/O
/// paths are reached often; byte 1 is random within the command's usage data.
fn media_cdb() -> impl Strategy<Value = Vec<u8>> {
    let opcodes = vec![
        0x08u8, 0x0A, 0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x41, 0x88, 0x89, 0x8A, 0x8E, 0x8F, 0x91, 0x93, 0xA8,
        0xAA, 0xAE, 0xAF,
    ];
    (prop::sample::select(opcodes), 0u64..1600, 0u32..320, any::<u8>()).prop_map(|(op, lba, len, flags)| {
        let usage = super::opcodes::TABLE
            .iter()
            .find(|e| e.opcode == op)
            .map_or(0, |e| e.usage[1]);
        let flags = flags & usage & 0x1F; // no RDPROTECT/WRPROTECT: they are tested elsewhere
        let mut cdb = vec![op];
        match op >> 5 {
            0 => cdb.extend_from_slice(&[
                (lba >> 16) as u8 & 0x1F,
                (lba >> 8) as u8,
                lba as u8,
                len as u8,
                0,
            ]),
            1 => {
                cdb.push(flags);
                cdb.extend_from_slice(&(lba as u32).to_be_bytes());
                cdb.push(0);
                cdb.extend_from_slice(&(len as u16).to_be_bytes());
                cdb.push(0);
            }
            5 => {
                cdb.push(flags);
                cdb.extend_from_slice(&(lba as u32).to_be_bytes());
                cdb.extend_from_slice(&len.to_be_bytes());
                cdb.extend_from_slice(&[0, 0]);
            }
            _ => {
                cdb.push(flags);
                cdb.extend_from_slice(&lba.to_be_bytes());
                cdb.extend_from_slice(&len.to_be_bytes());
                cdb.extend_from_slice(&[0, 0]);
            }
        }
        cdb
    })
}

/// An UNMAP with a parameter list of small descriptors (sometimes with a wrong header).
fn unmap_command() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let descriptor = (0u64..1600, 0u32..200);
    (prop::collection::vec(descriptor, 0..10), any::<u8>(), 0usize..8).prop_map(|(ds, junk, cut)| {
        let mut p = vec![0u8; 8];
        p[0..2].copy_from_slice(&((6 + 16 * ds.len()) as u16).to_be_bytes());
        p[2..4].copy_from_slice(&((16 * ds.len()) as u16).to_be_bytes());
        for (lba, n) in ds {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        if junk > 200 {
            p[3] ^= junk; // descriptor length that does not match the list
        }
        p.truncate(p.len().saturating_sub(cut));
        let cdb = vec![0x42, 0, 0, 0, 0, 0, 0, (p.len() >> 8) as u8, p.len() as u8, 0];
        (cdb, p)
    })
}

/// COMPARE AND WRITE of 0..=8 blocks near the disk sizes used here, byte 1 within its usage
/// data, with a Data-Out of 2N blocks of either block size, or one byte off.
fn compare_and_write_command() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        0u64..3000,
        0u8..=8,
        any::<u8>(),
        prop::sample::select(vec![512usize, 4096]),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(lba, n, byte1, unit, exact)| {
            let mut cdb = vec![0u8; 16];
            cdb[0] = 0x89;
            cdb[1] = byte1 & 0xFA;
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[13] = n;
            let len = 2 * usize::from(n) * unit + usize::from(!exact);
            (cdb, vec![0x5A; len])
        })
}

/// Any command: arbitrary or table-shaped CDBs with arbitrary data-out, well-formed medium
/// commands with a block of data-out (zero or not), UNMAP with a parameter list, or COMPARE
/// AND WRITE.
fn any_command() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let block = prop_oneof![Just(vec![0u8; 4096]), prop::collection::vec(any::<u8>(), 0..=600)];
    prop_oneof![
        2 => (any_cdb(), any_data_out()),
        2 => (media_cdb(), block),
        1 => unmap_command(),
        1 => compare_and_write_command(),
    ]
}

fn any_disk() -> impl Strategy<Value = Disk> {
    (
        prop::sample::select(vec![512u32, 4096]),
        0u64..3000,
        any::<[bool; 6]>(),
        any::<bool>(),
    )
        .prop_map(|(bs, n, f, caw_in_engine)| {
            let mut cfg = DiskConfig::new(bs, n);
            if caw_in_engine {
                cfg.compare_and_write = super::CompareAndWriteBy::Handler;
            }
            [
                cfg.thin_provisioning,
                cfg.read_only,
                cfg.write_cache,
                cfg.d_sense,
                cfg.unmapped_reads_zero,
                cfg.lba_status,
            ] = f;
            cfg.limits.max_transfer_blocks = 300;
            cfg.limits.max_write_same_blocks = 2000;
            cfg.limits.max_unmap_descriptors = 8;
            cfg.limits.max_unmap_lba_count = 2000;
            disk_with(cfg)
        })
}

proptest! {
    // No regression file: it would land outside this module; failing inputs are turned into
    // unit tests instead (e.g. `info::tests::huge_allocation_length_is_capped`).
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any CDB and data-out (0..=600 bytes, or a 4 KiB zero block): `start` answers well-formed or plans I/O inside the disk, and
    /// every store outcome of that I/O (and of its next step) is answered well-formed too.
    #[test]
    fn start_and_finish_never_misbehave(
        disk in any_disk(),
        (cdb, data_out) in any_command(),
        stop_first in prop::bool::weighted(0.1),
    ) {
        if stop_first {
            let _ = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &[0x1B, 0, 0, 0, 0x04, 0], &NO_DATA);
        }
        match disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &data_out) {
            Plan::Done(r) => assert_well_formed_response(&r),
            Plan::Io(io) => {
                assert_io_consistent(&disk, &cdb, &io);
                for status in ALL_STATUSES {
                    match disk.finish(&io, status) {
                        Plan::Done(r) => assert_well_formed_response(&r),
                        Plan::Io(next) => {
                            // Only success goes on, and a FUA READ's flush that failed
                            // above the blocks it reads (`rw::read_write_back_failed`).
                            let loss_above_the_read = matches!(
                                (&io.op, &next.op, status),
                                (
                                    StoreOp::Flush,
                                    StoreOp::Read { lba, blocks },
                                    StoreStatus::WriteError { lba: lost },
                                ) if lost >= lba + u64::from(*blocks)
                            );
                            prop_assert!(
                                status == StoreStatus::Good || loss_above_the_read,
                                "{:?} ended {status}, then {:?}",
                                io.op,
                                next.op
                            );
                            assert_io_consistent(&disk, &cdb, &next);
                            for status in ALL_STATUSES {
                                match disk.finish(&next, status) {
                                    Plan::Done(r) => assert_well_formed_response(&r),
                                    Plan::Io(_) => prop_assert!(false, "more than two steps"),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Any CDB: `cdb_info` is Ok with values the kernel accepts (spec §3.4), or CHECK
    /// CONDITION with well-formed sense; and it agrees with `start` on rejecting the CDB.
    #[test]
    fn cdb_info_never_misbehaves(disk in any_disk(), cdb in prop_oneof![any_cdb(), media_cdb()]) {
        match disk.cdb_info(&cdb) {
            Ok(info) => {
                prop_assert!(info.op_flags & crate::abi::op_flags::INFO_VALID != 0);
                prop_assert!(info.transfer_len <= i32::MAX as u32);
                prop_assert_eq!(info.direction == data_direction::NONE, info.transfer_len == 0);
                prop_assert!(info.data_len <= i64::MAX as u64 && info.lba <= i64::MAX as u64);
            }
            Err(r) => {
                prop_assert_eq!(r.status, sam_status::CHECK_CONDITION);
                assert_well_formed_response(&r);
                // start() refuses it with the same sense.
                match disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &NO_DATA) {
                    Plan::Done(s) => prop_assert_eq!(s.sense, r.sense),
                    Plan::Io(io) => prop_assert!(false, "cdb_info refused, start planned {:?}", io.op),
                }
            }
        }
    }
}

/// PRE-FETCH (SBC-3 §5.9, §5.10) is executed (the range checked, GOOD: nothing is promised to
/// be cached) and reported as supported; past the end it is LBA OUT OF RANGE.
#[test]
fn pre_fetch_is_good_in_range_and_out_of_range_past_the_end() {
    let disk = disk();
    good(&disk, &[0x34, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    let mut sixteen = [0u8; 16];
    sixteen[0] = 0x90;
    sixteen[13] = 8;
    good(&disk, &sixteen, &[]);
    check_sense(
        &disk,
        &[0x34, 0, 0xFF, 0xFF, 0xFF, 0xF0, 0, 0, 1, 0],
        &[],
        [5, 0x21, 0],
        None,
    );
    // REPORT SUPPORTED OPERATION CODES, one command (reporting options 001b): supported (3).
    let rsoc = good_data(&disk, &[0xA3, 0x0C, 0x01, 0x34, 0, 0, 0, 0, 0, 0xFF, 0, 0], &[]);
    assert_eq!(rsoc[1] & 0x07, 3, "{rsoc:?}");
}

// SEND DIAGNOSTIC (SPC-5) and FORMAT UNIT (SBC-4 §5.4), mandatory for a direct-access block
// device (SBC-4's command table marks both M).

const SEND_DIAGNOSTIC: u8 = 0x1D;
const FORMAT_UNIT: u8 = 0x04;

fn send_diagnostic(byte1: u8, param_len: u16) -> [u8; 6] {
    let [hi, lo] = param_len.to_be_bytes();
    [SEND_DIAGNOSTIC, byte1, 0, hi, lo, 0]
}

fn format_unit(byte1: u8) -> [u8; 6] {
    [FORMAT_UNIT, byte1, 0, 0, 0, 0]
}

/// FMTDATA (byte 1 bit 4) and LONGLIST (bit 5).
const FMTDATA: u8 = 0x10;
const LONGLIST: u8 = 0x20;

fn thin_disk(write_cache: bool, unmapped_reads_zero: bool) -> Disk {
    let mut cfg = DiskConfig::new(512, 1000);
    cfg.thin_provisioning = true;
    cfg.write_cache = write_cache;
    cfg.unmapped_reads_zero = unmapped_reads_zero;
    cfg.limits.max_unmap_lba_count = 300;
    disk_with(cfg)
}

/// The default self-test (SELFTEST=1, nothing to test that could fail) and SELF-TEST CODE 000b
/// without a parameter list are GOOD, with or without the DEVOFFL / UNITOFFL permissions and
/// PF, on a thick, thin, read-only or stopped disk (SEND DIAGNOSTIC does not access the medium).
#[test]
fn send_diagnostic_default_self_test_is_good() {
    let mut read_only = DiskConfig::new(512, 1000);
    read_only.read_only = true;
    let disks = [disk(), thin_disk(true, true), disk_with(read_only)];
    for disk in &disks {
        for byte1 in [0x04, 0x05, 0x06, 0x07, 0x14, 0x00, 0x10, 0x01, 0x02, 0x03] {
            good(disk, &send_diagnostic(byte1, 0), &[]);
        }
    }
    let stopped = disk();
    good(&stopped, &[0x1B, 0, 0, 0, 0x04, 0], &[]);
    good(&stopped, &send_diagnostic(0x04, 0), &[]);
}

/// What this disk cannot do is refused with ILLEGAL REQUEST / INVALID FIELD IN CDB and the
/// field pointer: SELFTEST=1 with a SELF-TEST CODE other than 000b (SPC-5 SEND DIAGNOSTIC),
/// the background and foreground self-tests and their abort (no self-test to run in the
/// background or foreground, nor to abort), any parameter list (no diagnostic page is
/// supported, PF or not), and the reserved bits.
#[test]
fn send_diagnostic_refuses_what_the_disk_cannot_do() {
    let disk = disk();
    let at = |byte: u8, bit: Option<u8>| match bit {
        Some(bit) => Some([0xC8 | bit, 0, byte]),
        None => Some([0xC0, 0, byte]),
    };
    for code in 1..=7u8 {
        let byte1 = code << 5;
        check_sense(
            &disk,
            &send_diagnostic(byte1, 0),
            &[],
            [5, 0x24, 0],
            at(1, Some(7)),
        );
        check_sense(
            &disk,
            &send_diagnostic(byte1 | 0x04, 0),
            &[],
            [5, 0x24, 0],
            at(1, Some(7)),
        );
    }
    for (byte1, len) in [
        (0x10u8, 8u16),
        (0x00, 4),
        (0x04, 4),
        (0x14, 0x100),
        (0x10, 0xFFFF),
    ] {
        check_sense(
            &disk,
            &send_diagnostic(byte1, len),
            &vec![0; usize::from(len)],
            [5, 0x24, 0],
            at(3, None),
        );
    }
    // Byte 1 bit 3 and byte 2 are reserved.
    check_sense(
        &disk,
        &send_diagnostic(0x08, 0),
        &[],
        [5, 0x24, 0],
        at(1, Some(3)),
    );
    check_sense(
        &disk,
        &[SEND_DIAGNOSTIC, 0x04, 0x80, 0, 0, 0],
        &[],
        [5, 0x24, 0],
        at(2, Some(7)),
    );
}

/// FORMAT UNIT on a fully provisioned disk: GOOD without touching the medium. SBC-4 FORMAT
/// UNIT leaves the blocks' contents unspecified without an initialization pattern, so the old
/// data is a valid result. The accepted parameter lists: a short or long header with no option
/// set but IMMED (GOOD after the work is also what IMMED allows), and no defect list.
#[test]
fn format_unit_on_a_thick_disk_is_good_without_io() {
    let disk = disk();
    good(&disk, &format_unit(0), &[]);
    // CMPLST and DEFECT LIST FORMAT: no defect list exists, nothing to replace or decode.
    good(&disk, &format_unit(0x0F), &[]);
    good(&disk, &format_unit(FMTDATA), &[0; 4]);
    good(&disk, &format_unit(FMTDATA), &[0, 0x02, 0, 0]);
    good(&disk, &format_unit(FMTDATA | LONGLIST), &[0; 8]);
    good(
        &disk,
        &format_unit(FMTDATA | LONGLIST | 0x0F),
        &[0, 0x02, 0, 0, 0, 0, 0, 0],
    );
}

/// FORMAT UNIT's refusals, on a thick and a thin disk alike: protection information asked for
/// (FMTPINFO, no protection is offered), reserved / vendor-specific / FFMT CDB bits, a short
/// parameter list (PARAMETER LIST LENGTH ERROR), and every parameter list header field this
/// disk cannot honour exactly (INVALID FIELD IN PARAMETER LIST pointing at it): PROTECTION
/// FIELD USAGE, FOV and the options it validates (DPRY, DCRT, STPF, IP), the vendor-specific
/// bit, the long header's P_I_INFORMATION and PROTECTION INTERVAL EXPONENT, and a defect list.
#[test]
fn format_unit_refuses_what_the_disk_cannot_do() {
    let cdb_at = |byte: u8, bit: u8| Some([0xC8 | bit, 0, byte]);
    let param_at = |byte: u8, bit: Option<u8>| match bit {
        Some(bit) => Some([0x88 | bit, 0, byte]),
        None => Some([0x80, 0, byte]),
    };
    for disk in [disk(), thin_disk(true, true)] {
        for byte1 in [0x40, 0x80, 0xC0, 0x40 | FMTDATA, 0xC0 | FMTDATA | LONGLIST] {
            check_sense(&disk, &format_unit(byte1), &[0; 8], [5, 0x24, 0], cdb_at(1, 7));
        }
        check_sense(
            &disk,
            &[FORMAT_UNIT, 0, 0x01, 0, 0, 0],
            &[],
            [5, 0x24, 0],
            cdb_at(2, 0),
        );
        check_sense(
            &disk,
            &[FORMAT_UNIT, 0, 0, 0x10, 0, 0],
            &[],
            [5, 0x24, 0],
            cdb_at(3, 4),
        );
        // FFMT (byte 4 bits 1..0): no fast format.
        check_sense(
            &disk,
            &[FORMAT_UNIT, 0, 0, 0, 0x01, 0],
            &[],
            [5, 0x24, 0],
            cdb_at(4, 0),
        );
        // Short lists.
        for (byte1, len) in [
            (FMTDATA, 0usize),
            (FMTDATA, 3),
            (FMTDATA | LONGLIST, 4),
            (FMTDATA | LONGLIST, 7),
        ] {
            check_sense(&disk, &format_unit(byte1), &vec![0; len], [5, 0x1A, 0], None);
        }
        let short = |header: [u8; 4], sks| {
            check_sense(&disk, &format_unit(FMTDATA), &header, [5, 0x26, 0], sks);
        };
        short([0x01, 0, 0, 0], param_at(0, Some(2)));
        short([0x04, 0, 0, 0], param_at(0, Some(2)));
        short([0x80, 0, 0, 0], param_at(0, Some(7)));
        short([0x08, 0, 0, 0], param_at(0, Some(3)));
        for bit in [7u8, 6, 5, 4, 3, 2, 0] {
            short([0, 1 << bit, 0, 0], param_at(1, Some(bit)));
        }
        short([0, 0, 0, 8], param_at(2, None));
        short([0, 0, 1, 0], param_at(2, None));
        let long = |header: [u8; 8], sks| {
            check_sense(
                &disk,
                &format_unit(FMTDATA | LONGLIST),
                &header,
                [5, 0x26, 0],
                sks,
            );
        };
        long([0, 0, 0, 0x10, 0, 0, 0, 0], param_at(3, Some(7)));
        long([0, 0, 0, 0x01, 0, 0, 0, 0], param_at(3, Some(3)));
        long([0, 0, 0x01, 0, 0, 0, 0, 0], param_at(2, Some(0)));
        long([0, 0, 0, 0, 0, 0, 0, 8], param_at(4, None));
        long([0, 0x80, 0, 0, 0, 0, 0, 0], param_at(1, Some(7)));
    }
    // It writes the medium: refused on a read-only disk, NOT READY on a stopped one.
    let mut cfg = DiskConfig::new(512, 1000);
    cfg.read_only = true;
    check_sense(&disk_with(cfg), &format_unit(0), &[], [7, 0x27, 0], None);
    let stopped = disk();
    good(&stopped, &[0x1B, 0, 0, 0, 0x04, 0], &[]);
    check_sense(&stopped, &format_unit(0), &[], [2, 0x04, 0x02], None);
}

/// FORMAT UNIT on a thin disk deallocates every block, as one UNMAP of the whole capacity
/// would: ranges of at most MAXIMUM UNMAP LBA COUNT blocks, covering it exactly; with WCE 0 a
/// flush follows where LBPRZ is claimed (the format changed what reads return), and only there.
#[test]
fn format_unit_on_a_thin_disk_deallocates_everything() {
    for (write_cache, lbprz) in [(true, true), (true, false), (false, true), (false, false)] {
        let disk = thin_disk(write_cache, lbprz);
        for (cdb, data) in [
            (format_unit(0), &[][..]),
            (format_unit(FMTDATA), &[0u8, 0x02, 0, 0][..]),
            (format_unit(FMTDATA | LONGLIST), &[0u8; 8][..]),
        ] {
            let Plan::Io(io) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &data) else {
                panic!("{cdb:02x?}: a thin disk's FORMAT UNIT deallocates")
            };
            assert_eq!(
                io.op,
                StoreOp::Unmap {
                    ranges: vec![(0, 300), (300, 300), (600, 300), (900, 100)].into()
                },
                "{cdb:02x?}"
            );
            match disk.finish(&io, StoreStatus::Good) {
                Plan::Io(flush) => {
                    assert!(!write_cache && lbprz, "a flush only with WCE 0 and LBPRZ");
                    assert_eq!(flush.op, StoreOp::Flush);
                    let Plan::Done(r) = disk.finish(&flush, StoreStatus::Good) else {
                        panic!("GOOD after the flush")
                    };
                    assert_eq!(r, Response::good());
                }
                Plan::Done(r) => {
                    assert!(write_cache || !lbprz, "WCE 0 with LBPRZ flushes");
                    assert_eq!(r, Response::good());
                }
            }
            // A failed deallocation is the command's failure.
            let Plan::Done(r) = disk.finish(&io, StoreStatus::DeviceError) else {
                panic!("a failure ends the command")
            };
            assert_eq!(r.status, sam_status::CHECK_CONDITION);
        }
    }
    // A ranges list stays short whatever MAXIMUM UNMAP LBA COUNT says, each range within u32.
    let mut cfg = DiskConfig::new(512, 1 << 40);
    cfg.thin_provisioning = true;
    cfg.limits.max_unmap_lba_count = 1;
    let huge = disk_with(cfg);
    let StoreOp::Unmap { ranges } = io_op(&huge, &format_unit(0), &[]) else {
        panic!("an UNMAP")
    };
    assert!(ranges.len() <= 1 << 16, "{} ranges", ranges.len());
    let mut next = 0u64;
    for &(lba, blocks) in ranges.iter() {
        assert_eq!(lba, next);
        assert!(blocks > 0);
        next = lba + u64::from(blocks);
    }
    assert_eq!(next, 1 << 40);
    // A disk past what 2^16 ranges of u32 blocks cover: the format fails, no list is built
    // (the fuzzer's 2^62-block disk asked for a 64 GB one).
    let mut cfg = DiskConfig::new(512, 1 << 62);
    cfg.thin_provisioning = true;
    let too_big = disk_with(cfg);
    check_sense(&too_big, &format_unit(0), &[], [3, 0x31, 0x01], None);
}

/// SEND DIAGNOSTIC and FORMAT UNIT are reported supported, with the usage data the decoder
/// evaluates, on thin and thick disks; PARSE asks for the parameter list header FORMAT UNIT
/// reads (4 bytes, 8 with LONGLIST) and for nothing else.
#[test]
fn send_diagnostic_and_format_unit_are_in_rsoc_and_parse() {
    for disk in [disk(), thin_disk(true, true)] {
        let one = |opcode: u8| good_data(&disk, &[0xA3, 0x0C, 0x01, opcode, 0, 0, 0, 0, 0, 0xFF, 0, 0], &[]);
        assert_eq!(one(FORMAT_UNIT), [0, 0x03, 0, 6, 0x04, 0xFF, 0, 0, 0, 0]);
        assert_eq!(
            one(SEND_DIAGNOSTIC),
            [0, 0x03, 0, 6, 0x1D, 0xF7, 0, 0xFF, 0xFF, 0]
        );
        let all = good_data(&disk, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]);
        let listed: Vec<&[u8]> = all[4..].chunks(8).collect();
        assert!(listed.contains(&&[0x04, 0, 0, 0, 0, 0, 0, 6][..]));
        assert!(listed.contains(&&[0x1D, 0, 0, 0, 0, 0, 0, 6][..]));
        let info = |cdb: &[u8]| disk.cdb_info(cdb).expect("parses");
        let none = info(&format_unit(0));
        assert_eq!((none.direction, none.transfer_len), (data_direction::NONE, 0));
        assert_ne!(none.op_flags & crate::abi::op_flags::WRITE_MEDIUM, 0);
        let short = info(&format_unit(FMTDATA));
        assert_eq!((short.direction, short.transfer_len), (data_direction::WRITE, 4));
        let long = info(&format_unit(FMTDATA | LONGLIST));
        assert_eq!((long.direction, long.transfer_len), (data_direction::WRITE, 8));
        let diag = info(&send_diagnostic(0x04, 0));
        assert_eq!((diag.direction, diag.transfer_len), (data_direction::NONE, 0));
        assert_eq!(diag.op_flags & crate::abi::op_flags::WRITE_MEDIUM, 0);
    }
}

/// A buffer of `len` bytes for a RAM store request.
fn ram_buffer(len: usize) -> crate::store::IoBuffer {
    let pool = std::sync::Arc::new(scst_accel_dma::SgvPool::new(None, None, 1 << 30));
    let buffer = crate::store::CmdBuffer::allocate(&mut crate::store::StoreToken::root(), &pool, len.max(1))
        .expect("buffer");
    crate::store::IoBuffer::new(buffer, len)
}

/// Run `cdb` on `disk` over `store` to its response, as a frontend does: `data_out` in the
/// command's buffer, every planned step executed in the store with the buffer from the step's
/// offset. Returns the response and the command's buffer (a READ's data-in).
fn run_on_ram(
    disk: &Disk,
    store: &crate::store::ram::RamStore,
    cdb: &[u8],
    data_out: &[u8],
) -> (Response, crate::store::IoBuffer) {
    let len = disk.cdb_info(cdb).map_or(0, |i| i.transfer_len as usize);
    let buffer = ram_buffer(len.max(data_out.len()));
    buffer.write_at(0, data_out);
    let mut plan = disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &data_out);
    loop {
        match plan {
            Plan::Done(r) => return (r, buffer),
            Plan::Io(io) => {
                let step = io.op.uses_buffer().then(|| crate::store::IoBuffer {
                    offset: io.buffer_offset(),
                    len: io.op.buffer_bytes(disk.block_size()) as usize,
                    ..buffer.clone()
                });
                let request = crate::store::StoreRequest {
                    tag: 1,
                    op: io.op.clone(),
                    buffer: step,
                };
                let status = store.execute(&mut crate::store::StoreToken::root(), &request);
                plan = disk.finish(&io, status);
            }
        }
    }
}

/// Written data, FORMAT UNIT, then reads: zeroes on a thin disk over the RAM store (whose
/// deallocated blocks read as zeroes: LBPRZ), the data unchanged on a thick one.
#[test]
fn format_unit_on_a_thin_ram_disk_reads_zeroes_back() {
    use crate::store::Store;
    for thin in [true, false] {
        let store = crate::store::ram::RamStore::new(512, 1000, 64);
        let mut cfg = DiskConfig::for_store(&store.info());
        cfg.thin_provisioning = thin;
        cfg.unmapped_reads_zero &= thin;
        cfg.limits.max_unmap_lba_count = 128;
        let disk = disk_with(cfg);
        let data = vec![0x5Au8; 8 * 512];
        for lba in [0u8, 100, 200, 250] {
            let write = [0x2A, 0, 0, 0, 0, lba, 0, 0, 8, 0];
            let (r, _) = run_on_ram(&disk, &store, &write, &data);
            assert_eq!(r.status, sam_status::GOOD);
        }
        let mut last = [0x8A, 0, 0, 0, 0, 0, 0, 0, 0x03, 0xE0, 0, 0, 0, 8, 0, 0];
        assert_eq!(run_on_ram(&disk, &store, &last, &data).0.status, sam_status::GOOD);
        let (r, _) = run_on_ram(&disk, &store, &format_unit(0), &[]);
        assert_eq!(r, Response::good(), "thin {thin}");
        last[0] = 0x88;
        let reads = [
            [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0].to_vec(),
            [0x28, 0, 0, 0, 0, 100, 0, 0, 8, 0].to_vec(),
            [0x28, 0, 0, 0, 0, 250, 0, 0, 8, 0].to_vec(),
            last.to_vec(),
        ];
        for read in reads {
            let (r, buffer) = run_on_ram(&disk, &store, &read, &[]);
            assert_eq!((r.status, r.data_in_len), (sam_status::GOOD, 8 * 512));
            let mut out = vec![0xEEu8; 8 * 512];
            buffer.read_at(0, &mut out);
            let expected = if thin { 0 } else { 0x5A };
            assert!(
                out.iter().all(|&b| b == expected),
                "thin {thin}: {read:02x?} read {:02x?}",
                &out[..16]
            );
        }
    }
}

/// GROUP NUMBER is six bits (SBC-4, for IO advice hints) in every CDB that has it, 10- and
/// 12-byte ones as the 16-byte ones: a group above 31 is accepted alike, not refused in one
/// size as a reserved bit.
#[test]
fn group_number_is_six_bits_in_every_cdb_size() {
    let d = disk();
    // Transfer length 0 (no I/O, GOOD at once) and PRE-FETCH.
    good(&d, &[0x28, 0, 0, 0, 0, 0, 0x3F, 0, 0, 0], &[]);
    good(&d, &[0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3F, 0], &[]);
    good(&d, &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3F, 0], &[]);
    good(&d, &[0x34, 0, 0, 0, 0, 0, 0x3F, 0, 1, 0], &[]);
    // Bits 7 and 6 are still reserved.
    check_sense(
        &d,
        &[0x28, 0, 0, 0, 0, 0, 0x40, 0, 1, 0],
        &[],
        [5, 0x24, 0],
        Some([0xCE, 0, 6]),
    );
}
