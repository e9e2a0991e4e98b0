//! What a running service says about its disks: the contract between the service (which owns
//! the disks) and whatever reports on them (the control socket, `scst-accel status`, the
//! Prometheus endpoint, the systemd STATUS= line).

use scst_accel_handler::frontend::FrontendStats;
use serde::Serialize;
use std::time::Duration;
use std::time::SystemTime;

/// Where a disk is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    /// Opening the board, registering, exporting.
    Starting,
    /// Registered (and exported, if configured): serving commands.
    Serving,
    /// Its teardown is running.
    Stopping,
    /// Torn down after a request (SIGTERM, `demo` end): not an error.
    Stopped,
    /// Torn down because it failed (device gone or fatal, SCST closed it, a worker died), or
    /// it never started; the others keep serving.
    Failed,
}

/// The identity an initiator sees (INQUIRY, VPD 80h/83h).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IdentityView {
    /// T10 vendor identification.
    pub vendor: String,
    /// Product identification.
    pub product: String,
    /// Unit serial number.
    pub serial: String,
    /// VPD 83h designator: NAA as bare hex, EUI-64 based (NVMe) as `eui.` + hex.
    pub naa: String,
    /// Where it came from: "config", "state" (persisted on an earlier start), "generated"
    /// (generated now: persisted, or not at all when there is no state directory, as in the
    /// demo), "device" (NVMe NGUID/EUI64: taken now, or persisted from the id the device still
    /// reports).
    pub source: String,
}

/// Device figures of an accelerator board (zero on the RAM store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounters {
    /// Requests the device completed with an error status.
    pub device_errors: u64,
    /// Requests failed by timeout escalation.
    pub timeouts: u64,
    /// Recoveries of the function the store ran, each once: its escalation's own, and those a
    /// queue's stop had to run (`AccelCounters::resets`). A part of `controller_resets`: in a
    /// service, where nothing else recovers the function, the same figure, but for a recovery
    /// run by the stop of an NVMe queue dropped at the teardown, which is not counted here.
    pub resets: u64,
    /// Recoveries of the function (reset and brought back to serving), whoever ran them (the
    /// store, `demo --reset-during-load`), each once: the controller's own count.
    pub controller_resets: u64,
    /// Completions with an unknown or duplicated tag, ignored.
    pub unknown_tags: u64,
}

/// One teardown this disk went through.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeardownRecord {
    /// When it ended.
    #[serde(serialize_with = "unix_seconds")]
    pub at: SystemTime,
    /// What triggered it, as text ("Requested", "StoreFailed(...)", ...).
    pub trigger: String,
    /// How long it took, ms.
    pub duration_ms: f64,
    /// Commands in flight when intake stopped, answered within the bound, aborted on the device.
    pub in_flight_at_start: u64,
    /// Answered within the drain bound.
    pub drained: u64,
    /// Aborted on the device.
    pub aborted: u64,
    /// Store requests left in flight (must be 0).
    pub zombies_left: u64,
    /// The pool was unmapped with the frontend's permit.
    pub unmap_permitted: bool,
}

/// One disk, as a snapshot at one instant: raw counters, no rates. Rates and percentiles
/// come from successive snapshots (see the metrics module).
#[derive(Clone, Debug, Serialize)]
pub struct DiskSnapshot {
    /// SCST device name.
    pub name: String,
    /// Where it is in its life.
    pub state: DiskState,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Board name (`ram`, `sim`, `nvme`, ...).
    pub board: String,
    /// PCI function of a hardware board.
    pub pci: Option<String>,
    /// Identity.
    pub identity: IdentityView,
    /// Logical block size.
    pub block_size: u32,
    /// Capacity in blocks.
    pub num_blocks: u64,
    /// Exports applied now, as "driver/target/lun".
    pub exports: Vec<String>,
    /// Those of `exports` the last check (every few seconds) did not find holding the disk's
    /// device: gone (being applied again) or taken by another device.
    pub exports_lost: Vec<String>,
    /// The frontend's counters while it runs (its last ones after a teardown). Not serialized
    /// as is: the status renderer turns them into named figures.
    #[serde(skip)]
    pub frontend: Option<FrontendStats>,
    /// Device counters.
    pub device: DeviceCounters,
    /// Teardowns so far (normally 0 or 1 per process).
    pub teardowns: Vec<TeardownRecord>,
}

