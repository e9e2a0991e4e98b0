//! One registered loopback device: the state behind the per-device lock (the model of
//! `udev_cmd_threads.cmd_list_lock`, spec §5.6) and the dequeue step of REPLY_AND_GET's fetch
//! (spec §3.2; the ioctl itself is in `reply_get`).
//!
//! Lock rules (spec §5.6), kept by construction: the state is mutated only inside
//! [`Device::with`] / the reply-and-fetch loop of `reply_get`; user memory is never copied while the lock is held
//! (copies happen between a "plan" and an "apply" step); completions to the initiator and
//! condvar wake-ups are collected in [`Effects`] and delivered after the lock is dropped.

use super::core_parse::ParsedCdb;
use super::ownership::Check;
use super::ownership::Fingerprint;
use super::sense::SenseCode;
use super::session::ScsiCompletion;
use super::session::TmCompletion;
use super::sgv::SgvPool;
use super::spare::SpareBuffers;
use super::uaccess::UserMemory;
use super::ucmd::Ucmd;
use super::ucmd::UcmdKind;
use crate::abi;
use crate::abi::GetCmd;
use crate::abi::Opt;
use crate::int_map::IntMap;
use crate::int_map::IntSet;
use crate::transport::Errno;
use crossbeam_channel::Sender;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedCondvar;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::io::Read;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// A blocking fetch is a condvar wait that re-checks at this period; it never spins.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(250);
/// Upper bound of one blocking fetch. The kernel would wait until a signal; the model returns
/// `EINTR` (as a non-SA_RESTART signal would, spec §3.2) so that no wait is unbounded.
pub(crate) const BLOCKING_FETCH_CAP: Duration = Duration::from_secs(60);
/// `scst_suspend_activity` timeout used by SET_OPTIONS and FLUSH_CACHE (spec §3.6, §3.9).
pub(crate) const SUSPEND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a thread finding the device lock held spins before it sleeps on it. The kernel's
/// `cmd_list_lock` is a spinlock: its waiters never sleep, and its holders cannot be preempted.
/// The model's holders can be, so the spin is bounded; within the bound a wait costs no futex
/// sleep and no wake-up by the holder's unlock. The sections are short (a REPLY_AND_GET drops
/// the lock for user copies and waits), but a fetch of a full batch holds it for some µs: 20 µs
/// took the 4 KiB random read through the loopback from about 264k to 304k IOPS (medians of
/// three) and its futex calls from 0.17 to 0.03 per command; 5 µs gave half the gain, 50 µs no
/// more (docs/performance.md, "Keeping both CPUs busy").
const DEVICE_LOCK_SPIN: Duration = Duration::from_micros(20);

/// Level-triggered readiness of one open file (spec §3.9 poll): a pipe holding one byte while
/// the ready list or the core's active list is non-empty. A pipe instead of an eventfd keeps
/// this module free of `unsafe`; `poll(2)` sees the same thing. Arm/disarm happen under the
/// device lock, so the byte can never go stale.
///
/// Each arm and disarm is a syscall of the model, counted in [`UserMemory`]: they happen only
/// when readiness changes, not per command.
#[derive(Debug)]
pub(crate) struct PollSignal {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
    memory: Arc<UserMemory>,
}

impl PollSignal {
    /// A new, unarmed signal whose syscalls count in `memory`.
    pub fn new(memory: Arc<UserMemory>) -> std::io::Result<Self> {
        let (reader, writer) = std::io::pipe()?;
        Ok(Self {
            reader,
            writer,
            memory,
        })
    }

    /// The fd to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.reader.as_fd()
    }

    fn arm(&self) {
        self.memory.count_pipe_write();
        if let Err(e) = (&self.writer).write_all(&[1]) {
            log::error!("loopback: cannot arm the poll pipe: {e}");
        }
    }

    fn disarm(&self) {
        self.memory.count_pipe_read();
        let mut b = [0u8; 1];
        // Only called while armed: exactly one byte is in the pipe, so this never blocks.
        if let Err(e) = (&self.reader).read_exact(&mut b) {
            log::error!("loopback: cannot drain the poll pipe: {e}");
        }
    }
}

