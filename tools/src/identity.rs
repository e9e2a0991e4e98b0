//! A disk's identity as initiators see it (INQUIRY vendor/product, VPD 80h serial, VPD 83h
//! designator), resolved once at start and stable for the life of the LUN.
//!
//! Multipath and clustered file systems key on the VPD 83h designator (and the serial): two
//! unrelated LUNs that report the same one get merged into one device, with data loss to
//! follow. So an identity is never derived from the disk's name (two appliances both calling
//! their disk `accel0` would collide); it comes, per field, from:
//!
//! 1. the configuration (`[disk.identity]`, or `--vendor/--product/--serial/--naa`): source
//!    "config";
//! 2. the state directory: the identity persisted in `STATE_DIR/identity/<disk>.toml` on an
//!    earlier start: source "state" ("device" when it was derived from the device's id and the
//!    device still reports that id). It wins over the device: a firmware update that starts
//!    reporting an NGUID, or another one, must not silently turn the disk into another LUN. A
//!    file from an earlier version (no `origin` in it) gives way to a device id, as that
//!    version did (it served the device's identity over any file), and is rewritten with it;
//! 3. the device: an NVMe namespace's NGUID, else its EUI64, reported as an EUI-64 based
//!    designator as the NVM Express SCSI Translation Reference maps them: source "device".
//!    Persisted, with the id it came from, when there is a state directory. Ids that are not
//!    unique never get here: the board's driver drops them (`DeviceIds::from_raw`: all zero,
//!    or QEMU's OUI 52:54:00, which every QEMU VM's first namespace reports; the board quirk
//!    `bogus_device_ids`, set on `qemu-nvme`);
//! 4. generated now from the OS random source (serial: 64 random bits as 16 hex digits;
//!    designator: NAA 3, locally assigned, 60 random bits) and persisted for next time:
//!    source "generated". Without a state directory (the demo) nothing is persisted.
//!
//! A state file that exists but does not parse is an error, never a reason to generate a new
//! identity: that would silently turn the disk into a different LUN for every initiator. So
//! is a state file derived from a device id when the device now reports another one
//! ([`IdentityError::DeviceChanged`]): the disk may sit on another medium, or the firmware
//! changed its ids, and only the operator knows which identity the LUN should keep.
//!
//! A new state file is linked into place (link(2), so the state directory's file system needs
//! hard links, as every Linux-native one has), never renamed over an existing one: two starts
//! of one disk that both find no file (`serve`, and `scst-accel identity` run beside it) both
//! make an identity, and the second to write takes the first's, so neither serves an identity
//! the disk will not have at its next start. The directories made for it are fsync'd with it.
//! A disk refused for another disk's identity ([`resolve_unique`]) writes nothing.

use crate::config::IdentitySpec;
use crate::status::IdentityView;
use clap::Args;
use scst_accel_handler::scsi::Designator;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::DeviceIds;
use serde::Deserialize;
use serde::Serialize;
use std::fs;
use std::io;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;

/// Default T10 vendor identification: the one the handler has always reported, so existing
/// initiator-side rules (udev, multipath blacklists) keep matching.
pub const DEFAULT_VENDOR: &str = "SCST_ACC";

/// The directory under the state directory that holds one file per disk.
const IDENTITY_DIR: &str = "identity";

/// A resolved identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// T10 vendor identification (1-8 printable ASCII characters).
    pub vendor: String,
    /// Product identification (1-16 printable ASCII characters).
    pub product: String,
    /// Unit serial number (1-32 printable ASCII characters).
    pub serial: String,
    /// The LU designator of VPD 83h.
    pub naa: Designator,
    /// Where the serial and designator came from: "config", "device", "state" or "generated"
    /// (the least configured of the two, so a generated serial next to a configured NAA says
    /// "generated").
    pub source: &'static str,
}

impl Identity {
    /// As the status contract reports it.
    pub fn view(&self) -> IdentityView {
        IdentityView {
            vendor: self.vendor.clone(),
            product: self.product.clone(),
            serial: self.serial.clone(),
            naa: self.naa.to_string(),
            source: self.source.to_owned(),
        }
    }

    /// Give the SCSI disk this identity.
    pub fn apply(&self, config: &mut DiskConfig) {
        config.vendor.clone_from(&self.vendor);
        config.product.clone_from(&self.product);
        config.serial.clone_from(&self.serial);
        config.designator = self.naa;
    }
}

