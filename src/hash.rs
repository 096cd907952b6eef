//! Stable hashing. Part of the ground floor: imports nothing of aggd.

/// FNV-1a, 64-bit (Fowler–Noll–Vo, the published offset basis `0xcbf29ce484222325` and
/// prime `0x100000001b3`): the stable hash that assigns output series to workers and
/// paths to tenant-limit slots. Stable across runs and builds, unlike `std`'s hasher.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The worker (of `workers`, at least 1) that owns the output series whose name hashes
/// ([`fnv1a64`]) to `hash`: `hash mod workers`. Every place that hands a series to a
/// worker (routing, cluster mode's owner) uses it, so a series always lands on one worker.
#[inline]
pub fn worker_of(hash: u64, workers: usize) -> usize {
    (hash % workers.max(1) as u64) as usize
}

/// The cluster shard (of `shards`, at least 1) of the output series whose name hashes
/// ([`fnv1a64`]) to `hash`: `hash mod shards` (`docs/cluster.md`). The publisher's
/// messages, the owners, the workers' fence and `aggd explain` use it.
#[inline]
pub fn shard_of(hash: u64, shards: u32) -> u32 {
    (hash % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_answers() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn workers_and_shards_are_the_hash_modulo_their_count() {
        let h = fnv1a64(b"sum.all");
        assert_eq!(worker_of(h, 3), (h % 3) as usize);
        assert_eq!(shard_of(h, 256), (h % 256) as u32);
        // A count of 0 is taken as 1, never a division by zero.
        assert_eq!((worker_of(h, 0), shard_of(h, 0)), (0, 0));
    }
}
