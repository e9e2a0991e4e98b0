//! Block stamps: every logical block written by a workload carries its LBA and a write
//! generation, and the rest of the block is a pattern derived from both, so a read can tell a
//! misplaced block (wrong LBA), a lost write (old generation) and corruption (pattern) apart.

/// Magic in every stamped block ("SCAC").
const MAGIC: u32 = 0x5343_4143;

/// Generation of a block never written by this workload: expected to read as zeroes.
pub const GEN_ZERO: u32 = 0;
/// Generation of a block whose content is unknown (a write to it failed): not verified.
pub const GEN_UNKNOWN: u32 = u32::MAX;

/// What is wrong with a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The block carries another LBA.
    WrongLba { found: u64 },
    /// The block carries another generation (a lost or misordered write).
    WrongGeneration { found: u32 },
    /// Header right, body corrupt at this byte offset.
    Corrupt { offset: usize },
    /// Expected zeroes, found data at this byte offset.
    NotZero { offset: usize },
}

/// The multiplier of the body pattern.
const PATTERN_MUL: u64 = 0xBF58_476D_1CE4_E5B9;

fn seed(lba: u64, generation: u32) -> u64 {
    lba.rotate_left(17) ^ (u64::from(generation).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Body word `index` of the stamp of (`lba`, `generation`): the definition of the pattern.
fn word(lba: u64, generation: u32, index: usize) -> u64 {
    (seed(lba, generation) ^ index as u64).wrapping_mul(PATTERN_MUL)
}

/// Words of one 64-byte group of a body.
const GROUP_WORDS: usize = 8;

/// The body words of one stamp a group of 8 at a time: the values of [`word`] with one
/// multiplication per group instead of one per word (the verifier reads every byte the bench
/// moves). For `index = 8g + k` (`k < 8`), `seed ^ index` is the sum of `(seed ^ 8g) & !7`
/// and `(seed & 7) ^ k`, which share no bit, and multiplication distributes over a sum modulo
/// 2^64: a word is the group's product plus one of eight products fixed per block.
struct Pattern {
    seed: u64,
    low: [u64; GROUP_WORDS],
}

impl Pattern {
    fn new(lba: u64, generation: u32) -> Self {
        let seed = seed(lba, generation);
        let low = std::array::from_fn(|k| ((seed & 7) ^ k as u64).wrapping_mul(PATTERN_MUL));
        Self {
            seed,
            // Opaque to the optimizer, which otherwise folds each sum back into one
            // multiplication per word (it knows how `low` was made).
            low: std::hint::black_box(low),
        }
    }

    /// Words `8g..8g + 8`.
    #[inline]
    fn group(&self, g: usize) -> [u64; GROUP_WORDS] {
        let high = ((self.seed ^ (GROUP_WORDS * g) as u64) & !7).wrapping_mul(PATTERN_MUL);
        std::array::from_fn(|k| high.wrapping_add(self.low[k]))
    }
}

fn le_word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

/// Fill `block` (one logical block) with the stamp of (`lba`, `generation`).
pub fn stamp(block: &mut [u8], lba: u64, generation: u32) {
    block[..8].copy_from_slice(&lba.to_le_bytes());
    block[8..12].copy_from_slice(&generation.to_le_bytes());
    block[12..16].copy_from_slice(&MAGIC.to_le_bytes());
    let pattern = Pattern::new(lba, generation);
    let body = &mut block[16..];
    let index = GROUP_WORDS * (body.len() / (8 * GROUP_WORDS));
    let mut groups = body.chunks_exact_mut(8 * GROUP_WORDS);
    for (g, group) in groups.by_ref().enumerate() {
        for (chunk, w) in group.chunks_exact_mut(8).zip(pattern.group(g)) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }
    for (i, chunk) in groups.into_remainder().chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(lba, generation, index + i).to_le_bytes());
    }
}

/// Check one logical block against the expected (`lba`, `generation`).
pub fn verify(block: &[u8], lba: u64, generation: u32) -> Result<(), Mismatch> {
    if generation == GEN_UNKNOWN {
        return Ok(());
    }
    if generation == GEN_ZERO {
        return match block.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(offset) => Err(Mismatch::NotZero { offset }),
        };
    }
    let found_lba = le_word(&block[..8]);
    if found_lba != lba {
        return Err(Mismatch::WrongLba { found: found_lba });
    }
    let found_gen = u32::from_le_bytes(block[8..12].try_into().unwrap_or([0; 4]));
    if found_gen != generation {
        return Err(Mismatch::WrongGeneration { found: found_gen });
    }
    if block[12..16] != MAGIC.to_le_bytes() {
        return Err(Mismatch::Corrupt { offset: 12 });
    }
    // The body as one branch-free fold, a group of words at a time (the compiler vectorizes
    // it), and only on a difference the walk that finds its first byte: the bench verifies
    // every block it reads.
    let body = &block[16..];
    let pattern = Pattern::new(lba, generation);
    let groups = body.chunks_exact(8 * GROUP_WORDS);
    let index = GROUP_WORDS * (body.len() / (8 * GROUP_WORDS));
    let tail = groups.remainder();
    // One accumulator per word of a group: folded once at the end, not once per group.
    let mut lanes = [0u64; GROUP_WORDS];
    for (g, group) in groups.enumerate() {
        let expected = pattern.group(g);
        for (k, chunk) in group.chunks_exact(8).enumerate() {
            lanes[k] |= le_word(chunk) ^ expected[k];
        }
    }
    let mut differs = lanes.iter().fold(0, |acc, lane| acc | lane);
    for (i, chunk) in tail.chunks_exact(8).enumerate() {
        differs |= le_word(chunk) ^ word(lba, generation, index + i);
    }
    if differs == 0 {
        return Ok(());
    }
    let offset = body
        .chunks_exact(8)
        .enumerate()
        .position(|(i, chunk)| chunk != word(lba, generation, i).to_le_bytes())
        .map_or(16, |i| 16 + i * 8);
    Err(Mismatch::Corrupt { offset })
}

