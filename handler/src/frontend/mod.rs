//! The frontend: worker threads that serve one registered scst_user fd with the SCSI engine and
//! a store.
//!
//! Each worker owns its store queue and its reply batch, and talks to the fd with
//! REPLY_AND_GET_MULTI on a non-blocking fd, waiting in `poll(2)` (spec §8 pitfall 2, design a):
//! no thread ever sleeps inside an ioctl, so no signal can make the kernel resubmit a consumed
//! reply. The only shared state is the engine (`Disk`, internally synchronized), the buffer
//! table, counters, and the teardown's primitives: the intake gate and in-flight count
//! ([`crate::teardown::Drain`]), the device leases on command buffers
//! ([`crate::teardown::LeaseTable`]) and the first teardown trigger ([`TeardownTrigger`]).
//! The teardown itself is one sequence for every trigger (`teardown.rs`).

mod buffers;
mod cap_flush;
mod dump;
mod fetch_size;
mod latency;
mod leases;
mod liveness;
mod teardown;
mod trigger;
mod worker;

pub use buffers::BufferCache;
pub use buffers::BufferFigures;
pub use buffers::BufferTable;
pub use latency::LatencyHistogram;
pub use latency::LATENCY_BUCKETS;
pub use leases::PoolPermit;

/// Lock levels whose every lock in the frontend belongs to one worker: on the command path only
/// that worker takes it (the teardown and dumps take it rarely), so it is not a lock workers
/// share. `teardown.leases`: the frontend's lease tables are one per worker
/// (`WorkerLeases`), and nothing else in the product makes a lease table.
pub const PER_WORKER_LOCK_LEVELS: &[&str] = &["teardown.leases"];
pub use teardown::TeardownConfig;
pub use teardown::TeardownReport;
pub use teardown::TeardownStep;
pub use trigger::TeardownTrigger;
pub use trigger::TriggerNotify;

use crate::scsi::Disk;
use crate::store::Store;
use crate::store::StoreError;
use crate::teardown::Drain;
use crate::transport::fdio::EventFd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a worker lingers ([`FrontendConfig::linger_for`]), whatever the configuration
/// and the commands' size: a bound on the heartbeat's age while lingering.
pub const MAX_LINGER: Duration = Duration::from_millis(1);

/// The least time between two looks of a linger (after the first, which comes as soon as the
/// yield returns). Each look at the fd is a `poll`, and each is preceded by a `sched_yield`:
/// on a CPU with nothing else to run the yield returns at once, and looks back to back made
/// 0.6 looks per command at 4 KiB, 1.3 of the handler's 1.4 syscalls per command, without
/// finding the initiator's commands any sooner in throughput (2 µs: 0.4 syscalls per
/// command, the same IOPS; docs/performance.md "Spaced looks"). The gap is waited out
/// spinning on the clock: a CPU that would otherwise be idle, not a sleep. A completion
/// poll's looks (reads of the completion ring, no syscall) stay back to back.
pub const LOOK_GAP: Duration = Duration::from_micros(2);

/// How long after its stop grace a worker may take to end before it is left detached.
const LEAVE_MARGIN: Duration = Duration::from_secs(1);

