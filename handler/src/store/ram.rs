//! The RAM store: a board-less [`Store`] for protocol tests and the demo.
//!
//! Memory is allocated lazily in 1 MiB chunks, so a large, mostly unwritten disk costs little;
//! unwritten and deallocated blocks read as zeroes (LBPRZ). Each chunk has its own `RwLock`, a
//! leaf lock held only for one memcpy, never across a blocking call. Every queue completes its
//! requests inside [`StoreQueue::submit`], so it needs no notification fd.
//!
//! The store can grow while it serves ([`Store::resize`]) without a lock on the I/O path: the
//! chunk table is a list of segments of doubling size (segment `s` holds `2^s` chunks), each
//! set once ([`OnceLock`]) and never moved, so a chunk's address is stable; the capacity is an
//! atomic published (Release) only after the segments it needs exist, and every request
//! checks its range against it (Acquire). Bytes past the old end were never written (requests
//! are bounded by the capacity), so grown blocks read as zeroes.

use super::IoBuffer;
use super::Store;
use super::StoreCompletion;
use super::StoreError;
use super::StoreInfo;
use super::StoreOp;
use super::StoreQueue;
use super::StoreRequest;
use super::StoreStatus;
use super::StoreToken;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::OrderedRwLock;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;

const CHUNK_SIZE: usize = 1 << 20;

/// One lazily allocated chunk of the medium (`None` reads as zeroes).
type Chunk = OrderedRwLock<Option<Box<[u8]>>, levels::RamChunk>;

/// A store held in process memory.
#[derive(Debug, Clone)]
pub struct RamStore {
    inner: Arc<Inner>,
}

/// Segments of the chunk table: segment `s` holds chunks `2^s - 1 .. 2^(s+1) - 1`.
const SEGMENTS: usize = 48;

#[derive(Debug)]
struct Inner {
    /// Geometry; its `num_blocks` is the size at creation, the current one is `num_blocks`.
    info: StoreInfo,
    /// Capacity in blocks now; grows only.
    num_blocks: AtomicU64,
    segments: [OnceLock<Box<[Chunk]>>; SEGMENTS],
}

impl RamStore {
    /// A store of `num_blocks` blocks of `block_size` bytes.
    ///
    /// # Panics
    /// If `block_size` is not a power of two between 512 and 65536 (a programming error: the
    /// CLI validates user input before).
    pub fn new(block_size: u32, num_blocks: u64, max_transfer_blocks: u32) -> Self {
        assert!(block_size.is_power_of_two() && (512..=65536).contains(&block_size));
        let info = StoreInfo {
            block_size,
            num_blocks,
            physical_block_size: block_size,
            max_transfer_blocks,
            supports_unmap: true,
            unmap_granularity_blocks: None,
            // UNMAP and WRITE ZEROES zero the range (`zero`), so deallocated blocks read as
            // zeroes: LBPRZ is the truth.
            unmapped_reads_zero: true,
            // Every block is backed by memory: all mapped, which GET LBA STATUS can say.
            reports_lba_status: true,
            volatile_cache: false,
            rotational: Some(false),
            device_ids: None,
            // memmove between chunks, inside the handler's memory.
            copy: super::CopyPath::Store,
            // The engine's compare then write under its range lock is atomic for everything
            // that reaches this memory (only this process does).
            compare_and_write_blocks: 0,
        };
        let inner = Inner {
            info,
            num_blocks: AtomicU64::new(0),
            segments: std::array::from_fn(|_| OnceLock::new()),
        };
        if let Err(e) = inner.grow(num_blocks) {
            panic!("RamStore of {num_blocks} blocks of {block_size}: {e}");
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Run one request to completion.
    pub fn execute(&self, token: &mut StoreToken<'_>, req: &StoreRequest) -> StoreStatus {
        self.inner.execute(token, req)
    }
}

impl Store for RamStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            num_blocks: self.inner.num_blocks.load(Ordering::Acquire),
            ..self.inner.info
        }
    }

    fn resize(&self, num_blocks: u64) -> Result<(), StoreError> {
        self.inner.grow(num_blocks)
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(RamQueue {
            store: self.clone(),
            done: Vec::new(),
        }))
    }
}

/// A RAM store queue: completes synchronously.
struct RamQueue {
    store: RamStore,
    done: Vec<StoreCompletion>,
}

