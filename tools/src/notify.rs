//! systemd notification (`sd_notify(3)`): readiness, status, stopping, timeout extension and the
//! watchdog, for a `Type=notify` unit (`dist/scst-accel.service`).
//!
//! Messages are formatted by the `sd-notify` crate and sent here, to the datagram socket
//! `NOTIFY_SOCKET` names: a path, or an abstract socket when it begins with `@` (as
//! `sd_notify(3)` reads it; the crate would take `@name` for a file). The variable is read once,
//! at [`Notifier::from_env`]; [`Notifier::to_notify_socket`] and [`Notifier::to_socket`] take an
//! explicit address instead, so that tests never touch the process environment (which other
//! test threads read concurrently).
//!
//! Notification is best effort: a service that cannot tell systemd it is ready is killed by
//! systemd's start timeout anyway, so a send error is logged (at warn, once: a unit that never
//! becomes ready must say why) and never fails the caller.
//!
//! [`Watchdog`] pings `WATCHDOG=1` only while a health check passes: a wedged service (a
//! worker stuck in a store call) stops pinging and systemd restarts it (`WatchdogSec=`).

use sd_notify::NotifyState;
use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long [`Watchdog::stop`] waits for the thread beyond one health check; a health check
/// that hangs longer is left detached (logged) rather than hanging the service's stop.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// Where notifications go.
#[derive(Debug)]
enum Target {
    /// Not started by systemd (no `NOTIFY_SOCKET`): nothing is ever sent.
    Disabled,
    /// A datagram socket: `NOTIFY_SOCKET`'s, or an explicit one (tests).
    Socket(SocketAddr),
}

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    target: Target,
    /// `WATCHDOG_USEC` when it is meant for this process, read once at construction.
    watchdog: Option<Duration>,
    /// A send error was logged already: the next ones are not (one per lifetime is enough to
    /// diagnose a missing `NotifyAccess=`, and the watchdog would log it every few seconds).
    error_logged: AtomicBool,
}

impl Notifier {
    /// The notifier systemd asked for: sends to `NOTIFY_SOCKET` when it is set, and does
    /// nothing at all otherwise (started from a shell or a test). The environment is read,
    /// never changed: unsetting it would race with other threads reading it.
    pub fn from_env() -> Self {
        let watchdog = parse_watchdog(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) => Self {
                watchdog,
                ..Self::to_notify_socket(&value)
            },
            None => Self::new(Target::Disabled, watchdog),
        }
    }

    /// A notifier that sends to the socket a `NOTIFY_SOCKET` value names: `@name` an abstract
    /// socket, anything else a path. One that names no usable address (empty, too long) is
    /// said at warn and sends nothing. It has no watchdog interval.
    pub fn to_notify_socket(value: &OsStr) -> Self {
        match notify_address(value) {
            Ok(address) => Self::new(Target::Socket(address), None),
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={value:?} names no socket this process can send to ({e}): the \
                     service manager will not hear that the service is ready"
                );
                Self::new(Target::Disabled, None)
            }
        }
    }

    /// A notifier that sends every message to the datagram socket bound at `path` (tests, or a
    /// supervisor other than systemd). It has no watchdog interval.
    pub fn to_socket(path: impl AsRef<Path>) -> Self {
        Self::to_notify_socket(path.as_ref().as_os_str())
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::new(Target::Disabled, None)
    }

    fn new(target: Target, watchdog: Option<Duration>) -> Self {
        Self {
            target,
            watchdog,
            error_logged: AtomicBool::new(false),
        }
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        !matches!(self.target, Target::Disabled)
    }

    /// `READY=1`: every disk is registered and serving.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `STATUS=…`: one line shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        // A newline would end the assignment and start a bogus one.
        let line = status.replace('\n', " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// `STOPPING=1`: the teardown began.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// `EXTEND_TIMEOUT_USEC=…`: the current start or stop may take `by` more from now (a
    /// teardown that waits for a device longer than `TimeoutStopSec=` would be killed
    /// mid-way). The field is systemd's 64-bit `usec_t` (sd_notify(3)); the sd-notify crate's
    /// own variant holds a u32 (at most about 71 minutes, less than a `stop_timeout` may be),
    /// so the line is written here.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.send(&[NotifyState::Custom(&format!("EXTEND_TIMEOUT_USEC={usec}"))]);
    }

    /// `WATCHDOG=1`: the service is alive. Prefer [`Watchdog`], which pings only when healthy.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), when the
    /// watchdog is enabled for this process: `WATCHDOG_PID`, when set, must be ours (a
    /// child that inherited the variables must not ping for its parent).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let result = match &self.target {
            Target::Disabled => return,
            Target::Socket(address) => send_to(address, states),
        };
        if let Err(e) = result {
            if !self.error_logged.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "systemd notification failed (further failures are not logged): {e}; \
                     check NotifyAccess= and that the notify socket exists"
                );
            }
        }
    }
}

