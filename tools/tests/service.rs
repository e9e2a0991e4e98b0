//! The appliance service in-process on the loopback kernel: many disks at once, a failed disk
//! torn down alone, exit-code classes of start failures.

use scst_accel::backend::BoardArg;
use scst_accel::config::DiskSpec;
use scst_accel::config::IdentitySpec;
use scst_accel::config::ServiceSettings;
use scst_accel::disk::DiskArgs;
use scst_accel::exit;
use scst_accel::service::KernelSide;
use scst_accel::service::Service;
use scst_accel::service::StartOptions;
use scst_accel::status::DiskSnapshot;
use scst_accel::status::DiskState;
use scst_accel::status::ServiceView;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use std::time::Duration;
use std::time::Instant;

fn disk(name: &str, board: BoardArg, size: u64, block_size: u32) -> DiskSpec {
    DiskSpec {
        args: DiskArgs {
            name: name.into(),
            size,
            block_size,
            ..DiskArgs::default()
        },
        board,
        pci: None,
        inject: Vec::new(),
        read_only: false,
        thin_provisioning: false,
        identity: IdentitySpec::default(),
        exports: Vec::new(),
        prealloc: 0,
        prealloc_size: 128 << 10,
    }
}

/// Identities persist in a fresh directory per service (kept after the test: a few bytes in
/// the system's temp directory), never in /var/lib/scst-accel.
fn settings() -> ServiceSettings {
    ServiceSettings {
        stop_timeout: Duration::from_secs(15),
        state_dir: tempfile::tempdir().expect("temp dir").keep(),
        ..ServiceSettings::default()
    }
}

/// One initiator session on `device`, LUN 0.
fn attach(kernel: &LoopbackKernel, device: &str) -> scst_accel_handler::loopback::Session {
    let spec = scst_accel_handler::loopback::SessionSpec {
        initiator_name: format!("iqn.2026-12.io.scst-accel.test:{device}"),
        target_name: "iqn.2026-12.io.scst-accel.test:target".into(),
        lun: 0,
        rd_only: false,
    };
    kernel.attach_session(device, spec).expect("attach")
}

fn loopback() -> (LoopbackKernel, KernelSide) {
    let kernel = LoopbackKernel::new(KernelConfig::default());
    (kernel.clone(), KernelSide::Loopback(kernel))
}

/// Snapshots are answered by the supervisor: run it on this thread while asking from another.
fn snapshots(service: &mut Service) -> Vec<DiskSnapshot> {
    let handle = service.handle();
    std::thread::scope(|s| {
        let asker = s.spawn(move || handle.snapshot().expect("answered"));
        while !asker.is_finished() {
            service.supervise(Duration::from_millis(10));
        }
        asker.join().expect("asker")
    })
}

fn snapshot_states(service: &mut Service) -> Vec<(String, DiskState)> {
    snapshots(service)
        .into_iter()
        .map(|d| (d.name, d.state))
        .collect()
}

#[test]
fn three_boards_serve_at_once_and_stop_cleanly() {
    let (kernel, side) = loopback();
    let mut service = Service::start(
        settings(),
        vec![
            disk("svc-sim", BoardArg::Sim, 64 << 20, 4096),
            disk("svc-nvme", BoardArg::NvmeSim, 64 << 20, 512),
            disk("svc-ram", BoardArg::Ram, 32 << 20, 4096),
        ],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 3, "{:?}", service.start_failures());
    assert_eq!(service.status_line(), "3 disks serving, 0 failed");
    assert_eq!(kernel.registered_devices().len(), 3);
    let states = snapshot_states(&mut service);
    assert!(states.iter().all(|(_, s)| *s == DiskState::Serving), "{states:?}");
    assert_eq!(service.info("svc-nvme").map(|i| i.block_size), Some(512));
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), 0);
    for o in &outcomes {
        assert_eq!(o.state, DiskState::Stopped, "{}", o.name);
        let backend = o.backend.as_ref().expect("released");
        // Only the simulated boards can count IOMMU faults; RAM has none to count.
        let counted = if o.name == "svc-ram" { None } else { Some(0) };
        assert_eq!(
            (backend.mapped_after, backend.iommu_faults),
            (0, counted),
            "{}",
            o.name
        );
        assert!(o.frontend.as_ref().expect("report").teardown.unmap_permitted);
    }
    assert!(kernel.registered_devices().is_empty());
}

#[test]
fn a_failed_device_is_torn_down_alone() {
    let (kernel, side) = loopback();
    let mut service = Service::start(
        settings(),
        vec![
            disk("alone-sim", BoardArg::Sim, 32 << 20, 4096),
            disk("alone-ram", BoardArg::Ram, 32 << 20, 4096),
        ],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 2);
    let sim = service
        .backend("alone-sim")
        .and_then(|b| b.sim.clone())
        .expect("simulated board");
    sim.inject("gone".parse().expect("fault"));
    // Nothing reaches the store while no initiator sends commands, so ask through a session:
    // one READ finds the device gone.
    let session = attach(&kernel, "alone-sim");
    read_one_block(&session, 30);
    // Answered (with sense, or by the close path), never lost.
    session
        .completions()
        .recv_timeout(Duration::from_secs(20))
        .expect("the READ was answered");
    // Let the failed disk's teardown finish; the RAM disk keeps serving meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        service.supervise(Duration::from_millis(50));
        let s = snapshot_states(&mut service);
        if s.contains(&("alone-sim".into(), DiskState::Failed)) || Instant::now() > deadline {
            assert_eq!(
                s,
                vec![
                    ("alone-sim".into(), DiskState::Failed),
                    ("alone-ram".into(), DiskState::Serving)
                ]
            );
            break;
        }
    }
    assert_eq!(service.status_line(), "1 disks serving, 1 failed");
    assert_eq!(kernel.registered_devices(), vec!["alone-ram".to_string()]);
    drop(session);
    let outcomes = service.stop();
    assert_eq!(outcomes[0].exit_code, exit::IOERR, "{:?}", outcomes[0].failure);
    assert_eq!(outcomes[1].state, DiskState::Stopped);
    assert_eq!(Service::exit_code(&outcomes, false), exit::IOERR);
}

