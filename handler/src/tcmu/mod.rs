//! The TCMU frontend: serving LIO's user-space backstore (`target_core_user`) of a mainline
//! kernel. Its parts (docs/tcmu.md):
//!
//! - [`abi`]: the uapi layout of `linux/target_core_user.h`, with compile-time size and offset
//!   checks.
//! - [`region`]: the shared mapping as bounds-checked atomic/volatile accesses (the module's
//!   only unsafe code besides the UIO system calls).
//! - [`ring`]: the command-ring consumer that checks every kernel-supplied offset.
//! - [`uio`]: finding, mapping, waiting on and kicking the `/dev/uioN` of a TCMU backstore.
//! - [`configfs`]: creating and removing the backstore, a tcm_loop or iSCSI target and the
//!   LUN under LIO's configfs.
//! - [`exec`]: a first executor: ring commands through the SBC engine and a store queue.
//! - [`netlink`]: the kernel's device events (added, removed, reconfigured) on generic netlink.
//! - [`worker`]: the thread serving one ring, and its teardown (drain, then unmap).
//! - [`sim`]: a simulated kernel side of the ring, the peer of the ring's tests.

pub mod abi;
#[cfg(test)]
mod ats_tests;
pub mod configfs;
pub mod exec;
pub mod netlink;
pub mod region;
pub mod ring;
pub mod sim;
pub mod uio;
pub mod worker;
