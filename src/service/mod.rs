//! Running as a service: one readiness latch that drives both systemd's `READY=1` and
//! `GET /ready`; the systemd watchdog, pinged only while every worker makes progress;
//! `GET /health`, `GET /ready` and Prometheus text at `GET /metrics`; and carbon-style
//! self-metrics sent to the destinations.
//!
//! The counters and gauges are one catalog ([`metrics`]) behind both `GET /metrics` and the
//! carbon self-metrics ([`self_metrics`]).

pub mod catalog;
pub mod metrics;
pub mod self_metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crossbeam_channel::Sender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::worker::{Heartbeats, WorkerGauges, WorkerMsg};
use crate::dest::Destinations;
use crate::drops::Stats;
use crate::events::Event;
use crate::journal::Journal;
use crate::quarantine::Quarantine;

pub use metrics::Metrics;
pub use self_metrics::spawn_self_metrics;

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
    /// The quarantine file, when on.
    pub quarantine: Option<Arc<Quarantine>>,
    /// Cluster mode's counters, when on.
    pub cluster: Option<Arc<crate::cluster::ClusterStats>>,
    /// Readiness: listeners bound and open intervals rebuilt, not shutting down.
    pub ready: AtomicBool,
    /// The config's memory bound (`aggd check`'s, for 100 000 live output series), bytes.
    pub memory_bound: u64,
    /// Cluster mode: this node's name and the cluster's shard count.
    pub cluster_node: Option<(String, u32)>,
    /// The ingest pipeline, for the rules in force (the live-state API names each
    /// series' rule); `None` in unit tests.
    pub pipeline: Option<Arc<crate::ingest::Pipeline>>,
}

/// How long a worker may go without progress and still count as healthy.
pub(crate) const HEALTH_TOLERANCE: Duration = Duration::from_secs(5);

impl Observed {
    /// Liveness: every worker made progress recently.
    pub fn healthy(&self) -> bool {
        self.heartbeats.healthy(HEALTH_TOLERANCE)
    }

    /// Readiness: ready and healthy.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.healthy()
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

async fn metrics(axum::extract::State(m): axum::extract::State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.prometheus(),
    )
        .into_response()
}

/// `GET /health`, `GET /ready`, `GET /metrics`: without authentication, or with `token`
/// (`[admin] protect_metrics`) only for `Authorization: Bearer <token>` (401 otherwise).
/// Keep the admin listener on loopback or behind a firewall.
pub(crate) fn routes(m: Arc<Metrics>, token: Option<Arc<str>>) -> axum::Router {
    let o = Arc::clone(m.observed());
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(m)
        .merge(
            axum::Router::new()
                .route("/health", get(health))
                .route("/ready", get(ready))
                .with_state(o),
        );
    match token {
        Some(t) => app.layer(axum::middleware::from_fn_with_state(t, require_token)),
        None => app,
    }
}

/// `GET /api/series` parameters.
#[derive(serde::Deserialize)]
struct SeriesQuery {
    /// A regex over output series names.
    #[serde(rename = "match")]
    matching: String,
    /// Most series (default 100, at most 10 000).
    limit: Option<usize>,
}

/// Most series one `GET /api/series` returns.
pub const SERIES_LIMIT_MAX: usize = 10_000;

/// `GET /api/series?match=REGEX&limit=N` (admin token): the live state of the output
/// series whose name matches, sorted by name, at most `limit`: method and interval, the
/// intervals held with their aggregate so far, datapoint count and whether it was
/// emitted, the last emission, and in cluster mode the shard and this node (its owner:
/// only an owner holds a shard's series). JSON `{"series": [...], "truncated": bool}`;
/// 400 for a bad regex, 401 without the token.
async fn series(
    axum::extract::State((o, token)): axum::extract::State<(Arc<Observed>, Arc<str>)>,
    axum::extract::Query(q): axum::extract::Query<SeriesQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    use axum::Json;
    use serde_json::json;
    if !crate::tenant::admin::bearer_matches(&headers, &token) {
        let why = if token.is_empty() {
            "the admin API is off: configure [admin] token or token_file"
        } else {
            "admin token required"
        };
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": why }))).into_response();
    }
    let matching = match regex::Regex::new(&q.matching) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("match: {e}") })),
            )
                .into_response();
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, SERIES_LIMIT_MAX);
    let obs = Arc::clone(&o);
    let found = tokio::task::spawn_blocking(move || inspect(&obs, &matching, limit + 1))
        .await
        .unwrap_or_default();
    let truncated = found.len() > limit;
    let rules = o.pipeline.as_ref().map(|p| p.routes.router.load().rules());
    let series: Vec<serde_json::Value> = found
        .into_iter()
        .take(limit)
        .map(|s| {
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            if let Some(r) = rules
                .as_ref()
                .and_then(|r| r.producing(&s.name, &s.method, s.frequency))
            {
                v["rule"] = json!({ "line": r.line, "text": r.text });
            }
            if let Some((node, shards)) = &o.cluster_node {
                let shard = crate::aggregate::gate::shard_of(
                    crate::hash::fnv1a64(s.name.as_bytes()),
                    *shards,
                );
                v["shard"] = json!(shard);
                v["owner"] = json!(node);
            }
            v
        })
        .collect();
    Json(json!({ "series": series, "truncated": truncated })).into_response()
}

/// Asks every worker for its matching series (each answers between two batches), merged
/// and sorted by name; at most `limit`.
fn inspect(
    o: &Observed,
    matching: &Arc<regex::Regex>,
    limit: usize,
) -> Vec<crate::aggregate::series::SeriesState> {
    let wait = std::time::Duration::from_secs(5);
    let replies: Vec<_> = o
        .queues
        .iter()
        .filter_map(|q| {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let msg = crate::aggregate::worker::WorkerMsg::Inspect {
                matching: Arc::clone(matching),
                limit,
                reply,
            };
            q.send_timeout(msg, wait).ok().map(|()| answer)
        })
        .collect();
    let mut all: Vec<_> = replies
        .into_iter()
        .filter_map(|a| a.recv_timeout(wait).ok())
        .flatten()
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all.truncate(limit);
    all
}

/// The live-state route (`GET /api/series`), guarded by the admin `token` (off without one).
pub(crate) fn series_routes(o: Arc<Observed>, token: Arc<str>) -> axum::Router {
    axum::Router::new()
        .route("/api/series", get(series))
        .with_state((o, token))
}

/// Answers 401 unless the request carries the token.
async fn require_token(
    axum::extract::State(token): axum::extract::State<Arc<str>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if crate::tenant::admin::bearer_matches(req.headers(), &token) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "admin token required ([admin] protect_metrics)\n",
        )
            .into_response()
    }
}

/// Pings the systemd watchdog at half its interval while the workers make progress; a
/// stalled worker stops the pings and systemd restarts the service.
pub(crate) fn spawn_watchdog(o: Arc<Observed>, shutdown: CancellationToken, tracker: &TaskTracker) {
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
                o.stats.events.emit(
                    Event::WatchdogWithheld,
                    &"a worker stopped making progress: not pinging the watchdog",
                );
            }
        }
    });
}

#[cfg(test)]
mod tests;
