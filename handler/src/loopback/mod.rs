//! The loopback kernel: an in-process, faithful model of the kernel side of `/dev/scst_user`
//! AND of the SCST core and an initiator above it (spec `scst_user.md` §1–§5, §8).
//!
//! The handler talks to it only through [`crate::transport::ScstUserFd`], exactly as to the
//! real device; the model is held to the spec, not to our handler:
//! - `fd`: the open file and every ioctl with the kernel's errnos (§1.2, §3.2, §3.3, §3.9);
//! - `device`: the per-device lock, ready list, active list and fetch path (§3.1, §5.6);
//! - `ucmd`: the per-message object and its flags (§3.11, §5.4);
//! - `core`, `core_parse`: the SCST core's own processing of a command (§3.6, §3.7);
//! - `copy_mgr`: SCST's copy manager: EXTENDED COPY, EXT_COPY_REMAP (§3.8), RECEIVE COPY
//!   RESULTS (`docs/xcopy.md`);
//! - `reply`: reply validation and effects (§3.4, §3.5);
//! - `reply_get`: the replies and fetches of one REPLY_AND_GET ioctl, batched (§3.2, §3.3);
//! - `sgv`: the SGV buffer cache with owner handles (§3.6);
//! - `ownership`: the check that the handler leaves a cached buffer alone while SCST owns it
//!   (§3.6);
//! - `session`: the kernel object, sessions, task management (§4, §7);
//! - `unjam`: teardown on the last close (§5);
//! - `uaccess`: user memory access through `process_vm_readv`/`process_vm_writev`, batched
//!   and counted ([`LoopbackKernel::syscalls`]).
//!
//! Kinder than the kernel, knowingly: the poll fd is a pipe armed whenever the ready list is not
//! empty, so a handler asleep in `poll` is woken for work another thread's reply queued, which
//! `dev_user_add_to_ready` (scst_user.c:1143-1201) wakes nobody for; the kernel's poll only finds
//! such work when a poll begins. A pipe cannot see a poll begin: armed only at `poll_fd()`, the
//! model was stricter than the kernel instead (a handler polling an fd it took earlier slept
//! past queued work until its timeout), so it stays the kinder way.

mod copy_mgr;
mod core;
mod core_parse;
mod device;
mod fd;
mod ownership;
mod reply;
mod reply_get;
mod sense;
mod session;
mod sgv;
mod spare;
mod uaccess;
mod ucmd;
mod unjam;

#[cfg(test)]
mod tests;

pub use fd::LoopbackFd;
pub use sense::decode as decode_sense;
pub use session::AttachError;
pub use session::CopyManagerError;
pub use session::CopyManagerLun;
pub use session::DeviceStats;
pub use session::KernelConfig;
pub use session::LoopbackKernel;
pub use session::ScsiCompletion;
pub use session::ScsiRequest;
pub use session::Session;
pub use session::SessionSpec;
pub use session::SubmitError;
pub use session::TmCompletion;
pub use uaccess::ModelSyscalls;
pub use unjam::CloseReport;
