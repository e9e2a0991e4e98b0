//! The thread that serves one TCMU ring: [`super::exec::Executor::step`] in a loop, bounded
//! waits, deadlines checked every turn, and on [`TcmuWorker::stop`] the teardown in the only
//! safe order: stop taking ring entries, drain the store queue (the device's in-flight
//! requests, aborted at the budget), and only then unmap the ring's mapping (the UIO device is
//! dropped on this thread, after the drain).
//!
//! One thread per ring: the ring has one consumer (`cmd_tail` is ours alone), so more threads
//! would only contend for it. The store queue is the worker's own, as in the scst_user worker.

use super::exec::Drained;
use super::exec::Executor;
use super::exec::NotDrained;
use super::exec::Progress;
use super::exec::StepError;
use super::exec::TaskManagementStats;
use super::ring::Ring;
use super::uio::UioDevice;
use crate::heartbeat::Heartbeat;
use crate::store::StoreToken;
use scst_accel_hal::EventFd;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// What [`TcmuWorker::stop`] allows beyond the drain's own bound (twice `drain_budget`): the
/// serving pass the stop finds the worker in (the stop's eventfd ends its wait at once) and the
/// ring's unmap after the drain, as the scst_user frontend's stop grace does for its workers.
pub const LEAVE_MARGIN: Duration = Duration::from_secs(1);

/// The kernel's default command timeout of a TCMU backstore (`attrib/cmd_time_out`;
/// target_core_user.c `TCMU_TIME_OUT`).
pub const KERNEL_CMD_TIME_OUT: Duration = Duration::from_secs(30);

/// The per-command deadline a worker can use under a backstore whose kernel command timeout
/// is `kernel` (`attrib/cmd_time_out`; `None` for 0, no timeout): `wanted`, capped at half of
/// `kernel`. The rule: the handler's escalation (a dump, the store queue's abort, the answer
/// of the aborted command) must run and be answered before the kernel's timer fails the
/// command to the initiator on its own (`tcmu_check_expired_ring_cmd`: NOT READY / LOGICAL
/// UNIT COMMUNICATION FAILURE, the entry kept in the ring); after that an answer is only
/// reclaimed, and the initiator may already be retrying the command elsewhere. Half leaves
/// the other half for the abort and the answer. With no kernel timeout, `wanted` as it is.
pub fn command_timeout_under(kernel: Option<Duration>, wanted: Duration) -> Duration {
    match kernel {
        Some(kernel) => wanted.min(kernel / 2),
        None => wanted,
    }
}

/// Timing of a worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Per-command deadline in the store before escalation.
    pub command_timeout: Duration,
    /// How long the teardown waits for the store before it aborts (and then as long again).
    pub drain_budget: Duration,
    /// The longest wait of one turn while commands are in flight or parked (how often their
    /// deadlines are checked).
    pub idle_poll: Duration,
    /// The longest wait of one turn with nothing at all to watch: only a ring entry, a range
    /// grant or a stop (an eventfd, seen at once) wakes the worker before it, so an idle disk
    /// costs one wake-up per `idle_park`.
    pub idle_park: Duration,
}

impl WorkerConfig {
    /// How long [`TcmuWorker::stop`] waits for the thread: its drain (at most twice
    /// `drain_budget`) and [`LEAVE_MARGIN`]. A worker still running then is stuck in a store
    /// call (a device recovery may keep one for twice the board's recovery bound, a VFIO reset
    /// that never returns for ever), and is left.
    pub fn stop_bound(&self) -> Duration {
        self.drain_budget.saturating_mul(2).saturating_add(LEAVE_MARGIN)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            command_timeout: super::exec::DEFAULT_COMMAND_TIMEOUT,
            drain_budget: Duration::from_secs(5),
            idle_poll: Duration::from_millis(50),
            idle_park: Duration::from_secs(1),
        }
    }
}

/// What a worker did, at its end.
#[derive(Debug)]
pub struct WorkerReport {
    /// Totals of every turn.
    pub progress: Progress,
    /// Deadline escalations.
    pub escalations: u64,
    /// What task management did.
    pub task_management: TaskManagementStats,
    /// Why serving ended before a stop was asked, if it did (a broken ring, a UIO error).
    pub error: Option<StepError>,
    /// The drain's outcome: the proof that the store holds nothing of ours, or what is left.
    pub drained: Result<Drained, NotDrained>,
    /// How long the drain took.
    pub drain_time: Duration,
}

