//! The ingest side of cluster mode: the journal, read back in order, published per shard.
//!
//! `publish_threads` lane threads (`aggd-publish-<l>`) follow the local journal from the
//! node's republish watermark. Lane `l` of `L` takes the records whose sequence number is
//! `l mod L` (numbered `seq / L` in the lane: every range, section and watermark in its
//! messages is such a lane number) and appends each output series' datapoints to its
//! shard's open message ([`wire::Builder`]), one section per record.
//!
//! In the steady state a lane decodes nothing: each connection routed its frame's
//! datapoints by shard and attached them to the frame's journal record ([`Routed`]), and
//! the journal's writer hands each record it wrote, in order, to the lanes
//! ([`crate::journal::follow`]), waking them. What was not handed over (records of an
//! earlier run, below the watermark; records the lanes had no room for, beyond
//! [`FOLLOWED_BYTES`]) is read back from the journal file ([`Tail`]) and decoded and
//! routed exactly as its connection did, without the datapoints its verdict refused.
//! Either way the connection counted the record's datapoints, once. A message is sealed
//! when it holds `batch_datapoints` datapoints or `batch_bytes` bytes, or its oldest
//! datapoint waited `batch_delay`; it covers the records from the end of its shard's
//! previous message to the last record read.
//!
//! A tokio task publishes sealed messages with at most `max_in_flight` awaiting their
//! acknowledgement, each retried (same `Nats-Msg-Id`, so the stream keeps one copy) until
//! it is acknowledged: through a NATS outage nothing is dropped, the window fills, the
//! thread stops reading, and the journal holds the rest.
//!
//! The **watermark** is the lowest journal record not yet in an acknowledged message, over
//! the lanes: per lane, the first record of its oldest unacknowledged or open message, or
//! its next record to read. It is saved with the journal ([`crate::journal::published`]:
//! `<journal dir>/cluster.state`) every second and at shutdown; after a restart the node
//! republishes from it. Records republished that an owner already applied are recognised
//! by their sections and skipped ([`super::shard::Applied`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

mod handover;
mod lane;

pub use handover::FOLLOWED_BYTES;
use handover::HandOver;
use lane::Lane;

use super::ClusterStats;
use crate::config::cluster::ClusterConfig;
use crate::ingest::{FrameRouter, Routes};
use crate::journal::JournalStats;
use crate::journal::follow::{FollowSlot, Follower};
use crate::journal::io::JournalIo;
use crate::journal::published::{State, load_state, save_state};
use crate::journal::tail::Tail;

/// How many records of lane `lane` of `lanes` have a sequence number below `bound`: the
/// lane number of the first such record at or after `bound`.
fn lane_index(bound: u64, lane: u64, lanes: u64) -> u64 {
    if bound <= lane {
        0
    } else {
        (bound - lane).div_ceil(lanes)
    }
}

/// The journal watermark of lanes whose own watermarks (lane numbers) are `wms`: the
/// lowest record not yet acknowledged in any lane.
fn global_watermark(wms: &[u64]) -> u64 {
    let lanes = wms.len() as u64;
    wms.iter()
        .enumerate()
        .map(|(l, wm)| wm * lanes + l as u64)
        .min()
        .unwrap_or(0)
}

/// A sealed message on its way to the stream.
struct Out {
    lane: usize,
    subject: String,
    id: String,
    payload: Bytes,
    first_seq: u64,
    points: u64,
}

/// What the thread and the publishing task share.
#[derive(Default)]
struct Progress {
    /// First records of unacknowledged messages (a multiset).
    unacked: BTreeMap<u64, u32>,
    /// Lowest record not in a sealed message (open messages and the read position).
    floor: u64,
    /// Bytes of unacknowledged messages.
    inflight_bytes: u64,
}

impl Progress {
    /// A lane's progress, starting at lane number `floor`.
    fn at(floor: u64) -> Arc<Mutex<Progress>> {
        Arc::new(Mutex::new(Progress {
            floor,
            ..Progress::default()
        }))
    }

    fn watermark(&self) -> u64 {
        self.unacked
            .keys()
            .next()
            .map_or(self.floor, |f| (*f).min(self.floor))
    }
}

/// The journal a [`Publisher`] follows.
pub(crate) struct Source<'a> {
    /// Its directory.
    pub dir: &'a Path,
    /// How its files (and `cluster.state`) are read and written.
    pub io: Arc<dyn JournalIo>,
    /// Its counters (the bytes written this run).
    pub stats: Arc<JournalStats>,
    /// Its next record when it was opened.
    pub opened_at_seq: u64,
    /// How far its writer has offered records to a follower.
    pub follow: Arc<FollowSlot>,
}

