//! The parser against messages laid out as the kernel lays them (`genlmsg_put`, `nla_put_*`,
//! `nla_put_u64_64bit` with its PAD), against every malformation by name, and against hostile
//! bytes (proptest); and the socket against the kernel's own controller family.

use super::*;
use proptest::prelude::*;

/// An attribute as `nla_put` writes it: header, payload, padding to 4.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
    out
}

fn string(kind: u16, text: &str) -> Vec<u8> {
    let mut payload = text.as_bytes().to_vec();
    payload.push(0);
    attr(kind, &payload)
}

/// A generic netlink message of `family` with command `cmd`.
fn message(family: u16, cmd: u8, seq: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = attrs.concat();
    let len = uapi::NLMSG_HDRLEN + uapi::GENL_HDRLEN + body.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[cmd, 2, 0, 0]);
    out.extend_from_slice(&body);
    out
}

const FAMILY: u16 = 0x1b;
const NAME: &str = "tcm-user/7/disk0/scst-accel/ram";

/// `tcmu_netlink_event_init`'s attributes: device, minor, device id.
fn common() -> Vec<Vec<u8>> {
    vec![
        string(genl_attr::DEVICE, NAME),
        attr(genl_attr::MINOR, &3u32.to_ne_bytes()),
        attr(genl_attr::DEVICE_ID, &12u32.to_ne_bytes()),
    ]
}

fn reconfig_size(size: u64) -> Vec<u8> {
    let mut attrs = common();
    // nla_put_u64_64bit: a zero-length PAD first when the u64 would not be 8-aligned.
    attrs.push(attr(genl_attr::PAD, &[]));
    attrs.push(attr(genl_attr::DEV_SIZE, &size.to_ne_bytes()));
    message(FAMILY, genl_cmd::RECONFIG_DEVICE, 0, &attrs)
}

fn expected(kind: EventKind) -> DeviceEvent {
    DeviceEvent {
        kind,
        device: NAME.into(),
        minor: Some(3),
        device_id: Some(12),
        dev_size: None,
        dev_config: None,
        write_cache: None,
    }
}

#[test]
fn the_kernels_three_events_are_read_with_their_values() {
    let added = message(FAMILY, genl_cmd::ADDED_DEVICE, 0, &common());
    let removed = message(FAMILY, genl_cmd::REMOVED_DEVICE, 0, &common());
    let mut config = common();
    config.push(string(genl_attr::DEV_CFG, "scst-accel/nvme"));
    let config = message(FAMILY, genl_cmd::RECONFIG_DEVICE, 0, &config);
    let mut cache = common();
    cache.push(attr(genl_attr::WRITECACHE, &[1]));
    let cache = message(FAMILY, genl_cmd::RECONFIG_DEVICE, 0, &cache);
    // Several messages in one datagram, as a burst may arrive.
    let datagram = [added, removed, reconfig_size(128 << 20), config, cache].concat();
    let events: Vec<DeviceEvent> = parse_events(&datagram, FAMILY)
        .into_iter()
        .map(|e| e.expect("event"))
        .collect();
    assert_eq!(
        events,
        [
            expected(EventKind::Added),
            expected(EventKind::Removed),
            DeviceEvent {
                dev_size: Some(128 << 20),
                ..expected(EventKind::Reconfig)
            },
            DeviceEvent {
                dev_config: Some("scst-accel/nvme".into()),
                ..expected(EventKind::Reconfig)
            },
            DeviceEvent {
                write_cache: Some(true),
                ..expected(EventKind::Reconfig)
            },
        ]
    );
}

#[test]
fn other_families_replies_and_unknown_attributes_are_skipped() {
    let mut attrs = common();
    attrs.push(attr(42, b"from a newer kernel"));
    let datagram = [
        message(FAMILY + 1, genl_cmd::ADDED_DEVICE, 0, &common()),
        message(FAMILY, genl_cmd::ADDED_DEVICE_DONE, 0, &common()),
        message(FAMILY, genl_cmd::REMOVED_DEVICE, 0, &attrs),
    ]
    .concat();
    let events = parse_events(&datagram, FAMILY);
    assert_eq!(events, [Ok(expected(EventKind::Removed))]);
}

