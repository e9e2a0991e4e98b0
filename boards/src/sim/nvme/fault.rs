//! Fault injection for the simulated NVMe controller: [`NvmeFault`], its command-line syntax
//! (the style of the SCA-1 simulator's `Fault`), and the plan the worker consults per command.
//!
//! Three kinds are events that change the controller at once ([`NvmeFault::Hang`],
//! [`NvmeFault::Gone`], [`NvmeFault::Cfs`]); the others stand in the plan until
//! [`NvmeSimHandle::clear_faults`](super::NvmeSimHandle::clear_faults). `every=N` counts from
//! the moment the fault is injected, 1-based: `every=3` hits the 3rd, 6th, ... matching
//! command after injection.

use crate::sim::fault::parse_duration_micros;
use crate::sim::fault::parse_number;
use std::fmt;
use std::str::FromStr;

/// The fault kinds [`NvmeFault::from_str`] accepts, as written on the command line.
pub const NVME_FAULT_KINDS: &[&str] = &[
    "latency",
    "never-complete",
    "error",
    "status",
    "hang",
    "gone",
    "cfs",
    "shutdown-hang",
    "no-reset",
    "bus-master-stuck",
];

/// The accepted forms, for error messages and `--help`.
const FORMS: &str = "latency:<N>us|ms|s, never-complete[:every=N], error[:every=N], \
status:sct=T,sc=C[,every=N], hang, gone, cfs, shutdown-hang, no-reset, bus-master-stuck (numbers \
decimal or 0x hex; every defaults to 1)";

/// A misbehaviour of the simulated NVMe controller. What the driver observes is documented
/// per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeFault {
    /// Wait `micros` before executing each command, admin or I/O (the wait ends early, and the
    /// command is dropped, on a controller reset).
    Latency {
        /// Delay per command.
        micros: u64,
    },
    /// Every Nth I/O command is executed (data moved) but its completion is never posted. The
    /// driver's command timeout must catch it; ABORT answers "not aborted".
    NeverComplete {
        /// Every Nth I/O command.
        every: u32,
    },
    /// Every Nth READ completes with Unrecovered Read Error (SCT 2h, SC 81h) and moves no data.
    MediaError {
        /// Every Nth READ.
        every: u32,
    },
    /// Every Nth I/O command completes with this status (SCT 0..=7, SC) without being executed:
    /// what a controller answers that the simulator does not otherwise produce (Namespace Not
    /// Ready, Reservation Conflict, Access Denied...).
    Status {
        /// Status Code Type.
        sct: u8,
        /// Status Code.
        sc: u8,
        /// Every Nth I/O command.
        every: u32,
    },
    /// The controller stops fetching commands: doorbells are accepted, nothing completes,
    /// CSTS stays RDY = 1 and CFS = 0. A controller reset (CC.EN 1→0) or function reset ends it.
    Hang,
    /// Surprise removal: every register reads all-ones, writes are dropped, no DMA or
    /// interrupt ever again; no reset revives it.
    Gone,
    /// Controller fatal status: CSTS.CFS = 1 and nothing is processed until a controller reset.
    Cfs,
    /// A shutdown notification (CC.SHN) never completes: CSTS.SHST stays 01b (occurring).
    ShutdownHang,
    /// The controller ignores resets: a CC write clearing EN does not take (CC.EN and CSTS.RDY
    /// keep reading 1, the controller keeps running, a hang stays), and a function reset is
    /// refused. Nothing but clearing Bus Master Enable stops its DMA then (the SCA-1
    /// simulator's `no-reset`).
    ResetIgnored,
    /// Bus Master Enable does not clear when written: with [`NvmeFault::ResetIgnored`],
    /// nothing can prove the controller stopped its DMA, and a driver must keep mapped
    /// whatever it may reach (the SCA-1 simulator's `bus-master-stuck`).
    BusMasterStuck,
}

/// A fault specification that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid NVMe fault {input:?}: {reason}; accepted forms: {FORMS}")]
pub struct NvmeFaultParseError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for NvmeFault {
    type Err = NvmeFaultParseError;

