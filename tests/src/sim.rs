//! A [`Rig`] on the simulated SCA-1 board: loopback kernel → frontend → accelerator store →
//! SCA-1 driver → simulated device behind its IOMMU model, released in the safe order.

use crate::Rig;
use scst_accel_boards::sca1::device_mapper;
use scst_accel_boards::sca1::Sca1;
use scst_accel_boards::sca1::Sca1Config;
use scst_accel_boards::sim::create_sim_board;
use scst_accel_boards::sim::SimConfig;
use scst_accel_boards::sim::SimHandle;
use scst_accel_dma::SgvPool;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::TeardownConfig;
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
        let config = SimConfig {
            queues: 2,
            vectors: 2,
            block_size,
            num_blocks: blocks,
            ..SimConfig::default()
        };
        let (device, sim) = create_sim_board(name, config).expect("sim board");
        let driver = Sca1Config {
            queues: 2,
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

    /// Stop the frontend, reset the board, drop the queues, shut the pool down.
    pub fn release(self) -> Released {
        let SimRig {
            mut rig,
            sim,
            accel,
            pool,
        } = self;
        // Tight bounds: a soak runs hundreds of teardowns, and each step's bound is what a
        // misbehaving device may cost.
        let bounds = TeardownConfig {
            drain: Duration::from_millis(300),
            abort: Duration::from_millis(600),
            flush: Duration::from_millis(200),
        };
        let teardown = rig
            .frontend
            .take()
            .map(|frontend| frontend.teardown(bounds).teardown)
            .unwrap_or_default();
        let c = accel.counters();
        let mut out = Released {
            timeouts: c.timeouts.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            device_errors: c.device_errors.load(Ordering::Relaxed),
            unknown_tags: c.unknown_tags.load(Ordering::Relaxed),
            zombies_left: teardown.zombies_left,
            teardown: teardown.duration,
            ..Released::default()
        };
        if let Err(e) = accel.board().reset() {
            log::warn!("reset at release: {e}");
        }
        drop(accel);
        match Arc::try_unwrap(pool) {
            Ok(pool) => match pool.shutdown() {
                Ok(stats) => out.mapped_after = stats.mapped_bytes,
                Err(e) => {
                    out.leaked = 1;
                    log::error!("pool: {e}");
                }
            },
            Err(pool) => {
                out.leaked = pool.stats().in_use.max(1);
                out.mapped_after = pool.stats().mapped_bytes;
            }
        }
        out.iommu_faults = sim.stats().iommu_faults;
        out
    }
}
