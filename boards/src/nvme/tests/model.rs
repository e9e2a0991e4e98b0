//! A small NVMe controller model for the driver's unit tests: a doorbell write wakes the
//! model's worker thread, which runs the queue's commands; data moves through the simulated
//! IOMMU. It implements what
//! the driver uses and a few faults (hold I/O, never complete admin commands, stuck disable,
//! duplicated completions, gone). The full simulator lives in `crate::sim`; this one exists so
//! the driver's own tests run without it.

use crate::nvme::cmd::admin_opcode;
use crate::nvme::cmd::io_opcode;
use crate::nvme::cmd::sc;
use crate::nvme::cmd::sct;
use crate::nvme::cmd::Cqe;
use crate::nvme::cmd::Sqe;
use crate::nvme::cmd::Status;
use crate::nvme::cmd::IDENTIFY_LEN;
use crate::nvme::prp;
use crate::nvme::regs::offset;
use crate::nvme::regs::Cap;
use scst_accel_hal::sim::SimContext;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::sim::SimModel;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

pub const BLOCK: usize = 512;
pub const BAR0_LEN: u64 = 0x2000;

/// Model settings.
#[derive(Clone, Copy, Debug)]
pub struct ModelConfig {
    pub blocks: u64,
    pub mdts: u8,
    pub oncs: u16,
    pub mqes: u16,
    pub queues_granted: u16,
    pub vectors: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            blocks: 4096,
            mdts: 5, // 128 KiB
            oncs: crate::nvme::cmd::ONCS_DSM | crate::nvme::cmd::ONCS_WRITE_ZEROES,
            mqes: 63,
            queues_granted: 4,
            vectors: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sq {
    base: u64,
    size: u16,
    cqid: u16,
    head: u16,
    tail: u16,
}

#[derive(Clone, Copy, Debug)]
struct Cq {
    base: u64,
    size: u16,
    tail: u16,
    phase: bool,
    vector: Option<u32>,
}

#[derive(Default)]
struct State {
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
}

/// Fault switches and counters, shared with the test.
#[derive(Default)]
pub struct Knobs {
    pub hold_io: AtomicBool,
    pub drop_admin: AtomicBool,
    pub stuck_disable: AtomicBool,
    pub duplicate_completions: AtomicBool,
    pub gone: AtomicBool,
    pub access64: AtomicU64,
    pub function_resets: AtomicU64,
    pub io_commands: AtomicU64,
}

pub struct NvmeModel {
    ctx: SimContext,
    wake: crossbeam_channel::Sender<u16>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    config: ModelConfig,
    state: Mutex<State>,
    medium: Mutex<Vec<u8>>,
    pub knobs: Arc<Knobs>,
}

/// A simulated function with the model behind it.
pub fn device(config: ModelConfig) -> (Arc<SimDevice>, Arc<Knobs>) {
    let knobs = Arc::new(Knobs::default());
    let k = Arc::clone(&knobs);
    let dev = SimDevice::new("nvme-model", BAR0_LEN, config.vectors, move |ctx| {
        let (wake, doorbells) = crossbeam_channel::unbounded();
        let model = Arc::new(NvmeModel {
            ctx,
            wake,
            worker: Mutex::new(None),
            config,
            state: Mutex::new(State::default()),
            medium: Mutex::new(vec![0u8; config.blocks as usize * BLOCK]),
            knobs: k,
        });
        let m = Arc::clone(&model);
        let worker = std::thread::spawn(move || m.work(&doorbells));
        *model.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
        model
    });
    (Arc::new(dev), knobs)
}

fn status(sct: u8, sc: u8) -> Status {
    Status::new(sct, sc)
}

const OK: Status = Status::new(sct::GENERIC, sc::SUCCESS);

impl NvmeModel {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap(&self) -> Cap {
        Cap {
            mqes: self.config.mqes,
            cqr: true,
            ams: 0,
            to: 1,
            dstrd: 0,
            nssrs: false,
            css: 1,
            mpsmin: 0,
            mpsmax: 4,
        }
    }

