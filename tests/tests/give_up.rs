//! The accelerator store giving up on a device that neither stops nor resets: the requests it
//! fails hand their buffers back for reuse, so they may be failed only once no more DMA for
//! them can happen (docs/architecture.md §5, issue 12: quiesce before unmap).

use scst_accel_boards::definition;
use scst_accel_boards::engine::Controller;
use scst_accel_boards::engine::DeviceCompletion;
use scst_accel_boards::engine::DeviceRequest;
use scst_accel_boards::engine::EngineError;
use scst_accel_boards::engine::QueueEngine;
use scst_accel_boards::engine::Recovered;
use scst_accel_boards::engine::SubmitError;
use scst_accel_boards::nvme::NvmeConfig;
use scst_accel_boards::nvme::NvmeController;
use scst_accel_boards::nvme::NvmeQueue;
use scst_accel_boards::open::open_board;
use scst_accel_boards::open::BoardSource;
use scst_accel_boards::sca1::device_mapper;
use scst_accel_boards::sca1::regs::control;
use scst_accel_boards::sca1::regs::global;
use scst_accel_boards::sca1::Sca1;
use scst_accel_boards::sca1::Sca1Config;
use scst_accel_boards::sca1::Sca1Queue;
use scst_accel_boards::sim::create_sim_board;
use scst_accel_boards::sim::nvme::create_nvme_sim;
use scst_accel_boards::sim::nvme::NvmeFault;
use scst_accel_boards::sim::nvme::NvmeSimConfig;
use scst_accel_boards::sim::nvme::NvmeSimHandle;
use scst_accel_boards::sim::Fault;
use scst_accel_boards::sim::SimConfig;
use scst_accel_boards::sim::SimHandle;
use scst_accel_dma::SgvPool;
use scst_accel_hal::sim::Iommu;
use scst_accel_hal::BarInterposer;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::RegisterIo;
use scst_accel_handler::store::accel::AccelConfig;
use scst_accel_handler::store::accel::AccelStore;
use scst_accel_handler::store::CmdBuffer;
use scst_accel_handler::store::IoBuffer;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreCompletion;
use scst_accel_handler::store::StoreOp;
use scst_accel_handler::store::StoreQueue;
use scst_accel_handler::store::StoreRequest;
use scst_accel_handler::store::StoreStatus;
use scst_accel_handler::store::StoreToken;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Submit a READ of 8 blocks at `lba` (tag `tag`, a 4 KiB buffer of `pool`) to `q`.
fn submit_read(q: &mut Box<dyn StoreQueue>, pool: &Arc<SgvPool>, tag: u64, lba: u64) {
    let buf = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), pool, 4096).expect("buffer"),
        4096,
    );
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest {
            tag,
            op: StoreOp::Read { lba, blocks: 8 },
            buffer: Some(buf),
        }],
    )
    .expect("submit");
}

/// An accelerator store over `queues` of `controller` with `command_timeout`, the rest of its
/// configuration the default.
fn store_with(
    controller: Arc<dyn Controller>,
    queues: Vec<Box<dyn QueueEngine>>,
    command_timeout: Duration,
) -> AccelStore {
    AccelStore::new(
        controller,
        queues,
        AccelConfig {
            command_timeout,
            ..AccelConfig::default()
        },
    )
}

/// An accelerator store over `controller` and `queues` with `command_timeout`, and one of its
/// queues to which a READ of 8 blocks (tag 1, a 4 KiB buffer of `pool`) was submitted once
/// `faults` had been injected.
fn store_reading(
    controller: Arc<dyn Controller>,
    queues: Vec<Box<dyn QueueEngine>>,
    pool: &Arc<SgvPool>,
    command_timeout: Duration,
    faults: impl FnOnce(),
) -> (AccelStore, Box<dyn StoreQueue>) {
    let store = store_with(controller, queues, command_timeout);
    faults();
    let mut q = store.open_queue().expect("queue");
    submit_read(&mut q, pool, 1, 0);
    (store, q)
}

/// The simulated SCA-1 board behind an accelerator store with `command_timeout`, its engines
/// hung on a function that ignores resets (`hang`, `no-reset`, and `more`), and a queue of the
/// store to which a READ of 8 blocks (tag 1, a 4 KiB buffer of the board's pool) was submitted.
fn hung_sca1_reading(
    command_timeout: Duration,
    more: &[Fault],
) -> (SimHandle, Arc<SgvPool>, AccelStore, Box<dyn StoreQueue>) {
    let config = SimConfig {
        num_blocks: 4096,
        ..SimConfig::default()
    };
    let opened = open_board(&definition::SIM, BoardSource::Sim(config), 1).expect("open");
    let sim = opened.sim.clone().expect("simulated board");
    let pool = Arc::new(SgvPool::new(
        Some(device_mapper(Arc::clone(opened.controller.device()))),
        Some(Arc::clone(opened.controller.iovas())),
        16 << 20,
    ));
    let controller = opened.controller;
    let (store, q) = store_reading(controller, opened.queues, &pool, command_timeout, || {
        sim.inject(Fault::EngineHang { queue: None });
        sim.inject(Fault::ResetIgnored);
        for fault in more {
            sim.inject(*fault);
        }
    });
    (sim, pool, store, q)
}

/// A hung engine on a function that ignores resets (SCA-1 simulator: `hang`, `no-reset`): the
/// queue cannot be stopped and the function not reset, so recovery fails and the store gives
/// up. The request is failed only after the store cleared bus mastering (the one proof left
/// that the engine does no more DMA into its buffer).
#[test]
fn a_store_that_gives_up_fails_requests_only_after_dma_is_stopped() {
    let (sim, _pool, store, q) = hung_sca1_reading(Duration::from_millis(200), &[]);
    fails_its_request_only_after_bus_mastering_is_cleared(&sim.iommu(), &store, q);
}

/// A queue dropped with a request on a hung engine whose function neither resets (`no-reset`)
/// nor lets its bus mastering be cleared (`bus-master-stuck`): nothing proves the engine does
/// no more DMA, so the queue's rings stay mapped (their IOVAs are not handed to the next
/// mapping, which would take the engine's late writes). Before, they were unmapped whatever
/// the outcome of the reset. (The command's buffer is the frontend's: its lease keeps it.)
#[test]
fn a_queue_dropped_without_proof_that_dma_stopped_keeps_its_rings_mapped() {
    let (sim, _pool, _store, q) = hung_sca1_reading(Duration::from_secs(60), &[Fault::BusMasterStuck]);
    // The engine must hold the descriptor: before it takes it, the stop handshake succeeds
    // (nothing in the engine) and the rings may go, rightly.
    wait_for_the_hang(&sim);
    a_dropped_queue_keeps_its_rings_mapped(&sim.iommu(), q);
}

/// The store gives up on a function that neither resets nor lets its bus mastering be cleared
/// (`bus-master-stuck`): nothing proves the engine stopped, so the request it holds is never
/// answered (its buffer never released for reuse) while the store reports its failure; and the
/// queue, dropped, keeps its rings mapped.
#[test]
fn a_store_that_gives_up_without_proof_holds_its_requests() {
    let (sim, _pool, store, q) = hung_sca1_reading(Duration::from_millis(200), &[Fault::BusMasterStuck]);
    gives_up_holding_its_request(&sim.iommu(), &store, q);
}

