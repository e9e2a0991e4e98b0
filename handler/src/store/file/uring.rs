//! The io_uring engine of the file store: one ring per [`StoreQueue`], so the submit side needs
//! no lock (a queue belongs to one frontend worker thread).
//!
//! - READ and WRITE are IORING_OP_READ/WRITE straight from/to the command buffer's address (no
//!   copy); the medium is the ring's fixed file [`DATA_FILE`] (registered once per ring: the
//!   kernel then skips the fd table lookup and reference per request). A FUA write carries
//!   RWF_DSYNC in its rw_flags, so it is on stable media when its CQE arrives (SBC-3 §5.39).
//!   FLUSH is not on the ring: it goes to the thread pool like the ops below, where
//!   [`Shared::flush_in_turn`] runs one fdatasync at a time for every queue of the store
//!   (Linux reports a write-back error to one of two fdatasyncs racing on one description,
//!   which could not tell whose pages it was of; the file store's module doc). One ring per
//!   queue cannot keep that order across the store's queues without a thread of its own
//!   waiting, and an FSYNC on a ring ran on a kernel worker thread (io-wq) anyway.
//! - A WRITE to a regular file first reads the file's size, so that a write past the end of a
//!   file truncated under the store is refused as the threads refuse it (`file/failure.rs`).
//!   On a file system that answers a stat from memory (`failure::stat_is_local`: ext4, XFS,
//!   Btrfs, F2FS, tmpfs, ramfs) the worker fstats in `submit` (a fraction of a microsecond).
//!   On any other the read is an IORING_OP_STATX on the ring (the kernel's io-wq runs it),
//!   whose CQE pushes the write or answers it: the worker's thread never stats the file
//!   itself there, since on NFS or FUSE each stat after a write is a round trip to the server,
//!   and a hung hard-mounted server would hold the worker inside `submit`, where the
//!   frontend's stuck-in-store detection cannot run. The price there is one more trip through
//!   io-wq per write. Block devices have no size to check.
//! - A short transfer is resubmitted for its remainder; EOF or an error hands the whole request
//!   to the thread pool, which retries it and locates the failing block (block by block, as
//!   the thread engine does), so the sense data names the failing LBA. Nothing partial is
//!   ever Good.
//! - Every other op (WRITE SAME, WRITE ZEROES, UNMAP, VERIFY, COMPARE, GET LBA STATUS) goes to
//!   the thread pool as with the thread engine: they need scratch memory, ioctls or
//!   SEEK_DATA, and none is on the data path's hot side. The Store contract orders nothing
//!   between requests in flight, so splitting them between the ring and the pool changes no
//!   semantics.
//! - The ring signals the queue's eventfd (IORING_REGISTER_EVENTFD), the same one the pool's
//!   completions signal, so [`StoreQueue::notify_fd`] is unchanged; `reap` drains the CQ
//!   without entering the kernel unless resubmissions wait.
//! - No registered buffers: SCST's command buffers come from the SGV pool, which grows and
//!   shrinks with the load, so a buffer table would need an update syscall per new buffer
//!   and pins memory the pool means to give back; the per-request page pinning it saves is
//!   small next to the transfer. No SQPOLL: a kernel thread spinning per ring costs a core.
//! - Bounded: at most [`QUEUE_DEPTH`] requests per queue (ring and pool together), beyond
//!   which `submit` answers QueueFull; the ring has that many SQEs and twice the CQEs, so
//!   neither overflows. The kernel's own workers for what it cannot issue without blocking
//!   (io-wq: buffered writes, and every STATX off a local file system, which a hung server
//!   holds there) are capped at the store's I/O thread count per worker
//!   thread (IORING_REGISTER_IOWQ_MAX_WORKERS). `abort_all` cancels (IORING_OP_ASYNC_CANCEL) and waits at most
//!   [`ABORT_WAIT`] (the deadline escalation's `start_abort_all` does not wait: the
//!   cancelled requests complete through later reaps); drop cancels too and waits at most [`JOIN_BOUND`] in all, for the ring
//!   and, when the queue holds the pool's last reference, for the I/O threads' joins (one
//!   deadline, not one each). A request the kernel still holds after that keeps its buffer
//!   forever (leaked, logged as an error): the kernel may still write into it, so it must
//!   never go back to the pool; the store's shared state is leaked with it, so the image's
//!   claim (flock or O_EXCL) is held until the process ends, not given to a next handler
//!   while those writes may land.
// UNSAFETY: pushing an SQE hands the kernel a buffer address; the safety argument is that the
// slot owning the request (and so the buffer's Arc) lives until the CQE of that SQE is reaped.
#![allow(unsafe_code)]