/// The kernel asks for a simulated function back (an unbind from vfio-pci: its device request
/// eventfd) while READs are on the device: that disk alone is stopped through the one teardown
/// within its bound, every READ answered (GOOD, or an error status: none lost), the device
/// closed (what lets the kernel's unbind return), and the disk's failure names the request and
/// what to do; the RAM disk keeps serving. Without the store's look at the request the disk
/// serves on and the unbind would block for as long as the service runs.
#[test]
fn a_removal_request_stops_that_disk_alone_and_closes_its_device() {
    const READS: u64 = 8;
    let (kernel, side) = loopback();
    let mut service = Service::start(
        settings(),
        vec![
            disk("unbind-sim", BoardArg::Sim, 32 << 20, 4096),
            disk("unbind-ram", BoardArg::Ram, 32 << 20, 4096),
        ],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 2, "{:?}", service.start_failures());
    let backend = service
        .backend("unbind-sim")
        .expect("the simulated disk's backend");
    // Each descriptor takes 100 ms: the READs are still on the device when the request comes.
    backend
        .sim
        .as_ref()
        .expect("simulated board")
        .inject("latency:100ms".parse().expect("fault"));
    let device = std::sync::Arc::downgrade(backend.controller().expect("a board").device());
    let session = attach(&kernel, "unbind-sim");
    for tag in 1..=READS {
        submit(
            &session,
            tag,
            vec![0x28, 0, 0, 0, 0, tag as u8, 0, 0, 1, 0],
            4096,
            30,
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    let asked = Instant::now();
    device
        .upgrade()
        .expect("the device is open")
        .removal_request()
        .expect("the simulated function offers a device request")
        .raise();
    // The disk's teardown: noticed within an idle poll, drained (the READs complete at 100 ms
    // each), the function shut down and closed. Well inside the teardown's own bounds.
    let bound = Duration::from_secs(10);
    let failed = loop {
        service.supervise(Duration::from_millis(50));
        let disks = snapshots(&mut service);
        let sim = disks.iter().find(|d| d.name == "unbind-sim").expect("listed");
        if sim.state == DiskState::Failed {
            break sim.clone();
        }
        assert!(
            asked.elapsed() < bound,
            "still {:?} {:?} after the removal request: nobody noticed it",
            sim.state,
            asked.elapsed()
        );
    };
    let teardown = failed.teardowns.last().expect("the disk's teardown is recorded");
    assert!(
        teardown.in_flight_at_start > 0,
        "the READs were on the device when the teardown began: {teardown:?}"
    );
    let why = failed.failure.clone().unwrap_or_default();
    assert!(why.contains("the kernel asked for the device back"), "{why}");
    assert!(
        why.contains("bind") && why.contains("restart"),
        "says what to do: {why}"
    );
    assert!(
        device.upgrade().is_none(),
        "the VFIO device (here its simulation) is closed, so the unbind can complete"
    );
    let mut answered: Vec<u64> = (0..READS)
        .map(|_| {
            let done = session
                .completions()
                .recv_timeout(Duration::from_secs(20))
                .expect("every READ is answered, none lost");
            // GOOD (drained) or an error status (aborted by the teardown): either is an answer.
            done.tag
        })
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, (1..=READS).collect::<Vec<_>>());
    // The other disk serves on.
    let states = snapshot_states(&mut service);
    assert_eq!(
        states,
        vec![
            ("unbind-sim".into(), DiskState::Failed),
            ("unbind-ram".into(), DiskState::Serving)
        ]
    );
    let ram = attach(&kernel, "unbind-ram");
    let done = command(&ram, 1, vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 4096);
    assert_eq!(done.status, 0, "{done:?}");
    drop((session, ram));
    let outcomes = service.stop();
    assert_eq!(outcomes[0].exit_code, exit::IOERR, "{:?}", outcomes[0].failure);
    assert_eq!(outcomes[1].state, DiskState::Stopped);
}

/// Send one READ(10) of block 0 (4 KiB) on `session`, which the kernel times out after
/// `timeout_secs`.
fn read_one_block(session: &scst_accel_handler::loopback::Session, timeout_secs: u32) {
    submit(
        session,
        1,
        vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        4096,
        timeout_secs,
    );
}

/// A service of one simulated disk `name` with `fault` injected, and a session that has sent
/// it one READ of a block.
fn one_sim_disk_reading(name: &str, fault: &str) -> (Service, scst_accel_handler::loopback::Session) {
    let (kernel, side) = loopback();
    let service = Service::start(
        settings(),
        vec![disk(name, BoardArg::Sim, 32 << 20, 4096)],
        side,
        StartOptions::default(),
    );
    let sim = service
        .backend(name)
        .and_then(|b| b.sim.clone())
        .expect("simulated board");
    sim.inject(fault.parse().expect("fault"));
    let session = attach(&kernel, name);
    read_one_block(&session, 30);
    (service, session)
}

/// A disk's teardown trigger wakes the supervisor: a `supervise` asked to wait 30 s returns
/// as soon as the device is found gone, so the disk's teardown begins at once.
#[test]
fn a_trigger_wakes_the_supervisor() {
    let (mut service, session) = one_sim_disk_reading("wake-sim", "gone");
    // Woken by the trigger: the disk's teardown begins at once, not at the supervisor's next
    // turn (a second). Then woken by the teardown's end.
    let started = Instant::now();
    assert!(service.supervise(Duration::from_secs(30)), "still stopping");
    let first = started.elapsed();
    // About 50 ms here (the store notices the device gone); without the trigger's wake-up it
    // is the turn, a second, plus the teardown.
    assert!(
        first < Duration::from_millis(800),
        "woken after {first:?}: by the turn, not the trigger"
    );
    assert_ne!(snapshot_states(&mut service)[0].1, DiskState::Serving);
    // Then collected (this teardown ends quickly; `a_teardown_end_wakes_the_supervisor` times
    // the wake-up at a teardown's end).
    for _ in 0..8 {
        if !service.supervise(Duration::from_secs(30)) {
            break;
        }
    }
    assert_eq!(service.status_line(), "0 disks serving, 1 failed");
    drop(session);
    let _ = service.stop();
}

/// A request queued when no disk is left (a status asked as the last teardown ended) is
/// answered by the supervisor's last turn, not left to its asker's 5 s bound: the race behind
/// `a_trigger_wakes_the_supervisor`'s occasional failure (its snapshot asked while the
/// teardown it had just begun ended).
#[test]
fn a_request_queued_when_no_disk_is_left_is_answered() {
    let (_kernel, side) = loopback();
    let mut service = Service::new(settings(), Vec::new(), side, StartOptions::default());
    assert!(!service.active());
    let started = Instant::now();
    assert!(snapshots(&mut service).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered only after {:?}",
        started.elapsed()
    );
}

/// The end of a teardown wakes the supervisor, which collects the disk at once: a stop whose
/// teardown waits for a READ the device holds 300 ms ends in about that, not at the
/// supervisor's next turn a second after the stop began.
#[test]
fn a_teardown_end_wakes_the_supervisor() {
    let (mut service, session) = one_sim_disk_reading("end-sim", "latency:300ms");
    // The READ is with the device when the stop begins (it answers after 300 ms).
    std::thread::sleep(Duration::from_millis(50));
    let stopping = Instant::now();
    service.begin_stop();
    while service.supervise(Duration::from_secs(30)) {
        assert!(stopping.elapsed() < Duration::from_secs(20), "never stopped");
    }
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "stopped {took:?} after the stop began: collected at the turn, not at the teardown's end"
    );
    session
        .completions()
        .recv_timeout(Duration::from_secs(5))
        .expect("the READ was answered");
    drop(session);
    let _ = service.stop();
}

