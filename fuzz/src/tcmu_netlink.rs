//! Target `tcmu_netlink`: the parser of target_core_user's generic netlink datagrams
//! (`scst_accel_handler::tcmu::netlink`: `parse_events`, `parse_family`), over arbitrary bytes,
//! mostly mutated from datagrams laid out as the kernel lays them.
//!
//! Invariants beyond "no panic":
//! - when the datagram frames ([`messages`]), there are no more results than messages;
//! - every string an event or a family answer carries (device, dev_config, group names) is
//!   bytes of the datagram: nothing is read from outside it;
//! - parsing is deterministic (the same bytes give the same results).

use crate::check;
use scst_accel_handler::tcmu::netlink::messages;
use scst_accel_handler::tcmu::netlink::parse_events;
use scst_accel_handler::tcmu::netlink::parse_family;

/// The family id the seeds use for `TCM-USER` (any id the controller may assign).
const FAMILY: u16 = 0x1b;

fn within(data: &[u8], text: &str) -> bool {
    text.is_empty() || data.windows(text.len()).any(|w| w == text.as_bytes())
}

/// Run one input.
pub fn target(data: &[u8]) {
    let events = parse_events(data, FAMILY);
    if let Ok(framed) = messages(data) {
        check!(
            events.len() <= framed.len(),
            "{} results from {} messages",
            events.len(),
            framed.len()
        );
    }
    for event in events.iter().flatten() {
        check!(
            within(data, &event.device),
            "device {:?} is not in the datagram",
            event.device
        );
        if let Some(config) = &event.dev_config {
            check!(
                within(data, config),
                "dev_config {config:?} is not in the datagram"
            );
        }
    }
    check!(
        parse_events(data, FAMILY) == events,
        "the same bytes parsed differently"
    );
    let family = parse_family(data, 1);
    if let Ok(f) = &family {
        for (name, _) in &f.groups {
            check!(within(data, name), "group {name:?} is not in the datagram");
        }
    }
    check!(
        parse_family(data, 1) == family,
        "the same answer parsed differently"
    );
}