/// Why no identity could be resolved. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A configured field is not acceptable.
    #[error("identity {field} {value:?} is invalid: {reason}; fix it in the configuration (or the --{field} flag)")]
    InvalidField {
        /// `vendor`, `product`, `serial` or `naa`.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The disk name cannot name a state file.
    #[error("disk name {0:?} cannot name an identity state file: use {rule}", rule = crate::disk::DISK_NAME_RULE)]
    DiskName(String),
    /// The state directory cannot be created or written.
    #[error("cannot write identity state in {dir}: {source}; create it (writable by the service, mode 0700) or point service.state_dir / --state-dir elsewhere{links}", links = links_hint(.source))]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The state file exists but cannot be read.
    #[error("cannot read identity state file {path}: {source}; fix its permissions")]
    StateRead {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The state file does not parse.
    #[error("identity state file {path} is corrupt ({reason}); fix it, or remove it to give the disk a NEW identity (initiators will then see a different LUN)")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another disk of the service already has this serial or designator: initiators would
    /// take the two for one LUN (multipath merges paths by them), and write one disk's data
    /// through the other's paths.
    #[error("disk {disk}'s {field} {value} is disk {other}'s too: initiators would take them for one LUN (multipath merges by it); give one of them its own {field} in the configuration, or remove its identity state file to generate a new one (its initiators then see a new LUN)")]
    Duplicate {
        /// The disk being started.
        disk: String,
        /// The disk that has it.
        other: String,
        /// `serial` or `naa`.
        field: &'static str,
        /// The value both have.
        value: String,
    },
    /// The state file records an identity derived from a device id, and the device now
    /// reports another: another namespace behind the disk, or firmware that changed its ids.
    /// Serving either identity silently could make initiators take one LUN for another.
    #[error("disk {disk}'s identity in {path} was derived from device id {recorded}, but the device now reports {current} (another namespace, or firmware that changed its ids): to give the disk the new device's identity, delete {path} (initiators then see a new LUN); to keep the old one, set serial and naa in the configuration ([disk.identity], or --serial/--naa) to the values in {path}")]
    DeviceChanged {
        /// The disk being started.
        disk: String,
        /// Its state file.
        path: PathBuf,
        /// The device id the persisted identity came from.
        recorded: String,
        /// The device id reported now.
        current: String,
    },
    /// The state file was created by another start between this one's look and its write, and
    /// gone again at the next look, more than once: something keeps removing it.
    #[error("identity state file {path} keeps appearing and disappearing while this disk starts: stop whatever removes it (another scst-accel, a cleanup job), then start the disk again")]
    StateContended {
        /// The file.
        path: PathBuf,
    },
    /// The OS random source failed.
    #[error("cannot read random bytes from /dev/urandom to generate an identity: {0}; configure serial and naa explicitly")]
    Random(io::Error),
}

/// A hint where a state file could not be linked into place because the file system has no
/// hard links (vfat answers EPERM, some FUSE file systems EOPNOTSUPP or ENOSYS).
fn links_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS) => {
            " (new state files are hard-linked into place: the state directory must be on a file system with hard links, not vfat)"
        }
        _ => "",
    }
}

/// What a state file holds: only the generated or device-derived fields (vendor and product
/// come from the configuration or fixed defaults, so they are not frozen here).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    serial: String,
    naa: String,
    /// The device id (a designator, `eui.` + hex) the identity was derived from; absent for a
    /// generated one, and in files written before it was recorded (those were all generated:
    /// a device-derived identity was not persisted then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    /// Where the identity came from, `generated` or `device`; absent in a file written before
    /// the state file won over the device (a legacy file, [`State::legacy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

/// A parsed state file.
struct State {
    serial: String,
    naa: Designator,
    device_id: Option<Designator>,
    /// Written by a version that served a namespace's id over any state file (no `origin`):
    /// a disk whose device reports an id was known to initiators by the device's identity.
    legacy: bool,
}

/// Identity flags of `serve` and `identity`: each overrides the generated value.
#[derive(Args, Debug, Clone, Default)]
pub struct IdentityFlags {
    /// T10 vendor identification (1-8 printable ASCII characters).
    #[arg(long)]
    pub vendor: Option<String>,
    /// Product identification (1-16 printable ASCII characters; default: the disk name).
    #[arg(long)]
    pub product: Option<String>,
    /// Unit serial number (1-32 printable ASCII characters).
    #[arg(long)]
    pub serial: Option<String>,
    /// NAA designator: 32 hex digits starting with 6, or 16 starting with 3.
    #[arg(long)]
    pub naa: Option<String>,
}

impl IdentityFlags {
    /// As a configuration's identity block.
    pub fn spec(&self) -> IdentitySpec {
        IdentitySpec {
            vendor: self.vendor.clone(),
            product: self.product.clone(),
            serial: self.serial.clone(),
            naa: self.naa.clone(),
        }
    }
}

fn check_ascii(field: &'static str, value: &str, max: usize) -> Result<String, IdentityError> {
    let bad = |reason: String| IdentityError::InvalidField {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || value.len() > max {
        return Err(bad(format!("it must be 1 to {max} characters")));
    }
    // SPC-4 §4.4.1: these fields are printable ASCII (20h-7Eh).
    if !value.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return Err(bad("only printable ASCII characters are allowed".into()));
    }
    Ok(value.to_owned())
}

/// The designator an NVMe namespace's ids give, per the NVM Express SCSI Translation
/// Reference: a non-zero NGUID as a 16-byte EUI-64 based designator, else a non-zero EUI64 as
/// an 8-byte one.
fn device_designator(device: &DeviceIds) -> Option<Designator> {
    device
        .nguid
        .map(Designator::Eui64Extended)
        .or(device.eui64.map(Designator::Eui64))
}

/// Resolve the identity of `disk_name` (see the module documentation for the order).
///
/// # Errors
/// An invalid configured field, an unusable state directory, a corrupt state file, a state
/// file derived from another device id than the device reports now, or no random source:
/// [`IdentityError`] saying what to do.
pub fn resolve(
    disk_name: &str,
    spec: &IdentitySpec,
    state_dir: Option<&Path>,
    device: Option<&DeviceIds>,
) -> Result<Identity, IdentityError> {
    resolve_unique(disk_name, spec, state_dir, device, &[])
}

