//! The configuration file as written: one serde struct per TOML section, every one
//! rejecting unknown keys, with the defaults `config/aggd.toml` documents. Closed sets of
//! values are enums (`fsync = "interval"`, `on_full = "backpressure"`, …) and durations
//! are humantime strings (`"1s"`, `"5m"`, `"7d"`; `"0"` or `"0s"` is zero), so a wrong
//! value is a syntax error naming the key, its line and the accepted values.
//!
//! Nothing here is validated beyond its type: [`super::Config::from_file`] resolves the
//! relative paths and turns each section into its validated type (`TryFrom`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) mod defaults;
mod destination;

pub use destination::{DestinationFile, RoutingFile};

use crate::codec::Limits;
use crate::journal::OnFull;
use crate::tenant::Unknown;

/// Input protocol of a listener.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// carbon plaintext, `path value timestamp\n`.
    Plaintext,
    /// carbon pickle, length-prefixed frames.
    Pickle,
    /// HTTP ingest API (TCP only).
    Http,
}

/// Transport of a listener.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP stream.
    #[default]
    Tcp,
    /// UDP datagrams (plaintext only).
    Udp,
}

/// Output protocol of a destination.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DestProtocol {
    /// carbon pickle, protocol 2, length-prefixed frames.
    #[default]
    Pickle,
    /// carbon plaintext lines.
    Plaintext,
    /// Prometheus remote write 1.0 over HTTP(S) ([`crate::codec::remote_write`]).
    PrometheusRemoteWrite,
}

/// What a destination does with a changed value of an interval it already sent
/// (`late_changes`; [`crate::dest`]).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LateChanges {
    /// Send it: the store keeps the last write (whisper, go-carbon) or every write
    /// (VictoriaMetrics).
    #[default]
    Send,
    /// Do not send it; count it (`aggd_destination_late_changes_total`) and ledger its
    /// window as `late_change`: for stores that refuse a changed sample (Prometheus,
    /// Mimir, Cortex, Thanos Receive answer `400 duplicate sample`).
    Ledger,
}

/// `journal.fsync` as written; `interval` takes its period from `journal.fsync_interval`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Never call fsync.
    Never,
    /// At most once per `fsync_interval`.
    #[default]
    Interval,
    /// Before acknowledging each batch.
    Always,
}

/// `tenants.mode`: how a datapoint's tenant is found.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TenantMode {
    /// The first node of the metric path.
    #[default]
    Prefix,
}

macro_rules! display_as_written {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl std::fmt::Display for $t {
            /// As written in the config.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $(Self::$v => $s),* })
            }
        }
    };
}
display_as_written!(Protocol { Plaintext => "plaintext", Pickle => "pickle", Http => "http" });
display_as_written!(Transport { Tcp => "tcp", Udp => "udp" });
display_as_written!(DestProtocol {
    Pickle => "pickle",
    Plaintext => "plaintext",
    PrometheusRemoteWrite => "prometheus_remote_write",
});
display_as_written!(LateChanges { Send => "send", Ledger => "ledger" });

/// `[[listen]]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// `plaintext`, `pickle` or `http`.
    pub protocol: Protocol,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub transport: Transport,
    /// `host:port`; port 0 picks a free port.
    pub address: String,
    /// Most open connections on this listener (TCP); besides `limits.max_connections`.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// `[aggregation]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationFile {
    /// Path of `aggregation-rules.conf`.
    pub rules: PathBuf,
    /// Path of `rewrite-rules.conf` (optional).
    pub rewrite_rules: Option<PathBuf>,
    /// Also forward every raw datapoint (after `[post]` rewrites).
    #[serde(default)]
    pub forward_all: bool,
    /// Intervals kept per series before a bucket is final; older data is `too_old`.
    #[serde(default = "defaults::max_intervals")]
    pub max_intervals: u32,
    /// Seconds between running partial aggregates of open intervals; 0 = off.
    #[serde(default)]
    pub write_back_frequency: u32,
    /// Distinct metric paths whose routes are cached.
    #[serde(default = "defaults::route_cache_entries")]
    pub route_cache_entries: usize,
    /// Values one bucket keeps for percentile methods; more are `bucket_full`.
    #[serde(default = "defaults::max_values_per_bucket")]
    pub max_values_per_bucket: usize,
    /// carbon's `whitelist.conf`: when it has entries, paths matching none are dropped.
    pub whitelist: Option<PathBuf>,
    /// carbon's `blacklist.conf`: paths matching any entry are dropped.
    pub blacklist: Option<PathBuf>,
    /// Seconds timestamps are floored to a multiple of; 0 = as received (carbon's
    /// MIN_TIMESTAMP_RESOLUTION).
    #[serde(default)]
    pub timestamp_resolution: u32,
}

