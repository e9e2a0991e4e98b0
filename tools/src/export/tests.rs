//! A fake SCST sysfs in a temporary directory: every mgmt/enabled attribute is a FIFO (made with
//! `mkfifo(1)`: this crate forbids unsafe code), and one reader thread opens the FIFOs in the
//! order the test expects, recording each line. A write to any other attribute, or in another
//! order, finds no reader and blocks: the exporter then misses the bound and the test fails
//! with what was recorded. The kernel creates an iSCSI target's directory synchronously with
//! the `add_target` write, which a FIFO cannot do; so the fake target's files exist from the
//! start behind a symlink, which the exporter (rightly: SCST targets are directories) does not
//! take for an existing target.

use super::*;
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

/// How long the exporter, and then the reader's last lines, may take: generous, as a loaded
/// 2-CPU machine running the other tests' threads and `mkfifo` processes can stall either for
/// seconds; only a failing test waits for it.
const BOUND: Duration = Duration::from_secs(30);
const IQN: &str = "iqn.2026-11.com.example:accel";

struct FakeSysfs {
    dir: tempfile::TempDir,
    /// One fake at a time in this process: run in parallel under load, the tests now and then
    /// lost a line (missing at the end, or the exporter blocked on it); never when run one at a
    /// time (150 runs under two CPU hogs), so they take turns.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo(1) runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

impl FakeSysfs {
    /// scst_local with `scst_local_tgt`, iscsi with no target but IQN's files behind a symlink.
    fn new() -> Self {
        // A test that failed while holding the turn poisons it; the next one goes on.
        let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        mkfifo(&root.join("targets/scst_local/scst_local_tgt/luns/mgmt"));
        mkfifo(&root.join("targets/copy_manager/copy_manager_tgt/luns/mgmt"));
        mkfifo(&root.join("targets/iscsi/mgmt"));
        mkfifo(&root.join("targets/iscsi/enabled"));
        let real = root.join("targets/iscsi/.created-by-add_target");
        mkfifo(&real.join("luns/mgmt"));
        mkfifo(&real.join("enabled"));
        std::os::unix::fs::symlink(&real, root.join("targets/iscsi").join(IQN)).expect("symlink");
        Self { dir, _turn: turn }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Run `op` while a reader takes one line from each of `expected` (relative paths), in
    /// order; returns `op`'s result and the (path, line) pairs read.
    fn run<T: Send + 'static>(
        &self,
        expected: &[&str],
        op: impl FnOnce() -> T + Send + 'static,
    ) -> (T, Vec<(String, String)>) {
        let (line_tx, line_rx) = mpsc::channel();
        let root = self.root().to_path_buf();
        let paths: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let mut next = 0;
            // An open of the attribute the next expected line goes to, made before the last
            // open of that same attribute closed (see below).
            let mut again: Option<std::fs::File> = None;
            while let Some(rel) = paths.get(next) {
                let path = root.join(rel);
                let text = match again.take() {
                    Some(mut rw) => {
                        let text = read_line(&mut rw);
                        again = Some(rw);
                        text
                    }
                    None => {
                        let mut text = String::new();
                        let mut file = std::fs::File::open(&path).expect("open the fake attribute");
                        file.read_to_string(&mut text).expect("read the fake attribute");
                        // The next line for this attribute too: open it again before this open
                        // closes. Closed first, a write landing between this read's end of file
                        // and the close would go with the FIFO's buffer (no reader and no
                        // writer left), and the next open would wait for it for ever. Read and
                        // write, so that reads wait for data instead of seeing end of file.
                        let lines = text.split_inclusive('\n').count();
                        if paths.get(next + lines) == Some(rel) {
                            again = Some(
                                std::fs::OpenOptions::new()
                                    .read(true)
                                    .write(true)
                                    .open(&path)
                                    .expect("open the fake attribute again"),
                            );
                        }
                        text
                    }
                };
                // Back-to-back writes to one attribute can reach one open of its FIFO: each
                // line counts as one write, to the file it was read from.
                for line in text.split_inclusive('\n') {
                    next += 1;
                    if line_tx.send((rel.clone(), line.to_string())).is_err() {
                        return;
                    }
                }
                if paths.get(next) != Some(rel) {
                    again = None;
                }
            }
        });
        let (op_tx, op_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = op_tx.send(op());
        });
        let result = op_rx.recv_timeout(BOUND);
        let lines: Vec<(String, String)> = line_rx.try_iter().collect();
        let Ok(result) = result else {
            panic!("the exporter blocked on a write nobody expected; lines so far: {lines:?}");
        };
        // Lines the exporter wrote last may still be in the reader.
        let mut lines = lines;
        while lines.len() < expected.len() {
            match line_rx.recv_timeout(BOUND) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        (result, lines)
    }
}

