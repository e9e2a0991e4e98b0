//! What stands behind the SCSI engine: the RAM store, or an SCA-1 board (simulated or on PCIe)
//! with its SGV pool of DMA-mapped buffers; and the ordered release of both.

use crate::disk::DiskArgs;
use crate::disk::Premap;
use clap::ValueEnum;
use scst_accel_boards::definition;
use scst_accel_boards::engine::Controller;
use scst_accel_boards::open::open_board;
use scst_accel_boards::open::BoardSource;
use scst_accel_boards::open::OpenBoardError;
use scst_accel_boards::open::OpenedBoard;
use scst_accel_boards::sca1::device_mapper;
use scst_accel_boards::sim::nvme::NvmeFault;
use scst_accel_boards::sim::nvme::NvmeSimConfig;
use scst_accel_boards::sim::nvme::NvmeSimHandle;
use scst_accel_boards::sim::Fault;
use scst_accel_boards::sim::SimConfig;
use scst_accel_boards::sim::SimHandle;
use scst_accel_dma::PoolStats;
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::LockToken;
use scst_accel_handler::frontend::PoolPermit;
use scst_accel_handler::store::accel::AccelConfig;
use scst_accel_handler::store::accel::AccelStore;
use scst_accel_handler::store::file::EngineGauge;
use scst_accel_handler::store::file::FileStore;
use scst_accel_handler::store::file::FileStoreConfig;
use scst_accel_handler::store::file::FileStoreError;
use scst_accel_handler::store::file::DEFAULT_WORKERS;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::store::Store;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// `--board`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BoardArg {
    /// Process memory, no accelerator.
    Ram,
    /// The simulated SCA-1 accelerator (DMA through an IOMMU model; faults with --inject).
    Sim,
    /// An SCA-1 accelerator on PCIe through VFIO (needs --pci).
    Sca1,
    /// Any NVMe controller on PCIe through VFIO (needs --pci).
    Nvme,
    /// QEMU's emulated NVMe controller through VFIO in a guest (needs --pci; tests/hil).
    QemuNvme,
    /// The simulated NVMe controller (DMA through an IOMMU model; faults with --inject).
    NvmeSim,
    /// A disk image file (needs --path; created at --size when absent; O_DIRECT unless
    /// --buffered).
    File,
    /// A block device (needs --path /dev/X; its size and block size are the device's).
    Blockdev,
}

impl BoardArg {
    /// A board reached through VFIO at a PCI address (`--pci`).
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Sca1 | Self::Nvme | Self::QemuNvme)
    }

    /// A board simulated by this process's own threads.
    pub fn is_simulated(self) -> bool {
        matches!(self, Self::Sim | Self::NvmeSim)
    }
}

/// The store, its buffer pool, and the board behind them.
pub struct Backend {
    /// The store the frontend uses.
    pub store: Arc<dyn Store>,
    /// Command buffers.
    pub pool: Arc<SgvPool>,
    accel: Option<Arc<AccelStore>>,
    /// Fault injection and statistics of a simulated board.
    pub sim: Option<SimHandle>,
    /// Fault injection and statistics of a simulated NVMe controller.
    pub nvme_sim: Option<NvmeSimHandle>,
    /// What the file store's queues run, read when asked ([`Backend::io_engine`]); `None` on
    /// other boards.
    file_engine: Option<EngineGauge>,
}

impl Backend {
    /// The file store's I/O engine as its queues run it now ("uring", "threads", or
    /// "uring+threads" when some queues could not set up their ring under `auto`); `None` on
    /// other boards. Read it once the queues are open (after the run): before, it is the
    /// engine chosen at open, which a queue's fallback has not changed yet.
    pub fn io_engine(&self) -> Option<&'static str> {
        self.file_engine.as_ref().map(|g| g.running().name())
    }

    /// A backend over a store of the caller's own (a vendor's store, or a test's) with
    /// host-only command buffers capped at `buffer_memory` bytes: no board, no DMA mapping, so
    /// its release is the pool's flush only. See [`crate::service::StartOptions::stores`].
    pub fn from_store(store: Arc<dyn Store>, buffer_memory: u64) -> Self {
        Self {
            store,
            pool: Arc::new(SgvPool::new(None, None, buffer_memory)),
            accel: None,
            sim: None,
            nvme_sim: None,
            file_engine: None,
        }
    }
}

