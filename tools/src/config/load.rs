//! Reading and validating the configuration file (TOML): every error with its line and what
//! to do. See [`super`] for what a valid file gives.
//!
//! The file is walked by hand over toml's spanned document (rather than derived with serde) so
//! that one pass reports *every* problem with its line, instead of stopping at the first field
//! serde cannot take. Nothing is returned unless the whole file is valid.
//!
//! # Format
//!
//! ```toml
//! [service]                      # optional, every key optional
//! state_dir = "/var/lib/scst-accel"
//! control_socket = "/run/scst-accel/control.sock"
//! scst_device = "/dev/scst_user"
//! scst_sysfs = "/sys/kernel/scst_tgt"
//! metrics_listen = "127.0.0.1:9490"   # a loopback address only; absent = no endpoint
//! stop_timeout = "20s"
//! frontend = "scst"              # scst (scst_user) | tcmu (LIO's target_core_user), all disks
//!
//! [service.tcmu]                 # optional, with frontend = "tcmu"; every key optional
//! configfs_root = "/sys/kernel/config/target"
//! hba = 7                        # core/user_7/<disk name> for every disk
//! ring_mb = 8                    # the command ring's size; absent = the kernel's default
//! loopback = true                # one tcm_loop target, disk N of the file its LUN N
//! iscsi_portal = "127.0.0.1:3260"  # one iSCSI target there too; absent = none
//! adopt = false                  # take over what a killed run left
//! drain = "5s"                   # each disk's drain at the stop (aborts after, as long again)
//! netlink = true                 # follow the kernel's device removed/reconfigured events
//!
//! [[disk]]                       # at least one
//! name = "accel0"                # required; 1-48 characters of A-Z a-z 0-9 _ . -, no leading .
//! board = "sim"                  # required: ram | sim | sca1 | nvme | qemu-nvme | nvme-sim | file | blockdev
//! # pci = "0000:03:00.0"         # required for sca1/nvme/qemu-nvme, refused for the others
//! # path = "/srv/disk0.img"      # required for file/blockdev (absolute), refused for the others;
//! #                              # a file is created at `size` when absent, an existing one must
//! #                              # have that size (never truncated nor grown); a block
//! #                              # device has its own size and block size, which a `size`
//! #                              # or `block_size` given must be
//! # buffered = false             # file/blockdev: page cache instead of O_DIRECT
//! # io_engine = "auto"            # file/blockdev: "auto" (io_uring, else threads), "uring", "threads"
//! size = "16G"                   # a string with a k/M/G/T suffix, or bytes; default 256M
//! block_size = 4096              # power of two from 512 to 4096; default 512
//! workers = 2
//! batch = 16
//! buffer_memory = "1G"
//! scst_version = "3.11"
//! command_timeout = "5s"
//! max_transfer_blocks = 2048
//! read_only = false
//! thin_provisioning = false
//! write_cache = true             # false: written through (WCE 0) at start and after a reset
//! inject = ["latency:1ms"]       # simulated boards (sim, nvme-sim) only
//! prealloc = 0
//! prealloc_size = "128k"
//! premap = ["4k:4096", "128k:512"]  # buffers mapped at start-up (SIZE up to 4M:COUNT)
//!
//! [disk.identity]                # optional; unset fields are device-derived or generated, persisted
//! vendor = "ACME"                # 1-8 printable ASCII characters
//! product = "FastDisk"           # 1-16
//! serial = "A1B2"                # 1-32
//! naa = "6001405a1b2c3d4e5f60718293a4b5c6"  # 32 hex digits from 6, or 16 from 3
//!
//! [[disk.export]]                # optional, repeatable
//! driver = "iscsi"               # scst_local | iscsi | copy_manager
//! target = "iqn.2024-01.com.example:accel0"  # iscsi: an IQN or eui.<16 hex digits>
//! lun = 0                        # required; 0 to 16383 (copy_manager: to 16382)
//! enable = true                  # default true
//! ```
//!
//! Defaults for disk fields are the command line's (`scst-accel serve --help`). An error
//! without a line (an unreadable file, a file without any disk) is printed without one.

use super::DiskSpec;
use super::ExportSpec;
use super::Frontend;
use super::IdentitySpec;
use super::ServiceConfig;
use super::ServiceSettings;
use super::TargetDriver;
use super::TcmuSettings;
use crate::backend::check_faults;
use crate::backend::BoardArg;
use crate::disk::valid_disk_name;
use crate::disk::DiskArgs;
use crate::disk::Premap;
use crate::disk::DISK_NAME_RULE;
use crate::units::parse_duration;
use crate::units::parse_size;
use clap::ValueEnum;
use scst_accel_handler::store::file::IoEngine;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::ops::RangeInclusive;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use toml::de::DeTable;
use toml::de::DeValue;
use toml::Spanned;

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file's name as given (or what the caller called the text).
    pub origin: String,
    /// In line order; errors without a line last.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per error, `ORIGIN:LINE: MESSAGE (HINT)`, the way compilers print them so
    /// editors can jump to the line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.line {
                Some(line) => write!(f, "{}:{line}: {} ({})", self.origin, e.message, e.hint)?,
                None => write!(f, "{}: {} ({})", self.origin, e.message, e.hint)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate the file at `path`.
///
/// # Errors
/// Every problem in the file; a file that cannot be read is one error without a line.
pub fn load(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigErrors {
            origin,
            errors: vec![ConfigError {
                line: None,
                message: format!("cannot read the configuration file: {e}"),
                hint: "check the path and that this user may read it".into(),
            }],
        }),
    }
}