/// Check one logical block at `lba` with no memory of what was written there: it is either
/// never written (all zeroes: `Ok(None)`) or a whole stamp of its own LBA from some earlier run
/// (`Ok(Some(generation))`). Every byte of a stamp follows from its (LBA, generation) header,
/// so the body is its own checksum: a block written at another LBA (misplaced) fails on the
/// header, a torn one (part of another write, or zeroes, inside it) on the body, and the magic
/// tells a stamp from foreign data.
pub fn check_any(block: &[u8], lba: u64) -> Result<Option<u32>, Mismatch> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let found_gen = u32::from_le_bytes(block[8..12].try_into().unwrap_or([0; 4]));
    if found_gen == GEN_ZERO || found_gen == GEN_UNKNOWN {
        // Never written by a workload: no generation is zero or unknown on the medium.
        return Err(Mismatch::WrongGeneration { found: found_gen });
    }
    verify(block, lba, found_gen).map(|()| Some(found_gen))
}

/// xorshift64*: a small, seedable generator for reproducible workloads.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x2545_F491_4F6C_DD1D | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_verify_and_mismatches_are_classified() {
        let mut block = vec![0u8; 512];
        assert_eq!(verify(&block, 5, GEN_ZERO), Ok(()));
        stamp(&mut block, 5, 3);
        assert_eq!(verify(&block, 5, 3), Ok(()));
        assert_eq!(verify(&block, 6, 3), Err(Mismatch::WrongLba { found: 5 }));
        assert_eq!(verify(&block, 5, 4), Err(Mismatch::WrongGeneration { found: 3 }));
        assert_eq!(verify(&block, 5, GEN_ZERO), Err(Mismatch::NotZero { offset: 0 }));
        block[300] ^= 1;
        assert_eq!(verify(&block, 5, 3), Err(Mismatch::Corrupt { offset: 296 }));
        block[511] ^= 0x80;
        assert_eq!(
            verify(&block, 5, 3),
            Err(Mismatch::Corrupt { offset: 296 }),
            "the first corrupt word"
        );
        block[300] ^= 1;
        assert_eq!(verify(&block, 5, 3), Err(Mismatch::Corrupt { offset: 504 }));
        assert_eq!(verify(&block, 5, GEN_UNKNOWN), Ok(()));
    }

    /// Without knowing what was written: zeroes and whole stamps of the block's own LBA pass;
    /// a misplaced, torn, half-zeroed or foreign block fails.
    #[test]
    fn blocks_check_without_memory_of_the_writes() {
        let mut block = vec![0u8; 512];
        assert_eq!(check_any(&block, 9), Ok(None));
        stamp(&mut block, 9, 7);
        assert_eq!(check_any(&block, 9), Ok(Some(7)));
        assert_eq!(check_any(&block, 10), Err(Mismatch::WrongLba { found: 9 }));
        // Torn: the second half from another generation of the same LBA.
        let mut other = vec![0u8; 512];
        stamp(&mut other, 9, 8);
        let mut torn = block.clone();
        torn[256..].copy_from_slice(&other[256..]);
        assert_eq!(check_any(&torn, 9), Err(Mismatch::Corrupt { offset: 256 }));
        // Torn with zeroes (a write that did not complete).
        let mut half = block.clone();
        half[256..].fill(0);
        assert_eq!(check_any(&half, 9), Err(Mismatch::Corrupt { offset: 256 }));
        // Foreign data, and a zeroed header over a stamped body.
        let foreign = vec![0x41u8; 512];
        assert!(check_any(&foreign, 0x4141_4141_4141_4141).is_err());
        let mut headless = block.clone();
        headless[..16].fill(0);
        assert_eq!(
            check_any(&headless, 9),
            Err(Mismatch::WrongGeneration { found: 0 })
        );
    }

    /// The grouped pattern is the word definition, for any seed's low bits and for groups
    /// past 512 words (blocks above 4 KiB); a stamp's bytes are the definition's, and the
    /// verifier checks the words after the last whole group too.
    #[test]
    fn pattern_groups_are_the_words_of_the_definition() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let (lba, generation) = (rng.next_u64(), rng.next_u64() as u32);
            let pattern = Pattern::new(lba, generation);
            for g in 0..80 {
                for (k, w) in pattern.group(g).iter().enumerate() {
                    assert_eq!(*w, word(lba, generation, 8 * g + k), "lba {lba} gen {generation}");
                }
            }
        }
        for size in [512usize, 520, 4096, 4160, 8192] {
            let mut block = vec![0u8; size];
            stamp(&mut block, 11, 5);
            for (i, chunk) in block[16..].chunks_exact(8).enumerate() {
                assert_eq!(le_word(chunk), word(11, 5, i), "size {size} word {i}");
            }
            assert_eq!(verify(&block, 11, 5), Ok(()));
            let last_word = 16 + (size - 16) / 8 * 8 - 8;
            block[last_word + 7] ^= 4;
            assert_eq!(
                verify(&block, 11, 5),
                Err(Mismatch::Corrupt { offset: last_word }),
                "size {size}: the last whole word is checked"
            );
        }
    }

    #[test]
    fn rng_is_reproducible_and_bounded() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