/// Figures of a backend at release.
#[derive(Clone, Debug, Default)]
pub struct BackendReport {
    /// IOMMU faults the simulated device took; `None` on boards that cannot observe them
    /// (RAM and file stores have no IOMMU; a real function's faults go to the host's log,
    /// not to us), so a report never shows a 0 nobody counted.
    pub iommu_faults: Option<u64>,
    /// Requests the device completed with an error status.
    pub device_errors: u64,
    /// Requests failed by timeout escalation.
    pub timeouts: u64,
    /// Recoveries of the function the store ran during the run, each once: its escalation's
    /// own, and those a queue's stop had to run (`AccelCounters::resets`); a part of
    /// `controller_resets`.
    pub resets: u64,
    /// Controller recoveries during the run, whoever asked for them (the store's escalation,
    /// `--reset-during-load`): the controller's own count.
    pub controller_resets: u64,
    /// Completions with unknown or duplicated tags, ignored.
    pub unknown_tags: u64,
    /// Pool figures before release.
    pub pool: PoolStats,
    /// Bytes still mapped after release (must be 0).
    pub mapped_after: u64,
    /// Buffers the pool could not release because something still held them.
    pub leaked_buffers: u64,
    /// Time to reset the board, drop its queues and unmap the pool.
    pub release_ms: f64,
    /// The release steps in order.
    pub steps: Vec<ReleaseStep>,
    /// The frontend gave no unmap permit, so the pool was leaked rather than unmapped.
    pub pool_leaked_without_permit: bool,
    /// The function could be neither reset nor its bus mastering disabled (or it is gone and
    /// nothing can be confirmed): it may still DMA, so its rings and the pool were leaked.
    pub device_not_quiesced: bool,
    /// The file store's I/O engine as its queues ran it ("uring", "threads", or
    /// "uring+threads": [`Backend::io_engine`]), read at the release, once every queue was
    /// opened; `None` on other boards.
    pub io_engine: Option<&'static str>,
}

/// What allows the pool to be unmapped.
enum Clearance {
    /// The frontend's teardown proved no device lease is outstanding; while the permit lives,
    /// no lease can be granted.
    Permit(#[expect(dead_code, reason = "held across the unmap, never read")] PoolPermit),
    /// No frontend ever ran.
    NeverServed,
    /// The TCMU worker drained its store queue: no request of it, so no buffer of the pool,
    /// is in the device's hands (`scst_accel_handler::tcmu::exec::Executor::drain`).
    Drained,
}

/// One step of the release.
#[derive(Clone, Debug)]
pub struct ReleaseStep {
    /// What it did.
    pub name: &'static str,
    /// How long it took.
    pub duration: std::time::Duration,
    /// What it counted (buffers for the pool step).
    pub count: u64,
    /// It did what it must (the reset succeeded within the device's own bounded wait, the
    /// pool was unmapped with nothing leaked), and a step that does not wait took at most
    /// [`NO_WAIT_STEP_BOUND`].
    pub within_bound: bool,
}

/// The bound of a release step that waits for nothing (dropping queues, closing the device):
/// longer means the process was starved or something blocked where nothing should.
pub const NO_WAIT_STEP_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a backend could not be built: what failed and what to do, and the exit code of its class
/// (see [`crate::exit`]), so that a service manager restarts only what a restart can fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// What failed, with its causes, and what to do.
    pub message: String,
    /// 78 configuration (address, binding, IOMMU group, permissions, locked memory, a missing
    /// `--pci`), 69 unavailable (the vfio modules are not loaded, the group is held by another
    /// process), 74 the device itself failed to come up, 70 anything else.
    pub exit_code: u8,
}

impl BackendError {
    fn config(message: String) -> Self {
        Self {
            message,
            exit_code: crate::exit::CONFIG,
        }
    }
}

impl From<OpenBoardError> for BackendError {
    fn from(e: OpenBoardError) -> Self {
        Self {
            message: error_chain(&e),
            exit_code: open_error_exit_code(&e),
        }
    }
}

/// The exit code class of a board that did not open.
pub fn open_error_exit_code(e: &OpenBoardError) -> u8 {
    use crate::exit;
    use scst_accel_hal::vfio::VfioError as V;
    match e {
        OpenBoardError::Vfio(v) => match v {
            // The machine is not set up for this function: no restart fixes it.
            V::BadAddress { .. }
            | V::NoSuchDevice { .. }
            | V::NoIommuGroup { .. }
            | V::Unbound { .. }
            | V::WrongDriver { .. }
            | V::GroupNotViable { .. }
            | V::GroupPermission { .. }
            | V::GroupNodeMissing { .. }
            | V::AlternateDevRoot { .. }
            | V::MemlockLimit { .. } => exit::CONFIG,
            // A module not loaded yet, or another process holding the group: later may work.
            V::NoVfioContainer { .. } | V::GroupBusy { .. } => exit::UNAVAILABLE,
            _ => exit::IOERR,
        },
        // The address or the board name is wrong: no restart fixes it.
        OpenBoardError::NotThisBoard { .. } => exit::CONFIG,
        OpenBoardError::Driver(_) | OpenBoardError::Nvme(_) | OpenBoardError::Identity(_) => exit::IOERR,
        _ => exit::SOFTWARE,
    }
}

