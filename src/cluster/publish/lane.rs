//! One publisher lane (thread `aggd-publish-<l>`): takes its records as the journal's
//! writer hands them over (or reads them back from the file), appends each output series'
//! datapoints to its shard's open message, seals messages and hands them to the
//! publishing task, and keeps its progress (see the parent module's docs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handover::Followed;
use super::{Out, Progress, global_watermark, lane_index};
use crate::cluster::wire::{self, Builder, Header};
use crate::cluster::{ClusterStats, subject};
use crate::config::cluster::ClusterConfig;
use crate::ingest::FrameRouter;
use crate::journal::JournalStats;
use crate::journal::follow::FollowSlot;
use crate::journal::io::JournalIo;
use crate::journal::published::{State, save_state};
use crate::journal::tail::Tail;

/// How long a lane waits for room in the in-flight window before it lets go of the
/// records handed over to it ([`Lane::shed`]).
const SHED_AFTER: Duration = Duration::from_secs(1);

/// One shard's open message.
pub(super) struct Open {
    pub(super) builder: Builder,
    pub(super) first: u64,
    pub(super) opened: Instant,
}

/// Longest wait of an idle publisher lane for new journal records (it still persists its
/// watermark and updates its gauges at least this often).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// One publisher lane: what its thread (`aggd-publish-<l>`) works with.
pub(super) struct Lane {
    pub(super) cfg: ClusterConfig,
    /// This node's rules digest (follows reloads).
    pub(super) digest: Arc<AtomicU64>,
    pub(super) state: State,
    /// This thread's lane, of `state.lanes`.
    pub(super) lane: u64,
    /// The persisted journal watermark (lane 0 writes it).
    pub(super) persisted: Arc<AtomicU64>,
    pub(super) dir: PathBuf,
    pub(super) io: Arc<dyn JournalIo>,
    /// Reads what was not handed over from the journal file.
    pub(super) tail: Tail,
    /// Decodes and routes what the tail reads.
    pub(super) frames: FrameRouter,
    /// Every record of this lane below it is in a message (or had nothing for a shard).
    pub(super) next: u64,
    /// Records the writer handed over, in order.
    pub(super) followed: crossbeam_channel::Receiver<Followed>,
    /// One taken off `followed` with records before it not handed over.
    pub(super) ahead: Option<Followed>,
    /// How far the writer offered records.
    pub(super) follow: Arc<FollowSlot>,
    pub(super) open: Vec<Option<Open>>,
    pub(super) next_first: Vec<u64>,
    pub(super) tx: tokio::sync::mpsc::Sender<Out>,
    /// Every lane's progress (this lane's is `progress[lane]`).
    pub(super) progress: Vec<Arc<Mutex<Progress>>>,
    pub(super) stats: Arc<ClusterStats>,
    pub(super) journal: Arc<JournalStats>,
    /// The journal's next record when it was opened: records from it on count as new.
    pub(super) opened_at_seq: u64,
    /// Bytes of new records read, by every lane.
    pub(super) consumed_new: Arc<AtomicU64>,
    pub(super) abandon: Arc<AtomicBool>,
}

impl Lane {
    pub(super) fn lock(&self, lane: usize) -> std::sync::MutexGuard<'_, Progress> {
        self.progress[lane]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lane number after the last record of this lane read.
    pub(super) fn next_in_lane(&self) -> u64 {
        lane_index(self.next, self.lane, self.state.lanes)
    }

    pub(super) fn header(&self, first: u64, last: u64) -> Header {
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
    pub(super) fn seal(&mut self, k: usize, last: u64) {
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
    pub(super) fn shed(&mut self) {
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
    pub(super) fn read(&mut self) -> std::io::Result<usize> {
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
                Some(f) if f.routed.cutover.to_bits() != self.frames.cutover().to_bits() => {
                    // Routed before this node took the cluster's latest rules change (or
                    // after, by a connection that had not yet): read back and routed again.
                    self.stats
                        .publish
                        .followed_bytes
                        .fetch_sub(f.charge, Ordering::Relaxed);
                    self.stats.records_read_back.fetch_add(1, Ordering::Relaxed);
                    f.seq + 1
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
    pub(super) fn add_followed(&mut self, f: Followed, full: &mut Vec<usize>) {
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
    pub(super) fn read_file(&mut self, full: &mut Vec<usize>) -> std::io::Result<usize> {
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
    pub(super) fn seal_due(&mut self, all: bool) {
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
    pub(super) fn update(&mut self) {
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
    pub(super) fn persist(&mut self) {
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

    pub(super) fn run(mut self, drain_to: Arc<AtomicU64>) {
        let mut last_persist = Instant::now();
        loop {
            // What the writer had offered before this read: a record written since wakes
            // the wait below at once.
            let seen = self.follow.offered_below();
            let n = match self.take() {
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

    /// [`Lane::read`] while this node ran the cluster's rules within the last lease TTL
    /// ([`ClusterStats::rules_fresh_until_ms`]). Otherwise it routes nothing, and lets go
    /// of what was handed over ([`Lane::shed`]): connections must not wait for it, and
    /// those records are routed from the file once the rules are confirmed.
    ///
    /// Errors: the journal file cannot be read.
    pub(super) fn take(&mut self) -> std::io::Result<usize> {
        let until = self.stats.rules_fresh_until_ms.load(Ordering::Relaxed);
        if until == 0 || crate::time::monotonic_ms() < until {
            return self.read();
        }
        self.shed();
        Ok(0)
    }

    /// How long an idle lane may wait for the journal: 2 ms when `soon` (draining, to see
    /// `abandon`, or behind the writer), else until its first open message is due to be
    /// sealed (`batch_delay`), at most [`IDLE_WAIT`]. The journal's writer wakes it
    /// earlier when records are written.
    pub(super) fn idle_wait(&self, soon: bool) -> Duration {
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
pub(super) fn append(
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