/// [`resolve`], refusing an identity that one of `others` (the service's other disks: names
/// and identities) has ([`check_unique`]) before anything is written: a disk refused leaves no
/// state file behind, which would otherwise keep the refused identity for its next start (a
/// disk over another disk's namespace, once pointed at its own, would then be refused as
/// [`IdentityError::DeviceChanged`]).
///
/// A new state file never replaces one another start (`serve`, `scst-accel identity`) created
/// since this one looked: the file is linked into place, and where one is there already the
/// identity in it is taken instead, so both starts give the disk the one identity on disk.
///
/// # Errors
/// As [`resolve`], and [`IdentityError::Duplicate`].
pub fn resolve_unique(
    disk_name: &str,
    spec: &IdentitySpec,
    state_dir: Option<&Path>,
    device: Option<&DeviceIds>,
    others: &[(String, IdentityView)],
) -> Result<Identity, IdentityError> {
    if let Some(dir) = state_dir {
        // A bad name is reported as such, before anything else complains about it.
        state_path(dir, disk_name)?;
    }
    let vendor = check_ascii("vendor", spec.vendor.as_deref().unwrap_or(DEFAULT_VENDOR), 8)?;
    let default_product: String = disk_name.chars().take(16).collect();
    let product = check_ascii("product", spec.product.as_deref().unwrap_or(&default_product), 16)?;
    let serial = spec
        .serial
        .as_deref()
        .map(|s| check_ascii("serial", s, 32))
        .transpose()?;
    let naa = spec
        .naa
        .as_deref()
        .map(|n| {
            n.parse::<Designator>()
                .ok()
                .filter(|d| matches!(d, Designator::RegisteredExtended(_) | Designator::Local(_)))
                .ok_or_else(|| IdentityError::InvalidField {
                    field: "naa",
                    value: n.to_owned(),
                    reason:
                        "give 32 hex digits starting with 6 (NAA 6) or 16 hex digits starting with 3 (NAA 3)"
                            .into(),
                })
        })
        .transpose()?;
    // The identity served: the configured fields over `base`, refused where another disk has
    // it.
    let unique = |base_serial: &str, base_naa: Designator, source| {
        let identity = Identity {
            vendor: vendor.clone(),
            product: product.clone(),
            serial: serial.clone().unwrap_or_else(|| base_serial.to_owned()),
            naa: naa.unwrap_or(base_naa),
            source,
        };
        let others = others.iter().map(|(name, view)| (name.as_str(), view));
        check_unique(disk_name, &identity, others).map(|()| identity)
    };
    if let (Some(serial), Some(naa)) = (&serial, naa) {
        return unique(serial, naa, "config");
    }
    let device = device.and_then(device_designator);
    let Some(dir) = state_dir else {
        let (base_serial, base_naa, source) = match device {
            Some(dev) => (device_serial(dev), dev, "device"),
            None => {
                let (s, n) = generate()?;
                (s, n, "generated")
            }
        };
        return unique(&base_serial, base_naa, source);
    };
    let path = state_path(dir, disk_name)?;
    // A second round only when another start created the file between this one's look and its
    // write: the next look finds that file.
    for _ in 0..CREATE_ROUNDS {
        let base = load_or_plan(disk_name, &path, device)?;
        let identity = unique(&base.serial, base.naa, base.source)?;
        let Some(write) = base.write else {
            return Ok(identity);
        };
        #[cfg(test)]
        tests::before_write(write);
        if persist(&path, disk_name, &base.serial, base.naa, write)? {
            return Ok(identity);
        }
        log::info!(
            "disk {disk_name}: {} was created by another start (serve, or scst-accel identity) \
             while this one made its identity; taking the identity in it",
            path.display()
        );
    }
    Err(IdentityError::StateContended { path })
}

/// Looks at the state file [`resolve_unique`] makes before giving up: each round but the
/// first follows a file that appeared, so more than two means it keeps being removed.
const CREATE_ROUNDS: usize = 3;

/// What [`resolve`] will give `disk_name` as far as it is known before its board opens: the
/// configured serial and NAA, else those its state file holds when there is one (read only:
/// nothing is created or rewritten); empty where only the start can tell (a device-derived
/// identity, one generated now, a file that does not parse). For [`check_unique`] against a
/// disk that has not started or failed to, so that a state file copied from another disk is
/// refused whether or not that disk came up.
pub fn planned(disk_name: &str, spec: &IdentitySpec, state_dir: Option<&Path>) -> IdentityView {
    let stored = state_dir
        .and_then(|dir| state_path(dir, disk_name).ok())
        .and_then(|path| {
            let text = fs::read_to_string(&path).ok()?;
            parse_state(&path, &text).ok()
        });
    let configured_naa = spec
        .naa
        .as_deref()
        .and_then(|n| n.parse::<Designator>().ok())
        .map(|d| d.to_string());
    IdentityView {
        serial: spec
            .serial
            .clone()
            .or_else(|| stored.as_ref().map(|s| s.serial.clone()))
            .unwrap_or_default(),
        naa: configured_naa
            .or_else(|| stored.as_ref().map(|s| s.naa.to_string()))
            .unwrap_or_default(),
        ..IdentityView::default()
    }
}

