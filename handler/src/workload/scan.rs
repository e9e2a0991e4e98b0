//! Before a run over a medium that outlives the process (a file, a block device): read every
//! block of the region and check that each is either never written (zeroes) or a whole stamp of
//! its own LBA left by an earlier run ([`stamp::check_any`]), so a second run proves the first
//! one's data survived the process, and a torn, misplaced or corrupted block is reported.

use super::driver::rw_cdb;
use super::stamp;
use super::Geometry;
use crate::abi::queue_type;
use crate::abi::sam_status;
use crate::loopback::ScsiRequest;
use crate::loopback::Session;
use std::collections::HashMap;
use std::time::Duration;

/// Problems kept in words.
const MAX_ERRORS_KEPT: usize = 10;

/// What the scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Blocks read and checked.
    pub blocks_checked: u64,
    /// Of those, blocks carrying a valid stamp of their own LBA (the rest were zeroes).
    pub stamped: u64,
    /// Blocks that are neither: corrupt, torn, misplaced, foreign, or unreadable (a READ that
    /// failed or was not answered counts each of its blocks).
    pub errors: u64,
    /// The first few problems, in words.
    pub first_errors: Vec<String>,
}

impl ScanReport {
    fn error(&mut self, blocks: u64, message: String) {
        log::warn!("pre-existing data: {message}");
        self.errors += blocks;
        if self.first_errors.len() < MAX_ERRORS_KEPT {
            self.first_errors.push(message);
        }
    }
}

/// Read blocks `0..blocks` of `geometry` through `session`, `chunk_blocks` per READ with up to
/// `depth` in flight, and check each block. Every wait is bounded by `timeout`; commands still
/// unanswered then count as errors and end the scan.
pub fn scan(
    session: &Session,
    geometry: Geometry,
    blocks: u64,
    chunk_blocks: u32,
    depth: usize,
    timeout: Duration,
) -> ScanReport {
    let mut report = ScanReport::default();
    let bs = geometry.block_size as usize;
    let blocks = blocks.min(geometry.num_blocks);
    let chunk = u64::from(chunk_blocks.max(1));
    // Tags of their own, far from the workload's (each driver's start at index << 48).
    let mut next_tag = 0xFFFF_0000_0000_0000u64;
    let mut inflight: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut lba = 0u64;
    loop {
        while inflight.len() < depth.max(1) && lba < blocks {
            let n = chunk.min(blocks - lba) as u32;
            let request = ScsiRequest {
                tag: next_tag,
                cdb: rw_cdb(false, lba, n),
                data_out: Vec::new(),
                expected_data_in: n * geometry.block_size,
                queue_type: queue_type::SIMPLE,
                timeout_secs: 30,
            };
            if let Err(e) = session.submit(request) {
                report.error(blocks - lba, format!("LBA {lba}: READ not submitted: {e}"));
                lba = blocks;
                break;
            }
            inflight.insert(next_tag, (lba, n));
            next_tag += 1;
            lba += u64::from(n);
        }
        if inflight.is_empty() {
            break;
        }
        let c = match scst_accel_hal::locks::blocking("recv_timeout", || {
            session.completions().recv_timeout(timeout)
        }) {
            Ok(c) => c,
            Err(e) => {
                let left: u64 = inflight.values().map(|&(_, n)| u64::from(n)).sum();
                report.error(
                    left + (blocks - lba),
                    format!("{} READs unanswered after {timeout:?}: {e}", inflight.len()),
                );
                break;
            }
        };
        let Some((start, n)) = inflight.remove(&c.tag) else {
            report.error(0, format!("completion for unknown tag {:#x}", c.tag));
            continue;
        };
        if c.status != sam_status::GOOD || c.data_in.len() != n as usize * bs {
            let sense: String = c.sense.iter().take(18).map(|b| format!("{b:02x}")).collect();
            report.error(
                u64::from(n),
                format!(
                    "LBA {start}: READ of {n} blocks ended with status {:#04x}, {} bytes, sense {sense}",
                    c.status,
                    c.data_in.len()
                ),
            );
            continue;
        }
        for (i, block) in c.data_in.chunks_exact(bs).enumerate() {
            let at = start + i as u64;
            report.blocks_checked += 1;
            match stamp::check_any(block, at) {
                Ok(None) => {}
                Ok(Some(_)) => report.stamped += 1,
                Err(m) => report.error(
                    1,
                    format!("LBA {at}: {m:?} (neither zeroes nor a stamp of LBA {at})"),
                ),
            }
        }
    }
    report
}
