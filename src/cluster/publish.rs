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
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::wire::{self, Builder, Header};
use super::{ClusterStats, subject};
use crate::config::cluster::ClusterConfig;
use crate::ingest::{FrameRouter, Routed, Routes};
use crate::journal::JournalStats;
use crate::journal::follow::{Attachment, FollowSlot, Follower};
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

/// Most bytes of handed-over records (work items at
/// [`crate::ingest::slots::WORK_ITEM_BYTES`] each, plus [`FOLLOWED_RECORD_BYTES`] a
/// record) waiting for the publisher lanes; beyond it the writer's hand-over is refused
/// and the lanes read those records from the journal file. Counted in the memory bound.
pub const FOLLOWED_BYTES: u64 = 64 << 20;

/// How long a lane waits for room in the in-flight window before it lets go of the
/// records handed over to it ([`Lane::shed`]).
const SHED_AFTER: Duration = Duration::from_secs(1);

/// What a handed-over record costs besides its work items.
const FOLLOWED_RECORD_BYTES: u64 = 128;

/// A record the journal's writer handed over with its routed datapoints.
struct Followed {
    seq: u64,
    /// Its bytes in the segment (for the publish lag).
    bytes: u64,
    routed: Routed,
    /// What it is charged against [`FOLLOWED_BYTES`].
    charge: u64,
}

/// The journal's follower: hands each written record to its lane, within
/// [`FOLLOWED_BYTES`].
pub(crate) struct HandOver {
    tx: Vec<crossbeam_channel::Sender<Followed>>,
    /// Its `followed_bytes`.
    lag: Arc<super::PublishLag>,
    /// Counts the records refused.
    stats: Arc<ClusterStats>,
}

