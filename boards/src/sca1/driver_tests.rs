//! The SCA-1 function driver's own rules against the simulated board, seen through interposers
//! that make it misbehave: what bring-up accepts from the device, how a failed bring-up leaves
//! the function, how a queue restarts, and how recoveries of one function are serialised.

use super::desc::opcode;
use super::regs::control;
use super::regs::global;
use super::regs::queue;
use super::regs::Cap0;
use super::Sca1;
use super::Sca1Config;
use super::Sca1Error;
use super::Sca1Queue;
use super::Sca1Request;
use crate::engine::Recovered;
use crate::recovery::Turn;
use crate::sim::create_sim_board;
use crate::sim::SimConfig;
use crate::sim::SimHandle;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::BarInterposer;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::HalError;
use scst_accel_hal::RegisterIo;
use scst_accel_hal::ResetKind;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// A BAR whose 32-bit reads pass through `read(offset, value)`: a device that reports what the
/// test wants in the registers it names, and the board's own values elsewhere.
struct Bend<F> {
    inner: Arc<dyn DeviceBacking>,
    read: F,
}

impl<F: Fn(u64, u32) -> u32 + Send + Sync> RegisterIo for Bend<F> {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        (self.read)(offset, self.inner.bar0().read32(offset))
    }

    fn write32(&self, offset: u64, value: u32) {
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.inner.bar0().read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.inner.bar0().write64(offset, value);
    }
}

impl<F: Fn(u64, u32) -> u32 + Send + Sync> BarInterposer for Bend<F> {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }
}

/// A simulated board of `queues` queues (no vectors, 1024 blocks) and the device the driver
/// reaches it through: `bend` applied to its BAR reads.
fn board(
    name: &str,
    queues: u32,
    bend: impl Fn(u64, u32) -> u32 + Send + Sync + 'static,
) -> (Arc<dyn DeviceBacking>, Arc<dyn DeviceBacking>, SimHandle) {
    let config = SimConfig {
        queues,
        vectors: 0,
        num_blocks: 1024,
        ..SimConfig::default()
    };
    let (board, sim) = create_sim_board(name, config).expect("sim board");
    let board: Arc<dyn DeviceBacking> = board;
    let device: Arc<dyn DeviceBacking> = Arc::new(Bend {
        inner: Arc::clone(&board),
        read: bend,
    });
    (board, device, sim)
}

fn driver_config(queues: u32) -> Sca1Config {
    Sca1Config {
        queues,
        ring_entries: 16,
        interrupts: false,
        ..Sca1Config::default()
    }
}

/// Bring-up refused the device: the error, which must name `register`.
fn refused(name: &str, register: u64, value: u32) -> (Sca1Error, Arc<dyn DeviceBacking>) {
    let (board, device, _sim) = board(
        name,
        1,
        move |offset, real| if offset == register { value } else { real },
    );
    match Sca1::bring_up(device, &driver_config(1)) {
        Ok(_) => panic!("{name}: bring-up accepted {value:#x} at {register:#x}"),
        Err(e) => (e, board),
    }
}

/// The function is left reset: not enabled, no queue running (accelerator.md §7).
fn assert_left_reset(board: &dyn DeviceBacking) {
    let bar = board.bar0();
    assert_eq!(
        bar.read32(global::CONTROL) & control::ENABLE,
        0,
        "ENABLE left set"
    );
    assert_eq!(
        bar.read32(queue::reg(0, queue::Q_CONTROL)) & queue::RUN,
        0,
        "RUN left set"
    );
}