/// The publisher: its thread and task, and how to stop them.
pub(crate) struct Publisher {
    /// What the journal's writer hands written records to ([`Publisher::follower`]).
    follower: Arc<HandOver>,
    threads: Vec<std::thread::JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set to the journal's next record at shutdown: read up to it, seal all, stop.
    drain_to: Arc<AtomicU64>,
    /// Give up waiting (shutdown's deadline passed).
    abandon: Arc<AtomicBool>,
    /// Per lane.
    progress: Vec<Arc<Mutex<Progress>>>,
    dir: PathBuf,
    io: Arc<dyn JournalIo>,
    state: State,
}

/// Publishes one message until it is acknowledged (or `abandon`), backing off from 50 ms
/// to 2 s between attempts.
async fn publish_one(
    js: jetstream::Context,
    out: Out,
    stats: Arc<ClusterStats>,
    abandon: Arc<AtomicBool>,
) -> (Out, bool) {
    let mut backoff = crate::time::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", out.id.as_str());
        let sent = js
            .publish_with_headers(out.subject.clone(), headers, out.payload.clone())
            .await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(async_nats::Error::from),
            Err(e) => Err(e.into()),
        };
        match acked {
            Ok(()) => return (out, true),
            Err(e) => {
                if stats
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(100)
                {
                    tracing::warn!(error = %e, subject = %out.subject, "cluster publish failed; retrying");
                }
            }
        }
        if abandon.load(Ordering::Relaxed) {
            return (out, false);
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// Takes sealed messages off `rx` and publishes them, at most `max` in flight.
async fn publish_loop(
    js: jetstream::Context,
    mut rx: tokio::sync::mpsc::Receiver<Out>,
    progress: Vec<Arc<Mutex<Progress>>>,
    stats: Arc<ClusterStats>,
    max: usize,
    abandon: Arc<AtomicBool>,
) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            m = rx.recv(), if open && inflight.len() < max => match m {
                Some(out) => inflight.push(publish_one(js.clone(), out, Arc::clone(&stats), Arc::clone(&abandon))),
                None => open = false,
            },
            Some((out, acked)) = inflight.next(), if !inflight.is_empty() => {
                if acked {
                    stats.messages_published.fetch_add(1, Ordering::Relaxed);
                    stats.datapoints_published.fetch_add(out.points, Ordering::Relaxed);
                    let mut p = progress[out.lane].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    p.inflight_bytes = p.inflight_bytes.saturating_sub(out.payload.len() as u64);
                    if let Some(c) = p.unacked.get_mut(&out.first_seq) {
                        *c -= 1;
                        if *c == 0 {
                            p.unacked.remove(&out.first_seq);
                        }
                    }
                }
            },
            else => return,
        }
    }
}

/// What every lane of one publisher starts from ([`Publisher::start`]).
struct LaneStart<'a> {
    cfg: &'a ClusterConfig,
    digest: &'a Arc<AtomicU64>,
    state: State,
    dir: &'a Path,
    io: &'a Arc<dyn JournalIo>,
    journal: &'a Arc<JournalStats>,
    routes: &'a Arc<Routes>,
    follow: &'a Arc<FollowSlot>,
    opened_at_seq: u64,
    tx: &'a tokio::sync::mpsc::Sender<Out>,
    progress: &'a [Arc<Mutex<Progress>>],
    stats: &'a Arc<ClusterStats>,
    persisted: Arc<AtomicU64>,
    consumed_new: Arc<AtomicU64>,
    abandon: &'a Arc<AtomicBool>,
}

impl LaneStart<'_> {
    /// Lane `lane`, at the watermark, taking what the writer hands over from `followed`.
    fn lane(&self, lane: u64, followed: crossbeam_channel::Receiver<handover::Followed>) -> Lane {
        let state = self.state;
        let shards = self.cfg.shards as usize;
        let cache = self.routes.router.load().route_cache_entries();
        Lane {
            cfg: self.cfg.clone(),
            digest: Arc::clone(self.digest),
            state,
            lane,
            persisted: Arc::clone(&self.persisted),
            dir: self.dir.to_path_buf(),
            io: Arc::clone(self.io),
            // Only what the writer reported written: a batch whose write failed is
            // cut back off and its sequence numbers used again.
            tail: Tail::with_io(self.dir, state.watermark, Arc::clone(self.io))
                .committed_below(Arc::clone(self.journal)),
            frames: FrameRouter::with_private_cache(Arc::clone(self.routes), cache),
            next: state.watermark,
            followed,
            ahead: None,
            follow: Arc::clone(self.follow),
            open: (0..shards).map(|_| None).collect(),
            next_first: vec![lane_index(state.watermark, lane, state.lanes); shards],
            tx: self.tx.clone(),
            progress: self.progress.to_vec(),
            stats: Arc::clone(self.stats),
            journal: Arc::clone(self.journal),
            opened_at_seq: self.opened_at_seq,
            consumed_new: Arc::clone(&self.consumed_new),
            abandon: Arc::clone(self.abandon),
        }
    }
}