/// Frontend tuning.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Worker threads serving the fd.
    pub workers: usize,
    /// Commands fetched per REPLY_AND_GET_MULTI at most (the size of each worker's buffer).
    pub cmds_per_call: usize,
    /// Data bytes one REPLY_AND_GET_MULTI aims at: a worker asks for as many commands as hold
    /// about this much at the sizes it has been seeing (at least one, at most
    /// `cmds_per_call`), so that large commands spread over the workers instead of being
    /// copied one after the other by the first worker to look (fetch_size.rs). 0: always
    /// `cmds_per_call`.
    pub fetch_bytes: usize,
    /// How long a worker with work pending (commands in the store, replies to send, the
    /// teardown under way) waits in poll before looking again; also how often it asks the store
    /// whether it failed ([`Store::failure`]) while busy.
    pub idle_poll: Duration,
    /// How long a worker with nothing at all to do (no command in flight, no reply pending,
    /// serving) sleeps in poll: it wakes at once for a command (the scst_user fd), a store
    /// completion, a teardown step or a dump (its doorbell), so this bounds only the idle
    /// store-health check and the wake-ups of an idle service (one per `idle_park` per
    /// worker; a serving process without I/O uses no measurable CPU).
    pub idle_park: Duration,
    /// After a turn that handed replies to the kernel and found no new command, how long a
    /// worker keeps looking at the fd (a `poll` that does not wait, the CPU yielded to any
    /// other runnable thread between looks, looks at least [`LOOK_GAP`] apart) before it
    /// sleeps. The initiator's next commands usually follow the completions those replies made
    /// within microseconds; catching them awake saves the sleep, the wake-up and, on an idle CPU
    /// (a VM's halted vCPU), the latency of waking it. Zero sleeps at once. Only after a turn
    /// with replies and with no store request in flight (a device's completion wakes the worker
    /// through the store's fd), so an idle service never lingers; each linger and each look is
    /// counted (`FrontendStats::lingers`, `FrontendStats::linger_looks`).
    /// Lengthened for large commands by `linger_per_mib` ([`FrontendConfig::linger_for`]).
    pub linger: Duration,
    /// Added to `linger` per MiB of the mean size of the commands a worker has been serving
    /// (fetch_size.rs), up to [`MAX_LINGER`] in all: the initiator's answer to a completion
    /// comes later the more data it carries (it takes the data in: a copy, a checksum, a
    /// network transfer), and a worker that sleeps before it comes pays a sleep and a wake-up
    /// per turn. Default 1 ms per MiB: 10 + 4 µs at 4 KiB, 10 + 125 µs at 128 KiB.
    pub linger_per_mib: Duration,
    /// With requests in flight on a store that completes them asynchronously (a device) and
    /// nothing else to do, how long a worker looks for their completions (a reap, the CPU
    /// yielded to any other runnable thread between looks) before it sleeps on the store's
    /// interrupt, per MiB of the mean size of its commands, up to [`MAX_LINGER`]
    /// ([`FrontendConfig::completion_poll_for`]). A device's time per request grows with the
    /// data it moves, and a sleep costs a wake-up and waits out the device's interrupt
    /// moderation; small requests, whose completions come soon after they are sent, are not
    /// polled for more than a few µs. Default 1 ms per MiB: 4 µs at 4 KiB, 125 µs at 128 KiB;
    /// zero sleeps at once. Each look is counted (`FrontendStats::completion_polls`).
    pub completion_poll_per_mib: Duration,
    /// Cap on a command's deadline (the payload's timeout, or this when it has none): past it
    /// the watchdog aborts the queue's requests on the device and answers them.
    pub max_command_timeout: Duration,
    /// On stop, how long workers wait for in-flight store requests before leaving them to the
    /// kernel's close path.
    pub stop_grace: Duration,
}

impl FrontendConfig {
    /// How long a worker whose commands have carried `mean_bytes` of data on average lingers
    /// after a turn with replies: `linger`, plus `linger_per_mib` per MiB of that mean, at most
    /// [`MAX_LINGER`].
    pub fn linger_for(&self, mean_bytes: u64) -> Duration {
        self.linger
            .saturating_add(per_mib(self.linger_per_mib, mean_bytes))
            .min(MAX_LINGER)
    }

    /// How long a worker whose commands have carried `mean_bytes` of data on average looks
    /// for its store's completions before sleeping on them: `completion_poll_per_mib` per MiB
    /// of that mean, at most [`MAX_LINGER`].
    pub fn completion_poll_for(&self, mean_bytes: u64) -> Duration {
        per_mib(self.completion_poll_per_mib, mean_bytes).min(MAX_LINGER)
    }
}

