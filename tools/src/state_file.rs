//! A file of the service's state directory replaced atomically: a crash at any point leaves
//! either the previous file or the whole new one, and once the write returns the new one
//! survives a power cut. (Identity state files are not replaced but linked into place, once:
//! `identity.rs`.)

use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Write `text` to `path`: its directory made when missing ([`create_dirs`]: 0700, the state
/// is the service's own), a temporary file beside it (0600) written and fsync'd, renamed over the name (atomic
/// on POSIX), then the directory fsync'd so that the rename itself is durable. The temporary
/// file ([`write_temporary`]) is removed on a failure.
///
/// # Errors
/// The first step that failed.
pub(crate) fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dirs(dir, sync_dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = write_temporary(dir, &name, text)?;
    let place = || -> io::Result<()> {
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    place().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Create `dir` and whichever of its ancestors are missing, mode 0700, each one's parent
/// fsync'd (with `sync_dir`) once it holds the new name: a directory's name lives in its
/// parent, so otherwise a crash could lose the directory, with the state file in it, after the
/// file's own fsync.
///
/// # Errors
/// The first mkdir (other than one another thread made meanwhile) or fsync that failed.
pub(crate) fn create_dirs(dir: &Path, sync_dir: fn(&Path) -> io::Result<()>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for &created in missing.iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(created) {
            Ok(()) => {}
            // Another start made it meanwhile: its parent is fsync'd here all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsync(2) a directory, so that the names made in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A temporary file in `dir` for the state file `name`, holding `text`, written and fsync'd
/// (0600), for the caller to put in place (rename, or link: `identity.rs`). Its name carries
/// the process id and a counter, unique within the process (two threads writing one state
/// file never share one). Removed again when the write fails.
///
/// # Errors
/// The create, write or fsync that failed.
pub(crate) fn write_temporary(dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.tmp{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    match write() {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_state_file_is_replaced_whole_with_its_modes_and_no_temporary_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/state.toml");
        write_atomically(&path, "one\n").expect("first write");
        write_atomically(&path, "two\n").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "two\n");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.toml")]);
    }
}
