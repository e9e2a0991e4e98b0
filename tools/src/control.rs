//! The control socket (`service.control_socket`, default `/run/scst-accel/control.sock`) and
//! its clients: `scst-accel status`, `scst-accel dump`, `scst-accel resize`.
//!
//! # Protocol
//! One JSON object per line, one JSON reply line per request, on a Unix stream socket
//! (mode 0600: root only):
//! - `{"cmd":"status"}` → `{"ok":true,"disks":[...],"totals":{...}}`
//! - `{"cmd":"dump","disk":"x"}` → `{"ok":true,"disk":"x","dump":"..."}`
//! - `{"cmd":"resize","disk":"x","size":"2G"}` (a size with a k/M/G/T suffix, or an integer
//!   of bytes, as a string or a number) → `{"ok":true,"disk":"x","num_blocks":N}`
//!
//! Anything else (a line over 64 KiB, invalid UTF-8, bad JSON, an unknown command) gets
//! `{"ok":false,"error":"..."}`; the server keeps serving. A line over 64 KiB also closes that
//! connection (the rest of the line cannot be told from the next request). A status, dump or
//! resize the service did not answer in time (it is still starting its disks, or wedged) gets
//! `{"ok":false,"unavailable":true,"error":"..."}`: never an empty list of disks, nor a refusal
//! (a resize not answered may still happen: `status` shows the capacity).
//!
//! # Exit codes of the client subcommands
//! - 0: done;
//! - 64 (`USAGE`): a bad command line (an unparsable size);
//! - 65 (`DATA`): the service refused the request (unknown disk, a shrink, a board whose
//!   capacity is the device's); the message says why;
//! - 69 (`UNAVAILABLE`): no service answers on the socket (not running, or another socket
//!   path configured), it answered garbage, or it did not answer in time (still starting its
//!   disks, or wedged): the same for `status`, `dump` and `resize`.

use crate::exit;
use crate::metrics::join_within;
use crate::metrics::DiskRates;
use crate::metrics::Sampler;
use crate::metrics::StopSignal;
use crate::metrics::ACCEPT_RETRY;
use crate::metrics::SAMPLE_PERIOD;
use crate::status::DiskSnapshot;
use crate::status::ServiceView;
use crate::status::ViewError;
use crate::units::parse_size;
use serde_json::json;
use serde_json::Value;
use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// Default socket path (`service.control_socket`'s default).
pub const DEFAULT_SOCKET: &str = "/run/scst-accel/control.sock";
/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;
/// A peer idle this long mid-connection is dropped (the server has one thread); a reply not
/// taken within this is dropped too.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests are read from a connection for at most this long in all, whatever the peer does:
/// each read waits at most what is left of it, inside a line too. (The last reply may then
/// take the service's time to answer and [`IO_TIMEOUT`] to write.)
const CONNECTION_BUDGET: Duration = Duration::from_secs(2);
/// The client waits this long for a reply (a dump may take a moment). Above twice the
/// supervisor's answer wait (5 s) with room: with a supervisor that does not answer, the
/// server's one thread may be in a figures sample's wait when the client connects, then waits
/// as long again for the request's answer before it replies that the service did not answer
/// (exit 69). At 10 s a loaded machine made the client time out first (EAGAIN, "cannot reach")
/// now and then.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The control socket's server: one thread, one connection at a time.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl ControlServer {
    /// Bind `path` (mode 0600; its parent is created 0700 when absent) and serve it.
    ///
    /// # Errors
    /// The parent cannot be created, a service already answers on `path`
    /// ([`io::ErrorKind::AddrInUse`]), or binding fails.
    pub fn start(path: &Path, view: Arc<dyn ServiceView>) -> io::Result<ControlServer> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            // Never remove something that is not a socket: the path is misconfigured.
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; fix service.control_socket or remove it",
                        path.display()
                    ),
                ));
            }
            // A socket file left by a process that died: remove it, but never one that a live
            // service answers on (that would cut it off from its clients).
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is answered by a running service; stop it first",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // bind() honours the umask; the socket must be root-only whatever the umask is.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(StopSignal::new()?);
        let flag = Arc::clone(&stop);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("scst-control".into())
            .spawn(move || {
                serve(&listener, &*view, &flag);
                let _ = done_tx.send(());
            })?;
        log::info!("control socket on {}", path.display());
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
            done,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop (bounded: a connection being served ends within its budget), join, and remove
    /// the socket file.
    pub fn stop(mut self) {
        self.stop.raise();
        join_within(self.thread.take(), &self.done, "control");
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove the control socket {}: {e}", self.path.display());
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.raise();
    }
}

