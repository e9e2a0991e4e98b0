//! Shared fixtures of the integration suites: a [`Rig`] (loopback kernel + registered frontend +
//! store), a [`GatedStore`] whose completions the test releases, to hold commands in flight (and
//! whose failure and abort support the test controls), an [`UnpluggableFd`] to take the device
//! away from under the handler, and [`release_pool`], the only way the suites unmap a command
//! buffer pool: under the teardown's unmap permit.

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi;
use scst_accel_handler::abi::Opt;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::PoolPermit;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackFd;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ScsiCompletion;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::loopback::SessionSpec;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreCompletion;
use scst_accel_handler::store::StoreError;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::store::StoreQueue;
use scst_accel_handler::store::StoreRequest;
use scst_accel_handler::store::StoreStatus;
use scst_accel_handler::transport::fdio::EventFd;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::transport::register::register;
use scst_accel_handler::transport::register::RegisterParams;
use scst_accel_handler::transport::Errno;
use scst_accel_handler::transport::IoctlResult;
use scst_accel_handler::transport::ScstUserFd;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Longest any test waits for one event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A loopback kernel with our handler registered and serving.
pub struct Rig {
    /// The kernel (also the initiator side).
    pub kernel: LoopbackKernel,
    /// The handler.
    pub frontend: Option<Frontend>,
    /// Device name.
    pub name: String,
    /// Block size.
    pub block_size: u32,
    /// Blocks.
    pub blocks: u64,
}

/// Every test on a rig checks, as it ends, that our handler left each cached buffer alone
/// while SCST owned it (the loopback kernel's check, `buffer_ownership_violations`): the
/// teardown and abort tests are where a DMA outliving its command's reply would show. The
/// frontend goes first, so the buffers its close gives back are checked too. The count is the
/// kernel's: on a kernel several rigs share (`Rig::on_kernel`), the one dropped first may be
/// named for another's.
impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.frontend.take());
        let violations = self.kernel.buffer_ownership_violations();
        if violations > 0 && !std::thread::panicking() {
            panic!(
                "{violations} buffers of {} were written while SCST owned them (after their EXEC \
                 reply, before their return): see the loopback kernel's error log",
                self.name
            );
        }
    }
}

impl Rig {
    /// Register `name` with `opt` and serve it from `store`, with host-only buffers.
    pub fn new(name: &str, block_size: u32, blocks: u64, opt: Opt, store: Arc<dyn Store>) -> Self {
        Self::with_pool(
            name,
            block_size,
            blocks,
            opt,
            store,
            Arc::new(SgvPool::new(None, None, 1 << 30)),
        )
    }

    /// Register `name` with `opt` and serve it from `store` with buffers from `pool`.
    pub fn with_pool(
        name: &str,
        block_size: u32,
        blocks: u64,
        opt: Opt,
        store: Arc<dyn Store>,
        pool: Arc<SgvPool>,
    ) -> Self {
        let config = FrontendConfig {
            workers: 2,
            cmds_per_call: 8,
            ..FrontendConfig::default()
        };
        Self::with_config(name, block_size, blocks, opt, store, pool, config)
    }

    /// As [`Rig::with_pool`] with a frontend configuration of the caller's.
    pub fn with_config(
        name: &str,
        block_size: u32,
        blocks: u64,
        opt: Opt,
        store: Arc<dyn Store>,
        pool: Arc<SgvPool>,
        config: FrontendConfig,
    ) -> Self {
        Self::with_fd(name, block_size, blocks, opt, store, pool, config, |fd| {
            Arc::new(fd)
        })
    }

    /// As [`Rig::with_config`], serving the registered loopback fd through `wrap` (an
    /// [`UnpluggableFd`], say).
    #[allow(clippy::too_many_arguments)]
    pub fn with_fd(
        name: &str,
        block_size: u32,
        blocks: u64,
        opt: Opt,
        store: Arc<dyn Store>,
        pool: Arc<SgvPool>,
        config: FrontendConfig,
        wrap: impl FnOnce(LoopbackFd) -> Arc<dyn ScstUserFd>,
    ) -> Self {
        let kernel = LoopbackKernel::new(KernelConfig::default());
        Self::on_kernel(kernel, name, block_size, blocks, opt, store, pool, config, wrap)
    }

