//! Configuration, in two phases: [`File`] is the TOML as written (unknown keys are errors),
//! [`Config`] is the validated result with compiled rules and resolved sizes. A reload
//! builds a whole new `Config`.
//!
//! Every key is documented in `config/aggd.toml`. Relative paths are relative to the
//! directory of the file they appear in. [`carbon`] builds the same `Config` from a
//! carbon.conf `[aggregator]` section.

pub mod carbon;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::codec::Limits;
use crate::journal::{Fsync, JournalConfig, OnFull};
use crate::rules::RuleError;
use crate::rules::aggregation::AggregationRules;
use crate::rules::rewrite::RewriteRules;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error (part of the message, so not also a `source`: printed once).
        error: std::io::Error,
    },
    /// The file is not valid TOML or INI, or has unknown keys or wrong types.
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A rules file is invalid.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// The tenant registry file is invalid.
    #[error(transparent)]
    Registry(#[from] crate::tenant::RegistryError),
}

/// Input protocol of a listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP stream.
    #[default]
    Tcp,
    /// UDP datagrams (plaintext only).
    Udp,
}

/// Output protocol of a destination.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DestProtocol {
    /// carbon pickle, protocol 2, length-prefixed frames.
    #[default]
    Pickle,
    /// carbon plaintext lines.
    Plaintext,
}

impl std::fmt::Display for Protocol {
    /// As written in the config: `plaintext`, `pickle` or `http`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Pickle => "pickle",
            Protocol::Http => "http",
        })
    }
}

impl std::fmt::Display for Transport {
    /// As written in the config: `tcp` or `udp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

impl std::fmt::Display for DestProtocol {
    /// As written in the config: `pickle` or `plaintext`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DestProtocol::Pickle => "pickle",
            DestProtocol::Plaintext => "plaintext",
        })
    }
}

/// `[[listen]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// `plaintext` or `pickle`.
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

fn default_max_intervals() -> u32 {
    5
}
fn default_route_cache() -> usize {
    1_000_000
}
fn default_max_values() -> usize {
    100_000
}

/// `[aggregation]` as written.
#[derive(Debug, Deserialize)]
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
    #[serde(default = "default_max_intervals")]
    pub max_intervals: u32,
    /// Seconds between running partial aggregates of open intervals; 0 = off.
    #[serde(default)]
    pub write_back_frequency: u32,
    /// Distinct metric paths whose routes are cached.
    #[serde(default = "default_route_cache")]
    pub route_cache_entries: usize,
    /// Values one bucket keeps for percentile methods; more are `bucket_full`.
    #[serde(default = "default_max_values")]
    pub max_values_per_bucket: usize,
}

fn default_queue_batches() -> usize {
    1024
}
fn default_tick_ms() -> u64 {
    250
}

/// `[workers]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersFile {
    /// Worker threads; 0 = one per core.
    #[serde(default)]
    pub count: usize,
    /// Capacity of each worker's queue, in batches.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// Milliseconds between flush sweeps.
    #[serde(default = "default_tick_ms")]
    pub flush_tick_ms: u64,
}

impl Default for WorkersFile {
    fn default() -> Self {
        WorkersFile {
            count: 0,
            queue_batches: default_queue_batches(),
            flush_tick_ms: default_tick_ms(),
        }
    }
}

pub(crate) fn default_queue_datapoints() -> usize {
    100_000
}
fn default_per_message() -> usize {
    500
}
pub(crate) fn default_unconfirmed_window() -> String {
    "5m".into()
}

/// `[[destination]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// `host:port`, or `stdout`.
    pub address: String,
    /// `pickle` (default) or `plaintext`.
    #[serde(default)]
    pub protocol: DestProtocol,
    /// Datapoints the queue holds before `destination_full` drops.
    #[serde(default = "default_queue_datapoints")]
    pub queue_datapoints: usize,
    /// Datapoints per pickle frame (carbon's MAX_DATAPOINTS_PER_MESSAGE).
    #[serde(default = "default_per_message")]
    pub max_datapoints_per_message: usize,
    /// How far back, when a connection fails, written aggregates count as possibly lost
    /// (ledgered as `unconfirmed`), e.g. `"5m"`; never before the connection was made.
    #[serde(default = "default_unconfirmed_window")]
    pub unconfirmed_window: String,
}

