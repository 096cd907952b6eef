//! Worker threads: each owns the buckets of the output series hashed to it, receives
//! batches over a bounded crossbeam channel, and sweeps its [`SeriesTable`] every
//! `flush_tick`.
//!
//! A panic while applying a datapoint is caught at the loop: that one datapoint is counted
//! as a `panic` drop (ledgered, quarantined) and the worker resumes with the next datapoint
//! of the batch, so one poison record costs nothing else. Each worker stamps a heartbeat
//! after every batch and every sweep; [`WorkerPool::healthy`] reports a worker that stopped
//! making progress.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::time;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::series::{SeriesTable, Settings};
use crate::datapoint::Sink;
use crate::drops::{DropTally, Stats};
use crate::quarantine::Quarantine;
use crate::reason::DropReason;
use crate::time::Window;
use std::sync::atomic::{AtomicU64, Ordering};

pub use super::batch::{Batch, WorkItem};

/// A message to a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Datapoints to add.
    Batch(Batch),
    /// Datapoints re-read from the journal at start-up: added like a batch, but those
    /// outside the window now are skipped without being counted (they were accounted for
    /// when first received). With `delivered`, the previous run emitted and delivered
    /// them before a clean shutdown: their buckets are not emitted again for them alone.
    Rebuild {
        /// The datapoints.
        items: Batch,
        /// Already delivered downstream.
        delivered: bool,
    },
    /// Cluster mode: shard `0` has been rebuilt up to here; its series may be emitted
    /// (while its lease is valid, see [`super::gate::ShardGate`]).
    Live(u32),
    /// Cluster mode: this node no longer owns shard `0`; its series are deleted without
    /// being emitted (the new owner rebuilds and emits them).
    Forget(u32),
    /// Emit every dirty bucket, open or not, then exit.
    Shutdown,
    /// The live-state API: reply with at most `limit` series whose name `matching`
    /// matches ([`crate::aggregate::series::SeriesTable::inspect`]).
    Inspect {
        /// Which output series.
        matching: Arc<regex::Regex>,
        /// Most series.
        limit: usize,
        /// Where the answer goes.
        reply: crossbeam_channel::Sender<Vec<crate::aggregate::series::SeriesState>>,
    },
}

/// Most datapoints per batch handed to the [`Sink`].
pub(crate) const EMIT_BATCH: usize = 1000;

/// The running worker threads.
pub struct WorkerPool {
    senders: Vec<Sender<WorkerMsg>>,
    rooms: Vec<Arc<tokio::sync::Notify>>,
    threads: Vec<JoinHandle<()>>,
    beats: Vec<Arc<AtomicU64>>,
    gauges: Vec<Arc<WorkerGauges>>,
    tick: Duration,
}

/// Optional worker behaviour.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Where datapoints whose processing panicked are written.
    pub quarantine: Option<Arc<Quarantine>>,
    /// Cluster mode: which shards this node may emit.
    pub gate: Option<Arc<super::gate::ShardGate>>,
    /// Fault injection for tests (feature `fault-injection`): applying a datapoint of
    /// this output series panics.
    #[cfg(feature = "fault-injection")]
    pub panic_on_series: Option<Arc<str>>,
    /// Fault injection for tests (feature `fault-injection`): applying a datapoint of
    /// this output series blocks the worker this long (a stalled worker).
    #[cfg(feature = "fault-injection")]
    pub stall_on_series: Option<(Arc<str>, Duration)>,
}

/// What a worker needs besides its channel.
struct Worker {
    index: usize,
    table: SeriesTable,
    tick: Duration,
    sink: Arc<dyn Sink>,
    stats: Arc<Stats>,
    tally: DropTally,
    hooks: Hooks,
    /// Unix milliseconds of the last progress.
    beat: Arc<AtomicU64>,
    /// Published after every sweep.
    gauges: Arc<WorkerGauges>,
    /// Woken each time the worker takes a batch off its queue: senders waiting for room
    /// in a full queue wait on it.
    room: Arc<tokio::sync::Notify>,
    /// Cluster mode: per shard, whether its rebuild was applied here ([`WorkerMsg::Live`]).
    live: Vec<bool>,
}

/// What a worker publishes about itself after every sweep.
#[derive(Debug, Default)]
pub struct WorkerGauges {
    /// Live output series (carbon's allocatedBuffers).
    pub series: AtomicU64,
    /// Datapoints held in live buckets (carbon's bufferedDatapoints).
    pub buffered: AtomicU64,
}