/// The store gives up on the board behind `iommu` and answers `q`'s READ (DEVICE ERROR) only
/// once bus mastering is cleared: before, the device could still DMA into the buffer the
/// answer hands back for reuse.
fn fails_its_request_only_after_bus_mastering_is_cleared(
    iommu: &Iommu,
    store: &AccelStore,
    mut q: Box<dyn StoreQueue>,
) {
    let out = reap_until_answered(&mut q);
    assert_eq!(out.len(), 1, "answered: {:?}", store.dump());
    assert_eq!(out[0].status, StoreStatus::DeviceError);
    assert!(store.failure().is_some(), "the store gave up");
    assert!(
        iommu.bus_master_disabled(),
        "the request was failed (its buffer released) while the device could still DMA"
    );
}

/// `q`, dropped while its hung device may still DMA (bus mastering cannot be cleared), keeps
/// its rings mapped behind `iommu`.
fn a_dropped_queue_keeps_its_rings_mapped(iommu: &Iommu, q: Box<dyn StoreQueue>) {
    let mappings = iommu.mappings();
    drop(q);
    assert!(
        !iommu.bus_master_disabled(),
        "bus mastering could not be cleared (injected)"
    );
    assert_eq!(
        iommu.mappings(),
        mappings,
        "the hung device's rings were unmapped"
    );
}

