//! A message to a device-mapper target (`DM_TARGET_MSG`, what `dmsetup message NAME 0 TEXT`
//! sends), in-process: the crash writer marks a dm-log-writes log at each acknowledgment
//! ([`crate::crash`]) with one ioctl from its own thread right after it, where spawning
//! `dmsetup` would add a fork and an exec per mark and widen the window in which a late flush
//! slips in before the mark.
//!
//! The ABI is `include/uapi/linux/dm-ioctl.h`: a `struct dm_ioctl` header (312 bytes) naming the
//! device, followed at `data_start` by `struct dm_target_msg` (the target's first sector, then
//! the NUL-terminated text). Needs CAP_SYS_ADMIN, as dmsetup does.
#![allow(unsafe_code)] // UNSAFETY: ioctl(2) on /dev/mapper/control is an FFI call taking a raw pointer.

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `DM_NAME_LEN`.
const NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
const UUID_LEN: usize = 129;
/// The longest message text this sends, `mark ` and its label included: a choice, ample for
/// the crash writer's marks (log-writes keeps at most its block size less 33 bytes of a mark's
/// label, 479 with 512-byte blocks, and cuts the rest).
pub const MAX_TEXT: usize = 255;

/// `struct dm_ioctl`.
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; NAME_LEN],
    uuid: [u8; UUID_LEN],
    data: [u8; 7],
}

// The header as dm-ioctl.h lays it out (x86_64 and every 64-bit ABI Linux has).
const _: () = assert!(size_of::<DmIoctl>() == 312);
const _: () = assert!(offset_of!(DmIoctl, data_size) == 12);
const _: () = assert!(offset_of!(DmIoctl, flags) == 28);
const _: () = assert!(offset_of!(DmIoctl, dev) == 40);
const _: () = assert!(offset_of!(DmIoctl, name) == 48);
const _: () = assert!(offset_of!(DmIoctl, uuid) == 176);
const _: () = assert!(offset_of!(DmIoctl, data) == 305);

/// The header, then `struct dm_target_msg` (`sector`, `message[]`) at `data_start`.
#[repr(C)]
struct TargetMsg {
    header: DmIoctl,
    sector: u64,
    message: [u8; MAX_TEXT + 1],
}

const _: () = assert!(offset_of!(TargetMsg, sector) == 312);
const _: () = assert!(offset_of!(TargetMsg, message) == 320);

/// `DM_VERSION_MAJOR`: the kernel refuses another major; any minor it knows is accepted, and 0
/// is the oldest.
const VERSION: [u32; 3] = [4, 0, 0];
/// `DM_TARGET_MSG`: `_IOWR(DM_IOCTL, DM_TARGET_MSG_CMD, struct dm_ioctl)`.
const DM_TARGET_MSG: libc::Ioctl = libc::_IOWR::<DmIoctl>(0xfd, 14);

/// Sends messages to one device-mapper device's target at sector 0.
#[derive(Debug)]
pub struct Messenger {
    control: File,
    name: String,
}

impl Messenger {
    /// Open `/dev/mapper/control` for the device `name` (as `dmsetup ls` shows it).
    ///
    /// # Errors
    /// The name is empty or longer than the kernel's 127 bytes ([`io::ErrorKind::InvalidInput`]),
    /// or the control device cannot be opened.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= NAME_LEN || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a device-mapper name (1 to 127 bytes, no NUL)"),
            ));
        }
        let control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(Path::new("/dev/mapper/control"))?;
        Ok(Self {
            control,
            name: name.to_owned(),
        })
    }

    /// The device-mapper name messages go to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send `text` (for log-writes: `mark LABEL`) to the target at sector 0.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a text longer than [`MAX_TEXT`] or with a NUL; the
    /// kernel's errno otherwise (ENXIO: no such device; EINVAL: the target refused the message).
    pub fn send(&self, text: &str) -> io::Result<()> {
        if text.len() > MAX_TEXT || text.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a device-mapper message of {} bytes (at most {MAX_TEXT}, no NUL)",
                    text.len()
                ),
            ));
        }
        let mut msg = TargetMsg {
            header: DmIoctl {
                version: VERSION,
                data_size: size_of::<TargetMsg>() as u32,
                data_start: offset_of!(TargetMsg, sector) as u32,
                target_count: 0,
                open_count: 0,
                flags: 0,
                event_nr: 0,
                padding: 0,
                dev: 0,
                name: [0; NAME_LEN],
                uuid: [0; UUID_LEN],
                data: [0; 7],
            },
            sector: 0,
            message: [0; MAX_TEXT + 1],
        };
        msg.header.name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        msg.message[..text.len()].copy_from_slice(text.as_bytes());
        // SAFETY: `msg` is a live, writable struct of `data_size` bytes laid out as dm-ioctl.h
        // says (asserted above); the kernel reads and writes at most `data_size` bytes of it and
        // keeps no pointer past the call; `control` is an open fd.
        let rc = unsafe { libc::ioctl(self.control.as_raw_fd(), DM_TARGET_MSG, &mut msg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_dm_ioctl_hs() {
        // DM_TARGET_MSG as <linux/dm-ioctl.h> builds it on x86_64 (strace shows 0xc138fd0e).
        assert_eq!(DM_TARGET_MSG, 0xc138_fd0e);
    }

    #[test]
    fn names_and_texts_the_kernel_cannot_take_are_refused_before_the_call() {
        let long = "n".repeat(NAME_LEN);
        for name in ["", long.as_str(), "a\0b"] {
            let e = Messenger::open(name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        // Not the control device: the text checks come first, then the kernel answers.
        let messenger = Messenger {
            control: File::open("/dev/null").expect("/dev/null"),
            name: "lw".into(),
        };
        for text in ["x".repeat(MAX_TEXT + 1), "mark a\0b".into()] {
            let e = messenger.send(&text).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let e = messenger.send("mark a").expect_err("not dm");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }
}
