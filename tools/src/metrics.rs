//! Rates over the last seconds ([`Sampler`]), the Prometheus text exposition
//! ([`prometheus_text`]) and its HTTP endpoint ([`MetricsServer`], `service.metrics_listen`;
//! `503 Service Unavailable` when the service does not answer, as while it starts its disks).
//!
//! A [`crate::status::DiskSnapshot`] holds raw, monotonic counters. Rates (IOPS, MB/s) and
//! latency percentiles over a window come from two snapshots: the newest and the oldest kept
//! (at most 10 s back; one a second, more while clients ask). Prometheus gets the raw counters
//! and computes its own rates.

use crate::status::DiskSnapshot;
use crate::status::DiskState;
use crate::status::NotAnswered;
use crate::status::ServiceView;
use scst_accel_hal::fdio::poll_readable;
use scst_accel_hal::fdio::EventFd;
use scst_accel_handler::frontend::FrontendStats;
use scst_accel_handler::frontend::LatencyHistogram;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// How far back the window reaches at most.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How often a sampler fed by a server's loop takes a snapshot.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Snapshots closer together than this replace each other (at most ~100 per window).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// One disk's figures over the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DiskRates {
    /// SCST device name.
    pub name: String,
    /// Length of the window the figures cover (0: a single snapshot, no rate yet).
    pub window_s: f64,
    /// EXEC commands per second.
    pub iops: f64,
    /// Bytes read and written per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Latency percentiles over the window in µs (upper bound of their bucket, at most 25%
    /// above the truth); `None` when no command completed in the window.
    pub p50_us: Option<f64>,
    /// 99th percentile, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile, µs.
    pub p999_us: Option<f64>,
    /// Upper bound of the highest latency bucket hit in the window, µs.
    pub max_us: Option<f64>,
    /// EXEC replies other than GOOD in the window.
    pub errors: u64,
}

/// The last [`WINDOW`] of snapshots, one per [`SAMPLE_PERIOD`] (more if fed on demand).
#[derive(Debug, Default)]
pub struct Sampler {
    history: VecDeque<(Instant, Vec<DiskSnapshot>)>,
    /// When the service last failed to answer [`Sampler::sample`].
    failed_at: Option<Instant>,
}

impl Sampler {
    /// An empty sampler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep `snapshots`, taken at `at`; forget those more than [`WINDOW`] older, so the window
    /// never reaches further back than that, however often snapshots come.
    ///
    /// The newest snapshot replaces the one before it when that one is less than [`MIN_GAP`]
    /// after the snapshot it follows: kept snapshots are at least [`MIN_GAP`] apart (but the
    /// newest), so clients asking often (each request samples) cannot grow the history beyond
    /// about 100, and the history still moves on (replacing the newest whenever a new one came
    /// within [`MIN_GAP`] of it would keep, under polls that close, two snapshots: the first
    /// one, forever, and the newest).
    pub fn push(&mut self, at: Instant, snapshots: Vec<DiskSnapshot>) {
        let n = self.history.len();
        if n >= 2
            && self.history[n - 1]
                .0
                .saturating_duration_since(self.history[n - 2].0)
                < MIN_GAP
        {
            self.history.pop_back();
        }
        self.history.push_back((at, snapshots));
        while self
            .history
            .front()
            .is_some_and(|(first, _)| at.saturating_duration_since(*first) > WINDOW)
        {
            self.history.pop_front();
        }
    }

