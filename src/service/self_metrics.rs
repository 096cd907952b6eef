//! Carbon-style self-metrics, read from the metrics catalog ([`super::metrics::CATALOG`])
//! and sent to the destinations every `service.self_metrics_interval`, never through rules
//! or rewrites.
//!
//! Names: `<prefix>.aggregator.<host>.<stat>` (carbon's scheme; `<host>` with `.` → `_`).
//! Values per interval, like carbon's: a counter sends its change since the last report, a
//! gauge its level. Counters that did not change are left out except the always-sent ones
//! (`metricsReceived`, `aggregateDatapointsSent`), as in carbon. The stats are those the
//! catalog names ([`super::metrics::Carbon`]): `metricsReceived`,
//! `aggregateDatapointsSent`, `allocatedBuffers`, `bufferedDatapoints`,
//! `activeConnections`, `memUsage` (RSS bytes), `destinations.<dest>.sent` and
//! `.fullQueueDrops` (`<dest>` with `.` → `_`), aggd's `drops.<reason>` and
//! `events.<event>`; plus `cpuUsage` (process CPU time / wall time × 100 over the
//! interval), which is a rate of two readings and so not in the catalog.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{CATALOG, Carbon, Metrics, Type};
use crate::datapoint::{OutPoint, OutValue, Sink};

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

/// The counters' totals at the last report, by stat name.
#[derive(Default)]
pub(crate) struct Report {
    last: HashMap<String, u64>,
}

impl Report {
    /// The stats of one report over `metrics`, as `(stat, value)`: counters as their
    /// change since the previous call.
    pub fn stats(&mut self, metrics: &Metrics) -> Vec<(String, u64)> {
        let o = metrics.observed();
        let mut out = Vec::new();
        for m in CATALOG {
            let mut samples: Vec<(String, u64)> = Vec::new();
            (m.read)(o, &mut |label, v| samples.push((label.to_string(), v)));
            if samples.is_empty() {
                continue;
            }
            let mut add = |stat: String, v: u64, always: bool| match m.ty {
                Type::Gauge => out.push((stat, v)),
                Type::Counter => {
                    let prev = self.last.insert(stat.clone(), v).unwrap_or(0);
                    let d = v.saturating_sub(prev);
                    if always || d > 0 {
                        out.push((stat, d));
                    }
                }
            };
            match m.carbon {
                Carbon::No => {}
                Carbon::Stat { name, always } => {
                    add(name.to_string(), samples.iter().map(|s| s.1).sum(), always);
                }
                Carbon::Each { before, after } => {
                    for (label, v) in samples {
                        add(
                            format!("{before}{}{after}", label.replace('.', "_")),
                            v,
                            false,
                        );
                    }
                }
            }
        }
        out
    }
}

/// Sends carbon-style self-metrics every `service.self_metrics_interval` until `shutdown`
/// (not at all for a zero interval), named with its prefix and host name.
pub fn spawn_self_metrics(
    metrics: Arc<Metrics>,
    service: &crate::config::Service,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let interval = service.self_metrics_interval;
    if interval.is_zero() {
        return;
    }
    let (prefix, host) = (&service.self_metrics_prefix, &service.hostname);
    let base = format!("{prefix}.aggregator.{host}");
    tracker.spawn(async move {
        let mut report = Report::default();
        let (mut last_cpu, _) = process_usage();
        let mut last_t = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let timestamp = crate::time::now();
            let point = |stat: &str, value| OutPoint {
                path: format!("{base}.{stat}").into(),
                timestamp,
                value,
            };
            let mut out: Vec<OutPoint> = report
                .stats(&metrics)
                .iter()
                .map(|(stat, v)| point(stat, OutValue::Int(*v as i64)))
                .collect();
            let (cpu, _) = process_usage();
            let wall = last_t.elapsed().as_secs_f64().max(1e-9);
            out.push(point(
                "cpuUsage",
                OutValue::Float((cpu - last_cpu) / wall * 100.0),
            ));
            last_cpu = cpu;
            last_t = Instant::now();
            metrics.observed().dests.send(out.into());
        }
    });
}
