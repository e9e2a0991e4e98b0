//! The simulated board's medium: the blocks behind READ, WRITE, FLUSH, WRITE_ZEROES and
//! DEALLOCATE (accelerator.md §3), in lazily allocated RAM or a sparse file.
//!
//! Offsets and lengths arrive already checked against the capacity by the engine; the medium
//! still refuses an access past its end with an error instead of panicking.

use std::convert::Infallible;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedRwLock;

/// RAM is allocated in chunks of this size on first write.
const RAM_CHUNK: u64 = 64 * 1024;

/// Zeroes written per call when a file range is zeroed.
const ZERO_RUN: usize = 64 * 1024;

/// Chunks of a [`ChunkTable`] leaf.
const LEAF: u64 = 256;

/// The RAM medium's chunks, under the `sim.medium` lock.
type Chunks = OrderedRwLock<ChunkTable, levels::SimMedium>;

/// The RAM medium's chunks by index, in two levels: a directory with one entry per [`LEAF`]
/// chunks (16 MiB of medium), allocated with the medium, and leaves and chunks allocated when
/// first written. Every READ and WRITE looks a chunk up: two loads from tables a few KiB long
/// for the sizes the simulators serve (the directory of a 1 TiB medium is 512 KiB), where a hash
/// map's lookup was a tenth of the model's own work per 4 KiB read, most of it a cache miss on
/// a 200 KiB table of buckets.
#[derive(Debug)]
pub(crate) struct ChunkTable {
    leaves: Vec<Option<Box<Leaf>>>,
    /// Chunks allocated.
    allocated: usize,
}

type Leaf = [Option<Box<[u8]>>; LEAF as usize];

impl ChunkTable {
    /// A table for `len` bytes, nothing allocated but the directory.
    fn new(len: u64) -> Self {
        let leaves = len.div_ceil(RAM_CHUNK).div_ceil(LEAF);
        Self {
            leaves: (0..leaves).map(|_| None).collect(),
            allocated: 0,
        }
    }

    /// (directory entry, slot in its leaf) of chunk `index`.
    fn place(index: u64) -> (usize, usize) {
        ((index / LEAF) as usize, (index % LEAF) as usize)
    }

    /// Chunk `index`, if written.
    fn get(&self, index: u64) -> Option<&[u8]> {
        let (leaf, slot) = Self::place(index);
        self.leaves.get(leaf)?.as_ref()?[slot].as_deref()
    }

    /// Chunk `index`, if written, for writing.
    fn get_mut(&mut self, index: u64) -> Option<&mut [u8]> {
        let (leaf, slot) = Self::place(index);
        self.leaves.get_mut(leaf)?.as_mut()?[slot].as_deref_mut()
    }

    /// Chunk `index`, allocated (zeroed) first if it was never written. An index past the
    /// directory (the medium checks every access against its length first) grows it.
    fn get_or_insert(&mut self, index: u64) -> &mut [u8] {
        let (leaf, slot) = Self::place(index);
        if leaf >= self.leaves.len() {
            self.leaves.resize_with(leaf + 1, || None);
        }
        let chunk =
            &mut self.leaves[leaf].get_or_insert_with(|| Box::new([const { None }; LEAF as usize]))[slot];
        if chunk.is_none() {
            self.allocated += 1;
        }
        chunk.get_or_insert_with(new_chunk)
    }

    /// Release chunk `index` (it reads as zeroes again).
    fn remove(&mut self, index: u64) {
        let (leaf, slot) = Self::place(index);
        if let Some(Some(leaf)) = self.leaves.get_mut(leaf) {
            if leaf[slot].take().is_some() {
                self.allocated -= 1;
            }
        }
    }

    /// Chunks allocated.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.allocated
    }
}