    /// Take a snapshot now (the view is asked outside any lock of ours).
    ///
    /// # Errors
    /// The service did not answer: nothing is kept (an empty snapshot would count every disk
    /// from zero in the next rates), and the attempt counts as a sample for
    /// [`Sampler::last_sample`], so a loop sampling when due does not retry at once.
    pub fn sample(&mut self, view: &dyn ServiceView) -> Result<(), NotAnswered> {
        match view.snapshot() {
            Ok(snapshots) => {
                self.push(Instant::now(), snapshots);
                Ok(())
            }
            Err(e) => {
                self.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// When a snapshot was last taken, or last asked for in vain.
    pub fn last_sample(&self) -> Option<Instant> {
        let taken = self.history.back().map(|(at, _)| *at);
        taken.max(self.failed_at)
    }

    /// The newest snapshots.
    pub fn latest(&self) -> Option<&[DiskSnapshot]> {
        self.history.back().map(|(_, s)| s.as_slice())
    }

    /// Per disk of the newest snapshot: figures between the oldest snapshot kept and the
    /// newest (a disk absent from the oldest counts from zero).
    pub fn rates(&self) -> Vec<DiskRates> {
        let Some((now_at, now)) = self.history.back() else {
            return Vec::new();
        };
        let (then_at, then) = self.history.front().expect("non-empty");
        let window = now_at.duration_since(*then_at);
        now.iter()
            .map(|disk| {
                let earlier = then
                    .iter()
                    .find(|d| d.name == disk.name)
                    .and_then(|d| d.frontend)
                    .unwrap_or_default();
                disk_rates(&disk.name, disk.frontend.unwrap_or_default(), earlier, window)
            })
            .collect()
    }
}

fn disk_rates(name: &str, now: FrontendStats, then: FrontendStats, window: Duration) -> DiskRates {
    let secs = window.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    // A restarted frontend's counters start over: saturate rather than wrap.
    let commands = now.exec.saturating_sub(then.exec);
    let bytes = (now.read_bytes + now.write_bytes).saturating_sub(then.read_bytes + then.write_bytes);
    let latency = now.latency.delta(&then.latency);
    let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
    DiskRates {
        name: name.to_string(),
        window_s: secs,
        iops: per_s(commands),
        mb_per_s: per_s(bytes) / 1e6,
        p50_us: us(latency.percentile(0.5)),
        p99_us: us(latency.percentile(0.99)),
        p999_us: us(latency.percentile(0.999)),
        max_us: us(latency.max_bucket()),
        errors: now.exec_errors.saturating_sub(then.exec_errors),
    }
}

/// One per-disk figure read from a snapshot.
type Figure<'a> = dyn Fn(&DiskSnapshot) -> u64 + 'a;

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn state_name(state: DiskState) -> &'static str {
    match state {
        DiskState::Starting => "starting",
        DiskState::Serving => "serving",
        DiskState::Stopping => "stopping",
        DiskState::Stopped => "stopped",
        DiskState::Failed => "failed",
    }
}

const STATES: [DiskState; 5] = [
    DiskState::Starting,
    DiskState::Serving,
    DiskState::Stopping,
    DiskState::Stopped,
    DiskState::Failed,
];

/// A bucket bound in seconds, as Prometheus writes it.
fn seconds(d: Duration) -> String {
    if d == Duration::MAX {
        "+Inf".to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

/// The service's figures in the Prometheus text exposition format 0.0.4 (counters as totals
/// since the disk started; `window`, from [`Sampler::rates`], adds the sampler's rates as
/// gauges). Histogram buckets are every power of two of the handler's histogram (1.024 µs ..
/// 68.7 s) and `+Inf`: a cumulative subset of its finer buckets.
pub fn prometheus_text(snapshots: &[DiskSnapshot], window: &[DiskRates]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        lines(&mut out);
    };
    let stats = |d: &DiskSnapshot| d.frontend.unwrap_or_default();
    // Each op counted when its command is answered: `exec` counts arrivals, and the difference
    // with reads and writes would count a READ in flight as "other", then drop it (a counter
    // going down). Arrivals have their own family.
    family(
        "scst_accel_commands_received_total",
        "counter",
        "SCSI commands (EXEC) received, answered or not.",
        &mut |o| {
            for d in snapshots {
                let _ = writeln!(
                    o,
                    "scst_accel_commands_received_total{{disk=\"{}\"}} {}",
                    label(&d.name),
                    stats(d).exec
                );
            }
        },
    );
    family(
        "scst_accel_commands_total",
        "counter",
        "SCSI commands (EXEC) answered, by data direction (other: no data); not counted under TCMU.",
        &mut |o| {
            for d in snapshots {
                let s = stats(d);
                let n = label(&d.name);
                for (op, v) in [
                    ("read", s.read_commands),
                    ("write", s.write_commands),
                    ("other", s.other_commands),
                ] {
                    let _ = writeln!(o, "scst_accel_commands_total{{disk=\"{n}\",op=\"{op}\"}} {v}");
                }
            }
        },
    );
    family(
        "scst_accel_bytes_total",
        "counter",
        "Bytes transferred by SCSI commands, by direction.",
        &mut |o| {
            for d in snapshots {
                let s = stats(d);
                let n = label(&d.name);
                for (op, v) in [("read", s.read_bytes), ("write", s.write_bytes)] {
                    let _ = writeln!(o, "scst_accel_bytes_total{{disk=\"{n}\",op=\"{op}\"}} {v}");
                }
            }
        },
    );
    let per_disk = |o: &mut String, name: &str, value: &dyn Fn(&DiskSnapshot) -> u64| {
        for d in snapshots {
            let _ = writeln!(o, "{name}{{disk=\"{}\"}} {}", label(&d.name), value(d));
        }
    };
    let simple: [(&str, &str, &str, &Figure<'_>); 11] = [
        (
            "scst_accel_command_errors_total",
            "counter",
            "SCSI commands answered with a status other than GOOD.",
            &|d| stats(d).exec_errors,
        ),
        (
            "scst_accel_deadline_escalations_total",
            "counter",
            "Commands that missed their deadline in the store and were escalated (a dump, then the store's abort).",
            &|d| stats(d).deadline_escalations,
        ),
        (
            "scst_accel_task_management_total",
            "counter",
            "Task management messages from the kernel (scst_user: TASK_MGMT_RECEIVED and TASK_MGMT_DONE each; TCMU: the ring's TMR notices).",
            &|d| stats(d).task_mgmt,
        ),
        (
            "scst_accel_busy_total",
            "counter",
            "Commands answered BUSY or TASK SET FULL for lack of buffers.",
            &|d| stats(d).busy,
        ),
        (
            "scst_accel_commands_in_flight",
            "gauge",
            "SCSI commands accepted and not yet answered.",
            &|d| stats(d).inflight,
        ),
        (
            "scst_accel_device_errors_total",
            "counter",
            "Device requests completed with an error status.",
            &|d| d.device.device_errors,
        ),
        (
            "scst_accel_device_timeouts_total",
            "counter",
            "Device requests failed by timeout escalation.",
            &|d| d.device.timeouts,
        ),
        (
            "scst_accel_device_resets_total",
            "counter",
            "Recoveries of the device (reset and brought back to serving), whoever ran them.",
            // The controller's count has every recovery once; the store's own (`resets`) are
            // a part of it, and adding them counted each recovery of the store twice.
            &|d| d.device.controller_resets,
        ),
        (
            "scst_accel_capacity_bytes",
            "gauge",
            "Disk capacity in bytes.",
            &|d| d.num_blocks.saturating_mul(u64::from(d.block_size)),
        ),
        (
            "scst_accel_teardowns_total",
            "counter",
            "Teardowns the disk went through.",
            &|d| d.teardowns.len() as u64,
        ),
        (
            "scst_accel_block_size_bytes",
            "gauge",
            "Logical block size in bytes.",
            &|d| u64::from(d.block_size),
        ),
    ];
    for (name, kind, help, value) in simple {
        family(name, kind, help, &mut |o| per_disk(o, name, value));
    }
    family(
        "scst_accel_command_latency_seconds",
        "histogram",
        "SCSI command latency, from its arrival to its reply being handed to the kernel.",
        &mut |o| {
            for d in snapshots {
                let h: LatencyHistogram = stats(d).latency;
                let n = label(&d.name);
                // Every 4th bucket of the handler's (powers of two), then +Inf.
                for (i, (bound, cumulative)) in h.buckets().enumerate() {
                    if i % 4 == 0 || bound == Duration::MAX {
                        let le = seconds(bound);
                        let _ = writeln!(
                            o,
                            "scst_accel_command_latency_seconds_bucket{{disk=\"{n}\",le=\"{le}\"}} {cumulative}"
                        );
                    }
                }
                let _ = writeln!(
                    o,
                    "scst_accel_command_latency_seconds_sum{{disk=\"{n}\"}} {}",
                    h.sum().as_secs_f64()
                );
                let _ = writeln!(
                    o,
                    "scst_accel_command_latency_seconds_count{{disk=\"{n}\"}} {}",
                    h.count()
                );
            }
        },
    );
    family(
        "scst_accel_disk_state",
        "gauge",
        "Where the disk is in its life: 1 for its current state.",
        &mut |o| {
            for d in snapshots {
                let n = label(&d.name);
                for state in STATES {
                    let _ = writeln!(
                        o,
                        "scst_accel_disk_state{{disk=\"{n}\",state=\"{}\"}} {}",
                        state_name(state),
                        u8::from(state == d.state)
                    );
                }
            }
        },
    );
    if !window.is_empty() {
        family(
            "scst_accel_window_iops",
            "gauge",
            "SCSI commands per second over the service's last seconds.",
            &mut |o| {
                for r in window {
                    let _ = writeln!(
                        o,
                        "scst_accel_window_iops{{disk=\"{}\"}} {}",
                        label(&r.name),
                        r.iops
                    );
                }
            },
        );
    }
    out
}

/// Longest request head read; more is a 400.
const MAX_HEAD: usize = 8 * 1024;
/// The request head must have arrived within this of the accept, whatever the peer does: the
/// server has one thread, and a scraper sends its request with the connection, so a peer that
/// connects and waits holds the next scrape back by this much.
const HEAD_BUDGET: Duration = Duration::from_millis(500);
/// The reply is written within this, in all: a peer that reads slowly is dropped at it (a
/// timeout per write would let one that takes a byte at a time hold the thread for ever).
const REPLY_BUDGET: Duration = Duration::from_secs(2);
/// After a failed accept or poll, the pause before the accept loop tries again.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How long `stop` waits for the thread.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// The Prometheus endpoint: `GET /metrics` on one thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl MetricsServer {
    /// Listen on `addr` (port 0: any free port, see [`MetricsServer::local_addr`]).
    ///
    /// # Errors
    /// Binding failed (address in use, not on this host), or the thread could not start.
    pub fn start(addr: SocketAddr, view: Arc<dyn ServiceView>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking accept: the loop must see its stop flag, so it never sleeps in accept.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(StopSignal::new()?);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scst-metrics".into())
            .spawn(move || {
                serve_metrics(&listener, &*view, &flag);
                let _ = done_tx.send(());
            })?;
        log::info!("metrics endpoint on http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
            done,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop and join the thread, waiting at most a few seconds (a connection being served
    /// ends within its 2 s budget); past that the thread is left detached and logged.
    pub fn stop(mut self) {
        self.stop.raise();
        join_within(self.thread.take(), &self.done, "metrics");
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.raise();
    }
}

/// An accept loop's stop flag and the eventfd that wakes it: the loop sleeps in `poll(2)` on its
/// listener and this, so it wakes for a connection or a stop at once, and otherwise only when
/// its sampler is due (once per [`SAMPLE_PERIOD`]): an idle service's servers cost nothing.
pub(crate) struct StopSignal {
    raised: AtomicBool,
    wake: EventFd,
}

impl StopSignal {
    /// Not raised.
    ///
    /// # Errors
    /// The eventfd cannot be created (out of file descriptors).
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            raised: AtomicBool::new(false),
            wake: EventFd::new()?,
        })
    }

    /// Ask the loop to stop, and wake it.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.wake.signal();
    }

    /// Whether the loop should stop.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Sleep until `listener` has a connection, the stop is raised, or `sampler` is due.
    pub(crate) fn wait_for_accept(&self, listener: BorrowedFd<'_>, sampler: &Sampler) {
        let due = sampler
            .last_sample()
            .map_or(Duration::ZERO, |t| SAMPLE_PERIOD.saturating_sub(t.elapsed()));
        if let Err(e) = poll_readable(&[listener, self.wake.as_fd()], due) {
            log::warn!("accept loop: poll: {e}");
            scst_accel_hal::locks::sleep(ACCEPT_RETRY);
        }
    }
}

/// Join `thread` if it signals `done` within [`STOP_BOUND`]; otherwise leave it detached.
pub(crate) fn join_within(
    thread: Option<JoinHandle<()>>,
    done: &crossbeam_channel::Receiver<()>,
    what: &str,
) {
    let Some(thread) = thread else { return };
    match scst_accel_hal::locks::blocking("recv_timeout", || done.recv_timeout(STOP_BOUND)) {
        // Done, or its sender dropped as the thread ends: the join returns at once.
        Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            if scst_accel_hal::locks::join(thread).is_err() {
                log::error!("the {what} server thread panicked");
            }
        }
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            log::error!("the {what} server thread did not stop within {STOP_BOUND:?}; left detached");
        }
    }
}

