//! Tests of the simulated SCA-1 board, driven as a driver drives hardware: BAR0 through
//! `DeviceBacking::bar0`, rings and data in `PageBuffer`s mapped with `DeviceBacking::dma`,
//! interrupts on the eventfds of `enable_interrupts`. Every wait is bounded by [`WAIT`].
// UNSAFETY: the rig maps PageBuffers for the simulated device's DMA, and `DmaMapper::map` is an
// unsafe fn; the rig keeps every buffer alive and untouched by references until it is unmapped.
#![allow(unsafe_code)]

mod edges;
mod faults;
mod inline;
mod io;
mod registers;
mod resets;
mod storm;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use scst_accel_dma::PageBuffer;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::RegisterIo;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

use super::create_sim_board;
use super::SimConfig;
use super::SimHandle;
use crate::sca1::desc::opcode;
use crate::sca1::desc::Completion;
use crate::sca1::desc::Descriptor;
use crate::sca1::desc::SglEntry;
use crate::sca1::desc::CQ_PHASE;
use crate::sca1::regs::control;
use crate::sca1::regs::doorbell;
use crate::sca1::regs::global;
use crate::sca1::regs::queue;
use crate::sca1::regs::status;

/// Bound of every wait for something that must happen.
pub(super) const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
pub(super) const QUIET: Duration = Duration::from_millis(150);
/// Where data buffers are mapped.
pub(super) const DATA_IOVA: u64 = 0x4000_0000;

/// A small board: 2 queues, 4 MiB of 512-byte blocks, short timeouts.
pub(super) fn small_config() -> SimConfig {
    SimConfig {
        queues: 2,
        vectors: 2,
        num_blocks: 8192,
        max_transfer_bytes: 256 * 1024,
        stop_timeout_ms: 100,
        reset_timeout_ms: 1000,
        ..SimConfig::default()
    }
}

/// [`small_config`] with every descriptor left to the engine threads (no doorbell executed
/// by its writer): for the tests of the threads' own wake-ups.
pub(super) fn threaded_config() -> SimConfig {
    SimConfig {
        inline_doorbells: false,
        ..small_config()
    }
}

/// Poll `cond` every millisecond until it holds or [`WAIT`] passes; returns whether it held.
pub(super) fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Watch `cond` for [`QUIET`]; returns whether it held the whole time.
pub(super) fn holds_for_a_while(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        if !cond() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A test pattern that differs per `seed`.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(13)
                .wrapping_add(seed)
                .wrapping_add((i >> 9) as u8)
        })
        .collect()
}

struct Region {
    iova: u64,
    buf: PageBuffer,
    mapped: bool,
}

/// A simulated board plus the DMA memory a test maps on it. Dropping the rig resets the board
/// (ending all DMA) and unmaps every region before the buffers are freed.
pub(super) struct Rig {
    pub dev: Arc<SimDevice>,
    pub sim: SimHandle,
    regions: Vec<Region>,
    next_data: u64,
}

impl Rig {
    pub(super) fn new(config: SimConfig) -> Self {
        let (dev, sim) = create_sim_board("simtest", config).expect("create the simulated board");
        Self {
            dev,
            sim,
            regions: Vec::new(),
            next_data: DATA_IOVA,
        }
    }

    /// A small board, enabled (§7 bring-up up to READY).
    pub(super) fn enabled() -> Self {
        let rig = Self::new(small_config());
        rig.enable();
        rig
    }

    pub(super) fn bar(&self) -> &dyn RegisterIo {
        self.dev.bar0()
    }

    pub(super) fn read(&self, offset: u64) -> u32 {
        self.bar().read32(offset)
    }

    pub(super) fn write(&self, offset: u64, value: u32) {
        self.bar().write32(offset, value);
    }

    pub(super) fn qread(&self, q: u32, reg: u64) -> u32 {
        self.read(queue::reg(q, reg))
    }

    pub(super) fn qwrite(&self, q: u32, reg: u64, value: u32) {
        self.write(queue::reg(q, reg), value);
    }

    /// Set ENABLE and wait for READY.
    pub(super) fn enable(&self) {
        self.write(global::CONTROL, control::ENABLE);
        assert!(
            wait_until(|| self.read(global::STATUS) & status::READY != 0),
            "READY"
        );
    }