/// The address a `NOTIFY_SOCKET` value names, as libsystemd reads it: `@name` the abstract
/// socket `name`, `/…` a path; anything else (empty, relative, `vsock:`) is refused.
fn notify_address(value: &OsStr) -> io::Result<SocketAddr> {
    match value.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(Path::new(value)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor @ and an abstract socket's name",
        )),
    }
}

/// One datagram with one `KEY=VALUE` line per state, as `sd_notify::notify` sends it.
fn send_to(address: &SocketAddr, states: &[NotifyState<'_>]) -> io::Result<()> {
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(msg.as_bytes(), address)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

/// `WATCHDOG_USEC` if it is meant for `pid` (`WATCHDOG_PID` absent or equal), as
/// `sd_watchdog_enabled(3)` decides. Zero or unparsable: no watchdog.
fn parse_watchdog(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// A health check: `Err` says why the service is not healthy.
pub type HealthCheck = Box<dyn Fn() -> Result<(), String> + Send>;

/// A thread that pings the watchdog every half interval while `health` passes.
pub struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
    /// How often it checks, to bound [`Watchdog::stop`].
    period: Duration,
}

impl Watchdog {
    /// Start pinging `notifier` every `interval / 2` (systemd's advice: twice per
    /// `WatchdogSec=`) while `health()` returns `Ok`. While it returns `Err`, no ping is sent,
    /// so systemd restarts a wedged service after `interval`; the reason is logged at error
    /// when it appears or changes, and recovery at info.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(notifier: Arc<Notifier>, interval: Duration, health: HealthCheck) -> io::Result<Watchdog> {
        let period = (interval / 2).max(Duration::from_millis(1));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sd-watchdog".into())
            .spawn(move || run(&notifier, period, &*health, &stopped))?;
        Ok(Watchdog { stop, thread, period })
    }

    /// End the thread and join it, bounded by one period plus a margin: a health check stuck
    /// longer leaves the thread detached (logged), never the caller hung.
    pub fn stop(self) {
        // The thread may have ended already (a panicking health check): nothing to tell then.
        let _ = self.stop.send(());
        let bound = self.period + STOP_BOUND;
        match scst_accel_hal::locks::join_bounded(self.thread, bound) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => log::error!("the watchdog thread panicked (in its health check?)"),
            Err(_detached) => {
                log::error!(
                    "the watchdog thread did not end within {bound:?} (health check stuck?); left detached"
                )
            }
        }
    }
}