/// Whole lines from `file` (an open that also writes, so a read waits for data): the exporter
/// writes one line per write(2).
fn read_line(file: &mut std::fs::File) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 256];
    while !bytes.ends_with(b"\n") {
        let n = file.read(&mut chunk).expect("read the fake attribute");
        bytes.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(bytes).expect("text")
}

/// What SCST makes with a LUN (`add DEVICE LUN`): `luns/LUN/device`, a link to the device's
/// directory. `luns_mgmt` is the LUN's `luns/mgmt`, relative to `root`. Made before the
/// exporter needs it: the fake's reader takes the `add` after the exporter's write returned.
fn lun_link(root: &Path, luns_mgmt: &str, lun: u32, device: &str) {
    let dir = root.join(luns_mgmt).with_file_name(lun.to_string());
    std::fs::create_dir_all(&dir).expect("mkdir lun");
    std::os::unix::fs::symlink(root.join("devices").join(device), dir.join("device")).expect("device link");
}

fn spec(driver: TargetDriver, target: &str, lun: u32, enable: bool) -> ExportSpec {
    ExportSpec {
        driver,
        target: target.into(),
        lun,
        enable,
    }
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(p, l)| (p.to_string(), format!("{l}\n")))
        .collect()
}

fn paths<'a>(expected: &[(&'a str, &str)]) -> Vec<&'a str> {
    expected.iter().map(|(p, _)| *p).collect()
}

const LOCAL_LUNS: &str = "targets/scst_local/scst_local_tgt/luns/mgmt";
const ISCSI_MGMT: &str = "targets/iscsi/mgmt";
const ISCSI_ENABLED: &str = "targets/iscsi/enabled";
const IQN_LUNS: &str = "targets/iscsi/iqn.2026-11.com.example:accel/luns/mgmt";
const IQN_ENABLED: &str = "targets/iscsi/iqn.2026-11.com.example:accel/enabled";

#[test]
fn export_scst_local_adds_and_removes_the_lun() {
    let fake = FakeSysfs::new();
    let exporter = Exporter::new(fake.root());
    let specs = vec![spec(TargetDriver::ScstLocal, "scst_local_tgt", 3, true)];
    exporter.preflight(&specs).expect("preflight");

    let add = [(LOCAL_LUNS, "add accel0 3")];
    let e = exporter.clone();
    let (applied, lines) = fake.run(&paths(&add), move || e.apply("accel0", &specs));
    assert_eq!(lines, pairs(&add));
    let applied = applied.expect("apply");
    assert_eq!(applied.describe(), vec!["scst_local/scst_local_tgt/3"]);

    lun_link(fake.root(), LOCAL_LUNS, 3, "accel0");
    let del = [(LOCAL_LUNS, "del 3")];
    let (errors, lines) = fake.run(&paths(&del), move || applied.remove());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(lines, pairs(&del));
}

const CM_LUNS: &str = "targets/copy_manager/copy_manager_tgt/luns/mgmt";

/// The copy manager's LUN (docs/xcopy.md): added with the others, removed in reverse, no
/// `enabled` written; a wrong target is named as the copy manager's.
#[test]
fn export_copy_manager_adds_and_removes_its_lun() {
    let fake = FakeSysfs::new();
    let exporter = Exporter::new(fake.root());
    let specs = vec![
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, true),
        spec(TargetDriver::CopyManager, "copy_manager_tgt", 5, true),
    ];
    exporter.preflight(&specs).expect("preflight");
    let add = [(LOCAL_LUNS, "add accel0 0"), (CM_LUNS, "add accel0 5")];
    let e = exporter.clone();
    let (applied, lines) = fake.run(&paths(&add), move || e.apply("accel0", &specs));
    assert_eq!(lines, pairs(&add));
    let applied = applied.expect("apply");
    assert_eq!(
        applied.describe(),
        vec!["scst_local/scst_local_tgt/0", "copy_manager/copy_manager_tgt/5"]
    );
    lun_link(fake.root(), CM_LUNS, 5, "accel0");
    lun_link(fake.root(), LOCAL_LUNS, 0, "accel0");
    let del = [(CM_LUNS, "del 5"), (LOCAL_LUNS, "del 0")];
    let (errors, lines) = fake.run(&paths(&del), move || applied.remove());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(lines, pairs(&del));
    let err = exporter
        .preflight(&[spec(TargetDriver::CopyManager, "cm", 0, false)])
        .expect_err("not the copy manager's target");
    assert!(matches!(&err, ExportError::CopyManagerTarget { target, .. } if target == "cm"));
    assert!(err.to_string().contains("copy_manager_tgt"), "{err}");
}

