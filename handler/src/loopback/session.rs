//! The initiator side of the loopback kernel: the kernel object itself ([`LoopbackKernel`]),
//! sessions attached to a device's LUN (ATTACH_SESS / DETACH_SESS, spec §3.4, §7.3), SCSI
//! command submission, task management (spec §4) and diagnostics (sysfs `commands`, §7.2).

use super::device::CoreWork;
use super::device::Device;
use super::device::DeviceState;
use super::device::ScsiCmd;
use super::device::SessState;
use super::device::TmState;
use super::fd::LoopbackFd;
use super::uaccess::ModelSyscalls;
use super::uaccess::UserMemory;
use super::ucmd::state_name;
use super::ucmd::UcmdKind;
use crate::abi;
use crate::abi::tm_fn;
use crate::transport::Errno;
use crossbeam_channel::Receiver;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Configuration of a loopback kernel.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// The interface version string REGISTER must match (spec §1.4).
    pub version: String,
    /// How long ATTACH_SESS waits for the handler's reply (`DEV_USER_ATTACH_TIMEOUT`, 5 s).
    pub attach_timeout: Duration,
    /// SGV purge interval; `None` = from the device descriptor (0 → 60 s, <0 → never).
    pub purge_interval: Option<Duration>,
    /// Check that the handler leaves each cached buffer alone while SCST owns it
    /// ([`LoopbackKernel::buffer_ownership_violations`]; on by default). It reads every
    /// buffer back and hashes it, a second copy of the data per command: `bench` turns it off
    /// so that its loopback figures are the command path's, not the check's.
    pub check_buffer_ownership: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            version: crate::transport::version::default_version_string(),
            attach_timeout: Duration::from_secs(5),
            purge_interval: None,
            check_buffer_ownership: true,
        }
    }
}

/// Shared kernel state: configuration and the global device list (`dev_list`).
pub(crate) struct KernelInner {
    pub config: KernelConfig,
    /// Level `loopback.devices`: held for one map operation (and, in REGISTER, while the new
    /// device is built; no device lock is ever taken under it).
    pub devices: OrderedMutex<HashMap<String, Arc<Device>>, levels::LoopbackDevices>,
    next_sess: AtomicU64,
    next_tm: AtomicU64,
    /// User memory as this kernel reaches it, with its syscall counters.
    pub memory: Arc<UserMemory>,
}

impl KernelInner {
    /// The registered device `name`.
    pub fn device<M: LockBefore<levels::LoopbackDevices>>(
        &self,
        token: &mut LockToken<'_, M>,
        name: &str,
    ) -> Option<Arc<Device>> {
        let (devices, _) = self.devices.lock(token);
        devices.get(name).cloned()
    }
}

/// An in-process model of the scst_user kernel module, SCST core and an initiator
/// (`scst_local`). Cheap to clone.
///
/// # Panics
/// Every method that looks at a device (and every method of [`Session`]) is an entry into
/// the "kernel": it starts its lock chain from [`LockToken::root`], which panics in debug and
/// test builds when the caller holds a checked lock (docs/locking.md: the handler reaches the
/// kernel only with none held).
#[derive(Clone)]
pub struct LoopbackKernel {
    inner: Arc<KernelInner>,
}

/// How a session sees the LUN.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// Initiator name.
    pub initiator_name: String,
    /// Target name.
    pub target_name: String,
    /// LUN number.
    pub lun: u64,
    /// Read-only LUN: the core refuses WRITE_MEDIUM commands (DATA PROTECT).
    pub rd_only: bool,
}

/// One SCSI command from the initiator.
#[derive(Clone, Debug, Default)]
pub struct ScsiRequest {
    /// Initiator task tag (unique among the session's outstanding commands).
    pub tag: u64,
    /// The CDB (up to 16 bytes inline; longer ones through GET_EXTENDED_CDB).
    pub cdb: Vec<u8>,
    /// Data-out.
    pub data_out: Vec<u8>,
    /// Size of the initiator's data-in buffer.
    pub expected_data_in: u32,
    /// [`abi::queue_type`] value.
    pub queue_type: u8,
    /// Timeout in seconds (passed through to the handler).
    pub timeout_secs: u32,
}

