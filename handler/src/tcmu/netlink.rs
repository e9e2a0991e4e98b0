//! target_core_user's device events: the generic netlink family `TCM-USER`, multicast group
//! `config` (tcmu-design.rst, "Device events"; the kernel's `tcmu_netlink_event_init`/`_send`).
//!
//! The kernel broadcasts one message per event: `TCMU_CMD_ADDED_DEVICE` when a backstore is
//! enabled, `TCMU_CMD_REMOVED_DEVICE` when it is destroyed (sent before its UIO device is
//! unregistered), `TCMU_CMD_RECONFIG_DEVICE` when `attrib/dev_size`, `attrib/dev_config` or
//! `attrib/emulate_write_cache` of an enabled backstore is written (sent before the kernel
//! takes the new value). Each carries the UIO name (`TCMU_ATTR_DEVICE`), the UIO minor and the
//! device index; a reconfiguration carries the new value (`TCMU_ATTR_DEV_SIZE`,
//! `TCMU_ATTR_DEV_CFG` or `TCMU_ATTR_WRITECACHE`).
//!
//! **Events are notices; the kernel is told not to wait for replies.** After any process's
//! `TCMU_CMD_SET_FEATURES` (tcmu-runner sends one at start and never takes it back; the switch,
//! `tcmu_kern_cmd_reply_supported`, is module-wide), the kernel waits for a `*_DONE` reply to
//! each event of a device whose `nl_reply_supported` is not negative before the configfs write
//! that caused it returns (`tcmu_wait_genl_cmd_reply`: uninterruptible, no timeout). This
//! module sends no `SET_FEATURES` and no replies; what keeps the kernel from waiting for them is
//! that every backstore this service creates is opted out, `nl_reply_supported=-1` written to
//! its `control` before `enable`, and an adopted one through `attrib/nl_reply_supported`
//! ([`super::configfs`]). Without that, a running tcmu-runner would answer our ADDED_DEVICE with
//! an error (failing `enable`), and once it had run and exited our own listener, a member of
//! the group, would make `enable`, `attrib/dev_size` writes and `rmdir` wait forever. A
//! reconfiguration the handler cannot follow is logged (docs/tcmu.md).
//!
//! Everything read from the socket is untrusted input: [`messages`], [`attributes`] and the
//! typed readers check every length against the bytes there are and return a
//! [`NetlinkError`]; nothing here panics on a hostile message (proptest below).
//!
//! The socket is a raw `NETLINK_GENERIC` socket through libc: the family's id and the group's
//! id are resolved with the controller's `CTRL_CMD_GETFAMILY`, then the group is joined.
// UNSAFETY: socket(2), bind(2), sendto(2), recvfrom(2), getsockname(2), setsockopt(2) on the
// netlink socket.
#![allow(unsafe_code)]

use super::abi::genl_attr;
use super::abi::genl_cmd;
use super::abi::GENL_FAMILY_NAME;
use super::abi::GENL_MCGRP_CONFIG;
use scst_accel_hal::EventFd;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `<linux/netlink.h>` and `<linux/genetlink.h>` values this module uses (uapi, stable).
mod uapi {
    /// `NLMSG_HDRLEN`: `struct nlmsghdr` (len u32, type u16, flags u16, seq u32, pid u32).
    pub const NLMSG_HDRLEN: usize = 16;
    /// `GENL_HDRLEN`: `struct genlmsghdr` (cmd u8, version u8, reserved u16).
    pub const GENL_HDRLEN: usize = 4;
    /// `NLA_HDRLEN`: `struct nlattr` (len u16, type u16).
    pub const NLA_HDRLEN: usize = 4;
    /// `NLMSG_ERROR`: payload `struct nlmsgerr` (error i32, then the request's header).
    pub const NLMSG_ERROR: u16 = 2;
    /// `NLMSG_OVERRUN`.
    pub const NLMSG_OVERRUN: u16 = 4;
    /// `NLM_F_REQUEST`.
    pub const NLM_F_REQUEST: u16 = 1;
    /// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`: flag bits of `nla_type`, not its type.
    pub const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);
    /// `GENL_ID_CTRL`: the controller family.
    pub const GENL_ID_CTRL: u16 = 0x10;
    /// `CTRL_CMD_NEWFAMILY`: the controller's answer to GETFAMILY.
    pub const CTRL_CMD_NEWFAMILY: u8 = 1;
    /// `CTRL_CMD_GETFAMILY`.
    pub const CTRL_CMD_GETFAMILY: u8 = 3;
    /// `CTRL_ATTR_FAMILY_ID` (u16).
    pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
    /// `CTRL_ATTR_FAMILY_NAME` (string).
    pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    /// `CTRL_ATTR_MCAST_GROUPS` (nested array of nested groups).
    pub const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
    /// `CTRL_ATTR_MCAST_GRP_NAME` (string).
    pub const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
    /// `CTRL_ATTR_MCAST_GRP_ID` (u32).
    pub const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
    /// `SOL_NETLINK`.
    pub const SOL_NETLINK: libc::c_int = 270;
    /// `NETLINK_ADD_MEMBERSHIP`.
    pub const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
}