/// Validate `text`; `origin` names it in messages (usually the file's path).
///
/// # Errors
/// Every syntax error; or, when the TOML is well-formed, every problem in what it declares.
pub fn parse(text: &str, origin: &str) -> Result<ServiceConfig, ConfigErrors> {
    let mut ctx = Ctx {
        text,
        errors: Vec::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    // Past a syntax error the recovered document may lack keys that are in the file, so only
    // the syntax errors are reported: anything else could be an echo of them.
    for e in &syntax {
        ctx.error_at(
            e.span(),
            format!("TOML syntax error: {}", e.message().trim()),
            "fix the syntax on this line (strings need quotes; a disk starts with [[disk]])",
        );
    }
    let config = if syntax.is_empty() {
        Some(read_document(&mut ctx, &doc))
    } else {
        None
    };
    match config {
        Some(config) if ctx.errors.is_empty() => Ok(config),
        _ => {
            let mut errors = ctx.errors;
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors {
                origin: origin.to_owned(),
                errors,
            })
        }
    }
}

/// The text being read, for line numbers, and the errors found so far.
struct Ctx<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// 1-based line of a byte offset; counted on bytes so an offset inside a multi-byte
    /// character cannot panic.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        self.error_at(Some(span.clone()), message, hint);
    }

    fn error_at(&mut self, span: Option<Range<usize>>, message: impl Into<String>, hint: impl Into<String>) {
        let line = span.map(|s| self.line(s.start));
        self.errors.push(ConfigError {
            line,
            message: message.into(),
            hint: hint.into(),
        });
    }
}

/// A table being read: its entries, where it starts, and what messages call it.
struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    name: &'static str,
}

impl<'t, 'i> Section<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// Report every key not in `accepted`, listing the accepted ones.
    fn check_keys(&self, ctx: &mut Ctx<'_>, accepted: &[&str]) {
        for key in self.table.keys() {
            if !accepted.contains(&key.get_ref().as_ref()) {
                ctx.error(
                    &key.span(),
                    format!("unknown key `{}` in {}", key.get_ref(), self.name),
                    format!("accepted keys: {}", accepted.join(", ")),
                );
            }
        }
    }
}

/// TOML's name for a value's type, for "must be X, not Y" messages.
fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn wrong_type(ctx: &mut Ctx<'_>, key: &str, value: &Spanned<DeValue<'_>>, expected: &str, example: &str) {
    ctx.error(
        &value.span(),
        format!("`{key}` must be {expected}, not {}", type_name(value.get_ref())),
        format!("write it as {key} = {example}"),
    );
}

fn string(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, example: &str) -> Option<Spanned<String>> {
    let value = sec.get(key)?;
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
        _ => {
            wrong_type(ctx, key, value, "a string", example);
            None
        }
    }
}

fn boolean(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<bool> {
    let value = sec.get(key)?;
    match value.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            wrong_type(ctx, key, value, "true or false", "true");
            None
        }
    }
}

/// An integer within `range`, reported out of range with the accepted bounds.
fn integer(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, range: RangeInclusive<i128>) -> Option<i128> {
    let value = sec.get(key)?;
    let DeValue::Integer(int) = value.get_ref() else {
        wrong_type(ctx, key, value, "an integer", &range.start().to_string());
        return None;
    };
    let number = i128::from_str_radix(int.as_str(), int.radix()).ok();
    match number.filter(|n| range.contains(n)) {
        Some(n) => Some(n),
        None => {
            ctx.error(
                &value.span(),
                format!("`{key}` = {} is out of range", int.as_str()),
                format!("use a value from {} to {}", range.start(), range.end()),
            );
            None
        }
    }
}

/// Narrow an integer read with a range that fits the target type.
fn narrow<T: TryFrom<i128> + Default>(n: Option<i128>) -> Option<T> {
    n.map(|n| T::try_from(n).unwrap_or_default())
}

/// A byte size: a string with a suffix ("16G") or an integer of bytes; zero is refused.
fn size(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<Spanned<u64>> {
    let value = sec.get(key)?;
    let bytes = match value.get_ref() {
        DeValue::String(s) => parse_size(s),
        DeValue::Integer(int) => u64::from_str_radix(int.as_str(), int.radix())
            .map_err(|_| format!("{} is not a byte count", int.as_str())),
        _ => {
            wrong_type(ctx, key, value, "a size", "\"256M\"");
            return None;
        }
    };
    match bytes {
        Ok(0) => ctx.error(
            &value.span(),
            format!("`{key}` must not be zero"),
            "give a size like \"256M\"",
        ),
        Ok(bytes) => return Some(Spanned::new(value.span(), bytes)),
        Err(e) => ctx.error(
            &value.span(),
            format!("bad `{key}`: {e}"),
            "give a size like \"4k\", \"256M\", \"16G\" or a number of bytes",
        ),
    }
    None
}

/// A duration string ("500ms", "5s", "2m"); zero is refused, a bound of zero is no bound.
fn duration(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<Duration> {
    let text = string(ctx, sec, key, "\"5s\"")?;
    match parse_duration(text.get_ref()) {
        Ok(d) if d.is_zero() => ctx.error(
            &text.span(),
            format!("`{key}` must not be zero"),
            "give a duration like \"500ms\", \"5s\" or \"2m\"",
        ),
        Ok(d) => return Some(d),
        Err(e) => ctx.error(
            &text.span(),
            format!("bad `{key}`: {e}"),
            "give a duration like \"500ms\", \"5s\" or \"2m\"",
        ),
    }
    None
}

/// An array of tables (`[[key]]`), each with its span.
fn tables<'t, 'i>(
    ctx: &mut Ctx<'_>,
    sec: &Section<'t, 'i>,
    key: &str,
    example: &str,
) -> Vec<(&'t DeTable<'i>, Range<usize>)> {
    let Some(value) = sec.get(key) else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        wrong_type(ctx, key, value, "an array of tables", example);
        return Vec::new();
    };
    let mut found = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::Table(t) => found.push((t, item.span())),
            _ => wrong_type(ctx, key, item, "a table", example),
        }
    }
    found
}