use super::FileQueue;
use super::Shared;
use super::ABORT_WAIT;
use super::JOIN_BOUND;
use super::QUEUE_DEPTH;
use crate::store::StoreCompletion;
use crate::store::StoreError;
use crate::store::StoreOp;
use crate::store::StoreQueue;
use crate::store::StoreRequest;
use crate::store::StoreStatus;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use io_uring::IoUring;
use io_uring::Probe;
use scst_accel_hal::locks;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The ring's fixed file of reads and writes: [`Shared::data`].
const DATA_FILE: types::Fixed = types::Fixed(0);
/// user_data of the cancel SQEs: never a slot index.
const CANCEL: u64 = 1 << 63;
/// The most one SQE moves (the kernel's own cap on a read/write is just under 2 GiB).
const MAX_PIECE: usize = 1 << 30;
/// EAGAIN/EINTR resubmissions of one request before it goes to the threads.
const RETRIES: u32 = 8;

/// RWF_DSYNC as the SQE holds it.
const RWF_DSYNC: u32 = libc::RWF_DSYNC as u32;

/// The rw_flags of a built SQE (a union with the other ops' flags, FSYNC's among them), read
/// from the entry the kernel is handed. `squeue::Entry` is `#[repr(C)]` over the kernel's
/// `struct io_uring_sqe`, whose rw_flags is the u32 at byte 28 (`include/uapi/linux/io_uring.h`:
/// opcode, flags, ioprio, fd, off, addr, len, then the flags union).
pub(super) fn sqe_rw_flags(entry: &squeue::Entry) -> u32 {
    const RW_FLAGS: usize = 28;
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `Entry` is `#[repr(C)]` with the 64-byte `io_uring_sqe` as its only field (the
    // size is asserted above), a C struct without padding that the crate builds from all
    // zeroes, so each of its 64 bytes is initialized; `[u8; 64]` needs no alignment, and the
    // reference lives no longer than `entry`'s borrow.
    let bytes = unsafe { &*std::ptr::from_ref(entry).cast::<[u8; 64]>() };
    u32::from_ne_bytes([
        bytes[RW_FLAGS],
        bytes[RW_FLAGS + 1],
        bytes[RW_FLAGS + 2],
        bytes[RW_FLAGS + 3],
    ])
}

/// Whether this kernel offers an io_uring with the ops the engine uses; if not, why, in words
/// an operator can act on.
pub(super) fn available() -> Result<(), String> {
    let ring = IoUring::new(2).map_err(explain)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        format!("the kernel cannot list its io_uring operations ({e}): it predates Linux 5.6")
    })?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Statx::CODE, "STATX"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!(
                "the kernel's io_uring lacks IORING_OP_{name} (Linux 5.6 or later has it)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// The next ring this thread sets up fails with ENOMEM, as io_uring_setup(2) does under a
    /// locked-memory limit on kernels before 5.12 (tests of the fallback).
    pub(super) static REFUSE_NEXT_RING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Why io_uring_setup(2) failed.
pub(super) fn explain(e: io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (built without CONFIG_IO_URING, or a seccomp filter hides it)".into()
        }
        Some(libc::EPERM) if sysctl == "2" => {
            "io_uring is disabled by sysctl kernel.io_uring_disabled = 2".into()
        }
        Some(libc::EPERM) if sysctl == "1" => {
            "kernel.io_uring_disabled = 1 allows io_uring only to root and the group kernel.io_uring_group"
                .into()
        }
        Some(libc::EPERM) => {
            format!("io_uring_setup was refused ({e}): a seccomp filter or a security module")
        }
        Some(libc::ENOMEM) => {
            format!("no memory for an io_uring ({e}): raise the locked-memory limit (ulimit -l) on kernels before 5.12")
        }
        _ => format!("io_uring_setup failed: {e}"),
    }
}

