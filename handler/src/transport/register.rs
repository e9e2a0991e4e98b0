//! Registering a device on an scst_user fd, shared by both transports: validate locally what
//! the kernel would refuse or silently change, build the `scst_user_dev_desc` (spec §2.2),
//! REGISTER_DEVICE, then read the options back with GET_OPTIONS to prove the kernel kept them.
//!
//! The kernel answers a bad registration with a bare errno (spec §1.4: EPERM for the license,
//! EINVAL for the version, EEXIST for the name), so [`RegisterError`] turns each one into what
//! was refused and what to do about it.

use super::version::default_version_string;
use super::version::KNOWN_VERSIONS;
use super::Errno;
use super::ScstUserFd;
use crate::abi;
use crate::abi::DevDesc;
use crate::abi::Opt;
use crate::abi::ACCEPTED_LICENSES;
use crate::abi::SCST_MAX_NAME;
use crate::store::CopyPath;
use crate::store::StoreInfo;

/// Longest device or SGV pool name the kernel keeps whole: it copies at most 48 characters
/// into its 50-byte name (spec §8.8); we refuse longer names instead of letting it truncate.
pub const MAX_NAME_LEN: usize = 48;

/// Size of the zero-padded buffers holding the version and license strings. The kernel copies
/// a FIXED `max(sizeof(DEV_USER_VERSION), 20)` bytes (91 for 3.11) from both addresses, however
/// short our strings are (spec §1.4, §8.7), so both must be readable well past their NUL.
pub const STRING_BUF_LEN: usize = 128;

/// Everything REGISTER_DEVICE needs (spec §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterParams {
    /// Device name as SCST shows it in sysfs: 1..=48 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Logical block size: a power of two ≥ 512 (spec §3.10).
    pub block_size: u32,
    /// Interface version string the kernel compares exactly (see [`super::version`]).
    pub version: String,
    /// License string; one of [`ACCEPTED_LICENSES`].
    pub license: String,
    /// Initial options.
    pub opt: Opt,
    /// SGV pool name; `None` uses the device name. Same rules as `name`.
    pub sgv_name: Option<String>,
    /// Share the SGV pool with other devices of the same pool name.
    pub sgv_shared: bool,
    /// Do not create the clustered SGV pool.
    pub sgv_disable_clustered_pool: bool,
    /// Single size-class mode: pages of the one class (0 = power-of-two classes, spec §3.6).
    pub sgv_single_alloc_pages: i32,
    /// SGV purge interval in seconds (0 = kernel default 60 s, < 0 = never purge).
    pub sgv_purge_interval: i32,
    /// Forward PERSISTENT RESERVE OUT commands after they succeed.
    pub enable_pr_cmds_notifications: bool,
}

impl RegisterParams {
    /// Parameters with the defaults: version [`default_version_string`], license `GPL`, the
    /// device name as SGV pool name, an unshared clustered pool, kernel-default purging.
    pub fn new(name: &str, block_size: u32, opt: Opt) -> Self {
        Self {
            name: name.to_owned(),
            block_size,
            version: default_version_string(),
            license: "GPL".to_owned(),
            opt,
            sgv_name: None,
            sgv_shared: false,
            sgv_disable_clustered_pool: false,
            sgv_single_alloc_pages: 0,
            sgv_purge_interval: 0,
            enable_pr_cmds_notifications: false,
        }
    }

    /// Check everything the kernel would refuse, truncate or misread, without calling it.
    ///
    /// # Errors
    /// The first invalid field, as [`RegisterError::InvalidName`], `InvalidBlockSize`,
    /// `InvalidLicense`, `InvalidVersion` or `InvalidOptions`.
    pub fn validate(&self) -> Result<(), RegisterError> {
        check_name("name", &self.name)?;
        if let Some(sgv_name) = &self.sgv_name {
            check_name("sgv_name", sgv_name)?;
        }
        if self.block_size < 512 || !self.block_size.is_power_of_two() {
            return Err(RegisterError::InvalidBlockSize {
                block_size: self.block_size,
            });
        }
        if !ACCEPTED_LICENSES.contains(&self.license.as_str()) {
            return Err(RegisterError::InvalidLicense {
                license: self.license.clone(),
            });
        }
        check_version(&self.version)?;
        check_options(&self.opt).map_err(|reason| RegisterError::InvalidOptions { reason })
    }

