//! [`LoopbackFd`]: one open file of the loopback `/dev/scst_user`, implementing
//! [`ScstUserFd`] with the kernel's errnos (spec §1.2, §3.2, §3.3, §3.9). Clones share the open
//! file like dup(2); the last one dropped (or [`LoopbackFd::close`]) runs release (spec §5).

use super::device::block_size_ok;
use super::device::validate_opt;
use super::device::Device;
use super::device::DeviceState;
use super::device::PollSignal;
use super::device::Token;
use super::device::SUSPEND_TIMEOUT;
use super::reply::process_reply;
use super::reply_get::read_replies;
use super::reply_get::reply_and_get;
use super::session::KernelInner;
use super::sgv::SgvObject;
use super::sgv::SgvPool;
use super::uaccess;
use super::ucmd::UcmdKind;
use super::unjam;
use super::unjam::CloseReport;
use crate::abi;
use crate::abi::DevDesc;
use crate::abi::GetCmd;
use crate::abi::GetExtCdb;
use crate::abi::MultiBuffer;
use crate::abi::Opt;
use crate::abi::PreallocBuffer;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::IoctlResult;
use crate::transport::ScstUserFd;
use scst_accel_hal::locks;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

/// Longest device name the kernel keeps (`strscpy` into 49 bytes, spec §8.8).
const MAX_DEVICE_NAME: usize = 48;
/// Default SGV purge interval (spec §2.2: 0 means 60 s).
const DEFAULT_PURGE: Duration = Duration::from_secs(60);

/// One open file.
struct OpenFile {
    kernel: Arc<KernelInner>,
    nonblocking: bool,
    /// Level `loopback.register`: serializes REGISTER on this fd; the device list is taken
    /// under it (with a token: the nesting is checked by the compiler).
    register_lock: OrderedMutex<(), levels::LoopbackRegister>,
    device: OnceLock<Arc<Device>>,
    poll: Arc<PollSignal>,
}

impl OpenFile {
    fn device(&self) -> Result<&Arc<Device>, Errno> {
        self.device.get().ok_or(Errno::ENODEV)
    }

    /// `dev_user_release`: remove the device from the global list, then exit/cleanup. The
    /// last close of a file: its caller holds no checked lock (asserted by the root token).
    fn release(&mut self) -> CloseReport {
        let Some(dev) = self.device.take() else {
            return CloseReport {
                released: true,
                ..Default::default()
            };
        };
        release_device(&self.kernel, dev, &mut LockToken::root())
    }
}

/// Remove `dev` from the kernel's list and run its exit and cleanup.
fn release_device(kernel: &KernelInner, dev: Arc<Device>, token: &mut Token<'_>) -> CloseReport {
    {
        let (mut devices, _) = kernel.devices.lock(token);
        if devices.get(&dev.name).is_some_and(|d| Arc::ptr_eq(d, &dev)) {
            devices.remove(&dev.name);
        }
    }
    unjam::release(&dev, token)
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // A close is a blocking call, so the last clone must be dropped with no checked lock
        // held; `Drop` must not panic, though (docs/locking.md rule 6), so a caller that
        // breaks the rule is logged and the release runs on a thread of its own, where the
        // root token is true.
        if let Some((name, level)) = locks::held_locks().last() {
            log::error!(
                "loopback: last close of an fd while holding `{name}` (level {level}) (docs/locking.md); \
                 releasing its device on another thread"
            );
            let Some(dev) = self.device.take() else {
                return;
            };
            let kernel = Arc::clone(&self.kernel);
            let spawned = std::thread::Builder::new()
                .name("scst_lb_release".into())
                .spawn(move || {
                    release_device(&kernel, dev, &mut LockToken::root());
                });
            if let Err(e) = spawned {
                log::error!("loopback: cannot start the release thread, the device stays registered: {e}");
            }
            return;
        }
        let _ = self.release();
    }
}

/// An open loopback scst_user file descriptor. `Clone` is dup(2): the last clone dropped (or
/// closed with [`LoopbackFd::close`]) releases the device (spec §5). Its [`ScstUserFd::poll_fd`]
/// is a pipe that polls readable (level-triggered) while commands are ready or core work
/// pends; before REGISTER it never becomes readable (the kernel would answer POLLNVAL).
#[derive(Clone)]
pub struct LoopbackFd {
    file: Arc<OpenFile>,
}

static_assertions::assert_impl_all!(LoopbackFd: Send, Sync);