/// What a slot's SQE does: a READ or WRITE of `len` bytes at byte `start`, `done` of them moved
/// so far (FLUSH and every other op go to the threads).
#[derive(Debug)]
struct Transfer {
    write: bool,
    fua: bool,
    start: u64,
    len: usize,
    done: usize,
    /// The command buffer's address of the transfer's first byte.
    addr: u64,
}

/// A request the kernel holds. The request (and so its buffer's Arc) stays here until the CQE
/// of its last SQE is reaped: that is what keeps the address in the SQE valid.
#[derive(Debug)]
struct Slot {
    req: StoreRequest,
    io: Transfer,
    /// abort_all cancelled it: no resubmission, a partial transfer is Aborted.
    aborted: bool,
    retries: u32,
    /// The SQE in flight is the IORING_OP_STATX of a write to a regular file, into the slot's
    /// entry of [`UringQueue::stats`]: its CQE pushes the write, or answers it when the file
    /// was truncated under the store (`Shared::past_end`).
    size_check: bool,
}

/// One worker's queue on io_uring: reads and writes on its own ring, the rest (FLUSH too) on the
/// shared thread pool through `threads`.
pub(super) struct UringQueue {
    ring: IoUring,
    store: Arc<Shared>,
    /// The thread engine's queue of this worker: the other ops, and the retries of failed
    /// transfers. Its eventfd is the ring's.
    threads: FileQueue,
    /// Indexed by the SQE's user_data.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Answered without the kernel (a bad range, a malformed request), or reaped from the
    /// CQ during abort_all: handed out by the next `reap`.
    ready: Vec<StoreCompletion>,
    /// SQEs pushed and not yet taken by the kernel.
    unsubmitted: bool,
    /// The CQEs of one drain (kept: no allocation per reap).
    cqes: Vec<(u64, i32)>,
    /// Requests for the I/O threads (a ring transfer's retry, or the search for its failing
    /// block) that the thread pool had no room for: handed over at the next submit or reap,
    /// in order, once the pool has room ([`UringQueue::hand_over_deferred`]).
    deferred: VecDeque<StoreRequest>,
    submitted: u64,
    /// One statx buffer per slot, for its write's size check (allocated once: none per write).
    /// The kernel writes a slot's entry until the STATX's CQE, so like the slots they are
    /// leaked, never freed, while the kernel may still hold one (`leak_held`).
    stats: Box<[libc::statx]>,
}

impl UringQueue {
    /// A ring for `threads`'s worker, signalling its eventfd, whose kernel workers (io-wq: what
    /// the kernel cannot issue without blocking, buffered writes and STATX) are capped at
    /// `kernel_workers`. On failure `threads` is given back, for the caller to use alone.
    // The error carries the queue back (it is large) so the caller can serve without a ring.
    #[allow(clippy::result_large_err)]
    pub(super) fn new(
        store: Arc<Shared>,
        threads: FileQueue,
        kernel_workers: u32,
    ) -> Result<Self, (io::Error, FileQueue)> {
        let entries = QUEUE_DEPTH as u32;
        #[cfg(test)]
        if REFUSE_NEXT_RING.with(|r| r.replace(false)) {
            return Err((io::Error::from_raw_os_error(libc::ENOMEM), threads));
        }
        let ring = match IoUring::new(entries) {
            Ok(ring) => ring,
            Err(e) => return Err((e, threads)),
        };
        let registered = ring
            .submitter()
            .register_files(&[store.data.as_raw_fd()])
            .and_then(|()| {
                ring.submitter()
                    .register_eventfd(threads.notify().as_fd().as_raw_fd())
            });
        if let Err(e) = registered {
            return Err((e, threads));
        }
        // No thread per request in the kernel either (Linux 5.15+; older ones keep their own
        // bound, so a refusal only costs the cap).
        let mut max = [kernel_workers.max(1), kernel_workers.max(1)];
        if let Err(e) = ring.submitter().register_iowq_max_workers(&mut max) {
            log::debug!("io_uring: cannot cap the kernel's io-wq workers: {e}");
        }
        Ok(Self {
            ring,
            store,
            threads,
            slots: (0..QUEUE_DEPTH).map(|_| None).collect(),
            free: (0..QUEUE_DEPTH).rev().collect(),
            ready: Vec::new(),
            unsubmitted: false,
            cqes: Vec::with_capacity(2 * QUEUE_DEPTH),
            deferred: VecDeque::new(),
            submitted: 0,
            // SAFETY: `statx` is a C struct of integers only (no pointer, no enum, no
            // reference), for which all zeroes is a valid value.
            stats: vec![unsafe { std::mem::zeroed::<libc::statx>() }; QUEUE_DEPTH].into_boxed_slice(),
        })
    }

