//! Carbon-style self-metrics, read from the metrics catalog ([`super::metrics::CATALOG`])
//! and sent to the destinations every `service.self_metrics_interval`, never through rules
//! or rewrites.
//!
//! Names, as carbon-aggregator 1.1.x's (`carbon/instrumentation.py`):
//! `<prefix>.aggregator.<host>-<instance>.<stat>`, `<host>` with `.` → `_`, instance `a`
//! unless configured (`service.instance`, carbon's `--instance`). The first report is one
//! interval after start; with a zero interval none is ever sent, not even at shutdown.
//!
//! Values per interval, like carbon's: a counter sends its change since the last report, a
//! gauge its level. Stats that are zero for the interval are left out, except carbon's
//! common ones, always sent: `metricsReceived`, `aggregateDatapointsSent`,
//! `allocatedBuffers`, `bufferedDatapoints`, `activeConnections`, `blacklistMatches`,
//! `whitelistRejects`, `cpuUsage` (process CPU time / wall time × 100 over the interval, a
//! rate of two readings and so not in the catalog) and `memUsage` (RSS bytes). Per
//! destination (`<dest>` = `host:port:instance`, `.` → `_`, e.g. `127_0_0_1:2004:None`):
//! `destinations.<dest>.attemptedRelays`, `.sent`, `.batchesSent`,
//! `.relayMaxQueueLength` (largest queue length in the interval; sent, like carbon's,
//! in every interval in which the destination was offered a datapoint, 0 included),
//! `.fullQueueDrops`,
//! `.queuedUntilConnected`. aggd's own, under the same prefix: `drops.<reason>`,
//! `events.<event>` and `journal.*`. The catalog ([`super::metrics::CATALOG`]) says which
//! metric feeds which stat ([`super::metrics::Carbon`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::process_usage;
use super::metrics::{Carbon, Metrics, Type};
use crate::datapoint::{OutPoint, OutValue, Sink};

/// The counters' totals at the last report, by stat name.
#[derive(Default)]
pub(crate) struct Report {
    last: HashMap<String, u64>,
}

impl Report {
    /// The stats of one report over `metrics`, as `(stat, value)`: counters as their
    /// change since the previous call, gauges as they are; zero ones left out except the
    /// `always` ones. Resets the destinations' queue peaks (they are per report).
    pub fn stats(&mut self, metrics: &Metrics) -> Vec<(String, u64)> {
        let o = metrics.observed();
        let dest_names: Vec<&str> = o.dests.carbon_counters().map(|(n, _)| n).collect();
        // Destinations offered datapoints since the last report: like carbon (whose
        // `sendDatapoint` sets `relayMaxQueueLength` with `instrumentation.max` on every
        // relay), they report their queue peak even when it is 0.
        let relayed: Vec<&str> = o
            .dests
            .carbon_counters()
            .filter(|(n, c)| {
                let last = self.last.get(&format!("destinations.{n}.attemptedRelays"));
                c.attempted.load(std::sync::atomic::Ordering::Relaxed) > *last.unwrap_or(&0)
            })
            .map(|(n, _)| n)
            .collect();
        let mut out = Vec::new();
        for m in super::catalog::all() {
            if m.carbon.is_empty() {
                continue;
            }
            let mut samples: Vec<(String, u64)> = Vec::new();
            (m.read)(o, &mut |label, v| samples.push((label.to_string(), v)));
            if samples.is_empty() {
                continue;
            }
            for view in m.carbon {
                match *view {
                    Carbon::Stat { name, always } => {
                        let v = samples.iter().map(|s| s.1).sum();
                        self.add(&mut out, m.ty, name.to_string(), v, always);
                    }
                    Carbon::Each { before, after } => {
                        for (label, v) in &samples {
                            let stat = format!("{before}{}{after}", label.replace('.', "_"));
                            self.add(&mut out, m.ty, stat, *v, false);
                        }
                    }
                    Carbon::Label { label, name } => {
                        let v = samples.iter().find(|s| s.0 == label).map_or(0, |s| s.1);
                        self.add(&mut out, m.ty, name.to_string(), v, true);
                    }
                    Carbon::Dest { stat } => {
                        for ((_, v), dest) in samples.iter().zip(&dest_names) {
                            let name = format!("destinations.{dest}.{stat}");
                            let always = stat == "relayMaxQueueLength" && relayed.contains(dest);
                            self.add(&mut out, m.ty, name, *v, always);
                        }
                    }
                }
            }
        }
        o.dests.reset_peaks();
        out
    }

    /// Adds one stat: a counter's change since the last report, a gauge's level; left out
    /// when zero unless `always`.
    fn add(&mut self, out: &mut Vec<(String, u64)>, ty: Type, stat: String, v: u64, always: bool) {
        let v = match ty {
            Type::Gauge => v,
            Type::Counter => {
                let prev = self.last.insert(stat.clone(), v).unwrap_or(0);
                v.saturating_sub(prev)
            }
        };
        if always || v > 0 {
            out.push((stat, v));
        }
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
    let base = service.self_metrics_base();
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
                interval: None,
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
