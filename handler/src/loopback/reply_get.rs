//! The REPLY_AND_GET family (`dev_user_reply_get_cmd`, `dev_user_reply_get_multi`, spec §3.2,
//! §3.3): the replies of one ioctl, then its fetches, under as few acquisitions of the device
//! lock and as few user-memory syscalls as the kernel's observable behaviour allows.
//!
//! What stays exactly as the kernel does it:
//! - replies are processed one after the other, each fully (checks, copies, effects) before
//!   the next one is looked at; the first failing reply stops the ioctl, its index is
//!   `replies_done` and nothing is fetched;
//! - a reply array that is unreadable from element `k` on processes `0..k` and fails at `k`
//!   with `EFAULT` (the kernel copies one element at a time);
//! - a data-in or sense buffer that faults fails its command and the ioctl with `EFAULT`;
//! - only the first fetch may block; `EAGAIN` after it is success; user memory is never
//!   touched with the lock held (spec §5.6, asserted in `uaccess`).
//!
//! What is batched, and why that is not observable:
//! - the reply array is read in one `process_vm_readv` (it stops at the first bad element,
//!   which is the element the kernel's per-element copy would fault on);
//! - the data-in and sense of the EXEC replies are read ahead, in one `process_vm_readv` for
//!   the rest of the array, when the first reply needing a copy is reached. A reply's
//!   prefetched bytes are used only if its own plan, computed when its turn comes, asks for
//!   exactly the ranges read; anything else (a fault, a plan that changed, a pin) is copied
//!   on its own as before. Reading user memory has no side effect, and the handler may not
//!   touch a buffer it has replied with (the real kernel reads the pinned pages even later,
//!   when the target sends the data);
//! - the initiator's data-out of all the WRITEs fetched goes into their buffers in one
//!   `process_vm_writev` after the fetches (the real kernel has it in the pinned pages before
//!   EXEC is delivered, so this copy is the model's own). If buffer `k` faults, command `k`
//!   fails as before (internal failure, `EFAULT`, `cmds_cnt` = k) and the commands fetched
//!   after it, which never reached the user, go back to the head of the ready list as they
//!   were, as the kernel re-queues a ucmd whose copy to user space faulted (§3.2);
//! - the lock is held from the first reply to the last fetch and dropped only for user copies
//!   and waits; completions and wake-ups collected meanwhile are delivered when it drops.
//!   One thread taking several ready commands in a row is a schedule the kernel allows too.
//!
//! Not done: per-worker ready queues. The kernel has one ready list per device, ordered (mgmt
//! first, PARSE/ALLOC_MEM and HEAD OF QUEUE after them, then the rest, spec §3.1), and any
//! thread takes its head; queues per worker would deliver in another order and let a command
//! wait on a busy worker while another is idle, which the real module never does.

use super::device::Delivery;
use super::device::Device;
use super::device::Effects;
use super::device::StateGuard;
use super::device::Token;
use super::device::BLOCKING_FETCH_CAP;
use super::device::WAIT_SLICE;
use super::ownership;
use super::ownership::Fingerprint;
use super::reply::Copied;
use super::reply::ExecRanges;
use super::reply::Plan;
use super::sense;
use super::spare::SpareBuffers;
use super::uaccess::UserMemory;
use crate::abi::GetCmd;
use crate::abi::MultiBuffer;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use std::time::Instant;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

/// Most data-in bytes read ahead in one go (besides the reply whose turn it is): bounds the
/// memory a batch of large READ replies holds at once; the rest is read in the next batch.
const PREFETCH_BYTES_MAX: usize = 8 << 20;

/// Where fetched commands go: the one struct of REPLY_AND_GET_CMD or the slots of
/// REPLY_AND_GET_MULTI.
pub(crate) trait CmdSlots {
    /// Slots the caller's buffer has.
    fn capacity(&self) -> usize;
    /// Slot `i` (< capacity).
    fn slot(&mut self, i: usize) -> &mut GetCmd;
}