impl StoreQueue for RamQueue {
    fn submit(
        &mut self,
        token: &mut StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        for req in batch.drain(..) {
            let status = self.store.execute(token, &req);
            self.done.push(StoreCompletion { tag: req.tag, status });
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

impl Inner {
    /// Make room for `num_blocks` blocks, then publish the capacity. Concurrent calls are fine:
    /// each creates the segments it needs (`OnceLock` makes one win) before `fetch_max`.
    fn grow(&self, num_blocks: u64) -> Result<(), StoreError> {
        let current = self.num_blocks.load(Ordering::Acquire);
        if num_blocks < current {
            return Err(StoreError::Shrink {
                current,
                requested: num_blocks,
            });
        }
        let too_large = StoreError::TooLarge {
            requested: num_blocks,
        };
        let bytes = num_blocks
            .checked_mul(u64::from(self.info.block_size))
            .ok_or(too_large)?;
        let chunks = bytes.div_ceil(CHUNK_SIZE as u64);
        // Segments 0..=s hold 2^(s+1) - 1 chunks.
        let needed = (u64::BITS - chunks.leading_zeros()) as usize;
        if needed > SEGMENTS {
            return Err(StoreError::TooLarge {
                requested: num_blocks,
            });
        }
        for (s, segment) in self.segments.iter().enumerate().take(needed) {
            segment.get_or_init(|| (0..1usize << s).map(|_| OrderedRwLock::new(None)).collect());
        }
        let before = self.num_blocks.fetch_max(num_blocks, Ordering::AcqRel);
        if before > num_blocks {
            // Another resize grew it further meanwhile: this one asked to shrink after all.
            return Err(StoreError::Shrink {
                current: before,
                requested: num_blocks,
            });
        }
        Ok(())
    }

    /// Chunk `index`, which exists: ranges are checked against the published capacity first.
    fn chunk(&self, index: usize) -> &Chunk {
        let slot = index + 1;
        let segment = (usize::BITS - 1 - slot.leading_zeros()) as usize;
        let segment_chunks = self.segments[segment]
            .get()
            .expect("a chunk inside the published capacity has its segment");
        &segment_chunks[slot - (1 << segment)]
    }

    fn byte_range(&self, lba: u64, blocks: u64) -> Option<(u64, u64)> {
        let end = lba.checked_add(blocks)?;
        if end > self.num_blocks.load(Ordering::Acquire) {
            return None;
        }
        let bs = u64::from(self.info.block_size);
        Some((lba * bs, blocks * bs))
    }

    fn execute(&self, token: &mut StoreToken<'_>, req: &StoreRequest) -> StoreStatus {
        let needed = req.op.buffer_bytes(self.info.block_size) as usize;
        let buffer = match (&req.buffer, req.op.uses_buffer()) {
            (Some(b), true) if b.len >= needed && b.offset + needed <= b.buffer.len() => Some(b),
            (_, true) => return StoreStatus::InvalidRequest,
            (_, false) => None,
        };
        let range = |lba: u64, blocks: u64| self.byte_range(lba, blocks);
        match (&req.op, buffer) {
            (StoreOp::Read { lba, blocks }, Some(buf)) => match range(*lba, u64::from(*blocks)) {
                Some((start, len)) => {
                    self.copy_out(token, start, len, buf);
                    StoreStatus::Good
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Write { lba, blocks, .. }, Some(buf)) => match range(*lba, u64::from(*blocks)) {
                Some((start, len)) => {
                    self.copy_in(token, start, len, buf);
                    StoreStatus::Good
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::WriteSame { lba, blocks }, Some(buf)) => match range(*lba, u64::from(*blocks)) {
                Some((start, len)) => {
                    let bs = u64::from(self.info.block_size);
                    for offset in (0..len).step_by(bs as usize) {
                        self.copy_in(token, start + offset, bs, buf);
                    }
                    StoreStatus::Good
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Compare { lba, blocks }, Some(buf)) => match range(*lba, u64::from(*blocks)) {
                Some((start, len)) => self.compare(token, start, len, buf),
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::WriteZeroes { lba, blocks, .. }, _) => match range(*lba, u64::from(*blocks)) {
                Some((start, len)) => {
                    self.zero(token, start, len);
                    StoreStatus::Good
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Unmap { ranges }, _) => {
                let resolved: Option<Vec<_>> = ranges.iter().map(|&(l, b)| range(l, u64::from(b))).collect();
                match resolved {
                    Some(resolved) => {
                        for (start, len) in resolved {
                            self.zero(token, start, len);
                        }
                        StoreStatus::Good
                    }
                    None => StoreStatus::OutOfRange,
                }
            }
            (StoreOp::Verify { lba, blocks }, _) => match range(*lba, u64::from(*blocks)) {
                Some(_) => StoreStatus::Good,
                None => StoreStatus::OutOfRange,
            },
            (
                StoreOp::Copy {
                    src_lba,
                    dst_lba,
                    blocks,
                },
                _,
            ) => {
                match (
                    range(*src_lba, u64::from(*blocks)),
                    range(*dst_lba, u64::from(*blocks)),
                ) {
                    (Some((src, len)), Some((dst, _))) => {
                        self.memmove(token, src, dst, len);
                        StoreStatus::Good
                    }
                    _ => StoreStatus::OutOfRange,
                }
            }
            (StoreOp::Flush, _) => StoreStatus::Good,
            (StoreOp::LbaStatus { lba }, Some(buf)) => {
                let total = self.num_blocks.load(Ordering::Acquire);
                if *lba >= total {
                    return StoreStatus::OutOfRange;
                }
                let blocks = u32::try_from(total - lba).unwrap_or(u32::MAX);
                buf.put_lba_status(&super::lba_status_data(*lba, blocks, false));
                StoreStatus::Good
            }
            // Buffer ops without a buffer were answered above.
            _ => StoreStatus::InvalidRequest,
        }
    }

    /// Visit `[start, start+len)` chunk by chunk: `f(chunk index, offset in chunk, bytes, offset in range)`.
    fn for_each_chunk(start: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut done = 0u64;
        while done < len {
            let pos = start + done;
            let chunk = (pos / CHUNK_SIZE as u64) as usize;
            let in_chunk = (pos % CHUNK_SIZE as u64) as usize;
            let n = ((CHUNK_SIZE - in_chunk) as u64).min(len - done) as usize;
            f(chunk, in_chunk, n, done as usize);
            done += n as u64;
        }
    }

    fn copy_out(&self, token: &mut StoreToken<'_>, start: u64, len: u64, buf: &IoBuffer) {
        Self::for_each_chunk(start, len, |chunk, at, n, done| {
            let (guard, _) = self.chunk(chunk).read(token);
            match guard.as_deref() {
                Some(data) => buf.write_at(done, &data[at..at + n]),
                None => buf.fill(done, n, 0),
            }
        });
    }

    fn copy_in(&self, token: &mut StoreToken<'_>, start: u64, len: u64, buf: &IoBuffer) {
        Self::for_each_chunk(start, len, |chunk, at, n, done| {
            let (mut guard, _) = self.chunk(chunk).write(token);
            let data = guard.get_or_insert_with(|| vec![0u8; CHUNK_SIZE].into_boxed_slice());
            buf.read_at(done, &mut data[at..at + n]);
        });
    }

    /// Copy `len` bytes from `src` to `dst` as memmove(3) would (overlap allowed). Chunk locks
    /// are leaves and one chunk is locked at a time, so each piece (at most one chunk, never
    /// crossing a chunk boundary on either side) goes through `piece`; an overlapping copy
    /// forward in the medium runs from the end, so no source byte is overwritten before it is
    /// read.
    fn memmove(&self, token: &mut StoreToken<'_>, src: u64, dst: u64, len: u64) {
        if src == dst || len == 0 {
            return;
        }
        let chunk = CHUNK_SIZE as u64;
        let mut piece = vec![0u8; CHUNK_SIZE.min(len as usize)];
        let backward = dst > src && dst < src + len;
        let mut done = 0u64;
        while done < len {
            let left = len - done;
            // The piece's offset in the range: from the start, or ending where the rest ends.
            let (offset, n) = if backward {
                let end = left;
                let n = [end, (src + end - 1) % chunk + 1, (dst + end - 1) % chunk + 1]
                    .into_iter()
                    .min()
                    .unwrap_or(1);
                (end - n, n)
            } else {
                let n = [left, chunk - (src + done) % chunk, chunk - (dst + done) % chunk]
                    .into_iter()
                    .min()
                    .unwrap_or(1);
                (done, n)
            };
            let n_usize = n as usize;
            let (from, to) = (src + offset, dst + offset);
            {
                let (guard, _) = self.chunk((from / chunk) as usize).read(token);
                let at = (from % chunk) as usize;
                match guard.as_deref() {
                    Some(data) => piece[..n_usize].copy_from_slice(&data[at..at + n_usize]),
                    None => piece[..n_usize].fill(0),
                }
            }
            let (mut guard, _) = self.chunk((to / chunk) as usize).write(token);
            let at = (to % chunk) as usize;
            if guard.is_none() && piece[..n_usize].iter().all(|&b| b == 0) {
                // Zeroes onto a chunk never written: it already reads as zeroes.
            } else {
                let data = guard.get_or_insert_with(|| vec![0u8; CHUNK_SIZE].into_boxed_slice());
                data[at..at + n_usize].copy_from_slice(&piece[..n_usize]);
            }
            done += n;
        }
    }

    fn zero(&self, token: &mut StoreToken<'_>, start: u64, len: u64) {
        Self::for_each_chunk(start, len, |chunk, at, n, _| {
            let (mut guard, _) = self.chunk(chunk).write(token);
            if n == CHUNK_SIZE {
                *guard = None;
            } else if let Some(data) = guard.as_deref_mut() {
                data[at..at + n].fill(0);
            }
        });
    }

    fn compare(&self, token: &mut StoreToken<'_>, start: u64, len: u64, buf: &IoBuffer) -> StoreStatus {
        let mut first_diff = None;
        let mut scratch = Vec::new();
        Self::for_each_chunk(start, len, |chunk, at, n, done| {
            if first_diff.is_some() {
                return;
            }
            scratch.resize(n, 0);
            buf.read_at(done, &mut scratch);
            let (guard, _) = self.chunk(chunk).read(token);
            let pos = match guard.as_deref() {
                Some(data) => scratch.iter().zip(&data[at..at + n]).position(|(a, b)| a != b),
                None => scratch.iter().position(|&b| b != 0),
            };
            first_diff = pos.map(|p| (done + p) as u64);
        });
        match first_diff {
            Some(offset) => StoreStatus::Miscompare { offset: Some(offset) },
            None => StoreStatus::Good,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CmdBuffer;
    use scst_accel_dma::SgvPool;

    fn buffer(len: usize) -> IoBuffer {
        let pool = Arc::new(SgvPool::new(None, None, 1 << 30));
        IoBuffer::new(
            CmdBuffer::allocate(&mut crate::store::StoreToken::root(), &pool, len).expect("buffer"),
            len,
        )
    }

    fn run(store: &RamStore, op: StoreOp, buf: Option<&IoBuffer>) -> StoreStatus {
        let mut q = store.open_queue().expect("queue");
        let mut batch = vec![StoreRequest {
            tag: 7,
            op,
            buffer: buf.cloned(),
        }];
        q.submit(&mut crate::store::StoreToken::root(), &mut batch)
            .expect("submit");
        let mut out = Vec::new();
        assert_eq!(q.reap(&mut out), 1);
        assert_eq!(out[0].tag, 7);
        out[0].status
    }

    /// Copy is memmove: overlapping ranges either way, across chunk boundaries, out of range
    /// refused; checked against `copy_within` on a model of the medium.
    #[test]
    fn copy_is_memmove_across_chunks_and_overlaps() {
        let bs = 512u64;
        let blocks = 3 * (CHUNK_SIZE as u64 / bs) + 40;
        let store = RamStore::new(512, blocks, 1 << 16);
        let total = (blocks * bs) as usize;
        let mut model: Vec<u8> = (0..total).map(|i| (i % 253) as u8 ^ (i / 4096) as u8).collect();
        // Leave the last chunk unwritten (reads as zeroes): copies from it must copy zeroes.
        let written = 2 * CHUNK_SIZE + 4096;
        model[written..].fill(0);
        let buf = buffer(written);
        buf.write_at(0, &model[..written]);
        let write = StoreOp::Write {
            lba: 0,
            blocks: (written as u64 / bs) as u32,
            fua: false,
        };
        assert_eq!(run(&store, write, Some(&buf)), StoreStatus::Good);
        let chunk_blocks = CHUNK_SIZE as u64 / bs;
        for (src, dst, n) in [
            (3, chunk_blocks - 5, 700u32), // forward, no overlap, across a boundary
            (chunk_blocks - 100, chunk_blocks - 60, 300), // overlap, destination after the source
            (2 * chunk_blocks + 10, 2 * chunk_blocks - 30, 200), // overlap, destination first
            (blocks - 20, 5, 20),          // from never-written blocks
        ] {
            let op = StoreOp::Copy {
                src_lba: src,
                dst_lba: dst,
                blocks: n,
            };
            assert_eq!(
                run(&store, op, None),
                StoreStatus::Good,
                "copy {src} -> {dst} x {n}"
            );
            let (s, d, len) = ((src * bs) as usize, (dst * bs) as usize, n as usize * bs as usize);
            model.copy_within(s..s + len, d);
        }
        let out = buffer(total);
        let read = StoreOp::Read {
            lba: 0,
            blocks: blocks as u32,
        };
        assert_eq!(run(&store, read, Some(&out)), StoreStatus::Good);
        let mut got = vec![0u8; total];
        out.read_at(0, &mut got);
        let first_diff = got.iter().zip(&model).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "medium differs from memmove's result");
        let past = StoreOp::Copy {
            src_lba: blocks - 1,
            dst_lba: 0,
            blocks: 2,
        };
        assert_eq!(run(&store, past, None), StoreStatus::OutOfRange);
        let past = StoreOp::Copy {
            src_lba: 0,
            dst_lba: blocks - 1,
            blocks: 2,
        };
        assert_eq!(run(&store, past, None), StoreStatus::OutOfRange);
    }

    #[test]
    fn write_then_read_across_a_chunk_boundary() {
        let store = RamStore::new(512, 8192, 1024);
        let lba = (CHUNK_SIZE / 512 - 2) as u64;
        let src = buffer(4096);
        for i in 0..4096 {
            src.write_at(i, &[(i % 251) as u8]);
        }
        assert_eq!(
            run(
                &store,
                StoreOp::Write {
                    lba,
                    blocks: 8,
                    fua: false
                },
                Some(&src)
            ),
            StoreStatus::Good
        );
        let dst = buffer(4096);
        assert_eq!(
            run(&store, StoreOp::Read { lba, blocks: 8 }, Some(&dst)),
            StoreStatus::Good
        );
        let (mut a, mut b) = (vec![0; 4096], vec![0; 4096]);
        src.read_at(0, &mut a);
        dst.read_at(0, &mut b);
        assert_eq!(a, b);
        assert_eq!(
            run(&store, StoreOp::Compare { lba, blocks: 8 }, Some(&src)),
            StoreStatus::Good
        );
        src.write_at(1000, &[0xee]);
        assert_eq!(
            run(&store, StoreOp::Compare { lba, blocks: 8 }, Some(&src)),
            StoreStatus::Miscompare { offset: Some(1000) }
        );
    }

    #[test]
    fn unwritten_and_unmapped_blocks_read_zero() {
        let store = RamStore::new(4096, 1024, 256);
        let buf = buffer(8192);
        buf.fill(0, 8192, 0x5a);
        assert_eq!(
            run(
                &store,
                StoreOp::Write {
                    lba: 3,
                    blocks: 2,
                    fua: true
                },
                Some(&buf)
            ),
            StoreStatus::Good
        );
        let ranges = vec![(3u64, 1u32)].into_boxed_slice();
        assert_eq!(run(&store, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
        assert_eq!(
            run(&store, StoreOp::Read { lba: 3, blocks: 2 }, Some(&buf)),
            StoreStatus::Good
        );
        let mut out = vec![0; 8192];
        buf.read_at(0, &mut out);
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn out_of_range_and_missing_buffer_are_refused() {
        let store = RamStore::new(512, 100, 64);
        let buf = buffer(4096);
        assert_eq!(
            run(&store, StoreOp::Read { lba: 99, blocks: 2 }, Some(&buf)),
            StoreStatus::OutOfRange
        );
        assert_eq!(
            run(
                &store,
                StoreOp::Read {
                    lba: u64::MAX,
                    blocks: 2
                },
                Some(&buf)
            ),
            StoreStatus::OutOfRange
        );
        assert_eq!(
            run(&store, StoreOp::Read { lba: 0, blocks: 1 }, None),
            StoreStatus::InvalidRequest
        );
        assert_eq!(
            run(&store, StoreOp::Read { lba: 0, blocks: 9 }, Some(&buf)),
            StoreStatus::InvalidRequest
        );
    }

    #[test]
    fn write_same_replicates_the_first_block() {
        let store = RamStore::new(512, 64, 64);
        let buf = buffer(4096);
        buf.fill(0, 512, 0x11);
        assert_eq!(
            run(&store, StoreOp::WriteSame { lba: 10, blocks: 4 }, Some(&buf)),
            StoreStatus::Good
        );
        let out = buffer(4096);
        assert_eq!(
            run(&store, StoreOp::Read { lba: 9, blocks: 6 }, Some(&out)),
            StoreStatus::Good
        );
        let mut bytes = vec![0; 3072];
        out.read_at(0, &mut bytes);
        assert!(bytes[..512].iter().all(|&b| b == 0));
        assert!(bytes[512..2560].iter().all(|&b| b == 0x11));
        assert!(bytes[2560..].iter().all(|&b| b == 0));
    }

    #[test]
    fn grows_while_serving_and_refuses_to_shrink() {
        // 1.5 chunks: the last chunk is partial, and its tail becomes addressable on growth.
        let store = RamStore::new(4096, 384, 64);
        let buf = buffer(4096);
        buf.fill(0, 4096, 0x5a);
        assert_eq!(
            run(
                &store,
                StoreOp::Write {
                    lba: 383,
                    blocks: 1,
                    fua: false
                },
                Some(&buf)
            ),
            StoreStatus::Good
        );
        assert_eq!(
            run(&store, StoreOp::Read { lba: 384, blocks: 1 }, Some(&buf)),
            StoreStatus::OutOfRange
        );
        // Grow to 10 chunks while another thread writes and reads the old range.
        std::thread::scope(|scope| {
            let io = scope.spawn(|| {
                let b = buffer(4096);
                for i in 0..2000u64 {
                    b.fill(0, 4096, i as u8);
                    let lba = i % 383;
                    assert_eq!(
                        run(
                            &store,
                            StoreOp::Write {
                                lba,
                                blocks: 1,
                                fua: false
                            },
                            Some(&b)
                        ),
                        StoreStatus::Good
                    );
                }
            });
            store.resize(2560).expect("grow");
            io.join().expect("io thread");
        });
        assert_eq!(store.info().num_blocks, 2560);
        // The old last block kept its data; the grown blocks read as zeroes and are writable.
        let out = buffer(8192);
        assert_eq!(
            run(&store, StoreOp::Read { lba: 383, blocks: 2 }, Some(&out)),
            StoreStatus::Good
        );
        let mut bytes = vec![0; 8192];
        out.read_at(0, &mut bytes);
        assert!(bytes[..4096].iter().all(|&b| b == 0x5a));
        assert!(bytes[4096..].iter().all(|&b| b == 0));
        assert_eq!(
            run(
                &store,
                StoreOp::Write {
                    lba: 2559,
                    blocks: 1,
                    fua: false
                },
                Some(&buf)
            ),
            StoreStatus::Good
        );
        assert_eq!(
            run(&store, StoreOp::Read { lba: 2560, blocks: 1 }, Some(&buf)),
            StoreStatus::OutOfRange
        );
        // Shrinking is refused and changes nothing; the same size is fine.
        assert!(matches!(
            store.resize(100),
            Err(StoreError::Shrink {
                current: 2560,
                requested: 100
            })
        ));
        store.resize(2560).expect("same size");
        assert_eq!(store.info().num_blocks, 2560);
        assert!(matches!(store.resize(u64::MAX), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn the_default_resize_refuses() {
        struct Fixed;
        impl Store for Fixed {
            fn info(&self) -> StoreInfo {
                RamStore::new(512, 8, 8).info()
            }
            fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
                Err(StoreError::NoQueue { max: 0 })
            }
        }
        let e = Fixed.resize(16).unwrap_err();
        assert!(matches!(e, StoreError::FixedCapacity));
        assert!(e.to_string().contains("device"));
    }
}