#[test]
fn every_malformation_is_a_typed_error() {
    let good = message(FAMILY, genl_cmd::ADDED_DEVICE, 0, &common());
    // A header cut short.
    assert_eq!(
        parse_events(&good[..10], FAMILY),
        [Err(NetlinkError::Truncated {
            what: "netlink header",
            need: 16,
            have: 10
        })]
    );
    // nlmsg_len beyond the datagram, and shorter than its header.
    let mut long = good.clone();
    long[..4].copy_from_slice(&(good.len() as u32 + 4).to_ne_bytes());
    assert!(matches!(
        parse_events(&long, FAMILY)[..],
        [Err(NetlinkError::Truncated {
            what: "netlink message",
            ..
        })]
    ));
    let mut short = good.clone();
    short[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(
        parse_events(&short, FAMILY),
        [Err(NetlinkError::BadLength {
            what: "netlink message",
            len: 8
        })]
    );
    // No room for the generic header.
    let mut bare = good[..16].to_vec();
    bare[..4].copy_from_slice(&16u32.to_ne_bytes());
    assert!(matches!(
        parse_events(&bare, FAMILY)[..],
        [Err(NetlinkError::Truncated {
            what: "generic netlink header",
            ..
        })]
    ));
    // An attribute shorter than its header, one past the message's end, a cut header.
    let bad_attr = |bytes: &[u8]| {
        let mut m = message(FAMILY, genl_cmd::ADDED_DEVICE, 0, &[]);
        m.extend_from_slice(bytes);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        parse_events(&m, FAMILY)
    };
    assert!(matches!(
        bad_attr(&[2, 0, 1, 0])[..],
        [Err(NetlinkError::BadLength {
            what: "attribute",
            len: 2
        })]
    ));
    assert!(matches!(
        bad_attr(&[64, 0, 1, 0, b'x', 0, 0, 0])[..],
        [Err(NetlinkError::Truncated {
            what: "attribute",
            need: 64,
            have: 8
        })]
    ));
    assert!(matches!(
        bad_attr(&[8, 0])[..],
        [Err(NetlinkError::Truncated {
            what: "attribute header",
            ..
        })]
    ));
    // Payloads of the wrong form.
    let with = |a: Vec<u8>| {
        let mut attrs = common();
        attrs.push(a);
        parse_events(&message(FAMILY, genl_cmd::RECONFIG_DEVICE, 0, &attrs), FAMILY)
    };
    assert_eq!(
        with(attr(genl_attr::DEV_SIZE, &[1, 2, 3, 4])),
        [Err(NetlinkError::BadAttribute {
            kind: genl_attr::DEV_SIZE,
            why: "not a u64"
        })]
    );
    assert_eq!(
        with(attr(genl_attr::DEV_CFG, b"no-nul")),
        [Err(NetlinkError::BadAttribute {
            kind: genl_attr::DEV_CFG,
            why: "a string without its terminating NUL"
        })]
    );
    assert_eq!(
        with(attr(genl_attr::DEV_CFG, b"a\0b\0")),
        [Err(NetlinkError::BadAttribute {
            kind: genl_attr::DEV_CFG,
            why: "a string with a NUL inside"
        })]
    );
    assert_eq!(
        with(attr(genl_attr::DEV_CFG, &[0xff, 0xfe, 0])),
        [Err(NetlinkError::BadAttribute {
            kind: genl_attr::DEV_CFG,
            why: "a string that is not UTF-8"
        })]
    );
    assert_eq!(
        with(attr(genl_attr::WRITECACHE, &[1, 0])),
        [Err(NetlinkError::BadAttribute {
            kind: genl_attr::WRITECACHE,
            why: "not a u8"
        })]
    );
    // No device name: the event cannot be matched to a disk.
    assert_eq!(
        parse_events(
            &message(FAMILY, genl_cmd::REMOVED_DEVICE, 0, &common()[1..]),
            FAMILY
        ),
        [Err(NetlinkError::Missing("TCMU_ATTR_DEVICE"))]
    );
    // An overrun notice.
    let mut overrun = message(FAMILY, 0, 0, &[]);
    overrun[4..6].copy_from_slice(&uapi::NLMSG_OVERRUN.to_ne_bytes());
    assert_eq!(parse_events(&overrun, FAMILY), [Err(NetlinkError::Overrun)]);
}

/// The controller's answer as `ctrl_fill_info` lays it out: id, name, groups nested twice.
fn family_answer(seq: u32, id: u16, groups: &[(&str, u32)]) -> Vec<u8> {
    let nested: Vec<u8> = groups
        .iter()
        .enumerate()
        .map(|(i, (name, gid))| {
            let fields = [
                attr(uapi::CTRL_ATTR_MCAST_GRP_ID, &gid.to_ne_bytes()),
                string(uapi::CTRL_ATTR_MCAST_GRP_NAME, name),
            ]
            .concat();
            attr(0x8000 | (i as u16 + 1), &fields)
        })
        .collect::<Vec<_>>()
        .concat();
    message(
        uapi::GENL_ID_CTRL,
        uapi::CTRL_CMD_NEWFAMILY,
        seq,
        &[
            attr(uapi::CTRL_ATTR_FAMILY_ID, &id.to_ne_bytes()),
            string(uapi::CTRL_ATTR_FAMILY_NAME, "TCM-USER"),
            attr(0x8000 | uapi::CTRL_ATTR_MCAST_GROUPS, &nested),
        ],
    )
}

#[test]
fn the_controllers_answer_gives_the_family_and_its_groups() {
    let answer = family_answer(1, 0x1b, &[("config", 9), ("other", 11)]);
    let family = parse_family(&answer, 1).expect("family");
    assert_eq!(family.id, 0x1b);
    assert_eq!(family.group("config"), Some(9));
    assert_eq!(family.group("other"), Some(11));
    assert_eq!(family.group("absent"), None);
    // An answer to another request is not this one's.
    assert_eq!(
        parse_family(&answer, 2),
        Err(NetlinkError::Missing("the controller's answer"))
    );
    // NLMSG_ERROR with -ENOENT: no such family.
    let mut error = message(uapi::NLMSG_ERROR, 0, 1, &[]);
    error.truncate(16);
    error.extend_from_slice(&(-2i32).to_ne_bytes());
    error.extend_from_slice(&[0; 16]);
    let len = error.len() as u32;
    error[..4].copy_from_slice(&len.to_ne_bytes());
    error[4..6].copy_from_slice(&uapi::NLMSG_ERROR.to_ne_bytes());
    assert_eq!(parse_family(&error, 1), Err(NetlinkError::Kernel(-2)));
    // A group without its id.
    let broken = message(
        uapi::GENL_ID_CTRL,
        uapi::CTRL_CMD_NEWFAMILY,
        1,
        &[
            attr(uapi::CTRL_ATTR_FAMILY_ID, &7u16.to_ne_bytes()),
            attr(
                uapi::CTRL_ATTR_MCAST_GROUPS,
                &attr(1, &string(uapi::CTRL_ATTR_MCAST_GRP_NAME, "config")),
            ),
        ],
    );
    assert_eq!(
        parse_family(&broken, 1),
        Err(NetlinkError::Missing("CTRL_ATTR_MCAST_GRP_NAME/ID"))
    );
}

#[test]
fn the_getfamily_request_is_a_well_formed_controller_message() {
    let request = getfamily_request("TCM-USER", 5);
    let framed = messages(&request).expect("framed");
    assert_eq!(framed.len(), 1);
    let m = framed[0];
    assert_eq!(
        (m.kind, m.flags, m.seq),
        (uapi::GENL_ID_CTRL, uapi::NLM_F_REQUEST, 5)
    );
    let (cmd, attrs) = genl(m.payload).expect("genl");
    assert_eq!(cmd, uapi::CTRL_CMD_GETFAMILY);
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs[0].kind, uapi::CTRL_ATTR_FAMILY_NAME);
    assert_eq!(attrs[0].string(), Ok("TCM-USER"));
    assert_eq!(request.len() % 4, 0);
}