/// A message or attribute that cannot be read as netlink says it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetlinkError {
    /// Fewer bytes than a header or a declared length needs.
    #[error("{what}: {need} bytes needed, {have} there")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// A declared length smaller than its own header.
    #[error("{what}: length {len} is shorter than its header")]
    BadLength {
        /// What was being read.
        what: &'static str,
        /// The length declared.
        len: usize,
    },
    /// An attribute whose payload does not have its type's size or form.
    #[error("attribute {kind}: {why}")]
    BadAttribute {
        /// The attribute's type.
        kind: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// A required attribute is absent.
    #[error("attribute {0} is missing")]
    Missing(&'static str),
    /// The kernel answered a request with an error (`NLMSG_ERROR`, a negative errno).
    #[error("the kernel answered errno {0}")]
    Kernel(i32),
    /// The socket's buffer overflowed: events were lost (`ENOBUFS`, or `NLMSG_OVERRUN`).
    #[error("events were lost (the socket's receive buffer overflowed)")]
    Overrun,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`: a family id, or `NLMSG_ERROR`/`NLMSG_DONE`/...
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// What follows the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// `NLMSG_ALIGN` / `NLA_ALIGN`: 4.
fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The messages of one datagram, each checked: a header whole, `nlmsg_len` at least the
/// header and within the datagram. Stops at the first that is not.
///
/// # Errors
/// [`NetlinkError::Truncated`] or [`NetlinkError::BadLength`] for the first bad message (the
/// datagram's rest cannot be framed).
pub fn messages(buf: &[u8]) -> Result<Vec<Message<'_>>, NetlinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < uapi::NLMSG_HDRLEN {
            return Err(NetlinkError::Truncated {
                what: "netlink header",
                need: uapi::NLMSG_HDRLEN,
                have: rest.len(),
            });
        }
        let len = u32_at(rest, 0) as usize;
        if len < uapi::NLMSG_HDRLEN {
            return Err(NetlinkError::BadLength {
                what: "netlink message",
                len,
            });
        }
        if len > rest.len() {
            return Err(NetlinkError::Truncated {
                what: "netlink message",
                need: len,
                have: rest.len(),
            });
        }
        out.push(Message {
            kind: u16_at(rest, 4),
            flags: u16_at(rest, 6),
            seq: u32_at(rest, 8),
            payload: &rest[uapi::NLMSG_HDRLEN..len],
        });
        // The last message may end unpadded.
        at += align4(len).min(rest.len());
    }
    Ok(out)
}

/// One attribute: its type (flag bits removed) and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// `nla_type` without `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER`.
    pub kind: u16,
    /// The payload, `nla_len - 4` bytes.
    pub payload: &'a [u8],
}

impl<'a> Attribute<'a> {
    fn bad(&self, why: &'static str) -> NetlinkError {
        NetlinkError::BadAttribute { kind: self.kind, why }
    }

    /// The payload as a u8.
    ///
    /// # Errors
    /// [`NetlinkError::BadAttribute`] unless it is 1 byte.
    pub fn u8(&self) -> Result<u8, NetlinkError> {
        match self.payload {
            [b] => Ok(*b),
            _ => Err(self.bad("not a u8")),
        }
    }

    /// The payload as a u16 (native byte order, as the kernel's `nla_put_u16`).
    ///
    /// # Errors
    /// [`NetlinkError::BadAttribute`] unless it is 2 bytes.
    pub fn u16(&self) -> Result<u16, NetlinkError> {
        let bytes: [u8; 2] = self.payload.try_into().map_err(|_| self.bad("not a u16"))?;
        Ok(u16::from_ne_bytes(bytes))
    }

    /// The payload as a u32.
    ///
    /// # Errors
    /// [`NetlinkError::BadAttribute`] unless it is 4 bytes.
    pub fn u32(&self) -> Result<u32, NetlinkError> {
        let bytes: [u8; 4] = self.payload.try_into().map_err(|_| self.bad("not a u32"))?;
        Ok(u32::from_ne_bytes(bytes))
    }

    /// The payload as a u64.
    ///
    /// # Errors
    /// [`NetlinkError::BadAttribute`] unless it is 8 bytes.
    pub fn u64(&self) -> Result<u64, NetlinkError> {
        let bytes: [u8; 8] = self.payload.try_into().map_err(|_| self.bad("not a u64"))?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// The payload as a NUL-terminated string (`nla_put_string`), UTF-8.
    ///
    /// # Errors
    /// [`NetlinkError::BadAttribute`] without the NUL, or not UTF-8.
    pub fn string(&self) -> Result<&'a str, NetlinkError> {
        let Some((0, text)) = self.payload.split_last() else {
            return Err(self.bad("a string without its terminating NUL"));
        };
        // The kernel's strings end at the first NUL; one inside is a hostile message.
        if text.contains(&0) {
            return Err(self.bad("a string with a NUL inside"));
        }
        std::str::from_utf8(text).map_err(|_| self.bad("a string that is not UTF-8"))
    }

    /// The payload as nested attributes.
    ///
    /// # Errors
    /// As [`attributes`].
    pub fn nested(&self) -> Result<Vec<Attribute<'a>>, NetlinkError> {
        attributes(self.payload)
    }
}

/// The attributes in `buf`, each checked: a header whole, `nla_len` at least the header and
/// within `buf`.
///
/// # Errors
/// [`NetlinkError::Truncated`] or [`NetlinkError::BadLength`] for the first bad one.
pub fn attributes(buf: &[u8]) -> Result<Vec<Attribute<'_>>, NetlinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < uapi::NLA_HDRLEN {
            return Err(NetlinkError::Truncated {
                what: "attribute header",
                need: uapi::NLA_HDRLEN,
                have: rest.len(),
            });
        }
        let len = usize::from(u16_at(rest, 0));
        if len < uapi::NLA_HDRLEN {
            return Err(NetlinkError::BadLength {
                what: "attribute",
                len,
            });
        }
        if len > rest.len() {
            return Err(NetlinkError::Truncated {
                what: "attribute",
                need: len,
                have: rest.len(),
            });
        }
        out.push(Attribute {
            kind: u16_at(rest, 2) & uapi::NLA_TYPE_MASK,
            payload: &rest[uapi::NLA_HDRLEN..len],
        });
        at += align4(len).min(rest.len());
    }
    Ok(out)
}

/// A generic netlink message's command and attributes.
fn genl(payload: &[u8]) -> Result<(u8, Vec<Attribute<'_>>), NetlinkError> {
    if payload.len() < uapi::GENL_HDRLEN {
        return Err(NetlinkError::Truncated {
            what: "generic netlink header",
            need: uapi::GENL_HDRLEN,
            have: payload.len(),
        });
    }
    Ok((payload[0], attributes(&payload[uapi::GENL_HDRLEN..])?))
}

/// What happened to a TCMU device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `TCMU_CMD_ADDED_DEVICE`: a backstore was enabled.
    Added,
    /// `TCMU_CMD_REMOVED_DEVICE`: a backstore is being destroyed.
    Removed,
    /// `TCMU_CMD_RECONFIG_DEVICE`: an attribute of an enabled backstore is being changed.
    Reconfig,
}

/// One device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Added, removed, reconfigured.
    pub kind: EventKind,
    /// The UIO name, `tcm-user/<hba>/<name>[/<subtype>/<config>]`
    /// ([`super::uio::TcmuUioName::parse`]).
    pub device: String,
    /// The UIO minor (`/dev/uio<minor>`).
    pub minor: Option<u32>,
    /// The kernel's device index.
    pub device_id: Option<u32>,
    /// Reconfiguration: the new size in bytes.
    pub dev_size: Option<u64>,
    /// Reconfiguration: the new `dev_config`.
    pub dev_config: Option<String>,
    /// Reconfiguration: the new write-cache emulation.
    pub write_cache: Option<bool>,
}

/// The TCMU events of one datagram of family `family`: one entry per message of that family
/// (other messages, such as a `NLMSG_NOOP`, are skipped). A message that cannot be read is an
/// `Err` in its place; a datagram that cannot be framed ends with one `Err`.
pub fn parse_events(buf: &[u8], family: u16) -> Vec<Result<DeviceEvent, NetlinkError>> {
    let framed = match messages(buf) {
        Ok(m) => m,
        Err(e) => return vec![Err(e)],
    };
    framed
        .into_iter()
        .filter_map(|m| match m.kind {
            uapi::NLMSG_OVERRUN => Some(Err(NetlinkError::Overrun)),
            kind if kind == family => parse_event(m.payload).transpose(),
            _ => None,
        })
        .collect()
}

/// One TCMU message; `Ok(None)` for a command that is not an event (a `*_DONE` echoed by
/// another listener's reply, `SET_FEATURES`).
fn parse_event(payload: &[u8]) -> Result<Option<DeviceEvent>, NetlinkError> {
    let (cmd, attrs) = genl(payload)?;
    let kind = match cmd {
        genl_cmd::ADDED_DEVICE => EventKind::Added,
        genl_cmd::REMOVED_DEVICE => EventKind::Removed,
        genl_cmd::RECONFIG_DEVICE => EventKind::Reconfig,
        _ => return Ok(None),
    };
    let mut event = DeviceEvent {
        kind,
        device: String::new(),
        minor: None,
        device_id: None,
        dev_size: None,
        dev_config: None,
        write_cache: None,
    };
    let mut device = None;
    for attr in &attrs {
        match attr.kind {
            genl_attr::DEVICE => device = Some(attr.string()?.to_owned()),
            genl_attr::MINOR => event.minor = Some(attr.u32()?),
            genl_attr::DEVICE_ID => event.device_id = Some(attr.u32()?),
            genl_attr::DEV_SIZE => event.dev_size = Some(attr.u64()?),
            genl_attr::DEV_CFG => event.dev_config = Some(attr.string()?.to_owned()),
            genl_attr::WRITECACHE => event.write_cache = Some(attr.u8()? != 0),
            // Attributes a newer kernel may add are skipped, as netlink intends.
            _ => {}
        }
    }
    event.device = device.ok_or(NetlinkError::Missing("TCMU_ATTR_DEVICE"))?;
    Ok(Some(event))
}

/// A generic netlink family as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its id (the `nlmsg_type` of its messages).
    pub id: u16,
    /// Its multicast groups: name and id.
    pub groups: Vec<(String, u32)>,
}

impl Family {
    /// The id of the group named `name`.
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }
}

/// The controller's answer to `CTRL_CMD_GETFAMILY` (request `seq`).
///
/// # Errors
/// The kernel's error (`ENOENT`: no such family), or a message that cannot be read.
pub fn parse_family(buf: &[u8], seq: u32) -> Result<Family, NetlinkError> {
    for m in messages(buf)? {
        if m.seq != seq {
            continue;
        }
        if m.kind == uapi::NLMSG_ERROR {
            if m.payload.len() < 4 {
                return Err(NetlinkError::Truncated {
                    what: "netlink error",
                    need: 4,
                    have: m.payload.len(),
                });
            }
            let errno = u32_at(m.payload, 0) as i32;
            // 0 is an acknowledgement, not an answer.
            if errno != 0 {
                return Err(NetlinkError::Kernel(errno));
            }
            continue;
        }
        if m.kind != uapi::GENL_ID_CTRL {
            continue;
        }
        let (cmd, attrs) = genl(m.payload)?;
        if cmd != uapi::CTRL_CMD_NEWFAMILY {
            continue;
        }
        let mut id = None;
        let mut groups = Vec::new();
        for attr in &attrs {
            match attr.kind {
                uapi::CTRL_ATTR_FAMILY_ID => id = Some(attr.u16()?),
                uapi::CTRL_ATTR_MCAST_GROUPS => {
                    for group in attr.nested()? {
                        let mut name = None;
                        let mut gid = None;
                        for field in group.nested()? {
                            match field.kind {
                                uapi::CTRL_ATTR_MCAST_GRP_NAME => name = Some(field.string()?.to_owned()),
                                uapi::CTRL_ATTR_MCAST_GRP_ID => gid = Some(field.u32()?),
                                _ => {}
                            }
                        }
                        match (name, gid) {
                            (Some(n), Some(g)) => groups.push((n, g)),
                            _ => return Err(NetlinkError::Missing("CTRL_ATTR_MCAST_GRP_NAME/ID")),
                        }
                    }
                }
                _ => {}
            }
        }
        let id = id.ok_or(NetlinkError::Missing("CTRL_ATTR_FAMILY_ID"))?;
        return Ok(Family { id, groups });
    }
    Err(NetlinkError::Missing("the controller's answer"))
}

/// `CTRL_CMD_GETFAMILY` for `name`, sequence `seq`.
fn getfamily_request(name: &str, seq: u32) -> Vec<u8> {
    let mut attr = Vec::new();
    let value_len = name.len() + 1;
    let nla_len = u16::try_from(uapi::NLA_HDRLEN + value_len).unwrap_or(u16::MAX);
    attr.extend_from_slice(&nla_len.to_ne_bytes());
    attr.extend_from_slice(&uapi::CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
    attr.extend_from_slice(name.as_bytes());
    attr.push(0);
    attr.resize(align4(attr.len()), 0);
    let len = uapi::NLMSG_HDRLEN + uapi::GENL_HDRLEN + attr.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&uapi::GENL_ID_CTRL.to_ne_bytes());
    msg.extend_from_slice(&uapi::NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[uapi::CTRL_CMD_GETFAMILY, 1, 0, 0]);
    msg.extend_from_slice(&attr);
    msg
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A socket call failed.
    #[error("netlink {call}")]
    Socket {
        /// The call.
        call: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The controller did not answer within its bound.
    #[error("the generic netlink controller did not answer")]
    NoAnswer,
    /// The family is not registered (target_core_user is not loaded).
    #[error("no generic netlink family {0:?} (is target_core_user loaded?)")]
    NoFamily(String),
    /// The family has no such multicast group.
    #[error("family {family:?} has no multicast group {group:?}")]
    NoGroup {
        /// The family.
        family: String,
        /// The group.
        group: String,
    },
    /// The controller's answer could not be read.
    #[error("the controller's answer")]
    Answer(#[source] NetlinkError),
}

/// Whether a datagram's sender, as recvfrom reported it, is the kernel: a whole netlink
/// address with port id 0.
fn from_kernel(from: &libc::sockaddr_nl, len: libc::socklen_t) -> bool {
    len as usize >= std::mem::size_of::<libc::sockaddr_nl>()
        && i32::from(from.nl_family) == libc::AF_NETLINK
        && from.nl_pid == 0
}

/// A bound `NETLINK_GENERIC` socket.
#[derive(Debug)]
pub struct GenlSocket {
    fd: OwnedFd,
}

/// Receive buffer: a generic netlink message the kernel makes with `NLMSG_GOODSIZE` is at most
/// a page; 16 KiB leaves room for a page size of 16 KiB.
const RECV_BUFFER: usize = 16 * 1024;

impl GenlSocket {
    /// Open and bind a generic netlink socket (the kernel assigns the port id).
    ///
    /// # Errors
    /// The socket or bind call's error.
    pub fn open() -> Result<Self, ListenError> {
        let err = |call| move |source| ListenError::Socket { call, source };
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data for which all-zero bytes are valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl for the call, its size passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("bind")(io::Error::last_os_error()));
        }
        Ok(Self { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // Port id 0: the kernel.
        self.send_to(msg, 0)
    }

    fn send_to(&self, msg: &[u8], port_id: u32) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data for which all-zero bytes are valid.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        to.nl_pid = port_id;
        // SAFETY: `msg` is readable for its length; `to` is a valid address of its size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` for a datagram and read it into `buf`: `Ok(None)` on timeout or
    /// when `wake` (watched, never read) became readable first, `Ok(Some(n))` for `n` bytes
    /// the kernel sent.
    ///
    /// Only the kernel's datagrams are taken: one from another socket (a process with
    /// CAP_NET_ADMIN may unicast to ours, and a forged REMOVED_DEVICE would stop a disk, a
    /// forged RECONFIG resize it) is read off the socket, logged with its sender's port id and
    /// dropped (`Ok(None)`). The kernel's port id is 0 (`netlink_kernel_create`); a user
    /// socket's is never 0 (`netlink_autobind`), so the sender recvfrom reports decides.
    ///
    /// # Errors
    /// [`NetlinkError::Overrun`] as an `io::Error` of kind `Other` when the kernel dropped
    /// messages (`ENOBUFS`); a datagram longer than `buf` is refused (`InvalidData`), never
    /// parsed cut short.
    fn recv(
        &self,
        buf: &mut [u8],
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
    ) -> io::Result<Option<usize>> {
        let mut fds = vec![self.fd.as_fd()];
        fds.extend(wake);
        let ready = scst_accel_hal::fdio::poll_readable(&fds, timeout)?;
        if !ready.first().copied().unwrap_or(false) {
            return Ok(None);
        }
        // SAFETY: sockaddr_nl is plain data for which all-zero bytes are valid.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is writable for its length; `from` is writable for `from_len` bytes,
        // which the call updates. MSG_TRUNC makes the call return the datagram's real
        // length, so a cut datagram is told apart.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                std::ptr::addr_of_mut!(from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                Some(libc::ENOBUFS) => Err(io::Error::other(NetlinkError::Overrun)),
                _ => Err(e),
            };
        }
        if !from_kernel(&from, from_len) {
            log::warn!(
                "tcmu netlink: dropped a {n}-byte datagram from port id {} (family {}), not the \
                 kernel: a process with CAP_NET_ADMIN sent it; device events come only from the \
                 kernel",
                from.nl_pid,
                from.nl_family
            );
            return Ok(None);
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a {n}-byte datagram does not fit the {}-byte buffer", buf.len()),
            ));
        }
        Ok(Some(n))
    }

    /// This socket's port id (the kernel assigned it at bind).
    #[cfg(test)]
    fn port_id(&self) -> io::Result<u32> {
        // SAFETY: sockaddr_nl is plain data for which all-zero bytes are valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is writable for `len` bytes, which the call updates.
        let rc =
            unsafe { libc::getsockname(self.fd.as_raw_fd(), std::ptr::addr_of_mut!(addr).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr.nl_pid)
    }

    /// Ask the controller for family `name`.
    ///
    /// # Errors
    /// [`ListenError::NoFamily`] when it is not registered; others as they come.
    pub fn resolve(&self, name: &str) -> Result<Family, ListenError> {
        const SEQ: u32 = 1;
        self.send(&getfamily_request(name, SEQ))
            .map_err(|source| ListenError::Socket { call: "send", source })?;
        let mut buf = vec![0u8; RECV_BUFFER];
        // The controller answers at once; 2 s bounds a kernel that does not. A datagram that
        // is not the kernel's was dropped (`recv`): wait on for the answer, within the bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let n = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ListenError::NoAnswer);
            }
            let got = self
                .recv(&mut buf, left, None)
                .map_err(|source| ListenError::Socket { call: "recv", source })?;
            if let Some(n) = got {
                break n;
            }
        };
        match parse_family(&buf[..n], SEQ) {
            Ok(f) => Ok(f),
            Err(NetlinkError::Kernel(errno)) if errno == -libc::ENOENT => {
                Err(ListenError::NoFamily(name.to_owned()))
            }
            Err(e) => Err(ListenError::Answer(e)),
        }
    }

    /// Join multicast group `group` (an id from [`GenlSocket::resolve`]).
    ///
    /// # Errors
    /// setsockopt's error.
    pub fn join(&self, group: u32) -> Result<(), ListenError> {
        // SAFETY: `group` is a valid u32 option value of its size for the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                uapi::SOL_NETLINK,
                uapi::NETLINK_ADD_MEMBERSHIP,
                std::ptr::addr_of!(group).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ListenError::Socket {
                call: "setsockopt(NETLINK_ADD_MEMBERSHIP)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The thread that follows TCMU's events and hands them on; stop it with
/// [`EventListener::stop`].
#[derive(Debug)]
pub struct EventListener {
    stop: Arc<AtomicBool>,
    /// Signalled with `stop`: the listener's wait ends at once.
    stop_wake: Arc<EventFd>,
    lost: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

/// The longest wait of the listener for a datagram: a safety bound only, since its stop
/// eventfd ends the wait at once (an idle service costs one wake-up per turn).
const LISTEN_TURN: Duration = Duration::from_secs(10);

/// How long [`EventListener::stop`] waits for the listener thread.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

impl EventListener {
    /// Resolve `TCM-USER`, join its `config` group, and hand every event to `deliver` on a
    /// thread of its own (`deliver` is called there; a channel's send fits).
    ///
    /// # Errors
    /// [`ListenError`]: the socket, the family (target_core_user not loaded), the group.
    pub fn spawn(deliver: impl Fn(DeviceEvent) + Send + 'static) -> Result<Self, ListenError> {
        let socket = GenlSocket::open()?;
        let family = socket.resolve(GENL_FAMILY_NAME)?;
        let group = family
            .group(GENL_MCGRP_CONFIG)
            .ok_or_else(|| ListenError::NoGroup {
                family: GENL_FAMILY_NAME.into(),
                group: GENL_MCGRP_CONFIG.into(),
            })?;
        socket.join(group)?;
        log::info!(
            "tcmu: following {GENL_FAMILY_NAME} events (family {}, group {GENL_MCGRP_CONFIG} = {group})",
            family.id
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stop_wake = Arc::new(EventFd::new().map_err(|source| ListenError::Socket {
            call: "eventfd for the listener's stop",
            source,
        })?);
        let lost = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let stop_wake = Arc::clone(&stop_wake);
            let lost = Arc::clone(&lost);
            std::thread::Builder::new()
                .name("tcmu-netlink".into())
                .spawn(move || listen(&socket, family.id, (&stop, &stop_wake), &lost, &deliver))
                .map_err(|source| ListenError::Socket {
                    call: "spawn the listener thread",
                    source,
                })?
        };
        Ok(Self {
            stop,
            stop_wake,
            lost,
            thread,
        })
    }

    /// Messages that were lost (overruns) or could not be read, so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the thread ended (a socket error it could not get past).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stop and join: the stop eventfd ends the listener's wait, so it ends within the
    /// delivery it may be in; one that has not ended after [`STOP_BOUND`] (a delivery that
    /// blocks) is left detached, said, rather than holding the service's stop.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.stop_wake.signal();
        match scst_accel_hal::locks::join_bounded(self.thread, STOP_BOUND) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => log::error!("tcmu: the netlink listener panicked"),
            Err(_still_running) => log::error!(
                "tcmu: the netlink listener did not end within {STOP_BOUND:?} of its stop (its \
                 delivery blocks?); left detached"
            ),
        }
    }
}

fn listen(
    socket: &GenlSocket,
    family: u16,
    (stop, stop_wake): (&AtomicBool, &EventFd),
    lost: &AtomicU64,
    deliver: &dyn Fn(DeviceEvent),
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    while !stop.load(Ordering::Acquire) {
        let n = match socket.recv(&mut buf, LISTEN_TURN, Some(stop_wake.as_fd())) {
            Ok(None) => continue,
            Ok(Some(n)) => n,
            Err(e) if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::Other => {
                // An overrun or an oversized datagram: that event is lost, the socket is fine.
                lost.fetch_add(1, Ordering::Relaxed);
                log::warn!("tcmu netlink: {e}; a device event may have been missed");
                continue;
            }
            Err(e) => {
                log::error!("tcmu netlink: recv: {e}; no more device events are followed");
                return;
            }
        };
        for event in parse_events(&buf[..n], family) {
            match event {
                Ok(event) => deliver(event),
                Err(e) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    log::warn!("tcmu netlink: a message could not be read: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
