//! The frontend: worker threads that serve one registered scst_user fd with the SCSI engine and
//! a store.
//!
//! Each worker owns its store queue and its reply batch, and talks to the fd with
//! REPLY_AND_GET_MULTI on a non-blocking fd, waiting in `poll(2)` (spec §8 pitfall 2, design a):
//! no thread ever sleeps inside an ioctl, so no signal can make the kernel resubmit a consumed
//! reply. The only shared state is the engine (`Disk`, internally synchronized), the buffer
//! table and counters.

mod buffers;
mod teardown;
mod worker;

pub use buffers::BufferFigures;
pub use buffers::BufferTable;
pub use teardown::TeardownConfig;
pub use teardown::TeardownReport;
pub use teardown::TeardownStep;

use crate::scsi::Disk;
use crate::store::Store;
use crate::store::StoreError;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::OrderedMutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Frontend tuning.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Worker threads serving the fd.
    pub workers: usize,
    /// Commands fetched per REPLY_AND_GET_MULTI.
    pub cmds_per_call: usize,
    /// How long an idle worker sleeps in poll before re-checking for stop.
    pub idle_poll: Duration,
    /// Cap on a command's deadline (the payload's timeout, or this when it has none): past it
    /// the watchdog aborts the queue's requests on the device and answers them.
    pub max_command_timeout: Duration,
    /// On stop, how long workers wait for in-flight store requests before leaving them to the
    /// kernel's close path.
    pub stop_grace: Duration,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            cmds_per_call: 16,
            idle_poll: Duration::from_millis(50),
            stop_grace: Duration::from_secs(5),
            max_command_timeout: Duration::from_secs(30),
        }
    }
}

/// Errors starting the frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A worker could not get a store queue.
    #[error("cannot open a store queue for worker {worker}")]
    Queue {
        /// Worker index.
        worker: usize,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// A worker thread could not be spawned.
    #[error("cannot spawn worker thread {worker}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Counters, updated by workers with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// EXEC commands received.
    pub exec: AtomicU64,
    /// EXEC replies with a status other than GOOD.
    pub exec_errors: AtomicU64,
    /// PARSE commands.
    pub parse: AtomicU64,
    /// ALLOC_MEM commands.
    pub alloc_mem: AtomicU64,
    /// ON_FREE_CMD commands.
    pub on_free: AtomicU64,
    /// ON_CACHED_MEM_FREE commands.
    pub on_cached_mem_free: AtomicU64,
    /// Task management messages.
    pub task_mgmt: AtomicU64,
    /// ATTACH_SESS.
    pub attach: AtomicU64,
    /// DETACH_SESS.
    pub detach: AtomicU64,
    /// Replies the kernel refused (logged with handle and errno).
    pub reply_errors: AtomicU64,
    /// Commands answered BUSY / TASK SET FULL for lack of buffers.
    pub busy: AtomicU64,
    /// ioctl calls made.
    pub ioctls: AtomicU64,
    /// EXECs answered BUSY because intake had stopped (teardown step 1).
    pub refused_in_teardown: AtomicU64,
    /// EXEC replies sent after the teardown began (completed, failed or BUSY).
    pub answered_in_teardown: AtomicU64,
    /// Store requests aborted by the teardown's escalation.
    pub aborted: AtomicU64,
    /// Watchdog escalations (a command missed its deadline).
    pub deadline_escalations: AtomicU64,
}

/// A snapshot of [`Counters`] and buffer figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// EXEC commands received.
    pub exec: u64,
    /// EXEC replies with a status other than GOOD.
    pub exec_errors: u64,
    /// PARSE.
    pub parse: u64,
    /// ALLOC_MEM.
    pub alloc_mem: u64,
    /// ON_FREE_CMD.
    pub on_free: u64,
    /// ON_CACHED_MEM_FREE.
    pub on_cached_mem_free: u64,
    /// Task management messages.
    pub task_mgmt: u64,
    /// ATTACH_SESS.
    pub attach: u64,
    /// DETACH_SESS.
    pub detach: u64,
    /// Refused replies.
    pub reply_errors: u64,
    /// BUSY answers.
    pub busy: u64,
    /// ioctl calls.
    pub ioctls: u64,
    /// EXECs answered BUSY because intake had stopped.
    pub refused_in_teardown: u64,
    /// EXEC replies sent after the teardown began.
    pub answered_in_teardown: u64,
    /// Store requests aborted by the teardown.
    pub aborted: u64,
    /// Watchdog escalations.
    pub deadline_escalations: u64,
    /// Store requests in flight now.
    pub inflight: u64,
    /// Buffers.
    pub buffers: BufferFigures,
}

