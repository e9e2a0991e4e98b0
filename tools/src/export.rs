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
//! Every write is one `open(O_WRONLY)` + one `write` of one line + `close`, as `echo` does:
//! SCST parses each write as one command and reports its refusal as the write's errno, which is
//! returned with the path and the line. A LUN `add` blocks until our handler answers the
//! ATTACH_SESS it causes (SCST gives up after 5 s), so the disk's workers must be serving.

use crate::config::ExportSpec;
use crate::config::TargetDriver;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

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
    /// A sysfs write failed: SCST refused the line, or the file could not be opened.
    #[error("writing \"{line}\" to {file}: {source}{hint}", file = .path.display(), hint = write_hint(.line, .source))]
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

fn load_hint(driver: &TargetDriver) -> &'static str {
    match driver {
        TargetDriver::ScstLocal => "modprobe scst_local",
        TargetDriver::Iscsi => "modprobe iscsi-scst and start iscsi-scstd",
        TargetDriver::CopyManager => "modprobe scst (the copy manager is part of it)",
    }
}

/// What to do about a refused line, from its errno and verb.
fn write_hint(line: &str, source: &io::Error) -> String {
    let verb = line.split_whitespace().next().unwrap_or("");
    let hint = match (source.raw_os_error(), verb) {
        (Some(libc::EEXIST), "add") => "the LUN is taken: pick another lun (or `del` it on the target)",
        (Some(libc::EEXIST), "add_target") => "the target exists already",
        (Some(libc::EINVAL | libc::ENOENT | libc::ENODEV), "add") => {
            "SCST does not know the device or the target: is the disk registered (serve running) and the target name right?"
        }
        (Some(libc::EINVAL | libc::ENOENT), "del") => "the LUN is gone already (removed by hand?)",
        (Some(libc::ETIMEDOUT | libc::EAGAIN), _) => {
            "SCST waited too long for an answer (ATTACH_SESS, 5 s): are the disk's workers serving?"
        }
        (Some(libc::EBUSY), _) => "SCST is busy (a suspend or another configuration change): retry",
        (Some(libc::EACCES | libc::EPERM | libc::EROFS), _) => {
            "no write access to SCST's sysfs: run as root, with ReadWritePaths=/sys/kernel/scst_tgt in the unit"
        }
        (Some(libc::ENOENT), _) => "the file is missing: is the target driver loaded and the target created?",
        (Some(libc::EISDIR), _) => "that path is a directory, not an SCST attribute: is the sysfs root right?",
        _ => return String::new(),
    };
    format!(" ({hint})")
}

/// Writes export blocks under an SCST sysfs root.
#[derive(Clone, Debug)]
pub struct Exporter {
    root: PathBuf,
}

/// One step `apply` did, undone by `remove`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// `add_target` on the iscsi driver: ours to delete.
    CreatedTarget { target: String },
    /// `add DEVICE LUN`.
    Lun {
        driver: TargetDriver,
        target: String,
        lun: u32,
    },
}

/// The exports applied for one device, to describe and remove at stop.
#[derive(Debug)]
#[must_use = "exports stay in SCST until removed"]
pub struct AppliedExports {
    root: PathBuf,
    steps: Vec<Step>,
}