    /// The descriptor pointing at `version` and `license`, which must outlive every use of it.
    fn dev_desc(&self, version: &[u8; STRING_BUF_LEN], license: &[u8; STRING_BUF_LEN]) -> DevDesc {
        let mut opt = self.opt;
        // The kernel zeroes the padding it returns from GET_OPTIONS; send it zeroed too.
        opt._pad = [0; 3];
        DevDesc {
            version_str: version.as_ptr() as u64,
            license_str: license.as_ptr() as u64,
            type_: abi::TYPE_DISK,
            sgv_shared: u8::from(self.sgv_shared),
            sgv_disable_clustered_pool: u8::from(self.sgv_disable_clustered_pool),
            _pad0: 0,
            sgv_single_alloc_pages: self.sgv_single_alloc_pages,
            sgv_purge_interval: self.sgv_purge_interval,
            opt,
            block_size: self.block_size,
            enable_pr_cmds_notifications: u8::from(self.enable_pr_cmds_notifications),
            name: abi::fill_c_name(&self.name),
            // All zeroes means "use the device name" to the kernel.
            sgv_name: abi::fill_c_name(self.sgv_name.as_deref().unwrap_or("")),
            _pad1: [0; 7],
        }
    }
}

/// Why a registration failed: refused locally before the ioctl, refused by the kernel, or not
/// applied as asked.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A device or SGV pool name the kernel would truncate or sysfs would mangle.
    #[error("invalid {field} {name:?}: {reason}")]
    InvalidName {
        /// `name` or `sgv_name`.
        field: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a power of two ≥ 512.
    #[error("invalid block size {block_size}: use a power of two of at least 512 (spec §3.10)")]
    InvalidBlockSize {
        /// The size given.
        block_size: u32,
    },
    /// A license the kernel would refuse (refused here, before the ioctl).
    #[error(
        "license {license:?} is not accepted by scst_user; use one of {}",
        accepted_licenses()
    )]
    InvalidLicense {
        /// The license given.
        license: String,
    },
    /// A version string that cannot be passed as a C string in the fixed buffer.
    #[error("invalid version string {version:?}: {reason}")]
    InvalidVersion {
        /// The version given.
        version: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Options outside the ranges the kernel accepts (spec §2.6, §3.9).
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// Which field, and its allowed values.
        reason: String,
    },
    /// EPERM: the kernel refused the license.
    #[error(
        "the kernel refused license {license:?} (EPERM); it accepts only {}",
        accepted_licenses()
    )]
    LicenseRefused {
        /// The license sent.
        license: String,
    },
    /// EINVAL: with names, block size and options checked locally, the kernel refused the
    /// interface version, or this fd already has a device registered.
    #[error(
        "the kernel refused interface version {version:?}, or a device is already registered on \
         this fd (EINVAL): find the version the kernel expects with \
         `dmesg | grep 'Incorrect version of user device'` and pass it with --scst-version, or \
         use one of the known versions ({})",
        known_versions()
    )]
    VersionRefused {
        /// The version string sent.
        version: String,
    },
    /// EEXIST: another device already has this name.
    #[error(
        "a device named {name:?} is already registered with SCST (EEXIST): pick another name or \
         stop the handler that owns it"
    )]
    NameInUse {
        /// The name sent.
        name: String,
    },
    /// Any other errno of REGISTER_DEVICE (EFAULT, ENODEV, ENOMEM...), kept as is.
    #[error("REGISTER_DEVICE of {name:?} failed")]
    Register {
        /// The name sent.
        name: String,
        /// The kernel's errno.
        #[source]
        source: Errno,
    },
    /// The device is registered but GET_OPTIONS failed; close the fd to unregister it.
    #[error("GET_OPTIONS after registering {name:?} failed; close the fd to unregister the device")]
    GetOptions {
        /// The registered name.
        name: String,
        /// The kernel's errno.
        #[source]
        source: Errno,
    },
    /// The device is registered but the kernel reports other options than those sent; close
    /// the fd to unregister it.
    #[error(
        "the kernel did not apply the options: sent {expected:?}, GET_OPTIONS returned {got:?}; \
         close the fd to unregister the device"
    )]
    OptionsNotApplied {
        /// What REGISTER_DEVICE carried.
        expected: Opt,
        /// What GET_OPTIONS returned.
        got: Opt,
    },
}

