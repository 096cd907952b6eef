//! The shard owner side of cluster mode: leases, heartbeats, and one consumer per owned
//! shard.
//!
//! Every `lease_ttl / 4` the owner task:
//! 1. writes this node's heartbeat `node.<id>` (its status, as JSON) to the leases bucket,
//!    where every key expires `lease_ttl` after its last write;
//! 2. lists the live nodes (the heartbeat keys) and computes each shard's desired owner by
//!    rendezvous hashing ([`super::shard::desired_owner`]);
//! 3. renews each lease it holds with compare-and-set on the key's revision, and allows
//!    its workers to emit the shard until `sent + ¾·lease_ttl` (the renewal's send time,
//!    so the allowance always ends before the server can expire the key);
//! 4. hands over each shard whose desired owner is another node: stops emitting, stops
//!    the consumer, deletes the shard's series from the workers, then deletes the key;
//! 5. takes each shard it is the desired owner of whose key is free (deleted, or expired
//!    after its owner died): `create` succeeds only then.
//!
//! A taken shard is rebuilt: a consumer reads its subject from `now − (max_intervals + 1)
//! × longest frequency − lease_ttl` (by start time) into the workers as rebuild input,
//! then, once caught up, sends each worker a live marker and follows the stream live. The
//! workers emit the shard only after the marker, so no partial rebuild is ever emitted.
//! A renewal that fails leaves the allowance to run out; a lease found taken by another
//! node is dropped at once. A renewal that succeeds after the allowance ran out (the tick
//! was slow, or the process stopped) rebuilds the shard as a take does: while it had
//! lapsed the senders may have left its queued aggregates out (the fence at the write),
//! and the rebuild emits every interval again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use crossbeam_channel::Sender;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

mod consume;

pub(crate) use consume::Applier;
use consume::consume;

use super::nats::Joined;
use super::shard::{desired_owner, shard_of};
use super::{ClusterStats, ShardGate};
use crate::aggregate::worker::{WorkerMsg, send_waiting};
use crate::hash::fnv1a64;
use crate::time::{monotonic_ms, now_ms};

/// The workers, as the consumers feed them.
#[derive(Clone)]
pub(crate) struct Workers {
    /// Queues.
    pub queues: Arc<[Sender<WorkerMsg>]>,
    /// Room notifications, indexed like `queues`.
    pub rooms: Arc<[Arc<tokio::sync::Notify>]>,
}

impl Workers {
    async fn send(&self, i: usize, msg: WorkerMsg) {
        send_waiting(&self.queues[i], &self.rooms[i], msg).await;
    }

    async fn all(&self, msg: impl Fn() -> WorkerMsg) {
        for i in 0..self.queues.len() {
            self.send(i, msg()).await;
        }
    }
}

/// What the owner task and its consumers share.
pub(crate) struct Shared {
    pub joined: Joined,
    pub gate: Arc<ShardGate>,
    pub workers: Workers,
    pub stats: Arc<ClusterStats>,
    /// This node's rules digest (follows reloads).
    pub digest: Arc<std::sync::atomic::AtomicU64>,
    /// How far back a rebuild starts.
    pub rebuild_span: Duration,
    /// Asks the daemon to reload to the cluster's rules (the tick reads the `rules` key
    /// as well as the watch, which may miss a change while NATS is unreachable).
    pub rules_reload: tokio::sync::mpsc::Sender<super::rules::RulesKey>,
}

/// A held lease and its consumer.
struct Held {
    revision: u64,
    /// The end of its allowance, on [`monotonic_ms`].
    valid_until_ms: u64,
    stop: CancellationToken,
    consumer: tokio::task::JoinHandle<()>,
}