/// The exit code class of a file store that did not open: the medium itself failing (EIO) is
/// 74, a device or image another process holds is 69 (later may work), anything else is the
/// configuration's (a missing file without a size, a bad size, permissions, O_DIRECT refused).
pub fn file_error_exit_code(e: &FileStoreError) -> u8 {
    use crate::exit;
    match e {
        // Another process serves the image (its lock) or holds the device (O_EXCL): nothing in
        // our configuration is wrong, and the holder may be going away (the previous instance
        // still stopping while the service manager starts the next), so a retry may succeed:
        // EX_UNAVAILABLE, like a VFIO group another process holds. If the holder stays, the
        // message names the path and how to find it.
        FileStoreError::Busy { .. } | FileStoreError::Locked { .. } => exit::UNAVAILABLE,
        FileStoreError::Resources { .. } => exit::SOFTWARE,
        e if e.is_io() => exit::IOERR,
        _ => exit::CONFIG,
    }
}

/// Open the file or block device of `disk` (`--path`).
fn open_file(board: BoardArg, disk: &DiskArgs) -> Result<Backend, BackendError> {
    let flag = if board == BoardArg::File {
        "file"
    } else {
        "blockdev"
    };
    let path = disk.path.as_ref().ok_or_else(|| {
        BackendError::config(format!(
            "--board {flag} needs --path ({})",
            if board == BoardArg::File {
                "the disk image, e.g. /srv/disk0.img"
            } else {
                "the block device, e.g. /dev/sdb"
            }
        ))
    })?;
    let is_device = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    if board == BoardArg::Blockdev && !is_device {
        return Err(BackendError::config(format!(
            "{}: not a block device; use --board file for a disk image",
            path.display()
        )));
    }
    if board == BoardArg::File && is_device {
        return Err(BackendError::config(format!(
            "{}: a block device; use --board blockdev for it",
            path.display()
        )));
    }
    // A block device's size and block size are its own (like a hardware board's medium): a
    // size or block size the user gave is checked against them (the store refuses another),
    // not ignored; a file's are the disk's: created at --size, or checked against it.
    let file = board == BoardArg::File;
    let config = FileStoreConfig {
        create_size: (file || disk.size_given).then_some(disk.size),
        block_size: (file || disk.block_size_given).then_some(disk.block_size),
        direct: !disk.buffered,
        io_engine: disk.io_engine,
        workers: DEFAULT_WORKERS.max(disk.workers),
        max_transfer_blocks: disk.max_transfer_blocks,
        ..FileStoreConfig::new(path)
    };
    let store = FileStore::open(&config).map_err(|e| BackendError {
        message: error_chain(&e),
        exit_code: file_error_exit_code(&e),
    })?;
    // A gauge, not the engine's name: the queues open later, and one may fall back.
    let file_engine = Some(store.engine_gauge());
    Ok(Backend {
        file_engine,
        ..Backend::from_store(Arc::new(store), disk.buffer_memory)
    })
}

/// Build the backend for `board`, its buffer pool pre-mapped as `disk.premap` asks.
///
/// # Errors
/// What failed and what to do, with the exit code of its class.
pub fn build(
    board: BoardArg,
    disk: &DiskArgs,
    blocks: u64,
    pci: Option<&str>,
    faults: &[String],
) -> Result<Backend, BackendError> {
    let backend = open_backend(board, disk, blocks, pci, faults)?;
    premap(&backend.pool, &disk.premap);
    Ok(backend)
}

/// Map (or, for a host-only pool, allocate) the buffers `--premap` asks for now, at start-up,
/// so the first misses of those sizes carve from ready arenas instead of mapping on a worker
/// (docs/design/sgv-arenas.md, "Pre-mapping"). The pool keeps within its cap: fewer buffers
/// than asked is said, not an error (the rest are mapped on demand as without the setting).
fn premap(pool: &SgvPool, wanted: &[Premap]) {
    for want in wanted {
        // Start-up: no lock is held here. `Premap::parse` keeps sizes within the pool's
        // classes, so the conversion cannot fail on a 64-bit host.
        let size = usize::try_from(want.buffer_size).unwrap_or(usize::MAX);
        let free = pool.premap(&mut LockToken::root(), size, want.buffers);
        if free < want.buffers {
            log::warn!(
                "buffer pool: --premap {want}: {free} buffers ready, not {}: the pool's cap \
                 (--buffer-memory) or a failed map stopped it; the rest map on first use",
                want.buffers
            );
        } else {
            log::info!("buffer pool: --premap {want}: {free} buffers ready");
        }
    }
    if !wanted.is_empty() {
        let stats = pool.stats();
        log::info!(
            "buffer pool: {} arenas, {} bytes mapped after pre-mapping",
            stats.arenas,
            stats.mapped_bytes
        );
    }
}