fn default_fsync() -> String {
    "interval".into()
}
fn default_fsync_interval() -> String {
    "1s".into()
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_segment_max_age() -> String {
    "1h".into()
}
fn default_journal_max_bytes() -> u64 {
    10 << 30
}
fn default_journal_max_age() -> String {
    "7d".into()
}
fn default_min_free_disk() -> u64 {
    1 << 30
}
fn default_on_full() -> String {
    "ingest".into()
}
fn default_queue_records() -> usize {
    4096
}

/// `[journal]` as written; the section's presence turns the journal on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalFile {
    /// Directory for segments, indexes and the loss ledger.
    pub dir: PathBuf,
    /// `never`, `interval` or `always`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Interval for `fsync = "interval"`, e.g. `"1s"`.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: String,
    /// Segment size that starts a new segment.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Segment age that starts a new segment, e.g. `"1h"`.
    #[serde(default = "default_segment_max_age")]
    pub segment_max_age: String,
    /// Total size kept.
    #[serde(default = "default_journal_max_bytes")]
    pub max_bytes: u64,
    /// Age kept, e.g. `"7d"`.
    #[serde(default = "default_journal_max_age")]
    pub max_age: String,
    /// Free disk space to keep, in bytes; 0 = no check.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: u64,
    /// `ingest` or `backpressure`.
    #[serde(default = "default_on_full")]
    pub on_full: String,
    /// Records queued for the writer.
    #[serde(default = "default_queue_records")]
    pub queue_records: usize,
    /// The loss ledger file; default `<dir>/ledger.jsonl`.
    pub ledger: Option<PathBuf>,
}

fn default_unknown() -> String {
    "accept".into()
}

/// `[tenants]` as written; the section's presence turns the tenant gate on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// How a datapoint's tenant is found: `prefix` (the first path node).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// The registry file (TOML, `[tenant.<id>]` tables).
    pub registry: PathBuf,
    /// Tenants not in the registry: `accept` or `reject`.
    #[serde(default = "default_unknown")]
    pub unknown: String,
}

fn default_mode() -> String {
    "prefix".into()
}

/// `[admin]` as written: the admin HTTP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `host:port`; loopback by default.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// The bearer token (prefer `token_file`).
    pub token: Option<String>,
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
}

fn default_admin_address() -> String {
    "127.0.0.1:8081".into()
}

fn default_quarantine_bytes() -> u64 {
    64 << 20
}

/// `[quarantine]` as written: the optional file of rejected datapoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineFile {
    /// The file; `<file>.1` holds the previous one after rotation.
    pub file: PathBuf,
    /// Size at which the file rotates.
    #[serde(default = "default_quarantine_bytes")]
    pub max_bytes: u64,
}

fn default_drain() -> String {
    "10s".into()
}
fn default_self_metrics_interval() -> String {
    "60s".into()
}
fn default_prefix() -> String {
    "carbon".into()
}

/// `[service]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Longest wait at shutdown for destinations to take what is queued.
    #[serde(default = "default_drain")]
    pub drain_timeout: String,
    /// Period of carbon-style self-metrics sent to the destinations; "0s" turns them off.
    #[serde(default = "default_self_metrics_interval")]
    pub self_metrics_interval: String,
    /// First node of self-metric names (carbon's CARBON_METRIC_PREFIX).
    #[serde(default = "default_prefix")]
    pub self_metrics_prefix: String,
    /// Host name in self-metric names; default: the machine's.
    pub hostname: Option<String>,
}