/// A worker's figures while it runs, for status and metrics: written by the worker thread
/// once a turn (relaxed stores: each figure is a monotonic count read on its own, no figure
/// guards another), read by any thread.
#[derive(Debug, Default)]
struct LiveCounters {
    started: AtomicU64,
    completed: AtomicU64,
    refused: AtomicU64,
    task_management: AtomicU64,
    errors: AtomicU64,
    escalations: AtomicU64,
    turns: AtomicU64,
}

/// A snapshot of a worker's figures ([`TcmuWorker::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Commands taken from the ring.
    pub started: u64,
    /// Commands answered.
    pub completed: u64,
    /// Malformed ring entries refused (answered CHECK CONDITION by the ring).
    pub refused: u64,
    /// Task management notices.
    pub task_management: u64,
    /// Commands answered with a status other than GOOD.
    pub errors: u64,
    /// Deadline escalations.
    pub escalations: u64,
    /// Turns of the serving loop: each wait that ended (an event, or its bound) and what was
    /// served after it. An idle worker turns once per `idle_park`.
    pub turns: u64,
}

impl WorkerStats {
    /// Commands taken and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.started.saturating_sub(self.completed)
    }
}

impl LiveCounters {
    fn publish(&self, total: &Progress, exec: &Executor, turns: u64) {
        self.turns.store(turns, Ordering::Relaxed);
        let store = |c: &AtomicU64, v: usize| c.store(v as u64, Ordering::Relaxed);
        store(&self.started, total.started);
        store(&self.completed, total.completed);
        store(&self.refused, total.refused);
        store(&self.task_management, total.task_management);
        self.errors.store(exec.errors(), Ordering::Relaxed);
        self.escalations.store(exec.escalations(), Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            started: load(&self.started),
            completed: load(&self.completed),
            refused: load(&self.refused),
            task_management: load(&self.task_management),
            errors: load(&self.errors),
            escalations: load(&self.escalations),
            turns: load(&self.turns),
        }
    }
}

/// Why [`TcmuWorker::stop`] has no report to give.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The thread panicked. Its store requests' fate is unknown (treat the store as not
    /// drained: leak the buffer pool rather than unmap it); its ring was unmapped as the
    /// thread unwound.
    #[error("the worker panicked ({0}); its store requests' fate is unknown, so its buffer pool must be leaked, not unmapped")]
    Panicked(String),
    /// The thread had not ended this long after the stop was asked
    /// ([`WorkerConfig::stop_bound`]): it is stuck in a store call. It is left running,
    /// detached: it still maps the ring and its requests may still be in the device's hands,
    /// so the device must be reset or left, its buffer pool leaked, and the backstore (whose
    /// ring it maps) left in configfs. Should the call ever return, the thread drains and
    /// unmaps the ring on its own.
    #[error(
        "the worker did not end within {0:?} of its stop (stuck in a store call: a device \
         recovery, a hung system call); left running, detached, with its ring mapped and its \
         store requests perhaps still in the device's hands"
    )]
    Detached(Duration),
}

/// A running worker; stop it with [`TcmuWorker::stop`].
pub struct TcmuWorker {
    stop: Arc<AtomicBool>,
    /// Signalled with `stop`, so a worker parked in its wait sees the stop at once.
    stop_wake: Arc<EventFd>,
    live: Arc<LiveCounters>,
    /// Beaten at the top of each turn (set ahead over an idle park, and by the store queue
    /// over a device recovery).
    heartbeat: Heartbeat,
    /// [`WorkerConfig::stop_bound`] of the configuration it was spawned with.
    stop_bound: Duration,
    thread: JoinHandle<WorkerReport>,
}

