//! A [`Rig`] on the simulated SCA-1 board: loopback kernel → frontend → accelerator store →
//! SCA-1 driver → simulated device behind its IOMMU model, released in the safe order: the
//! frontend's teardown ([`SimRig::teardown`]), then the board and the pool
//! ([`SimRemains::release`]), the pool unmapped only under the teardown's unmap permit.

use crate::release_pool;
use crate::Rig;
use scst_accel_boards::sca1::device_mapper;
use scst_accel_boards::sca1::Sca1;
use scst_accel_boards::sca1::Sca1Config;
use scst_accel_boards::sim::create_sim_board;
use scst_accel_boards::sim::SimConfig;
use scst_accel_boards::sim::SimHandle;
use scst_accel_dma::SgvPool;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::FrontendReport;
use scst_accel_handler::frontend::PoolPermit;
use scst_accel_handler::frontend::TeardownConfig;
use scst_accel_handler::frontend::TeardownReport;
use scst_accel_handler::store::accel::AccelConfig;
use scst_accel_handler::store::accel::AccelStore;
use scst_accel_handler::transport::register::default_options;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A rig on a simulated board.
pub struct SimRig {
    /// The loopback side and frontend.
    pub rig: Rig,
    /// Fault injection and device statistics.
    pub sim: SimHandle,
    /// The accelerator store.
    pub accel: Arc<AccelStore>,
    /// Command buffers.
    pub pool: Arc<SgvPool>,
}

/// What release found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// IOMMU faults over the whole life of the board.
    pub iommu_faults: u64,
    /// Bytes still mapped after the pool shut down.
    pub mapped_after: u64,
    /// Buffers the pool could not get back.
    pub leaked: u64,
    /// Requests failed by deadline escalation.
    pub timeouts: u64,
    /// Function resets.
    pub resets: u64,
    /// Device error completions.
    pub device_errors: u64,
    /// Ignored completions (unknown or duplicated tags).
    pub unknown_tags: u64,
    /// Store requests still in flight when the frontend's workers left (must be 0).
    pub zombies_left: u64,
    /// The frontend's teardown time.
    pub teardown: Duration,
    /// The pool was unmapped under the teardown's permit.
    pub unmapped: bool,
    /// No unmap permit (a device lease was outstanding): the pool was leaked, not unmapped.
    pub leaked_without_permit: bool,
    /// Device leases outstanding at the end of the teardown.
    pub leases_outstanding: u64,
}

/// What is left of a [`SimRig`] after the frontend's teardown: the board and the pool, to be
/// released with the teardown's unmap permit ([`SimRemains::release`]).
pub struct SimRemains {
    /// Fault injection and device statistics.
    pub sim: SimHandle,
    /// The accelerator store.
    pub accel: Arc<AccelStore>,
    /// Command buffers.
    pub pool: Arc<SgvPool>,
    teardown: TeardownReport,
}

impl SimRig {
    /// A 2-queue simulated board of `blocks` blocks, with `command_timeout` deadlines and
    /// MSI-X interrupts.
    pub fn new(name: &str, block_size: u32, blocks: u64, command_timeout: Duration) -> Self {
        Self::with_interrupts(name, block_size, blocks, command_timeout, true)
    }

    /// As [`SimRig::new`]; with `interrupts` false the driver polls the completion rings.
    pub fn with_interrupts(
        name: &str,
        block_size: u32,
        blocks: u64,
        command_timeout: Duration,
        interrupts: bool,
    ) -> Self {
        let frontend = FrontendConfig {
            workers: 2,
            cmds_per_call: 8,
            ..FrontendConfig::default()
        };
        Self::with_configs(name, block_size, blocks, command_timeout, interrupts, frontend)
    }

    /// As [`SimRig::with_interrupts`] with the caller's frontend configuration.
    pub fn with_configs(
        name: &str,
        block_size: u32,
        blocks: u64,
        command_timeout: Duration,
        interrupts: bool,
        frontend: FrontendConfig,
    ) -> Self {
        Self::on_board(
            name,
            (block_size, blocks),
            command_timeout,
            interrupts,
            frontend,
            None,
            true,
        )
    }

    /// As [`SimRig::with_configs`] (5 s deadlines, interrupts), with every descriptor run by
    /// the board's engine threads (`SimConfig::inline_doorbells` off): a device that completes
    /// after its doorbell write returns, for tests of what a driver does while its commands are
    /// on the board.
    pub fn with_engine_threads(name: &str, block_size: u32, blocks: u64, frontend: FrontendConfig) -> Self {
        let timeout = Duration::from_secs(5);
        Self::on_board(name, (block_size, blocks), timeout, true, frontend, None, false)
    }