impl Default for ServiceFile {
    fn default() -> Self {
        ServiceFile {
            drain_timeout: default_drain(),
            self_metrics_interval: default_self_metrics_interval(),
            self_metrics_prefix: default_prefix(),
            hostname: None,
        }
    }
}

/// Validated `[service]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Longest wait at shutdown for destinations.
    pub drain_timeout: Duration,
    /// Self-metrics period; zero = off.
    pub self_metrics_interval: Duration,
    /// Self-metrics prefix.
    pub self_metrics_prefix: String,
    /// Host name for self-metrics, dots replaced by `_` (as carbon does).
    pub hostname: String,
}

/// The machine's host name (Linux: /proc/sys/kernel/hostname).
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The whole TOML file as written.
#[derive(Debug, Deserialize)]
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
}

/// Faults to inject, for tests of isolation (feature `fault-injection`). Not settable
/// from a config file.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Applying a datapoint of this output series panics in the worker.
    pub panic_on_series: Option<String>,
}

/// Validated `[tenants]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantsConfig {
    /// The registry file.
    pub registry: PathBuf,
    /// What to do with unknown tenants.
    pub unknown: crate::tenant::Unknown,
}

/// Validated `[admin]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// Address to bind.
    pub address: String,
    /// Bearer token.
    pub token: String,
}

/// A validated listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Input protocol.
    pub protocol: Protocol,
    /// Transport.
    pub transport: Transport,
    /// Address to bind, `host:port`.
    pub address: String,
    /// Most open connections on this listener (TCP), if limited.
    pub max_connections: Option<usize>,
}

/// Where a destination sends.
#[derive(Clone, Debug, PartialEq)]
pub enum DestAddress {
    /// Plaintext lines on standard output.
    Stdout,
    /// A TCP `host:port`.
    Tcp(String),
}

/// A validated destination.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationConfig {
    /// Where to send.
    pub address: DestAddress,
    /// Wire protocol (stdout is always plaintext).
    pub protocol: DestProtocol,
    /// Queue capacity in datapoints.
    pub queue_datapoints: usize,
    /// Datapoints per pickle frame.
    pub max_datapoints_per_message: usize,
    /// When a connection fails, what was written into it within this long before (and
    /// since it connected) is ledgered as `unconfirmed`.
    pub unconfirmed_window: Duration,
}

impl DestinationConfig {
    /// The name used in logs and counters: the address, or `stdout`.
    pub fn name(&self) -> &str {
        match &self.address {
            DestAddress::Stdout => "stdout",
            DestAddress::Tcp(a) => a,
        }
    }
}

/// Validated `[aggregation]`.
#[derive(Clone, Debug)]
pub struct Aggregation {
    /// The aggregation rules file.
    pub rules_file: PathBuf,
    /// Compiled aggregation rules.
    pub rules: Arc<AggregationRules>,
    /// The rewrite rules file, if any.
    pub rewrite_file: Option<PathBuf>,
    /// Compiled rewrite rules (empty without a file).
    pub rewrite: Arc<RewriteRules>,
    /// Forward raw datapoints too.
    pub forward_all: bool,
    /// Intervals kept per series.
    pub max_intervals: u32,
    /// Seconds between partial aggregates; 0 = off.
    pub write_back_frequency: u32,
    /// Route cache capacity, in distinct metric paths.
    pub route_cache_entries: usize,
    /// Values kept per bucket for percentile methods.
    pub max_values_per_bucket: usize,
}

/// Validated `[workers]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Workers {
    /// Worker threads (resolved: never 0).
    pub count: usize,
    /// Queue capacity per worker, in batches.
    pub queue_batches: usize,
    /// Time between flush sweeps.
    pub flush_tick: Duration,
}

