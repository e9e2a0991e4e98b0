//! The iSCSI targets this service created, kept in the state directory as one empty file per
//! target in `<state_dir>/iscsi-targets/`, so that a run after a kill -9 knows the targets the
//! dead run created for its own: without it, a target found at the start is someone else's,
//! never deleted by the service, and the one the dead run made stayed (empty, enabled) after
//! every later stop.
//!
//! A target is recorded before its `add_target` is written (a kill between the two leaves a
//! record of a target that may not exist: its deletion then finds nothing), and its record
//! removed when its deletion begins, or when its `add_target` was refused. One file per target,
//! so that two disks' exports recording at once never rewrite each other's records.

use std::io;
use std::path::Path;
use std::path::PathBuf;

/// The record's directory in the state directory.
pub const RECORD: &str = "iscsi-targets";

/// Where the created targets are kept (nowhere: a service that keeps no state, the demo).
#[derive(Clone, Debug, Default)]
pub struct CreatedTargets {
    dir: Option<PathBuf>,
}

impl CreatedTargets {
    /// The record in `state_dir`, or none.
    pub fn at(state_dir: Option<&Path>) -> Self {
        Self {
            dir: state_dir.map(|d| d.join(RECORD)),
        }
    }

    /// The targets recorded (by this run or an earlier one); none when there is no record. An
    /// unreadable record is logged and taken for empty: the targets it named are then left in
    /// place, as before it existed.
    pub fn load(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut targets: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    // The atomic write's temporaries start with a dot; a target name cannot.
                    .filter(|name| !name.starts_with('.'))
                    .collect();
                targets.sort();
                targets
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log::warn!(
                    "cannot read {}: {e}; the iSCSI targets an earlier run created are left in \
                     place (delete them by hand once empty)",
                    dir.display()
                );
                Vec::new()
            }
        }
    }

    /// Record `target`, durably once this returns (an empty file, fsync'd, its directory too).
    /// A failure is logged: the service goes on, and a later run may leave the target in place.
    pub fn add(&self, target: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(target);
        if let Err(e) = crate::state_file::write_atomically(&path, "") {
            log::warn!(
                "cannot record iSCSI target {target} in {}: {e}; after a crash a later run will \
                 leave it in place",
                dir.display()
            );
        }
    }

    /// Take `target` off the record (its deletion begins, or it was never made); durable once
    /// this returns. A failure is logged: a later run then tries to delete it again, which
    /// finds it gone or someone else's LUNs in it, and leaves it.
    pub fn remove(&self, target: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let removed = std::fs::remove_file(dir.join(target))
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .and_then(|()| crate::state_file::sync_dir(dir));
        if let Err(e) = removed {
            log::warn!(
                "cannot take iSCSI target {target} off the record in {}: {e}",
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_what_was_added_and_nothing_without_a_state_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = CreatedTargets::at(Some(dir.path()));
        assert!(record.load().is_empty(), "no record yet");
        record.add("iqn.2026-12.com.example:b");
        record.add("iqn.2026-12.com.example:a");
        record.add("iqn.2026-12.com.example:a");
        assert_eq!(
            record.load(),
            vec![
                "iqn.2026-12.com.example:a".to_string(),
                "iqn.2026-12.com.example:b".to_string()
            ]
        );
        record.remove("iqn.2026-12.com.example:a");
        record.remove("iqn.2026-12.com.example:never");
        assert_eq!(record.load(), vec!["iqn.2026-12.com.example:b".to_string()]);
        let none = CreatedTargets::at(None);
        none.add("iqn.a");
        assert!(none.load().is_empty());
    }
}
