//! The real `/dev/scst_user` transport: [`ScstUserDevice`], one open scst_user file
//! descriptor implementing [`ScstUserFd`] through the raw ioctls of [`super::sys`].
//!
//! The fd is always opened non-blocking (spec §8 pitfall 2, design (a)). The kernel samples
//! O_NONBLOCK once, at REGISTER time (spec §1.1), so a non-blocking fd means no thread ever
//! sleeps inside REPLY_AND_GET_CMD/MULTI: an empty queue answers `EAGAIN` at once, and the
//! frontend waits in `poll(2)` on [`ScstUserFd::poll_fd`] instead (POLLIN while commands are
//! ready, spec §3.9). That removes the "restarted ioctl resubmits a reply" hazard of blocking
//! waits and keeps every wait bounded by the poll timeout.
//!
//! # Teardown (spec §5.1)
//! The kernel tears the device down (unjam, ON_FREE, cleanup) in `release`, which runs on the
//! *last* reference to the open file, not on `close()`. A thread inside an ioctl holds such a
//! reference, so the frontend must stop its worker threads (and may call
//! [`super::register::unregister_and_wake`] to wake stragglers) before [`ScstUserDevice::close`]
//! or drop; otherwise the close only drops one reference and the device stays registered.

use super::sys;
use super::Errno;
use super::IoctlResult;
use super::ScstUserFd;
use crate::abi::DevDesc;
use crate::abi::GetCmd;
use crate::abi::GetExtCdb;
use crate::abi::MultiBuffer;
use crate::abi::Opt;
use crate::abi::PreallocBuffer;
use crate::abi::ReplyCmd;
use crate::abi::DEV_USER_PATH;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

/// Why `/dev/scst_user` could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No device node, or a node without a driver behind it (ENOENT, ENXIO, ENODEV).
    #[error(
        "{} is missing or has no driver: load the module with `modprobe scst_user` \
         (and check that udev created the node)",
        path.display()
    )]
    ModuleNotLoaded {
        /// The path that was opened.
        path: PathBuf,
        /// The open(2) error, errno kept.
        #[source]
        source: io::Error,
    },
    /// EACCES or EPERM: the node is root-only by default (spec §1.1).
    #[error(
        "no permission to open {}: run as root or add a udev rule giving this user access to \
         /dev/scst_user",
        path.display()
    )]
    PermissionDenied {
        /// The path that was opened.
        path: PathBuf,
        /// The open(2) error, errno kept.
        #[source]
        source: io::Error,
    },
    /// Any other failure (for example EISDIR, EMFILE); the errno says what.
    #[error("cannot open {} as the scst_user device", path.display())]
    Other {
        /// The path that was opened.
        path: PathBuf,
        /// The open(2) error, errno kept.
        #[source]
        source: io::Error,
    },
}

impl OpenError {
    fn classify(path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => Self::ModuleNotLoaded { path, source },
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied { path, source },
            _ => Self::Other { path, source },
        }
    }

    /// The errno of the failed open(2), if the OS gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::ModuleNotLoaded { source, .. }
            | Self::PermissionDenied { source, .. }
            | Self::Other { source, .. } => source.raw_os_error(),
        }
    }
}

/// One open `/dev/scst_user` file descriptor (spec §1). At most one device can be registered
/// on it (see [`super::register::register`]); many threads may share it.
#[derive(Debug)]
pub struct ScstUserDevice {
    /// `Some` from `open` until `close`/`drop` take it; no `&self` exists while it is `None`.
    fd: Option<OwnedFd>,
    path: PathBuf,
}

impl ScstUserDevice {
    /// Open `path` read-write, non-blocking and close-on-exec.
    ///
    /// # Errors
    /// [`OpenError`], classified so its message says what to do.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        // O_NONBLOCK always: spec §8 pitfall 2 design (a), see the module docs. std adds
        // O_CLOEXEC itself; it is repeated here because the fd must never leak into a child.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| OpenError::classify(path, source))?;
        log::info!("opened {} (non-blocking)", path.display());
        Ok(Self {
            fd: Some(file.into()),
            path: path.to_path_buf(),
        })
    }

    /// Open the standard node [`DEV_USER_PATH`].
    ///
    /// # Errors
    /// As [`ScstUserDevice::open`].
    pub fn open_default() -> Result<Self, OpenError> {
        Self::open(Path::new(DEV_USER_PATH))
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the fd and report the errno close(2) gave. The kernel's teardown runs only if this
    /// was the last reference (spec §5.1): stop every thread using the device first.
    ///
    /// # Errors
    /// The errno of close(2); the descriptor is released either way.
    pub fn close(mut self) -> Result<(), Errno> {
        match self.fd.take() {
            Some(fd) => {
                log::info!("closing {}", self.path.display());
                sys::close(fd)
            }
            None => Ok(()),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.fd {
            Some(fd) => fd.as_fd(),
            // `fd` is only taken by `close(self)` and `drop(&mut self)`, when no `&self` can
            // exist any more; this arm is unreachable by construction, not by the kernel's say.
            None => unreachable!("scst_user fd used after close"),
        }
    }
}

impl Drop for ScstUserDevice {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            log::debug!("dropping {}: closing its fd", self.path.display());
            if let Err(errno) = sys::close(fd) {
                log::warn!("close of {} failed: {errno}", self.path.display());
            }
        }
    }
}

