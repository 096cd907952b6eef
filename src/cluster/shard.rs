//! Shards, their desired owners, and what an owner has applied (pure; no IO).
//!
//! - An output series belongs to shard `fnv1a64(name) mod S` ([`shard_of`]): the hash the
//!   route cache already keeps in [`crate::route::SeriesKey::hash`].
//! - The desired owner of shard `k` is the live node with the highest
//!   `mix(fnv1a64(node) ^ k)` (rendezvous, or highest-random-weight, hashing; Thaler and
//!   Ravishankar 1998): every node computes the same answer from the same node list,
//!   shards spread evenly, and when a node joins or leaves only the shards it wins or held
//!   move.
//! - [`Applied`] is the set of journal records of one origin an owner has applied to one
//!   shard, as ranges, so a republished record is recognised and skipped.

use std::collections::BTreeMap;

use crate::hash::fnv1a64;

pub use crate::aggregate::gate::shard_of;

/// SplitMix64's finaliser (Steele, Lea and Flood 2014): spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The desired owner of `shard` among `nodes` (their ids), by rendezvous hashing; `None`
/// with no nodes. Ties (equal weights) go to the smaller id.
pub fn desired_owner<'a>(shard: u32, nodes: &[&'a str]) -> Option<&'a str> {
    nodes
        .iter()
        .map(|n| (mix(fnv1a64(n.as_bytes()) ^ u64::from(shard)), *n))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

/// Journal records applied, as disjoint inclusive ranges `start → end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    ranges: BTreeMap<u64, u64>,
}

impl Applied {
    /// Whether record `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, end)| *end >= seq)
    }

    /// Marks records `first..=last` applied, merging touching ranges.
    pub fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let (mut start, mut end) = (first, last);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|(_, e)| **e >= first.saturating_sub(1))
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Forgets every record below `seq` (the origin never sends them again).
    pub fn forget_below(&mut self, seq: u64) {
        let keep = self.ranges.split_off(&seq);
        if let Some((_, end)) = self.ranges.iter().next_back()
            && *end >= seq
        {
            let end = *end;
            self.ranges = keep;
            self.ranges.insert(seq, end);
            return;
        }
        self.ranges = keep;
    }

    /// Number of ranges held.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_shards_a_node_wins_or_held() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        let mut counts = std::collections::HashMap::new();
        let mut moved = 0;
        for k in 0..4096 {
            let before = desired_owner(k, &three).unwrap();
            let after = desired_owner(k, &four).unwrap();
            *counts.entry(before).or_insert(0) += 1;
            if before != after {
                assert_eq!(after, "d", "shard {k} moved between old nodes");
                moved += 1;
            }
            assert_eq!(desired_owner(k, &["c", "a", "b"]), Some(before));
        }
        // An even spread: each of 3 nodes gets a third, within 10 %.
        for n in three {
            let c = counts[n];
            assert!((1229..=1502).contains(&c), "{n} owns {c} of 4096");
        }
        // The newcomer takes about a quarter.
        assert!((900..=1150).contains(&moved), "{moved} shards moved");
        assert_eq!(desired_owner(1, &[]), None);
    }

    #[test]
    fn applied_ranges_merge_contain_and_forget() {
        let mut a = Applied::default();
        a.insert(10, 20);
        a.insert(30, 40);
        assert!(a.contains(10) && a.contains(20) && a.contains(35));
        assert!(!a.contains(9) && !a.contains(21) && !a.contains(41));
        a.insert(21, 29);
        assert_eq!(a.ranges(), 1);
        a.insert(50, 50);
        a.insert(5, 12);
        assert!(a.contains(5) && a.contains(50) && !a.contains(49));
        assert_eq!(a.ranges(), 2);
        a.forget_below(15);
        assert!(!a.contains(14) && a.contains(15) && a.contains(40));
        a.forget_below(45);
        assert!(!a.contains(40) && a.contains(50));
        assert_eq!(a.ranges(), 1);
        a.insert(0, u64::MAX - 1);
        assert!(a.contains(u64::MAX - 1));
    }

    #[test]
    fn shards_use_the_series_hash() {
        let h = fnv1a64(b"agg.sum");
        assert_eq!(shard_of(h, 256), (h % 256) as u32);
        assert_eq!(shard_of(h, 1), 0);
    }
}