    /// Parse `kind[:arg]`: `latency:500us`, `latency:2ms`, `never-complete:every=100`,
    /// `error`, `error:every=5`, `hang`, `gone`, `cfs`, `shutdown-hang`, `no-reset`,
    /// `bus-master-stuck`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| NvmeFaultParseError {
            input: input.to_owned(),
            reason,
        };
        let trimmed = input.trim();
        let (kind, rest) = trimmed.split_once(':').unwrap_or((trimmed, ""));
        let every = || -> Result<u32, NvmeFaultParseError> {
            if rest.is_empty() {
                return Ok(1);
            }
            let mut every = None;
            for arg in rest.split(',') {
                let (key, value) = arg
                    .split_once('=')
                    .ok_or_else(|| fail(format!("argument {arg:?} is not key=value")))?;
                if key != "every" {
                    return Err(fail(format!("unknown argument {key:?}")));
                }
                let n =
                    parse_number(value).ok_or_else(|| fail(format!("every={value:?} is not a number")))?;
                if every.replace(n).is_some() {
                    return Err(fail("every given twice".to_owned()));
                }
            }
            let n =
                u32::try_from(every.unwrap_or(1)).map_err(|_| fail("every is out of range".to_owned()))?;
            if n == 0 {
                return Err(fail("every must be at least 1".to_owned()));
            }
            Ok(n)
        };
        let no_args = |fault: NvmeFault| {
            if rest.is_empty() {
                Ok(fault)
            } else {
                Err(fail(format!("{kind} takes no arguments")))
            }
        };
        match kind {
            "latency" => parse_duration_micros(rest)
                .map(|micros| NvmeFault::Latency { micros })
                .ok_or_else(|| fail(format!("latency needs a delay such as 500us, got {rest:?}"))),
            "never-complete" => Ok(NvmeFault::NeverComplete { every: every()? }),
            "error" => Ok(NvmeFault::MediaError { every: every()? }),
            "status" => {
                let (mut sct, mut sc, mut every) = (None, None, None);
                for arg in rest.split(',').filter(|a| !a.is_empty()) {
                    let (key, value) = arg
                        .split_once('=')
                        .ok_or_else(|| fail(format!("argument {arg:?} is not key=value")))?;
                    let n = parse_number(value)
                        .ok_or_else(|| fail(format!("{key}={value:?} is not a number")))?;
                    let slot = match key {
                        "sct" => &mut sct,
                        "sc" => &mut sc,
                        "every" => &mut every,
                        _ => return Err(fail(format!("unknown argument {key:?}"))),
                    };
                    if slot.replace(n).is_some() {
                        return Err(fail(format!("{key} given twice")));
                    }
                }
                let sct = sct.ok_or_else(|| fail("status needs sct=T".to_owned()))?;
                let sc = sc.ok_or_else(|| fail("status needs sc=C".to_owned()))?;
                if sct > 7 || sc > 0xFF {
                    return Err(fail("sct is 0..=7 and sc 0..=0xff".to_owned()));
                }
                let every = u32::try_from(every.unwrap_or(1))
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| fail("every must be at least 1".to_owned()))?;
                Ok(NvmeFault::Status {
                    sct: sct as u8,
                    sc: sc as u8,
                    every,
                })
            }
            "hang" => no_args(NvmeFault::Hang),
            "gone" => no_args(NvmeFault::Gone),
            "cfs" => no_args(NvmeFault::Cfs),
            "shutdown-hang" => no_args(NvmeFault::ShutdownHang),
            "no-reset" => no_args(NvmeFault::ResetIgnored),
            "bus-master-stuck" => no_args(NvmeFault::BusMasterStuck),
            _ => Err(fail(format!(
                "unknown kind {kind:?} (kinds: {})",
                NVME_FAULT_KINDS.join(", ")
            ))),
        }
    }
}

impl fmt::Display for NvmeFault {
    /// The canonical command-line form, which [`NvmeFault::from_str`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmeFault::Latency { micros } => write!(f, "latency:{micros}us"),
            NvmeFault::NeverComplete { every } => write!(f, "never-complete:every={every}"),
            NvmeFault::MediaError { every } => write!(f, "error:every={every}"),
            NvmeFault::Status { sct, sc, every } => write!(f, "status:sct={sct},sc={sc:#x},every={every}"),
            NvmeFault::Hang => write!(f, "hang"),
            NvmeFault::Gone => write!(f, "gone"),
            NvmeFault::Cfs => write!(f, "cfs"),
            NvmeFault::ShutdownHang => write!(f, "shutdown-hang"),
            NvmeFault::ResetIgnored => write!(f, "no-reset"),
            NvmeFault::BusMasterStuck => write!(f, "bus-master-stuck"),
        }
    }
}

/// What the plan says about one command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Wait this long before executing.
    pub latency_micros: u64,
    /// Execute but post no completion.
    pub never_complete: bool,
    /// Complete a READ with Unrecovered Read Error instead of executing it.
    pub media_error: bool,
    /// Complete the I/O command with this status (SCT, SC) instead of executing it.
    pub status: Option<(u8, u8)>,
}

/// The standing faults, each with the count of matching commands since its injection.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    faults: Vec<(NvmeFault, u64)>,
}

impl FaultPlan {
    /// Add a standing fault.
    pub(crate) fn add(&mut self, fault: NvmeFault) {
        self.faults.push((fault, 0));
    }