/// The serial a device id gives: its hex (at most 32 digits), so the same namespace keeps the
/// same serial even without a state directory.
fn device_serial(dev: Designator) -> String {
    dev.bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuse an identity that another disk of the service has (`others`: their names and
/// identities). The configuration check refuses duplicate configured values; this catches the
/// rest, known only when the disks start: a configured serial equal to another disk's
/// generated or device-derived one, two disks over one namespace, a state file copied from
/// another disk.
///
/// # Errors
/// [`IdentityError::Duplicate`] naming the first clash.
pub fn check_unique<'a>(
    disk_name: &str,
    identity: &Identity,
    others: impl IntoIterator<Item = (&'a str, &'a IdentityView)>,
) -> Result<(), IdentityError> {
    let naa = identity.naa.to_string();
    for (other, view) in others {
        // A disk not started yet has no identity (empty fields): nothing to clash with.
        let clash = if !view.serial.is_empty() && view.serial == identity.serial {
            Some(("serial", identity.serial.clone()))
        } else if !view.naa.is_empty() && view.naa == naa {
            Some(("naa", naa.clone()))
        } else {
            None
        };
        if let Some((field, value)) = clash {
            return Err(IdentityError::Duplicate {
                disk: disk_name.to_owned(),
                other: other.to_owned(),
                field,
                value,
            });
        }
    }
    Ok(())
}

/// The state file of `disk_name` under `state_dir`.
pub fn state_path(state_dir: &Path, disk_name: &str) -> Result<PathBuf, IdentityError> {
    if !crate::disk::valid_disk_name(disk_name) {
        return Err(IdentityError::DiskName(disk_name.to_owned()));
    }
    Ok(state_dir.join(IDENTITY_DIR).join(format!("{disk_name}.toml")))
}

/// What the state directory gives a disk: the identity in its state file, or the one to
/// write there.
struct Base {
    serial: String,
    naa: Designator,
    source: &'static str,
    /// What to write before serving it; `None`: the file holds it already.
    write: Option<StateWrite>,
}

/// How [`persist`] writes a state file.
#[derive(Clone, Copy, Debug)]
enum StateWrite {
    /// There was none: create it, unless another start has since (its identity is then the
    /// disk's).
    Create {
        /// The device id the identity came from; `None`: generated.
        device_id: Option<Designator>,
    },
    /// Rewrite a legacy file in this version's format, with the device id (`device_id`) whose
    /// identity it stands for: a start racing this one writes the same.
    Upgrade {
        /// The device id.
        device_id: Designator,
    },
}

/// The persisted identity of `disk_name` (in `path`), checked against the device's id
/// (`device`); or, with no state file yet, the device's identity or a generated one, to be
/// written.
fn load_or_plan(disk_name: &str, path: &Path, device: Option<Designator>) -> Result<Base, IdentityError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (serial, naa, source) = match device {
                Some(dev) => (device_serial(dev), dev, "device"),
                None => {
                    let (s, n) = generate()?;
                    (s, n, "generated")
                }
            };
            return Ok(Base {
                serial,
                naa,
                source,
                write: Some(StateWrite::Create { device_id: device }),
            });
        }
        Err(source) => {
            return Err(IdentityError::StateRead {
                path: path.to_owned(),
                source,
            })
        }
    };
    let state = parse_state(path, &text)?;
    if let (true, Some(current)) = (state.legacy, device) {
        // The version that wrote this file served the device's id over it: that is the
        // identity initiators know. Kept, and recorded in this version's format.
        log::info!(
            "disk {disk_name}: {} is from an earlier version, which served the device's id \
             {current} over it; keeping that identity and recording it there",
            path.display()
        );
        return Ok(Base {
            serial: device_serial(current),
            naa: current,
            source: "device",
            write: Some(StateWrite::Upgrade { device_id: current }),
        });
    }
    let source = match (state.device_id, device) {
        (Some(recorded), Some(current)) if recorded != current => {
            return Err(IdentityError::DeviceChanged {
                disk: disk_name.to_owned(),
                path: path.to_owned(),
                recorded: recorded.to_string(),
                current: current.to_string(),
            });
        }
        (Some(_), Some(_)) => "device",
        (None, Some(current)) => {
            // Generated while the device reported no usable id (firmware that reports one
            // since): initiators know the LUN by the generated identity.
            log::warn!(
                "disk {disk_name}: keeps its persisted identity ({}), not the device id \
                 {current} it reports now; delete that file to take the device's",
                path.display()
            );
            "state"
        }
        (_, None) => "state",
    };
    Ok(Base {
        serial: state.serial,
        naa: state.naa,
        source,
        write: None,
    })
}

fn parse_state(path: &Path, text: &str) -> Result<State, IdentityError> {
    let corrupt = |reason: String| IdentityError::StateCorrupt {
        path: path.to_owned(),
        reason,
    };
    let file: StateFile = toml::from_str(text).map_err(|e| corrupt(e.message().to_owned()))?;
    let serial = check_ascii("serial", &file.serial, 32).map_err(|e| corrupt(e.to_string()))?;
    let naa = file
        .naa
        .parse::<Designator>()
        .map_err(|e| corrupt(e.to_string()))?;
    let device_id = file
        .device_id
        .map(|d| d.parse::<Designator>())
        .transpose()
        .map_err(|e| corrupt(format!("device_id: {e}")))?;
    match (file.origin.as_deref(), device_id) {
        (None | Some("generated"), None) | (Some("device"), Some(_)) => {}
        (origin, _) => {
            return Err(corrupt(format!(
                "origin {origin:?} does not go with device_id {:?}",
                device_id.map(|d| d.to_string())
            )))
        }
    }
    Ok(State {
        serial,
        naa,
        device_id,
        legacy: file.origin.is_none(),
    })
}

fn generate() -> Result<(String, Designator), IdentityError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(IdentityError::Random)?;
    let serial: String = bytes[..8].iter().map(|b| format!("{b:02X}")).collect();
    let naa = Designator::local(u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default()));
    Ok((serial, naa))
}