/// The running owner task.
pub(crate) struct Owner {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Owner {
    /// Starts the owner task.
    pub(crate) fn start(shared: Arc<Shared>) -> Owner {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&shared), stop.clone()));
        Owner { stop, task, shared }
    }

    /// Hands every held shard back (stops emitting and consuming, deletes the keys) and
    /// removes this node's heartbeat, so the others take over at their next tick. Returns
    /// by `deadline` whatever NATS does: the shards are given up locally first, the keys
    /// then deleted at once, waiting [`PATIENCE`] at most (a key not deleted expires after
    /// `lease_ttl`); past `deadline` the task is stopped and every shard revoked.
    pub(crate) async fn leave(self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            for k in 0..self.shared.gate.shards() {
                self.shared.gate.revoke(k);
            }
            self.shared.stats.shards_owned.store(0, Ordering::Relaxed);
            tracing::warn!(
                "cluster: shards not handed back by the drain deadline; their leases expire"
            );
        }
    }
}

fn lease_key(shard: u32) -> String {
    format!("shard.{shard}")
}

fn node_key(node: &str) -> String {
    format!("node.{node}")
}

/// A node's heartbeat value.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
pub(crate) struct Heartbeat {
    pub node: String,
    pub shards: u64,
    pub publish_lag_bytes: u64,
    pub consumer_lag: u64,
    pub at_ms: u64,
    /// The rules digest it runs (16 hex digits).
    #[serde(default)]
    pub rules: String,
    /// The cluster's rules it could not take, if any.
    #[serde(default)]
    pub rules_refused: Option<String>,
}

