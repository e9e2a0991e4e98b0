//! Tests of the simulated NVMe controller, driven as a driver drives hardware but with
//! nothing of the driver: raw BAR0 accesses through `DeviceBacking::bar0`, hand-built
//! submission entries in `MappedRegion`s on the device's IOMMU, completions polled by their
//! phase tag. Every wait is bounded by [`WAIT`].

mod admin;
mod faults;
mod fused;
mod inline;
mod io;
mod queues;
mod registers;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::IovaAllocator;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::DmaMapper;
use scst_accel_hal::RegisterIo;

use super::create_nvme_sim;
use super::spec::admin as admin_op;
use super::spec::cc;
use super::spec::csts;
use super::spec::reg;
use super::spec::Cqe;
use super::spec::Sqe;
use super::spec::Status;
use super::NvmeSimConfig;
use super::NvmeSimHandle;
use super::QueueDeletion;

/// Bound of every wait for something that must happen.
pub(super) const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
pub(super) const QUIET: Duration = Duration::from_millis(150);
/// An IOVA the tests never map.
pub(super) const UNMAPPED: u64 = 0xDEAD_0000;
/// Entries of the admin queues the rig creates.
pub(super) const ADMIN_ENTRIES: u16 = 16;
/// CC for enabling: EN, IOSQES = 6, IOCQES = 4.
pub(super) const CC_ENABLE: u32 = cc::EN | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);

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

/// The host side of one queue pair.
pub(super) struct TestQueue {
    pub size: u16,
    pub sq: usize,
    pub cq: usize,
    pub tail: u16,
    pub head: u16,
    pub phase: bool,
}

/// A simulated controller plus the DMA memory a test maps on it. Dropping the rig resets the
/// function (ending all DMA) before the memory is unmapped and freed.
pub(super) struct Rig {
    pub dev: Arc<SimDevice>,
    pub sim: NvmeSimHandle,
    pub config: NvmeSimConfig,
    iovas: Arc<IovaLock>,
    mem: Vec<MappedRegion>,
    /// Indexed by queue id; `None` where the test made no queue.
    pub queues: Vec<Option<TestQueue>>,
    next_cid: u16,
}

/// Small controller: 2 I/O queues, 3 vectors, 8192 blocks of 512 bytes.
pub(super) fn small_config() -> NvmeSimConfig {
    NvmeSimConfig {
        num_blocks: 8192,
        queues: 2,
        interrupts: 3,
        ..NvmeSimConfig::default()
    }
}

impl Rig {
    pub(super) fn new(config: NvmeSimConfig) -> Self {
        let (dev, sim) = create_nvme_sim("nvt", config.clone()).expect("create the simulated controller");
        Self {
            dev,
            sim,
            config,
            iovas: Arc::new(IovaLock::new(IovaAllocator::new(0x10_0000, 1 << 32))),
            mem: Vec::new(),
            queues: Vec::new(),
            next_cid: 1,
        }
    }

    /// A small controller, enabled, with the admin queue pair only.
    pub(super) fn enabled() -> Self {
        let mut rig = Self::new(small_config());
        rig.enable();
        rig
    }