/// The socket code against the running kernel: the controller resolves itself ("nlctrl",
/// id 0x10, group "notify" in every kernel since 2.6.23). Where the sandbox refuses netlink
/// sockets altogether, the skip is reported (`skip::test_skipped`) and the check is not made.
#[test]
fn the_kernels_controller_resolves_itself_through_the_socket() {
    let socket = match GenlSocket::open() {
        Ok(s) => s,
        Err(e) => {
            scst_accel_hal::skip::test_skipped(
                "the_kernels_controller_resolves_itself_through_the_socket",
                &format!("no generic netlink socket here: {e}"),
            );
            return;
        }
    };
    let family = socket.resolve("nlctrl").expect("the controller answers");
    assert_eq!(family.id, uapi::GENL_ID_CTRL);
    let notify = family.group("notify").expect("the controller's notify group");
    socket.join(notify).expect("join");
    match socket.resolve("scstaccel-none") {
        Err(ListenError::NoFamily(name)) => assert_eq!(name, "scstaccel-none"),
        other => panic!("expected NoFamily, got {other:?}"),
    }
}

/// A forged REMOVED_DEVICE unicast from another socket to the listener's (what any process
/// with CAP_NET_ADMIN can do) is read off the socket and dropped, never delivered: only the
/// kernel (port id 0) speaks for target_core_user. Without CAP_NET_ADMIN (the kernel refuses
/// the unicast, EPERM) or netlink sockets, the skip is reported and the check is not made.
#[test]
fn a_datagram_not_from_the_kernel_is_dropped_not_delivered() {
    const NAME_OF_TEST: &str = "a_datagram_not_from_the_kernel_is_dropped_not_delivered";
    let (victim, forger) = match (GenlSocket::open(), GenlSocket::open()) {
        (Ok(v), Ok(f)) => (v, f),
        (Err(e), _) | (_, Err(e)) => {
            scst_accel_hal::skip::test_skipped(NAME_OF_TEST, &format!("no generic netlink socket here: {e}"));
            return;
        }
    };
    let forged = message(FAMILY, genl_cmd::REMOVED_DEVICE, 0, &common());
    assert_eq!(
        parse_events(&forged, FAMILY),
        vec![Ok(expected(EventKind::Removed))]
    );
    let port = victim.port_id().expect("getsockname");
    assert_ne!(port, 0, "a user socket's port id is never the kernel's");
    if let Err(e) = forger.send_to(&forged, port) {
        scst_accel_hal::skip::test_skipped(NAME_OF_TEST, &format!("unicast to another socket refused: {e}"));
        return;
    }
    let stop = AtomicBool::new(false);
    let stop_wake = EventFd::new().expect("eventfd");
    let lost = AtomicU64::new(0);
    let delivered = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            listen(&victim, FAMILY, (&stop, &stop_wake), &lost, &|e| {
                delivered.lock().expect("lock").push(e);
            });
        });
        // The datagram is queued already: the listener's first turn reads it.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Release);
        stop_wake.signal();
        listener.join().expect("listener");
    });
    assert_eq!(
        *delivered.lock().expect("lock"),
        Vec::new(),
        "the forged event was delivered"
    );
    assert_eq!(lost.load(Ordering::Relaxed), 0, "a forgery is not a lost event");
    let mut buf = vec![0u8; RECV_BUFFER];
    assert_eq!(
        victim.recv(&mut buf, Duration::ZERO, None).expect("recv"),
        None,
        "read off the socket, not left queued"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any bytes: no panic, and every event read names a device (the one required field).
    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for event in parse_events(&bytes, FAMILY).into_iter().flatten() {
            prop_assert!(!event.device.contains('\0'));
        }
        let _ = parse_family(&bytes, 1);
    }

    /// A kernel message cut anywhere: never read as an event (the declared length no longer
    /// fits), always an error.
    #[test]
    fn a_truncated_event_is_refused(size in any::<u64>(), cut in 1usize..64) {
        let whole = reconfig_size(size);
        let cut = cut.min(whole.len() - 1);
        let part = &whole[..whole.len() - cut];
        let parsed = parse_events(part, FAMILY);
        prop_assert!(parsed.iter().all(Result::is_err), "{parsed:?}");
        prop_assert_eq!(
            parse_events(&whole, FAMILY),
            vec![Ok(DeviceEvent { dev_size: Some(size), ..expected(EventKind::Reconfig) })]
        );
    }

    /// A kernel message with any byte changed: no panic; what is read as an event keeps its
    /// fields inside the message (a string is one the message holds).
    #[test]
    fn a_corrupted_event_is_read_or_refused(at in 0usize..96, value in any::<u8>()) {
        let mut bytes = reconfig_size(1 << 30);
        let at = at % bytes.len();
        bytes[at] = value;
        for event in parse_events(&bytes, FAMILY).into_iter().flatten() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            prop_assert!(text.contains(&event.device));
        }
    }

    /// Nested group lists of random shape and lengths: the family answer is read or refused,
    /// never panics, and a group read is one that was written.
    #[test]
    fn hostile_nesting_in_the_family_answer(
        groups in proptest::collection::vec(("[a-z]{0,12}", any::<u32>()), 0..6),
        at in 0usize..256,
        value in any::<u8>(),
    ) {
        let named: Vec<(&str, u32)> = groups.iter().map(|(n, g)| (n.as_str(), *g)).collect();
        let mut answer = family_answer(1, 0x1b, &named);
        let clean = parse_family(&answer, 1).expect("the clean answer");
        prop_assert_eq!(clean.groups.len(), groups.len());
        let at = at % answer.len();
        answer[at] = value;
        if let Ok(family) = parse_family(&answer, 1) {
            for (name, _) in &family.groups {
                prop_assert!(name.len() <= 12 + 1);
            }
        }
    }
}

/// The listener's stop waits at most `STOP_BOUND` for its thread: one held in a delivery (the
/// service's callback blocking) is left, detached, and the stop returns; it waited without
/// limit. The thread stands in for the listener's: it ignores the stop until released.
#[test]
fn a_listener_held_in_a_delivery_is_left_at_the_stops_bound() {
    use std::time::Instant;
    let released = Arc::new(AtomicBool::new(false));
    let thread = {
        let released = Arc::clone(&released);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !released.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let listener = EventListener {
        stop: Arc::default(),
        stop_wake: Arc::new(EventFd::new().expect("eventfd")),
        lost: Arc::default(),
        thread,
    };
    let started = Instant::now();
    listener.stop();
    let took = started.elapsed();
    released.store(true, Ordering::Release);
    assert!(
        took >= STOP_BOUND && took < STOP_BOUND + Duration::from_secs(3),
        "the stop took {took:?}, its bound is {STOP_BOUND:?}"
    );
}
