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
}
