//! Power-cut states of a *file system* the crash writer's disk image lives on, rebuilt from a
//! dm-log-writes log of the file system's device: what the HIL suite's power-cut-fs scenario
//! (tests/hil/scenarios/power-cut-fs.sh) mounts and checks.
//!
//! Under `--board file` the store's durability rests on the file system: a write into a hole
//! allocates blocks and converts unwritten extents, and the file's size and extents are
//! metadata the store's fdatasync (SYNCHRONIZE CACHE) and RWF_DSYNC / O_DSYNC (FUA) must
//! cover. The log-writes target under the file system logs its journal, metadata and data
//! writes alike, so a state rebuilt from it is a whole device: the scenario mounts it (the
//! kernel recovers the file system's journal, as it would after a power cut) and checks the
//! image file in it against the writer's journal (`crash-check --image --durable-up-to`).
//!
//! **Which states.** The writer marks the log at each acknowledgment that makes writes durable
//! ([`ACK_MARK`] and the newest generation acknowledged durable); the scenario adds
//! [`KILL_MARK`] after the kill. A cut just before a mark keeps the writes the log shows durable
//! before it ([`Log::durable_from`]: FUA writes, and plain writes a flush before the mark
//! covered), and nothing else: the least a power cut there may leave, and the state that holds
//! the file system to its flushes. Every write the journal acknowledged durable up to the
//! mark's generation (every one, at the kill mark) must be in the image file there.
//! Rebuilding and mounting a state takes seconds under TCG, and a run has thousands of marks:
//! [`pick_marks`] chooses a bounded sample (the kill mark, the last few acknowledgments, and
//! seeded random ones).
//!
//! **Order of the replay.** The writes are replayed in the log's order, as xfstests'
//! `replay-log` does for file systems, except where both the image's block and the written
//! one are the writer's stamps of one LBA of the image file: there the newer generation stays
//! (the one reordering of a dm-log-writes log, a plain write logged at its flush after a FUA
//! write of the same blocks: `crate::log_writes` module doc). The file system's own blocks
//! carry no generation to order them by; the log's order is the one the file system's flushes
//! and FUA writes leave.

use crate::crash::ACK_MARK;
use crate::crash::START_MARK;
use crate::log_writes::Log;
use crate::log_writes::LogError;
use crate::log_writes::Placement;
use crate::log_writes::END_MARK;
use scst_accel_handler::workload::stamp;
use scst_accel_handler::workload::stamp::Rng;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;

/// The mark a power-cut scenario sends (`dmsetup message NAME 0 mark scst-accel-killed`)
/// after it killed the writer and before anything else touches the file system: a cut just
/// before it must keep every write the journal acknowledged durable.
pub const KILL_MARK: &str = "scst-accel-killed";

/// One mark to rebuild the state at: its entry in the log, and up to which generation the
/// journal's durable records must hold there (`None`: all of them, the [`KILL_MARK`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickedMark {
    /// The mark's index in [`Log::entries`].
    pub entry: usize,
    /// The newest generation acknowledged durable before the mark (an [`ACK_MARK`]'s number),
    /// or `None` for the kill mark.
    pub durable_up_to: Option<u32>,
    /// The mark's text.
    pub text: String,
}