/// What the initiator side sees of one attached session.
#[derive(Debug)]
pub(crate) struct SessState {
    pub lun: u64,
    pub rd_only: bool,
    pub tx: Sender<ScsiCompletion>,
    pub tm_tx: Sender<TmCompletion>,
    /// Pending unit attention (DEVICE_CAPACITY_CHANGED).
    pub ua: Option<SenseCode>,
    pub next_sn: u32,
    /// Commands submitted and not yet completed (`sess_cmd_count`, for `scst_set_busy`).
    pub outstanding: usize,
    /// DETACH requested: no new commands.
    pub detached: bool,
}

/// One ATTACH_SESS waiting for its reply.
#[derive(Debug)]
pub(crate) struct AttachWait {
    pub sess: Option<SessState>,
    pub result: Option<i32>,
}

/// One task management function in progress (spec §4).
#[derive(Debug)]
pub(crate) struct TmState {
    pub id: u64,
    pub sess_h: u64,
    pub fn_: u32,
    /// Aborted commands the handler still holds; DONE waits for them.
    pub affected: HashSet<u64>,
    pub received_replied: bool,
    pub done_queued: bool,
    pub tx: Sender<TmCompletion>,
}

/// One SCSI command inside the core.
#[derive(Debug, Clone)]
pub(crate) struct ScsiCmd {
    pub id: u64,
    pub sess_h: u64,
    pub tag: u64,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_data_in: u32,
    pub queue_type: u8,
    pub timeout: u32,
    pub sn: u32,
    pub parsed: ParsedCdb,
    pub ucmd: Option<u32>,
    /// SGV object holding the buffer, and its address.
    pub sgv: Option<u64>,
    pub pbuf: u64,
    /// `alloc_len` of ALLOC_MEM / delayed EXEC.
    pub alloc_len: i32,
    /// The kernel's cache decision for this command (`ucmd->buff_cached`, `is_buff_cached`,
    /// spec §3.6): the buffer must be page aligned and returns to its owner by
    /// ON_CACHED_MEM_FREE, even when it is too big for the pool's classes (spec §8.9).
    pub cached: bool,
    /// Initiator data must be copied into the buffer before EXEC is delivered.
    pub data_out_pending: bool,
    pub aborted: bool,
    pub completed: bool,
    pub status: u8,
    pub resp_data_len: i32,
    /// An internal READ/WRITE of the copy manager for this EXTENDED COPY: its completion goes
    /// to the copy manager ([`DeviceState::cm_internal_done`]), not to an initiator.
    pub cm_parent: Option<u64>,
}

/// One entry of the SCST active list (spec §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CoreWork {
    /// A new command from the initiator.
    New(u64),
    /// A command failed by the kernel (unjam), requeued to the core to complete there.
    Finish {
        id: u64,
        status: u8,
        sense: Vec<u8>,
        aborted: bool,
    },
}

/// Work to do after the lock is dropped.
#[derive(Default)]
pub(crate) struct Effects {
    pub scsi: Vec<(Sender<ScsiCompletion>, ScsiCompletion)>,
    pub tm: Vec<(Sender<TmCompletion>, TmCompletion)>,
    pub wake_fetchers: bool,
    pub wake_all: bool,
    pub wake_attach: bool,
}

impl Effects {
    /// Nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.scsi.is_empty()
            && self.tm.is_empty()
            && !self.wake_fetchers
            && !self.wake_all
            && !self.wake_attach
    }
}

/// Device state guarded by the per-device lock.
pub(crate) struct DeviceState {
    pub opt: Opt,
    pub dev_type: u8,
    pub block_size: u32,
    /// Sampled from O_NONBLOCK at REGISTER; cleared by UNREGISTER and release (spec §1.1).
    pub blocking: bool,
    pub ucmds: IntMap<u32, Ucmd>,
    pub handle_counter: u32,
    pub ready: VecDeque<u32>,
    /// The SCST active list: core work done in handler threads, inside their fetches.
    pub active: VecDeque<CoreWork>,
    pub cmds: IntMap<u64, ScsiCmd>,
    /// (session, tag) of every command not yet completed: the duplicate-tag check of a
    /// submit is one lookup, not a scan of `cmds`.
    pub live_tags: IntSet<(u64, u64)>,
    pub next_cmd_id: u64,
    pub sessions: IntMap<u64, SessState>,
    /// ATTACH_SESS waits, by the ATTACH ucmd's handle (a late reply must not answer a later
    /// attach that was given the same `sess_h`).
    pub attaches: IntMap<u32, AttachWait>,
    /// `sess_h` values free for reuse, last freed first: the kernel's `sess_h` is its
    /// `tgt_dev`'s address (spec §8.15), which the slab hands out again once that `tgt_dev` is
    /// freed: after its DETACH, or with no DETACH at all when the ATTACH failed or timed out.
    pub free_sess_h: Vec<u64>,
    pub tms: IntMap<u64, TmState>,
    pub sgv: SgvPool,
    /// `scst_suspend_activity` in progress: the core processes no new commands.
    pub suspended: u32,
    pub released: bool,
    pub commands_completed: u64,
    /// SCST's copy manager, this device's part (EXTENDED COPY, `copy_mgr.rs`).
    pub cm: super::copy_mgr::CopyManager,
    poll: Arc<PollSignal>,
    poll_armed: bool,
}

