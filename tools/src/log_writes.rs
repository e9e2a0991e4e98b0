//! The log Linux's `dm-log-writes` target keeps of a device's writes, read back, and the device
//! contents a power cut at the log's end may leave: what `scst-accel crash-check --log-writes`
//! checks the crash writer's journal against (the HIL suite's power-cut scenario,
//! tests/hil/scenarios/power-cut.sh).
//!
//! A SIGKILL of the handler (tools/tests/crash.rs) cannot lose what the kernel's page cache or
//! the device's volatile cache holds, so it cannot show that an acknowledged write was made
//! durable: that FUA reached the device as FUA and SYNCHRONIZE CACHE as a cache flush. The
//! log-writes target can: stacked over the device, it logs every write, FUA write and flush
//! the device was sent, in an order that says what a flush made durable.
//!
//! **The log** (drivers/md/dm-log-writes.c, read for Linux 6.1 and mainline): a super block at
//! byte 0 (`magic`, `version` 1, `nr_entries`, `sectorsize`: the data device's logical block
//! size), then `nr_entries` entries from byte `sectorsize` on, each a header of one
//! `sectorsize` block (`sector`, `nr_sectors`, both in `sectorsize` units, `flags`,
//! `data_len`) followed by the written data (`nr_sectors` blocks; none for a flush, a discard
//! or a mark, whose text is in its header after the four fields). The target updates
//! `nr_entries` after each FUA write and mark; its removal logs what no flush covered, then a
//! mark named `dm-log-writes-end`, so a log read after `dmsetup remove` is whole when its last
//! entry is that mark. The removal puts what no flush covered at the *head* of the entries its
//! log thread has not written yet (`log_writes_dtr`: `list_splice_init`), before flushes and
//! marks that came after those writes: remove the target only once that thread has caught up
//! (tests/hil/scenarios/power-cut.sh waits for its count of logged entries to settle).
//!
//! **Its order.** A write that completes waits in the target's memory until a flush is
//! *submitted*, which takes every write completed before it; when that flush completes, those
//! writes are logged, then the flush. A FUA write is logged when it completes. So every entry
//! before a flush entry that is not FUA was completed before that flush was submitted, and was
//! made durable by it; the entries after the last flush that are not FUA are writes no flush
//! covered (logged at the removal). The target never sees a flush that carries data: dm core
//! sends it the empty flush and then the data without REQ_PREFLUSH, so a REQ_PREFLUSH|REQ_FUA
//! write shows as a flush entry and, later, a FUA write.
//!
//! **The log's order is not the device's** for a FUA write that follows a plain write to the
//! same blocks: the FUA write is logged when it completes, the plain one only at the next
//! flush, after it (seen in the guest: a plain write of generation 701 logged after a FUA write
//! of 703 to the same eight blocks). The device ends with the later one (a FUA write replaces
//! the cached copy). So a replay cannot take the log's order for the order of writes to one
//! block; [`Log::replay`] asks its caller whether each written block replaces the image's
//! ([`Placement`]: the crash check knows, its writer having one command at a time and stamping
//! each block with a generation that grows with every write). Among the FUA writes, and among
//! the plain writes, the log's order is the order of completion; only between the two may it
//! differ from the device's. Discards are logged as plain writes and so are refused
//! ([`LogError::Unsupported`]).
//!
//! **What a power cut at the end keeps** ([`Log::durable`]): every FUA write, and every write
//! with a flush entry after it. Any other write may or may not have reached the medium, in any
//! combination (a device's volatile cache writes back in any order): [`Log::replay`] builds a
//! state from the durable writes and a caller's choice of the others. "At the end" is after
//! every I/O sent before the log was closed has completed: a store that acknowledged a FLUSH
//! or a FUA write before the device completed it, but did send it, passes that state. So the
//! crash writer also marks the log at each acknowledgment (`--log-writes-mark`: the target's
//! `mark` message, which the target logs after every FUA write and flush that completed before
//! it), and [`Log::durable_from`] says which writes a cut just before each mark keeps: what
//! `crate::crash` checks the acknowledged writes against, mark by mark.
//!
//! **QEMU's `blklogwrites`** ([`LogFormat::Qemu`]) writes the same format from inside QEMU's
//! block layer, below an emulated device: what a driver in the guest (the NVMe engine through
//! VFIO, tests/hil/scenarios/power-cut-vfio.sh) made the device write. Read for QEMU 6.1 to 8.2
//! (block/blklogwrites.c, block/io.c), with the differences that matter here: each write is
//! logged when the image's write has completed and before the guest sees its completion, each
//! flush when the image's flush has completed (so, for a guest that waits for each command, the
//! log's order is the device's); no entry is ever FUA (a FUA write the device passes on shows as a
//! write and a flush, and QEMU's NVMe controller passes none: docs/nvme.md "FUA"); `nr_entries`
//! is rewritten only at flushes (and every `log-super-update-interval` entries), so the entries
//! go on past it, up to the first header of zeroes in a log file that started empty; a guest
//! cannot send a mark, and closing the drive adds a flush; a discard is logged when it
//! completes, like a write (so, unlike dm-log-writes', in order: replayed as zeroes, what the
//! punched image reads). So the crash writer marks **in
//! band** (`--in-band-marks`): it writes a block that begins with [`IN_BAND_MAGIC`] and the
//! mark's text to a unit of the disk it keeps for that ([`in_band_unit`]), and waits for it,
//! the way it waits for every command; this reader turns such writes, there, into marks. Such
//! a mark is logged when its own write completes, not when it is sent: a store that answered
//! before the device completed the Flush or FUA write it rests on is caught when that
//! operation completes after the mark's write (measured in the HIL suite: hundreds of times a
//! cycle, tests/hil/README.md), not with certainty per acknowledgment. The log ends at the run's end
//! mark (written after the writer's kill, before the drive is closed): what comes after it
//! is not the run's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// `WRITE_LOG_MAGIC`.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// `WRITE_LOG_VERSION`.
pub const VERSION: u64 = 1;
/// The mark the target logs when it is removed: a log without it as its last entry is cut.
pub const END_MARK: &str = "dm-log-writes-end";
/// The first bytes of an in-band mark's block ([`LogFormat::Qemu`]); the mark's text follows,
/// ended by a zero byte. No block the crash writer stamps can begin so: its first eight bytes
/// are its LBA (`scst_accel_handler::workload::stamp`), and these read as an LBA above 2^62.
pub const IN_BAND_MAGIC: &[u8; 16] = b"scst-accel-mark\0";
/// Longest text of an in-band mark.
pub const IN_BAND_MAX_TEXT: usize = 200;

