//! Fault injection for the simulated board: [`Fault`], its command-line syntax, and the plan the
//! engines consult for each descriptor.
//!
//! Faults are data (as in openvmm's `nvme_resources::fault`): a test or the CLI injects them at
//! run time through [`SimHandle::inject`](super::SimHandle::inject). Two kinds are events that
//! change the device at once ([`Fault::DeviceGone`], [`Fault::Fatal`]); the others stay in the
//! plan until [`SimHandle::clear_faults`](super::SimHandle::clear_faults) and apply to every Nth
//! descriptor a queue takes (`every`, counted per queue from board creation, 1-based; 0 acts
//! as 1), on one queue (`queue: Some(q)`) or all (`None`).

use std::fmt;
use std::str::FromStr;

use crate::sca1::desc::cq_status;

/// The fault kinds [`Fault::from_str`] accepts, as written on the command line.
pub const FAULT_KINDS: &[&str] = &[
    "latency",
    "never-complete",
    "error",
    "hang",
    "gone",
    "mmio-off",
    "fatal",
    "unknown-tag",
    "duplicate",
    "bad-phase",
    "storm",
    "short-ok",
    "no-reset",
    "bus-master-stuck",
    "prefetch",
];

/// The hold of a [`Fault::Storm`] written without `hold=`.
const DEFAULT_STORM_HOLD_MICROS: u64 = 20_000;

/// The accepted forms, for error messages and `--help`.
const FORMS: &str = "latency:<N>us|ms|s[,queue=Q], never-complete[:every=N][,queue=Q], \
error[:every=N][,status=S][,queue=Q], hang[:queue=Q], gone, fatal[:code=C], \
unknown-tag[:every=N][,queue=Q], duplicate[:every=N][,queue=Q], bad-phase[:every=N][,queue=Q], \
storm[:hold=<N>us|ms|s][,queue=Q], short-ok[:every=N][,queue=Q], no-reset, bus-master-stuck, \
prefetch:<N>[,queue=Q] (numbers decimal or 0x hex; every defaults to 1, status to 5 \
READ_ERROR, code to 1, hold to 20ms)";

