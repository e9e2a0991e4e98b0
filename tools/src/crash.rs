//! `scst-accel crash-writer` (hidden; for the crash-consistency test, tools/tests/crash.rs): a
//! writer that a test SIGKILLs, and the offline check of what it left behind.
//!
//! The loopback kernel lives in the handler's process, so the whole stack — store, frontend,
//! loopback kernel and the initiator — runs in this one child process, and the test kills it.
//! The writer serves the disk (`--board file --path IMG`), attaches one session and writes
//! stamped blocks ([`stamp`]: LBA, generation, and a body derived from both that acts as the
//! checksum) until it is killed or `--duration` ends, one command at a time, mixing
//! - FUA writes (durable once they complete GOOD),
//! - plain writes followed by SYNCHRONIZE CACHE (durable once the flush completes GOOD),
//! - plain writes never flushed (may or may not be on the image after the kill).
//!
//! Every write gets a generation unique over all runs on the same journal (each run continues
//! after the journal's largest one). The journal (`--journal J`, O_APPEND) gets a *submitted*
//! record before a write is submitted — so any data found on the image can be traced to a
//! write — and a *durable* record only after the acknowledgment that makes the write durable
//! (FUA GOOD, or a later SYNCHRONIZE CACHE GOOD), fdatasync'ed before the next command. A
//! record cut by the kill at the journal's tail is ignored (each record has a checksum).
//!
//! [`check`] then reads the image directly (not through the handler) and requires, for every
//! block: a block with a durable record of generation g holds that LBA's stamp of a generation
//! at least g (a later submitted write may have landed); a stamped block carries its own LBA, an intact
//! body and a generation submitted for that LBA (never stale, torn or foreign data); a zero block
//! only where nothing durable was recorded.
//!
//! What a SIGKILL proves, and what it does not: it proves the handler acknowledges nothing it has
//! not handed to the kernel (no write is acknowledged from a user-space buffer that dies with the
//! process), that FUA and SYNCHRONIZE CACHE wait for their I/O, and that a kill never leaves a
//! block with data from nowhere. It does not simulate a power cut: the kernel's page cache
//! survives a process kill, so even a buffered (`--buffered`) write that reached pwrite(2) is
//! read back. What makes acknowledged data reach the device on power loss is O_DIRECT plus
//! fdatasync(2) for SYNCHRONIZE CACHE and an O_DSYNC fd for FUA (store::file); a kill does not
//! exercise that path. The HIL suite's power-cut scenario (tests/hil/scenarios/power-cut.sh)
//! does: it runs this writer on a dm-log-writes target, which logs what the device was sent,
//! and `crash-check --log-writes` ([`check_power_cut`], `crate::log_writes`) checks every state
//! a power cut may leave. With `--log-writes-mark` the writer marks that log at each
//! acknowledgment (before journaling it), and the check holds each acknowledged write to the
//! state a cut just before its mark leaves (`AckCheck`): an acknowledgment given before the
//! device completed the FUA write or flush it rests on fails there whenever its mark reaches
//! the target first (the writer marks with one ioctl right after the acknowledgment), and so
//! does a FUA write the store sent without FUA. Under a device the handler drives through VFIO
//! (`--board qemu-nvme --pci`, the HIL power-cut-vfio scenario) there is no target to mark:
//! QEMU's blklogwrites filter logs the emulated device's writes on the host, and the writer
//! marks in band (`--in-band-marks`: a write of a mark block to the disk's last 4 KiB, kept
//! out of its own writes, waited for), `--end-mark TEXT` ends a killed run's part of the log,
//! and `crash-check --log-format qemu` reads it (`crate::log_writes`, module doc).
//!
//! Under a file system (`--board file`, the HIL power-cut-fs scenario) the log is of the file
//! system's device: `crash-check --pick-marks` and `--state-at` rebuild whole devices at the
//! writer's marks (`crate::fs_states`), which the scenario mounts, and `--image
//! --durable-up-to` checks the image file in each against the journal up to the mark.
//!
//! With `--unmaps` the disk is thin and a fourth of the rounds UNMAP a random range, journaled
//! (an *unmapped* record, with a generation of its own) before it is sent: from then on the
//! blocks may read zeroes, until a later write is made durable there; never an older
//! generation (an UNMAP brings no old data back). QEMU's log has the deallocations in order;
//! dm-log-writes' does not, so the dm power-cut scenario's writer sends none.
//! The submitted records are written but not synced before their data write: a process kill
//! keeps them (page cache); a power cut could lose them, so the check is only sound for kills.

use crate::backend::BoardArg;
use crate::disk::DiskArgs;
use crate::exit;
use crate::units::parse_duration;
use clap::Args;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::transport::version;
use scst_accel_handler::workload::stamp;
use scst_accel_handler::workload::stamp::Rng;
use std::collections::HashMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// `crash-writer` arguments.
#[derive(Args, Debug, Clone)]
pub struct CrashArgs {
    #[command(flatten)]
    pub(crate) disk: DiskArgs,
    /// What stands behind the engine: file or blockdev (needs --path), or a hardware board
    /// (nvme, qemu-nvme, sca1; needs --pci): the HIL suite's power-cut-vfio scenario.
    #[arg(long, value_enum, default_value_t = BoardArg::File)]
    pub(crate) board: BoardArg,
    /// PCI address of the function for a hardware board.
    #[arg(long)]
    pub(crate) pci: Option<String>,
    /// The journal of submitted and durable writes (appended; created when absent). Not with
    /// --end-mark, which writes nothing a journal records.
    #[arg(long, required_unless_present = "end_mark", conflicts_with = "end_mark")]
    pub journal: Option<PathBuf>,
    /// Seed of the access pattern and of the write mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop by itself after this long (a writer the test forgot must not run forever).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Mark the dm-log-writes target of this device-mapper name (as `dmsetup ls` shows it) at
    /// each acknowledgment that makes writes durable, for `crash-check --log-writes` to check
    /// each acknowledgment against what the device had made durable when it was given.
    #[arg(long, value_name = "DM_NAME", conflicts_with = "in_band_marks")]
    pub log_writes_mark: Option<String>,
    /// Mark in band instead, for a log no mark can be sent to (QEMU's blklogwrites, under a
    /// device the writer drives through VFIO): each mark is a write, waited for, of a block
    /// with the mark's text ([`crate::log_writes::IN_BAND_MAGIC`]) to the disk's last 4 KiB,
    /// which the writer then keeps out of its own writes.
    #[arg(long)]
    pub in_band_marks: bool,
    /// Write the in-band mark TEXT and stop (nothing else is written, the journal is not
    /// touched): the end of a run whose writer was killed, before the log's drive is closed
    /// (`crash-check --log-format qemu --log-end-mark TEXT`).
    #[arg(long, value_name = "TEXT", conflicts_with = "log_writes_mark")]
    pub end_mark: Option<String>,
    /// Serve the disk thin and mix UNMAPs of random ranges into the writes (a fourth of the
    /// rounds; journaled before they are sent): the store must deallocate (a file, an NVMe
    /// namespace with Dataset Management). Not with --log-writes-mark: dm-log-writes logs a
    /// discard unordered against the FUA writes around it.
    #[arg(long, conflicts_with = "log_writes_mark")]
    pub unmaps: bool,
}

impl CrashArgs {
    /// The disk's settings, for `main` to note which were given ([`DiskArgs::note_given`]).
    pub fn disk_mut(&mut self) -> &mut DiskArgs {
        &mut self.disk
    }
}

/// Bytes per write unit: writes start on a 4 KiB boundary, so O_DIRECT never needs a fallback,
/// and are 1-4 units long.
const UNIT_BYTES: u32 = 4096;
// An in-band mark fills one write unit.
const _: () = assert!(crate::log_writes::IN_BAND_UNIT == UNIT_BYTES as u64);
/// Longest wait for one command; a stuck handler makes the writer fail, not hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Printed on stdout when the write loop starts, so a test can time its kill from there.
pub const READY_LINE: &str = "crash-writer: writing";

