//! Cluster mode's fence in the workers: which shards this node may emit, and the shard of
//! a series (`docs/cluster.md`). Here, below the cluster module, so the workers need
//! nothing above them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::time::monotonic_ms;

pub use crate::hash::shard_of;

/// Per shard, until when ([`monotonic_ms`]: the monotonic clock, never the wall clock) this
/// node may emit it: its lease's validity, set by the owner task at each renewal and
/// cleared at release. Workers check it before emitting a
/// series, so a node whose lease may have lapsed stops emitting even if its owner task is
/// stalled.
pub struct ShardGate {
    shards: u32,
    until_ms: Vec<AtomicU64>,
}

impl ShardGate {
    /// A gate of `shards` shards, none emittable.
    pub fn new(shards: u32) -> ShardGate {
        ShardGate {
            shards,
            until_ms: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The shard count S.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Whether a series of shard `shard` may be emitted now.
    #[inline]
    pub fn may_emit(&self, shard: u32) -> bool {
        monotonic_ms() < self.until_ms[shard as usize].load(Ordering::Relaxed)
    }

    /// Allows emitting `shard` until `until_ms` ([`monotonic_ms`]).
    pub fn allow_until(&self, shard: u32, until_ms: u64) {
        self.until_ms[shard as usize].store(until_ms, Ordering::Relaxed);
    }

    /// Stops emitting `shard` now.
    pub fn revoke(&self, shard: u32) {
        self.until_ms[shard as usize].store(0, Ordering::Relaxed);
    }
}
