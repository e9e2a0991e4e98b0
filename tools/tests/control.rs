//! `scst-accel status`, `dump` and `resize`, the built binary against a control socket served
//! in this process over a fake service, or over a real one whose supervisor does not answer.

use scst_accel::config::ServiceSettings;
use scst_accel::control::ControlServer;
use scst_accel::service::KernelSide;
use scst_accel::service::Service;
use scst_accel::service::StartOptions;
use scst_accel::status::DeviceCounters;
use scst_accel::status::DiskSnapshot;
use scst_accel::status::DiskState;
use scst_accel::status::IdentityView;
use scst_accel::status::NotAnswered;
use scst_accel::status::ServiceView;
use scst_accel::status::ViewError;
use scst_accel_handler::frontend::FrontendStats;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Default)]
struct Fake {
    ticks: AtomicU64,
}

impl ServiceView for Fake {
    fn snapshot(&self) -> Result<Vec<DiskSnapshot>, NotAnswered> {
        let n = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let disk = |name: &str, state, failure: Option<&str>| DiskSnapshot {
            name: name.into(),
            state,
            failure: failure.map(Into::into),
            board: "ram".into(),
            pci: None,
            identity: IdentityView::default(),
            block_size: 4096,
            num_blocks: 1 << 18,
            exports: Vec::new(),
            exports_lost: Vec::new(),
            frontend: Some(FrontendStats {
                exec: n * 1000,
                exec_errors: 7,
                ..FrontendStats::default()
            }),
            device: DeviceCounters::default(),
            teardowns: Vec::new(),
        };
        Ok(vec![
            disk("disk_a", DiskState::Serving, None),
            disk("disk_b", DiskState::Failed, Some("the device went away")),
        ])
    }

    fn dump(&self, disk: &str) -> Result<String, ViewError> {
        Err(ViewError::Refused(format!("no disk named {disk}")))
    }

    fn resize(&self, disk: &str, bytes: u64) -> Result<u64, ViewError> {
        match disk {
            "disk_a" => Ok(bytes / 4096),
            _ => Err(ViewError::Refused(format!("no disk named {disk}"))),
        }
    }
}

fn socket(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("scst-accel-it-{}-{name}", std::process::id()))
        .join("control.sock")
}

fn run(args: &[&str], socket: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run scst-accel");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_dump_and_resize_through_the_binary() {
    let path = socket("status");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let server = ControlServer::start(&path, Arc::new(Fake::default())).expect("control server");

    let (code, stdout, stderr) = run(&["status", "--json"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(reply["disks"][0]["name"], "disk_a");
    assert_eq!(reply["disks"][0]["capacity_bytes"], 1u64 << 30);
    assert_eq!(reply["disks"][1]["state"], "failed");

    let (code, table, stderr) = run(&["status"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(table.starts_with("DISK"), "{table}");
    assert!(table.contains("disk_a") && table.contains("1.0GiB"), "{table}");
    assert!(table.contains("disk_b: the device went away"), "{table}");

    let (code, _, stderr) = run(&["dump", "disk_z"], &path);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("no disk named disk_z"), "{stderr}");

    let (code, stdout, stderr) = run(&["resize", "disk_a", "2G"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("524288 blocks"), "{stdout}");
    let (code, _, _) = run(&["resize", "disk_a", "2X"], &path);
    assert_eq!(code, Some(64));

    server.stop();
    let (code, _, stderr) = run(&["status"], &path);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("is scst-accel serve running?"), "{stderr}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// `scst-accel status` while the service is starting its disks (its control socket is up
/// before them, and its supervisor answers once every disk has been tried; here it never
/// answers): exit 69 with the reason, not `{"ok":true,"disks":[]}` and 0. `dump` and `resize`
/// alike: 69, not the 65 of a refusal (they exited 65 before).
#[test]
fn status_dump_and_resize_while_the_service_starts_its_disks_exit_69() {
    let path = socket("starting");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let options = StartOptions {
        apply_exports: false,
        persist_identities: false,
        ..StartOptions::default()
    };
    let service = Service::new(
        ServiceSettings::default(),
        Vec::new(),
        KernelSide::Loopback(kernel),
        options,
    );
    let server = ControlServer::start(&path, Arc::new(service.handle())).expect("control server");
    let (code, stdout, stderr) = run(&["status", "--json"], &path);
    assert_eq!(code, Some(69), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    for args in [&["dump", "d0"][..], &["resize", "d0", "2G"]] {
        let (code, stdout, stderr) = run(args, &path);
        assert_eq!(code, Some(69), "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains("did not answer"), "{args:?}: {stderr}");
    }
    server.stop();
    drop(service);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