fn serve(listener: &UnixListener, view: &dyn ServiceView, stop: &StopSignal) {
    let mut sampler = Sampler::new();
    while !stop.is_raised() {
        if sampler.last_sample().is_none_or(|t| t.elapsed() >= SAMPLE_PERIOD) {
            if let Err(e) = sampler.sample(view) {
                log::debug!("control: no sample: {e}");
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = connection(stream, view, &mut sampler) {
                    log::debug!("control: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stop.wait_for_accept(listener.as_fd(), &sampler)
            }
            Err(e) => {
                // Not a poll: a listener that stays readable while accept fails (EMFILE) would spin.
                log::warn!("control: accept: {e}");
                scst_accel_hal::locks::sleep(ACCEPT_RETRY);
            }
        }
    }
}

/// Serve one connection: requests line by line until EOF, a timeout, an overlong line or
/// the budget.
fn connection(stream: UnixStream, view: &dyn ServiceView, sampler: &mut Sampler) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + CONNECTION_BUDGET;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while Instant::now() < deadline {
        line.clear();
        if read_line(&mut reader, &mut line, deadline)? == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                reply_within(
                    &mut writer,
                    &error(format!("request line longer than {MAX_LINE} bytes")),
                    Instant::now() + IO_TIMEOUT,
                )?;
            }
            // Too long, or the peer closed mid-line: nothing more can be read as a request.
            return Ok(());
        }
        let answer = match std::str::from_utf8(&line) {
            Ok(text) => handle(text.trim(), view, sampler),
            Err(_) => error("request is not UTF-8".to_string()),
        };
        // The reply's own bound, not what is left of the budget: the service's time to answer
        // (up to its bound, as while it starts its disks) must not cost the client its reply.
        reply_within(&mut writer, &answer, Instant::now() + IO_TIMEOUT)?;
    }
    Ok(())
}

/// What is left until `deadline` for the next read or write, at most [`IO_TIMEOUT`]; an error
/// once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer was too slow: connection dropped",
        ));
    }
    Ok(left.min(IO_TIMEOUT))
}

/// Read one line into `line` (with its `\n`), at most [`MAX_LINE`] + 1 bytes (one more than
/// allowed: a line that reaches it is too long), by `deadline`: each read waits at most what
/// is left, so a peer trickling a byte now and then cannot hold the one-threaded server past
/// its budget. Returns the bytes read, 0 at EOF.
fn read_line(reader: &mut BufReader<UnixStream>, line: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    loop {
        reader.get_ref().set_read_timeout(Some(time_left(deadline)?))?;
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(line.len());
        }
        let room = (MAX_LINE + 1 - line.len()).min(available.len());
        let (take, done) = match available[..room].iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (room, line.len() + room > MAX_LINE),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(line.len());
        }
    }
}

/// Write one reply line by `deadline` (each write waits at most what is left): a peer that
/// reads slowly cannot hold the server either.
fn reply_within(writer: &mut UnixStream, value: &Value, deadline: Instant) -> io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    crate::metrics::write_within(writer, text.as_bytes(), deadline)
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

/// A dump or resize the service refused (`{"ok":false}`, the client exits 65), or did not
/// answer (`"unavailable":true` as for a status, the client exits 69).
fn view_error(e: &ViewError) -> Value {
    match e {
        ViewError::NotAnswered(_) => json!({ "ok": false, "unavailable": true, "error": e.to_string() }),
        ViewError::Refused(why) => error(why.clone()),
    }
}

