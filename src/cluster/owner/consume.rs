//! One owned shard's consumer: rebuilds the shard from the stream, goes live, follows it,
//! and applies each message once ([`Applier`]: sections already applied are skipped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::aggregate::batch::Batch;
use crate::aggregate::worker::WorkerMsg;
use crate::cluster::shard::Applied;
use crate::cluster::{subject, wire};
use crate::hash::fnv1a64;
use crate::route::SeriesKey;

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
pub(super) async fn consume(sh: Arc<Shared>, k: u32, stop: CancellationToken) {
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
            apply(&sh, k, &mut applier, &m.payload, &mut out);
            hand_on(&sh, &mut out, live).await;
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

/// Applies one message of shard `k` into `out` (per worker), counting a rules mismatch,
/// the duplicates skipped, or a message that does not decode (skipped, logged once per
/// 100).
fn apply(sh: &Shared, k: u32, applier: &mut Applier, payload: &[u8], out: &mut [Batch]) {
    match applier.apply(payload, k, sh.digest.load(Ordering::Relaxed), out) {
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
}

/// Sends each worker its batch of `out` (emptying it): live input, or rebuild input
/// before the shard went live.
async fn hand_on(sh: &Shared, out: &mut [Batch], live: bool) {
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
}

/// The rebuild of shard `k` is in the workers' queues: mark it live in each worker.
async fn go_live(sh: &Shared, k: u32, started: Instant, live: &mut bool) {
    sh.workers.all(|| WorkerMsg::Live(k)).await;
    *live = true;
    sh.stats
        .last_rebuild_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
}