/// The service did not answer a request within its bound: it is still starting its disks
/// (requests wait for the supervisor, which answers once every disk has been tried), or its
/// supervisor is wedged or gone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the service did not answer within {}s (still starting its disks, or wedged); try again, \
     and check its log if it keeps not answering",
    .waited.as_secs()
)]
pub struct NotAnswered {
    /// How long the request waited.
    pub waited: Duration,
}

/// Why the service did not do what a disk request (dump, resize) asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The supervisor did not answer in time: the request may be tried again (the client
    /// exits 69, as for a status it did not answer).
    #[error(transparent)]
    NotAnswered(#[from] NotAnswered),
    /// The service answered no: the message says why and what to do (the client exits 65).
    #[error("{0}")]
    Refused(String),
}

impl From<String> for ViewError {
    fn from(message: String) -> Self {
        Self::Refused(message)
    }
}

/// What the control socket and the metrics endpoint ask of the service. The service
/// implements it over its disks; tests implement it over fakes.
pub trait ServiceView: Send + Sync {
    /// Every disk, in configuration order.
    ///
    /// # Errors
    /// The service did not answer in time ([`NotAnswered`]): never an empty or partial list
    /// in its place.
    fn snapshot(&self) -> Result<Vec<DiskSnapshot>, NotAnswered>;
    /// The dump of one disk (every command in flight, the device's registers and rings), as
    /// SIGUSR1 logs it.
    ///
    /// # Errors
    /// [`ViewError::Refused`]: the disk is unknown or not serving, a message saying so;
    /// [`ViewError::NotAnswered`]: the supervisor did not answer in time.
    fn dump(&self, disk: &str) -> Result<String, ViewError>;
    /// Grow a disk to `bytes` (RAM/file stores) and tell SCST (DEVICE_CAPACITY_CHANGED, so
    /// initiators see CAPACITY DATA HAS CHANGED). Returns the new capacity in blocks.
    ///
    /// # Errors
    /// [`ViewError::Refused`]: unknown disk, a board whose capacity is the device's, a
    /// shrink, a size that is not a multiple of the block size, or the kernel's refusal, a
    /// message saying what to do; [`ViewError::NotAnswered`]: the supervisor did not answer in
    /// time.
    fn resize(&self, disk: &str, bytes: u64) -> Result<u64, ViewError>;
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    s.serialize_f64(secs)
}