/// The mark (`--log-writes-mark`) sent before the first write: its number is the first
/// generation of the run, so that the check leaves out durable records of earlier runs, whose
/// writes the log never saw.
pub const START_MARK: &str = "scst-accel-start-";
/// The mark sent at each acknowledgment that makes writes durable, before the journal records
/// it: its number is the newest generation acknowledged durable, so every durable record of a
/// generation up to it was acknowledged before the mark was sent.
pub const ACK_MARK: &str = "scst-accel-ack-";

/// Size of one journal record.
pub const RECORD_BYTES: usize = 32;
const RECORD_MAGIC: u32 = 0x5343_4A52; // "SCJR"

/// What a journal record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The write was about to be submitted: its data may be on the image.
    Submitted,
    /// The write was acknowledged durable: its data (or a later write's) must be on the image.
    Durable,
    /// An UNMAP of the blocks was about to be submitted (`--unmaps`): from its generation on,
    /// they may read zeroes (a durable write with a later generation ends that).
    Unmapped,
}

/// One journal record: blocks `lba..lba+blocks` written with `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Kind.
    pub kind: RecordKind,
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub blocks: u32,
    /// Generation stamped in every block of the write.
    pub generation: u32,
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to tell a record cut by the kill from a whole one.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4] = match self.kind {
            RecordKind::Submitted => 1,
            RecordKind::Durable => 2,
            RecordKind::Unmapped => 3,
        };
        b[8..16].copy_from_slice(&self.lba.to_le_bytes());
        b[16..20].copy_from_slice(&self.blocks.to_le_bytes());
        b[20..24].copy_from_slice(&self.generation.to_le_bytes());
        let sum = checksum(&b[..24]);
        b[24..32].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        if u32_at(0)? != RECORD_MAGIC || u64_at(24)? != checksum(b.get(..24)?) {
            return None;
        }
        let kind = match b[4] {
            1 => RecordKind::Submitted,
            2 => RecordKind::Durable,
            3 => RecordKind::Unmapped,
            _ => return None,
        };
        Some(Self {
            kind,
            lba: u64_at(8)?,
            blocks: u32_at(16)?,
            generation: u32_at(20)?,
        })
    }
}

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or appending failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A bad record before the tail: not a kill's cut record but a damaged journal.
    #[error("journal {path}: record {index} is damaged (not at the tail)")]
    Damaged {
        /// The journal.
        path: PathBuf,
        /// Index of the record.
        index: usize,
    },
}

/// Every whole record of the journal at `path` (none when it does not exist). Only the last
/// record may be cut (the kill can stop an append part way); it is dropped.
///
/// # Errors
/// [`JournalError`] if it cannot be read or a record before the tail is bad.
pub fn read_journal(path: &Path) -> Result<Vec<Record>, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let chunks: Vec<&[u8]> = bytes.chunks(RECORD_BYTES).collect();
    let mut records = Vec::with_capacity(chunks.len());
    for (index, chunk) in chunks.iter().enumerate() {
        match Record::decode(chunk) {
            Some(r) if chunk.len() == RECORD_BYTES => records.push(r),
            _ if index + 1 == chunks.len() => break,
            _ => {
                return Err(JournalError::Damaged {
                    path: path.into(),
                    index,
                })
            }
        }
    }
    Ok(records)
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blocks with a durable record, checked.
    pub durable_blocks: u64,
    /// Durable writes in the journal.
    pub durable_writes: u64,
    /// Writes submitted in the journal.
    pub submitted_writes: u64,
    /// UNMAPs submitted in the journal.
    pub unmaps: u64,
    /// Blocks that read zeroes where an UNMAP after their latest durable write allows it.
    pub unmapped_zero_blocks: u64,
    /// Blocks whose latest durable write (or a later one) is not there.
    pub lost: u64,
    /// Blocks with data never written there: wrong LBA, a generation never submitted for it,
    /// or a corrupt body (torn).
    pub stale_or_torn: u64,
    /// The first few problems, in words.
    pub first_errors: Vec<String>,
}

impl CheckReport {
    /// Nothing durable lost, nothing stale or torn.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.stale_or_torn == 0
    }
}

/// Check `image` (the disk's bytes, `block_size` blocks) against the journal `records`, as a
/// process kill left it: zeroes where the journal has an UNMAP after the block's latest durable
/// write pass (the UNMAP may have reached the medium).
pub fn check(image: &[u8], block_size: usize, records: &[Record]) -> CheckReport {
    check_replayed(image, block_size, records, None)
}

/// [`check`], for a state replayed from a log: with `discarded`, an UNMAP excuses zeroes only in
/// the blocks a replayed discard left zeroed.
fn check_replayed(
    image: &[u8],
    block_size: usize,
    records: &[Record],
    discarded: Option<&HashSet<u64>>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let mut durable: HashMap<u64, u32> = HashMap::new();
    // Per block, the latest UNMAP's generation.
    let mut unmapped: HashMap<u64, u32> = HashMap::new();
    // Generation -> (first LBA, blocks): generations are unique per write.
    let mut submitted: HashMap<u32, (u64, u32)> = HashMap::new();
    for r in records {
        match r.kind {
            RecordKind::Unmapped => {
                report.unmaps += 1;
                for lba in r.lba..r.lba.saturating_add(u64::from(r.blocks)) {
                    let g = unmapped.entry(lba).or_insert(0);
                    *g = (*g).max(r.generation);
                }
            }
            RecordKind::Submitted => {
                report.submitted_writes += 1;
                submitted.insert(r.generation, (r.lba, r.blocks));
            }
            RecordKind::Durable => {
                report.durable_writes += 1;
                for lba in r.lba..r.lba.saturating_add(u64::from(r.blocks)) {
                    let g = durable.entry(lba).or_insert(0);
                    *g = (*g).max(r.generation);
                }
            }
        }
    }
    let note = |report: &mut CheckReport, text: String| {
        if report.first_errors.len() < 10 {
            report.first_errors.push(text);
        }
    };
    for (lba, block) in image.chunks_exact(block_size).enumerate() {
        let lba = lba as u64;
        let want = durable.get(&lba).copied();
        if want.is_some() {
            report.durable_blocks += 1;
        }
        if block.iter().all(|&b| b == 0) {
            // An UNMAP after the block's latest durable write may have taken it (it is not
            // durable itself, so the write may be there as well: the case below).
            let replayed_discard = discarded.is_none_or(|d| d.contains(&lba));
            if replayed_discard && want.is_some_and(|g| unmapped.get(&lba).is_some_and(|&u| u > g)) {
                report.unmapped_zero_blocks += 1;
                continue;
            }
            if let Some(g) = want {
                report.lost += 1;
                note(
                    &mut report,
                    format!("LBA {lba}: zeroes, but generation {g} was durable"),
                );
            }
            continue;
        }
        // The writer's own in-band mark (`--in-band-marks`), in the unit it keeps for them.
        let in_marks_unit = lba * block_size as u64 >= crate::log_writes::in_band_unit(image.len() as u64);
        if in_marks_unit && want.is_none() && crate::log_writes::in_band_mark(block).is_some() {
            continue;
        }
        let found = u32::from_le_bytes(block[8..12].try_into().unwrap_or([0; 4]));
        let traced = submitted
            .get(&found)
            .is_some_and(|&(first, n)| (first..first + u64::from(n)).contains(&lba));
        if let Err(m) = stamp::verify(block, lba, found) {
            report.stale_or_torn += 1;
            note(
                &mut report,
                format!("LBA {lba}: not an intact stamp of itself: {m:?}"),
            );
        } else if !traced {
            report.stale_or_torn += 1;
            note(
                &mut report,
                format!("LBA {lba}: generation {found} was never submitted for it"),
            );
        } else if let Some(g) = want.filter(|&g| found < g) {
            report.lost += 1;
            note(
                &mut report,
                format!("LBA {lba}: generation {found}, but {g} was durable"),
            );
        }
    }
    report
}