/// Open the store and pool for `board` (see [`build`]).
fn open_backend(
    board: BoardArg,
    disk: &DiskArgs,
    blocks: u64,
    pci: Option<&str>,
    faults: &[String],
) -> Result<Backend, BackendError> {
    let queues = disk.workers as u32;
    let (def, source) = match board {
        BoardArg::Ram => {
            let store = Arc::new(RamStore::new(disk.block_size, blocks, disk.max_transfer_blocks));
            let pool = Arc::new(SgvPool::new(None, None, disk.buffer_memory));
            return Ok(Backend {
                store,
                pool,
                accel: None,
                sim: None,
                nvme_sim: None,
                file_engine: None,
            });
        }
        BoardArg::File | BoardArg::Blockdev => return open_file(board, disk),
        BoardArg::Sim => {
            let config = SimConfig {
                queues: queues.max(definition::SIM.queues),
                block_size: disk.block_size,
                num_blocks: blocks,
                ..SimConfig::default()
            };
            (&definition::SIM, BoardSource::Sim(config))
        }
        BoardArg::NvmeSim => {
            let config = NvmeSimConfig {
                block_size: disk.block_size,
                num_blocks: blocks,
                queues: queues.clamp(definition::NVME_SIM.queues, 64) as u16,
                interrupts: queues.max(definition::NVME_SIM.queues) + 1,
                ..NvmeSimConfig::default()
            };
            (&definition::NVME_SIM, BoardSource::NvmeSim(config))
        }
        BoardArg::Sca1 | BoardArg::Nvme | BoardArg::QemuNvme => {
            let def = match board {
                BoardArg::Sca1 => &definition::SCA1_PCI,
                BoardArg::Nvme => &definition::NVME,
                BoardArg::QemuNvme => &definition::QEMU_NVME,
                // Not hardware: answered by the arms above.
                BoardArg::Ram | BoardArg::File | BoardArg::Blockdev | BoardArg::Sim | BoardArg::NvmeSim => {
                    unreachable!("{board:?} is not a PCI board")
                }
            };
            let address = pci.ok_or_else(|| {
                BackendError::config(format!(
                    "--board {} needs --pci ADDRESS (e.g. 0000:03:00.0; see `lspci -D`)",
                    def.name
                ))
            })?;
            (def, BoardSource::Pci(address.to_owned()))
        }
    };
    let opened = open_board(def, source, queues)?;
    if opened.queues.len() < disk.workers {
        return Err(BackendError::config(format!(
            "board {} offers {} queues for {} workers; lower --workers",
            def.name,
            opened.queues.len(),
            disk.workers
        )));
    }
    inject(&opened, faults).map_err(BackendError::config)?;
    let mapper = device_mapper(Arc::clone(opened.controller.device()));
    let pool = mapped_pool(SgvPool::new(
        Some(mapper),
        Some(Arc::clone(opened.controller.iovas())),
        disk.buffer_memory,
    ))?;
    let accel = Arc::new(AccelStore::new(
        opened.controller,
        opened.queues,
        AccelConfig {
            command_timeout: disk.command_timeout,
            ..AccelConfig::default()
        },
    ));
    let store: Arc<dyn Store> = accel.clone();
    Ok(Backend {
        store,
        pool,
        accel: Some(accel),
        sim: opened.sim,
        nvme_sim: opened.nvme_sim,
        file_engine: None,
    })
}

/// The smallest command buffer: every transfer of up to one page (a block of any size the
/// disk allows, 512 to 4096 bytes, and most small I/O) gets one of this class.
const SMALLEST_BUFFER: usize = scst_accel_dma::PAGE_SIZE;

/// A device-mapped pool as the backend runs it (docs/design/sgv-arenas.md, "Refill"):
/// - its `sgv-refill` thread maps the next arena of a class before a worker's miss has to
///   (pinning on a real IOMMU: a `VFIO_IOMMU_MAP_DMA` ioctl);
/// - one arena of the smallest class is mapped now, at start-up, so the first misses of the
///   small I/O every disk gets map nothing on a worker: 16 MiB pinned at start (less when the
///   cap is smaller). The other classes' first miss maps on its worker, once: pre-mapping all
///   eleven would pin 176 MiB at start for classes a workload may never use.
///
/// Host-only pools (RAM, file, block device stores) get neither: their arenas are not mapped
/// on any device, so a miss that makes one costs an mmap and an madvise (about 10 µs, once per
/// arena; no pinning, and their pages fault in on first use wherever the refill made them),
/// not worth a thread per pool.
///
/// # Errors
/// The refill thread could not be started.
fn mapped_pool(pool: SgvPool) -> Result<Arc<SgvPool>, BackendError> {
    let pool = pool.with_refill().map_err(|e| BackendError {
        message: error_chain(&e),
        exit_code: crate::exit::SOFTWARE,
    })?;
    // Start-up: no lock is held here.
    let free = pool.premap(&mut LockToken::root(), SMALLEST_BUFFER, 1);
    log::debug!(
        "buffer pool: {free} buffers of {SMALLEST_BUFFER} bytes mapped at start ({} bytes pinned), refill on",
        pool.stats().mapped_bytes
    );
    Ok(Arc::new(pool))
}

