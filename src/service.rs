//! Running as a service: one readiness latch that drives both systemd's `READY=1` and
//! `GET /ready`; the systemd watchdog, pinged only while every worker makes progress;
//! `GET /health`, `GET /ready` and Prometheus text at `GET /metrics`; and carbon-style
//! self-metrics sent to the destinations.
//!
//! Self-metrics, every `service.self_metrics_interval`, named
//! `<prefix>.aggregator.<host>.<stat>` (carbon's scheme; `<host>` with `.` → `_`), values
//! per interval like carbon's (counters are deltas since the last report):
//! `metricsReceived`, `aggregateDatapointsSent`, `allocatedBuffers`, `bufferedDatapoints`,
//! `activeConnections`, `cpuUsage` (process CPU time / wall time × 100), `memUsage` (RSS
//! bytes), `destinations.<dest>.sent` and `.fullQueueDrops` (`<dest>` with `.` → `_`), and
//! aggd's `drops.<reason>`. Zero counters are omitted except the always-sent ones, as in
//! carbon. They go straight to the destinations, never through rules or rewrites.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crossbeam_channel::Sender;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::worker::{Heartbeats, WorkerGauges, WorkerMsg};
use crate::datapoint::Sink;
use crate::datapoint::{OutPoint, OutValue};
use crate::dest::Destinations;
use crate::drops::Stats;
use crate::journal::Journal;
use crate::reason::DropReason;

/// Sends a systemd notification (a no-op without `NOTIFY_SOCKET`).
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Everything the health, metrics and self-metrics views read.
pub struct Observed {
    /// Process counters.
    pub stats: Arc<Stats>,
    /// Destinations and their counters.
    pub dests: Arc<Destinations>,
    /// Per-worker gauges.
    pub gauges: Vec<Arc<WorkerGauges>>,
    /// Worker queues (for their depth).
    pub queues: Arc<[Sender<WorkerMsg>]>,
    /// Worker heartbeats.
    pub heartbeats: Heartbeats,
    /// The journal, when on.
    pub journal: Option<Arc<Journal>>,
    /// Readiness: listeners bound and open intervals rebuilt, not shutting down.
    pub ready: AtomicBool,
}

/// How long a worker may go without progress and still count as healthy.
pub const HEALTH_TOLERANCE: Duration = Duration::from_secs(5);

impl Observed {
    /// Liveness: every worker made progress recently.
    pub fn healthy(&self) -> bool {
        self.heartbeats.healthy(HEALTH_TOLERANCE)
    }