/// `crash-check` arguments: the offline check of what a writer left, for a shell (the HIL
/// suite's power-cut scenario runs it in the guest).
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The writer's journal (not with --pick-marks or --state-at, which read only the log).
    #[arg(long, required_unless_present_any = ["pick_marks", "state_at"])]
    pub journal: Option<PathBuf>,
    /// The disk's block size (the writer's --block-size).
    #[arg(long, default_value_t = 512)]
    pub block_size: usize,
    /// The image or block device the writer wrote, checked as it is (what a process kill left).
    #[arg(long, conflicts_with = "log_writes", required_unless_present = "log_writes")]
    pub image: Option<PathBuf>,
    /// With --image: hold only the durable records up to this generation to it (the image
    /// is a power-cut state at the writer's acknowledgment mark of this generation:
    /// tests/hil/scenarios/power-cut-fs.sh).
    #[arg(long, requires = "image")]
    pub durable_up_to: Option<u32>,
    /// With --log-writes of a file system's device (`crate::fs_states`): print at most this
    /// many of the log's acknowledgment and kill marks to rebuild states at (the last ones and
    /// seeded random ones, --seed), one a line: log entry, the generation the journal's
    /// durable records must hold up to there (`all` at the kill mark), the mark's text.
    #[arg(long, requires = "log_writes", conflicts_with_all = ["state_at", "journal"])]
    pub pick_marks: Option<usize>,
    /// With --log-writes of a file system's device: write the state a power cut just before
    /// the mark at this log entry leaves (the writes durable before it) to --state-out, the
    /// device's --size, sparse; prints JSON.
    #[arg(long, requires_all = ["log_writes", "state_out"], conflicts_with = "journal")]
    pub state_at: Option<usize>,
    /// Where --state-at writes the device's image (replaced).
    #[arg(long, requires = "state_at")]
    pub state_out: Option<PathBuf>,
    /// The log device of a dm-log-writes target stacked on the writer's device, read after
    /// `dmsetup remove`: the states a power cut at the log's end may leave are checked instead
    /// (the durable writes alone, every write, and --subsets random choices in between).
    #[arg(long, requires = "size")]
    pub log_writes: Option<PathBuf>,
    /// Who wrote the --log-writes log: Linux's dm-log-writes target, or QEMU's blklogwrites
    /// driver (marks in band, needs --log-end-mark).
    #[arg(long, value_enum, default_value_t = LogFormatArg::Dm, requires = "log_writes")]
    pub log_format: LogFormatArg,
    /// With --log-format qemu: the in-band mark that ends the run's part of the log (the
    /// writer's --end-mark).
    #[arg(long, value_name = "TEXT", required_if_eq("log_format", "qemu"))]
    pub log_end_mark: Option<String>,
    /// The disk's size (the writer's --size); with --log-writes.
    #[arg(long, value_parser = crate::units::parse_size)]
    pub size: Option<u64>,
    /// With --log-writes: how many states with a random half of the writes no flush covered.
    #[arg(long, default_value_t = 4)]
    pub subsets: u32,
    /// Seed of those choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `crash-check --log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormatArg {
    /// Linux's dm-log-writes target.
    Dm,
    /// QEMU's blklogwrites block driver.
    Qemu,
}

/// One state checked by `crash-check`, as its JSON says.
fn state_json(name: &str, replayed: Option<u64>, report: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "state": name,
        "replayed_writes": replayed,
        "durable_blocks": report.durable_blocks,
        "unmapped_zero_blocks": report.unmapped_zero_blocks,
        "lost": report.lost,
        "stale_or_torn": report.stale_or_torn,
        "first_errors": report.first_errors,
    })
}

/// The generation of `block` as the writer stamped it for `lba`; `None` for anything else
/// (zeroes, damage, another LBA's stamp).
fn stamp_generation(block: &[u8], lba: u64) -> Option<u32> {
    stamp::check_any(block, lba).ok().flatten()
}

/// Whether a written block replaces the image's in a power-cut state: the writer has one
/// command at a time and numbers each write after the last, so of two stamps the newer write
/// has the higher generation (the order a dm-log-writes log cannot give between a FUA write
/// and a plain one, `log_writes` module doc). A block that is not the writer's stamp always
/// replaces, so that [`check`] sees it (and [`OrderCheck`] counts it whatever comes after).
fn place_newest(p: &crate::log_writes::Placement<'_>) -> bool {
    let lba = p.block as u64;
    match (stamp_generation(p.new, lba), stamp_generation(p.old, lba)) {
        (Some(new), Some(old)) => new > old,
        _ => true,
    }
}

/// What no power-cut state can show, found in the log itself while every write of it is
/// replayed: a block written with data that is not the writer's stamp of it, and a write that
/// reached the device out of the writer's order. Among the FUA writes, and among the plain
/// writes, the log's order is the order of completion, and the writer's commands complete in
/// its order: so, per block and per kind, the generations must not fall (a fall is a store that
/// acknowledged a write before it completed, or sent an old buffer again).
#[derive(Default)]
struct OrderCheck {
    /// Per block: the highest generation seen by plain writes and by FUA ones.
    last: HashMap<usize, [u32; 2]>,
    anomalies: u64,
    /// The first few, in words.
    first: Vec<String>,
}

impl OrderCheck {
    fn observe(&mut self, p: &crate::log_writes::Placement<'_>) {
        if p.discard {
            return; // zeroes, no stamp: an UNMAP the journal has
        }
        let kind = if p.fua { "FUA" } else { "plain" };
        let anomaly = match stamp_generation(p.new, p.block as u64) {
            None => Some(format!(
                "LBA {}: log entry {} ({kind}) wrote data that is not the writer's stamp of it",
                p.block, p.entry
            )),
            Some(g) => {
                let seen = &mut self.last.entry(p.block).or_default()[usize::from(p.fua)];
                let fell = (g < *seen).then(|| {
                    format!(
                        "LBA {}: generation {g} reached the device after generation {} by {kind} \
                         writes (log entry {}), which complete in the writer's order",
                        p.block, *seen, p.entry
                    )
                });
                *seen = (*seen).max(g);
                fell
            }
        };
        if let Some(text) = anomaly {
            self.anomalies += 1;
            if self.first.len() < 10 {
                self.first.push(text);
            }
        }
    }
}

/// Each acknowledgment against what the device had made durable when the writer gave it: for
/// every durable record, at the first [`ACK_MARK`] whose generation covers it, each of its
/// blocks must hold, among the writes a cut just before that mark keeps
/// ([`crate::log_writes::Log::durable_from`]), its generation or a later one. The marks of a
/// correct store come after the FUA write or flush that made the acknowledgment true (the
/// target logs those as they complete, a mark as it is sent); a store that acknowledged first
/// leaves one after the mark, which no state at the log's end can show.
#[derive(Default)]
struct AckCheck {
    /// Per block: (entry, generation) of every stamped write, from the every-write replay.
    written: HashMap<usize, Vec<(usize, u32)>>,
}

/// What [`AckCheck`] found.
#[derive(Default)]
struct AckReport {
    /// The writer's acknowledgment marks in the log.
    marks: u64,
    /// Durable records of this run checked at a mark.
    checked: u64,
    /// Durable records of this run with no mark after them (a lost mark).
    unmarked: u64,
    /// Durable records acknowledged before the device had made them durable.
    late: u64,
    /// Whether the writer marked this log at all ([`START_MARK`]).
    marked: bool,
    /// The first few late records, in words.
    first: Vec<String>,
}

impl AckCheck {
    fn observe(&mut self, p: &crate::log_writes::Placement<'_>) {
        if let Some(g) = stamp_generation(p.new, p.block as u64) {
            self.written.entry(p.block).or_default().push((p.entry, g));
        }
    }

    fn check(&self, log: &crate::log_writes::Log, records: &[Record]) -> AckReport {
        let durable_from = log.durable_from();
        let mut durable: Vec<&Record> = records.iter().filter(|r| r.kind == RecordKind::Durable).collect();
        durable.sort_by_key(|r| r.generation);
        let mut report = AckReport::default();
        // Records up to `done` are checked (or of an earlier run); `next` is the first not.
        let mut done = 0u32;
        let mut next = 0;
        let number = |text: &str, prefix: &str| text.strip_prefix(prefix)?.parse::<u32>().ok();
        for (at, entry) in log.entries.iter().enumerate() {
            let Some(text) = &entry.mark else { continue };
            if let Some(first) = number(text, START_MARK) {
                report.marked = true;
                done = done.max(first.saturating_sub(1));
            }
            let Some(acked) = number(text, ACK_MARK) else {
                continue;
            };
            report.marks += 1;
            while next < durable.len() && durable[next].generation <= acked {
                let r = durable[next];
                next += 1;
                if r.generation <= done {
                    continue;
                }
                report.checked += 1;
                if let Some(text) = self.late_block(r, at, &durable_from) {
                    report.late += 1;
                    if report.first.len() < 10 {
                        report.first.push(text);
                    }
                }
            }
            done = done.max(acked);
        }
        report.unmarked = durable[next..]
            .iter()
            .filter(|r| report.marked && r.generation > done)
            .count() as u64;
        report
    }