/// Write the state file so that a crash at any point leaves either no file or the whole
/// file: a temporary file in the same directory, fsync'd, then put in place, then the
/// directory fsync'd so that the new name is durable too. Created (`StateWrite::Create`) by
/// link(2), which fails where the name exists, so a file another start wrote since this one
/// looked is never replaced: `Ok(false)`, and the caller takes the identity in it (a rename
/// would leave this start serving one identity and the disk's next start another). Upgraded
/// by rename(2) over the file read. The directories are created as needed ([`create_dirs`]).
/// `Ok(true)`: written.
fn persist(
    path: &Path,
    disk_name: &str,
    serial: &str,
    naa: Designator,
    write: StateWrite,
) -> Result<bool, IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |source: io::Error| IdentityError::StateDir {
        dir: dir.to_owned(),
        source,
    };
    create_dirs(dir).map_err(err)?;
    let device_id = match write {
        StateWrite::Create { device_id } => device_id,
        StateWrite::Upgrade { device_id } => Some(device_id),
    };
    let body = toml::to_string(&StateFile {
        serial: serial.to_owned(),
        naa: naa.to_string(),
        device_id: device_id.map(|d| d.to_string()),
        origin: Some(
            if device_id.is_some() {
                "device"
            } else {
                "generated"
            }
            .to_owned(),
        ),
    })
    .map_err(|e| err(io::Error::other(e)))?;
    let origin = if device_id.is_some() {
        "taken from its device's id"
    } else {
        "generated"
    };
    let text = format!(
        "# Identity of SCST disk {disk_name:?}, {origin} once by scst-accel. Initiators know the\n\
         # LUN by it: changing or removing this file makes it a different LUN to them.\n{body}"
    );
    let write_file = || -> io::Result<bool> {
        let tmp = crate::state_file::write_temporary(dir, &format!("{disk_name}.toml"), &text)?;
        let placed = match write {
            StateWrite::Upgrade { .. } => fs::rename(&tmp, path).map(|()| true),
            StateWrite::Create { .. } => match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
        };
        let placed = placed.inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        if matches!(write, StateWrite::Create { .. }) {
            if let Err(e) = fs::remove_file(&tmp) {
                // The state file is in place (or another's is): a stray temporary is
                // harmless, nothing reads it.
                log::warn!("cannot remove {}: {e}", tmp.display());
            }
        }
        // Also where another start's file won: the identity served is then in that file,
        // whose name that start may not have made durable yet.
        sync_dir(dir)?;
        Ok(placed)
    };
    write_file().map_err(err)
}

/// Create `dir` and whichever of its ancestors are missing, mode 0700 (the identity is the
/// service's own; nobody else should edit it). A directory's name lives in its parent, so each
/// parent is fsync'd once it holds the new name: otherwise a crash could lose the directory,
/// with the state file in it, after the file's own fsync ([`persist`] fsyncs `dir` itself
/// once the file is in it).
fn create_dirs(dir: &Path) -> io::Result<()> {
    crate::state_file::create_dirs(dir, sync_dir)
}

/// fsync(2) a directory, so that the names made in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()?;
    #[cfg(test)]
    tests::synced(dir);
    Ok(())
}

/// `identity` arguments.
#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// SCST device name of the disk.
    #[arg(long, default_value = "accel0")]
    pub name: String,
    /// State directory, as `serve --state-dir` (the identity is persisted there if generated).
    #[arg(long, default_value = "/var/lib/scst-accel")]
    pub state_dir: PathBuf,
    /// Print JSON (the status contract's identity object) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: IdentityFlags,
}

