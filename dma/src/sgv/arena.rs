//! SGV arenas (issue 13 item 3, docs/design/sgv-arenas.md): an arena is one large region,
//! mapped on the device once, serving one size class cut into equal chunks; each pool buffer
//! of that class is a [`PageBuffer`] view of one chunk. A [`ChunkMap`] says which chunks are
//! handed out; [`Arenas`] is the pool's set of arenas per class (kept under the pool's
//! `sgv.pool` lock with the shared free lists). Equal chunks keep a free O(1) and need no
//! coalescing.

use super::SGV_CLASSES;
use crate::DmaRegion;
use crate::PageBuffer;
use std::sync::Arc;

/// A chunk returned that was not handed out: a bookkeeping bug, reported instead of corrupting
/// the map (a double free would hand one range to two buffers).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ChunkError {
    #[error("chunk {index} is out of range (the arena has {chunks})")]
    OutOfRange { index: usize, chunks: usize },
    #[error("chunk {0} returned but not handed out")]
    NotHandedOut(usize),
    #[error("chunk {index} returned to an arena of class {class} the pool does not hold")]
    UnknownArena { class: u8, index: usize },
}

/// One arena: a region carved into `chunks` chunks of `chunk_len` bytes, mapped on the device
/// as one range at `iova` (host-only pools: not mapped). While the IOMMU mapping lives, the
/// pool holds an `Arc` of it, so its memory outlives the mapping.
#[derive(Debug)]
pub(super) struct Arena {
    region: Arc<DmaRegion>,
    /// The device address of the first chunk, `None` for a host-only pool.
    iova: Option<u64>,
    class: u8,
    chunk_len: usize,
    chunks: usize,
}

impl Arena {
    /// An arena of `region` cut into as many `chunk_len` chunks as fit, mapped at `iova`.
    pub(super) fn new(region: DmaRegion, iova: Option<u64>, class: u8, chunk_len: usize) -> Self {
        let chunks = region.len() / chunk_len;
        Self {
            region: Arc::new(region),
            iova,
            class,
            chunk_len,
            chunks,
        }
    }

    /// How many chunks of `chunk_len` a region of `region_len` bytes holds: the length mapped
    /// is `chunks * chunk_len` (a huge-page region may be longer than what was asked).
    pub(super) fn mapped_len_of(region_len: usize, chunk_len: usize) -> u64 {
        ((region_len / chunk_len) * chunk_len) as u64
    }

    /// The bytes mapped on the device (or carved, for a host-only pool).
    pub(super) fn mapped_len(&self) -> u64 {
        (self.chunks * self.chunk_len) as u64
    }

    pub(super) fn iova(&self) -> Option<u64> {
        self.iova
    }

    pub(super) fn addr(&self) -> u64 {
        self.region.addr()
    }

    /// Chunk `index` as a buffer view and its device address (arena IOVA + offset).
    ///
    /// # Panics
    /// If `index` is not a chunk of this arena (the pool's bookkeeping handed it out).
    pub(super) fn chunk(&self, index: usize) -> (PageBuffer, Option<u64>) {
        assert!(
            index < self.chunks,
            "chunk {index} of an arena of {}",
            self.chunks
        );
        let offset = index * self.chunk_len;
        let pages = PageBuffer::view(self.region.clone(), offset, self.chunk_len);
        (pages, self.iova.map(|base| base + offset as u64))
    }
}

/// One handed-out (or cached) chunk: which arena, which chunk. Holding it keeps the arena,
/// hence its memory, alive.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) arena: Arc<Arena>,
    pub(super) index: usize,
}

/// An arena in the pool's set, with its chunk map.
#[derive(Debug)]
struct Carved {
    arena: Arc<Arena>,
    map: ChunkMap,
}

/// The pool's arenas, per class. Lives under the `sgv.pool` lock with the shared free lists.
#[derive(Debug, Default)]
pub(super) struct Arenas([Vec<Carved>; SGV_CLASSES]);

impl Arenas {
    /// A free chunk of `class` from the fullest arena that has one, or `None` when every arena
    /// of the class is full (the caller maps a new one). Fullest first packs use into few
    /// arenas, so the others drain and can be unmapped when their buffers are evicted.
    pub(super) fn take(&mut self, class: u8) -> Option<Chunk> {
        let carved = self
            .0
            .get_mut(usize::from(class))?
            .iter_mut()
            .filter(|c| c.map.used() < c.map.chunks())
            .max_by_key(|c| c.map.used())?;
        let index = carved.map.take()?;
        Some(Chunk {
            arena: carved.arena.clone(),
            index,
        })
    }

    /// Add a newly mapped arena and take its first chunk.
    pub(super) fn insert(&mut self, arena: Arc<Arena>) -> Option<Chunk> {
        let mut map = ChunkMap::new(arena.chunks);
        let index = map.take()?;
        let list = self.0.get_mut(usize::from(arena.class))?;
        list.push(Carved {
            arena: arena.clone(),
            map,
        });
        Some(Chunk { arena, index })
    }