#[test]
fn export_iscsi_creates_enables_and_removes_in_reverse() {
    let fake = FakeSysfs::new();
    let exporter = Exporter::new(fake.root());
    let specs = vec![
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false),
        spec(TargetDriver::Iscsi, IQN, 1, true),
    ];
    exporter.preflight(&specs).expect("preflight");

    let add = [
        (LOCAL_LUNS, "add accel0 0"),
        (ISCSI_MGMT, "add_target iqn.2026-11.com.example:accel"),
        (IQN_LUNS, "add accel0 1"),
        (IQN_ENABLED, "1"),
        (ISCSI_ENABLED, "1"),
    ];
    let e = exporter.clone();
    let (applied, lines) = fake.run(&paths(&add), move || e.apply("accel0", &specs));
    assert_eq!(lines, pairs(&add));
    let applied = applied.expect("apply");
    assert_eq!(
        applied.describe(),
        vec![
            "scst_local/scst_local_tgt/0",
            "iscsi/iqn.2026-11.com.example:accel/1"
        ]
    );

    lun_link(fake.root(), IQN_LUNS, 1, "accel0");
    lun_link(fake.root(), LOCAL_LUNS, 0, "accel0");
    let del = [
        (IQN_LUNS, "del 1"),
        (ISCSI_MGMT, "del_target iqn.2026-11.com.example:accel"),
        (LOCAL_LUNS, "del 0"),
    ];
    let (errors, lines) = fake.run(&paths(&del), move || applied.remove());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(lines, pairs(&del));
}

#[test]
fn export_iscsi_existing_target_is_neither_created_nor_deleted() {
    let fake = FakeSysfs::new();
    // A real directory: the target exists (made by hand or by scstadmin).
    let target = fake.root().join("targets/iscsi/iqn.2026-11.com.example:other");
    mkfifo(&target.join("luns/mgmt"));
    let exporter = Exporter::new(fake.root());
    let specs = vec![spec(
        TargetDriver::Iscsi,
        "iqn.2026-11.com.example:other",
        0,
        false,
    )];
    let luns = "targets/iscsi/iqn.2026-11.com.example:other/luns/mgmt";
    let e = exporter.clone();
    let (applied, lines) = fake.run(&[luns], move || e.apply("accel0", &specs));
    assert_eq!(lines, pairs(&[(luns, "add accel0 0")]));
    lun_link(fake.root(), luns, 0, "accel0");
    let (errors, lines) = fake.run(&[luns], move || applied.expect("apply").remove());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(lines, pairs(&[(luns, "del 0")]));
}

#[test]
fn export_failure_rolls_back_what_was_applied() {
    let fake = FakeSysfs::new();
    // The target's `enabled` is a directory: the write fails (EISDIR) after the target was
    // created and the LUN added.
    let enabled = fake.root().join("targets/iscsi/.created-by-add_target/enabled");
    std::fs::remove_file(&enabled).expect("rm fifo");
    std::fs::create_dir(&enabled).expect("mkdir");
    let exporter = Exporter::new(fake.root());
    let specs = vec![
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false),
        spec(TargetDriver::Iscsi, IQN, 1, true),
    ];
    lun_link(fake.root(), IQN_LUNS, 1, "accel0");
    lun_link(fake.root(), LOCAL_LUNS, 0, "accel0");
    let expected = [
        (LOCAL_LUNS, "add accel0 0"),
        (ISCSI_MGMT, "add_target iqn.2026-11.com.example:accel"),
        (IQN_LUNS, "add accel0 1"),
        // The failed write to `enabled` reads nothing; the undo, in reverse:
        (IQN_LUNS, "del 1"),
        (ISCSI_MGMT, "del_target iqn.2026-11.com.example:accel"),
        (LOCAL_LUNS, "del 0"),
    ];
    let e = exporter.clone();
    let (result, lines) = fake.run(&paths(&expected), move || e.apply("accel0", &specs));
    assert_eq!(lines, pairs(&expected));
    let err = result.expect_err("the enable write fails");
    let text = err.to_string();
    assert!(
        matches!(&err, ExportError::Write { line, source, .. } if line == "1" && source.raw_os_error() == Some(libc::EISDIR)),
        "{err:?}"
    );
    assert!(text.contains("enabled") && text.contains("\"1\""), "{text}");
}

#[test]
fn export_remove_attempts_every_step() {
    let fake = FakeSysfs::new();
    let exporter = Exporter::new(fake.root());
    let specs = vec![
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false),
        spec(TargetDriver::Iscsi, IQN, 1, false),
    ];
    let add = [
        (LOCAL_LUNS, "add accel0 0"),
        (ISCSI_MGMT, "add_target iqn.2026-11.com.example:accel"),
        (IQN_LUNS, "add accel0 1"),
    ];
    let e = exporter.clone();
    let (applied, _) = fake.run(&paths(&add), move || e.apply("accel0", &specs));
    let applied = applied.expect("apply");
    lun_link(fake.root(), IQN_LUNS, 1, "accel0");
    lun_link(fake.root(), LOCAL_LUNS, 0, "accel0");
    // The iSCSI LUN file vanishes: its `del` fails, the other steps still run.
    let luns = fake.root().join("targets/iscsi/.created-by-add_target/luns/mgmt");
    std::fs::remove_file(&luns).expect("rm");
    let del = [
        (ISCSI_MGMT, "del_target iqn.2026-11.com.example:accel"),
        (LOCAL_LUNS, "del 0"),
    ];
    let (errors, lines) = fake.run(&paths(&del), move || applied.remove());
    assert_eq!(lines, pairs(&del));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let text = errors[0].to_string();
    assert!(text.contains("\"del 1\"") && text.contains("luns/mgmt"), "{text}");
}