/// `scst_accel_commands_total` counts commands when they are answered: a READ the device holds
/// is not "other" while in flight, to be taken back from it when answered (a Prometheus
/// counter must never go down).
#[test]
fn a_read_in_flight_is_not_counted_as_another_command() {
    let (mut service, session) = one_sim_disk_reading("other-sim", "latency:3s");
    let series = |snapshots: &[DiskSnapshot], op: &str| -> u64 {
        let text = scst_accel::metrics::prometheus_text(snapshots, &[]);
        let prefix = format!("scst_accel_commands_total{{disk=\"other-sim\",op=\"{op}\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
        line.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}in\n{text}"))
    };
    // Bounded: the device holds the READ 3 s; this sees it in flight long before.
    let deadline = Instant::now() + Duration::from_secs(20);
    let in_flight = loop {
        let now = snapshots(&mut service);
        if now[0].frontend.is_some_and(|f| f.inflight > 0) {
            break now;
        }
        assert!(Instant::now() < deadline, "the READ never reached the disk");
        std::thread::sleep(Duration::from_millis(20));
    };
    let done = session
        .completions()
        .recv_timeout(Duration::from_secs(20))
        .expect("the READ was answered");
    assert_eq!(done.status, 0, "{done:?}");
    let answered = snapshots(&mut service);
    assert_eq!(series(&in_flight, "read"), 0, "not answered yet");
    assert_eq!(series(&answered, "read"), 1);
    assert_eq!(
        series(&in_flight, "other"),
        series(&answered, "other"),
        "the READ in flight was counted as another command, then taken back"
    );
    drop(session);
    let _ = service.stop();
}

#[test]
fn start_failures_carry_their_exit_class() {
    let (_kernel, side) = loopback();
    let service = Service::start(
        settings(),
        vec![
            disk("class-nvme", BoardArg::Nvme, 32 << 20, 512),
            disk("class-ram", BoardArg::Ram, 32 << 20, 512),
        ],
        side,
        StartOptions::default(),
    );
    let failures = service.start_failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "class-nvme");
    assert_eq!(failures[0].1.exit_code, exit::CONFIG, "{}", failures[0].1.message);
    assert!(
        failures[0].1.message.contains("--pci"),
        "{}",
        failures[0].1.message
    );
    assert_eq!(service.serving(), 1);
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), exit::CONFIG);
    // A requested stop did what was asked: the disk that never started does not fail it.
    assert_eq!(Service::exit_code(&outcomes, true), 0);

    // No /dev/scst_user: the SCST modules are not loaded (69).
    let service = Service::start(
        settings(),
        vec![disk("class-dev", BoardArg::Ram, 32 << 20, 512)],
        KernelSide::Real("/nonexistent/scst_user".into()),
        StartOptions::default(),
    );
    let failures = service.start_failures();
    assert_eq!(
        failures[0].1.exit_code,
        exit::UNAVAILABLE,
        "{}",
        failures[0].1.message
    );
    drop(service.stop());
}

/// A FIFO at `path` whose reader records every line written to it, one open at a time, as a
/// kernel attribute would take them. (`mkfifo(1)`: this crate forbids unsafe code.)
struct FifoRecorder {
    path: std::path::PathBuf,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FifoRecorder {
    fn new(path: std::path::PathBuf) -> Self {
        use std::io::Read;
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = std::sync::Arc::clone(&lines);
        let fifo = path.clone();
        // A LUN mgmt file: its LUNs are modelled as SCST makes them, before the line is
        // recorded (the exporter deletes a LUN only while its `device` link names the disk).
        let luns = (path.file_name() == Some("mgmt".as_ref())
            && path.parent().is_some_and(|p| p.ends_with("luns")))
        .then(|| path.parent().expect("parent").to_path_buf());
        let reader = std::thread::spawn(move || loop {
            let mut text = String::new();
            if std::fs::File::open(&fifo)
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_err()
            {
                return;
            }
            for line in text.lines() {
                if line == "END" {
                    return;
                }
                if let Some(luns) = &luns {
                    lun_command(luns, line);
                }
                recorded.lock().expect("lines").push(line.to_owned());
            }
        });
        Self {
            path,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The lines once `n` have been recorded (the reader records after the writer's close).
    fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.lines().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.lines()
    }
}

/// What SCST does in `luns` for a LUN mgmt `line`: `add DEVICE N` makes `N/device`, a link to
/// the device's directory; `del N` removes `N`.
fn lun_command(luns: &std::path::Path, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["add", device, lun] => {
            let dir = luns.join(lun);
            std::fs::create_dir_all(&dir).expect("mkdir lun");
            std::os::unix::fs::symlink(format!("../../../../../devices/{device}"), dir.join("device"))
                .expect("device link");
        }
        // SCST refuses a `del` of a LUN it does not have; the line is recorded all the same.
        ["del", lun] if luns.join(lun).exists() => std::fs::remove_dir_all(luns.join(lun)).expect("rm lun"),
        _ => {}
    }
}

impl Drop for FifoRecorder {
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = f.write_all(b"END\n");
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A stand-in for SCST's sysfs: `targets/scst_local/scst_local_tgt/luns/mgmt` records the
/// lines written to it.
struct FakeScstSysfs {
    // Dropped before the directory it lives in.
    luns: FifoRecorder,
    dir: tempfile::TempDir,
}

impl FakeScstSysfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let luns = FifoRecorder::new(dir.path().join("targets/scst_local/scst_local_tgt/luns/mgmt"));
        Self { luns, dir }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }

    fn lines(&self) -> Vec<String> {
        self.luns.lines()
    }

    fn wait_lines(&self, n: usize) -> Vec<String> {
        self.luns.wait_lines(n)
    }
}

fn exported(mut spec: DiskSpec, lun: u32) -> DiskSpec {
    spec.exports.push(scst_accel::config::ExportSpec {
        driver: scst_accel::config::TargetDriver::ScstLocal,
        target: "scst_local_tgt".into(),
        lun,
        enable: true,
    });
    spec
}

#[test]
fn exports_are_applied_after_registration_and_removed_at_stop() {
    let sysfs = FakeScstSysfs::new();
    let (_kernel, side) = loopback();
    let mut service = Service::start(
        ServiceSettings {
            scst_sysfs: sysfs.root(),
            ..settings()
        },
        vec![exported(disk("exp-ram", BoardArg::Ram, 16 << 20, 4096), 3)],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    assert_eq!(sysfs.wait_lines(1), vec!["add exp-ram 3".to_string()]);
    let handle = service.handle();
    let exports = std::thread::scope(|s| {
        let asker = s.spawn(move || handle.snapshot().expect("answered")[0].exports.clone());
        while !asker.is_finished() {
            service.supervise(Duration::from_millis(10));
        }
        asker.join().expect("asker")
    });
    assert_eq!(exports, vec!["scst_local/scst_local_tgt/3".to_string()]);
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), 0);
    assert_eq!(
        sysfs.wait_lines(2),
        vec!["add exp-ram 3".to_string(), "del 3".to_string()]
    );
}