    /// The first block of `r` that no write durable before the mark at entry `mark` holds at
    /// `r`'s generation or later, in words.
    fn late_block(&self, r: &Record, mark: usize, durable_from: &[Option<usize>]) -> Option<String> {
        (r.lba..r.lba.saturating_add(u64::from(r.blocks))).find_map(|lba| {
            let writes = usize::try_from(lba)
                .ok()
                .and_then(|b| self.written.get(&b))
                .map_or(&[][..], Vec::as_slice);
            let newest = writes
                .iter()
                .filter(|&&(entry, _)| durable_from[entry].is_some_and(|d| d < mark))
                .map(|&(_, g)| g)
                .max();
            (newest < Some(r.generation)).then(|| {
                format!(
                    "LBA {lba}: generation {} was acknowledged durable (mark at log entry {mark}) \
                     when the device had made durable {}",
                    r.generation,
                    newest.map_or("nothing there".to_owned(), |g| format!("only generation {g}"))
                )
            })
        })
    }
}

/// What `crash-check --log-writes` found: its JSON report, and whether every state passed.
/// The states are built in blocks of `block_size` (the disk's), the newest stamp of each block
/// kept (`place_newest`); the log's own order is checked while the every-write state is built
/// (`OrderCheck`), and then each acknowledgment at the writer's mark of it (`AckCheck`; a log
/// with no [`START_MARK`] was not marked and passes that part unchecked, which the JSON's
/// `acknowledgments.marked` says).
///
/// # Errors
/// [`crate::log_writes::LogError`] reading the log.
pub fn check_power_cut(
    log: &crate::log_writes::Log,
    image_bytes: usize,
    block_size: usize,
    records: &[Record],
    subsets: u32,
    seed: u64,
) -> Result<(serde_json::Value, bool), crate::log_writes::LogError> {
    let durable = log.durable();
    let writes = log.entries.iter().filter(|e| e.changes_blocks()).count();
    let durable_writes = durable.iter().filter(|&&d| d).count();
    let mut rng = Rng::new(seed);
    let mut states = Vec::new();
    let mut passed = true;
    let mut image = vec![0u8; image_bytes];
    let mut state = |label: String,
                     keep: &mut dyn FnMut(bool) -> bool,
                     place: &mut dyn FnMut(&crate::log_writes::Placement<'_>) -> bool| {
        image.fill(0);
        // The blocks a discard replayed in this state left zeroed: only there may zeroes be
        // excused by an UNMAP (one the journal has but this state did not replay is no excuse).
        let mut discarded = HashSet::new();
        let replayed = log.replay(
            &mut image,
            block_size,
            |_, durable| keep(durable),
            |p| {
                let placed = place(p);
                if placed && p.discard {
                    discarded.insert(p.block as u64);
                } else if placed {
                    discarded.remove(&(p.block as u64));
                }
                placed
            },
        )?;
        let report = check_replayed(&image, block_size, records, Some(&discarded));
        passed &= report.is_clean();
        states.push(state_json(&label, Some(replayed), &report));
        Ok::<(), crate::log_writes::LogError>(())
    };
    let mut order = OrderCheck::default();
    let mut acks = AckCheck::default();
    state(
        "durable writes only".into(),
        &mut |durable| durable,
        &mut place_newest,
    )?;
    state("every write".into(), &mut |_| true, &mut |p| {
        order.observe(p);
        acks.observe(p);
        place_newest(p)
    })?;
    for i in 1..=subsets {
        state(
            format!("durable writes and a random half of the others ({i})"),
            &mut |durable| durable || rng.below(2) == 0,
            &mut place_newest,
        )?;
    }
    passed &= order.anomalies == 0;
    let acks = acks.check(log, records);
    passed &= acks.late == 0 && acks.unmarked == 0;
    let count = |f: fn(&crate::log_writes::Entry) -> bool| log.entries.iter().filter(|e| f(e)).count();
    let journal = journal_counts(records);
    let json = serde_json::json!({
        "mode": "power-cut",
        "journal": journal,
        "log": {
            "entries": log.entries.len(),
            "block_size": log.block_size,
            "writes": writes,
            "flushes": count(crate::log_writes::Entry::is_flush),
            "fua_writes": count(|e| e.is_fua() && e.changes_blocks()),
            "discards": count(crate::log_writes::Entry::is_discard),
            "durable_writes": durable_writes,
            "writes_no_flush_covered": writes - durable_writes,
            "order_anomalies": order.anomalies,
            "order_errors": order.first,
        },
        "acknowledgments": {
            "marked": acks.marked,
            "marks": acks.marks,
            "checked_durable_writes": acks.checked,
            "unmarked_durable_writes": acks.unmarked,
            "late": acks.late,
            "late_errors": acks.first,
        },
        "states": states,
        "passed": passed,
    });
    Ok((json, passed))
}

fn journal_counts(records: &[Record]) -> serde_json::Value {
    let n = |kind| records.iter().filter(|r| r.kind == kind).count();
    serde_json::json!({
        "submitted_writes": n(RecordKind::Submitted),
        "durable_writes": n(RecordKind::Durable),
        "unmaps": n(RecordKind::Unmapped),
    })
}

/// Run `crash-check`; returns the exit code (0 every state passed, [`exit::DATA`] one did not,
/// [`exit::IOERR`] the journal, image or log could not be read, [`exit::USAGE`] bad sizes).
pub fn run_check(args: CheckArgs) -> u8 {
    if !matches!(args.block_size, 512 | 4096) {
        eprintln!("scst-accel crash-check: --block-size must be 512 or 4096");
        return exit::USAGE;
    }
    if args.pick_marks.is_some() || args.state_at.is_some() {
        return run_fs_states(&args);
    }
    let journal = args.journal.as_deref().unwrap_or(Path::new(""));
    let mut records = match read_journal(journal) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scst-accel crash-check: {e}");
            return exit::IOERR;
        }
    };
    if let Some(g) = args.durable_up_to {
        records.retain(|r| r.kind != RecordKind::Durable || r.generation <= g);
    }
    let outcome = if let Some(log) = &args.log_writes {
        let size = args.size.unwrap_or(0);
        let Some(bytes) = usize::try_from(size)
            .ok()
            .filter(|&b| b > 0 && b % args.block_size == 0)
        else {
            eprintln!(
                "scst-accel crash-check: --size {size} is not a whole number of {}-byte blocks",
                args.block_size
            );
            return exit::USAGE;
        };
        let format = match (args.log_format, &args.log_end_mark) {
            (LogFormatArg::Qemu, Some(end)) => crate::log_writes::LogFormat::Qemu {
                end: end.clone(),
                mark_at: crate::log_writes::in_band_unit(size),
            },
            (LogFormatArg::Qemu, None) => {
                eprintln!("scst-accel crash-check: --log-format qemu needs --log-end-mark");
                return exit::USAGE;
            }
            (LogFormatArg::Dm, _) => crate::log_writes::LogFormat::DmLogWrites,
        };
        crate::log_writes::Log::open_as(log, &format)
            .and_then(|log| check_power_cut(&log, bytes, args.block_size, &records, args.subsets, args.seed))
            .map_err(|e| e.to_string())
    } else {
        let path = args.image.as_deref().unwrap_or(Path::new(""));
        std::fs::read(path)
            .map(|image| {
                let report = check(&image, args.block_size, &records);
                let passed = report.is_clean();
                let json = serde_json::json!({
                    "mode": "image",
                    "journal": journal_counts(&records),
                    "states": [state_json("as found", None, &report)],
                    "passed": passed,
                });
                (json, passed)
            })
            .map_err(|e| format!("reading {}: {e}", path.display()))
    };
    match outcome {
        Ok((json, passed)) => {
            println!("{json}");
            if passed {
                0
            } else {
                exit::DATA
            }
        }
        Err(e) => {
            eprintln!("scst-accel crash-check: {e}");
            exit::IOERR
        }
    }
}