/// Check `--inject` values against the board's fault syntax before anything is opened.
///
/// # Errors
/// The first value that does not parse, with the accepted forms; or faults for a board that
/// cannot take them.
pub fn check_faults(board: BoardArg, faults: &[String]) -> Result<(), String> {
    for text in faults {
        match board {
            BoardArg::Sim => drop(
                text.parse::<Fault>()
                    .map_err(|e| format!("--inject {text}: {e}"))?,
            ),
            BoardArg::NvmeSim => drop(
                text.parse::<NvmeFault>()
                    .map_err(|e| format!("--inject {text}: {e}"))?,
            ),
            _ => return Err("--inject works only with a simulated board (--board sim or nvme-sim)".into()),
        }
    }
    Ok(())
}

/// Inject `faults` into the simulated board, parsed in that simulator's syntax.
fn inject(opened: &OpenedBoard, faults: &[String]) -> Result<(), String> {
    for text in faults {
        if let Some(sim) = &opened.sim {
            let fault = text
                .parse::<Fault>()
                .map_err(|e| format!("--inject {text}: {e}"))?;
            log::info!("injecting {fault:?}");
            sim.inject(fault);
        } else if let Some(sim) = &opened.nvme_sim {
            let fault = text
                .parse::<NvmeFault>()
                .map_err(|e| format!("--inject {text}: {e}"))?;
            log::info!("injecting {fault:?}");
            sim.inject(fault);
        } else {
            return Err("--inject works only with a simulated board (--board sim or nvme-sim)".into());
        }
    }
    Ok(())
}

impl Backend {
    /// The board's controller (none for the RAM store).
    pub fn controller(&self) -> Option<Arc<dyn Controller>> {
        self.accel.as_ref().map(|a| Arc::clone(a.board()))
    }

    /// The device's counters now (zero on the RAM store).
    pub fn device_counters(&self) -> crate::status::DeviceCounters {
        let Some(accel) = &self.accel else {
            return crate::status::DeviceCounters::default();
        };
        let c = accel.counters();
        crate::status::DeviceCounters {
            device_errors: c.device_errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            controller_resets: accel.board().reset_count(),
            unknown_tags: c.unknown_tags.load(Ordering::Relaxed),
        }
    }

    /// Ring and register dumps of the board's queues that no worker holds.
    pub fn queue_dumps(&self) -> Vec<String> {
        self.accel
            .as_ref()
            .map(|a| a.spare_queue_dumps())
            .unwrap_or_default()
    }

    /// Release in the only safe order (architecture.md §5), each step timed and reported: the
    /// frontend is already shut down (every SCST command answered, SCST holds no buffer);
    /// shut a healthy function down (NVMe: the shutdown notification, then the controller
    /// reset), else reset it, so no DMA can happen, drop the queues (unmapping their rings), flush
    /// and unmap the pool, then disable interrupts and close the device.
    ///
    /// The pool is unmapped only with the frontend's permit (its teardown proved no device
    /// lease on a buffer is outstanding). Without one it is leaked, loudly and counted: a leak
    /// is better than a device DMA into memory that was unmapped and reused.
    pub fn shutdown(self, permit: Option<PoolPermit>) -> BackendReport {
        self.release(permit.map(Clearance::Permit))
    }

    /// Release after a TCMU worker's drain (`drained` proves its store queue is empty; the
    /// TCMU frontend grants no leases, its buffers live only while their request does).
    pub fn shutdown_drained(self, drained: &scst_accel_handler::tcmu::exec::Drained) -> BackendReport {
        let _ = drained;
        self.release(Some(Clearance::Drained))
    }

    /// Release a backend no frontend ever served (start-up failed before any command): no
    /// buffer was ever handed to the device, so the pool needs no permit.
    pub fn shutdown_unserved(self) -> BackendReport {
        self.release(Some(Clearance::NeverServed))
    }

