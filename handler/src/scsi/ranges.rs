//! Block-range locks of one disk: what makes COMPARE AND WRITE atomic when this engine executes
//! it (`CompareAndWrite::Handler`, the TCMU frontend), across workers and sessions.
//!
//! SBC-3 §5.2 asks that no other command change the range between COMPARE AND WRITE's compare
//! and its write. SCST's core gets that by holding back overlapping commands of the device
//! (`SCST_SCSI_ATOMIC`, docs/scsi.md "COMPARE AND WRITE"); where the command reaches this engine
//! the frontend does it with these locks:
//! - a command that writes the medium (WRITE, WRITE AND VERIFY, WRITE SAME, UNMAP) holds its
//!   range **shared**: writes never wait for each other (SCSI gives overlapping writes no
//!   order), only for a COMPARE AND WRITE;
//! - COMPARE AND WRITE holds its range **exclusive** from before its compare until its write
//!   completed;
//! - reads take nothing (a read racing a COMPARE AND WRITE sees the old or the new block, each
//!   whole: the stores never tear a block).
//!
//! A command whose range conflicts is **parked**, never waited for: [`RangeLocks::acquire`]
//! answers [`Acquire::Parked`] and the worker moves on. When a holder releases, the waiters
//! whose turn it is are granted under the lock and their grants handed to their workers'
//! [`Mailbox`]es after unlocking (a channel and an eventfd the worker polls with its other
//! fds); the worker then submits the command as if it had just been granted. The wait list is
//! FIFO: a request also waits behind an earlier waiter it conflicts with, so a stream of writes
//! cannot starve a parked COMPARE AND WRITE, nor the other way round.
//!
//! Level `scsi.ranges` (docs/locking.md): a leaf held for one acquire, release or cancel.

use scst_accel_hal::fdio::EventFd;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Logical blocks `lba..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// First block.
    pub lba: u64,
    /// One past the last block.
    pub end: u64,
}

impl BlockRange {
    /// `blocks` blocks from `lba` (saturating at the end of the address space).
    pub fn new(lba: u64, blocks: u64) -> Self {
        Self {
            lba,
            end: lba.saturating_add(blocks),
        }
    }

    /// Do the two ranges share a block? Adjacent ranges do not, nor does an empty one.
    pub fn overlaps(&self, other: &BlockRange) -> bool {
        self.lba < self.end && other.lba < other.end && self.lba < other.end && other.lba < self.end
    }
}

/// How a command holds its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeMode {
    /// A write: excludes only exclusive holders.
    Shared,
    /// COMPARE AND WRITE: excludes every other holder of an overlapping range.
    Exclusive,
}

/// Can `a` and `b` not be held at once?
fn conflicts(a: (BlockRange, RangeMode), b: (BlockRange, RangeMode)) -> bool {
    a.0.overlaps(&b.0) && (a.1 == RangeMode::Exclusive || b.1 == RangeMode::Exclusive)
}

/// A held range. Give it back with [`RangeLocks::release`] when the command is answered: a
/// grant that is dropped instead keeps its range held (and every conflicting command parked)
/// for the life of the disk, so it is not `Clone` and must be used.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a grant holds its range until it is released"]
pub struct RangeGrant {
    id: u64,
    range: BlockRange,
    mode: RangeMode,
}

impl RangeGrant {
    /// The request this grant answers: the [`WaitId`] it was parked with, if it was.
    pub fn wait_id(&self) -> WaitId {
        WaitId(self.id)
    }

    /// The range held.
    pub fn range(&self) -> BlockRange {
        self.range
    }
}

/// A parked request, as [`Acquire::Parked`] named it; its grant comes through the mailbox
/// with the same [`RangeGrant::wait_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitId(u64);

/// What [`RangeLocks::acquire`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The range is held now.
    Granted(RangeGrant),
    /// The range is busy: the request waits in the list; its grant will be delivered to the
    /// mailbox given to `acquire`.
    Parked(WaitId),
}