fn serve_metrics(listener: &TcpListener, view: &dyn ServiceView, stop: &StopSignal) {
    let mut sampler = Sampler::new();
    while !stop.is_raised() {
        if sampler.last_sample().is_none_or(|t| t.elapsed() >= SAMPLE_PERIOD) {
            if let Err(e) = sampler.sample(view) {
                log::debug!("metrics: no sample: {e}");
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer_http(stream, view, &mut sampler) {
                    log::debug!("metrics: {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stop.wait_for_accept(listener.as_fd(), &sampler)
            }
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                scst_accel_hal::locks::sleep(ACCEPT_RETRY);
            }
        }
    }
}

/// Read one request head (bounded in size and time) and answer it; the connection closes.
fn answer_http(mut stream: TcpStream, view: &dyn ServiceView, sampler: &mut Sampler) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + HEAD_BUDGET;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e),
        }
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let well_formed = complete
        && parts.next().is_none()
        && version.is_some_and(|v| v.starts_with("HTTP/1."))
        && path.is_some_and(|p| p.starts_with('/'));
    let (status, body, kind) = if !well_formed {
        ("400 Bad Request", "bad request\n".to_string(), "text/plain")
    } else if path.map(|p| p.split('?').next().unwrap_or(p)) != Some("/metrics") {
        (
            "404 Not Found",
            "not found; the metrics are at /metrics\n".to_string(),
            "text/plain",
        )
    } else if method != Some("GET") && method != Some("HEAD") {
        ("405 Method Not Allowed", "only GET\n".to_string(), "text/plain")
    } else {
        // A scrape the service did not answer fails as a whole (Prometheus records `up` 0)
        // rather than showing no disks, or the last figures as if they were current.
        match sampler.sample(view) {
            Ok(()) => {
                let snapshots = sampler.latest().unwrap_or_default();
                let text = prometheus_text(snapshots, &sampler.rates());
                ("200 OK", text, "text/plain; version=0.0.4; charset=utf-8")
            }
            Err(e) => ("503 Service Unavailable", format!("{e}\n"), "text/plain"),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET\r\n");
    }
    response.push_str("\r\n");
    if method != Some("HEAD") {
        response.push_str(&body);
    }
    write_within(&mut stream, response.as_bytes(), Instant::now() + REPLY_BUDGET)
}