/// The outcome of one SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCompletion {
    /// Tag of the request.
    pub tag: u64,
    /// SAM status.
    pub status: u8,
    /// Sense bytes (empty unless CHECK CONDITION).
    pub sense: Vec<u8>,
    /// Data-in, at most `expected_data_in` bytes.
    pub data_in: Vec<u8>,
    /// Aborted by task management (status TASK ABORTED).
    pub aborted: bool,
}

/// The outcome of one task management function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmCompletion {
    /// The id `task_mgmt` returned.
    pub id: u64,
    /// [`abi::tm_result`] value.
    pub result: i32,
}

/// Why a session could not be attached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    /// No device of that name is registered.
    #[error("no scst_user device {0:?} is registered: start the handler first")]
    NoDevice(String),
    /// The device is being released.
    #[error("device {0:?} is being released")]
    DeviceGone(String),
    /// The handler answered ATTACH_SESS with a non-zero result.
    #[error("the handler refused the session with result {0}")]
    Refused(i32),
    /// The handler did not answer within the attach timeout (no thread serving the fd?).
    #[error("ATTACH_SESS not answered within {0:?}: is a handler thread serving the fd?")]
    Timeout(Duration),
}

/// Why a device could not be made a LUN of the copy manager (`docs/xcopy.md`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyManagerError {
    /// The copy manager's session could not attach.
    #[error("the copy manager's session could not attach: {0}")]
    Attach(#[from] AttachError),
    /// Its INQUIRY could not be submitted.
    #[error("the copy manager's INQUIRY could not be submitted: {0}")]
    Submit(#[from] SubmitError),
    /// Its INQUIRY was not answered in time.
    #[error("the copy manager's INQUIRY was not answered within {0:?}")]
    Timeout(Duration),
    /// Its INQUIRY failed: the copy manager is disabled for the device ("Unable to perform
    /// initial INQUIRY", scst_copy_mgr.c:2288-2292).
    #[error("the copy manager's INQUIRY ended with status {0:#x}: copy manager disabled for the device")]
    Inquiry(u8),
}

/// A device made a LUN of the copy manager's target: its session (kept attached while this
/// lives) and the designators it registered from VPD 83h.
pub struct CopyManagerLun {
    /// The copy manager's session on the device.
    pub session: Session,
    /// The designation descriptors registered (header included).
    pub designators: Vec<Vec<u8>>,
}

/// Why a command or TM could not be submitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The device was released (fd closed).
    #[error("the device is gone (its fd was closed)")]
    DeviceGone,
    /// The session was detached.
    #[error("the session was detached")]
    SessionGone,
    /// Another outstanding command of this session has this tag.
    #[error("tag {0} is already outstanding in this session")]
    DuplicateTag(u64),
    /// Empty or oversized CDB.
    #[error("CDB of {0} bytes: must be 1..=65536")]
    InvalidCdb(usize),
    /// Unknown TM function.
    #[error("unknown task management function {0} (valid: 0..=11)")]
    InvalidFunction(u32),
}

/// Counters of one device, for tests and diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// ucmds in the hash.
    pub ucmds: usize,
    /// ucmds by state name.
    pub by_state: BTreeMap<&'static str, usize>,
    /// ucmds on the ready list.
    pub ready: usize,
    /// Free buffers in the SGV cache.
    pub cached_buffers: usize,
    /// Bytes of those buffers.
    pub cached_bytes: u64,
    /// Buffers attached to live commands.
    pub buffers_in_use: usize,
    /// Commands completed to initiators.
    pub commands_completed: u64,
    /// Commands not yet completed.
    pub commands_in_flight: usize,
    /// Attached sessions.
    pub sessions: usize,
}