    fn write_cc(&self, value: u32) {
        let mut s = self.lock();
        let was = s.cc & 1 != 0;
        let now = value & 1 != 0;
        s.cc = value;
        if was && !now {
            if self.knobs.stuck_disable.load(Ordering::Relaxed) {
                return;
            }
            s.sqs.clear();
            s.cqs.clear();
            s.csts = 0;
        } else if !was && now {
            let asqs = (s.aqa & 0xFFF) as u16 + 1;
            let acqs = ((s.aqa >> 16) & 0xFFF) as u16 + 1;
            let (asq, acq) = (s.asq, s.acq);
            s.sqs.insert(
                0,
                Sq {
                    base: asq,
                    size: asqs,
                    cqid: 0,
                    head: 0,
                    tail: 0,
                },
            );
            s.cqs.insert(
                0,
                Cq {
                    base: acq,
                    size: acqs,
                    tail: 0,
                    phase: true,
                    vector: None,
                },
            );
            s.csts = 1;
        }
        if now && (value >> 14) & 3 == 1 {
            s.csts = (s.csts & !0xC) | 0x8; // SHST: shutdown complete
        }
    }

    fn doorbell(&self, offset: u64, value: u32) {
        let index = (offset - offset::DOORBELLS) / 4;
        let qid = (index / 2) as u16;
        if index % 2 == 1 {
            return; // CQ head doorbell: the model never runs out of CQ space in these tests
        }
        {
            let mut s = self.lock();
            let Some(sq) = s.sqs.get_mut(&qid) else { return };
            sq.tail = value as u16 % sq.size;
        }
        let _ = self.wake.send(qid);
    }

    /// The worker: run the queue whose doorbell rang, unless a fault holds it. Ends when the
    /// model shuts down (a `u16::MAX` wake).
    fn work(&self, doorbells: &crossbeam_channel::Receiver<u16>) {
        while let Ok(qid) = doorbells.recv() {
            if qid == u16::MAX {
                return;
            }
            let held = if qid == 0 {
                &self.knobs.drop_admin
            } else {
                &self.knobs.hold_io
            };
            if !held.load(Ordering::Relaxed) {
                self.run_sq(qid);
            }
        }
    }

    /// Run every command between head and tail of `qid`.
    pub fn run_sq(&self, qid: u16) {
        loop {
            let (sq, addr) = {
                let mut s = self.lock();
                let Some(sq) = s.sqs.get_mut(&qid) else { return };
                if sq.head == sq.tail {
                    return;
                }
                let addr = sq.base + u64::from(sq.head) * 64;
                sq.head = (sq.head + 1) % sq.size;
                (*sq, addr)
            };
            let mut raw = [0u8; 64];
            if self.ctx.iommu.dma_read(addr, &mut raw).is_err() {
                continue;
            }
            let Ok(sqe) = Sqe::read_from_bytes(&raw) else {
                return;
            };
            let (st, dw0) = if qid == 0 { self.admin(&sqe) } else { self.io(&sqe) };
            self.post(sq.cqid, qid, sq.head, sqe.cid, st, dw0);
            if qid != 0 && self.knobs.duplicate_completions.load(Ordering::Relaxed) {
                self.post(sq.cqid, qid, sq.head, sqe.cid, st, dw0);
            }
        }
    }

    fn post(&self, cqid: u16, sqid: u16, sq_head: u16, cid: u16, st: Status, dw0: u32) {
        let (addr, phase, vector) = {
            let mut s = self.lock();
            let Some(cq) = s.cqs.get_mut(&cqid) else { return };
            let addr = cq.base + u64::from(cq.tail) * 16;
            let phase = cq.phase;
            cq.tail += 1;
            if cq.tail == cq.size {
                cq.tail = 0;
                cq.phase = !cq.phase;
            }
            (addr, phase, cq.vector)
        };
        let cqe = Cqe {
            dw0,
            dw1: 0,
            sq_head,
            sq_id: sqid,
            cid,
            status: (st.0 << 1) | u16::from(phase),
        };
        let _ = self.ctx.iommu.dma_write(addr, cqe.as_bytes());
        if let Some(v) = vector {
            self.ctx.interrupts.raise(v);
        }
    }