/// Answer one request line.
pub fn handle(line: &str, view: &dyn ServiceView, sampler: &mut Sampler) -> Value {
    let request: Value = match serde_json::from_str(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error("a request is a JSON object like {\"cmd\":\"status\"}".into()),
        Err(e) => return error(format!("bad JSON: {e}")),
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    match field("cmd") {
        // The snapshot just taken: an earlier one would be passed off as the present.
        Some("status") => match sampler.sample(view) {
            Ok(()) => status_reply(sampler.latest().unwrap_or_default(), &sampler.rates()),
            Err(e) => json!({ "ok": false, "unavailable": true, "error": e.to_string() }),
        },
        Some("dump") => {
            let Some(disk) = field("disk") else {
                return error("dump needs \"disk\"".into());
            };
            match view.dump(disk) {
                Ok(text) => json!({ "ok": true, "disk": disk, "dump": text }),
                Err(e) => view_error(&e),
            }
        }
        Some("resize") => {
            let Some(disk) = field("disk") else {
                return error("resize needs \"disk\"".into());
            };
            let bytes = match request.get("size") {
                Some(Value::String(s)) => parse_size(s),
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| format!("size {n} is not a byte count")),
                _ => Err("resize needs \"size\" (like \"2G\" or a byte count)".to_string()),
            };
            match bytes {
                Ok(bytes) => match view.resize(disk, bytes) {
                    Ok(num_blocks) => json!({ "ok": true, "disk": disk, "num_blocks": num_blocks }),
                    Err(e) => view_error(&e),
                },
                Err(e) => error(e),
            }
        }
        Some(other) => error(format!("unknown cmd {other:?}; known: status, dump, resize")),
        None => error("request has no \"cmd\" string".into()),
    }
}

/// The status reply: per disk its identity, state and figures, and service totals.
pub fn status_reply(disks: &[DiskSnapshot], rates: &[DiskRates]) -> Value {
    let mut totals = (0u64, 0u64, 0f64, 0f64, 0usize);
    let disks: Vec<Value> = disks
        .iter()
        .map(|d| {
            let f = d.frontend.unwrap_or_default();
            let r = rates
                .iter()
                .find(|r| r.name == d.name)
                .cloned()
                .unwrap_or_default();
            totals.0 += f.exec;
            totals.1 += f.exec_errors;
            totals.2 += r.iops;
            totals.3 += r.mb_per_s;
            totals.4 += usize::from(d.failure.is_some());
            json!({
                "name": d.name,
                "state": d.state,
                "failure": d.failure,
                "board": d.board,
                "pci": d.pci,
                "identity": d.identity,
                "capacity_bytes": d.num_blocks.saturating_mul(u64::from(d.block_size)),
                "block_size": d.block_size,
                "num_blocks": d.num_blocks,
                "exports": d.exports,
                "exports_lost": d.exports_lost,
                "in_flight": f.inflight,
                "iops": r.iops,
                "mb_per_s": r.mb_per_s,
                "window_s": r.window_s,
                "latency_us": { "p50": r.p50_us, "p99": r.p99_us, "p999": r.p999_us, "max": r.max_us },
                "frontend": d.frontend.map(|f| json!({
                    "exec": f.exec,
                    "errors": f.exec_errors,
                    "busy": f.busy,
                    "reads": f.read_commands,
                    "writes": f.write_commands,
                    "read_bytes": f.read_bytes,
                    "write_bytes": f.write_bytes,
                    "aborted": f.aborted,
                    "deadline_escalations": f.deadline_escalations,
                    "task_mgmt": f.task_mgmt,
                })),
                "device": d.device,
                "teardowns": d.teardowns,
            })
        })
        .collect();
    json!({
        "ok": true,
        "disks": disks,
        "locks": crate::status::locks_json(None),
        "totals": {
            "disks": disks.len(),
            "failed": totals.4,
            "exec": totals.0,
            "errors": totals.1,
            "iops": totals.2,
            "mb_per_s": totals.3,
        },
    })
}

/// `scst-accel status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the service's JSON reply as is.
    #[arg(long)]
    pub json: bool,
    /// The control socket (service.control_socket).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// `scst-accel dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// The disk (its SCST device name).
    pub disk: String,
    /// The control socket (service.control_socket).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// `scst-accel resize`.