impl LoopbackFd {
    pub(crate) fn new(kernel: Arc<KernelInner>, nonblocking: bool) -> Self {
        let poll = match PollSignal::new(kernel.memory.clone()) {
            Ok(p) => p,
            // Out of file descriptors at open: the model cannot exist without its poll pipe.
            Err(e) => panic!("loopback: cannot create the poll pipe (raise RLIMIT_NOFILE): {e}"),
        };
        Self {
            file: Arc::new(OpenFile {
                kernel,
                nonblocking,
                register_lock: OrderedMutex::new(()),
                device: OnceLock::new(),
                poll: Arc::new(poll),
            }),
        }
    }

    /// Close this handle. If it is the last one, release runs now and its report is returned
    /// (`released: true`); otherwise the other clones keep the file open.
    pub fn close(self) -> CloseReport {
        match Arc::try_unwrap(self.file) {
            Ok(mut file) => file.release(),
            Err(_) => CloseReport::default(),
        }
    }

    /// The registered device name, if any.
    pub fn device_name(&self) -> Option<String> {
        self.file.device.get().map(|d| d.name.clone())
    }

    #[cfg(test)]
    pub(crate) fn device_for_test(&self) -> Arc<Device> {
        match self.file.device.get() {
            Some(d) => d.clone(),
            None => panic!("no device registered"),
        }
    }

    /// `scst_suspend_activity` around `f`: kernel-wide, as SCST's is (spec §3.6). Every
    /// registered device stops taking new work (its new commands wait in its active list, and
    /// its poll fd stays readable, §3.9), and the suspension waits until no device, this one or
    /// any other LUN, has a command in flight: one slow command anywhere holds it, bounded by
    /// 90 s, then `EBUSY`.
    fn suspended<R>(
        &self,
        token: &mut Token<'_>,
        dev: &Device,
        f: impl FnOnce(&mut DeviceState, &mut super::device::Effects) -> R,
    ) -> Result<R, Errno> {
        let deadline = Instant::now() + SUSPEND_TIMEOUT;
        let devices: Vec<Arc<Device>> = {
            let (devices, _) = self.file.kernel.devices.lock(token);
            devices.values().cloned().collect()
        };
        let set_all = |token: &mut Token<'_>, delta: i64| {
            for d in &devices {
                let mut st = d.lock(token);
                st.suspended = if delta > 0 {
                    st.suspended + 1
                } else {
                    st.suspended.saturating_sub(1)
                };
                st.sync_poll();
                drop(st);
                // Fetchers blocked in the kernel look at their device again.
                d.cond.notify_all();
            }
        };
        set_all(token, 1);
        loop {
            let busy = devices
                .iter()
                .any(|d| d.lock(token).commands_in_flight_started() > 0);
            if !busy {
                break;
            }
            if Instant::now() >= deadline {
                set_all(token, -1);
                return Err(Errno::EBUSY);
            }
            // A wait in the kernel: no lock held (each device's lock is taken only to look).
            locks::sleep(Duration::from_millis(5));
        }
        let r = dev.with(token, |st, fx| {
            let r = f(st, fx);
            fx.wake_fetchers = true;
            r
        });
        set_all(token, -1);
        for d in &devices {
            d.with(token, |_, fx| fx.wake_fetchers = true);
        }
        Ok(r)
    }
}

impl DeviceState {
    /// Commands past their first core step and not yet completed (what a suspend waits for).
    fn commands_in_flight_started(&self) -> usize {
        self.cmds
            .values()
            .filter(|c| !c.completed && c.ucmd.is_some())
            .count()
    }
}

fn purge_interval_of(desc: &DevDesc, configured: Option<Duration>) -> Option<Duration> {
    configured.or(match desc.sgv_purge_interval {
        0 => Some(DEFAULT_PURGE),
        n if n < 0 => None,
        n => Some(Duration::from_secs(n as u64)),
    })
}

/// The SGV purge work of one device: evicts buffers unused for a purge interval.
fn spawn_purge(dev: Weak<Device>, interval: Duration) {
    let tick = interval
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let spawned = std::thread::Builder::new()
        .name("scst_lb_purge".into())
        .spawn(move || loop {
            locks::sleep(tick);
            // A thread of its own: each pass starts from no lock held.
            let token = &mut LockToken::root();
            let Some(dev) = dev.upgrade() else { return };
            let stop = dev.with(token, |st, fx| {
                if st.released {
                    return true;
                }
                let evicted = st.sgv.purge(Instant::now());
                st.evict(evicted, fx);
                false
            });
            if stop {
                return;
            }
        });
    if let Err(e) = spawned {
        log::error!("loopback: cannot start the SGV purge thread, buffers stay cached: {e}");
    }
}