    /// As [`Rig::with_fd`], registering `name` on an existing loopback `kernel`: several rigs
    /// on one kernel are several LUNs of one SCST (what a kernel-wide suspension spans).
    #[allow(clippy::too_many_arguments)]
    pub fn on_kernel(
        kernel: LoopbackKernel,
        name: &str,
        block_size: u32,
        blocks: u64,
        opt: Opt,
        store: Arc<dyn Store>,
        pool: Arc<SgvPool>,
        config: FrontendConfig,
        wrap: impl FnOnce(LoopbackFd) -> Arc<dyn ScstUserFd>,
    ) -> Self {
        let fd = kernel.open(true);
        register(&fd, &RegisterParams::new(name, block_size, opt)).expect("registration");
        let disk = Arc::new(Disk::new(DiskConfig::new(block_size, blocks)));

        let frontend = Frontend::start(wrap(fd), disk, store, pool, config).expect("frontend");
        Self {
            kernel,
            frontend: Some(frontend),
            name: name.into(),
            block_size,
            blocks,
        }
    }

    /// A RAM-backed rig with scst-accel's default options.
    pub fn ram(name: &str, block_size: u32, blocks: u64) -> Self {
        Self::new(
            name,
            block_size,
            blocks,
            default_options(),
            Arc::new(RamStore::new(block_size, blocks, 2048)),
        )
    }

    /// Attach one more session.
    pub fn session(&self, index: usize) -> Session {
        let spec = SessionSpec {
            initiator_name: format!("iqn.test:initiator-{index}"),
            target_name: "iqn.test:target".into(),
            lun: 0,
            rd_only: false,
        };
        self.kernel.attach_session(&self.name, spec).expect("attach")
    }

    /// The frontend.
    pub fn frontend(&self) -> &Frontend {
        self.frontend.as_ref().expect("frontend running")
    }
}

