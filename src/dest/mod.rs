//! Destinations: carbon-cache, go-carbon, a relay, stdout, or a Prometheus remote-write
//! receiver ([`remote_write`]).
//!
//! Each outgoing datapoint goes to the destinations `[routing]` places its name on
//! ([`crate::ring`]: carbon's consistent-hash ring by default, every destination with
//! `all` or a single destination), after carbon's tag normalisation when
//! `normalize_tags` is on. A destination that is down keeps its share queued; nothing is
//! re-routed.
//!
//! Each destination has its own bounded queue (counted in datapoints, `queue_datapoints`)
//! and its own sender task. Workers and listeners only ever `offer` to a queue, which never
//! blocks: when a queue is full the batch is dropped for that destination alone and counted
//! as `destination_full`. A dead or slow destination therefore fills only its own queue.
//!
//! A destination with `emit_delay` or `late_changes = "ledger"` sorts its share through a
//! [`hold`] first: aggregates wait there until their interval closed `emit_delay` ago (a
//! newer value replaces a held one), and corrections of intervals already sent are kept
//! back and ledgered as `late_change`.
//!
//! The sender connects (and reconnects after any error) with exponential backoff from
//! 100 ms to 5 s, coalesces queued batches into writes of up to ~10 000 datapoints, and
//! writes carbon pickle frames (protocol 2, `max_datapoints_per_message` per frame) or
//! plaintext lines. A batch whose write failed is written again after reconnecting.
//!
//! # Delivery
//! carbon's protocols have no acknowledgement, so a write that reached the kernel is not a
//! delivery: the peer may be stopped, its receive buffer full, and then die. So:
//! - **Sent** (`destination_sent`) means written into the socket.
//! - The sender keeps the time window and count of everything written into the current
//!   connection within `unconfirmed_window` (and since it connected). When the connection
//!   fails (a write error, or the peer closing or resetting it, which the sender watches for
//!   while idle), all of that is ledgered as `unconfirmed`, so `aggd replay --lost`
//!   recomputes and re-sends it. Full aggregates are idempotent downstream.
//! - At shutdown the sender waits until the kernel's send queue is empty (`SIOCOUTQ` = 0:
//!   the peer's TCP acknowledged every byte) before closing; what is still unacknowledged
//!   at the drain deadline is ledgered as `unconfirmed`. An acknowledgement means the
//!   peer's kernel holds the bytes, not that the peer process read them: a peer killed
//!   later can still lose them, which only its own restart can tell.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationConfig, DestinationKind, OutputPlacement};
use crate::datapoint::{OutBatch, OutPoint, Sink, window};
use crate::drops::Stats;
use crate::reason::DropReason;
use crate::ring::Placement;
use crate::time::Window;

pub mod blocking;
pub mod carbon;
mod hold;
mod link;
pub mod remote_write;

use hold::Hold;
use link::{Link, Unconfirmed};

/// [`DestCounters::state`]: the sender holds a connection.
const UP: u8 = 1;
/// [`DestCounters::state`]: the last connection attempt failed or the connection was lost.
const DOWN: u8 = 2;

/// Counters of one destination (carbon's per-destination stats in brackets).
#[derive(Debug, Default)]
pub struct DestCounters {
    /// Datapoints offered to the queue, kept or not (`attemptedRelays`).
    pub attempted: AtomicU64,
    /// Datapoints written (`sent`).
    pub sent: AtomicU64,
    /// carbon batches written: pickle frames, or for plaintext chunks of
    /// `max_datapoints_per_message` (`batchesSent`).
    pub batches: AtomicU64,
    /// Datapoints offered while the destination was down: after a failed connection
    /// attempt or a lost connection, until the next connection (`queuedUntilConnected`).
    pub queued_until_connected: AtomicU64,
    /// Largest queue length, in datapoints, seen at an offer since the last carbon
    /// self-metrics report, which resets it (`relayMaxQueueLength`).
    pub peak_queued: AtomicUsize,
    /// Connection state: 0 before the first attempt (the sender connects when it first
    /// has something to send), [`UP`] or [`DOWN`].
    state: AtomicU8,
    /// Datapoints dropped because the queue was full.
    pub full_queue_drops: AtomicU64,
    /// Datapoints waiting in the queue now.
    pub queued: AtomicUsize,
    /// Datapoints written into connections that then failed, within the unconfirmed
    /// window: ledgered as `unconfirmed` for `aggd replay --lost`.
    pub unconfirmed: AtomicU64,
    /// Connections that failed (write error, closed or reset by the destination); for
    /// remote write, requests that failed and were sent again.
    pub connection_failures: AtomicU64,
    /// Remote write: datapoints in requests the destination refused (4xx other than
    /// 429), dropped as `destination_rejected` and ledgered.
    pub rejected: AtomicU64,
    /// Corrections of intervals already sent, kept back under `late_changes = "ledger"`
    /// and ledgered as `late_change` ([`hold`]).
    pub late_changes: AtomicU64,
    /// Cluster mode: aggregates not written because this node's allowance for their
    /// shard ran out between the emission and the write (its new owner emits them).
    pub fenced: AtomicU64,
    /// Time window covered by what is queued (a superset: reset only when the queue
    /// empties), ledgered if it is still queued when shutdown's drain ends.
    queued_window: Mutex<Option<Window>>,
}

