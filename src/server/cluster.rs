//! Cluster mode's part of the daemon's life (`docs/cluster.md`): joining at start, the
//! publisher and the owner task, the rules digest at reload, and leaving at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::aggregate::worker::WorkerPool;
use crate::cluster::owner::{Owner, Shared, Workers};
use crate::cluster::publish::{Publisher, Source};
use crate::cluster::{ClusterError, ClusterStats, Joined, PublishLag, ShardGate, rules_digest};
use crate::config::Config;
use crate::ingest::Routes;
use crate::journal::Journal;
use crate::route::Router;

/// The running cluster parts.
pub(super) struct ClusterRuntime {
    joined: Joined,
    publisher: Option<Publisher>,
    owner: Option<Owner>,
    /// The publisher's routes, for records it reads back from the journal (its router,
    /// one output per shard, is swapped at reload).
    publish_routes: Arc<Routes>,
    /// Counters.
    pub stats: Arc<ClusterStats>,
    /// This node's rules digest (follows reloads).
    digest: Arc<AtomicU64>,
    /// Stops the watch of the cluster's rules digest.
    watch: tokio_util::sync::CancellationToken,
    /// Reload requests from that watch, until [`super::run`] takes them.
    pub reloads: Option<tokio::sync::mpsc::Receiver<String>>,
}

/// Watches the cluster's `rules` key: when it changes to a digest this node does not run,
/// asks for a reload (`tx`), so a SIGHUP on one node reloads every node in one step.
async fn watch_rules(
    kv: async_nats::jetstream::kv::Store,
    digest: Arc<AtomicU64>,
    tx: tokio::sync::mpsc::Sender<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures_util::StreamExt;
    while !stop.is_cancelled() {
        let Ok(mut w) = kv.watch("rules").await else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        loop {
            let e = tokio::select! {
                () = stop.cancelled() => return,
                e = w.next() => e,
            };
            let Some(Ok(e)) = e else { break };
            let theirs = String::from_utf8_lossy(&e.value).into_owned();
            let mine = format!("{:016x}", digest.load(Ordering::Relaxed));
            if !theirs.is_empty() && theirs != mine && tx.try_send(theirs).is_err() {
                tracing::debug!("a cluster rules reload is already pending");
            }
        }
    }
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
) -> std::io::Result<ClusterRuntime> {
    let c = &joined.cfg;
    // One digest for the publisher's headers, the owner's checks and the watch: a reload
    // changes it for all three.
    let digest = Arc::new(AtomicU64::new(rules_digest(&config.aggregation)));
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let watch = tokio_util::sync::CancellationToken::new();
    tokio::spawn(watch_rules(
        joined.config_kv.clone(),
        Arc::clone(&digest),
        reload_tx,
        watch.clone(),
    ));
    let cstats = Arc::new(ClusterStats {
        publish: Arc::new(PublishLag {
            max_bytes: c.max_publish_lag_bytes,
            ..PublishLag::default()
        }),
        shard_lag: (0..c.shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
        ..ClusterStats::default()
    });
    let router = Arc::new(Router::new(config.aggregation.clone(), c.shards as usize));
    let publish_routes = Arc::new(Routes::new(&router, config));
    let opened_at = journal.stats().next_seq.load(Ordering::Relaxed);
    let publisher = Publisher::start(
        joined.js.clone(),
        c,
        &digest,
        Source {
            dir: journal.dir(),
            io: journal.io(),
            stats: journal.stats_arc(),
            opened_at_seq: opened_at,
            follow: journal.follow_slot(),
        },
        Arc::clone(&publish_routes),
        Arc::clone(&cstats),
    )?;
    journal.follow(publisher.follower());
    let span = crate::replay::acceptance_span(config) + c.lease_ttl.as_secs_f64();
    let owner = Owner::start(Arc::new(Shared {
        joined: joined.clone(),
        gate,
        workers: Workers {
            queues: workers.senders(),
            rooms: workers.rooms(),
        },
        stats: Arc::clone(&cstats),
        digest: Arc::clone(&digest),
        rebuild_span: Duration::from_secs_f64(span),
    }));
    Ok(ClusterRuntime {
        joined,
        publisher: Some(publisher),
        owner: Some(owner),
        publish_routes,
        stats: cstats,
        digest,
        watch,
        reloads: Some(reloads),
    })
}

/// What shutdown keeps of its drain deadline for the owner to hand its shards back after
/// the publisher stopped: its last tick and one round of key deletes, a second each at
/// most.
const LEAVE_RESERVE: Duration = Duration::from_secs(2);

impl ClusterRuntime {
    /// A reload: the publisher routes with the new rules. After an operator's reload
    /// (`announce`) the cluster's rules digest becomes this node's: the other nodes see it
    /// change and reload themselves, and nodes restarted with the old rules are refused.
    /// A reload the cluster asked for only checks that this node now runs the cluster's
    /// digest (a node whose files were not updated says so, and its messages are counted
    /// as `rules_mismatch` by their owners).
    pub(super) async fn reload(&self, config: &Config, announce: Option<&str>) {
        let c = &self.joined.cfg;
        self.publish_routes.router.store(Arc::new(Router::new(
            config.aggregation.clone(),
            c.shards as usize,
        )));
        let d = rules_digest(&config.aggregation);
        self.digest.store(d, Ordering::Relaxed);
        let digest = format!("{d:016x}");
        if let Some(cluster) = announce {
            if cluster == digest {
                tracing::info!(digest = %digest, "reloaded to the cluster's rules");
            } else {
                tracing::error!(
                    mine = %digest,
                    cluster = %cluster,
                    "reloaded, but this node's rules differ from the cluster's: put the same rules files on every node"
                );
            }
            return;
        }
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
        self.stats.publish.closing.store(true, Ordering::Relaxed);
        self.watch.cancel();
    }

    /// After the connections finished: publishes the journal up to `next_seq` (until
    /// [`LEAVE_RESERVE`] before `deadline`), then hands every shard back (by `deadline`). Returns whether everything was published.
    pub(super) async fn leave(&mut self, next_seq: u64, deadline: tokio::time::Instant) -> bool {
        // Publishing stops early enough to leave the owner time to hand the shards back
        // within the deadline, whatever NATS does.
        let now = tokio::time::Instant::now();
        let publish_by = deadline
            .checked_sub(LEAVE_RESERVE)
            .map_or(now, |t| t.max(now));
        let published = match self.publisher.take() {
            Some(p) => p.drain(next_seq, publish_by).await,
            None => true,
        };
        if let Some(o) = self.owner.take() {
            o.leave(deadline).await;
        }
        if !published {
            tracing::warn!(
                "cluster: not everything was published by the deadline; the next start republishes it from the journal"
            );
        }
        published
    }
}