/// CAP0 whose largest ring is 2^0 entries (bits 15:8 = 0) was a panic in bring-up (a clamp
/// whose minimum exceeded its maximum); a ring holds at least 2 entries (accelerator.md §2).
#[test]
fn bring_up_refuses_a_cap0_with_no_ring() {
    let cap0 = Cap0 {
        queues: 1,
        max_ring_log2: 0,
        vectors: 0,
        max_sgl_log2: 8,
    };
    let (e, board) = refused("sca1-cap0-ring0", global::CAP0, cap0.to_bits());
    assert!(
        matches!(e, Sca1Error::Capability { register, .. } if register.starts_with("CAP0 largest ring")),
        "{e}"
    );
    assert_left_reset(board.as_ref());
}

/// CAP0's queue count is 1..=32 (INT_STATUS has one bit per queue, accelerator.md §1).
#[test]
fn bring_up_refuses_a_queue_count_outside_the_contract() {
    for queues in [0, 33, 255] {
        let cap0 = Cap0 {
            queues,
            max_ring_log2: 12,
            vectors: 0,
            max_sgl_log2: 8,
        };
        let (e, board) = refused("sca1-cap0-queues", global::CAP0, cap0.to_bits());
        assert!(
            matches!(e, Sca1Error::Capability { value, .. } if value == u64::from(queues)),
            "{queues} queues: {e}"
        );
        assert_left_reset(board.as_ref());
    }
}

/// BLOCK_SIZE is 512 or 4096 (accelerator.md §1): a device reporting another size would be
/// sent LBAs in units it does not use.
#[test]
fn bring_up_refuses_a_block_size_outside_the_contract() {
    for size in [0, 256, 1024, 8192] {
        let (e, board) = refused("sca1-block-size", global::BLOCK_SIZE, size);
        assert!(
            matches!(e, Sca1Error::Capability { register: "BLOCK_SIZE", value, .. } if value == u64::from(size)),
            "BLOCK_SIZE {size}: {e}"
        );
        assert_left_reset(board.as_ref());
    }
    let (e, _) = refused("sca1-cap1-zero", global::CAP1, 0);
    assert!(matches!(e, Sca1Error::Capability { register: "CAP1", .. }), "{e}");
}

/// A function whose soft reset may hang and whose function reset and bus-master clearing may
/// fail, as the test sets them.
struct Rigged {
    inner: Arc<dyn DeviceBacking>,
    /// CONTROL.SOFT_RESET reads 1 (a soft reset that never completes) while set.
    soft_reset_stuck: AtomicBool,
    /// Set `soft_reset_stuck` when ENABLE is written (the reset after it hangs).
    stick_after_enable: bool,
    /// STATUS.READY never reads 1.
    never_ready: bool,
    /// The function reset works (and ends a stuck soft reset), else there is none.
    function_reset: bool,
    /// Clearing bus mastering works.
    bus_master: bool,
    bus_master_cleared: AtomicBool,
}

impl Rigged {
    fn new(inner: Arc<dyn DeviceBacking>) -> Self {
        Self {
            inner,
            soft_reset_stuck: AtomicBool::new(false),
            stick_after_enable: false,
            never_ready: false,
            function_reset: true,
            bus_master: true,
            bus_master_cleared: AtomicBool::new(false),
        }
    }
}

