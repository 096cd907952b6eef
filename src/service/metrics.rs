//! The one catalog of aggd's counters and gauges, and the one Prometheus registry
//! (prometheus-client) built from it once at start. `GET /metrics` encodes the registry;
//! the carbon self-metrics ([`super::self_metrics`]) walk the same catalog, so the two
//! views cannot disagree about what is counted or how.
//!
//! Each [`Metric`] names its Prometheus metric (`aggd_<name>`, counters with the
//! `_total` suffix the text format adds), its help, its label (for families), how it
//! appears among carbon self-metrics ([`Carbon`]), and a reader of the live value from the
//! atomics the hot paths update. Reading happens at scrape or report time only; nothing is
//! copied per event.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Observed;
use crate::events::Event;
use crate::reason::DropReason;

/// Counter (monotonic; carbon self-metrics send its change per interval) or gauge (a level;
/// sent as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Monotonic count.
    Counter,
    /// Current level.
    Gauge,
}

/// How a metric appears among carbon self-metrics
/// (`<prefix>.aggregator.<host>.<stat>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carbon {
    /// Not sent.
    No,
    /// One stat: the value, or the sum over its labels. `always`: sent even when a
    /// counter did not change (carbon's always-sent stats).
    Stat {
        /// The stat's name, e.g. `metricsReceived`.
        name: &'static str,
        /// Sent even when zero.
        always: bool,
    },
    /// One stat per label value, `<before><label value, . → _><after>`, sent when it
    /// changed.
    Each {
        /// Text before the label value, e.g. `drops.`.
        before: &'static str,
        /// Text after the label value, e.g. `.sent`.
        after: &'static str,
    },
}

/// Calls its argument with each `(label value, value)` sample (label value `""` when the
/// metric has no label); calls it never when the metric does not apply (no journal, …).
pub type Read = fn(&Observed, &mut dyn FnMut(&str, u64));

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
    /// Its carbon self-metric.
    pub carbon: Carbon,
    /// Reads its samples.
    pub read: Read,
}