/// `scst-accel identity`: resolve (and persist, if generated) the identity `serve` would give
/// the disk, without a board or SCST, and print it. Returns the process exit code.
///
/// The board is not opened, so an NVMe namespace's NGUID/EUI64 is not consulted: for a disk
/// with no state file yet this generates and persists an identity, which `serve` then keeps
/// (the state directory wins over the device) even on a board whose namespace reports an id.
/// A `serve` starting the disk at the same moment gives it the same identity: whichever writes
/// the file first, the other takes the identity in it.
pub fn run(args: IdentityArgs) -> u8 {
    match resolve(&args.name, &args.flags.spec(), Some(&args.state_dir), None) {
        Ok(id) => {
            let view = id.view();
            if args.json {
                match serde_json::to_string(&view) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("scst-accel identity: {e}");
                        return crate::exit::SOFTWARE;
                    }
                }
            } else {
                println!("vendor:  {}", view.vendor);
                println!("product: {}", view.product);
                println!("serial:  {}", view.serial);
                println!("naa:     {}", view.naa);
                println!("source:  {}", view.source);
            }
            0
        }
        Err(e) => {
            eprintln!("scst-accel identity: {e}");
            crate::exit::CONFIG
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A state directory whose file system refuses link(2) (vfat: EPERM) says that hard links
    /// are what it lacks; other failures do not.
    #[test]
    fn a_state_dir_without_hard_links_says_so() {
        let refused = |errno| {
            IdentityError::StateDir {
                dir: PathBuf::from("/mnt/vfat/scst-accel"),
                source: io::Error::from_raw_os_error(errno),
            }
            .to_string()
        };
        assert!(
            refused(libc::EPERM).contains("hard links"),
            "{}",
            refused(libc::EPERM)
        );
        assert!(refused(libc::EOPNOTSUPP).contains("hard links"));
        assert!(!refused(libc::EACCES).contains("hard links"));
    }

    thread_local! {
        /// Run once by the next resolve on this thread that is about to create a state file,
        /// after its look found none: what another start does meanwhile.
        static BEFORE_CREATE: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
        /// The directories fsync'd on this thread, in order.
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn before_write(write: StateWrite) {
        if matches!(write, StateWrite::Create { .. }) {
            if let Some(hook) = BEFORE_CREATE.with(|h| h.borrow_mut().take()) {
                hook();
            }
        }
    }

    pub(super) fn synced(dir: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(dir.to_owned()));
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scst-accel-identity-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn config_wins() {
        let spec = IdentitySpec {
            vendor: Some("ACME".into()),
            product: Some("Box".into()),
            serial: Some("SN-1".into()),
            naa: Some("6001405abcdef0120123456789abcdef".into()),
        };
        let ids = DeviceIds {
            nguid: Some([1; 16]),
            eui64: None,
        };
        let dir = temp_dir("config");
        let id = resolve("accel0", &spec, Some(&dir), Some(&ids)).unwrap();
        assert_eq!(
            (id.vendor.as_str(), id.product.as_str(), id.serial.as_str()),
            ("ACME", "Box", "SN-1")
        );
        assert_eq!(id.naa.to_string(), "6001405abcdef0120123456789abcdef");
        assert_eq!(id.source, "config");
        assert!(!dir.exists(), "a fully configured identity writes no state");
    }

    #[test]
    fn defaults_are_the_handler_vendor_and_the_name() {
        let id = resolve("a-very-long-disk-name", &IdentitySpec::default(), None, None).unwrap();
        assert_eq!(id.vendor, DEFAULT_VENDOR);
        assert_eq!(id.product, "a-very-long-disk");
        assert_eq!(id.source, "generated");
        assert!(matches!(id.naa, Designator::Local(b) if b[0] >> 4 == 3));
        assert_eq!(id.serial.len(), 16);
    }

    #[test]
    fn persisted_identity_survives_a_second_resolve() {
        let dir = temp_dir("persist");
        let first = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!(first.source, "generated");
        let second = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!(second.source, "state");
        assert_eq!((first.serial, first.naa), (second.serial, second.naa));
        let path = state_path(&dir, "accel0").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Two starts of one disk with no state file yet (`serve`, and `scst-accel identity` run
    /// beside it): each looks, finds none and makes an identity; the second to write takes
    /// the first's, so both give the disk the identity on disk, which its next start keeps.
    #[test]
    fn a_state_file_another_start_created_meanwhile_is_taken_not_replaced() {
        let dir = temp_dir("race");
        let other: Rc<RefCell<Option<Identity>>> = Rc::default();
        let (slot, other_dir) = (Rc::clone(&other), dir.clone());
        BEFORE_CREATE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let id = resolve("accel0", &IdentitySpec::default(), Some(&other_dir), None).unwrap();
                *slot.borrow_mut() = Some(id);
            }));
        });
        let this = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        let other = other
            .take()
            .expect("the other start ran between the look and the write");
        assert_eq!(other.source, "generated");
        assert_eq!(
            (&this.serial, this.naa),
            (&other.serial, other.naa),
            "both serve the first identity written"
        );
        assert_eq!(this.source, "state");
        let next = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!((next.serial, next.naa), (other.serial, other.naa));
        let names: Vec<_> = fs::read_dir(dir.join(IDENTITY_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["accel0.toml"], "no temporary file is left");
        let _ = fs::remove_dir_all(&dir);
    }

    /// The directories a first start creates are durable with the file: each one's parent is
    /// fsync'd once it holds the new name, and the identity directory once the file is in it.
    #[test]
    fn the_directories_made_for_a_state_file_are_fsynced_with_it() {
        let root = temp_dir("durable");
        let state = root.join("state");
        SYNCED.with(|s| s.borrow_mut().clear());
        resolve("accel0", &IdentitySpec::default(), Some(&state), None).unwrap();
        let synced = SYNCED.with(|s| s.take());
        let parent = root.parent().unwrap().to_owned();
        assert_eq!(
            synced,
            [parent, root.clone(), state.clone(), state.join(IDENTITY_DIR)]
        );
        // Nothing is created a second time: only the file's directory, for a new file.
        fs::remove_file(state_path(&state, "accel0").unwrap()).unwrap();
        resolve("accel0", &IdentitySpec::default(), Some(&state), None).unwrap();
        assert_eq!(SYNCED.with(|s| s.take()), [state.join(IDENTITY_DIR)]);
        let _ = fs::remove_dir_all(&root);
    }

    /// A disk refused because another disk has its identity writes no state file: it would
    /// keep the refused identity for the disk's next start.
    #[test]
    fn a_disk_refused_as_a_duplicate_leaves_no_state_file() {
        let dir = temp_dir("refused");
        let ids = DeviceIds {
            nguid: Some([0x44; 16]),
            eui64: None,
        };
        let first = resolve("a", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        let others = [("a".to_owned(), first.view())];
        // Two disks over one namespace.
        let err = resolve_unique("b", &IdentitySpec::default(), Some(&dir), Some(&ids), &others).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Duplicate { other, field: "serial", .. } if other == "a"),
            "{err}"
        );
        assert!(
            !state_path(&dir, "b").unwrap().exists(),
            "b's identity was written"
        );
        // A configured serial another disk has, the rest generated.
        let spec = IdentitySpec {
            serial: Some(first.serial.clone()),
            ..IdentitySpec::default()
        };
        let err = resolve_unique("c", &spec, Some(&dir), None, &others).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Duplicate { field: "serial", .. }),
            "{err}"
        );
        assert!(
            !state_path(&dir, "c").unwrap().exists(),
            "c's identity was written"
        );
        // Unrefused, it is written as before.
        let c = resolve_unique("c", &IdentitySpec::default(), Some(&dir), None, &others).unwrap();
        assert_eq!(c.source, "generated");
        assert!(state_path(&dir, "c").unwrap().exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_state_dirs_give_different_identities() {
        let (a, b) = (temp_dir("two-a"), temp_dir("two-b"));
        let x = resolve("accel0", &IdentitySpec::default(), Some(&a), None).unwrap();
        let y = resolve("accel0", &IdentitySpec::default(), Some(&b), None).unwrap();
        assert_ne!(x.naa, y.naa);
        assert_ne!(x.serial, y.serial);
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_a_new_identity() {
        let dir = temp_dir("corrupt");
        let path = state_path(&dir, "accel0").unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        for text in ["serial = \"X\"\nnaa = \"5000\"\n", "naa = 3\n", "\0garbage"] {
            fs::write(&path, text).unwrap();
            let err = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, IdentityError::StateCorrupt { .. }), "{msg}");
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("remove it"),
                "{msg}"
            );
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "the file is left alone");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn nvme_ids_are_used_when_nothing_is_configured() {
        let nguid: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let ids = DeviceIds {
            nguid: Some(nguid),
            eui64: Some([9; 8]),
        };
        let dir = temp_dir("device");
        let id = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        assert_eq!(id.naa, Designator::Eui64Extended(nguid));
        assert_eq!(id.serial, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(id.source, "device");
        // Persisted with the id it came from, so a later change of the device's id is seen.
        let text = fs::read_to_string(state_path(&dir, "accel0").unwrap()).unwrap();
        assert!(
            text.contains("device_id = \"eui.0102030405060708090a0b0c0d0e0f10\""),
            "{text}"
        );
        let again = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        assert_eq!(
            (again.serial, again.naa, again.source),
            (id.serial, id.naa, "device")
        );
        let _ = fs::remove_dir_all(&dir);
        let only_eui = DeviceIds {
            nguid: None,
            eui64: Some([9; 8]),
        };
        let id = resolve("accel0", &IdentitySpec::default(), None, Some(&only_eui)).unwrap();
        assert_eq!(id.naa, Designator::Eui64([9; 8]));
    }

    /// An NVMe simulator whose namespace reports only `eui64` (an all-zero NGUID is "none"),
    /// opened as `board`: the device ids its store hands to `resolve`.
    fn sim_device_ids(
        board: &'static scst_accel_boards::definition::BoardDefinition,
        eui64: [u8; 8],
    ) -> Option<DeviceIds> {
        use scst_accel_boards::open::open_board;
        use scst_accel_boards::open::BoardSource;
        use scst_accel_boards::sim::nvme::NvmeSimConfig;
        use scst_accel_handler::store::accel::AccelConfig;
        use scst_accel_handler::store::accel::AccelStore;
        use scst_accel_handler::store::Store;

        let config = NvmeSimConfig {
            num_blocks: 4096,
            nguid: Some([0; 16]),
            eui64: Some(eui64),
            ..NvmeSimConfig::default()
        };
        let opened = open_board(board, BoardSource::NvmeSim(config), 1).expect("open");
        let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
        let ids = store.info().device_ids;
        let _ = store.board().shutdown();
        ids
    }

    /// QEMU gives the first namespace of every VM the EUI64 52:54:00:00:00:00:00:01: two
    /// appliances on QEMU, each with its own state directory, must still differ, even on the
    /// generic `nvme` board (the OUI) and whatever the EUI64 on `qemu-nvme` (its quirk).
    #[test]
    fn qemus_default_eui64_does_not_give_two_appliances_one_identity() {
        use scst_accel_boards::definition;
        const QEMU_DEFAULT: [u8; 8] = [0x52, 0x54, 0, 0, 0, 0, 0, 1];
        let ids = sim_device_ids(&definition::NVME, QEMU_DEFAULT);
        assert_eq!(ids, None, "QEMU's OUI is not an identity");
        let (a, b) = (temp_dir("qemu-a"), temp_dir("qemu-b"));
        let x = resolve("accel0", &IdentitySpec::default(), Some(&a), ids.as_ref()).unwrap();
        let y = resolve("accel0", &IdentitySpec::default(), Some(&b), ids.as_ref()).unwrap();
        assert_ne!(x.naa, y.naa);
        assert_ne!(x.serial, y.serial);
        assert_eq!((x.source, y.source), ("generated", "generated"));
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
        // The quirk drops any id of the board, an explicitly configured one too.
        assert_eq!(
            sim_device_ids(&definition::QEMU_NVME, [0x5A, 0xCC, 0xE1, 0, 0, 0, 0, 7]),
            None
        );
        assert!(sim_device_ids(&definition::NVME, [0x5A, 0xCC, 0xE1, 0, 0, 0, 0, 7]).is_some());
        // An NGUID carries its OUI in bytes 8-10; a usable NGUID is kept beside a QEMU EUI64.
        let mut qemu_nguid = [7u8; 16];
        qemu_nguid[8..11].copy_from_slice(&[0x52, 0x54, 0]);
        assert_eq!(DeviceIds::from_raw(qemu_nguid, QEMU_DEFAULT), None);
        assert_eq!(
            DeviceIds::from_raw([7; 16], QEMU_DEFAULT),
            Some(DeviceIds {
                nguid: Some([7; 16]),
                eui64: None
            })
        );
    }

    /// A firmware update that starts reporting an NGUID does not change a persisted identity.
    #[test]
    fn a_persisted_generated_identity_survives_the_device_reporting_an_nguid() {
        let dir = temp_dir("nguid-later");
        let first = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!(first.source, "generated");
        let ids = DeviceIds {
            nguid: Some([0xAB; 16]),
            eui64: None,
        };
        let later = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        assert_eq!((later.serial, later.naa), (first.serial, first.naa));
        assert_eq!(later.source, "state");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A persisted identity taken from one device id is not served when the device reports
    /// another: refused, saying what to do; the state file is left alone.
    #[test]
    fn a_device_derived_identity_is_refused_when_the_device_reports_another_id() {
        let dir = temp_dir("device-changed");
        let old = DeviceIds {
            nguid: Some([0x11; 16]),
            eui64: None,
        };
        let first = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&old)).unwrap();
        assert_eq!(first.source, "device");
        let path = state_path(&dir, "accel0").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let new = DeviceIds {
            nguid: None,
            eui64: Some([0x22; 8]),
        };
        let err = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&new)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, IdentityError::DeviceChanged { recorded, current, .. }
                if recorded == "eui.11111111111111111111111111111111" && current == "eui.2222222222222222"),
            "{msg}"
        );
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("delete")
                && msg.contains("serial and naa"),
            "{msg}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "the file is left alone");
        // A device that no longer reports an id keeps the persisted identity; a configured
        // serial and naa win over both.
        let kept = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!((kept.naa, kept.source), (first.naa, "state"));
        let configured = IdentitySpec {
            serial: Some("SN-1".into()),
            naa: Some("3000000000000001".into()),
            ..IdentitySpec::default()
        };
        assert_eq!(
            resolve("accel0", &configured, Some(&dir), Some(&new))
                .unwrap()
                .source,
            "config"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// A state file as written before the device id was recorded loads as it is, and still wins
    /// over the device.
    #[test]
    fn an_old_state_file_still_loads() {
        let dir = temp_dir("old-format");
        let path = state_path(&dir, "accel0").unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = "# Identity of SCST disk \"accel0\", generated once by scst-accel. Initiators know the\n\
                   # LUN by it: changing or removing this file makes it a different LUN to them.\n\
                   serial = \"0123456789ABCDEF\"\nnaa = \"3123456789abcdef\"\n";
        fs::write(&path, old).unwrap();
        let ids = DeviceIds {
            nguid: Some([0x33; 16]),
            eui64: None,
        };
        // No device id: the file's identity, the file untouched.
        let id = resolve("accel0", &IdentitySpec::default(), Some(&dir), None).unwrap();
        assert_eq!(id.serial, "0123456789ABCDEF");
        assert_eq!(id.naa.to_string(), "3123456789abcdef");
        assert_eq!(id.source, "state");
        assert_eq!(fs::read_to_string(&path).unwrap(), old, "not rewritten");
        // A device id: the version that wrote the file served the device's identity over it,
        // so that is what initiators know; kept, and recorded in the new format.
        let id = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        assert_eq!(id.naa, Designator::Eui64Extended([0x33; 16]));
        assert_eq!(id.serial, "33".repeat(16));
        assert_eq!(id.source, "device");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("origin = \"device\""), "{text}");
        let again = resolve("accel0", &IdentitySpec::default(), Some(&dir), Some(&ids)).unwrap();
        assert_eq!((again.serial, again.naa), (id.serial, id.naa));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn invalid_fields_and_names_are_refused() {
        let bad_naa = IdentitySpec {
            naa: Some("5001405abcdef012".into()),
            ..IdentitySpec::default()
        };
        assert!(matches!(
            resolve("d", &bad_naa, None, None),
            Err(IdentityError::InvalidField { field: "naa", .. })
        ));
        let eui_naa = IdentitySpec {
            naa: Some("eui.0102030405060708".into()),
            ..IdentitySpec::default()
        };
        assert!(
            resolve("d", &eui_naa, None, None).is_err(),
            "config takes NAA forms only"
        );
        let long_vendor = IdentitySpec {
            vendor: Some("NINECHARS".into()),
            ..IdentitySpec::default()
        };
        assert!(resolve("d", &long_vendor, None, None).is_err());
        let dir = temp_dir("names");
        for name in ["..", "../x", "a/b", ""] {
            assert!(matches!(
                resolve(name, &IdentitySpec::default(), Some(&dir), None),
                Err(IdentityError::DiskName(_))
            ));
        }
    }

    #[test]
    fn unwritable_state_dir_says_what_to_do() {
        let err = resolve(
            "accel0",
            &IdentitySpec::default(),
            Some(Path::new("/proc/no-such")),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::StateDir { .. }), "{err}");
        assert!(err.to_string().contains("state_dir"), "{err}");
    }

    #[test]
    fn apply_sets_the_disk_config() {
        let id = resolve("accel0", &IdentitySpec::default(), None, None).unwrap();
        let mut config = DiskConfig::new(512, 8);
        id.apply(&mut config);
        assert_eq!(config.designator, id.naa);
        assert_eq!(config.serial, id.serial);
        let view = id.view();
        assert_eq!(
            (view.naa, view.source.as_str()),
            (id.naa.to_string(), "generated")
        );
    }

    /// The whole path on the simulated NVMe board: IDENTIFY's NGUID → the engine's device ids
    /// → StoreInfo → the resolved identity → VPD 83h bytes out of the SCSI engine.
    #[test]
    fn nvme_sim_nguid_reaches_vpd_83h() {
        use scst_accel_boards::definition;
        use scst_accel_boards::open::open_board;
        use scst_accel_boards::open::BoardSource;
        use scst_accel_boards::sim::nvme::NvmeSimConfig;
        use scst_accel_handler::scsi::Disk;
        use scst_accel_handler::scsi::Plan;
        use scst_accel_handler::store::accel::AccelConfig;
        use scst_accel_handler::store::accel::AccelStore;
        use scst_accel_handler::store::Store;

        let nguid: [u8; 16] = core::array::from_fn(|i| 0xC0 + i as u8);
        let config = NvmeSimConfig {
            num_blocks: 4096,
            nguid: Some(nguid),
            eui64: Some([0x5A, 0xCC, 0xE1, 0, 0, 0, 0, 1]),
            ..NvmeSimConfig::default()
        };
        let opened = open_board(&definition::NVME_SIM, BoardSource::NvmeSim(config), 1).expect("open");
        let store = AccelStore::new(opened.controller, opened.queues, AccelConfig::default());
        let info = store.info();
        let ids = info.device_ids.expect("the simulated namespace reports ids");
        assert_eq!(ids.nguid, Some(nguid));
        let id = resolve("accel0", &IdentitySpec::default(), None, Some(&ids)).unwrap();
        assert_eq!(id.source, "device");
        let mut disk_config = DiskConfig::new(info.block_size, info.num_blocks);
        id.apply(&mut disk_config);
        let disk = Disk::try_new(disk_config).expect("disk");
        let Plan::Done(r) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x12, 1, 0x83, 0, 0xFF, 0],
            &[0u8; 0],
        ) else {
            panic!("INQUIRY is answered by the engine");
        };
        assert_eq!(&r.data[..2], &[0x00, 0x83]);
        // SPC-4 §7.8.6.5: binary, LU association, designator type 2 (EUI-64), length 16.
        assert_eq!(&r.data[4..8], &[0x01, 0x02, 0x00, 16]);
        assert_eq!(&r.data[8..24], &nguid);
        let _ = store.board().shutdown();
    }
}