    /// Map a fresh zeroed buffer of `len` bytes at `iova`; returns its index. A region already
    /// mapped at `iova` with room for `len` is zeroed and reused (a queue started again).
    pub(super) fn map(&mut self, iova: u64, len: usize) -> usize {
        if let Some(i) = self
            .regions
            .iter()
            .position(|r| r.mapped && r.iova == iova && r.buf.len() >= len)
        {
            self.regions[i].buf.fill(0, len, 0);
            return i;
        }
        let buf = PageBuffer::new(len).expect("page buffer");
        // SAFETY: `buf` is owned by the rig and stays allocated until the rig's Drop has unmapped
        // it (or `unmap` did); the rig only accesses it by copies (`read_at`/`write_at`).
        unsafe { self.dev.dma().map(iova, buf.addr(), buf.len() as u64) }.expect("map");
        self.regions.push(Region {
            iova,
            buf,
            mapped: true,
        });
        self.regions.len() - 1
    }

    /// Map a data buffer at the next free data IOVA; returns `(index, iova)`.
    pub(super) fn map_data(&mut self, len: usize) -> (usize, u64) {
        let iova = self.next_data;
        let index = self.map(iova, len);
        self.next_data += (self.regions[index].buf.len() as u64).next_multiple_of(0x10_0000);
        (index, iova)
    }

    pub(super) fn buf(&self, index: usize) -> &PageBuffer {
        &self.regions[index].buf
    }

    pub(super) fn unmap(&mut self, index: usize) {
        let r = &mut self.regions[index];
        if r.mapped {
            self.dev.dma().unmap(r.iova, r.buf.len() as u64).expect("unmap");
            r.mapped = false;
        }
    }

    pub(super) fn unmap_all(&mut self) {
        for i in 0..self.regions.len() {
            self.unmap(i);
        }
    }

    pub(super) fn read_buf(&self, index: usize, offset: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.buf(index).read_at(offset, &mut out);
        out
    }

    /// Write a scatter list into buffer `index`; returns nothing (its IOVA is the buffer's).
    pub(super) fn write_sgl(&self, index: usize, entries: &[(u64, u32)]) {
        for (i, &(iova, length)) in entries.iter().enumerate() {
            let e = SglEntry {
                iova,
                length,
                reserved: 0,
            };
            self.buf(index).write_at(i * 16, e.as_bytes());
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The proof that DMA ended (§7) comes before the memory goes away.
        if let Err(e) = self.dev.reset() {
            log::error!("rig: reset failed: {e}");
        }
        for r in &mut self.regions {
            if r.mapped {
                if let Err(e) = self.dev.dma().unmap(r.iova, r.buf.len() as u64) {
                    log::error!("rig: unmap failed: {e}");
                }
                r.mapped = false;
            }
        }
    }
}

/// A descriptor for `op` with its sequence number left for [`TestQueue::push`].
pub(super) fn desc(op: u8, tag: u16, lba: u64, length: u32, addr: u64) -> Descriptor {
    Descriptor {
        opcode: op,
        tag,
        lba,
        length,
        addr,
        ..Descriptor::default()
    }
}

/// A descriptor whose data is a scatter list of `entries` at `sgl_iova`.
pub(super) fn sgl_desc(op: u8, tag: u16, lba: u64, length: u32, sgl_iova: u64, entries: u16) -> Descriptor {
    Descriptor {
        flags: crate::sca1::desc::flags::SGL,
        sgl_entries: entries,
        ..desc(op, tag, lba, length, sgl_iova)
    }
}

/// The host side of one queue: its rings, tail, sequence, head and expected phase.
pub(super) struct TestQueue {
    pub q: u32,
    pub size: u32,
    sq: usize,
    cq: usize,
    pub tail: u32,
    pub seq: u32,
    pub head: u32,
    pub phase: bool,
}

impl TestQueue {
    /// §7 per-queue bring-up on an enabled board: rings, size, vector, unmask, RUN.
    pub(super) fn start(rig: &mut Rig, q: u32, size: u32) -> Self {
        let sq_iova = 0x1000_0000 + u64::from(q) * 0x10_0000;
        let cq_iova = 0x2000_0000 + u64::from(q) * 0x10_0000;
        let sq = rig.map(sq_iova, size as usize * 32);
        let cq = rig.map(cq_iova, size as usize * 16);
        rig.bar().write64(queue::reg(q, queue::SQ_BASE), sq_iova);
        rig.bar().write64(queue::reg(q, queue::CQ_BASE), cq_iova);
        rig.qwrite(q, queue::RING_SIZE, size);
        rig.qwrite(q, queue::Q_VECTOR, q);
        rig.write(global::INT_MASK_CLEAR, 1 << q);
        rig.qwrite(q, queue::Q_CONTROL, queue::RUN);
        Self {
            q,
            size,
            sq,
            cq,
            tail: 0,
            seq: 0,
            head: 0,
            phase: true,
        }
    }

    /// Clear RUN and wait for BUSY = 0 (§6).
    pub(super) fn stop(&self, rig: &Rig) {
        rig.qwrite(self.q, queue::Q_CONTROL, 0);
        assert!(
            wait_until(|| rig.qread(self.q, queue::Q_STATUS) & queue::BUSY == 0),
            "BUSY cleared"
        );
    }

