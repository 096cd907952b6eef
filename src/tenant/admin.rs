//! The admin HTTP API (axum), bound to loopback by default:
//!
//! | request | effect |
//! |---|---|
//! | `GET /api/tenants` | every tenant's entry |
//! | `GET /api/tenants/{id}` | the entry and the tenant's counters: `{"entry": {...}, "accepted": n, "rejected": {"reason": n}}` |
//! | `PUT /api/tenants/{id}` | create or replace the entry (JSON body, as in the registry file) |
//! | `DELETE /api/tenants/{id}` | mark the tenant `deleted` (its datapoints become `tenant_deleted`) |
//!
//! Every request needs `Authorization: Bearer <admin token>` (401 otherwise; without a
//! configured token the API is off and answers 401 saying so). Changes take
//! effect at once (a new registry snapshot) and are written to the registry file, so they
//! survive reloads and restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{TenantEntry, TenantState, Tenants};
use crate::reason::DropReason;

/// Shared state of the admin API.
pub struct Admin {
    /// The gate whose registry is managed.
    pub tenants: Arc<Tenants>,
    /// Where changes are written.
    pub registry_file: Option<PathBuf>,
    /// The bearer token every request must carry.
    pub token: String,
    /// Serialises changes (read-modify-write of the registry).
    pub write: tokio::sync::Mutex<()>,
}

/// Whether the request carries the admin token.
fn authorized(admin: &Admin, headers: &HeaderMap) -> bool {
    bearer_matches(headers, &admin.token)
}

/// Whether `headers` carry `Authorization: Bearer <token>` (never for an empty `token`).
/// The comparison takes the same time wherever the first difference is (`subtle`), so
/// timing does not reveal a prefix.
pub(crate) fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !token.is_empty() && bool::from(t.as_bytes().ct_eq(token.as_bytes())))
}

/// The 401 answer: the token is missing or wrong, or none is configured.
fn unauthorized(admin: &Admin) -> Response {
    if admin.token.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "the tenant API is off: configure [admin] token or token_file",
        );
    }
    error(StatusCode::UNAUTHORIZED, "admin token required")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn list(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized(&a);
    }
    Json(a.tenants.registry().tenants().clone()).into_response()
}

async fn show(State(a): State<Arc<Admin>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized(&a);
    }
    let reg = a.tenants.registry();
    let Some(entry) = reg.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no tenant {id}"));
    };
    let c = a.tenants.counters(&id);
    let rejected: BTreeMap<&str, u64> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), c.rejected(*r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    Json(json!({
        "entry": entry,
        "accepted": c.accepted.load(std::sync::atomic::Ordering::Relaxed),
        "rejected": rejected,
    }))
    .into_response()
}

async fn change(a: &Admin, id: &str, entry: Option<TenantEntry>) -> Response {
    let _guard = a.write.lock().await;
    let file = a
        .registry_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("(admin API)"));
    let next = match a.tenants.registry().with(id, entry, &file) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Some(f) = &a.registry_file
        && let Err(e) = next.save(f)
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write {}: {e}", f.display()),
        );
    }
    let body = json!({ "tenant": id, "entry": next.get(id) });
    a.tenants.replace(next);
    tracing::info!(tenant = id, "admin API changed tenant");
    Json(body).into_response()
}

async fn put(
    State(a): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized(&a);
    }
    match serde_json::from_slice::<TenantEntry>(&body) {
        Ok(entry) => change(&a, &id, Some(entry)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("bad tenant JSON: {e}")),
    }
}

async fn delete(
    State(a): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized(&a);
    }
    let mut entry = a.tenants.registry().get(&id).cloned().unwrap_or_default();
    entry.state = TenantState::Deleted;
    change(&a, &id, Some(entry)).await
}

/// The admin API's routes.
pub fn router(admin: Arc<Admin>) -> axum::Router {
    axum::Router::new()
        .route("/api/tenants", get(list))
        .route("/api/tenants/{id}", get(show).put(put).delete(delete))
        .with_state(admin)
}