/// One session (I_T nexus) with the LUN of one device. `Send + Sync`. Dropping it without
/// [`Session::detach`] leaves the session attached (like an initiator that stays logged in);
/// its completions are then discarded.
///
/// # Panics
/// Its methods start from a root token, as [`LoopbackKernel`]'s do.
pub struct Session {
    dev: Arc<Device>,
    kernel: Arc<KernelInner>,
    sess_h: u64,
    rx: Receiver<ScsiCompletion>,
    tm_rx: Receiver<TmCompletion>,
}

static_assertions::assert_impl_all!(Session: Send, Sync);
static_assertions::assert_impl_all!(LoopbackKernel: Send, Sync);

/// First session handle: looks like a kernel pointer, never 0 (spec §8.15).
const SESS_H_BASE: u64 = 0xffff_8881_0000_0000;

impl LoopbackKernel {
    /// A kernel with no devices.
    pub fn new(config: KernelConfig) -> Self {
        Self {
            inner: Arc::new(KernelInner {
                config,
                devices: OrderedMutex::new(HashMap::new()),
                next_sess: AtomicU64::new(1),
                next_tm: AtomicU64::new(1),
                memory: Arc::new(UserMemory::default()),
            }),
        }
    }

    /// The model's own syscalls so far (all devices and fds of this kernel): user-memory
    /// copies and poll-pipe writes and reads, which the real kernel does not make. Divide
    /// by commands for "kernel-model syscalls per command".
    pub fn syscalls(&self) -> ModelSyscalls {
        self.inner.memory.syscalls()
    }

    /// Buffers the model found changed while SCST owned them (all devices of this kernel): a
    /// cached buffer written between its EXEC reply and its return to the handler (a cache
    /// hit's EXEC or ON_CACHED_MEM_FREE), which on a real kernel corrupts the data a target
    /// sends or the next command finds (spec §3.6; `ownership.rs`). A correct handler leaves
    /// it at 0.
    pub fn buffer_ownership_violations(&self) -> u64 {
        self.inner.memory.ownership_violations()
    }

    /// Open `/dev/scst_user` (with O_NONBLOCK if `nonblocking`; sampled at REGISTER, §1.1).
    ///
    /// # Panics
    /// If the process is out of file descriptors for the fd's poll pipe (as `open(2)` would
    /// fail with EMFILE); raise RLIMIT_NOFILE.
    pub fn open(&self, nonblocking: bool) -> LoopbackFd {
        LoopbackFd::new(self.inner.clone(), nonblocking)
    }

