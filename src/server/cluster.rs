//! Cluster mode's part of the daemon's life (`docs/cluster.md`): joining at start, the
//! publisher and the owner task, the rules digest at reload, and leaving at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::aggregate::worker::WorkerPool;
use crate::cluster::owner::{Owner, Shared, Workers};
use crate::cluster::publish::{Publisher, Source};
use crate::cluster::rules::{self, RulesKey};
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
    pub reloads: Option<tokio::sync::mpsc::Receiver<RulesKey>>,
}

/// Watches the cluster's `rules` key: when it changes to rules this node does not run,
/// asks for a reload (`tx`), so a SIGHUP on one node reloads every node in one step.
async fn watch_rules(
    kv: async_nats::jetstream::kv::Store,
    digest: Arc<AtomicU64>,
    tx: tokio::sync::mpsc::Sender<RulesKey>,
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
            let Some(theirs) = RulesKey::parse(&String::from_utf8_lossy(&e.value)) else {
                continue;
            };
            if theirs.digest != digest.load(Ordering::Relaxed) && tx.try_send(theirs).is_err() {
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
    let joined =
        crate::cluster::nats::join(c, Some(&rules::Material::of(&config.aggregation))).await?;
    tracing::info!(cluster = %c.name, node = %c.node, shards = c.shards, "joined the cluster");
    Ok(Some((joined, Arc::new(ShardGate::new(c.shards)))))
}

/// The router of a node that joined the cluster (`joined`), for `outputs` outputs: by this
/// node's rules, and, when the cluster's key names the rules before them, by those for
/// datapoints stamped before the activation time (a node started during a change, or
/// republishing records journaled before it).
pub(super) fn router(config: &Config, joined: &Joined, outputs: usize) -> Router {
    let router = Router::new(config.aggregation.clone(), outputs);
    let (Some(key), Some(m)) = (&joined.rules, &joined.earlier) else {
        return router;
    };
    match m.aggregation(&config.aggregation) {
        Ok(a) => router.cut_over(key.activation, &Arc::new(Router::new(a, outputs))),
        Err(e) => {
            tracing::error!(error = %e, "the cluster's earlier rules do not parse; routing every datapoint by this node's rules");
            router
        }
    }
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
        reload_tx.clone(),
        watch.clone(),
    ));
    let cstats = Arc::new(ClusterStats {
        publish: Arc::new(PublishLag {
            max_bytes: c.max_publish_lag_bytes,
            ..PublishLag::default()
        }),
        shard_lag: (0..c.shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
        // Joining read the rules key a moment ago.
        rules_fresh_until_ms: AtomicU64::new(
            crate::time::monotonic_ms() + c.lease_ttl.as_millis() as u64,
        ),
        ..ClusterStats::default()
    });
    let router = Arc::new(router(config, &joined, c.shards as usize));
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
        rules_reload: reload_tx,
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
    /// A reload (`docs/cluster.md`, "Changing the rules"): the connections' router
    /// (`connections`) and the publisher's route by the new rules from an interval
    /// boundary on, and by the old ones before it.
    ///
    /// After an operator's reload (`announced` is `None`) with rules other than the
    /// running ones, this node picks the activation time ([`rules::activation`]) and stores
    /// it with the new digest as the cluster's rules: the other nodes see the key change
    /// and reload to the same cutover. A reload the cluster asked for takes the announced
    /// activation time if this node's files have the announced digest; otherwise the node
    /// keeps its rules ([`ClusterRuntime::refuse`]). Unchanged rules (a reload for other
    /// settings) swap the routers at once, keeping any pending cutover. Returns whether
    /// the node took the new rules.
    pub(super) async fn reload(
        &self,
        config: &Config,
        announced: Option<RulesKey>,
        connections: &arc_swap::ArcSwap<Router>,
    ) -> bool {
        let c = &self.joined.cfg;
        let new = &config.aggregation;
        let d = rules_digest(new);
        let running = self.digest.load(Ordering::Relaxed);
        let shards = c.shards as usize;
        let swap = |at: Option<i64>| {
            // The publisher's first: a record a connection routed by the new rules is never
            // routed again by the old ones.
            for routes in [&self.publish_routes.router, connections] {
                let current = routes.load_full();
                let router = Router::new(new.clone(), shards);
                routes.store(Arc::new(match at {
                    Some(at) => router.cut_over(at, &current),
                    None => router.keeping_cutover_of(&current),
                }));
            }
        };
        // The cutover to take, and whether this node announces it.
        let (key, announce) = match announced {
            Some(key) if key.digest != d => {
                self.refuse(
                    key,
                    &format!("this node's rules files have digest {d:016x}"),
                );
                return false;
            }
            // Running them already (the watch and the owner's check both asked).
            Some(_) if d == running => return true,
            Some(key) => (key, false),
            None if d == running => {
                swap(None);
                return true;
            }
            None => match self.cluster_rules().await {
                // Another node announced these rules already (this node refused them
                // then, or its operator reloads every node): the same cutover.
                Some(k) if k.digest == d => (k, false),
                _ => {
                    let old = self.publish_routes.router.load_full();
                    let step = rules::step(&[old.aggregation(), new]);
                    let margin = rules::margin(c.lease_ttl);
                    let activation = rules::activation(crate::time::now(), margin, step);
                    (
                        RulesKey {
                            digest: d,
                            activation,
                            previous: Some(running),
                        },
                        true,
                    )
                }
            },
        };
        // Stored first: a change the cluster does not know must not be routed by.
        if announce && !self.store_rules(key, &rules::Material::of(new)).await {
            tracing::error!(
                digest = %key.digest_hex(),
                "the rules change could not be stored in the cluster (NATS unreachable); keeping the running rules: reload again"
            );
            return false;
        }
        swap(Some(key.activation));
        self.digest.store(d, Ordering::Relaxed);
        self.stats.rules_wanted.store(0, Ordering::Relaxed);
        tracing::info!(
            digest = %key.digest_hex(),
            activation = key.activation,
            "cluster rules change: datapoints stamped from the activation time on are routed by the new rules"
        );
        true
    }

    /// Stores `key` as the cluster's rules, retrying for up to 5 s (a NATS server failing
    /// over), after their text (`material`, key `rules.<digest>`: a node that starts later
    /// routes by them what is stamped before the next change); whether it was stored.
    async fn store_rules(&self, key: RulesKey, material: &rules::Material) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let kv = &self.joined.config_kv;
        let stored = crate::cluster::nats::store_material(kv, material);
        if tokio::time::timeout(Duration::from_secs(1), stored)
            .await
            .is_err()
        {
            tracing::warn!("cannot store the new rules' text in the cluster: NATS does not answer");
        }
        loop {
            let put = self
                .joined
                .config_kv
                .put("rules", bytes::Bytes::from(key.encode()));
            match tokio::time::timeout(Duration::from_secs(1), put).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot store the cluster's new rules yet");
                }
                Err(_) => {
                    tracing::warn!(
                        "cannot store the cluster's new rules yet: NATS does not answer"
                    );
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The cluster's `rules` key, if NATS answers within a second.
    async fn cluster_rules(&self) -> Option<RulesKey> {
        let get = self.joined.config_kv.get("rules");
        let v = tokio::time::timeout(Duration::from_secs(1), get)
            .await
            .ok()?
            .ok()??;
        RulesKey::parse(&String::from_utf8_lossy(&v))
    }

    /// The cluster's rules changed to `key` and this node cannot follow (`why`: its files
    /// do not load, or differ): it keeps routing by its rules, counts the refusal
    /// (`aggd_cluster_rules_refused_total`) and shows the digest it could not take in its
    /// heartbeat (`aggd cluster status`).
    pub(super) fn refuse(&self, key: RulesKey, why: &str) {
        self.stats.rules_refused.fetch_add(1, Ordering::Relaxed);
        self.stats.rules_wanted.store(key.digest, Ordering::Relaxed);
        tracing::error!(
            cluster = %key.digest_hex(),
            mine = %format!("{:016x}", self.digest.load(Ordering::Relaxed)),
            "the cluster's rules changed, but this node cannot take them ({why}); it keeps routing by its rules: put the same rules files on every node and reload"
        );
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