fn ld(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Every metric, in `/metrics` order (`docs/operations.md` lists them with their meaning).
pub const CATALOG: &[Metric] = &[
    Metric {
        name: "received",
        help: "Datapoints accepted.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::Stat {
            name: "metricsReceived",
            always: true,
        },
        read: |o, f| f("", ld(&o.stats.received)),
    },
    Metric {
        name: "aggregates_emitted",
        help: "Aggregates emitted, re-emissions included.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::Stat {
            name: "aggregateDatapointsSent",
            always: true,
        },
        read: |o, f| f("", ld(&o.stats.aggregates_emitted)),
    },
    Metric {
        name: "forwarded",
        help: "Raw datapoints forwarded.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| f("", ld(&o.stats.forwarded)),
    },
    Metric {
        name: "sent",
        help: "Datapoints written to destinations.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| f("", ld(&o.stats.sent)),
    },
    Metric {
        name: "active_connections",
        help: "Open inbound TCP connections.",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::Stat {
            name: "activeConnections",
            always: true,
        },
        read: |o, f| f("", ld(&o.stats.active_connections)),
    },
    Metric {
        name: "connections_refused",
        help: "Inbound TCP connections closed at once: a connection limit was reached.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| f("", o.stats.events.count(Event::ConnectionRefused)),
    },
    Metric {
        name: "dropped",
        help: "Datapoints, lines or frames dropped, by reason.",
        ty: Type::Counter,
        label: Some("reason"),
        carbon: Carbon::Each {
            before: "drops.",
            after: "",
        },
        read: |o, f| {
            for r in DropReason::ALL {
                f(r.as_str(), o.stats.drops(r));
            }
        },
    },
    Metric {
        name: "events",
        help: "Notable events other than drops (failures aggd recovers from), by event.",
        ty: Type::Counter,
        label: Some("event"),
        carbon: Carbon::Each {
            before: "events.",
            after: "",
        },
        read: |o, f| {
            for e in Event::ALL {
                f(e.as_str(), o.stats.events.count(e));
            }
        },
    },
    Metric {
        name: "destination_sent",
        help: "Datapoints written, per destination.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: Carbon::Each {
            before: "destinations.",
            after: ".sent",
        },
        read: |o, f| o.dests.counters().for_each(|(d, c)| f(d, ld(&c.sent))),
    },
    Metric {
        name: "destination_unconfirmed",
        help: "Datapoints written into connections that then failed (ledgered).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: Carbon::No,
        read: |o, f| {
            o.dests
                .counters()
                .for_each(|(d, c)| f(d, ld(&c.unconfirmed)));
        },
    },
    Metric {
        name: "destination_connection_failures",
        help: "Destination connections that failed.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: Carbon::No,
        read: |o, f| {
            o.dests
                .counters()
                .for_each(|(d, c)| f(d, ld(&c.connection_failures)));
        },
    },
    Metric {
        name: "destination_full_queue_drops",
        help: "Datapoints dropped on a full destination queue.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: Carbon::Each {
            before: "destinations.",
            after: ".fullQueueDrops",
        },
        read: |o, f| {
            o.dests
                .counters()
                .for_each(|(d, c)| f(d, ld(&c.full_queue_drops)));
        },
    },
    Metric {
        name: "destination_queued",
        help: "Datapoints queued, per destination.",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: Carbon::No,
        read: |o, f| {
            o.dests
                .counters()
                .for_each(|(d, c)| f(d, c.queued.load(Ordering::Relaxed) as u64));
        },
    },
    Metric {
        name: "worker_queue_depth",
        help: "Batches waiting, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: Carbon::No,
        read: |o, f| {
            for (i, q) in o.queues.iter().enumerate() {
                f(&i.to_string(), q.len() as u64);
            }
        },
    },
    Metric {
        name: "series",
        help: "Live output series, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: Carbon::Stat {
            name: "allocatedBuffers",
            always: true,
        },
        read: |o, f| {
            for (i, g) in o.gauges.iter().enumerate() {
                f(&i.to_string(), ld(&g.series));
            }
        },
    },
    Metric {
        name: "buffered_datapoints",
        help: "Datapoints in live buckets, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: Carbon::Stat {
            name: "bufferedDatapoints",
            always: true,
        },
        read: |o, f| {
            for (i, g) in o.gauges.iter().enumerate() {
                f(&i.to_string(), ld(&g.buffered));
            }
        },
    },
    Metric {
        name: "journal_records",
        help: "Records journaled.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| o.journal.iter().for_each(|j| f("", ld(&j.stats().records))),
    },
    Metric {
        name: "journal_bytes",
        help: "Bytes journaled.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| o.journal.iter().for_each(|j| f("", ld(&j.stats().bytes))),
    },
    Metric {
        name: "journal_queue",
        help: "Records waiting for the journal writer (lag).",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::No,
        read: |o, f| o.journal.iter().for_each(|j| f("", j.queued() as u64)),
    },
    Metric {
        name: "journal_size_bytes",
        help: "Bytes of all journal segments.",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::No,
        read: |o, f| o.journal.iter().for_each(|j| f("", j.size_on_disk())),
    },
    Metric {
        name: "journal_write_errors",
        help: "Journal batch writes or rotations that failed.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().write_errors)));
        },
    },
    Metric {
        name: "journal_fsync_errors",
        help: "Journal fsyncs that failed.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().fsync_errors)));
        },
    },
    Metric {
        name: "journal_unjournaled",
        help: "Records the journal could not write.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().unjournaled)));
        },
    },
    Metric {
        name: "ledger_unwritten_entries",
        help: "Loss ledger entries kept in memory because the ledger file cannot be written.",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::No,
        read: |o, f| {
            o.stats
                .ledger()
                .iter()
                .for_each(|l| f("", l.unwritten() as u64));
        },
    },
    Metric {
        name: "ledger_write_errors",
        help: "Loss ledger flushes that failed.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| {
            o.stats
                .ledger()
                .iter()
                .for_each(|l| f("", l.write_errors()));
        },
    },
    Metric {
        name: "quarantine_overflowed",
        help: "Rejected datapoints not written to the quarantine file: its queue was full.",
        ty: Type::Counter,
        label: None,
        carbon: Carbon::No,
        read: |o, f| o.quarantine.iter().for_each(|q| f("", q.overflowed())),
    },
    Metric {
        name: "process_resident_memory_bytes",
        help: "Resident set size of the process.",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::Stat {
            name: "memUsage",
            always: true,
        },
        read: |_, f| f("", super::self_metrics::process_usage().1),
    },
    Metric {
        name: "ready",
        help: "1 when ready.",
        ty: Type::Gauge,
        label: None,
        carbon: Carbon::No,
        read: |o, f| f("", u64::from(o.is_ready())),
    },
];

/// Encodes the [`CATALOG`] over one [`Observed`] at each scrape.
struct Collector(Arc<Observed>);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("aggd metrics catalog")
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut samples: Vec<(String, u64)> = Vec::new();
        for m in CATALOG {
            samples.clear();
            (m.read)(&self.0, &mut |label, v| {
                samples.push((label.to_string(), v));
            });
            if samples.is_empty() {
                continue;
            }
            let ty = match m.ty {
                Type::Counter => MetricType::Counter,
                Type::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(m.name, m.help, None, ty)?;
            match m.label {
                None => encode_value(m.ty, samples[0].1, family)?,
                Some(key) => {
                    for (label, v) in &samples {
                        let labels = [(key, label.as_str())];
                        encode_value(m.ty, *v, family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    ty: Type,
    v: u64,
    e: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match ty {
        Type::Counter => ConstCounter::new(v).encode(e),
        Type::Gauge => ConstGauge::new(v as i64).encode(e),
    }
}

/// The registry (`aggd_` prefix) holding the catalog; built once at start.
pub struct Metrics {
    registry: Registry,
    observed: Arc<Observed>,
}

impl Metrics {
    /// The registry over `observed`.
    pub fn new(observed: Arc<Observed>) -> Self {
        let mut registry = Registry::with_prefix("aggd");
        registry.register_collector(Box::new(Collector(Arc::clone(&observed))));
        Metrics { registry, observed }
    }

    /// What the metrics are read from.
    pub fn observed(&self) -> &Arc<Observed> {
        &self.observed
    }

    /// The registry in Prometheus text format.
    pub(crate) fn prometheus(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding");
        }
        out
    }
}