/// A complete, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Listeners to bind.
    pub listeners: Vec<ListenerConfig>,
    /// Rules and bucket settings.
    pub aggregation: Aggregation,
    /// Worker settings.
    pub workers: Workers,
    /// Destinations.
    pub destinations: Vec<DestinationConfig>,
    /// Decoder limits.
    pub limits: Limits,
    /// The journal, when on.
    pub journal: Option<JournalConfig>,
    /// The tenant gate, when on.
    pub tenants: Option<TenantsConfig>,
    /// The admin API, when on.
    pub admin: Option<AdminConfig>,
    /// The quarantine file and its size bound, when on.
    pub quarantine: Option<(PathBuf, u64)>,
    /// Service behaviour.
    pub service: Service,
    /// Fault injection (tests only, feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub faults: Faults,
}

fn invalid(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// Resolves `p` against `base` (the config file's directory) unless it is absolute.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn duration(key: &str, v: &str, path: &Path) -> Result<Duration, ConfigError> {
    let key = if key.contains('.') {
        key.to_string()
    } else {
        format!("journal.{key}")
    };
    if v.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(v).map_err(|e| {
        invalid(
            path,
            format!("{key} = {v:?}: {e} (e.g. \"1s\", \"1h\", \"7d\")"),
        )
    })
}

fn journal_config(j: JournalFile, base: &Path, path: &Path) -> Result<JournalConfig, ConfigError> {
    let fsync = match j.fsync.as_str() {
        "never" => Fsync::Never,
        "always" => Fsync::Always,
        "interval" => Fsync::Interval(duration("fsync_interval", &j.fsync_interval, path)?),
        other => {
            return Err(invalid(
                path,
                format!("journal.fsync = {other:?}: one of never, interval, always"),
            ));
        }
    };
    let on_full = match j.on_full.as_str() {
        "ingest" => OnFull::Ingest,
        "backpressure" => OnFull::Backpressure,
        other => {
            return Err(invalid(
                path,
                format!("journal.on_full = {other:?}: one of ingest, backpressure"),
            ));
        }
    };
    if j.segment_bytes < 4096 || j.queue_records == 0 {
        return Err(invalid(
            path,
            "journal.segment_bytes must be at least 4096 and queue_records at least 1",
        ));
    }
    let dir = resolve(base, &j.dir);
    Ok(JournalConfig {
        ledger: j.ledger.map_or_else(
            || dir.join(crate::journal::ledger::FILE),
            |l| resolve(base, &l),
        ),
        dir,
        fsync,
        segment_bytes: j.segment_bytes,
        segment_max_age: duration("segment_max_age", &j.segment_max_age, path)?,
        max_bytes: j.max_bytes,
        max_age: duration("max_age", &j.max_age, path)?,
        min_free_disk: j.min_free_disk,
        on_full,
        queue_records: j.queue_records,
    })
}