impl RegisterError {
    /// The kernel's errno, when the kernel refused (`None` for local refusals and
    /// `OptionsNotApplied`).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::LicenseRefused { .. } => Some(Errno::EPERM),
            Self::VersionRefused { .. } => Some(Errno::EINVAL),
            Self::NameInUse { .. } => Some(Errno::EEXIST),
            Self::Register { source, .. } | Self::GetOptions { source, .. } => Some(*source),
            _ => None,
        }
    }

    fn from_register_errno(errno: Errno, params: &RegisterParams) -> Self {
        match errno {
            Errno::EPERM => Self::LicenseRefused {
                license: params.license.clone(),
            },
            Errno::EINVAL => Self::VersionRefused {
                version: params.version.clone(),
            },
            Errno::EEXIST => Self::NameInUse {
                name: params.name.clone(),
            },
            source => Self::Register {
                name: params.name.clone(),
                source,
            },
        }
    }
}

/// Register the device described by `params` on `fd`, then check with GET_OPTIONS that the
/// kernel applied `params.opt`.
///
/// On an error after REGISTER_DEVICE succeeded (`GetOptions`, `OptionsNotApplied`) the device
/// stays registered on `fd`; closing the fd unregisters it.
///
/// # Errors
/// [`RegisterError`]: local refusals before any ioctl, then the kernel's answer mapped to
/// what was refused.
pub fn register(fd: &dyn ScstUserFd, params: &RegisterParams) -> Result<(), RegisterError> {
    params.validate()?;
    // Both buffers live until this function returns, past the ioctl that reads them.
    let version = string_buf(&params.version);
    let license = string_buf(&params.license);
    let desc = params.dev_desc(&version, &license);
    log::info!(
        "registering scst_user device {:?}: block size {}, version {:?}, options {:?}",
        params.name,
        params.block_size,
        params.version,
        desc.opt
    );
    fd.register_device(&desc)
        .map_err(|errno| RegisterError::from_register_errno(errno, params))?;
    let got = fd.get_options().map_err(|source| RegisterError::GetOptions {
        name: params.name.clone(),
        source,
    })?;
    if got != desc.opt {
        return Err(RegisterError::OptionsNotApplied {
            expected: desc.opt,
            got,
        });
    }
    log::info!("registered scst_user device {:?}", params.name);
    Ok(())
}

/// UNREGISTER_DEVICE, used before close to make the fd non-blocking for every thread and wake
/// those waiting in the kernel (spec §3.9, §8 pitfall 12). Failures are logged: there is
/// nothing better to do with them on the way down.
pub fn unregister_and_wake(fd: &dyn ScstUserFd) {
    match fd.unregister_device() {
        Ok(()) => log::info!("UNREGISTER_DEVICE: fd now non-blocking, waiters woken"),
        Err(Errno::ENODEV) => log::debug!("UNREGISTER_DEVICE: no device registered on this fd"),
        Err(errno) => log::warn!("UNREGISTER_DEVICE failed: {errno}; waiters wake at their poll timeout"),
    }
}