    fn admin(&self, c: &Sqe) -> (Status, u32) {
        let qid = (c.cdw10 & 0xFFFF) as u16;
        let size = (c.cdw10 >> 16) as u16 + 1;
        let invalid_qid = status(sct::COMMAND_SPECIFIC, 0x01);
        match c.opcode {
            admin_opcode::IDENTIFY => {
                let mut d = [0u8; IDENTIFY_LEN];
                match c.cdw10 & 0xFF {
                    1 => {
                        d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        d[4..24].copy_from_slice(b"MODEL-SERIAL        ");
                        d[24..64].copy_from_slice(b"scst-accel test NVMe                    ");
                        d[64..72].copy_from_slice(b"1.0     ");
                        d[77] = self.config.mdts;
                        d[512] = 0x66;
                        d[513] = 0x44;
                        d[516..520].copy_from_slice(&1u32.to_le_bytes());
                        d[520..522].copy_from_slice(&self.config.oncs.to_le_bytes());
                        d[525] = 1;
                    }
                    0 if c.nsid == 1 => {
                        d[0..8].copy_from_slice(&self.config.blocks.to_le_bytes());
                        d[8..16].copy_from_slice(&self.config.blocks.to_le_bytes());
                        d[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
                    }
                    2 => d[0..4].copy_from_slice(&1u32.to_le_bytes()),
                    _ => return (status(sct::GENERIC, 0x02), 0),
                }
                let _ = self.ctx.iommu.dma_write(c.prp1, &d);
                (OK, 0)
            }
            admin_opcode::SET_FEATURES if c.cdw10 & 0xFF == 7 => {
                let n = u32::from(self.config.queues_granted - 1);
                (OK, n | (n << 16))
            }
            admin_opcode::CREATE_CQ => {
                let mut s = self.lock();
                if qid == 0 || s.cqs.contains_key(&qid) || size > self.config.mqes + 1 {
                    return (invalid_qid, 0);
                }
                let vector = (c.cdw11 & 2 != 0).then_some(c.cdw11 >> 16);
                s.cqs.insert(
                    qid,
                    Cq {
                        base: c.prp1,
                        size,
                        tail: 0,
                        phase: true,
                        vector,
                    },
                );
                (OK, 0)
            }
            admin_opcode::CREATE_SQ => {
                let cqid = (c.cdw11 >> 16) as u16;
                let mut s = self.lock();
                if qid == 0 || s.sqs.contains_key(&qid) || !s.cqs.contains_key(&cqid) {
                    return (invalid_qid, 0);
                }
                s.sqs.insert(
                    qid,
                    Sq {
                        base: c.prp1,
                        size,
                        cqid,
                        head: 0,
                        tail: 0,
                    },
                );
                (OK, 0)
            }
            admin_opcode::DELETE_SQ => {
                // NVMe 1.4 §5.7: commands not yet run are aborted, with completions posted,
                // before the deletion completes.
                let Some(sq) = self.lock().sqs.get(&qid).copied() else {
                    return (invalid_qid, 0);
                };
                let mut head = sq.head;
                while head != sq.tail {
                    let mut raw = [0u8; 64];
                    let _ = self.ctx.iommu.dma_read(sq.base + u64::from(head) * 64, &mut raw);
                    head = (head + 1) % sq.size;
                    let cid = Sqe::read_from_bytes(&raw).map_or(0, |s| s.cid);
                    self.post(
                        sq.cqid,
                        qid,
                        head,
                        cid,
                        status(sct::GENERIC, sc::ABORTED_SQ_DELETION),
                        0,
                    );
                }
                self.lock().sqs.remove(&qid);
                (OK, 0)
            }
            admin_opcode::DELETE_CQ => match self.lock().cqs.remove(&qid) {
                Some(_) => (OK, 0),
                None => (invalid_qid, 0),
            },
            _ => (status(sct::GENERIC, sc::INVALID_OPCODE), 0),
        }
    }

    fn io(&self, c: &Sqe) -> (Status, u32) {
        self.knobs.io_commands.fetch_add(1, Ordering::Relaxed);
        let slba = u64::from(c.cdw10) | (u64::from(c.cdw11) << 32);
        let blocks = u64::from(c.cdw12 & 0xFFFF) + 1;
        let in_range = |slba: u64, n: u64| slba.checked_add(n).is_some_and(|e| e <= self.config.blocks);
        let mut medium = self.medium.lock().unwrap_or_else(|p| p.into_inner());
        let span = |slba: u64, n: u64| slba as usize * BLOCK..(slba + n) as usize * BLOCK;
        match c.opcode {
            io_opcode::READ | io_opcode::WRITE => {
                if !in_range(slba, blocks) {
                    return (status(sct::GENERIC, sc::LBA_OUT_OF_RANGE), 0);
                }
                let len = blocks * BLOCK as u64;
                let iommu = &self.ctx.iommu;
                let ranges = prp::walk(c.prp1, c.prp2, len, 4096, |list, i| {
                    let mut e = [0u8; 8];
                    let _ = iommu.dma_read(list + 8 * i as u64, &mut e);
                    u64::from_le_bytes(e)
                });
                let mut at = slba as usize * BLOCK;
                for (addr, n) in ranges {
                    let n = n as usize;
                    let r = if c.opcode == io_opcode::READ {
                        iommu.dma_write(addr, &medium[at..at + n])
                    } else {
                        iommu.dma_read(addr, &mut medium[at..at + n])
                    };
                    if r.is_err() {
                        return (status(sct::GENERIC, 0x06), 0); // internal error
                    }
                    at += n;
                }
                (OK, 0)
            }
            io_opcode::FLUSH => (OK, 0),
            io_opcode::WRITE_ZEROES => {
                if !in_range(slba, blocks) {
                    return (status(sct::GENERIC, sc::LBA_OUT_OF_RANGE), 0);
                }
                medium[span(slba, blocks)].fill(0);
                (OK, 0)
            }
            io_opcode::DSM => {
                let mut range = [0u8; 16];
                let _ = self.ctx.iommu.dma_read(c.prp1, &mut range);
                let n = u64::from(u32::from_le_bytes([range[4], range[5], range[6], range[7]]));
                let start = u64::from_le_bytes(range[8..16].try_into().unwrap_or_default());
                if !in_range(start, n) {
                    return (status(sct::GENERIC, sc::LBA_OUT_OF_RANGE), 0);
                }
                if c.cdw11 & 4 != 0 {
                    medium[span(start, n)].fill(0);
                }
                (OK, 0)
            }
            _ => (status(sct::GENERIC, sc::INVALID_OPCODE), 0),
        }
    }
}

impl SimModel for NvmeModel {
    fn read32(&self, offset: u64) -> u32 {
        if self.knobs.gone.load(Ordering::Relaxed) {
            return u32::MAX;
        }
        let s = self.lock();
        match offset {
            offset::CAP => self.cap().to_bits() as u32,
            0x04 => (self.cap().to_bits() >> 32) as u32,
            offset::VS => 0x0001_0400,
            offset::CC => s.cc,
            offset::CSTS => s.csts,
            offset::AQA => s.aqa,
            offset::ASQ => s.asq as u32,
            0x2C => (s.asq >> 32) as u32,
            offset::ACQ => s.acq as u32,
            0x34 => (s.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        if self.knobs.gone.load(Ordering::Relaxed) {
            return;
        }
        match offset {
            offset::CC => self.write_cc(value),
            offset::AQA => self.lock().aqa = value,
            offset::ASQ => {
                let mut s = self.lock();
                s.asq = (s.asq & !0xFFFF_FFFF) | u64::from(value)
            }
            0x2C => {
                let mut s = self.lock();
                s.asq = (s.asq & 0xFFFF_FFFF) | (u64::from(value) << 32)
            }
            offset::ACQ => {
                let mut s = self.lock();
                s.acq = (s.acq & !0xFFFF_FFFF) | u64::from(value)
            }
            0x34 => {
                let mut s = self.lock();
                s.acq = (s.acq & 0xFFFF_FFFF) | (u64::from(value) << 32)
            }
            o if o >= offset::DOORBELLS => self.doorbell(o, value),
            _ => {}
        }
    }

    fn read64(&self, offset: u64) -> u64 {
        self.knobs.access64.fetch_add(1, Ordering::Relaxed);
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.knobs.access64.fetch_add(1, Ordering::Relaxed);
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    fn function_reset(&self) {
        self.knobs.function_resets.fetch_add(1, Ordering::Relaxed);
        *self.lock() = State::default();
    }

    fn shutdown(&self) {
        let _ = self.wake.send(u16::MAX);
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}
