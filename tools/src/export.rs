//! Export blocks (`[[disk.export]]`) applied through SCST's sysfs, as scstadmin does, after the
//! disk is registered; removed at stop (scst_user.md §7 step 3 and 5).
//!
//! - scst_local: `add DEVICE LUN` to `targets/scst_local/TARGET/luns/mgmt` (the target must
//!   exist: `scst_local_tgt`, or one made with `add_target`). scst_local targets are always
//!   enabled, so `enable` is not written for them.
//! - iscsi: `add_target TARGET` to `targets/iscsi/mgmt` when the target is absent (and only
//!   then is it ours to delete), `add DEVICE LUN` to its `luns/mgmt`, and when `enable`: `1` to
//!   the target's `enabled`, then `1` to the driver's `enabled`.
//! - copy_manager: `add DEVICE LUN` to `targets/copy_manager/copy_manager_tgt/luns/mgmt`, what
//!   makes the disk a source or destination of EXTENDED COPY (SCST adds only its own vdisk
//!   devices there by itself; docs/xcopy.md). The copy manager's session then attaches and reads
//!   the disk's VPD 83h through the handler. Its target always exists.
//! - Removal, in reverse: `del LUN`, then `del_target TARGET` for targets we created. Enabling
//!   is not undone: the driver may serve other targets.
//!
//!   A `del` is written only while the LUN still holds this disk's device (its `device` link,
//!   `luns/N/device`, names it): a LUN gone already (SCST removes a device's LUNs when it
//!   unregisters it) or taken since by another device (an operator's `add` at the same number)
//!   is left alone, logged.
//!
//! Every write is one `open(O_WRONLY)` + one `write` of one line + `close`, as `echo` does:
//! SCST parses each write as one command and reports its refusal as the write's errno, which is
//! returned with the path and the line. A LUN `add` blocks until our handler answers the
//! ATTACH_SESS it causes (scst_user gives up after 5 s, EFAULT), so the disk's workers must be
//! serving.
//!
//! SCST runs a command on its own thread and answers EAGAIN when the command has not finished
//! within 15 s while another configuration change holds its lock (scst_sysfs.c,
//! `scst_sysfs_queue_wait_work`): the command stays queued and finishes later. As scstadmin
//! does (scst/README, `last_sysfs_mgmt_res`), the exporter then polls `last_sysfs_mgmt_res`,
//! which answers EAGAIN while commands are queued and then the last one's result (0 or
//! -errno), for at most [`MgmtWait::bound`]. A command still queued past it is
//! [`ExportError::Queued`]: it may still apply, so its step counts as applied and the undo
//! removes it. The result is the last command's, whoever wrote it: another tool writing at the
//! same time can lend us its result, as it can to scstadmin.
//!
//! [`ExportError::exit_code`] says whether a restart may mend a failure (69: iscsi-scstd not
//! running or not answering, SCST busy, the handler late to answer) or the configuration must
//! change (78).

use crate::config::ExportSpec;
use crate::config::TargetDriver;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// SCST's attribute with the result of the last management command (relative to the root).
const MGMT_RESULT: &str = "last_sysfs_mgmt_res";

