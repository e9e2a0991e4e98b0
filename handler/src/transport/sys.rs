//! The raw `/dev/scst_user` system calls: one thin function per ioctl of spec §1.2, plus
//! close(2). Everything above this file is safe code.
//!
//! Each function passes the request number from [`crate::abi`] (never a hand-typed value) and
//! a pointer to an argument of exactly the size encoded in that request, then turns a negative
//! return into the kernel's [`Errno`]. Nothing retries: after an error from a reply-carrying
//! ioctl the reply must be assumed consumed (spec §8 pitfall 3), so the caller decides.
//!
//! # The address contract
//! Several arguments carry user virtual addresses inside them (`version_str`, `license_str`,
//! `preply`, `preplies`, `psense_buffer`, `pbuf`, `ext_cdb_buffer`). The kernel reaches them
//! only through `copy_from_user`/`copy_to_user`/`pin_user_pages`, which fail with `EFAULT` on an
//! unmapped address instead of touching memory unsafely, so a wrong address cannot corrupt this
//! process by itself. What the kernel *writes* through them (`ext_cdb_buffer` during the call,
//! SGV data pages given as `pbuf` later, spec §3.6) must be memory no Rust reference covers:
//! page buffers with copy-only access (`PageBuffer`) or buffers owned by the call. Keeping it is
//! the job of whoever fills those fields for [`super::ScstUserFd`]; these functions forward the
//! addresses unchanged and cannot check them.
//!
//! Every ioctl here may block (REPLY_AND_GET waits for commands; the others may wait for SCST to
//! suspend activity), so each asserts, in test builds, that the calling thread holds no checked
//! lock (docs/locking.md).
// UNSAFETY: ioctl(2) and close(2) are FFI calls that take raw pointers to argument structures.
#![allow(unsafe_code)]

use super::Errno;
use crate::abi;
use crate::abi::DevDesc;
use crate::abi::GetCmd;
use crate::abi::GetExtCdb;
use crate::abi::MultiBuffer;
use crate::abi::Opt;
use crate::abi::PreallocBuffer;
use crate::abi::ReplyCmd;
use scst_accel_hal::locks::assert_no_locks_held;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::IntoRawFd;
use std::os::fd::OwnedFd;
use zerocopy::FromZeros;

/// An `abi` request number as the `request` parameter type of this libc's `ioctl`
/// (`c_ulong` on glibc, `c_int` on musl; on musl the high bit wraps, which is what C does).
fn request(nr: u32) -> libc::Ioctl {
    nr as libc::Ioctl
}

/// Map an ioctl return value to `Ok(value)` or the thread's errno.
fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// SCST_USER_REGISTER_DEVICE. The kernel reads the 160-byte descriptor, then a fixed 91+ bytes
/// from `version_str` and `license_str` (spec §1.4).
pub fn register_device(fd: BorrowedFd<'_>, desc: &DevDesc) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_REGISTER_DEVICE");
    // SAFETY: `_IOW` of size_of::<DevDesc>(): the kernel only reads 160 bytes from `desc`, a live
    // shared reference; the embedded string addresses are read with copy_from_user (EFAULT).
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_REGISTER_DEVICE),
            desc as *const DevDesc,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_UNREGISTER_DEVICE: obsolete no-op that makes the device non-blocking and wakes
/// every waiter (spec §3.9).
pub fn unregister_device(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_UNREGISTER_DEVICE");
    // SAFETY: `_IO` request: no argument is read or written; the third argument is ignored.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request(abi::SCST_USER_UNREGISTER_DEVICE), 0) };
    check(ret).map(drop)
}

/// SCST_USER_SET_OPTIONS.
pub fn set_options(fd: BorrowedFd<'_>, opt: &Opt) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_SET_OPTIONS");
    // SAFETY: `_IOW` of size_of::<Opt>(): the kernel reads 20 bytes from a live shared reference.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_SET_OPTIONS),
            opt as *const Opt,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_GET_OPTIONS.
pub fn get_options(fd: BorrowedFd<'_>) -> Result<Opt, Errno> {
    assert_no_locks_held("SCST_USER_GET_OPTIONS");
    let mut opt = Opt::new_zeroed();
    // SAFETY: `_IOR` of size_of::<Opt>(): the kernel writes 20 bytes into a local `Opt`, which
    // is valid for any bit pattern (FromBytes) and exclusively borrowed for the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_GET_OPTIONS),
            &mut opt as *mut Opt,
        )
    };
    check(ret).map(|_| opt)
}

