//! A TCMU disk's current WCE kept in the state directory (`STATE_DIR/mode/<disk>.toml`), so
//! that `serve --tcmu-adopt` after a kill serves the caching mode page the killed process
//! served.
//!
//! Under TCMU a killed `serve` leaves the disk's backstore, its ring and its LUNs in LIO, and
//! initiators are told nothing: they keep what MODE SENSE told them. One that cleared WCE
//! (Linux's sd then says "write through" and sends no PREFLUSH nor FUA) takes GOOD to a write
//! for durable. A process that adopted the backstore with the configured default, WCE 1 over a
//! file's page cache, would answer its writes from a volatile cache nothing flushes, and a
//! power cut would lose them. So the engine hands every change of the current WCE to this
//! record before the change takes effect ([`ModeRecorder`]: a MODE SELECT is answered only
//! after it, a reset's return to the default is recorded too), and a start that adopts the
//! backstore serves the recorded value ([`prepare`]).
//!
//! A start that creates the backstore serves the default and records it, so a later adoption
//! never finds a value older than this run. Restoring there too is not done: the LU is new to
//! the kernel (the earlier one was removed at a stop, or lost with the machine), SAM-5 has a
//! page that cannot be saved return to its default at power on, and an initiator that finds
//! the LU reads the page. An initiator whose SCSI device outlived the LU's removal (iSCSI keeps
//! the device of a LUN that went away) and that does not rescan believes what it read from the
//! old one; a disk that must stay written through whatever happens is configured so
//! (`write_cache = false`), which no initiator's belief can outlast.
//!
//! An adoption that finds no record (an earlier version served the disk) or one that cannot be
//! read serves WCE 0 and records it, warning: what initiators believe is not known, and WCE 0
//! is safe whatever they believe (one that believes WCE 1 goes on sending SYNCHRONIZE CACHE,
//! which is answered as ever); failing the start would take away the LU the adoption is there
//! to keep.

use scst_accel_hal::locks::LockToken;
use scst_accel_handler::scsi::CurrentMode;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::ModeRecorder;
use serde::Deserialize;
use serde::Serialize;
use std::io;
use std::path::Path;
use std::path::PathBuf;

/// The directory under the state directory that holds one file per TCMU disk.
const MODE_DIR: &str = "mode";