/// Where a worker receives the grants of its parked requests: a lock-free channel, and an
/// eventfd made readable on each delivery so a worker sleeping in poll(2) wakes.
#[derive(Debug)]
pub struct Mailbox {
    tx: crossbeam_channel::Sender<RangeGrant>,
    rx: crossbeam_channel::Receiver<RangeGrant>,
    /// `None` when no eventfd could be made: the worker then sees grants on its next turn
    /// (bounded by its idle poll) instead of at once.
    wake: Option<EventFd>,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new() -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = match EventFd::new() {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!(
                    "range lock mailbox without an eventfd ({e}): grants are seen on the worker's next turn"
                );
                None
            }
        };
        Arc::new(Self { tx, rx, wake })
    }

    /// The next grant delivered, if any.
    pub fn take(&self) -> Option<RangeGrant> {
        self.rx.try_recv().ok()
    }

    /// No grant waiting (one may arrive at any time).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Readable while grants may be waiting (poll it with the worker's other fds).
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(AsFd::as_fd)
    }

    /// Make the wake fd unreadable again (before draining with [`Self::take`]).
    pub fn clear_wake(&self) {
        if let Some(wake) = &self.wake {
            wake.clear();
        }
    }

    fn deliver(&self, grant: RangeGrant) {
        // Never fails: `self` holds the receiver.
        let _ = self.tx.send(grant);
        if let Some(wake) = &self.wake {
            wake.signal();
        }
    }
}

struct Waiter {
    id: u64,
    range: BlockRange,
    mode: RangeMode,
    mailbox: Arc<Mailbox>,
}

#[derive(Default)]
struct State {
    /// Held ranges: (grant id, range, mode). Few: one per write in flight on the disk.
    held: Vec<(u64, BlockRange, RangeMode)>,
    /// Parked requests, oldest first.
    waiting: VecDeque<Waiter>,
    next_id: u64,
}

impl State {
    /// Grant every waiter that conflicts with no held range and with no earlier waiter still
    /// waiting (FIFO); returns the grants to deliver after unlocking.
    fn grant_waiters(&mut self) -> Vec<(Arc<Mailbox>, RangeGrant)> {
        let mut granted = Vec::new();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            let want = (w.range, w.mode);
            let blocked = self.held.iter().any(|&(_, r, m)| conflicts(want, (r, m)))
                || still.iter().any(|s: &Waiter| conflicts(want, (s.range, s.mode)));
            if blocked {
                still.push_back(w);
            } else {
                self.held.push((w.id, w.range, w.mode));
                granted.push((
                    w.mailbox,
                    RangeGrant {
                        id: w.id,
                        range: w.range,
                        mode: w.mode,
                    },
                ));
            }
        }
        self.waiting = still;
        granted
    }
}

/// The range locks of one disk (see the module doc).
pub struct RangeLocks {
    state: OrderedMutex<State, levels::ScsiRanges>,
}

impl std::fmt::Debug for RangeLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeLocks").finish_non_exhaustive()
    }
}

impl Default for RangeLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeLocks {
    /// No range held, nobody waiting.
    pub fn new() -> Self {
        Self {
            state: OrderedMutex::new(State::default()),
        }
    }

    /// Hold `range` in `mode` now, or park the request (FIFO) and deliver its grant to
    /// `mailbox` when its turn comes.
    pub fn acquire<L: LockBefore<levels::ScsiRanges>>(
        &self,
        token: &mut LockToken<'_, L>,
        range: BlockRange,
        mode: RangeMode,
        mailbox: &Arc<Mailbox>,
    ) -> Acquire {
        let (mut state, _) = self.state.lock(token);
        let id = state.next_id;
        state.next_id += 1;
        let want = (range, mode);
        let busy = state.held.iter().any(|&(_, r, m)| conflicts(want, (r, m)))
            || state.waiting.iter().any(|w| conflicts(want, (w.range, w.mode)));
        if busy {
            state.waiting.push_back(Waiter {
                id,
                range,
                mode,
                mailbox: Arc::clone(mailbox),
            });
            Acquire::Parked(WaitId(id))
        } else {
            state.held.push((id, range, mode));
            Acquire::Granted(RangeGrant { id, range, mode })
        }
    }

    /// Give `grant`'s range back; the waiters it held up are granted and their grants
    /// delivered (after unlocking).
    pub fn release<L: LockBefore<levels::ScsiRanges>>(
        &self,
        token: &mut LockToken<'_, L>,
        grant: RangeGrant,
    ) {
        let granted = {
            let (mut state, _) = self.state.lock(token);
            match state.held.iter().position(|&(id, _, _)| id == grant.id) {
                Some(i) => {
                    state.held.swap_remove(i);
                }
                None => log::error!("range grant {grant:?} released twice or not from this disk"),
            }
            state.grant_waiters()
        };
        for (mailbox, grant) in granted {
            mailbox.deliver(grant);
        }
    }

    /// Take a parked request out of the wait list (a worker's teardown). `true` when it was
    /// still waiting; `false` when it had been granted already: its grant is then in (or on
    /// its way to) the mailbox, and the worker must release it.
    pub fn cancel<L: LockBefore<levels::ScsiRanges>>(
        &self,
        token: &mut LockToken<'_, L>,
        wait: WaitId,
    ) -> bool {
        let (removed, granted) = {
            let (mut state, _) = self.state.lock(token);
            match state.waiting.iter().position(|w| w.id == wait.0) {
                Some(i) => {
                    state.waiting.remove(i);
                    // Waiters queued behind it may no longer be blocked.
                    (true, state.grant_waiters())
                }
                None => (false, Vec::new()),
            }
        };
        for (mailbox, grant) in granted {
            mailbox.deliver(grant);
        }
        removed
    }

