//! The lock hierarchy of scst-accel, lowest level first. This list is the order: a thread may
//! hold a lock of a lower level while taking one of a higher level, never the reverse, and never
//! two locks of the same level at once. docs/locking.md has the table (what each lock guards, who
//! takes it, what it may never be held across) and the reasons for each position.
//!
//! | level | lock | where |
//! | ----- | ---- | ----- |
//! | 0 | (no lock held: [`Root`]) | |
//! | 1 | `frontend.sessions` | handler/src/frontend/mod.rs |
//! | 2 | `frontend.cmd_table` | handler/src/frontend/buffers.rs |
//! | 3 | `teardown.leases` | handler/src/teardown/lease.rs |
//! | 4 | `accel.spare_queues` | handler/src/store/accel.rs |
//! | 5 | `loopback.register` | handler/src/loopback/fd.rs |
//! | 6 | `loopback.devices` | handler/src/loopback/session.rs |
//! | 7 | `loopback.device` | handler/src/loopback/device.rs |
//! | 8 | `sgv.stashes` | dma/src/sgv/shared.rs |
//! | 9 | `sgv.pool` | dma/src/sgv/shared.rs |
//! | 10 | `sgv.stash` | dma/src/sgv/stash.rs |
//! | 11 | `dma.iova` | dma/src/mapping.rs (shared with boards/src/sca1/) |
//! | 12 | `ram.chunk` | handler/src/store/ram.rs |
//! | 13 | `scsi.mode_pages` | handler/src/scsi/mod.rs |
//! | 14 | `scsi.ranges` | handler/src/scsi/ranges.rs |
//! | 15 | `nvme.admin` | boards/src/nvme/admin.rs |
//! | 16 | `sim.engines` | boards/src/sim/board.rs |
//! | 17 | `sim.faults` | boards/src/sim/board.rs |
//! | 18 | `sim.state` | boards/src/sim/board.rs |
//! | 19 | `sim.medium` | boards/src/sim/medium.rs |
//! | 20 | `iommu.table` | hal/src/sim/iommu.rs |
//! | 21 | `iommu.faults` | hal/src/sim/iommu.rs |
//! | 22 | `iommu.map_limit` | hal/src/sim/iommu.rs |
//! | 23 | `interrupts.lines` | hal/src/sim/interrupts.rs |
//! | 24 | `file.flushes` | handler/src/store/file.rs |
//!
//! The fixed rule from SCST's history (scst_user.md §5.6): the command table
//! ([`CmdTable`]) comes before every SGV pool lock, so "pool lock, then command table" (what
//! SCST's cleanup did while I/O took them the other way) does not compile with a
//! [`LockToken`](super::LockToken) and panics at once through the runtime check:
//!
//! ```compile_fail
//! use scst_accel_hal::locks::{levels, LockToken, OrderedMutex};
//! let pool = OrderedMutex::<(), levels::SgvPool>::new(());
//! let table = OrderedMutex::<(), levels::CmdTable>::new(());
//! let mut token = LockToken::root();
//! let (_pool, mut inner) = pool.lock(&mut token);
//! let (_table, _) = table.lock(&mut inner); // SgvPool: LockBefore<CmdTable> is not implemented
//! ```
//!
//! The other way round compiles:
//!
//! ```
//! use scst_accel_hal::locks::{levels, LockToken, OrderedMutex};
//! let pool = OrderedMutex::<(), levels::SgvPool>::new(());
//! let table = OrderedMutex::<(), levels::CmdTable>::new(());
//! let mut token = LockToken::root();
//! let (_table, mut inner) = table.lock(&mut token);
//! let (_pool, _) = pool.lock(&mut inner);
//! ```

/// A position in the hierarchy: [`Root`] or a lock level.
pub trait Level: 'static {
    /// Position: 0 for [`Root`], then 1, 2, ... in the order of this file.
    const LEVEL: u32;
    /// The lock's name in messages and docs/locking.md (`frontend.cmd_table`).
    const NAME: &'static str;
}

/// A level that locks can have (every [`Level`] except [`Root`]).
pub trait LockLevel: Level {}

/// `Self` comes before `M`: a thread holding a lock of level `Self` (or none, for [`Root`]) may
/// take a lock of level `M`. Implemented for every pair in the order of this file, and for no
/// other: a missing impl is a lock-order violation caught by the compiler.
pub trait LockBefore<M: LockLevel>: Level {}

/// No lock held: the level of [`LockToken::root`](super::LockToken::root).
#[derive(Debug)]
pub enum Root {}

impl Level for Root {
    const LEVEL: u32 = 0;
    const NAME: &'static str = "root";
}

