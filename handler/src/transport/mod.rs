//! The scst_user file descriptor as a trait: one method per ioctl of spec §1.2, taking the
//! kernel's own argument structures. Two implementations stand behind it:
//! [`device::ScstUserDevice`] (the real `/dev/scst_user`) and the loopback kernel's
//! [`crate::loopback::LoopbackFd`]. The frontend is written once against this trait, so what the
//! loopback validates is byte for byte what a real kernel would receive.

use crate::abi::DevDesc;
use crate::abi::GetCmd;
use crate::abi::GetExtCdb;
use crate::abi::MultiBuffer;
use crate::abi::Opt;
use crate::abi::PreallocBuffer;
use crate::abi::ReplyCmd;
use std::fmt;
use std::os::fd::BorrowedFd;

pub mod device;
pub mod fdio;
pub mod register;
pub mod replay;
pub mod sys;
pub mod version;

/// An errno returned by an scst_user ioctl (the kernel's answer, kept as is).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `EAGAIN`: nothing ready on a non-blocking fd.
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// `EINVAL`.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// `ESRCH`: unknown command handle.
    pub const ESRCH: Errno = Errno(libc::ESRCH);
    /// `EFAULT`: a user address could not be read or written.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// `ENODEV`: no device registered on this fd.
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    /// `EPERM`: license refused.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// `EEXIST`: name already registered.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// `EBUSY`.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// `EINTR`.
    pub const EINTR: Errno = Errno(libc::EINTR);
    /// `ENOMEM`.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Self {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// As an `io::Error`.
    pub fn to_io(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, self.to_io())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_io(), f)
    }
}

impl std::error::Error for Errno {}

/// Result of an scst_user ioctl.
pub type IoctlResult<T = ()> = Result<T, Errno>;

/// One open scst_user file descriptor (spec §1). Many threads may share it (`Sync`).
///
/// Pointer fields inside the arguments (`version_str`, `preply`, `preplies`, `pbuf`,
/// `psense_buffer`...) are user virtual addresses of this process, exactly as for the kernel:
/// they must stay valid for the duration of the call.
pub trait ScstUserFd: Send + Sync {
    /// SCST_USER_REGISTER_DEVICE. Blocking mode is sampled here (spec §1.1).
    fn register_device(&self, desc: &DevDesc) -> IoctlResult;
    /// SCST_USER_UNREGISTER_DEVICE: obsolete; makes the fd non-blocking and wakes all waiters.
    fn unregister_device(&self) -> IoctlResult;
    /// SCST_USER_SET_OPTIONS.
    fn set_options(&self, opt: &Opt) -> IoctlResult;
    /// SCST_USER_GET_OPTIONS.
    fn get_options(&self) -> IoctlResult<Opt>;
    /// SCST_USER_REPLY_AND_GET_CMD: process the reply at `cmd.preply()` (if non-zero), then fetch
    /// one command into `cmd` (spec §3.2).
    fn reply_and_get_cmd(&self, cmd: &mut GetCmd) -> IoctlResult;
    /// SCST_USER_REPLY_CMD.
    fn reply_cmd(&self, reply: &ReplyCmd) -> IoctlResult;
    /// SCST_USER_FLUSH_CACHE.
    fn flush_cache(&self) -> IoctlResult;
    /// SCST_USER_DEVICE_CAPACITY_CHANGED.
    fn device_capacity_changed(&self) -> IoctlResult;
    /// SCST_USER_GET_EXTENDED_CDB.
    fn get_extended_cdb(&self, arg: &GetExtCdb) -> IoctlResult;
    /// SCST_USER_PREALLOC_BUFFER; on success `arg.out_cmd_h()` is the owner handle.
    fn prealloc_buffer(&self, arg: &mut PreallocBuffer) -> IoctlResult;
    /// SCST_USER_REPLY_AND_GET_MULTI (spec §3.3). The header's `replies_done` and `cmds_cnt`
    /// are written back as the kernel does, on success and on error.
    fn reply_and_get_multi(&self, arg: &mut MultiBuffer) -> IoctlResult;
    /// A file descriptor that polls readable (level-triggered) while commands are ready
    /// (spec §3.9 poll). Used with `poll(2)` so that no thread ever sleeps inside an ioctl.
    fn poll_fd(&self) -> BorrowedFd<'_>;
}