/// `rate` (a time per MiB) times `bytes`.
fn per_mib(rate: Duration, bytes: u64) -> Duration {
    let rate = u64::try_from(rate.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rate.saturating_mul(bytes) >> 20)
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            cmds_per_call: 16,
            fetch_bytes: 256 << 10,
            idle_poll: Duration::from_millis(50),
            idle_park: Duration::from_secs(1),
            linger: Duration::from_micros(10),
            linger_per_mib: Duration::from_millis(1),
            completion_poll_per_mib: Duration::from_millis(1),
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
    /// The teardown trigger's eventfd, or a worker's doorbell, could not be created.
    #[error(
        "cannot create the teardown trigger's or a worker doorbell's eventfd (out of file descriptors?)"
    )]
    Trigger {
        /// Cause.
        #[source]
        source: std::io::Error,
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
    /// The disk has the engine run COMPARE AND WRITE (`CompareAndWriteBy::Handler`, the TCMU
    /// frontend's setting), which needs range locks and a window into the command's buffer
    /// that this frontend's worker does not apply: under scst_user SCST's core runs it.
    #[error(
        "the disk has the engine run COMPARE AND WRITE, which the scst_user frontend does not \
         support: use CompareAndWriteBy::ScstCore (SCST's core runs it) for scst_user disks"
    )]
    CompareAndWriteInEngine,
}

/// Errors growing a disk ([`Frontend::resize`]).
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The store refused (its capacity is the device's, a shrink, too large); nothing changed.
    #[error("the store refused the resize: {0}")]
    Store(#[source] StoreError),
    /// The store grew and the engine reports the new capacity, but SCST was not told
    /// (DEVICE_CAPACITY_CHANGED failed): initiators see the new size only after they re-read
    /// the capacity (a rescan). Retrying the resize with the same size tells SCST again.
    #[error("the disk grew to {num_blocks} blocks but SCST was not told ({errno}); retry, or rescan on the initiators")]
    Notify {
        /// The new capacity in blocks.
        num_blocks: u64,
        /// The kernel's errno.
        errno: Errno,
    },
}

/// Counters, updated by workers with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// EXEC replies with a status other than GOOD.
    pub exec_errors: AtomicU64,
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
    /// EXECs answered BUSY because intake had stopped (teardown step 1).
    pub refused_in_teardown: AtomicU64,
    /// EXEC replies sent after the teardown began (completed, failed or BUSY).
    pub answered_in_teardown: AtomicU64,
    /// Store requests aborted by the teardown's escalation.
    pub aborted: AtomicU64,
    /// Watchdog escalations (a command missed its deadline).
    pub deadline_escalations: AtomicU64,
    /// EXT_COPY_REMAP messages (EXTENDED COPY segments, spec §3.8).
    pub ext_copy_remap: AtomicU64,
    /// Of those, segments given back whole to SCST's copy manager as a leftover (the store
    /// cannot copy, or the copy is not inside this device).
    pub remap_leftovers: AtomicU64,
}

