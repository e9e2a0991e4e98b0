//! FLUSH_CACHE when the buffer-memory cap refuses an allocation.
//!
//! SCST keeps the buffers of finished commands cached (memory reuse, spec §4) and gives them
//! back only on its purge (every 60 s by default, up to twice that before a buffer goes) or on
//! FLUSH_CACHE. A buffer of another size cannot be served from that cache, so once the cap is
//! full of cached buffers every new size is answered BUSY until the purge runs: a minute of
//! BUSY for a workload that changes its transfer size. The worker that meets the refusal asks
//! for a flush here instead: at most one at a time, at most one per [`MIN_INTERVAL`], on a
//! thread of its own (FLUSH_CACHE suspends all of SCST's activity until every command in
//! flight is answered, so a worker, which must keep answering, never calls it), and never once
//! the teardown has closed intake (the teardown asks for no FLUSH_CACHE: its pool is released
//! after the workers leave, and SCST's release frees what its cache still holds).

use crate::transport::ScstUserFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The shortest time between two flushes asked for by refusals.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// State of the refusal-driven flushes of one frontend.
#[derive(Debug)]
pub(crate) struct CapFlush {
    epoch: Instant,
    /// A flush thread is running.
    running: Arc<AtomicBool>,
    /// When the last flush started, in ms since `epoch` (`u64::MAX`: never).
    last_ms: AtomicU64,
    /// Flushes started.
    started: AtomicU64,
    /// FLUSH_CACHE calls in the kernel that were asked for elsewhere (SIGHUP's,
    /// [`Frontend::cache_flusher`](super::Frontend::cache_flusher)): the teardown waits for
    /// them as for its own.
    others: Arc<AtomicU32>,
}

/// One FLUSH_CACHE asked for outside the cap's refusals, counted while it may be in the kernel.
#[derive(Debug)]
pub(crate) struct OtherFlush(Arc<AtomicU32>);

impl Drop for OtherFlush {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for CapFlush {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            running: Arc::new(AtomicBool::new(false)),
            last_ms: AtomicU64::new(u64::MAX),
            started: AtomicU64::new(0),
            others: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl CapFlush {
    /// An allocation was refused by the cap: start a flush unless one runs or one started less
    /// than [`MIN_INTERVAL`] ago. Never blocks.
    pub(crate) fn request(&self, fd: &Arc<dyn ScstUserFd>) {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now_ms.saturating_sub(last) < MIN_INTERVAL.as_millis() as u64 {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        let (fd, running) = (Arc::clone(fd), Arc::clone(&self.running));
        log::info!("buffer memory cap reached: asking SCST to return its cached buffers (FLUSH_CACHE)");
        let spawned = std::thread::Builder::new()
            .name("scst_cap_flush".into())
            .spawn(move || {
                if let Err(e) = fd.flush_cache() {
                    log::warn!("FLUSH_CACHE after the buffer cap refused an allocation: {e}");
                }
                running.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread for FLUSH_CACHE ({e}); SCST's purge will return the buffers");
            self.running.store(false, Ordering::Release);
        }
    }

    /// Count a FLUSH_CACHE asked for elsewhere until the returned guard drops.
    pub(crate) fn other(&self) -> OtherFlush {
        self.others.fetch_add(1, Ordering::AcqRel);
        OtherFlush(Arc::clone(&self.others))
    }

    /// Wait (bounded, polling) until no flush, started here or counted by
    /// [`CapFlush::other`], is in the kernel; whether none is.
    pub(crate) fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.running.load(Ordering::Acquire) || self.others.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            // A wait on the kernel: no lock held.
            scst_accel_hal::locks::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Flushes started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}