/// Blocks in RAM or in a sparse file.
#[derive(Debug)]
pub(crate) enum Medium {
    /// Chunk index → chunk; a missing chunk reads as zeroes.
    Ram {
        len: u64,
        /// Level `sim.medium`: held for one copy between the medium and the engine's bounce
        /// buffer, or between the medium and host memory through the IOMMU (the one lock
        /// taken under it: `iommu.table`, [`Medium::read_in_place`],
        /// [`Medium::write_in_place`]). Shared by readers, so the engines of two queues read
        /// at once.
        chunks: Chunks,
    },
    /// A file of exactly `len` bytes.
    File {
        len: u64,
        file: File,
        /// Level `sim.medium`: held across each access, so a compare and write is atomic
        /// against every other access as it is in RAM (NVMe 1.4 §4.12: no other command
        /// touches the blocks of a fused operation until both of its commands are done).
        serial: OrderedMutex<(), levels::SimMedium>,
    },
}

impl Medium {
    /// An empty RAM medium of `len` bytes (nothing allocated yet).
    pub(crate) fn ram(len: u64) -> Self {
        Self::Ram {
            len,
            chunks: OrderedRwLock::new(ChunkTable::new(len)),
        }
    }

    /// Whether the blocks are in memory (no system call moves them).
    pub(crate) fn is_ram(&self) -> bool {
        matches!(self, Self::Ram { .. })
    }

    /// Open or create the sparse file at `path` and give it exactly `len` bytes (extending it
    /// leaves a hole that reads as zeroes).
    pub(crate) fn sparse_file(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(len)?;
        Ok(Self::File {
            len,
            file,
            serial: OrderedMutex::new(()),
        })
    }