struct Dest {
    name: String,
    /// carbon's name for it in self-metrics ([`DestinationConfig::carbon_name`]).
    carbon_name: String,
    tx: mpsc::Sender<OutBatch>,
    max_queued: usize,
    counters: Arc<DestCounters>,
    /// What the sender wrote and cannot yet count as delivered; ledgered if the sender
    /// is still holding it when shutdown's drain ends.
    unconfirmed: Arc<Mutex<Unconfirmed>>,
    /// Its `emit_delay` / `late_changes` stage, if it has either.
    hold: Option<Hold>,
}

/// Cluster mode's fence at the write: once the node joined, its shard gate. A sender
/// drops, right before each write, the aggregates of shards the node may no longer emit.
pub(crate) type Fence = Arc<std::sync::OnceLock<Arc<crate::aggregate::gate::ShardGate>>>;

/// The destinations' queues; a [`Sink`] that offers each datapoint to the destinations
/// its name is placed on ([`crate::ring`]), after normalising tagged names if asked.
pub struct Destinations {
    dests: Vec<Dest>,
    /// Shared with every sender.
    fence: Fence,
    placement: Arc<Placement>,
    normalize_tags: bool,
    stats: Arc<Stats>,
}

/// Handle on the running sender tasks.
pub struct Senders {
    tasks: Vec<JoinHandle<()>>,
    drain: CancellationToken,
    /// The task that sends held aggregates when they are due, if a destination holds.
    releaser: Option<JoinHandle<()>>,
}

/// How often held aggregates are checked for being due.
const RELEASE_TICK: Duration = Duration::from_millis(250);