    /// Like adding the device as a LUN to a target with a session (`scst_local`): queues
    /// ATTACH_SESS and waits up to `attach_timeout` for the handler's reply.
    ///
    /// # Errors
    /// [`AttachError`]: no such device, refused (result ≠ 0, or -EFAULT if the fd closed), or
    /// no reply in time.
    pub fn attach_session(&self, device: &str, spec: SessionSpec) -> Result<Session, AttachError> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let dev = self
            .inner
            .device(token, device)
            .ok_or_else(|| AttachError::NoDevice(device.to_owned()))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (tm_tx, tm_rx) = crossbeam_channel::unbounded();
        let (h, sess_h) = dev.with(token, |st, fx| {
            if st.released {
                return Err(AttachError::DeviceGone(device.to_owned()));
            }
            // A freed `tgt_dev`'s address first, as the kernel's slab does (see `free_sess_h`).
            let sess_h = st.free_sess_h.pop().unwrap_or_else(|| {
                SESS_H_BASE + self.inner.next_sess.fetch_add(1, Ordering::Relaxed) * 0x1000
            });
            let h = st.new_ucmd(UcmdKind::Attach { sess_h });
            let mut payload: abi::Sess = zerocopy::FromZeros::new_zeroed();
            payload.sess_h = sess_h;
            payload.lun = spec.lun;
            payload.threads_num = 1;
            payload.rd_only = spec.rd_only as u8;
            payload.initiator_name = abi::fill_c_name(&spec.initiator_name);
            payload.target_name = abi::fill_c_name(&spec.target_name);
            if let Some(u) = st.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_ATTACH_SESS, &payload);
            }
            st.attaches.insert(
                h,
                super::device::AttachWait {
                    sess: Some(SessState {
                        lun: spec.lun,
                        rd_only: spec.rd_only,
                        tx,
                        tm_tx,
                        ua: None,
                        next_sn: 0,
                        outstanding: 0,
                        detached: false,
                    }),
                    result: None,
                },
            );
            st.queue_ready(h, fx);
            Ok((h, sess_h))
        })?;
        let timeout = self.inner.config.attach_timeout;
        let deadline = Instant::now() + timeout;
        let mut st = dev.lock(token);
        loop {
            if let Some(result) = st.attaches.get(&h).and_then(|w| w.result) {
                st.attaches.remove(&h);
                if result != 0 {
                    // Refused: SCST frees the `tgt_dev` without a DETACH.
                    st.free_sess_h.push(sess_h);
                }
                drop(st);
                return if result == 0 {
                    Ok(Session {
                        dev,
                        kernel: self.inner.clone(),
                        sess_h,
                        rx,
                        tm_rx,
                    })
                } else {
                    Err(AttachError::Refused(result))
                };
            }
            let now = Instant::now();
            if now >= deadline {
                // The ATTACH ucmd stays until replied or unjammed; a late reply is dropped.
                // SCST frees the `tgt_dev` without a DETACH (`scst_alloc_add_tgt_dev`), so its
                // address may come back with the next attach while the handler, which may
                // still take the late ATTACH, has never seen the session go.
                st.attaches.remove(&h);
                st.free_sess_h.push(sess_h);
                log::warn!("loopback {}: ATTACH_SESS timed out after {timeout:?}", dev.name);
                return Err(AttachError::Timeout(timeout));
            }
            st = st.wait_timeout(&dev.attach_cond, deadline - now);
        }
    }

    /// What the operator's `add DEVICE LUN` to `copy_manager_tgt/luns/mgmt` does
    /// (`scst_cm_on_add_lun` → `scst_cm_dev_register`, scst_copy_mgr.c:2509-2562, 2769-2794):
    /// the copy manager's session attaches to the device, sends INQUIRY VPD 83h (4096 bytes,
    /// HEAD OF QUEUE) through the handler, and registers the designators it can match CSCD
    /// descriptors against (`copy_mgr::parse_designators`). Without it an EXTENDED COPY naming
    /// the device is refused (INVALID FIELD IN PARAMETER LIST). A handler thread must serve
    /// the fd meanwhile.
    ///
    /// # Errors
    /// [`CopyManagerError`].
    pub fn add_copy_manager_lun(&self, device: &str, lun: u64) -> Result<CopyManagerLun, CopyManagerError> {
        let spec = SessionSpec {
            initiator_name: super::copy_mgr::SESSION_NAME.to_owned(),
            target_name: super::copy_mgr::TARGET_NAME.to_owned(),
            lun,
            rd_only: false,
        };
        let session = self.attach_session(device, spec)?;
        session.submit(ScsiRequest {
            tag: 1,
            cdb: vec![0x12, 0x01, 0x83, 0x10, 0x00, 0x00],
            data_out: Vec::new(),
            expected_data_in: 4096,
            queue_type: abi::queue_type::HEAD_OF_QUEUE,
            timeout_secs: 0,
        })?;
        let timeout = Duration::from_secs(30);
        let done =
            scst_accel_hal::locks::blocking("recv_timeout", || session.completions().recv_timeout(timeout))
                .map_err(|_| CopyManagerError::Timeout(timeout))?;
        if done.status != abi::sam_status::GOOD {
            return Err(CopyManagerError::Inquiry(done.status));
        }
        let designators = super::copy_mgr::parse_designators(&done.data_in, done.data_in.len());
        let token = &mut LockToken::root();
        let sess_h = session.sess_h;
        session.dev.with(token, |st, _| {
            st.cm.designators.retain(|d| d.sess_h != sess_h);
            st.cm
                .designators
                .extend(designators.iter().map(|bytes| super::copy_mgr::CmDesignator {
                    bytes: bytes.clone(),
                    sess_h,
                }));
        });
        Ok(CopyManagerLun { session, designators })
    }

    /// EXT_COPY_REMAP messages the copy manager sent to the device's handler, and bytes it
    /// copied itself with READ/WRITE (leftovers); `None` if no such device.
    pub fn copy_manager_stats(&self, device: &str) -> Option<(u64, u64)> {
        let token = &mut LockToken::root();
        let dev = self.inner.device(token, device)?;
        Some(dev.with(token, |st, _| (st.cm.remaps, st.cm.leftover_bytes)))
    }

    /// FLUSH_CACHE from the core side: every free cached buffer is evicted
    /// (ON_CACHED_MEM_FREE with its owner's handle).
    ///
    /// # Errors
    /// `ENODEV` if no such device is registered.
    pub fn flush_cache(&self, device: &str) -> Result<(), Errno> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let dev = self.inner.device(token, device).ok_or(Errno::ENODEV)?;
        dev.with(token, |st, fx| {
            st.flush_sgv(fx);
        });
        Ok(())
    }

    /// Counters of `device`, if registered.
    pub fn device_stats(&self, device: &str) -> Option<DeviceStats> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let dev = self.inner.device(token, device)?;
        let st = dev.lock(token);
        let mut by_state = BTreeMap::new();
        for u in st.ucmds.values() {
            *by_state.entry(state_name(u.state)).or_insert(0) += 1;
        }
        let (cached_buffers, cached_bytes) = st.sgv.cached_totals();
        Some(DeviceStats {
            ucmds: st.ucmds.len(),
            by_state,
            ready: st.ready.len(),
            cached_buffers,
            cached_bytes,
            buffers_in_use: st.sgv.in_use(),
            commands_completed: st.commands_completed,
            commands_in_flight: st.commands_in_flight(),
            sessions: st.sessions.len(),
        })
    }

    /// The live ucmds of `device`, one per line, like the sysfs `commands` file (spec §7.2).
    pub fn commands_dump(&self, device: &str) -> Option<String> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let dev = self.inner.device(token, device)?;
        let st = dev.lock(token);
        let mut hs: Vec<u32> = st.ucmds.keys().copied().collect();
        hs.sort_unstable();
        let mut out = String::new();
        for h in hs {
            if let Some(u) = st.ucmds.get(&h) {
                out.push_str(&format!(
                    "ucmd {h} state {} ref {} sent {} seen {} aborted {} jammed {} background {}\n",
                    state_name(u.state),
                    u.refs,
                    u.sent_to_user as u8,
                    u.seen_by_user as u8,
                    u.aborted as u8,
                    u.jammed as u8,
                    u.background as u8,
                ));
            }
        }
        Some(out)
    }

    /// Names of the registered devices, sorted.
    pub fn registered_devices(&self) -> Vec<String> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let mut v: Vec<String> = self.inner.devices.lock(token).0.keys().cloned().collect();
        v.sort();
        v
    }
}