/// `[workers]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersFile {
    /// Worker threads; 0 = one per core.
    #[serde(default)]
    pub count: usize,
    /// Capacity of each worker's queue, in batches.
    #[serde(default = "defaults::queue_batches")]
    pub queue_batches: usize,
    /// Milliseconds between flush sweeps.
    #[serde(default = "defaults::flush_tick_ms")]
    pub flush_tick_ms: u64,
}

impl Default for WorkersFile {
    fn default() -> Self {
        WorkersFile {
            count: 0,
            queue_batches: defaults::queue_batches(),
            flush_tick_ms: defaults::flush_tick_ms(),
        }
    }
}

/// `[journal]` as written; the section's presence turns the journal on.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalFile {
    /// Directory for segments, indexes and the loss ledger.
    pub dir: PathBuf,
    /// `never`, `interval` or `always`.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Period for `fsync = "interval"`, e.g. `"1s"`.
    #[serde(default = "defaults::fsync_interval", with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Segment size that starts a new segment.
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// Segment age that starts a new segment, e.g. `"1h"`.
    #[serde(default = "defaults::segment_max_age", with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// Total size kept.
    #[serde(default = "defaults::journal_max_bytes")]
    pub max_bytes: u64,
    /// Age kept, e.g. `"7d"`.
    #[serde(default = "defaults::journal_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Free disk space to keep, in bytes; 0 = no check.
    #[serde(default = "defaults::min_free_disk")]
    pub min_free_disk: u64,
    /// `ingest` or `backpressure`.
    #[serde(default)]
    pub on_full: OnFull,
    /// Records queued for the writer.
    #[serde(default = "defaults::queue_records")]
    pub queue_records: usize,
    /// The loss ledger file; default `<dir>/ledger.jsonl`.
    pub ledger: Option<PathBuf>,
}

/// `[tenants]` as written; the section's presence turns the tenant gate on.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// How a datapoint's tenant is found: `prefix` (the first path node).
    #[serde(default)]
    pub mode: TenantMode,
    /// The registry file (TOML, `[tenant.<id>]` tables).
    pub registry: PathBuf,
    /// Tenants not in the registry: `accept` or `reject`.
    #[serde(default)]
    pub unknown: Unknown,
}

/// `[admin]` as written: the admin HTTP API.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `host:port`; loopback by default.
    #[serde(default = "defaults::admin_address")]
    pub address: String,
    /// The bearer token (prefer `token_file`); without one the tenant API is off.
    pub token: Option<String>,
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// `/metrics`, `/health` and `/ready` need the token too (default: they need none).
    #[serde(default)]
    pub protect_metrics: bool,
}

/// `[quarantine]` as written: the optional file of rejected datapoints.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineFile {
    /// The file; `<file>.1` holds the previous one after rotation.
    pub file: PathBuf,
    /// Size at which the file rotates.
    #[serde(default = "defaults::quarantine_bytes")]
    pub max_bytes: u64,
}

/// `[service]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Longest wait at shutdown for destinations to take what is queued.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Period of carbon-style self-metrics sent to the destinations; "0s" turns them off.
    #[serde(default = "defaults::self_metrics_interval", with = "humantime_serde")]
    pub self_metrics_interval: Duration,
    /// First node of self-metric names (carbon's CARBON_METRIC_PREFIX).
    #[serde(default = "defaults::self_metrics_prefix")]
    pub self_metrics_prefix: String,
    /// Host name in self-metric names; default: the machine's.
    pub hostname: Option<String>,
    /// carbon's instance in self-metric names, `<host>-<instance>` (carbon-aggregator's
    /// default `a`); `""` leaves it out.
    #[serde(default = "defaults::instance")]
    pub instance: String,
}

impl Default for ServiceFile {
    fn default() -> Self {
        ServiceFile {
            drain_timeout: defaults::drain_timeout(),
            self_metrics_interval: defaults::self_metrics_interval(),
            self_metrics_prefix: defaults::self_metrics_prefix(),
            hostname: None,
            instance: defaults::instance(),
        }
    }
}