/// A snapshot of [`Counters`], the workers' per-command figures and buffer figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// EXEC commands received.
    pub exec: u64,
    /// EXECs answered whose data went to the initiator (data direction READ), any status.
    pub read_commands: u64,
    /// EXECs answered whose data came from the initiator (WRITE or BIDI), any status.
    pub write_commands: u64,
    /// EXECs answered that moved no data (or in another direction), any status. With
    /// `read_commands` and `write_commands`, every EXEC answered: `exec` counts them at their
    /// arrival, so it runs ahead of the three by the commands in flight.
    pub other_commands: u64,
    /// Bytes returned to initiators (the replies' `resp_data_len`).
    pub read_bytes: u64,
    /// Bytes written by initiators in commands answered GOOD.
    pub write_bytes: u64,
    /// EXEC latency, from the EXEC's arrival to its reply being handed to the kernel.
    pub latency: LatencyHistogram,
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
    /// Fetches that asked for fewer commands than the buffer holds, the commands being large
    /// (`FrontendConfig::fetch_bytes`).
    pub capped_fetches: u64,
    /// EXECs answered BUSY because intake had stopped.
    pub refused_in_teardown: u64,
    /// EXEC replies sent after the teardown began.
    pub answered_in_teardown: u64,
    /// Store requests aborted by the teardown.
    pub aborted: u64,
    /// Watchdog escalations.
    pub deadline_escalations: u64,
    /// EXT_COPY_REMAP messages.
    pub ext_copy_remap: u64,
    /// Segments given back whole as leftovers.
    pub remap_leftovers: u64,
    /// EXEC commands accepted and not yet answered: the drain's count
    /// ([`crate::teardown::Drain::in_flight`]).
    pub inflight: u64,
    /// Device leases on command buffers outstanding now (store requests carrying a buffer).
    pub leases_outstanding: u64,
    /// Buffers.
    pub buffers: BufferFigures,
    /// FLUSH_CACHE calls started because the buffer cap refused an allocation.
    pub cap_flushes: u64,
    /// Returns of the workers from their wait in poll: about one per `idle_park` per worker
    /// while idle ([`FrontendConfig::idle_park`]), one per batch while busy.
    pub wakeups: u64,
    /// Lingers begun ([`FrontendConfig::linger`]): one after a turn that handed replies to
    /// the kernel and fetched nothing.
    pub lingers: u64,
    /// Looks at the fd while lingering ([`FrontendConfig::linger`]): each is two syscalls
    /// (`sched_yield`, then `poll` with no wait).
    pub linger_looks: u64,
    /// Looks at the store's completions before sleeping on them
    /// ([`FrontendConfig::completion_poll_per_mib`]): each a `sched_yield` and a reap.
    pub completion_polls: u64,
}

/// What a worker reports when it leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerExit {
    /// Store requests still in flight when the stop grace ran out (their commands are answered
    /// by the kernel's close path; their device leases stay outstanding).
    pub abandoned: usize,
    /// Replies that could not be delivered (stop grace ran out, or SCST closed the device).
    pub undelivered_replies: usize,
}

/// What [`Frontend::teardown`] reports.
#[derive(Debug, Default)]
pub struct FrontendReport {
    /// Final counters.
    pub stats: FrontendStats,
    /// Per-worker exits.
    pub workers: Vec<WorkerExit>,
    /// Workers that panicked, or did not leave within their stop grace and were left
    /// detached (a bug, or a store call that never returns; logged).
    pub panicked_workers: usize,
    /// What the teardown did.
    pub teardown: TeardownReport,
    /// Permission to unmap the command-buffer pool, when no device lease is outstanding
    /// (`None` otherwise: the device may still DMA into a buffer, so the pool must NOT be
    /// unmapped; leak it, and say so). Pass it to whoever shuts the pool down; drop it after.
    pub unmap: Option<PoolPermit>,
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
    /// The handle of the ATTACH_SESS that made it (for the log when a `sess_h` comes back).
    pub attached_by: u32,
}

pub(crate) struct Shared {
    fd: Arc<dyn ScstUserFd>,
    disk: Arc<Disk>,
    store: Arc<dyn Store>,
    buffers: BufferTable,
    counters: Counters,
    /// One per worker, indexed by the worker's index, each written by its worker alone.
    figures: Box<[latency::WorkerFigures]>,
    sessions: OrderedMutex<HashMap<u64, SessionInfo>, levels::FrontendSessions>,
    /// Steps of the teardown after intake closed; whether intake is closed, and how many
    /// commands are inside, is the drain's alone.
    phase: AtomicU8,
    /// The intake gate and in-flight count: every EXEC a worker accepts holds a token until its
    /// reply is handed to SCST (teardown steps 1-2).
    drain: Drain,
    /// The device's leases on command buffers: one per store request carrying a buffer,
    /// released by its completion or revoked after a proven abort (teardown steps 3-5).
    leases: leases::WorkerLeases,
    /// The first teardown trigger.
    trigger: trigger::Trigger,
    /// How the workers' aborts went (teardown step 3).
    abort: AbortTally,
    /// Each worker's heartbeat ([`Frontend::wedged_workers`]).
    liveness: liveness::Liveness,
    /// FLUSH_CACHE when the buffer cap refuses an allocation.
    cap_flush: cap_flush::CapFlush,
    /// One doorbell per worker: rung when the worker must look now (a teardown step, a dump
    /// request), so that an idle worker can sleep in poll without a short timeout.
    doorbells: Box<[EventFd]>,
    config: FrontendConfig,
}