    /// Set RUN again with empty rings, as a driver restarting a queue does.
    pub(super) fn restart(&mut self, rig: &Rig) {
        rig.buf(self.cq).fill(0, rig.buf(self.cq).len(), 0);
        rig.qwrite(self.q, queue::Q_CONTROL, queue::RUN);
        self.tail = 0;
        self.seq = 0;
        self.head = 0;
        self.phase = true;
    }

    /// Start the host's rings over (as RUN 0 → 1 does on the board) without writing RUN.
    pub(super) fn restart_rings_only(&mut self, rig: &Rig) {
        rig.buf(self.cq).fill(0, rig.buf(self.cq).len(), 0);
        self.tail = 0;
        self.seq = 0;
        self.head = 0;
        self.phase = true;
    }

    /// Write `d` with the next sequence number at the tail (no doorbell).
    pub(super) fn push(&mut self, rig: &Rig, mut d: Descriptor) {
        d.seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.push_raw(rig, d);
    }

    /// Write `d` exactly as given at the tail (no doorbell).
    pub(super) fn push_raw(&mut self, rig: &Rig, d: Descriptor) {
        rig.buf(self.sq).write_at(self.tail as usize * 32, d.as_bytes());
        self.tail = (self.tail + 1) % self.size;
    }

    /// SQ_TAIL doorbell.
    pub(super) fn ring(&self, rig: &Rig) {
        rig.write(doorbell::sq_tail(self.q), self.tail);
    }

    pub(super) fn submit(&mut self, rig: &Rig, d: Descriptor) {
        self.push(rig, d);
        self.ring(rig);
    }

    /// The entry `ahead` slots past the head if its PHASE says it is written (§4): flags
    /// first, then the rest.
    pub(super) fn peek(&self, rig: &Rig, ahead: u32) -> Option<Completion> {
        let slot = (self.head + ahead) % self.size;
        let wrapped = self.head + ahead >= self.size;
        let expect = self.phase ^ wrapped;
        let mut flags = [0u8; 1];
        rig.buf(self.cq).read_at(slot as usize * 16 + 3, &mut flags);
        if (flags[0] & CQ_PHASE != 0) != expect {
            return None;
        }
        let mut raw = [0u8; 16];
        rig.buf(self.cq).read_at(slot as usize * 16, &mut raw);
        Completion::read_from_bytes(&raw).ok()
    }

    /// Consume the next completion if there is one, and write CQ_HEAD.
    pub(super) fn poll(&mut self, rig: &Rig) -> Option<Completion> {
        let entry = self.peek(rig, 0)?;
        self.head = (self.head + 1) % self.size;
        if self.head == 0 {
            self.phase = !self.phase;
        }
        rig.write(doorbell::cq_head(self.q), self.head);
        Some(entry)
    }

    /// The next completion, waiting at most [`WAIT`].
    pub(super) fn next(&mut self, rig: &Rig) -> Completion {
        let mut got = None;
        assert!(
            wait_until(|| {
                got = self.poll(rig);
                got.is_some()
            }),
            "queue {}: no completion within {WAIT:?}",
            self.q
        );
        got.expect("checked above")
    }

    /// No completion appears for a while.
    pub(super) fn stays_empty(&self, rig: &Rig) -> bool {
        holds_for_a_while(|| self.peek(rig, 0).is_none())
    }

    pub(super) fn busy(&self, rig: &Rig) -> bool {
        rig.qread(self.q, queue::Q_STATUS) & queue::BUSY != 0
    }
}

/// WRITE `data` at `lba` from a fresh buffer, then READ it back into another and return it.
pub(super) fn write_then_read(rig: &mut Rig, tq: &mut TestQueue, lba: u64, data: &[u8]) -> Vec<u8> {
    let (src, src_iova) = rig.map_data(data.len());
    rig.buf(src).write_at(0, data);
    let (dst, dst_iova) = rig.map_data(data.len());
    tq.submit(rig, desc(opcode::WRITE, 1, lba, data.len() as u32, src_iova));
    let c = tq.next(rig);
    assert_eq!(
        (c.tag, c.status, c.bytes),
        (1, 0, data.len() as u32),
        "WRITE completion {c:?}"
    );
    tq.submit(rig, desc(opcode::READ, 2, lba, data.len() as u32, dst_iova));
    let c = tq.next(rig);
    assert_eq!(
        (c.tag, c.status, c.bytes),
        (2, 0, data.len() as u32),
        "READ completion {c:?}"
    );
    rig.read_buf(dst, 0, data.len())
}