/// Whose log it is: what ends it and how marks are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Linux's dm-log-writes target, read after `dmsetup remove`: `nr_entries` entries, the
    /// last of them the target's [`END_MARK`]; marks are the target's own.
    DmLogWrites,
    /// QEMU's blklogwrites driver (module doc): the entries go on past `nr_entries` up to a
    /// header of zeroes; marks are in band, at `mark_at`; the log ends at the in-band mark `end`.
    Qemu {
        /// The text of the mark that ends the run's part of the log.
        end: String,
        /// The byte offset on the disk of the unit the writer keeps for its marks
        /// ([`in_band_unit`]): a write there that reads as a mark is one; a mark's block
        /// anywhere else is data (which the check then finds is not the writer's stamp).
        mark_at: u64,
    },
}

/// Bytes of the unit the crash writer writes an in-band mark to.
pub const IN_BAND_UNIT: u64 = 4096;

/// The byte offset of the unit the crash writer keeps for in-band marks on a disk of
/// `disk_bytes`: its last whole 4 KiB.
pub fn in_band_unit(disk_bytes: u64) -> u64 {
    (disk_bytes / IN_BAND_UNIT).saturating_sub(1) * IN_BAND_UNIT
}

/// The text of an in-band mark's block, or `None` for any other block.
pub fn in_band_mark(block: &[u8]) -> Option<String> {
    let rest = block.strip_prefix(IN_BAND_MAGIC.as_slice())?;
    let rest = &rest[..rest.len().min(IN_BAND_MAX_TEXT + 1)];
    let text = &rest[..rest.iter().position(|&b| b == 0)?];
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The block of an in-band mark with `text` (at most [`IN_BAND_MAX_TEXT`] bytes, no zero byte),
/// `len` bytes long (at least 217: the magic, the longest text and its zero byte), what
/// [`in_band_mark`] reads back; `None` when either does not fit.
pub fn in_band_block(text: &str, len: usize) -> Option<Vec<u8>> {
    let fits = text.len() <= IN_BAND_MAX_TEXT && !text.as_bytes().contains(&0);
    // The magic, the longest text and its ending zero.
    let len_ok = len > IN_BAND_MAGIC.len() + IN_BAND_MAX_TEXT;
    (fits && len_ok).then(|| {
        let mut block = vec![0u8; len];
        block[..IN_BAND_MAGIC.len()].copy_from_slice(IN_BAND_MAGIC);
        block[IN_BAND_MAGIC.len()..IN_BAND_MAGIC.len() + text.len()].copy_from_slice(text.as_bytes());
        block
    })
}

const FLUSH: u64 = 1 << 0;
const FUA: u64 = 1 << 1;
const DISCARD: u64 = 1 << 2;
const MARK: u64 = 1 << 3;
/// `struct log_write_entry`: four little-endian u64.
const ENTRY_BYTES: usize = 32;

/// One logged entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First block written (`sectorsize` units).
    pub sector: u64,
    /// Blocks written.
    pub sectors: u64,
    /// The target's flags (`LOG_FLUSH_FLAG`, ...).
    pub flags: u64,
    /// Byte offset of the written data in the log (writes only).
    data_at: u64,
    /// The text of a mark.
    pub mark: Option<String>,
}