/// A LUN taken away while the disk serves (an operator's `del`; iscsi-scstd's restart takes
/// whole iSCSI targets) is found at the next check and added again; the status says it is
/// lost meanwhile, and the stop removes the LUN as before.
#[test]
fn a_lun_taken_away_while_serving_is_added_again() {
    let sysfs = FakeScstSysfs::new();
    let (_kernel, side) = loopback();
    let mut service = Service::start(
        ServiceSettings {
            scst_sysfs: sysfs.root(),
            ..settings()
        },
        vec![exported(disk("exp-again", BoardArg::Ram, 16 << 20, 4096), 4)],
        side,
        StartOptions {
            export_check: Duration::from_millis(50),
            ..StartOptions::default()
        },
    );
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    assert_eq!(sysfs.wait_lines(1), vec!["add exp-again 4".to_string()]);
    let lun = sysfs.root().join("targets/scst_local/scst_local_tgt/luns/4");
    // A few checks find it in place: nothing written.
    service.supervise(Duration::from_millis(200));
    assert_eq!(sysfs.lines().len(), 1, "{:?}", sysfs.lines());
    assert!(snapshots(&mut service)[0].exports_lost.is_empty());

    std::fs::remove_dir_all(&lun).expect("the LUN is deleted by hand");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sysfs.lines().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the LUN was not added again: {:?}",
            sysfs.lines()
        );
        service.supervise(Duration::from_millis(50));
    }
    assert_eq!(sysfs.lines()[1], "add exp-again 4");
    // Collected once its thread ends: the status no longer says it is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snapshots(&mut service)[0].exports_lost.is_empty() {
        assert!(Instant::now() < deadline, "still lost in the status");
        service.supervise(Duration::from_millis(50));
    }
    assert_eq!(
        snapshots(&mut service)[0].exports,
        vec!["scst_local/scst_local_tgt/4".to_string()]
    );
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), 0);
    assert_eq!(sysfs.wait_lines(3)[2], "del 4", "{:?}", sysfs.lines());
    assert_eq!(sysfs.lines().len(), 3, "{:?}", sysfs.lines());
}

#[test]
fn an_export_that_cannot_apply_starts_no_disk_at_all() {
    let sysfs = FakeScstSysfs::new();
    let (kernel, side) = loopback();
    let mut iscsi = disk("exp-iscsi", BoardArg::Ram, 16 << 20, 4096);
    iscsi.exports.push(scst_accel::config::ExportSpec {
        driver: scst_accel::config::TargetDriver::Iscsi,
        target: "iqn.2026-12.com.example:t".into(),
        lun: 0,
        enable: true,
    });
    let service = Service::start(
        ServiceSettings {
            scst_sysfs: sysfs.root(),
            ..settings()
        },
        vec![
            exported(disk("exp-first", BoardArg::Ram, 16 << 20, 4096), 0),
            iscsi,
        ],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 0);
    let failures = service.start_failures();
    assert_eq!(failures.len(), 2, "every disk is refused");
    // The iSCSI target driver's module is not loaded (no iscsi directory): 69, which a
    // restart may find loaded (a boot race), not 78, which would end the restarts.
    assert!(failures.iter().all(|(_, f)| f.exit_code == exit::UNAVAILABLE));
    assert!(
        failures[0].1.message.contains("iscsi"),
        "{}",
        failures[0].1.message
    );
    assert!(kernel.registered_devices().is_empty(), "nothing registered");
    drop(service.stop());
    assert!(sysfs.lines().is_empty(), "nothing written: {:?}", sysfs.lines());
}