/// A sub-table (`[key]` or `key = { ... }`).
fn table<'t, 'i>(
    ctx: &mut Ctx<'_>,
    sec: &Section<'t, 'i>,
    key: &str,
    name: &'static str,
) -> Option<Section<'t, 'i>> {
    let value = sec.get(key)?;
    match value.get_ref() {
        DeValue::Table(table) => Some(Section {
            table,
            span: value.span(),
            name,
        }),
        _ => {
            wrong_type(
                ctx,
                key,
                value,
                "a table",
                &format!("{{ ... }} or a {name} section"),
            );
            None
        }
    }
}

fn read_document(ctx: &mut Ctx<'_>, doc: &Spanned<DeTable<'_>>) -> ServiceConfig {
    let root = Section {
        table: doc.get_ref(),
        span: doc.span(),
        name: "the top level",
    };
    root.check_keys(ctx, &["service", "disk"]);
    let service = table(ctx, &root, "service", "[service]")
        .map(|sec| read_service(ctx, &sec))
        .unwrap_or_default();
    let found = tables(ctx, &root, "disk", "[[disk]] sections");
    if found.is_empty() && root.get("disk").is_none() {
        ctx.error_at(
            None,
            "no [[disk]] in the file: the service would serve nothing",
            "declare at least one disk: [[disk]] with name = \"accel0\" and board = \"ram\"",
        );
    }
    let disks: Vec<ReadDisk> = found
        .into_iter()
        .map(|(table, span)| {
            let sec = Section {
                table,
                span,
                name: "[[disk]]",
            };
            read_disk(ctx, &sec)
        })
        .collect();
    check_unique(ctx, &disks);
    if service.frontend == Frontend::Tcmu {
        // Export blocks write SCST's sysfs; under TCMU every disk is a LUN of the service's
        // shared targets ([service.tcmu]), numbered in file order.
        for span in disks.iter().flat_map(|d| &d.exports_at) {
            ctx.error(
                span,
                "[[disk.export]] adds a disk to an SCST target; with frontend = \"tcmu\" every \
                 disk is LUN N (its place in the file) of the targets [service.tcmu] declares",
                "remove the export block, or set loopback / iscsi_portal in [service.tcmu]",
            );
        }
    }
    ServiceConfig {
        service,
        disks: disks.into_iter().map(|d| d.spec).collect(),
    }
}

const SERVICE_KEYS: &[&str] = &[
    "state_dir",
    "control_socket",
    "scst_device",
    "scst_sysfs",
    "metrics_listen",
    "stop_timeout",
    "frontend",
    "tcmu",
];