/// The store gives up on a device that nothing proves stopped: `q`'s READ is never answered
/// (a few more reaps after the failure: still nothing), and `q`, dropped, keeps its rings.
fn gives_up_holding_its_request(iommu: &Iommu, store: &AccelStore, mut q: Box<dyn StoreQueue>) {
    let mut out = reap_until_the_store_gives_up(store, &mut q);
    for _ in 0..50 {
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(out.is_empty(), "a request was answered without proof: {out:?}");
    assert!(!iommu.bus_master_disabled());
    let mappings = iommu.mappings();
    drop(q);
    assert_eq!(iommu.mappings(), mappings, "the rings were unmapped");
}

/// Wait until the engine holds the READ's descriptor (taken, hung on it, BUSY kept): from
/// then on only a reset or bus mastering cleared stops its DMA.
fn wait_for_the_hang(sim: &SimHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.stats().hangs == 0 {
        assert!(Instant::now() < deadline, "the engine never took the descriptor");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reap `q` until `store` reports its failure (60 s at most); what was answered meanwhile.
fn reap_until_the_store_gives_up(store: &AccelStore, q: &mut Box<dyn StoreQueue>) -> Vec<StoreCompletion> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out: Vec<StoreCompletion> = Vec::new();
    while store.failure().is_none() {
        assert!(
            Instant::now() < deadline,
            "the store never gave up: {:?}",
            store.dump()
        );
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

/// Reap `q` until it answers something or 60 s pass.
fn reap_until_answered(q: &mut Box<dyn StoreQueue>) -> Vec<StoreCompletion> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out: Vec<StoreCompletion> = Vec::new();
    while out.is_empty() && Instant::now() < deadline {
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

/// A BAR that reads all-ones is not a device that stopped: with Memory Space Enable cleared
/// under the driver (`mmio-off`) the function is still on the bus and its hung engine may
/// still write the READ's buffer. The store, giving up, answers the request only after it
/// cleared bus mastering through config space. Before, all-ones through the BAR counted as
/// "gone, does no DMA" and the request was failed (its buffer handed back) at once.
#[test]
fn a_dark_bar_is_no_proof_that_dma_stopped() {
    let (sim, _pool, store, q) = hung_sca1_reading(Duration::from_millis(200), &[]);
    wait_for_the_hang(&sim);
    sim.inject(Fault::MemorySpaceOff);
    fails_its_request_only_after_bus_mastering_is_cleared(&sim.iommu(), &store, q);
}

/// A function that is off the bus (removed: its config space reads all-ones too) can make no
/// memory request: its requests are answered (failed), not held, though bus mastering cannot
/// be cleared on it.
#[test]
fn a_removed_function_has_its_requests_failed() {
    let (sim, _pool, store, mut q) = hung_sca1_reading(Duration::from_millis(200), &[Fault::DeviceGone]);
    let out = reap_until_answered(&mut q);
    assert_eq!(out.len(), 1, "answered: {:?}", store.dump());
    assert_eq!(out[0].status, StoreStatus::DeviceError);
    assert!(
        store.failure().is_some_and(|f| f.contains("gone")),
        "{:?}",
        store.failure()
    );
    assert!(
        !sim.iommu().bus_master_disabled(),
        "nothing reaches a removed function"
    );
}

/// The same for a queue dropped while its BAR reads all-ones (`mmio-off`) and bus mastering
/// cannot be cleared (`bus-master-stuck`): the stop handshake finds the device "gone", which
/// proves nothing, so the hung engine's rings stay mapped.
#[test]
fn a_queue_dropped_under_a_dark_bar_keeps_its_rings_mapped() {
    let (sim, _pool, _store, q) = hung_sca1_reading(Duration::from_secs(60), &[Fault::BusMasterStuck]);
    wait_for_the_hang(&sim);
    sim.inject(Fault::MemorySpaceOff);
    a_dropped_queue_keeps_its_rings_mapped(&sim.iommu(), q);
}

/// A simulated NVMe controller (`sim`) brought up with one polled I/O queue of depth 16 and
/// `admin_timeout`, its queues, and a 16 MiB pool of buffers mapped for it.
fn nvme_parts(
    name: &str,
    sim: NvmeSimConfig,
    admin_timeout: Duration,
) -> (NvmeSimHandle, Arc<NvmeController>, Vec<NvmeQueue>, Arc<SgvPool>) {
    let (device, sim) = create_nvme_sim(name, sim).expect("simulated NVMe controller");
    let config = NvmeConfig {
        queues: 1,
        queue_depth: 16,
        interrupts: false,
        admin_timeout,
        ..NvmeConfig::default()
    };
    let (controller, queues) = NvmeController::bring_up(device, &config).expect("bring-up");
    let pool = Arc::new(SgvPool::new(
        Some(device_mapper(Arc::clone(controller.device()))),
        Some(Arc::clone(controller.iovas())),
        16 << 20,
    ));
    (sim, controller, queues, pool)
}

/// `queues` as the store takes them.
fn engines(queues: Vec<NvmeQueue>) -> Vec<Box<dyn QueueEngine>> {
    queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn QueueEngine>)
        .collect()
}

/// The simulated NVMe controller (CAP.TO 500 ms, admin timeout 300 ms, one polled queue)
/// behind an accelerator store with `command_timeout`, hung (`hang`: nothing is fetched, admin
/// commands included, CSTS.RDY stays 1) on a function that ignores resets (`no-reset`: CC.EN
/// 1→0 does not take, the function reset is refused), `more` faults besides, and a queue of the
/// store to which a READ of 8 blocks (tag 1, a 4 KiB buffer of the controller's pool) was
/// submitted.
fn hung_nvme_reading(
    command_timeout: Duration,
    more: &[NvmeFault],
) -> (NvmeSimHandle, Arc<SgvPool>, AccelStore, Box<dyn StoreQueue>) {
    let (sim, controller, queues, pool) = nvme_parts(
        "give-up-nvme",
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 1,
            ..NvmeSimConfig::default()
        },
        Duration::from_millis(300),
    );
    let queues = engines(queues);
    let (store, q) = store_reading(controller, queues, &pool, command_timeout, || {
        sim.inject(NvmeFault::Hang);
        sim.inject(NvmeFault::ResetIgnored);
        for fault in more {
            sim.inject(*fault);
        }
    });
    (sim, pool, store, q)
}

/// The NVMe path of `a_store_that_gives_up_fails_requests_only_after_dma_is_stopped`: a hung
/// controller that ignores resets (`hang`, `no-reset`): the abort and the queue deletion time
/// out, neither the controller reset nor the function reset proves anything, so the store gives
/// up, and fails the request only after it cleared bus mastering.
#[test]
fn an_nvme_store_that_gives_up_fails_requests_only_after_dma_is_stopped() {
    let (sim, _pool, store, q) = hung_nvme_reading(Duration::from_millis(200), &[]);
    fails_its_request_only_after_bus_mastering_is_cleared(&sim.iommu(), &store, q);
}

/// The NVMe path of `a_queue_dropped_without_proof_that_dma_stopped_keeps_its_rings_mapped`: a
/// queue dropped with a request on a hung controller that neither resets (`no-reset`) nor lets
/// its bus mastering be cleared (`bus-master-stuck`): nothing proves the controller does no
/// more DMA, so the queue's SQ, CQ and PRP pages stay mapped.
#[test]
fn an_nvme_queue_dropped_without_proof_that_dma_stopped_keeps_its_rings_mapped() {
    let (sim, _pool, _store, q) = hung_nvme_reading(Duration::from_secs(60), &[NvmeFault::BusMasterStuck]);
    a_dropped_queue_keeps_its_rings_mapped(&sim.iommu(), q);
}

/// The NVMe path of `a_store_that_gives_up_without_proof_holds_its_requests`: the store gives up
/// on a controller that neither resets nor lets its bus mastering be cleared: the request it
/// holds is never answered while the store reports its failure, and the queue, dropped, keeps
/// its rings mapped.
#[test]
fn an_nvme_store_that_gives_up_without_proof_holds_its_requests() {
    let (sim, _pool, store, q) = hung_nvme_reading(Duration::from_millis(200), &[NvmeFault::BusMasterStuck]);
    gives_up_holding_its_request(&sim.iommu(), &store, q);
}

/// Another thread's controller recovery whose disable takes 1.5 s (the simulator's
/// `disable_micros`) while the teardown aborts a queue with a request on the controller (held
/// there: `never-complete`): the abort's stop is bounded (500 ms), so it returns within it
/// without proof, holding the request unanswered and the rings mapped, instead of waiting for
/// that reset as long as it may take (4 x CAP.TO + the admin timeout); the proof, when the reset
/// brings it, releases the request (ABORTED) on a later reap. A READ submitted once the reset
/// began waits in the store (the queue is not running): the controller never saw it, so it
/// needs no proof and is aborted at once (it used to be held with the other until the proof).
#[test]
fn an_nvme_abort_waits_for_another_threads_reset_only_within_its_bound() {
    let (sim, controller, queues, pool) = nvme_parts(
        "give-up-nvme-pending",
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 4,
            disable_micros: 1_500_000,
            ..NvmeSimConfig::default()
        },
        Duration::from_secs(1),
    );
    let queues = engines(queues);
    let store = AccelStore::new(Arc::clone(&controller) as _, queues, AccelConfig::default());
    sim.inject(NvmeFault::NeverComplete { every: 1 });
    let buf = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 4096).expect("buffer"),
        4096,
    );
    let mut q = store.open_queue().expect("queue");
    let commands = sim.stats().commands;
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest {
            tag: 1,
            op: StoreOp::Read { lba: 0, blocks: 8 },
            buffer: Some(buf),
        }],
    )
    .expect("submit");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().commands == commands {
        assert!(Instant::now() < deadline, "the controller never took the READ");
        std::thread::sleep(Duration::from_millis(1));
    }
    let other = Arc::clone(&controller);
    let recovery = std::thread::spawn(move || other.recover().map_err(|e| e.to_string()));
    while controller.is_enabled() {
        assert!(Instant::now() < deadline, "the recovery never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    submit_read(&mut q, &pool, 2, 8);
    let mappings = sim.iommu().mappings();
    let start = Instant::now();

    let aborted = q.abort_all();

    let took = start.elapsed();
    assert_eq!(aborted, 1, "only the READ never submitted is aborted");
    assert!(took < Duration::from_millis(1000), "the abort took {took:?}");
    let mut out: Vec<StoreCompletion> = Vec::new();
    q.reap(&mut out);
    let never_submitted = StoreCompletion {
        tag: 2,
        status: StoreStatus::Aborted,
    };
    assert_eq!(out, [never_submitted], "answered without proof");
    out.clear();
    assert_eq!(q.in_flight(), 1, "the request on the controller is held");
    assert_eq!(sim.iommu().mappings(), mappings, "nothing was unmapped");
    recovery.join().expect("recovery thread").expect("recovery");
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.is_empty() {
        assert!(Instant::now() < deadline, "never released: {:?}", store.dump());
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, StoreStatus::Aborted);
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A queue restarted after another queue's recovery of the function (here the teardown's abort
/// of a queue that had not reaped since that recovery: its stop succeeds, the reset having
/// stopped it) counts that recovery as seen: a request it serves after the restart completes.
/// Before, the queue kept the old count, and its next health check took the count's move for a
/// reset after the request, failing it ABORTED (its buffer reused) while the engine ran it.
#[test]
fn a_queue_restarted_after_another_queues_recovery_serves_what_comes_next() {
    let config = SimConfig {
        num_blocks: 4096,
        ..SimConfig::default()
    };
    let opened = open_board(&definition::SIM, BoardSource::Sim(config), 2).expect("open");
    let sim = opened.sim.clone().expect("simulated board");
    let pool = Arc::new(SgvPool::new(
        Some(device_mapper(Arc::clone(opened.controller.device()))),
        Some(Arc::clone(opened.controller.iovas())),
        16 << 20,
    ));
    let (store, mut q) = store_reading(
        opened.controller,
        opened.queues,
        &pool,
        Duration::from_secs(10),
        || {
            sim.inject(Fault::Latency {
                queue: None,
                micros: 300_000,
            })
        },
    );
    store
        .board()
        .recover()
        .expect("another queue's recovery of the function");
    assert_eq!(q.abort_all(), 1, "the READ in flight is aborted");
    // Submitted before the queue reaps again: its next health check is the first to look.
    submit_read(&mut q, &pool, 2, 8);
    let mut answered = reap_until_answered(&mut q);
    if answered.len() < 2 {
        answered.extend(reap_until_answered(&mut q));
    }
    assert_eq!(
        answered,
        [
            StoreCompletion {
                tag: 1,
                status: StoreStatus::Aborted
            },
            StoreCompletion {
                tag: 2,
                status: StoreStatus::Good
            }
        ],
        "the second READ is served, not failed by the recovery before it"
    );
    assert!(store.failure().is_none());
}

/// A queue engine that counts the restarts asked of it while it still had requests in flight
/// (the engine contract asks for none: `QueueEngine::restart`), refuses every restart while
/// `refuse_restarts` is set, as while recoveries of the function follow each other or one
/// hangs in its function reset (`EngineError::ResetUnderWay`), fails every stop while
/// `fail_stops` is set, as a hung controller's queue deletion does (the store then recovers
/// the function itself), and otherwise is `inner`.
struct Watched {
    inner: Box<dyn QueueEngine>,
    restarts_in_flight: Arc<AtomicU64>,
    refuse_restarts: Arc<AtomicBool>,
    /// Run once, right after the first restart that succeeds (before the store reads the
    /// reset count): what happens on another thread in that window.
    after_restart: Option<Box<dyn FnOnce() + Send>>,
    fail_stops: Arc<AtomicBool>,
}

impl Watched {
    /// The error of a stop while `fail_stops` is set.
    fn failed_stop(&self) -> Option<EngineError> {
        self.fail_stops
            .load(Ordering::Acquire)
            .then(|| EngineError::Timeout {
                device: "watched".to_owned(),
                what: "DELETE I/O SQ",
                timeout: Duration::ZERO,
            })
    }
}

impl QueueEngine for Watched {
    fn index(&self) -> u32 {
        self.inner.index()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    fn is_halted(&self) -> bool {
        self.inner.is_halted()
    }

    fn oldest_submission(&self) -> Option<Instant> {
        self.inner.oldest_submission()
    }

    fn expired(&self, cutoff: Instant) -> Vec<u64> {
        self.inner.expired(cutoff)
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.notify_fd()
    }

    fn submit(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError> {
        self.inner.submit(req)
    }

    fn ring_doorbell(&mut self) {
        self.inner.ring_doorbell();
    }

    fn reap(&mut self, out: &mut Vec<DeviceCompletion>) -> usize {
        self.inner.reap(out)
    }

    fn prepare_to_wait(&mut self) -> bool {
        self.inner.prepare_to_wait()
    }

    fn unknown_tags(&self) -> u64 {
        self.inner.unknown_tags()
    }

    fn abort(&mut self, user_tags: &[u64]) -> Result<usize, EngineError> {
        self.inner.abort(user_tags)
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        match self.failed_stop() {
            Some(e) => Err(e),
            None => self.inner.stop(),
        }
    }

    fn stop_within(&mut self, bound: Duration) -> Result<(), EngineError> {
        match self.failed_stop() {
            Some(e) => Err(e),
            None => self.inner.stop_within(bound),
        }
    }

    fn recoveries(&self) -> u64 {
        self.inner.recoveries()
    }

    fn abandon_all(&mut self) -> Vec<u64> {
        self.inner.abandon_all()
    }

    fn leak_on_drop(&mut self) {
        self.inner.leak_on_drop();
    }

    fn restart(&mut self) -> Result<(), EngineError> {
        if self.inner.in_flight() > 0 {
            self.restarts_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        if self.refuse_restarts.load(Ordering::Acquire) {
            return Err(EngineError::ResetUnderWay {
                device: "watched".to_owned(),
                queue: self.inner.index(),
            });
        }
        let restarted = self.inner.restart();
        if restarted.is_ok() {
            if let Some(then) = self.after_restart.take() {
                then();
            }
        }
        restarted
    }

    fn dump(&self) -> String {
        self.inner.dump()
    }
}

/// `queues` as the store takes them, each [`Watched`]: restarts asked with requests in flight
/// counted in `restarts_in_flight`, every restart refused while `refuse_restarts` is set,
/// every stop failed while `fail_stops` is.
fn watched(
    queues: Vec<NvmeQueue>,
    restarts_in_flight: &Arc<AtomicU64>,
    refuse_restarts: &Arc<AtomicBool>,
    fail_stops: &Arc<AtomicBool>,
) -> Vec<Box<dyn QueueEngine>> {
    queues
        .into_iter()
        .map(|q| {
            Box::new(Watched {
                inner: Box::new(q),
                restarts_in_flight: Arc::clone(restarts_in_flight),
                refuse_restarts: Arc::clone(refuse_restarts),
                after_restart: None,
                fail_stops: Arc::clone(fail_stops),
            }) as Box<dyn QueueEngine>
        })
        .collect()
}

/// A READ in flight on a queue of the simulated NVMe controller (admin timeout 3 s, one polled
/// queue, its engine [`Watched`]) behind an accelerator store with a 200 ms command timeout,
/// while another thread's recovery of the controller runs for 1.5 s: every command waits 1.5 s
/// (`latency`), so the READ is still the controller's when the recovery's reset drops it, and
/// the recovery's SET FEATURES holds it, its reset count not yet moved, for 1.5 s after its
/// enable. The recovery's disable takes 100 ms (`disable_micros`), which the test waits for.
struct LongRecovery {
    sim: NvmeSimHandle,
    pool: Arc<SgvPool>,
    store: AccelStore,
    q: Box<dyn StoreQueue>,
    recovery: Option<std::thread::JoinHandle<Result<Recovered, String>>>,
    restarts_in_flight: Arc<AtomicU64>,
}

impl LongRecovery {
    fn start(name: &str) -> Self {
        let (sim, controller, queues, pool) = nvme_parts(
            name,
            NvmeSimConfig {
                num_blocks: 4096,
                cap_to: 4,
                disable_micros: 100_000,
                ..NvmeSimConfig::default()
            },
            Duration::from_secs(3),
        );
        let restarts_in_flight = Arc::new(AtomicU64::new(0));
        let never = Arc::new(AtomicBool::new(false));
        let queues = watched(queues, &restarts_in_flight, &never, &never);
        let (store, q) = store_reading(
            Arc::clone(&controller) as _,
            queues,
            &pool,
            Duration::from_millis(200),
            || sim.inject(NvmeFault::Latency { micros: 1_500_000 }),
        );
        let other = Arc::clone(&controller);
        let recovery = std::thread::spawn(move || other.recover().map_err(|e| e.to_string()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while controller.is_enabled() {
            assert!(Instant::now() < deadline, "the recovery never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        Self {
            sim,
            pool,
            store,
            q,
            recovery: Some(recovery),
            restarts_in_flight,
        }
    }

    fn recovery_ended(&self) -> bool {
        self.recovery.as_ref().is_none_or(|r| r.is_finished())
    }

    /// Submit a READ of 8 blocks at `lba` with tag `tag`.
    fn read(&mut self, tag: u64, lba: u64) {
        let buf = IoBuffer::new(
            CmdBuffer::allocate(&mut StoreToken::root(), &self.pool, 4096).expect("buffer"),
            4096,
        );
        self.q
            .submit(
                &mut StoreToken::root(),
                &mut vec![StoreRequest {
                    tag,
                    op: StoreOp::Read { lba, blocks: 8 },
                    buffer: Some(buf),
                }],
            )
            .expect("submit");
    }

    /// Reap until the recovery has ended and `tag` is answered (60 s at most), the store never
    /// giving up meanwhile; what was answered.
    fn reap_through_the_recovery(&mut self, tag: u64) -> Vec<StoreCompletion> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out: Vec<StoreCompletion> = Vec::new();
        while !(self.recovery_ended() && out.iter().any(|c| c.tag == tag)) {
            assert!(
                self.store.failure().is_none(),
                "the store gave up during another queue's recovery: {:?}",
                self.store.failure()
            );
            assert!(
                Instant::now() < deadline,
                "never answered: {:?}",
                self.store.dump()
            );
            if self.recovery_ended() {
                self.sim.clear_faults();
            }
            self.q.reap(&mut out);
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    /// The recovery succeeded, the queue serves a READ after it, and nothing DMAed where it
    /// should not have.
    fn finish(mut self) {
        self.recovery
            .take()
            .expect("the recovery thread")
            .join()
            .expect("recovery thread")
            .expect("the other queue's recovery");
        self.sim.clear_faults();
        // One reap first: the queue sees the count move and restarts (what it submitted is
        // failed ABORTED then; a request that only waited for the restart is kept, and
        // submitted after it).
        let mut out: Vec<StoreCompletion> = Vec::new();
        self.q.reap(&mut out);
        assert!(out.is_empty(), "{out:?}");
        self.read(99, 64);
        assert_eq!(
            reap_until_answered(&mut self.q),
            [StoreCompletion {
                tag: 99,
                status: StoreStatus::Good
            }],
            "served after the recovery"
        );
        assert!(self.store.failure().is_none(), "{:?}", self.store.failure());
        assert_eq!(self.sim.iommu().fault_count(), 0);
    }
}

/// A READ in flight on an NVMe queue whose controller another thread's recovery disabled: the
/// queue is not running, and its health check used to restart it anyway, every health
/// interval; the driver refused (requests in flight) and each refusal counted toward giving
/// the store up. Now the queue is restarted only with nothing in flight: the READ meets its
/// deadline, the stop proves the end of its DMA (the recovery's reset), it is failed ABORTED,
/// and the queue serves again once the recovery published its reset count.
#[test]
fn an_nvme_queue_with_requests_in_flight_is_not_restarted_during_another_queues_recovery() {
    let mut rig = LongRecovery::start("give-up-nvme-no-restart-in-flight");

    let answered = reap_until_answered(&mut rig.q);

    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }],
        "the READ met its deadline"
    );
    assert!(!rig.recovery_ended(), "the recovery still runs");
    assert_eq!(
        rig.restarts_in_flight.load(Ordering::Relaxed),
        0,
        "restarts asked with the READ in flight"
    );
    rig.finish();
}

/// A recovery on another thread that runs longer than the store's give-up bound for restarts
/// (twice the command timeout: 1.5 s against 400 ms) while a stopped queue has a request to
/// serve: its restart is refused (`ResetUnderWay`) on every health check until the recovery
/// publishes its reset count. Those refusals were counted as restart failures, and the store
/// gave up (reporting `Store::failure`, which tears the device down) in the middle of a
/// recovery that then succeeded. Now a refusal that says "not yet, a recovery is under way" is
/// no failure: that recovery is bounded, and its own thread reports it if it fails.
#[test]
fn an_nvme_store_waits_out_another_queues_recovery_longer_than_its_give_up_bound() {
    let mut rig = LongRecovery::start("give-up-nvme-long-recovery");
    assert_eq!(
        reap_until_answered(&mut rig.q),
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }],
        "the READ met its deadline"
    );
    assert!(!rig.recovery_ended(), "the recovery still runs");

    rig.read(2, 8);
    let answered = rig.reap_through_the_recovery(2);

    // Never on the controller before the count moved: it waited for the restart, is kept
    // when the queue sees the move, and is submitted after the restart: served, or failed
    // ABORTED at its deadline when the restart came before the test cleared the latency.
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert!(
        matches!(answered[0].status, StoreStatus::Aborted | StoreStatus::Good),
        "{answered:?}"
    );
    assert_eq!(rig.restarts_in_flight.load(Ordering::Relaxed), 0);
    rig.finish();
}

/// The simulated NVMe controller (CAP.TO 500 ms, admin timeout 1 s, one polled queue) behind
/// an accelerator store with a 300 ms command timeout (so the store gives up on restarts that
/// keep failing after 600 ms), and a queue of the store with a READ (tag 1) the controller
/// executed but never completes (`never-complete`). Then a recovery of the controller from
/// outside the store, as `demo --reset-during-load` runs one, whose reset fails (`no-reset`:
/// the disable does not take, the function reset is refused): the controller is left disabled
/// with nothing proving the end of DMA, and the recovery's caller only logs its failure. The
/// faults are then cleared: a reset works again.
fn nvme_reading_after_a_failed_recovery(
    name: &str,
) -> (
    NvmeSimHandle,
    Arc<SgvPool>,
    Arc<NvmeController>,
    AccelStore,
    Box<dyn StoreQueue>,
) {
    let (sim, controller, queues, pool) = nvme_parts(
        name,
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 1,
            ..NvmeSimConfig::default()
        },
        Duration::from_secs(1),
    );
    let queues = engines(queues);
    let commands = sim.stats().commands;
    let (store, q) = store_reading(
        Arc::clone(&controller) as _,
        queues,
        &pool,
        Duration::from_millis(300),
        || sim.inject(NvmeFault::NeverComplete { every: 1 }),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().commands == commands {
        assert!(Instant::now() < deadline, "the controller never took the READ");
        std::thread::sleep(Duration::from_millis(1));
    }
    sim.inject(NvmeFault::ResetIgnored);
    controller
        .recover()
        .expect_err("the recovery's reset cannot work (no-reset)");
    assert!(!controller.is_enabled(), "left disabled");
    assert_eq!(controller.reset_count(), 0);
    sim.clear_faults();
    (sim, pool, controller, store, q)
}

/// After a failed recovery left the controller disabled without proof, the queue's stop has to
/// reset the controller itself (nothing else proves the end of its READ's DMA). That stop
/// used to leave the controller disabled, its reset count unmoved: every restart then failed
/// (`Disabled`) until the store gave up after twice the command timeout and reported its
/// failure (the teardown), though a reset worked again. Now the stop's reset is a recovery
/// (one at a time, its count moved after the reset proved the end of DMA): the READ is failed
/// ABORTED, the queue restarts, and the next READ is served. That recovery, which the store's
/// stop ran, counts among the store's resets (`AccelCounters::resets`): it used not to, the
/// counter seeing only the recoveries the store asked for through `Controller::recover`.
/// `bounded` chooses the stop: the teardown's or the frontend deadline's bounded abort
/// (`abort_all`), or the store's own deadline escalation.
fn a_stop_that_resets_brings_the_controller_back(name: &str, bounded: bool) {
    let (sim, pool, controller, store, mut q) = nvme_reading_after_a_failed_recovery(name);

    let mut answered = Vec::new();
    if bounded {
        assert_eq!(q.abort_all(), 1, "the READ is aborted: {:?}", store.dump());
        q.reap(&mut answered);
    } else {
        answered = reap_until_answered(&mut q);
    }

    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }],
        "{:?}",
        store.dump()
    );
    submit_read(&mut q, &pool, 2, 8);
    assert_eq!(
        reap_until_answered(&mut q),
        [StoreCompletion {
            tag: 2,
            status: StoreStatus::Good
        }],
        "served after the stop's reset: {:?}",
        store.dump()
    );
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert!(controller.is_enabled(), "the controller serves again");
    assert_eq!(controller.reset_count(), 1, "the stop's reset was a recovery");
    assert_eq!(
        store.counters().resets.load(Ordering::Relaxed),
        1,
        "the recovery the store's stop ran is one of the store's resets"
    );
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// [`a_stop_that_resets_brings_the_controller_back`] through the bounded stop of
/// `abort_all` (500 ms; no other reset runs, so the bound does not end it).
#[test]
fn an_nvme_abort_whose_stop_resets_the_controller_brings_it_back() {
    a_stop_that_resets_brings_the_controller_back("give-up-nvme-abort-resets", true);
}

/// [`a_stop_that_resets_brings_the_controller_back`] through the store's own deadline
/// escalation (the READ's command timeout, an unbounded stop).
#[test]
fn an_nvme_deadline_whose_stop_resets_the_controller_brings_it_back() {
    a_stop_that_resets_brings_the_controller_back("give-up-nvme-deadline-resets", false);
}

/// A queue whose restarts are refused because a recovery of the function is under way
/// (`ResetUnderWay`) for ever: a recovery hung in its function reset (`VFIO_DEVICE_RESET` has
/// no bound of its own), or recoveries by other queues one after another. The refusals are not
/// failures, but they are bounded in total: once restarts have not succeeded for longer than
/// one whole recovery (`Controller::recovery_bound`) and twice the command timeout, the store
/// gives up (`Store::failure`) as on restarts that keep failing, and answers the READ that
/// waited for the restart. It used to wait for ever, the READ never answered and the store
/// never giving up.
#[test]
fn an_nvme_store_gives_up_on_restarts_refused_for_longer_than_a_recovery_may_take() {
    let (sim, controller, queues, pool) = nvme_parts(
        "give-up-nvme-refused-for-ever",
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 1,
            ..NvmeSimConfig::default()
        },
        Duration::from_millis(300),
    );
    let refuse = Arc::new(AtomicBool::new(false));
    let queues = watched(
        queues,
        &Arc::new(AtomicU64::new(0)),
        &refuse,
        &Arc::new(AtomicBool::new(false)),
    );
    let command_timeout = Duration::from_millis(200);
    let store = store_with(Arc::clone(&controller) as _, queues, command_timeout);
    let mut q = store.open_queue().expect("queue");
    // Another queue's recovery moves the reset count: the queue must restart, and from now on
    // every restart is refused.
    refuse.store(true, Ordering::Release);
    controller.recover().expect("the other queue's recovery");
    let start = Instant::now();
    // The queue sees the count move (with nothing to fail) and its restart is refused.
    let mut out: Vec<StoreCompletion> = Vec::new();
    q.reap(&mut out);
    assert!(out.is_empty(), "{out:?}");
    submit_read(&mut q, &pool, 1, 0);
    let bound = Controller::recovery_bound(controller.as_ref()) + command_timeout * 2;
    assert!(bound < Duration::from_secs(5), "{bound:?}");

    while store.failure().is_none() {
        assert!(
            start.elapsed() < bound * 3,
            "the store never gave up on restarts refused for {:?}: answered {out:?}",
            start.elapsed()
        );
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }

    let gave_up_after = start.elapsed();
    assert!(
        gave_up_after >= bound,
        "gave up after {gave_up_after:?}, within a recovery's bound and the give-up window ({bound:?})"
    );
    assert!(
        store.failure().is_some_and(|f| f.contains("refused")),
        "{:?}",
        store.failure()
    );
    while !out.iter().any(|c| c.tag == 1) {
        assert!(start.elapsed() < bound * 4, "the READ was never answered");
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_ne!(out[0].status, StoreStatus::Good, "{out:?}");
    drop(q);
    drop(store);
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A BAR 0 over the simulated SCA-1 board that, once armed with `hold_ms`, holds the next write
/// setting ENABLE that long and says when it began to (`held`): a recovery of the function
/// whose reset is done (every queue's RUN cleared, the end of DMA proven) and whose reset count
/// has not moved yet (it moves once the function serves again, accelerator.md §7).
struct SlowEnable {
    inner: Arc<dyn DeviceBacking>,
    hold_ms: AtomicU64,
    held: AtomicBool,
}

impl RegisterIo for SlowEnable {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        self.inner.bar0().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        if offset == global::CONTROL && value & control::ENABLE != 0 {
            let hold = self.hold_ms.swap(0, Ordering::AcqRel);
            if hold > 0 {
                self.held.store(true, Ordering::Release);
                // The recovery's own thread, which holds no lock.
                std::thread::sleep(Duration::from_millis(hold));
            }
        }
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.inner.bar0().read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.inner.bar0().write64(offset, value);
    }
}

impl BarInterposer for SlowEnable {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }
}

/// The simulated SCA-1 board (two polled queues, 4096 blocks) brought up through a
/// [`SlowEnable`] (not armed), its queues, and a 16 MiB pool of buffers mapped for it.
fn sca1_parts(
    name: &str,
) -> (
    SimHandle,
    Arc<SlowEnable>,
    Arc<Sca1>,
    Vec<Sca1Queue>,
    Arc<SgvPool>,
) {
    let (board, sim) = create_sim_board(
        name,
        SimConfig {
            queues: 2,
            num_blocks: 4096,
            ..SimConfig::default()
        },
    )
    .expect("simulated SCA-1 board");
    let slow = Arc::new(SlowEnable {
        inner: board,
        hold_ms: AtomicU64::new(0),
        held: AtomicBool::new(false),
    });
    let config = Sca1Config {
        queues: 2,
        interrupts: false,
        ..Sca1Config::default()
    };
    let (controller, queues) =
        Sca1::bring_up(Arc::clone(&slow) as Arc<dyn DeviceBacking>, &config).expect("bring-up");
    let pool = Arc::new(SgvPool::new(
        Some(device_mapper(Arc::clone(controller.device()))),
        Some(Arc::clone(controller.iovas())),
        16 << 20,
    ));
    (sim, slow, Arc::new(controller), queues, pool)
}

/// `queues` as the store takes them, each [`Watched`] (restarts with requests in flight counted
/// in `restarts_in_flight`), its first successful restart followed by what `then` makes for it,
/// if given.
fn watched_sca1(
    queues: Vec<Sca1Queue>,
    restarts_in_flight: &Arc<AtomicU64>,
    then: Option<&dyn Fn() -> Box<dyn FnOnce() + Send>>,
) -> Vec<Box<dyn QueueEngine>> {
    queues
        .into_iter()
        .map(|q| {
            Box::new(Watched {
                inner: Box::new(q),
                restarts_in_flight: Arc::clone(restarts_in_flight),
                refuse_restarts: Arc::new(AtomicBool::new(false)),
                after_restart: then.map(|then| then()),
                fail_stops: Arc::new(AtomicBool::new(false)),
            }) as Box<dyn QueueEngine>
        })
        .collect()
}

/// Submit a READ (tag `tag`) to `q` and reap until it is answered: the answer, and how long
/// it took.
fn timed_read(
    q: &mut Box<dyn StoreQueue>,
    pool: &Arc<SgvPool>,
    tag: u64,
) -> (Vec<StoreCompletion>, Duration) {
    let start = Instant::now();
    submit_read(q, pool, tag, 8);
    let answered = reap_until_answered(q);
    (answered, start.elapsed())
}

/// An SCA-1 queue that another queue's recovery of the function stops right after the queue's
/// own restart, before the store reads the reset count (here the queue restarts as it sees a
/// first recovery's count move, and a second whole recovery runs in that window): the store
/// has seen the second recovery's count, so nothing fails the queue's requests or restarts it
/// for that recovery, yet its engine was stopped by it (accelerator.md §7). The queue went on
/// reporting running, and the READ submitted next went onto a ring the engine no longer ran,
/// to be failed ABORTED at its deadline (3 s here). Now the queue reports not running: the
/// READ waits off the ring for the restart that the next health check makes, and is served.
#[test]
fn an_sca1_queue_stopped_by_a_recovery_right_after_its_restart_serves_the_next_read_at_once() {
    let (sim, _slow, controller, queues, pool) = sca1_parts("give-up-sca1-stopped-after-restart");
    let restarts_in_flight = Arc::new(AtomicU64::new(0));
    let second_recovery = || {
        let other = Arc::clone(&controller);
        Box::new(move || {
            other.recover().expect("the second recovery");
        }) as Box<dyn FnOnce() + Send>
    };
    let queues = watched_sca1(queues, &restarts_in_flight, Some(&second_recovery));
    let command_timeout = Duration::from_secs(3);
    let store = store_with(Arc::clone(&controller) as _, queues, command_timeout);
    let mut q = store.open_queue().expect("queue");
    controller.recover().expect("another queue's recovery");
    // The queue sees the count move (nothing to fail) and restarts; the second recovery runs
    // right after.
    let mut out: Vec<StoreCompletion> = Vec::new();
    q.reap(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        controller.reset_count(),
        2,
        "the second recovery ran in the window"
    );

    let (answered, took) = timed_read(&mut q, &pool, 1);

    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Good
        }],
        "{:?}",
        store.dump()
    );
    assert!(
        took < command_timeout / 3,
        "served only after {took:?} (command timeout {command_timeout:?})"
    );
    assert_eq!(restarts_in_flight.load(Ordering::Relaxed), 0);
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// The same for a queue the store hands out after another queue's recovery of the function
/// stopped it (a worker that opens its queue late): the store reads the reset count as it opens
/// the queue, so that recovery is seen and fails nothing, and the queue's first READ went onto
/// the ring its engine no longer ran, failed ABORTED at its deadline. Now it is served.
#[test]
fn an_sca1_queue_opened_after_another_queues_recovery_serves_its_first_read_at_once() {
    let (sim, _slow, controller, queues, pool) = sca1_parts("give-up-sca1-opened-after-recovery");
    let restarts_in_flight = Arc::new(AtomicU64::new(0));
    let command_timeout = Duration::from_secs(3);
    let store = store_with(
        Arc::clone(&controller) as _,
        watched_sca1(queues, &restarts_in_flight, None),
        command_timeout,
    );
    let _first = store.open_queue().expect("the first queue");
    controller.recover().expect("the first queue's recovery");
    let mut q = store.open_queue().expect("the queue opened after it");

    let (answered, took) = timed_read(&mut q, &pool, 1);

    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Good
        }],
        "{:?}",
        store.dump()
    );
    assert!(
        took < command_timeout / 3,
        "served only after {took:?} (command timeout {command_timeout:?})"
    );
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A READ in flight on an SCA-1 queue (each descriptor waits 2 s: `latency`) when another
/// thread's recovery of the function resets it, the recovery then taking 1.5 s to serve again
/// (its ENABLE held: [`SlowEnable`]) before its reset count moves, against a command timeout
/// of 200 ms. From the reset on the queue reports not running (accelerator.md §7; it reported
/// running until a stop), the READ still its own: the store must not restart the queue under
/// it (`restart()` wants nothing in flight: a restart there asserted in debug builds and in
/// release emptied the rings over live slots, why the first version of this change was
/// reverted). The READ meets its deadline, the stop proves the end of its DMA, it is failed
/// ABORTED; a READ submitted during the recovery waits off the ring and is answered (failed
/// with the queue's requests when the count moves, or served after the restart); and once
/// the recovery published its count, the queue serves.
#[test]
fn an_sca1_queue_stopped_by_another_queues_recovery_is_not_restarted_under_its_requests() {
    let (sim, slow, controller, queues, pool) = sca1_parts("give-up-sca1-in-flight-across-recovery");
    let restarts_in_flight = Arc::new(AtomicU64::new(0));
    let store = store_with(
        Arc::clone(&controller) as _,
        watched_sca1(queues, &restarts_in_flight, None),
        Duration::from_millis(200),
    );
    let mut q = store.open_queue().expect("queue");
    sim.inject(Fault::Latency {
        queue: None,
        micros: 2_000_000,
    });
    submit_read(&mut q, &pool, 1, 0);
    slow.hold_ms.store(1500, Ordering::Release);
    let other = Arc::clone(&controller);
    let recovery = std::thread::spawn(move || other.recover().map_err(|e| e.to_string()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !slow.held.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the recovery never reached its ENABLE");
        std::thread::sleep(Duration::from_millis(1));
    }
    let dump = q.dump().unwrap_or_default();
    assert!(
        dump.contains("running false") && dump.contains("in_flight 1"),
        "the queue the reset stopped: {dump}"
    );

    let answered = reap_until_answered(&mut q);

    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }],
        "the READ met its deadline: {:?}",
        store.dump()
    );
    assert!(!recovery.is_finished(), "the recovery still runs");
    assert_eq!(
        restarts_in_flight.load(Ordering::Relaxed),
        0,
        "restarts asked with the READ in flight"
    );
    submit_read(&mut q, &pool, 2, 8);
    let mut out: Vec<StoreCompletion> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(recovery.is_finished() && out.iter().any(|c| c.tag == 2)) {
        assert!(store.failure().is_none(), "{:?}", store.failure());
        assert!(Instant::now() < deadline, "never answered: {:?}", store.dump());
        if recovery.is_finished() {
            sim.clear_faults();
        }
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(out[0].status, StoreStatus::Aborted | StoreStatus::Good),
        "{out:?}"
    );
    recovery
        .join()
        .expect("recovery thread")
        .expect("the other queue's recovery");
    let (answered, _) = timed_read(&mut q, &pool, 3);
    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 3,
            status: StoreStatus::Good
        }],
        "served after the recovery: {:?}",
        store.dump()
    );
    assert_eq!(restarts_in_flight.load(Ordering::Relaxed), 0);
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A function that goes FATAL after another queue's recovery, which this queue has not seen yet
/// (it has not reaped since), when this queue's stop succeeds (here the abort of the teardown
/// or of the frontend's deadline, `abort_all`): that recovery's count and the stop prove the
/// end of the READ's DMA, but only a reset clears FATAL (accelerator.md §7, §8). The store took
/// that recovery for the reset it needed and left the function FATAL until a later health
/// check with work on the queue (the next READ, failed ABORTED by that reset). Now the stop's
/// FATAL is reset at once, and the next READ is served.
#[test]
fn a_fatal_function_whose_stop_succeeded_after_another_queues_recovery_is_reset_at_once() {
    let (sim, _slow, controller, queues, pool) = sca1_parts("give-up-sca1-fatal-after-recovery");
    let restarts_in_flight = Arc::new(AtomicU64::new(0));
    let store = store_with(
        Arc::clone(&controller) as _,
        watched_sca1(queues, &restarts_in_flight, None),
        Duration::from_secs(3),
    );
    let mut q = store.open_queue().expect("queue");
    sim.inject(Fault::Latency {
        queue: None,
        micros: 300_000,
    });
    submit_read(&mut q, &pool, 1, 0);
    controller.recover().expect("another queue's recovery");
    sim.inject(Fault::Fatal { code: 0x12 });

    assert_eq!(q.abort_all(), 1, "the READ is aborted: {:?}", store.dump());

    assert_eq!(
        controller.fatal(),
        None,
        "the function is left FATAL: {:?}",
        store.dump()
    );
    assert_eq!(controller.reset_count(), 2, "the queue's own recovery");
    let mut out: Vec<StoreCompletion> = Vec::new();
    q.reap(&mut out);
    assert_eq!(
        out,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }]
    );
    sim.clear_faults();
    let (answered, _) = timed_read(&mut q, &pool, 2);
    assert_eq!(
        answered,
        [StoreCompletion {
            tag: 2,
            status: StoreStatus::Good
        }],
        "served after the reset: {:?}",
        store.dump()
    );
    assert_eq!(restarts_in_flight.load(Ordering::Relaxed), 0);
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A queue sees the reset count move (another queue's recovery of the controller) holding
/// requests the controller saw and requests it never saw: the ring full of READs the
/// controller executes but never completes (`never-complete`), a WRITE of two commands (MDTS
/// 8 KiB: 16 blocks each) whose first took the ring's last slot and whose second waited in the
/// store for a slot, and a READ submitted after the recovery, which waited in the store for the
/// queue to run again. What the controller may have seen is failed ABORTED: the READs, and the
/// WRITE whole (its second half is not written after the restart). The READ it never saw is
/// submitted after the restart and served. It used to be failed ABORTED with the rest, though
/// nothing about DMA forbade submitting it.
#[test]
fn a_request_the_controller_never_saw_is_served_after_another_queues_recovery() {
    let (sim, controller, queues, pool) = nvme_parts(
        "give-up-nvme-never-seen",
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 1,
            mdts: 1,
            ..NvmeSimConfig::default()
        },
        Duration::from_secs(1),
    );
    // No deadline escalates in this test.
    let store = store_with(
        Arc::clone(&controller) as _,
        engines(queues),
        Duration::from_secs(30),
    );
    let mut q = store.open_queue().expect("queue");
    sim.inject(NvmeFault::NeverComplete { every: 1 });
    // Depth 16: 15 slots; 14 READs, then the WRITE's first command.
    for tag in 1..=14 {
        submit_read(&mut q, &pool, tag, tag * 8);
    }
    let data = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 32 * 512).expect("buffer"),
        32 * 512,
    );
    data.write_at(0, &[0xab; 32 * 512]);
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest {
            tag: 15,
            op: StoreOp::Write {
                lba: 1024,
                blocks: 32,
                fua: false,
            },
            buffer: Some(data),
        }],
    )
    .expect("submit");
    let dump = q.dump().unwrap_or_default();
    assert!(dump.contains("waiting for a ring slot 1"), "{dump}");
    controller.recover().expect("another queue's recovery");
    submit_read(&mut q, &pool, 16, 0);
    sim.clear_faults();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: Vec<StoreCompletion> = Vec::new();
    while out.len() < 16 {
        assert!(Instant::now() < deadline, "answered {out:?}: {:?}", store.dump());
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }

    out.sort_by_key(|c| c.tag);
    let expected: Vec<StoreCompletion> = (1..=16)
        .map(|tag| StoreCompletion {
            tag,
            status: if tag == 16 {
                StoreStatus::Good
            } else {
                StoreStatus::Aborted
            },
        })
        .collect();
    assert_eq!(out, expected, "the READ the controller never saw is served");
    // The WRITE's second half, never submitted, was not written after the restart.
    let second_half = IoBuffer::new(
        CmdBuffer::allocate(&mut StoreToken::root(), &pool, 16 * 512).expect("buffer"),
        16 * 512,
    );
    q.submit(
        &mut StoreToken::root(),
        &mut vec![StoreRequest {
            tag: 17,
            op: StoreOp::Read {
                lba: 1040,
                blocks: 16,
            },
            buffer: Some(second_half.clone()),
        }],
    )
    .expect("submit");
    assert_eq!(
        reap_until_answered(&mut q),
        [StoreCompletion {
            tag: 17,
            status: StoreStatus::Good
        }]
    );
    let mut medium = vec![0u8; 16 * 512];
    second_half.read_at(0, &mut medium);
    assert!(
        medium.iter().all(|&b| b != 0xab),
        "the failed WRITE's second half was written after the restart"
    );
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// A READ submitted after another queue's recovery moved the reset count, before the queue saw
/// the move: it waits in the store (the queue is not running) and is kept, never submitted, when
/// the queue sees the move; but every restart is refused (`Watched`: recoveries under way for
/// ever). Kept is bounded all the same: by the teardown's or the frontend deadline's abort
/// (`by_abort`: the READ is failed ABORTED at once, the store still serving), or by the store's
/// give-up on refused restarts (one whole recovery and twice the command timeout). The READ
/// used to be failed ABORTED as soon as the queue saw the move.
fn a_request_kept_through_a_recovery_still_ends(name: &str, by_abort: bool) {
    let (sim, controller, queues, pool) = nvme_parts(
        name,
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 1,
            ..NvmeSimConfig::default()
        },
        Duration::from_millis(300),
    );
    let queues = watched(
        queues,
        &Arc::new(AtomicU64::new(0)),
        &Arc::new(AtomicBool::new(true)),
        &Arc::new(AtomicBool::new(false)),
    );
    let command_timeout = Duration::from_millis(200);
    let store = store_with(Arc::clone(&controller) as _, queues, command_timeout);
    let mut q = store.open_queue().expect("queue");
    controller.recover().expect("another queue's recovery");
    let start = Instant::now();
    submit_read(&mut q, &pool, 1, 0);

    let mut out: Vec<StoreCompletion> = Vec::new();
    for _ in 0..50 {
        q.reap(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        out.is_empty(),
        "the READ the controller never saw was failed: {out:?}"
    );
    assert_eq!(q.in_flight(), 1, "kept");

    if by_abort {
        assert_eq!(q.abort_all(), 1, "{:?}", store.dump());
        q.reap(&mut out);
        assert_eq!(
            out,
            [StoreCompletion {
                tag: 1,
                status: StoreStatus::Aborted
            }]
        );
        assert!(store.failure().is_none(), "{:?}", store.failure());
    } else {
        let bound = Controller::recovery_bound(controller.as_ref()) + command_timeout * 2;
        while out.is_empty() {
            assert!(start.elapsed() < bound * 3, "never answered: {:?}", store.dump());
            q.reap(&mut out);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(start.elapsed() >= bound, "answered after {:?}", start.elapsed());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_ne!(out[0].status, StoreStatus::Good, "{out:?}");
        assert!(
            store.failure().is_some_and(|f| f.contains("refused")),
            "{:?}",
            store.failure()
        );
    }
    drop(q);
    drop(store);
    assert_eq!(sim.iommu().fault_count(), 0);
}

/// [`a_request_kept_through_a_recovery_still_ends`] by `abort_all`.
#[test]
fn a_request_kept_through_a_recovery_is_ended_by_an_abort() {
    a_request_kept_through_a_recovery_still_ends("give-up-nvme-kept-aborted", true);
}

/// [`a_request_kept_through_a_recovery_still_ends`] by the store's give-up.
#[test]
fn a_request_kept_through_a_recovery_is_ended_by_the_give_up() {
    a_request_kept_through_a_recovery_still_ends("give-up-nvme-kept-given-up", false);
}

/// Another caller's recovery of the controller (as `demo --reset-during-load` runs one; its
/// disable takes 1.5 s) is under way when the store's abort finds its queue's stop failing (a
/// hung deletion: `Watched`) and asks for a recovery itself: one runs at a time, so the
/// store's call waits for the running one and shares its outcome. The READ is failed ABORTED
/// after it, and the store counts no reset of its own: the controller counts the one
/// recovery, which the store did not run. It used to count it as its own, as it counted twice
/// a recovery two of its queues asked for at once (each call that shared the first's).
#[test]
fn a_recovery_the_store_only_waited_for_is_not_counted_as_its_own() {
    let (sim, controller, queues, pool) = nvme_parts(
        "give-up-nvme-shared-recovery",
        NvmeSimConfig {
            num_blocks: 4096,
            cap_to: 4,
            disable_micros: 1_500_000,
            ..NvmeSimConfig::default()
        },
        Duration::from_secs(1),
    );
    let queues = watched(
        queues,
        &Arc::new(AtomicU64::new(0)),
        &Arc::new(AtomicBool::new(false)),
        &Arc::new(AtomicBool::new(true)),
    );
    let (store, mut q) = store_reading(
        Arc::clone(&controller) as _,
        queues,
        &pool,
        Duration::from_secs(30),
        || sim.inject(NvmeFault::NeverComplete { every: 1 }),
    );
    let other = Arc::clone(&controller);
    let recovery = std::thread::spawn(move || other.recover().map_err(|e| e.to_string()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while controller.is_enabled() {
        assert!(Instant::now() < deadline, "the recovery never started");
        std::thread::sleep(Duration::from_millis(1));
    }

    let aborted = q.abort_all();

    assert_eq!(
        recovery.join().expect("recovery thread"),
        Ok(Recovered::Ran),
        "the other caller ran the recovery"
    );
    assert_eq!(aborted, 1, "{:?}", store.dump());
    let mut out: Vec<StoreCompletion> = Vec::new();
    q.reap(&mut out);
    assert_eq!(
        out,
        [StoreCompletion {
            tag: 1,
            status: StoreStatus::Aborted
        }]
    );
    assert!(store.failure().is_none(), "{:?}", store.failure());
    assert_eq!(controller.reset_count(), 1, "one recovery");
    assert_eq!(
        store.counters().resets.load(Ordering::Relaxed),
        0,
        "the store ran no recovery: it waited for another caller's"
    );
    drop(q);
    drop(store);
    assert_eq!(sim.iommu().fault_count(), 0);
}