impl ScstUserFd for LoopbackFd {
    fn register_device(&self, desc: &DevDesc) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_REGISTER_DEVICE");
        let mut token = LockToken::root();
        let (_serial, mut under_register) = self.file.register_lock.lock(&mut token);
        if self.file.device.get().is_some() {
            log::warn!("loopback: device already registered on this fd");
            return Err(Errno::EINVAL);
        }
        let kernel = &self.file.kernel;
        let expected = kernel.config.version.as_bytes();
        // A FIXED max(sizeof(DEV_USER_VERSION), 20) bytes from both strings (spec §1.4).
        let fixed = (expected.len() + 1).max(abi::VERSION_READ_MIN);
        let license = kernel.memory.copy_fixed_c_string(desc.license_str, fixed)?;
        if !abi::ACCEPTED_LICENSES.iter().any(|l| l.as_bytes() == license) {
            log::warn!(
                "loopback: license {:?} refused",
                String::from_utf8_lossy(&license)
            );
            return Err(Errno::EPERM);
        }
        let version = kernel.memory.copy_fixed_c_string(desc.version_str, fixed)?;
        let raw_name = abi::c_name(&desc.name);
        if version != expected {
            log::warn!(
                "Incorrect version of user device {raw_name} ({}). Expected: {}",
                String::from_utf8_lossy(&version),
                kernel.config.version
            );
            return Err(Errno::EINVAL);
        }
        let name_end = desc.name.iter().position(|&b| b == 0).unwrap_or(desc.name.len());
        let name = String::from_utf8_lossy(&desc.name[..name_end.min(MAX_DEVICE_NAME)]).into_owned();
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        if !block_size_ok(desc.type_, desc.block_size) {
            log::warn!(
                "loopback: block size {} invalid for type {}",
                desc.block_size,
                desc.type_
            );
            return Err(Errno::EINVAL);
        }
        let opt = validate_opt(&desc.opt, desc.type_)?;
        let purge = purge_interval_of(desc, kernel.config.purge_interval);
        let (mut devices, _) = kernel.devices.lock(&mut under_register);
        if devices.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        let state = DeviceState::new(
            opt,
            desc.type_,
            desc.block_size,
            !self.file.nonblocking,
            SgvPool::new(desc.sgv_single_alloc_pages, purge)
                .checking_ownership(kernel.config.check_buffer_ownership),
            self.file.poll.clone(),
        );
        let dev = Arc::new(Device::new(name.clone(), state, kernel.memory.clone()));
        devices.insert(name.clone(), dev.clone());
        drop(devices);
        if self.file.device.set(dev.clone()).is_err() {
            return Err(Errno::EINVAL);
        }
        if let Some(interval) = purge {
            spawn_purge(Arc::downgrade(&dev), interval);
        }
        log::info!("loopback: registered device {name}");
        Ok(())
    }

    fn unregister_device(&self) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_UNREGISTER_DEVICE");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        log::warn!(
            "loopback {}: SCST_USER_UNREGISTER_DEVICE is obsolete; fd made non-blocking",
            dev.name
        );
        dev.with(token, |st, fx| {
            st.blocking = false;
            fx.wake_all = true;
        });
        Ok(())
    }

    fn set_options(&self, opt: &Opt) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_SET_OPTIONS");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        let (dev_type, tst, has_sessions) = {
            let st = dev.lock(token);
            (st.dev_type, st.opt.tst, !st.sessions.is_empty())
        };
        let opt = validate_opt(opt, dev_type)?;
        if opt.tst != tst && has_sessions {
            log::warn!("loopback {}: cannot change tst while sessions exist", dev.name);
            return Err(Errno::EINVAL);
        }
        self.suspended(token, dev, |st, _| st.opt = opt)
    }

    fn get_options(&self) -> IoctlResult<Opt> {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_GET_OPTIONS");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        let opt = dev.lock(token).opt;
        Ok(opt)
    }

    fn reply_and_get_cmd(&self, cmd: &mut GetCmd) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_REPLY_AND_GET_CMD");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        let preply = cmd.preply();
        let (replies, faulted) = if preply != 0 {
            read_replies(&dev.memory, preply, 1)
        } else {
            (Vec::new(), false)
        };
        if faulted {
            return Err(Errno::EFAULT);
        }
        // An error processing the reply returns at once, fetching nothing (spec §3.2).
        reply_and_get(dev, token, &replies, false, cmd, 1, true).result
    }

    fn reply_cmd(&self, reply: &ReplyCmd) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_REPLY_CMD");
        let token = &mut LockToken::root();
        process_reply(self.file.device()?, token, reply)
    }

    fn flush_cache(&self) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_FLUSH_CACHE");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        self.suspended(token, dev, |st, fx| {
            st.flush_sgv(fx);
        })
    }

    fn device_capacity_changed(&self) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_DEVICE_CAPACITY_CHANGED");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        dev.with(token, |st, _| {
            for s in st.sessions.values_mut() {
                s.ua = Some(super::sense::CAPACITY_CHANGED);
            }
        });
        Ok(())
    }

    fn get_extended_cdb(&self, arg: &GetExtCdb) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_GET_EXTENDED_CDB");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        let tail = dev.with(token, |st, _| {
            let u = st.ucmds.get(&arg.cmd_h).ok_or(Errno::ESRCH)?;
            let stage = matches!(
                u.state,
                abi::UCMD_STATE_PARSING | abi::UCMD_STATE_BUF_ALLOCING | abi::UCMD_STATE_EXECING
            );
            if !stage || !(u.sent_to_user || u.background) {
                return Err(Errno::EINVAL);
            }
            let cdb = u
                .scsi_cmd()
                .and_then(|id| st.cmds.get(&id))
                .map(|c| c.cdb.clone())
                .ok_or(Errno::EINVAL)?;
            Ok(cdb
                .get(abi::SCST_MAX_CDB_SIZE..)
                .map(<[u8]>::to_vec)
                .unwrap_or_default())
        })?;
        if !tail.is_empty() {
            dev.memory.copy_to_user(arg.ext_cdb_buffer, &tail)?;
        }
        Ok(())
    }

    fn prealloc_buffer(&self, arg: &mut PreallocBuffer) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_PREALLOC_BUFFER");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        if arg.pbuf == 0 || !arg.pbuf.is_multiple_of(uaccess::PAGE_SIZE) || arg.bufflen == 0 {
            return Err(Errno::EINVAL);
        }
        // `dev_user_prealloc_buffer` pins the pages `bufflen` spans, and the SGV cache fills an
        // object of the size class from those pages only (`dev_user_alloc_pages` gives none
        // past them): a `bufflen` below its class fails the allocation (spec §3.6).
        let pinned = u64::from(arg.bufflen).div_ceil(uaccess::PAGE_SIZE);
        let class = dev.lock(token).sgv.class_pages(u64::from(arg.bufflen));
        if class.is_some_and(|class| class > pinned) {
            return Err(Errno::ENOMEM);
        }
        let pages = class.unwrap_or(pinned);
        dev.memory.pin_user_pages(arg.pbuf, pages * uaccess::PAGE_SIZE)?;
        let pbuf = arg.pbuf;
        let clustered = arg.for_clust_pool != 0;
        let h = dev.with(token, |st, fx| {
            let h = st.new_ucmd(UcmdKind::Prealloc);
            st.sgv.insert(SgvObject {
                pbuf,
                pages,
                owner: h,
                cached: true,
                return_to_owner: true,
                clustered,
                in_use: false,
                last_used: Instant::now(),
                fingerprint: None,
            });
            // The creation reference is dropped and the owner reference taken: net 1.
            if class.is_none() {
                // Too big to cache: it comes straight back as ON_CACHED_MEM_FREE.
                let evicted = st.sgv.flush().into_iter().filter(|e| e.owner == h).collect();
                st.evict(evicted, fx);
            }
            h
        });
        arg.pbuf = (arg.pbuf & !0xffff_ffff) | u64::from(h);
        Ok(())
    }

    fn reply_and_get_multi(&self, arg: &mut MultiBuffer) -> IoctlResult {
        // An ioctl: the caller blocks in it, so it may hold no lock (checked in test builds).
        locks::assert_no_locks_held("SCST_USER_REPLY_AND_GET_MULTI");
        let token = &mut LockToken::root();
        let dev = self.file.device()?;
        let mut header = arg.header();
        let count = header.replies_cnt.max(0) as usize;
        // One syscall for the whole array; it stops at the first unreadable element.
        let (replies, faulted) = read_replies(&dev.memory, header.preplies, count);
        let wanted = header.cmds_cnt.max(0) as usize;
        let outcome = reply_and_get(dev, token, &replies, faulted, arg, wanted, true);
        // replies_done is the index of the failing reply, or all of them; the kernel writes
        // it before fetching (spec §3.3), which nobody can see apart from the final header.
        header.replies_done = outcome.replies_done as i16;
        header.cmds_cnt = outcome.delivered as i16;
        arg.set_header(header);
        outcome.result
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.file.poll.fd()
    }
}
