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
pub use super::catalog::{CATALOG, Carbon, Metric, Read, Type};

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
        for m in super::catalog::all() {
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