/// Why a state cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or replaying the log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// No acknowledgment mark and no kill mark in the log.
    #[error(
        "the log has no `{ACK_MARK}N` or `{KILL_MARK}` mark: run the writer with \
         --log-writes-mark on the log-writes target, and mark the kill \
         (`dmsetup message NAME 0 mark {KILL_MARK}`)"
    )]
    NoMarks,
    /// The entry asked for is not a mark.
    #[error("log entry {entry} is not a mark ({what}): give an entry `crash-check --pick-marks` printed")]
    NotAMark {
        /// The entry.
        entry: usize,
        /// What it is.
        what: String,
    },
    /// Writing the state's image.
    #[error("writing the state's image {path}: {source}")]
    Write {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A mark the check can rebuild a state at: an [`ACK_MARK`] with its number, or the
/// [`KILL_MARK`]; `None` for any other entry ([`START_MARK`], [`END_MARK`], other marks).
fn checkable(text: &str) -> Option<Option<u32>> {
    if text == KILL_MARK {
        return Some(None);
    }
    if text.starts_with(START_MARK) || text == END_MARK {
        return None;
    }
    text.strip_prefix(ACK_MARK)?.parse::<u32>().ok().map(Some)
}

/// At most `count` marks of `log` to check, in log order: the last checkable mark (the
/// [`KILL_MARK`] when the scenario sent it), the `count / 2` acknowledgments before it, and
/// random others (seeded by `seed`) up to `count`.
///
/// # Errors
/// [`StateError::NoMarks`] when the log has none to check.
pub fn pick_marks(log: &Log, count: usize, seed: u64) -> Result<Vec<PickedMark>, StateError> {
    let all: Vec<PickedMark> = log
        .entries
        .iter()
        .enumerate()
        .filter_map(|(entry, e)| {
            let text = e.mark.as_ref()?;
            checkable(text).map(|durable_up_to| PickedMark {
                entry,
                durable_up_to,
                text: text.clone(),
            })
        })
        .collect();
    if all.is_empty() {
        return Err(StateError::NoMarks);
    }
    let count = count.clamp(1, all.len());
    let tail = (count / 2 + 1).min(count);
    let mut chosen: BTreeSet<usize> = (all.len() - tail..all.len()).collect();
    let mut rng = Rng::new(seed);
    while chosen.len() < count {
        chosen.insert(rng.below(all.len() as u64) as usize);
    }
    Ok(chosen.into_iter().map(|i| all[i].clone()).collect())
}

/// The writer's stamp in `block`, of whichever LBA it names: (LBA, generation).
fn any_stamp(block: &[u8]) -> Option<(u64, u32)> {
    let lba = u64::from_le_bytes(block.get(..8)?.try_into().ok()?);
    stamp::check_any(block, lba).ok().flatten().map(|g| (lba, g))
}

/// Whether a write replaces the block in the state: in the log's order, but of two stamps of
/// one LBA the newer stays (module doc).
fn place(p: &Placement<'_>) -> bool {
    match (any_stamp(p.new), any_stamp(p.old)) {
        (Some((lba, new)), Some((old_lba, old))) if lba == old_lba => new > old,
        _ => true,
    }
}

/// Rebuild in `image` (the device's size) the state a power cut just before the mark at
/// `entry` leaves: the writes durable before it, replayed in `unit`-byte blocks (module doc).
/// Returns how many writes were replayed.
///
/// # Errors
/// [`StateError::NotAMark`]; [`StateError::Log`] reading or replaying the log.
pub fn rebuild(log: &Log, entry: usize, image: &mut [u8], unit: usize) -> Result<u64, StateError> {
    match log.entries.get(entry) {
        Some(e) if e.mark.is_some() => {}
        other => {
            return Err(StateError::NotAMark {
                entry,
                what: other.map_or_else(|| "past the log's end".to_owned(), |e| format!("{e:?}")),
            })
        }
    }
    let durable_from = log.durable_from();
    image.fill(0);
    let replayed = log.replay(
        image,
        unit,
        |index, _| durable_from[index].is_some_and(|d| d < entry),
        place,
    )?;
    Ok(replayed)
}

/// Write `image` to a new file at `path` (replaced if it exists), sparse: blocks of zeroes
/// are left as holes, so a state of a mostly empty file system takes little of a tmpfs.
///
/// # Errors
/// [`StateError::Write`].
pub fn write_sparse(image: &[u8], path: &Path) -> Result<(), StateError> {
    const CHUNK: usize = 64 * 1024;
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    file.set_len(image.len() as u64).map_err(err)?;
    for (i, chunk) in image.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            file.write_all_at(chunk, (i * CHUNK) as u64).map_err(err)?;
        }
    }
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_writes::tests::LogBuilder;
    use crate::log_writes::tests::FUA_FLAG;

    fn stamped(lba: u64, generation: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        stamp::stamp(&mut b, lba, generation);
        b
    }

    /// A state at a mark keeps the FUA writes and the plain writes a flush before the mark
    /// covered, in the log's order for the file system's blocks (metadata written twice ends
    /// with the later copy), the newer stamp for the image file's (a plain write logged after
    /// a newer FUA write of the same file LBA, at another device block than its LBA, does not
    /// replace it); nothing the mark's flush did not cover.
    #[test]
    fn a_state_keeps_what_was_durable_before_its_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = LogBuilder::new(512)
            .write(0, 0, &[1u8; 512]) // file system metadata, version 1
            .flush()
            .mark(&format!("{START_MARK}1"))
            .write(5, FUA_FLAG, &stamped(0, 2)) // the image's LBA 0 at device block 5
            .write(5, 0, &stamped(0, 1)) // completed first, logged at the flush
            .write(0, 0, &[2u8; 512]) // metadata, version 2
            .flush()
            .mark(&format!("{ACK_MARK}2"))
            .write(6, 0, &stamped(1, 3)) // no flush before the kill mark
            .mark(KILL_MARK)
            .flush()
            .mark(END_MARK)
            .finish(dir.path());
        let log = Log::open(&path).expect("log");
        let picked = pick_marks(&log, 5, 1).expect("marks");
        assert_eq!(
            picked
                .iter()
                .map(|m| (m.entry, m.durable_up_to))
                .collect::<Vec<_>>(),
            [(7, Some(2)), (9, None)],
            "the start and end marks are not states"
        );
        let mut image = vec![0u8; 8 * 512];
        assert_eq!(rebuild(&log, 7, &mut image, 512).expect("state"), 4);
        assert_eq!(image[0], 2, "the later metadata");
        assert_eq!(
            any_stamp(&image[5 * 512..6 * 512]),
            Some((0, 2)),
            "the newer stamp"
        );
        assert!(
            image[6 * 512..].iter().all(|&b| b == 0),
            "not flushed before the kill mark"
        );
        let mut before = vec![0u8; 8 * 512];
        rebuild(&log, 2, &mut before, 512).expect("state at the start mark");
        assert_eq!((before[0], before[5 * 512]), (1, 0));
        assert!(matches!(
            rebuild(&log, 3, &mut before, 512),
            Err(StateError::NotAMark { entry: 3, .. })
        ));

        let out = dir.path().join("state.img");
        write_sparse(&image, &out).expect("write");
        assert_eq!(std::fs::read(&out).expect("read"), image);
    }

    /// The sample: the last marks always, random ones up to the count, seeded; a log the
    /// writer did not mark is refused.
    #[test]
    fn the_sample_takes_the_last_marks_and_seeded_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut builder = LogBuilder::new(512).mark(&format!("{START_MARK}1"));
        for g in 1..=40 {
            builder = builder
                .write(0, FUA_FLAG, &stamped(0, g))
                .mark(&format!("{ACK_MARK}{g}"));
        }
        let log = Log::open(builder.mark(KILL_MARK).mark(END_MARK).finish(dir.path())).expect("log");
        let picked = pick_marks(&log, 6, 9).expect("marks");
        assert_eq!(picked.len(), 6);
        let last: Vec<_> = picked.iter().rev().take(4).map(|m| m.durable_up_to).collect();
        assert_eq!(last, [None, Some(40), Some(39), Some(38)]);
        assert_eq!(picked, pick_marks(&log, 6, 9).expect("marks"), "seeded");
        assert!(picked.windows(2).all(|w| w[0].entry < w[1].entry));
        assert_eq!(pick_marks(&log, 1000, 9).expect("all").len(), 41);

        let bare = LogBuilder::new(512)
            .write(0, 0, &[1u8; 512])
            .flush()
            .mark(END_MARK)
            .finish(dir.path());
        let log = Log::open(&bare).expect("log");
        assert!(matches!(pick_marks(&log, 4, 1), Err(StateError::NoMarks)));
    }
}