/// `crash-check --pick-marks` and `--state-at` (`crate::fs_states`): the marks to rebuild
/// states at, or one state's image; the exit code as [`run_check`]'s.
fn run_fs_states(args: &CheckArgs) -> u8 {
    let fail = |e: &dyn std::fmt::Display, code: u8| {
        eprintln!("scst-accel crash-check: {e}");
        code
    };
    let Some(log_path) = &args.log_writes else {
        return fail(&"--pick-marks and --state-at need --log-writes", exit::USAGE);
    };
    let log = match crate::log_writes::Log::open(log_path) {
        Ok(log) => log,
        Err(e) => return fail(&e, exit::IOERR),
    };
    if let Some(count) = args.pick_marks {
        return match crate::fs_states::pick_marks(&log, count, args.seed) {
            Ok(marks) => {
                for m in marks {
                    let up_to = m
                        .durable_up_to
                        .map_or_else(|| "all".to_owned(), |g| g.to_string());
                    println!("{} {up_to} {}", m.entry, m.text);
                }
                0
            }
            Err(e) => fail(&e, exit::DATA),
        };
    }
    let (Some(entry), Some(out)) = (args.state_at, &args.state_out) else {
        return fail(&"--state-at needs --state-out", exit::USAGE);
    };
    let size = args.size.unwrap_or(0);
    let Some(bytes) = usize::try_from(size)
        .ok()
        .filter(|&b| b > 0 && b % args.block_size == 0)
    else {
        return fail(
            &format!(
                "--size {size} is not a whole number of {}-byte blocks (give the log-writes \
                 device's size)",
                args.block_size
            ),
            exit::USAGE,
        );
    };
    let mut image = vec![0u8; bytes];
    let built = crate::fs_states::rebuild(&log, entry, &mut image, args.block_size)
        .and_then(|replayed| crate::fs_states::write_sparse(&image, out).map(|()| replayed));
    match built {
        Ok(replayed) => {
            let json = serde_json::json!({
                "mode": "state",
                "entry": entry,
                "mark": log.entries[entry].mark,
                "replayed_writes": replayed,
                "log_entries": log.entries.len(),
            });
            println!("{json}");
            0
        }
        Err(e @ crate::fs_states::StateError::NotAMark { .. }) => fail(&e, exit::USAGE),
        Err(e) => fail(&e, exit::IOERR),
    }
}

/// Why the writer stopped before its time.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A command was refused at submission.
    #[error("submitting a command: {0}")]
    Submit(#[from] scst_accel_handler::loopback::SubmitError),
    /// A command was not answered in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// The dm-log-writes target could not be marked (`--log-writes-mark`).
    #[error(
        "marking the dm-log-writes target {name}: {source} (is it a log-writes target, and are we root?)"
    )]
    Mark {
        /// The device-mapper name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An in-band mark's text does not fit its block (or holds a zero byte).
    #[error(
        "an in-band mark's text must be at most {} bytes with no zero byte",
        crate::log_writes::IN_BAND_MAX_TEXT
    )]
    MarkText,
    /// A command ended with a status other than GOOD (the run stops: the journal stays true).
    #[error("command {what} ended with status {status:#x}")]
    Status {
        /// The command.
        what: &'static str,
        /// SAM status.
        status: u8,
    },
}

/// Run the writer; returns the process exit code.
pub fn run(args: CrashArgs) -> u8 {
    let blocks = match args.disk.validate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel crash-writer: {e}");
            return exit::USAGE;
        }
    };
    match serve_and_write(&args, blocks) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "scst-accel crash-writer: {}",
                crate::backend::error_chain(e.as_ref())
            );
            e.downcast_ref::<crate::backend::BackendError>()
                .map_or(exit::SOFTWARE, |b| b.exit_code)
        }
    }
}

fn serve_and_write(args: &CrashArgs, blocks: u64) -> Result<(), Box<dyn std::error::Error>> {
    let kernel = LoopbackKernel::new(KernelConfig {
        version: version::resolve(&args.disk.scst_version),
        ..KernelConfig::default()
    });
    let backend = crate::backend::build(args.board, &args.disk, blocks, args.pci.as_deref(), &[])?;
    let info = backend.store.info();
    // A write unit of 4 KiB: every write starts on a 4 KiB boundary, so O_DIRECT never needs
    // a fallback; blocks of 512 B to 4 KiB.
    if !(512..=UNIT_BYTES).contains(&info.block_size) || !info.block_size.is_power_of_two() {
        return Err(format!(
            "crash-writer needs blocks of 512 B to 4 KiB, the store has {}",
            info.block_size
        )
        .into());
    }
    if args.unmaps && !info.supports_unmap {
        return Err("--unmaps needs a store that deallocates (this one cannot)".into());
    }
    let _frontend = crate::demo::start_loopback_disk(&kernel, &args.disk, &backend, false, args.unmaps)?;
    let mut sessions = crate::demo::attach(&kernel, &args.disk.name, 1)?;
    let session = sessions.pop().ok_or("no session")?;
    let unit_blocks = u64::from(UNIT_BYTES / info.block_size);
    let mut units = info.num_blocks / unit_blocks;
    // In-band marks go to the last unit, where the reader looks for them, and which the writes
    // then leave alone.
    let bs = u64::from(info.block_size);
    let in_band = (args.in_band_marks || args.end_mark.is_some())
        .then(|| crate::log_writes::in_band_unit(info.num_blocks * bs) / bs);
    if in_band.is_some() {
        units = units.saturating_sub(1);
    }
    if units == 0 {
        return Err("the disk is smaller than one 4 KiB unit (two with in-band marks)".into());
    }
    if let (Some(text), Some(lba)) = (&args.end_mark, in_band) {
        let mut session = session;
        write_in_band(&mut session, 1, lba, unit_blocks, info.block_size, text)?;
        println!("crash-writer: marked {text:?} in band at LBA {lba}");
        return Ok(());
    }
    // Without --end-mark clap requires a journal.
    let journal = args.journal.as_deref().ok_or("crash-writer needs --journal")?;
    if let Some(lba) = in_band {
        // The marks overwrite the last unit: a journal that has data there is of runs without.
        let records = read_journal(journal)?;
        if let Some(r) = records
            .iter()
            .find(|r| r.lba.saturating_add(u64::from(r.blocks)) > lba)
        {
            return Err(format!(
                "--in-band-marks keeps the disk's last 4 KiB (LBA {lba} on) for its marks, but the \
                 journal {} has a write there (generation {}, LBA {}): give a new journal and disk",
                journal.display(),
                r.generation,
                r.lba
            )
            .into());
        }
    }
    let marker = match (&args.log_writes_mark, in_band) {
        (Some(name), _) => Some(Marker::Target(crate::dm_message::Messenger::open(name).map_err(
            |source| WriterError::Mark {
                name: name.clone(),
                source,
            },
        )?)),
        (None, Some(lba)) => Some(Marker::InBand { lba }),
        (None, None) => None,
    };
    let mut writer = Writer::open(args, journal, session, marker, units, info.block_size)?;
    println!("{READY_LINE}");
    std::io::stdout().flush()?;
    let until = Instant::now() + args.duration;
    while Instant::now() < until {
        writer.round()?;
    }
    println!(
        "crash-writer: {} writes, {} durable, {} unmaps, stopped after {:?}",
        writer.writes, writer.durable, writer.unmaps, args.duration
    );
    Ok(())
}

/// Where the writer's marks go.
enum Marker {
    /// `--log-writes-mark`: the dm-log-writes target's `mark` message.
    Target(crate::dm_message::Messenger),
    /// `--in-band-marks`: a write of the mark's block at this LBA (the disk's last unit).
    InBand { lba: u64 },
}