/// SCST's `del LUN` waits, without a bound, for the commands the LUN has in flight, which only
/// the handler (or the device's close) can end: a disk that fails on its own with its LUN's
/// `del` stuck still tears down, after the LUN removal's bound, and its device is unregistered.
/// Here the `del` blocks in its open: the LUN's mgmt file is a FIFO nobody reads any more.
#[test]
fn a_teardown_whose_lun_removal_hangs_closes_the_device_after_the_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mgmt = dir.path().join("targets/scst_local/scst_local_tgt/luns/mgmt");
    let recorder = FifoRecorder::new(mgmt.clone());
    let (kernel, side) = loopback();
    let mut service = Service::start(
        ServiceSettings {
            scst_sysfs: dir.path().to_path_buf(),
            ..settings()
        },
        vec![
            exported(disk("stuck-del", BoardArg::Sim, 32 << 20, 4096), 2),
            // A second disk keeps the service (and its snapshots) going once the first failed.
            disk("stuck-other", BoardArg::Ram, 16 << 20, 4096),
        ],
        side,
        StartOptions {
            lun_removal_bound: Duration::from_millis(300),
            ..StartOptions::default()
        },
    );
    assert_eq!(service.serving(), 2, "{:?}", service.start_failures());
    assert_eq!(recorder.wait_lines(1), vec!["add stuck-del 2".to_string()]);
    // Nobody reads the mgmt file from now on: a `del` written to it never returns.
    drop(recorder);
    let sim = service
        .backend("stuck-del")
        .and_then(|b| b.sim.clone())
        .expect("simulated board");
    sim.inject("gone".parse().expect("fault"));
    let session = attach(&kernel, "stuck-del");
    read_one_block(&session, 30);
    let failed = vec![
        ("stuck-del".into(), DiskState::Failed),
        ("stuck-other".into(), DiskState::Serving),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while snapshot_states(&mut service) != failed && Instant::now() < deadline {
        service.supervise(Duration::from_millis(50));
    }
    assert_eq!(
        snapshot_states(&mut service),
        failed,
        "the teardown waited for the LUN's removal"
    );
    assert_eq!(
        kernel.registered_devices(),
        ["stuck-other"],
        "the device was closed"
    );
    drop(session);
    drop(service.stop());
    // Let the `del` left waiting go (a reader), so its thread ends with the test.
    let _ = std::fs::File::open(&mgmt);
}

/// Send a command without data-out on `session`.
fn submit(
    session: &scst_accel_handler::loopback::Session,
    tag: u64,
    cdb: Vec<u8>,
    data_in: u32,
    timeout_secs: u32,
) {
    session
        .submit(scst_accel_handler::loopback::ScsiRequest {
            tag,
            cdb,
            data_out: Vec::new(),
            expected_data_in: data_in,
            queue_type: 0,
            timeout_secs,
        })
        .expect("submit");
}

/// Send a command without data-out and wait (bounded) for its completion.
fn command(
    session: &scst_accel_handler::loopback::Session,
    tag: u64,
    cdb: Vec<u8>,
    data_in: u32,
) -> scst_accel_handler::loopback::ScsiCompletion {
    submit(session, tag, cdb, data_in, 30);
    session
        .completions()
        .recv_timeout(Duration::from_secs(20))
        .expect("answered")
}

/// READ CAPACITY(10): the number of blocks.
fn capacity(session: &scst_accel_handler::loopback::Session, tag: u64) -> u64 {
    let done = command(session, tag, vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(done.status, 0, "{done:?}");
    u64::from(u32::from_be_bytes(
        done.data_in[0..4].try_into().expect("4 bytes"),
    )) + 1
}

#[test]
fn resize_through_the_service_raises_capacity_data_has_changed() {
    let (kernel, side) = loopback();
    let mut service = Service::start(
        settings(),
        vec![disk("rsz-ram", BoardArg::Ram, 16 << 20, 4096)],
        side,
        StartOptions::default(),
    );
    let session = attach(&kernel, "rsz-ram");
    assert_eq!(capacity(&session, 1), 4096);
    let handle = service.handle();
    let (grown, shrink, unaligned) = std::thread::scope(|s| {
        let asker = s.spawn(move || {
            (
                handle.resize("rsz-ram", 32 << 20),
                handle.resize("rsz-ram", 8 << 20),
                handle.resize("rsz-ram", (64 << 20) + 512),
            )
        });
        while !asker.is_finished() {
            service.supervise(Duration::from_millis(10));
        }
        asker.join().expect("asker")
    });
    assert_eq!(grown, Ok(8192));
    assert!(
        shrink.as_ref().is_err_and(|e| e.to_string().contains("shrink")),
        "{shrink:?}"
    );
    assert!(
        unaligned
            .as_ref()
            .is_err_and(|e| e.to_string().contains("block size")),
        "{unaligned:?}"
    );
    // The initiator's next command sees the unit attention, then the new capacity.
    let tur = command(&session, 2, vec![0; 6], 0);
    assert_eq!(tur.status, 2, "CHECK CONDITION: {tur:?}");
    assert_eq!(
        scst_accel_handler::loopback::decode_sense(&tur.sense),
        Some((0x6, 0x2a, 0x09)),
        "UNIT ATTENTION, CAPACITY DATA HAS CHANGED"
    );
    assert_eq!(capacity(&session, 3), 8192);
    session.detach();
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), 0);
}

/// A gate a store call blocks on until the test opens it.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.changed.wait(open).expect("gate");
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.changed.notify_all();
    }
}

/// A RAM store whose `submit` blocks on the gate: a device call that does not return.
struct GatedStore {
    ram: scst_accel_handler::store::ram::RamStore,
    gate: std::sync::Arc<Gate>,
}

impl scst_accel_handler::store::Store for GatedStore {
    fn info(&self) -> scst_accel_handler::store::StoreInfo {
        self.ram.info()
    }

    fn open_queue(
        &self,
    ) -> Result<Box<dyn scst_accel_handler::store::StoreQueue>, scst_accel_handler::store::StoreError> {
        Ok(Box::new(GatedQueue {
            inner: self.ram.open_queue()?,
            gate: std::sync::Arc::clone(&self.gate),
        }))
    }
}

struct GatedQueue {
    inner: Box<dyn scst_accel_handler::store::StoreQueue>,
    gate: std::sync::Arc<Gate>,
}

impl scst_accel_handler::store::StoreQueue for GatedQueue {
    fn submit(
        &mut self,
        token: &mut scst_accel_handler::store::StoreToken<'_>,
        batch: &mut Vec<scst_accel_handler::store::StoreRequest>,
    ) -> Result<(), scst_accel_handler::store::StoreError> {
        self.gate.pass();
        self.inner.submit(token, batch)
    }

    fn reap(&mut self, out: &mut Vec<scst_accel_handler::store::StoreCompletion>) -> usize {
        self.inner.reap(out)
    }

    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.notify_fd()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn set_heartbeat(&mut self, heartbeat: scst_accel_handler::heartbeat::Heartbeat) {
        self.inner.set_heartbeat(heartbeat);
    }
}