/// A misbehaviour of the simulated board. What a driver observes is documented per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait `micros` before executing each descriptor (the wait ends early, abandoning the
    /// descriptor, if RUN is cleared or the board resets). The driver sees slow completions.
    Latency {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Delay per descriptor.
        micros: u64,
    },
    /// The engine takes every Nth descriptor and does its data transfer, but posts no
    /// completion; the queue keeps running. The driver's deadline must catch the lost command;
    /// a stop handshake (§6) still clears BUSY.
    NeverComplete {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
    },
    /// Every Nth descriptor completes with `status` (bytes 0, detail = low LBA bits) without
    /// being executed: a medium error is `status = 5` (READ_ERROR) or 6 (WRITE_ERROR).
    ErrorStatus {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
        /// §5 status to report.
        status: u8,
    },
    /// The engine takes its next descriptor and hangs: no DMA, no completion, and BUSY stays 1
    /// even after RUN is cleared (§6: the queue is hung). Only a reset (soft or function)
    /// releases it, and the reset removes this fault.
    EngineHang {
        /// Queue, or every queue.
        queue: Option<u32>,
    },
    /// Surprise removal: from now on every register reads all-ones, writes are dropped, and no
    /// engine does any DMA again; no reset revives the board (§8).
    DeviceGone,
    /// Memory Space Enable cleared under the driver (AER recovery, a failed config restore):
    /// every register reads all-ones and writes are dropped, as for [`Fault::DeviceGone`], but
    /// the function is still on the bus: config space answers and the engines go on with their
    /// DMA until Bus Master Enable is cleared or the function is reset (the reset's config
    /// restore enables memory space again). All-ones through the BAR alone proves no stop.
    MemorySpaceOff,
    /// The function fails: STATUS.FATAL = 1, READY = 0, FATAL_CODE = `code` (0 is reported as
    /// 1, since §8 defines FATAL by a non-zero code), and no completion is posted until a reset
    /// clears it. Descriptors held at that moment are abandoned.
    Fatal {
        /// FATAL_CODE to report.
        code: u32,
    },
    /// After every Nth descriptor's completion, post one more completion (status OK, bytes 0)
    /// whose tag the engine never fetched on that queue and no slot of its submission ring
    /// holds (so no command submitted before it). The host may submit that very tag before it
    /// reaps the entry (a device cannot know the host's next tags; this one is picked among
    /// the unseen, the likeliest to come next), so a matching tag alone proves nothing: a
    /// driver must refuse the entry (its `sq_head` does not cover the new descriptor, and OK
    /// does not account for the bytes), never complete some other command with it.
    UnknownTag {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
    },
    /// Execute every Nth data descriptor (its data moves) but post status OK with `bytes` one
    /// block short of its length: a completion that lies about the work done. OK must account
    /// for every byte (§4), so a driver must refuse the entry and let the request's deadline
    /// end it, never report success for data that may not be there. FLUSH (length 0) is
    /// completed honestly.
    ShortOk {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
    },
    /// The function ignores resets: a soft reset is never acted on (CONTROL.SOFT_RESET keeps
    /// reading 1) and a function reset is refused; the engines keep running and doing their
    /// DMA. Only clearing Bus Master Enable stops them, and a driver whose reset failed must not
    /// unmap memory the function can reach until it has (issue 12: quiesce before unmap).
    ResetIgnored,
    /// Bus Master Enable does not clear (a broken function, or a config write the host bridge
    /// drops): with [`Fault::ResetIgnored`], nothing can prove the function stopped its DMA,
    /// and a driver must keep mapped whatever the function may reach.
    BusMasterStuck,
    /// Post every Nth descriptor's completion twice, in two consecutive ring entries. A driver
    /// must complete the command once and treat the second as a device error.
    DuplicateCompletion {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
    },
    /// Write every Nth completion first with the wrong PHASE (the value the previous pass left,
    /// so the entry still looks unwritten), hold it about a millisecond, then write the flags
    /// byte with the right PHASE. A driver that checks PHASE before reading the entry (§4) sees
    /// exactly one, correct completion; one that reads fields before PHASE, or trusts a
    /// half-written entry, consumes garbage or sees the entry twice.
    BadPhase {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Every Nth descriptor.
        every: u32,
    },
    /// Completion storms: the engine executes each descriptor (does its DMA) as usual but
    /// withholds its completion (and any extra entries other faults add), then posts everything
    /// withheld at once, `hold_micros` after the first withheld completion, with one interrupt
    /// per burst whatever INT_COALESCE says. The burst respects the ring's free space (§4: at
    /// most N − 1 entries): when the ring is full the engine raises the interrupt for what it
    /// has posted, and the rest of the burst waits for CQ_HEAD to advance. Clearing RUN (§6)
    /// or a reset (§7) drops whatever is still withheld: those commands get no completion.
    Storm {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// How long completions are withheld before their burst, at least 1 µs.
        hold_micros: u64,
    },
    /// Fetch ahead: besides the descriptor it executes, the engine fetches up to `depth` more
    /// (as far as SQ_TAIL allows), consumes them, and reports in each completion the submission
    /// head past everything it fetched, so `sq_head` runs ahead of the completions, which come
    /// later, in order. §3 ("the engine fetches from its head up to the tail") and §4
    /// (`sq_head`: slots before it may be reused) allow it, and real engines do it; a host
    /// that bounds what it has in flight by its free submission slots alone then has more
    /// requests outstanding than the N − 1 of §4. A descriptor that faults or carries the
    /// wrong seq is not fetched ahead: the engine stops there and meets it in order, halting
    /// the queue as always (§8). Clearing RUN (§6) or a reset (§7) abandons what was fetched
    /// ahead: those commands get no completion, and no DMA is done for them.
    Prefetch {
        /// Queue, or every queue.
        queue: Option<u32>,
        /// Descriptors fetched beyond the one executed, at least 1.
        depth: u32,
    },
}

/// A fault specification that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fault {input:?}: {reason}; accepted forms: {FORMS}")]
pub struct FaultParseError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A decimal or `0x` hexadecimal number (shared with the NVMe simulator's fault syntax).
pub(super) fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `<N>us`, `<N>ms` or `<N>s` in microseconds (shared with the NVMe simulator's fault syntax).
pub(super) fn parse_duration_micros(text: &str) -> Option<u64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000)
    } else {
        return None;
    };
    parse_number(number)?.checked_mul(scale)
}

impl FromStr for Fault {
    type Err = FaultParseError;