impl Config {
    /// Reads, parses and validates a TOML config file (and the rules files it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            file: path.to_path_buf(),
            error,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Config::from_file(file, path)
    }

    /// Validates a parsed [`File`]; `path` locates relative paths and names errors.
    pub fn from_file(file: File, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut listeners = Vec::new();
        for l in file.listen {
            if l.protocol != Protocol::Plaintext && l.transport == Transport::Udp {
                return Err(invalid(path, "listen: pickle and http are TCP only"));
            }
            if l.address.trim().is_empty() {
                return Err(invalid(path, "listen: address is empty"));
            }
            listeners.push(ListenerConfig {
                protocol: l.protocol,
                transport: l.transport,
                address: l.address,
                max_connections: l.max_connections,
            });
        }
        let a = file.aggregation;
        if a.max_intervals == 0 {
            return Err(invalid(
                path,
                "aggregation.max_intervals must be at least 1",
            ));
        }
        if a.route_cache_entries == 0 || a.max_values_per_bucket == 0 {
            return Err(invalid(
                path,
                "aggregation.route_cache_entries and max_values_per_bucket must be at least 1",
            ));
        }
        let rules_file = resolve(base, &a.rules);
        let rules = AggregationRules::load(&rules_file)?;
        let rewrite_file = a.rewrite_rules.map(|p| resolve(base, &p));
        let rewrite = match &rewrite_file {
            Some(f) => RewriteRules::load(f)?,
            None => RewriteRules::default(),
        };
        let w = file.workers;
        if w.queue_batches == 0 || w.flush_tick_ms == 0 {
            return Err(invalid(
                path,
                "workers.queue_batches and workers.flush_tick_ms must be at least 1",
            ));
        }
        let count = if w.count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            w.count
        };
        let mut destinations = Vec::new();
        for d in file.destination {
            if d.queue_datapoints == 0 || d.max_datapoints_per_message == 0 {
                return Err(invalid(
                    path,
                    format!(
                        "destination {}: queue_datapoints and max_datapoints_per_message must be at least 1",
                        d.address
                    ),
                ));
            }
            let address = if d.address == "stdout" {
                DestAddress::Stdout
            } else if d
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            {
                DestAddress::Tcp(d.address)
            } else {
                return Err(invalid(
                    path,
                    format!(
                        "destination address {:?} is not host:port or stdout",
                        d.address
                    ),
                ));
            };
            destinations.push(DestinationConfig {
                address,
                protocol: d.protocol,
                queue_datapoints: d.queue_datapoints,
                max_datapoints_per_message: d.max_datapoints_per_message,
                unconfirmed_window: duration(
                    "destination.unconfirmed_window",
                    &d.unconfirmed_window,
                    path,
                )?,
            });
        }
        let limits = file.limits;
        if limits.max_pickle_frame_bytes > (u32::MAX / 4) as usize
            || limits.max_pickle_objects > (u32::MAX / 4) as usize
        {
            return Err(invalid(path, "limits: pickle limits must be below 1 GiB"));
        }
        let journal = match file.journal {
            None => None,
            Some(j) => Some(journal_config(j, base, path)?),
        };
        let tenants = match file.tenants {
            None => None,
            Some(t) => {
                if t.mode != "prefix" {
                    return Err(invalid(
                        path,
                        format!("tenants.mode = {:?}: only \"prefix\"", t.mode),
                    ));
                }
                let unknown = match t.unknown.as_str() {
                    "accept" => crate::tenant::Unknown::Accept,
                    "reject" => crate::tenant::Unknown::Reject,
                    other => {
                        return Err(invalid(
                            path,
                            format!("tenants.unknown = {other:?}: accept or reject"),
                        ));
                    }
                };
                let registry = resolve(base, &t.registry);
                // Validate now so `aggd check` reports a broken registry.
                crate::tenant::Registry::load(&registry)?;
                Some(TenantsConfig { registry, unknown })
            }
        };
        let admin = match file.admin {
            None => None,
            Some(a) => {
                let token = match (a.token, a.token_file) {
                    (_, Some(f)) => {
                        let f = resolve(base, &f);
                        std::fs::read_to_string(&f)
                            .map_err(|error| ConfigError::Io { file: f, error })?
                            .trim()
                            .to_string()
                    }
                    (Some(t), None) => t,
                    (None, None) => String::new(),
                };
                if token.len() < 8 {
                    return Err(invalid(
                        path,
                        "admin: a token (or token_file) of at least 8 characters is required",
                    ));
                }
                Some(AdminConfig {
                    address: a.address,
                    token,
                })
            }
        };
        Ok(Config {
            source: path.to_path_buf(),
            listeners,
            aggregation: Aggregation {
                rules_file,
                rules: Arc::new(rules),
                rewrite_file,
                rewrite: Arc::new(rewrite),
                forward_all: a.forward_all,
                max_intervals: a.max_intervals,
                write_back_frequency: a.write_back_frequency,
                route_cache_entries: a.route_cache_entries,
                max_values_per_bucket: a.max_values_per_bucket,
            },
            workers: Workers {
                count,
                queue_batches: w.queue_batches,
                flush_tick: Duration::from_millis(w.flush_tick_ms),
            },
            destinations,
            limits,
            journal,
            tenants,
            admin,
            quarantine: file
                .quarantine
                .map(|q| (resolve(base, &q.file), q.max_bytes)),
            service: Service {
                drain_timeout: duration(
                    "service.drain_timeout",
                    &file.service.drain_timeout,
                    path,
                )?,
                self_metrics_interval: duration(
                    "service.self_metrics_interval",
                    &file.service.self_metrics_interval,
                    path,
                )?,
                self_metrics_prefix: file.service.self_metrics_prefix,
                hostname: file
                    .service
                    .hostname
                    .unwrap_or_else(machine_hostname)
                    .replace('.', "_"),
            },
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        })
    }
}

