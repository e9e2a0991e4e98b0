//! RLIMIT_MEMLOCK: the type1 IOMMU pins every page it maps and charges it to the process's
//! locked memory, so a DMA map fails with ENOMEM once the total exceeds the soft limit (unless
//! the process has CAP_IPC_LOCK, which root has). These helpers turn that into a message that
//! says how much to allow and where.

use std::io;

use super::error::VfioError;
use super::sys;

/// The soft RLIMIT_MEMLOCK of this process in bytes; `None` when unlimited.
///
/// # Errors
/// The errno of getrlimit(2).
pub fn memlock_limit() -> io::Result<Option<u64>> {
    sys::memlock_soft_limit()
}

/// Check that `needed` bytes (everything this process pins for DMA, mappings already made
/// included) fit under the soft RLIMIT_MEMLOCK.
///
/// # Errors
/// [`VfioError::MemlockLimit`] naming the value to set with `ulimit -l` or `LimitMEMLOCK=`;
/// [`VfioError::DeviceInfo`] if the limit cannot be read.
pub fn check_memlock(needed: u64) -> Result<(), VfioError> {
    let limit = memlock_limit().map_err(|source| VfioError::DeviceInfo {
        addr: "this process".into(),
        what: "getrlimit(RLIMIT_MEMLOCK)",
        source,
    })?;
    match memlock_shortfall(limit, needed) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The error to report when `needed` bytes exceed `limit` (`None`: unlimited), else `None`.
pub(crate) fn memlock_shortfall(limit: Option<u64>, needed: u64) -> Option<VfioError> {
    let limit = limit?;
    if needed <= limit {
        return None;
    }
    Some(VfioError::MemlockLimit {
        needed,
        limit,
        needed_kib: needed.div_ceil(1024),
    })
}

/// Explain an ENOMEM from VFIO_IOMMU_MAP_DMA: the memlock message when the limit is the cause,
/// else a note that it is not (then the kernel is short of memory or of IOMMU page tables).
pub(crate) fn explain_map_enomem(pinned_before: u64, len: u64) -> String {
    let needed = pinned_before.saturating_add(len);
    match memlock_limit() {
        Ok(limit) => match memlock_shortfall(limit, needed) {
            Some(e) => e.to_string(),
            None => format!(
                "DMA map of {len} bytes failed with ENOMEM although RLIMIT_MEMLOCK ({}) covers the \
                 {needed} bytes this device pins: other mlock()ed memory of the process counts too, \
                 else the kernel is out of memory",
                limit.map_or("unlimited".to_string(), |l| format!("{l} bytes"))
            ),
        },
        Err(e) => format!("DMA map failed with ENOMEM and RLIMIT_MEMLOCK cannot be read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_names_the_values_to_set() {
        let e = memlock_shortfall(Some(8 * 1024 * 1024), 64 * 1024 * 1024 + 1).expect("over the limit");
        let msg = e.to_string();
        assert!(msg.contains("pinning 67108865 bytes"), "{msg}");
        assert!(msg.contains("RLIMIT_MEMLOCK (8388608 bytes)"), "{msg}");
        // 64 MiB + 1 byte rounds up to 65537 KiB, the unit of `ulimit -l`.
        assert!(msg.contains("`ulimit -l 65537`"), "{msg}");
        assert!(msg.contains("`LimitMEMLOCK=65537K`"), "{msg}");
        assert!(msg.contains("CAP_IPC_LOCK"), "{msg}");
    }

    #[test]
    fn within_the_limit_or_unlimited_is_fine() {
        assert!(memlock_shortfall(Some(4096), 4096).is_none());
        assert!(memlock_shortfall(None, u64::MAX).is_none());
        assert!(memlock_shortfall(Some(4096), 4097).is_some());
    }

    #[test]
    fn check_memlock_agrees_with_the_process_limit() {
        let limit = memlock_limit().expect("getrlimit");
        assert!(check_memlock(0).is_ok());
        match limit {
            Some(l) => assert!(matches!(
                check_memlock(l.saturating_add(1)),
                Err(VfioError::MemlockLimit { limit, .. }) if limit == l
            )),
            None => assert!(check_memlock(u64::MAX).is_ok()),
        }
    }
}
