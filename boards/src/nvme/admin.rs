//! The admin queue pair (NVMe 1.4 §3.7.2, §7.6.1): shared by every thread that needs an admin
//! command (bring-up, queue creation and deletion on worker threads, recovery).
//!
//! Submission and reaping happen under one short lock; the wait for a command's completion
//! happens outside it, polling with backoff (10 µs doubling to 1 ms) until a deadline. Each
//! waiter finds its own completion in its slot, identified by the command identifier (slot in
//! the low bits, a generation above), so a stale completion (of a command whose waiter gave up,
//! or from before a controller reset) is never taken for a new one.

use super::cmd::Cqe;
use super::cmd::Sqe;
use super::cmd::Status;
use super::cmd::CQE_STATUS_OFFSET;
use super::error::NvmeError;
use super::regs::csts;
use super::regs::Registers;
use super::regs::ALL_ONES_32;
use scst_accel_dma::CompletionRing;
use scst_accel_dma::MappedRegion;
use scst_accel_dma::SubmissionRing;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::DeviceBacking;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use zerocopy::IntoBytes;

/// Entries of each admin ring (AQA; at most 4096). A power of two for the ring arithmetic.
pub const ADMIN_ENTRIES: u16 = 32;
/// Bits of a CID that index the slot table.
const SLOT_BITS: u32 = ADMIN_ENTRIES.trailing_zeros();
/// Generations wrap below this so that a CID is never 0xFFFF (reserved in later revisions).
const GENERATIONS: u16 = (1 << (16 - SLOT_BITS)) - 1;

/// Shortest and longest pause between polls of a waiting command.
const POLL_MIN: Duration = Duration::from_micros(10);
const POLL_MAX: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Submitted, its waiter polling.
    Pending,
    /// Completed, its waiter not yet back.
    Done(Cqe),
    /// Its waiter timed out: free the slot when (if ever) the completion arrives.
    Abandoned,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    generation: u16,
    state: SlotState,
}

struct AdminState {
    sq: SubmissionRing,
    cq: CompletionRing,
    slots: Vec<Slot>,
}

/// The lock level of the admin queue (docs/locking.md).
type AdminLevel = levels::NvmeAdmin;

/// The admin queue pair.
pub struct AdminQueue {
    device: Arc<dyn DeviceBacking>,
    split_64bit: bool,
    sq_doorbell: u64,
    cq_doorbell: u64,
    sq_iova: u64,
    cq_iova: u64,
    /// The controller accepts commands (CC.EN = 1 and CSTS.RDY = 1 seen).
    enabled: AtomicBool,
    /// Completions that matched no waiting command (counted under the lock, read without it:
    /// a statistic must not need the admin lock).
    unknown: AtomicU64,
    /// Every entry point that locks it is a blocking call (a command's submit-and-wait, the
    /// ring reset between a controller reset and the re-enable), so each starts its chain from
    /// [`LockToken::root`], which asserts that no checked lock is held.
    state: OrderedMutex<AdminState, AdminLevel>,
}

impl AdminQueue {
    /// Build the rings in `sq` (64-byte entries) and `cq` (16-byte entries); the doorbells are
    /// queue 0's (`sq_doorbell`, `cq_doorbell` from CAP.DSTRD).
    ///
    /// # Errors
    /// [`NvmeError::Memory`] when a region is too small.
    pub fn new(
        device: Arc<dyn DeviceBacking>,
        split_64bit: bool,
        doorbells: (u64, u64),
        sq: MappedRegion,
        cq: MappedRegion,
    ) -> Result<Self, NvmeError> {
        let memory = |what: &str, source| NvmeError::Memory {
            device: device.id().to_owned(),
            what: what.to_owned(),
            source: Box::new(source),
        };
        let (sq_iova, cq_iova) = (sq.iova(), cq.iova());
        let sq = SubmissionRing::new(sq, u32::from(ADMIN_ENTRIES), size_of::<Sqe>())
            .map_err(|e| memory("the admin submission queue", e))?;
        let cq = CompletionRing::new(
            cq,
            u32::from(ADMIN_ENTRIES),
            size_of::<Cqe>(),
            CQE_STATUS_OFFSET,
            1,
        )
        .map_err(|e| memory("the admin completion queue", e))?;
        let slots = vec![
            Slot {
                generation: 0,
                state: SlotState::Free,
            };
            usize::from(ADMIN_ENTRIES)
        ];
        Ok(Self {
            device,
            split_64bit,
            sq_doorbell: doorbells.0,
            cq_doorbell: doorbells.1,
            sq_iova,
            cq_iova,
            enabled: AtomicBool::new(false),
            unknown: AtomicU64::new(0),
            state: OrderedMutex::new(AdminState { sq, cq, slots }),
        })
    }

    /// IOVA of the submission ring (for ASQ).
    pub fn sq_iova(&self) -> u64 {
        self.sq_iova
    }

    /// IOVA of the completion ring (for ACQ).
    pub fn cq_iova(&self) -> u64 {
        self.cq_iova
    }

