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

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Observed;
pub use super::catalog::CATALOG;

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
    /// Its carbon self-metrics (none: not sent).
    pub carbon: &'static [Carbon],
    /// Reads its samples.
    pub read: Read,
}

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