impl Session {
    /// The opaque, non-zero session handle the handler sees.
    pub fn sess_h(&self) -> u64 {
        self.sess_h
    }

    /// Queue one SCSI command from the initiator; never blocks on the handler (it goes to the
    /// SCST active list, processed inside handler threads).
    ///
    /// # Errors
    /// [`SubmitError`] if the device or session is gone, the tag is in use, or the CDB is
    /// empty or too long.
    pub fn submit(&self, req: ScsiRequest) -> Result<(), SubmitError> {
        self.submit_batch(std::iter::once(req)).map_err(|(_, e)| e)
    }

    /// An empty buffer for a request's data-out, with the capacity of one the model is done
    /// with when there is one (the data-out of delivered commands and recycled data-in
    /// buffers are kept for this): a block layer reusing its pages instead of faulting in a
    /// fresh allocation per command.
    pub fn spare_buffer(&self) -> Vec<u8> {
        self.dev.spare.take()
    }

    /// Hand a completion's data-in buffer back once read: the model reuses it for a later
    /// command's data instead of allocating one (a block layer reusing its pages). Optional;
    /// the buffer must not be used after.
    pub fn recycle(&self, data_in: Vec<u8>) {
        self.dev.spare.give(data_in);
    }

    /// Queue several commands in order under one acquisition of the device lock, as an
    /// initiator's block layer hands a plugged batch to the target; each is queued exactly as
    /// [`Session::submit`] queues it. The handler sees one readiness change for the batch
    /// instead of one per command. `reqs` is consumed with the lock held: pass requests already
    /// built (a `Vec` or its `drain`), not an iterator that builds them.
    ///
    /// # Errors
    /// `(accepted, error)`: the first `accepted` commands were queued, the next one was refused
    /// with `error` ([`Session::submit`]'s reasons), and the ones after it were not looked at.
    pub fn submit_batch(
        &self,
        reqs: impl IntoIterator<Item = ScsiRequest>,
    ) -> Result<(), (usize, SubmitError)> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let sess_h = self.sess_h;
        self.dev.with(token, |st, fx| {
            for (accepted, req) in reqs.into_iter().enumerate() {
                st.queue_new_cmd(sess_h, req).map_err(|e| (accepted, e))?;
                fx.wake_fetchers = true;
            }
            Ok(())
        })
    }

    /// Completions of submitted commands, in completion order.
    pub fn completions(&self) -> &Receiver<ScsiCompletion> {
        &self.rx
    }

    /// Task management (spec §4): affected commands the handler has not seen are aborted at
    /// once; TASK_MGMT_RECEIVED is queued; TASK_MGMT_DONE follows when RECEIVED was replied
    /// and every affected command the handler holds has been replied. The outcome arrives on
    /// [`Session::tm_completions`]. `abort_tag` selects the command for ABORT TASK.
    ///
    /// # Errors
    /// [`SubmitError`] if the device or session is gone or `function` is unknown.
    pub fn task_mgmt(&self, function: u32, abort_tag: Option<u64>) -> Result<u64, SubmitError> {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        if function > tm_fn::PR_ABORT_ALL {
            return Err(SubmitError::InvalidFunction(function));
        }
        let id = self.kernel.next_tm.fetch_add(1, Ordering::Relaxed);
        let sess_h = self.sess_h;
        self.dev.with(token, |st, fx| {
            if st.released {
                return Err(SubmitError::DeviceGone);
            }
            let tm_tx = match st.sessions.get(&sess_h) {
                Some(s) if !s.detached => s.tm_tx.clone(),
                _ => return Err(SubmitError::SessionGone),
            };
            let whole_lun = match function {
                tm_fn::ABORT_TASK_SET | tm_fn::CLEAR_TASK_SET => st.opt.tst == 0,
                tm_fn::LUN_RESET
                | tm_fn::TARGET_RESET
                | tm_fn::NEXUS_LOSS
                | tm_fn::ABORT_ALL_TASKS
                | tm_fn::PR_ABORT_ALL => true,
                _ => false,
            };
            let mut targets: Vec<u64> = st
                .cmds
                .values()
                .filter(|c| !c.completed)
                .filter(|c| match function {
                    tm_fn::ABORT_TASK => c.sess_h == sess_h && Some(c.tag) == abort_tag,
                    tm_fn::CLEAR_ACA => false,
                    _ => whole_lun || c.sess_h == sess_h,
                })
                .map(|c| c.id)
                .collect();
            targets.sort_unstable();
            if function == tm_fn::ABORT_TASK && targets.is_empty() {
                // The core finds no such task: the device is not involved.
                fx.tm.push((
                    tm_tx,
                    TmCompletion {
                        id,
                        result: abi::tm_result::TASK_NOT_EXIST,
                    },
                ));
                return Ok(id);
            }
            let cmd_h_to_abort = if function == tm_fn::ABORT_TASK {
                targets
                    .first()
                    .and_then(|t| st.cmds.get(t))
                    .and_then(|c| c.ucmd)
                    .unwrap_or(0)
            } else {
                0
            };
            let mut affected = HashSet::new();
            for cid in targets {
                if let Some(c) = st.cmds.get_mut(&cid) {
                    c.aborted = true;
                }
                let ucmd = st.cmds.get(&cid).and_then(|c| c.ucmd);
                let new_pos = st.active.iter().position(|w| *w == CoreWork::New(cid));
                if let Some(pos) = new_pos {
                    st.active.remove(pos);
                    st.complete_aborted(cid, fx);
                    continue;
                }
                let Some(h) = ucmd else {
                    affected.insert(cid);
                    continue;
                };
                let (held, queued) = match st.ucmds.get(&h) {
                    Some(u) => (u.sent_to_user || u.in_reply, st.ready.contains(&h)),
                    None => (false, false),
                };
                if !held && queued {
                    // dev_user_abort_ready_commands: queued-unseen, failed without the handler.
                    st.unqueue(h);
                    if let Some(u) = st.ucmds.get_mut(&h) {
                        u.aborted = true;
                        u.jammed = true;
                    }
                    st.complete_aborted(cid, fx);
                } else {
                    affected.insert(cid);
                }
            }
            let h = st.new_ucmd(UcmdKind::Tm { tm: id });
            let payload = abi::Tm {
                sess_h,
                fn_: function,
                cmd_h_to_abort,
                ..Default::default()
            };
            if let Some(u) = st.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_TASK_MGMT_RECEIVED, &payload);
            }
            st.tms.insert(
                id,
                TmState {
                    id,
                    sess_h,
                    fn_: function,
                    affected,
                    received_replied: false,
                    done_queued: false,
                    tx: tm_tx,
                },
            );
            st.queue_ready(h, fx);
            Ok(id)
        })
    }

    /// Outcomes of [`Session::task_mgmt`].
    pub fn tm_completions(&self) -> &Receiver<TmCompletion> {
        &self.tm_rx
    }

    /// Remove the LUN from this session: DETACH_SESS is queued (nobody waits for its reply);
    /// commands still outstanding complete normally.
    pub fn detach(self) {
        // An entry of the initiator side: the caller holds no checked lock (asserted).
        let token = &mut LockToken::root();
        let sess_h = self.sess_h;
        self.dev.with(token, |st, fx| {
            if st.released || !st.sessions.contains_key(&sess_h) {
                return;
            }
            let payload = super::unjam::detach_payload(st, sess_h);
            if let Some(s) = st.sessions.get_mut(&sess_h) {
                s.detached = true;
            }
            st.retire_detached_sessions();
            let h = st.new_ucmd(UcmdKind::Detach { sess_h });
            if let Some(u) = st.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_DETACH_SESS, &payload);
            }
            st.queue_ready(h, fx);
        });
    }
}

