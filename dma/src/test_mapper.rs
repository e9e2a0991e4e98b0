//! A recording [`DmaMapper`] for the crate's tests: it keeps a ledger of live mappings, refuses
//! overlaps and unaligned ranges as a real IOMMU does, and records every unmap that does not
//! match a live map exactly, so tests can assert "no leak, no stray unmap".
#![allow(unsafe_code)] // UNSAFETY: implements the unsafe `DmaMapper::map` (it only records).

use scst_accel_hal::DmaMapper;
use scst_accel_hal::HalError;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Ledger {
    /// iova → (host, len).
    live: BTreeMap<u64, (u64, u64)>,
    maps: u64,
    unmaps: u64,
    bad_unmaps: u64,
}

/// The fake IOMMU domain.
#[derive(Debug, Default)]
pub struct LedgerMapper {
    ledger: Mutex<Ledger>,
    /// When set, `map` fails with ENOMEM (RLIMIT_MEMLOCK reached).
    pub fail_maps: AtomicBool,
    /// When set, `unmap` fails with EIO (after checking the range).
    pub fail_unmaps: AtomicBool,
}

fn err(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

impl LedgerMapper {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live mappings: (iova, host, len).
    pub fn live(&self) -> Vec<(u64, u64, u64)> {
        self.ledger().live.iter().map(|(&i, &(h, l))| (i, h, l)).collect()
    }

    /// Bytes currently mapped.
    pub fn live_bytes(&self) -> u64 {
        self.ledger().live.values().map(|&(_, l)| l).sum()
    }

    /// (maps, unmaps, unmaps that matched no live mapping).
    pub fn counts(&self) -> (u64, u64, u64) {
        let l = self.ledger();
        (l.maps, l.unmaps, l.bad_unmaps)
    }
}

// SAFETY: it only records: no device reaches the memory it is asked to map.
unsafe impl DmaMapper for LedgerMapper {
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError> {
        let fail = |source| HalError::Map {
            device: "ledger".into(),
            iova,
            len,
            source,
        };
        if self.fail_maps.load(Ordering::Relaxed) {
            return Err(fail(err(libc::ENOMEM)));
        }
        let page = crate::PAGE_SIZE as u64;
        let aligned = [iova, host, len].iter().all(|v| v.is_multiple_of(page));
        if len == 0 || iova == 0 || !aligned {
            return Err(fail(err(libc::EINVAL)));
        }
        let mut l = self.ledger();
        let overlaps = l
            .live
            .range(..iova + len)
            .next_back()
            .is_some_and(|(&s, &(_, sl))| s + sl > iova);
        if overlaps {
            return Err(fail(err(libc::EEXIST)));
        }
        l.live.insert(iova, (host, len));
        l.maps += 1;
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError> {
        let mut l = self.ledger();
        if l.live.get(&iova).map(|&(_, sl)| sl) != Some(len) {
            // As every backend answers a range that is not one whole mapping.
            l.bad_unmaps += 1;
            return Err(HalError::NotOneMapping {
                device: "ledger".into(),
                iova,
                len,
            });
        }
        if self.fail_unmaps.load(Ordering::Relaxed) {
            return Err(HalError::Unmap {
                device: "ledger".into(),
                iova,
                len,
                source: err(libc::EIO),
            });
        }
        l.live.remove(&iova);
        l.unmaps += 1;
        Ok(())
    }
}