/// The workers' reports of the abort step: the teardown may revoke the device's leases only
/// if every worker's queue proved it holds no request any more.
#[derive(Debug, Default)]
pub(crate) struct AbortTally {
    /// Workers that ran their queue's `abort_all`.
    reported: AtomicUsize,
    /// Of those, workers whose queue still held requests afterwards (no proof of no DMA).
    unproven: AtomicUsize,
    /// Workers that left (normally or not).
    exited: AtomicUsize,
    /// Workers that panicked or left while they should have been serving: their queues never
    /// proved anything.
    failed: AtomicUsize,
}

/// Where the frontend is in its teardown (architecture.md §5), after the drain's gate closed.
/// Phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Serving commands (answering BUSY once the drain's gate is closed).
    Serving = 0,
    /// Each worker aborts what its queue still holds, once, and reports ([`AbortTally`]);
    /// nothing new reaches the device.
    Aborting = 1,
    /// Workers send what is pending and leave; nothing new is fetched.
    Leaving = 2,
}

/// The running frontend.
pub struct Frontend {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<WorkerExit>>,
    /// One dump channel per worker ([`Frontend::dump`]).
    dumpers: Vec<dump::DumpSender>,
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
        // The worker hands each store step the command's whole buffer and takes no range
        // lock: right for every plan but the engine's own COMPARE AND WRITE (its write step
        // takes the Data-Out's second half, atomically under the disk's range locks).
        if disk.capabilities().compare_and_write.in_engine() {
            return Err(FrontendError::CompareAndWriteInEngine);
        }
        let trigger = trigger::Trigger::new().map_err(|source| FrontendError::Trigger { source })?;
        let doorbells = (0..config.workers.max(1))
            .map(|_| EventFd::new())
            .collect::<std::io::Result<Box<[EventFd]>>>()
            .map_err(|source| FrontendError::Trigger { source })?;
        let shared = Arc::new(Shared {
            fd,
            disk,
            store,
            buffers: BufferTable::new(pool),
            counters: Counters::default(),
            figures: (0..config.workers.max(1))
                .map(|_| latency::WorkerFigures::default())
                .collect(),
            sessions: OrderedMutex::new(HashMap::new()),
            phase: AtomicU8::new(Phase::Serving as u8),
            drain: Drain::new(),
            leases: leases::WorkerLeases::new(config.workers.max(1)),
            trigger,
            abort: AbortTally::default(),
            liveness: liveness::Liveness::new(config.workers.max(1)),
            cap_flush: cap_flush::CapFlush::default(),
            doorbells,
            config: config.clone(),
        });
        let mut frontend = Self {
            shared: Arc::clone(&shared),
            workers: Vec::new(),
            dumpers: Vec::new(),
        };
        for index in 0..config.workers.max(1) {
            let mut queue = match shared.store.open_queue() {
                Ok(q) => q,
                Err(source) => {
                    frontend.stop_workers();
                    return Err(FrontendError::Queue {
                        worker: index,
                        source,
                    });
                }
            };
            // A device recovery inside a store call sets the worker's heartbeat ahead by its
            // bound, so the watchdog tells it from a wedge.
            if let Some(heartbeat) = shared.liveness.heartbeat(index) {
                queue.set_heartbeat(heartbeat);
            }
            let (dump_tx, dump_rx) = dump::channel();
            let worker_shared = Arc::clone(&shared);
            let guard = ExitGuard {
                shared: Arc::clone(&shared),
                worker: index,
            };
            let pool = Arc::clone(shared.buffers.pool());
            let spawned = std::thread::Builder::new()
                .name(format!("scst-worker-{index}"))
                .spawn(move || {
                    // Dropped when the worker returns or unwinds: a worker that leaves before
                    // it was told to triggers the teardown (its commands are the close path's).
                    let _guard = guard;
                    // Made here: the worker owns its thread's lock token.
                    let exit = worker::Worker::new(worker_shared, queue, index, dump_rx).run();
                    // The buffers this worker cached go back to the pool now, before the
                    // teardown can see the thread as finished: its thread-local destructor
                    // would run only after that (issue 16; dma::sgv::stash).
                    pool.return_thread_stash(&mut LockToken::root());
                    exit
                });
            match spawned {
                Ok(handle) => {
                    frontend.workers.push(handle);
                    frontend.dumpers.push(dump_tx);
                }
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

    /// Workers that look wedged: their heartbeat is older than `max_age`, or they have
    /// exited. A worker beats at the top of every loop iteration; a healthy one is never more
    /// than about `idle_poll` plus the duration of its store calls behind (worker.rs,
    /// `Worker::run`), so `max_age` should be well above both (the service uses several
    /// seconds). For a health check (the systemd watchdog): cheap, no lock, never blocks.
    pub fn wedged_workers(&self, max_age: Duration) -> Vec<usize> {
        self.shared.liveness.wedged(max_age)
    }

    /// Sessions attached now.
    pub fn sessions(&self) -> HashMap<u64, SessionInfo> {
        // `frontend.sessions` is the lowest level: holding any lock while taking it breaks the
        // order, so a root token (which asserts that none is held) is exactly as strict.
        self.shared.sessions.lock(&mut LockToken::root()).0.clone()
    }

    /// What the store says about itself now (its copy path among others).
    pub fn store_info(&self) -> crate::store::StoreInfo {
        self.shared.store.info()
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
    /// The kernel's errno (EBUSY when the suspend timed out); ESHUTDOWN once the teardown
    /// has begun (its workers are about to leave: a suspend would then wait for commands
    /// nobody answers).
    pub fn flush_cache(&self) -> Result<(), Errno> {
        self.cache_flusher()()
    }

    /// [`Frontend::flush_cache`] to run later on another thread (the kernel may hold the call
    /// for up to 90 s while it suspends SCST's activity, spec §3.6): the owner stays free to
    /// serve, supervise and tear down meanwhile. Counted from now until it returns: a teardown
    /// waits for it (bounded) before its workers leave, since the suspend waits for every
    /// command in flight, this device's included, and a fd with a thread inside an ioctl does
    /// not close (spec §5.1).
    pub fn cache_flusher(&self) -> impl FnOnce() -> Result<(), Errno> + Send + 'static {
        let fd = Arc::clone(&self.shared.fd);
        let counted = self.shared.cap_flush.other();
        let torn_down = self.shared.drain.is_closed();
        move || {
            let _counted = counted;
            if torn_down {
                return Err(Errno(libc::ESHUTDOWN));
            }
            fd.flush_cache()
        }
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

    /// Grow the disk to `num_blocks` blocks: the store first (so no initiator can address a
    /// block it does not have yet), then [`Frontend::capacity_changed`] (engine, then SCST's
    /// DEVICE_CAPACITY_CHANGED). Resizing to the current size only tells SCST again.
    ///
    /// # Errors
    /// [`ResizeError::Store`] when the store refuses (nothing changed);
    /// [`ResizeError::Notify`] when SCST could not be told.
    pub fn resize(&self, num_blocks: u64) -> Result<(), ResizeError> {
        self.shared.store.resize(num_blocks).map_err(ResizeError::Store)?;
        self.capacity_changed(num_blocks)
            .map_err(|errno| ResizeError::Notify { num_blocks, errno })
    }

    /// PREALLOC_BUFFER `count` buffers for requests of `len` bytes into SCST's SGV cache, so
    /// that the first commands find a cached buffer (spec §3.6). Each is handed over at its
    /// size class (a power of two of pages, as SCST's cache rounds), not at `len`: the kernel
    /// pins the pages `bufflen` spans and fills a class-sized object from them, so a shorter
    /// `bufflen` fails with ENOMEM. Returns how many the kernel took.
    ///
    /// # Errors
    /// The kernel's errno for the first refusal, after releasing that buffer.
    pub fn prealloc_buffers(&self, count: usize, len: usize) -> Result<usize, Errno> {
        // Each step makes an ioctl: nothing may be held (asserted by the root token).
        let mut token = LockToken::root();
        for done in 0..count {
            let Some(buffer) = self.shared.buffers.allocate(&mut token, len) else {
                return Ok(done);
            };
            let Ok(bufflen) = u32::try_from(buffer.len()) else {
                self.shared.buffers.release(&mut token, buffer.addr());
                return Err(Errno::EINVAL);
            };
            let mut arg = crate::abi::PreallocBuffer {
                pbuf: buffer.addr(),
                bufflen,
                for_clust_pool: 0,
                _pad: [0; 3],
            };
            if let Err(errno) = self.shared.fd.prealloc_buffer(&mut arg) {
                self.shared.buffers.release(&mut token, buffer.addr());
                return Err(errno);
            }
            log::debug!(
                "preallocated buffer {:#x} ({bufflen} bytes, for {len}), owner cmd_h {}",
                buffer.addr(),
                arg.out_cmd_h()
            );
        }
        Ok(count)
    }

    /// Ask for the teardown from any thread (a signal handler's thread, `serve` stopping): sets
    /// [`TeardownTrigger::Requested`] unless another trigger came first, which wakes
    /// [`Frontend::wait_trigger`]. The owner then runs [`Frontend::teardown`].
    pub fn request_teardown(&self) {
        self.shared.trigger.fire(TeardownTrigger::Requested);
    }

    /// Waits at most `timeout` for a teardown trigger (the store failed, SCST closed the
    /// device, a worker failed, or [`Frontend::request_teardown`]); `None` if none came. The
    /// first trigger is kept: every later call returns it at once. The owner then runs
    /// [`Frontend::teardown`] (which records the trigger in its report).
    pub fn wait_trigger(&self, timeout: Duration) -> Option<TeardownTrigger> {
        self.shared.trigger.wait(timeout)
    }

    /// The first teardown trigger, if one fired (never blocks).
    pub fn trigger(&self) -> Option<TeardownTrigger> {
        self.shared.trigger.get().cloned()
    }

    /// Have `notify` called when a teardown trigger fires (on the thread that fires it, a
    /// worker: it must not block), or at once if one already has: an owner whose loop waits on
    /// a channel of its own is woken instead of polling [`Frontend::trigger`].
    pub fn on_trigger(&self, notify: TriggerNotify) {
        self.shared.trigger.set_notify(notify);
    }

    /// A descriptor that polls readable once a teardown trigger fired (and stays readable), for
    /// an owner that waits in `poll(2)` on several descriptors (a signal pipe and this).
    pub fn trigger_fd(&self) -> BorrowedFd<'_> {
        self.shared.trigger.fd()
    }

    /// Tell the workers to leave and join them (they send what is pending first, bounded by
    /// `stop_grace`). Returns their exits and how many panicked; a worker that has not ended
    /// [`LEAVE_MARGIN`] after its stop grace (stuck in a store call) is left detached, logged
    /// and counted as failed: it keeps its leases, so the pool gets no unmap permit.
    fn stop_workers(&mut self) -> (Vec<WorkerExit>, usize) {
        self.shared.advance(Phase::Leaving);
        let bound = self.shared.config.stop_grace + LEAVE_MARGIN;
        let deadline = std::time::Instant::now() + bound;
        let mut exits = Vec::new();
        let mut panicked = 0;
        for (index, handle) in self.workers.drain(..).enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match scst_accel_hal::locks::join_bounded(handle, left) {
                Ok(Ok(exit)) => exits.push(exit),
                Ok(Err(_)) => {
                    panicked += 1;
                    log::error!(
                        "frontend worker {index} panicked; its commands are answered by the kernel close path"
                    );
                }
                Err(_detached) => {
                    panicked += 1;
                    log::error!(
                        "frontend worker {index} did not leave within {bound:?} (stuck in a store call?); \
                         left detached with its device leases"
                    );
                }
            }
        }
        (exits, panicked)
    }

    /// Tear down with the default bounds ([`Frontend::teardown`]) and the trigger that fired
    /// ([`TeardownTrigger::Requested`] if none).
    pub fn shutdown(self) -> FrontendReport {
        self.teardown(TeardownConfig::default())
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            // Not the orderly path (that is `teardown`): at least close intake so nothing new
            // reaches the device while the workers leave.
            self.shared.drain.close();
            self.stop_workers();
        }
    }
}