/// A worker stuck in a store call that does not return is reported as wedged to the
/// watchdog's health check, which then withholds its pings (systemd restarts a wedged service,
/// not only a dead one); once the call returns, the pings resume. The store is the test's own,
/// through the service's store seam (`StartOptions::stores`).
#[test]
fn a_wedged_worker_stops_the_watchdog_until_it_recovers() {
    use scst_accel::notify::Notifier;
    use scst_accel::notify::Watchdog;
    let (kernel, side) = loopback();
    let gate = std::sync::Arc::new(Gate::default());
    let store_gate = std::sync::Arc::clone(&gate);
    let stores: scst_accel::service::StoreFactory = std::sync::Arc::new(move |spec: &DiskSpec| {
        let ram = scst_accel_handler::store::ram::RamStore::new(spec.args.block_size, 4096, 2048);
        let store = GatedStore {
            ram,
            gate: std::sync::Arc::clone(&store_gate),
        };
        Some(Ok(scst_accel::backend::Backend::from_store(
            std::sync::Arc::new(store),
            64 << 20,
        )))
    });
    let mut spec = disk("wdg-gated", BoardArg::Ram, 16 << 20, 4096);
    spec.args.workers = 1;
    let options = StartOptions {
        stores: Some(stores),
        ..StartOptions::default()
    };
    let mut service = Service::start(settings(), vec![spec], side, options);
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // Every health verdict and every ping, in order, on one timeline.
    let timeline = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handle = service.handle();
    let verdicts = std::sync::Arc::clone(&timeline);
    let health = Box::new(move || {
        let verdict = match handle.wedged(Duration::from_millis(500)) {
            Ok(w) if w.is_empty() => Ok(()),
            Ok(w) => Err(w.join("; ")),
            Err(e) => Err(e),
        };
        verdicts.lock().expect("timeline").push(format!("{verdict:?}"));
        verdict
    });
    let notifier = std::sync::Arc::new(Notifier::to_socket(&socket_path));
    let watchdog = Watchdog::start(notifier, Duration::from_millis(200), health).expect("watchdog");
    let pings = std::sync::Arc::clone(&timeline);
    let stop_listening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&stop_listening);
    let listener = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                    pings.lock().expect("timeline").push("PING".into());
                }
            }
        }
    });
    let count = |what: &str| {
        timeline
            .lock()
            .expect("timeline")
            .iter()
            .filter(|e| e.contains(what))
            .count()
    };
    let supervise_until = |service: &mut Service, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() && Instant::now() < deadline {
            service.supervise(Duration::from_millis(20));
        }
        assert!(done(), "timed out: {:?}", timeline.lock().expect("timeline"));
    };
    supervise_until(&mut service, &|| count("PING") >= 2);
    let session = attach(&kernel, "wdg-gated");
    read_one_block(&session, 60);
    // The worker is now stuck in `submit`: the health check must say so, more than once.
    supervise_until(&mut service, &|| count("wdg-gated") >= 2);
    gate.open();
    let done = session.completions().recv_timeout(Duration::from_secs(20));
    supervise_until(&mut service, &|| {
        let t = timeline.lock().expect("timeline");
        let last_wedged = t.iter().rposition(|e| e.contains("wdg-gated")).unwrap_or(0);
        t[last_wedged..].iter().filter(|e| *e == "PING").count() >= 2
    });
    assert_eq!(done.expect("the READ was answered once released").status, 0);
    let dog_stopped = std::thread::spawn(move || watchdog.stop());
    while !dog_stopped.is_finished() {
        service.supervise(Duration::from_millis(20));
    }
    dog_stopped.join().expect("watchdog stop");
    stop_listening.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().expect("listener");
    let t = timeline.lock().expect("timeline").clone();
    let first = t
        .iter()
        .position(|e| e.contains("wdg-gated"))
        .expect("wedged reported");
    let healthy_again = t[first..]
        .iter()
        .position(|e| e == "Ok(())")
        .expect("healthy again")
        + first;
    assert!(
        !t[first..healthy_again].iter().any(|e| e == "PING"),
        "no ping while wedged: {t:?}"
    );
    session.detach();
    drop(service.stop());
}

/// A RAM store whose release blocks on the gate: a teardown that does not end.
struct StuckReleaseStore {
    ram: scst_accel_handler::store::ram::RamStore,
    gate: std::sync::Arc<Gate>,
}

impl scst_accel_handler::store::Store for StuckReleaseStore {
    fn info(&self) -> scst_accel_handler::store::StoreInfo {
        self.ram.info()
    }

    fn open_queue(
        &self,
    ) -> Result<Box<dyn scst_accel_handler::store::StoreQueue>, scst_accel_handler::store::StoreError> {
        self.ram.open_queue()
    }
}

impl Drop for StuckReleaseStore {
    fn drop(&mut self) {
        self.gate.pass();
    }
}

/// A stop is over for the process at its budget (`stop_timeout` plus a second) even when a
/// teardown does not end: `stop_settled` says so, `stop` then fails that disk (exit 70) at
/// once instead of waiting for it, and the other disk has stopped cleanly. `serve` loops on
/// `stop_settled`, so no teardown holds the process past the stop timeout systemd was told.
#[test]
fn a_teardown_that_overruns_the_stop_budget_is_abandoned() {
    let (_kernel, side) = loopback();
    let gate = std::sync::Arc::new(Gate::default());
    let store_gate = std::sync::Arc::clone(&gate);
    let stores: scst_accel::service::StoreFactory = std::sync::Arc::new(move |spec: &DiskSpec| {
        (spec.args.name == "overrun-stuck").then(|| {
            let store = StuckReleaseStore {
                ram: scst_accel_handler::store::ram::RamStore::new(spec.args.block_size, 4096, 2048),
                gate: std::sync::Arc::clone(&store_gate),
            };
            Ok(scst_accel::backend::Backend::from_store(
                std::sync::Arc::new(store),
                64 << 20,
            ))
        })
    });
    let options = StartOptions {
        stores: Some(stores),
        ..StartOptions::default()
    };
    let settings = ServiceSettings {
        stop_timeout: Duration::from_secs(1),
        ..settings()
    };
    let disks = vec![
        disk("overrun-stuck", BoardArg::Ram, 16 << 20, 4096),
        disk("overrun-ok", BoardArg::Ram, 16 << 20, 4096),
    ];
    let mut service = Service::start(settings, disks, side, options);
    assert_eq!(service.serving(), 2, "{:?}", service.start_failures());
    let began = Instant::now();
    service.begin_stop();
    while !service.stop_settled() {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the stop never settled: the stuck teardown holds it"
        );
        service.supervise(Duration::from_secs(1));
    }
    let outcomes = service.stop();
    let took = began.elapsed();
    // Let the abandoned teardown thread end.
    gate.open();
    // The budget is 2 s; `stop` must not wait another budget on top of it.
    assert!(took < Duration::from_secs(15), "stopped after {took:?}");
    assert_eq!(outcomes[0].state, DiskState::Failed);
    assert_eq!(outcomes[0].exit_code, exit::SOFTWARE);
    assert!(
        outcomes[0]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("overran")),
        "{:?}",
        outcomes[0].failure
    );
    assert_eq!(outcomes[1].state, DiskState::Stopped, "{:?}", outcomes[1].failure);
    assert_eq!(Service::exit_code(&outcomes, false), exit::SOFTWARE);
}