/// The summary `aggd check` prints: every setting in the config's own words.
impl std::fmt::Display for Config {
    fn fmt(&self, s: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(s, "config: {}", self.source.display())?;
        for l in &self.listeners {
            writeln!(s, "listen: {}/{} on {}", l.protocol, l.transport, l.address)?;
        }
        let a = &self.aggregation;
        writeln!(
            s,
            "aggregation rules: {} from {}",
            a.rules.rules().len(),
            a.rules_file.display()
        )?;
        if let Some(f) = &a.rewrite_file {
            writeln!(
                s,
                "rewrite rules: {} [pre], {} [post] from {}",
                a.rewrite.pre.len(),
                a.rewrite.post.len(),
                f.display()
            )?;
        }
        writeln!(
            s,
            "forward_all: {}, max_intervals: {}, write_back_frequency: {}s",
            a.forward_all, a.max_intervals, a.write_back_frequency
        )?;
        writeln!(s, "workers: {}", self.workers.count)?;
        match &self.journal {
            Some(j) => writeln!(
                s,
                "journal: {} (fsync {}, on_full {})",
                j.dir.display(),
                j.fsync,
                j.on_full
            )?,
            None => writeln!(s, "journal: off")?,
        }
        for d in &self.destinations {
            writeln!(s, "destination: {} ({})", d.name(), d.protocol)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A fresh directory, removed when the guard drops.
    fn tmpdir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("aggd-cfg-{tag}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn minimal_config_and_relative_paths() {
        let guard = tmpdir("min");
        let d = guard.path();
        write(d, "rules.conf", "a (60) = sum b\n");
        let cfg = write(
            d,
            "aggd.toml",
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"rules.conf\"\n\
             [[destination]]\naddress = \"stdout\"\n",
        );
        let c = Config::load(&cfg).unwrap();
        assert_eq!(c.aggregation.rules.rules().len(), 1);
        assert_eq!(c.aggregation.max_intervals, 5);
        assert_eq!(c.listeners[0].transport, Transport::Tcp);
        assert_eq!(c.destinations[0].address, DestAddress::Stdout);
        assert!(c.workers.count >= 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let guard = tmpdir("bad");
        let d = guard.path();
        write(d, "rules.conf", "a (60) = sum b\n");
        let cfg = write(
            d,
            "a.toml",
            "[aggregation]\nrules = \"rules.conf\"\nbogus = 1\n",
        );
        let e = Config::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let cfg = write(
            d,
            "b.toml",
            "[aggregation]\nrules = \"rules.conf\"\n[[destination]]\naddress = \"nope\"\n",
        );
        assert!(
            Config::load(&cfg)
                .unwrap_err()
                .to_string()
                .contains("host:port")
        );
        let cfg = write(
            d,
            "c.toml",
            "[[listen]]\nprotocol = \"pickle\"\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n[aggregation]\nrules = \"rules.conf\"\n",
        );
        assert!(
            Config::load(&cfg)
                .unwrap_err()
                .to_string()
                .contains("TCP only")
        );
        write(d, "broken.conf", "x (60) = sum a\ny.<q> (60) = sum b\n");
        let cfg = write(d, "d.toml", "[aggregation]\nrules = \"broken.conf\"\n");
        let e = Config::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("broken.conf:2:"), "{e}");
    }
}