/// What went wrong applying or removing an export, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The target driver's directory is missing: its module is not loaded.
    #[error("SCST target driver {name} is not loaded ({dir} is missing): {hint}", name = .driver.sysfs_name(), dir = .path.display(), hint = load_hint(.driver))]
    DriverMissing {
        /// The driver.
        driver: TargetDriver,
        /// The directory looked for.
        path: PathBuf,
    },
    /// The copy manager's target is not there: SCST's copy manager has one target,
    /// `copy_manager_tgt`, made when scst loads.
    #[error("the copy manager has no target {target} ({dir} is missing): use target = \"copy_manager_tgt\"", dir = .path.display())]
    CopyManagerTarget {
        /// The name given.
        target: String,
        /// The directory looked for.
        path: PathBuf,
    },
    /// An scst_local target does not exist (scst_local targets are not created here).
    #[error(
        "scst_local target {target} does not exist ({dir} is missing): use scst_local_tgt \
         (created by `modprobe scst_local` unless add_default_tgt=0) or create it first with \
         `echo \"add_target {target}\" > {mgmt}`, then add a session with its `add_session`",
        dir = .path.display(), mgmt = .path.with_file_name("mgmt").display()
    )]
    TargetMissing {
        /// The target's name.
        target: String,
        /// The directory looked for.
        path: PathBuf,
    },
    /// A target name that cannot be a sysfs entry or one mgmt line.
    #[error("export target name {target:?} is not usable: it must be non-empty, without '/', whitespace or control characters")]
    BadTargetName {
        /// The name.
        target: String,
    },
    /// A sysfs directory could not be read.
    #[error("reading {dir}: {source}", dir = .path.display())]
    Read {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// iscsi-scstd is not connected to iscsi-scst (`targets/iscsi/open_state` is not `open`):
    /// iscsi-scst refuses every target command meanwhile (EPERM).
    #[error("iscsi-scstd is not connected to iscsi-scst ({file} says {state:?}, not \"open\"): start iscsi-scstd, then restart this service", file = .path.display())]
    IscsiDaemon {
        /// `open_state`.
        path: PathBuf,
        /// What it said (`closed`, `closing`).
        state: String,
    },
    /// SCST answered EAGAIN (it queued the command) and had no result for it within the bound:
    /// the command may still apply later.
    #[error(
        "SCST queued \"{line}\" for {file} and had no result for it after {waited:?} ({reason}): \
         the command may still apply; SCST is busy with another configuration change (see \
         `dmesg`), restart once it is done",
        file = .path.display()
    )]
    Queued {
        /// The file written.
        path: PathBuf,
        /// The line written (without its newline).
        line: String,
        /// How long `last_sysfs_mgmt_res` was polled.
        waited: Duration,
        /// Why there is no result.
        reason: QueuedReason,
    },
    /// An iSCSI target someone else made is gone (iscsi-scstd's restart deletes them all): the
    /// LUN waits for its owner to make it again, with its own settings.
    #[error("iSCSI target {target} is gone and is not this service's: its LUN is added again once its owner (scstadmin, a script) has made it again")]
    NotOurTarget {
        /// The target.
        target: String,
    },
    /// A sysfs write failed: SCST refused the line, or the file could not be opened.
    #[error("writing \"{line}\" to {file}: {source}{hint}", file = .path.display(), hint = write_hint(.path, .line, .source))]
    Write {
        /// The file written.
        path: PathBuf,
        /// The line written (without its newline).
        line: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// Why a queued command has no result.
#[derive(Debug, thiserror::Error)]
pub enum QueuedReason {
    /// `last_sysfs_mgmt_res` still answered EAGAIN at the bound: commands are still queued.
    #[error("last_sysfs_mgmt_res still answered EAGAIN")]
    StillQueued,
    /// `last_sysfs_mgmt_res` could not be read.
    #[error("reading last_sysfs_mgmt_res: {0}")]
    Unreadable(#[source] io::Error),
    /// `last_sysfs_mgmt_res` said something that is not a result.
    #[error("last_sysfs_mgmt_res said {0:?}, not a result")]
    Garbled(String),
}

impl ExportError {
    /// The exit class of a failure (see [`crate::exit`]): 69 when a restart may mend it (a
    /// target driver not loaded yet; iscsi-scstd not running, EPERM, or not answering within
    /// 31 s, EBUSY; a command SCST still had queued at the bound; the handler late to answer the
    /// ATTACH_SESS a LUN `add` causes, EFAULT), 78 when the configuration must change.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::DriverMissing { .. }
            | Self::IscsiDaemon { .. }
            | Self::Queued { .. }
            | Self::NotOurTarget { .. } => crate::exit::UNAVAILABLE,
            // EPERM and EBUSY are iscsi-scstd's only from iscsi-scst's files; elsewhere EPERM
            // is no write access to SCST's sysfs, the configuration's (`write_hint` alike).
            Self::Write { source, path, .. }
                if matches!(source.raw_os_error(), Some(libc::EFAULT | libc::EAGAIN))
                    || (matches!(source.raw_os_error(), Some(libc::EPERM | libc::EBUSY))
                        && under_iscsi(path)) =>
            {
                crate::exit::UNAVAILABLE
            }
            _ => crate::exit::CONFIG,
        }
    }
}

