//! The disk advertises exactly what it does (issue 15, item 1), for every store the handler has
//! (RAM, file, the simulated SCA-1 board `sim`, the simulated NVMe controller `nvme-sim`), each
//! with the operator's choices (thin or thick, the default and a clamped transfer limit):
//!
//! - every opcode 0..=255 and every service action: the engine executes it iff REPORT
//!   SUPPORTED OPERATION CODES says supported (COMPARE AND WRITE: SCST's core executes it as
//!   READ(16) + WRITE(16), which the engine must execute for every length it advertises; on a
//!   disk whose engine executes it (TCMU) the engine plans it for every such length);
//! - the CDB usage data is exactly the bits the decoder reads plus the ones accepted with no
//!   effect, and every other bit (reserved) is refused with INVALID FIELD IN CDB pointing at it;
//! - the Block Limits page is consistent with itself, with READ CAPACITY(16), the
//!   provisioning page, RSOC and the store (optimal <= maximum, multiples of the granularity,
//!   limits the engine enforces and the store takes).

use super::caps::COMPARE_AND_WRITE_FIELD_MAX;
use super::cdb;
use super::opcodes;
use super::opcodes::Executor;
use super::opcodes::OpcodeEntry;
use super::sense::Sense;
use super::tests::disk_with;
use super::CompareAndWriteBy;
use super::Disk;
use super::DiskConfig;
use super::Plan;
use super::Response;
use super::SenseBytes;
use crate::abi::sam_status;
use crate::store::accel::AccelConfig;
use crate::store::accel::AccelStore;
use crate::store::file::FileStore;
use crate::store::file::FileStoreConfig;
use crate::store::file::IoEngine;
use crate::store::ram::RamStore;
use crate::store::Store;
use crate::store::StoreInfo;
use crate::store::StoreOp;
use crate::store::StoreStatus;
use scst_accel_boards::definition;
use scst_accel_boards::open::open_board;
use scst_accel_boards::open::BoardSource;
use scst_accel_boards::sim::nvme::NvmeSimConfig;
use scst_accel_boards::sim::SimConfig;
use std::cell::Cell;
use std::sync::OnceLock;

const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);

/// What each store kind says about itself, as the service builds it (opened once per test
/// process: the tests run in parallel and a file store locks its image).
fn store_infos() -> Vec<(String, StoreInfo)> {
    static INFOS: OnceLock<Vec<(String, StoreInfo)>> = OnceLock::new();
    INFOS.get_or_init(open_every_store).clone()
}