/// What a worker reports when it leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerExit {
    /// Store requests still in flight when the stop grace ran out (their commands are answered
    /// by the kernel's close path).
    pub abandoned: usize,
    /// Replies that could not be delivered.
    pub undelivered_replies: usize,
}

/// What [`Frontend::shutdown`] reports.
#[derive(Clone, Debug, Default)]
pub struct FrontendReport {
    /// Final counters.
    pub stats: FrontendStats,
    /// Per-worker exits.
    pub workers: Vec<WorkerExit>,
    /// Workers that panicked (a bug; logged).
    pub panicked_workers: usize,
    /// What the teardown did.
    pub teardown: TeardownReport,
}

/// A session SCST attached to our device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// LUN.
    pub lun: u64,
    /// Initiator name.
    pub initiator: String,
    /// Read-only.
    pub rd_only: bool,
}

pub(crate) struct Shared {
    fd: Arc<dyn ScstUserFd>,
    disk: Arc<Disk>,
    store: Arc<dyn Store>,
    buffers: BufferTable,
    counters: Counters,
    sessions: OrderedMutex<HashMap<u64, SessionInfo>, levels::FrontendSessions>,
    phase: AtomicU8,
    /// Store requests in flight over all workers.
    inflight: AtomicUsize,
    config: FrontendConfig,
}

/// Where the frontend is in its life (architecture.md §5). Phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Serving commands.
    Serving = 0,
    /// Intake stopped: new EXECs answered BUSY, in-flight work finishing, buffers honoured.
    Draining = 1,
    /// In-flight work that did not finish in time is aborted on the device.
    Aborting = 2,
    /// Workers send what is pending and leave; nothing new is fetched.
    Leaving = 3,
}

/// The running frontend.
pub struct Frontend {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<WorkerExit>>,
}

impl Frontend {
    /// Start `config.workers` workers on a registered fd; command buffers come from `pool`
    /// (whose cap bounds what SCST may hold: beyond it SCST gets BUSY / TASK SET FULL).
    ///
    /// # Errors
    /// [`FrontendError`] if a store queue or thread cannot be had; workers already started are
    /// stopped before returning.
    pub fn start(
        fd: Arc<dyn ScstUserFd>,
        disk: Arc<Disk>,
        store: Arc<dyn Store>,
        pool: Arc<SgvPool>,
        config: FrontendConfig,
    ) -> Result<Self, FrontendError> {
        let shared = Arc::new(Shared {
            fd,
            disk,
            store,
            buffers: BufferTable::new(pool),
            counters: Counters::default(),
            sessions: OrderedMutex::new(HashMap::new()),
            phase: AtomicU8::new(Phase::Serving as u8),
            inflight: AtomicUsize::new(0),
            config: config.clone(),
        });
        let mut frontend = Self {
            shared: Arc::clone(&shared),
            workers: Vec::new(),
        };
        for index in 0..config.workers.max(1) {
            let queue = match shared.store.open_queue() {
                Ok(q) => q,
                Err(source) => {
                    frontend.stop_workers();
                    return Err(FrontendError::Queue {
                        worker: index,
                        source,
                    });
                }
            };
            let worker = worker::Worker::new(Arc::clone(&shared), queue);
            let spawned = std::thread::Builder::new()
                .name(format!("scst-worker-{index}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => frontend.workers.push(handle),
                Err(source) => {
                    frontend.stop_workers();
                    return Err(FrontendError::Spawn {
                        worker: index,
                        source,
                    });
                }
            }
        }
        log::info!("frontend started: {} workers", frontend.workers.len());
        Ok(frontend)
    }

    /// Current counters.
    pub fn stats(&self) -> FrontendStats {
        self.shared.stats()
    }

    /// Sessions attached now.
    pub fn sessions(&self) -> HashMap<u64, SessionInfo> {
        self.shared.sessions.lock_unchecked_at_runtime().clone()
    }

    /// The engine.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.shared.disk
    }