    fn release(self, clearance: Option<Clearance>) -> BackendReport {
        let started = Instant::now();
        let mut report = BackendReport::default();
        let Backend {
            store,
            pool,
            accel,
            sim,
            nvme_sim,
            file_engine,
        } = self;
        // Every queue was opened by now (the frontend's workers, or the bench's driver).
        report.io_engine = file_engine.map(|g| g.running().name());
        drop(store);
        let mut steps = Vec::new();
        let mut quiesced = true;
        let controller = accel.map(|accel| {
            let c = accel.counters();
            report.device_errors = c.device_errors.load(Ordering::Relaxed);
            report.timeouts = c.timeouts.load(Ordering::Relaxed);
            report.resets = c.resets.load(Ordering::Relaxed);
            report.unknown_tags = c.unknown_tags.load(Ordering::Relaxed);
            let controller = Arc::clone(accel.board());
            report.controller_resets = controller.reset_count();
            // A healthy device is told it is being shut down, so it makes its volatile cache
            // stable and counts no unsafe shutdown (NVMe CC.SHN, §7.6.2); `Ok` includes the
            // reset that proves no more DMA. A device that failed or is gone is reset at once.
            // One the kernel asked back (an unbind) still works until it is closed: it is
            // shut down in order too.
            let healthy = (accel.failure().is_none() || accel.removal_requested())
                && !controller.is_gone()
                && controller.fatal().is_none();
            let shut_down = healthy
                && timed(
                    &mut steps,
                    "shut the function down (cache stable, no more DMA)",
                    None,
                    || {
                        let shutdown = controller.shutdown();
                        if let Err(e) = &shutdown {
                            log::warn!("{}: orderly shutdown: {e}; resetting instead", controller.id());
                        }
                        (shutdown.is_ok(), shutdown.is_ok())
                    },
                );
            // The reset's wait is bounded by the device's own timeout; it fails past it.
            let reset = shut_down
                || timed(&mut steps, "reset the function (no more DMA)", None, || {
                    let reset = controller.reset();
                    if let Err(e) = &reset {
                        log::warn!("{}: reset at shutdown: {e}", controller.id());
                    }
                    (reset.is_ok(), reset.is_ok())
                });
            if !reset {
                // Without a reset nothing proves the DMA has ended: clear Bus Master Enable,
                // the device-independent stop, and confirm it by reading it back.
                quiesced = timed(
                    &mut steps,
                    "disable bus mastering (no more DMA)",
                    None,
                    || match controller.device().disable_bus_master() {
                        Ok(()) => (true, true),
                        Err(e) => {
                            log::error!("{e}");
                            (false, false)
                        }
                    },
                );
            }
            if quiesced {
                // The store owns the spare queues; the workers' queues were dropped with them.
                timed(
                    &mut steps,
                    "drop queues (unmap rings)",
                    Some(NO_WAIT_STEP_BOUND),
                    || {
                        drop(accel);
                        (true, ())
                    },
                );
            } else {
                log::error!(
                    "{}: neither a reset nor disabling bus mastering could be confirmed: the function \
                     may still DMA, so its rings and the buffer pool are leaked, never unmapped",
                    controller.id()
                );
                timed(
                    &mut steps,
                    "leak queues (the function may still DMA)",
                    None,
                    || {
                        std::mem::forget(accel);
                        (false, ())
                    },
                );
            }
            controller
        });
        report.pool = pool.stats();
        report.device_not_quiesced = !quiesced;
        let clearance = clearance.filter(|_| quiesced);
        // Only the flush step counts the pool's buffers; when the pool is leaked no step of its
        // own runs, and the last step (the queues' leak, or the leave) keeps its own count.
        let pool_step = clearance.is_some();
        let (mapped_after, leaked) = match clearance {
            Some(clearance) => timed(&mut steps, "flush and unmap the buffer pool", None, || {
                let (mapped_after, leaked) = release_pool(pool);
                drop(clearance);
                (mapped_after == 0 && leaked == 0, (mapped_after, leaked))
            }),
            None if !quiesced => {
                // Logged with the queues above: the pool goes with them.
                let stats = report.pool;
                std::mem::forget(pool);
                (stats.mapped_bytes, stats.in_use + stats.cached)
            }
            None => {
                log::error!(
                    "no unmap permit from the frontend (device leases outstanding): the buffer pool \
                     ({} bytes mapped) is leaked, not unmapped",
                    report.pool.mapped_bytes
                );
                report.pool_leaked_without_permit = true;
                let stats = report.pool;
                std::mem::forget(pool);
                (stats.mapped_bytes, stats.in_use.max(1))
            }
        };
        report.mapped_after = mapped_after;
        report.leaked_buffers = leaked;
        if let Some(step) = steps.last_mut().filter(|_| pool_step) {
            step.count = report.pool.cached + report.pool.in_use;
        }
        if let Some(controller) = controller {
            timed(&mut steps, "disable interrupts", Some(NO_WAIT_STEP_BOUND), || {
                controller.disable_interrupts();
                (true, ())
            });
            timed(&mut steps, "close the device", Some(NO_WAIT_STEP_BOUND), || {
                let holders = Arc::strong_count(&controller);
                if holders > 1 {
                    log::warn!("{}: {holders} references left at close", controller.id());
                }
                drop(controller);
                (holders == 1, ())
            });
        }
        report.steps = steps;
        report.release_ms = started.elapsed().as_secs_f64() * 1e3;
        if let Some(sim) = sim {
            report.iommu_faults = Some(sim.stats().iommu_faults);
        }
        if let Some(sim) = nvme_sim {
            report.iommu_faults = Some(sim.stats().iommu_faults);
        }
        report
    }
}