    /// Readiness: ready and healthy.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.healthy()
    }

    /// The counters and gauges in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut reg = Registry::with_prefix("aggd");
        let counter = |v: u64| {
            let c: Counter = Counter::default();
            c.inc_by(v);
            c
        };
        let gauge = |v: u64| {
            let g: Gauge = Gauge::default();
            g.set(v as i64);
            g
        };
        let s = &self.stats;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        reg.register("received", "Datapoints accepted", counter(ld(&s.received)));
        reg.register(
            "aggregates_emitted",
            "Aggregates emitted, re-emissions included",
            counter(ld(&s.aggregates_emitted)),
        );
        reg.register(
            "forwarded",
            "Raw datapoints forwarded",
            counter(ld(&s.forwarded)),
        );
        reg.register(
            "sent",
            "Datapoints written to destinations",
            counter(ld(&s.sent)),
        );
        reg.register(
            "active_connections",
            "Open inbound TCP connections",
            gauge(ld(&s.active_connections)),
        );
        reg.register(
            "connections_refused",
            "Inbound TCP connections closed at once: a connection limit was reached",
            counter(ld(&s.connections_refused)),
        );
        let drops = Family::<Vec<(String, String)>, Counter>::default();
        for r in DropReason::ALL {
            drops
                .get_or_create(&vec![("reason".into(), r.as_str().into())])
                .inc_by(s.drops(r));
        }
        reg.register(
            "dropped",
            "Datapoints, lines or frames dropped, by reason",
            drops,
        );
        let (sent, full, queued) = (
            Family::<Vec<(String, String)>, Counter>::default(),
            Family::<Vec<(String, String)>, Counter>::default(),
            Family::<Vec<(String, String)>, Gauge>::default(),
        );
        let (unconfirmed, failures) = (
            Family::<Vec<(String, String)>, Counter>::default(),
            Family::<Vec<(String, String)>, Counter>::default(),
        );
        for (name, c) in self.dests.counters() {
            let l = vec![("destination".to_string(), name.to_string())];
            sent.get_or_create(&l).inc_by(ld(&c.sent));
            full.get_or_create(&l).inc_by(ld(&c.full_queue_drops));
            unconfirmed.get_or_create(&l).inc_by(ld(&c.unconfirmed));
            failures
                .get_or_create(&l)
                .inc_by(ld(&c.connection_failures));
            queued
                .get_or_create(&l)
                .set(c.queued.load(Ordering::Relaxed) as i64);
        }
        reg.register(
            "destination_sent",
            "Datapoints written, per destination",
            sent,
        );
        reg.register(
            "destination_unconfirmed",
            "Datapoints written into connections that then failed (ledgered)",
            unconfirmed,
        );
        reg.register(
            "destination_connection_failures",
            "Destination connections that failed",
            failures,
        );
        reg.register(
            "destination_full_queue_drops",
            "Datapoints dropped on a full destination queue",
            full,
        );
        reg.register(
            "destination_queued",
            "Datapoints queued, per destination",
            queued,
        );
        let (depth, series, buffered) = (
            Family::<Vec<(String, String)>, Gauge>::default(),
            Family::<Vec<(String, String)>, Gauge>::default(),
            Family::<Vec<(String, String)>, Gauge>::default(),
        );
        for (i, (q, g)) in self.queues.iter().zip(&self.gauges).enumerate() {
            let l = vec![("worker".to_string(), i.to_string())];
            depth.get_or_create(&l).set(q.len() as i64);
            series.get_or_create(&l).set(ld(&g.series) as i64);
            buffered.get_or_create(&l).set(ld(&g.buffered) as i64);
        }
        reg.register("worker_queue_depth", "Batches waiting, per worker", depth);
        reg.register("series", "Live output series, per worker", series);
        reg.register(
            "buffered_datapoints",
            "Datapoints in live buckets, per worker",
            buffered,
        );
        if let Some(j) = &self.journal {
            let js = j.stats();
            reg.register(
                "journal_records",
                "Records journaled",
                counter(ld(&js.records)),
            );
            reg.register("journal_bytes", "Bytes journaled", counter(ld(&js.bytes)));
            reg.register(
                "journal_queue",
                "Records waiting for the journal writer (lag)",
                gauge(j.queued() as u64),
            );
            reg.register(
                "journal_size_bytes",
                "Bytes of all journal segments",
                gauge(j.size_on_disk()),
            );
            reg.register(
                "journal_write_errors",
                "Journal batch writes or rotations that failed",
                counter(ld(&js.write_errors)),
            );
            reg.register(
                "journal_fsync_errors",
                "Journal fsyncs that failed",
                counter(ld(&js.fsync_errors)),
            );
            reg.register(
                "journal_unjournaled",
                "Records the journal could not write",
                counter(ld(&js.unjournaled)),
            );
        }
        if let Some(l) = self.stats.ledger() {
            reg.register(
                "ledger_unwritten_entries",
                "Loss ledger entries kept in memory because the ledger file cannot be written",
                gauge(l.unwritten() as u64),
            );
            reg.register(
                "ledger_write_errors",
                "Loss ledger flushes that failed",
                counter(l.write_errors()),
            );
        }
        reg.register("ready", "1 when ready", gauge(u64::from(self.is_ready())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!(error = %e, "metrics encoding");
        }
        out
    }
}

