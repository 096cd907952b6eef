//! The catalog itself: every counter and gauge aggd exports, one entry each (a table: a
//! new metric is one entry in one of its parts and nothing else), and the types of its
//! entries. Encoding: [`super::metrics`].

use std::sync::atomic::Ordering;

mod cluster;
mod destinations;
mod pipeline;
mod state;

/// Counter (monotonic; carbon self-metrics send its change per interval) or gauge (a level;
/// sent as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Monotonic count.
    Counter,
    /// Current level.
    Gauge,
}

/// One way a metric appears among carbon self-metrics
/// (`<prefix>.aggregator.<host>-<instance>.<stat>`); a metric has any number of them.
///
/// A counter's stat is its change over the interval, a gauge's its level. Omitted when
/// zero for the interval, except `always` stats (carbon's common stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carbon {
    /// One stat: the value, or the sum over its labels.
    Stat {
        /// The stat's name, e.g. `metricsReceived`.
        name: &'static str,
        /// Sent even when zero (a counter's change; a gauge is then sent as it is).
        always: bool,
    },
    /// One stat per label value, `<before><label value, . → _><after>`.
    Each {
        /// Text before the label value, e.g. `drops.`.
        before: &'static str,
        /// Text after the label value.
        after: &'static str,
    },
    /// One always-sent stat from the sample of one label value (e.g. the `blacklist`
    /// drops as `blacklistMatches`).
    Label {
        /// The label value.
        label: &'static str,
        /// The stat's name.
        name: &'static str,
    },
    /// A per-destination family (samples in destination order) as carbon's
    /// `destinations.<dest>.<stat>`, `<dest>` being `host:port:instance` with `.` → `_`.
    Dest {
        /// carbon's stat name, e.g. `attemptedRelays`.
        stat: &'static str,
    },
}

/// Calls its argument with each `(label value, value)` sample (label value `""` when the
/// metric has no label); calls it never when the metric does not apply (no journal, …).
pub type Read = fn(&super::Observed, &mut dyn FnMut(&str, u64));

/// One catalog entry.
pub struct Metric {
    /// Prometheus name without the `aggd_` prefix (and the counter `_total` suffix).
    pub name: &'static str,
    /// Prometheus help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub ty: Type,
    /// The label of a family (`reason`, `destination`, `worker`, `event`).
    pub label: Option<&'static str>,
    /// Its carbon self-metrics (none: not sent).
    pub carbon: &'static [Carbon],
    /// Reads its samples.
    pub read: Read,
}

fn ld(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Reads one counter of every destination, labelled with its name.
fn per_dest(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::dest::DestCounters) -> &std::sync::atomic::AtomicU64,
) {
    o.dests.counters().for_each(|(d, c)| f(d, ld(pick(c))));
}

/// Reads one per-destination gauge kept as an `AtomicUsize`.
fn per_dest_usize(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::dest::DestCounters) -> &std::sync::atomic::AtomicUsize,
) {
    o.dests
        .counters()
        .for_each(|(d, c)| f(d, pick(c).load(Ordering::Relaxed) as u64));
}

/// Reads one cluster-mode counter or gauge (nothing when standalone).
fn cluster(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::cluster::ClusterStats) -> &std::sync::atomic::AtomicU64,
) {
    if let Some(c) = &o.cluster {
        f("", ld(pick(c)));
    }
}

/// Every metric, in parts, in `/metrics` order (`docs/operations.md` lists them with
/// their meaning).
pub const CATALOG: &[&[Metric]] = &[
    pipeline::METRICS,
    destinations::METRICS,
    state::METRICS,
    cluster::METRICS,
];

/// Every entry of the [`CATALOG`], in `/metrics` order.
pub fn all() -> impl Iterator<Item = &'static Metric> {
    CATALOG.iter().flat_map(|part| part.iter())
}

/// (process CPU seconds, RSS bytes) from /proc/self.
pub(crate) fn process_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}