impl DeviceState {
    /// A fresh state.
    pub fn new(
        opt: Opt,
        dev_type: u8,
        block_size: u32,
        blocking: bool,
        sgv: SgvPool,
        poll: Arc<PollSignal>,
    ) -> Self {
        Self {
            opt,
            dev_type,
            block_size,
            blocking,
            ucmds: IntMap::default(),
            handle_counter: 0,
            ready: VecDeque::new(),
            active: VecDeque::new(),
            cmds: IntMap::default(),
            live_tags: IntSet::default(),
            next_cmd_id: 1,
            sessions: IntMap::default(),
            attaches: IntMap::default(),
            free_sess_h: Vec::new(),
            tms: IntMap::default(),
            sgv,
            suspended: 0,
            released: false,
            commands_completed: 0,
            cm: super::copy_mgr::CopyManager::default(),
            poll,
            poll_armed: false,
        }
    }

    /// Next free handle: a counter starting at 0 that skips handles still in the hash (spec
    /// §3.1; 0 is valid).
    pub fn alloc_handle(&mut self) -> u32 {
        loop {
            let h = self.handle_counter;
            self.handle_counter = self.handle_counter.wrapping_add(1);
            if !self.ucmds.contains_key(&h) {
                return h;
            }
        }
    }

    /// Create a ucmd with the creation reference.
    pub fn new_ucmd(&mut self, kind: UcmdKind) -> u32 {
        let h = self.alloc_handle();
        self.ucmds.insert(h, Ucmd::new(h, kind));
        h
    }

    /// `dev_user_add_to_ready` (spec §3.1): mgmt FIFO at the front; PARSE, ALLOC_MEM and
    /// HEAD_OF_QUEUE EXEC right after the mgmt block (LIFO among themselves); the rest appended.
    pub fn queue_ready(&mut self, h: u32, fx: &mut Effects) {
        let Some(ucmd) = self.ucmds.get(&h) else { return };
        let head_of_queue = ucmd.state == abi::UCMD_STATE_EXECING
            && ucmd
                .scsi_cmd()
                .and_then(|id| self.cmds.get(&id))
                .is_some_and(|c| c.queue_type == abi::queue_type::HEAD_OF_QUEUE);
        let front = ucmd.is_mgmt()
            || matches!(ucmd.state, abi::UCMD_STATE_PARSING | abi::UCMD_STATE_BUF_ALLOCING)
            || head_of_queue;
        if front {
            let mgmt_end = self
                .ready
                .iter()
                .position(|x| !self.ucmds.get(x).is_some_and(Ucmd::is_mgmt))
                .unwrap_or(self.ready.len());
            self.ready.insert(mgmt_end, h);
        } else {
            self.ready.push_back(h);
        }
        fx.wake_fetchers = true;
    }

    /// Remove `h` from the ready list if queued.
    pub fn unqueue(&mut self, h: u32) {
        self.ready.retain(|x| *x != h);
    }

    /// Drop one reference; the ucmd leaves the hash at 0 (spec §5.4).
    pub fn put_ucmd(&mut self, h: u32) {
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.refs = u.refs.saturating_sub(1);
            if u.refs == 0 {
                self.ucmds.remove(&h);
                self.unqueue(h);
            }
        }
    }

    /// Keep the poll pipe level-triggered: armed iff something is ready or core work pends.
    /// As the kernel's `dev_user_poll` (spec §3.9), the active list counts even while SCST's
    /// activity is suspended and the work cannot run: POLLIN stays up, and the fetch that
    /// follows gets EAGAIN for as long as the suspension lasts (up to 90 s).
    pub fn sync_poll(&mut self) {
        let want = !self.ready.is_empty() || !self.active.is_empty();
        if want && !self.poll_armed {
            self.poll.arm();
            self.poll_armed = true;
        } else if !want && self.poll_armed {
            self.poll.disarm();
            self.poll_armed = false;
        }
    }

    /// Commands the core still executes (not yet completed to the initiator).
    pub fn commands_in_flight(&self) -> usize {
        self.cmds.values().filter(|c| !c.completed).count()
    }
}