    /// Remove every standing fault.
    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// How many faults stand.
    pub(crate) fn len(&self) -> usize {
        self.faults.len()
    }

    /// The standing faults, oldest first.
    pub(crate) fn list(&self) -> Vec<NvmeFault> {
        self.faults.iter().map(|(f, _)| *f).collect()
    }

    /// The plan for the next command: `io` for a command on an I/O queue, `read` for a READ.
    pub(crate) fn decide(&mut self, io: bool, read: bool) -> Decision {
        let mut d = Decision::default();
        for (fault, seen) in &mut self.faults {
            let mut nth = |every: u32, matches: bool| {
                if !matches {
                    return false;
                }
                *seen += 1;
                seen.is_multiple_of(u64::from(every.max(1)))
            };
            match *fault {
                NvmeFault::Latency { micros } => d.latency_micros = d.latency_micros.saturating_add(micros),
                NvmeFault::NeverComplete { every } => d.never_complete |= nth(every, io),
                NvmeFault::MediaError { every } => d.media_error |= nth(every, io && read),
                NvmeFault::Status { sct, sc, every } => {
                    d.status = nth(every, io).then_some((sct, sc)).or(d.status);
                }
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_and_prints_back() {
        let cases = [
            ("latency:500us", NvmeFault::Latency { micros: 500 }),
            ("latency:2ms", NvmeFault::Latency { micros: 2000 }),
            ("latency:1s", NvmeFault::Latency { micros: 1_000_000 }),
            ("never-complete:every=3", NvmeFault::NeverComplete { every: 3 }),
            ("never-complete", NvmeFault::NeverComplete { every: 1 }),
            ("error:every=0x10", NvmeFault::MediaError { every: 16 }),
            ("error", NvmeFault::MediaError { every: 1 }),
            (
                "status:sct=0,sc=0x82",
                NvmeFault::Status {
                    sct: 0,
                    sc: 0x82,
                    every: 1,
                },
            ),
            (
                "status:sc=0x86,sct=2,every=3",
                NvmeFault::Status {
                    sct: 2,
                    sc: 0x86,
                    every: 3,
                },
            ),
            ("hang", NvmeFault::Hang),
            ("gone", NvmeFault::Gone),
            ("cfs", NvmeFault::Cfs),
            ("shutdown-hang", NvmeFault::ShutdownHang),
            ("no-reset", NvmeFault::ResetIgnored),
            ("bus-master-stuck", NvmeFault::BusMasterStuck),
        ];
        for (text, want) in cases {
            let parsed: NvmeFault = text.parse().expect(text);
            assert_eq!(parsed, want, "{text}");
            assert_eq!(
                parsed.to_string().parse::<NvmeFault>(),
                Ok(want),
                "{text} round trip"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong_and_list_the_forms() {
        let cases = [
            ("explode", "unknown kind"),
            ("latency", "needs a delay"),
            ("latency:5", "needs a delay"),
            ("hang:every=2", "takes no arguments"),
            ("never-complete:every=0", "at least 1"),
            ("error:every=x", "not a number"),
            ("error:every=2,every=3", "given twice"),
            ("error:often", "not key=value"),
            ("error:queue=1", "unknown argument"),
            ("status:sc=0x82", "needs sct"),
            ("status:sct=8,sc=1", "sct is 0..=7"),
            ("status:sct=0,sc=1,every=0", "at least 1"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<NvmeFault>().expect_err(text);
            assert!(err.reason.contains(reason), "{text}: {}", err.reason);
            assert!(err.to_string().contains("never-complete[:every=N]"));
        }
        let message = "nope".parse::<NvmeFault>().expect_err("nope").to_string();
        for kind in NVME_FAULT_KINDS {
            assert!(message.contains(kind), "{kind} missing from {message}");
        }
    }

    #[test]
    fn every_counts_matching_commands_from_injection() {
        let mut plan = FaultPlan::default();
        plan.add(NvmeFault::MediaError { every: 2 });
        plan.add(NvmeFault::NeverComplete { every: 3 });
        // Admin commands and writes do not count for either.
        assert_eq!(plan.decide(false, false), Decision::default());
        let d: Vec<Decision> = [true, false, true, true, false, true]
            .iter()
            .map(|&read| plan.decide(true, read))
            .collect();
        assert_eq!(
            d.iter().map(|d| d.media_error).collect::<Vec<_>>(),
            [false, false, true, false, false, true]
        );
        assert_eq!(
            d.iter().map(|d| d.never_complete).collect::<Vec<_>>(),
            [false, false, true, false, false, true]
        );
        plan.clear();
        assert_eq!(plan.decide(true, true), Decision::default());
    }
}