impl TcmuWorker {
    /// Attach to the ring of `device` and serve it with `exec` on a new thread named `name`.
    ///
    /// # Errors
    /// The ring's layout is not one this handler reads ([`super::ring::LayoutError`], as
    /// text), or the thread cannot be spawned.
    pub fn spawn(
        name: &str,
        device: UioDevice,
        mut exec: Executor,
        config: WorkerConfig,
    ) -> Result<Self, std::io::Error> {
        let ring = Ring::attach(device.region())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        log::info!(
            "tcmu: uio{} {:?}: {} bytes mapped, mailbox flags {:#x}, ring {:?}",
            device.info().index,
            device.info().name,
            device.info().map_size,
            ring.flags(),
            ring.state()
        );
        exec.set_command_timeout(config.command_timeout);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_wake = Arc::new(EventFd::new()?);
        let heartbeat = Heartbeat::new();
        exec.set_heartbeat(heartbeat.clone());
        let live = Arc::new(LiveCounters::default());
        let thread = {
            let stop = Arc::clone(&stop);
            let stop_wake = Arc::clone(&stop_wake);
            let heartbeat = heartbeat.clone();
            let live = Arc::clone(&live);
            std::thread::Builder::new().name(name.to_owned()).spawn(move || {
                let beat = Beat {
                    stop: &stop,
                    stop_wake: &stop_wake,
                    heartbeat: &heartbeat,
                    live: &live,
                };
                serve(device, ring, exec, config, &beat)
            })?
        };
        Ok(Self {
            stop,
            stop_wake,
            live,
            heartbeat,
            stop_bound: config.stop_bound(),
            thread,
        })
    }

    /// Whether the thread has ended (serving failed) without a stop.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The worker's figures as of its last turn.
    pub fn stats(&self) -> WorkerStats {
        self.live.snapshot()
    }

    /// Ask the worker to stop without waiting (its drain starts at its next turn): several
    /// workers asked first, then each [`TcmuWorker::stop`]ped, drain in parallel.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_wake.signal();
    }

    /// How long ago the worker last began a turn (0 while it is parked idle within the bound
    /// it set: its heartbeat is then the time it will be back by).
    pub fn heartbeat_age(&self) -> Duration {
        // The worker never marks itself exited: its end shows as its thread's.
        self.heartbeat.age().unwrap_or(Duration::MAX)
    }

    /// How long [`TcmuWorker::stop`] waits for the thread ([`WorkerConfig::stop_bound`]).
    pub fn stop_bound(&self) -> Duration {
        self.stop_bound
    }

    /// Stop taking ring entries, drain, unmap, and report: one serving pass (the stop wakes a
    /// parked worker) and the drain, twice `drain_budget`. Waits at most
    /// [`TcmuWorker::stop_bound`]: a store call that keeps the thread longer (a device
    /// recovery, a reset that never returns) must not hold the service's stop, so the thread
    /// is then left running, detached ([`StopError::Detached`]), as the scst_user frontend
    /// leaves a worker stuck in a store call.
    ///
    /// # Errors
    /// [`StopError`]: the thread panicked, or was left.
    pub fn stop(self) -> Result<WorkerReport, StopError> {
        self.request_stop();
        let bound = self.stop_bound;
        match scst_accel_hal::locks::join_bounded(self.thread, bound) {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(p)) => Err(StopError::Panicked(
                p.downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
            )),
            // Dropping the handle detaches the thread; it owns the device, ring and executor.
            Err(_still_running) => Err(StopError::Detached(bound)),
        }
    }
}

/// What the worker thread shares with its owner.
struct Beat<'a> {
    stop: &'a AtomicBool,
    stop_wake: &'a EventFd,
    heartbeat: &'a Heartbeat,
    live: &'a LiveCounters,
}