    fn len(&self) -> u64 {
        match self {
            Self::Ram { len, .. } | Self::File { len, .. } => *len,
        }
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} are past the medium's {} bytes",
                    self.len()
                ),
            )),
        }
    }

    /// Copy `out.len()` bytes at `offset` out of the medium.
    pub(crate) fn read<L: LockBefore<levels::SimMedium>>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
        self.check(offset, out.len() as u64)?;
        match self {
            Self::Ram { chunks, .. } => {
                let (chunks, _) = chunks.read(token);
                for_each_chunk(offset, out.len(), |index, within, at, n| {
                    match chunks.get(index) {
                        Some(chunk) => out[at..at + n].copy_from_slice(&chunk[within..within + n]),
                        None => out[at..at + n].fill(0),
                    }
                });
                Ok(())
            }
            Self::File { file, serial, .. } => {
                let _serial = serial.lock(token);
                file.read_exact_at(out, offset)
            }
        }
    }

    /// Copy `data` into the medium at `offset`.
    pub(crate) fn write<L: LockBefore<levels::SimMedium>>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.check(offset, data.len() as u64)?;
        match self {
            Self::Ram { chunks, .. } => {
                let (mut chunks, _) = chunks.write(token);
                write_chunks(&mut chunks, offset, data);
                Ok(())
            }
            Self::File { file, serial, .. } => {
                let _serial = serial.lock(token);
                file.write_all_at(data, offset)
            }
        }
    }

    /// The `len` bytes at `offset` of a RAM medium, in place: handed to `copy` one piece per
    /// chunk, in order, under one hold of the medium's read lock, with that lock's child token.
    /// The engine copies them straight to host memory (`DmaBatch::write`), one copy
    /// instead of two through its bounce buffer, and the whole range is still read in one step
    /// against every writer. A chunk never written reads as zeroes. Stops at the first piece
    /// `copy` refuses (the pieces before it were copied) and returns its error. `None` when the
    /// medium is a file: the caller copies through its buffer ([`Medium::read`]). The lock is
    /// held for all the copies: the caller bounds `len`.
    pub(crate) fn read_in_place<L: LockBefore<levels::SimMedium>, E>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        len: usize,
        mut copy: impl FnMut(&mut LockToken<'_, levels::SimMedium>, &[u8]) -> Result<(), E>,
    ) -> Option<io::Result<Result<(), E>>> {
        let Self::Ram { chunks, .. } = self else {
            return None;
        };
        if let Err(e) = self.check(offset, len as u64) {
            return Some(Err(e));
        }
        let (chunks, mut under) = chunks.read(token);
        Some(Ok(try_for_each_chunk(offset, len, |index, within, _, n| {
            let bytes = match chunks.get(index) {
                Some(chunk) => &chunk[within..within + n],
                None => &ZEROES[..n],
            };
            copy(&mut under, bytes)
        })))
    }

    /// The `len` bytes at `offset` of a RAM medium, in place and writable ([`ChunksMut`]),
    /// handed to `fill` under one hold of the medium's write lock with that lock's child token:
    /// the engine copies host data straight into them through the IOMMU (`DmaBatch::read`),
    /// one copy instead of two through a buffer, and the whole range changes in one step
    /// against every other access. The engine checks every host piece before it fills any
    /// block (`DmaBatch::check_read`), so a faulting transfer leaves the blocks as they were; a
    /// chunk is allocated only when filled (and reads as zeroes, as before, past what was
    /// written). `None` when the medium is a file: the caller gathers the data first
    /// ([`Medium::write`]). The lock is held for all the copies: the caller bounds `len`.
    pub(crate) fn write_in_place<L: LockBefore<levels::SimMedium>, R>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut LockToken<'_, levels::SimMedium>, ChunksMut<'_>) -> R,
    ) -> Option<io::Result<R>> {
        let Self::Ram { chunks, .. } = self else {
            return None;
        };
        if let Err(e) = self.check(offset, len as u64) {
            return Some(Err(e));
        }
        let (mut chunks, mut under) = chunks.write(token);
        Some(Ok(fill(
            &mut under,
            ChunksMut {
                chunks: &mut chunks,
                offset,
                len,
            },
        )))
    }

    /// Compare `expected` with the medium at `offset` and, only if every byte is equal, write
    /// `data` (the same length) there, as one step no other access can come between (the
    /// fused Compare and Write, NVMe 1.4 §4.12). Returns whether the data was written.
    pub(crate) fn compare_and_write<L: LockBefore<levels::SimMedium>>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        expected: &[u8],
        data: &[u8],
    ) -> io::Result<bool> {
        if expected.len() != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compare and write halves of different lengths",
            ));
        }
        self.check(offset, data.len() as u64)?;
        match self {
            Self::Ram { chunks, .. } => {
                let (mut chunks, _) = chunks.write(token);
                let mut equal = true;
                for_each_chunk(offset, data.len(), |index, within, at, n| {
                    let held = chunks.get(index).map(|c| &c[within..within + n]);
                    equal &= match held {
                        Some(held) => held == &expected[at..at + n],
                        None => expected[at..at + n].iter().all(|&b| b == 0),
                    };
                });
                if !equal {
                    return Ok(false);
                }
                write_chunks(&mut chunks, offset, data);
                Ok(true)
            }
            Self::File { file, serial, .. } => {
                let _serial = serial.lock(token);
                let mut held = vec![0u8; expected.len()];
                file.read_exact_at(&mut held, offset)?;
                if held != expected {
                    return Ok(false);
                }
                file.write_all_at(data, offset)?;
                Ok(true)
            }
        }
    }

    /// Zero `len` bytes at `offset` (WRITE_ZEROES). In RAM, chunks wholly inside the range
    /// are released rather than filled, so zeroing costs no memory.
    pub(crate) fn write_zeroes<L: LockBefore<levels::SimMedium>>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.check(offset, len)?;
        match self {
            Self::Ram { chunks, .. } => {
                let (mut chunks, _) = chunks.write(token);
                let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                for_each_chunk(offset, len, |index, within, _, n| {
                    if n as u64 == RAM_CHUNK {
                        chunks.remove(index);
                    } else if let Some(chunk) = chunks.get_mut(index) {
                        chunk[within..within + n].fill(0);
                    }
                });
                Ok(())
            }
            Self::File { file, serial, .. } => {
                let _serial = serial.lock(token);
                let zeroes = vec![0u8; ZERO_RUN];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(ZERO_RUN as u64) as usize;
                    file.write_all_at(&zeroes[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Deallocate `len` bytes at `offset` (DEALLOCATE). This medium guarantees deallocated
    /// blocks read as zeroes afterwards (NVMe's DLFEAT "read zeroes"), so it is WRITE_ZEROES.
    pub(crate) fn deallocate<L: LockBefore<levels::SimMedium>>(
        &self,
        token: &mut LockToken<'_, L>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.write_zeroes(token, offset, len)
    }

    /// Make every completed write stable (FLUSH, FUA): `fdatasync` for a file, nothing for RAM.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            Self::Ram { .. } => Ok(()),
            Self::File { file, .. } => file.sync_data(),
        }
    }

    /// RAM bytes allocated (0 for a file): shows that RAM is lazy.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> u64 {
        match self {
            Self::Ram { chunks, .. } => {
                let mut token = LockToken::root();
                let (chunks, _) = chunks.read(&mut token);
                chunks.len() as u64 * RAM_CHUNK
            }
            Self::File { .. } => 0,
        }
    }
}

