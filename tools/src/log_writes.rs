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

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// `WRITE_LOG_MAGIC`.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// `WRITE_LOG_VERSION`.
pub const VERSION: u64 = 1;
/// The mark the target logs when it is removed: a log without it as its last entry is cut.
pub const END_MARK: &str = "dm-log-writes-end";

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

    /// Changes blocks: a write with data (discards are refused by [`Log::open`]).
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
    /// Read the log at `path` (the log device, or a copy of it): the super block and every
    /// entry's header, checked to lie inside the log and to end with [`END_MARK`].
    ///
    /// # Errors
    /// [`LogError`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, LogError> {
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
        for index in 0..count {
            let truncated = || LogError::Truncated {
                path: path.clone(),
                index,
                len,
            };
            if at + bs > len {
                return Err(truncated());
            }
            file.read_exact_at(&mut header, at).map_err(io)?;
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
            } else if flags & DISCARD != 0 {
                // Logged like a plain write (at the next flush), so not ordered against a FUA
                // write of the same blocks logged before it; the crash writer sends none.
                return Err(LogError::Unsupported {
                    path: path.clone(),
                    index,
                    what: "a discard (not ordered against the FUA writes logged around it)",
                });
            } else {
                let bytes = sectors.checked_mul(bs).ok_or_else(truncated)?;
                at = at
                    .checked_add(bytes)
                    .filter(|&end| end <= len)
                    .ok_or_else(truncated)?;
            }
            entries.push(entry);
        }
        match entries.last() {
            Some(Entry { mark: Some(m), .. }) if m == END_MARK => {}
            last => {
                return Err(LogError::NoEndMark {
                    path,
                    last: last.map_or_else(|| "no entries".to_owned(), |e| format!("{e:?}")),
                })
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
            self.file
                .read_exact_at(&mut data, entry.data_at)
                .map_err(|source| LogError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            for (i, (old, new)) in blocks.chunks_mut(unit).zip(data.chunks(unit)).enumerate() {
                let placement = Placement {
                    entry: index,
                    fua: entry.is_fua(),
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
}
