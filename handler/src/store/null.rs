//! The null store: completes every request GOOD without touching its buffer or any medium.
//!
//! It exists to measure the handler alone (`scst-accel bench --layers handler`): with it, the
//! CPU a command costs is the frontend's and the SCSI engine's, not a store's copy. Nothing it
//! "reads" is real data, so it is never offered as a board a disk can be served from.

use super::Store;
use super::StoreCompletion;
use super::StoreError;
use super::StoreInfo;
use super::StoreQueue;
use super::StoreRequest;
use super::StoreStatus;
use super::StoreToken;
use std::os::fd::BorrowedFd;

/// A store of `num_blocks` blocks whose every request completes GOOD at once.
#[derive(Clone, Debug)]
pub struct NullStore {
    info: StoreInfo,
}

impl NullStore {
    /// `num_blocks` blocks of `block_size` bytes; at most `max_transfer_blocks` per request.
    pub fn new(block_size: u32, num_blocks: u64, max_transfer_blocks: u32) -> Self {
        Self {
            info: StoreInfo {
                block_size,
                num_blocks,
                physical_block_size: block_size,
                max_transfer_blocks,
                supports_unmap: false,
                unmap_granularity_blocks: None,
                unmapped_reads_zero: false,
                reports_lba_status: false,
                volatile_cache: false,
                rotational: Some(false),
                device_ids: None,
                // Nothing is stored, so nothing to copy: segments go back as leftovers.
                copy: super::CopyPath::None,
                compare_and_write_blocks: 0,
            },
        }
    }
}

impl Store for NullStore {
    fn info(&self) -> StoreInfo {
        self.info
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(NullQueue { done: Vec::new() }))
    }
}

/// Completes inside `submit`; `reap` hands the completions over.
struct NullQueue {
    done: Vec<StoreCompletion>,
}

impl StoreQueue for NullQueue {
    fn submit(
        &mut self,
        _token: &mut StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        self.done.extend(batch.drain(..).map(|req| StoreCompletion {
            tag: req.tag,
            status: StoreStatus::Good,
        }));
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOp;
    use scst_accel_hal::locks::LockToken;

    #[test]
    fn every_request_completes_good_in_order_without_a_buffer() {
        let store = NullStore::new(512, 1024, 256);
        assert_eq!(store.info().num_blocks, 1024);
        let mut queue = store.open_queue().unwrap();
        let mut batch: Vec<StoreRequest> = (0..3)
            .map(|tag| StoreRequest {
                tag,
                op: StoreOp::Read { lba: tag, blocks: 1 },
                buffer: None,
            })
            .collect();
        queue.submit(&mut LockToken::root(), &mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(queue.in_flight(), 3);
        let mut out = Vec::new();
        assert_eq!(queue.reap(&mut out), 3);
        assert_eq!(queue.in_flight(), 0);
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, [0, 1, 2]);
        assert!(out.iter().all(|c| c.status == StoreStatus::Good));
    }
}