impl CmdSlots for GetCmd {
    fn capacity(&self) -> usize {
        1
    }
    fn slot(&mut self, _: usize) -> &mut GetCmd {
        self
    }
}

impl CmdSlots for MultiBuffer {
    fn capacity(&self) -> usize {
        MultiBuffer::capacity(self)
    }
    fn slot(&mut self, i: usize) -> &mut GetCmd {
        self.cmd_mut(i)
    }
}

/// How an ioctl of the family ended.
pub(crate) struct Outcome {
    /// Replies processed successfully (the index of the failing one on a reply error).
    pub replies_done: usize,
    /// Commands written to slots `0..delivered`.
    pub delivered: usize,
    pub result: Result<(), Errno>,
}

/// Read `count` 56-byte replies from `addr` in one syscall. Returns the replies read and
/// whether element `replies.len()` (< count) faulted.
pub(crate) fn read_replies(mem: &UserMemory, addr: u64, count: usize) -> (Vec<ReplyCmd>, bool) {
    let size = std::mem::size_of::<ReplyCmd>() as u64;
    // An array that wraps the address space faults where it wraps.
    let addressable = (0..count)
        .take_while(|&i| addr.checked_add(i as u64 * size).is_some())
        .count();
    let mut replies: Vec<ReplyCmd> = (0..addressable).map(|_| ReplyCmd::new_zeroed()).collect();
    let read = {
        let mut ranges: Vec<(u64, &mut [u8])> = replies
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (addr + i as u64 * size, r.as_mut_bytes()))
            .collect();
        mem.read_ranges(&mut ranges)
    };
    replies.truncate(read);
    (replies, read < count)
}

/// Replies read ahead of their turn, by index in the ioctl's array.
#[derive(Default)]
struct Prefetch {
    entries: Vec<Prefetched>,
}

struct Prefetched {
    index: usize,
    ranges: ExecRanges,
    data: Vec<u8>,
    sense: Vec<u8>,
}

impl Prefetch {
    /// Read all `wanted` ranges in one syscall; keep those read completely.
    fn read(mem: &UserMemory, spare: &SpareBuffers, wanted: Vec<(usize, ExecRanges)>) -> Self {
        let mut entries: Vec<Prefetched> = wanted
            .into_iter()
            .map(|(index, ranges)| Prefetched {
                index,
                ranges,
                data: spare.take(),
                sense: Vec::new(),
            })
            .collect();
        let complete = {
            let mut iov: Vec<(u64, usize, &mut Vec<u8>)> = Vec::with_capacity(2 * entries.len());
            for e in &mut entries {
                iov.push((e.ranges.data.0, e.ranges.data.1, &mut e.data));
                iov.push((e.ranges.sense.0, e.ranges.sense.1, &mut e.sense));
            }
            mem.read_ranges_to_vecs(&mut iov)
        };
        // Entry k is usable iff both its ranges (2k, 2k+1) were read.
        entries.truncate(complete / 2);
        Self { entries }
    }

    /// The copies of reply `index` if they were read ahead for exactly its plan's ranges.
    fn take(&mut self, index: usize, plan: &Plan) -> Option<Copied> {
        let ranges = plan.exec_ranges()?;
        let pos = self.entries.iter().position(|e| e.index == index)?;
        let e = self.entries.swap_remove(pos);
        (e.ranges == ranges).then_some(Copied::Exec {
            pin_failed: false,
            data_sense: Ok((e.data, e.sense)),
        })
    }
}

/// A held device lock and the effects collected under it.
struct Held<'a> {
    dev: &'a Device,
    fx: Effects,
}

impl Held<'_> {
    /// Drop the lock (keeping poll readiness right) and deliver the effects.
    fn unlock(&mut self, mut st: StateGuard<'_>) {
        st.sync_poll();
        drop(st);
        self.dev.finish(std::mem::take(&mut self.fx));
    }
}

