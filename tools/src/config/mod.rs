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
    /// Generated identities are persisted here (one file per disk), under TCMU each disk's
    /// current WCE (`crate::mode_state`), and under scst_user the iSCSI targets the service
    /// created (`crate::export::CreatedTargets`).
    pub state_dir: PathBuf,
    /// The control socket (`scst-accel status`, `dump`, `resize`); root-only (mode 0600).
    pub control_socket: PathBuf,
    /// The scst_user device node.
    pub scst_device: PathBuf,
    /// SCST's sysfs root, where export blocks are written.
    pub scst_sysfs: PathBuf,
    /// Prometheus text endpoint (opt-in): an address on this host.
    pub metrics_listen: Option<SocketAddr>,
    /// A stop (SIGTERM) is bounded by this plus a second: the disks are torn down in parallel,
    /// and a teardown still running then fails its disk (exit 70). Under TCMU the bound is
    /// never below the drains' own (twice `[service.tcmu] drain` and 5 s).
    pub stop_timeout: Duration,
    /// Which kernel target serves every disk of the service.
    pub frontend: Frontend,
    /// `[service.tcmu]`: the TCMU frontend's settings (with `frontend = "tcmu"`).
    pub tcmu: TcmuSettings,
}

/// The kernel target the service's disks are served to: one for the whole service, not per
/// disk. A host runs one SCSI target stack (SCST's and LIO's each want the iSCSI port and
/// their own target drivers), the two need different kernels in practice (SCST is out of
/// tree), and their lifecycles differ (scst_user registers each disk; TCMU shares one
/// tcm_loop and one iSCSI target among the disks, each disk a LUN of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frontend {
    /// SCST's scst_user.
    #[default]
    Scst,
    /// LIO's target_core_user.
    Tcmu,
}

/// The TCMU frontend's settings: configfs, the shared targets, the drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcmuSettings {
    /// LIO's configfs directory.
    pub configfs_root: PathBuf,
    /// The user backstores' HBA number (`core/user_N`), shared by the service's disks.
    pub hba: u32,
    /// The command ring's size in MiB (the kernel's default when absent).
    pub ring_mb: Option<u32>,
    /// One tcm_loop target, each disk a LUN of it (a local `/dev/sdX` each).
    pub loopback: bool,
    /// One iSCSI target on this portal (`IP:PORT`), each disk a LUN of it.
    pub iscsi_portal: Option<String>,
    /// Take over what a killed run left instead of refusing it.
    pub adopt: bool,
    /// How long each disk's stop waits for its store before aborting (and then as long again).
    pub drain: Duration,
    /// Listen to the kernel's TCMU netlink events (device removed, reconfigured).
    pub netlink: bool,
}

impl Default for TcmuSettings {
    fn default() -> Self {
        Self {
            configfs_root: PathBuf::from(scst_accel_handler::tcmu::configfs::TARGET_ROOT),
            hba: 7,
            ring_mb: None,
            loopback: true,
            iscsi_portal: None,
            adopt: false,
            drain: Duration::from_secs(5),
            netlink: true,
        }
    }
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
            frontend: Frontend::Scst,
            tcmu: TcmuSettings::default(),
        }
    }
}

/// A disk's identity as the initiator sees it (INQUIRY, VPD 80h/83h). Fields left `None` come
/// from the state directory, where they were persisted on the first start (taken then from an
/// NVMe namespace's NGUID/EUI64, when it has a unique one, else generated).
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
