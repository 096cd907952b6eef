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
//! node is dropped at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use bytes::Bytes;
use crossbeam_channel::Sender;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::nats::Joined;
use super::shard::{Applied, desired_owner, shard_of};
use super::wire;
use super::{ClusterStats, ShardGate, subject};
use crate::aggregate::batch::Batch;
use crate::aggregate::worker::{WorkerMsg, send_waiting};
use crate::hash::fnv1a64;
use crate::route::SeriesKey;
use crate::time::now_ms;

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
}

/// A held lease and its consumer.
struct Held {
    revision: u64,
    valid_until_ms: u64,
    stop: CancellationToken,
    consumer: tokio::task::JoinHandle<()>,
}

/// The running owner task.
pub(crate) struct Owner {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Owner {
    /// Starts the owner task.
    pub(crate) fn start(shared: Arc<Shared>) -> Owner {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(shared, stop.clone()));
        Owner { stop, task }
    }

    /// Hands every held shard back (stops emitting and consuming, deletes the keys) and
    /// removes this node's heartbeat, so the others take over at their next tick.
    pub(crate) async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
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
    let shards: Vec<u32> = held.keys().copied().collect();
    for k in shards {
        if let Some(h) = held.remove(&k) {
            release(&sh, k, h, true).await;
        }
    }
    let _ = tokio::time::timeout(PATIENCE, sh.joined.leases.delete(node_key(&me))).await;
    sh.stats.shards_owned.store(0, Ordering::Relaxed);
}

/// How long one lease request may take before NATS counts as unreachable for the rest of
/// the tick (and a release stops waiting to delete its key, which then expires).
const PATIENCE: Duration = Duration::from_secs(1);

/// One pass of the lease protocol (see the module docs).
async fn tick(sh: &Arc<Shared>, me: &str, ttl_ms: u64, held: &mut HashMap<u32, Held>) {
    let leases = &sh.joined.leases;
    let consumer_lag: u64 = (sh.stats.shard_lag.iter())
        .map(|l| l.load(Ordering::Relaxed))
        .filter(|l| *l != u64::MAX)
        .sum();
    sh.stats.consumer_lag.store(consumer_lag, Ordering::Relaxed);
    let beat = Heartbeat {
        node: me.to_string(),
        shards: held.len() as u64,
        publish_lag_bytes: sh.stats.publish.bytes.load(Ordering::Relaxed),
        consumer_lag,
        at_ms: now_ms(),
    };
    let beat = serde_json::to_vec(&beat).unwrap_or_default();
    let beat = tokio::time::timeout(PATIENCE, leases.put(node_key(me), Bytes::from(beat))).await;
    if !matches!(beat, Ok(Ok(_))) {
        tracing::warn!(
            "cluster heartbeat failed: NATS unreachable; keeping held shards while their leases last"
        );
        expire(sh, held).await;
        return;
    }
    let listed = tokio::time::timeout(PATIENCE, live_nodes(leases))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let mut nodes = match listed {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the cluster's nodes");
            // Keep what is held while the allowance lasts; take nothing new.
            expire(sh, held).await;
            return;
        }
    };
    if !nodes.iter().any(|n| n == me) {
        nodes.push(me.to_string());
    }
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let allowance = ttl_ms * 3 / 4;
    for k in 0..sh.gate.shards() {
        let desired = desired_owner(k, &names) == Some(me);
        if let Some(h) = held.get_mut(&k) {
            if !desired {
                let h = held.remove(&k).expect("held");
                release(sh, k, h, true).await;
                continue;
            }
            let sent = now_ms();
            let renewed = tokio::time::timeout(
                PATIENCE,
                leases.update(lease_key(k), Bytes::from(me.to_string()), h.revision),
            )
            .await;
            let Ok(renewed) = renewed else {
                tracing::warn!(
                    shard = k,
                    "shard lease renewal timed out; trying again next tick"
                );
                break;
            };
            match renewed {
                Ok(rev) => {
                    h.revision = rev;
                    h.valid_until_ms = sent + allowance;
                    sh.gate.allow_until(k, h.valid_until_ms);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(shard = k, "shard lease taken by another node; dropping it");
                    let h = held.remove(&k).expect("held");
                    release(sh, k, h, false).await;
                }
                Err(e) => tracing::warn!(shard = k, error = %e, "shard lease renewal failed"),
            }
        } else if desired {
            let sent = now_ms();
            let created = tokio::time::timeout(
                PATIENCE,
                leases.create(lease_key(k), Bytes::from(me.to_string())),
            )
            .await;
            let Ok(created) = created else {
                break;
            };
            if let Ok(rev) = created {
                let until = sent + allowance;
                sh.gate.allow_until(k, until);
                sh.stats.shard_lag[k as usize].store(0, Ordering::Relaxed);
                let stop = CancellationToken::new();
                let consumer = tokio::spawn(consume(Arc::clone(sh), k, stop.clone()));
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
        }
    }
    expire(sh, held).await;
    sh.stats
        .shards_owned
        .store(held.len() as u64, Ordering::Relaxed);
}