impl RegisterIo for Rigged {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        let value = self.inner.bar0().read32(offset);
        match offset {
            global::CONTROL if self.soft_reset_stuck.load(Ordering::Acquire) => value | control::SOFT_RESET,
            global::STATUS if self.never_ready => value & !super::regs::status::READY,
            _ => value,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        if offset == global::CONTROL && value & control::ENABLE != 0 && self.stick_after_enable {
            self.soft_reset_stuck.store(true, Ordering::Release);
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

impl DeviceBacking for Rigged {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn bar0(&self) -> &dyn RegisterIo {
        self
    }

    fn dma(&self) -> &dyn scst_accel_hal::DmaMapper {
        self.inner.dma()
    }

    fn max_interrupts(&self) -> u32 {
        self.inner.max_interrupts()
    }

    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<scst_accel_hal::EventFd>, HalError> {
        self.inner.enable_interrupts(vectors)
    }

    fn disable_interrupts(&self) -> Result<(), HalError> {
        self.inner.disable_interrupts()
    }

    fn reset(&self) -> Result<ResetKind, HalError> {
        if !self.function_reset {
            return Err(HalError::NoReset {
                device: self.id().to_owned(),
            });
        }
        self.soft_reset_stuck.store(false, Ordering::Release);
        self.inner.reset()
    }

    fn disable_bus_master(&self) -> Result<(), HalError> {
        if !self.bus_master {
            return Err(HalError::BusMaster {
                device: self.id().to_owned(),
                reason: "the test's device keeps it set".to_owned(),
            });
        }
        self.bus_master_cleared.store(true, Ordering::Release);
        self.inner.disable_bus_master()
    }

    fn pci_identity(&self) -> Result<scst_accel_hal::PciIdentity, HalError> {
        self.inner.pci_identity()
    }

    fn removal_request(&self) -> Option<&scst_accel_hal::RemovalRequest> {
        self.inner.removal_request()
    }
}

/// What [`Sca1::bring_up`] returns.
type BringUp = Result<(Sca1, Vec<Sca1Queue>), Sca1Error>;

/// Bring up one queue through `rig(board)` (RESET_TIMEOUT 50 ms); the board is returned too.
fn bring_up_rigged(name: &str, rig: impl FnOnce(Arc<dyn DeviceBacking>) -> Rigged) -> (BringUp, Arc<Rigged>) {
    let config = SimConfig {
        queues: 1,
        vectors: 0,
        num_blocks: 1024,
        reset_timeout_ms: 50,
        ..SimConfig::default()
    };
    let (board, _sim) = create_sim_board(name, config).expect("sim board");
    let rigged = Arc::new(rig(board));
    let device: Arc<dyn DeviceBacking> = Arc::clone(&rigged) as Arc<dyn DeviceBacking>;
    (Sca1::bring_up(device, &driver_config(1)), rigged)
}

/// Bring-up's first reset escalates as every reset does (accelerator.md §7): a soft reset that
/// does not complete is followed by a function reset, and the bring-up goes on.
#[test]
fn bring_up_escalates_a_hung_soft_reset_to_a_function_reset() {
    let (result, rigged) = bring_up_rigged("sca1-bring-up-hung-reset", |board| {
        let rigged = Rigged::new(board);
        rigged.soft_reset_stuck.store(true, Ordering::Release);
        rigged
    });
    match result {
        Ok((driver, _queues)) => {
            let _ = driver.reset();
        }
        Err(e) => panic!("bring-up failed: {e}"),
    }
    assert!(!rigged.bus_master_cleared.load(Ordering::Acquire));
}

/// Without any reset that completes, bring-up clears bus mastering before it reports its error,
/// and says so when even that fails (Sca1Error::DmaUnproven).
#[test]
fn bring_up_without_a_reset_clears_bus_mastering_or_says_dma_is_unproven() {
    for bus_master in [true, false] {
        let (result, rigged) = bring_up_rigged("sca1-bring-up-no-reset", |board| {
            let rigged = Rigged {
                function_reset: false,
                bus_master,
                ..Rigged::new(board)
            };
            rigged.soft_reset_stuck.store(true, Ordering::Release);
            rigged
        });
        let Err(e) = result else {
            panic!("bring-up without a reset succeeded");
        };
        assert_eq!(
            rigged.bus_master_cleared.load(Ordering::Acquire),
            bus_master,
            "bus mastering cleared: {e}"
        );
        assert_eq!(matches!(e, Sca1Error::DmaUnproven { .. }), !bus_master, "{e}");
    }
}

/// A bring-up that fails after the first reset (READY never comes), whose cleanup reset hangs
/// and whose function has no function reset, clears bus mastering: the function is not left
/// enabled and able to DMA.
#[test]
fn a_failed_bring_up_whose_cleanup_reset_hangs_clears_bus_mastering() {
    let (result, rigged) = bring_up_rigged("sca1-bring-up-cleanup-hangs", |board| Rigged {
        stick_after_enable: true,
        never_ready: true,
        function_reset: false,
        ..Rigged::new(board)
    });
    let Err(e) = result else {
        panic!("bring-up without READY succeeded");
    };
    assert!(matches!(e, Sca1Error::Timeout { what: "READY", .. }), "{e}");
    assert!(rigged.bus_master_cleared.load(Ordering::Acquire), "{e}");
}

/// A BAR that holds the function's ENABLE write, once armed, until the test opens the gate: a
/// recovery stopped between its reset and the publication of its reset count.
struct GatedEnable {
    inner: Arc<dyn DeviceBacking>,
    armed: AtomicBool,
    reached: AtomicBool,
    open: AtomicBool,
}

impl GatedEnable {
    /// Wait (bounded) until a recovery's ENABLE write is held.
    fn wait_reached(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.reached.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the recovery never reached its ENABLE");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl RegisterIo for GatedEnable {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        self.inner.bar0().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        if offset == global::CONTROL && value & control::ENABLE != 0 && self.armed.load(Ordering::Acquire) {
            self.reached.store(true, Ordering::Release);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.open.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
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

impl BarInterposer for GatedEnable {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }
}

/// A function of `queues` queues brought up through a [`GatedEnable`] (not armed), with a
/// 4 KiB data buffer mapped on it.
struct Rig {
    sim: SimHandle,
    gate: Arc<GatedEnable>,
    driver: Arc<Sca1>,
    queues: Vec<Sca1Queue>,
    data: MappedRegion,
}

impl Rig {
    fn new(name: &str, queues: u32) -> Self {
        Self::with(
            name,
            SimConfig {
                queues,
                ..SimConfig::default()
            },
        )
    }

    /// On a board with `config` (polled, 1024 blocks).
    fn with(name: &str, config: SimConfig) -> Self {
        let config = SimConfig {
            vectors: 0,
            num_blocks: 1024,
            ..config
        };
        let queues = config.queues;
        let (board, sim) = create_sim_board(name, config).expect("sim board");
        let gate = Arc::new(GatedEnable {
            inner: board,
            armed: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            open: AtomicBool::new(false),
        });
        let device: Arc<dyn DeviceBacking> = Arc::clone(&gate) as Arc<dyn DeviceBacking>;
        let (driver, queues) = match Sca1::bring_up(Arc::clone(&device), &driver_config(queues)) {
            Ok(up) => up,
            Err(e) => panic!("bring-up: {e}"),
        };
        let data = MappedRegion::new(
            DmaRegion::new(4096).expect("data region"),
            super::device_mapper(device),
            Arc::clone(driver.iovas()),
        )
        .expect("data mapping");
        Self {
            sim,
            gate,
            driver: Arc::new(driver),
            queues,
            data,
        }
    }

    /// Submit a 4 KiB READ of block `lba` with `user_tag` on queue `q` and ring its doorbell.
    fn submit(&mut self, q: usize, user_tag: u64, lba: u64) -> Result<(), super::SubmitError> {
        let segments = [(self.data.iova(), 4096)];
        self.queues[q].submit(&Sca1Request {
            user_tag,
            opcode: opcode::READ,
            fua: false,
            lba,
            length: 4096,
            segments: &segments,
            source: None,
        })?;
        self.queues[q].ring_doorbell();
        Ok(())
    }

    /// Reap queue `q` until `n` completions came, or 2 s passed; returns their tags.
    fn reap(&mut self, q: usize, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            self.queues[q].reap(&mut out);
            std::thread::sleep(Duration::from_millis(1));
        }
        out.iter().map(|c| c.user_tag).collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.gate.open.store(true, Ordering::Release);
        let _ = self.driver.reset();
    }
}

/// A restart re-programs the rings only after RUN is 0 (accelerator.md §2: the ring registers
/// are writable only then, and only RUN 0 → 1 starts the engine's ring state over). A restart
/// without a stop before it used to leave the engine on its old head, sequence and phase while
/// the host started over: nothing completed after it.
#[test]
fn a_restart_without_a_stop_still_completes_the_next_request() {
    let mut rig = Rig::new("sca1-restart-running", 1);
    for tag in 1..=3 {
        rig.submit(0, tag, 8 * tag).expect("submit");
        assert_eq!(rig.reap(0, 1), [tag]);
    }
    rig.queues[0].restart().expect("restart");
    rig.submit(0, 10, 0).expect("submit after the restart");
    assert_eq!(rig.reap(0, 1), [10], "the request after the restart completed");
    assert_eq!(rig.sim.stats().stale, 0, "{:?}", rig.sim.stats());
}

/// While a recovery runs (held between its reset and its ENABLE, so its reset count has not
/// moved), another queue's stop and restart must not bring the queue back: requests submitted
/// then could run after the reset, and the store fails every request submitted before it sees
/// the new count as ABORTED, releasing buffers the device may still DMA to. Once the recovery
/// publishes its count, the restart works.
#[test]
fn no_queue_restarts_before_a_recovery_publishes_its_reset_count() {
    let mut rig = Rig::new("sca1-restart-in-recovery", 2);
    rig.submit(1, 1, 0).expect("submit");
    assert_eq!(rig.reap(1, 1), [1]);
    rig.gate.armed.store(true, Ordering::Release);
    let driver = Arc::clone(&rig.driver);
    let recovery = std::thread::spawn(move || driver.recover().map_err(|e| e.to_string()));
    rig.gate.wait_reached();
    assert_eq!(
        rig.driver.reset_count(),
        0,
        "the count moves only once the function serves"
    );
    rig.queues[1].stop().expect("stop after the reset");
    let refused = rig.queues[1].restart();
    assert!(
        matches!(refused, Err(Sca1Error::ResetUnderWay { queue: 1, .. })),
        "restart during the recovery: {refused:?}"
    );
    assert!(
        matches!(rig.submit(1, 2, 8), Err(super::SubmitError::NotRunning)),
        "the queue takes no request until it restarts"
    );
    rig.gate.open.store(true, Ordering::Release);
    recovery.join().expect("recovery thread").expect("recovery");
    assert_eq!(rig.driver.reset_count(), 1);
    for q in 0..2 {
        rig.queues[q].restart().expect("restart after the recovery");
        rig.submit(q, 3, 16).expect("submit after the recovery");
        assert_eq!(rig.reap(q, 1), [3], "queue {q} serves again");
    }
}

/// A queue that did not stop itself but was stopped by a reset of its function (another
/// queue's recovery clears every queue's RUN, accelerator.md §7) reports not running and takes
/// no request until it restarts: it used to report running and take requests onto a ring the
/// engine no longer ran, where they waited for their deadline. Restarted, it serves.
#[test]
fn a_queue_stopped_by_another_queues_recovery_takes_no_request_until_it_restarts() {
    let mut rig = Rig::new("sca1-stopped-by-reset", 2);
    rig.submit(0, 1, 0).expect("submit");
    assert_eq!(rig.reap(0, 1), [1]);
    assert!(rig.queues[0].is_running());

    rig.driver.recover().expect("another queue's recovery");

    assert!(!rig.queues[0].is_running(), "the reset cleared its RUN");
    assert!(
        matches!(rig.submit(0, 2, 8), Err(super::SubmitError::NotRunning)),
        "no request onto a ring the engine does not run"
    );
    assert_eq!(rig.queues[0].stats().submitted, 1);
    rig.queues[0].restart().expect("restart");
    assert!(rig.queues[0].is_running());
    rig.submit(0, 3, 16).expect("submit after the restart");
    assert_eq!(rig.reap(0, 1), [3], "served after the restart");
}

/// A request in flight when another queue's recovery reset the function stays in flight on a
/// queue that reports not running: nothing but a stop (or the reset count the store reads)
/// ends it, and the stop, the reset having ended the engine's DMA, succeeds at once. Only then
/// is it abandoned and the queue restarted (a restart wants nothing in flight).
#[test]
fn a_request_in_flight_across_another_queues_recovery_waits_for_the_stop() {
    use crate::sim::Fault;
    let mut rig = Rig::new("sca1-in-flight-across-reset", 2);
    rig.sim.inject(Fault::Latency {
        queue: Some(0),
        micros: 2_000_000,
    });
    rig.submit(0, 1, 0).expect("submit");

    rig.driver.recover().expect("another queue's recovery");

    assert!(!rig.queues[0].is_running());
    assert_eq!(rig.queues[0].in_flight(), 1, "still the queue's until a stop");
    rig.sim.clear_faults();
    rig.queues[0]
        .stop()
        .expect("the reset ended the engine's DMA: the stop succeeds");
    assert_eq!(rig.queues[0].abandon_all(), [1]);
    rig.queues[0].restart().expect("restart with nothing in flight");
    rig.submit(0, 2, 8).expect("submit after the restart");
    assert_eq!(rig.reap(0, 1), [2]);
}

/// A plain reset of the function (the teardown's, or a store giving up) stops every queue as a
/// recovery does: each reports not running.
#[test]
fn every_queue_reports_not_running_after_a_reset_of_its_function() {
    let rig = Rig::new("sca1-reset-stops-all", 2);
    assert!(rig.queues.iter().all(Sca1Queue::is_running));
    rig.driver.reset().expect("reset");
    assert!(rig.queues.iter().all(|q| !q.is_running()));
}

/// A plain reset (the teardown's, a store giving up) leaves the function disabled (ENABLE = 0,
/// accelerator.md §7), and RUN is set only on an enabled function (§7 bring-up): a queue's
/// restart then refuses with `Disabled`, RUN left clear and the queue taking no request. It
/// used to set RUN on the disabled function and report running, taking requests no engine
/// would execute. Once a recovery enables the function again, the restart works.
#[test]
fn a_queue_does_not_restart_on_a_function_a_reset_left_disabled() {
    let mut rig = Rig::new("sca1-restart-disabled", 1);
    rig.driver.reset().expect("reset");

    let refused = rig.queues[0].restart();

    assert!(
        matches!(refused, Err(Sca1Error::Disabled { queue: 0, .. })),
        "restart on a disabled function: {refused:?}"
    );
    assert!(!rig.queues[0].is_running());
    let q_control = rig.gate.inner.bar0().read32(queue::reg(0, queue::Q_CONTROL));
    assert_eq!(q_control & queue::RUN, 0, "RUN not set on a disabled function");
    assert!(
        matches!(rig.submit(0, 1, 0), Err(super::SubmitError::NotRunning)),
        "no request onto a queue that does not run"
    );
    rig.driver.recover().expect("recovery");
    rig.queues[0]
        .restart()
        .expect("restart once the function is enabled");
    rig.submit(0, 2, 8).expect("submit after the restart");
    assert_eq!(rig.reap(0, 1), [2], "served after the recovery");
}

/// Two recoveries of one function at once run as one: the second caller waits for the first
/// and shares its outcome (one reset, one count), instead of resetting the function under the
/// first's ENABLE.
#[test]
fn concurrent_recoveries_of_one_function_run_once() {
    let mut rig = Rig::new("sca1-two-recoveries", 2);
    let resets = rig.sim.stats().resets;
    rig.gate.armed.store(true, Ordering::Release);
    let first = {
        let driver = Arc::clone(&rig.driver);
        std::thread::spawn(move || driver.recover().map_err(|e| e.to_string()))
    };
    rig.gate.wait_reached();
    let second = {
        let driver = Arc::clone(&rig.driver);
        std::thread::spawn(move || driver.recover().map_err(|e| e.to_string()))
    };
    std::thread::sleep(Duration::from_millis(50));
    rig.gate.open.store(true, Ordering::Release);
    first.join().expect("first").expect("first recovery");
    second
        .join()
        .expect("second")
        .expect("the second caller shares the first's outcome");
    assert_eq!(rig.driver.reset_count(), 1, "one recovery");
    assert_eq!(rig.sim.stats().resets - resets, 1, "one reset of the function");
    for q in 0..2 {
        rig.queues[q].restart().expect("restart after the recovery");
        rig.submit(q, 7, 0).expect("submit");
        assert_eq!(rig.reap(q, 1), [7], "queue {q} serves again");
    }
}

/// A caller that read the reset count, chose to recover, and comes for its turn after another
/// recovery ran to its end meanwhile (the store: its check, then `recover_since`) shares that
/// recovery instead of resetting a function that serves again: one reset, one count, and the
/// queue restarted after the first recovery keeps running. It used to take the turn and reset
/// the function a second time. With nothing ended since its look it still recovers.
#[test]
fn a_recovery_that_ended_since_the_callers_look_is_shared_not_run_again() {
    let mut rig = Rig::new("sca1-recovered-since", 2);
    let seen = rig.driver.reset_count();
    let resets = rig.sim.stats().resets;
    assert_eq!(
        rig.driver.recover().expect("another queue's recovery"),
        Recovered::Ran
    );
    rig.queues[1].restart().expect("restart after that recovery");

    assert_eq!(
        rig.driver
            .recover_since(seen)
            .expect("the ended recovery is shared"),
        Recovered::Shared
    );

    assert_eq!(rig.driver.reset_count(), 1, "one recovery, not two");
    assert_eq!(rig.sim.stats().resets - resets, 1, "one reset of the function");
    assert!(rig.queues[1].is_running(), "no second reset stopped it");
    rig.submit(1, 1, 0).expect("submit");
    assert_eq!(rig.reap(1, 1), [1], "it serves");

    assert_eq!(
        rig.driver.recover_since(1).expect("a recovery of its own"),
        Recovered::Ran,
        "nothing ended since this look"
    );
    assert_eq!(rig.driver.reset_count(), 2);
    assert_eq!(rig.sim.stats().resets - resets, 2);
}

/// A caller that comes while another caller's turn is taken, which that caller then withdraws
/// (another recovery ended since its look), does not share the outcome the withdraw puts back:
/// that recovery ended before this caller came, and its reset proves nothing for requests
/// submitted since. It takes the turn itself and recovers the function. It used to return
/// `Shared` on that old success, and the store released the buffers of requests no reset had
/// ended.
#[test]
fn a_caller_waiting_for_a_withdrawn_turn_recovers_itself() {
    let rig = Rig::new("sca1-withdrawn-turn", 1);
    assert_eq!(rig.driver.recover().expect("an earlier recovery"), Recovered::Ran);
    let count = rig.driver.reset_count();
    let resets = rig.sim.stats().resets;
    let (word, _) = rig.driver.recovery_state();
    let Turn::Mine(turn) = word.begin() else {
        panic!("no recovery runs");
    };
    let waiter = {
        let driver = Arc::clone(&rig.driver);
        std::thread::spawn(move || driver.recover())
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "the caller waits for the turn taken");
    turn.withdraw();

    let result = waiter.join().expect("waiter");
    assert_eq!(
        result.expect("its own recovery"),
        Recovered::Ran,
        "not the earlier recovery's success"
    );
    assert_eq!(rig.driver.reset_count(), count + 1);
    assert_eq!(rig.sim.stats().resets - resets, 1, "the function was reset");
}

/// A caller that arrives while a recovery runs shares that very recovery's outcome, even when it
/// arrives after the recovery published its reset count (no count move left for it to see):
/// here the test stands in for a recovery at that point, then ends it with success, then
/// another one with failure.
#[test]
fn a_caller_arriving_after_the_count_moved_shares_the_recoverys_outcome() {
    let rig = Rig::new("sca1-late-waiter", 1);
    for (generation, ok) in [(1u64, true), (2, false)] {
        let (word, resets) = rig.driver.recovery_state();
        word.stand_in(generation, true, false);
        if ok {
            resets.fetch_add(1, Ordering::SeqCst);
        }
        let waiter = {
            let driver = Arc::clone(&rig.driver);
            std::thread::spawn(move || driver.recover())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the second caller waits for the running recovery"
        );
        word.stand_in(generation, false, ok);
        let result = waiter.join().expect("waiter");
        match ok {
            true => assert_eq!(
                result.expect("the recovery's success is shared"),
                Recovered::Shared,
                "the waiter ran no recovery of its own"
            ),
            false => assert!(
                matches!(result, Err(Sca1Error::RecoveryFailed { .. })),
                "{result:?}"
            ),
        }
    }
}

/// A second caller waits as long as a recovery may take: a soft reset that hangs, the function
/// reset it escalates to (the kernel's time, beyond every SCA-1 register's bound), READY.
/// Here the test stands in for a recovery that runs for longer than four RESET_TIMEOUTs (what
/// the waiter allowed before) and then succeeds.
#[test]
fn a_second_caller_waits_as_long_as_a_recovery_may_take() {
    let rig = Rig::with(
        "sca1-long-recovery",
        SimConfig {
            queues: 1,
            reset_timeout_ms: 50,
            ..SimConfig::default()
        },
    );
    let reset_timeout = Duration::from_millis(u64::from(rig.driver.caps().timeouts.reset_ms.max(1)));
    let (word, resets) = rig.driver.recovery_state();
    word.stand_in(1, true, false);
    let waiter = {
        let driver = Arc::clone(&rig.driver);
        std::thread::spawn(move || driver.recover())
    };
    std::thread::sleep(reset_timeout * 4 + Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the second caller still waits");
    resets.fetch_add(1, Ordering::SeqCst);
    word.stand_in(1, false, true);
    waiter
        .join()
        .expect("waiter")
        .expect("the recovery's success is shared");
}

/// A reap takes at most ring size - 1 entries (what an honest device can post before the host
/// writes CQ_HEAD, accelerator.md §4): a device that ignores CQ_HEAD and keeps writing
/// valid-phase entries cannot hold the queue's owner in one reap. Here it fills all 16 slots
/// (no slot left empty) with entries for tags never given: the first reap takes 15, the next
/// the last one.
#[test]
fn a_reap_takes_at_most_one_ring_less_one_entry() {
    use super::desc::Completion;
    use super::desc::CQ_PHASE;
    let mut rig = Rig::new("sca1-reap-budget", 1);
    let cq = rig.gate.read64(queue::reg(0, queue::CQ_BASE));
    assert_ne!(cq, 0, "CQ_BASE reads back");
    for slot in 0..16u64 {
        let entry = Completion {
            tag: 0x0fff,
            status: 0,
            flags: CQ_PHASE,
            ..Completion::default()
        };
        rig.sim
            .iommu()
            .dma_write(cq + slot * 16, zerocopy::IntoBytes::as_bytes(&entry))
            .expect("the device writes the completion ring");
    }
    let mut out = Vec::new();
    assert_eq!(rig.queues[0].reap(&mut out), 0);
    assert_eq!(
        rig.queues[0].stats().unknown_tags,
        15,
        "one ring less one entry per reap"
    );
    assert_eq!(rig.queues[0].reap(&mut out), 0);
    assert_eq!(
        rig.queues[0].stats().unknown_tags,
        16,
        "the rest on the next reap"
    );
}
