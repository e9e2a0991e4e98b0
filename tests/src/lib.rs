//! Shared fixtures of the integration suites: a [`Rig`] (loopback kernel + registered frontend +
//! store) and a [`GatedStore`] whose completions the test releases, to hold commands in flight.

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi::Opt;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::loopback::KernelConfig;
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
use scst_accel_handler::transport::fdio::EventFd;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::transport::register::register;
use scst_accel_handler::transport::register::RegisterParams;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
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
        let kernel = LoopbackKernel::new(KernelConfig::default());
        let fd = kernel.open(true);
        register(&fd, &RegisterParams::new(name, block_size, opt)).expect("registration");
        let disk = Arc::new(Disk::new(DiskConfig::new(block_size, blocks)));

        let frontend = Frontend::start(Arc::new(fd), disk, store, pool, config).expect("frontend");
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
/// releases it, so commands can be kept in flight deterministically.
#[derive(Clone)]
pub struct GatedStore {
    ram: RamStore,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    held: Mutex<Vec<(StoreRequest, Arc<QueueShared>)>>,
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

    /// Requests currently held.
    pub fn held(&self) -> usize {
        self.gate.held.lock().expect("gate").len()
    }

    /// Execute and complete every held request.
    pub fn release_all(&self) -> usize {
        let held: Vec<_> = std::mem::take(&mut *self.gate.held.lock().expect("gate"));
        let n = held.len();
        for (req, queue) in held {
            let status = self.ram.execute(&req);
            queue
                .done
                .lock()
                .expect("queue")
                .push(StoreCompletion { tag: req.tag, status });
            queue.notify.signal();
        }
        n
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
    fn submit(&mut self, batch: &mut Vec<StoreRequest>) -> Result<(), StoreError> {
        let mut held = self.gate.held.lock().expect("gate");
        for req in batch.drain(..) {
            self.in_flight += 1;
            held.push((req, Arc::clone(&self.shared)));
        }
        Ok(())
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
}

pub mod sim;