fn load_hint(driver: &TargetDriver) -> &'static str {
    match driver {
        TargetDriver::ScstLocal => "modprobe scst_local",
        TargetDriver::Iscsi => "modprobe iscsi-scst and start iscsi-scstd",
        TargetDriver::CopyManager => "modprobe scst (the copy manager is part of it)",
    }
}

/// Whether `path` is one of iscsi-scst's files (`targets/iscsi/...`).
fn under_iscsi(path: &Path) -> bool {
    path.components()
        .any(|c| c.as_os_str() == TargetDriver::Iscsi.sysfs_name())
}

/// What to do about a refused line, from its errno, verb and file (iscsi-scst's own refusals
/// are about iscsi-scstd).
fn write_hint(path: &Path, line: &str, source: &io::Error) -> String {
    let verb = line.split_whitespace().next().unwrap_or("");
    let iscsi = under_iscsi(path);
    let hint = match (source.raw_os_error(), verb) {
        (Some(libc::EEXIST), "add") => "the LUN is taken: pick another lun (or `del` it on the target)",
        (Some(libc::EEXIST), "add_target") => "the target exists already",
        (Some(libc::EINVAL | libc::ENOENT | libc::ENODEV), "add") => {
            "SCST does not know the device or the target: is the disk registered (serve running) and the target name right?"
        }
        (Some(libc::EINVAL | libc::ENOENT), "del") => "the LUN is gone already (removed by hand?)",
        (Some(libc::EFAULT), "add") => {
            "the disk's handler did not answer the ATTACH_SESS this LUN caused in time (scst_user \
             waits 5 s): are the disk's workers serving? A restart retries"
        }
        (Some(libc::EAGAIN), _) => "SCST is busy with another configuration change: retry once it is done",
        (Some(libc::EBUSY), _) if iscsi => {
            "iscsi-scstd did not answer iscsi-scst within 31 s (an unreachable iSNS server?): is it \
             running and responsive? A restart retries"
        }
        (Some(libc::EBUSY), _) => "SCST is busy (a suspend or another configuration change): retry",
        (Some(libc::EPERM), _) if iscsi => "iscsi-scst refuses while iscsi-scstd is not connected: start iscsi-scstd",
        (Some(libc::EACCES | libc::EPERM | libc::EROFS), _) => {
            "no write access to SCST's sysfs: run as root, with ReadWritePaths=/sys/kernel/scst_tgt in the unit"
        }
        (Some(libc::ENOENT), _) => "the file is missing: is the target driver loaded and the target created?",
        (Some(libc::EISDIR), _) => "that path is a directory, not an SCST attribute: is the sysfs root right?",
        _ => return String::new(),
    };
    format!(" ({hint})")
}

/// How long, and how often, to poll `last_sysfs_mgmt_res` for a command SCST queued (EAGAIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MgmtWait {
    /// The longest wait for a result, on top of the 15 s SCST waited before its EAGAIN; past
    /// it the command is [`ExportError::Queued`].
    pub bound: Duration,
    /// The pause between two reads.
    pub interval: Duration,
}

impl Default for MgmtWait {
    /// 60 s, a read every 250 ms: SCST's own waits (an ATTACH_SESS 5 s, iscsi-scstd 31 s) fit
    /// in it with room, and a read costs the kernel one spinlock.
    fn default() -> Self {
        Self {
            bound: Duration::from_secs(60),
            interval: Duration::from_millis(250),
        }
    }
}