fn read_service(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> ServiceSettings {
    sec.check_keys(ctx, SERVICE_KEYS);
    let defaults = ServiceSettings::default();
    ServiceSettings {
        state_dir: path(ctx, sec, "state_dir").unwrap_or(defaults.state_dir),
        control_socket: path(ctx, sec, "control_socket").unwrap_or(defaults.control_socket),
        scst_device: path(ctx, sec, "scst_device").unwrap_or(defaults.scst_device),
        scst_sysfs: path(ctx, sec, "scst_sysfs").unwrap_or(defaults.scst_sysfs),
        metrics_listen: metrics_listen(ctx, sec),
        stop_timeout: duration(ctx, sec, "stop_timeout").unwrap_or(defaults.stop_timeout),
        frontend: frontend(ctx, sec).unwrap_or_default(),
        tcmu: table(ctx, sec, "tcmu", "[service.tcmu]")
            .map(|t| read_tcmu(ctx, &t))
            .unwrap_or_default(),
    }
}

fn frontend(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<Frontend> {
    let text = string(ctx, sec, "frontend", "\"tcmu\"")?;
    match text.get_ref().as_str() {
        "scst" => Some(Frontend::Scst),
        "tcmu" => Some(Frontend::Tcmu),
        other => {
            ctx.error(
                &text.span(),
                format!("frontend {other:?} is not a kernel target this service serves"),
                "write \"scst\" (SCST's scst_user) or \"tcmu\" (LIO's target_core_user)",
            );
            None
        }
    }
}

const TCMU_KEYS: &[&str] = &[
    "configfs_root",
    "hba",
    "ring_mb",
    "loopback",
    "iscsi_portal",
    "adopt",
    "drain",
    "netlink",
];

fn read_tcmu(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> TcmuSettings {
    sec.check_keys(ctx, TCMU_KEYS);
    let defaults = TcmuSettings::default();
    let iscsi_portal = string(ctx, sec, "iscsi_portal", "\"127.0.0.1:3260\"").and_then(|text| {
        if text.get_ref().parse::<SocketAddr>().is_ok() {
            return Some(text.into_inner());
        }
        ctx.error(
            &text.span(),
            format!("iscsi_portal {:?} is not IP:PORT", text.get_ref()),
            "write e.g. \"127.0.0.1:3260\" or \"[::1]:3260\"",
        );
        None
    });
    TcmuSettings {
        configfs_root: path(ctx, sec, "configfs_root").unwrap_or(defaults.configfs_root),
        hba: narrow(integer(ctx, sec, "hba", 0..=i128::from(u32::MAX))).unwrap_or(defaults.hba),
        ring_mb: narrow(integer(ctx, sec, "ring_mb", 1..=1024)),
        loopback: boolean(ctx, sec, "loopback").unwrap_or(defaults.loopback),
        iscsi_portal,
        adopt: boolean(ctx, sec, "adopt").unwrap_or(defaults.adopt),
        drain: duration(ctx, sec, "drain").unwrap_or(defaults.drain),
        netlink: boolean(ctx, sec, "netlink").unwrap_or(defaults.netlink),
    }
}

/// An absolute path: the service runs from systemd, whose working directory is not the
/// operator's, so a relative path would point somewhere unexpected.
fn path(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<PathBuf> {
    let text = string(ctx, sec, key, "\"/absolute/path\"")?;
    let path = PathBuf::from(text.get_ref());
    if path.is_absolute() {
        return Some(path);
    }
    ctx.error(
        &text.span(),
        format!("`{key}` = {:?} is not an absolute path", text.get_ref()),
        "give a path starting with /",
    );
    None
}

/// The metrics endpoint has no authentication, so it may only listen on loopback.
fn metrics_listen(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<SocketAddr> {
    let text = string(ctx, sec, "metrics_listen", "\"127.0.0.1:9490\"")?;
    match text.get_ref().parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => return Some(addr),
        Ok(addr) => ctx.error(
            &text.span(),
            format!("metrics_listen {addr} is not a loopback address (the endpoint has no authentication)"),
            "use 127.0.0.1:PORT or [::1]:PORT and reach it through a proxy or an SSH tunnel",
        ),
        Err(_) => ctx.error(
            &text.span(),
            format!("metrics_listen {:?} is not a socket address", text.get_ref()),
            "write IP:PORT, e.g. \"127.0.0.1:9490\" or \"[::1]:9490\"",
        ),
    }
    None
}

const DISK_KEYS: &[&str] = &[
    "name",
    "board",
    "pci",
    "path",
    "buffered",
    "io_engine",
    "size",
    "block_size",
    "workers",
    "batch",
    "buffer_memory",
    "scst_version",
    "command_timeout",
    "max_transfer_blocks",
    "read_only",
    "thin_provisioning",
    "write_cache",
    "inject",
    "prealloc",
    "prealloc_size",
    "premap",
    "identity",
    "export",
];

/// A disk as read, with where its names are, for the checks across disks.
struct ReadDisk {
    spec: DiskSpec,
    /// Where `name` is; `None` when it is missing (already reported).
    name_at: Option<Range<usize>>,
    pci_at: Option<Range<usize>>,
    path_at: Option<Range<usize>>,
    /// Where `[disk.identity]`'s serial and naa are (when valid, so in `spec.identity`).
    serial_at: Option<Range<usize>>,
    naa_at: Option<Range<usize>>,
    exports_at: Vec<Range<usize>>,
}

fn read_disk(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> ReadDisk {
    let errors_before = ctx.errors.len();
    sec.check_keys(ctx, DISK_KEYS);
    let name = disk_name(ctx, sec);
    let board = board(ctx, sec);
    let pci = pci(ctx, sec, board);
    let path = medium_path(ctx, sec, board);
    let mut args = disk_args(ctx, sec, name.as_ref().map(|n| n.get_ref().clone()));
    args.path = path.as_ref().map(|p| PathBuf::from(p.get_ref()));
    if args.buffered && board.is_some_and(|b| !is_file_board(b)) {
        let at = sec.get("buffered").map_or(sec.span.clone(), |v| v.span());
        ctx.error(
            &at,
            "`buffered` is only for the file and blockdev boards",
            "remove buffered, or choose board = \"file\" or \"blockdev\"",
        );
    }
    if let Some(at) = sec.get("io_engine").map(|v| v.span()) {
        if board.is_some_and(|b| !is_file_board(b)) {
            ctx.error(
                &at,
                "`io_engine` is only for the file and blockdev boards",
                "remove io_engine, or choose board = \"file\" or \"blockdev\"",
            );
        }
    }
    let inject = inject(ctx, sec, board);
    let (identity, serial_at, naa_at) = table(ctx, sec, "identity", "[disk.identity]")
        .map(|s| {
            let at = |key: &str| s.get(key).map(|v| v.span());
            (read_identity(ctx, &s), at("serial"), at("naa"))
        })
        .unwrap_or_default();
    let exports: Vec<(ExportSpec, Range<usize>)> = tables(ctx, sec, "export", "[[disk.export]] sections")
        .into_iter()
        .filter_map(|(table, span)| read_export(ctx, table, span))
        .collect();
    // The library's own check last, so it cannot contradict a field error already reported.
    if ctx.errors.len() == errors_before {
        if let Err(e) = args.validate() {
            ctx.error(&sec.span, e, "fix this disk's settings");
        }
    }
    let spec = DiskSpec {
        args,
        board: board.unwrap_or(BoardArg::Ram),
        pci: pci.as_ref().map(|p| p.get_ref().clone()),
        inject,
        read_only: boolean(ctx, sec, "read_only").unwrap_or(false),
        thin_provisioning: boolean(ctx, sec, "thin_provisioning").unwrap_or(false),
        identity,
        exports: exports.iter().map(|(e, _)| e.clone()).collect(),
        prealloc: narrow(integer(ctx, sec, "prealloc", 0..=i128::from(u32::MAX))).unwrap_or(0),
        prealloc_size: size(ctx, sec, "prealloc_size").map_or(128 << 10, Spanned::into_inner),
    };
    ReadDisk {
        spec,
        name_at: name.map(|n| n.span()),
        pci_at: pci.map(|p| p.span()),
        path_at: path.map(|p| p.span()),
        serial_at,
        naa_at,
        exports_at: exports.into_iter().map(|(_, span)| span).collect(),
    }
}

/// The name is the SCST device's (a sysfs directory, a command argument) and its identity
/// state file's: [`valid_disk_name`], the rule `serve` applies.
fn disk_name(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<Spanned<String>> {
    let Some(name) = string(ctx, sec, "name", "\"accel0\"") else {
        if sec.get("name").is_none() {
            ctx.error(
                &sec.span,
                "this disk has no `name`",
                "add name = \"accel0\" (unique per disk)",
            );
        }
        return None;
    };
    if valid_disk_name(name.get_ref()) {
        return Some(name);
    }
    ctx.error(
        &name.span(),
        format!(
            "disk name {:?} cannot name an SCST device and its identity state file",
            name.get_ref()
        ),
        format!("use {DISK_NAME_RULE}"),
    );
    None
}

/// The board's name in the file (its command-line value).
fn board_name(board: BoardArg) -> String {
    board
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

fn board_names() -> String {
    BoardArg::value_variants()
        .iter()
        .filter_map(|b| b.to_possible_value())
        .map(|v| v.get_name().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn board(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<BoardArg> {
    let Some(text) = string(ctx, sec, "board", "\"ram\"") else {
        if sec.get("board").is_none() {
            ctx.error(
                &sec.span,
                "this disk has no `board`",
                format!("add board = \"...\" with one of: {}", board_names()),
            );
        }
        return None;
    };
    let board = BoardArg::from_str(text.get_ref(), false).ok();
    if board.is_none() {
        ctx.error(
            &text.span(),
            format!("unknown board {:?}", text.get_ref()),
            format!("use one of: {}", board_names()),
        );
    }
    board
}

/// `pci`: required by hardware boards (which function to claim through VFIO), refused by the
/// others (it would silently be ignored).
fn pci(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, board: Option<BoardArg>) -> Option<Spanned<String>> {
    let pci = string(ctx, sec, "pci", "\"0000:03:00.0\"");
    match (board, &pci) {
        (Some(b), None) if b.is_hardware() && sec.get("pci").is_none() => ctx.error(
            &sec.span,
            "a hardware board needs `pci`: which PCI function to claim",
            "add pci = \"DDDD:BB:DD.F\"; find it with lspci -D",
        ),
        (Some(b), Some(p)) if !b.is_hardware() => ctx.error(
            &p.span(),
            "`pci` is only for hardware boards (sca1, nvme, qemu-nvme)",
            "remove pci, or choose a hardware board",
        ),
        (_, Some(p)) if !is_pci_address(p.get_ref()) => ctx.error(
            &p.span(),
            format!("pci {:?} is not a PCI address", p.get_ref()),
            "write it as DDDD:BB:DD.F in hex, e.g. \"0000:03:00.0\"; lspci -D shows it",
        ),
        _ => return pci,
    }
    None
}

fn is_file_board(board: BoardArg) -> bool {
    matches!(board, BoardArg::File | BoardArg::Blockdev)
}

/// `path`: required by the file and blockdev boards (the image or the device), absolute (the
/// service runs from /), refused by the others (it would silently be ignored).
fn medium_path(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, board: Option<BoardArg>) -> Option<Spanned<String>> {
    let path = string(ctx, sec, "path", "\"/srv/disk0.img\"");
    match (board, &path) {
        (Some(b), None) if is_file_board(b) && sec.get("path").is_none() => ctx.error(
            &sec.span,
            format!(
                "board {} needs `path`: the disk image or block device",
                board_name(b)
            ),
            "add path = \"/srv/disk0.img\" (file) or path = \"/dev/sdX\" (blockdev)",
        ),
        (Some(b), Some(p)) if !is_file_board(b) => ctx.error(
            &p.span(),
            "`path` is only for the file and blockdev boards",
            "remove path, or choose board = \"file\" or \"blockdev\"",
        ),
        (_, Some(p)) if !Path::new(p.get_ref()).is_absolute() => ctx.error(
            &p.span(),
            format!("path {:?} is not absolute", p.get_ref()),
            "write the full path, e.g. \"/srv/disk0.img\" (the service runs from /)",
        ),
        _ => return path,
    }
    None
}

/// `DDDD:BB:DD.F`: domain, bus, device (at most 1f) and function (0-7), hex.
fn is_pci_address(text: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = text.split([':', '.']).collect();
    matches!(parts.as_slice(), [domain, bus, dev, func]
        if hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)
            && u8::from_str_radix(dev, 16).is_ok_and(|d| d <= 0x1f)
            && u8::from_str_radix(func, 16).is_ok_and(|f| f <= 7)
            && text.len() == 12)
}

/// The command line's settings, with the command line's defaults.
fn disk_args(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, name: Option<String>) -> DiskArgs {
    let u32_max = i128::from(u32::MAX);
    let block_size = block_size(ctx, sec);
    let size = size(ctx, sec, "size");
    if let (Some(size), Some(block)) = (&size, block_size) {
        if !size.get_ref().is_multiple_of(u64::from(block)) {
            ctx.error(
                &size.span(),
                format!(
                    "size {} is not a multiple of the block size {block}",
                    size.get_ref()
                ),
                format!("round the size to a multiple of {block} bytes"),
            );
        }
    }
    let scst_version = string(ctx, sec, "scst_version", "\"3.11\"").map(Spanned::into_inner);
    DiskArgs {
        name: name.unwrap_or_else(|| "accel0".into()),
        size: size.map_or(256 << 20, Spanned::into_inner),
        block_size: block_size.unwrap_or(512),
        size_given: sec.get("size").is_some(),
        block_size_given: sec.get("block_size").is_some(),
        workers: narrow(integer(ctx, sec, "workers", 1..=u32_max)).unwrap_or(2),
        batch: narrow(integer(ctx, sec, "batch", 1..=u32_max)).unwrap_or(16),
        buffer_memory: self::size(ctx, sec, "buffer_memory").map_or(1 << 30, Spanned::into_inner),
        scst_version: scst_version.unwrap_or_else(|| "3.11".into()),
        command_timeout: duration(ctx, sec, "command_timeout").unwrap_or(Duration::from_secs(5)),
        max_transfer_blocks: narrow(integer(ctx, sec, "max_transfer_blocks", 1..=u32_max)).unwrap_or(2048),
        path: None,
        buffered: boolean(ctx, sec, "buffered").unwrap_or(false),
        io_engine: io_engine(ctx, sec).unwrap_or_default(),
        premap: premap(ctx, sec),
        write_cache: boolean(ctx, sec, "write_cache").unwrap_or(true),
    }
}

/// `premap`: an array of "SIZE:COUNT" strings (`--premap`); invalid items are reported and left out.
fn premap(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Vec<Premap> {
    const EXAMPLE: &str = "[\"4k:4096\", \"128k:512\"]";
    let Some(value) = sec.get("premap") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        wrong_type(ctx, "premap", value, "an array of strings", EXAMPLE);
        return Vec::new();
    };
    let mut wanted = Vec::new();
    for item in items.iter() {
        let DeValue::String(text) = item.get_ref() else {
            wrong_type(ctx, "premap", item, "an array of strings", EXAMPLE);
            continue;
        };
        match Premap::parse(text) {
            Ok(p) => wanted.push(p),
            Err(e) => ctx.error(&item.span(), e, "write SIZE:COUNT, e.g. \"128k:512\""),
        }
    }
    wanted
}

/// `io_engine`: "auto", "uring" or "threads"; `None` when absent or invalid (reported).
fn io_engine(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<IoEngine> {
    let text = string(ctx, sec, "io_engine", "\"auto\"")?;
    match IoEngine::parse(text.get_ref()) {
        Ok(engine) => Some(engine),
        Err(e) => {
            ctx.error(
                &text.span(),
                e,
                "write \"auto\" (io_uring where the kernel offers it, else threads), \"uring\" (io_uring or fail) or \"threads\"",
            );
            None
        }
    }
}

/// The block size, the default when absent (so the size is checked against it); `None` when
/// it is invalid (already reported).
fn block_size(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<u32> {
    if sec.get("block_size").is_none() {
        return Some(512);
    }
    let block: u32 = narrow(integer(ctx, sec, "block_size", 512..=4096))?;
    if block.is_power_of_two() {
        return Some(block);
    }
    let at = sec.get("block_size").map_or(sec.span.clone(), |v| v.span());
    ctx.error(
        &at,
        format!("block_size {block} is not a power of two"),
        "use 512, 1024, 2048 or 4096",
    );
    None
}

/// Faults to inject: only a simulator can take them, each in its board's syntax.
fn inject(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, board: Option<BoardArg>) -> Vec<String> {
    let Some(value) = sec.get("inject") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        wrong_type(ctx, "inject", value, "an array of strings", "[\"latency:1ms\"]");
        return Vec::new();
    };
    if let Some(b) = board.filter(|b| !b.is_simulated() && !items.is_empty()) {
        ctx.error(
            &value.span(),
            format!("`inject` needs a simulated board, not {}", board_name(b)),
            "use board = \"sim\" or \"nvme-sim\", or remove inject",
        );
        return Vec::new();
    }
    let mut faults = Vec::new();
    for item in items.iter() {
        let DeValue::String(text) = item.get_ref() else {
            wrong_type(ctx, "inject", item, "an array of strings", "[\"latency:1ms\"]");
            continue;
        };
        if let Some(Err(e)) = board.map(|b| check_faults(b, &[text.to_string()])) {
            // check_faults words its message for the command line.
            let message = e.strip_prefix("--inject ").unwrap_or(&e).to_owned();
            ctx.error(
                &item.span(),
                message,
                "fix the fault, e.g. \"latency:500us\" or \"error:every=50\"",
            );
        }
        faults.push(text.to_string());
    }
    faults
}

fn read_identity(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> IdentitySpec {
    sec.check_keys(ctx, &["vendor", "product", "serial", "naa"]);
    IdentitySpec {
        vendor: ascii_field(ctx, sec, "vendor", 8),
        product: ascii_field(ctx, sec, "product", 16),
        serial: ascii_field(ctx, sec, "serial", 32),
        naa: naa(ctx, sec),
    }
}

/// An INQUIRY/VPD text field: fixed-width printable ASCII in the SCSI data.
fn ascii_field(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, max: usize) -> Option<String> {
    let text = string(ctx, sec, key, "\"ACME\"")?;
    let s = text.get_ref();
    if (1..=max).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Some(text.into_inner());
    }
    ctx.error(
        &text.span(),
        format!("identity {key} {s:?} is not 1 to {max} printable ASCII characters"),
        format!("shorten it to at most {max} characters of plain ASCII, or remove it to generate one"),
    );
    None
}

fn naa(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<String> {
    let text = string(ctx, sec, "naa", "\"6001405a1b2c3d4e5f60718293a4b5c6\"")?;
    let s = text.get_ref();
    let hex = s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && ((s.len() == 32 && s.starts_with('6')) || (s.len() == 16 && s.starts_with('3'))) {
        return Some(text.into_inner());
    }
    ctx.error(
        &text.span(),
        format!("identity naa {s:?} is not an NAA designator"),
        "give 32 hex digits starting with 6 (registered extended) or 16 starting with 3 (local), or remove it to generate one",
    );
    None
}

/// One `[[disk.export]]`; `None` when it is unusable (already reported).
fn read_export(
    ctx: &mut Ctx<'_>,
    table: &DeTable<'_>,
    span: Range<usize>,
) -> Option<(ExportSpec, Range<usize>)> {
    let sec = Section {
        table,
        span,
        name: "[[disk.export]]",
    };
    sec.check_keys(ctx, &["driver", "target", "lun", "enable"]);
    let driver = driver(ctx, &sec);
    let target = required(ctx, &sec, "target", "\"scst_local_tgt\"");
    let target = target.and_then(|t| check_target(ctx, driver, t));
    let lun = required_lun(ctx, &sec);
    if let (Some(TargetDriver::CopyManager), Some(SCST_MAX_LUN)) = (driver, lun) {
        // The copy manager takes SCST_MAX_LUN for "this device is none of my LUNs"
        // (scst_copy_mgr.c, scst_cm_get_lun): a device at that LUN counts as unregistered, so
        // SCST would add it a second time, at a free LUN, and never delete this one.
        let at = sec.get("lun").map_or_else(|| sec.span.clone(), |v| v.span());
        ctx.error(
            &at,
            format!("copy_manager LUN {SCST_MAX_LUN} is SCST_MAX_LUN, which the copy manager takes for \"not one of its LUNs\""),
            "use a lun from 0 to 16382",
        );
        return None;
    }
    let enable = boolean(ctx, &sec, "enable").unwrap_or(true);
    let spec = ExportSpec {
        driver: driver?,
        target: target?,
        lun: lun?,
        enable,
    };
    Some((spec, sec.span))
}

fn required(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, example: &str) -> Option<Spanned<String>> {
    if sec.get(key).is_none() {
        ctx.error(
            &sec.span,
            format!("this {} has no `{key}`", sec.name),
            format!("add {key} = {example}"),
        );
    }
    string(ctx, sec, key, example)
}

fn driver(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<TargetDriver> {
    let text = required(ctx, sec, "driver", "\"scst_local\"")?;
    match text.get_ref().as_str() {
        "scst_local" => Some(TargetDriver::ScstLocal),
        "iscsi" => Some(TargetDriver::Iscsi),
        "copy_manager" => Some(TargetDriver::CopyManager),
        other => {
            ctx.error(
                &text.span(),
                format!("unknown target driver {other:?}"),
                "use \"scst_local\", \"iscsi\" or \"copy_manager\"",
            );
            None
        }
    }
}

/// SCST's highest LUN (scst_const.h), the copy manager's "no LUN".
const SCST_MAX_LUN: u32 = (1 << (16 - 2)) - 1;

fn required_lun(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<u32> {
    if sec.get("lun").is_none() {
        ctx.error(
            &sec.span,
            "this [[disk.export]] has no `lun`",
            "add lun = 0 (0 to 16383)",
        );
        return None;
    }
    narrow(integer(ctx, sec, "lun", 0..=16383))
}

/// An iSCSI target must be a valid iSCSI name (initiators refuse others); a local target's
/// name becomes a sysfs directory.
fn check_target(ctx: &mut Ctx<'_>, driver: Option<TargetDriver>, target: Spanned<String>) -> Option<String> {
    let t = target.get_ref();
    let (ok, hint) = match driver {
        Some(TargetDriver::Iscsi) => (
            is_iscsi_name(t),
            "write an IQN like \"iqn.2024-01.com.example:accel0\" or \"eui.\" and 16 hex digits",
        ),
        _ => (
            !t.is_empty() && !t.contains('/') && !t.chars().any(char::is_whitespace),
            "give the target's name, e.g. \"scst_local_tgt\" (no spaces or /)",
        ),
    };
    if ok {
        return Some(target.into_inner());
    }
    ctx.error(
        &target.span(),
        format!("target {t:?} is not a valid target name"),
        hint,
    );
    None
}

/// `iqn.YYYY-MM.reverse.domain[:name]` or `eui.` + 16 hex digits (RFC 3720 3.2.6.3).
fn is_iscsi_name(name: &str) -> bool {
    if let Some(eui) = name.strip_prefix("eui.") {
        return eui.len() == 16 && eui.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return false;
    };
    let (authority, suffix) = rest.split_once(':').unwrap_or((rest, "x"));
    let Some((date, domain)) = authority.split_once('.') else {
        return false;
    };
    let date_ok = date.len() == 7
        && date
            .bytes()
            .enumerate()
            .all(|(i, b)| if i == 4 { b == b'-' } else { b.is_ascii_digit() })
        && matches!(date[5..].parse::<u8>(), Ok(1..=12));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    date_ok
        && name.len() <= 223
        && domain.split('.').all(label_ok)
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_graphic())
}

/// What a disk's `path` names, for telling two disks on one medium apart from two on two.
///
/// Two disks of one service on one image would corrupt each other, and the file store's lock
/// does not keep them apart everywhere: on NFS flock is emulated with a POSIX lock, which
/// belongs to the process, so the second disk of the one process gets it too (the file
/// store's `file/lock.rs`). So the configuration refuses it, whatever the spelling.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Medium {
    /// An existing file (its file system and inode: a hard link is the same file).
    Inode { dev: u64, ino: u64 },
    /// An existing block device (its device number: two device nodes of one disk).
    Device(u64),
    /// A path that does not exist yet (a file the store will create): its directory made
    /// canonical where it exists (a symlink or `..` in the directories names the same file),
    /// with the file's name; a dangling symlink is followed to the file it names first.
    Path(PathBuf),
}

impl Medium {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::FileTypeExt;
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => Self::Device(m.rdev()),
            Ok(m) => Self::Inode {
                dev: m.dev(),
                ino: m.ino(),
            },
            Err(_) => Self::Path(Self::future_file(path)),
        }
    }

    /// Where a file not yet created will be: a dangling symlink's target (relative to the
    /// link's directory), in its directory made canonical (`canonicalize` refuses a path
    /// whose last part does not exist).
    fn future_file(path: &Path) -> PathBuf {
        let path = match std::fs::read_link(path) {
            Ok(target) => path.parent().unwrap_or(Path::new("")).join(target),
            Err(_) => path.to_owned(),
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return path;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::canonicalize(dir).map_or(path.clone(), |dir| dir.join(name))
    }
}

/// Names, PCI functions, media, configured serials and designators, and LUNs must be unique
/// across disks: each error points at the later use and names the earlier one.
fn check_unique(ctx: &mut Ctx<'_>, disks: &[ReadDisk]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut serials: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut designators: HashMap<String, (&str, usize)> = HashMap::new();
    let mut functions: HashMap<String, (&str, usize)> = HashMap::new();
    let mut luns: HashMap<(&str, &str, u32), (&str, usize)> = HashMap::new();
    let mut paths: HashMap<Medium, (&str, usize)> = HashMap::new();
    for disk in disks {
        let name = disk.spec.args.name.as_str();
        if let Some(at) = &disk.name_at {
            let line = ctx.line(at.start);
            if let Some(first) = names.insert(name, line) {
                ctx.error(
                    at,
                    format!("disk name {name:?} is already used by the disk at line {first}"),
                    "give each disk its own name",
                );
            }
        }
        if let (Some(pci), Some(at)) = (&disk.spec.pci, &disk.pci_at) {
            let line = ctx.line(at.start);
            if let Some((other, first)) = functions.insert(pci.to_ascii_lowercase(), (name, line)) {
                ctx.error(
                    at,
                    format!("PCI function {pci} is already used by disk {other:?} (line {first})"),
                    "each disk needs its own PCI function; give another pci",
                );
            }
        }
        if let (Some(path), Some(at)) = (&disk.spec.args.path, &disk.path_at) {
            let line = ctx.line(at.start);
            if let Some((other, first)) = paths.insert(Medium::of(path), (name, line)) {
                ctx.error(
                    at,
                    format!(
                        "{} is already the medium of disk {other:?} (line {first})",
                        path.display()
                    ),
                    "two disks on one file or device would corrupt each other; give each its own path",
                );
            }
        }
        // Two disks with one serial (VPD 80h; with one vendor, also VPD 83h's T10 vendor ID
        // designator) or one NAA designator look like one LUN on two paths: multipath merges them.
        if let (Some(serial), Some(at)) = (&disk.spec.identity.serial, &disk.serial_at) {
            let line = ctx.line(at.start);
            if let Some((other, first)) = serials.insert(serial, (name, line)) {
                ctx.error(
                    at,
                    format!(
                        "disk {name:?} has identity serial {serial:?}, already the serial of disk \
                         {other:?} (line {first})"
                    ),
                    "multipath would merge the two disks into one device; give each disk its own \
                     serial, or remove it to have one generated",
                );
            }
        }
        if let (Some(naa), Some(at)) = (&disk.spec.identity.naa, &disk.naa_at) {
            let line = ctx.line(at.start);
            // Hex digits: "6ABC" and "6abc" are the same designator on the wire.
            if let Some((other, first)) = designators.insert(naa.to_ascii_lowercase(), (name, line)) {
                ctx.error(
                    at,
                    format!(
                        "disk {name:?} has identity naa {naa}, already the designator of disk \
                         {other:?} (line {first})"
                    ),
                    "multipath would merge the two disks into one device; give each disk its own \
                     naa, or remove it to have one generated",
                );
            }
        }
        for (export, at) in disk.spec.exports.iter().zip(&disk.exports_at) {
            let line = ctx.line(at.start);
            let key = (export.driver.sysfs_name(), export.target.as_str(), export.lun);
            if let Some((other, first)) = luns.insert(key, (name, line)) {
                ctx.error(
                    at,
                    format!(
                        "LUN {} of {} target {:?} is already exported by disk {other:?} (line {first})",
                        export.lun, key.0, export.target
                    ),
                    "give this export another lun or target",
                );
            }
        }
    }
}