/// Live nodes: the heartbeat keys in the leases bucket.
async fn live_nodes(leases: &kv::Store) -> Result<Vec<String>, async_nats::Error> {
    let mut keys = leases.keys().await?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        if let Some(n) = k?.strip_prefix("node.") {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

async fn run(sh: Arc<Shared>, stop: CancellationToken) {
    let cfg = &sh.joined.cfg;
    let ttl_ms = cfg.lease_ttl.as_millis() as u64;
    let every = cfg.lease_ttl / 4;
    let me = cfg.node.clone();
    let mut held: HashMap<u32, Held> = HashMap::new();
    loop {
        tick(&sh, &me, ttl_ms, &mut held).await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    // Give every shard up here first (no NATS involved), then free the keys all at once:
    // leaving takes at most PATIENCE on NATS, however many shards are held.
    let mut revisions = Vec::with_capacity(held.len());
    for (k, h) in held.drain() {
        revisions.push((k, h.revision));
        release(&sh, k, h, false).await;
    }
    sh.stats.shards_owned.store(0, Ordering::Relaxed);
    let leases = &sh.joined.leases;
    let deletes = revisions
        .iter()
        .map(|(k, rev)| leases.delete_expect_revision(lease_key(*k), Some(*rev)));
    let all = async {
        futures_util::future::join_all(deletes).await;
        let _ = leases.delete(node_key(&me)).await;
    };
    let _ = tokio::time::timeout(PATIENCE, all).await;
}

/// How long one lease request may take before NATS counts as unreachable for the rest of
/// the tick (and a release stops waiting to delete its key, which then expires).
const PATIENCE: Duration = Duration::from_secs(1);

/// One pass of the lease protocol (see the module docs).
async fn tick(sh: &Arc<Shared>, me: &str, ttl_ms: u64, held: &mut HashMap<u32, Held>) {
    let Some(nodes) = beat_and_list(sh, me, held.len()).await else {
        // Keep what is held while the allowance lasts; take nothing new.
        expire(sh, held).await;
        return;
    };
    check_rules(sh).await;
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let allowance = ttl_ms * 3 / 4;
    for k in 0..sh.gate.shards() {
        let desired = desired_owner(k, &names) == Some(me);
        let go_on = if held.contains_key(&k) {
            renew(sh, k, me, desired, allowance, held).await
        } else if desired {
            take(sh, k, me, allowance, held).await
        } else {
            true
        };
        if !go_on {
            break;
        }
    }
    expire(sh, held).await;
}

/// Reads the cluster's `rules` key: when this node runs those rules (or knowingly keeps
/// its own, having refused them), the publisher may route with its rules for another
/// lease TTL (`ClusterStats::rules_fresh_until_ms`); otherwise it asks for a reload and the
/// publisher waits until the node runs them (`docs/cluster.md`, "Changing the rules").
async fn check_rules(sh: &Shared) {
    let read = tokio::time::timeout(PATIENCE, sh.joined.config_kv.get("rules")).await;
    let Ok(Ok(Some(v))) = read else {
        return;
    };
    let Some(key) = super::rules::RulesKey::parse(&String::from_utf8_lossy(&v)) else {
        return;
    };
    let running = sh.digest.load(Ordering::Relaxed);
    if key.digest == running || key.digest == sh.stats.rules_wanted.load(Ordering::Relaxed) {
        let ttl = sh.joined.cfg.lease_ttl.as_millis() as u64;
        sh.stats
            .rules_fresh_until_ms
            .store(monotonic_ms() + ttl, Ordering::Relaxed);
    } else if sh.rules_reload.try_send(key).is_err() {
        tracing::debug!("a cluster rules reload is already pending");
    }
}

/// Writes this node's heartbeat (holding `shards` shards) and lists the live nodes, this
/// one included; `None` (logged) when NATS does not answer either within [`PATIENCE`].
async fn beat_and_list(sh: &Shared, me: &str, shards: usize) -> Option<Vec<String>> {
    let leases = &sh.joined.leases;
    let consumer_lag: u64 = (sh.stats.shard_lag.iter())
        .map(|l| l.load(Ordering::Relaxed))
        .filter(|l| *l != u64::MAX)
        .sum();
    sh.stats.consumer_lag.store(consumer_lag, Ordering::Relaxed);
    let beat = Heartbeat {
        node: me.to_string(),
        shards: shards as u64,
        publish_lag_bytes: sh.stats.publish.bytes.load(Ordering::Relaxed),
        consumer_lag,
        at_ms: now_ms(),
        rules: format!("{:016x}", sh.digest.load(Ordering::Relaxed)),
        rules_refused: match sh.stats.rules_wanted.load(Ordering::Relaxed) {
            0 => None,
            d => Some(format!("{d:016x}")),
        },
    };
    let beat = serde_json::to_vec(&beat).unwrap_or_default();
    let beat = tokio::time::timeout(PATIENCE, leases.put(node_key(me), Bytes::from(beat))).await;
    if !matches!(beat, Ok(Ok(_))) {
        tracing::warn!(
            "cluster heartbeat failed: NATS unreachable; keeping held shards while their leases last"
        );
        return None;
    }
    let listed = tokio::time::timeout(PATIENCE, live_nodes(leases))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let mut nodes = listed
        .map_err(|e| tracing::warn!(error = %e, "cannot list the cluster's nodes"))
        .ok()?;
    if !nodes.iter().any(|n| n == me) {
        nodes.push(me.to_string());
    }
    Some(nodes)
}

/// Shard `k`, held: released when another node is its desired owner, else its lease
/// renewed (dropped when another node took it). Returns false when NATS timed out: the
/// tick stops there.
async fn renew(
    sh: &Arc<Shared>,
    k: u32,
    me: &str,
    desired: bool,
    allowance: u64,
    held: &mut HashMap<u32, Held>,
) -> bool {
    if !desired {
        let h = held.remove(&k).expect("held");
        release(sh, k, h, true).await;
        return true;
    }
    let h = held.get_mut(&k).expect("held");
    let sent = monotonic_ms();
    let renewed = tokio::time::timeout(
        PATIENCE,
        sh.joined
            .leases
            .update(lease_key(k), Bytes::from(me.to_string()), h.revision),
    )
    .await;
    let Ok(renewed) = renewed else {
        tracing::warn!(
            shard = k,
            "shard lease renewal timed out; trying again next tick"
        );
        return false;
    };
    match renewed {
        Ok(rev) => {
            h.revision = rev;
            // The allowance lapsed before this renewal (a slow tick, or the process was
            // stopped): the senders may have left the shard's queued aggregates out as no
            // longer this node's (the fence at the write), and no other node emits them.
            // The shard is rebuilt, which emits every interval again.
            let lapsed = monotonic_ms() >= h.valid_until_ms;
            h.valid_until_ms = sent + allowance;
            if lapsed {
                tracing::warn!(
                    shard = k,
                    "shard lease renewed after its allowance lapsed; rebuilding it"
                );
                sh.gate.revoke(k);
                stop_consumer(sh, k, h).await;
                let (stop, consumer) = start_consumer(sh, k);
                (h.stop, h.consumer) = (stop, consumer);
                sh.stats.lapsed_renewals.fetch_add(1, Ordering::Relaxed);
            }
            sh.gate.allow_until(k, h.valid_until_ms);
        }
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
            tracing::warn!(shard = k, "shard lease taken by another node; dropping it");
            let h = held.remove(&k).expect("held");
            release(sh, k, h, false).await;
        }
        Err(e) => tracing::warn!(shard = k, error = %e, "shard lease renewal failed"),
    }
    true
}

/// Shard `k`, not held, of which this node is the desired owner: taken if its key is
/// free, and its consumer started. Returns false when NATS timed out: the tick stops
/// there.
async fn take(
    sh: &Arc<Shared>,
    k: u32,
    me: &str,
    allowance: u64,
    held: &mut HashMap<u32, Held>,
) -> bool {
    let sent = monotonic_ms();
    let created = tokio::time::timeout(
        PATIENCE,
        sh.joined
            .leases
            .create(lease_key(k), Bytes::from(me.to_string())),
    )
    .await;
    let Ok(created) = created else {
        return false;
    };
    if let Ok(rev) = created {
        let until = sent + allowance;
        sh.gate.allow_until(k, until);
        let (stop, consumer) = start_consumer(sh, k);
        held.insert(
            k,
            Held {
                revision: rev,
                valid_until_ms: until,
                stop,
                consumer,
            },
        );
        sh.stats.lease_changes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(shard = k, "shard lease taken");
    }
    true
}

/// Drops the shards whose allowance ran out (renewals kept failing).
async fn expire(sh: &Arc<Shared>, held: &mut HashMap<u32, Held>) {
    let now = monotonic_ms();
    let lapsed: Vec<u32> = held
        .iter()
        .filter(|(_, h)| h.valid_until_ms <= now)
        .map(|(k, _)| *k)
        .collect();
    for k in lapsed {
        tracing::warn!(shard = k, "shard lease lapsed; dropping it");
        if let Some(h) = held.remove(&k) {
            release(sh, k, h, false).await;
        }
    }
    // Also when NATS is unreachable and the tick ends early: the gauge follows the drops.
    sh.stats
        .shards_owned
        .store(held.len() as u64, Ordering::Relaxed);
}

/// Gives shard `k` up: stops emitting it, stops its consumer, deletes its series from the
/// workers, and (with `delete`) frees the key for the next owner.
async fn release(sh: &Arc<Shared>, k: u32, mut h: Held, delete: bool) {
    sh.gate.revoke(k);
    stop_consumer(sh, k, &mut h).await;
    if delete {
        let leases = &sh.joined.leases;
        let delete = leases.delete_expect_revision(lease_key(k), Some(h.revision));
        let _ = tokio::time::timeout(PATIENCE, delete).await;
    }
    sh.stats.lease_changes.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(shard = k, "shard lease released");
}

/// Starts shard `k`'s consumer: it rebuilds the shard in the workers from the stream and
/// then follows it live (`consume`). Returns its stop token and task.
fn start_consumer(sh: &Arc<Shared>, k: u32) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    sh.stats.shard_lag[k as usize].store(0, Ordering::Relaxed);
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consume(Arc::clone(sh), k, stop.clone()));
    (stop, consumer)
}