    /// A small controller, enabled, with I/O queue pair 1 of `entries` entries on vector 1.
    pub(super) fn with_io_queue(entries: u16) -> Self {
        let mut rig = Self::enabled();
        rig.create_io_queue(1, entries);
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

    pub(super) fn csts(&self) -> u32 {
        self.read(reg::CSTS)
    }

    /// Map `len` zeroed bytes; returns the region's index.
    pub(super) fn alloc(&mut self, len: usize) -> usize {
        let region = DmaRegion::new(len).expect("DMA region");
        let mapper: Arc<dyn DmaMapper> = Arc::clone(self.dev.iommu()) as Arc<dyn DmaMapper>;
        self.mem
            .push(MappedRegion::new(region, mapper, Arc::clone(&self.iovas)).expect("map"));
        self.mem.len() - 1
    }

    pub(super) fn iova(&self, index: usize) -> u64 {
        self.mem[index].iova()
    }

    pub(super) fn region(&self, index: usize) -> &DmaRegion {
        self.mem[index].region()
    }

    pub(super) fn read_mem(&self, index: usize, offset: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.region(index).read_at(offset, &mut out);
        out
    }

    /// Program the admin queue (16 entries each) and enable; waits for RDY.
    pub(super) fn enable(&mut self) {
        let sq = self.alloc(4096);
        let cq = self.alloc(4096);
        let entries = u32::from(ADMIN_ENTRIES - 1);
        self.write(reg::AQA, entries | (entries << 16));
        self.bar().write64(reg::ASQ, self.iova(sq));
        self.bar().write64(reg::ACQ, self.iova(cq));
        self.write(reg::CC, CC_ENABLE);
        assert!(
            wait_until(|| self.csts() & csts::RDY != 0),
            "CSTS.RDY after enable"
        );
        self.queues.clear();
        self.queues.push(Some(TestQueue {
            size: ADMIN_ENTRIES,
            sq,
            cq,
            tail: 0,
            head: 0,
            phase: true,
        }));
    }

    /// CC.EN = 0 and wait for RDY = 0.
    pub(super) fn disable(&mut self) {
        self.write(reg::CC, 0);
        assert!(
            wait_until(|| self.csts() & csts::RDY == 0),
            "CSTS.RDY cleared after CC.EN = 0"
        );
    }

    /// Create CQ and SQ `qid` of `entries` entries (CQ on vector `qid`, interrupts on).
    pub(super) fn create_io_queue(&mut self, qid: u16, entries: u16) {
        let cq = self.alloc(usize::from(entries) * 16);
        let sq = self.alloc(usize::from(entries) * 64);
        let c = self.admin(create_cq(qid, entries, self.iova(cq), qid, true));
        assert_eq!(status(&c), Status::SUCCESS, "create CQ {qid}");
        let c = self.admin(create_sq(qid, entries, self.iova(sq), qid));
        assert_eq!(status(&c), Status::SUCCESS, "create SQ {qid}");
        while self.queues.len() <= usize::from(qid) {
            self.queues.push(None);
        }
        self.queues[usize::from(qid)] = Some(TestQueue {
            size: entries,
            sq,
            cq,
            tail: 0,
            head: 0,
            phase: true,
        });
    }

    fn queue(&mut self, qid: u16) -> &mut TestQueue {
        self.queues[usize::from(qid)]
            .as_mut()
            .expect("queue made by the test")
    }

    /// Write `sqes` (each with a fresh CID, returned) at queue `qid`'s tail, then ring its
    /// doorbell once for all of them (as the two commands of a fused operation must be).
    pub(super) fn submit_together(&mut self, qid: u16, sqes: &[Sqe]) -> Vec<u16> {
        let mut cids = Vec::new();
        for &sqe in sqes {
            let mut sqe = sqe;
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            sqe.cdw0 = (sqe.cdw0 & 0xFFFF) | (u32::from(cid) << 16);
            let (sq, tail, size) = {
                let q = self.queue(qid);
                (q.sq, q.tail, q.size)
            };
            self.region(sq).write_obj(usize::from(tail) * 64, &sqe);
            self.queue(qid).tail = (tail + 1) % size;
            cids.push(cid);
        }
        let tail = self.queue(qid).tail;
        self.write(reg::DOORBELLS + u64::from(qid) * 8, u32::from(tail));
        cids
    }

    /// Write `sqe` (with a fresh CID, returned) at queue `qid`'s tail and ring its doorbell.
    pub(super) fn submit(&mut self, qid: u16, sqe: Sqe) -> u16 {
        self.submit_together(qid, &[sqe])[0]
    }

    /// The next completion on queue `qid` if it arrives within `within`; consumes it and
    /// rings the CQ head doorbell.
    pub(super) fn next_completion_within(&mut self, qid: u16, within: Duration) -> Option<Cqe> {
        let (cq, head, phase, size) = {
            let q = self.queue(qid);
            (q.cq, q.head, q.phase, q.size)
        };
        let offset = usize::from(head) * 16;
        let deadline = Instant::now() + within;
        loop {
            // The phase tag is bit 0 of byte 14; check it before reading the rest (§4.6).
            let tag = self.region(cq).load_u8_acquire(offset + 14) & 1 != 0;
            if tag == phase {
                break;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let cqe: Cqe = self.region(cq).read_obj(offset);
        let head = (head + 1) % size;
        let q = self.queue(qid);
        q.head = head;
        if head == 0 {
            q.phase = !q.phase;
        }
        self.write(reg::DOORBELLS + u64::from(qid) * 8 + 4, u32::from(head));
        Some(cqe)
    }

    /// The next completion on queue `qid`; panics if none arrives within [`WAIT`].
    pub(super) fn next_completion(&mut self, qid: u16) -> Cqe {
        self.next_completion_within(qid, WAIT)
            .unwrap_or_else(|| panic!("no completion on queue {qid} within {WAIT:?}"))
    }

    /// Submit on `qid` and wait for that command's completion.
    pub(super) fn command(&mut self, qid: u16, sqe: Sqe) -> Cqe {
        let cid = self.submit(qid, sqe);
        let cqe = self.next_completion(qid);
        assert_eq!(cqe.cid, cid, "completion for the command just submitted");
        assert_eq!(cqe.sqid, qid, "SQID");
        cqe
    }

    /// An admin command.
    pub(super) fn admin(&mut self, sqe: Sqe) -> Cqe {
        self.command(0, sqe)
    }

    /// Write `data` to LBA `slba` through a fresh buffer; returns the completion status.
    pub(super) fn write_blocks(&mut self, slba: u64, data: &[u8]) -> Status {
        let buf = self.alloc(data.len());
        self.region(buf).write_at(0, data);
        let blocks = (data.len() / self.config.block_size as usize) as u32;
        let sqe = io::rw_contiguous(self, super::spec::nvm::WRITE, slba, blocks, buf);
        status(&self.command(1, sqe))
    }

    /// Read `blocks` blocks at `slba` through a fresh buffer.
    pub(super) fn read_blocks(&mut self, slba: u64, blocks: u32) -> (Status, Vec<u8>) {
        let len = blocks as usize * self.config.block_size as usize;
        let buf = self.alloc(len);
        let sqe = io::rw_contiguous(self, super::spec::nvm::READ, slba, blocks, buf);
        let st = status(&self.command(1, sqe));
        (st, self.read_mem(buf, 0, len))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The proof that DMA ended comes before the memory goes away.
        if let Err(e) = self.dev.reset() {
            log::error!("rig: reset failed: {e}");
        }
    }
}

/// The status of a completion.
pub(super) fn status(cqe: &Cqe) -> Status {
    Status::from_field(cqe.status)
}

/// An SQE with `opcode` and namespace `nsid`.
pub(super) fn sqe(opcode: u8, nsid: u32) -> Sqe {
    Sqe {
        cdw0: u32::from(opcode),
        nsid,
        ..Sqe::default()
    }
}

/// Create I/O Completion Queue.
pub(super) fn create_cq(qid: u16, entries: u16, iova: u64, vector: u16, ien: bool) -> Sqe {
    Sqe {
        prp1: iova,
        cdw10: u32::from(qid) | (u32::from(entries.wrapping_sub(1)) << 16),
        cdw11: 1 | if ien { 2 } else { 0 } | (u32::from(vector) << 16),
        ..sqe(admin_op::CREATE_IO_CQ, 0)
    }
}

/// Create I/O Submission Queue.
pub(super) fn create_sq(qid: u16, entries: u16, iova: u64, cqid: u16) -> Sqe {
    Sqe {
        prp1: iova,
        cdw10: u32::from(qid) | (u32::from(entries.wrapping_sub(1)) << 16),
        cdw11: 1 | (u32::from(cqid) << 16),
        ..sqe(admin_op::CREATE_IO_SQ, 0)
    }
}

/// Identify with `cns` for `nsid` into `prp1`/`prp2`.
pub(super) fn identify(cns: u8, nsid: u32, prp1: u64, prp2: u64) -> Sqe {
    Sqe {
        prp1,
        prp2,
        cdw10: u32::from(cns),
        ..sqe(admin_op::IDENTIFY, nsid)
    }
}