impl DeviceState {
    /// One command of `sess_h` onto the SCST active list (`scst_rx_cmd` + `scst_cmd_init_done`),
    /// under the device lock.
    fn queue_new_cmd(&mut self, sess_h: u64, req: ScsiRequest) -> Result<(), SubmitError> {
        if req.cdb.is_empty() || req.cdb.len() > abi::SCST_MAX_LONG_CDB_SIZE {
            return Err(SubmitError::InvalidCdb(req.cdb.len()));
        }
        if self.released {
            return Err(SubmitError::DeviceGone);
        }
        let dup = self.live_tags.contains(&(sess_h, req.tag));
        let sess = match self.sessions.get_mut(&sess_h) {
            Some(s) if !s.detached => s,
            _ => return Err(SubmitError::SessionGone),
        };
        if dup {
            return Err(SubmitError::DuplicateTag(req.tag));
        }
        let sn = sess.next_sn;
        sess.next_sn = sess.next_sn.wrapping_add(1);
        sess.outstanding += 1;
        let id = self.next_cmd_id;
        self.next_cmd_id += 1;
        self.live_tags.insert((sess_h, req.tag));
        self.cmds.insert(
            id,
            ScsiCmd {
                queue_type: req.queue_type,
                timeout: req.timeout_secs,
                ..ScsiCmd::new(
                    id,
                    sess_h,
                    req.tag,
                    req.cdb,
                    req.data_out,
                    req.expected_data_in,
                    sn,
                )
            },
        );
        self.active.push_back(CoreWork::New(id));
        Ok(())
    }
}