/// Counts a worker out when its thread ends, and triggers the teardown if it ended while it
/// should have been serving (a panic, or a return before `Leaving`).
struct ExitGuard {
    shared: Arc<Shared>,
    worker: usize,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        let panicked = std::thread::panicking();
        if panicked || shared.phase() != Phase::Leaving {
            shared.abort.failed.fetch_add(1, Ordering::AcqRel);
            log::error!(
                "worker {} {} while serving; its commands are answered by SCST's close path",
                self.worker,
                if panicked { "panicked" } else { "left" }
            );
            shared.trigger.fire(TeardownTrigger::WorkerFailed);
        }
        shared.liveness.exited(self.worker);
        shared.abort.exited.fetch_add(1, Ordering::AcqRel);
    }
}

impl AbortTally {
    /// A worker ran its queue's abort; `proven`: the queue holds no request afterwards.
    pub(crate) fn report(&self, proven: bool) {
        if !proven {
            self.unproven.fetch_add(1, Ordering::AcqRel);
        }
        self.reported.fetch_add(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Serving,
            1 => Phase::Aborting,
            _ => Phase::Leaving,
        }
    }

    /// Move to `phase` (never backwards), and wake every worker to act on it.
    fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.ring_all();
    }

    /// Ring every worker's doorbell.
    pub(crate) fn ring_all(&self) {
        for doorbell in self.doorbells.iter() {
            doorbell.signal();
        }
    }

    /// Ring worker `index`'s doorbell.
    pub(crate) fn ring(&self, index: usize) {
        if let Some(doorbell) = self.doorbells.get(index) {
            doorbell.signal();
        }
    }

    fn stats(&self) -> FrontendStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = FrontendStats {
            exec_errors: get(&c.exec_errors),
            task_mgmt: get(&c.task_mgmt),
            attach: get(&c.attach),
            detach: get(&c.detach),
            reply_errors: get(&c.reply_errors),
            busy: get(&c.busy),
            refused_in_teardown: get(&c.refused_in_teardown),
            answered_in_teardown: get(&c.answered_in_teardown),
            aborted: get(&c.aborted),
            deadline_escalations: get(&c.deadline_escalations),
            ext_copy_remap: get(&c.ext_copy_remap),
            remap_leftovers: get(&c.remap_leftovers),
            inflight: self.drain.in_flight(),
            // An API entry: the caller holds no lock (asserted by the root token).
            leases_outstanding: self.leases.outstanding(&mut LockToken::root()) as u64,
            buffers: self.buffers.figures(),
            cap_flushes: self.cap_flush.started(),
            ..FrontendStats::default()
        };
        for figures in self.figures.iter() {
            figures.add_to(&mut stats);
        }
        stats
    }
}