/// Reads and writes of SCST's attributes: the file system, or a test's stand-in for what a
/// file system cannot do (a write answered EAGAIN, a result that comes later).
pub(crate) trait Attributes: Send + Sync + std::fmt::Debug {
    /// One `open(O_WRONLY)` + one `write` of `text` + `close`; the byte count written.
    fn write(&self, path: &Path, text: &str) -> io::Result<usize>;
    /// The whole attribute.
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// The real sysfs.
#[derive(Debug)]
struct Sysfs;

impl Attributes for Sysfs {
    fn write(&self, path: &Path, text: &str) -> io::Result<usize> {
        // No create, no truncate: sysfs attributes exist or the write is wrong.
        let mut file = OpenOptions::new().write(true).open(path)?;
        // One write, not write_all: SCST takes each write as one command, so a short write
        // would be a truncated command, not something to complete with a second one.
        file.write(text.as_bytes())
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// The management commands of one SCST sysfs tree.
#[derive(Clone, Debug)]
struct Mgmt {
    root: PathBuf,
    io: Arc<dyn Attributes>,
    wait: MgmtWait,
    /// Where the iSCSI targets created are recorded ([`CreatedTargets`]; none by default).
    record: CreatedTargets,
}

/// Writes export blocks under an SCST sysfs root.
#[derive(Clone, Debug)]
pub struct Exporter {
    mgmt: Mgmt,
}

/// One step `apply` did (or may have done: SCST still had it queued), undone by `remove`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// `add_target` on the iscsi driver: ours to delete.
    CreatedTarget { target: String },
    /// `add DEVICE LUN`.
    Lun {
        driver: TargetDriver,
        target: String,
        lun: u32,
        device: String,
    },
}

/// The exports applied for one device, to describe and remove at stop.
#[derive(Debug)]
#[must_use = "exports stay in SCST until removed"]
pub struct AppliedExports {
    mgmt: Mgmt,
    steps: Vec<Step>,
}

impl Exporter {
    /// An exporter for the sysfs tree at `root` (`/sys/kernel/scst_tgt`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            mgmt: Mgmt {
                root: root.into(),
                io: Arc::new(Sysfs),
                wait: MgmtWait::default(),
                record: CreatedTargets::default(),
            },
        }
    }

    /// This exporter, recording in `record` each iSCSI target it creates, before its
    /// `add_target` (and taking it off when that is refused, or the target deleted).
    pub fn with_record(mut self, record: CreatedTargets) -> Self {
        self.mgmt.record = record;
        self
    }

    /// An exporter whose attributes are `io`'s (tests).
    #[cfg(test)]
    pub(crate) fn with_io(root: impl Into<PathBuf>, io: Arc<dyn Attributes>, wait: MgmtWait) -> Self {
        Self {
            mgmt: Mgmt {
                root: root.into(),
                io,
                wait,
                record: CreatedTargets::default(),
            },
        }
    }

    /// Check what can be checked before anything is registered, so that a bad export block
    /// never leaves half a configuration: each driver is loaded, each name is usable, each
    /// scst_local target exists (iscsi targets are created when absent), and for iSCSI,
    /// iscsi-scstd is connected (`open_state` is `open`, when the driver has that attribute):
    /// without it iscsi-scst refuses every target command.
    ///
    /// # Errors
    /// The first problem found.
    pub fn preflight(&self, specs: &[ExportSpec]) -> Result<(), ExportError> {
        let root = &self.mgmt.root;
        for spec in specs {
            check_name(&spec.target)?;
            let driver = driver_dir(root, spec.driver);
            if !is_dir(&driver) {
                return Err(ExportError::DriverMissing {
                    driver: spec.driver,
                    path: driver,
                });
            }
            let target = driver.join(&spec.target);
            match spec.driver {
                TargetDriver::ScstLocal if !is_dir(&target) => {
                    return Err(ExportError::TargetMissing {
                        target: spec.target.clone(),
                        path: target,
                    });
                }
                TargetDriver::CopyManager if !is_dir(&target) => {
                    return Err(ExportError::CopyManagerTarget {
                        target: spec.target.clone(),
                        path: target,
                    });
                }
                TargetDriver::Iscsi => self.check_iscsi_daemon(&driver)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// `open_state` (iscsi-scst's config.c) is `open` while iscsi-scstd holds the control
    /// device; an iscsi-scst without the attribute (older than it) is not checked.
    fn check_iscsi_daemon(&self, driver: &Path) -> Result<(), ExportError> {
        let path = driver.join("open_state");
        match self.mgmt.io.read(&path) {
            Ok(text) if text.trim() == "open" => Ok(()),
            Ok(text) => Err(ExportError::IscsiDaemon {
                path,
                state: text.trim().to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ExportError::Read { path, source }),
        }
    }

    /// Add `device` to every LUN of `specs`, in order. On a failure, what was applied is
    /// undone (in reverse) before the error is returned, including a step SCST still had
    /// queued ([`ExportError::Queued`]), which may apply later.
    ///
    /// # Errors
    /// The first failure; failures of the undo are logged.
    pub fn apply(&self, device: &str, specs: &[ExportSpec]) -> Result<AppliedExports, ExportError> {
        let mut applied = AppliedExports {
            mgmt: self.mgmt.clone(),
            steps: Vec::new(),
        };
        for spec in specs {
            if let Err(e) = self.apply_one(device, spec, &mut applied.steps) {
                for undo in applied.remove() {
                    log::error!("undoing the exports of {device} after a failure: {undo}");
                }
                return Err(e);
            }
        }
        Ok(applied)
    }

    /// `del_target` of an iSCSI target the service created, once none of its disks exports
    /// there. `Ok(false)` when the target is gone already, or when LUNs are left in it (added by
    /// someone else: `del_target` would take them along), which are then left alone.
    ///
    /// # Errors
    /// The target's LUN directory cannot be read, or SCST refuses the line.
    pub fn delete_target(&self, target: &str) -> Result<bool, ExportError> {
        check_name(target)?;
        let driver = driver_dir(&self.mgmt.root, TargetDriver::Iscsi);
        let luns_dir = driver.join(target).join("luns");
        let luns = match std::fs::read_dir(&luns_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
                .count(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.mgmt.record.remove(target);
                return Ok(false);
            }
            Err(source) => {
                return Err(ExportError::Read {
                    path: luns_dir,
                    source,
                })
            }
        };
        if luns > 0 {
            // Kept on the record: a later run's stop tries again once the LUNs are gone.
            return Ok(false);
        }
        self.mgmt
            .command(&driver.join("mgmt"), &format!("del_target {target}"))?;
        self.mgmt.record.remove(target);
        Ok(true)
    }

    fn apply_one(&self, device: &str, spec: &ExportSpec, steps: &mut Vec<Step>) -> Result<(), ExportError> {
        check_name(&spec.target)?;
        let driver = driver_dir(&self.mgmt.root, spec.driver);
        let target = driver.join(&spec.target);
        // Only a directory is a target: SCST creates one per target, synchronously with the
        // `add_target` write.
        if spec.driver == TargetDriver::Iscsi && !is_dir(&target) {
            // Recorded first: a kill between the two leaves a record of a target that may not
            // exist (its deletion finds nothing), never a target without a record.
            self.mgmt.record.add(&spec.target);
            let created = self
                .mgmt
                .command(&driver.join("mgmt"), &format!("add_target {}", spec.target));
            if maybe_applied(&created) {
                steps.push(Step::CreatedTarget {
                    target: spec.target.clone(),
                });
            } else {
                self.mgmt.record.remove(&spec.target);
            }
            created?;
        }
        let added = self
            .mgmt
            .command(&target.join("luns/mgmt"), &format!("add {device} {}", spec.lun));
        if maybe_applied(&added) {
            steps.push(Step::Lun {
                driver: spec.driver,
                target: spec.target.clone(),
                lun: spec.lun,
                device: device.to_string(),
            });
        }
        added?;
        if spec.enable && spec.driver == TargetDriver::Iscsi {
            self.mgmt.command(&target.join("enabled"), "1")?;
            self.mgmt.command(&driver.join("enabled"), "1")?;
        }
        Ok(())
    }
}

impl Exporter {
    /// Apply again, for `device`, the export blocks of `specs` whose LUN is gone (found by
    /// [`AppliedExports::check`]): iscsi-scstd's exit deletes every iSCSI target (iscsi-scst's
    /// `iscsi_release` -> `target_del_all`), so each restart of it takes the disks' iSCSI
    /// exports away, and an operator's `del` takes one LUN. Each block is checked first as the
    /// preflight checks it (the driver loaded; for iSCSI, iscsi-scstd connected), then applied
    /// as [`Exporter::apply`] does: the LUN added, the target and the driver enabled. An absent
    /// iSCSI target is created again only when it is one of `ours` (the service created it, with
    /// no CHAP and no initiator group): someone else's target had settings of its own that a
    /// bare `add_target` would not give it back, so its block waits
    /// ([`ExportError::NotOurTarget`]) until its owner has made it again, and then only the LUN
    /// is added: enabling it is its owner's (who may still be giving it its CHAP user and
    /// groups when the check finds it back). Once `stop` is set (the service stops) no further
    /// block is applied. Unlike `apply`, nothing is undone on a failure: what was done serves,
    /// and is recorded in the [`Restored`] for the stop to remove.
    ///
    /// # Errors
    /// The first failure (the blocks after it are not tried: the next check tries again).
    pub fn restore(
        &self,
        device: &str,
        specs: &[ExportSpec],
        ours: &[String],
        stop: &std::sync::atomic::AtomicBool,
    ) -> (Restored, Result<(), ExportError>) {
        let mut steps = Vec::new();
        for spec in specs {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            let theirs = spec.driver == TargetDriver::Iscsi && !ours.contains(&spec.target);
            let spec = &ExportSpec {
                enable: spec.enable && !theirs,
                ..spec.clone()
            };
            let target = driver_dir(&self.mgmt.root, spec.driver).join(&spec.target);
            let applied = self
                .preflight(std::slice::from_ref(spec))
                .and_then(|()| {
                    if theirs && !is_dir(&target) {
                        return Err(ExportError::NotOurTarget {
                            target: spec.target.clone(),
                        });
                    }
                    Ok(())
                })
                .and_then(|()| self.apply_one(device, spec, &mut steps));
            if let Err(e) = applied {
                return (Restored { steps }, Err(e));
            }
        }
        (Restored { steps }, Ok(()))
    }
}

/// What [`Exporter::restore`] did, to take into the disk's [`AppliedExports`]
/// ([`AppliedExports::absorb`]) so that the stop removes it.
#[derive(Debug, Default)]
#[must_use = "restored exports stay in SCST until removed"]
pub struct Restored {
    steps: Vec<Step>,
}

impl Restored {
    /// The LUNs added, as `driver/target/lun`.
    pub fn describe(&self) -> Vec<String> {
        describe(&self.steps)
    }

    /// The iSCSI targets created (see [`AppliedExports::created_targets`]).
    pub fn created_targets(&self) -> Vec<String> {
        created_targets(&self.steps)
    }
}

/// What SCST's sysfs says now of a LUN [`Exporter::apply`] added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LunNow {
    /// It holds the disk's device.
    Ours,
    /// It is gone (its target too, perhaps).
    Gone,
    /// Another device holds its number now (an operator's `del` and `add`): left alone.
    HeldBy(String),
    /// Its `device` link could not be read.
    Unreadable(String),
}

/// Done, or still queued in SCST (which may do it after we gave up waiting): either way its
/// undo is due.
fn maybe_applied(result: &Result<(), ExportError>) -> bool {
    matches!(result, Ok(()) | Err(ExportError::Queued { .. }))
}

/// The LUNs of `steps`, as `driver/target/lun`.
fn describe(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Lun {
                driver, target, lun, ..
            } => Some(format!("{}/{target}/{lun}", driver.sysfs_name())),
            Step::CreatedTarget { .. } => None,
        })
        .collect()
}

