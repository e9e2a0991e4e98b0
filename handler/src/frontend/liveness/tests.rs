//! A worker blocked inside a store call is reported wedged, and is not once released.

use super::Liveness;
use crate::abi::queue_type;
use crate::frontend::Frontend;
use crate::frontend::FrontendConfig;
use crate::heartbeat::Heartbeat;
use crate::loopback::KernelConfig;
use crate::loopback::LoopbackKernel;
use crate::loopback::ScsiRequest;
use crate::loopback::SessionSpec;
use crate::scsi::Disk;
use crate::scsi::DiskConfig;
use crate::store::ram::RamStore;
use crate::store::Store;
use crate::store::StoreCompletion;
use crate::store::StoreError;
use crate::store::StoreInfo;
use crate::store::StoreQueue;
use crate::store::StoreRequest;
use crate::transport::register::default_options;
use crate::transport::register::register;
use crate::transport::register::RegisterParams;
use scst_accel_dma::SgvPool;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
const MAX_AGE: Duration = Duration::from_millis(300);

/// A gate a store call blocks on until the test opens it.
#[derive(Default)]
struct Gate {
    /// (open, calls blocked now)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().expect("gate");
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).expect("gate");
        }
        state.1 -= 1;
    }

    fn wait_blocked(&self, n: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        let mut state = self.state.lock().expect("gate");
        while state.1 < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).expect("gate").0;
        }
        true
    }

    fn open(&self) {
        self.state.lock().expect("gate").0 = true;
        self.changed.notify_all();
    }
}

/// A RAM store whose `submit` blocks on the gate: a device call that does not return. With
/// `announce`, the call first sets the worker's heartbeat that far ahead, as a store does for a
/// bounded device recovery ([`StoreQueue::set_heartbeat`]).
struct BlockingStore {
    ram: RamStore,
    gate: Arc<Gate>,
    announce: Option<Duration>,
}

impl Store for BlockingStore {
    fn info(&self) -> StoreInfo {
        self.ram.info()
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(BlockingQueue {
            inner: self.ram.open_queue()?,
            gate: Arc::clone(&self.gate),
            announce: self.announce,
            heartbeat: None,
        }))
    }
}

struct BlockingQueue {
    inner: Box<dyn StoreQueue>,
    gate: Arc<Gate>,
    announce: Option<Duration>,
    heartbeat: Option<Heartbeat>,
}

impl StoreQueue for BlockingQueue {
    fn submit(
        &mut self,
        token: &mut crate::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        if let (Some(bound), Some(heartbeat)) = (self.announce, &self.heartbeat) {
            heartbeat.beat_until(bound);
        }
        self.gate.pass();
        self.inner.submit(token, batch)
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        self.inner.reap(out)
    }

    fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.notify_fd()
    }

    fn prepare_to_wait(&mut self) -> bool {
        self.inner.prepare_to_wait()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

/// Poll `f` until it holds, bounded.
fn eventually(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A frontend of two workers over a [`BlockingStore`], its workers idle and beating.
fn start_blocking(gate: &Arc<Gate>, announce: Option<Duration>) -> (LoopbackKernel, Frontend) {
    let store = Arc::new(BlockingStore {
        ram: RamStore::new(512, 64, 256),
        gate: Arc::clone(gate),
        announce,
    });
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let fd = kernel.open(true);
    register(&fd, &RegisterParams::new("liveness", 512, default_options())).expect("registration");
    let config = FrontendConfig {
        workers: 2,
        cmds_per_call: 8,
        idle_poll: Duration::from_millis(20),
        ..FrontendConfig::default()
    };
    let frontend = Frontend::start(
        Arc::new(fd),
        Arc::new(Disk::new(DiskConfig::new(512, 64))),
        store,
        Arc::new(SgvPool::new(None, None, 1 << 24)),
        config,
    )
    .expect("frontend");
    assert!(
        eventually(|| frontend.wedged_workers(MAX_AGE).is_empty()),
        "idle workers reported wedged: {:?}",
        frontend.wedged_workers(MAX_AGE)
    );
    (kernel, frontend)
}

/// A session on the "liveness" device with one READ sent, which a worker takes into the store.
fn send_read(kernel: &LoopbackKernel) -> crate::loopback::Session {
    let session = kernel
        .attach_session(
            "liveness",
            SessionSpec {
                initiator_name: "iqn.test:initiator".into(),
                target_name: "iqn.test:target".into(),
                lun: 0,
                rd_only: false,
            },
        )
        .expect("attach");
    session
        .submit(ScsiRequest {
            tag: 1,
            cdb: vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            data_out: Vec::new(),
            expected_data_in: 512,
            queue_type: queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    session
}

#[test]
fn frontend_worker_blocked_in_store_is_wedged_until_released() {
    let gate = Arc::new(Gate::default());
    let (kernel, frontend) = start_blocking(&gate, None);
    let session = send_read(&kernel);
    assert!(gate.wait_blocked(1), "the READ never reached the store");

    // One worker is stuck in `submit`; the other keeps beating.
    assert!(
        eventually(|| frontend.wedged_workers(MAX_AGE).len() == 1),
        "the blocked worker is not reported: {:?}",
        frontend.wedged_workers(MAX_AGE)
    );
    std::thread::sleep(MAX_AGE);
    assert_eq!(
        frontend.wedged_workers(MAX_AGE).len(),
        1,
        "only the blocked worker is wedged"
    );

    gate.open();
    let completion = session
        .completions()
        .recv_timeout(WAIT)
        .expect("the READ completes");
    assert_eq!(completion.tag, 1);
    assert!(
        eventually(|| frontend.wedged_workers(MAX_AGE).is_empty()),
        "a released worker is still reported: {:?}",
        frontend.wedged_workers(MAX_AGE)
    );
    drop(session);
    let report = frontend.shutdown();
    assert_eq!(report.panicked_workers, 0);
}

#[test]
fn frontend_liveness_reports_exited_and_stale_workers() {
    let liveness = Liveness::new(3);
    assert!(liveness.wedged(Duration::from_secs(60)).is_empty());
    liveness.exited(1);
    assert_eq!(liveness.wedged(Duration::from_secs(60)), vec![1]);
    std::thread::sleep(Duration::from_millis(120));
    liveness.beat(0);
    assert_eq!(liveness.wedged(Duration::from_millis(60)), vec![1, 2]);
    // Out of range indices are ignored, never a panic on the I/O path.
    liveness.beat(7);
    liveness.exited(7);
}

#[test]
fn a_store_call_announced_through_the_heartbeat_is_not_wedged_until_its_bound() {
    const ANNOUNCED: Duration = Duration::from_millis(1500);
    let gate = Arc::new(Gate::default());
    let (kernel, frontend) = start_blocking(&gate, Some(ANNOUNCED));
    let session = send_read(&kernel);
    assert!(gate.wait_blocked(1), "the READ never reached the store");
    let blocked = Instant::now();
    // Within the announced bound the worker is alive, however long past MAX_AGE.
    while blocked.elapsed() < ANNOUNCED - MAX_AGE {
        assert!(
            frontend.wedged_workers(MAX_AGE).is_empty(),
            "wedged {:?} into a call announced for {ANNOUNCED:?}",
            blocked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past it, the call is a wedge.
    assert!(
        eventually(|| frontend.wedged_workers(MAX_AGE).len() == 1),
        "a call past its announced bound is not reported: {:?}",
        frontend.wedged_workers(MAX_AGE)
    );
    assert!(
        blocked.elapsed() >= ANNOUNCED,
        "reported before the bound ran out"
    );
    gate.open();
    session
        .completions()
        .recv_timeout(WAIT)
        .expect("the READ completes");
    drop(session);
    let report = frontend.shutdown();
    assert_eq!(report.panicked_workers, 0);
}