#[test]
fn export_preflight_reports_missing_driver_and_target() {
    let fake = FakeSysfs::new();
    let exporter = Exporter::new(fake.root());
    std::fs::remove_dir_all(fake.root().join("targets/iscsi")).expect("rm iscsi");

    let err = exporter
        .preflight(&[spec(TargetDriver::Iscsi, IQN, 0, true)])
        .expect_err("iscsi is not loaded");
    assert!(matches!(
        err,
        ExportError::DriverMissing {
            driver: TargetDriver::Iscsi,
            ..
        }
    ));
    assert!(err.to_string().contains("modprobe iscsi-scst"), "{err}");

    let err = exporter
        .preflight(&[spec(TargetDriver::ScstLocal, "no_such_tgt", 0, false)])
        .expect_err("the target does not exist");
    assert!(matches!(&err, ExportError::TargetMissing { target, .. } if target == "no_such_tgt"));
    assert!(err.to_string().contains("add_target no_such_tgt"), "{err}");

    let empty = Exporter::new(fake.root().join("nowhere"));
    let err = empty
        .preflight(&[spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false)])
        .expect_err("scst_local is not loaded");
    assert!(err.to_string().contains("modprobe scst_local"), "{err}");

    let err = exporter
        .preflight(&[spec(TargetDriver::ScstLocal, "../x", 0, false)])
        .expect_err("a path is no target name");
    assert!(matches!(err, ExportError::BadTargetName { .. }));

    exporter
        .preflight(&[spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false)])
        .expect("scst_local_tgt exists");
}

#[test]
fn export_errors_say_what_to_do() {
    let taken = ExportError::Write {
        path: PathBuf::from("/sys/kernel/scst_tgt/targets/scst_local/scst_local_tgt/luns/mgmt"),
        line: "add accel0 0".into(),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    };
    let text = taken.to_string();
    assert!(text.contains("the LUN is taken: pick another lun"), "{text}");
    assert!(
        text.contains("\"add accel0 0\"") && text.contains("luns/mgmt"),
        "{text}"
    );
    let denied = ExportError::Write {
        path: PathBuf::from("/sys/kernel/scst_tgt/targets/iscsi/mgmt"),
        line: "add_target x".into(),
        source: io::Error::from_raw_os_error(libc::EACCES),
    };
    assert!(denied.to_string().contains("ReadWritePaths"), "{denied}");
}

/// `delete_target` leaves a target that still holds a LUN (someone else's: `del_target` would
/// take it along), and deletes an empty one; a target gone already is no error.
#[test]
fn delete_target_leaves_a_target_with_luns_in_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let iscsi = dir.path().join("targets/iscsi");
    let lun = iscsi.join(IQN).join("luns/7");
    std::fs::create_dir_all(&lun).expect("mkdir");
    // A plain file stands in for the mgmt attribute: what was written stays readable.
    let mgmt = iscsi.join("mgmt");
    std::fs::write(&mgmt, "").expect("mgmt");
    std::fs::write(iscsi.join(IQN).join("luns/mgmt"), "").expect("luns mgmt");
    let exporter = Exporter::new(dir.path());
    assert!(!exporter.delete_target(IQN).expect("delete"), "a LUN is left");
    assert_eq!(std::fs::read_to_string(&mgmt).expect("read"), "");
    std::fs::remove_dir(&lun).expect("rmdir");
    assert!(exporter.delete_target(IQN).expect("delete"), "empty");
    assert_eq!(
        std::fs::read_to_string(&mgmt).expect("read"),
        format!("del_target {IQN}\n")
    );
    assert!(!exporter
        .delete_target("iqn.2026-12.com.example:gone")
        .expect("gone"));
}

/// SCST's answers where a file system cannot give them: writes of some lines refused with an
/// errno (EAGAIN: queued), `last_sysfs_mgmt_res` answering from a script (EAGAIN once the
/// script is spent); every other read from the file system. Every write attempted is recorded.
#[derive(Debug, Default)]
pub(crate) struct Script {
    refusals: Vec<(String, i32)>,
    results: std::sync::Mutex<std::collections::VecDeque<String>>,
    writes: std::sync::Mutex<Vec<String>>,
    /// A file whose existence each write notes (in `probed`): what was on disk when it came.
    probe: Option<PathBuf>,
    probed: std::sync::Mutex<Vec<bool>>,
}

