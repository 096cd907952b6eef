//! HTTP ingest (axum): `POST /api/v1/ingest` and the go-carbon-style `POST /`.
//!
//! Bodies are described in [`crate::codec::http`]; `Content-Encoding: gzip` is decoded
//! (the decoded size is bounded too). With tenants on, every request needs an API key —
//! `Authorization: Bearer <key>` or the password of HTTP Basic — and its datapoints belong
//! to the key's tenant. Each body is journaled (decoded, with its kind and tenant) before
//! its datapoints reach a worker; a full worker queue makes the request wait.
//!
//! Responses (JSON): 200 `{"accepted": n, "rejected": m, "reasons": {"parse_error": k}}`;
//! 400 an unusable body (bad gzip, undecodable pickle, JSON that is not an array of
//! datapoints); 401 a missing or unknown API key; 413 a body over
//! `limits.max_http_body_bytes` (compressed or decoded); 415 an unsupported Content-Type;
//! 429 with `Retry-After: 1` when the tenant's rate limit rejected every datapoint;
//! 503 when `limits.max_http_requests` requests are already in progress (counted as
//! `connections_refused`).
//!
//! gzip decoding and body decoding run on tokio's blocking pool, never on the threads that
//! serve connections.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::codec::http::kind_of;
use crate::events::Event;
use crate::ingest::{Ingest, Pipeline};
use crate::reason::DropReason;

struct HttpState {
    pipeline: Arc<Pipeline>,
    /// Permits for requests in progress (`limits.max_http_requests`).
    requests: Arc<tokio::sync::Semaphore>,
    index: u16,
    max_body: usize,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The API key of a request: a Bearer token, or the password of HTTP Basic.
fn api_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, pass)| pass.to_string())
}

/// Decodes gzip within `max` bytes; `Err(true)` = over the limit, `Err(false)` = bad gzip.
fn gunzip(body: &[u8], max: usize) -> Result<Bytes, bool> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| false)?;
    if out.len() > max {
        return Err(true);
    }
    Ok(out.into())
}

async fn ingest(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = crate::time::now();
    let tenant = match &s.pipeline.routes.tenants {
        None => None,
        Some(t) => match api_key(&headers).and_then(|k| t.tenant_for_key(&k)) {
            Some(id) => Some(id),
            None => return error(StatusCode::UNAUTHORIZED, "a valid API key is required"),
        },
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(kind) = kind_of(content_type) else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be text/plain, application/python-pickle or application/json",
        );
    };
    let body = match decoded_body(&s, &headers, body).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let ing = Ingest::new(Arc::clone(&s.pipeline), peer, s.index, kind);
    // The work items of decoding the body come out of the connections' memory budget.
    let Some(_charge) = s
        .pipeline
        .slots
        .try_charge(body.len().saturating_mul(ing.items_per_byte()))
    else {
        s.pipeline.stats.events.emit(
            Event::ConnectionRefused,
            &format_args!("connection memory budget spent; HTTP request from {peer} refused"),
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection memory budget spent; retry later",
        );
    };
    let decode = tokio::task::spawn_blocking(move || {
        let mut ing = ing;
        let decoded = ing.frame(kind, &body, tenant.as_deref(), now);
        (ing, decoded, body, tenant)
    });
    let Ok((mut ing, decoded, body, tenant)) = decode.await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed");
    };
    ing.journal_as(&body, now, kind, tenant).await;
    if let Err(e) = decoded {
        // Counted as bad_frame by the decode step.
        ing.flush().await;
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    ing.flush().await;
    outcome(&ing)
}

/// The body, gunzipped if `Content-Encoding: gzip` (within `max_body`); 413 or 400 when
/// it is over the limit or not gzip.
async fn decoded_body(s: &HttpState, headers: &HeaderMap, body: Bytes) -> Result<Bytes, Response> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body);
    }
    let max = s.max_body;
    let unzipped = tokio::task::spawn_blocking(move || gunzip(&body, max)).await;
    match unzipped.unwrap_or(Err(false)) {
        Ok(b) => Ok(b),
        Err(true) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "decoded body over the limit",
        )),
        Err(false) => Err(error(StatusCode::BAD_REQUEST, "body is not valid gzip")),
    }
}

/// The answer to a body that decoded: what was accepted and rejected (per reason); 429
/// with `Retry-After` when nothing was accepted and rate limits refused some.
fn outcome(ing: &Ingest) -> Response {
    let (accepted, reasons) = ing.outcome();
    let rejected: u64 = reasons.iter().map(|(_, n)| n).sum();
    let reasons: serde_json::Map<String, serde_json::Value> = reasons
        .iter()
        .map(|(r, n)| (r.as_str().to_string(), json!(n)))
        .collect();
    let body = Json(json!({ "accepted": accepted, "rejected": rejected, "reasons": reasons }));
    let rate_limited = reasons.contains_key(DropReason::RateLimited.as_str());
    if accepted == 0 && rate_limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            body,
        )
            .into_response();
    }
    body.into_response()
}

/// Serves HTTP ingest on `listener` until `shutdown`.
/// Holds a request permit (`limits.max_http_requests`) while a request is read and
/// processed, so the bodies in memory are bounded; 503 without one.
async fn admit(
    State(s): State<Arc<HttpState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = Arc::clone(&s.requests).try_acquire_owned() else {
        s.pipeline.stats.events.emit(
            Event::ConnectionRefused,
            &"HTTP request refused: limits.max_http_requests in progress",
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in progress (limits.max_http_requests)",
        );
    };
    next.run(req).await
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    index: u16,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    let max_body = pipeline.routes.limits.max_http_body_bytes;
    let requests = pipeline
        .routes
        .limits
        .max_http_requests
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    let stats = Arc::clone(&pipeline.stats);
    let state = Arc::new(HttpState {
        requests: Arc::new(tokio::sync::Semaphore::new(requests)),
        pipeline,
        index,
        max_body,
    });
    let app = Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route("/", post(ingest))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            admit,
        ))
        .with_state(state);
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(e) = serve.await {
        stats.events.emit(
            Event::ListenerStopped,
            &format_args!("HTTP ingest stopped: {e}"),
        );
    }
}