impl Entry {
    /// A flush (an empty REQ_PREFLUSH bio: dm core sends the target no flush with data).
    pub fn is_flush(&self) -> bool {
        self.flags & FLUSH != 0
    }

    /// A FUA write.
    pub fn is_fua(&self) -> bool {
        self.flags & FUA != 0
    }

    /// A discard (only in a [`LogFormat::Qemu`] log: a dm-log-writes log with one is refused).
    pub fn is_discard(&self) -> bool {
        self.flags & DISCARD != 0
    }

    /// Changes blocks: a write with data, or a discard.
    pub fn changes_blocks(&self) -> bool {
        self.mark.is_none() && self.sectors > 0
    }
}

/// Why a log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading the log device or file.
    #[error("reading the log-writes log {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a log: wrong magic or version, or an impossible block size.
    #[error(
        "{path} is not a dm-log-writes log ({what}): give the log device of a log-writes target \
         (its second table argument), read after `dmsetup remove`"
    )]
    NotALog {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An entry runs past the end of the log.
    #[error("{path}: entry {index} runs past the end of the log ({len} bytes): the log is cut")]
    Truncated {
        /// The log.
        path: PathBuf,
        /// The entry.
        index: u64,
        /// The log's length.
        len: u64,
    },
    /// An entry this reader cannot replay.
    #[error("{path}: entry {index} is {what}, which this reader cannot replay")]
    Unsupported {
        /// The log.
        path: PathBuf,
        /// The entry.
        index: u64,
        /// What it is.
        what: &'static str,
    },
    /// A QEMU log without the run's end mark.
    #[error(
        "{path}: no in-band mark `{mark}` in the log's {entries} entries: the run's end was not \
         marked (`crash-writer --end-mark`, after the writer's kill and before the guest powers \
         off), or the log is of another run"
    )]
    NoRunEnd {
        /// The log.
        path: PathBuf,
        /// The end mark looked for.
        mark: String,
        /// Entries read.
        entries: usize,
    },
    /// The log does not end with the removal's mark.
    #[error(
        "{path}: the log does not end with the `{END_MARK}` mark ({last}): remove the log-writes \
         target (`dmsetup remove`) before reading its log; a target that ran out of log space \
         (`logging_disabled` in `dmsetup status`) leaves a log that is cut"
    )]
    NoEndMark {
        /// The log.
        path: PathBuf,
        /// What the last entry is.
        last: String,
    },
    /// A write that does not cover whole blocks of the replay's unit.
    #[error("entry {index} writes bytes {start}..{end}, not whole {unit}-byte blocks of the image")]
    Misaligned {
        /// The entry.
        index: usize,
        /// First byte.
        start: usize,
        /// One past the last.
        end: usize,
        /// The replay's block size.
        unit: usize,
    },
    /// A write outside the image being replayed.
    #[error("entry {index} writes blocks {sector}..{end} of {block_size} bytes, past the {image_bytes}-byte image")]
    OutsideImage {
        /// The entry.
        index: usize,
        /// First block.
        sector: u64,
        /// One past the last.
        end: u64,
        /// Block size.
        block_size: u32,
        /// The image's size.
        image_bytes: usize,
    },
}