/// Run one release step, recording how long it took and whether it was within its bound:
/// `f` says whether it did what it must; `bound` is the time limit of a step that waits for
/// nothing (`None`: the step's waits are bounded inside it, and past them it fails).
fn timed<T>(
    steps: &mut Vec<ReleaseStep>,
    name: &'static str,
    bound: Option<std::time::Duration>,
    f: impl FnOnce() -> (bool, T),
) -> T {
    let started = Instant::now();
    let (ok, out) = f();
    let duration = started.elapsed();
    steps.push(ReleaseStep {
        name,
        duration,
        count: 0,
        within_bound: ok && bound.is_none_or(|b| duration <= b),
    });
    out
}

/// Flush and unmap the pool: (bytes still mapped after, buffers leaked). A pool something
/// still holds is not unmapped: a leak is reported, never a use after unmap.
fn release_pool(pool: Arc<SgvPool>) -> (u64, u64) {
    match Arc::try_unwrap(pool) {
        Ok(pool) => {
            let before = pool.stats();
            match pool.shutdown() {
                Ok(stats) => (stats.mapped_bytes, 0),
                Err(e) => {
                    log::error!("buffer pool: {e}");
                    (before.mapped_bytes, before.in_use)
                }
            }
        }
        Err(pool) => {
            let stats = pool.stats();
            log::error!(
                "buffer pool still shared at shutdown: {} buffers in use; not unmapped",
                stats.in_use
            );
            (stats.mapped_bytes, stats.in_use)
        }
    }
}