/// The options scst-accel registers with (spec §2.1, §2.6).
pub fn default_options() -> Opt {
    Opt {
        // SCST's built-in parser knows every SBC command we serve, so PARSE round trips are
        // saved, and parse ≠ CALL keeps the kernel's block-size snooping working (spec §3.10).
        parse_type: abi::parse_type::STANDARD,
        // No ON_FREE_CMD: with REUSE_ALL (below) every buffer is "cached" in the kernel's sense
        // (`is_buff_cached`, spec §3.6), including one too big for the SGV pool, and comes back
        // by ON_CACHED_MEM_FREE (spec §8.9), the only message on which the handler frees it
        // (ON_FREE_CMD frees only when buffer_cached is 0, which REUSE_ALL never sends). With
        // CALL every command costs a second message and reply for nothing. A handler that
        // registers another memory_reuse_type must ask for ON_FREE_CMD_CALL again, or it leaks
        // the non-cached buffers (spec §3.6, "non-cached path").
        on_free_cmd_type: abi::on_free_cmd_type::IGNORE,
        // Our buffers are DMA-mapped page buffers: letting the SGV cache reuse them for every
        // direction avoids a map/pin per command (spec §3.6).
        memory_reuse_type: abi::memory_reuse_type::REUSE_ALL,
        // Stored but never acted on by the kernel (spec §2.6).
        partial_transfers_type: abi::partial_transfers_type::NOT_SUPPORTED,
        partial_len: 0,
        // Separate task sets: a TMF or error on one I_T nexus never aborts another
        // initiator's commands.
        tst: 1,
        // We serve every command type, not only task management.
        tmf_only: 0,
        // Unrestricted reordering: the accelerator completes out of order; data integrity
        // between overlapping commands is the initiator's job, as SBC allows.
        queue_alg: 1,
        // A CHECK CONDITION does not abort the other queued commands.
        qerr: 0,
        // Commands aborted by another nexus end without status (allowed with TAS=0); with
        // tst=1 that only happens for whole-LU resets.
        tas: 0,
        // Not software write protected.
        swp: 0,
        // Fixed-format sense: understood by every initiator; we have no 64-bit LBA that would
        // need descriptor sense for errors we report.
        d_sense: 0,
        // SCST enforces ORDERED/HEAD OF QUEUE semantics for us.
        has_own_order_mgmt: 0,
        // No EXT_COPY_REMAP unless the store can copy ([`options_for_store`]): without it SCST's
        // copy manager copies every segment with READ(16) / WRITE(16) itself, which is what a
        // remap answered with the whole segment as leftover would lead to anyway.
        ext_copy_remap_supported: 0,
        _pad: [0; 3],
    }
}

/// [`default_options`] for a disk over a store that `info` describes: EXT_COPY_REMAP
/// (`ext_copy_remap_supported = 1`, spec §3.8) when the store copies inside itself
/// ([`CopyPath::Store`] or [`CopyPath::Device`]), so EXTENDED COPY segments inside the disk are
/// copied there with no data through SCST's buffers (`docs/xcopy.md`).
pub fn options_for_store(info: &StoreInfo) -> Opt {
    Opt {
        ext_copy_remap_supported: u8::from(info.copy != CopyPath::None),
        ..default_options()
    }
}