#[derive(clap::Args, Debug)]
pub struct ResizeArgs {
    /// The disk (its SCST device name).
    pub disk: String,
    /// The new size: bytes, or with a suffix k, M, G, T (powers of 1024). Only growing works.
    pub size: String,
    /// The control socket (service.control_socket).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Why a client request failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody answers on the socket.
    #[error("cannot reach {path}: {source}; is scst-accel serve running? the socket is set by service.control_socket")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The service answered something that is not a reply.
    #[error("the service on {path} answered garbage: {why}")]
    Garbage {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The service refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// The service is there but did not answer in time (still starting its disks, or wedged).
    #[error("the service on {path} is up but did not answer: {why}")]
    NotAnswering {
        /// The socket.
        path: PathBuf,
        /// The service's message.
        why: String,
    },
}

impl ClientError {
    /// The exit code (module doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. } | Self::Garbage { .. } | Self::NotAnswering { .. } => exit::UNAVAILABLE,
            Self::Refused(_) => exit::DATA,
        }
    }
}

/// Send one request and read its reply (`{"ok":true,...}`).
///
/// # Errors
/// [`ClientError`]: unreachable, garbage, not answering (`{"ok":false,"unavailable":true}`),
/// or `{"ok":false}` (its message).
pub fn request(socket: &Path, request: &Value) -> Result<Value, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: socket.to_path_buf(),
        source,
    };
    let garbage = |why: String| ClientError::Garbage {
        path: socket.to_path_buf(),
        why,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(unreachable)?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = Vec::new();
    BufReader::new(stream)
        .take(64 << 20)
        .read_until(b'\n', &mut reply)
        .map_err(unreachable)?;
    let value: Value = serde_json::from_slice(&reply).map_err(|e| garbage(e.to_string()))?;
    let why = || {
        value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .to_string()
    };
    match value.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(value),
        Some(false) if value.get("unavailable") == Some(&Value::Bool(true)) => {
            Err(ClientError::NotAnswering {
                path: socket.to_path_buf(),
                why: why(),
            })
        }
        Some(false) => Err(ClientError::Refused(why())),
        None => Err(garbage("no \"ok\" field".into())),
    }
}

fn finish(result: Result<(), ClientError>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("scst-accel: {e}");
            e.exit_code()
        }
    }
}

/// `scst-accel status`: exit code per the module doc.
pub fn run_status(args: StatusArgs) -> u8 {
    finish(request(&args.socket, &json!({"cmd": "status"})).map(|reply| {
        if args.json {
            println!("{reply}");
        } else {
            print!("{}", status_table(&reply));
        }
    }))
}

/// `scst-accel dump`.
pub fn run_dump(args: DumpArgs) -> u8 {
    finish(
        request(&args.socket, &json!({"cmd": "dump", "disk": args.disk})).map(|reply| {
            println!(
                "{}",
                reply.get("dump").and_then(Value::as_str).unwrap_or_default()
            );
        }),
    )
}

/// `scst-accel resize`.
pub fn run_resize(args: ResizeArgs) -> u8 {
    let bytes = match parse_size(&args.size) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("scst-accel: {e}");
            return exit::USAGE;
        }
    };
    finish(
        request(
            &args.socket,
            &json!({"cmd": "resize", "disk": args.disk, "size": bytes}),
        )
        .map(|reply| {
            println!(
                "{}: {} blocks",
                args.disk,
                reply
                    .get("num_blocks")
                    .and_then(Value::as_u64)
                    .unwrap_or_default()
            );
        }),
    )
}