impl Drop for DeviceState {
    fn drop(&mut self) {
        if self.poll_armed {
            self.poll.disarm();
        }
    }
}

thread_local! {
    /// Device locks this thread holds: the §5.6 rules are asserted against it. Per thread and
    /// plain data: nothing waits for its destructor (issue 16).
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Assert that this thread holds no device lock (spec §5.6: no user copies, no completions
/// to the initiator, no blocking with `cmd_list_lock` held). Checked in debug builds.
pub(crate) fn assert_unlocked(what: &str) {
    debug_assert_eq!(
        HELD.with(|h| h.get()),
        0,
        "{what} with a device lock held (spec §5.6)"
    );
}

/// The token of a loopback thread that holds no checked lock: made with [`LockToken::root`] at
/// each entry into the model (an ioctl of the fd, a call of the initiator side, the purge
/// thread's loop) and threaded down to every acquisition.
pub(crate) type Token<'t> = LockToken<'t, levels::Root>;

/// The device lock (level `loopback.device`), counted per thread for [`assert_unlocked`].
pub(crate) struct StateGuard<'a>(Option<OrderedMutexGuard<'a, DeviceState, levels::LoopbackDevice>>);

impl<'a> StateGuard<'a> {
    /// `Condvar::wait_timeout`, keeping the per-thread count (and the checked-lock stack) right
    /// while unlocked.
    pub fn wait_timeout(mut self, cond: &OrderedCondvar, dur: Duration) -> StateGuard<'a> {
        let Some(guard) = self.0.take() else { return self };
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
        let guard = cond.wait_timeout(guard, dur).0;
        HELD.with(|h| h.set(h.get() + 1));
        StateGuard(Some(guard))
    }
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = DeviceState;
    fn deref(&self) -> &DeviceState {
        match &self.0 {
            Some(g) => g,
            None => unreachable!("guard taken only inside wait_timeout"),
        }
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut DeviceState {
        match &mut self.0 {
            Some(g) => g,
            None => unreachable!("guard taken only inside wait_timeout"),
        }
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HELD.with(|h| h.set(h.get().saturating_sub(1)));
        }
    }
}

/// One registered device.
pub(crate) struct Device {
    /// Name (≤48 characters).
    pub name: String,
    state: OrderedMutex<DeviceState, levels::LoopbackDevice>,
    /// Wakes fetchers (exclusive waits) and suspend waiters.
    pub cond: OrderedCondvar,
    /// Wakes ATTACH_SESS waiters.
    pub attach_cond: OrderedCondvar,
    /// User memory, with the kernel's syscall counters.
    pub memory: Arc<UserMemory>,
    /// Data buffers the model is done with, for the next copies and requests (`spare.rs`).
    pub spare: SpareBuffers,
}

/// One delivered message, prepared under the lock and completed outside it.
pub(crate) struct Delivery {
    pub msg: GetCmd,
    /// Bytes of `msg` the kernel copies out (`payload_len`, spec §2.3).
    pub len: usize,
    /// Initiator data to copy into the buffer first (user address, bytes).
    pub data_out: Option<(u64, Vec<u8>)>,
    /// A buffer going back to the handler, to check before the fetch returns (`ownership.rs`).
    pub ownership_check: Option<Check>,
    /// What the data-out copy left in the command's buffer, once written.
    pub data_out_written: Option<Fingerprint>,
    pub cmd: Option<u64>,
    /// `seen_by_user` before this delivery (restored if it is taken back).
    pub seen_before: bool,
}

impl Device {
    /// A device around `state`.
    pub fn new(name: String, state: DeviceState, memory: Arc<UserMemory>) -> Self {
        Self {
            name,
            state: OrderedMutex::new(state),
            cond: OrderedCondvar::new(),
            attach_cond: OrderedCondvar::new(),
            memory,
            spare: SpareBuffers::default(),
        }
    }

    /// Lock the state; a poisoned lock is recovered (the state stays consistent per step).
    /// The guard borrows `token`: nothing else can be locked with it until the guard is gone.
    pub fn lock<'a, M: LockBefore<levels::LoopbackDevice>>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> StateGuard<'a> {
        let (guard, _) = self.state.lock_spinning(token, DEVICE_LOCK_SPIN);
        HELD.with(|h| h.set(h.get() + 1));
        StateGuard(Some(guard))
    }