    /// (held ranges, parked requests), for dumps and tests.
    pub fn counts<L: LockBefore<levels::ScsiRanges>>(&self, token: &mut LockToken<'_, L>) -> (usize, usize) {
        let (state, _) = self.state.lock(token);
        (state.held.len(), state.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> LockToken<'static, levels::Root> {
        LockToken::root()
    }

    fn granted(a: Acquire) -> RangeGrant {
        match a {
            Acquire::Granted(g) => g,
            Acquire::Parked(id) => panic!("parked as {id:?}"),
        }
    }

    fn parked(a: Acquire) -> WaitId {
        match a {
            Acquire::Parked(id) => id,
            Acquire::Granted(g) => panic!("granted {g:?}"),
        }
    }

    #[test]
    fn overlap_is_by_block_and_adjacent_ranges_do_not_overlap() {
        let r = BlockRange::new(10, 5); // 10..15
        assert!(r.overlaps(&BlockRange::new(14, 1)));
        assert!(r.overlaps(&BlockRange::new(0, 11)));
        assert!(r.overlaps(&BlockRange::new(11, 2)), "inside");
        assert!(!r.overlaps(&BlockRange::new(15, 3)), "adjacent after");
        assert!(!r.overlaps(&BlockRange::new(5, 5)), "adjacent before");
        assert!(
            !r.overlaps(&BlockRange::new(12, 0)),
            "an empty range holds no block"
        );
    }

    #[test]
    fn exclusive_excludes_overlapping_holders_of_either_mode_and_writes_share() {
        let locks = RangeLocks::new();
        let mb = Mailbox::new();
        let mut t = root();
        let w1 = granted(locks.acquire(&mut t, BlockRange::new(0, 8), RangeMode::Shared, &mb));
        let w2 = granted(locks.acquire(&mut t, BlockRange::new(4, 8), RangeMode::Shared, &mb));
        let caw = parked(locks.acquire(&mut t, BlockRange::new(7, 1), RangeMode::Exclusive, &mb));
        // Adjacent to both writes: granted.
        let side = granted(locks.acquire(&mut t, BlockRange::new(12, 1), RangeMode::Exclusive, &mb));
        assert_eq!(locks.counts(&mut t), (3, 1));
        locks.release(&mut t, w1);
        assert_eq!(mb.take(), None, "w2 still overlaps block 7");
        locks.release(&mut t, w2);
        let g = mb.take().expect("granted on the last release");
        assert_eq!((g.wait_id(), g.range()), (caw, BlockRange::new(7, 1)));
        // While it is held, an overlapping write parks; a write elsewhere does not.
        let w3 = parked(locks.acquire(&mut t, BlockRange::new(0, 100), RangeMode::Shared, &mb));
        locks.release(&mut t, side);
        assert_eq!(mb.take(), None);
        locks.release(&mut t, g);
        let g3 = mb.take().expect("write granted");
        assert_eq!(g3.wait_id(), w3);
        locks.release(&mut t, g3);
        assert_eq!(locks.counts(&mut t), (0, 0));
    }

    /// FIFO: a later request waits behind an earlier waiter it conflicts with even when the
    /// range itself is free of holders, and grants come in arrival order.
    #[test]
    fn waiters_are_granted_in_arrival_order_and_newcomers_queue_behind_them() {
        let locks = RangeLocks::new();
        let (a, b, c) = (Mailbox::new(), Mailbox::new(), Mailbox::new());
        let mut t = root();
        let holder = granted(locks.acquire(&mut t, BlockRange::new(0, 1), RangeMode::Exclusive, &a));
        let first = parked(locks.acquire(&mut t, BlockRange::new(0, 4), RangeMode::Exclusive, &b));
        // Blocks 2..4 have no holder, but the parked exclusive request covers them: a write
        // there must not overtake it.
        let second = parked(locks.acquire(&mut t, BlockRange::new(2, 2), RangeMode::Shared, &c));
        // Unrelated blocks are not held up by the queue.
        let free = granted(locks.acquire(&mut t, BlockRange::new(4, 4), RangeMode::Shared, &c));
        locks.release(&mut t, free);
        assert_eq!(c.take(), None);
        locks.release(&mut t, holder);
        let g1 = b.take().expect("first granted");
        assert_eq!(g1.wait_id(), first);
        assert_eq!(c.take(), None, "second still behind first");
        locks.release(&mut t, g1);
        let g2 = c.take().expect("second granted");
        assert_eq!(g2.wait_id(), second);
        locks.release(&mut t, g2);
        assert_eq!(locks.counts(&mut t), (0, 0));
    }

    #[test]
    fn several_non_conflicting_waiters_are_granted_by_one_release() {
        let locks = RangeLocks::new();
        let mb = Mailbox::new();
        let mut t = root();
        let caw = granted(locks.acquire(&mut t, BlockRange::new(0, 10), RangeMode::Exclusive, &mb));
        let ids: Vec<WaitId> = (0..3)
            .map(|i| parked(locks.acquire(&mut t, BlockRange::new(i * 3, 3), RangeMode::Shared, &mb)))
            .collect();
        locks.release(&mut t, caw);
        let got: Vec<RangeGrant> = std::iter::from_fn(|| mb.take()).collect();
        assert_eq!(got.iter().map(RangeGrant::wait_id).collect::<Vec<_>>(), ids);
        for g in got {
            locks.release(&mut t, g);
        }
        assert_eq!(locks.counts(&mut t), (0, 0));
    }

    #[test]
    fn the_mailbox_eventfd_is_readable_after_a_delivery_until_cleared() {
        let locks = RangeLocks::new();
        let mb = Mailbox::new();
        let fd = mb.wake_fd().expect("eventfd");
        let readable =
            || scst_accel_hal::fdio::poll_readable(&[fd], std::time::Duration::ZERO).expect("poll")[0];
        let mut t = root();
        let g = granted(locks.acquire(&mut t, BlockRange::new(0, 1), RangeMode::Exclusive, &mb));
        let _w = parked(locks.acquire(&mut t, BlockRange::new(0, 1), RangeMode::Exclusive, &mb));
        assert!(!readable());
        locks.release(&mut t, g);
        assert!(readable(), "a grant wakes the worker");
        mb.clear_wake();
        assert!(!readable());
        let g = mb.take().expect("grant");
        locks.release(&mut t, g);
    }

    /// A worker's teardown cancels its parked requests: the wait list is left empty, the
    /// waiters queued behind a cancelled one get their turn, and a request granted before the
    /// cancel is reported so its grant (in the mailbox) is released.
    #[test]
    fn teardown_cancels_parked_requests_and_drains_the_wait_list() {
        let locks = RangeLocks::new();
        let (ours, theirs) = (Mailbox::new(), Mailbox::new());
        let mut t = root();
        let holder = granted(locks.acquire(&mut t, BlockRange::new(0, 2), RangeMode::Shared, &theirs));
        let mine = parked(locks.acquire(&mut t, BlockRange::new(0, 4), RangeMode::Exclusive, &ours));
        let behind = parked(locks.acquire(&mut t, BlockRange::new(3, 1), RangeMode::Shared, &theirs));
        assert_eq!(locks.counts(&mut t), (1, 2));
        assert!(locks.cancel(&mut t, mine));
        // Block 3 was blocked only by the cancelled request: granted now.
        let g = theirs.take().expect("granted after the cancel");
        assert_eq!(g.wait_id(), behind);
        assert!(!locks.cancel(&mut t, behind), "already granted: not in the list");
        assert_eq!(ours.take(), None, "a cancelled request gets no grant");
        locks.release(&mut t, g);
        locks.release(&mut t, holder);
        assert_eq!(locks.counts(&mut t), (0, 0), "nothing held, nobody waiting");
    }

    /// Many threads contending for one block: every exclusive holder is alone in it (a counter
    /// of holders never exceeds one), and every request is granted exactly once.
    #[test]
    fn threads_contending_for_one_block_hold_it_one_at_a_time() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering;
        let locks = Arc::new(RangeLocks::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside) = (Arc::clone(&locks), Arc::clone(&inside));
                std::thread::spawn(move || {
                    let mb = Mailbox::new();
                    let mut t = root();
                    for _ in 0..200 {
                        let g = match locks.acquire(&mut t, BlockRange::new(5, 1), RangeMode::Exclusive, &mb)
                        {
                            Acquire::Granted(g) => g,
                            Acquire::Parked(id) => loop {
                                // The grant arrives once the holder releases (no lock held here).
                                if let Some(g) = mb.take() {
                                    assert_eq!(g.wait_id(), id);
                                    break g;
                                }
                                std::thread::yield_now();
                            },
                        };
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        locks.release(&mut t, g);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("thread");
        }
        assert_eq!(locks.counts(&mut root()), (0, 0));
    }
}