/// Drops the shards whose allowance ran out (renewals kept failing).
async fn expire(sh: &Arc<Shared>, held: &mut HashMap<u32, Held>) {
    let now = now_ms();
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
}

/// Gives shard `k` up: stops emitting it, stops its consumer, deletes its series from the
/// workers, and (with `delete`) frees the key for the next owner.
async fn release(sh: &Arc<Shared>, k: u32, h: Held, delete: bool) {
    sh.gate.revoke(k);
    h.stop.cancel();
    let _ = h.consumer.await;
    sh.workers.all(|| WorkerMsg::Forget(k)).await;
    sh.stats.shard_lag[k as usize].store(u64::MAX, Ordering::Relaxed);
    if delete {
        let leases = &sh.joined.leases;
        let delete = leases.delete_expect_revision(lease_key(k), Some(h.revision));
        let _ = tokio::time::timeout(PATIENCE, delete).await;
    }
    sh.stats.lease_changes.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(shard = k, "shard lease released");
}

/// What a consumer keeps between messages.
#[derive(Default)]
pub(crate) struct Applier {
    /// Per origin (node, incarnation, lane) and shard: the records applied.
    applied: HashMap<(String, u64, u16, u32), Applied>,
    /// Series keys by name.
    keys: HashMap<Box<str>, Arc<SeriesKey>>,
}

/// What applying one message found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ApplyOutcome {
    /// Datapoints handed on.
    pub points: usize,
    /// Sections skipped as already applied.
    pub duplicates: u64,
    /// The sender's rules digest differs from ours.
    pub mismatch: bool,
}

impl Applier {
    /// Decodes `bytes`, a message of shard `shard`, and appends its datapoints not yet
    /// applied to `out` (per worker, `out.len()` of them), remembering what it applied.
    ///
    /// Errors: the message does not decode ([`wire::WireError`]).
    pub(crate) fn apply(
        &mut self,
        bytes: &[u8],
        shard: u32,
        digest: u64,
        out: &mut [Batch],
    ) -> Result<ApplyOutcome, wire::WireError> {
        let m = wire::decode(bytes)?;
        let h = &m.header;
        let mut r = ApplyOutcome {
            mismatch: h.digest != digest,
            ..ApplyOutcome::default()
        };
        if self.keys.len() > 200_000 {
            self.keys.clear();
        }
        let keys: Arc<Vec<Arc<SeriesKey>>> = m
            .series
            .iter()
            .map(|s| match self.keys.get(s.name) {
                Some(k) if k.method == s.method && k.frequency == s.frequency => Arc::clone(k),
                _ => {
                    let k = Arc::new(SeriesKey {
                        name: s.name.into(),
                        hash: fnv1a64(s.name.as_bytes()),
                        method: s.method,
                        frequency: s.frequency,
                    });
                    self.keys.insert(s.name.into(), Arc::clone(&k));
                    k
                }
            })
            .collect::<Vec<_>>()
            .into();
        let applied = self
            .applied
            .entry((h.node.clone(), h.incarnation, h.lane, shard))
            .or_default();
        let workers = out.len();
        for (seq, points) in &m.sections {
            if *seq != wire::NO_SEQ && applied.contains(*seq) {
                r.duplicates += 1;
                continue;
            }
            for p in points {
                let key = &keys[p.series as usize];
                let batch = &mut out[crate::hash::worker_of(key.hash, workers)];
                batch.hold_once(&keys);
                // SAFETY: `keys`, which the batch holds from the line above, owns `key`
                // and is never changed again.
                #[allow(unsafe_code)]
                unsafe {
                    batch.push_held(key, p.timestamp, p.value);
                }
                r.points += 1;
            }
        }
        applied.insert(h.first_seq, h.last_seq);
        applied.forget_below(h.watermark);
        Ok(r)
    }
}

