//! The service's configuration file (`/etc/scst-accel/scst-accel.toml`): what it declares, once
//! validated. Parsing and validation with line numbers live in [`load`]; the `check-config`
//! subcommand is [`crate::check_config`].
//!
//! A validated [`ServiceConfig`] is complete and consistent: every disk has a unique name and
//! its own PCI function, every size is a multiple of its block size, every export names a
//! known target driver. Nothing is applied until the whole file is valid.

pub mod load;
#[cfg(test)]
mod tests;

use crate::backend::BoardArg;
use crate::disk::DiskArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the service keeps state, listens and finds SCST.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSettings {
    /// Generated identities are persisted here (one file per disk).
    pub state_dir: PathBuf,
    /// The control socket (`scst-accel status`, `dump`, `resize`); root-only (mode 0600).
    pub control_socket: PathBuf,
    /// The scst_user device node.
    pub scst_device: PathBuf,
    /// SCST's sysfs root, where export blocks are written.
    pub scst_sysfs: PathBuf,
    /// Prometheus text endpoint (opt-in): an address on this host.
    pub metrics_listen: Option<SocketAddr>,
    /// Each disk's teardown is bounded by this (SIGTERM tears all disks down in parallel).
    pub stop_timeout: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/scst-accel"),
            control_socket: PathBuf::from("/run/scst-accel/control.sock"),
            scst_device: PathBuf::from(scst_accel_handler::abi::DEV_USER_PATH),
            scst_sysfs: PathBuf::from("/sys/kernel/scst_tgt"),
            metrics_listen: None,
            stop_timeout: Duration::from_secs(20),
        }
    }
}

/// A disk's identity as the initiator sees it (INQUIRY, VPD 80h/83h). Fields left `None` are
/// generated once and persisted in the state directory (or, on an NVMe board, taken from the
/// namespace's NGUID/EUI64).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySpec {
    /// T10 vendor identification (1-8 printable ASCII characters).
    pub vendor: Option<String>,
    /// Product identification (1-16 printable ASCII characters).
    pub product: Option<String>,
    /// Unit serial number (VPD 80h; 1-32 printable ASCII characters).
    pub serial: Option<String>,
    /// NAA designator as hex: 32 digits starting with 6 (IEEE Registered Extended) or 16
    /// digits starting with 3 (locally administered).
    pub naa: Option<String>,
}

/// Which SCST target driver an export block adds the disk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetDriver {
    /// `scst_local` (the target is `scst_local_tgt` or one made with `add_target`).
    ScstLocal,
    /// `iscsi` (iscsi-scst; the target is an IQN, created when absent).
    Iscsi,
    /// `copy_manager`: SCST's copy manager (target `copy_manager_tgt`, always present). A
    /// user-space disk becomes a source or destination of EXTENDED COPY only as one of its LUNs
    /// (docs/xcopy.md).
    CopyManager,
}

impl TargetDriver {
    /// The driver's directory name under `targets/`.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            Self::ScstLocal => "scst_local",
            Self::Iscsi => "iscsi",
            Self::CopyManager => "copy_manager",
        }
    }
}

/// One LUN to add the disk to, after registration; removed at stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// The target driver.
    pub driver: TargetDriver,
    /// The target's name (an IQN for iSCSI).
    pub target: String,
    /// The LUN number.
    pub lun: u32,
    /// Enable the target (and the driver) after adding the LUN.
    pub enable: bool,
}

/// One disk of the service.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// Name, size, block size, workers, queue and timeout settings (as the command line's).
    pub args: DiskArgs,
    /// What stands behind it.
    pub board: BoardArg,
    /// PCI address of a hardware board's function.
    pub pci: Option<String>,
    /// Faults to inject (simulated boards only).
    pub inject: Vec<String>,
    /// Writes are refused (DATA PROTECT).
    pub read_only: bool,
    /// Logical block provisioning (UNMAP, WRITE SAME with UNMAP, LBPME).
    pub thin_provisioning: bool,
    /// Identity overrides.
    pub identity: IdentitySpec,
    /// LUNs to add it to.
    pub exports: Vec<ExportSpec>,
    /// Buffers to hand to SCST's buffer cache at start (PREALLOC_BUFFER), and their size.
    pub prealloc: usize,
    /// Size of each preallocated buffer.
    pub prealloc_size: u64,
}

/// A validated configuration file.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `[service]`.
    pub service: ServiceSettings,
    /// `[[disk]]`, in file order.
    pub disks: Vec<DiskSpec>,
}
