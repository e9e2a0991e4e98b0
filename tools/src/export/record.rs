//! The iSCSI targets this service created, kept in `<state_dir>/iscsi-targets` (one name a
//! line), so that a run after a kill -9 knows the targets the dead run created for its own:
//! without it, a target found at the start is someone else's, never deleted by the service,
//! and the one the dead run made stayed (empty, enabled) after every later stop.

use std::io;
use std::path::Path;
use std::path::PathBuf;

/// The record's file name in the state directory.
pub const RECORD: &str = "iscsi-targets";

/// Where the created targets are kept (nowhere: a service that keeps no state, the demo).
#[derive(Clone, Debug)]
pub struct CreatedTargets {
    path: Option<PathBuf>,
}

impl CreatedTargets {
    /// The record in `state_dir`, or none.
    pub fn at(state_dir: Option<&Path>) -> Self {
        Self {
            path: state_dir.map(|d| d.join(RECORD)),
        }
    }

    /// The targets an earlier run recorded; none when there is no record. An unreadable record
    /// is logged and taken for empty: the targets it named are then left in place, as before
    /// it existed.
    pub fn load(&self) -> Vec<String> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log::warn!(
                    "cannot read {}: {e}; the iSCSI targets an earlier run created are left in \
                     place (delete them by hand once empty)",
                    path.display()
                );
                Vec::new()
            }
        }
    }

    /// Record `targets`, replacing the record atomically
    /// (`state_file::write_atomically`). A failure is logged: the service goes on, and a later
    /// run may leave a target in place.
    pub fn save(&self, targets: &[String]) {
        let Some(path) = &self.path else {
            return;
        };
        if let Err(e) = write_atomically(path, targets) {
            log::warn!(
                "cannot record the iSCSI targets this service created in {}: {e}; after a crash \
                 a later run will leave them in place",
                path.display()
            );
        }
    }
}

fn write_atomically(path: &Path, targets: &[String]) -> io::Result<()> {
    let mut text = String::from(
        "# iSCSI targets scst-accel created; each is deleted at a stop once none of its disks\n\
         # exports there and nobody else's LUN is in it.\n",
    );
    for target in targets {
        text.push_str(target);
        text.push('\n');
    }
    crate::state_file::write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_what_was_saved_and_nothing_without_a_state_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = CreatedTargets::at(Some(dir.path()));
        assert!(record.load().is_empty(), "no record yet");
        record.save(&["iqn.a".into(), "iqn.b".into()]);
        assert_eq!(record.load(), vec!["iqn.a".to_string(), "iqn.b".to_string()]);
        record.save(&[]);
        assert!(record.load().is_empty());
        let none = CreatedTargets::at(None);
        none.save(&["iqn.a".into()]);
        assert!(none.load().is_empty());
    }
}