/// An iSCSI target an earlier run created and did not delete (it was killed) is in the state
/// directory's record: this run exports into it (no `add_target`: it exists), takes it for its
/// own, and deletes it at its stop once empty, taking it off the record. Without the record the
/// target was someone else's and stayed, empty and enabled, after every later stop.
#[test]
fn a_target_an_earlier_run_created_is_deleted_at_this_run_s_stop() {
    const IQN: &str = "iqn.2026-12.com.example:inherited";
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let iscsi = root.join("targets/iscsi");
    let mgmt = FifoRecorder::new(iscsi.join("mgmt"));
    // A real directory: the target is there at the start, as the killed run left it.
    let luns = FifoRecorder::new(iscsi.join(IQN).join("luns/mgmt"));
    let settings = settings();
    let record = settings.state_dir.join("iscsi-targets").join(IQN);
    std::fs::create_dir_all(record.parent().expect("dir")).expect("mkdir");
    std::fs::write(&record, "").expect("record");
    let mut spec = disk("inherit-ram", BoardArg::Ram, 16 << 20, 4096);
    spec.exports.push(scst_accel::config::ExportSpec {
        driver: scst_accel::config::TargetDriver::Iscsi,
        target: IQN.into(),
        lun: 0,
        enable: false,
    });
    let (_kernel, side) = loopback();
    let service = Service::start(
        ServiceSettings {
            scst_sysfs: root.to_path_buf(),
            ..settings
        },
        vec![spec],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    assert_eq!(luns.wait_lines(1), vec!["add inherit-ram 0".to_string()]);
    assert!(mgmt.lines().is_empty(), "the target exists: {:?}", mgmt.lines());
    let outcomes = service.stop();
    assert_eq!(Service::exit_code(&outcomes, false), 0);
    assert_eq!(luns.wait_lines(2)[1], "del 0");
    assert_eq!(mgmt.wait_lines(1), vec![format!("del_target {IQN}")]);
    assert!(!record.exists(), "still recorded");
}

/// Two disks with LUNs in one iSCSI target the service created: the failure of the disk whose
/// export created it removes that disk's LUN only (a `del_target` would take the other disk's
/// LUN along while it serves); the target goes once the last disk exporting there stopped.
#[test]
fn a_created_iscsi_target_stays_while_another_disk_exports_there() {
    const IQN: &str = "iqn.2026-12.com.example:shared";
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let iscsi = root.join("targets/iscsi");
    let mgmt = FifoRecorder::new(iscsi.join("mgmt"));
    // The target's files behind a symlink: the exporter takes only a directory for an
    // existing target, so it creates this one (`add_target`), as on a fresh SCST.
    let real = iscsi.join(".target");
    let luns = FifoRecorder::new(real.join("luns/mgmt"));
    std::os::unix::fs::symlink(&real, iscsi.join(IQN)).expect("symlink");
    let export = |mut spec: DiskSpec, lun: u32| {
        spec.exports.push(scst_accel::config::ExportSpec {
            driver: scst_accel::config::TargetDriver::Iscsi,
            target: IQN.into(),
            lun,
            enable: false,
        });
        spec
    };
    let (kernel, side) = loopback();
    let settings = settings();
    let settings_dir = settings.state_dir.clone();
    let mut service = Service::start(
        ServiceSettings {
            scst_sysfs: root.to_path_buf(),
            ..settings
        },
        vec![
            export(disk("tgt-first", BoardArg::Sim, 32 << 20, 4096), 0),
            export(disk("tgt-second", BoardArg::Ram, 16 << 20, 4096), 1),
        ],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 2, "{:?}", service.start_failures());
    let record = settings_dir.join("iscsi-targets").join(IQN);
    assert!(
        record.exists(),
        "the created target is recorded: a run after a crash must know it for this service's"
    );
    assert_eq!(
        luns.wait_lines(2),
        vec!["add tgt-first 0".to_string(), "add tgt-second 1".to_string()]
    );
    // The first disk's device goes: its READ finds it gone, and the disk is torn down alone.
    let sim = service
        .backend("tgt-first")
        .and_then(|b| b.sim.clone())
        .expect("simulated board");
    sim.inject("gone".parse().expect("fault"));
    let session = attach(&kernel, "tgt-first");
    read_one_block(&session, 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot_states(&mut service)[0].1 != DiskState::Failed {
        assert!(Instant::now() < deadline, "the first disk never failed");
        service.supervise(Duration::from_millis(50));
    }
    assert_eq!(snapshot_states(&mut service)[1].1, DiskState::Serving);
    assert_eq!(luns.wait_lines(3)[2], "del 0");
    assert!(
        mgmt.lines().iter().all(|l| !l.starts_with("del_target")),
        "the target went while the second disk exports there: {:?}",
        mgmt.lines()
    );
    drop(session);
    // LUN 1 is taken away here, as SCST takes the LUNs of a device removed under the service:
    // the stop then finds no LUN 1 and writes no `del 1` (one would delete whatever LUN 1
    // holds by then), and the target is empty. An orderly stop's `del` of a LUN still there is
    // `exports_are_applied_after_registration_and_removed_at_stop`'s: this fake removes a LUN
    // only after the `del`'s writer has moved on, which would race the target's deletion.
    std::fs::remove_dir_all(iscsi.join(IQN).join("luns/1")).expect("rm lun 1");
    let outcomes = service.stop();
    assert_eq!(outcomes[1].state, DiskState::Stopped);
    let deleted = format!("del_target {IQN}");
    let wait = Instant::now() + Duration::from_secs(5);
    while !mgmt.lines().contains(&deleted) && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(5));
    }
    let lines = mgmt.lines();
    assert_eq!(
        lines.iter().filter(|l| **l == deleted).count(),
        1,
        "the target is deleted once, after its last disk: {lines:?}"
    );
    assert_eq!(
        luns.lines().len(),
        3,
        "a LUN gone is not deleted: {:?}",
        luns.lines()
    );
    // Recorded while it existed, off the record once deleted.
    assert!(!record.exists(), "still recorded after its deletion");
}