    /// Parse the command-line form: `kind[:arg[,arg...]]` where each arg is `key=value`,
    /// except latency's first arg, the delay with its unit. Examples: `latency:500us`,
    /// `latency:2ms,queue=1`, `never-complete:every=100`, `error:every=50,status=5`, `hang`,
    /// `hang:queue=0`, `gone`, `fatal`, `fatal:code=0x12`, `unknown-tag:every=200`,
    /// `duplicate:every=200`, `bad-phase:every=300`, `storm:hold=20ms`, `storm:hold=5ms,queue=1`,
    /// `prefetch:4`, `prefetch:8,queue=1` (prefetch's first arg is its depth).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| FaultParseError {
            input: input.to_owned(),
            reason,
        };
        let (kind, rest) = input.trim().split_once(':').unwrap_or((input.trim(), ""));
        let mut args: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',').collect()
        };

        let mut micros = None;
        if kind == "latency" {
            let first = if args.is_empty() { "" } else { args.remove(0) };
            micros = Some(
                parse_duration_micros(first)
                    .ok_or_else(|| fail(format!("latency needs a delay such as 500us, got {first:?}")))?,
            );
        }
        let mut depth = None;
        if kind == "prefetch" {
            let first = if args.is_empty() { "" } else { args.remove(0) };
            let n = parse_number(first)
                .filter(|n| (1..=u64::from(u16::MAX)).contains(n))
                .ok_or_else(|| {
                    fail(format!(
                        "prefetch needs a depth in 1..=65535 such as 4, got {first:?}"
                    ))
                })?;
            depth = Some(n as u32);
        }

        let mut queue = None;
        let mut every = None;
        let mut status = None;
        let mut code = None;
        let mut hold = None;
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| fail(format!("argument {arg:?} is not key=value")))?;
            if key == "hold" {
                let micros = parse_duration_micros(value)
                    .ok_or_else(|| fail(format!("hold={value:?} is not a duration such as 20ms")))?;
                if hold.replace(micros).is_some() {
                    return Err(fail("hold given twice".to_owned()));
                }
                continue;
            }
            let number =
                parse_number(value).ok_or_else(|| fail(format!("{key}={value:?} is not a number")))?;
            let slot = match key {
                "queue" => &mut queue,
                "every" => &mut every,
                "status" => &mut status,
                "code" => &mut code,
                _ => return Err(fail(format!("unknown argument {key:?}"))),
            };
            if slot.replace(number).is_some() {
                return Err(fail(format!("{key} given twice")));
            }
        }

        let allowed: &[&str] = match kind {
            "latency" | "hang" | "prefetch" => &["queue"],
            "never-complete" | "unknown-tag" | "duplicate" | "bad-phase" | "short-ok" => &["queue", "every"],
            "error" => &["queue", "every", "status"],
            "fatal" => &["code"],
            "gone" | "mmio-off" | "no-reset" | "bus-master-stuck" => &[],
            "storm" => &["queue", "hold"],
            _ => {
                return Err(fail(format!(
                    "unknown kind {kind:?} (kinds: {})",
                    FAULT_KINDS.join(", ")
                )))
            }
        };
        for (key, given) in [
            ("queue", queue.is_some()),
            ("every", every.is_some()),
            ("status", status.is_some()),
            ("code", code.is_some()),
            ("hold", hold.is_some()),
        ] {
            if given && !allowed.contains(&key) {
                return Err(fail(format!("{kind} takes no {key}")));
            }
        }

        let queue = queue
            .map(|q| u32::try_from(q).map_err(|_| fail(format!("queue {q} is out of range"))))
            .transpose()?;
        let every =
            u32::try_from(every.unwrap_or(1)).map_err(|_| fail("every is out of range".to_owned()))?;
        if every == 0 {
            return Err(fail("every must be at least 1".to_owned()));
        }
        let status = u8::try_from(status.unwrap_or(u64::from(cq_status::READ_ERROR)))
            .map_err(|_| fail("status must fit in a byte (accelerator.md §5)".to_owned()))?;
        let code =
            u32::try_from(code.unwrap_or(1)).map_err(|_| fail("code must fit in 32 bits".to_owned()))?;
        let hold_micros = hold.unwrap_or(DEFAULT_STORM_HOLD_MICROS);
        if hold_micros == 0 {
            return Err(fail("hold must be at least 1us".to_owned()));
        }

        Ok(match kind {
            "latency" => Fault::Latency {
                queue,
                micros: micros.unwrap_or(0),
            },
            "never-complete" => Fault::NeverComplete { queue, every },
            "error" => Fault::ErrorStatus { queue, every, status },
            "hang" => Fault::EngineHang { queue },
            "gone" => Fault::DeviceGone,
            "mmio-off" => Fault::MemorySpaceOff,
            "fatal" => Fault::Fatal { code },
            "unknown-tag" => Fault::UnknownTag { queue, every },
            "duplicate" => Fault::DuplicateCompletion { queue, every },
            "storm" => Fault::Storm { queue, hold_micros },
            "short-ok" => Fault::ShortOk { queue, every },
            "no-reset" => Fault::ResetIgnored,
            "bus-master-stuck" => Fault::BusMasterStuck,
            "prefetch" => Fault::Prefetch {
                queue,
                depth: depth.unwrap_or(1),
            },
            _ => Fault::BadPhase { queue, every },
        })
    }
}