/// How long [`Publisher::drain`] waits for the lanes and the publishing task once it gave
/// up at its deadline.
const ABANDON_GRACE: Duration = Duration::from_millis(500);

impl Publisher {
    /// Starts publishing `dir`'s journal from the persisted watermark (see the module
    /// docs), routing the records it reads back from the journal by `routes` (whose
    /// router has one output per shard). Must be called inside a tokio runtime.
    ///
    /// Errors: the state file cannot be read or written, or the thread cannot be spawned.
    pub(crate) fn start(
        js: jetstream::Context,
        cfg: &ClusterConfig,
        digest: &Arc<AtomicU64>,
        journal: Source<'_>,
        routes: Arc<Routes>,
        stats: Arc<ClusterStats>,
    ) -> std::io::Result<Publisher> {
        let Source {
            dir,
            io,
            stats: journal,
            opened_at_seq,
            follow,
        } = journal;
        let state = load_state(&*io, dir, opened_at_seq, cfg.publish_threads as u64)?;
        tracing::info!(
            incarnation = format_args!("{:016x}", state.incarnation),
            watermark = state.watermark,
            lanes = state.lanes,
            "cluster publisher starts at the watermark"
        );
        let lanes = state.lanes;
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.max_in_flight);
        let (follow_tx, follow_rx): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| crossbeam_channel::unbounded()).unzip();
        let lanes_follower = Arc::new(HandOver::new(follow_tx, &stats));
        let progress: Vec<Arc<Mutex<Progress>>> = (0..lanes)
            .map(|l| Progress::at(lane_index(state.watermark, l, lanes)))
            .collect();
        let abandon = Arc::new(AtomicBool::new(false));
        let drain_to = Arc::new(AtomicU64::new(u64::MAX));
        let start = LaneStart {
            cfg,
            digest,
            state,
            dir,
            io: &io,
            journal: &journal,
            routes: &routes,
            follow: &follow,
            opened_at_seq,
            tx: &tx,
            progress: &progress,
            stats: &stats,
            persisted: Arc::new(AtomicU64::new(state.watermark)),
            consumed_new: Arc::new(AtomicU64::new(0)),
            abandon: &abandon,
        };
        let mut threads = Vec::new();
        for (lane, followed) in (0..lanes).zip(follow_rx) {
            let reader = start.lane(lane, followed);
            let d = Arc::clone(&drain_to);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aggd-publish-{lane}"))
                    .spawn(move || reader.run(d))?,
            );
        }
        drop(tx);
        let task = tokio::spawn(publish_loop(
            js,
            rx,
            progress.clone(),
            stats,
            cfg.max_in_flight,
            Arc::clone(&abandon),
        ));
        Ok(Publisher {
            follower: lanes_follower,
            threads,
            task: Some(task),
            drain_to,
            abandon,
            progress,
            dir: dir.to_path_buf(),
            io,
            state,
        })
    }

    /// The lanes' side of the journal's hand-over, for [`crate::journal::Journal::follow`].
    pub(crate) fn follower(&self) -> Arc<dyn Follower> {
        Arc::clone(&self.follower) as Arc<dyn Follower>
    }

    /// Publishes everything up to journal record `next_seq` (exclusive) and waits for its
    /// acknowledgements until `deadline`, then stops and persists the watermark. Returns
    /// whether everything was acknowledged.
    pub(crate) async fn drain(mut self, next_seq: u64, deadline: tokio::time::Instant) -> bool {
        self.drain_to.store(next_seq, Ordering::Relaxed);
        let abandon = Arc::clone(&self.abandon);
        let threads = std::mem::take(&mut self.threads);
        let task = self.task.take();
        let all = async move {
            for t in threads {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            if let Some(t) = task {
                let _ = t.await;
            }
        };
        tokio::pin!(all);
        let finished = tokio::time::timeout_at(deadline, &mut all).await.is_ok();
        if !finished {
            abandon.store(true, Ordering::Relaxed);
            // The lanes stop at `abandon`, the task at its next attempt; a publish still
            // awaiting its acknowledgement is not waited for longer.
            let _ = tokio::time::timeout(ABANDON_GRACE, all).await;
        }
        let wms: Vec<u64> = (self.progress.iter())
            .map(|p| {
                p.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .watermark()
            })
            .collect();
        let wm = global_watermark(&wms);
        let acked_all = finished && wm >= next_seq;
        if let Ok(s) = load_state(&*self.io, &self.dir, wm, self.state.lanes)
            && s.incarnation == self.state.incarnation
            && wm > s.watermark
        {
            let _ = save_state(
                &*self.io,
                &self.dir,
                State {
                    watermark: wm,
                    ..self.state
                },
            );
        }
        acked_all
    }
}

#[cfg(test)]
mod tests;
