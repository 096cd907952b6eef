//! Drop accounting: every datapoint aggd does not aggregate or deliver is one typed event.
//!
//! Reasons are [`DropReason`]s (the ground floor's `reason` module, so codecs need nothing
//! of this one).
//! [`Stats::record_drop`] bumps the reason's counter by the number of datapoints (or lines,
//! frames) affected and logs a warning at most once per second per reason, naming how many
//! events that second's log line stands for. The counters are listed, with their meaning, in
//! `docs/operations.md`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use crate::events::{Events, LogLimit};
use crate::ledger::Ledger;
use crate::reason::DropReason;
use crate::time::Window;

/// Process-wide counters, shared by listeners, workers and destinations through an `Arc`.
///
/// Hot paths add per batch, not per datapoint, to keep cache lines quiet.
pub struct Stats {
    drops: [LogLimit; DropReason::ALL.len()],
    /// Notable events other than drops, with their counters.
    pub events: Arc<Events>,
    /// Datapoints accepted by a decoder and handed to routing (carbon's `metricsReceived`).
    pub received: AtomicU64,
    /// Aggregate datapoints emitted by workers, re-emissions included (carbon's
    /// `aggregateDatapointsSent`).
    pub aggregates_emitted: AtomicU64,
    /// Raw datapoints forwarded because of `forward_all`.
    pub forwarded: AtomicU64,
    /// Datapoints written to destination sockets or stdout, summed over destinations.
    pub sent: AtomicU64,
    /// Open inbound TCP connections (carbon's activeConnections).
    pub active_connections: AtomicU64,
    /// The loss ledger, when the journal is on.
    ledger: OnceLock<Ledger>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            drops: [const { LogLimit::new() }; DropReason::ALL.len()],
            events: Arc::default(),
            received: AtomicU64::new(0),
            aggregates_emitted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            ledger: OnceLock::new(),
        }
    }
}

impl Stats {
    /// Attaches the loss ledger; from then on every drop is also ledgered. Once only.
    pub(crate) fn set_ledger(&self, ledger: Ledger) {
        let _ = self.ledger.set(ledger);
    }

    /// The loss ledger, if attached.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.get()
    }

    /// Counts `n` events of `reason` affecting data in `window` (Unix seconds: datapoint
    /// timestamps, or the receive time where there is none), ledgers them (unless the
    /// reason is a filter, [`DropReason::is_filter`]), and logs at most
    /// one warning per reason per second. `detail` names the offending path, peer or
    /// destination.
    pub fn record_drop(
        &self,
        reason: DropReason,
        n: u64,
        window: Window,
        detail: &dyn std::fmt::Display,
    ) {
        if n == 0 {
            return;
        }
        if let Some(l) = self.ledger.get()
            && !reason.is_filter()
        {
            l.record(reason.as_str(), n, window);
        }
        if let Some(earlier) = self.drops[reason.index()].count(n) {
            if reason.is_drop() {
                tracing::warn!(
                    reason = reason.as_str(),
                    count = n,
                    suppressed_since_last_log = earlier,
                    "dropped: {detail}"
                );
            } else {
                tracing::warn!(
                    count = n,
                    suppressed_since_last_log = earlier,
                    "not journaled (the journal's queue was full or its write failed): \
                     aggregated and sent, but replay cannot cover this window \
                     (ledgered); {detail}"
                );
            }
        }
    }

    /// The counter for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].get()
    }

    /// Sum of all drop counters (not [`DropReason::Unjournaled`]: not a drop).
    pub fn total_drops(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| self.drops(*r))
            .sum()
    }

    /// Frames whose datapoints were aggregated and sent without being journaled.
    pub fn unjournaled(&self) -> u64 {
        self.drops(DropReason::Unjournaled)
    }
}

/// Per-task tally of drops and their windows, added to [`Stats`] in one step per batch.
pub(crate) struct DropTally {
    counts: [u64; DropReason::ALL.len()],
    windows: [Window; DropReason::ALL.len()],
    /// Counts over the tally's life (not reset by [`DropTally::flush`]).
    totals: [u64; DropReason::ALL.len()],
}

impl Default for DropTally {
    fn default() -> Self {
        DropTally {
            counts: [0; DropReason::ALL.len()],
            totals: [0; DropReason::ALL.len()],
            windows: [Window {
                from: f64::INFINITY,
                to: f64::NEG_INFINITY,
            }; DropReason::ALL.len()],
        }
    }
}

impl DropTally {
    /// Counts `n` events of `reason` at time `t` (Unix seconds).
    #[inline]
    pub fn add(&mut self, reason: DropReason, n: u64, t: f64) {
        let i = reason.index();
        self.counts[i] += n;
        self.totals[i] += n;
        self.windows[i] = self.windows[i].union(Window::at(t));
    }

    /// Every reason counted over the tally's life, with its count.
    pub(crate) fn totals(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.totals[r.index()]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Moves the tally into `stats`, logging (rate-limited) with `detail`.
    pub fn flush(&mut self, stats: &Stats, detail: &dyn std::fmt::Display) {
        let empty = Window {
            from: f64::INFINITY,
            to: f64::NEG_INFINITY,
        };
        for reason in DropReason::ALL {
            let i = reason.index();
            let n = std::mem::take(&mut self.counts[i]);
            let w = std::mem::replace(&mut self.windows[i], empty);
            stats.record_drop(reason, n, w, detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_flushes_into_counters() {
        let stats = Stats::default();
        let mut t = DropTally::default();
        t.add(DropReason::TooOld, 1, 60.0);
        t.add(DropReason::TooOld, 1, 120.0);
        t.add(DropReason::NanValue, 1, 5.0);
        t.flush(&stats, &"test");
        assert_eq!(stats.drops(DropReason::TooOld), 2);
        assert_eq!(stats.drops(DropReason::NanValue), 1);
        assert_eq!(stats.total_drops(), 3);
        t.flush(&stats, &"test");
        assert_eq!(stats.total_drops(), 3);
    }
}