/// A configured serial that another disk already has (here its generated one, persisted in the
/// state directory) would make initiators take the two disks for one LUN: the second disk is
/// refused at start (a configuration error naming both), the first serves, nothing of the
/// second is registered with SCST. The configuration check cannot see this: the generated
/// serial exists only in the state directory.
#[test]
fn a_disk_whose_identity_another_disk_has_is_refused() {
    let (kernel, side) = loopback();
    let settings = settings();
    let state = settings.state_dir.join("identity");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(
        state.join("dup-a.toml"),
        "serial = \"0123456789ABCDEF\"\nnaa = \"3000000000000001\"\n",
    )
    .expect("state file");
    let mut second = disk("dup-b", BoardArg::Ram, 32 << 20, 512);
    second.identity.serial = Some("0123456789ABCDEF".into());
    let mut third = disk("dup-c", BoardArg::Ram, 32 << 20, 512);
    third.identity.naa = Some("3000000000000001".into());
    let service = Service::start(
        settings,
        vec![disk("dup-a", BoardArg::Ram, 32 << 20, 512), second, third],
        side,
        StartOptions::default(),
    );
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    let failures = service.start_failures();
    assert_eq!(failures.len(), 2, "{failures:?}");
    for ((name, failure), field) in failures.iter().zip(["serial", "naa"]) {
        assert_eq!(failure.exit_code, exit::CONFIG, "{}", failure.message);
        assert!(
            failure.message.contains(&format!("{field} ")) && failure.message.contains("disk dup-a's too"),
            "{name}: {}",
            failure.message
        );
    }
    assert_eq!(kernel.registered_devices(), ["dup-a"]);
    drop(service.stop());
}

/// A state file copied from a disk whose start failed this time (its board did not open) is
/// still that disk's identity: the later disk is refused rather than served under it, so the
/// identity does not change hands with the first disk's health from one boot to the next.
#[test]
fn a_state_file_copied_from_a_disk_that_failed_to_start_is_refused() {
    let (kernel, side) = loopback();
    let settings = settings();
    let state = settings.state_dir.join("identity");
    std::fs::create_dir_all(&state).expect("mkdir");
    let copied = "serial = \"FEDCBA9876543210\"\nnaa = \"3000000000000002\"\n";
    std::fs::write(state.join("cp-a.toml"), copied).expect("state file");
    std::fs::write(state.join("cp-b.toml"), copied).expect("state file");
    // A hardware board without --pci: the first disk fails before its identity is resolved.
    let service = Service::start(
        settings,
        vec![
            disk("cp-a", BoardArg::Nvme, 32 << 20, 512),
            disk("cp-b", BoardArg::Ram, 32 << 20, 512),
        ],
        side,
        StartOptions::default(),
    );
    let failures = service.start_failures();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[1].0, "cp-b");
    assert_eq!(failures[1].1.exit_code, exit::CONFIG, "{}", failures[1].1.message);
    assert!(
        failures[1].1.message.contains("disk cp-a's too"),
        "{}",
        failures[1].1.message
    );
    assert!(kernel.registered_devices().is_empty());
    drop(service.stop());
}

/// A stop asked for while the disks start (`start_disks_with`'s question before each disk)
/// starts no more: the disks left are `Stopped` and never registered, the one started is torn
/// down by the stop, and the requested stop exits 0.
#[test]
fn a_stop_during_the_start_starts_no_more_disks() {
    let (kernel, side) = loopback();
    let mut service = Service::new(
        settings(),
        vec![
            disk("early-0", BoardArg::Ram, 16 << 20, 4096),
            disk("early-1", BoardArg::Ram, 16 << 20, 4096),
            disk("early-2", BoardArg::Ram, 16 << 20, 4096),
        ],
        side,
        StartOptions::default(),
    );
    let mut asked = Vec::new();
    service.start_disks_with(|index, name| {
        asked.push((index, name.to_owned()));
        index < 1
    });
    assert_eq!(asked, [(0, "early-0".to_owned()), (1, "early-1".to_owned())]);
    assert_eq!(service.serving(), 1);
    assert_eq!(
        kernel.registered_devices().len(),
        1,
        "only the first disk registered"
    );
    assert!(service.start_failures().is_empty(), "not started is not failed");
    service.begin_stop();
    let outcomes = service.stop();
    let states: Vec<_> = outcomes.iter().map(|o| (o.name.as_str(), o.state)).collect();
    assert_eq!(
        states,
        [
            ("early-0", DiskState::Stopped),
            ("early-1", DiskState::Stopped),
            ("early-2", DiskState::Stopped)
        ]
    );
    assert_eq!(Service::exit_code(&outcomes, true), 0);
    assert!(
        kernel.registered_devices().is_empty(),
        "the started disk was unregistered"
    );
}

/// SCST releases a closed device on a thread of its own, so a restart right after the previous
/// process died can find the disk's name still registered (EEXIST): the registration is tried
/// again until the name is free (here the previous "process" closes its device after 800 ms),
/// rather than failing at once with 78, which systemd would not restart.
#[test]
fn a_name_still_registered_by_a_closing_device_is_waited_for() {
    use scst_accel_handler::transport::register::default_options;
    use scst_accel_handler::transport::register::register;
    use scst_accel_handler::transport::register::RegisterParams;
    let (kernel, side) = loopback();
    let previous = kernel.open(true);
    register(&previous, &RegisterParams::new("reborn", 4096, default_options())).expect("register");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        drop(previous);
    });
    let service = Service::start(
        settings(),
        vec![disk("reborn", BoardArg::Ram, 16 << 20, 4096)],
        side,
        StartOptions::default(),
    );
    closer.join().expect("closer");
    assert_eq!(service.serving(), 1, "{:?}", service.start_failures());
    assert_eq!(kernel.registered_devices(), ["reborn"]);
    drop(service.stop());
}