    fn slots_in_use(&self) -> usize {
        QUEUE_DEPTH - self.free.len()
    }

    /// Push the SQE of slot `index` (its next piece); false when the SQ is full even after
    /// handing the kernel what it holds.
    fn push(&mut self, index: usize) -> bool {
        let Some(slot) = &self.slots[index] else {
            return false;
        };
        let entry = match slot.io {
            // The size check of a write to a regular file: statx(2) of the data fd, run by the
            // kernel's io-wq, never by the worker's thread (STATX takes no fixed file).
            Transfer { .. } if slot.size_check => opcode::Statx::new(
                types::Fd(self.store.data.as_raw_fd()),
                c"".as_ptr(),
                std::ptr::from_mut(&mut self.stats[index]).cast::<types::statx>(),
            )
            .flags(libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT)
            .mask(libc::STATX_SIZE)
            .build(),
            Transfer {
                write,
                fua,
                start,
                len,
                done,
                addr,
            } => {
                let n = (len - done).min(MAX_PIECE) as u32;
                let at = start + done as u64;
                let ptr = (addr + done as u64) as *mut u8;
                if write {
                    let flags = if fua { libc::RWF_DSYNC } else { 0 };
                    opcode::Write::new(DATA_FILE, ptr, n)
                        .offset(at)
                        .rw_flags(flags)
                        .build()
                } else {
                    opcode::Read::new(DATA_FILE, ptr, n).offset(at).build()
                }
            }
        };
        let entry = entry.user_data(index as u64);
        let pushed = self.push_entry(&entry);
        // Counted from the SQE as pushed, not from what was meant to be in it.
        if pushed
            && entry.get_opcode() == u32::from(opcode::Write::CODE)
            && sqe_rw_flags(&entry) & RWF_DSYNC != 0
        {
            self.store.dsync_writes.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: the entry's buffer (if any) is the command buffer of the request held in
            // its slot, inside the buffer (checked by `checked_buffer` and `range` before the
            // slot was filled), and the slot keeps the request, hence the buffer's Arc, until
            // this SQE's CQE is reaped (`complete`), or forever if it never is (`Drop`). A
            // STATX's buffer is the slot's entry of `stats`, whose allocation lives as long as
            // the queue and is leaked with the slots; its path is a static empty C string, its
            // fd the store's data fd, kept open by the queue's (or the leak's) `Arc<Shared>`. A
            // cancel SQE points at no memory.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                self.unsubmitted = true;
                return true;
            }
            // SQ full: let the kernel take what it has, then try once more.
            self.submit_ring();
        }
        false
    }

    /// Hand the pushed SQEs to the kernel (io_uring_enter without waiting).
    fn submit_ring(&mut self) {
        if !self.unsubmitted {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.unsubmitted = !self.ring.submission().is_empty(),
            // Busy or interrupted: the SQEs stay in the SQ, the next submit or reap retries.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => {
                log::debug!("io_uring submit: {e}; retried on the next submit or reap");
            }
            Err(e) => log::error!(
                "{}: io_uring submit failed: {e}; the requests stay queued and are retried",
                self.store.path.display()
            ),
        }
        if self.unsubmitted {
            // No CQE may come to wake the worker: make it reap (which submits again) rather
            // than leave the requests waiting for its next submit.
            self.threads.notify().signal();
        }
    }

    /// Answer a request now (no I/O): reaped by the next `reap`, which the eventfd announces.
    fn answer(&mut self, tag: u64, status: StoreStatus) {
        self.ready.push(StoreCompletion { tag, status });
        self.threads.notify().signal();
    }

    /// Give a request to the thread pool (a retry, or the search for a failing block); if it
    /// has no room now (the pool's channel is shared by every queue of the disk), keep it for
    /// when it has: answering the ring's error instead would report a medium error where
    /// there may be none (an EAGAIN that ran out of retries), unlocated.
    /// Only a full pool waits: any other refusal (the I/O threads are gone) answers `status`,
    /// the ring's own error.
    fn delegate(&mut self, req: StoreRequest, status: StoreStatus) {
        if !self.deferred.is_empty() {
            self.deferred.push_back(req);
            return;
        }
        let tag = req.tag;
        let mut one = vec![req];
        match self.threads.submit_requests(&mut one) {
            Ok(()) => {}
            Err(StoreError::QueueFull { .. }) => {
                log::debug!(
                    "{}: the I/O threads have no room; tag {tag} waits for it",
                    self.store.path.display()
                );
                self.deferred.extend(one.pop());
            }
            Err(e) => {
                log::warn!(
                    "{}: cannot hand a request to the I/O threads: {e}",
                    self.store.path.display()
                );
                self.answer(tag, status);
            }
        }
    }

    /// Hand the deferred requests to the thread pool, in order, while it takes them; if the
    /// I/O threads are gone, the rest are answered Aborted (never started).
    fn hand_over_deferred(&mut self) {
        while let Some(req) = self.deferred.pop_front() {
            let tag = req.tag;
            let mut one = vec![req];
            match self.threads.submit_requests(&mut one) {
                Ok(()) => {}
                Err(StoreError::QueueFull { .. }) => {
                    if let Some(req) = one.pop() {
                        self.deferred.push_front(req);
                    }
                    return;
                }
                Err(e) => {
                    log::warn!(
                        "{}: cannot hand a request to the I/O threads: {e}",
                        self.store.path.display()
                    );
                    self.answer(tag, StoreStatus::Aborted);
                }
            }
        }
    }

    /// Move the CQ's completions into `ready`, resubmitting what is not finished.
    fn drain_cq(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        {
            let mut cq = self.ring.completion();
            cq.sync();
            cqes.extend(cq.map(|cqe| (cqe.user_data(), cqe.result())));
        }
        for &(user_data, result) in &cqes {
            if user_data & CANCEL != 0 {
                continue;
            }
            self.complete(user_data as usize, result);
        }
        cqes.clear();
        self.cqes = cqes;
        self.submit_ring();
    }

    /// The CQE of slot `index` with `result` (bytes, or -errno).
    fn complete(&mut self, index: usize, result: i32) {
        let Some(mut slot) = self.slots.get_mut(index).and_then(Option::take) else {
            log::error!("io_uring completion for slot {index}, which holds no request; ignored");
            return;
        };
        let tag = slot.req.tag;
        if slot.size_check {
            slot.size_check = false;
            let status = self.size_checked(index, &slot, result);
            if let Some(status) = status {
                self.free.push(index);
                drop(slot);
                self.ready.push(StoreCompletion { tag, status });
            } else {
                // The file reaches the write's end: now the write itself.
                self.refill(index, slot);
            }
            return;
        }
        let Transfer {
            write,
            fua,
            start,
            len,
            done,
            ..
        } = &mut slot.io;
        let (write, fua, start, len) = (*write, *fua, *start, *len);
        let status = if result > 0 {
            *done += result as usize;
            // Written back, wholly or in part (an aborted one): the next flush owes it.
            if write && !fua && (*done >= len || slot.aborted) {
                self.store.wrote_back(start);
            }
            if *done >= len {
                StoreStatus::Good
            } else if slot.aborted {
                StoreStatus::Aborted
            } else {
                // Short: the rest goes again from where it stopped.
                return self.refill(index, slot);
            }
        } else if slot.aborted {
            // Cancelled after part of it was written back (a short write refilled): owed.
            if write && !fua && *done > 0 {
                self.store.wrote_back(start);
            }
            StoreStatus::Aborted
        } else if matches!(-result, libc::EAGAIN | libc::EINTR) && slot.retries < RETRIES {
            slot.retries += 1;
            return self.refill(index, slot);
        } else {
            let what = if write { "write" } else { "read" };
            let failed_lba = self.store.lba_of(start + *done as u64);
            let failure = if write {
                StoreStatus::WriteError { lba: failed_lba }
            } else {
                StoreStatus::ReadError { lba: failed_lba }
            };
            let error = if result == 0 {
                io::Error::from(io::ErrorKind::UnexpectedEof)
            } else {
                io::Error::from_raw_os_error(-result)
            };
            if let Some(status) = self.store.not_a_medium_error(&error, what) {
                status
            } else {
                // Before the threads redo it: a redo that succeeds must not hide the cache
                // flush that may have failed with it.
                if write && fua {
                    self.store.fua_write_failed(&error);
                }
                log::warn!(
                    "{}: io_uring {what} failed near LBA {failed_lba}: {error}; the I/O threads retry it and locate the failing block",
                    self.store.path.display()
                );
                self.free.push(index);
                self.delegate(slot.req, failure);
                return;
            }
        };
        self.free.push(index);
        // Let go of the buffer before completing, as the threads do.
        drop(slot);
        self.ready.push(StoreCompletion { tag, status });
    }

    /// The CQE of the STATX before slot `index`'s write (`result`: 0, or -errno): the answer
    /// when the write must not go (aborted, or past the end of a file truncated under the
    /// store), `None` when it may. A failed statx lets it go, as the threads' failed fstat
    /// does: the write then reports what the medium says.
    fn size_checked(&self, index: usize, slot: &Slot, result: i32) -> Option<StoreStatus> {
        if slot.aborted {
            return Some(StoreStatus::Aborted);
        }
        let Transfer { start, len, .. } = slot.io;
        let stat = &self.stats[index];
        if result < 0 || stat.stx_mask & libc::STATX_SIZE == 0 {
            log::warn!(
                "{}: statx before a write: {}",
                self.store.path.display(),
                if result < 0 {
                    io::Error::from_raw_os_error(-result).to_string()
                } else {
                    "no size returned".to_owned()
                }
            );
            return None;
        }
        self.store.past_end(start, len, stat.stx_size)
    }

    /// Put `slot` back at `index` and push its next piece; if the SQ has no room, the request
    /// goes to the threads (which redo it whole).
    fn refill(&mut self, index: usize, slot: Slot) {
        self.slots[index] = Some(slot);
        if !self.push(index) {
            let slot = self.slots[index].take().expect("just put back");
            self.free.push(index);
            let Transfer {
                write, start, done, ..
            } = slot.io;
            let lba = self.store.lba_of(start + done as u64);
            let status = if write {
                StoreStatus::WriteError { lba }
            } else {
                StoreStatus::ReadError { lba }
            };
            self.delegate(slot.req, status);
        }
    }

    /// What the ring does for `req`: `None` for the ops the threads run, an answer for a
    /// request that needs no I/O (out of range, malformed).
    fn slot_io(&self, req: &StoreRequest) -> Result<Option<Transfer>, StoreStatus> {
        let buffer = self.store.checked_buffer(req)?;
        match (&req.op, buffer) {
            (StoreOp::Read { lba, blocks }, Some(buf)) | (StoreOp::Write { lba, blocks, .. }, Some(buf)) => {
                let (start, len) = self.store.range(*lba, *blocks).ok_or(StoreStatus::OutOfRange)?;
                let write = matches!(req.op, StoreOp::Write { .. });
                if write && !self.store.stat_on_ring.load(Ordering::Relaxed) {
                    // A local file system: the stat is answered from memory, on this thread.
                    if let Some(status) = self.store.truncated_at(start, len) {
                        return Err(status);
                    }
                }
                Ok(Some(Transfer {
                    write,
                    fua: matches!(req.op, StoreOp::Write { fua: true, .. }),
                    start,
                    len,
                    done: 0,
                    addr: buf.buffer.addr() + buf.offset as u64,
                }))
            }
            // FLUSH goes to the threads: one fdatasync at a time for the whole store (module doc).
            _ => Ok(None),
        }
    }

    /// Tests: take `req` into a slot as if its SQE had gone to the kernel (none is pushed) and
    /// deliver its CQE with `result` (bytes, or -errno), as the kernel would.
    #[cfg(test)]
    pub(super) fn complete_as_the_kernel(&mut self, req: StoreRequest, result: i32) {
        // As if its size check had passed: `result` is the write's or the read's.
        let index = self.hold_as_if_in_the_kernel(req);
        self.complete(index, result);
        self.submit_ring();
    }

    /// Tests: take `req` into a slot as if its SQE were in the kernel and never came back (no
    /// SQE is pushed: a cancel finds nothing, so only the drop's deadline ends the wait); its
    /// slot's index.
    #[cfg(test)]
    pub(super) fn hold_as_if_in_the_kernel(&mut self, req: StoreRequest) -> usize {
        let io = self
            .slot_io(&req)
            .expect("a request that needs I/O")
            .expect("a ring op");
        let index = self.free.pop().expect("a free slot");
        self.slots[index] = Some(Slot {
            req,
            io,
            aborted: false,
            retries: 0,
            size_check: false,
        });
        index
    }

    /// Cancel every request the kernel holds; returns how many.
    fn cancel_ring(&mut self) -> usize {
        let mut n = 0;
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            slot.aborted = true;
            n += 1;
            let cancel = opcode::AsyncCancel::new(index as u64)
                .build()
                .user_data(CANCEL | index as u64);
            if !self.push_entry(&cancel) {
                log::warn!("io_uring: no room to cancel slot {index}; it completes on its own");
            }
        }
        self.submit_ring();
        n
    }

    /// Start aborting what is in flight (the two `abort_all`s): the requests waiting for room
    /// on the threads answered Aborted, the ring's cancelled, the threads' not started
    /// aborted. Returns how many were in flight, and how many of them on the threads.
    fn abort_start(&mut self) -> (usize, usize) {
        let n = self.in_flight();
        if n == 0 {
            return (0, 0);
        }
        // Waiting for room on the threads, not started: Aborted, as the threads' own.
        for req in std::mem::take(&mut self.deferred) {
            self.ready.push(StoreCompletion {
                tag: req.tag,
                status: StoreStatus::Aborted,
            });
        }
        self.cancel_ring();
        (n, self.threads.abort_start())
    }

    /// Wait until the ring holds nothing and `settled` says the threads are done, or until
    /// `deadline`; true if everything came back.
    fn wait_settled(&mut self, deadline: Instant, settled: impl Fn(&FileQueue) -> bool) -> bool {
        loop {
            self.drain_cq();
            if self.slots_in_use() == 0 && settled(&self.threads) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            locks::sleep(Duration::from_millis(1));
        }
    }

    /// Keep whatever the kernel still holds alive forever: it may still move data into or out
    /// of those buffers, which must then never be reused; and the store's shared state, whose
    /// claim on the image must outlive those writes.
    fn leak_held(&mut self, waited: Duration) {
        let held: Vec<Slot> = self.slots.iter_mut().filter_map(Option::take).collect();
        if held.is_empty() {
            return;
        }
        log::error!(
            "{}: {} io_uring requests still in the kernel after {waited:?}; their command buffers are \
             leaked (never reused) rather than freed under the kernel; check the device (dmesg)",
            self.store.path.display(),
            held.len()
        );
        for slot in held {
            std::mem::forget(slot.req);
        }
        // A STATX still in the kernel writes into its slot's entry.
        std::mem::forget(std::mem::take(&mut self.stats));
        // The store's shared state lives on with them, as with an I/O thread left detached:
        // it owns the image's claim (the flock, or the O_EXCL open), which must not go while
        // the kernel may still write the image, or a handler started next would serve it
        // alongside those writes. Dropping the store no longer frees the claim: the process
        // must end (and the kernel let go of the ring) first.
        std::mem::forget(Arc::clone(&self.store));
    }
}