/// Send one command and wait (bounded) for its completion.
pub fn execute(session: &Session, tag: u64, cdb: &[u8], data_out: Vec<u8>, data_in: u32) -> ScsiCompletion {
    session
        .submit(ScsiRequest {
            tag,
            cdb: cdb.to_vec(),
            data_out,
            expected_data_in: data_in,
            queue_type: scst_accel_handler::abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    let completion = session
        .completions()
        .recv_timeout(WAIT)
        .expect("completion within the bound");
    assert_eq!(completion.tag, tag, "completion for another command");
    completion
}

/// A store that passes requests to a RAM store but holds each completion until the test
/// releases it, so commands can be kept in flight deterministically. By default its queues
/// cannot abort (a store that keeps a request forever); [`GatedStore::set_abortable`] makes
/// `abort_all` fail the held requests of the queue with ABORTED, as a device reset would.
/// [`GatedStore::fail`] makes [`Store::failure`] report a failure.
#[derive(Clone)]
pub struct GatedStore {
    ram: RamStore,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    held: Mutex<Vec<(StoreRequest, Arc<QueueShared>)>>,
    abortable: AtomicBool,
    /// Requests a queue takes before it answers QueueFull (0: no limit).
    capacity: AtomicUsize,
    failure: Mutex<Option<String>>,
}

struct QueueShared {
    done: Mutex<Vec<StoreCompletion>>,
    notify: EventFd,
}

impl GatedStore {
    /// Wrap a RAM store.
    pub fn new(ram: RamStore) -> Self {
        Self {
            ram,
            gate: Arc::new(Gate::default()),
        }
    }

    /// Let (or not) the queues' `abort_all` end the requests they hold (ABORTED).
    pub fn set_abortable(&self, abortable: bool) {
        self.gate.abortable.store(abortable, Ordering::SeqCst);
    }

    /// From now on, a queue holding `capacity` requests refuses more with
    /// [`StoreError::QueueFull`] (a file store's queue holds 256), leaving the rest in the batch.
    pub fn set_capacity(&self, capacity: usize) {
        self.gate.capacity.store(capacity, Ordering::SeqCst);
    }

    /// From now on, [`Store::failure`] reports `why`.
    pub fn fail(&self, why: &str) {
        *self.gate.failure.lock().expect("gate") = Some(why.to_string());
    }

    /// Requests currently held.
    pub fn held(&self) -> usize {
        self.gate.held.lock().expect("gate").len()
    }

    /// Execute and complete every held request.
    pub fn release_all(&self) -> usize {
        let held: Vec<_> = std::mem::take(&mut *self.gate.held.lock().expect("gate"));
        let n = held.len();
        for (req, queue) in held {
            self.complete(&req, &queue);
        }
        n
    }

    /// Execute `req` on the RAM store and complete it on its queue.
    fn complete(&self, req: &StoreRequest, queue: &QueueShared) {
        let status = self
            .ram
            .execute(&mut scst_accel_handler::store::StoreToken::root(), req);
        queue
            .done
            .lock()
            .expect("queue")
            .push(StoreCompletion { tag: req.tag, status });
        queue.notify.signal();
    }

    /// Execute and complete the request held last, if any; whether there was one.
    pub fn release_newest(&self) -> bool {
        let newest = self.gate.held.lock().expect("gate").pop();
        let Some((req, queue)) = newest else {
            return false;
        };
        self.complete(&req, &queue);
        true
    }

    /// Wait (bounded) until `n` requests are held.
    pub fn wait_held(&self, n: usize) -> bool {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.held() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

impl Store for GatedStore {
    fn info(&self) -> StoreInfo {
        self.ram.info()
    }

    fn failure(&self) -> Option<String> {
        self.gate.failure.lock().expect("gate").clone()
    }

    fn dump(&self) -> Option<String> {
        Some(format!("gated store: {} request(s) held", self.held()))
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        let shared = QueueShared {
            done: Mutex::new(Vec::new()),
            notify: EventFd::new().map_err(|e| StoreError::Device(e.to_string()))?,
        };
        Ok(Box::new(GatedQueue {
            gate: Arc::clone(&self.gate),
            shared: Arc::new(shared),
            in_flight: 0,
        }))
    }
}

struct GatedQueue {
    gate: Arc<Gate>,
    shared: Arc<QueueShared>,
    in_flight: usize,
}

impl StoreQueue for GatedQueue {
    fn submit(
        &mut self,
        _token: &mut scst_accel_handler::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        let capacity = self.gate.capacity.load(Ordering::SeqCst);
        let room = if capacity == 0 {
            batch.len()
        } else {
            capacity.saturating_sub(self.in_flight).min(batch.len())
        };
        let mut held = self.gate.held.lock().expect("gate");
        for req in batch.drain(..room) {
            self.in_flight += 1;
            held.push((req, Arc::clone(&self.shared)));
        }
        if batch.is_empty() {
            Ok(())
        } else {
            Err(StoreError::QueueFull {
                in_flight: self.in_flight,
            })
        }
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        self.shared.notify.clear();
        let mut done = self.shared.done.lock().expect("queue");
        let n = done.len();
        self.in_flight -= n;
        out.append(&mut done);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.shared.notify.as_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn abort_all(&mut self) -> usize {
        if !self.gate.abortable.load(Ordering::SeqCst) {
            return 0;
        }
        let mine: Vec<StoreRequest> = {
            let mut held = self.gate.held.lock().expect("gate");
            let (mine, others) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|(_, queue)| Arc::ptr_eq(queue, &self.shared));
            *held = others;
            mine.into_iter().map(|(req, _)| req).collect()
        };
        let n = mine.len();
        let mut done = self.shared.done.lock().expect("queue");
        for req in mine {
            done.push(StoreCompletion {
                tag: req.tag,
                status: StoreStatus::Aborted,
            });
        }
        drop(done);
        self.shared.notify.signal();
        n
    }
}

/// An scst_user fd that can be taken away from under the handler: once [`unplugged`], every
/// REPLY_AND_GET_MULTI answers ENODEV, as the kernel does for an fd whose device is gone. The
/// loopback kernel itself has no way to unregister a device while its fd is open (as with
/// SCST, only the fd's release does), so this wrapper stands for SCST closing the device. The
/// loopback device behind it is released (its commands answered by the close path) when the
/// frontend closes the fd.
///
/// [`unplugged`]: UnpluggableFd::unplug
pub struct UnpluggableFd {
    inner: LoopbackFd,
    unplugged: Arc<AtomicBool>,
}

impl UnpluggableFd {
    /// Wrap `inner`; `unplugged` is the switch ([`UnpluggableFd::unplug`] sets it).
    pub fn new(inner: LoopbackFd, unplugged: Arc<AtomicBool>) -> Self {
        Self { inner, unplugged }
    }

    /// Take the device away.
    pub fn unplug(switch: &AtomicBool) {
        switch.store(true, Ordering::SeqCst);
    }

    fn gone(&self) -> IoctlResult {
        if self.unplugged.load(Ordering::SeqCst) {
            Err(Errno::ENODEV)
        } else {
            Ok(())
        }
    }
}

impl ScstUserFd for UnpluggableFd {
    fn register_device(&self, desc: &abi::DevDesc) -> IoctlResult {
        self.inner.register_device(desc)
    }
    fn unregister_device(&self) -> IoctlResult {
        self.inner.unregister_device()
    }
    fn set_options(&self, opt: &Opt) -> IoctlResult {
        self.gone()?;
        self.inner.set_options(opt)
    }
    fn get_options(&self) -> IoctlResult<Opt> {
        self.gone()?;
        self.inner.get_options()
    }
    fn reply_and_get_cmd(&self, cmd: &mut abi::GetCmd) -> IoctlResult {
        self.gone()?;
        self.inner.reply_and_get_cmd(cmd)
    }
    fn reply_cmd(&self, reply: &abi::ReplyCmd) -> IoctlResult {
        self.gone()?;
        self.inner.reply_cmd(reply)
    }
    fn flush_cache(&self) -> IoctlResult {
        self.gone()?;
        self.inner.flush_cache()
    }
    fn device_capacity_changed(&self) -> IoctlResult {
        self.gone()?;
        self.inner.device_capacity_changed()
    }
    fn get_extended_cdb(&self, arg: &abi::GetExtCdb) -> IoctlResult {
        self.gone()?;
        self.inner.get_extended_cdb(arg)
    }
    fn prealloc_buffer(&self, arg: &mut abi::PreallocBuffer) -> IoctlResult {
        self.gone()?;
        self.inner.prealloc_buffer(arg)
    }
    fn reply_and_get_multi(&self, arg: &mut abi::MultiBuffer) -> IoctlResult {
        // As the kernel: no device, no reply processed, nothing fetched.
        self.gone()?;
        self.inner.reply_and_get_multi(arg)
    }
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.inner.poll_fd()
    }
}

/// How a [`MeddlingFd`] serves REPLY_AND_GET_MULTI: given the real loopback fd and the
/// caller's buffer, it may call through, change what comes back, or fail as a kernel would.
pub type MultiHook = dyn Fn(&LoopbackFd, &mut abi::MultiBuffer) -> IoctlResult + Send + Sync;

/// A loopback fd whose REPLY_AND_GET_MULTI goes through a test's hook, to make the kernel do
/// what the spec allows and the model never does on its own (fail before reading a reply,
/// hand over an EXEC that breaks the contract). Every other ioctl goes straight through.
pub struct MeddlingFd {
    inner: LoopbackFd,
    hook: Box<MultiHook>,
}

impl MeddlingFd {
    /// Serve `inner`, with REPLY_AND_GET_MULTI through `hook`.
    pub fn new(inner: LoopbackFd, hook: Box<MultiHook>) -> Self {
        Self { inner, hook }
    }
}

impl ScstUserFd for MeddlingFd {
    fn register_device(&self, desc: &abi::DevDesc) -> IoctlResult {
        self.inner.register_device(desc)
    }
    fn unregister_device(&self) -> IoctlResult {
        self.inner.unregister_device()
    }
    fn set_options(&self, opt: &Opt) -> IoctlResult {
        self.inner.set_options(opt)
    }
    fn get_options(&self) -> IoctlResult<Opt> {
        self.inner.get_options()
    }
    fn reply_and_get_cmd(&self, cmd: &mut abi::GetCmd) -> IoctlResult {
        self.inner.reply_and_get_cmd(cmd)
    }
    fn reply_cmd(&self, reply: &abi::ReplyCmd) -> IoctlResult {
        self.inner.reply_cmd(reply)
    }
    fn flush_cache(&self) -> IoctlResult {
        self.inner.flush_cache()
    }
    fn device_capacity_changed(&self) -> IoctlResult {
        self.inner.device_capacity_changed()
    }
    fn get_extended_cdb(&self, arg: &abi::GetExtCdb) -> IoctlResult {
        self.inner.get_extended_cdb(arg)
    }
    fn prealloc_buffer(&self, arg: &mut abi::PreallocBuffer) -> IoctlResult {
        self.inner.prealloc_buffer(arg)
    }
    fn reply_and_get_multi(&self, arg: &mut abi::MultiBuffer) -> IoctlResult {
        (self.hook)(&self.inner, arg)
    }
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.inner.poll_fd()
    }
}

/// What [`release_pool`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolRelease {
    /// The pool was shut down (flushed and unmapped) under the permit.
    pub unmapped: bool,
    /// No permit: the pool was leaked, not unmapped (the device may still DMA into it).
    pub leaked_without_permit: bool,
    /// Buffers the pool could not get back (held elsewhere), or leaked with the pool.
    pub leaked: u64,
    /// Bytes still mapped afterwards.
    pub mapped_after: u64,
}

/// Shut the command-buffer pool down, only under the teardown's unmap permit
/// ([`scst_accel_handler::frontend::FrontendReport::unmap`]). Without one, a device lease is
/// outstanding: the pool is leaked (forgotten, never unmapped), loudly and counted, because a
/// leak is better than a DMA into unmapped memory.
pub fn release_pool(pool: Arc<SgvPool>, permit: Option<PoolPermit>) -> PoolRelease {
    let Some(permit) = permit else {
        let stats = pool.stats();
        log::error!(
            "no unmap permit: leaking the buffer pool ({} buffers in use, {} bytes mapped) instead of unmapping it",
            stats.in_use,
            stats.mapped_bytes
        );
        std::mem::forget(pool);
        return PoolRelease {
            unmapped: false,
            leaked_without_permit: true,
            leaked: stats.in_use.max(1),
            mapped_after: stats.mapped_bytes,
        };
    };
    let out = match Arc::try_unwrap(pool) {
        Ok(pool) => match pool.shutdown() {
            Ok(stats) => PoolRelease {
                unmapped: true,
                mapped_after: stats.mapped_bytes,
                ..PoolRelease::default()
            },
            Err(e) => {
                log::error!("pool: {e}");
                PoolRelease {
                    leaked: 1,
                    ..PoolRelease::default()
                }
            }
        },
        Err(pool) => PoolRelease {
            leaked: pool.stats().in_use.max(1),
            mapped_after: pool.stats().mapped_bytes,
            ..PoolRelease::default()
        },
    };
    // The unmap is done: grants may resume (there is nobody left to grant).
    drop(permit);
    out
}

pub mod sim;
