//! `scst-accel serve` as a process: exit codes by failure class, a clean stop on SIGTERM, and
//! the info line per disk. `--loopback` stands in for /dev/scst_user, which this machine lacks.

use std::io::Read;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// `serve ARGS` with its state directory and control socket in a fresh temporary directory
/// (kept: a few bytes), never in /var/lib or /run.
fn serve(args: &[&str]) -> Command {
    serve_in(&tempfile::tempdir().expect("temp dir").keep(), args)
}

/// `serve ARGS` with its state directory `dir/state` and its control socket
/// [`control_socket`]`(dir)`.
fn serve_in(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scst-accel"));
    cmd.arg("serve")
        .args(args)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(control_socket(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The control socket of a [`serve_in`] `dir`.
fn control_socket(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("control.sock")
}

/// A child process killed when the test ends, even by a panic: a failed test must not leave a
/// service running behind it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = serve(args).output().expect("run scst-accel serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (bounded) for the child to exit; kill it if it does not.
fn wait_exit(child: &mut Child, bound: Duration) -> Option<i32> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("serve did not exit within {bound:?}");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_hardware_board_without_pci_is_a_configuration_error() {
    let (code, stderr) = run(&["--loopback", "--board", "nvme", "--name", "x-nopci"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("--pci"), "{stderr}");
}

#[test]
fn a_missing_scst_user_node_is_unavailable() {
    let (code, stderr) = run(&["--device", "/nonexistent/scst_user", "--name", "x-nodev"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("scst_user"), "{stderr}");
}

#[test]
fn a_bad_size_is_a_usage_error() {
    let (code, stderr) = run(&["--loopback", "--size", "1000", "--block-size", "4096"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("multiple of the block size"), "{stderr}");
}

/// What clap refuses itself (a misspelt flag, a size its parser refuses) is 64 as well, not
/// clap's 2, which `RestartPreventExitStatus=64 78` would not stop systemd restarting; `--help`
/// is 0.
#[test]
fn a_flag_clap_refuses_is_a_usage_error_and_help_is_not() {
    let (code, stderr) = run(&["--loopback", "--sise", "1G"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--sise"), "{stderr}");
    let (code, stderr) = run(&["--loopback", "--size", "16X"]);
    assert_eq!(code, Some(64), "{stderr}");
    let (code, stderr) = run(&["--help"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let (code, stderr) = run(&["--config", "/nonexistent/scst-accel.toml"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("/nonexistent/scst-accel.toml"), "{stderr}");
}

#[test]
fn sigterm_stops_cleanly_and_serving_is_logged_at_info() {
    let mut child = serve(&[
        "--loopback",
        "--board",
        "sim",
        "--name",
        "x-term",
        "--size",
        "16M",
    ])
    .spawn()
    .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read the log until the disk serves (bounded), then ask it to stop.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if all.contains("disks serving") {
                        let _ = tx.send(());
                    }
                }
            }
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let code = wait_exit(&mut child, Duration::from_secs(30));
        panic!(
            "serve never reported serving (exit {code:?}): {}",
            reader.join().expect("reader")
        );
    }
    sigterm(&child);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let log = reader.join().expect("reader");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("disk x-term: serving 16777216 bytes"), "{log}");
    assert!(log.contains("1 disks serving, 0 failed"), "{log}");
    assert!(log.contains("torn down (Requested)"), "{log}");
}

/// Every datagram that arrives on `socket` within `bound` or until `until` matches one.
fn datagrams_until(
    socket: &std::os::unix::net::UnixDatagram,
    bound: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + bound;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .expect("timeout");
        let Ok(n) = socket.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = until(&text);
        got.push(text);
        if done {
            break;
        }
    }
    got
}

#[test]
fn systemd_hears_ready_after_registration_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    // The log goes to a file: every line the child wrote before it sent READY is in the file
    // when READY arrives (a pipe read by a thread could still be behind).
    let log_path = dir.path().join("serve.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut child = serve(&[
        "--loopback",
        "--board",
        "sim",
        "--name",
        "x-notify",
        "--size",
        "16M",
    ])
    .env("NOTIFY_SOCKET", &path)
    .env("WATCHDOG_USEC", "400000")
    .env_remove("WATCHDOG_PID")
    .stderr(log_file)
    .spawn()
    .expect("spawn");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let before_ready = datagrams_until(&socket, Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(
        before_ready.last().is_some_and(|m| m.contains("READY=1")),
        "{before_ready:?}"
    );
    // READY only once the disk registered: the log already says so when READY arrives.
    let at_ready = log();
    assert!(
        at_ready.contains("registered scst_user device \"x-notify\""),
        "READY before registration: {at_ready}"
    );
    assert!(
        before_ready.iter().any(|m| m.contains("STATUS=starting 1 disks")),
        "{before_ready:?}"
    );
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("STATUS=1 disks serving, 0 failed")),
        "{before_ready:?}"
    );
    // The watchdog pings every WATCHDOG_USEC/2 while the disk's workers loop.
    let mut pings = 0;
    let serving = datagrams_until(&socket, Duration::from_secs(10), |m| {
        pings += usize::from(m.contains("WATCHDOG=1"));
        pings >= 3
    });
    assert!(
        serving.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{serving:?}"
    );
    sigterm(&child);
    let stopping = datagrams_until(&socket, Duration::from_secs(30), |m| m.contains("STATUS=stopped"));
    let code = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", log());
    assert!(stopping.iter().any(|m| m.contains("STOPPING=1")), "{stopping:?}");
    // The stop timeout is extended at STOPPING and again once the watchdog and the signal
    // forwarder have stopped (an extension counts from when it is sent).
    let stopping_at = stopping.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(
        stopping[stopping_at..]
            .iter()
            .filter(|m| m.contains("EXTEND_TIMEOUT_USEC="))
            .count()
            >= 2,
        "{stopping:?}"
    );
    assert!(
        stopping.iter().any(|m| m.contains("STATUS=stopped (exit 0)")),
        "{stopping:?}"
    );
}

#[test]
fn without_notify_socket_serve_runs_and_stops_cleanly() {
    let mut child = serve(&[
        "--loopback",
        "--board",
        "ram",
        "--name",
        "x-nonotify",
        "--size",
        "8M",
    ])
    .env_remove("NOTIFY_SOCKET")
    .spawn()
    .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
}

#[test]
fn status_over_the_control_socket_while_serving_then_the_socket_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("ctl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args([
            "serve",
            "--loopback",
            "--board",
            "sim",
            "--name",
            "x-status",
            "--size",
            "16M",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control-socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("spawn");
    let status = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scst-accel"));
        cmd.arg("status").arg("--socket").arg(&socket);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("status")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let out = status(true);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if v.to_string().contains("\"serving\"") {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no serving status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reply.to_string();
    assert!(text.contains("x-status"), "{text}");
    assert!(text.contains("16777216"), "capacity: {text}");
    // The identity was generated and is the one in the state directory.
    let state = std::fs::read_to_string(dir.path().join("state/identity/x-status.toml")).expect("state file");
    let naa = reply.to_string();
    assert!(
        state
            .lines()
            .any(|l| l.starts_with("naa") && naa.contains(l.split('"').nth(1).unwrap_or("?"))),
        "{state} vs {naa}"
    );
    let table = status(false);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("x-status"));
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    assert!(!socket.exists(), "the control socket is removed at exit");
    let gone = status(true);
    assert_eq!(gone.status.code(), Some(69), "no service: unavailable");
}

/// Start `serve --loopback` with `extra` args, wait until its control socket reports the disk
/// serving, return the status JSON, and stop it with SIGTERM (exit 0).
/// `status --json` over the control socket, when it answers.
fn status_json(socket: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("status");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

fn serve_once(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let socket = dir.join(format!("ctl-{}.sock", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["serve", "--loopback"])
        .args(extra)
        .arg("--control-socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        if let Some(v) = status_json(&socket).filter(|v| v["disks"][0]["state"] == "serving") {
            break v;
        }
        assert!(Instant::now() < deadline, "never serving");
        std::thread::sleep(Duration::from_millis(50));
    };
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    reply
}

/// The README's try-out: the example appliance file on the loopback kernel, on a machine
/// without SCST. Its exports name scst_local targets the loopback kernel does not have: they
/// are not applied (and said so), and every disk serves.
#[test]
fn the_example_appliance_serves_on_the_loopback_kernel_without_its_exports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/appliance.toml");
    let socket = control_socket(dir.path());
    let log_path = dir.path().join("serve.log");
    let file = file.to_str().expect("utf-8");
    let mut child = serve_in(dir.path(), &["--loopback", "--config", file])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .map(Reaped)
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    let disks = loop {
        let disks = status_json(&socket)
            .and_then(|v| v["disks"].as_array().cloned())
            .unwrap_or_default();
        if !disks.is_empty() && disks.iter().all(|d| d["state"] == "serving") {
            break disks;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "serve exited before every disk served:\n{log}"
        );
        assert!(Instant::now() < deadline, "never all serving:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let names: Vec<_> = disks.iter().map(|d| d["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["accel0", "nvme0", "ram0"]);
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert_eq!(log.matches("export(s) not applied").count(), 3, "{log}");
}

/// Voluntary context switches of thread `tid` of process `pid` (how often it went to sleep).
fn sleeps(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// An idle service's supervisor (serve's main thread) sleeps a second at a time: requests,
/// triggers, teardowns and signals wake it, not a turn of 200 ms. Over three idle seconds it
/// wakes about three times (fifteen with the 200 ms turn).
#[test]
fn an_idle_supervisor_wakes_once_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = control_socket(dir.path());
    let mut child = serve_in(dir.path(), &["--loopback", "--name", "x-idle", "--size", "16M"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(&socket).is_none_or(|v| v["disks"][0]["state"] != "serving") {
        assert!(Instant::now() < deadline, "never serving");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    let before = sleeps(pid, pid);
    std::thread::sleep(Duration::from_secs(3));
    let woke = sleeps(pid, pid) - before;
    // At least once: a supervisor that never sleeps (a wake never consumed, a zero wait)
    // would spin without a voluntary switch.
    assert!(
        (1..=6).contains(&woke),
        "the idle supervisor slept {woke} times in 3 s"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
}

/// Two appliances that both call their disk `accel0` (the default name) report different
/// identities, and each keeps its own across a restart: the identity is generated once and
/// persisted in the state directory.
#[test]
fn the_default_name_gets_a_unique_identity_that_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("appliance-a"), dir.path().join("appliance-b"));
    let id = |state: &std::path::Path| {
        let v = serve_once(dir.path(), &["--state-dir", state.to_str().expect("utf-8")]);
        assert_eq!(v["disks"][0]["name"], "accel0");
        v["disks"][0]["identity"].clone()
    };
    let first = id(&a);
    let other = id(&b);
    let again = id(&a);
    assert_eq!(first["source"], "generated", "{first}");
    assert_eq!(again["source"], "state", "{again}");
    assert_ne!(
        first["naa"], other["naa"],
        "two appliances, one NAA: {first} {other}"
    );
    assert_ne!(first["serial"], other["serial"]);
    assert_eq!(first["naa"], again["naa"], "the restart kept its identity");
    assert_eq!(first["serial"], again["serial"]);
    assert!(
        first["naa"].as_str().is_some_and(|n| n.starts_with('3')),
        "NAA 3, locally administered: {first}"
    );
}

/// A configuration file with `metrics_listen` serves Prometheus text on that address.
#[test]
fn the_metrics_endpoint_serves_prometheus_text() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    // A free port: bind, note it, release it (another process could take it in between; the
    // test then fails with "address in use", loudly, not silently).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("m.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\n\
             [[disk]]\nname = \"m0\"\nboard = \"ram\"\nsize = \"8M\"\n",
            dir.path().join("state").display(),
            dir.path().join("ctl.sock").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(["serve", "--loopback", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let scraped = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        match scraped {
            Ok(text) if text.contains("scst_accel_disk_state{disk=\"m0\",state=\"serving\"} 1") => {
                break text
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "no metrics: {scraped:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("# TYPE scst_accel_command_latency_seconds histogram"),
        "{body}"
    );
    assert!(
        body.contains("scst_accel_capacity_bytes{disk=\"m0\"} 8388608"),
        "{body}"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
}

/// Permission denied on the scst_user node is its own class (77: run as root or add a udev
/// rule). Root is never refused, so the child runs as `nobody` through setpriv(1); where that
/// is impossible (not root, no setpriv) the test says so and does not pretend to have run.
#[test]
fn permission_denied_on_the_scst_user_node_is_77() {
    use std::os::unix::fs::PermissionsExt;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !setpriv {
        scst_accel_hal::skip::test_skipped(
            "permission_denied_on_the_scst_user_node_is_77",
            &format!("needs root and setpriv(1) to run the child as nobody (root {root}, setpriv {setpriv})"),
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let node = dir.path().join("scst_user");
    std::fs::write(&node, b"").expect("node");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_scst-accel"))
        .args([
            "serve", "--board", "ram", "--name", "x-perm", "--size", "8M", "--device",
        ])
        .arg(&node)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control-socket")
        .arg(dir.path().join("ctl.sock"))
        .output()
        .expect("run serve as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.to_lowercase().contains("permission"), "{stderr}");
}

#[test]
fn tcmu_without_lio_says_what_to_load_and_leaves_nothing_behind() {
    // A configfs root without LIO's `core/`: target_core_mod is not loaded (or configfs not
    // mounted); the backend was built and is released again, nothing is created.
    let root = tempfile::tempdir().expect("temp dir");
    let missing = root.path().join("target");
    let (code, err) = run(&[
        "--frontend",
        "tcmu",
        "--size",
        "16m",
        "--configfs-root",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("mount configfs"), "{err}");
    assert!(!missing.exists(), "nothing created under the root");
    // With core/ but no LIO behind it: the shared objects come first (the HBA, then the
    // tcm_loop target); a plain directory accepts their mkdirs, so the first attribute
    // (the nexus, which configfs would have created) is the one that fails, naming that file,
    // and what was made is removed again.
    std::fs::create_dir_all(missing.join("core")).expect("core");
    let (code, err) = run(&[
        "--frontend",
        "tcmu",
        "--size",
        "16m",
        "--configfs-root",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("loopback/naa.500140500000000e/tpgt_1/nexus"),
        "{err}"
    );
    assert!(!missing.join("loopback").exists(), "the target was removed again");
    // Without tcm_loop the backstore is the first to write: its control file fails.
    let (code, err) = run(&[
        "--frontend",
        "tcmu",
        "--tcmu-no-loop",
        "--size",
        "16m",
        "--configfs-root",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("core/user_7/accel0/control"), "{err}");
    assert!(err.contains("no such attribute"), "{err}");
    let left: Vec<_> = std::fs::read_dir(missing.join("core"))
        .expect("core")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the HBA and backstore were removed again: {left:?}"
    );
}

#[test]
fn a_tcmu_configuration_file_starts_every_disk_and_leaves_nothing_when_none_can_serve() {
    // Two disks, frontend = "tcmu" in the file, on a scratch tree standing in for configfs
    // (plain directories: the backstores' attribute files do not appear, so each disk fails
    // at its control file): every disk is tried and named, the first failure is the exit
    // code, and the shared HBA is removed at the end.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("target");
    std::fs::create_dir_all(root.join("core")).expect("core");
    let file = dir.path().join("svc.toml");
    std::fs::write(
        &file,
        format!(
            "[service]\nfrontend = \"tcmu\"\n[service.tcmu]\nconfigfs_root = \"{}\"\nhba = 5\n\
             loopback = false\nnetlink = false\n[[disk]]\nname = \"d0\"\nboard = \"ram\"\nsize = \"8M\"\n\
             [[disk]]\nname = \"d1\"\nboard = \"ram\"\nsize = \"8M\"\n",
            root.display()
        ),
    )
    .expect("config");
    let (code, err) = run(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("disk d0:") && err.contains("core/user_5/d0/control"),
        "{err}"
    );
    assert!(
        err.contains("disk d1:") && err.contains("core/user_5/d1/control"),
        "{err}"
    );
    assert!(err.contains("no disk could start"), "{err}");
    let left: Vec<_> = std::fs::read_dir(root.join("core"))
        .expect("core")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the HBA and both backstores were removed: {left:?}"
    );
}

#[test]
fn tcmu_is_not_with_loopback() {
    let (code, err) = run(&["--frontend", "tcmu", "--loopback", "--size", "16m"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--loopback"), "{err}");
}

#[test]
fn exports_of_a_file_are_refused_under_a_tcmu_frontend_the_command_line_chose() {
    // The file is written for SCST (no frontend key) and has an export block; --frontend tcmu
    // overrides the file's frontend. The export would be dropped without a word under TCMU:
    // refused as the file's own frontend = "tcmu" refuses it (78), before anything is made.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("target");
    std::fs::create_dir_all(root.join("core")).expect("core");
    let file = dir.path().join("svc.toml");
    std::fs::write(
        &file,
        "[[disk]]\nname = \"d0\"\nboard = \"ram\"\nsize = \"8M\"\n\
         [[disk.export]]\ndriver = \"scst_local\"\ntarget = \"scst_local_tgt\"\nlun = 0\n",
    )
    .expect("config");
    let (code, err) = run(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--frontend",
        "tcmu",
        "--tcmu-no-loop",
        "--tcmu-no-netlink",
        "--configfs-root",
        root.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("[[disk.export]]") && err.contains("d0 (1)") && err.contains("--frontend tcmu"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(root.join("core"))
        .expect("core")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "nothing was made: {left:?}");
}
