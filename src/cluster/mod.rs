//! Cluster mode on NATS JetStream (`docs/cluster.md`): N aggd nodes share aggregation by
//! shard over one replicated stream, and any node can die without losing or
//! double-counting a datapoint.
//!
//! - [`wire`]: the message format (pure).
//! - [`shard`]: shard of a series, rendezvous hashing, applied-record ranges (pure).
//! - `nats`: connecting, creating or joining the cluster (the stream and KV buckets),
//!   and the refusals of a node whose shard count or rules differ.
//! - `publish`: the ingest side. Publisher lanes follow the local journal from the node's
//!   republish watermark ([`crate::journal::tail`]), decode and route each record, and
//!   publish per shard in batches with a bounded in-flight window; the watermark
//!   advances as acknowledgements arrive and is persisted beside the journal.
//! - `owner`: the shard owner side. Leases in a KV bucket, renewed by compare-and-set;
//!   the desired owner of each shard by rendezvous hashing over live nodes; per owned
//!   shard a consumer that rebuilds from the stream and then follows it into the workers.
//!
//! Fencing lives in the workers ([`ShardGate`] plus per-worker live markers): a worker
//! emits a series only while its shard's lease is valid and its rebuild has been applied.

pub mod nats;
pub mod owner;
pub mod publish;
pub mod read;
pub mod rules;
pub mod shard;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Aggregation;

pub use crate::aggregate::gate::ShardGate;
pub use nats::{ClusterError, Joined};

/// The rules digest every message carries and the cluster's KV bucket keeps: FNV-1a 64
/// over the aggregation rules file, the rewrite rules file and the settings that change
/// what a datapoint feeds (`forward_all`, `timestamp_resolution`), in that order
/// ([`rules::Material::digest`]). Nodes with equal digests route every datapoint to the
/// same output series.
pub fn rules_digest(a: &Aggregation) -> u64 {
    rules::Material::of(a).digest()
}

/// Cluster counters and gauges, read by `/metrics` and the self-metrics.
#[derive(Default)]
pub struct ClusterStats {
    /// Shards this node owns now.
    pub shards_owned: AtomicU64,
    /// Leases taken or given up by this node.
    pub lease_changes: AtomicU64,
    /// Leases renewed after their allowance had lapsed; each rebuilt its shard.
    pub lapsed_renewals: AtomicU64,
    /// Journal bytes not yet published and acknowledged, with their limit.
    pub publish: Arc<PublishLag>,
    /// Messages published and acknowledged.
    pub messages_published: AtomicU64,
    /// Datapoints in those messages.
    pub datapoints_published: AtomicU64,
    /// Publish attempts that failed (each retried).
    pub publish_errors: AtomicU64,
    /// Messages applied whose rules digest differs from this node's.
    pub rules_mismatch: AtomicU64,
    /// Cluster rules changes this node could not take (its files did not load, or had
    /// another digest): it kept routing by its own rules.
    pub rules_refused: AtomicU64,
    /// The digest of the last cluster rules this node could not take; 0 once it runs the
    /// cluster's rules again.
    pub rules_wanted: AtomicU64,
    /// Until when (on [`crate::time::monotonic_ms`]) publisher lanes may route: one
    /// `lease_ttl` after the owner last found this node running the cluster's rules (or
    /// knowingly keeping its own), so no datapoint is routed by rules the cluster replaced
    /// more than a lease TTL ago. 0: no owner checks (unit tests), no limit.
    pub rules_fresh_until_ms: AtomicU64,
    /// Journal records skipped by an owner because it had applied them already.
    pub duplicates_skipped: AtomicU64,
    /// Messages an owner could not decode (counted, skipped).
    pub malformed_messages: AtomicU64,
    /// Stream messages not yet delivered to this node's shard consumers.
    pub consumer_lag: AtomicU64,
    /// Milliseconds the last shard rebuild took.
    pub last_rebuild_ms: AtomicU64,
    /// Journal records the publisher missed (deleted before it read them).
    pub records_missed: AtomicU64,
    /// Records of this run handed to the publisher that it let go of (its hand-over was
    /// full, or the stream took nothing for a second) and reads back from the journal.
    pub records_read_back: AtomicU64,
    /// Per shard, its consumer's undelivered messages; `u64::MAX` for a shard not owned.
    pub shard_lag: Vec<AtomicU64>,
}

/// The publisher's backlog: journal bytes not yet published and acknowledged (kept by
/// the publisher), and the limit beyond which TCP readers wait and UDP datagrams are
/// refused as `queue_full` (what connections see of it is
/// [`crate::ingest::PublishBacklog`]).
#[derive(Debug, Default)]
pub struct PublishLag {
    /// Bytes journaled and not yet acknowledged by the stream.
    pub bytes: AtomicU64,
    /// The limit (`cluster.max_publish_lag_bytes`).
    pub max_bytes: u64,
    /// Shutdown has begun: connections stop waiting.
    pub closing: std::sync::atomic::AtomicBool,
    /// Bytes of records the journal handed to the publisher lanes and they have not yet
    /// taken ([`publish::FOLLOWED_BYTES`] at most).
    pub followed_bytes: AtomicU64,
}

impl crate::ingest::PublishBacklog for PublishLag {
    fn over_limit(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.max_bytes
    }

    fn busy(&self) -> bool {
        self.followed_bytes.load(Ordering::Relaxed) > publish::FOLLOWED_BYTES / 4 * 3
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

/// The subject of shard `k` of cluster `name`.
pub fn subject(name: &str, shard: u32) -> String {
    format!("aggd.{name}.shard.{shard}")
}

/// The stream of cluster `name`.
pub fn stream_name(name: &str) -> String {
    format!("AGGD_{name}")
}