/// A range of a RAM medium lent for writing ([`Medium::write_in_place`]).
pub(crate) struct ChunksMut<'a> {
    chunks: &'a mut ChunkTable,
    offset: u64,
    len: usize,
}

impl ChunksMut<'_> {
    /// Hand the range's blocks to `fill` one piece per chunk, in order, allocating the chunks
    /// not written before; stops at the first piece `fill` refuses and returns its error.
    pub(crate) fn try_for_each<E>(self, mut fill: impl FnMut(&mut [u8]) -> Result<(), E>) -> Result<(), E> {
        let chunks = self.chunks;
        try_for_each_chunk(self.offset, self.len, |index, within, _, n| {
            let chunk = chunks.get_or_insert(index);
            fill(&mut chunk[within..within + n])
        })
    }
}

/// What a chunk never written reads as, for [`Medium::read_in_place`].
static ZEROES: [u8; RAM_CHUNK as usize] = [0; RAM_CHUNK as usize];

/// A zeroed chunk.
fn new_chunk() -> Box<[u8]> {
    vec![0u8; RAM_CHUNK as usize].into_boxed_slice()
}

/// Copy `data` into the RAM chunks at `offset`, allocating the chunks it touches first.
fn write_chunks(chunks: &mut ChunkTable, offset: u64, data: &[u8]) {
    for_each_chunk(offset, data.len(), |index, within, at, n| {
        let chunk = chunks.get_or_insert(index);
        chunk[within..within + n].copy_from_slice(&data[at..at + n]);
    });
}

/// Split `offset..offset+len` at chunk boundaries: `f(chunk index, offset in chunk, offset in
/// the caller's buffer, bytes)`.
fn for_each_chunk(offset: u64, len: usize, mut f: impl FnMut(u64, usize, usize, usize)) {
    let done: Result<(), Infallible> = try_for_each_chunk(offset, len, |index, within, at, n| {
        f(index, within, at, n);
        Ok(())
    });
    let Ok(()) = done;
}