    /// A board with a queue and an MSI-X vector per worker of `frontend`, of which the host
    /// grants only `granted` (`InterruptLines::limit_grants`: the kernel short of vectors).
    pub fn with_granted_vectors(
        name: &str,
        block_size: u32,
        blocks: u64,
        frontend: FrontendConfig,
        granted: u32,
    ) -> Self {
        let timeout = Duration::from_secs(5);
        Self::on_board(
            name,
            (block_size, blocks),
            timeout,
            true,
            frontend,
            Some(granted),
            true,
        )
    }

    /// The board: as many queues and vectors as `frontend` has workers (at least 2), the host
    /// granting `granted` vectors when given, doorbells run by their writer when it can
    /// (`inline_doorbells`).
    fn on_board(
        name: &str,
        (block_size, blocks): (u32, u64),
        command_timeout: Duration,
        interrupts: bool,
        frontend: FrontendConfig,
        granted: Option<u32>,
        inline_doorbells: bool,
    ) -> Self {
        let queues = (frontend.workers as u32).max(2);
        let config = SimConfig {
            queues,
            vectors: queues,
            block_size,
            num_blocks: blocks,
            inline_doorbells,
            ..SimConfig::default()
        };
        let (device, sim) = create_sim_board(name, config).expect("sim board");
        if let Some(granted) = granted {
            device.interrupts().limit_grants(granted);
        }
        let driver = Sca1Config {
            queues,
            ring_entries: 64,
            interrupts,
            ..Sca1Config::default()
        };
        let (sca1, queues) = Sca1::bring_up(device.clone(), &driver).expect("bring-up");
        let pool = Arc::new(SgvPool::new(
            Some(device_mapper(device)),
            Some(Arc::clone(sca1.iovas())),
            256 << 20,
        ));
        let accel_config = AccelConfig {
            command_timeout,
            health_interval: Duration::from_millis(10),
        };
        let queues = queues
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn scst_accel_boards::engine::QueueEngine>)
            .collect();
        let accel = Arc::new(AccelStore::new(Arc::new(sca1), queues, accel_config));
        let rig = Rig::with_config(
            name,
            block_size,
            blocks,
            default_options(),
            accel.clone(),
            Arc::clone(&pool),
            frontend,
        );
        Self {
            rig,
            sim,
            accel,
            pool,
        }
    }

    /// Tear the frontend down with `bounds` (the one sequence of every trigger); the board and
    /// the pool are left to [`SimRemains::release`], which needs the report's unmap permit.
    pub fn teardown(self, bounds: TeardownConfig) -> (SimRemains, FrontendReport) {
        let SimRig {
            mut rig,
            sim,
            accel,
            pool,
        } = self;
        let report = rig
            .frontend
            .take()
            .map(|frontend| frontend.teardown(bounds))
            .unwrap_or_default();
        let remains = SimRemains {
            sim,
            accel,
            pool,
            teardown: report.teardown.clone(),
        };
        (remains, report)
    }

    /// Tight teardown bounds: a soak runs hundreds of teardowns, and each step's bound is what
    /// a misbehaving device may cost.
    pub fn tight_bounds() -> TeardownConfig {
        TeardownConfig {
            drain: Duration::from_millis(300),
            abort: Duration::from_millis(600),
            flush: Duration::from_millis(200),
        }
    }

    /// Tear the frontend down ([`SimRig::tight_bounds`]), then release the board and the pool
    /// under the teardown's unmap permit.
    pub fn release(self) -> Released {
        let (remains, mut report) = self.teardown(Self::tight_bounds());
        remains.release(report.unmap.take())
    }
}

impl SimRemains {
    /// Reset the board, drop the queues, then shut the pool down, only under `permit` (the
    /// teardown's [`FrontendReport::unmap`]). Without a permit a device lease is outstanding:
    /// the pool is leaked, not unmapped ([`Released::leaked_without_permit`]).
    pub fn release(self, permit: Option<PoolPermit>) -> Released {
        let SimRemains {
            sim,
            accel,
            pool,
            teardown,
        } = self;
        let c = accel.counters();
        let mut out = Released {
            timeouts: c.timeouts.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            device_errors: c.device_errors.load(Ordering::Relaxed),
            unknown_tags: c.unknown_tags.load(Ordering::Relaxed),
            zombies_left: teardown.zombies_left,
            teardown: teardown.duration,
            leases_outstanding: teardown.leases_outstanding,
            ..Released::default()
        };
        if let Err(e) = accel.board().reset() {
            log::warn!("reset at release: {e}");
        }
        drop(accel);
        let pool = release_pool(pool, permit);
        out.unmapped = pool.unmapped;
        out.leaked_without_permit = pool.leaked_without_permit;
        out.leaked = pool.leaked;
        out.mapped_after = pool.mapped_after;
        out.iommu_faults = sim.stats().iommu_faults;
        out
    }
}