/// The targets `steps` created.
fn created_targets(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::CreatedTarget { target } => Some(target.clone()),
            Step::Lun { .. } => None,
        })
        .collect()
}

impl AppliedExports {
    /// The LUNs, as `driver/target/lun`.
    pub fn describe(&self) -> Vec<String> {
        describe(&self.steps)
    }

    /// Each LUN added, as `driver/target/lun`, with what sysfs says of it now (a `readlink` of
    /// its `device` link: no SCST lock taken, nothing waited for).
    pub fn check(&self) -> Vec<(String, LunNow)> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Lun {
                    driver,
                    target,
                    lun,
                    device,
                } => {
                    let dir = driver_dir(&self.mgmt.root, *driver)
                        .join(target)
                        .join("luns")
                        .join(lun.to_string());
                    let now = match lun_holder(&dir) {
                        Ok(Some(holder)) if holder == *device => LunNow::Ours,
                        Ok(Some(holder)) => LunNow::HeldBy(holder),
                        Ok(None) => LunNow::Gone,
                        Err(e) => LunNow::Unreadable(e.to_string()),
                    };
                    Some((format!("{}/{target}/{lun}", driver.sysfs_name()), now))
                }
                Step::CreatedTarget { .. } => None,
            })
            .collect()
    }

    /// The blocks of `specs` (the disk's configuration) whose LUN `check` found gone: what
    /// [`Exporter::restore`] applies again.
    pub fn gone(&self, specs: &[ExportSpec]) -> Vec<ExportSpec> {
        let gone: Vec<String> = self
            .check()
            .into_iter()
            .filter(|(_, now)| *now == LunNow::Gone)
            .map(|(lun, _)| lun)
            .collect();
        specs
            .iter()
            .filter(|spec| {
                gone.contains(&format!(
                    "{}/{}/{}",
                    spec.driver.sysfs_name(),
                    spec.target,
                    spec.lun
                ))
            })
            .cloned()
            .collect()
    }

    /// Take in what a restore did: a LUN added again is recorded once, a target it created is
    /// this disk's to leave and the service's to delete, as those `apply` created.
    pub fn absorb(&mut self, restored: Restored) {
        for step in restored.steps {
            if !self.steps.contains(&step) {
                self.steps.push(step);
            }
        }
    }

    /// The iSCSI targets `apply` created (`add_target`). Other disks of the service may add
    /// their LUNs to them, so a disk's teardown leaves them ([`AppliedExports::remove_luns`])
    /// and the service deletes each once no disk of it exports there
    /// ([`Exporter::delete_target`]).
    pub fn created_targets(&self) -> Vec<String> {
        created_targets(&self.steps)
    }

    /// Remove this disk's LUNs, in reverse order; the targets it created stay (see
    /// [`AppliedExports::created_targets`]). Best effort: every LUN is attempted; the failures
    /// are returned.
    pub fn remove_luns(self) -> Vec<ExportError> {
        let steps = self
            .steps
            .iter()
            .filter(|step| matches!(step, Step::Lun { .. }))
            .cloned()
            .collect();
        Self { steps, ..self }.remove()
    }

    /// Remove everything applied, in reverse order: `del LUN` for each LUN that still holds
    /// this disk's device, then `del_target` for targets this `apply` created (the undo of a
    /// failed `apply`, when no other disk can have used them yet). Best effort: every step is
    /// attempted; the failures are returned.
    pub fn remove(self) -> Vec<ExportError> {
        let mut errors = Vec::new();
        for step in self.steps.iter().rev() {
            let result = match step {
                Step::Lun {
                    driver,
                    target,
                    lun,
                    device,
                } => {
                    let luns = driver_dir(&self.mgmt.root, *driver).join(target).join("luns");
                    match lun_holder(&luns.join(lun.to_string())) {
                        Ok(Some(holder)) if holder == *device => {
                            self.mgmt.command(&luns.join("mgmt"), &format!("del {lun}"))
                        }
                        Ok(Some(holder)) => {
                            log::warn!(
                                "LUN {lun} of {} target {target} holds device {holder} now, not \
                                 {device}: left alone (re-added by someone else)",
                                driver.sysfs_name()
                            );
                            Ok(())
                        }
                        Ok(None) => {
                            log::info!(
                                "LUN {lun} of {} target {target} is gone already (SCST removes a \
                                 device's LUNs when it unregisters it): nothing to delete",
                                driver.sysfs_name()
                            );
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Step::CreatedTarget { target } => self
                    .mgmt
                    .command(
                        &driver_dir(&self.mgmt.root, TargetDriver::Iscsi).join("mgmt"),
                        &format!("del_target {target}"),
                    )
                    .inspect(|()| self.mgmt.record.remove(target)),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }
}

/// The device a LUN holds (the last component of its `device` link, which SCST points at the
/// device's directory), or `None` when the LUN is gone. An unreadable link is an error: the
/// LUN is then left, as it may be someone else's.
fn lun_holder(lun_dir: &Path) -> Result<Option<String>, ExportError> {
    let link = lun_dir.join("device");
    match std::fs::read_link(&link) {
        Ok(to) => Ok(Some(
            to.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ExportError::Read { path: link, source }),
    }
}

fn driver_dir(root: &Path, driver: TargetDriver) -> PathBuf {
    root.join("targets").join(driver.sysfs_name())
}

/// A directory itself, not a symlink to one: SCST's targets are directories.
fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A name that is one path component and one token of a mgmt line.
fn check_name(target: &str) -> Result<(), ExportError> {
    let bad = target.is_empty()
        || target == "."
        || target == ".."
        || target
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ExportError::BadTargetName {
            target: target.to_string(),
        });
    }
    Ok(())
}

impl Mgmt {
    /// One `echo LINE > PATH`: open, one write of the line and its newline, close; when SCST
    /// answers EAGAIN (it queued the command: see the module's documentation), the command's
    /// result from `last_sysfs_mgmt_res`.
    fn command(&self, path: &Path, line: &str) -> Result<(), ExportError> {
        let error = |source: io::Error| ExportError::Write {
            path: path.to_path_buf(),
            line: line.to_string(),
            source,
        };
        log::info!("sysfs: echo \"{line}\" > {}", path.display());
        let text = format!("{line}\n");
        match self.io.write(path, &text) {
            Ok(written) if written == text.len() => Ok(()),
            Ok(written) => Err(error(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", text.len()),
            ))),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                log::warn!(
                    "SCST queued \"{line}\" (EAGAIN: another configuration change holds it up); \
                     waiting for its result at most {:?}",
                    self.wait.bound
                );
                let began = Instant::now();
                let result_path = self.root.join(MGMT_RESULT);
                match await_queued(|| self.io.read(&result_path), self.wait) {
                    Ok(result) => result.map_err(error),
                    Err(reason) => Err(ExportError::Queued {
                        path: path.to_path_buf(),
                        line: line.to_string(),
                        waited: began.elapsed(),
                        reason,
                    }),
                }
            }
            Err(e) => Err(error(e)),
        }
    }
}

/// The result of a command SCST queued, from `read` (`last_sysfs_mgmt_res`): it fails with
/// EAGAIN while commands are queued, then says `0` (done) or `-N` (refused with errno N), read
/// every `wait.interval` for at most `wait.bound`.
fn await_queued(
    mut read: impl FnMut() -> io::Result<String>,
    wait: MgmtWait,
) -> Result<Result<(), io::Error>, QueuedReason> {
    let deadline = Instant::now() + wait.bound;
    loop {
        match read() {
            Ok(text) => {
                return match text.trim().parse::<i32>() {
                    Ok(0) => Ok(Ok(())),
                    Ok(n) if n < 0 => Ok(Err(io::Error::from_raw_os_error(-n))),
                    _ => Err(QueuedReason::Garbled(text.trim().to_string())),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => return Err(QueuedReason::Unreadable(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(QueuedReason::StillQueued);
        }
        // Checked: no lock may be held across this wait (docs/locking.md).
        scst_accel_hal::locks::sleep(wait.interval.min(deadline - now));
    }
}

mod record;
pub use record::CreatedTargets;

#[cfg(test)]
pub(crate) mod tests;