impl Exporter {
    /// An exporter for the sysfs tree at `root` (`/sys/kernel/scst_tgt`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Check what can be checked before anything is registered, so that a bad export block
    /// never leaves half a configuration: each driver is loaded, each name is usable, each
    /// scst_local target exists (iscsi targets are created when absent).
    ///
    /// # Errors
    /// The first problem found.
    pub fn preflight(&self, specs: &[ExportSpec]) -> Result<(), ExportError> {
        for spec in specs {
            check_name(&spec.target)?;
            let driver = driver_dir(&self.root, spec.driver);
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
                _ => {}
            }
        }
        Ok(())
    }

    /// Add `device` to every LUN of `specs`, in order. On a failure, what was applied is
    /// undone (in reverse) before the error is returned.
    ///
    /// # Errors
    /// The first failure; failures of the undo are logged.
    pub fn apply(&self, device: &str, specs: &[ExportSpec]) -> Result<AppliedExports, ExportError> {
        let mut applied = AppliedExports {
            root: self.root.clone(),
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
        let driver = driver_dir(&self.root, TargetDriver::Iscsi);
        let luns_dir = driver.join(target).join("luns");
        let luns = match std::fs::read_dir(&luns_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
                .count(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(ExportError::Read {
                    path: luns_dir,
                    source,
                })
            }
        };
        if luns > 0 {
            return Ok(false);
        }
        write_line(&driver.join("mgmt"), &format!("del_target {target}"))?;
        Ok(true)
    }

    fn apply_one(&self, device: &str, spec: &ExportSpec, steps: &mut Vec<Step>) -> Result<(), ExportError> {
        check_name(&spec.target)?;
        let driver = driver_dir(&self.root, spec.driver);
        let target = driver.join(&spec.target);
        // Only a directory is a target: SCST creates one per target, synchronously with the
        // `add_target` write.
        if spec.driver == TargetDriver::Iscsi && !is_dir(&target) {
            write_line(&driver.join("mgmt"), &format!("add_target {}", spec.target))?;
            steps.push(Step::CreatedTarget {
                target: spec.target.clone(),
            });
        }
        write_line(&target.join("luns/mgmt"), &format!("add {device} {}", spec.lun))?;
        steps.push(Step::Lun {
            driver: spec.driver,
            target: spec.target.clone(),
            lun: spec.lun,
        });
        if spec.enable && spec.driver == TargetDriver::Iscsi {
            write_line(&target.join("enabled"), "1")?;
            write_line(&driver.join("enabled"), "1")?;
        }
        Ok(())
    }
}

impl AppliedExports {
    /// The LUNs, as `driver/target/lun`.
    pub fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Lun { driver, target, lun } => Some(format!("{}/{target}/{lun}", driver.sysfs_name())),
                Step::CreatedTarget { .. } => None,
            })
            .collect()
    }

    /// The iSCSI targets `apply` created (`add_target`). Other disks of the service may add
    /// their LUNs to them, so a disk's teardown leaves them ([`AppliedExports::remove_luns`])
    /// and the service deletes each once no disk of it exports there
    /// ([`Exporter::delete_target`]).
    pub fn created_targets(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::CreatedTarget { target } => Some(target.clone()),
                Step::Lun { .. } => None,
            })
            .collect()
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

    /// Remove everything applied, in reverse order: `del LUN`, then `del_target` for targets
    /// this `apply` created (the undo of a failed `apply`, when no other disk can have used
    /// them yet). Best effort: every step is attempted; the failures are returned.
    pub fn remove(self) -> Vec<ExportError> {
        let mut errors = Vec::new();
        for step in self.steps.iter().rev() {
            let result = match step {
                Step::Lun { driver, target, lun } => write_line(
                    &driver_dir(&self.root, *driver).join(target).join("luns/mgmt"),
                    &format!("del {lun}"),
                ),
                Step::CreatedTarget { target } => write_line(
                    &driver_dir(&self.root, TargetDriver::Iscsi).join("mgmt"),
                    &format!("del_target {target}"),
                ),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
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

/// One `echo LINE > PATH`: open (no create, no truncate: sysfs attributes exist or the write
/// is wrong), one write of the line and its newline, close.
fn write_line(path: &Path, line: &str) -> Result<(), ExportError> {
    let error = |source: io::Error| ExportError::Write {
        path: path.to_path_buf(),
        line: line.to_string(),
        source,
    };
    log::info!("sysfs: echo \"{line}\" > {}", path.display());
    let mut file = OpenOptions::new().write(true).open(path).map_err(error)?;
    let text = format!("{line}\n");
    // One write, not write_all: SCST takes each write as one command, so a short write would
    // be a truncated command, not something to complete with a second one.
    let written = file.write(text.as_bytes()).map_err(error)?;
    if written != text.len() {
        return Err(error(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {} bytes", text.len()),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