impl StoreQueue for UringQueue {
    fn submit(
        &mut self,
        _token: &mut crate::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        self.hand_over_deferred();
        let mut refused: Option<StoreError> = None;
        let mut rest = Vec::new();
        for req in batch.drain(..) {
            if refused.is_some() {
                rest.push(req);
                continue;
            }
            let in_flight = self.in_flight();
            if in_flight >= QUEUE_DEPTH {
                refused = Some(StoreError::QueueFull { in_flight });
                rest.push(req);
                continue;
            }
            match self.slot_io(&req) {
                Err(status) => {
                    self.answer(req.tag, status);
                    self.submitted += 1;
                }
                Ok(None) => {
                    let mut one = vec![req];
                    if let Err(e) = self.threads.submit_requests(&mut one) {
                        refused = Some(e);
                        rest.append(&mut one);
                    } else {
                        self.submitted += 1;
                    }
                }
                Ok(Some(io)) => {
                    let index = self.free.pop().expect("fewer than QUEUE_DEPTH in flight");
                    // As the threads' writes: a file truncated under the store is not grown.
                    // Off a local file system its size is read by a STATX on the ring, not
                    // here (see `size_check`; a local one was stat'ed when the slot was planned).
                    let size_check = self.store.regular
                        && self.store.stat_on_ring.load(Ordering::Relaxed)
                        && matches!(io, Transfer { write: true, .. });
                    self.slots[index] = Some(Slot {
                        req,
                        io,
                        aborted: false,
                        retries: 0,
                        size_check,
                    });
                    if self.push(index) {
                        self.submitted += 1;
                    } else {
                        let slot = self.slots[index].take().expect("just filled");
                        self.free.push(index);
                        refused = Some(StoreError::QueueFull { in_flight });
                        rest.push(slot.req);
                    }
                }
            }
        }
        self.submit_ring();
        batch.append(&mut rest);
        refused.map_or(Ok(()), Err)
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        // The threads' reap clears the shared eventfd first: a CQE posted after it signals
        // again, so the fd is readable whenever a completion waits.
        let mut n = self.threads.reap(out);
        self.drain_cq();
        // The threads' completions just reaped made room for what waited for it.
        self.hand_over_deferred();
        n += self.ready.len();
        out.append(&mut self.ready);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.threads.notify_fd()
    }