impl Script {
    /// `line` (without its newline) refused with `errno`, every time.
    pub(crate) fn refuse(mut self, line: &str, errno: i32) -> Self {
        self.refusals.push((line.to_string(), errno));
        self
    }

    /// What `last_sysfs_mgmt_res` says, one answer per read; `None` is EAGAIN.
    fn results(self, answers: &[Option<&str>]) -> Self {
        // An empty answer stands for EAGAIN (`read`).
        *self.results.lock().expect("results") =
            answers.iter().map(|a| a.unwrap_or("").to_string()).collect();
        self
    }

    /// Note at each write whether `path` exists ([`Script::probed`]).
    fn probing(mut self, path: PathBuf) -> Self {
        self.probe = Some(path);
        self
    }

    /// Whether the probed file existed at each write, in order.
    fn probed(&self) -> Vec<bool> {
        self.probed.lock().expect("probed").clone()
    }

    /// The lines written, in order (refused ones included).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.writes.lock().expect("writes").clone()
    }
}

impl Attributes for Script {
    fn write(&self, _path: &Path, text: &str) -> io::Result<usize> {
        let line = text.trim_end_matches('\n');
        self.writes.lock().expect("writes").push(line.to_string());
        if let Some(probe) = &self.probe {
            self.probed.lock().expect("probed").push(probe.exists());
        }
        match self.refusals.iter().find(|(l, _)| l == line) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(text.len()),
        }
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        if path.ends_with(MGMT_RESULT) {
            return match self.results.lock().expect("results").pop_front() {
                Some(answer) if !answer.is_empty() => Ok(format!("{answer}\n")),
                _ => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            };
        }
        std::fs::read_to_string(path)
    }
}

/// Short waits: a test of the bound waits it out.
const QUICK: MgmtWait = MgmtWait {
    bound: Duration::from_millis(40),
    interval: Duration::from_millis(2),
};

/// An SCST tree with scst_local's `scst_local_tgt` and the iscsi driver (no target), as
/// directories; the exporter's writes go to `script`.
fn scripted(script: Script) -> (tempfile::TempDir, Arc<Script>, Exporter) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("targets/scst_local/scst_local_tgt/luns")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("targets/iscsi")).expect("mkdir");
    let script = Arc::new(script);
    let exporter = Exporter::with_io(dir.path(), script.clone(), QUICK);
    (dir, script, exporter)
}

/// A reader of `answers` in turn (`None`: EAGAIN), counting its reads.
fn answers(
    answers: &[Option<&str>],
) -> (
    impl FnMut() -> io::Result<String>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reads.clone();
    let mut answers: std::collections::VecDeque<Option<String>> =
        answers.iter().map(|a| a.map(str::to_string)).collect();
    let read = move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match answers.pop_front().flatten() {
            Some(text) => Ok(text),
            None => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        }
    };
    (read, reads)
}

/// `last_sysfs_mgmt_res` answers EAGAIN while commands are queued, then the last one's result.
#[test]
fn export_a_queued_command_s_result_is_polled_through_eagain() {
    let wait = MgmtWait {
        bound: Duration::from_secs(30),
        interval: Duration::from_millis(1),
    };
    let (read, reads) = answers(&[None, None, Some("0\n")]);
    assert!(matches!(await_queued(read, wait), Ok(Ok(()))));
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);

    let (read, _) = answers(&[None, Some("-16\n")]);
    let refused = await_queued(read, wait).expect("a result").expect_err("refused");
    assert_eq!(refused.raw_os_error(), Some(libc::EBUSY));

    let (read, _) = answers(&[Some("busy\n")]);
    assert!(matches!(await_queued(read, wait), Err(QueuedReason::Garbled(t)) if t == "busy"));
}

/// A result that never comes is waited for `bound`, no longer, read every `interval` (not
/// spun on); a wait without its bound fails here instead of hanging.
#[test]
fn export_a_queued_command_is_waited_for_at_most_the_bound() {
    let wait = MgmtWait {
        bound: Duration::from_millis(100),
        interval: Duration::from_millis(10),
    };
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reads.clone();
    let read = move || {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(n < 1000, "still polling after {n} reads: the wait has no bound");
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    };
    let began = Instant::now();
    let result = await_queued(read, wait);
    let took = began.elapsed();
    assert!(matches!(result, Err(QueuedReason::StillQueued)), "{result:?}");
    assert!(took >= wait.bound, "gave up after {took:?}");
    let reads = reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=12).contains(&reads),
        "{reads} reads in {took:?}: one per interval expected"
    );
}