    /// Add a newly mapped arena with every chunk free (mapped ahead of the misses that will
    /// use it, `SgvPool::premap`).
    pub(super) fn insert_free(&mut self, arena: Arc<Arena>) {
        let map = ChunkMap::new(arena.chunks);
        if let Some(list) = self.0.get_mut(usize::from(arena.class)) {
            list.push(Carved { arena, map });
        }
    }

    /// Free chunks and arena bytes of `class`.
    pub(super) fn room(&self, class: u8) -> (usize, u64) {
        self.0.get(usize::from(class)).map_or((0, 0), |list| {
            list.iter().fold((0, 0), |(free, bytes), c| {
                (free + c.map.chunks() - c.map.used(), bytes + c.arena.mapped_len())
            })
        })
    }

    /// Take every arena with no chunk in use out of the set (a flush unmaps them; only
    /// pre-mapped arenas that were never used can be found so, as an arena leaves the set the
    /// moment its last chunk comes back).
    pub(super) fn take_unused(&mut self) -> Vec<Arc<Arena>> {
        let mut unused = Vec::new();
        for list in &mut self.0 {
            let mut i = 0;
            while i < list.len() {
                if list[i].map.used() == 0 {
                    unused.push(list.swap_remove(i).arena);
                } else {
                    i += 1;
                }
            }
        }
        unused
    }

    /// Return `chunk`. `Ok(Some(arena))` when its arena is now wholly free: it has left the
    /// set and the caller unmaps it (with no lock held).
    pub(super) fn give(&mut self, chunk: &Chunk) -> Result<Option<Arc<Arena>>, ChunkError> {
        let class = chunk.arena.class;
        let unknown = ChunkError::UnknownArena {
            class,
            index: chunk.index,
        };
        let list = self
            .0
            .get_mut(usize::from(class))
            .ok_or_else(|| unknown.clone())?;
        let at = list
            .iter()
            .position(|c| Arc::ptr_eq(&c.arena, &chunk.arena))
            .ok_or(unknown)?;
        if !list[at].map.give(chunk.index)? {
            return Ok(None);
        }
        Ok(Some(list.swap_remove(at).arena))
    }

    /// Arenas in the set.
    pub(super) fn count(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    /// Arenas per class.
    #[cfg(test)]
    pub(super) fn per_class(&self) -> [usize; SGV_CLASSES] {
        std::array::from_fn(|class| self.0[class].len())
    }

    /// Bytes of all chunks handed out, every arena (the pool's accounting tests check it
    /// against the in-use and cached byte counters).
    #[cfg(test)]
    pub(super) fn carved_bytes(&self) -> u64 {
        self.0
            .iter()
            .flatten()
            .map(|c| (c.map.used() * c.arena.chunk_len) as u64)
            .sum()
    }
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

    /// Chunks in all.
    pub(super) fn chunks(&self) -> usize {
        self.chunks
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

    fn arena(class: u8, chunks: usize) -> Arc<Arena> {
        let chunk_len = crate::PAGE_SIZE << class;
        let region = DmaRegion::new(chunks * chunk_len).expect("region");
        Arc::new(Arena::new(region, Some(0x10_0000), class, chunk_len))
    }

    #[test]
    fn chunks_are_views_at_arena_offsets() {
        let a = arena(1, 4);
        let (pages, iova) = a.chunk(3);
        assert_eq!(pages.len(), 8192);
        assert_eq!(pages.addr(), a.addr() + 3 * 8192);
        assert_eq!(iova, Some(0x10_0000 + 3 * 8192));
        assert_eq!(a.mapped_len(), 4 * 8192);
        pages.write_at(8188, b"tail");
    }

    #[test]
    fn takes_from_the_fullest_arena_and_hands_back_an_emptied_one() {
        let mut set = Arenas::default();
        let (a, b) = (arena(0, 4), arena(0, 4));
        let a0 = set.insert(a.clone()).expect("a0");
        let a1 = set.take(0).expect("a1");
        let b0 = set.insert(b.clone()).expect("b0");
        let a2 = set.take(0).expect("from a (2 used) rather than b (1 used)");
        assert!(Arc::ptr_eq(&a2.arena, &a));
        let emptied = set.give(&b0).expect("b0 was handed out");
        assert!(
            emptied.is_some_and(|gone| Arc::ptr_eq(&gone, &b)),
            "b's only chunk back: b leaves the set"
        );
        assert_eq!(set.count(), 1);
        for c in [&a0, &a1] {
            assert_eq!(set.give(c).map(|o| o.is_some()), Ok(false));
        }
        assert_eq!(
            set.give(&a1).map(|o| o.is_some()),
            Err(ChunkError::NotHandedOut(a1.index)),
            "double free refused"
        );
        assert_eq!(
            set.give(&a2).map(|o| o.is_some()),
            Ok(true),
            "last chunk: the arena leaves"
        );
        assert_eq!(set.count(), 0);
        assert!(matches!(
            set.give(&a2),
            Err(ChunkError::UnknownArena { class: 0, .. })
        ));
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