/// SCST_USER_REPLY_AND_GET_CMD (spec §3.2): processes the reply at `cmd.preply()` (if not 0),
/// then writes at most 544 bytes of one command into `cmd`.
pub fn reply_and_get_cmd(fd: BorrowedFd<'_>, cmd: &mut GetCmd) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_REPLY_AND_GET_CMD");
    // SAFETY: `_IOWR` of size_of::<GetCmd>(): the kernel reads `preply` and writes at most
    // `payload_len` ≤ 544 bytes into `cmd`, exclusively borrowed and valid for any bytes; the
    // reply behind `preply` is read with copy_from_user.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_REPLY_AND_GET_CMD),
            cmd as *mut GetCmd,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_REPLY_CMD.
pub fn reply_cmd(fd: BorrowedFd<'_>, reply: &ReplyCmd) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_REPLY_CMD");
    // SAFETY: `_IOW` of size_of::<ReplyCmd>(): the kernel reads 56 bytes from a live reference.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_REPLY_CMD),
            reply as *const ReplyCmd,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_FLUSH_CACHE.
pub fn flush_cache(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_FLUSH_CACHE");
    // SAFETY: `_IO` request: no argument is read or written.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request(abi::SCST_USER_FLUSH_CACHE), 0) };
    check(ret).map(drop)
}

/// SCST_USER_DEVICE_CAPACITY_CHANGED.
pub fn device_capacity_changed(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_DEVICE_CAPACITY_CHANGED");
    // SAFETY: `_IO` request: no argument is read or written.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request(abi::SCST_USER_DEVICE_CAPACITY_CHANGED), 0) };
    check(ret).map(drop)
}

/// SCST_USER_GET_EXTENDED_CDB (spec §3.9): copies CDB bytes 16.. to `arg.ext_cdb_buffer`.
pub fn get_extended_cdb(fd: BorrowedFd<'_>, arg: &GetExtCdb) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_GET_EXTENDED_CDB");
    // SAFETY: although encoded `_IOWR`, the kernel only reads the 16-byte argument (a live
    // shared reference); the CDB bytes go to `ext_cdb_buffer` through copy_to_user, see the
    // address contract in the module docs.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_GET_EXTENDED_CDB),
            arg as *const GetExtCdb,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_PREALLOC_BUFFER; on success the kernel has written the owner handle over the low
/// four bytes of `arg.pbuf` ([`PreallocBuffer::out_cmd_h`]).
pub fn prealloc_buffer(fd: BorrowedFd<'_>, arg: &mut PreallocBuffer) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_PREALLOC_BUFFER");
    // SAFETY: `_IOWR` of size_of::<PreallocBuffer>(): the kernel reads and writes 16 bytes of
    // `arg`, exclusively borrowed and valid for any bytes; the pages at `pbuf` are pinned by the
    // kernel (address contract in the module docs).
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request(abi::SCST_USER_PREALLOC_BUFFER),
            arg as *mut PreallocBuffer,
        )
    };
    check(ret).map(drop)
}

/// SCST_USER_REPLY_AND_GET_MULTI (spec §3.3). The kernel writes `replies_done` and `cmds_cnt`
/// back into the header and up to `cmds_cnt` commands into the slots.
///
/// # Errors
/// `EINVAL` without calling the kernel when the header asks for more commands than `buf` has
/// slots: the kernel trusts `cmds_cnt` and would write past the allocation.
pub fn reply_and_get_multi(fd: BorrowedFd<'_>, buf: &mut MultiBuffer) -> Result<(), Errno> {
    assert_no_locks_held("SCST_USER_REPLY_AND_GET_MULTI");
    let header = buf.header();
    if usize::try_from(header.cmds_cnt).is_ok_and(|cnt| cnt > buf.capacity()) {
        log::error!(
            "REPLY_AND_GET_MULTI refused locally: cmds_cnt {} exceeds the {} slots of the buffer",
            header.cmds_cnt,
            buf.capacity()
        );
        return Err(Errno::EINVAL);
    }
    let arg = buf.as_mut_ptr();
    // SAFETY: `arg` points to one live allocation of 16 + capacity * 544 bytes, exclusively
    // borrowed through `buf` and valid for any bytes. The kernel writes the header and at most
    // `cmds_cnt` ≤ capacity slots (checked above; cmds_cnt ≤ 0 writes none), so every write
    // stays inside it; the replies at `preplies` are read with copy_from_user.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request(abi::SCST_USER_REPLY_AND_GET_MULTI), arg) };
    check(ret).map(drop)
}

/// close(2), reporting the errno that dropping an `OwnedFd` would discard. The descriptor is
/// released whatever the result (Linux never leaves it open after close, even on EINTR).
pub fn close(fd: OwnedFd) -> Result<(), Errno> {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` came from `into_raw_fd`, so this is its only owner and it is closed once.
    let ret = unsafe { libc::close(raw) };
    check(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    // No scst_user module here, so these tests prove the wrappers' error plumbing and the local
    // bound check on a descriptor that is not /dev/scst_user (/dev/null): ioctl answers ENOTTY.

    fn not_scst_user() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("open /dev/null").into()
    }

    #[test]
    fn a_wrong_descriptor_reports_the_kernel_errno() {
        let r = not_scst_user();
        assert_eq!(get_options(r.as_fd()), Err(Errno(libc::ENOTTY)));
        assert_eq!(unregister_device(r.as_fd()), Err(Errno(libc::ENOTTY)));
        assert_eq!(flush_cache(r.as_fd()), Err(Errno(libc::ENOTTY)));
        let mut cmd = GetCmd::zeroed();
        assert_eq!(reply_and_get_cmd(r.as_fd(), &mut cmd), Err(Errno(libc::ENOTTY)));
    }

    #[test]
    fn multi_refuses_more_commands_than_slots() {
        let r = not_scst_user();
        let mut buf = MultiBuffer::new(2);
        buf.set_header(abi::GetMultiHeader {
            cmds_cnt: 3,
            ..Default::default()
        });
        assert_eq!(reply_and_get_multi(r.as_fd(), &mut buf), Err(Errno::EINVAL));
        // Within bounds the call reaches the kernel, which answers ENOTTY for /dev/null.
        buf.set_header(abi::GetMultiHeader {
            cmds_cnt: 2,
            ..Default::default()
        });
        assert_eq!(reply_and_get_multi(r.as_fd(), &mut buf), Err(Errno(libc::ENOTTY)));
    }

    #[test]
    fn close_reports_success() {
        assert_eq!(close(not_scst_user()), Ok(()));
    }
}