/// Declares the levels in order: each gets `LEVEL` = its position and `LockBefore` every level
/// after it (the transitive closure, written out, so that a compile error names the exact pair).
macro_rules! lock_order {
    (@levels $prev:ident;) => {};
    (@levels $prev:ident; $name:ident = $label:literal $(, $rest:ident = $rest_label:literal)*) => {
        impl Level for $name {
            const LEVEL: u32 = <$prev as Level>::LEVEL + 1;
            const NAME: &'static str = $label;
        }
        impl LockLevel for $name {}
        lock_order!(@levels $name; $($rest = $rest_label),*);
    };
    (@before) => {};
    (@before $first:ident $(, $rest:ident)*) => {
        $(impl LockBefore<$rest> for $first {})*
        lock_order!(@before $($rest),*);
    };
    ($($(#[$doc:meta])* $name:ident = $label:literal),+ $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $name {}
        )+
        lock_order!(@levels Root; $($name = $label),+);
        lock_order!(@before Root, $($name),+);
    };
}

lock_order! {
    /// The frontend's attached sessions (a map updated on ATTACH_SESS/DETACH_SESS). A leaf:
    /// held for one map operation.
    FrontendSessions = "frontend.sessions",
    /// The command-buffer table: every buffer handed to SCST, by user address. Before the pool:
    /// dropping a table entry under the lock may return a buffer to the pool; the pool never
    /// calls back into the table.
    CmdTable = "frontend.cmd_table",
    /// The device leases on command buffers (handler/src/teardown/lease.rs): one grant per
    /// store request carrying a buffer, one release per completion, and the teardown's revoke,
    /// wait and unmap permit. A leaf: payloads (buffers) are handed back and dropped after
    /// unlocking, so nothing of the pool is ever taken under it. After the command table (a
    /// worker never holds the table while granting, but nothing forbids it), before the pool.
    TeardownLeases = "teardown.leases",
    /// The accelerator store's queues not yet handed to a worker. A leaf (one `pop`).
    AccelSpareQueues = "accel.spare_queues",
    /// The loopback fd's REGISTER serialization; held while the device list is updated.
    LoopbackRegister = "loopback.register",
    /// The loopback kernel's device list (`dev_list`).
    LoopbackDevices = "loopback.devices",
    /// One loopback device's state (the model of `cmd_list_lock`, scst_user.md §5.6).
    LoopbackDevice = "loopback.device",
    /// The SGV pool's registry of per-thread stashes.
    SgvStashes = "sgv.stashes",
    /// The SGV pool's shared free lists.
    SgvPool = "sgv.pool",
    /// One thread's SGV stash (uncontended: only its owner takes it on the data path).
    SgvStash = "sgv.stash",
    /// An IOMMU domain's IOVA allocator (shared by the rings and the SGV pool).
    DmaIova = "dma.iova",
    /// One 1 MiB chunk of the RAM store.
    RamChunk = "ram.chunk",
    /// The SCSI engine's mode pages (MODE SELECT, resets).
    ScsiModePages = "scsi.mode_pages",
    /// The SCSI engine's block-range locks of one disk (handler/src/scsi/ranges.rs): the held
    /// ranges and the FIFO wait list of COMPARE AND WRITE and the writes it must exclude. A
    /// leaf, held for one acquire, release or cancel: grants are delivered to their workers'
    /// mailboxes after unlocking, and no command ever waits under it.
    ScsiRanges = "scsi.ranges",
    /// An NVMe controller's admin queue: held to place a command (SQ entry and doorbell write)
    /// and to reap the admin CQ, never while waiting for a completion. Above every simulator
    /// lock, because a simulated device's register write runs under it.
    NvmeAdmin = "nvme.admin",
    /// The simulated board's engine thread handles.
    SimEngines = "sim.engines",
    /// The simulated board's fault plan.
    SimFaults = "sim.faults",
    /// The simulated board's register file and engine state.
    SimState = "sim.state",
    /// The simulated board's RAM medium.
    SimMedium = "sim.medium",
    /// The simulated IOMMU's page table (read-held for a whole DMA copy).
    IommuTable = "iommu.table",
    /// The simulated IOMMU's kept faults.
    IommuFaults = "iommu.faults",
    /// The simulated IOMMU's map limit (the RLIMIT_MEMLOCK stand-in).
    IommuMapLimit = "iommu.map_limit",
    /// The simulated function's enabled MSI-X eventfds.
    InterruptLines = "interrupts.lines",
    /// The file store's flushes: whether an fdatasync runs and the flushes waiting for the next
    /// one. A leaf, held to join or to take the waiting list, never across the fdatasync.
    FileFlushes = "file.flushes",
}

/// Every lock level in order, as (level, name): for docs and tests.
pub const ALL: &[(u32, &str)] = &[
    (FrontendSessions::LEVEL, FrontendSessions::NAME),
    (CmdTable::LEVEL, CmdTable::NAME),
    (TeardownLeases::LEVEL, TeardownLeases::NAME),
    (AccelSpareQueues::LEVEL, AccelSpareQueues::NAME),
    (LoopbackRegister::LEVEL, LoopbackRegister::NAME),
    (LoopbackDevices::LEVEL, LoopbackDevices::NAME),
    (LoopbackDevice::LEVEL, LoopbackDevice::NAME),
    (SgvStashes::LEVEL, SgvStashes::NAME),
    (SgvPool::LEVEL, SgvPool::NAME),
    (SgvStash::LEVEL, SgvStash::NAME),
    (DmaIova::LEVEL, DmaIova::NAME),
    (RamChunk::LEVEL, RamChunk::NAME),
    (ScsiModePages::LEVEL, ScsiModePages::NAME),
    (ScsiRanges::LEVEL, ScsiRanges::NAME),
    (NvmeAdmin::LEVEL, NvmeAdmin::NAME),
    (SimEngines::LEVEL, SimEngines::NAME),
    (SimFaults::LEVEL, SimFaults::NAME),
    (SimState::LEVEL, SimState::NAME),
    (SimMedium::LEVEL, SimMedium::NAME),
    (IommuTable::LEVEL, IommuTable::NAME),
    (IommuFaults::LEVEL, IommuFaults::NAME),
    (IommuMapLimit::LEVEL, IommuMapLimit::NAME),
    (InterruptLines::LEVEL, InterruptLines::NAME),
    (FileFlushes::LEVEL, FileFlushes::NAME),
];

// The rule this whole module exists for, checked where the order is written.
const _: () = assert!(CmdTable::LEVEL < SgvPool::LEVEL && CmdTable::LEVEL < SgvStash::LEVEL);
const _: () = assert!(CmdTable::LEVEL < SgvStashes::LEVEL && CmdTable::LEVEL < DmaIova::LEVEL);