impl fmt::Display for Fault {
    /// The canonical command-line form, which [`Fault::from_str`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = |q: &Option<u32>| q.map(|q| format!(",queue={q}")).unwrap_or_default();
        match self {
            Fault::Latency { queue: q, micros } => write!(f, "latency:{micros}us{}", queue(q)),
            Fault::NeverComplete { queue: q, every } => write!(f, "never-complete:every={every}{}", queue(q)),
            Fault::ErrorStatus {
                queue: q,
                every,
                status,
            } => {
                write!(f, "error:every={every},status={status}{}", queue(q))
            }
            Fault::EngineHang { queue: None } => write!(f, "hang"),
            Fault::EngineHang { queue: Some(q) } => write!(f, "hang:queue={q}"),
            Fault::DeviceGone => write!(f, "gone"),
            Fault::MemorySpaceOff => write!(f, "mmio-off"),
            Fault::Fatal { code } => write!(f, "fatal:code={code}"),
            Fault::UnknownTag { queue: q, every } => write!(f, "unknown-tag:every={every}{}", queue(q)),
            Fault::DuplicateCompletion { queue: q, every } => {
                write!(f, "duplicate:every={every}{}", queue(q))
            }
            Fault::BadPhase { queue: q, every } => write!(f, "bad-phase:every={every}{}", queue(q)),
            Fault::ShortOk { queue: q, every } => write!(f, "short-ok:every={every}{}", queue(q)),
            Fault::ResetIgnored => write!(f, "no-reset"),
            Fault::BusMasterStuck => write!(f, "bus-master-stuck"),
            Fault::Storm {
                queue: q,
                hold_micros,
            } => write!(f, "storm:hold={hold_micros}us{}", queue(q)),
            Fault::Prefetch { queue: q, depth } => write!(f, "prefetch:{depth}{}", queue(q)),
        }
    }
}

/// What the plan says about one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Wait this long before executing.
    pub latency_micros: u64,
    /// Hang holding the descriptor.
    pub hang: bool,
    /// Execute but post nothing.
    pub never_complete: bool,
    /// Complete with this status instead of executing.
    pub error_status: Option<u8>,
    /// Post an extra completion with a tag never submitted.
    pub unknown_tag: bool,
    /// Post the completion twice.
    pub duplicate: bool,
    /// Write the completion with the wrong phase first.
    pub bad_phase: bool,
    /// Report OK one block short of the length.
    pub short_ok: bool,
    /// Withhold the completion for a burst this long after the first withheld one (the
    /// longest if several storms apply).
    pub storm_hold_micros: Option<u64>,
    /// Fetch up to this many descriptors ahead of the one executed (the deepest if several
    /// prefetch faults apply; 0: none).
    pub prefetch: u32,
}

/// The standing faults (events are applied at injection and never stored).
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    faults: Vec<Fault>,
}