/// A stream whose writes can be bounded in time ([`TcpStream`], [`UnixStream`](std::os::unix::net::UnixStream)).
pub(crate) trait WriteTimeout: Write {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl WriteTimeout for TcpStream {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

impl WriteTimeout for std::os::unix::net::UnixStream {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, timeout)
    }
}

/// Write all of `bytes` before `deadline`, each write waiting at most what is left of it;
/// `TimedOut` once it has passed.
pub(crate) fn write_within<W: WriteTimeout>(
    writer: &mut W,
    mut bytes: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer was too slow to take its reply: connection dropped",
            ));
        }
        writer.set_write_timeout(Some(left))?;
        match writer.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A socket's write timeout ends the write with EAGAIN: the deadline passed.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer was too slow to take its reply: connection dropped",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fake::FakeView;
    use crate::status::fake::SlowView;

    #[test]
    fn sampler_rates_over_the_window() {
        let view = FakeView::default();
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        // Snapshot n has n*100 commands: 100 commands a second, 9 MB/s-ish.
        for i in 0..15u64 {
            sampler.push(t0 + Duration::from_secs(i), view.snapshot().unwrap());
        }
        let rates = sampler.rates();
        assert_eq!(rates.len(), 2);
        let r = &rates[0];
        assert_eq!(r.name, "ram0");
        assert!((r.window_s - 10.0).abs() < 1e-9, "{}", r.window_s);
        assert!((r.iops - 100.0).abs() < 1e-9, "{}", r.iops);
        assert!((r.mb_per_s - 90.0 * 4096.0 / 1e6).abs() < 1e-9, "{}", r.mb_per_s);
        assert_eq!(r.errors, 10);
        let p99 = r.p99_us.unwrap();
        assert!((50.0..=62.5).contains(&p99), "{p99}");
        assert!(sampler.history.len() <= 11);
        // Requests in a burst replace the newest snapshot instead of piling up.
        let last = t0 + Duration::from_secs(14);
        for i in 1..50u64 {
            sampler.push(last + Duration::from_millis(i), view.snapshot().unwrap());
        }
        assert!(sampler.history.len() <= 12, "{}", sampler.history.len());
    }

    /// Clients polling faster than [`MIN_GAP`]: the history keeps moving, so the window is the
    /// last [`WINDOW`] at most (it was pinned to the first snapshot: a lifetime average).
    #[test]
    fn polls_closer_than_the_gap_keep_the_window_at_most_its_length() {
        // The figures do not matter here, only when they were taken.
        let snapshot = FakeView::default().snapshot().unwrap();
        for gap_ms in [1u64, 50, 99, 100, 250, 1000] {
            let mut sampler = Sampler::new();
            let t0 = Instant::now();
            let gap = Duration::from_millis(gap_ms);
            let mut at = t0;
            while at < t0 + 2 * WINDOW + Duration::from_secs(1) {
                sampler.push(at, snapshot.clone());
                at += gap;
                let newest = sampler.last_sample().unwrap();
                let window = newest.duration_since(sampler.history.front().unwrap().0);
                assert!(window <= WINDOW, "gap {gap_ms} ms: window {window:?}");
                // Once the service has run a window, it is nearly full: snapshots are kept at
                // least MIN_GAP apart, and less than a poll more.
                if newest.duration_since(t0) >= WINDOW + MIN_GAP + gap {
                    assert!(
                        window + MIN_GAP + gap >= WINDOW,
                        "gap {gap_ms} ms: window {window:?}"
                    );
                }
                assert!(
                    sampler.history.len() <= 102,
                    "gap {gap_ms} ms: {}",
                    sampler.history.len()
                );
            }
            let r = &sampler.rates()[0];
            assert!(
                r.window_s <= WINDOW.as_secs_f64(),
                "gap {gap_ms} ms: {}",
                r.window_s
            );
        }
    }

    /// A snapshot the service did not answer (it is starting its disks) is not kept: the next
    /// rates do not count every disk from zero (an IOPS spike), and no empty list is served.
    #[test]
    fn an_unanswered_snapshot_is_not_kept() {
        let view = SlowView::default();
        view.silent.store(1, std::sync::atomic::Ordering::Relaxed);
        let mut sampler = Sampler::new();
        assert!(sampler.sample(&view).is_err());
        assert!(sampler.latest().is_none(), "nothing kept");
        assert!(
            sampler.last_sample().is_some(),
            "the attempt is remembered: no retry at once"
        );
        sampler.sample(&view).unwrap();
        let first = sampler.rates();
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].window_s, first[0].iops), (0.0, 0.0), "{first:?}");
    }

    #[test]
    fn exposition_format() {
        let snapshots = FakeView::default().snapshot().unwrap();
        let text = prometheus_text(&snapshots, &[]);
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                assert!(
                    rest.starts_with("HELP scst_accel_") || rest.starts_with("TYPE scst_accel_"),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("scst_accel_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("# TYPE scst_accel_command_latency_seconds histogram"));
        assert!(text.contains("scst_accel_commands_total{disk=\"ram0\",op=\"read\"} 60"));
        assert!(text.contains("scst_accel_commands_total{disk=\"ram0\",op=\"other\"} 7"));
        assert!(text.contains("scst_accel_commands_received_total{disk=\"ram0\"} 100"));
        assert!(text.contains("scst_accel_command_latency_seconds_bucket{disk=\"ram0\",le=\"+Inf\"} 100"));
        assert!(text.contains("scst_accel_command_latency_seconds_count{disk=\"ram0\"} 100"));
        assert!(text.contains("scst_accel_disk_state{disk=\"ram0\",state=\"serving\"} 1"));
        assert!(text.contains("scst_accel_disk_state{disk=\"ram0\",state=\"failed\"} 0"));
        assert!(text.contains("scst_accel_capacity_bytes{disk=\"ram0\"} 1048576"));
        assert!(text.contains("scst_accel_deadline_escalations_total{disk=\"ram0\"} 4"));
        assert!(text.contains("scst_accel_task_management_total{disk=\"ram0\"} 5"));
        // Every recovery once: the store's two are among the controller's three.
        assert!(
            text.contains("scst_accel_device_resets_total{disk=\"ram0\"} 3"),
            "{text}"
        );
        // The quote in a disk name is escaped.
        assert!(text.contains("scst_accel_disk_state{disk=\"bad\\\"disk\",state=\"failed\"} 1"));
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn server_scrapes_over_tcp_and_refuses_the_rest() {
        let view: Arc<dyn ServiceView> = Arc::new(FakeView::default());
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), view).unwrap();
        let addr = server.local_addr();
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        assert!(body.contains("scst_accel_commands_total{disk=\"ram0\",op=\"read\"}"));
        promtool_check(body);
        assert!(http(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(http(addr, b"\x00\xff\x13garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(http(addr, &[b'A'; 20000]).starts_with("HTTP/1.1 400"));
        // Half a request then close: no answer, and the server goes on.
        let _ = http(addr, b"GET /met");
        assert!(http(addr, b"GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// While the service does not answer (starting its disks), a scrape fails as a whole rather
    /// than showing no disks; then the figures come.
    #[test]
    fn a_scrape_the_service_does_not_answer_is_503() {
        let view = Arc::new(SlowView::default());
        // Enough silent snapshots for the server's own first sample and the scrape.
        view.silent.store(2, std::sync::atomic::Ordering::Relaxed);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&view) as _).unwrap();
        let addr = server.local_addr();
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 503 Service Unavailable"), "{reply}");
        assert!(reply.contains("did not answer"), "{reply}");
        assert!(!reply.contains("scst_accel_"), "{reply}");
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            reply.contains("scst_accel_commands_total{disk=\"ram0\",op=\"read\"}"),
            "{reply}"
        );
        server.stop();
    }

    /// A peer that takes its reply a little at a time, each write making progress, is dropped
    /// at the reply's deadline (a timeout per write would have let it hold the thread).
    #[test]
    fn a_reply_to_a_trickling_reader_ends_at_its_deadline() {
        let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut byte = [0u8; 512];
                // Bounded: a writer that does not give up meets a closed peer after 3 s.
                let until = Instant::now() + Duration::from_secs(3);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    if matches!(theirs.read(&mut byte), Ok(0) | Err(_)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let started = Instant::now();
        let reply = vec![b'x'; 64 << 20];
        let result = write_within(&mut ours, &reply, started + Duration::from_millis(300));
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(ours);
        reader.join().unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// A peer that connects and sends nothing holds the next scrape back by the head's budget,
    /// not the reply's.
    #[test]
    fn an_idle_connection_holds_the_next_scrape_back_by_the_head_budget_only() {
        let view: Arc<dyn ServiceView> = Arc::new(FakeView::default());
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), view).unwrap();
        let addr = server.local_addr();
        let idle = std::net::TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        let took = started.elapsed();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            took < REPLY_BUDGET,
            "served after {took:?}, behind an idle connection"
        );
        drop(idle);
        server.stop();
    }

    /// `promtool check metrics` when installed; otherwise say loudly that it was skipped.
    fn promtool_check(body: &str) {
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                scst_accel_hal::skip::test_skipped(
                    "promtool check metrics",
                    &format!("promtool is not installed ({e})"),
                );
                return;
            }
        };
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