/// "a: b: c" from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;
    use scst_accel_hal::vfio::VfioError;

    fn code(e: VfioError) -> u8 {
        open_error_exit_code(&OpenBoardError::Vfio(e))
    }

    /// A device pool as the backend runs it: one arena of the smallest class mapped at
    /// start-up, and its refill thread mapping the next one before the misses need it.
    #[test]
    fn a_device_pool_is_premapped_and_refilled() {
        let pool = mapped_pool(SgvPool::new(None, None, 256 << 20)).expect("pool");
        let stats = pool.stats();
        assert_eq!((stats.arenas, stats.refill_maps), (1, 0), "{stats:?}");
        // Take buffers and hold them, paced as misses are: the class runs low and the
        // refill thread maps the next arena (without it, misses map their own arenas on this
        // thread, `worker_maps`, until the cap: the test fails then).
        let mut token = LockToken::root();
        let mut held = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pool.stats().refill_maps == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no refill: {:?}",
                pool.stats()
            );
            held.push(pool.get(&mut token, SMALLEST_BUFFER).expect("within the cap"));
            scst_accel_hal::locks::sleep(std::time::Duration::from_micros(20));
        }
        drop(held);
    }

    /// `--premap` makes the buffers ready before the first command: asking the pool again for
    /// as many finds them and makes no arena; a request beyond the cap stops at the cap.
    #[test]
    fn premap_makes_the_buffers_ready_at_start_within_the_cap() {
        let pool = SgvPool::new(None, None, 64 << 20);
        let want = [
            Premap::parse("128k:200").unwrap_or_else(|e| panic!("{e}")),
            Premap::parse("4k:10").unwrap_or_else(|e| panic!("{e}")),
        ];
        premap(&pool, &want);
        let arenas = pool.stats().arenas;
        assert!(
            arenas >= 3,
            "200 x 128 KiB need two 16 MiB arenas, 4 KiB one: {arenas}"
        );
        let mut token = LockToken::root();
        assert!(pool.premap(&mut token, 128 << 10, 200) >= 200);
        assert!(pool.premap(&mut token, 4 << 10, 10) >= 10);
        assert_eq!(pool.stats().arenas, arenas, "nothing left to map");

        let small = SgvPool::new(None, None, 16 << 20);
        premap(
            &small,
            &[Premap::parse("1M:100").unwrap_or_else(|e| panic!("{e}"))],
        );
        assert!(small.premap(&mut token, 1 << 20, 100) <= 16, "the cap bounds it");
    }

    #[test]
    fn premap_parse_refuses_what_the_pool_cannot_cache() {
        assert_eq!(
            Premap::parse("4M:2"),
            Ok(Premap {
                buffer_size: 4 << 20,
                buffers: 2
            })
        );
        for bad in ["4k", "0:1", "5M:1", "4k:0", "4k:-1", "x:1"] {
            assert!(Premap::parse(bad).is_err(), "{bad}");
        }
    }

    /// What a restart cannot fix is a configuration error (78); what a later start may find
    /// fixed (a module loaded, another process gone) is "unavailable" (69).
    #[test]
    fn vfio_failures_map_to_their_exit_class() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            code(VfioError::GroupPermission {
                path: "/dev/vfio/7".into(),
                source: denied,
            }),
            exit::CONFIG
        );
        assert_eq!(
            code(VfioError::MemlockLimit {
                needed: 1 << 30,
                limit: 8 << 20,
                needed_kib: 1 << 20,
            }),
            exit::CONFIG
        );
        assert_eq!(
            code(VfioError::BadAddress {
                addr: "nonsense".into(),
            }),
            exit::CONFIG
        );
        assert_eq!(
            code(VfioError::GroupBusy {
                group: 7,
                path: "/dev/vfio/7".into(),
            }),
            exit::UNAVAILABLE
        );
    }

    /// A function that is not the board named is the configuration's mistake (78); one whose
    /// config space cannot be read (removed) is the device's (74).
    #[test]
    fn a_function_that_is_not_the_board_is_a_configuration_error() {
        let found = scst_accel_hal::PciIdentity {
            vendor_id: 0x8086,
            device_id: 0x10d3,
            class_code: 0x02_00_00,
        };
        let wrong = OpenBoardError::NotThisBoard {
            device: "0000:03:00.0".into(),
            found,
            board: "nvme",
            expected: "any vendor and device, class 010802".into(),
        };
        assert_eq!(open_error_exit_code(&wrong), exit::CONFIG);
        let message = BackendError::from(wrong).message;
        assert!(
            message.contains("0000:03:00.0 is 8086:10d3 class 020000, not a `nvme` board"),
            "{message}"
        );
        let gone = OpenBoardError::Identity(scst_accel_hal::HalError::OffTheBus {
            device: "0000:03:00.0".into(),
        });
        assert_eq!(open_error_exit_code(&gone), exit::IOERR);
    }

    /// A file board: what the operator must fix is 78, the medium failing is 74.
    #[test]
    fn file_store_failures_map_to_their_exit_class() {
        let path = std::path::PathBuf::from("/srv/disk0.img");
        let io = |errno| std::io::Error::from_raw_os_error(errno);
        assert_eq!(
            file_error_exit_code(&FileStoreError::Missing { path: path.clone() }),
            exit::CONFIG
        );
        assert_eq!(
            file_error_exit_code(&FileStoreError::SizeMismatch {
                path: path.clone(),
                actual: 1 << 20,
                requested: 2 << 20,
            }),
            exit::CONFIG
        );
        assert_eq!(
            file_error_exit_code(&FileStoreError::PermissionDenied {
                path: path.clone(),
                source: io(libc::EACCES),
            }),
            exit::CONFIG
        );
        assert_eq!(
            file_error_exit_code(&FileStoreError::Io {
                path: path.clone(),
                what: "the first O_DIRECT read",
                source: io(libc::EIO),
            }),
            exit::IOERR
        );
        assert_eq!(
            file_error_exit_code(&FileStoreError::Locked { path: path.clone() }),
            exit::UNAVAILABLE
        );
        assert_eq!(
            file_error_exit_code(&FileStoreError::Busy {
                path,
                source: io(libc::EBUSY),
            }),
            exit::UNAVAILABLE
        );
        // Without --path, and a block device board on a regular file.
        let disk = DiskArgs::default();
        let blocks = disk.validate().expect("defaults are valid");
        for board in [BoardArg::File, BoardArg::Blockdev] {
            let e = build(board, &disk, blocks, None, &[]).err().expect("refused");
            assert_eq!(e.exit_code, exit::CONFIG, "{board:?}: {e}");
            assert!(e.message.contains("--path"), "{e}");
        }
        let file = DiskArgs {
            path: Some(std::env::current_exe().expect("the test binary")),
            ..DiskArgs::default()
        };
        let e = build(BoardArg::Blockdev, &file, blocks, None, &[])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code, exit::CONFIG, "{e}");
        assert!(e.message.contains("not a block device"), "{e}");
    }

    /// The release of a healthy simulated NVMe controller sends the shutdown notification
    /// (CC.SHN) once, and still proves the end of DMA before anything is unmapped.
    #[test]
    fn the_release_of_a_healthy_nvme_controller_shuts_it_down() {
        let disk = DiskArgs::default();
        let blocks = disk.validate().expect("defaults are valid");
        let backend = build(BoardArg::NvmeSim, &disk, blocks, None, &[]).expect("nvme-sim backend");
        let sim = backend.nvme_sim.clone().expect("simulated controller");
        assert_eq!(sim.stats().shutdown_notifications, 0);
        let report = backend.shutdown_unserved();
        assert_eq!(sim.stats().shutdown_notifications, 1, "{:?}", report.steps);
        assert!(!report.device_not_quiesced);
        assert_eq!((report.mapped_after, report.leaked_buffers), (0, 0));
        assert_eq!(report.iommu_faults, Some(0));
    }

    #[test]
    fn a_hardware_board_without_pci_is_a_configuration_error() {
        let disk = DiskArgs::default();
        let blocks = disk.validate().expect("defaults are valid");
        for board in [BoardArg::Sca1, BoardArg::Nvme, BoardArg::QemuNvme] {
            let e = build(board, &disk, blocks, None, &[]).err().expect("refused");
            assert_eq!(e.exit_code, exit::CONFIG, "{board:?}: {e}");
            assert!(e.message.contains("--pci"), "{e}");
        }
    }
}