/// Consumes shard `k`: rebuilds, goes live, follows, until `stop`. Recreates its consumer
/// after an error, from the message after the last one delivered.
async fn consume(sh: Arc<Shared>, k: u32, stop: CancellationToken) {
    let started = Instant::now();
    let start = time::OffsetDateTime::now_utc() - sh.rebuild_span;
    let mut from = DeliverPolicy::ByStartTime { start_time: start };
    let mut live = false;
    let mut applier = Applier::default();
    let workers = sh.workers.queues.len();
    let mut out: Vec<Batch> = (0..workers).map(|_| Batch::new()).collect();
    let cfg = &sh.joined.cfg;
    'outer: while !stop.is_cancelled() {
        let created = sh
            .joined
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject(&cfg.name, k),
                deliver_policy: from,
                ..Default::default()
            })
            .await;
        let mut c: consumer::Consumer<pull::OrderedConfig> = match created {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(shard = k, error = %e, "cannot create the shard consumer; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let pending = c.info().await.map(|i| i.num_pending).unwrap_or(1);
        if pending == 0 && !live {
            go_live(&sh, k, started, &mut live).await;
        }
        let Ok(mut messages) = c.messages().await else {
            continue;
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                m = messages.next() => m,
            };
            let m = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!(shard = k, error = %e, "shard consumer error; recreating it");
                    continue 'outer;
                }
                None => continue 'outer,
            };
            let info = m.info().ok().map(|i| (i.stream_sequence, i.pending));
            match applier.apply(&m.payload, k, sh.digest.load(Ordering::Relaxed), &mut out) {
                Ok(r) => {
                    if r.mismatch {
                        sh.stats.rules_mismatch.fetch_add(1, Ordering::Relaxed);
                    }
                    sh.stats
                        .duplicates_skipped
                        .fetch_add(r.duplicates, Ordering::Relaxed);
                }
                Err(e) => {
                    if sh
                        .stats
                        .malformed_messages
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(100)
                    {
                        tracing::warn!(shard = k, error = %e, "skipping a cluster message");
                    }
                }
            }
            for (i, items) in out.iter_mut().enumerate() {
                if items.is_empty() {
                    continue;
                }
                let items = std::mem::take(items);
                let msg = if live {
                    WorkerMsg::Batch(items)
                } else {
                    WorkerMsg::Rebuild {
                        items,
                        delivered: false,
                    }
                };
                sh.workers.send(i, msg).await;
            }
            if let Some((seq, pending)) = info {
                from = DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                };
                sh.stats.shard_lag[k as usize].store(pending, Ordering::Relaxed);
                if pending == 0 && !live {
                    go_live(&sh, k, started, &mut live).await;
                }
            }
        }
    }
}