impl AsFd for ScstUserDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl ScstUserFd for ScstUserDevice {
    fn register_device(&self, desc: &DevDesc) -> IoctlResult {
        sys::register_device(self.fd(), desc)
    }

    fn unregister_device(&self) -> IoctlResult {
        sys::unregister_device(self.fd())
    }

    fn set_options(&self, opt: &Opt) -> IoctlResult {
        sys::set_options(self.fd(), opt)
    }

    fn get_options(&self) -> IoctlResult<Opt> {
        sys::get_options(self.fd())
    }

    fn reply_and_get_cmd(&self, cmd: &mut GetCmd) -> IoctlResult {
        sys::reply_and_get_cmd(self.fd(), cmd)
    }

    fn reply_cmd(&self, reply: &ReplyCmd) -> IoctlResult {
        sys::reply_cmd(self.fd(), reply)
    }

    fn flush_cache(&self) -> IoctlResult {
        sys::flush_cache(self.fd())
    }

    fn device_capacity_changed(&self) -> IoctlResult {
        sys::device_capacity_changed(self.fd())
    }

    fn get_extended_cdb(&self, arg: &GetExtCdb) -> IoctlResult {
        sys::get_extended_cdb(self.fd(), arg)
    }

    fn prealloc_buffer(&self, arg: &mut PreallocBuffer) -> IoctlResult {
        sys::prealloc_buffer(self.fd(), arg)
    }

    fn reply_and_get_multi(&self, arg: &mut MultiBuffer) -> IoctlResult {
        // The kernel writes `replies_done` and `cmds_cnt` straight into the buffer's header.
        sys::reply_and_get_multi(self.fd(), arg)
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        // The device fd itself: its poll reports POLLIN while commands are ready (spec §3.9).
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fdio::poll_readable;
    use crate::transport::register;
    use std::time::Duration;

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scst-accel-device-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn a_missing_node_says_load_the_module() {
        let path = scratch_dir("missing").join("scst_user");
        let err = ScstUserDevice::open(&path).expect_err("the node does not exist");
        assert!(matches!(err, OpenError::ModuleNotLoaded { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert!(err.to_string().contains("modprobe scst_user"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().expect("scratch dir"));
    }

    #[test]
    fn a_directory_is_another_error_with_its_errno() {
        // We run as root here, so a mode-000 file would open anyway; a directory opened
        // read-write fails with EISDIR, which proves the "other" arm keeps the errno. The
        // permission arm is covered by `classify` below, not by a real EACCES.
        let dir = scratch_dir("dir");
        let err = ScstUserDevice::open(&dir).expect_err("a directory cannot be opened O_RDWR");
        assert!(matches!(err, OpenError::Other { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(libc::EISDIR));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn permission_errors_say_how_to_get_access() {
        for errno in [libc::EACCES, libc::EPERM] {
            let err = OpenError::classify(Path::new(DEV_USER_PATH), io::Error::from_raw_os_error(errno));
            assert!(matches!(err, OpenError::PermissionDenied { .. }), "{err:?}");
            assert!(err.to_string().contains("udev rule"), "{err}");
            assert_eq!(err.errno(), Some(errno));
        }
        for errno in [libc::ENXIO, libc::ENODEV] {
            let err = OpenError::classify(Path::new(DEV_USER_PATH), io::Error::from_raw_os_error(errno));
            assert!(matches!(err, OpenError::ModuleNotLoaded { .. }), "{err:?}");
        }
    }

    #[test]
    fn ioctls_on_a_non_scst_node_return_the_errno_and_close_is_clean() {
        // /dev/null stands in for the node: open works, every ioctl answers ENOTTY. This shows
        // the trait methods reach the kernel and keep its errno, nothing about scst_user itself.
        let dev = ScstUserDevice::open(Path::new("/dev/null")).expect("open /dev/null");
        assert_eq!(dev.get_options(), Err(Errno(libc::ENOTTY)));
        assert_eq!(dev.device_capacity_changed(), Err(Errno(libc::ENOTTY)));
        assert_eq!(dev.path(), Path::new("/dev/null"));
        assert_eq!(dev.close(), Ok(()));
    }

    #[test]
    fn real_device_registers_and_polls_empty() {
        let path = Path::new(DEV_USER_PATH);
        if !path.exists() {
            scst_accel_hal::skip::test_skipped(
                "real_device_registers_and_polls_empty",
                "/dev/scst_user not present (no SCST kernel here)",
            );
            return;
        }
        let dev = ScstUserDevice::open(path).expect("open /dev/scst_user");
        let name = format!("scst_accel_t{}", std::process::id());
        let params = register::RegisterParams::new(&name, 512, register::default_options());
        register::register(&dev, &params).expect("register on the real kernel");
        // No LUN maps the fresh device, so no ATTACH_SESS is queued: the non-blocking fetch
        // answers EAGAIN at once instead of sleeping (spec §3.2).
        let mut cmd = GetCmd::zeroed();
        cmd.set_preply(0);
        assert_eq!(dev.reply_and_get_cmd(&mut cmd), Err(Errno::EAGAIN));
        poll_readable(&[dev.poll_fd()], Duration::from_millis(10)).expect("poll the device fd");
        register::unregister_and_wake(&dev);
        dev.close().expect("close");
    }
}