impl Destinations {
    /// Starts one sender task per destination on the current tokio runtime; `routing`
    /// places names on them (its placement must be built over `configs`, in order).
    pub fn start(
        configs: &[DestinationConfig],
        routing: &OutputPlacement,
        stats: Arc<Stats>,
    ) -> (Arc<Destinations>, Senders) {
        let drain = CancellationToken::new();
        let fence = Fence::default();
        let mut dests = Vec::new();
        let mut tasks = Vec::new();
        for cfg in configs {
            let (tx, rx) = mpsc::channel(cfg.queue_datapoints.clamp(16, 1 << 16));
            let counters = Arc::new(DestCounters::default());
            let unconfirmed = Arc::new(Mutex::new(Unconfirmed::default()));
            let link = Link {
                name: cfg.name().to_string(),
                counters: Arc::clone(&counters),
                unconfirmed: Arc::clone(&unconfirmed),
                stats: Arc::clone(&stats),
                fence: Arc::clone(&fence),
            };
            tasks.push(match &cfg.kind {
                DestinationKind::Carbon(c) => {
                    tokio::spawn(carbon::run(link, c.clone(), rx, drain.clone()))
                }
                DestinationKind::RemoteWrite(rw) => {
                    tokio::spawn(remote_write::run(link, rw.clone(), rx, drain.clone()))
                }
            });
            dests.push(Dest {
                name: cfg.name().to_string(),
                carbon_name: cfg.carbon_name(),
                tx,
                max_queued: cfg.queue_datapoints,
                counters,
                unconfirmed,
                hold: Hold::new(cfg.emit_delay, cfg.late_changes, cfg.queue_datapoints),
            });
        }
        let placement = Arc::clone(&routing.placement);
        debug_assert_eq!(placement.nodes().len(), dests.len());
        let dests = Arc::new(Destinations {
            dests,
            fence,
            placement,
            normalize_tags: routing.normalize_tags,
            stats,
        });
        let releaser = dests.dests.iter().any(|d| d.hold.is_some()).then(|| {
            let weak = Arc::downgrade(&dests);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RELEASE_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(d) => d.release(crate::time::now()),
                        None => return,
                    }
                }
            })
        });
        let senders = Senders {
            tasks,
            drain,
            releaser,
        };
        (dests, senders)
    }

    /// Offers every held aggregate due at `now` (Unix s; ∞ for all) to its destination's
    /// queue.
    fn release(&self, now: f64) {
        for d in &self.dests {
            if let Some(hold) = &d.hold {
                let due = hold.release(now);
                if !due.is_empty() {
                    let w = window(&due);
                    self.offer(d, due.into(), w);
                }
            }
        }
    }

    /// Offers one destination's share (covering `w`), through its hold if it has one.
    fn offer_share(&self, d: &Dest, share: OutBatch, w: Window) {
        let Some(hold) = &d.hold else {
            return self.offer(d, share, w);
        };
        let sorted = hold.sort(share.to_vec(), crate::time::now());
        if sorted.overflow > 0 {
            self.stats.events.emit(
                crate::events::Event::HoldFull,
                &format_args!(
                    "destination {}: {} aggregates sent before emit_delay (the hold is full: queue_datapoints)",
                    d.name, sorted.overflow
                ),
            );
        }
        if !sorted.late.is_empty() {
            let n = sorted.late.len() as u64;
            d.counters.late_changes.fetch_add(n, Ordering::Relaxed);
            self.stats.record_drop(
                DropReason::LateChange,
                n,
                window(&sorted.late),
                &format_args!(
                    "destination {}: a changed value of an interval already sent, kept back (late_changes = \"ledger\")",
                    d.name
                ),
            );
        }
        if !sorted.send.is_empty() {
            let w = window(&sorted.send);
            self.offer(d, sorted.send.into(), w);
        }
    }

    /// Cluster mode: from now on every sender checks, right before each write, that this
    /// node may still emit each aggregate's shard (`gate`), and drops those it may not.
    /// Once only.
    pub fn fence_with(&self, gate: Arc<crate::aggregate::gate::ShardGate>) {
        let _ = self.fence.set(gate);
    }

    /// Each destination's name and the aggregates it holds for `emit_delay` now.
    pub fn held(&self) -> impl Iterator<Item = (&str, usize)> {
        self.dests
            .iter()
            .map(|d| (d.name.as_str(), d.hold.as_ref().map_or(0, Hold::len)))
    }

    /// Each destination's name and counters.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &DestCounters)> {
        self.dests.iter().map(|d| (d.name.as_str(), &*d.counters))
    }

    /// Each destination's name, whether its sender holds a connection (1) or not (0),
    /// and its queue capacity in datapoints.
    pub fn states(&self) -> impl Iterator<Item = (&str, u64, usize)> {
        self.dests.iter().map(|d| {
            let up = d.counters.state.load(Ordering::Relaxed) == UP;
            (d.name.as_str(), u64::from(up), d.max_queued)
        })
    }

    /// Each destination's carbon self-metric name (`127_0_0_1:2004:None`) and counters.
    pub fn carbon_counters(&self) -> impl Iterator<Item = (&str, &DestCounters)> {
        self.dests
            .iter()
            .map(|d| (d.carbon_name.as_str(), &*d.counters))
    }

    /// Resets every destination's [`DestCounters::peak_queued`] (after a self-metrics
    /// report read it).
    pub fn reset_peaks(&self) {
        for d in &self.dests {
            d.counters.peak_queued.store(0, Ordering::Relaxed);
        }
    }

    /// Offers `batch` (non-empty, covering `w`) to one destination's queue; a full queue
    /// drops it for that destination alone, as `destination_full`.
    fn offer(&self, d: &Dest, batch: OutBatch, w: Window) {
        let n = batch.len();
        let c = &d.counters;
        c.attempted.fetch_add(n as u64, Ordering::Relaxed);
        if c.state.load(Ordering::Relaxed) == DOWN {
            c.queued_until_connected
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        let before = c.queued.fetch_add(n, Ordering::Relaxed);
        c.peak_queued.fetch_max(before, Ordering::Relaxed);
        if before + n > d.max_queued || d.tx.try_send(batch).is_err() {
            c.queued.fetch_sub(n, Ordering::Relaxed);
            c.full_queue_drops.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.record_drop(
                DropReason::DestinationFull,
                n as u64,
                w,
                &format_args!("destination {}", d.name),
            );
        } else if let Ok(mut q) = c.queued_window.lock() {
            // After the add: a sender that empties the queue meanwhile cannot erase it.
            *q = Some(q.map_or(w, |q| q.union(w)));
        }
    }
}