/// Why the mode state cannot be read or written. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModeStateError {
    /// The disk name cannot name a state file.
    #[error("disk name {0:?} cannot name a mode state file: use {rule}", rule = crate::disk::DISK_NAME_RULE)]
    DiskName(String),
    /// The file cannot be written.
    #[error("cannot record the disk's write cache state in {path}: {source}; make the state directory writable by the service (service.state_dir / --state-dir; the unit's StateDirectory=)")]
    Write {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file exists but cannot be read.
    #[error("cannot read the disk's write cache state {path}: {source}; fix its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file does not parse.
    #[error("the disk's write cache state {path} is corrupt ({reason}); a start that creates the backstore rewrites it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The file's contents.
#[derive(Debug, Deserialize, Serialize)]
struct ModeFile {
    /// WCE of the caching mode page the disk serves.
    wce: bool,
}

/// One disk's mode state file, and the [`ModeRecorder`] that writes it.
#[derive(Debug)]
pub struct ModeState {
    disk: String,
    path: PathBuf,
}

impl ModeState {
    /// The state of `disk_name` under `state_dir` (nothing read or written yet).
    ///
    /// # Errors
    /// [`ModeStateError::DiskName`] when the name cannot name a file.
    pub fn new(state_dir: &Path, disk_name: &str) -> Result<Self, ModeStateError> {
        if !crate::disk::valid_disk_name(disk_name) {
            return Err(ModeStateError::DiskName(disk_name.to_owned()));
        }
        Ok(Self {
            disk: disk_name.to_owned(),
            path: state_dir.join(MODE_DIR).join(format!("{disk_name}.toml")),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded mode; `None` when there is no file.
    ///
    /// # Errors
    /// [`ModeStateError::Read`] or [`ModeStateError::Corrupt`].
    pub fn load(&self) -> Result<Option<CurrentMode>, ModeStateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ModeStateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: ModeFile = toml::from_str(&text).map_err(|e| ModeStateError::Corrupt {
            path: self.path.clone(),
            reason: e.message().to_owned(),
        })?;
        Ok(Some(CurrentMode { wce: file.wce }))
    }

    /// Record `mode`, durably once this returns (`state_file::write_atomically`:
    /// atomic, fsync'd, the directory too).
    ///
    /// # Errors
    /// [`ModeStateError::Write`].
    pub fn store(&self, mode: CurrentMode) -> Result<(), ModeStateError> {
        let err = |source: io::Error| ModeStateError::Write {
            path: self.path.clone(),
            source,
        };
        let body = toml::to_string(&ModeFile { wce: mode.wce }).map_err(|e| err(io::Error::other(e)))?;
        let text = format!(
            "# The caching mode page's WCE that disk {:?} serves, kept by scst-accel so that\n\
             # `serve --tcmu-adopt` after a kill serves it again; a start that creates the\n\
             # backstore rewrites it with the default.\n{body}",
            self.disk
        );
        crate::state_file::write_atomically(&self.path, &text).map_err(err)
    }
}

impl ModeRecorder for ModeState {
    fn record(&self, mode: CurrentMode) -> Result<(), String> {
        self.store(mode).map_err(|e| e.to_string())?;
        log::info!(
            "disk {}: WCE {} recorded in {}",
            self.disk,
            u8::from(mode.wce),
            self.path.display()
        );
        Ok(())
    }
}

/// Before a TCMU disk's ring is served: on a backstore `adopted` from a killed process, serve
/// the WCE that process recorded (WCE 0 when there is no usable record, see the module doc);
/// on one just created, record the default the engine serves. Then every change is recorded
/// in `state` before it takes effect ([`Disk::record_mode_with`]).
///
/// # Errors
/// A start that creates the backstore and cannot record the default
/// ([`ModeStateError::Write`]): a later adoption could find an older run's value. An adopted
/// one whose record cannot be written only logs it (its LU stays served; a MODE SELECT that
/// changes WCE is then refused until the state directory is writable).
pub fn prepare(engine: &Disk, state: ModeState, adopted: bool) -> Result<(), ModeStateError> {
    let name = state.disk.clone();
    if adopted {
        let (mode, record) = match state.load() {
            Ok(Some(mode)) if mode.wce && !engine.current_mode().wce => {
                // `write_cache = false` set since: written through is safe whatever initiators
                // believe, and it is the operator's lasting choice.
                log::warn!(
                    "disk {name}: adopted: the earlier process served WCE 1 ({}), but the disk is \
                     configured write_cache = false now: serving WCE 0",
                    state.path.display()
                );
                (CurrentMode { wce: false }, true)
            }
            Ok(Some(mode)) => {
                log::info!(
                    "disk {name}: adopted: serving WCE {} as the earlier process recorded it ({})",
                    u8::from(mode.wce),
                    state.path.display()
                );
                (mode, false)
            }
            Ok(None) => {
                log::warn!(
                    "disk {name}: adopted, with no record of the WCE the earlier process served \
                     ({} absent: an earlier version?): serving WCE 0, written through, which is \
                     safe whatever initiators believe; a MODE SELECT or a LOGICAL UNIT RESET \
                     changes it, and so does a start that creates the backstore",
                    state.path.display()
                );
                (CurrentMode { wce: false }, true)
            }
            Err(e) => {
                log::warn!(
                    "disk {name}: adopted: {e}; serving WCE 0, written through, which is safe \
                     whatever initiators believe"
                );
                (CurrentMode { wce: false }, true)
            }
        };
        engine.restore_mode(&mut LockToken::root(), mode);
        if record {
            if let Err(e) = state.store(mode) {
                log::error!("disk {name}: {e}");
            }
        }
    } else {
        state.store(engine.current_mode())?;
    }
    if engine.record_mode_with(Box::new(state)).is_err() {
        log::error!("disk {name}: its engine records its mode elsewhere already; not here");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentitySpec;
    use scst_accel_handler::scsi::Plan;
    use scst_accel_handler::store::ram::RamStore;
    use scst_accel_handler::store::Store;
    use scst_accel_handler::store::StoreStatus;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scst-accel-mode-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The engine of a TCMU disk named `name` over a store with a volatile cache (a file
    /// store's page cache), as `tcmu::start_disk` builds it: WCE 1 by default.
    fn engine(name: &str) -> Disk {
        engine_with(name, true)
    }

    fn engine_with(name: &str, write_cache: bool) -> Disk {
        let mut info = RamStore::new(512, 1024, 64).info();
        info.volatile_cache = true;
        let identity =
            crate::identity::resolve(name, &IdentitySpec::default(), None, None).expect("identity");
        let args = crate::disk::DiskArgs {
            name: name.into(),
            write_cache,
            ..crate::disk::DiskArgs::default()
        };
        Disk::try_new(args.disk_config(&info, &identity, false)).expect("disk")
    }

    /// `write_cache = false` set between the kill and the adoption: the recorded WCE 1 is not
    /// served over it (written through is safe whatever initiators believe), and 0 is recorded.
    #[test]
    fn an_adoption_under_write_cache_false_serves_wce_0_over_a_recorded_1() {
        let dir = temp_dir("adopt-wt");
        let state = || ModeState::new(&dir, "d2").expect("state");
        prepare(&engine("d2"), state(), false).expect("a fresh start records WCE 1");
        assert_eq!(state().load().expect("load"), Some(CurrentMode { wce: true }));
        let adopting = engine_with("d2", false);
        prepare(&adopting, state(), true).expect("adopt");
        assert_eq!(wce(&adopting), (false, false));
        assert_eq!(state().load().expect("load"), Some(CurrentMode { wce: false }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn run(disk: &Disk, cdb: &[u8], data: &[u8]) -> Plan {
        disk.start(&mut LockToken::root(), cdb, &data)
    }

    /// Current (PC 00b) and default (PC 10b) WCE, from MODE SENSE(6) of the caching page.
    fn wce(disk: &Disk) -> (bool, bool) {
        let sense = |pc: u8| match run(disk, &[0x1A, 0x08, (pc << 6) | 0x08, 0, 0xFF, 0], &[]) {
            Plan::Done(r) => r.data[6] & 0x04 != 0,
            Plan::Io(io) => panic!("MODE SENSE planned {io:?}"),
        };
        (sense(0), sense(2))
    }

    /// MODE SELECT(6) of the caching page with WCE 0, answered (its flush run): GOOD.
    fn clear_wce(disk: &Disk) {
        let mut param = vec![0u8; 4];
        param.extend_from_slice(&[0x08, 0x12, 0]);
        param.resize(24, 0);
        match run(disk, &[0x15, 0x10, 0, 0, 24, 0], &param) {
            Plan::Io(flush) => match disk.finish(&flush, StoreStatus::Good) {
                Plan::Done(r) => assert_eq!(r.status, 0, "{r:?}"),
                Plan::Io(io) => panic!("{io:?}"),
            },
            Plan::Done(r) => panic!("WCE 1 -> 0 flushes first: {r:?}"),
        }
    }

    /// An initiator clears WCE on a disk that started fresh; the process is killed (the
    /// engine dropped, nothing else run); a new process adopts the backstore and builds the
    /// disk as the start does (same configuration, then `prepare` with adopted): it serves WCE
    /// 0, the default staying 1. A start that creates the backstore instead serves the default
    /// and records it, so a later adoption serves that.
    #[test]
    fn an_adopting_start_serves_the_wce_an_initiator_set_and_a_fresh_one_the_default() {
        let dir = temp_dir("adopt");
        let state = || ModeState::new(&dir, "d0").expect("state");
        let first = engine("d0");
        prepare(&first, state(), false).expect("a fresh start records the default");
        assert_eq!(state().load().expect("load"), Some(CurrentMode { wce: true }));
        assert_eq!(wce(&first), (true, true));
        clear_wce(&first);
        assert_eq!(
            state().load().expect("load"),
            Some(CurrentMode { wce: false }),
            "recorded before the GOOD"
        );
        drop(first); // kill -9: the LUN stays in LIO

        let adopting = engine("d0");
        assert_eq!(wce(&adopting), (true, true), "built from the configuration");
        prepare(&adopting, state(), true).expect("adopt");
        assert_eq!(wce(&adopting), (false, true), "current as the initiator left it");
        assert!(matches!(
            run(&adopting, &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512]),
            Plan::Io(io) if matches!(io.op, scst_accel_handler::store::StoreOp::Write { fua: true, .. })
        ));
        // A reset there returns to the default, recorded as such.
        adopting.reset(&mut LockToken::root());
        assert_eq!(state().load().expect("load"), Some(CurrentMode { wce: true }));
        clear_wce(&adopting);
        drop(adopting);

        let fresh = engine("d0");
        prepare(&fresh, state(), false).expect("fresh");
        assert_eq!(wce(&fresh), (true, true), "a new LU: the default");
        assert_eq!(
            state().load().expect("load"),
            Some(CurrentMode { wce: true }),
            "and recorded, so no later adoption finds the older run's 0"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An adoption with no record, or one that does not parse, serves WCE 0 (safe whatever
    /// initiators believe) and records it; the file is written atomically (no temporary file
    /// left, mode 0600 in a 0700 directory).
    #[test]
    fn an_adoption_without_a_usable_record_serves_wce_0() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("norecord");
        let state = || ModeState::new(&dir, "d1").expect("state");
        let adopting = engine("d1");
        prepare(&adopting, state(), true).expect("adopt");
        assert_eq!(wce(&adopting), (false, true));
        assert_eq!(state().load().expect("load"), Some(CurrentMode { wce: false }));
        let mode_dir = dir.join(MODE_DIR);
        let names: Vec<_> = std::fs::read_dir(&mode_dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["d1.toml"], "no temporary file left");
        let perm = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!((perm(&mode_dir), perm(state().path())), (0o700, 0o600));

        std::fs::write(state().path(), "wce = \"yes\"\n").expect("corrupt it");
        assert!(matches!(state().load(), Err(ModeStateError::Corrupt { .. })));
        let adopting = engine("d1");
        prepare(&adopting, state(), true).expect("adopt");
        assert_eq!(wce(&adopting), (false, true));
        assert_eq!(
            state().load().expect("rewritten"),
            Some(CurrentMode { wce: false })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh start that cannot record the default fails, saying what to do; a name that
    /// cannot name a file is refused.
    #[test]
    fn a_fresh_start_that_cannot_record_fails() {
        let dir = temp_dir("unwritable");
        std::fs::create_dir_all(&dir).expect("dir");
        // A file where the mode directory should be: nothing can be written under it, also
        // as root.
        std::fs::write(dir.join(MODE_DIR), "").expect("blocker");
        let e = prepare(&engine("d2"), ModeState::new(&dir, "d2").expect("state"), false)
            .expect_err("cannot record");
        assert!(e.to_string().contains("writable"), "{e}");
        assert!(matches!(
            ModeState::new(&dir, "../x"),
            Err(ModeStateError::DiskName(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