/// WRITE(16) of `blocks` at `lba`, FUA or not.
fn write16(lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x8a;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// One command with tag `tag`, waited for: GOOD or an error.
fn send(
    session: &mut Session,
    tag: u64,
    what: &'static str,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
) -> Result<(), WriterError> {
    session.submit(ScsiRequest {
        tag,
        cdb,
        data_out,
        timeout_secs: 30,
        ..ScsiRequest::default()
    })?;
    let done = session
        .completions()
        .recv_timeout(COMMAND_TIMEOUT)
        .map_err(|_| WriterError::Timeout(COMMAND_TIMEOUT))?;
    if done.status != 0 {
        return Err(WriterError::Status {
            what,
            status: done.status,
        });
    }
    Ok(())
}

/// Write the in-band mark `text` (`crate::log_writes::in_band_block`) over the unit at `lba`,
/// and wait for it: a plain write, logged by QEMU when it completes, so after everything the
/// writer was acknowledged before it.
fn write_in_band(
    session: &mut Session,
    tag: u64,
    lba: u64,
    unit_blocks: u64,
    block_size: u32,
    text: &str,
) -> Result<(), WriterError> {
    let len = (unit_blocks * u64::from(block_size)) as usize;
    let block = crate::log_writes::in_band_block(text, len).ok_or(WriterError::MarkText)?;
    send(
        session,
        tag,
        "WRITE(16) in-band mark",
        write16(lba, unit_blocks as u32, false),
        block,
    )
}

struct Writer {
    session: Session,
    /// Where marks go (none: the log is not marked).
    marker: Option<Marker>,
    journal: File,
    journal_path: PathBuf,
    rng: Rng,
    units: u64,
    block_size: usize,
    unit_blocks: u64,
    next_generation: u32,
    tag: u64,
    writes: u64,
    durable: u64,
    /// `--unmaps`: a fourth of the rounds unmap.
    unmap_rounds: bool,
    unmaps: u64,
}

impl Writer {
    fn open(
        args: &CrashArgs,
        journal_path: &Path,
        session: Session,
        marker: Option<Marker>,
        units: u64,
        block_size: u32,
    ) -> Result<Self, WriterError> {
        let io = |source| JournalError::Io {
            path: journal_path.to_path_buf(),
            source,
        };
        // Continue after every generation any earlier run used, so each stays unique.
        let last = read_journal(journal_path)?
            .iter()
            .map(|r| r.generation)
            .max()
            .unwrap_or(stamp::GEN_ZERO);
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(journal_path)
            .map_err(io)?;
        // A record cut by the last kill would misalign every record appended after it (and make
        // it a damaged record in the middle): drop it, as read_journal did.
        let len = journal.metadata().map_err(io)?.len();
        let whole = len - len % RECORD_BYTES as u64;
        if whole != len {
            journal.set_len(whole).map_err(io)?;
        }
        let mut writer = Self {
            session,
            marker,
            journal,
            journal_path: journal_path.to_path_buf(),
            rng: Rng::new(args.seed ^ u64::from(last)),
            units,
            block_size: block_size as usize,
            unit_blocks: u64::from(UNIT_BYTES / block_size),
            next_generation: last + 1,
            tag: 0,
            writes: 0,
            durable: 0,
            unmap_rounds: args.unmaps,
            unmaps: 0,
        };
        writer.mark(START_MARK, writer.next_generation)?;
        Ok(writer)
    }

    /// Mark the log (when the writer marks one) with `prefix` and `generation`: as soon after
    /// an acknowledgment as the writer can, so that a store that acknowledged before the device
    /// completed leaves its write or flush logged after the mark.
    fn mark(&mut self, prefix: &str, generation: u32) -> Result<(), WriterError> {
        match &self.marker {
            None => Ok(()),
            Some(Marker::Target(messenger)) => {
                messenger
                    .send(&format!("mark {prefix}{generation}"))
                    .map_err(|source| WriterError::Mark {
                        name: messenger.name().to_owned(),
                        source,
                    })
            }
            Some(Marker::InBand { lba }) => {
                let lba = *lba;
                self.tag += 1;
                let text = format!("{prefix}{generation}");
                let block_size = self.block_size as u32;
                write_in_band(
                    &mut self.session,
                    self.tag,
                    lba,
                    self.unit_blocks,
                    block_size,
                    &text,
                )
            }
        }
    }

    fn append(&mut self, records: &[Record], sync: bool) -> Result<(), JournalError> {
        let bytes: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
        let result =
            self.journal
                .write_all(&bytes)
                .and_then(|()| if sync { self.journal.sync_data() } else { Ok(()) });
        result.map_err(|source| JournalError::Io {
            path: self.journal_path.clone(),
            source,
        })
    }

    /// One command, waited for: GOOD or an error.
    fn command(&mut self, what: &'static str, cdb: Vec<u8>, data_out: Vec<u8>) -> Result<(), WriterError> {
        self.tag += 1;
        send(&mut self.session, self.tag, what, cdb, data_out)
    }

    /// A random range of 1-4 units: first block, blocks.
    fn range(&mut self) -> (u64, u32) {
        let unit = self.rng.below(self.units);
        let max_units = (self.units - unit).min(4);
        let blocks = ((1 + self.rng.below(max_units)) * self.unit_blocks) as u32;
        (unit * self.unit_blocks, blocks)
    }

    /// UNMAP one random range (journaled first: from here on its blocks may read zeroes).
    fn unmap(&mut self) -> Result<(), WriterError> {
        let (lba, blocks) = self.range();
        let generation = self.next_generation;
        self.next_generation += 1;
        let record = Record {
            kind: RecordKind::Unmapped,
            lba,
            blocks,
            generation,
        };
        self.append(&[record], false)?;
        // SBC-4 §5.32: an 8-byte header and one 16-byte block descriptor.
        let mut list = vec![0u8; 24];
        list[0..2].copy_from_slice(&22u16.to_be_bytes()); // UNMAP DATA LENGTH
        list[2..4].copy_from_slice(&16u16.to_be_bytes()); // BLOCK DESCRIPTOR DATA LENGTH
        list[8..16].copy_from_slice(&lba.to_be_bytes());
        list[16..20].copy_from_slice(&blocks.to_be_bytes());
        let mut cdb = vec![0u8; 10];
        cdb[0] = 0x42;
        cdb[7..9].copy_from_slice(&24u16.to_be_bytes());
        self.command("UNMAP", cdb, list)?;
        self.unmaps += 1;
        Ok(())
    }

    /// Submit one write (journaled as submitted first); returns its record.
    fn write(&mut self, fua: bool) -> Result<Record, WriterError> {
        let (lba, blocks) = self.range();
        let generation = self.next_generation;
        self.next_generation += 1;
        let record = Record {
            kind: RecordKind::Submitted,
            lba,
            blocks,
            generation,
        };
        // Before the data can reach the image: whatever is found there must be traceable.
        self.append(&[record], false)?;
        let mut data = vec![0u8; blocks as usize * self.block_size];
        for (i, block) in data.chunks_exact_mut(self.block_size).enumerate() {
            stamp::stamp(block, lba + i as u64, generation);
        }
        let cdb = write16(lba, blocks, fua);
        self.command(if fua { "WRITE(16) FUA" } else { "WRITE(16)" }, cdb, data)?;
        self.writes += 1;
        Ok(Record {
            kind: RecordKind::Durable,
            ..record
        })
    }

    /// One round of the mix.
    fn round(&mut self) -> Result<(), WriterError> {
        match self.rng.below(if self.unmap_rounds { 4 } else { 3 }) {
            0 => {
                let durable = self.write(true)?;
                // Only now, after GOOD, may the journal claim it (the mark first: it is what
                // pins the acknowledgment's moment in the log).
                self.mark(ACK_MARK, durable.generation)?;
                self.append(&[durable], true)?;
                self.durable += 1;
            }
            1 => {
                let n = 1 + self.rng.below(4);
                let mut written = Vec::new();
                for _ in 0..n {
                    written.push(self.write(false)?);
                }
                // SYNCHRONIZE CACHE(10), whole disk: the writes above completed before it was
                // submitted, so its GOOD makes every one of them durable.
                self.command(
                    "SYNCHRONIZE CACHE(10)",
                    vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    Vec::new(),
                )?;
                let newest = written.iter().map(|r| r.generation).max().unwrap_or_default();
                self.mark(ACK_MARK, newest)?;
                self.append(&written, true)?;
                self.durable += written.len() as u64;
            }
            3 => self.unmap()?,
            _ => {
                // Never flushed by this round (a later flush covers it, but it is not journaled
                // durable: the check then only allows, never requires, its data).
                self.write(false)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_writes::tests::LogBuilder;
    use crate::log_writes::tests::FUA_FLAG;
    use crate::log_writes::Log;
    use crate::log_writes::END_MARK;

    /// A 512-byte block as the writer stamps it.
    fn stamped(lba: u64, generation: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        stamp::stamp(&mut b, lba, generation);
        b
    }

    fn rec(kind: RecordKind, lba: u64, blocks: u32, generation: u32) -> Record {
        Record {
            kind,
            lba,
            blocks,
            generation,
        }
    }

    /// `check_power_cut` of `builder`'s log, ended with the removal's mark, over an image of
    /// `blocks` 512-byte blocks, with `subsets` random states (seed 7).
    fn power_cut(
        builder: LogBuilder,
        blocks: usize,
        records: &[Record],
        subsets: u32,
    ) -> (serde_json::Value, bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(builder.mark(END_MARK).finish(dir.path())).expect("log");
        check_power_cut(&log, blocks * 512, 512, records, subsets, 7).expect("check")
    }

    #[test]
    fn records_round_trip_and_a_cut_tail_is_dropped() {
        let dir = std::env::temp_dir().join(format!("crash-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        let a = rec(RecordKind::Submitted, 8, 16, 3);
        let b = rec(RecordKind::Durable, 8, 16, 3);
        let mut bytes = [a.encode(), b.encode()].concat();
        bytes.extend_from_slice(&a.encode()[..7]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_journal(&path).unwrap(), vec![a, b]);
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_journal(&path),
            Err(JournalError::Damaged { index: 0, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The power-cut check over a dm-log-writes log: a write the journal says was made durable
    /// passes when a flush after it (or FUA) is in the log, and is lost when the log shows no
    /// flush after it (a SYNCHRONIZE CACHE acknowledged without a flush reaching the device),
    /// although every write's data is in the log and a process kill would have found it.
    #[test]
    fn a_durable_write_no_flush_covered_is_lost_to_a_power_cut() {
        let records = [
            rec(RecordKind::Submitted, 0, 1, 1),
            rec(RecordKind::Submitted, 1, 1, 2),
            rec(RecordKind::Durable, 0, 1, 1),
            rec(RecordKind::Durable, 1, 1, 2),
            rec(RecordKind::Submitted, 2, 1, 3),
        ];
        let kept = LogBuilder::new(512)
            .write(0, 0, &stamped(0, 1))
            .flush()
            .write(1, FUA_FLAG, &stamped(1, 2))
            .write(2, 0, &stamped(2, 3));
        let (json, passed) = power_cut(kept, 4, &records, 3);
        assert!(passed, "{json}");
        assert_eq!(json["states"].as_array().map(Vec::len), Some(5), "{json}");
        assert_eq!(json["log"]["flushes"], 1);
        assert_eq!(json["log"]["fua_writes"], 1);
        assert_eq!(json["log"]["writes_no_flush_covered"], 1);

        // The same writes, the flush missing: block 0's durable write is lost to a power cut
        // in the durable-only state (and so the check fails), not in the every-write one.
        let unflushed = LogBuilder::new(512)
            .write(0, 0, &stamped(0, 1))
            .write(1, FUA_FLAG, &stamped(1, 2))
            .write(2, 0, &stamped(2, 3));
        let (json, passed) = power_cut(unflushed, 4, &records, 0);
        assert!(!passed, "{json}");
        assert_eq!(json["states"][0]["lost"], 1, "{json}");
        assert_eq!(json["states"][1]["lost"], 0, "{json}");
    }

    /// What no state can show is found in the log's own order: two FUA writes of one block
    /// reaching the device against the writer's order (a store that acknowledged the first
    /// before it completed), and a block written with data that is not the writer's stamp,
    /// even when a later write covers it; a plain write logged after a newer FUA one is not
    /// an anomaly (that is the log's own reordering).
    #[test]
    fn writes_out_of_the_writers_order_or_not_its_stamps_fail_the_check() {
        let records: Vec<Record> = (1..=3)
            .flat_map(|g| {
                [
                    rec(RecordKind::Submitted, 0, 1, g),
                    rec(RecordKind::Durable, 0, 1, g),
                ]
            })
            .collect();
        let check_log = |builder: LogBuilder| power_cut(builder, 1, &records, 1);
        // The log's own reordering: plain 1 logged (at the flush) after FUA 3: passes.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .write(0, FUA_FLAG, &stamped(0, 2))
                .write(0, FUA_FLAG, &stamped(0, 3))
                .write(0, 0, &stamped(0, 1))
                .flush(),
        );
        assert!(passed, "{json}");
        assert_eq!(json["log"]["order_anomalies"], 0, "{json}");
        // FUA 3 completed before FUA 2: every state holds 3, only the order tells.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .write(0, FUA_FLAG, &stamped(0, 3))
                .write(0, FUA_FLAG, &stamped(0, 2)),
        );
        assert!(!passed, "{json}");
        assert_eq!(json["log"]["order_anomalies"], 1, "{json}");
        assert!(json["states"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["lost"] == 0 && s["stale_or_torn"] == 0)));
        // Zeroes written over block 0, then a stamp: the states end with the stamp.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .write(0, FUA_FLAG, &[0u8; 512])
                .write(0, FUA_FLAG, &stamped(0, 3)),
        );
        assert!(!passed, "{json}");
        assert_eq!(json["log"]["order_anomalies"], 1, "{json}");
    }

    /// The writer's marks pin each acknowledgment in the log: a FUA write or a flush logged
    /// after the mark of its acknowledgment was acknowledged before the device completed it,
    /// which the states at the log's end cannot show (every write there completed); a durable
    /// record with no mark after it is a lost mark; records of an earlier run (below the start
    /// mark's generation) are not the log's to check.
    #[test]
    fn an_acknowledgment_before_the_device_made_the_write_durable_fails_the_check() {
        let records = [
            rec(RecordKind::Submitted, 0, 1, 1),
            rec(RecordKind::Durable, 0, 1, 1),
            rec(RecordKind::Submitted, 1, 1, 2),
            rec(RecordKind::Durable, 1, 1, 2),
        ];
        let ack = |g: u32| format!("{ACK_MARK}{g}");
        let start = format!("{START_MARK}1");
        let check_log = |builder: LogBuilder, records: &[Record]| power_cut(builder, 2, records, 1);
        let acks = |json: &serde_json::Value, key: &str| json["acknowledgments"][key].clone();
        // FUA 1, its mark; plain 2, the flush, its mark: each acknowledgment came after.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .mark(&start)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .mark(&ack(1))
                .write(1, 0, &stamped(1, 2))
                .flush()
                .mark(&ack(2)),
            &records,
        );
        assert!(passed, "{json}");
        assert_eq!(acks(&json, "marks"), 2, "{json}");
        assert_eq!(acks(&json, "checked_durable_writes"), 2, "{json}");
        // The flush completed after the acknowledgment's mark: every state at the end holds
        // generation 2, only the mark tells.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .mark(&start)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .mark(&ack(1))
                .write(1, 0, &stamped(1, 2))
                .mark(&ack(2))
                .flush(),
            &records,
        );
        assert!(!passed, "{json}");
        assert_eq!(acks(&json, "late"), 1, "{json}");
        assert!(json["states"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["lost"] == 0 && s["stale_or_torn"] == 0)));
        // The FUA write completed after its mark.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .mark(&start)
                .mark(&ack(1))
                .write(0, FUA_FLAG, &stamped(0, 1))
                .write(1, 0, &stamped(1, 2))
                .flush()
                .mark(&ack(2)),
            &records,
        );
        assert!(!passed, "{json}");
        assert_eq!(acks(&json, "late"), 1, "{json}");
        // The last acknowledgment's mark is missing.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .mark(&start)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .mark(&ack(1))
                .write(1, 0, &stamped(1, 2))
                .flush(),
            &records,
        );
        assert!(!passed, "{json}");
        assert_eq!(acks(&json, "unmarked_durable_writes"), 1, "{json}");
        // A run that started at generation 2: generation 1's record is an earlier run's.
        let (json, _) = check_log(
            LogBuilder::new(512)
                .mark(&format!("{START_MARK}2"))
                .write(1, 0, &stamped(1, 2))
                .flush()
                .mark(&ack(2)),
            &records,
        );
        assert_eq!(acks(&json, "checked_durable_writes"), 1, "{json}");
        assert_eq!(acks(&json, "late"), 0, "{json}");
        assert_eq!(acks(&json, "unmarked_durable_writes"), 0, "{json}");
        // One flush round writing block 0 twice: the first write's data is gone, the later
        // generation that replaced it satisfies its record.
        let twice = [
            rec(RecordKind::Submitted, 0, 1, 1),
            rec(RecordKind::Submitted, 0, 1, 2),
            rec(RecordKind::Durable, 0, 1, 1),
            rec(RecordKind::Durable, 0, 1, 2),
        ];
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .mark(&start)
                .write(0, 0, &stamped(0, 1))
                .write(0, 0, &stamped(0, 2))
                .flush()
                .mark(&ack(2)),
            &twice,
        );
        assert!(passed, "{json}");
        assert_eq!(acks(&json, "checked_durable_writes"), 2, "{json}");
        // A log the writer did not mark: nothing checked, nothing failed for it.
        let (json, passed) = check_log(
            LogBuilder::new(512)
                .write(0, FUA_FLAG, &stamped(0, 1))
                .write(1, 0, &stamped(1, 2))
                .flush(),
            &records,
        );
        assert!(passed, "{json}");
        assert_eq!(acks(&json, "marked"), false, "{json}");
        assert_eq!(acks(&json, "checked_durable_writes"), 0, "{json}");
    }

    #[test]
    fn check_finds_lost_and_foreign_blocks_and_allows_later_writes() {
        let mut image = vec![0u8; 4 * 512];
        let records = [
            rec(RecordKind::Submitted, 0, 2, 1),
            rec(RecordKind::Durable, 0, 2, 1),
            rec(RecordKind::Submitted, 1, 1, 2),
            rec(RecordKind::Submitted, 2, 1, 3),
        ];
        stamp::stamp(&mut image[..512], 0, 1);
        stamp::stamp(&mut image[512..1024], 1, 2); // a later submitted write landed
        let r = check(&image, 512, &records);
        assert_eq!((r.lost, r.stale_or_torn, r.durable_blocks), (0, 0, 2), "{r:?}");
        // The durable block 0 zeroed: lost; block 3 with a generation submitted elsewhere: foreign.
        image[..512].fill(0);
        stamp::stamp(&mut image[1536..], 3, 3);
        let r = check(&image, 512, &records);
        assert_eq!((r.lost, r.stale_or_torn), (1, 1), "{r:?}");
        // Block 1 with a generation never submitted: foreign; a torn body: torn.
        stamp::stamp(&mut image[512..1024], 1, 0xdead);
        image[1536 + 100] ^= 1;
        let r = check(&image, 512, &records);
        assert_eq!((r.lost, r.stale_or_torn), (1, 2), "{r:?}");
        // Block 1 back to generation 1 after generation 2 was made durable there: lost.
        let mut more = records.to_vec();
        more.push(rec(RecordKind::Durable, 1, 1, 2));
        stamp::stamp(&mut image[512..1024], 1, 1);
        let r = check(&image, 512, &more);
        assert_eq!((r.lost, r.stale_or_torn), (2, 1), "{r:?}");
    }

    /// An UNMAP after a block's latest durable write allows zeroes there (it may or may not have
    /// reached the medium), never an older generation; a durable write after it requires its
    /// data again. A record of it round-trips the journal.
    #[test]
    fn an_unmap_after_the_durable_write_allows_zeroes_and_nothing_older() {
        let records = [
            rec(RecordKind::Submitted, 0, 2, 1),
            rec(RecordKind::Durable, 0, 2, 1),
            rec(RecordKind::Submitted, 0, 2, 2),
            rec(RecordKind::Durable, 0, 2, 2),
            rec(RecordKind::Unmapped, 0, 1, 3),
        ];
        let unmapped = rec(RecordKind::Unmapped, 0, 1, 3);
        assert_eq!(Record::decode(&unmapped.encode()), Some(unmapped));
        let mut image = vec![0u8; 2 * 512];
        stamp::stamp(&mut image[512..], 1, 2);
        let r = check(&image, 512, &records);
        assert_eq!(
            (r.lost, r.stale_or_torn, r.unmaps, r.unmapped_zero_blocks),
            (0, 0, 1, 1),
            "{r:?}"
        );
        // Not unmapped, block 1 zeroed: lost. Block 0 holding generation 1 after 2 was durable:
        // lost, unmap or not (an UNMAP does not bring old data back).
        image[512..].fill(0);
        stamp::stamp(&mut image[..512], 0, 1);
        let r = check(&image, 512, &records);
        assert_eq!((r.lost, r.stale_or_torn), (2, 0), "{r:?}");
        // A durable write after the UNMAP: its zeroes no longer excuse the block.
        let mut later = records.to_vec();
        later.extend([
            rec(RecordKind::Submitted, 0, 1, 4),
            rec(RecordKind::Durable, 0, 1, 4),
        ]);
        let mut image = vec![0u8; 2 * 512];
        stamp::stamp(&mut image[512..], 1, 2);
        let r = check(&image, 512, &later);
        assert_eq!((r.lost, r.unmapped_zero_blocks), (1, 0), "{r:?}");
    }

    /// In QEMU's log a discard is logged when it completes, in the writer's order: replayed as
    /// zeroes, durable once a flush follows, and its zeroes pass the check where the journal
    /// has the UNMAP (and are not order anomalies); without that record they are lost data.
    #[test]
    fn a_discard_in_qemus_log_replays_as_zeroes_the_journal_must_explain() {
        let records = [
            rec(RecordKind::Submitted, 0, 1, 1),
            rec(RecordKind::Durable, 0, 1, 1),
            rec(RecordKind::Unmapped, 0, 1, 2),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let end = crate::log_writes::LogFormat::Qemu {
            end: "scst-accel-end-1".to_owned(),
            mark_at: 3 * 512,
        };
        let path = LogBuilder::new(512)
            .write(0, 0, &stamped(0, 1))
            .flush()
            .discard(0, 1)
            .flush()
            .in_band(3, "scst-accel-end-1")
            .finish(dir.path());
        let log = Log::open_as(&path, &end).expect("log");
        assert!(log.entries[2].is_discard() && log.entries[2].changes_blocks());
        assert_eq!(log.durable(), [true, false, true, false, false]);
        let (json, passed) = check_power_cut(&log, 4 * 512, 512, &records, 2, 7).expect("check");
        assert!(passed, "{json}");
        assert_eq!(json["log"]["order_anomalies"], 0, "{json}");
        assert_eq!(json["states"][0]["unmapped_zero_blocks"], 1, "{json}");
        let (json, passed) = check_power_cut(&log, 4 * 512, 512, &records[..2], 2, 7).expect("check");
        assert!(!passed, "{json}");
        assert_eq!(json["states"][0]["lost"], 1, "{json}");
        // The UNMAP journaled but no discard in the log, and the durable write's flush missing:
        // the zeroes of the durable-only state are a lost write, not the UNMAP's.
        let path = LogBuilder::new(512)
            .write(0, 0, &stamped(0, 1))
            .in_band(3, "scst-accel-end-1")
            .finish(dir.path());
        let log = Log::open_as(&path, &end).expect("log");
        let (json, passed) = check_power_cut(&log, 4 * 512, 512, &records, 2, 7).expect("check");
        assert!(!passed, "{json}");
        assert_eq!(json["states"][0]["lost"], 1, "{json}");
        assert_eq!(json["states"][0]["unmapped_zero_blocks"], 0, "{json}");
    }
}