fn serve(
    device: UioDevice,
    mut ring: Ring,
    mut exec: Executor,
    config: WorkerConfig,
    beat: &Beat<'_>,
) -> WorkerReport {
    let Beat {
        stop,
        stop_wake,
        heartbeat,
        live,
    } = *beat;
    let mut token = StoreToken::root();
    let mut total = Progress::default();
    let mut error = None;
    let mut turns = 0u64;
    while !stop.load(Ordering::Acquire) {
        // With nothing to watch the wait is long (`idle_park`), and the heartbeat is set to
        // when the worker will be back by, so a parked worker never looks stuck; with commands
        // in flight it is short, for their deadlines.
        let (wait, ahead) = if exec.is_idle() {
            (config.idle_park.max(config.idle_poll), config.idle_park)
        } else {
            (config.idle_poll, Duration::ZERO)
        };
        heartbeat.beat_until(ahead);
        let step = exec.step_or_wake(
            &mut token,
            &mut ring,
            device.events(),
            wait,
            Some(stop_wake.as_fd()),
        );
        match step {
            Ok(p) => {
                total.started += p.started;
                total.completed += p.completed;
                total.refused += p.refused;
                total.task_management += p.task_management;
                total.aborted += p.aborted;
            }
            Err(e) => {
                log::error!("tcmu: serving uio{} ended: {e}", device.info().index);
                error = Some(e);
                break;
            }
        }
        turns += 1;
        exec.check_deadlines();
        live.publish(&total, &exec, turns);
    }
    let drain_started = Instant::now();
    let drained = exec.drain(&mut token, &mut ring, device.events(), config.drain_budget);
    let drain_time = drain_started.elapsed();
    match &drained {
        Ok(_) => log::info!("tcmu: uio{} drained in {drain_time:?}", device.info().index),
        Err(e) => log::error!("tcmu: uio{}: {e}", device.info().index),
    }
    live.publish(&total, &exec, turns);
    let escalations = exec.escalations();
    let task_management = exec.task_management();
    if task_management.notices > 0 {
        log::info!(
            "tcmu: uio{} task management: {task_management:?}",
            device.info().index
        );
    }
    // The executor holds command buffers only for requests in the store; once drained it holds
    // none. The mapping goes after the drain: the answers above were written into it.
    drop(exec);
    drop(ring);
    drop(device);
    WorkerReport {
        progress: total,
        escalations,
        task_management,
        error,
        drained,
        drain_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Disk;
    use crate::scsi::DiskConfig;
    use crate::store::ram::RamStore;
    use crate::store::Store;
    use crate::tcmu::abi::Iovec;
    use crate::tcmu::sim::SimConfig;
    use crate::tcmu::sim::SimKernel;
    use crate::tcmu::uio::TcmuUioName;
    use crate::tcmu::uio::UioEvents;
    use crate::tcmu::uio::UioInfo;
    use scst_accel_dma::SgvPool;
    use std::io::Read;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    const BS: u32 = 512;

    fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// The simulated ring as a UIO device whose events come from `ours`.
    fn uio_device(sim: &SimKernel, ours: UnixStream) -> UioDevice {
        let info = UioInfo {
            index: 0,
            name: TcmuUioName::parse("tcm-user/7/disk0/scst-accel/ram").expect("name"),
            map_size: sim.region().len(),
        };
        UioDevice::from_parts(info, sim.region().clone(), UioEvents::new(OwnedFd::from(ours)))
    }

    /// [`uio_device`], and an executor on a RAM store.
    fn device_and_executor(sim: &SimKernel, ours: UnixStream) -> (UioDevice, Executor) {
        let device = uio_device(sim, ours);
        let store = RamStore::new(BS, 1024, 256);
        let disk = Arc::new(Disk::new(DiskConfig::for_store(&store.info())));
        let exec = Executor::new(
            disk,
            store.open_queue().expect("queue"),
            Arc::new(SgvPool::new(None, None, 1 << 22)),
        );
        (device, exec)
    }

    fn post_and_wait(sim: &mut SimKernel, kernel: &mut UnixStream, id: u16, cdb: &[u8], at: usize) {
        let iov = [Iovec {
            iov_base: (sim.data_off() + at) as u64,
            iov_len: BS.into(),
        }];
        sim.post_cmd(id, cdb, &iov, &[]).expect("post");
        kernel.write_all(&1u32.to_ne_bytes()).expect("event");
        let mut kick = [0u8; 4];
        kernel
            .read_exact(&mut kick)
            .expect("kicked within the read timeout");
    }

    /// A simulated ring, the kernel's end of its event socket (10 s read timeout), and the UIO
    /// device and executor a worker serves it with.
    fn ring_rig() -> (SimKernel, UnixStream, UioDevice, Executor) {
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 64 * 1024,
            // A current kernel's: out-of-order completion and `read_len`.
            flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN | crate::tcmu::abi::mailbox_flags::CAP_OOOC,
        });
        let (ours, kernel) = UnixStream::pair().expect("pair");
        kernel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (device, exec) = device_and_executor(&sim, ours);
        (sim, kernel, device, exec)
    }

    /// An idle worker waits for a ring entry, a range grant or a stop, not for a timer: with
    /// `idle_park` at 60 s it turns only when something happens (a 10 ms poll would turn about
    /// 50 times in the half second below), looks alive all the while, serves a command the
    /// moment it is posted, and a stop wakes it at once instead of after 60 s.
    #[test]
    fn an_idle_worker_parks_until_an_event_and_a_stop_wakes_it_at_once() {
        let (mut sim, mut kernel, device, exec) = ring_rig();
        let config = WorkerConfig {
            idle_poll: Duration::from_millis(10),
            idle_park: Duration::from_secs(60),
            ..WorkerConfig::default()
        };
        let worker = TcmuWorker::spawn("tcmu-idle", device, exec, config).expect("spawn");
        post_and_wait(&mut sim, &mut kernel, 1, &rw10(0x28, 3, 1), 0);
        assert_eq!(sim.reap().expect("reap").len(), 1, "served while parked");
        std::thread::sleep(Duration::from_millis(500));
        let turns = worker.stats().turns;
        assert!(turns <= 5, "{turns} turns: the idle worker polled");
        assert_eq!(worker.heartbeat_age(), Duration::ZERO, "parked within its bound");
        let started = Instant::now();
        let report = worker.stop().expect("no panic");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stop took {:?}: it waited for the park to end",
            started.elapsed()
        );
        assert!(report.drained.is_ok(), "{:?}", report.drained);
        assert_eq!(report.progress.completed, 1);
    }

    #[test]
    fn the_thread_serves_the_ring_and_stops_with_the_store_drained() {
        let (mut sim, mut kernel, device, exec) = ring_rig();
        let config = WorkerConfig {
            idle_poll: Duration::from_millis(10),
            ..WorkerConfig::default()
        };
        let worker = TcmuWorker::spawn("tcmu-test", device, exec, config).expect("spawn");
        let data: Vec<u8> = (0..BS as usize).map(|i| (i % 251) as u8).collect();
        sim.write_data(sim.data_off(), &data);
        post_and_wait(&mut sim, &mut kernel, 1, &rw10(0x2a, 3, 1), 0);
        post_and_wait(&mut sim, &mut kernel, 2, &rw10(0x28, 3, 1), 4096);
        // Past the last of the store's 1024 blocks: CHECK CONDITION, counted as an error.
        post_and_wait(&mut sim, &mut kernel, 3, &rw10(0x28, 1024, 1), 8192);
        let done = sim.reap().expect("reap");
        assert_eq!(
            done.iter().map(|c| (c.cmd_id, c.status)).collect::<Vec<_>>(),
            [(1, 0), (2, 0), (3, 2)]
        );
        // The figures are published at the end of the turn that answered: wait for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.stats().completed < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = worker.stats();
        assert_eq!(
            (stats.started, stats.completed, stats.errors, stats.in_flight()),
            (3, 3, 1, 0),
            "{stats:?}"
        );
        assert_eq!(sim.read_data(sim.data_off() + 4096, BS as usize), data);
        assert!(!worker.is_finished());
        assert!(worker.heartbeat_age() < Duration::from_secs(5));
        let started = Instant::now();
        let report = worker.stop().expect("no panic");
        assert!(started.elapsed() < Duration::from_secs(5), "the stop is bounded");
        assert_eq!((report.progress.started, report.progress.completed), (3, 3));
        assert!(report.error.is_none(), "{:?}", report.error);
        assert!(report.drained.is_ok(), "{:?}", report.drained);
    }

    #[test]
    fn a_vanished_kernel_ends_the_thread_with_the_error_and_still_drains() {
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 64 * 1024,
            flags: 0,
        });
        let (ours, kernel) = UnixStream::pair().expect("pair");
        let (device, exec) = device_and_executor(&sim, ours);
        let worker = TcmuWorker::spawn("tcmu-test", device, exec, WorkerConfig::default()).expect("spawn");
        // The peer closes: the event fd reads EOF, which is an error, not an idle turn.
        drop(kernel);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(worker.is_finished(), "the thread ended on its own");
        let report = worker.stop().expect("no panic");
        assert!(
            matches!(report.error, Some(StepError::Uio(_))),
            "{:?}",
            report.error
        );
        assert!(report.drained.is_ok());
    }

    /// A store queue whose `submit` blocks until `released` (at most 20 s, so a test that
    /// fails still ends): a store call stuck in a device recovery or a hung system call.
    struct StuckQueue {
        inner: Box<dyn crate::store::StoreQueue>,
        entered: Arc<AtomicBool>,
        released: Arc<AtomicBool>,
    }

    impl crate::store::StoreQueue for StuckQueue {
        fn submit(
            &mut self,
            token: &mut StoreToken<'_>,
            batch: &mut Vec<crate::store::StoreRequest>,
        ) -> Result<(), crate::store::StoreError> {
            self.entered.store(true, Ordering::Release);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.released.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.inner.submit(token, batch)
        }

        fn reap(&mut self, out: &mut Vec<crate::store::StoreCompletion>) -> usize {
            self.inner.reap(out)
        }

        fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            self.inner.notify_fd()
        }

        fn in_flight(&self) -> usize {
            self.inner.in_flight()
        }
    }

    /// A worker stuck in a store call far longer than its stop's bound (twice the drain
    /// budget and `LEAVE_MARGIN`): the stop returns at the bound, the worker left detached,
    /// instead of waiting for the call (it waited without limit). Released afterwards, the
    /// thread ends on its own.
    #[test]
    fn a_worker_stuck_in_a_store_call_is_left_at_the_stops_bound() {
        let mut sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 64 * 1024,
            flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN | crate::tcmu::abi::mailbox_flags::CAP_OOOC,
        });
        let (ours, mut kernel) = UnixStream::pair().expect("pair");
        let device = uio_device(&sim, ours);
        let store = RamStore::new(BS, 1024, 256);
        let entered = Arc::new(AtomicBool::new(false));
        let released = Arc::new(AtomicBool::new(false));
        let queue = StuckQueue {
            inner: store.open_queue().expect("queue"),
            entered: Arc::clone(&entered),
            released: Arc::clone(&released),
        };
        let exec = Executor::new(
            Arc::new(Disk::new(DiskConfig::for_store(&store.info()))),
            Box::new(queue),
            Arc::new(SgvPool::new(None, None, 1 << 22)),
        );
        let config = WorkerConfig {
            idle_poll: Duration::from_millis(10),
            drain_budget: Duration::from_millis(100),
            ..WorkerConfig::default()
        };
        let worker = TcmuWorker::spawn("tcmu-stuck", device, exec, config).expect("spawn");
        assert_eq!(worker.stop_bound(), Duration::from_millis(1200));
        let iov = [Iovec {
            iov_base: sim.data_off() as u64,
            iov_len: BS.into(),
        }];
        sim.post_cmd(1, &rw10(0x28, 3, 1), &iov, &[]).expect("post");
        kernel.write_all(&1u32.to_ne_bytes()).expect("event");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !entered.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(entered.load(Ordering::Acquire), "the worker is in the store call");
        let started = Instant::now();
        let stopped = worker.stop();
        let took = started.elapsed();
        released.store(true, Ordering::Release);
        assert!(
            matches!(stopped, Err(StopError::Detached(bound)) if bound == Duration::from_millis(1200)),
            "{stopped:?}"
        );
        assert!(
            took >= Duration::from_millis(1200) && took < Duration::from_secs(5),
            "the stop took {took:?}: not bounded by its 1.2 s"
        );
    }

    /// The handler escalates before the kernel fails a command: a deadline is at most half
    /// the backstore's `cmd_time_out` (the default's too), and as configured without one.
    #[test]
    fn the_command_deadline_comes_before_the_kernels_timeout() {
        assert!(WorkerConfig::default().command_timeout <= KERNEL_CMD_TIME_OUT / 2);
        let s = Duration::from_secs;
        assert_eq!(command_timeout_under(Some(s(30)), s(60)), s(15));
        assert_eq!(command_timeout_under(Some(s(30)), s(5)), s(5));
        assert_eq!(command_timeout_under(Some(s(4)), s(5)), s(2));
        assert_eq!(command_timeout_under(None, s(60)), s(60), "no kernel timeout");
    }
}