/// A fake service for tests of the reporting side: two disks whose counters move with every
/// snapshot, a dump for one, and resizes recorded.
/// The process's lock statistics ([`scst_accel_hal::locks::lock_stats`]): per lock level,
/// acquisitions, contended acquisitions (the taker waited for another thread) and the longest
/// hold, and whether the runtime order checker is compiled in. `per_command` divides the
/// acquisitions by `commands` when given (in the demo that includes the loopback kernel
/// model's and the initiator's own locks, which a real kernel does not take in this process).
pub fn locks_json(commands: Option<u64>) -> serde_json::Value {
    let levels: Vec<serde_json::Value> = scst_accel_hal::locks::lock_stats()
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "level": l.level,
                "acquisitions": l.acquisitions,
                "contended": l.contended,
                "longest_hold_us": l.longest_hold.as_secs_f64() * 1e6,
                "per_command": commands.filter(|&c| c > 0).map(|c| l.acquisitions as f64 / c as f64),
            })
        })
        .collect();
    serde_json::json!({ "checker": scst_accel_hal::locks::LOCK_CHECK, "levels": levels })
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use scst_accel_handler::frontend::LatencyHistogram;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct FakeView {
        pub(crate) snapshots: AtomicU64,
        pub(crate) resized: Mutex<Vec<(String, u64)>>,
    }

    impl ServiceView for FakeView {
        fn snapshot(&self) -> Result<Vec<DiskSnapshot>, NotAnswered> {
            let n = self.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
            let mut latency = LatencyHistogram::default();
            for _ in 0..n * 100 {
                latency.record(Duration::from_micros(50));
            }
            let frontend = FrontendStats {
                exec: n * 100,
                read_commands: n * 60,
                write_commands: n * 30,
                // The 3 in flight are not answered yet.
                other_commands: n * 10 - 3,
                read_bytes: n * 60 * 4096,
                write_bytes: n * 30 * 4096,
                exec_errors: n,
                busy: 2,
                inflight: 3,
                deadline_escalations: 4,
                task_mgmt: 5,
                latency,
                ..FrontendStats::default()
            };
            let disk = |name: &str, state, failure: Option<&str>| DiskSnapshot {
                name: name.to_string(),
                state,
                failure: failure.map(str::to_string),
                board: "ram".into(),
                pci: None,
                identity: IdentityView {
                    vendor: "SCST_ACC".into(),
                    product: "RAM \"disk\"\n".into(),
                    serial: "0001".into(),
                    naa: "600140500000000000000000000000001".into(),
                    source: "generated".into(),
                },
                block_size: 512,
                num_blocks: 2048,
                exports: vec!["scst_local/scst_local_tgt/0".into()],
                exports_lost: Vec::new(),
                frontend: Some(frontend),
                // Three recoveries of the function, two of them the store's.
                device: DeviceCounters {
                    device_errors: 1,
                    resets: 2,
                    controller_resets: 3,
                    ..DeviceCounters::default()
                },
                teardowns: Vec::new(),
            };
            Ok(vec![
                disk("ram0", DiskState::Serving, None),
                disk("bad\"disk", DiskState::Failed, Some("device gone")),
            ])
        }

        fn dump(&self, disk: &str) -> Result<String, ViewError> {
            match disk {
                "ram0" => Ok("worker 0: 0 command(s)".into()),
                _ => Err(format!("no disk {disk:?}").into()),
            }
        }

        fn resize(&self, disk: &str, bytes: u64) -> Result<u64, ViewError> {
            if disk != "ram0" {
                return Err(format!("no disk {disk:?}").into());
            }
            self.resized.lock().unwrap().push((disk.to_string(), bytes));
            Ok(bytes / 512)
        }
    }

    /// A service that does not answer (yet): its first `silent` requests (snapshots, dumps,
    /// resizes) fail as a service starting its disks does, then it answers as [`FakeView`].
    #[derive(Default)]
    pub(crate) struct SlowView {
        pub(crate) silent: AtomicU64,
        pub(crate) inner: FakeView,
    }

    impl SlowView {
        /// Whether this request is answered (one fewer silent one).
        fn answers(&self) -> Result<(), NotAnswered> {
            let unanswered = self
                .silent
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            match unanswered {
                Ok(_) => Err(NotAnswered {
                    waited: Duration::from_secs(5),
                }),
                Err(_) => Ok(()),
            }
        }
    }

    impl ServiceView for SlowView {
        fn snapshot(&self) -> Result<Vec<DiskSnapshot>, NotAnswered> {
            self.answers()?;
            self.inner.snapshot()
        }

        fn dump(&self, disk: &str) -> Result<String, ViewError> {
            self.answers()?;
            self.inner.dump(disk)
        }

        fn resize(&self, disk: &str, bytes: u64) -> Result<u64, ViewError> {
            self.answers()?;
            self.inner.resize(disk, bytes)
        }
    }
}
