//! The hash map of integer-keyed tables on the command path: the worker's (commands in flight
//! by cmd_h, the buffer cache by address), the accelerator store's (requests by tag, device
//! requests by their own tag), the loopback kernel model's (ucmds by handle, commands by id,
//! live tags by session and tag, sessions, attaches and task management functions by handle,
//! SGV objects by id) and the workload driver's (commands in flight by tag). One multiply and
//! one shift per key instead of SipHash's rounds, which showed up at a few percent of a
//! command's CPU in each.
//!
//! SipHash defends against keys chosen to collide. Here the keys come from the kernel (cmd_h),
//! from our own allocators (buffer addresses, the model's handles and ids) and from the
//! initiator (tags, in the model); a table holds at most the commands in flight or the buffers
//! SCST holds: whoever chose colliding keys could only slow their own commands' lookups, never
//! corrupt them. (The real kernel's ucmd hash is a mask of the handle's low bits.)

use std::collections::HashMap;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::hash::Hasher;

/// A map keyed by integers ([`IntHasher`]).
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// A set of integers, or of tuples of them ([`IntHasher`]).
pub(crate) type IntSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

/// Fibonacci hashing of one integer, its high half folded into the low one (the table indexes
/// by the low bits; buffer addresses have their low 12 bits zero).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IntHasher(u64);

/// 2^64 / φ.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; correct for any other.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(FIBONACCI);
        self.0 = x ^ (x >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn page_aligned_addresses_and_sequential_handles_spread_over_the_low_bits() {
        let build = BuildHasherDefault::<IntHasher>::default();
        for keys in [
            (0..1024u64)
                .map(|i| 0x7f00_0000_0000 + i * 4096)
                .collect::<Vec<_>>(),
            (0..1024u64).collect(),
        ] {
            let mut buckets: Vec<u64> = keys.iter().map(|k| build.hash_one(k) & 1023).collect();
            buckets.sort_unstable();
            buckets.dedup();
            // A perfect spread would use all 1024; a hash that ignored the low bits, very few.
            assert!(buckets.len() > 500, "{} distinct buckets of 1024", buckets.len());
        }
        let mut map: IntMap<u32, u32> = IntMap::default();
        map.extend((0..100).map(|k| (k, k * 2)));
        assert!((0..100).all(|k| map[&k] == k * 2));
    }
}