impl Follower for HandOver {
    fn written(&self, seq: u64, bytes: u64, attachment: Attachment) {
        let Ok(routed) = attachment.downcast::<Routed>() else {
            return;
        };
        let items = routed.items.len();
        let charge = FOLLOWED_RECORD_BYTES + (items * crate::ingest::slots::WORK_ITEM_BYTES) as u64;
        let queued = &self.lag.followed_bytes;
        if queued.fetch_add(charge, Ordering::Relaxed) + charge > FOLLOWED_BYTES {
            // The lanes are behind: they read this record from the file.
            queued.fetch_sub(charge, Ordering::Relaxed);
            self.stats.records_read_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let f = Followed {
            seq,
            bytes,
            routed: *routed,
            charge,
        };
        let lane = (seq % self.tx.len() as u64) as usize;
        if let Err(e) = self.tx[lane].send(f) {
            queued.fetch_sub(e.0.charge, Ordering::Relaxed);
        }
    }
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

/// One shard's open message.
struct Open {
    builder: Builder,
    first: u64,
    opened: Instant,
}

/// Longest wait of an idle publisher lane for new journal records (it still persists its
/// watermark and updates its gauges at least this often).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// One publisher lane: what its thread (`aggd-publish-<l>`) works with.
struct Lane {
    cfg: ClusterConfig,
    /// This node's rules digest (follows reloads).
    digest: Arc<AtomicU64>,
    state: State,
    /// This thread's lane, of `state.lanes`.
    lane: u64,
    /// The persisted journal watermark (lane 0 writes it).
    persisted: Arc<AtomicU64>,
    dir: PathBuf,
    io: Arc<dyn JournalIo>,
    /// Reads what was not handed over from the journal file.
    tail: Tail,
    /// Decodes and routes what the tail reads.
    frames: FrameRouter,
    /// Every record of this lane below it is in a message (or had nothing for a shard).
    next: u64,
    /// Records the writer handed over, in order.
    followed: crossbeam_channel::Receiver<Followed>,
    /// One taken off `followed` with records before it not handed over.
    ahead: Option<Followed>,
    /// How far the writer offered records.
    follow: Arc<FollowSlot>,
    open: Vec<Option<Open>>,
    next_first: Vec<u64>,
    tx: tokio::sync::mpsc::Sender<Out>,
    /// Every lane's progress (this lane's is `progress[lane]`).
    progress: Vec<Arc<Mutex<Progress>>>,
    stats: Arc<ClusterStats>,
    journal: Arc<JournalStats>,
    /// The journal's next record when it was opened: records from it on count as new.
    opened_at_seq: u64,
    /// Bytes of new records read, by every lane.
    consumed_new: Arc<AtomicU64>,
    abandon: Arc<AtomicBool>,
}

impl Lane {
    fn lock(&self, lane: usize) -> std::sync::MutexGuard<'_, Progress> {
        self.progress[lane]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lane number after the last record of this lane read.
    fn next_in_lane(&self) -> u64 {
        lane_index(self.next, self.lane, self.state.lanes)
    }

    fn header(&self, first: u64, last: u64) -> Header {
        let persisted = self.persisted.load(Ordering::Relaxed);
        Header {
            digest: self.digest.load(Ordering::Relaxed),
            incarnation: self.state.incarnation,
            lane: self.lane as u16,
            watermark: lane_index(persisted, self.lane, self.state.lanes),
            first_seq: first,
            last_seq: last,
            node: self.cfg.node.clone(),
        }
    }

    /// Seals shard `k`'s open message, covering records up to `last`, and queues it
    /// (waiting while the in-flight window is full, unless abandoned).
    fn seal(&mut self, k: usize, last: u64) {
        let Some(mut o) = self.open[k].take() else {
            return;
        };
        let h = self.header(o.first, last);
        let points = o.builder.points() as u64;
        let payload = Bytes::from(o.builder.finish(&h));
        self.next_first[k] = last + 1;
        {
            let mut p = self.lock(self.lane as usize);
            *p.unacked.entry(o.first).or_default() += 1;
            p.inflight_bytes += payload.len() as u64;
        }
        let mut out = Out {
            lane: self.lane as usize,
            subject: subject(&self.cfg.name, k as u32),
            id: wire::msg_id(&h, k as u32),
            payload,
            first_seq: o.first,
            points,
        };
        let waiting = Instant::now();
        loop {
            match self.tx.try_send(out) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Full(o)) => out = o,
            }
            if self.abandon.load(Ordering::Relaxed) {
                return;
            }
            if waiting.elapsed() >= SHED_AFTER {
                self.shed();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets go of the records handed over and not yet taken: the stream has not taken a
    /// message for [`SHED_AFTER`], and connections must not wait for this lane (only
    /// for the publish lag's limit). The lane reads them from the file later.
    fn shed(&mut self) {
        let lag = &self.stats.publish.followed_bytes;
        for f in self
            .ahead
            .take()
            .into_iter()
            .chain(self.followed.try_iter())
        {
            lag.fetch_sub(f.charge, Ordering::Relaxed);
            self.stats.records_read_back.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends what the journal has for this lane to the open messages, in order: the
    /// records the writer handed over, and from the file those it did not (up to 4 MiB at
    /// a time); seals the messages that filled up. Returns the records taken.
    ///
    /// Errors: the journal file cannot be read (what was taken so far stays taken).
    fn read(&mut self) -> std::io::Result<usize> {
        let offered = self.follow.offered_below();
        let (lane, lanes) = (self.lane, self.state.lanes);
        let mut full = Vec::new();
        let mut taken = 0;
        let result = loop {
            if taken >= 4096 {
                break Ok(());
            }
            let f = self.ahead.take().or_else(|| self.followed.try_recv().ok());
            let bound = match f {
                Some(f) if f.seq < self.next => {
                    // Read from the file already.
                    self.stats
                        .publish
                        .followed_bytes
                        .fetch_sub(f.charge, Ordering::Relaxed);
                    continue;
                }
                Some(f) if lane_index(f.seq, lane, lanes) == self.next_in_lane() => {
                    self.add_followed(f, &mut full);
                    taken += 1;
                    continue;
                }
                Some(f) => {
                    let seq = f.seq;
                    self.ahead = Some(f);
                    seq
                }
                None => offered,
            };
            if lane_index(bound, lane, lanes) <= self.next_in_lane() {
                // Nothing of this lane before `bound` is missing.
                self.next = self.next.max(bound);
                break Ok(());
            }
            // Records of this lane before `bound` were not handed over.
            match self.read_file(&mut full) {
                Ok(0) => break Ok(()),
                Ok(n) => taken += n,
                Err(e) => break Err(e),
            }
        };
        // A full message holds sections up to the last record read: it covers up to
        // there, so every record of a shard is in exactly the message whose range holds
        // it, whatever order the stream stores the messages in (a retried publish lands
        // after later ones; an owner then skips nothing it has not applied).
        let last = self.next_in_lane().saturating_sub(1);
        full.sort_unstable();
        full.dedup();
        for k in full {
            self.seal(k, last);
        }
        result.map(|()| taken)
    }

    /// Appends a handed-over record's datapoints; notes the shards whose message is full
    /// in `full`.
    fn add_followed(&mut self, f: Followed, full: &mut Vec<usize>) {
        let seq = f.seq / self.state.lanes;
        for (k, items) in f.routed.by_shard() {
            let k = k as usize;
            let first = self.next_first[k];
            append(&mut self.open[k], first, &self.cfg, seq, items, || {
                full.push(k);
            });
        }
        self.next = f.seq + 1;
        self.consumed_new.fetch_add(f.bytes, Ordering::Relaxed);
        self.stats
            .publish
            .followed_bytes
            .fetch_sub(f.charge, Ordering::Relaxed);
    }

    /// Reads this lane's records from the file, from `next` on (up to 4 MiB), decoding
    /// and routing each as its connection did; notes full shards in `full`. Returns the
    /// records read (0: none is readable yet).
    ///
    /// Errors: the journal cannot be read.
    fn read_file(&mut self, full: &mut Vec<usize>) -> std::io::Result<usize> {
        self.tail.skip_to(self.next)?;
        let Lane {
            tail,
            frames,
            open,
            next_first,
            cfg,
            ..
        } = self;
        let mut new_bytes = 0u64;
        let opened_at = self.opened_at_seq;
        let (lane, lanes) = (self.lane, self.state.lanes);
        let n = tail.read(4 << 20, |rec| {
            if rec.meta.seq % lanes != lane {
                return;
            }
            let seq = rec.meta.seq / lanes;
            if rec.meta.seq >= opened_at {
                new_bytes += rec.encoded_len() as u64;
            }
            frames.reread(rec);
            for (k, items) in frames.pending_uncounted().iter_mut().enumerate() {
                if !items.is_empty() {
                    append(&mut open[k], next_first[k], cfg, seq, items.items(), || {
                        full.push(k);
                    });
                    items.clear();
                }
            }
        })?;
        self.next = self.next.max(self.tail.next_seq());
        self.consumed_new.fetch_add(new_bytes, Ordering::Relaxed);
        Ok(n)
    }

    /// Seals the open messages older than `batch_delay` (all of them with `all`).
    fn seal_due(&mut self, all: bool) {
        let last = self.next_in_lane().saturating_sub(1);
        let delay = self.cfg.batch_delay;
        for k in 0..self.open.len() {
            if self.open[k]
                .as_ref()
                .is_some_and(|o| all || o.opened.elapsed() >= delay)
            {
                self.seal(k, last);
            }
        }
    }

    /// Updates this lane's floor; lane 0 also the lag gauge and the records-missed
    /// counter (every lane's tail sees the same gaps).
    fn update(&mut self) {
        let floor = self
            .open
            .iter()
            .flatten()
            .map(|o| o.first)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.next_in_lane());
        self.lock(self.lane as usize).floor = floor;
        if self.lane != 0 {
            return;
        }
        let inflight: u64 = (0..self.progress.len())
            .map(|l| self.lock(l).inflight_bytes)
            .sum();
        let written = self.journal.bytes.load(Ordering::Relaxed);
        let unread = written.saturating_sub(self.consumed_new.load(Ordering::Relaxed));
        self.stats
            .publish
            .bytes
            .store(unread + inflight, Ordering::Relaxed);
        self.stats
            .records_missed
            .store(self.tail.stats().missed_records, Ordering::Relaxed);
    }

    /// Lane 0: persists the journal watermark if it moved.
    fn persist(&mut self) {
        if self.lane != 0 {
            return;
        }
        let wms: Vec<u64> = (0..self.progress.len())
            .map(|l| self.lock(l).watermark())
            .collect();
        let wm = global_watermark(&wms);
        if wm > self.state.watermark {
            let s = State {
                watermark: wm,
                ..self.state
            };
            match save_state(&*self.io, &self.dir, s) {
                Ok(()) => {
                    self.state = s;
                    self.persisted.store(wm, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write the cluster watermark"),
            }
        }
    }

    fn run(mut self, drain_to: Arc<AtomicU64>) {
        let mut last_persist = Instant::now();
        loop {
            // What the writer had offered before this read: a record written since wakes
            // the wait below at once.
            let seen = self.follow.offered_below();
            let n = match self.read() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster publisher cannot read the journal; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                    0
                }
            };
            let target = drain_to.load(Ordering::Relaxed);
            let draining = target != u64::MAX;
            let done = draining && self.next >= target;
            self.seal_due(done);
            self.update();
            if last_persist.elapsed() >= Duration::from_secs(1) {
                self.persist();
                last_persist = Instant::now();
            }
            if done || (draining && self.abandon.load(Ordering::Relaxed)) {
                return;
            }
            if n == 0 {
                // Records the tail could not read yet (a new segment it has not listed):
                // look again soon, as no write may come to wake it.
                let behind = self.next_in_lane() < lane_index(seen, self.lane, self.state.lanes);
                let wait = self.idle_wait(draining || behind);
                self.journal
                    .appended
                    .wait(self.follow.offered(), seen, wait);
            }
        }
    }

    /// How long an idle lane may wait for the journal: 2 ms when `soon` (draining, to see
    /// `abandon`, or behind the writer), else until its first open message is due to be
    /// sealed (`batch_delay`), at most [`IDLE_WAIT`]. The journal's writer wakes it
    /// earlier when records are written.
    fn idle_wait(&self, soon: bool) -> Duration {
        if soon {
            return Duration::from_millis(2);
        }
        self.open
            .iter()
            .flatten()
            .map(|o| self.cfg.batch_delay.saturating_sub(o.opened.elapsed()))
            .min()
            .map_or(IDLE_WAIT, |d| {
                d.clamp(Duration::from_micros(100), IDLE_WAIT)
            })
    }
}

/// Appends `items` as lane record `seq`'s section to a shard's open message `open`
/// (opened, covering records from `first`, if there is none); calls `full` once the
/// message holds `batch_datapoints` datapoints or `batch_bytes` bytes.
fn append(
    open: &mut Option<Open>,
    first: u64,
    cfg: &ClusterConfig,
    seq: u64,
    items: &[crate::aggregate::batch::WorkItem],
    full: impl FnOnce(),
) {
    let o = open.get_or_insert_with(|| Open {
        builder: Builder::default(),
        first,
        opened: Instant::now(),
    });
    o.builder.section(seq);
    for it in items {
        o.builder.push(it, it.timestamp, it.value);
    }
    if o.builder.points() >= cfg.batch_datapoints || o.builder.bytes() >= cfg.batch_bytes {
        full();
    }
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
        let shards = cfg.shards as usize;
        let cache = routes.router.load().route_cache_entries();
        let lanes = state.lanes;
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.max_in_flight);
        let (follow_tx, follow_rx): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| crossbeam_channel::unbounded()).unzip();
        let lanes_follower = Arc::new(HandOver {
            tx: follow_tx,
            lag: Arc::clone(&stats.publish),
            stats: Arc::clone(&stats),
        });
        let progress: Vec<Arc<Mutex<Progress>>> = (0..lanes)
            .map(|l| {
                Arc::new(Mutex::new(Progress {
                    floor: lane_index(state.watermark, l, lanes),
                    ..Progress::default()
                }))
            })
            .collect();
        let abandon = Arc::new(AtomicBool::new(false));
        let drain_to = Arc::new(AtomicU64::new(u64::MAX));
        let persisted = Arc::new(AtomicU64::new(state.watermark));
        let consumed_new = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (lane, followed) in (0..lanes).zip(follow_rx) {
            let start = lane_index(state.watermark, lane, lanes);
            let reader = Lane {
                cfg: cfg.clone(),
                digest: Arc::clone(digest),
                state,
                lane,
                persisted: Arc::clone(&persisted),
                dir: dir.to_path_buf(),
                io: Arc::clone(&io),
                // Only what the writer reported written: a batch whose write failed is
                // cut back off and its sequence numbers used again.
                tail: Tail::with_io(dir, state.watermark, Arc::clone(&io))
                    .committed_below(Arc::clone(&journal)),
                frames: FrameRouter::with_private_cache(Arc::clone(&routes), cache),
                next: state.watermark,
                followed,
                ahead: None,
                follow: Arc::clone(&follow),
                open: (0..shards).map(|_| None).collect(),
                next_first: vec![start; shards],
                tx: tx.clone(),
                progress: progress.clone(),
                stats: Arc::clone(&stats),
                journal: Arc::clone(&journal),
                opened_at_seq,
                consumed_new: Arc::clone(&consumed_new),
                abandon: Arc::clone(&abandon),
            };
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
            let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
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
mod tests {
    use super::*;
    use crate::datapoint::Kind;
    use crate::journal::io::OsIo;

    /// A lane over a real journal: (the reader, the journal, a connection-side frame
    /// router over the same rules, the sealed messages).
    fn lane(
        dir: &Path,
    ) -> (
        Lane,
        Arc<crate::journal::Journal>,
        FrameRouter,
        tokio::sync::mpsc::Receiver<Out>,
    ) {
        std::fs::write(dir.join("rules.conf"), "out.<g> (60) = sum in.<g>.*\n").unwrap();
        std::fs::write(
            dir.join("aggd.toml"),
            "[aggregation]\nrules = \"rules.conf\"\n\
             [journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [cluster]\nservers = [\"nats://127.0.0.1:1\"]\nname = \"t\"\nnode = \"a\"\n\
             shards = 8\nreplicas = 1\nbatch_datapoints = 1000000\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&dir.join("aggd.toml")).unwrap();
        let cfg = config.cluster.clone().unwrap();
        let jcfg = config.journal.clone().unwrap();
        let (journal, _) = crate::journal::Journal::open(jcfg).unwrap();
        let router = Arc::new(crate::route::Router::new(config.aggregation.clone(), 8));
        let routes = || Arc::new(Routes::new(&router, &config));
        let state = load_state(&OsIo, journal.dir(), 0, 1).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (ftx, frx) = crossbeam_channel::unbounded();
        let stats = Arc::new(ClusterStats {
            shard_lag: (0..8).map(|_| AtomicU64::new(u64::MAX)).collect(),
            ..ClusterStats::default()
        });
        journal.follow(Arc::new(HandOver {
            tx: vec![ftx],
            lag: Arc::clone(&stats.publish),
            stats: Arc::clone(&stats),
        }));
        let reader = Lane {
            cfg,
            digest: Arc::new(AtomicU64::new(1)),
            state,
            lane: 0,
            persisted: Arc::new(AtomicU64::new(0)),
            dir: journal.dir().to_path_buf(),
            io: journal.io(),
            tail: Tail::with_io(journal.dir(), 0, journal.io())
                .committed_below(journal.stats_arc()),
            frames: FrameRouter::with_private_cache(routes(), 100),
            next: 0,
            followed: frx,
            ahead: None,
            follow: journal.follow_slot(),
            open: (0..8).map(|_| None).collect(),
            next_first: vec![0; 8],
            tx,
            progress: vec![Arc::new(Mutex::new(Progress::default()))],
            stats,
            journal: journal.stats_arc(),
            opened_at_seq: 0,
            consumed_new: Arc::new(AtomicU64::new(0)),
            abandon: Arc::new(AtomicBool::new(false)),
        };
        (reader, journal, FrameRouter::new(routes()), rx)
    }

    /// Routes the line `in.g<group>.x <seq> 100` as a connection does and journals it,
    /// with its routed datapoints attached when `hand_over`.
    async fn journal_line(
        conn: &mut FrameRouter,
        journal: &crate::journal::Journal,
        seq: u64,
        group: u64,
        hand_over: bool,
    ) {
        let payload = format!("in.g{group}.x {seq} 100\n");
        conn.frame(Kind::PlaintextTcp, payload.as_bytes(), None, 100.0)
            .unwrap();
        let (routed, _) = conn.take_routed();
        let attachment: Option<crate::journal::follow::Attachment> =
            hand_over.then(|| Box::new(routed) as _);
        let rec = crate::journal::NewRecord {
            received_us: 100_000_000,
            listener: 0,
            kind: Kind::PlaintextTcp,
            peer: "127.0.0.1:9".parse().unwrap(),
            tenant: None,
            payload: Bytes::from(payload),
            verdict: conn.take_verdict(),
            attachment,
        };
        assert!(journal.submit(rec).await.wait().await);
    }

    /// Every (record, output series, value) in the sealed messages, in order.
    fn published(rx: &mut tokio::sync::mpsc::Receiver<Out>) -> Vec<(u64, String, f64)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let msg = wire::decode(&m.payload).unwrap();
            for (seq, points) in &msg.sections {
                for p in points {
                    let name = msg.series[p.series as usize].name.to_string();
                    out.push((*seq, name, p.value));
                }
            }
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out
    }

    #[tokio::test]
    async fn a_full_hand_over_or_a_shed_lane_reads_back_and_counts_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut reader, journal, mut conn, mut rx) = lane(d.path());
        let lag = Arc::clone(&reader.stats.publish);
        // The hand-over is full: the writer's offer is refused.
        lag.followed_bytes.store(FOLLOWED_BYTES, Ordering::Relaxed);
        journal_line(&mut conn, &journal, 0, 0, true).await;
        lag.followed_bytes.store(0, Ordering::Relaxed);
        assert_eq!(reader.stats.records_read_back.load(Ordering::Relaxed), 1);
        // Taken, then let go of (the stream took nothing for a second).
        journal_line(&mut conn, &journal, 1, 0, true).await;
        assert!(lag.followed_bytes.load(Ordering::Relaxed) > 0);
        reader.shed();
        assert_eq!(lag.followed_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(reader.stats.records_read_back.load(Ordering::Relaxed), 2);
        // Both are published from the file, once.
        for _ in 0..100 {
            if reader.next >= 2 {
                break;
            }
            reader.read().unwrap();
        }
        reader.seal_due(true);
        let got: Vec<(u64, f64)> = published(&mut rx).iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(got, [(0, 0.0), (1, 1.0)]);
        journal.close();
    }

    #[tokio::test]
    async fn a_lane_takes_what_was_handed_over_and_reads_the_rest_back_once() {
        let d = tempfile::tempdir().unwrap();
        let (mut reader, journal, mut conn, mut rx) = lane(d.path());
        let mut expected = Vec::new();
        for seq in 0..12u64 {
            // Not handed over (as from a connection of an earlier run, or beyond the
            // hand-over's room): the lane reads them from the file.
            let hand_over = !matches!(seq, 0 | 4 | 5 | 9);
            journal_line(&mut conn, &journal, seq, seq % 3, hand_over).await;
            expected.push((seq, format!("out.g{}", seq % 3), seq as f64));
            if seq == 6 {
                // Part way: what is there so far, in one read.
                reader.read().unwrap();
            }
        }
        // A record handed over that the lane has already read from the file is not taken
        // twice.
        for _ in 0..100 {
            if reader.next >= 12 {
                break;
            }
            reader.read().unwrap();
        }
        assert_eq!(reader.next, 12, "every record was taken");
        reader.seal_due(true);
        assert_eq!(published(&mut rx), expected);
        assert_eq!(
            reader.stats.publish.followed_bytes.load(Ordering::Relaxed),
            0,
            "every hand-over was let go of"
        );
        journal.close();
    }

    #[test]
    fn lane_numbers_are_dense_and_the_watermark_is_the_lowest_unacknowledged_record() {
        // Lane 1 of 3 holds records 1, 4, 7, …: numbered 0, 1, 2, …
        assert_eq!(lane_index(0, 1, 3), 0);
        assert_eq!(lane_index(1, 1, 3), 0);
        assert_eq!(lane_index(2, 1, 3), 1);
        assert_eq!(lane_index(4, 1, 3), 1);
        assert_eq!(lane_index(5, 1, 3), 2);
        for seq in (1..100).step_by(3) {
            assert_eq!(
                lane_index(seq, 1, 3),
                seq / 3,
                "record {seq} is numbered seq / 3"
            );
        }
        // Lanes 0 and 1 of 2 acknowledged up to lane numbers 5 and 3: records 10 (lane 0,
        // number 5) and 7 (lane 1, number 3) are the first unacknowledged.
        assert_eq!(global_watermark(&[5, 3]), 7);
        assert_eq!(global_watermark(&[3, 5]), 6);
        assert_eq!(global_watermark(&[9]), 9);
        // Every record below the watermark is acknowledged in its lane.
        let wms = [5, 3];
        for seq in 0..global_watermark(&wms) {
            let lane = (seq % 2) as usize;
            assert!(seq / 2 < wms[lane]);
        }
    }

    #[test]
    fn the_watermark_is_the_oldest_unacknowledged_record() {
        let mut p = Progress {
            floor: 100,
            ..Progress::default()
        };
        assert_eq!(p.watermark(), 100);
        p.unacked.insert(40, 2);
        p.unacked.insert(70, 1);
        assert_eq!(p.watermark(), 40);
        p.unacked.remove(&40);
        assert_eq!(p.watermark(), 70);
        p.floor = 50;
        assert_eq!(p.watermark(), 50);
    }
}