impl FaultPlan {
    /// Add a standing fault.
    pub(crate) fn add(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Remove every standing fault.
    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// How many standing faults there are.
    pub(crate) fn len(&self) -> usize {
        self.faults.len()
    }

    /// The standing faults, oldest first.
    pub(crate) fn list(&self) -> Vec<Fault> {
        self.faults.clone()
    }

    /// The function ignores resets ([`Fault::ResetIgnored`]).
    pub(crate) fn resets_ignored(&self) -> bool {
        self.faults.contains(&Fault::ResetIgnored)
    }

    /// Bus Master Enable does not clear ([`Fault::BusMasterStuck`]).
    pub(crate) fn bus_master_sticks(&self) -> bool {
        self.faults.contains(&Fault::BusMasterStuck)
    }

    /// A reset releases hung engines: remove the hangs so the board works again afterwards.
    pub(crate) fn remove_hangs(&mut self) {
        self.faults.retain(|f| !matches!(f, Fault::EngineHang { .. }));
    }

    /// The plan for the `n`th (1-based) descriptor of `queue`.
    pub(crate) fn decide(&self, queue: u32, n: u64) -> Decision {
        let on = |q: &Option<u32>| q.is_none_or(|q| q == queue);
        let nth = |every: &u32| n.is_multiple_of(u64::from((*every).max(1)));
        let mut d = Decision::default();
        for fault in &self.faults {
            match fault {
                Fault::Latency { queue: q, micros } if on(q) => {
                    d.latency_micros = d.latency_micros.saturating_add(*micros)
                }
                Fault::EngineHang { queue: q } if on(q) => d.hang = true,
                Fault::NeverComplete { queue: q, every } if on(q) && nth(every) => d.never_complete = true,
                Fault::ErrorStatus {
                    queue: q,
                    every,
                    status,
                } if on(q) && nth(every) => d.error_status = Some(*status),
                Fault::UnknownTag { queue: q, every } if on(q) && nth(every) => d.unknown_tag = true,
                Fault::DuplicateCompletion { queue: q, every } if on(q) && nth(every) => d.duplicate = true,
                Fault::BadPhase { queue: q, every } if on(q) && nth(every) => d.bad_phase = true,
                Fault::ShortOk { queue: q, every } if on(q) && nth(every) => d.short_ok = true,
                Fault::Storm {
                    queue: q,
                    hold_micros,
                } if on(q) => d.storm_hold_micros = d.storm_hold_micros.max(Some(*hold_micros)),
                Fault::Prefetch { queue: q, depth } if on(q) => d.prefetch = d.prefetch.max(*depth),
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Fault> {
        vec![
            Fault::Latency {
                queue: None,
                micros: 500,
            },
            Fault::Latency {
                queue: Some(1),
                micros: 2_000,
            },
            Fault::NeverComplete {
                queue: None,
                every: 100,
            },
            Fault::ErrorStatus {
                queue: Some(3),
                every: 50,
                status: 6,
            },
            Fault::EngineHang { queue: None },
            Fault::EngineHang { queue: Some(0) },
            Fault::DeviceGone,
            Fault::MemorySpaceOff,
            Fault::Fatal { code: 0x12 },
            Fault::UnknownTag {
                queue: None,
                every: 200,
            },
            Fault::DuplicateCompletion {
                queue: Some(2),
                every: 200,
            },
            Fault::BadPhase {
                queue: None,
                every: 300,
            },
            Fault::ShortOk {
                queue: Some(1),
                every: 7,
            },
            Fault::ResetIgnored,
            Fault::Storm {
                queue: None,
                hold_micros: 20_000,
            },
            Fault::Storm {
                queue: Some(1),
                hold_micros: 750,
            },
            Fault::BusMasterStuck,
            Fault::Prefetch {
                queue: None,
                depth: 4,
            },
            Fault::Prefetch {
                queue: Some(1),
                depth: 1,
            },
        ]
    }

    #[test]
    fn display_round_trips_through_from_str() {
        for fault in all_kinds() {
            let text = fault.to_string();
            assert_eq!(text.parse::<Fault>(), Ok(fault), "{text}");
        }
    }

    #[test]
    fn documented_examples_parse() {
        let cases = [
            (
                "latency:500us",
                Fault::Latency {
                    queue: None,
                    micros: 500,
                },
            ),
            (
                "latency:500us,queue=1",
                Fault::Latency {
                    queue: Some(1),
                    micros: 500,
                },
            ),
            (
                "latency:3ms",
                Fault::Latency {
                    queue: None,
                    micros: 3_000,
                },
            ),
            (
                "latency:1s",
                Fault::Latency {
                    queue: None,
                    micros: 1_000_000,
                },
            ),
            (
                "never-complete:every=100",
                Fault::NeverComplete {
                    queue: None,
                    every: 100,
                },
            ),
            (
                "error:every=50,status=5",
                Fault::ErrorStatus {
                    queue: None,
                    every: 50,
                    status: 5,
                },
            ),
            (
                "error",
                Fault::ErrorStatus {
                    queue: None,
                    every: 1,
                    status: 5,
                },
            ),
            ("hang", Fault::EngineHang { queue: None }),
            ("hang:queue=0", Fault::EngineHang { queue: Some(0) }),
            ("gone", Fault::DeviceGone),
            ("mmio-off", Fault::MemorySpaceOff),
            ("fatal", Fault::Fatal { code: 1 }),
            ("fatal:code=0xdead", Fault::Fatal { code: 0xdead }),
            (
                "unknown-tag:every=200",
                Fault::UnknownTag {
                    queue: None,
                    every: 200,
                },
            ),
            (
                "duplicate:every=200",
                Fault::DuplicateCompletion {
                    queue: None,
                    every: 200,
                },
            ),
            (
                "bad-phase:every=300",
                Fault::BadPhase {
                    queue: None,
                    every: 300,
                },
            ),
            (
                "storm:hold=20ms",
                Fault::Storm {
                    queue: None,
                    hold_micros: 20_000,
                },
            ),
            (
                "storm:hold=500us,queue=1",
                Fault::Storm {
                    queue: Some(1),
                    hold_micros: 500,
                },
            ),
            (
                "storm:queue=0,hold=1s",
                Fault::Storm {
                    queue: Some(0),
                    hold_micros: 1_000_000,
                },
            ),
            (
                "storm",
                Fault::Storm {
                    queue: None,
                    hold_micros: 20_000,
                },
            ),
            (
                "prefetch:4",
                Fault::Prefetch {
                    queue: None,
                    depth: 4,
                },
            ),
            (
                "prefetch:8,queue=1",
                Fault::Prefetch {
                    queue: Some(1),
                    depth: 8,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Fault>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong_and_list_the_forms() {
        let cases = [
            ("explode", "unknown kind"),
            ("latency", "needs a delay"),
            ("latency:5", "needs a delay"),
            ("latency:5us,every=2", "takes no every"),
            ("hang:every=2", "takes no every"),
            ("gone:queue=1", "takes no queue"),
            ("error:status=256", "fit in a byte"),
            ("never-complete:every=0", "at least 1"),
            ("duplicate:every=x", "not a number"),
            ("duplicate:every=2,every=3", "given twice"),
            ("bad-phase:often", "not key=value"),
            ("unknown-tag:colour=3", "unknown argument"),
            ("storm:hold=20", "not a duration"),
            ("storm:hold=0ms", "at least 1us"),
            ("storm:hold=1ms,hold=2ms", "given twice"),
            ("storm:every=2", "takes no every"),
            ("latency:5us,hold=1ms", "takes no hold"),
            ("prefetch", "needs a depth"),
            ("prefetch:0", "needs a depth"),
            ("prefetch:65536", "needs a depth"),
            ("prefetch:4,every=2", "takes no every"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<Fault>().expect_err(text);
            assert!(err.reason.contains(reason), "{text}: {}", err.reason);
            let message = err.to_string();
            assert!(message.contains("never-complete[:every=N]"), "{message}");
        }
        for kind in FAULT_KINDS {
            let message = "nope".parse::<Fault>().expect_err("nope").to_string();
            assert!(message.contains(kind), "{kind} missing from {message}");
        }
    }

    #[test]
    fn every_nth_descriptor_of_the_named_queue() {
        let mut plan = FaultPlan::default();
        plan.add(Fault::NeverComplete {
            queue: Some(1),
            every: 3,
        });
        plan.add(Fault::ErrorStatus {
            queue: None,
            every: 2,
            status: 6,
        });
        assert!(!plan.decide(1, 1).never_complete);
        assert!(plan.decide(1, 3).never_complete);
        assert!(!plan.decide(0, 3).never_complete, "other queue");
        assert_eq!(plan.decide(0, 4).error_status, Some(6));
        assert_eq!(plan.decide(0, 5).error_status, None);
        plan.add(Fault::EngineHang { queue: Some(2) });
        assert!(plan.decide(2, 1).hang);
        plan.remove_hangs();
        assert!(!plan.decide(2, 1).hang);
        assert_eq!(plan.list().len(), 2);
        plan.clear();
        assert_eq!(plan.decide(1, 3), Decision::default());
    }

    #[test]
    fn a_storm_applies_to_every_descriptor_of_its_queue_with_the_longest_hold() {
        let mut plan = FaultPlan::default();
        plan.add(Fault::Storm {
            queue: Some(1),
            hold_micros: 5_000,
        });
        assert_eq!(plan.decide(1, 1).storm_hold_micros, Some(5_000));
        assert_eq!(plan.decide(1, 2).storm_hold_micros, Some(5_000));
        assert_eq!(plan.decide(0, 1).storm_hold_micros, None, "other queue");
        plan.add(Fault::Storm {
            queue: None,
            hold_micros: 2_000,
        });
        assert_eq!(plan.decide(0, 1).storm_hold_micros, Some(2_000));
        assert_eq!(
            plan.decide(1, 1).storm_hold_micros,
            Some(5_000),
            "the longer hold"
        );
    }
}