/// A LUN `add` SCST queued (EAGAIN) and then finished is applied; one it then refused is its
/// errno, with that errno's hint.
#[test]
fn export_a_queued_command_ends_with_scst_s_result() {
    let specs = vec![spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false)];
    let (_dir, script, exporter) = scripted(
        Script::default()
            .refuse("add accel0 0", libc::EAGAIN)
            .results(&[None, Some("0")]),
    );
    let applied = exporter
        .apply("accel0", &specs)
        .expect("done once SCST finished it");
    assert_eq!(applied.describe(), vec!["scst_local/scst_local_tgt/0"]);
    assert_eq!(script.lines(), vec!["add accel0 0"]);

    let (_dir, _script, exporter) = scripted(
        Script::default()
            .refuse("add accel0 0", libc::EAGAIN)
            .results(&[Some("-17")]),
    );
    let err = exporter.apply("accel0", &specs).expect_err("refused once run");
    assert!(
        matches!(&err, ExportError::Write { source, .. } if source.raw_os_error() == Some(libc::EEXIST)),
        "{err:?}"
    );
    assert!(err.to_string().contains("the LUN is taken"), "{err}");
    assert_eq!(err.exit_code(), crate::exit::CONFIG);
}

/// An `add_target`, and a LUN `add`, still queued at the bound may apply later: the error says
/// so (69: a restart may mend it) and the undo removes them all the same, so that no orphan
/// target or LUN is left for a later run to take for someone else's.
#[test]
fn export_a_command_still_queued_at_the_bound_is_undone() {
    let iscsi = vec![spec(TargetDriver::Iscsi, IQN, 1, true)];
    let (_dir, script, exporter) =
        scripted(Script::default().refuse(&format!("add_target {IQN}"), libc::EAGAIN));
    let err = exporter
        .apply("accel0", &iscsi)
        .expect_err("no result within the bound");
    assert!(
        matches!(
            &err,
            ExportError::Queued {
                reason: QueuedReason::StillQueued,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("may still apply"), "{err}");
    assert_eq!(err.exit_code(), crate::exit::UNAVAILABLE);
    assert_eq!(
        script.lines(),
        vec![format!("add_target {IQN}"), format!("del_target {IQN}")]
    );

    let local = vec![spec(TargetDriver::ScstLocal, "scst_local_tgt", 2, false)];
    let (dir, script, exporter) = scripted(Script::default().refuse("add accel0 2", libc::EAGAIN));
    // SCST finished the `add` by the time the undo looks.
    lun_link(dir.path(), LOCAL_LUNS, 2, "accel0");
    let err = exporter
        .apply("accel0", &local)
        .expect_err("no result within the bound");
    assert!(matches!(&err, ExportError::Queued { .. }), "{err:?}");
    assert_eq!(script.lines(), vec!["add accel0 2", "del 2"]);
}

/// SCST removes a device's LUNs when it unregisters it, and an operator may have added another
/// device at the same number since: a `del` then would delete someone else's LUN. Only the
/// LUNs whose `device` link names this disk are deleted.
#[test]
fn export_removal_deletes_only_the_luns_that_hold_this_device() {
    let specs = vec![
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 0, false),
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 1, false),
        spec(TargetDriver::ScstLocal, "scst_local_tgt", 2, false),
    ];
    let (dir, script, exporter) = scripted(Script::default());
    let applied = exporter.apply("accel0", &specs).expect("apply");
    lun_link(dir.path(), LOCAL_LUNS, 0, "accel0");
    lun_link(dir.path(), LOCAL_LUNS, 1, "someone-else");
    // LUN 2 is gone.
    let errors = applied.remove_luns();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        script.lines(),
        vec!["add accel0 0", "add accel0 1", "add accel0 2", "del 0"]
    );
}

/// A failure a restart may mend exits 69 (restarted); one of the configuration 78 (not).
#[test]
fn export_failures_have_their_exit_class() {
    let write = |path: &str, line: &str, errno: i32| ExportError::Write {
        path: PathBuf::from(path),
        line: line.into(),
        source: io::Error::from_raw_os_error(errno),
    };
    let iscsi_mgmt = "/sys/kernel/scst_tgt/targets/iscsi/mgmt";
    let luns = "/sys/kernel/scst_tgt/targets/scst_local/scst_local_tgt/luns/mgmt";
    // iscsi-scstd not connected (EPERM) or not answering in 31 s (EBUSY), SCST busy (EAGAIN),
    // the handler late to answer ATTACH_SESS (EFAULT).
    for errno in [libc::EPERM, libc::EBUSY, libc::EAGAIN] {
        let e = write(iscsi_mgmt, &format!("add_target {IQN}"), errno);
        assert_eq!(e.exit_code(), crate::exit::UNAVAILABLE, "{e}");
    }
    assert_eq!(
        write(luns, "add accel0 0", libc::EFAULT).exit_code(),
        crate::exit::UNAVAILABLE
    );
    // EPERM and EBUSY outside iscsi-scst's files are no write access, not iscsi-scstd.
    for errno in [
        libc::EEXIST,
        libc::EINVAL,
        libc::ENOENT,
        libc::EACCES,
        libc::EROFS,
        libc::EISDIR,
        libc::EPERM,
        libc::EBUSY,
    ] {
        let e = write(luns, "add accel0 0", errno);
        assert_eq!(e.exit_code(), crate::exit::CONFIG, "{e}");
    }
    let queued = ExportError::Queued {
        path: PathBuf::from(luns),
        line: "add accel0 0".into(),
        waited: Duration::from_secs(60),
        reason: QueuedReason::StillQueued,
    };
    assert_eq!(queued.exit_code(), crate::exit::UNAVAILABLE);
    let missing = ExportError::TargetMissing {
        target: "t".into(),
        path: PathBuf::from("/x"),
    };
    assert_eq!(missing.exit_code(), crate::exit::CONFIG);

    // The hints name the cause of each.
    let text = write(iscsi_mgmt, "add_target x", libc::EPERM).to_string();
    assert!(text.contains("start iscsi-scstd"), "{text}");
    let text = write(iscsi_mgmt, "add_target x", libc::EBUSY).to_string();
    assert!(text.contains("iscsi-scstd did not answer"), "{text}");
    let text = write(luns, "add accel0 0", libc::EFAULT).to_string();
    assert!(text.contains("ATTACH_SESS"), "{text}");
    let text = write(luns, "add accel0 0", libc::EAGAIN).to_string();
    assert!(
        text.contains("another configuration change") && !text.contains("ATTACH_SESS"),
        "{text}"
    );
}