fn run(
    notifier: &Notifier,
    period: Duration,
    health: &dyn Fn() -> Result<(), String>,
    stopped: &mpsc::Receiver<()>,
) {
    // The last failure logged, so a persisting one is logged once, not every period.
    let mut failing: Option<String> = None;
    loop {
        match health() {
            Ok(()) => {
                if failing.take().is_some() {
                    log::info!("health check passes again: watchdog pings resumed");
                }
                notifier.watchdog();
            }
            Err(why) => {
                if failing.as_deref() != Some(why.as_str()) {
                    log::error!(
                        "health check failed: {why}; withholding watchdog pings so that systemd restarts the service"
                    );
                    failing = Some(why);
                }
            }
        }
        match scst_accel_hal::locks::recv_timeout(stopped, period) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Told to stop, or the Watchdog was dropped without `stop`.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);

    struct Listener {
        _dir: tempfile::TempDir,
        socket: UnixDatagram,
        path: std::path::PathBuf,
    }

    fn listener() -> Listener {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        Listener {
            _dir: dir,
            socket,
            path,
        }
    }

    fn recv(l: &Listener) -> String {
        let mut buf = [0u8; 4096];
        let n = l.socket.recv(&mut buf).expect("a notification within the bound");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    /// `NOTIFY_SOCKET=@name` is an abstract socket (`sd_notify(3)`), not a file named `@name`.
    #[test]
    fn an_abstract_notify_socket_is_reached() {
        let name = format!("scst-accel-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        let n = Notifier::to_notify_socket(OsStr::new(&format!("@{name}")));
        assert!(n.enabled());
        n.ready();
        let mut buf = [0u8; 64];
        let len = socket.recv(&mut buf).expect("READY=1 within the bound");
        assert_eq!(&buf[..len], b"READY=1\n");
        // A value that names no address sends nothing, and says so.
        for unusable in ["", "notify.sock", "vsock:2:1234"] {
            assert!(
                !Notifier::to_notify_socket(OsStr::new(unusable)).enabled(),
                "{unusable:?}"
            );
        }
        let too_long = format!("/{}", "x".repeat(200));
        assert!(!Notifier::to_notify_socket(OsStr::new(&too_long)).enabled());
    }

    #[test]
    fn notifier_sends_each_message() {
        let l = listener();
        let n = Notifier::to_socket(&l.path);
        assert!(n.enabled());
        n.ready();
        assert_eq!(recv(&l), "READY=1\n");
        n.status("serving 2 disks\nsecond line");
        assert_eq!(recv(&l), "STATUS=serving 2 disks second line\n");
        n.stopping();
        assert_eq!(recv(&l), "STOPPING=1\n");
        n.extend_timeout(Duration::from_secs(25));
        assert_eq!(recv(&l), "EXTEND_TIMEOUT_USEC=25000000\n");
        // Two hours: past the 32 bits the sd-notify crate's variant holds.
        n.extend_timeout(Duration::from_secs(7200));
        assert_eq!(recv(&l), "EXTEND_TIMEOUT_USEC=7200000000\n");
        n.extend_timeout(Duration::MAX);
        assert_eq!(recv(&l), format!("EXTEND_TIMEOUT_USEC={}\n", u64::MAX));
        n.watchdog();
        assert_eq!(recv(&l), "WATCHDOG=1\n");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn notifier_send_errors_are_not_fatal() {
        let n = Notifier::to_socket("/nonexistent/scst-accel/notify.sock");
        n.ready();
        n.watchdog();
        let d = Notifier::disabled();
        assert!(!d.enabled());
        d.ready();
    }

    #[test]
    fn notifier_watchdog_interval_honours_watchdog_pid() {
        let us = Some("30000000");
        assert_eq!(parse_watchdog(us, None, 42), Some(Duration::from_secs(30)));
        assert_eq!(parse_watchdog(us, Some("42"), 42), Some(Duration::from_secs(30)));
        assert_eq!(parse_watchdog(us, Some("7"), 42), None);
        assert_eq!(parse_watchdog(us, Some("junk"), 42), None);
        assert_eq!(parse_watchdog(Some("0"), None, 42), None);
        assert_eq!(parse_watchdog(Some("x"), None, 42), None);
        assert_eq!(parse_watchdog(None, Some("42"), 42), None);
    }

    /// Count the pings that arrive within `window`.
    fn pings_within(l: &Listener, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            l.socket.set_read_timeout(Some(left)).expect("timeout");
            match l.socket.recv(&mut buf) {
                Ok(len) => {
                    assert_eq!(&buf[..len], b"WATCHDOG=1\n");
                    n += 1;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return n
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Drop the pings already queued (sent before a health change took effect).
    fn drain(l: &Listener) {
        l.socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 256];
        while l.socket.recv(&mut buf).is_ok() {}
        l.socket.set_nonblocking(false).expect("blocking");
    }

    #[test]
    fn watchdog_pings_only_while_healthy() {
        let l = listener();
        let notifier = Arc::new(Notifier::to_socket(&l.path));
        let healthy = Arc::new(AtomicBool::new(true));
        let h = Arc::clone(&healthy);
        let health: HealthCheck = Box::new(move || {
            if h.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("worker 1 wedged".into())
            }
        });
        // Checks every 20 ms.
        let dog = Watchdog::start(notifier, Duration::from_millis(40), health).expect("start");
        assert!(
            pings_within(&l, Duration::from_secs(1)) >= 3,
            "no pings while healthy"
        );

        healthy.store(false, Ordering::SeqCst);
        // One check already under way may still ping: wait past it, then drop what came.
        std::thread::sleep(Duration::from_millis(200));
        drain(&l);
        assert_eq!(
            pings_within(&l, Duration::from_millis(200)),
            0,
            "pinged while unhealthy"
        );

        healthy.store(true, Ordering::SeqCst);
        assert!(
            pings_within(&l, Duration::from_secs(1)) >= 3,
            "pings did not resume"
        );

        let started = Instant::now();
        dog.stop();
        assert!(started.elapsed() < Duration::from_secs(1), "stop was not prompt");
    }

    /// `dist/scst-accel.service` passes `systemd-analyze verify` (the unit this module talks
    /// to). ExecStart= is pointed at /bin/true and scst.service is stubbed: verify checks that
    /// both exist, and neither does on a build machine. Unknown keys are only warnings for
    /// verify, so any line about our unit fails the test.
    #[test]
    fn notify_unit_file_verifies() {
        let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/scst-accel.service");
        let text = std::fs::read_to_string(&unit).expect("dist/scst-accel.service");
        assert!(text.contains("Type=notify") && text.contains("WatchdogSec="));
        let probe = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            scst_accel_hal::skip::test_skipped(
                "notify_unit_file_verifies",
                "systemd-analyze is not installed (apt-get install systemd); \
                 dist/scst-accel.service was NOT verified",
            );
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let text = text.replace("/usr/local/bin/scst-accel", "/bin/true");
        std::fs::write(dir.path().join("scst-accel.service"), text).expect("unit");
        std::fs::write(
            dir.path().join("scst.service"),
            "[Unit]\nDescription=stub\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
        )
        .expect("stub");
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no", "./scst-accel.service"])
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("scst-accel.service"))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify: {stderr}"
        );
    }
}