    /// Run `f` under the lock, then deliver its effects with the lock dropped.
    pub fn with<M: LockBefore<levels::LoopbackDevice>, R>(
        &self,
        token: &mut LockToken<'_, M>,
        f: impl FnOnce(&mut DeviceState, &mut Effects) -> R,
    ) -> R {
        let mut fx = Effects::default();
        let r = {
            let mut st = self.lock(token);
            let r = f(&mut st, &mut fx);
            st.sync_poll();
            r
        };
        self.finish(fx);
        r
    }

    /// Deliver effects; must be called without the lock held.
    pub fn finish(&self, fx: Effects) {
        if !fx.scsi.is_empty() || !fx.tm.is_empty() {
            assert_unlocked("completing to the initiator");
        }
        if fx.wake_all {
            self.cond.notify_all();
        } else if fx.wake_fetchers {
            self.cond.notify_one();
        }
        if fx.wake_attach {
            self.attach_cond.notify_all();
        }
        for (tx, c) in fx.scsi {
            // The initiator may have dropped its session: nothing to deliver then.
            let _ = tx.send(c);
        }
        for (tx, c) in fx.tm {
            let _ = tx.send(c);
        }
    }
}

impl DeviceState {
    /// Pop the next deliverable ucmd. Aborted PARSE/ALLOC_MEM/EXEC ucmds are failed instead of
    /// delivered (spec §3.1).
    pub fn dequeue_for_user(&mut self, fx: &mut Effects) -> Option<Delivery> {
        while let Some(h) = self.ready.pop_front() {
            let Some(u) = self.ucmds.get(&h) else { continue };
            let cmd = u.scsi_cmd();
            let is_scsi_stage = matches!(
                u.state,
                abi::UCMD_STATE_PARSING | abi::UCMD_STATE_BUF_ALLOCING | abi::UCMD_STATE_EXECING
            );
            if is_scsi_stage {
                if let Some(id) = cmd.filter(|id| self.cmds.get(id).is_some_and(|c| c.aborted)) {
                    self.complete_aborted(id, fx);
                    continue;
                }
            }
            let data_out = match cmd.and_then(|id| self.cmds.get_mut(&id)) {
                Some(c) if u.state == abi::UCMD_STATE_EXECING && c.data_out_pending && c.pbuf != 0 => {
                    c.data_out_pending = false;
                    // Moved, not copied: a delivery taken back returns it (`undeliver`).
                    let mut data = std::mem::take(&mut c.data_out);
                    data.truncate(c.buffer_bytes());
                    Some((c.pbuf, data))
                }
                _ => None,
            };
            let Some(u) = self.ucmds.get_mut(&h) else { continue };
            let seen_before = u.seen_by_user;
            u.sent_to_user = true;
            u.seen_by_user = true;
            let len = abi::payload_len(u.msg.subcode).unwrap_or(std::mem::size_of::<GetCmd>());
            let ownership_check = u.ownership_check.take();
            let msg = u.msg;
            if ownership_check.is_some() {
                // A cache hit's EXEC: the buffer is the handler's once this delivery's check
                // is made; its fingerprint is spent (an undelivery puts it back).
                if let Some(oid) = cmd.and_then(|id| self.cmds.get(&id)).and_then(|c| c.sgv) {
                    self.sgv.set_fingerprint(oid, None);
                }
            }
            return Some(Delivery {
                msg,
                len,
                data_out,
                ownership_check,
                data_out_written: None,
                cmd,
                seen_before,
            });
        }
        None
    }

    /// The initiator's data-out was copied into command `cmd`'s buffer: the handler must leave
    /// it as it is while SCST owns the buffer (`ownership.rs`).
    /// Not for BIDI: the handler's data-in goes into the same buffer before its reply.
    pub fn note_data_out(&mut self, cmd: Option<u64>, written: Fingerprint) {
        let Some(c) = cmd.and_then(|id| self.cmds.get(&id)) else {
            return;
        };
        if c.parsed.direction != abi::data_direction::WRITE {
            return;
        }
        if let Some(oid) = c.sgv {
            self.sgv.set_fingerprint(oid, Some(written));
        }
    }