/// The human form of a status reply: one line per disk, then failures.
pub fn status_table(reply: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<9} {:>10} {:>10} {:>9} {:>10} {:>8} {:>9}\n",
        "DISK", "STATE", "CAPACITY", "IOPS", "MB/s", "P99(us)", "ERRORS", "TASKMGMT"
    );
    let empty = Vec::new();
    let disks = reply.get("disks").and_then(Value::as_array).unwrap_or(&empty);
    let mut failures = Vec::new();
    for d in disks {
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let f = |k: &str| d.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let p99 = d
            .pointer("/latency_us/p99")
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |v| format!("{v:.0}"));
        let errors = d.pointer("/frontend/errors").and_then(Value::as_u64).unwrap_or(0);
        let task_mgmt = d
            .pointer("/frontend/task_mgmt")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.push_str(&format!(
            "{:<16} {:<9} {:>10} {:>10.0} {:>9.1} {:>10} {:>8} {:>9}\n",
            s("name"),
            s("state"),
            human_bytes(d.get("capacity_bytes").and_then(Value::as_u64).unwrap_or(0)),
            f("iops"),
            f("mb_per_s"),
            p99,
            errors,
            task_mgmt
        ));
        if let Some(why) = d.get("failure").and_then(Value::as_str) {
            failures.push(format!("{}: {why}", s("name")));
        }
    }
    if !failures.is_empty() {
        out.push_str("\nfailures:\n");
        for f in failures {
            out.push_str(&format!("  {f}\n"));
        }
    }
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fake::FakeView;
    use crate::status::fake::SlowView;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("scst-accel-ctl-{}-{name}", std::process::id()))
            .join("control.sock")
    }

    fn start(name: &str) -> (ControlServer, Arc<FakeView>) {
        let path = socket_path(name);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let view = Arc::new(FakeView::default());
        let server = ControlServer::start(&path, Arc::clone(&view) as Arc<dyn ServiceView>).unwrap();
        (server, view)
    }

    /// Send raw bytes, half-close, read every reply line.
    fn raw(path: &Path, bytes: &[u8]) -> Vec<Value> {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may close early (an overlong line): a broken pipe is fine here.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn status_ok(path: &Path) {
        let reply = request(path, &json!({"cmd": "status"})).unwrap();
        assert_eq!(reply["disks"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn status_over_the_socket() {
        let (server, _view) = start("status");
        // A second sample a moment later gives a window and rates.
        status_ok(server.path());
        std::thread::sleep(Duration::from_millis(100));
        let reply = request(server.path(), &json!({"cmd": "status"})).unwrap();
        let disk = &reply["disks"][0];
        assert_eq!(disk["name"], "ram0");
        assert_eq!(disk["state"], "serving");
        assert_eq!(disk["failure"], Value::Null);
        assert_eq!(disk["board"], "ram");
        assert_eq!(disk["identity"]["serial"], "0001");
        assert_eq!(disk["capacity_bytes"], 1 << 20);
        assert_eq!(disk["block_size"], 512);
        assert_eq!(disk["exports"][0], "scst_local/scst_local_tgt/0");
        assert_eq!(disk["in_flight"], 3);
        assert!(disk["iops"].as_f64().unwrap() > 0.0, "{disk}");
        assert!(disk["mb_per_s"].as_f64().unwrap() > 0.0, "{disk}");
        let p99 = disk["latency_us"]["p99"].as_f64().unwrap();
        assert!((50.0..=62.5).contains(&p99), "{p99}");
        for key in [
            "exec",
            "errors",
            "busy",
            "reads",
            "writes",
            "read_bytes",
            "write_bytes",
            "aborted",
            "deadline_escalations",
            "task_mgmt",
        ] {
            assert!(disk["frontend"][key].is_u64(), "{key}: {disk}");
        }
        assert_eq!(disk["device"]["device_errors"], 1);
        assert!(disk["teardowns"].is_array());
        assert!(reply["locks"]["levels"].is_array(), "{reply}");
        // On in debug builds and with the `lock-check` feature (on by default): not only in debug.
        assert_eq!(
            reply["locks"]["checker"],
            cfg!(any(debug_assertions, feature = "lock-check"))
        );
        assert_eq!(reply["disks"][1]["failure"], "device gone");
        assert_eq!(reply["totals"]["disks"], 2);
        assert_eq!(reply["totals"]["failed"], 1);
        let table = status_table(&reply);
        assert_eq!(disk["frontend"]["task_mgmt"], 5);
        assert_eq!(disk["frontend"]["deadline_escalations"], 4);
        assert!(table.contains("ram0") && table.contains("1.0MiB"), "{table}");
        // Task management has a column of its own, after the errors.
        let header = table.lines().next().unwrap_or_default();
        assert!(header.trim_end().ends_with("ERRORS  TASKMGMT"), "{table}");
        let ram0 = table.lines().find(|l| l.starts_with("ram0")).unwrap_or_default();
        assert!(ram0.trim_end().ends_with(" 5"), "{table}");
        assert!(
            table.contains("failures:") && table.contains("device gone"),
            "{table}"
        );
        server.stop();
    }

    #[test]
    fn dump_of_an_unknown_disk_is_an_error_reply() {
        let (server, _view) = start("dump");
        let ok = request(server.path(), &json!({"cmd": "dump", "disk": "ram0"})).unwrap();
        assert!(ok["dump"].as_str().unwrap().contains("worker 0"));
        let e = request(server.path(), &json!({"cmd": "dump", "disk": "nope"})).unwrap_err();
        assert!(matches!(&e, ClientError::Refused(m) if m.contains("nope")), "{e}");
        assert_eq!(e.exit_code(), exit::DATA);
        server.stop();
    }

    #[test]
    fn resize_is_forwarded_with_the_parsed_size() {
        let (server, view) = start("resize");
        let reply = request(
            server.path(),
            &json!({"cmd": "resize", "disk": "ram0", "size": "2G"}),
        )
        .unwrap();
        assert_eq!(reply["num_blocks"], (2u64 << 30) / 512);
        request(
            server.path(),
            &json!({"cmd": "resize", "disk": "ram0", "size": 4096}),
        )
        .unwrap();
        let bad = request(
            server.path(),
            &json!({"cmd": "resize", "disk": "ram0", "size": "2Q"}),
        );
        assert!(matches!(bad, Err(ClientError::Refused(_))));
        assert_eq!(
            *view.resized.lock().unwrap(),
            vec![("ram0".to_string(), 2u64 << 30), ("ram0".to_string(), 4096)]
        );
        server.stop();
    }

    #[test]
    fn garbage_gets_error_replies_and_the_server_keeps_serving() {
        let (server, _view) = start("garbage");
        let path = server.path().to_path_buf();
        let is_error = |v: &Value| v["ok"] == false && v["error"].is_string();
        // Binary junk (invalid UTF-8), bad JSON, not an object, unknown cmd, missing field:
        // one error reply each, on one connection that stays usable.
        let replies = raw(
            &path,
            b"\x00\xff\xfe\x80junk\n{not json\n[1,2]\n{\"cmd\":\"reboot\"}\n{\"cmd\":\"dump\"}\n{\"cmd\":\"status\"}\n",
        );
        assert_eq!(replies.len(), 6, "{replies:?}");
        assert!(replies[..5].iter().all(is_error), "{replies:?}");
        assert_eq!(replies[5]["ok"], true);
        assert!(replies[3]["error"].as_str().unwrap().contains("unknown cmd"));
        // A 100 KiB line: an error reply, then the connection closes.
        let mut long = vec![b'x'; 100 * 1024];
        long.push(b'\n');
        let replies = raw(&path, &long);
        assert_eq!(replies.len(), 1);
        assert!(replies[0]["error"].as_str().unwrap().contains("longer than"));
        // Half a line, then close: nothing to answer.
        assert!(raw(&path, b"{\"cmd\":\"sta").is_empty());
        // A client that connects and says nothing does not block the server forever.
        let idle = UnixStream::connect(&path).unwrap();
        status_ok(&path);
        drop(idle);
        status_ok(&path);
        server.stop();
    }

    /// A status the service does not answer (it is starting its disks) is an error reply the
    /// client exits 69 on, never `{"ok":true,"disks":[]}`.
    #[test]
    fn a_status_the_service_does_not_answer_is_unavailable() {
        let path = socket_path("slow");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let view = Arc::new(SlowView::default());
        // The server's own first sample and the request's.
        view.silent.store(2, std::sync::atomic::Ordering::Relaxed);
        let server = ControlServer::start(&path, Arc::clone(&view) as Arc<dyn ServiceView>).unwrap();
        let e = request(&path, &json!({"cmd": "status"})).unwrap_err();
        assert!(matches!(e, ClientError::NotAnswering { .. }), "{e}");
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().contains("did not answer"), "{e}");
        status_ok(&path);
        server.stop();
    }

    /// A dump or resize the service does not answer is unavailable as a status is: exit 69,
    /// not the 65 of a refusal (it is not one: the request may be tried again, and a resize
    /// may still happen). Once it answers, a refusal is 65 again.
    #[test]
    fn a_dump_or_resize_the_service_does_not_answer_is_unavailable() {
        let path = socket_path("slow-disk");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let view = Arc::new(SlowView::default());
        // The server's own first sample, the dump's and the resize's.
        view.silent.store(3, std::sync::atomic::Ordering::Relaxed);
        let server = ControlServer::start(&path, Arc::clone(&view) as Arc<dyn ServiceView>).unwrap();
        for request_line in [
            json!({"cmd": "dump", "disk": "ram0"}),
            json!({"cmd": "resize", "disk": "ram0", "size": "2G"}),
        ] {
            let e = request(&path, &request_line).unwrap_err();
            assert!(
                matches!(e, ClientError::NotAnswering { .. }),
                "{request_line}: {e}"
            );
            assert_eq!(e.exit_code(), exit::UNAVAILABLE, "{request_line}");
            assert!(e.to_string().contains("did not answer"), "{e}");
        }
        assert!(view.inner.resized.lock().unwrap().is_empty());
        let e = request(&path, &json!({"cmd": "dump", "disk": "nope"})).unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e}");
        assert_eq!(e.exit_code(), exit::DATA);
        server.stop();
    }

    /// The service's own view says so when its supervisor is gone (its inbox closed) or does
    /// not answer, for a dump and a resize as for a status.
    #[test]
    fn the_services_view_reports_an_unanswered_dump_or_resize_as_not_answered() {
        let (tx, inbox) = crossbeam_channel::unbounded();
        drop(inbox);
        let view = crate::service::ServiceHandle::new(tx);
        assert!(matches!(view.dump("d0"), Err(ViewError::NotAnswered(_))));
        assert!(matches!(
            view.resize("d0", 1 << 20),
            Err(ViewError::NotAnswered(_))
        ));
        assert!(view.snapshot().is_err());
    }

    /// A peer that sends a byte now and then, each well within the read timeout, is dropped
    /// when the connection's budget is spent, not when it stops sending: meanwhile nobody
    /// else could get a status from the one-threaded server.
    #[test]
    fn a_trickling_peer_is_dropped_within_the_budget() {
        let (server, _view) = start("trickle");
        let path = server.path().to_path_buf();
        // Bounded: the peer gives up after 10 s (5 times the budget) if never dropped.
        let give_up = Duration::from_secs(10);
        let trickler = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            let started = Instant::now();
            while started.elapsed() < give_up {
                if s.write_all(b" ").is_err() {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None
        });
        let dropped = trickler.join().unwrap();
        let dropped = dropped.expect("the trickling peer was never dropped");
        // The budget is 2 s; the margin is wide.
        assert!(dropped < Duration::from_secs(8), "dropped after {dropped:?}");
        status_ok(server.path());
        server.stop();
    }

    #[test]
    fn socket_is_0600_in_a_0700_dir_and_never_stolen_from_a_live_service() {
        let (server, _view) = start("mode");
        let path = server.path().to_path_buf();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        // A second server on a live socket is refused; the first keeps serving.
        let second = ControlServer::start(&path, Arc::new(FakeView::default()));
        assert_eq!(second.err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        status_ok(&path);
        server.stop();
        assert!(!path.exists(), "stop removes the socket file");
        // A stale socket file (nobody answers) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ControlServer::start(&path, Arc::new(FakeView::default())).unwrap();
        status_ok(&path);
        server.stop();
        // A file that is not a socket is left alone.
        std::fs::write(&path, b"not a socket").unwrap();
        let refused = ControlServer::start(&path, Arc::new(FakeView::default()));
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
        // No service: the client says where to look, exit 69.
        let e = request(&path, &json!({"cmd": "status"})).unwrap_err();
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().contains("service.control_socket"), "{e}");
    }
}
