//! Cluster mode's part of the daemon's life (`docs/cluster.md`): joining at start, the
//! publisher and the owner task, the rules digest at reload, and leaving at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::NoForward;
use crate::aggregate::worker::WorkerPool;
use crate::cluster::owner::{Owner, Shared, Workers};
use crate::cluster::publish::{Publisher, Source};
use crate::cluster::{ClusterError, ClusterStats, Joined, ShardGate, rules_digest};
use crate::config::Config;
use crate::drops::Stats;
use crate::ingest::{Pipeline, PublishLag};
use crate::journal::Journal;
use crate::route::Router;

/// The running cluster parts.
pub(super) struct ClusterRuntime {
    joined: Joined,
    publisher: Option<Publisher>,
    owner: Option<Owner>,
    /// What connections check.
    pub ingest: Arc<PublishLag>,
    /// The publisher's quiet pipeline (its router is swapped at reload).
    publish_pipeline: Arc<Pipeline>,
    /// Counters.
    pub stats: Arc<ClusterStats>,
}

/// Joins the cluster of `config` (the stream and buckets are created by the first node;
/// a node with another shard count or rules is refused).
///
/// Errors: [`ClusterError`].
pub(super) async fn join(
    config: &Config,
) -> Result<Option<(Joined, Arc<ShardGate>)>, ClusterError> {
    let Some(c) = &config.cluster else {
        return Ok(None);
    };
    if config.journal.is_none() {
        return Err(ClusterError::NoJournal);
    }
    let joined = crate::cluster::nats::join(c, rules_digest(&config.aggregation)).await?;
    tracing::info!(cluster = %c.name, node = %c.node, shards = c.shards, "joined the cluster");
    Ok(Some((joined, Arc::new(ShardGate::new(c.shards)))))
}

/// Starts the publisher (from the journal's watermark) and the owner task.
///
/// Errors: the cluster state file beside the journal cannot be read or written, or a
/// thread cannot be spawned.
pub(super) fn start(
    joined: Joined,
    gate: Arc<ShardGate>,
    config: &Config,
    journal: &Arc<Journal>,
    workers: &WorkerPool,
    stats: &Arc<Stats>,
) -> std::io::Result<ClusterRuntime> {
    let c = &joined.cfg;
    let digest = rules_digest(&config.aggregation);
    let cstats = Arc::new(ClusterStats {
        publish: Arc::new(PublishLag {
            max_bytes: c.max_publish_lag_bytes,
            ..PublishLag::default()
        }),
        shard_lag: (0..c.shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
        ..ClusterStats::default()
    });
    let router = Arc::new(Router::new(config.aggregation.clone(), c.shards as usize));
    let publish_pipeline = Arc::new(Pipeline::new(
        &router,
        workers,
        Arc::new(NoForward),
        stats,
        config,
    ));
    let opened_at = journal.stats().next_seq.load(Ordering::Relaxed);
    let publisher = Publisher::start(
        joined.js.clone(),
        c,
        digest,
        Source {
            dir: journal.dir(),
            stats: journal.stats_arc(),
            opened_at_seq: opened_at,
        },
        Arc::clone(&publish_pipeline),
        Arc::clone(&cstats),
    )?;
    let span = crate::replay::acceptance_span(config) + c.lease_ttl.as_secs_f64();
    let owner = Owner::start(Arc::new(Shared {
        joined: joined.clone(),
        gate,
        workers: Workers {
            queues: workers.senders(),
            rooms: workers.rooms(),
        },
        stats: Arc::clone(&cstats),
        digest,
        rebuild_span: Duration::from_secs_f64(span),
    }));
    Ok(ClusterRuntime {
        ingest: Arc::clone(&cstats.publish),
        joined,
        publisher: Some(publisher),
        owner: Some(owner),
        publish_pipeline,
        stats: cstats,
    })
}

impl ClusterRuntime {
    /// A reload: the publisher routes with the new rules, and the cluster's rules digest
    /// becomes this node's (so nodes restarted with the old rules are refused; every node
    /// must be reloaded with the same files).
    pub(super) async fn reload(&self, config: &Config) {
        let c = &self.joined.cfg;
        self.publish_pipeline.router.store(Arc::new(Router::new(
            config.aggregation.clone(),
            c.shards as usize,
        )));
        let digest = format!("{:016x}", rules_digest(&config.aggregation));
        if let Err(e) = self
            .joined
            .config_kv
            .put("rules", bytes::Bytes::from(digest.clone()))
            .await
        {
            tracing::warn!(error = %e, "cannot store the cluster's new rules digest");
        } else {
            tracing::info!(digest = %digest, "cluster rules digest updated");
        }
    }

    /// Shutdown has begun: connections stop waiting for the publisher.
    pub(super) fn closing(&self) {
        self.ingest.closing.store(true, Ordering::Relaxed);
    }

    /// After the connections finished: publishes the journal up to `next_seq` (until
    /// `deadline`), then hands every shard back. Returns whether everything was published.
    pub(super) async fn leave(&mut self, next_seq: u64, deadline: tokio::time::Instant) -> bool {
        let published = match self.publisher.take() {
            Some(p) => p.drain(next_seq, deadline).await,
            None => true,
        };
        if let Some(o) = self.owner.take() {
            o.leave().await;
        }
        if !published {
            tracing::warn!(
                "cluster: not everything was published by the deadline; the next start republishes it from the journal"
            );
        }
        published
    }
}