/// iscsi-scst refuses every target command while iscsi-scstd is not connected: the preflight
/// says so (69) when `open_state` is not `open`, and does not ask an iscsi-scst without it.
#[test]
fn export_preflight_requires_iscsi_scstd_connected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let iscsi = dir.path().join("targets/iscsi");
    std::fs::create_dir_all(&iscsi).expect("mkdir");
    let exporter = Exporter::new(dir.path());
    let specs = [spec(TargetDriver::Iscsi, IQN, 0, true)];
    exporter.preflight(&specs).expect("no open_state: not checked");
    std::fs::write(iscsi.join("open_state"), "closed\n").expect("write");
    let err = exporter
        .preflight(&specs)
        .expect_err("iscsi-scstd is not running");
    assert!(
        matches!(&err, ExportError::IscsiDaemon { state, .. } if state == "closed"),
        "{err:?}"
    );
    assert!(err.to_string().contains("start iscsi-scstd"), "{err}");
    assert_eq!(err.exit_code(), crate::exit::UNAVAILABLE);
    std::fs::write(iscsi.join("open_state"), "open\n").expect("write");
    exporter.preflight(&specs).expect("iscsi-scstd connected");
}

/// A restore that is not being stopped.
static NOT_STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// iscsi-scstd's exit deletes every iSCSI target (iscsi-scst's `iscsi_release` ->
/// `target_del_all`): the check finds the LUN gone, and a restore once iscsi-scstd is back
/// creates the target again when it is the service's, adds the LUN and enables both, and that
/// target is then the disk's to delete like one `apply` created. While iscsi-scstd is not
/// connected the restore writes nothing and says why (69); someone else's target is not made
/// again (its CHAP and initiator groups would be lost): its LUN waits for it.
#[test]
fn export_a_target_iscsi_scstd_took_away_is_created_again_with_its_lun() {
    let (dir, script, exporter) = scripted(Script::default());
    let root = dir.path();
    let iscsi = root.join("targets/iscsi");
    std::fs::write(iscsi.join("open_state"), "open\n").expect("write");
    let specs = vec![spec(TargetDriver::Iscsi, IQN, 0, true)];
    // SCST would make the target's directory at the `add_target`: made here by hand, with the
    // LUN the `add` makes, before and after the apply.
    std::fs::create_dir_all(iscsi.join(IQN).join("luns")).expect("mkdir");
    let mut applied = exporter.apply("accel0", &specs).expect("apply");
    assert!(applied.created_targets().is_empty(), "the target existed");
    lun_link(root, IQN_LUNS, 0, "accel0");
    let lun = format!("iscsi/{IQN}/0");
    assert_eq!(applied.check(), vec![(lun.clone(), LunNow::Ours)]);
    assert!(applied.gone(&specs).is_empty());

    std::fs::remove_dir_all(iscsi.join(IQN)).expect("iscsi-scstd exits: its targets go");
    assert_eq!(applied.check(), vec![(lun.clone(), LunNow::Gone)]);
    let gone = applied.gone(&specs);
    assert_eq!(gone, specs);

    let ours = [IQN.to_string()];
    std::fs::write(iscsi.join("open_state"), "closed\n").expect("write");
    let before = script.lines().len();
    let (restored, result) = exporter.restore("accel0", &gone, &ours, &NOT_STOPPING);
    assert!(
        matches!(result, Err(ExportError::IscsiDaemon { .. })),
        "{result:?}"
    );
    assert!(restored.describe().is_empty());
    assert_eq!(
        script.lines().len(),
        before,
        "nothing written without iscsi-scstd"
    );

    std::fs::write(iscsi.join("open_state"), "open\n").expect("write");
    // Not the service's target (it existed at the apply): someone else's settings would be
    // lost to a bare add_target, so it waits for its owner.
    let (restored, result) = exporter.restore("accel0", &gone, &[], &NOT_STOPPING);
    assert!(
        matches!(&result, Err(ExportError::NotOurTarget { target }) if target == IQN),
        "{result:?}"
    );
    assert!(restored.describe().is_empty());
    assert_eq!(
        script.lines().len(),
        before,
        "nothing written for someone else's target"
    );
    // Its owner makes it again: the LUN is added, and the target left for its owner to enable
    // (with the CHAP user and groups it may still be giving it).
    std::fs::create_dir_all(iscsi.join(IQN).join("luns")).expect("the owner's add_target");
    let (theirs, result) = exporter.restore("accel0", &gone, &[], &NOT_STOPPING);
    result.expect("the LUN added to the owner's target");
    assert_eq!(script.lines()[before..], ["add accel0 0".to_string()]);
    assert!(theirs.created_targets().is_empty());
    drop(theirs);
    // Taken away again, to be made by the service this time.
    std::fs::remove_dir_all(iscsi.join(IQN)).expect("iscsi-scstd exits again");
    let before = script.lines().len();
    // A service that stops writes nothing more.
    let (stopped, result) =
        exporter.restore("accel0", &gone, &ours, &std::sync::atomic::AtomicBool::new(true));
    result.expect("nothing tried");
    assert!(stopped.describe().is_empty());
    assert_eq!(script.lines().len(), before, "nothing written once stopping");
    let (restored, result) = exporter.restore("accel0", &gone, &ours, &NOT_STOPPING);
    result.expect("restored");
    assert_eq!(
        script.lines()[before..],
        [
            format!("add_target {IQN}"),
            "add accel0 0".to_string(),
            "1".to_string(),
            "1".to_string()
        ]
    );
    assert_eq!(restored.describe(), vec![lun.clone()]);
    assert_eq!(restored.created_targets(), vec![IQN.to_string()]);
    applied.absorb(restored);
    assert_eq!(applied.describe(), vec![lun], "the LUN is recorded once");
    assert_eq!(applied.created_targets(), vec![IQN.to_string()]);
}