/// [`for_each_chunk`], stopping at the first piece `f` fails and returning its error.
fn try_for_each_chunk<E>(
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut at = 0usize;
    while at < len {
        let pos = offset + at as u64;
        let within = (pos % RAM_CHUNK) as usize;
        let n = (RAM_CHUNK as usize - within).min(len - at);
        f(pos / RAM_CHUNK, within, at, n)?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn exercise(m: &Medium) {
        let mut out = vec![0xAAu8; 8192];
        m.read(&mut LockToken::root(), 0, &mut out)
            .expect("read unwritten");
        assert!(out.iter().all(|&b| b == 0), "unwritten blocks read as zeroes");

        // A write that straddles a chunk boundary.
        let data = pattern(3 * 4096, 7);
        let at = RAM_CHUNK - 4096;
        m.write(&mut LockToken::root(), at, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        m.read(&mut LockToken::root(), at, &mut back).expect("read back");
        assert_eq!(back, data);

        m.write_zeroes(&mut LockToken::root(), at + 512, 1024)
            .expect("zero");
        m.read(&mut LockToken::root(), at, &mut back)
            .expect("read zeroed");
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&back[1536..], &data[1536..]);

        m.deallocate(&mut LockToken::root(), at, data.len() as u64)
            .expect("deallocate");
        m.read(&mut LockToken::root(), at, &mut back)
            .expect("read deallocated");
        assert!(back.iter().all(|&b| b == 0));
        m.flush().expect("flush");

        let end = m.len();
        assert!(
            m.read(&mut LockToken::root(), end - 512, &mut [0u8; 1024])
                .is_err(),
            "read past the end"
        );
        assert!(
            m.write(&mut LockToken::root(), end, &[0u8; 1]).is_err(),
            "write past the end"
        );
    }

    #[test]
    fn ram_is_lazy_and_reads_zeroes() {
        let m = Medium::ram(4 << 20);
        assert_eq!(m.allocated(), 0, "nothing allocated before the first write");
        exercise(&m);
        let before = m.allocated();
        m.write(&mut LockToken::root(), 1 << 20, &[1u8; 512])
            .expect("write");
        assert_eq!(m.allocated() - before, RAM_CHUNK, "one chunk for one small write");
        m.write_zeroes(&mut LockToken::root(), 1 << 20, RAM_CHUNK)
            .expect("zero the whole chunk");
        assert_eq!(m.allocated(), before, "a wholly zeroed chunk is released");
    }

    /// Chunks in different leaves of the table, the first and last of a leaf, and one past the
    /// directory (grown, not a panic) are each their own; removal frees only its chunk.
    #[test]
    fn the_chunk_table_keeps_each_chunk_at_its_index() {
        let mut table = ChunkTable::new(3 * LEAF * RAM_CHUNK);
        assert_eq!(table.leaves.len(), 3);
        let indexes = [0, LEAF - 1, LEAF, 2 * LEAF + 7, 5 * LEAF + 1];
        for (n, &index) in indexes.iter().enumerate() {
            assert!(table.get(index).is_none(), "chunk {index} unwritten");
            table.get_or_insert(index)[0] = n as u8 + 1;
        }
        assert_eq!(table.len(), indexes.len());
        for (n, &index) in indexes.iter().enumerate() {
            assert_eq!(table.get(index).map(|c| c[0]), Some(n as u8 + 1), "chunk {index}");
            assert_eq!(
                table.get_mut(index).map(|c| c[0]),
                Some(n as u8 + 1),
                "chunk {index}"
            );
        }
        assert!(table.get(1).is_none() && table.get(LEAF + 1).is_none());
        table.remove(LEAF);
        table.remove(LEAF);
        table.remove(4 * LEAF);
        assert!(table.get(LEAF).is_none());
        assert_eq!(table.len(), indexes.len() - 1);
        assert_eq!(
            table.get_or_insert(LEAF)[0],
            0,
            "a chunk written again starts zeroed"
        );
    }

    #[test]
    fn sparse_file_round_trips() {
        let path = std::env::temp_dir().join(format!("scst-accel-medium-{}.img", std::process::id()));
        let m = Medium::sparse_file(&path, 4 << 20).expect("create");
        exercise(&m);
        drop(m);
        let len = std::fs::metadata(&path).map(|m| m.len());
        let _ = std::fs::remove_file(&path);
        assert_eq!(len.expect("metadata"), 4 << 20);
    }
}