/// The workers' heartbeats; cloneable, for health checks and the systemd watchdog.
#[derive(Clone)]
pub struct Heartbeats {
    beats: Vec<Arc<AtomicU64>>,
    tick: Duration,
}

impl Heartbeats {
    /// Whether every worker made progress (finished a batch or a sweep) within the last
    /// `tolerance` plus one flush tick. A worker stuck in processing stops its heartbeat.
    pub fn healthy(&self, tolerance: Duration) -> bool {
        let limit = (tolerance + self.tick).as_millis() as u64;
        let now = now_ms();
        self.beats
            .iter()
            .all(|b| now.saturating_sub(b.load(Ordering::Relaxed)) <= limit)
    }
}

use crate::time::now_ms;

impl Worker {
    /// Applies `items[*next..]`, advancing `*next` past each item before applying it.
    fn apply(&mut self, items: &[WorkItem], next: &mut usize, count_drops: bool, dirty: bool) {
        let now = time::now();
        let mut rejected: Option<&Arc<str>> = None;
        while *next < items.len() {
            let it = &items[*next];
            *next += 1;
            #[cfg(feature = "fault-injection")]
            if self.hooks.panic_on_series.as_deref() == Some(&*it.key().name) {
                panic!("fault injection: panic on series {}", it.key().name);
            }
            #[cfg(feature = "fault-injection")]
            if let Some((series, how_long)) = &self.hooks.stall_on_series
                && **series == *it.key().name
            {
                std::thread::sleep(*how_long);
            }
            let added = if count_drops {
                self.table.add_as(it, it.timestamp, it.value, now, dirty)
            } else {
                self.table
                    .add_rebuilt(it, it.timestamp, it.value, now, dirty)
            };
            if let Err(reason) = added
                && count_drops
            {
                self.tally.add(reason, 1, it.timestamp);
                rejected = Some(&it.key().name);
            }
        }
        if let Some(path) = rejected {
            self.tally
                .flush(&self.stats, &format_args!("series {path}"));
        }
    }

    /// Applies a batch; a datapoint whose processing panics is counted as `panic`,
    /// ledgered and quarantined, and the rest of the batch is applied.
    fn apply_guarded(&mut self, items: &[WorkItem], count_drops: bool, dirty: bool) {
        let mut next = 0;
        while next < items.len() {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.apply(items, &mut next, count_drops, dirty);
            }));
            if r.is_ok() {
                break;
            }
            // `next` is one past the item that panicked.
            let it = &items[next - 1];
            self.stats.record_drop(
                DropReason::Panic,
                1,
                Window::at(it.timestamp),
                &format_args!("worker {}: series {}", self.index, it.key().name),
            );
            if let Some(q) = &self.hooks.quarantine {
                q.record(DropReason::Panic, &it.key().name, it.value, it.timestamp);
            }
        }
        self.beat.store(now_ms(), Ordering::Relaxed);
    }

    fn sweep(&mut self, force: bool) {
        let mut out = Vec::new();
        match &self.hooks.gate {
            None => self.table.sweep(time::now(), force, &mut out),
            Some(gate) => {
                let (live, s) = (&self.live, gate.shards());
                self.table.sweep_where(time::now(), force, &mut out, |key| {
                    let k = super::gate::shard_of(key.hash, s);
                    live[k as usize] && gate.may_emit(k)
                });
                // The destinations check the shard's allowance again at the write.
                for p in &mut out {
                    if let Some(e) = &mut p.interval {
                        let hash = crate::hash::fnv1a64(p.path.as_bytes());
                        e.shard = Some(super::gate::shard_of(hash, s));
                    }
                }
            }
        }
        self.stats
            .aggregates_emitted
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // A sweep at an interval boundary can emit every series at once; in batches, a
        // destination queue smaller than the sweep still takes what fits.
        for batch in out.chunks(EMIT_BATCH) {
            self.sink.send(batch.into());
        }
    }

    fn run(mut self, rx: Receiver<WorkerMsg>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let msg = rx.recv_deadline(next_tick);
            if msg.is_ok() {
                self.room.notify_waiters();
            }
            match msg {
                Ok(WorkerMsg::Batch(items)) => self.apply_guarded(items.items(), true, true),
                Ok(WorkerMsg::Rebuild { items, delivered }) => {
                    self.apply_guarded(items.items(), false, !delivered);
                }
                Ok(WorkerMsg::Live(k)) => {
                    if let Some(l) = self.live.get_mut(k as usize) {
                        *l = true;
                    }
                }
                Ok(WorkerMsg::Forget(k)) => {
                    if let (Some(l), Some(gate)) = (self.live.get_mut(k as usize), &self.hooks.gate)
                    {
                        *l = false;
                        let s = gate.shards();
                        self.table
                            .retain(|key| super::gate::shard_of(key.hash, s) != k);
                    }
                }
                Ok(WorkerMsg::Inspect {
                    matching,
                    limit,
                    reply,
                }) => {
                    let _ = reply.send(self.table.inspect(&matching, limit));
                }
                Ok(WorkerMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.sweep(true);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.sweep(false);
                self.gauges
                    .series
                    .store(self.table.len() as u64, Ordering::Relaxed);
                self.gauges
                    .buffered
                    .store(self.table.buffered(), Ordering::Relaxed);
                self.beat.store(now_ms(), Ordering::Relaxed);
                next_tick = Instant::now() + self.tick;
            }
        }
    }
}

