//! What a destination's sender task shares with [`super::Destinations`]: its name,
//! counters and connection state, the unconfirmed log, and the process counters.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DestCounters, ledger_unconfirmed};
use crate::datapoint::OutPoint;
use crate::drops::Stats;
use crate::events::Event;
use crate::time::Window;

/// What was written into the current connection within the unconfirmed window: written
/// time, bucket window and datapoints, merged per second so it stays small.
#[derive(Debug, Default)]
pub(super) struct Unconfirmed {
    writes: VecDeque<(Instant, Window, u64)>,
}

impl Unconfirmed {
    fn prune(&mut self, keep: Duration) {
        while self.writes.front().is_some_and(|w| w.0.elapsed() > keep) {
            self.writes.pop_front();
        }
    }

    /// Notes `n` datapoints over `window` written now.
    pub(super) fn written(&mut self, window: Window, n: u64, keep: Duration) {
        self.prune(keep);
        match self.writes.back_mut() {
            Some(last) if last.0.elapsed() < Duration::from_secs(1) => {
                last.1 = last.1.union(window);
                last.2 += n;
            }
            _ => self.writes.push_back((Instant::now(), window, n)),
        }
    }

    /// Everything noted within `keep`, as one window and a count; empties the log.
    pub(super) fn take(&mut self, keep: Duration) -> Option<(Window, u64)> {
        self.prune(keep);
        let all = self
            .writes
            .drain(..)
            .reduce(|a, b| (a.0, a.1.union(b.1), a.2 + b.2));
        all.map(|(_, w, n)| (w, n))
    }
}

/// The sender's view of one destination: its name, counters and the unconfirmed log.
pub(super) struct Link {
    /// The destination's name in logs ([`crate::config::DestinationConfig::name`]).
    pub(super) name: String,
    /// Its counters, shared with [`super::Destinations`].
    pub(super) counters: Arc<DestCounters>,
    /// What was written into the current connection and is not yet confirmed.
    pub(super) unconfirmed: Arc<Mutex<Unconfirmed>>,
    /// Process counters and the ledger.
    pub(super) stats: Arc<Stats>,
    /// Cluster mode's fence at the write.
    pub(super) fence: super::Fence,
}

impl Link {
    pub(super) fn log(&self) -> std::sync::MutexGuard<'_, Unconfirmed> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `n` datapoints left the queue (delivered or dropped): an empty queue forgets the
    /// window it covered.
    pub(super) fn done(&self, n: usize) {
        let counters = &self.counters;
        if counters.queued.fetch_sub(n, Ordering::Relaxed) == n
            && let Ok(mut q) = counters.queued_window.lock()
        {
            *q = None;
        }
    }

    /// `points` without the aggregates of shards this node may no longer emit (cluster
    /// mode's fence, checked right before a write), and how many were left out; `None`
    /// when none is (standalone: always).
    pub(super) fn unfenced<'a>(
        &self,
        points: impl Iterator<Item = &'a OutPoint> + Clone,
    ) -> Option<(Vec<OutPoint>, u64)> {
        let gate = self.fence.get()?;
        let fenced = |p: &OutPoint| {
            p.interval
                .and_then(|e| e.shard)
                .is_some_and(|k| !gate.may_emit(k))
        };
        points.clone().position(&fenced)?;
        // One pass decides what is kept and counts the rest, so the two always agree.
        let mut n = 0;
        let kept = points
            .filter(|p| {
                let out = fenced(p);
                n += u64::from(out);
                !out
            })
            .cloned()
            .collect();
        Some((kept, n))
    }

    /// Counts `n` aggregates left out by the fence.
    pub(super) fn count_fenced(&self, n: u64) {
        if n > 0 {
            self.counters.fenced.fetch_add(n, Ordering::Relaxed);
            let name = &self.name;
            tracing::debug!(destination = %name, n, "aggregates of shards no longer owned not written");
        }
    }

    /// The connection failed: ledger what was written into it within `window` (it may
    /// have been lost).
    pub(super) fn failed(&self, e: &std::io::Error, window: Duration) {
        set_connected(&self.counters, false);
        self.counters
            .connection_failures
            .fetch_add(1, Ordering::Relaxed);
        let lost = self.log().take(window);
        let (name, n) = (&self.name, lost.map_or(0, |l| l.1));
        self.stats.events.emit(
            Event::DestinationConnectionLost,
            &format_args!("destination {name}: connection failed ({e}); reconnecting; {n} datapoints unconfirmed"),
        );
        if let Some((w, n)) = lost {
            ledger_unconfirmed(&self.stats, &self.counters, name, w, n);
        }
    }
}

/// Notes whether the sender holds a connection (for carbon's `queuedUntilConnected`).
pub(super) fn set_connected(counters: &DestCounters, up: bool) {
    counters
        .state
        .store(if up { super::UP } else { super::DOWN }, Ordering::Relaxed);
}