fn open_every_store() -> Vec<(String, StoreInfo)> {
    let mut infos = Vec::new();
    for bs in [512u32, 4096] {
        infos.push((format!("ram/{bs}"), RamStore::new(bs, 4096, 2048).info()));
    }
    // A store on a spinning disk (what the file store reports over one).
    let spinning = StoreInfo {
        rotational: Some(true),
        ..RamStore::new(512, 4096, 2048).info()
    };
    infos.push(("spinning".to_owned(), spinning));
    // A block device over dm-thin with 64 KiB blocks (what the file store reads from sysfs's
    // discard_granularity): 128 blocks of 512 bytes.
    let thin_pool = StoreInfo {
        unmap_granularity_blocks: Some(128),
        unmapped_reads_zero: false,
        reports_lba_status: false,
        ..RamStore::new(512, 4096, 2048).info()
    };
    infos.push(("dm-thin/64k".to_owned(), thin_pool));
    let dir = std::env::temp_dir().join(format!("scsi-advertising-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("disk.img");
    let file = FileStore::open(&FileStoreConfig {
        create_size: Some(4 << 20),
        block_size: Some(512),
        direct: false,
        workers: 1,
        io_engine: IoEngine::Threads,
        ..FileStoreConfig::new(&path)
    })
    .expect("file store");
    infos.push(("file/512".to_owned(), file.info()));
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
    for bs in [512u32, 4096] {
        let config = SimConfig {
            block_size: bs,
            num_blocks: 4096,
            ..SimConfig::default()
        };
        let opened = open_board(&definition::SIM, BoardSource::Sim(config), 1).expect("sim board");
        let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
        infos.push((format!("sim/{bs}"), store.info()));
    }
    // MDTS 5: 128 KiB; MDTS 9: 2 MiB, 4096 blocks of 512 bytes (an MDTS clamp below the 2048
    // default only with 4096-byte blocks: 512 blocks). The fused Compare and Write of 16
    // blocks (the simulator's default ACWU), and none (QEMU 7.2's controller).
    for (bs, mdts, fused) in [(512u32, 5u8, 16u16), (512, 9, 16), (4096, 9, 16), (512, 5, 0)] {
        let config = NvmeSimConfig {
            block_size: bs,
            num_blocks: 8192,
            mdts,
            compare_write_max_blocks: fused,
            ..NvmeSimConfig::default()
        };
        let opened = open_board(&definition::NVME_SIM, BoardSource::NvmeSim(config), 1).expect("nvme-sim");
        let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
        assert_eq!(
            store.info().compare_and_write_blocks,
            u32::from(fused),
            "ACWU + 1"
        );
        infos.push((format!("nvme-sim/{bs}/mdts{mdts}/acwu{fused}"), store.info()));
    }
    infos
}

/// The disks the service would build over `info` (tools' `DiskArgs::disk_config`): thick, a
/// LUN of SCST's copy manager, and, where the store deallocates, thin, not one; the default
/// `--max-transfer-blocks` (2048) and a clamp to 1024 and to 100 (not a multiple of a 4 KiB
/// physical block in 512-byte blocks); and the TCMU frontend's disk, whose engine executes
/// COMPARE AND WRITE, with the default and the smallest clamp.
fn disks_for(info: &StoreInfo) -> Vec<DiskConfig> {
    let mut out = Vec::new();
    for max in [2048u32, 100] {
        let mut config = DiskConfig::for_store(info);
        config.compare_and_write = CompareAndWriteBy::Handler;
        config.limits.max_transfer_blocks = config.limits.max_transfer_blocks.min(max);
        out.push(config);
    }
    for thin in [false, true] {
        if thin && !info.supports_unmap {
            continue;
        }
        for max in [2048u32, 1024, 100] {
            let mut config = DiskConfig::for_store(info);
            if !thin {
                config.copy_manager_lun(info);
            }
            config.thin_provisioning = thin;
            config.unmapped_reads_zero &= thin;
            config.limits.max_transfer_blocks = config.limits.max_transfer_blocks.min(max);
            out.push(config);
        }
    }
    out
}

/// Every disk of every store kind, with its name and the store's own description.
fn every_disk() -> Vec<(String, StoreInfo, Disk)> {
    store_infos()
        .into_iter()
        .flat_map(|(name, info)| {
            disks_for(&info).into_iter().map(move |config| {
                let label = format!(
                    "{name} thin={} max={} caw={:?} copy_manager={:?}",
                    config.thin_provisioning,
                    config.limits.max_transfer_blocks,
                    config.compare_and_write,
                    config.copy_offload
                );
                (label, info, disk_with(config))
            })
        })
        .collect()
}

fn run(disk: &Disk, cdb: &[u8]) -> Result<Plan, Response> {
    match disk.start(&mut scst_accel_hal::locks::LockToken::root(), cdb, &[0u8; 0]) {
        Plan::Done(r) if r.status != sam_status::GOOD => Err(r),
        plan => Ok(plan),
    }
}

fn fixed(sense: Sense) -> SenseBytes {
    sense.encode(false)
}

fn asc(r: &Response) -> (u8, u8) {
    (r.sense[12], r.sense[13])
}

/// REPORT SUPPORTED OPERATION CODES, one command (reporting options 011b).
fn rsoc_one(disk: &Disk, opcode: u8, sa: u8) -> Vec<u8> {
    let mut cdb = [0xA3, 0x0C, 0x03, opcode, 0, sa, 0, 0, 0x01, 0, 0, 0];
    cdb[5] = sa;
    match run(disk, &cdb) {
        Ok(Plan::Done(r)) => r.data,
        other => panic!("RSOC {opcode:02x}/{sa:02x}: {other:?}"),
    }
}

/// The (opcode, service action) pairs REPORT SUPPORTED OPERATION CODES lists (options 000b).
fn rsoc_all(disk: &Disk) -> Vec<(u8, Option<u8>, u16)> {
    let cdb = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let Ok(Plan::Done(r)) = run(disk, &cdb) else {
        panic!("RSOC all commands")
    };
    let len = u32::from_be_bytes(r.data[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, r.data.len() - 4);
    r.data[4..]
        .chunks(8)
        .map(|d| {
            let sa = (d[5] & 0x01 != 0).then_some(d[3]);
            (d[0], sa, u16::from_be_bytes([d[6], d[7]]))
        })
        .collect()
}

/// The CDB forms the walk tries for an opcode: no service action, or each of the 32.
fn forms(opcode: u8) -> Vec<Option<u8>> {
    if opcodes::TABLE
        .iter()
        .any(|e| e.opcode == opcode && e.service_action.is_some())
    {
        (0..32).map(Some).collect()
    } else {
        vec![None]
    }
}

/// A CDB of `len` zero bytes with the opcode and service action in place.
fn base_cdb(opcode: u8, sa: Option<u8>, len: usize) -> Vec<u8> {
    let mut cdb = vec![0u8; len];
    cdb[0] = opcode;
    if let Some(sa) = sa {
        cdb[1] = sa;
    }
    cdb
}

/// Walk every opcode and service action: RSOC's answer, the engine's, and the "all commands"
/// list agree, and the usage data RSOC gives is the table's.
#[test]
fn the_engine_executes_a_command_iff_rsoc_says_supported() {
    for (label, _, disk) in every_disk() {
        let all = rsoc_all(&disk);
        let mut listed = 0;
        for opcode in 0..=255u8 {
            for sa in forms(opcode) {
                let data = rsoc_one(&disk, opcode, sa.unwrap_or(0));
                let entry = opcodes::TABLE.iter().find(|e| {
                    e.opcode == opcode
                        && e.service_action == sa
                        && e.offered(super::opcodes::Features::of(disk.capabilities()))
                });
                let what = format!("{label}: {opcode:02x}/{sa:02x?}");
                let cdb = base_cdb(opcode, sa, entry.map_or(16, OpcodeEntry::cdb_len));
                let outcome = run(&disk, &cdb);
                if disk.is_stopped() {
                    // That was START STOP UNIT with START=0: start the unit again for the rest.
                    assert!(run(&disk, &[0x1B, 0, 0, 0, 0x01, 0]).is_ok());
                }
                match entry {
                    None => {
                        assert_eq!(data, [0, 0x01, 0, 0], "{what}: RSOC must say not supported");
                        let refused = outcome.expect_err(&what);
                        // An opcode with service actions the engine executes: an unknown one is
                        // a bad field; an opcode only SCST's core executes is unknown as a whole.
                        let engine_sas = opcodes::TABLE.iter().any(|e| {
                            e.opcode == opcode && e.service_action.is_some() && e.executor == Executor::Engine
                        });
                        let expected = if sa.is_some() && engine_sas {
                            fixed(Sense::invalid_cdb_field(1, Some(4)))
                        } else {
                            fixed(Sense::invalid_opcode())
                        };
                        assert_eq!(
                            refused.sense, expected,
                            "{what}: not supported, so refused as such"
                        );
                        let parse = disk.cdb_info(&cdb).expect_err(&what);
                        assert_eq!(parse.sense, expected, "{what}: PARSE refuses it the same way");
                        assert!(
                            !all.iter().any(|&(o, s, _)| o == opcode && s == sa),
                            "{what} listed"
                        );
                    }
                    Some(e) => {
                        listed += 1;
                        assert_eq!(data[1] & 0x07, 0x03, "{what}: RSOC must say supported");
                        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
                        assert_eq!(len, e.cdb_len(), "{what}");
                        let mut usage = e
                            .usage_for(super::opcodes::Features::of(disk.capabilities()))
                            .to_vec();
                        if let Some(sa) = sa {
                            usage[1] = sa;
                        }
                        assert_eq!(&data[4..4 + len], usage.as_slice(), "{what}: usage data");
                        assert!(
                            all.contains(&(opcode, sa, len as u16)),
                            "{what} missing from the list"
                        );
                        let features = super::opcodes::Features::of(disk.capabilities());
                        if features.executes(e) {
                            if let Err(r) = disk.cdb_info(&cdb) {
                                assert_ne!(
                                    asc(&r),
                                    INVALID_OPCODE,
                                    "{what}: PARSE refuses a supported command"
                                );
                            }
                            if let Err(r) = &outcome {
                                assert_ne!(asc(r), INVALID_OPCODE, "{what}: supported but refused");
                                if sa.is_some() {
                                    assert_ne!(
                                        r.sense,
                                        fixed(Sense::invalid_cdb_field(1, Some(4))),
                                        "{what}: supported service action refused"
                                    );
                                }
                            }
                            if e.executor == Executor::Core {
                                check_engine_compare_and_write(&label, &disk);
                            }
                        } else {
                            // The engine never sees it (the core runs it); it would refuse it.
                            assert_eq!(e.executor, Executor::Core, "{what}");
                            assert_eq!(outcome.expect_err(&what).sense, fixed(Sense::invalid_opcode()));
                            match e.op {
                                opcodes::Op::CompareAndWrite => check_core_compare_and_write(&label, &disk),
                                // The core answers them without the engine.
                                opcodes::Op::ReportLuns
                                | opcodes::Op::PersistentReserveIn
                                | opcodes::Op::PersistentReserveOut => {}
                                _ => check_core_copy_manager(&label, &disk),
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            listed,
            all.len(),
            "{label}: the list has exactly the supported commands"
        );
    }
}

/// SCST's core runs COMPARE AND WRITE (scst_cmp_wr_local) as READ(16) with CDB byte 1 & 1Fh,
/// a compare, then WRITE(16) with byte 1, both of NUMBER OF LOGICAL BLOCKS. Every length up to
/// the advertised maximum and every byte-1 bit the usage data sets must go through the
/// engine; the reserved bits of byte 1 are refused (by READ(16) for bit 0, WRITE(16) for bit 2).
fn check_core_compare_and_write(label: &str, disk: &Disk) {
    let max = u32::from(disk.capabilities().compare_and_write.max_blocks());
    let entry = opcodes::TABLE
        .iter()
        .find(|e| e.op == opcodes::Op::CompareAndWrite)
        .expect("COMPARE AND WRITE entry");
    assert!((1..=COMPARE_AND_WRITE_FIELD_MAX).contains(&max), "{label}: {max}");
    let core_cdbs = |byte1: u8, nlb: u32| {
        let mut read = base_cdb(0x88, None, 16);
        read[1] = byte1 & 0x1F;
        read[10..14].copy_from_slice(&nlb.to_be_bytes());
        let mut write = read.clone();
        write[0] = 0x8A;
        write[1] = byte1;
        (read, write)
    };
    // WRPROTECT is evaluated by the core itself (non-zero refused without protection
    // information): only the other usage bits reach the engine.
    let engine_bits = entry.usage[1] & 0x1F;
    for byte1 in (0..=0x1Fu8).filter(|b| b & !engine_bits == 0) {
        for nlb in [1, max / 2 + 1, max] {
            let (read, write) = core_cdbs(byte1, nlb);
            let read_io = match run(disk, &read) {
                // FUA with WCE 1: the cache is flushed before the read (SBC-3 READ FUA).
                Ok(Plan::Io(io)) if byte1 & 0x08 != 0 && disk.write_cache_enabled() => {
                    assert_eq!(io.op, StoreOp::Flush, "{label}: {read:02x?}");
                    disk.finish(&io, StoreStatus::Good)
                }
                other => other.unwrap_or_else(Plan::Done),
            };
            match read_io {
                Plan::Io(io) => assert_eq!(io.op, StoreOp::Read { lba: 0, blocks: nlb }),
                other => panic!("{label}: COMPARE AND WRITE's READ(16) {read:02x?}: {other:?}"),
            }
            match run(disk, &write) {
                Ok(Plan::Io(io)) => assert!(
                    matches!(io.op, StoreOp::Write { lba: 0, blocks, fua } if blocks == nlb
                        && (fua || byte1 & 0x08 == 0)),
                    "{label}: {:?}",
                    io.op
                ),
                other => panic!("{label}: COMPARE AND WRITE's WRITE(16) {write:02x?}: {other:?}"),
            }
        }
    }
    let (read, _) = core_cdbs(0x01, 1);
    assert_eq!(
        run(disk, &read).expect_err(label).sense,
        fixed(Sense::invalid_cdb_field(1, Some(0)))
    );
    let (_, write) = core_cdbs(0x04, 1);
    assert_eq!(
        run(disk, &write).expect_err(label).sense,
        fixed(Sense::invalid_cdb_field(1, Some(2)))
    );
    // The maximum is exact where the transfer limit sets it: one block more is refused.
    if max < COMPARE_AND_WRITE_FIELD_MAX {
        let (read, _) = core_cdbs(0, max + 1);
        assert_eq!(
            run(disk, &read).expect_err(label).sense,
            fixed(Sense::invalid_cdb_field(10, None))
        );
    }
}

/// Where the engine executes COMPARE AND WRITE: every length up to the advertised maximum,
/// with a Data-Out of 2 × N blocks and every byte-1 bit the usage data sets but WRPROTECT,
/// plans the compare of N blocks and then the write of N blocks from the Data-Out's second
/// half (FUA when the CDB says so), or, up to the store's atomic compare and write (NVMe's
/// fused operation), that one step over the whole Data-Out; one block more than the maximum
/// is refused at byte 13.
fn check_engine_compare_and_write(label: &str, disk: &Disk) {
    let max = u32::from(disk.capabilities().compare_and_write.max_blocks());
    let in_device = disk.capabilities().compare_and_write_in_device;
    assert!((1..=COMPARE_AND_WRITE_FIELD_MAX).contains(&max), "{label}: {max}");
    let bs = disk.block_size() as usize;
    let entry = opcodes::TABLE
        .iter()
        .find(|e| e.op == opcodes::Op::CompareAndWrite)
        .expect("COMPARE AND WRITE entry");
    let cdb = |byte1: u8, nlb: u32| {
        let mut c = base_cdb(0x89, None, 16);
        c[1] = byte1;
        c[13] = nlb as u8;
        c
    };
    for byte1 in (0..=0x1Fu8).filter(|b| b & !entry.usage[1] == 0) {
        for nlb in [1, max / 2 + 1, max] {
            let data = vec![0u8; 2 * nlb as usize * bs];
            let first = match disk.start(
                &mut scst_accel_hal::locks::LockToken::root(),
                &cdb(byte1, nlb),
                &data,
            ) {
                Plan::Io(io) => io,
                Plan::Done(r) => panic!("{label}: COMPARE AND WRITE {byte1:#04x} x{nlb}: {r:02x?}"),
            };
            if nlb <= in_device {
                assert!(
                    matches!(first.op, StoreOp::CompareAndWrite { lba: 0, blocks, fua } if blocks == nlb
                        && (fua || byte1 & 0x08 == 0)),
                    "{label}: {:?}",
                    first.op
                );
                assert_eq!(first.buffer_offset(), 0, "{label}");
                assert!(first.then.is_none(), "{label}: one step");
                continue;
            }
            assert_eq!(first.op, StoreOp::Compare { lba: 0, blocks: nlb }, "{label}");
            let Plan::Io(second) = disk.finish(&first, StoreStatus::Good) else {
                panic!("{label}: no write after the compare")
            };
            assert!(
                matches!(second.op, StoreOp::Write { lba: 0, blocks, fua } if blocks == nlb
                    && (fua || byte1 & 0x08 == 0)),
                "{label}: {:?}",
                second.op
            );
            assert_eq!(second.buffer_offset(), nlb as usize * bs, "{label}");
        }
    }
    if max < COMPARE_AND_WRITE_FIELD_MAX {
        let data = vec![0u8; 2 * (max as usize + 1) * bs];
        let r = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &cdb(0, max + 1),
            &data,
        );
        let Plan::Done(r) = r else {
            panic!("{label}: one block over the maximum was planned")
        };
        assert_eq!(r.sense, fixed(Sense::invalid_cdb_field(13, None)), "{label}");
    }
}

/// SCST's copy manager serves EXTENDED COPY and RECEIVE COPY RESULTS (docs/xcopy.md). What it
/// needs from the engine: its INQUIRY at registration (`01 83`, 4096 bytes, scst_copy_mgr.c:
/// 2383-2430) with the LU's designator where it looks (association 0, PIV 0, protocol 0,
/// inside the first PAGE LENGTH bytes: the parser stops at `off < page_len`, :2324), and its
/// READ(16) / WRITE(16) of 512 KiB (SCST_CM_MAX_EACH_IO_SIZE) for what it copies itself.
fn check_core_copy_manager(label: &str, disk: &Disk) {
    let remap = match disk.capabilities().copy_offload {
        super::CopyOffload::ScstCopyManager { remap } => remap,
        super::CopyOffload::None => panic!("{label}: listed without copy offload"),
    };
    let page = match run(disk, &[0x12, 0x01, 0x83, 0x10, 0x00, 0x00]) {
        Ok(Plan::Done(r)) => r.data,
        other => panic!("{label}: the copy manager's INQUIRY: {other:?}"),
    };
    assert_eq!(
        (page[0], page[1]),
        (0, 0x83),
        "{label}: a disk's device identification page"
    );
    let page_len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let ours = disk.config().designator.descriptor();
    let mut off = 4;
    let mut registered = Vec::new();
    while off < page_len && off + 3 < page_len {
        let len = usize::from(page[off + 3]);
        if off + len > page_len {
            break;
        }
        if page[off] & 0xF0 == 0 && page[off + 1] & 0xF0 == 0 {
            registered.push(page[off..off + 4 + len].to_vec());
        }
        off += 4 + len;
    }
    assert!(
        registered.contains(&ours),
        "{label}: the copy manager would not register the LU designator {ours:02x?} from {page:02x?}"
    );
    let blocks = super::caps::COPY_MANAGER_IO_BYTES / disk.block_size();
    for opcode in [0x88u8, 0x8A] {
        let mut cdb = base_cdb(opcode, None, 16);
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        assert!(
            matches!(run(disk, &cdb), Ok(Plan::Io(_))),
            "{label}: the copy manager's {opcode:02x} of {blocks} blocks must go through"
        );
    }
    if remap {
        assert!(
            matches!(
                disk.copy_segment(0, 1, (blocks * disk.block_size()) as i32),
                Plan::Io(_)
            ),
            "{label}: a remapped segment must reach the store"
        );
    }
}

/// For every command the engine executes: each usage-data bit is read by the decoder or
/// accepted with no effect (and those are not read), and each other bit is refused with
/// INVALID FIELD IN CDB pointing at it. The control byte: NACA refused, vendor bits accepted.
#[test]
fn usage_data_is_what_the_decoder_reads() {
    for (label, _, disk) in every_disk() {
        let geo = disk.geometry();
        for e in opcodes::TABLE
            .iter()
            .filter(|e| geo.features.executes(e) && e.offered(geo.features))
        {
            let what = format!("{label}: {}", e.name);
            let len = e.cdb_len();
            let last = len - 1;
            let base = base_cdb(e.opcode, e.service_action, len);
            let sa_bits = if e.service_action.is_some() { 0x1F } else { 0 };
            let read = Cell::new([0u8; cdb::READ_MASK_LEN]);
            let _ = cdb::decode_traced(&base, &geo, &read);
            for byte in 1..last {
                for bit in 0..8u8 {
                    let mask = 1u8 << bit;
                    if byte == 1 && sa_bits & mask != 0 {
                        continue;
                    }
                    let mut cdb = base.clone();
                    cdb[byte] |= mask;
                    if e.usage_for(geo.features)[byte] & mask == 0 {
                        let refused = run(&disk, &cdb).expect_err(&what);
                        assert_eq!(
                            refused.sense,
                            fixed(Sense::invalid_cdb_field(byte, Some(bit))),
                            "{what}: reserved byte {byte} bit {bit}"
                        );
                    } else {
                        let _ = cdb::decode_traced(&cdb, &geo, &read);
                    }
                }
            }
            let accepted = opcodes::accepted_without_effect(e);
            let read = read.get();
            for byte in 1..last {
                let sa = if byte == 1 { sa_bits } else { 0 };
                assert_eq!(
                    accepted[byte] & read[byte],
                    0,
                    "{what}: byte {byte}: 'no effect' bits are read"
                );
                assert_eq!(
                    e.usage_for(geo.features)[byte] & !sa,
                    (read[byte] | accepted[byte]) & !sa,
                    "{what}: byte {byte}: usage {:08b}, read {:08b}, accepted {:08b}",
                    e.usage_for(geo.features)[byte],
                    read[byte],
                    accepted[byte]
                );
            }
            let mut naca = base.clone();
            naca[last] = 0x04;
            assert_eq!(
                run(&disk, &naca).expect_err(&what).sense,
                fixed(Sense::invalid_cdb_field(last, Some(2)))
            );
            let mut vendor = base.clone();
            vendor[last] = 0xC0;
            let outcome = run(&disk, &vendor);
            let plain = run(&disk, &base);
            assert_eq!(
                outcome.as_ref().err().map(|r| &r.sense),
                plain.as_ref().err().map(|r| &r.sense),
                "{what}: vendor bits of the control byte change nothing"
            );
        }
    }
}

fn be(d: &[u8]) -> u64 {
    d.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

fn data(disk: &Disk, cdb: &[u8]) -> Vec<u8> {
    match run(disk, cdb) {
        Ok(Plan::Done(r)) => r.data,
        other => panic!("{cdb:02x?}: {other:?}"),
    }
}

/// The Block Limits page as an initiator reads it, checked against itself, READ
/// CAPACITY(16), the provisioning page, RSOC, the mode pages, the engine and the store.
#[test]
fn block_limits_are_consistent_and_enforced() {
    for (label, info, disk) in every_disk() {
        let b0 = data(&disk, &[0x12, 0x01, 0xB0, 0, 0xFF, 0]);
        let caw = u32::from(b0[5]);
        let granularity = u32::from(u16::from_be_bytes([b0[6], b0[7]])).max(1);
        let max = be(&b0[8..12]) as u32;
        let optimal = be(&b0[12..16]) as u32;
        let (max_unmap, max_descriptors, unmap_granularity) =
            (be(&b0[20..24]), be(&b0[24..28]), be(&b0[28..32]));
        let max_write_same = be(&b0[36..44]);
        let rc16 = data(&disk, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        let what = format!("{label}: max {max} optimal {optimal} granularity {granularity} caw {caw}");

        assert!(max >= 1, "{what}");
        assert!(
            optimal <= max,
            "{what}: OPTIMAL TRANSFER LENGTH above the maximum"
        );
        assert_eq!(
            optimal % granularity,
            0,
            "{what}: optimal not a multiple of the granularity"
        );
        if max >= granularity {
            assert_eq!(
                max % granularity,
                0,
                "{what}: maximum not a multiple of the granularity"
            );
        }
        assert_eq!(
            granularity,
            1 << rc16[13],
            "{what}: granularity is READ CAPACITY(16)'s physical block"
        );
        assert!(
            max <= info.max_transfer_blocks,
            "{what}: more than the store takes ({})",
            info.max_transfer_blocks
        );
        assert!(
            u64::from(max) * u64::from(info.block_size) <= i32::MAX as u64,
            "{what}"
        );
        assert_eq!(
            caw,
            max.min(COMPARE_AND_WRITE_FIELD_MAX),
            "{what}: MAXIMUM COMPARE AND WRITE LENGTH"
        );
        assert_eq!(
            rsoc_one(&disk, 0x89, 0)[1] & 0x07,
            if caw > 0 { 3 } else { 1 },
            "{what}"
        );
        assert!(max_write_same >= 1, "{what}");

        // Provisioning: LBPME, VPD B2h, the UNMAP fields and RSOC agree.
        let thin = rc16[14] & 0x80 != 0;
        let pages = data(&disk, &[0x12, 0x01, 0x00, 0, 0xFF, 0]);
        assert_eq!(pages[4..].contains(&0xB2), thin, "{what}");
        assert_eq!(
            rsoc_one(&disk, 0x42, 0)[1] & 0x07,
            if thin { 3 } else { 1 },
            "{what}: UNMAP"
        );
        if thin {
            assert!(
                max_unmap >= 1 && max_descriptors >= 1 && unmap_granularity >= 1,
                "{what}"
            );
            // The medium's granularity where it has one, else the engine's 4 KiB.
            let medium = info
                .unmap_granularity_blocks
                .map_or(4096 / u64::from(info.block_size), u64::from);
            assert_eq!(
                unmap_granularity,
                medium.max(1),
                "{what}: OPTIMAL UNMAP GRANULARITY"
            );
            let b2 = data(&disk, &[0x12, 0x01, 0xB2, 0, 0xFF, 0]);
            assert_eq!(b2[5] & 0x04 != 0, rc16[14] & 0x40 != 0, "{what}: LBPRZ");
            assert!(
                rc16[14] & 0x40 == 0 || info.unmapped_reads_zero,
                "{what}: LBPRZ the store does not promise"
            );
        } else {
            assert_eq!(
                (max_unmap, max_descriptors, unmap_granularity),
                (0, 0, 0),
                "{what}"
            );
            assert_eq!(rc16[14] & 0x40, 0, "{what}: LBPRZ without LBPME");
        }

        // V_SUP (Extended INQUIRY Data) where the store has a volatile cache, and the caching
        // page's default WCE 1 there (`DiskConfig::for_store`; the operator's write_cache =
        // false lowers the WCE, never V_SUP).
        assert!(pages[4..].contains(&0x86), "{what}");
        let b86 = data(&disk, &[0x12, 0x01, 0x86, 0, 0xFF, 0]);
        let caching_default = data(&disk, &[0x1A, 0x08, 0x88, 0, 0xFF, 0]);
        assert_eq!(
            b86[6] & 0x01 != 0,
            info.volatile_cache,
            "{what}: V_SUP and the store's cache"
        );
        assert_eq!(
            caching_default[6] & 0x04 != 0,
            info.volatile_cache,
            "{what}: WCE and the store's cache"
        );

        // MEDIUM ROTATION RATE: non-rotating unless the store's medium spins.
        let b1 = data(&disk, &[0x12, 0x01, 0xB1, 0, 0xFF, 0]);
        let rate = u16::from_be_bytes([b1[4], b1[5]]);
        assert_eq!(
            rate == 1,
            info.rotational != Some(true),
            "{what}: rotation rate {rate}"
        );

        // DPOFUA, and the DPO and FUA bits in the usage data of every READ and WRITE.
        let mode = data(&disk, &[0x1A, 0x08, 0x3F, 0, 0xFF, 0]);
        assert_eq!(mode[2] & 0x10, 0x10, "{what}: DPOFUA");
        for opcode in [0x28u8, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x89] {
            let usage = rsoc_one(&disk, opcode, 0);
            assert_eq!(
                usage[5] & 0x18,
                0x18,
                "{what}: {opcode:02x} usage data lacks DPO/FUA"
            );
        }

        // The engine enforces exactly the advertised limits.
        let read16 = |blocks: u32| {
            let mut cdb = base_cdb(0x88, None, 16);
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            cdb
        };
        if u64::from(max) <= disk.num_blocks() {
            assert!(
                matches!(run(&disk, &read16(max)), Ok(Plan::Io(_))),
                "{what}: a maximal READ"
            );
        }
        assert_eq!(
            run(&disk, &read16(max + 1)).expect_err(&what).sense,
            fixed(Sense::invalid_cdb_field(10, None)),
            "{what}: one block over the maximum"
        );
        let ws16 = |blocks: u64| {
            let mut cdb = base_cdb(0x93, None, 16);
            cdb[10..14].copy_from_slice(&u32::try_from(blocks).unwrap_or(u32::MAX).to_be_bytes());
            cdb
        };
        if max_write_same < u64::from(u32::MAX) {
            let over = run(&disk, &ws16(max_write_same + 1)).expect_err(&what);
            assert_eq!(
                asc(&over),
                INVALID_FIELD_IN_CDB,
                "{what}: WRITE SAME over its maximum"
            );
        }
    }
}

/// Regression (issue 15): RSOC listed COMPARE AND WRITE as not supported and the Block Limits
/// page gave MAXIMUM COMPARE AND WRITE LENGTH 0, while SCST's core executes it.
#[test]
fn rsoc_lists_compare_and_write_with_usage_data_iff_supported() {
    let disk = disk_with(DiskConfig::new(512, 1000));
    let one = data(&disk, &[0xA3, 0x0C, 0x01, 0x89, 0, 0, 0, 0, 0, 0xFF, 0, 0]);
    assert_eq!(
        one,
        [0, 0x03, 0, 16, 0x89, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0]
    );
    assert!(rsoc_all(&disk).contains(&(0x89, None, 16)));
    assert_eq!(data(&disk, &[0x12, 0x01, 0xB0, 0, 0xFF, 0])[5], 255);

    let mut cfg = DiskConfig::new(512, 1000);
    cfg.limits.max_transfer_blocks = 64;
    assert_eq!(
        data(&disk_with(cfg.clone()), &[0x12, 0x01, 0xB0, 0, 0xFF, 0])[5],
        64
    );

    // Where the engine runs it (TCMU), it is advertised the same way.
    cfg.compare_and_write = CompareAndWriteBy::Handler;
    let handler = disk_with(cfg.clone());
    assert_eq!(
        data(&handler, &[0xA3, 0x0C, 0x01, 0x89, 0, 0, 0, 0, 0, 0xFF, 0, 0]),
        one,
        "same usage data"
    );
    assert_eq!(data(&handler, &[0x12, 0x01, 0xB0, 0, 0xFF, 0])[5], 64);

    // Where SCST's core would not run it (parse_type CALL), it is not advertised.
    cfg.compare_and_write = CompareAndWriteBy::Nobody;
    let disk = disk_with(cfg);
    assert_eq!(
        data(&disk, &[0xA3, 0x0C, 0x01, 0x89, 0, 0, 0, 0, 0, 0xFF, 0, 0]),
        [0, 0x01, 0, 0]
    );
    assert!(!rsoc_all(&disk).iter().any(|&(o, _, _)| o == 0x89));
    assert_eq!(data(&disk, &[0x12, 0x01, 0xB0, 0, 0xFF, 0])[5], 0);
}

/// A board whose scatter list is short bounds the transfer the store takes: an SCA-1 board
/// with one scatter entry (CAP0's MAX_SGL 2^0) and a 1 MiB MAX_TRANSFER takes requests of one
/// 64 KiB piece, the store's segment size, not requests the board must refuse as having too
/// many segments.
#[test]
fn a_short_scatter_list_bounds_the_transfer() {
    for (log2, max) in [(0u32, 64u32 << 10), (1, 128 << 10), (8, 1 << 20)] {
        let config = SimConfig {
            block_size: 512,
            num_blocks: 4096,
            max_sgl_log2: log2,
            ..SimConfig::default()
        };
        let opened = open_board(&definition::SIM, BoardSource::Sim(config), 1).expect("sim board");
        let geometry = opened.controller.geometry();
        assert_eq!(geometry.max_transfer_bytes, 1 << 20, "the board's own limit");
        let info = AccelStore::new(opened.controller, opened.queues, AccelConfig::default()).info();
        assert_eq!(info.max_transfer_blocks * 512, max, "MAX_SGL 2^{log2}");
    }
}

/// Regression (issue 15): an NVMe board whose MDTS clamps the maximum transfer below the
/// default optimal (2048 blocks) must not report an optimal above the maximum.
#[test]
fn optimal_stays_under_an_mdts_clamped_maximum() {
    let config = NvmeSimConfig {
        block_size: 512,
        num_blocks: 8192,
        mdts: 7, // 512 KiB: 1024 blocks
        ..NvmeSimConfig::default()
    };
    let opened = open_board(&definition::NVME_SIM, BoardSource::NvmeSim(config), 1).expect("nvme-sim");
    let info = AccelStore::new(opened.controller, opened.queues, AccelConfig::default()).info();
    assert_eq!(info.max_transfer_blocks, 1024);
    let mut config = DiskConfig::for_store(&info);
    config.limits.max_transfer_blocks = config.limits.max_transfer_blocks.min(2048);
    assert_eq!(
        config.limits.optimal_transfer_blocks, 2048,
        "the default optimal is above"
    );
    let b0 = data(&disk_with(config), &[0x12, 0x01, 0xB0, 0, 0xFF, 0]);
    assert_eq!((be(&b0[8..12]), be(&b0[12..16])), (1024, 1024));
}