/// Sends `msg` into a worker's `queue`, waiting while it is full: woken through `room`
/// when the worker takes a batch, never by polling. A stopped worker drops it.
pub async fn send_waiting(
    queue: &Sender<WorkerMsg>,
    room: &tokio::sync::Notify,
    mut msg: WorkerMsg,
) {
    use crossbeam_channel::TrySendError;
    loop {
        match queue.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(m)) => msg = m,
        }
        // Registered before trying again, so a batch taken in between still wakes us.
        let notified = room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match queue.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(m)) => msg = m,
        }
        notified.await;
    }
}

impl WorkerPool {
    /// Starts `count` worker threads named `aggd-worker-N`, each with a queue of
    /// `queue_batches` batches.
    pub fn spawn(
        count: usize,
        queue_batches: usize,
        tick: Duration,
        settings: Settings,
        sink: Arc<dyn Sink>,
        stats: Arc<Stats>,
        hooks: Hooks,
    ) -> std::io::Result<WorkerPool> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut beats = Vec::new();
        let mut gauges = Vec::new();
        let mut rooms = Vec::new();
        for index in 0..count.max(1) {
            let room = Arc::new(tokio::sync::Notify::new());
            rooms.push(Arc::clone(&room));
            let (tx, rx) = bounded(queue_batches);
            let beat = Arc::new(AtomicU64::new(now_ms()));
            beats.push(Arc::clone(&beat));
            let g = Arc::new(WorkerGauges::default());
            gauges.push(Arc::clone(&g));
            let shards = hooks.gate.as_ref().map_or(0, |g| g.shards() as usize);
            let worker = Worker {
                live: vec![false; shards],
                index,
                table: SeriesTable::new(settings),
                tick,
                sink: Arc::clone(&sink),
                stats: Arc::clone(&stats),
                tally: DropTally::default(),
                hooks: hooks.clone(),
                beat,
                gauges: g,
                room,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aggd-worker-{index}"))
                    .spawn(move || worker.run(rx))?,
            );
            senders.push(tx);
        }
        Ok(WorkerPool {
            senders,
            rooms,
            threads,
            beats,
            gauges,
            tick,
        })
    }

    /// The workers' heartbeats.
    pub fn heartbeats(&self) -> Heartbeats {
        Heartbeats {
            beats: self.beats.clone(),
            tick: self.tick,
        }
    }

    /// Whether every worker made progress within `tolerance` plus one flush tick.
    pub fn healthy(&self, tolerance: Duration) -> bool {
        self.heartbeats().healthy(tolerance)
    }

    /// Each worker's published gauges, in worker order.
    pub fn gauges(&self) -> Vec<Arc<WorkerGauges>> {
        self.gauges.clone()
    }

    /// The workers' queues, indexed like [`Output::worker`](crate::route::Output::worker).
    pub fn senders(&self) -> Arc<[Sender<WorkerMsg>]> {
        self.senders.clone().into()
    }

    /// Per worker, woken each time the worker takes a batch off its queue (to wait for room
    /// in a full queue without polling); indexed like [`WorkerPool::senders`].
    pub fn rooms(&self) -> Arc<[Arc<tokio::sync::Notify>]> {
        self.rooms.clone().into()
    }

    /// Tells every worker to flush everything and exit, and waits for them (blocking).
    pub fn shutdown(self) {
        for tx in &self.senders {
            let _ = tx.send(WorkerMsg::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