impl Sink for Destinations {
    fn send(&self, batch: OutBatch) {
        if batch.is_empty() || self.dests.is_empty() {
            return;
        }
        let batch = match self.normalize_tags {
            true => normalize(&batch, &self.stats.events).map_or(batch, Into::into),
            false => batch,
        };
        if self.placement.is_broadcast() {
            let w = window(&batch);
            for d in &self.dests {
                self.offer_share(d, Arc::clone(&batch), w);
            }
            return;
        }
        for (d, share) in self.dests.iter().zip(split(&self.placement, &batch)) {
            if !share.is_empty() {
                let w = window(&share);
                self.offer_share(d, share.into(), w);
            }
        }
    }
}

/// `points` split by destination as `placement` places their names: one share per
/// destination, in configuration order (a point with replicas is in several).
pub fn split(placement: &Placement, points: &[OutPoint]) -> Vec<Vec<OutPoint>> {
    let mut shares: Vec<Vec<OutPoint>> = vec![Vec::new(); placement.nodes().len()];
    let mut placed = Vec::with_capacity(placement.replication());
    for p in points {
        placement.place_cached(&p.path, &mut placed);
        for &i in &placed {
            shares[i].push(p.clone());
        }
    }
    shares
}

/// `points` with every tagged name in carbon's normal form ([`crate::codec::tagged`]), or
/// `None` when none changes. A name that does not parse stays as it is and is counted as
/// [`Event::TagNormalizeFailed`](crate::events::Event::TagNormalizeFailed).
pub fn normalize(points: &[OutPoint], events: &crate::events::Events) -> Option<Vec<OutPoint>> {
    use crate::codec::tagged::{Normalized, normalize};
    let mut changed: Option<Vec<OutPoint>> = None;
    for (i, p) in points.iter().enumerate() {
        match normalize(&p.path) {
            Normalized::Same => {}
            Normalized::Changed(n) => {
                changed.get_or_insert_with(|| points.to_vec())[i].path = n.into();
            }
            Normalized::Invalid(why) => events.emit(
                crate::events::Event::TagNormalizeFailed,
                &format_args!("tagged name {:?} sent unchanged: {why}", p.path),
            ),
        }
    }
    changed
}

impl Senders {
    /// Lets every sender write what is queued, then stop; waits until `deadline` at most.
    /// What is still queued after that is counted as `destination_down` and the tasks are
    /// stopped. Returns whether every destination took everything and acknowledged it.
    pub async fn drain(self, dests: &Destinations, deadline: tokio::time::Instant) -> bool {
        if let Some(r) = self.releaser {
            r.abort();
            let _ = r.await;
        }
        // The workers have emitted their last aggregates: nothing is held any longer.
        dests.release(f64::INFINITY);
        self.drain.cancel();
        let mut complete = true;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
                complete = false;
            }
        }
        for d in &dests.dests {
            let left = d.counters.queued.swap(0, Ordering::Relaxed);
            let w = d.counters.queued_window.lock().ok().and_then(|q| *q);
            complete &= left == 0;
            if let Some(w) = w {
                dests.stats.record_drop(
                    DropReason::DestinationDown,
                    left as u64,
                    w,
                    &format_args!("destination {} not reachable before shutdown", d.name),
                );
            }
            // A sender stopped before its peer acknowledged what it wrote.
            let unconfirmed = d
                .unconfirmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(Duration::MAX);
            if let Some((w, n)) = unconfirmed {
                complete = false;
                ledger_unconfirmed(&dests.stats, &d.counters, &d.name, w, n);
            }
        }
        complete
    }
}

/// Counts `n` datapoints over `w`, written to destination `name` and maybe lost, as
/// `unconfirmed` (ledgered for `aggd replay --lost`).
fn ledger_unconfirmed(stats: &Stats, counters: &DestCounters, name: &str, w: Window, n: u64) {
    counters.unconfirmed.fetch_add(n, Ordering::Relaxed);
    stats.record_drop(
        DropReason::Unconfirmed,
        n,
        w,
        &format_args!("destination {name}: written into a connection that failed"),
    );
}