fn accepted_licenses() -> String {
    ACCEPTED_LICENSES
        .iter()
        .map(|l| format!("{l:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_versions() -> String {
    KNOWN_VERSIONS
        .iter()
        .map(|v| v.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_name(field: &'static str, name: &str) -> Result<(), RegisterError> {
    let invalid = |reason: String| RegisterError::InvalidName {
        field,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "it contains {c:?}; use only A-Z, a-z, 0-9, '_', '.' and '-' (it becomes a sysfs name)"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "it has {} characters; the kernel keeps only {MAX_NAME_LEN} (spec §8.8)",
            name.len()
        )));
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), RegisterError> {
    let reason = if version.is_empty() {
        "it is empty"
    } else if version.contains('\0') {
        "it contains a NUL byte"
    } else if version.len() >= STRING_BUF_LEN {
        "it does not fit the 128-byte buffer with its NUL"
    } else {
        return Ok(());
    };
    Err(RegisterError::InvalidVersion {
        version: version.to_owned(),
        reason,
    })
}

/// The ranges `__dev_user_set_opt` enforces (spec §2.6; EINVAL there).
fn check_options(opt: &Opt) -> Result<(), String> {
    let fields: [(&str, u8, &[u8]); 13] = [
        ("parse_type", opt.parse_type, &[0, 1, 2]),
        ("on_free_cmd_type", opt.on_free_cmd_type, &[0, 1]),
        ("memory_reuse_type", opt.memory_reuse_type, &[0, 1, 2, 3]),
        ("partial_transfers_type", opt.partial_transfers_type, &[0, 1, 2]),
        ("tst", opt.tst, &[0, 1]),
        ("tmf_only", opt.tmf_only, &[0, 1]),
        ("queue_alg", opt.queue_alg, &[0, 1]),
        ("qerr", opt.qerr, &[0, 1, 3]),
        ("tas", opt.tas, &[0, 1]),
        ("swp", opt.swp, &[0, 1]),
        ("d_sense", opt.d_sense, &[0, 1]),
        ("has_own_order_mgmt", opt.has_own_order_mgmt, &[0, 1]),
        ("ext_copy_remap_supported", opt.ext_copy_remap_supported, &[0, 1]),
    ];
    if let Some((field, value, allowed)) = fields.iter().find(|(_, value, allowed)| !allowed.contains(value))
    {
        return Err(format!("{field} is {value}; allowed: {allowed:?}"));
    }
    // The kernel accepts it, but the handler would leak: without REUSE_ALL some buffers are not
    // cached, and only ON_FREE_CMD says when those are free (spec §3.6, "non-cached path").
    if opt.on_free_cmd_type == abi::on_free_cmd_type::IGNORE
        && opt.memory_reuse_type != abi::memory_reuse_type::REUSE_ALL
    {
        return Err(format!(
            "on_free_cmd_type IGNORE needs memory_reuse_type REUSE_ALL ({}), not {}: the handler frees \
             non-cached buffers on ON_FREE_CMD; use on_free_cmd_type CALL",
            abi::memory_reuse_type::REUSE_ALL,
            opt.memory_reuse_type
        ));
    }
    Ok(())
}

/// `s` NUL-terminated and zero-padded to [`STRING_BUF_LEN`] (validated to fit beforehand).
fn string_buf(s: &str) -> [u8; STRING_BUF_LEN] {
    abi::fill_c_name(s)
}

const _: () = assert!(MAX_NAME_LEN < SCST_MAX_NAME);

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::io::Seek;
    use std::io::SeekFrom;
    use std::os::fd::AsFd;
    use std::os::fd::BorrowedFd;
    use std::sync::Mutex;
    use zerocopy::IntoBytes;

    /// What the fake saw during REGISTER_DEVICE, captured while the caller's buffers were live.
    struct Seen {
        desc: Vec<u8>,
        version: Vec<u8>,
        license: Vec<u8>,
    }

    /// A fake scst_user fd: REGISTER answers `register_result`, GET_OPTIONS answers
    /// `options` (or echoes the registered options when `None`).
    struct FakeFd {
        register_result: Result<(), Errno>,
        options: Option<Result<Opt, Errno>>,
        seen: Mutex<Option<Seen>>,
        unregister_calls: Mutex<u32>,
        null: File,
    }

    impl FakeFd {
        fn new(register_result: Result<(), Errno>) -> Self {
            Self {
                register_result,
                options: None,
                seen: Mutex::new(None),
                unregister_calls: Mutex::new(0),
                null: File::open("/dev/null").expect("open /dev/null"),
            }
        }

        fn seen(&self) -> Option<Seen> {
            self.seen.lock().expect("lock").take()
        }
    }

    /// Read `len` bytes at user address `addr` of this process the way the kernel's
    /// copy_from_user does: through the address space, failing (not crashing) if unmapped.
    fn read_user(addr: u64, len: usize) -> Vec<u8> {
        let mut mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
        mem.seek(SeekFrom::Start(addr)).expect("seek");
        let mut out = vec![0; len];
        mem.read_exact(&mut out)
            .expect("address readable for the whole length");
        out
    }

    impl ScstUserFd for FakeFd {
        fn register_device(&self, desc: &DevDesc) -> crate::transport::IoctlResult {
            // Like dev_user_check_version: a fixed-size read from both addresses.
            *self.seen.lock().expect("lock") = Some(Seen {
                desc: desc.as_bytes().to_vec(),
                version: read_user(desc.version_str, STRING_BUF_LEN),
                license: read_user(desc.license_str, STRING_BUF_LEN),
            });
            self.register_result
        }
        fn unregister_device(&self) -> crate::transport::IoctlResult {
            *self.unregister_calls.lock().expect("lock") += 1;
            Err(Errno::ENODEV)
        }
        fn set_options(&self, _: &Opt) -> crate::transport::IoctlResult {
            Err(Errno::EINVAL)
        }
        fn get_options(&self) -> crate::transport::IoctlResult<Opt> {
            match self.options {
                Some(answer) => answer,
                None => {
                    let seen = self.seen.lock().expect("lock");
                    let desc = seen.as_ref().map(|s| s.desc.clone()).unwrap_or_default();
                    let opt_bytes = desc.get(28..).unwrap_or_default();
                    let (opt, _) = Opt::read_from_prefix(opt_bytes).map_err(|_| Errno::ENODEV)?;
                    Ok(opt)
                }
            }
        }
        fn reply_and_get_cmd(&self, _: &mut abi::GetCmd) -> crate::transport::IoctlResult {
            Err(Errno::EAGAIN)
        }
        fn reply_cmd(&self, _: &abi::ReplyCmd) -> crate::transport::IoctlResult {
            Err(Errno::ESRCH)
        }
        fn flush_cache(&self) -> crate::transport::IoctlResult {
            Ok(())
        }
        fn device_capacity_changed(&self) -> crate::transport::IoctlResult {
            Ok(())
        }
        fn get_extended_cdb(&self, _: &abi::GetExtCdb) -> crate::transport::IoctlResult {
            Err(Errno::EINVAL)
        }
        fn prealloc_buffer(&self, _: &mut abi::PreallocBuffer) -> crate::transport::IoctlResult {
            Err(Errno::EINVAL)
        }
        fn reply_and_get_multi(&self, _: &mut abi::MultiBuffer) -> crate::transport::IoctlResult {
            Err(Errno::EAGAIN)
        }
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.null.as_fd()
        }
    }

    use zerocopy::FromBytes;

    fn params() -> RegisterParams {
        RegisterParams::new("disk_1.a-b", 4096, default_options())
    }

    #[test]
    fn the_descriptor_carries_every_field_at_its_offset() {
        let fake = FakeFd::new(Ok(()));
        let mut p = params();
        p.sgv_name = Some("pool0".to_owned());
        p.sgv_shared = true;
        p.sgv_single_alloc_pages = 4;
        p.sgv_purge_interval = -1;
        p.enable_pr_cmds_notifications = true;
        register(&fake, &p).expect("register");
        let seen = fake.seen().expect("REGISTER_DEVICE was called");
        let d = &seen.desc;
        assert_eq!(d.len(), 160);
        assert_eq!(d[16], abi::TYPE_DISK);
        assert_eq!((d[17], d[18]), (1, 0), "sgv_shared, sgv_disable_clustered_pool");
        assert_eq!(&d[20..24], &4i32.to_le_bytes());
        assert_eq!(&d[24..28], &(-1i32).to_le_bytes());
        assert_eq!(&d[28..48], default_options().as_bytes());
        assert_eq!(&d[48..52], &4096u32.to_le_bytes());
        assert_eq!(d[52], 1, "enable_pr_cmds_notifications");
        assert_eq!(&d[53..63], b"disk_1.a-b");
        assert!(
            d[63..103].iter().all(|&b| b == 0),
            "name NUL-terminated, zero-padded"
        );
        assert_eq!(&d[103..108], b"pool0");
        assert!(d[108..160].iter().all(|&b| b == 0));
        // Both strings were readable for the full 128 bytes while the kernel read them.
        let version = default_version_string();
        assert_eq!(&seen.version[..version.len()], version.as_bytes());
        assert!(seen.version[version.len()..].iter().all(|&b| b == 0));
        assert_eq!(&seen.license[..4], b"GPL\0");
        assert!(seen.license[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn no_sgv_name_sends_zeroes_so_the_kernel_uses_the_device_name() {
        let fake = FakeFd::new(Ok(()));
        register(&fake, &params()).expect("register");
        let seen = fake.seen().expect("called");
        assert!(seen.desc[103..153].iter().all(|&b| b == 0));
    }

    #[test]
    fn kernel_errnos_say_what_was_refused() {
        let p = params();
        let err = |errno| {
            let fake = FakeFd::new(Err(errno));
            register(&fake, &p).expect_err("refused")
        };
        let e = err(Errno::EPERM);
        assert!(
            matches!(&e, RegisterError::LicenseRefused { license } if license == "GPL"),
            "{e:?}"
        );
        assert_eq!(e.errno(), Some(Errno::EPERM));
        let e = err(Errno::EINVAL);
        assert!(matches!(&e, RegisterError::VersionRefused { version } if *version == p.version));
        let text = e.to_string();
        assert!(
            text.contains("dmesg | grep 'Incorrect version of user device'"),
            "{text}"
        );
        assert!(text.contains("--scst-version"), "{text}");
        for v in KNOWN_VERSIONS {
            assert!(text.contains(v.name), "{text} lists {}", v.name);
        }
        let e = err(Errno::EEXIST);
        assert!(
            matches!(&e, RegisterError::NameInUse { name } if name == "disk_1.a-b"),
            "{e:?}"
        );
        for errno in [Errno::EFAULT, Errno::ENODEV, Errno::ENOMEM] {
            let e = err(errno);
            assert!(
                matches!(&e, RegisterError::Register { source, .. } if *source == errno),
                "{e:?}"
            );
            assert_eq!(e.errno(), Some(errno));
        }
    }

    #[test]
    fn invalid_names_are_refused_before_the_ioctl() {
        let max = "n".repeat(MAX_NAME_LEN);
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        for (name, ok) in [
            (max.as_str(), true),
            ("a", true),
            (too_long.as_str(), false),
            ("", false),
            ("a/b", false),
            ("a b", false),
            ("dïsk", false),
        ] {
            let fake = FakeFd::new(Ok(()));
            let result = register(&fake, &RegisterParams::new(name, 512, default_options()));
            assert_eq!(result.is_ok(), ok, "{name:?}: {result:?}");
            if !ok {
                assert!(
                    matches!(result, Err(RegisterError::InvalidName { field: "name", .. })),
                    "{name:?}"
                );
                assert!(fake.seen().is_none(), "{name:?} reached the kernel");
            }
        }
        let fake = FakeFd::new(Ok(()));
        let mut p = params();
        p.sgv_name = Some("bad name".to_owned());
        let e = register(&fake, &p).expect_err("bad sgv name");
        assert!(
            matches!(
                e,
                RegisterError::InvalidName {
                    field: "sgv_name",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn block_size_must_be_a_power_of_two_of_at_least_512() {
        for (block_size, ok) in [
            (512, true),
            (4096, true),
            (0, false),
            (256, false),
            (513, false),
            (1000, false),
        ] {
            let fake = FakeFd::new(Ok(()));
            let result = register(&fake, &RegisterParams::new("d", block_size, default_options()));
            assert_eq!(result.is_ok(), ok, "{block_size}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(RegisterError::InvalidBlockSize { .. })));
                assert!(fake.seen().is_none());
            }
        }
    }

    #[test]
    fn unknown_licenses_are_refused_locally_with_the_accepted_list() {
        let fake = FakeFd::new(Ok(()));
        let mut p = params();
        p.license = "MIT".to_owned();
        let e = register(&fake, &p).expect_err("MIT is not accepted");
        assert!(matches!(e, RegisterError::InvalidLicense { .. }), "{e:?}");
        assert!(fake.seen().is_none());
        for license in ACCEPTED_LICENSES {
            assert!(e.to_string().contains(license), "{e}");
            p.license = license.to_owned();
            register(&FakeFd::new(Ok(())), &p).expect("accepted license");
        }
    }

    #[test]
    fn bad_versions_and_options_are_refused_locally() {
        let mut p = params();
        p.version = "v".repeat(STRING_BUF_LEN);
        assert!(matches!(p.validate(), Err(RegisterError::InvalidVersion { .. })));
        p.version = "3.11\0x".to_owned();
        assert!(matches!(p.validate(), Err(RegisterError::InvalidVersion { .. })));
        p.version = "v".repeat(STRING_BUF_LEN - 1);
        assert!(p.validate().is_ok());

        let mut p = params();
        p.opt.qerr = 2; // reserved (spec §2.6)
        let e = p.validate().expect_err("qerr 2");
        assert!(e.to_string().contains("qerr"), "{e}");
        p.opt.qerr = 3;
        assert!(p.validate().is_ok());
        p.opt.memory_reuse_type = 4;
        assert!(matches!(p.validate(), Err(RegisterError::InvalidOptions { .. })));

        // No ON_FREE_CMD is safe only when every buffer comes back by ON_CACHED_MEM_FREE.
        let mut p = params();
        assert_eq!(
            (p.opt.on_free_cmd_type, p.opt.memory_reuse_type),
            (abi::on_free_cmd_type::IGNORE, abi::memory_reuse_type::REUSE_ALL)
        );
        p.opt.memory_reuse_type = abi::memory_reuse_type::REUSE_READ;
        let e = p.validate().expect_err("IGNORE without REUSE_ALL leaks");
        assert!(e.to_string().contains("on_free_cmd_type CALL"), "{e}");
        p.opt.on_free_cmd_type = abi::on_free_cmd_type::CALL;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn the_options_round_trip_must_match() {
        let mut got = default_options();
        got.memory_reuse_type = abi::memory_reuse_type::NO_REUSE;
        let mut fake = FakeFd::new(Ok(()));
        fake.options = Some(Ok(got));
        let e = register(&fake, &params()).expect_err("kernel changed the options");
        match e {
            RegisterError::OptionsNotApplied { expected, got: g } => {
                assert_eq!(expected, default_options());
                assert_eq!(g, got);
            }
            other => panic!("expected OptionsNotApplied, got {other:?}"),
        }

        let mut fake = FakeFd::new(Ok(()));
        fake.options = Some(Err(Errno::EFAULT));
        let e = register(&fake, &params()).expect_err("GET_OPTIONS failed");
        assert!(
            matches!(
                e,
                RegisterError::GetOptions {
                    source: Errno::EFAULT,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn padding_in_the_given_options_is_not_sent() {
        let fake = FakeFd::new(Ok(()));
        let mut p = params();
        p.opt._pad = [0xaa; 3];
        // The echoing fake returns what was sent, so a match proves the padding was zeroed.
        register(&fake, &p).expect("register");
        let seen = fake.seen().expect("called");
        assert_eq!(&seen.desc[45..48], &[0, 0, 0]);
    }

    #[test]
    fn the_default_options_pass_the_kernel_ranges() {
        assert_eq!(check_options(&default_options()), Ok(()));
    }

    #[test]
    fn unregister_and_wake_tolerates_errors() {
        let fake = FakeFd::new(Ok(()));
        unregister_and_wake(&fake);
        unregister_and_wake(&fake);
        assert_eq!(*fake.unregister_calls.lock().expect("lock"), 2);
    }

    proptest::proptest! {
        #[test]
        fn accepted_names_reach_the_kernel_whole(name in "[A-Za-z0-9_.-]{1,48}") {
            let fake = FakeFd::new(Ok(()));
            register(&fake, &RegisterParams::new(&name, 512, default_options())).expect("valid");
            let seen = fake.seen().expect("called");
            proptest::prop_assert_eq!(abi::c_name(&seen.desc[53..103]), name);
        }
    }
}