    /// FLUSH_CACHE: SCST returns every cached buffer (ON_CACHED_MEM_FREE, served by the
    /// workers). Must be called from a thread that is not a worker: the kernel suspends all
    /// activity and needs the workers to keep serving (spec §3.6, §8 pitfall 13).
    ///
    /// # Errors
    /// The kernel's errno (EBUSY when the suspend timed out).
    pub fn flush_cache(&self) -> Result<(), Errno> {
        self.shared.fd.flush_cache()
    }

    /// The disk changed size: update the engine, then DEVICE_CAPACITY_CHANGED so that SCST
    /// raises CAPACITY DATA HAS CHANGED to every initiator (spec §3.9).
    ///
    /// # Errors
    /// The kernel's errno.
    pub fn capacity_changed(&self, num_blocks: u64) -> Result<(), Errno> {
        self.shared.disk.set_num_blocks(num_blocks);
        self.shared.fd.device_capacity_changed()
    }

    /// PREALLOC_BUFFER `count` buffers of `len` bytes into SCST's SGV cache, so that the first
    /// commands find a cached buffer (spec §3.6). Returns how many the kernel took.
    ///
    /// # Errors
    /// The kernel's errno for the first refusal, after releasing that buffer.
    pub fn prealloc_buffers(&self, count: usize, len: usize) -> Result<usize, Errno> {
        for done in 0..count {
            let Some(buffer) = self.shared.buffers.allocate(len) else {
                return Ok(done);
            };
            let mut arg = crate::abi::PreallocBuffer {
                pbuf: buffer.addr(),
                bufflen: len as u32,
                for_clust_pool: 0,
                _pad: [0; 3],
            };
            if let Err(errno) = self.shared.fd.prealloc_buffer(&mut arg) {
                self.shared.buffers.release(buffer.addr());
                return Err(errno);
            }
            log::debug!(
                "preallocated buffer {:#x} ({len} bytes), owner cmd_h {}",
                buffer.addr(),
                arg.out_cmd_h()
            );
        }
        Ok(count)
    }

    /// Ask the workers to stop: they finish in-flight commands (bounded by `stop_grace`), send
    /// every pending reply, and leave.
    pub fn request_stop(&self) {
        self.shared.advance(Phase::Leaving);
    }

    fn stop_workers(&mut self) -> (Vec<WorkerExit>, usize) {
        self.request_stop();
        let mut exits = Vec::new();
        let mut panicked = 0;
        for handle in self.workers.drain(..) {
            match scst_accel_hal::locks::join(handle) {
                Ok(exit) => exits.push(exit),
                Err(_) => {
                    panicked += 1;
                    log::error!(
                        "a frontend worker panicked; its commands are answered by the kernel close path"
                    );
                }
            }
        }
        (exits, panicked)
    }

    /// Tear down with the default bounds ([`Frontend::teardown`]).
    pub fn shutdown(self) -> FrontendReport {
        self.teardown(TeardownConfig::default())
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop_workers();
        }
    }
}

impl Shared {
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            2 => Phase::Aborting,
            _ => Phase::Leaving,
        }
    }

    /// Move to `phase` (never backwards).
    fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    fn stats(&self) -> FrontendStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FrontendStats {
            exec: get(&c.exec),
            exec_errors: get(&c.exec_errors),
            parse: get(&c.parse),
            alloc_mem: get(&c.alloc_mem),
            on_free: get(&c.on_free),
            on_cached_mem_free: get(&c.on_cached_mem_free),
            task_mgmt: get(&c.task_mgmt),
            attach: get(&c.attach),
            detach: get(&c.detach),
            reply_errors: get(&c.reply_errors),
            busy: get(&c.busy),
            ioctls: get(&c.ioctls),
            refused_in_teardown: get(&c.refused_in_teardown),
            answered_in_teardown: get(&c.answered_in_teardown),
            aborted: get(&c.aborted),
            deadline_escalations: get(&c.deadline_escalations),
            inflight: self.inflight.load(Ordering::Relaxed) as u64,
            buffers: self.buffers.figures(),
        }
    }
}