    /// Dropped, leave both rings mapped ([`MappedRegion::leak_on_drop`]): for a controller
    /// that may still fetch from the SQ or post to the CQ (no disable or function reset
    /// proved CSTS.RDY = 0).
    ///
    /// [`MappedRegion::leak_on_drop`]: scst_accel_dma::MappedRegion::leak_on_drop
    pub fn leak_on_drop(&mut self) {
        let state = self.state.get_mut();
        state.sq.leak_on_drop();
        state.cq.leak_on_drop();
    }

    /// Accept commands (after CSTS.RDY = 1) or refuse them (after a disable).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
    }

    /// Commands are accepted.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Completions that matched no waiting command, so far.
    pub fn unknown_completions(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Empty, zeroed rings and no command outstanding, as the controller expects after a
    /// reset (NVMe 1.4 §7.6.1: the admin queue is re-initialized with the controller). Waiters
    /// of dropped commands see their slot's generation change and return
    /// [`NvmeError::ResetDuringCommand`]. Call only while the controller is disabled.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock: it runs between a
    /// controller reset and the re-enable, both blocking.
    #[track_caller]
    pub fn reset_rings(&self) {
        let mut token = LockToken::root();
        let (mut state, _) = self.state.lock(&mut token);
        state.sq.reset();
        state.cq.reset();
        for slot in &mut state.slots {
            if slot.state != SlotState::Free {
                slot.generation = next_generation(slot.generation);
                slot.state = SlotState::Free;
            }
        }
    }

    /// Run `during` with the command state locked, as a submitter finds it when a reset takes
    /// it first.
    #[cfg(test)]
    pub(super) fn with_state_locked(&self, during: impl FnOnce()) {
        let mut token = LockToken::root();
        let _state = self.state.lock(&mut token);
        during();
    }

    /// Submit `sqe` (its CID is set here) and wait, bounded by `timeout`, for its completion.
    ///
    /// # Errors
    /// [`NvmeError::Disabled`] when the controller is not enabled; [`NvmeError::Gone`],
    /// [`NvmeError::Fatal`] or [`NvmeError::Timeout`] while waiting (the caller escalates to a
    /// controller reset); [`NvmeError::ResetDuringCommand`]; [`NvmeError::Command`] when the
    /// completion carries an error status.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock: waiting for a device is
    /// a blocking call (docs/locking.md rule 2).
    #[track_caller]
    pub fn execute(&self, command: &'static str, sqe: Sqe, timeout: Duration) -> Result<Cqe, NvmeError> {
        let mut token = LockToken::root();
        let deadline = Instant::now() + timeout;
        let (slot, generation) = self.submit(&mut token, command, sqe, deadline, timeout)?;
        let cqe = self.wait(&mut token, command, slot, generation, deadline, timeout)?;
        let status = Status::from_cqe(cqe.status);
        if !status.is_success() {
            return Err(NvmeError::Command {
                device: self.device.id().to_owned(),
                command,
                status,
            });
        }
        log::debug!("{}: admin {command} done (dw0 {:#x})", self.device.id(), cqe.dw0);
        Ok(cqe)
    }

    fn registers(&self) -> Registers<'_> {
        Registers::new(self.device.bar0(), self.split_64bit)
    }

    /// Take a slot and queue the command; when every slot is taken, poll (bounded) for one.
    fn submit<M: LockBefore<AdminLevel>>(
        &self,
        token: &mut LockToken<'_, M>,
        command: &'static str,
        mut sqe: Sqe,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(usize, u16), NvmeError> {
        let mut pause = POLL_MIN;
        loop {
            if !self.is_enabled() {
                return Err(NvmeError::Disabled {
                    device: self.device.id().to_owned(),
                });
            }
            {
                let (mut state, _) = self.state.lock(token);
                // Again under the lock: a reset between the look above and this lock may have
                // made the rings fresh for a disabled controller ([`AdminQueue::reset_rings`]
                // runs under this lock after the flag is cleared); a command pushed onto them
                // now would run after the re-enable, ahead of the recovery's own commands.
                if !self.is_enabled() {
                    return Err(NvmeError::Disabled {
                        device: self.device.id().to_owned(),
                    });
                }
                self.reap(&mut state);
                let free = state.slots.iter().position(|s| s.state == SlotState::Free);
                if let (Some(index), true) = (free, state.sq.free_slots() > 0) {
                    let slot = &mut state.slots[index];
                    slot.state = SlotState::Pending;
                    let generation = slot.generation;
                    sqe.cid = (generation << SLOT_BITS) | index as u16;
                    if state.sq.push(sqe.as_bytes()).is_ok() {
                        if let Some(tail) = state.sq.commit() {
                            self.registers().write32(self.sq_doorbell, tail);
                        }
                        return Ok((index, generation));
                    }
                    state.slots[index].state = SlotState::Free;
                }
            }
            self.check_health(command, deadline, timeout)?;
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Poll for the completion of the command in `slot` with `generation`.
    fn wait<M: LockBefore<AdminLevel>>(
        &self,
        token: &mut LockToken<'_, M>,
        command: &'static str,
        slot: usize,
        generation: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Cqe, NvmeError> {
        let mut pause = POLL_MIN;
        loop {
            {
                let (mut state, _) = self.state.lock(token);
                self.reap(&mut state);
                let entry = &mut state.slots[slot];
                if entry.generation != generation {
                    return Err(NvmeError::ResetDuringCommand {
                        device: self.device.id().to_owned(),
                        command,
                    });
                }
                if let SlotState::Done(cqe) = entry.state {
                    entry.state = SlotState::Free;
                    entry.generation = next_generation(generation);
                    return Ok(cqe);
                }
            }
            if let Err(e) = self.check_health(command, deadline, timeout) {
                let (mut state, _) = self.state.lock(token);
                let entry = &mut state.slots[slot];
                if entry.generation == generation && entry.state == SlotState::Pending {
                    entry.state = SlotState::Abandoned;
                }
                return Err(e);
            }
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// The controller is still there and not fatal, and the deadline has not passed.
    fn check_health(
        &self,
        command: &'static str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        let device = || self.device.id().to_owned();
        let status = self.registers().csts();
        if status == ALL_ONES_32 {
            return Err(NvmeError::Gone { device: device() });
        }
        if status & csts::CFS != 0 {
            return Err(NvmeError::Fatal {
                device: device(),
                csts: status,
            });
        }
        if Instant::now() >= deadline {
            log::error!(
                "{}: admin {command} did not complete within {timeout:?}",
                device()
            );
            return Err(NvmeError::Timeout {
                device: device(),
                what: "admin command completion",
                timeout,
            });
        }
        Ok(())
    }

    /// Move posted completions into their slots; one CQ head doorbell if anything was read.
    /// Take the posted completions, at most [`ADMIN_ENTRIES`] − 1 (what an honest controller can
    /// post before the CQ head doorbell written at the end): this runs under the admin lock, so
    /// a controller that ignores the doorbell and keeps writing valid-phase entries must not
    /// hold every admin user here. Entries that match no command are logged once per call.
    fn reap(&self, state: &mut AdminState) {
        let mut consumed = false;
        let mut unknown: Option<(Cqe, u32)> = None;
        for _ in 0..ADMIN_ENTRIES - 1 {
            let Some(cqe) = state.cq.pop::<Cqe>() else {
                break;
            };
            consumed = true;
            let index = usize::from(cqe.cid & ((1 << SLOT_BITS) - 1));
            let generation = cqe.cid >> SLOT_BITS;
            let matches = cqe.sq_id == 0
                && state.slots[index].generation == generation
                && matches!(
                    state.slots[index].state,
                    SlotState::Pending | SlotState::Abandoned
                );
            if !matches {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                unknown.get_or_insert((cqe, 0)).1 += 1;
                continue;
            }
            if let Err(e) = state.sq.try_update_head(u32::from(cqe.sq_head)) {
                log::warn!("{}: admin queue: {e}; ignored", self.device.id());
            }
            let slot = &mut state.slots[index];
            if slot.state == SlotState::Abandoned {
                slot.state = SlotState::Free;
                slot.generation = next_generation(generation);
            } else {
                slot.state = SlotState::Done(cqe);
            }
        }
        if consumed {
            self.registers().write32(self.cq_doorbell, state.cq.head());
        }
        if let Some((first, n)) = unknown {
            log::warn!(
                "{}: {n} admin completions matched no command (the first: CID {:#06x}, SQID {}); ignored",
                self.device.id(),
                first.cid,
                first.sq_id
            );
        }
    }

    /// Write `count` completions that match no command (SQID 5) into the CQ from its head, each
    /// with the phase the driver expects there, as a controller that ignores the CQ head
    /// doorbell would; then reap once. Returns how many that reap took.
    #[cfg(test)]
    pub(super) fn flood_and_reap(&self, count: u32) -> u64 {
        use zerocopy::IntoBytes;
        let mut token = LockToken::root();
        let (mut state, _) = self.state.lock(&mut token);
        let entries = u32::from(ADMIN_ENTRIES);
        let (head, phase) = (state.cq.head(), state.cq.expected_phase());
        for i in 0..count {
            let slot = (head + i) % entries;
            let wrapped = head + i >= entries;
            let cqe = Cqe {
                sq_id: 5,
                cid: 0xffff,
                status: u16::from(phase != wrapped),
                ..Cqe::default()
            };
            state
                .cq
                .region()
                .write_at(slot as usize * size_of::<Cqe>(), cqe.as_bytes());
        }
        let before = self.unknown.load(Ordering::Relaxed);
        self.reap(&mut state);
        self.unknown.load(Ordering::Relaxed) - before
    }
}

const fn next_generation(generation: u16) -> u16 {
    (generation + 1) % GENERATIONS
}