/// Stops shard `k`'s consumer and deletes the shard's series from the workers, without
/// emitting them (the gate is closed first by the caller).
async fn stop_consumer(sh: &Arc<Shared>, k: u32, h: &mut Held) {
    h.stop.cancel();
    // The consumer may be waiting on NATS (creating itself, asking for its info), which
    // does not watch `stop`: end it where it is. What it sent the workers is forgotten
    // below; whoever owns the shard next (this node again, after a lapse) rebuilds it.
    h.consumer.abort();
    let _ = (&mut h.consumer).await;
    sh.workers.all(|| WorkerMsg::Forget(k)).await;
    sh.stats.shard_lag[k as usize].store(u64::MAX, Ordering::Relaxed);
}

/// `aggd cluster status`: the nodes with their lags, and the shard map.
///
/// Errors: NATS cannot be reached or the buckets cannot be read.
pub async fn status(joined: &Joined) -> Result<String, async_nats::Error> {
    use std::fmt::Write;
    let leases = &joined.leases;
    let mut owners: HashMap<String, Vec<u32>> = HashMap::new();
    let mut beats = Vec::new();
    let mut keys = leases.keys().await?;
    let mut all = Vec::new();
    while let Some(k) = keys.next().await {
        all.push(k?);
    }
    for k in all {
        let Some(v) = leases.get(&k).await? else {
            continue;
        };
        if let Some(n) = k.strip_prefix("shard.") {
            if let Ok(s) = n.parse::<u32>() {
                owners
                    .entry(String::from_utf8_lossy(&v).into_owned())
                    .or_default()
                    .push(s);
            }
        } else if k.starts_with("node.")
            && let Ok(b) = serde_json::from_slice::<Heartbeat>(&v)
        {
            beats.push(b);
        }
    }
    beats.sort_by(|a, b| a.node.cmp(&b.node));
    let cfg = &joined.cfg;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cluster {} ({} shards, stream {})",
        cfg.name,
        cfg.shards,
        super::stream_name(&cfg.name)
    );
    let rules = joined
        .config_kv
        .get("rules")
        .await?
        .and_then(|v| super::rules::RulesKey::parse(&String::from_utf8_lossy(&v)));
    if let Some(r) = rules {
        let _ = writeln!(
            s,
            "rules {} in force from {} ({})",
            r.digest_hex(),
            r.activation,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(r.activation.max(0) as u64)
            )
        );
    }
    let _ = writeln!(
        s,
        "{:<24} {:>7} {:>18} {:>13}  rules",
        "node", "shards", "publish_lag_bytes", "consumer_lag"
    );
    for b in &beats {
        let _ = writeln!(
            s,
            "{:<24} {:>7} {:>18} {:>13}  {}{}",
            b.node,
            owners.get(&b.node).map_or(0, Vec::len),
            b.publish_lag_bytes,
            b.consumer_lag,
            b.rules,
            b.rules_refused
                .as_ref()
                .map(|d| format!(" (cannot take the cluster's rules {d}: keeps its own)"))
                .unwrap_or_default()
        );
    }
    let owned: usize = owners.values().map(Vec::len).sum();
    let _ = writeln!(
        s,
        "unowned shards: {}",
        cfg.shards as usize - owned.min(cfg.shards as usize)
    );
    let mut names: Vec<&String> = owners.keys().collect();
    names.sort();
    for n in names {
        let mut v = owners[n].clone();
        v.sort_unstable();
        let _ = writeln!(s, "shards of {n}: {}", ranges(&v));
    }
    Ok(s)
}

/// `0-3,7,9-10` for `[0,1,2,3,7,9,10]`.
fn ranges(v: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The shard of output series `name` (for `aggd explain` and tests).
pub fn shard_of_name(name: &str, shards: u32) -> u32 {
    shard_of(fnv1a64(name.as_bytes()), shards)
}

#[cfg(test)]
mod tests;