    fn in_flight(&self) -> usize {
        self.slots_in_use() + self.ready.len() + self.deferred.len() + self.threads.in_flight()
    }

    /// As the threads: what has not started completes Aborted (the ring's requests are
    /// cancelled with IORING_OP_ASYNC_CANCEL), what is under way finishes with its outcome
    /// (a partial transfer is Aborted, never Good). Waits at most [`ABORT_WAIT`] in all.
    fn abort_all(&mut self) -> usize {
        let (n, pool) = self.abort_start();
        if n == 0 {
            return 0;
        }
        let deadline = Instant::now() + ABORT_WAIT;
        if !self.wait_settled(deadline, |threads| threads.abort_settled(pool)) {
            log::error!(
                "{}: abort: {} io_uring requests not completed within {ABORT_WAIT:?}; reaped when they do",
                self.store.path.display(),
                self.slots_in_use()
            );
        }
        n
    }

    /// As `abort_all`, without the wait: a slot keeps its request, and so its buffer, until
    /// the CQE of its cancelled SQE is reaped, and the threads' jobs keep theirs until answered.
    fn start_abort_all(&mut self) -> usize {
        self.abort_start().0
    }

    fn dump(&self) -> Option<String> {
        Some(format!(
            "file store queue (io_uring): {} in flight ({} in the ring, {} on the I/O threads, {} waiting for room on them), {} answered and not reaped, {} submitted",
            self.in_flight(),
            self.slots_in_use(),
            self.threads.in_flight(),
            self.deferred.len(),
            self.ready.len(),
            self.submitted
        ))
    }
}

impl Drop for UringQueue {
    /// The kernel must be done with every buffer before the slots let go of them: cancel, wait,
    /// and leak what it still holds. One deadline, [`JOIN_BOUND`] from now, bounds that wait
    /// and, when this queue holds the pool's last reference, the joins of its I/O threads.
    fn drop(&mut self) {
        let deadline = Instant::now() + JOIN_BOUND;
        // What this queue left to the threads and they have not started is not run.
        self.threads.abandon();
        if self.slots_in_use() > 0 {
            self.cancel_ring();
            if !self.wait_settled(deadline, |_| true) {
                self.leak_held(JOIN_BOUND);
                self.threads.release_pool(deadline);
                return;
            }
        }
        // The kernel tears a ring down asynchronously (a workqueue drops its registered files
        // some time after the ring's fd is closed), and the image's lock (flock on a file, the
        // O_EXCL claim on a device) lives as long as any reference to the image's open file:
        // give the file back now, with nothing in flight, so that a store opened right after
        // this one is dropped (a restart) finds the image free.
        if let Err(e) = self.ring.submitter().unregister_files() {
            log::warn!("io_uring: unregistering the image's files: {e}; its lock is freed when the kernel tears the ring down");
        }
        self.threads.release_pool(deadline);
    }
}