/// One block of a write being replayed ([`Log::replay`]), for the caller to place or not.
#[derive(Debug)]
pub struct Placement<'a> {
    /// The write's index in [`Log::entries`].
    pub entry: usize,
    /// A FUA write (logged when it completed; a plain write is logged at the next flush).
    pub fua: bool,
    /// A discard: `new` is zeroes (QEMU's log; what a punched hole of the image reads).
    pub discard: bool,
    /// The block's index in the image (in the replay's units).
    pub block: usize,
    /// What the image holds there now.
    pub old: &'a [u8],
    /// What the write put there.
    pub new: &'a [u8],
}

/// A log read back: its entries (data left in the log until replayed).
#[derive(Debug)]
pub struct Log {
    file: File,
    path: PathBuf,
    /// The data device's logical block size: the unit of `sector` and `sectors`.
    pub block_size: u32,
    /// The entries, in log order.
    pub entries: Vec<Entry>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Log {
    /// Read the dm-log-writes log at `path` (the log device, or a copy of it): the super block
    /// and every entry's header, checked to lie inside the log and to end with [`END_MARK`].
    ///
    /// # Errors
    /// [`LogError`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, LogError> {
        Self::open_as(path, &LogFormat::DmLogWrites)
    }

    /// Read the log at `path`, written as `format` says: for a QEMU log, the entries up to the
    /// first header of zeroes (at least `nr_entries`), in-band marks turned into marks, and the
    /// log cut after its end mark.
    ///
    /// # Errors
    /// [`LogError`].
    pub fn open_as(path: impl Into<PathBuf>, format: &LogFormat) -> Result<Self, LogError> {
        let path = path.into();
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // A block device's size is where its end is (metadata says 0 for one).
        let len = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0)).map_err(io)?
        };
        let mut head = [0u8; 32];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let not_a_log = |what: String| LogError::NotALog {
            path: path.clone(),
            what,
        };
        let (magic, version, count) = (u64_at(&head, 0), u64_at(&head, 8), u64_at(&head, 16));
        let block_size = u32::from_le_bytes([head[24], head[25], head[26], head[27]]);
        if magic != MAGIC {
            return Err(not_a_log(format!("magic {magic:#x}")));
        }
        if version != VERSION {
            return Err(not_a_log(format!("version {version}")));
        }
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(not_a_log(format!("block size {block_size}")));
        }
        let bs = u64::from(block_size);
        let mut header = vec![0u8; block_size as usize];
        let mut at = bs;
        let mut entries = Vec::new();
        let mark_at = match format {
            LogFormat::Qemu { mark_at, .. } => Some(*mark_at),
            LogFormat::DmLogWrites => None,
        };
        let qemu = mark_at.is_some();
        for index in 0.. {
            let truncated = || LogError::Truncated {
                path: path.clone(),
                index,
                len,
            };
            // QEMU's count lags: past it, the entries end at the file's end or at a header of
            // zeroes (no entry is all zeroes: a write has blocks, a flush its flag).
            if index >= count && (!qemu || at + bs > len) {
                break;
            }
            if at + bs > len {
                return Err(truncated());
            }
            file.read_exact_at(&mut header, at).map_err(io)?;
            if index >= count && header[..ENTRY_BYTES].iter().all(|&b| b == 0) {
                break;
            }
            at += bs;
            let (sector, sectors, flags, data_len) = (
                u64_at(&header, 0),
                u64_at(&header, 8),
                u64_at(&header, 16),
                u64_at(&header, 24),
            );
            let mut entry = Entry {
                sector,
                sectors,
                flags,
                data_at: at,
                mark: None,
            };
            if flags & MARK != 0 {
                let text = header
                    .get(ENTRY_BYTES..ENTRY_BYTES.saturating_add(data_len as usize))
                    .ok_or_else(truncated)?;
                entry.mark = Some(String::from_utf8_lossy(text).into_owned());
                entry.sectors = 0;
            } else if data_len != 0 {
                return Err(LogError::Unsupported {
                    path: path.clone(),
                    index,
                    what: "inline data other than a mark's text",
                });
            } else if flags & DISCARD != 0 && qemu {
                // QEMU logs a discard when it completes, as it does a write: in order. No data
                // in the log; the blocks read zeroes once it is replayed (a punched hole).
            } else if flags & DISCARD != 0 {
                // Logged like a plain write (at the next flush), so not ordered against a FUA
                // write of the same blocks logged before it; the crash writer sends none here.
                return Err(LogError::Unsupported {
                    path: path.clone(),
                    index,
                    what: "a discard (not ordered against the FUA writes logged around it)",
                });
            } else {
                let bytes = sectors.checked_mul(bs).ok_or_else(truncated)?;
                let end = at
                    .checked_add(bytes)
                    .filter(|&end| end <= len)
                    .ok_or_else(truncated)?;
                let at_marks = mark_at.is_some_and(|m| sector.checked_mul(bs) == Some(m));
                if at_marks && sectors > 0 {
                    let mut first =
                        vec![0u8; (bytes as usize).min(IN_BAND_MAGIC.len() + IN_BAND_MAX_TEXT + 1)];
                    file.read_exact_at(&mut first, at).map_err(io)?;
                    if let Some(text) = in_band_mark(&first) {
                        entry.mark = Some(text);
                        entry.sectors = 0;
                    }
                }
                at = end;
            }
            entries.push(entry);
        }
        match format {
            LogFormat::DmLogWrites => match entries.last() {
                Some(Entry { mark: Some(m), .. }) if m == END_MARK => {}
                last => {
                    return Err(LogError::NoEndMark {
                        path,
                        last: last.map_or_else(|| "no entries".to_owned(), |e| format!("{e:?}")),
                    })
                }
            },
            LogFormat::Qemu { end, .. } => {
                let Some(at) = entries.iter().position(|e| e.mark.as_ref() == Some(end)) else {
                    return Err(LogError::NoRunEnd {
                        path,
                        mark: end.clone(),
                        entries: entries.len(),
                    });
                };
                entries.truncate(at + 1);
            }
        }
        Ok(Self {
            file,
            path,
            block_size,
            entries,
        })
    }

    /// For each entry, whether a power cut at the log's end keeps it: a FUA write, or one with a
    /// flush entry after it (see the module doc). False for the entries that change no block.
    pub fn durable(&self) -> Vec<bool> {
        self.durable_from().iter().map(Option::is_some).collect()
    }

    /// For each write, the index of the entry from which on it is durable: its own for a FUA
    /// write, the next flush entry's for a plain one; `None` for a write no flush covered and
    /// for the entries that change no block. A cut just after entry `i` keeps the writes whose
    /// index here is at most `i` (the states at a mark, `crate::crash`'s acknowledgment check).
    pub fn durable_from(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.entries.len()];
        let mut next_flush = None;
        for (i, entry) in self.entries.iter().enumerate().rev() {
            if entry.changes_blocks() {
                out[i] = if entry.is_fua() { Some(i) } else { next_flush };
            }
            if entry.is_flush() {
                next_flush = Some(i);
            }
        }
        out
    }

    /// Write into `image` (zeroes where nothing was written) the writes that `keep` keeps;
    /// `keep` gets each write's index and whether it is durable. The image is taken in blocks
    /// of `unit` bytes (each write must cover whole ones), and a written block replaces the
    /// image's only when `place` says so: the log's order is not the order of the writes to
    /// one block (module doc). Returns how many writes were replayed.
    ///
    /// # Errors
    /// [`LogError::Io`] reading the data; [`LogError::OutsideImage`]; [`LogError::Misaligned`].
    pub fn replay(
        &self,
        image: &mut [u8],
        unit: usize,
        mut keep: impl FnMut(usize, bool) -> bool,
        mut place: impl FnMut(&Placement<'_>) -> bool,
    ) -> Result<u64, LogError> {
        let durable = self.durable();
        let bs = self.block_size as usize;
        let mut replayed = 0;
        let mut data = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            if !entry.changes_blocks() || !keep(index, durable[index]) {
                continue;
            }
            let range = usize::try_from(entry.sector)
                .ok()
                .zip(usize::try_from(entry.sectors).ok())
                .and_then(|(first, n)| Some(first.checked_mul(bs)?..first.checked_add(n)?.checked_mul(bs)?))
                .filter(|r| r.end <= image.len())
                .ok_or(LogError::OutsideImage {
                    index,
                    sector: entry.sector,
                    end: entry.sector.saturating_add(entry.sectors),
                    block_size: self.block_size,
                    image_bytes: image.len(),
                })?;
            if range.start % unit != 0 || range.end % unit != 0 {
                return Err(LogError::Misaligned {
                    index,
                    start: range.start,
                    end: range.end,
                    unit,
                });
            }
            let first = range.start / unit;
            let blocks = &mut image[range];
            data.resize(blocks.len(), 0);
            if entry.is_discard() {
                data.fill(0);
            } else {
                self.file
                    .read_exact_at(&mut data, entry.data_at)
                    .map_err(|source| LogError::Io {
                        path: self.path.clone(),
                        source,
                    })?;
            }
            for (i, (old, new)) in blocks.chunks_mut(unit).zip(data.chunks(unit)).enumerate() {
                let placement = Placement {
                    entry: index,
                    fua: entry.is_fua(),
                    discard: entry.is_discard(),
                    block: first + i,
                    old,
                    new,
                };
                if place(&placement) {
                    old.copy_from_slice(new);
                }
            }
            replayed += 1;
        }
        Ok(replayed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A log as the target writes it, for `block_size`: entries (sector, flags, data blocks'
    /// fill bytes, or a mark's text).
    pub(crate) struct LogBuilder {
        block_size: usize,
        bytes: Vec<u8>,
        count: u64,
    }

    impl LogBuilder {
        pub(crate) fn new(block_size: usize) -> Self {
            Self {
                block_size,
                bytes: vec![0; block_size],
                count: 0,
            }
        }

        fn header(&mut self, sector: u64, sectors: u64, flags: u64, text: &[u8]) {
            let mut h = vec![0u8; self.block_size];
            for (i, v) in [sector, sectors, flags, text.len() as u64]
                .into_iter()
                .enumerate()
            {
                h[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            h[ENTRY_BYTES..ENTRY_BYTES + text.len()].copy_from_slice(text);
            self.bytes.extend_from_slice(&h);
            self.count += 1;
        }

        pub(crate) fn write(mut self, sector: u64, flags: u64, data: &[u8]) -> Self {
            assert_eq!(data.len() % self.block_size, 0);
            self.header(sector, (data.len() / self.block_size) as u64, flags, b"");
            self.bytes.extend_from_slice(data);
            self
        }

        pub(crate) fn discard(mut self, sector: u64, sectors: u64) -> Self {
            self.header(sector, sectors, DISCARD, b"");
            self
        }

        pub(crate) fn flush(mut self) -> Self {
            self.header(0, 0, FLUSH, b"");
            self
        }

        pub(crate) fn mark(mut self, text: &str) -> Self {
            self.header(0, 0, MARK, text.as_bytes());
            self
        }

        /// An in-band mark (QEMU's log): a plain write of one block at `sector`.
        pub(crate) fn in_band(self, sector: u64, text: &str) -> Self {
            let block = in_band_block(text, self.block_size).expect("a mark's block");
            self.write(sector, 0, &block)
        }

        /// Make the super block's count say `n` entries (QEMU's lags behind the entries).
        pub(crate) fn count(mut self, n: u64) -> Self {
            self.count = n;
            self
        }

        pub(crate) fn finish(mut self, dir: &std::path::Path) -> PathBuf {
            self.bytes[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            self.bytes[8..16].copy_from_slice(&VERSION.to_le_bytes());
            self.bytes[16..24].copy_from_slice(&self.count.to_le_bytes());
            self.bytes[24..28].copy_from_slice(&(self.block_size as u32).to_le_bytes());
            let path = dir.join("log");
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(&self.bytes))
                .expect("write the log");
            path
        }
    }

    pub(crate) const FUA_FLAG: u64 = FUA;

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; 512]
    }

    /// These tests' blocks are versioned by their fill byte.
    fn newer(p: &Placement<'_>) -> bool {
        p.new[0] > p.old[0]
    }

    /// A plain write followed by a FUA write of the same block is logged after it (at the next
    /// flush): the block ends with the newer version, which the caller's `newer` tells, not with
    /// the one logged last.
    #[test]
    fn a_plain_write_logged_after_a_later_fua_write_does_not_replace_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = LogBuilder::new(512)
            .write(0, FUA, &block(2)) // completed second, logged first
            .write(0, 0, &block(1)) // completed first, logged at the flush
            .flush()
            .mark(END_MARK)
            .finish(dir.path());
        let log = Log::open(&path).expect("log");
        let mut image = vec![0u8; 512];
        log.replay(&mut image, 512, |_, _| true, newer).expect("replay");
        assert_eq!(image[0], 2);
        // Taken in log order, the older version would win.
        log.replay(&mut image, 512, |_, _| true, |_| true)
            .expect("replay");
        assert_eq!(image[0], 1);
    }

    /// The target's order: a write completed before a flush was submitted is logged before
    /// that flush and is durable; a FUA write is durable; a flush's own data and what no flush
    /// covered (logged at the removal) are not.
    #[test]
    fn a_power_cut_keeps_fua_writes_and_writes_a_later_flush_covered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = LogBuilder::new(512)
            .write(0, 0, &block(1)) // covered by the flush after it
            .flush()
            .write(1, FUA, &block(2)) // FUA
            .write(2, 0, &block(3)) // covered by the flush below
            .flush() // a REQ_PREFLUSH|REQ_FUA write: the flush, then the FUA data
            .write(3, FUA, &block(4))
            .write(4, 0, &block(5)) // no flush after it
            .mark(END_MARK)
            .finish(dir.path());
        let log = Log::open(&path).expect("a whole log");
        assert_eq!(log.block_size, 512);
        assert_eq!(log.entries.len(), 8);
        assert_eq!(
            log.durable(),
            [true, false, true, true, false, true, false, false],
            "the flushes and the mark change no block"
        );
        assert_eq!(
            log.durable_from(),
            [Some(1), None, Some(2), Some(4), None, Some(5), None, None],
            "a plain write from the next flush on, a FUA write from itself"
        );
        let mut minimal = vec![0u8; 6 * 512];
        assert_eq!(
            log.replay(&mut minimal, 512, |_, durable| durable, newer)
                .expect("replay"),
            4
        );
        let fills: Vec<u8> = minimal.chunks(512).map(|b| b[0]).collect();
        assert_eq!(fills, [1, 2, 3, 4, 0, 0]);
        let mut all = vec![0u8; 6 * 512];
        assert_eq!(log.replay(&mut all, 512, |_, _| true, newer).expect("replay"), 5);
        let fills: Vec<u8> = all.chunks(512).map(|b| b[0]).collect();
        assert_eq!(fills, [1, 2, 3, 4, 5, 0]);
    }

    /// A log that does not end with the removal's mark is refused, as is one whose entry runs
    /// past its end, one with another magic, and a write outside the image.
    #[test]
    fn a_cut_or_foreign_log_is_refused_with_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = LogBuilder::new(512)
            .write(0, 0, &block(1))
            .flush()
            .finish(dir.path());
        let e = Log::open(&path).expect_err("no end mark");
        assert!(matches!(e, LogError::NoEndMark { .. }), "{e}");
        assert!(e.to_string().contains("dmsetup remove"), "{e}");

        let path = LogBuilder::new(512)
            .write(0, 0, &block(1))
            .mark(END_MARK)
            .finish(dir.path());
        let full = std::fs::read(&path).expect("read");
        std::fs::write(&path, &full[..full.len() - 700]).expect("cut");
        let e = Log::open(&path).expect_err("cut");
        assert!(matches!(e, LogError::Truncated { .. }), "{e}");

        let mut foreign = full.clone();
        foreign[0] ^= 1;
        std::fs::write(&path, &foreign).expect("write");
        assert!(matches!(Log::open(&path), Err(LogError::NotALog { .. })));

        std::fs::write(&path, &full).expect("write");
        let log = Log::open(&path).expect("whole");
        let mut small = vec![0u8; 256];
        assert!(matches!(
            log.replay(&mut small, 512, |_, _| true, newer),
            Err(LogError::OutsideImage { .. })
        ));

        let path = LogBuilder::new(512)
            .write(0, 0, &block(1))
            .discard(0, 1)
            .flush()
            .mark(END_MARK)
            .finish(dir.path());
        let e = Log::open(&path).expect_err("a discard");
        assert!(matches!(e, LogError::Unsupported { index: 1, .. }), "{e}");
    }

    /// QEMU's log: the super block counts only up to its last flush, the entries go on to a
    /// header of zeroes (the sparse tail of the log file), marks are in band, and the run ends
    /// at its end mark (a flush of the drive's close after it is not the run's).
    #[test]
    fn a_qemu_log_reads_past_its_count_to_the_end_mark_with_marks_in_band() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = LogBuilder::new(512)
            .in_band(7, "scst-accel-start-1")
            .write(0, 0, &block(1)) // the first FUA write: a plain write to QEMU
            .flush() // the Flush the store sent after it
            .in_band(7, "scst-accel-ack-1")
            .write(1, 0, &block(2))
            .flush() // the super block's count is written here: 6
            .write(2, 0, &block(3)) // no flush after it in the run
            .in_band(7, "scst-accel-end-1")
            .flush() // the drive's close
            .count(6)
            .finish(dir.path());
        // Sparse tail: a header of zeroes ends the entries.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).expect("write");
        let end = LogFormat::Qemu {
            end: "scst-accel-end-1".to_owned(),
            mark_at: 7 * 512,
        };
        let log = Log::open_as(&path, &end).expect("a QEMU log");
        assert_eq!(
            log.entries.len(),
            8,
            "cut after the end mark, past the count of 6"
        );
        let marks: Vec<_> = log.entries.iter().filter_map(|e| e.mark.as_deref()).collect();
        assert_eq!(
            marks,
            ["scst-accel-start-1", "scst-accel-ack-1", "scst-accel-end-1"]
        );
        assert!(log
            .entries
            .iter()
            .all(|e| e.mark.is_none() || !e.changes_blocks()));
        assert_eq!(
            log.durable_from(),
            [None, Some(2), None, None, Some(5), None, None, None],
            "the close's flush is not the run's: the last write stays unflushed"
        );
        let mut image = vec![0u8; 8 * 512];
        log.replay(&mut image, 512, |_, _| true, newer).expect("replay");
        assert_eq!(
            &image[7 * 512..],
            &[0u8; 512][..],
            "a mark's block is never replayed"
        );

        // Without its end mark (another run's, or never written) the log is refused.
        let other = LogFormat::Qemu {
            end: "scst-accel-end-2".to_owned(),
            mark_at: 7 * 512,
        };
        let e = Log::open_as(&path, &other).expect_err("no end");
        assert!(matches!(e, LogError::NoRunEnd { entries: 9, .. }), "{e}");
        // A mark's block anywhere but the marks' unit is data (the end is then not found).
        let elsewhere = LogFormat::Qemu {
            end: "scst-accel-end-1".to_owned(),
            mark_at: 6 * 512,
        };
        let e = Log::open_as(&path, &elsewhere).expect_err("no mark at 6");
        assert!(matches!(e, LogError::NoRunEnd { .. }), "{e}");
        assert_eq!(in_band_unit(16 << 20), (16 << 20) - 4096);
        // The count is a lower bound: fewer entries than it says is a cut log.
        let short = LogBuilder::new(512)
            .write(0, 0, &block(1))
            .count(3)
            .finish(dir.path());
        assert!(matches!(
            Log::open_as(&short, &end),
            Err(LogError::Truncated { index: 1, .. })
        ));
        // dm-log-writes' marks are its own: a block that looks like a mark is data there.
        let dm = LogBuilder::new(512)
            .in_band(7, "scst-accel-ack-1")
            .mark(END_MARK)
            .finish(dir.path());
        let log = Log::open(&dm).expect("dm log");
        assert!(log.entries[0].mark.is_none() && log.entries[0].changes_blocks());
    }

    #[test]
    fn an_in_band_mark_reads_back_and_nothing_else_is_one() {
        let block = in_band_block("scst-accel-ack-42", 512).expect("fits");
        assert_eq!(in_band_mark(&block).as_deref(), Some("scst-accel-ack-42"));
        assert_eq!(in_band_mark(&[0u8; 512]), None);
        let mut stamped = vec![0u8; 512];
        scst_accel_handler::workload::stamp::stamp(&mut stamped, 7, 3);
        assert_eq!(in_band_mark(&stamped), None);
        let mut unended = block.clone();
        unended[IN_BAND_MAGIC.len()..].fill(b'x');
        assert_eq!(in_band_mark(&unended), None, "no end to the text");
        assert!(in_band_block(&"x".repeat(IN_BAND_MAX_TEXT + 1), 512).is_none());
        assert!(in_band_block("a\0b", 512).is_none());
        assert!(in_band_block("ok", 100).is_none(), "too short a block");
    }
}