/// The whole TOML file as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Listeners.
    #[serde(default)]
    pub listen: Vec<ListenFile>,
    /// Rules and bucket settings.
    pub aggregation: AggregationFile,
    /// Worker threads.
    #[serde(default)]
    pub workers: WorkersFile,
    /// Destinations.
    #[serde(default)]
    pub destination: Vec<DestinationFile>,
    /// How names are placed on the destinations.
    #[serde(default)]
    pub routing: RoutingFile,
    /// Decoder limits.
    #[serde(default)]
    pub limits: Limits,
    /// The raw-input journal (off without this section).
    pub journal: Option<JournalFile>,
    /// The tenant gate (off without this section).
    pub tenants: Option<TenantsFile>,
    /// The admin HTTP API (off without this section).
    pub admin: Option<AdminFile>,
    /// The quarantine file (off without this section).
    pub quarantine: Option<QuarantineFile>,
    /// Service behaviour: drain, self-metrics.
    #[serde(default)]
    pub service: ServiceFile,
    /// Cluster mode on NATS JetStream (standalone without this section).
    pub cluster: Option<ClusterFile>,
}

/// `[cluster]` as written: cluster mode on NATS JetStream (`docs/cluster.md`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub servers: Vec<String>,
    /// The cluster's name: the stream is `AGGD_<name>`, subjects `aggd.<name>.shard.<k>`.
    #[serde(default = "defaults::cluster_name")]
    pub name: String,
    /// This node's id; default: the host name.
    pub node: Option<String>,
    /// Shards S, fixed when the cluster is created.
    #[serde(default = "defaults::shards")]
    pub shards: u32,
    /// JetStream replicas of the stream and the KV buckets.
    #[serde(default = "defaults::replicas")]
    pub replicas: usize,
    /// Age beyond which the stream deletes messages.
    #[serde(default = "defaults::retention", with = "humantime_serde")]
    pub retention: Duration,
    /// The stream's duplicate window for `Nats-Msg-Id`.
    #[serde(default = "defaults::duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Shard lease time to live.
    #[serde(default = "defaults::lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Published messages awaiting their acknowledgement at most.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Unpublished journal bytes beyond which TCP readers wait and UDP counts `queue_full`.
    #[serde(default = "defaults::max_publish_lag_bytes")]
    pub max_publish_lag_bytes: u64,
    /// A message is sent once it holds this many datapoints…
    #[serde(default = "defaults::batch_datapoints")]
    pub batch_datapoints: usize,
    /// …or this many bytes…
    #[serde(default = "defaults::batch_bytes")]
    pub batch_bytes: usize,
    /// …or its oldest datapoint has waited this long.
    #[serde(default = "defaults::batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Publisher threads (lanes): each reads the journal and publishes the records whose
    /// sequence number is its lane modulo their number.
    #[serde(default = "defaults::publish_threads")]
    pub publish_threads: usize,
    /// A NATS credentials file (`.creds`).
    pub credentials: Option<PathBuf>,
    /// A NATS token (prefer `token_file`).
    pub token: Option<String>,
    /// A file holding the NATS token.
    pub token_file: Option<PathBuf>,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
    /// CA certificate (PEM) to verify the servers with.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// Resolves `p` against `base` (the config file's directory) unless it is absolute.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl File {
    /// Makes every path in the file absolute against `base`, the directory of the file
    /// it was read from (absolute paths stay as they are).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| *p = resolve(base, p);
        fix(&mut self.aggregation.rules);
        self.aggregation.rewrite_rules.as_mut().map(fix);
        self.aggregation.whitelist.as_mut().map(fix);
        self.aggregation.blacklist.as_mut().map(fix);
        if let Some(j) = &mut self.journal {
            fix(&mut j.dir);
            j.ledger.as_mut().map(fix);
        }
        if let Some(t) = &mut self.tenants {
            fix(&mut t.registry);
        }
        if let Some(a) = &mut self.admin {
            a.token_file.as_mut().map(fix);
        }
        if let Some(q) = &mut self.quarantine {
            fix(&mut q.file);
        }
        for d in &mut self.destination {
            for p in [
                &mut d.basic_auth_password_file,
                &mut d.bearer_token_file,
                &mut d.tls_ca,
                &mut d.tls_cert,
                &mut d.tls_key,
                &mut d.mapping_file,
            ] {
                p.as_mut().map(fix);
            }
        }
        if let Some(c) = &mut self.cluster {
            for p in [
                &mut c.credentials,
                &mut c.token_file,
                &mut c.tls_ca,
                &mut c.tls_cert,
                &mut c.tls_key,
            ] {
                p.as_mut().map(fix);
            }
        }
    }
}