/// One ioctl of the family: process `replies` in order (`array_faulted`: the element after
/// them could not be read), then fetch up to `wanted` commands into `slots`, the first one
/// blocking if `may_block` and the device is blocking.
pub(crate) fn reply_and_get(
    dev: &Device,
    token: &mut Token<'_>,
    replies: &[ReplyCmd],
    array_faulted: bool,
    slots: &mut dyn CmdSlots,
    wanted: usize,
    may_block: bool,
) -> Outcome {
    let mem = &*dev.memory;
    let mut held = Held {
        dev,
        fx: Effects::default(),
    };
    let mut st = dev.lock(token);
    let mut prefetch = Prefetch::default();
    for (i, reply) in replies.iter().enumerate() {
        let plan = match st.reply_begin(reply, &mut held.fx) {
            Ok(plan) => plan,
            Err(e) => {
                held.unlock(st);
                return failed(i, e);
            }
        };
        let copied = match plan.copied_without_user_memory() {
            Some(c) => c,
            None => match prefetch.take(i, &plan) {
                Some(c) => c,
                None => {
                    // Read this reply's ranges and those of the EXEC replies after it in one
                    // syscall, with the lock dropped; copy alone what cannot be read ahead.
                    let mut wanted_ranges: Vec<(usize, ExecRanges)> = Vec::new();
                    if let Some(r) = plan.exec_ranges() {
                        wanted_ranges.push((i, r));
                        let mut bytes = r.data.1;
                        for (j, later) in replies.iter().enumerate().skip(i + 1) {
                            if let Some(r) = st.peek_exec_ranges(later) {
                                bytes += r.data.1;
                                if bytes > PREFETCH_BYTES_MAX {
                                    break;
                                }
                                wanted_ranges.push((j, r));
                            }
                        }
                    }
                    held.unlock(st);
                    let copied = if wanted_ranges.is_empty() {
                        plan.copy(mem, &dev.spare)
                    } else {
                        prefetch = Prefetch::read(mem, &dev.spare, wanted_ranges);
                        match prefetch.take(i, &plan) {
                            Some(c) => c,
                            // A fault: copy alone, which fails exactly as it always did.
                            None => plan.copy(mem, &dev.spare),
                        }
                    };
                    st = dev.lock(token);
                    copied
                }
            },
        };
        if let Err(e) = st.reply_apply(plan, copied, &mut held.fx) {
            held.unlock(st);
            return failed(i, e);
        }
    }
    if array_faulted {
        held.unlock(st);
        return failed(replies.len(), Errno::EFAULT);
    }
    if wanted > 0 && (!held.fx.scsi.is_empty() || !held.fx.tm.is_empty()) {
        // The replies' completions reach the initiator before the fetch, as the kernel's
        // `scst_cmd_done` does inside the reply: its next commands can then be fetched now.
        held.unlock(st);
        st = dev.lock(token);
    }

    let deadline = Instant::now() + BLOCKING_FETCH_CAP;
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut result = Ok(());
    'slots: for i in 0..wanted {
        if i >= slots.capacity() {
            // Beyond the caller's buffer: the kernel's copy would fault here.
            result = Err(Errno::EFAULT);
            break;
        }
        let blocking_slot = may_block && i == 0;
        loop {
            st.run_core_work(&mut held.fx);
            if let Some(d) = st.dequeue_for_user(&mut held.fx) {
                deliveries.push(d);
                continue 'slots;
            }
            if !held.fx.scsi.is_empty() || !held.fx.tm.is_empty() {
                // Deliver completions before sleeping or returning; then look again.
                held.unlock(st);
                st = dev.lock(token);
                continue;
            }
            let now = Instant::now();
            if !blocking_slot || !st.blocking || now >= deadline {
                if i == 0 {
                    let interrupted = blocking_slot && st.blocking;
                    result = Err(if interrupted { Errno::EINTR } else { Errno::EAGAIN });
                }
                // EAGAIN after the first slot is success (spec §3.3).
                break 'slots;
            }
            if !held.fx.is_empty() {
                // Wake-ups of the replies go out before this thread sleeps.
                held.unlock(st);
                st = dev.lock(token);
                continue;
            }
            st.sync_poll();
            st = st.wait_timeout(&dev.cond, WAIT_SLICE.min(deadline - now));
        }
    }
    // Buffers going back to the handler are checked, and the initiator's data-out of every
    // EXEC fetched goes into its buffer in one syscall, with the lock dropped: the checks
    // first, before a data-out overwrites a reused buffer, and before this fetch returns, so
    // before the handler may write there again (`ownership.rs`).
    let with_data: Vec<usize> = (0..deliveries.len())
        .filter(|&k| deliveries[k].data_out.is_some())
        .collect();
    let check_ownership = st.sgv.check_ownership;
    let verify = |deliveries: &[Delivery]| {
        let checks = deliveries.iter().filter_map(|d| d.ownership_check);
        if checks.clone().next().is_none() {
            return;
        }
        mem.count_ownership_violations(ownership::verify(mem, &dev.name, checks));
    };
    let mut delivered = deliveries.len();
    let mut checked = false;
    if !with_data.is_empty() {
        held.unlock(st);
        verify(&deliveries);
        checked = true;
        let written = {
            let ranges: Vec<(u64, &[u8])> = with_data
                .iter()
                .filter_map(|&k| deliveries[k].data_out.as_ref())
                .map(|(addr, data)| (*addr, data.as_slice()))
                .collect();
            mem.write_ranges(&ranges)
        };
        // Written into the handler's buffers: the model is done with those data-out buffers,
        // once it noted what the handler must leave in them (`ownership.rs`).
        for &k in with_data.iter().take(written) {
            if let Some((_, data)) = deliveries[k].data_out.take() {
                deliveries[k].data_out_written = check_ownership.then(|| Fingerprint::of(&data));
                dev.spare.give(data);
            }
        }
        st = dev.lock(token);
        for d in &deliveries {
            if let Some(fingerprint) = d.data_out_written {
                st.note_data_out(d.cmd, fingerprint);
            }
        }
        if let Some(&bad) = with_data.get(written) {
            // The pinned pages vanished: the core fails that command (internal failure) and
            // the ioctl returns EFAULT with the commands before it delivered; the ones after
            // it never reached the user and go back to the head of the ready list.
            let d = &deliveries[bad];
            if let Some((addr, _)) = &d.data_out {
                log::warn!("loopback {}: cannot copy data-out to {addr:#x}", dev.name);
            }
            if let Some(id) = d.cmd {
                if let Some(u) = st.ucmds.get_mut(&d.msg.cmd_h) {
                    u.sent_to_user = false;
                }
                st.complete_with_sense(id, sense::INTERNAL_FAILURE, &mut held.fx);
            }
            for d in deliveries[bad + 1..].iter_mut().rev() {
                st.undeliver(d, &mut held.fx);
            }
            delivered = bad;
            result = Err(Errno::EFAULT);
        }
    }
    for (i, d) in deliveries.iter().take(delivered).enumerate() {
        // Only payload_len bytes are written; the rest of the caller's struct stays stale
        // (spec §2.3).
        slots.slot(i).as_mut_bytes()[..d.len].copy_from_slice(&d.msg.as_bytes()[..d.len]);
    }
    held.unlock(st);
    if !checked {
        // No data-out was written: the buffers are as the handler left them until this
        // fetch returns.
        verify(&deliveries);
    }
    Outcome {
        replies_done: replies.len(),
        delivered,
        result,
    }
}

fn failed(replies_done: usize, e: Errno) -> Outcome {
    Outcome {
        replies_done,
        delivered: 0,
        result: Err(e),
    }
}
