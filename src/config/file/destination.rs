//! `[[destination]]` and `[routing]` as written.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DestProtocol, LateChanges, defaults};

/// `[[destination]]` as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// `host:port`, or `stdout` (carbon protocols).
    #[serde(default)]
    pub address: String,
    /// `pickle` (default), `plaintext` or `prometheus_remote_write`.
    #[serde(default)]
    pub protocol: DestProtocol,
    /// Remote write: the `http://` or `https://` URL requests are POSTed to.
    pub url: Option<String>,
    /// Remote write: HTTP basic auth user name (with a password or password file).
    pub basic_auth_username: Option<String>,
    /// Remote write: HTTP basic auth password.
    pub basic_auth_password: Option<String>,
    /// Remote write: a file holding the basic auth password (trimmed).
    pub basic_auth_password_file: Option<PathBuf>,
    /// Remote write: a bearer token (`Authorization: Bearer …`).
    pub bearer_token: Option<String>,
    /// Remote write: a file holding the bearer token (trimmed).
    pub bearer_token_file: Option<PathBuf>,
    /// Remote write: PEM CA certificates to trust besides the system's.
    pub tls_ca: Option<PathBuf>,
    /// Remote write: PEM client certificate (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// Remote write: PEM client key (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Remote write: more request headers, e.g. `{ "X-Scope-OrgID" = "team-a" }`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Remote write: most samples per request.
    pub batch_datapoints: Option<usize>,
    /// Remote write: most requests awaiting an answer at once (series are spread over
    /// that many lanes, one request in flight each).
    pub max_in_flight: Option<usize>,
    /// Remote write: longest wait for one request's answer, e.g. `"30s"`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Remote write: a name mapping file (`docs/remote-write.md`).
    pub mapping_file: Option<PathBuf>,
    /// Datapoints the queue holds before `destination_full` drops.
    #[serde(default = "defaults::queue_datapoints")]
    pub queue_datapoints: usize,
    /// Datapoints per pickle frame (carbon's MAX_DATAPOINTS_PER_MESSAGE).
    #[serde(default = "defaults::max_datapoints_per_message")]
    pub max_datapoints_per_message: usize,
    /// How far back, when a connection fails, written aggregates count as possibly lost
    /// (ledgered as `unconfirmed`), e.g. `"5m"`; never before the connection was made.
    #[serde(default = "defaults::unconfirmed_window", with = "humantime_serde")]
    pub unconfirmed_window: Duration,
    /// carbon's instance (the third field of carbon.conf's `host:port:instance`): part of
    /// the destination's key on the hash ring and of its self-metric name.
    pub instance: Option<String>,
    /// How long after an interval closes its first aggregate is held for this
    /// destination, replaced by any newer value meanwhile, e.g. `"2m"`; none by default.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub emit_delay: Option<Duration>,
    /// `send` (default) or `ledger`: what to do with a changed value of an interval this
    /// destination was already sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_changes: Option<LateChanges>,
}

/// `[routing]` as written: which destinations each outgoing name goes to.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// `carbon_ch` (default), `carbon_fnv1a_ch`, `mmh3_ch`, `fnv1a_ch`, `jump_fnv1a_ch`
    /// or `all`.
    #[serde(default)]
    pub method: crate::ring::Method,
    /// Destinations per name (carbon's REPLICATION_FACTOR).
    #[serde(default = "defaults::replication")]
    pub replication: usize,
    /// Replicas on different hosts (carbon's DIVERSE_REPLICAS).
    #[serde(default = "defaults::yes")]
    pub diverse_replicas: bool,
    /// Normalise tagged names on the way out (carbon's TAG_RELAY_NORMALIZED).
    #[serde(default)]
    pub normalize_tags: bool,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            method: crate::ring::Method::default(),
            replication: defaults::replication(),
            diverse_replicas: true,
            normalize_tags: false,
        }
    }
}