/// The rebuild of shard `k` is in the workers' queues: mark it live in each worker.
async fn go_live(sh: &Shared, k: u32, started: Instant, live: &mut bool) {
    sh.workers.all(|| WorkerMsg::Live(k)).await;
    *live = true;
    sh.stats
        .last_rebuild_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
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
    let _ = writeln!(
        s,
        "{:<24} {:>7} {:>18} {:>13}",
        "node", "shards", "publish_lag_bytes", "consumer_lag"
    );
    for b in &beats {
        let _ = writeln!(
            s,
            "{:<24} {:>7} {:>18} {:>13}",
            b.node,
            owners.get(&b.node).map_or(0, Vec::len),
            b.publish_lag_bytes,
            b.consumer_lag
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
mod tests {
    use super::*;
    use crate::method::Method;

    fn message(
        node: &str,
        inc: u64,
        wm: u64,
        range: (u64, u64),
        sections: &[(u64, f64)],
    ) -> Vec<u8> {
        let key = Arc::new(SeriesKey {
            name: "out.count".into(),
            hash: fnv1a64(b"out.count"),
            method: Method::Count,
            frequency: 60,
        });
        let mut b = wire::Builder::default();
        for (seq, v) in sections {
            b.section(*seq);
            b.push(&key, 120.0, *v);
        }
        b.finish(&wire::Header {
            digest: 1,
            incarnation: inc,
            lane: 0,
            watermark: wm,
            first_seq: range.0,
            last_seq: range.1,
            node: node.into(),
        })
    }

    #[test]
    fn a_republished_record_is_applied_once_even_when_rebatched() {
        let mut a = Applier::default();
        let mut out = vec![Batch::new(), Batch::new()];
        let r = a
            .apply(
                &message("n1", 7, 0, (0, 9), &[(2, 1.0), (5, 1.0)]),
                0,
                1,
                &mut out,
            )
            .unwrap();
        assert_eq!((r.points, r.duplicates, r.mismatch), (2, 0, false));
        // After a restart the node republishes from 3 with other batch boundaries.
        let r = a
            .apply(
                &message("n1", 7, 3, (3, 12), &[(5, 1.0), (11, 1.0)]),
                0,
                2,
                &mut out,
            )
            .unwrap();
        assert_eq!((r.points, r.duplicates, r.mismatch), (1, 1, true));
        // Another incarnation (its journal was lost) starts afresh at seq 0.
        let r = a
            .apply(&message("n1", 8, 0, (0, 5), &[(5, 1.0)]), 0, 1, &mut out)
            .unwrap();
        assert_eq!(r.points, 1);
        // The same records of another shard are other datapoints.
        let r = a
            .apply(&message("n1", 7, 0, (0, 9), &[(5, 1.0)]), 1, 1, &mut out)
            .unwrap();
        assert_eq!(r.points, 1);
        let total: usize = out.iter().map(Batch::len).sum();
        assert_eq!(total, 5);
        assert!(a.apply(b"\x09junk", 0, 1, &mut out).is_err());
    }

    #[test]
    fn messages_stored_out_of_order_lose_nothing() {
        // A retried publish lands after the next message of its shard.
        let mut a = Applier::default();
        let mut out = vec![Batch::new()];
        let later = message("n1", 1, 0, (10, 19), &[(12, 1.0), (19, 1.0)]);
        let earlier = message("n1", 1, 0, (0, 9), &[(3, 1.0), (9, 1.0)]);
        assert_eq!(a.apply(&later, 0, 1, &mut out).unwrap().points, 2);
        assert_eq!(a.apply(&earlier, 0, 1, &mut out).unwrap().points, 2);
        // And a copy of either is skipped whole.
        let r = a.apply(&earlier, 0, 1, &mut out).unwrap();
        assert_eq!((r.points, r.duplicates), (0, 2));
        assert_eq!(out[0].len(), 4);
    }

    #[test]
    fn shard_lists_print_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(ranges(&[]), "");
    }
}