    /// Take back a delivery that never reached the user (an earlier one of the same ioctl
    /// faulted): it goes back to the head of the ready list as it was, as the kernel re-queues
    /// a ucmd whose copy to user space faulted (spec §3.2). Left alone if something else
    /// (unjam, a reply) has dealt with the ucmd since.
    pub fn undeliver(&mut self, d: &mut Delivery, fx: &mut Effects) {
        let h = d.msg.cmd_h;
        let Some(u) = self.ucmds.get_mut(&h) else { return };
        if !u.sent_to_user || u.this_state_unjammed || u.msg.subcode != d.msg.subcode {
            return;
        }
        u.sent_to_user = false;
        u.seen_by_user = d.seen_before;
        u.ownership_check = d.ownership_check;
        if let Some(check) = d.ownership_check {
            if let Some(oid) = d.cmd.and_then(|id| self.cmds.get(&id)).and_then(|c| c.sgv) {
                self.sgv.set_fingerprint(oid, Some(check.expected));
            }
        }
        if let Some((_, data)) = d.data_out.take() {
            if let Some(c) = d.cmd.and_then(|id| self.cmds.get_mut(&id)) {
                c.data_out = data;
                c.data_out_pending = true;
            }
        }
        self.ready.push_front(h);
        fx.wake_fetchers = true;
    }
}

impl ScsiCmd {
    /// A new command of session `sess_h`, not yet parsed.
    pub fn new(
        id: u64,
        sess_h: u64,
        tag: u64,
        cdb: Vec<u8>,
        data_out: Vec<u8>,
        expected_data_in: u32,
        sn: u32,
    ) -> Self {
        Self {
            id,
            sess_h,
            tag,
            cdb,
            data_out,
            expected_data_in,
            queue_type: abi::queue_type::SIMPLE,
            timeout: 0,
            sn,
            parsed: super::core_parse::ParsedCdb {
                direction: abi::data_direction::UNKNOWN,
                bufflen: 0,
                out_bufflen: 0,
                data_len: 0,
                lba: 0,
                op_flags: 0,
            },
            ucmd: None,
            sgv: None,
            pbuf: 0,
            alloc_len: 0,
            cached: false,
            data_out_pending: false,
            aborted: false,
            completed: false,
            status: 0,
            resp_data_len: 0,
            cm_parent: None,
        }
    }

    /// Bytes of buffer the command needs (data-in plus BIDI data-out).
    pub fn buffer_bytes(&self) -> usize {
        let n = i64::from(self.parsed.bufflen.max(0)) + i64::from(self.parsed.out_bufflen.max(0));
        n as usize
    }
}

/// Validate options as REGISTER and SET_OPTIONS do (spec §2.6, §3.9); unknown SCSI types are
/// forced to PARSE_CALL.
///
/// # Errors
/// `EINVAL` for any value out of range (qerr 2 is reserved).
pub(crate) fn validate_opt(opt: &Opt, dev_type: u8) -> Result<Opt, Errno> {
    let ok = opt.parse_type <= abi::parse_type::EXCEPTION
        && opt.on_free_cmd_type <= abi::on_free_cmd_type::IGNORE
        && opt.memory_reuse_type <= abi::memory_reuse_type::REUSE_ALL
        && opt.partial_transfers_type <= abi::partial_transfers_type::SUPPORTED
        && opt.tst <= 1
        && opt.tmf_only <= 1
        && opt.queue_alg <= 1
        && matches!(opt.qerr, 0 | 1 | 3)
        && opt.tas <= 1
        && opt.swp <= 1
        && opt.d_sense <= 1
        && opt.has_own_order_mgmt <= 1
        && opt.ext_copy_remap_supported <= 1;
    if !ok {
        log::warn!("loopback: invalid scst_user options {opt:?}");
        return Err(Errno::EINVAL);
    }
    let mut opt = *opt;
    if !KNOWN_TYPES.contains(&dev_type) {
        opt.parse_type = abi::parse_type::CALL;
    }
    Ok(opt)
}

/// SCSI peripheral types SCST has a built-in parser for.
const KNOWN_TYPES: [u8; 7] = [0x00, 0x01, 0x03, 0x05, 0x07, 0x08, 0x0c];

/// Types whose block size must be a power of two ≥ 512 (spec §3.10): DISK, ROM, MOD.
pub(crate) fn block_size_ok(dev_type: u8, block_size: u32) -> bool {
    !matches!(dev_type, 0x00 | 0x05 | 0x07) || (block_size >= 512 && block_size.is_power_of_two())
}
