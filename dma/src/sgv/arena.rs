//! Chunk bookkeeping of an SGV arena (issue 13 item 3, docs/design/sgv-arenas.md): an arena is
//! one large mapped region serving one size class, cut into equal chunks; this map says which
//! chunks are handed out. Equal chunks keep a free O(1) and need no coalescing.
//!
//! Not wired into the pool yet: the pool still maps each buffer on its own.
#![cfg_attr(not(test), allow(dead_code))] // WHY: used by tests only until the pool carves buffers from arenas.

/// A chunk returned that was not handed out: a bookkeeping bug, reported instead of corrupting
/// the map (a double free would hand one range to two buffers).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ChunkError {
    #[error("chunk {index} is out of range (the arena has {chunks})")]
    OutOfRange { index: usize, chunks: usize },
    #[error("chunk {0} returned but not handed out")]
    NotHandedOut(usize),
}

/// Which chunks of an arena are handed out: one bit per chunk, set while in use.
#[derive(Debug)]
pub(super) struct ChunkMap {
    words: Vec<u64>,
    chunks: usize,
    used: usize,
}

impl ChunkMap {
    /// A map of `chunks` chunks, all free.
    pub(super) fn new(chunks: usize) -> Self {
        Self {
            words: vec![0; chunks.div_ceil(64)],
            chunks,
            used: 0,
        }
    }

    /// Hand out the lowest free chunk (low first keeps an arena's use packed), or `None` when
    /// the arena is full.
    pub(super) fn take(&mut self) -> Option<usize> {
        if self.used == self.chunks {
            return None;
        }
        for (w, word) in self.words.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros() as usize;
                let index = w * 64 + bit;
                if index >= self.chunks {
                    return None;
                }
                *word |= 1 << bit;
                self.used += 1;
                return Some(index);
            }
        }
        None
    }

    /// Return chunk `index`. `Ok(true)` when the arena is now wholly free (it may be unmapped).
    pub(super) fn give(&mut self, index: usize) -> Result<bool, ChunkError> {
        if index >= self.chunks {
            return Err(ChunkError::OutOfRange {
                index,
                chunks: self.chunks,
            });
        }
        let (w, bit) = (index / 64, index % 64);
        if self.words[w] & (1 << bit) == 0 {
            return Err(ChunkError::NotHandedOut(index));
        }
        self.words[w] &= !(1 << bit);
        self.used -= 1;
        Ok(self.used == 0)
    }

    /// Chunks handed out.
    pub(super) fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn hands_out_every_chunk_once_then_refuses() {
        // 70 chunks: crosses a word boundary and leaves a partial last word.
        let mut map = ChunkMap::new(70);
        let taken: BTreeSet<usize> = std::iter::from_fn(|| map.take()).collect();
        assert_eq!(taken, (0..70).collect());
        assert_eq!(map.take(), None);
        assert_eq!(map.used(), 70);
    }

    #[test]
    fn reports_empty_on_last_return_and_rejects_double_free() {
        let mut map = ChunkMap::new(3);
        let (a, b) = (map.take().unwrap(), map.take().unwrap());
        assert_eq!(map.give(a), Ok(false));
        assert_eq!(map.give(a), Err(ChunkError::NotHandedOut(a)));
        assert_eq!(map.give(7), Err(ChunkError::OutOfRange { index: 7, chunks: 3 }));
        assert_eq!(map.give(b), Ok(true));
        assert_eq!(map.used(), 0);
    }

    proptest! {
        /// Against a model set: never hands out a chunk in use, frees exactly, reports empty
        /// exactly when nothing is in use.
        #[test]
        fn matches_a_set_model(chunks in 1usize..200, ops in proptest::collection::vec(any::<(bool, usize)>(), 0..400)) {
            let mut map = ChunkMap::new(chunks);
            let mut model = BTreeSet::new();
            for (take, pick) in ops {
                if take || model.is_empty() {
                    match map.take() {
                        Some(i) => { prop_assert!(i < chunks); prop_assert!(model.insert(i)); }
                        None => prop_assert_eq!(model.len(), chunks),
                    }
                } else {
                    let i = *model.iter().nth(pick % model.len()).unwrap();
                    model.remove(&i);
                    prop_assert_eq!(map.give(i), Ok(model.is_empty()));
                }
                prop_assert_eq!(map.used(), model.len());
            }
        }
    }
}