async fn health(axum::extract::State(o): axum::extract::State<Arc<Observed>>) -> Response {
    if o.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a worker stopped making progress\n",
        )
            .into_response()
    }
}

async fn ready(axum::extract::State(o): axum::extract::State<Arc<Observed>>) -> Response {
    if o.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(axum::extract::State(o): axum::extract::State<Arc<Observed>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.prometheus(),
    )
        .into_response()
}

/// `GET /health`, `GET /ready`, `GET /metrics` (no authentication; keep the admin
/// listener on loopback or behind a firewall).
pub fn routes(o: Arc<Observed>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(o)
}

/// Pings the systemd watchdog at half its interval while the workers make progress; a
/// stalled worker stops the pings and systemd restarts the service.
pub fn spawn_watchdog(o: Arc<Observed>, shutdown: CancellationToken, tracker: &TaskTracker) {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every / 2) => {}
            }
            if o.heartbeats.healthy(every / 2) {
                notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("a worker stopped making progress: not pinging the watchdog");
            }
        }
    });
}

/// (process CPU seconds, RSS bytes) from /proc/self.
fn process_usage() -> (f64, u64) {
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

/// Sends carbon-style self-metrics every `interval` until `shutdown`.
pub fn spawn_self_metrics(
    o: Arc<Observed>,
    interval: Duration,
    prefix: String,
    host: String,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    if interval.is_zero() {
        return;
    }
    tracker.spawn(async move {
        let mut last: HashMap<String, u64> = HashMap::new();
        let (mut last_cpu, _) = process_usage();
        let mut last_t = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let ts = crate::time::now();
            let base = format!("{prefix}.aggregator.{host}");
            let mut out = Vec::new();
            let mut point = |stat: String, v: OutValue| {
                out.push(OutPoint {
                    path: format!("{base}.{stat}").into(),
                    timestamp: ts,
                    value: v,
                })
            };
            // Counters as deltas since the last report; `always` ones even when zero.
            let mut delta = |stat: String, total: u64, always: bool| {
                let prev = last.insert(stat.clone(), total).unwrap_or(0);
                let d = total.saturating_sub(prev);
                (always || d > 0).then_some((stat, d))
            };
            let s = &o.stats;
            let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let mut deltas = vec![
                delta("metricsReceived".into(), ld(&s.received), true),
                delta(
                    "aggregateDatapointsSent".into(),
                    ld(&s.aggregates_emitted),
                    true,
                ),
            ];
            for r in DropReason::ALL {
                deltas.push(delta(format!("drops.{}", r.as_str()), s.drops(r), false));
            }
            for (name, c) in o.dests.counters() {
                let d = name.replace('.', "_");
                deltas.push(delta(format!("destinations.{d}.sent"), ld(&c.sent), false));
                deltas.push(delta(
                    format!("destinations.{d}.fullQueueDrops"),
                    ld(&c.full_queue_drops),
                    false,
                ));
            }
            for (stat, d) in deltas.into_iter().flatten() {
                point(stat, OutValue::Int(d as i64));
            }
            let series: u64 = o.gauges.iter().map(|g| ld(&g.series)).sum();
            let buffered: u64 = o.gauges.iter().map(|g| ld(&g.buffered)).sum();
            point("allocatedBuffers".into(), OutValue::Int(series as i64));
            point("bufferedDatapoints".into(), OutValue::Int(buffered as i64));
            point(
                "activeConnections".into(),
                OutValue::Int(ld(&s.active_connections) as i64),
            );
            let (cpu, rss) = process_usage();
            let wall = last_t.elapsed().as_secs_f64().max(1e-9);
            point(
                "cpuUsage".into(),
                OutValue::Float((cpu - last_cpu) / wall * 100.0),
            );
            point("memUsage".into(), OutValue::Int(rss as i64));
            last_cpu = cpu;
            last_t = Instant::now();
            o.dests.send(out.into());
        }
    });
}