/// A LUN number another device holds now (an operator's `del` and `add`) is reported, not
/// applied again: it is not ours to take back.
#[test]
fn export_a_lun_another_device_holds_now_is_left_alone() {
    let (dir, _script, exporter) = scripted(Script::default());
    let specs = vec![spec(TargetDriver::ScstLocal, "scst_local_tgt", 3, false)];
    let applied = exporter.apply("accel0", &specs).expect("apply");
    lun_link(dir.path(), LOCAL_LUNS, 3, "someone-else");
    assert_eq!(
        applied.check(),
        vec![(
            "scst_local/scst_local_tgt/3".to_string(),
            LunNow::HeldBy("someone-else".into())
        )]
    );
    assert!(applied.gone(&specs).is_empty());
}

/// A created iSCSI target is recorded before its `add_target` is written (a kill between the
/// two must leave a record, never a target without one), stays recorded while it exists, and
/// goes off the record when its `add_target` is refused or it is deleted.
#[test]
fn export_a_target_is_recorded_before_it_is_created() {
    let state = tempfile::tempdir().expect("state dir");
    let record = state.path().join(record::RECORD).join(IQN);
    let (dir, script, exporter) = scripted(Script::default().probing(record.clone()));
    let exporter = exporter.with_record(CreatedTargets::at(Some(state.path())));
    let specs = vec![spec(TargetDriver::Iscsi, IQN, 0, false)];
    let applied = exporter.apply("accel0", &specs).expect("apply");
    assert_eq!(script.lines()[0], format!("add_target {IQN}"));
    assert!(script.probed()[0], "recorded only after its add_target");
    assert!(record.exists());
    assert_eq!(applied.created_targets(), vec![IQN.to_string()]);
    // SCST made its directory; nobody else's LUN in it: deleted, and off the record.
    std::fs::create_dir_all(dir.path().join("targets/iscsi").join(IQN).join("luns")).expect("mkdir");
    drop(applied.remove_luns());
    assert!(exporter.delete_target(IQN).expect("deleted"));
    assert!(!record.exists(), "still recorded after its deletion");

    // Refused: never made, so not recorded.
    let (_dir, _script, refusing) =
        scripted(Script::default().refuse(&format!("add_target {IQN}"), libc::EINVAL));
    let refusing = refusing.with_record(CreatedTargets::at(Some(state.path())));
    refusing.apply("accel0", &specs).expect_err("refused");
    assert!(!record.exists(), "a refused add_target left a record");
}
