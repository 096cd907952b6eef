//! `[cluster]` validated: cluster mode on NATS JetStream (`docs/cluster.md`).

use std::path::PathBuf;
use std::time::Duration;

use super::file::ClusterFile;
use super::section::{SectionError, invalid};

/// How aggd authenticates to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// A credentials file (`.creds`: a user JWT and its NKey seed).
    Credentials(PathBuf),
    /// A token.
    Token(String),
}

/// TLS towards NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// TLS is required.
    pub required: bool,
    /// CA certificate (PEM) the servers are verified with.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Validated `[cluster]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Cluster name (letters, digits, `_` and `-`).
    pub name: String,
    /// This node's id (letters, digits, `_` and `-`).
    pub node: String,
    /// Shards S (1..=65536).
    pub shards: u32,
    /// JetStream replicas (1..=5).
    pub replicas: usize,
    /// Stream message age limit.
    pub retention: Duration,
    /// Stream duplicate window.
    pub duplicate_window: Duration,
    /// Shard lease time to live (at least 2 s).
    pub lease_ttl: Duration,
    /// Unacknowledged messages at most.
    pub max_in_flight: usize,
    /// Unpublished journal bytes before backpressure.
    pub max_publish_lag_bytes: u64,
    /// Datapoints per message.
    pub batch_datapoints: usize,
    /// Bytes per message.
    pub batch_bytes: usize,
    /// Longest wait of a datapoint for its message.
    pub batch_delay: Duration,
    /// Publisher threads (1..=16); a journal keeps the count it was first published with.
    pub publish_threads: usize,
    /// Authentication.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
}

/// Whether `s` is a non-empty token of letters, digits, `_` and `-` (NATS subject and
/// stream names and KV keys take these as they are).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The machine's host name, as a node id (other characters become `-`).
pub fn default_node() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let h: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if h.is_empty() { "node".into() } else { h }
}

impl TryFrom<ClusterFile> for ClusterConfig {
    type Error = SectionError;

    /// Errors: no servers, a name or node id with characters other than letters, digits,
    /// `_` and `-`, shards outside 1..=65536, replicas outside 1..=5, a lease TTL under
    /// 2 s, a zero batch or window size, both a token and credentials, an unreadable
    /// token file, or a client certificate without its key.
    fn try_from(c: ClusterFile) -> Result<Self, SectionError> {
        if c.servers.is_empty() {
            return Err(invalid("cluster: servers must name at least one NATS URL"));
        }
        let node = c.node.unwrap_or_else(default_node);
        for (what, v) in [("name", &c.name), ("node", &node)] {
            if !is_token(v) {
                return Err(invalid(format!(
                    "cluster: {what} {v:?} must be 1 to 64 letters, digits, '_' or '-'"
                )));
            }
        }
        if !(1..=65_536).contains(&c.shards) {
            return Err(invalid("cluster: shards must be 1 to 65536"));
        }
        if !(1..=5).contains(&c.replicas) {
            return Err(invalid("cluster: replicas must be 1 to 5"));
        }
        if c.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("cluster: lease_ttl must be at least 2s"));
        }
        if !(1..=16).contains(&c.publish_threads) {
            return Err(invalid("cluster: publish_threads must be 1 to 16"));
        }
        if c.max_in_flight == 0 || c.batch_datapoints == 0 || c.batch_bytes == 0 {
            return Err(invalid(
                "cluster: max_in_flight, batch_datapoints and batch_bytes must be at least 1",
            ));
        }
        let token = match (c.token, c.token_file) {
            (_, Some(file)) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|error| SectionError::Io { file, error })?
                    .trim()
                    .to_string(),
            ),
            (t, None) => t,
        };
        let auth = match (token, c.credentials) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "cluster: give a token or a credentials file, not both",
                ));
            }
            (Some(t), None) => NatsAuth::Token(t),
            (None, Some(f)) => NatsAuth::Credentials(f),
            (None, None) => NatsAuth::None,
        };
        let client = match (c.tls_cert, c.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(invalid("cluster: tls_cert and tls_key go together")),
        };
        Ok(ClusterConfig {
            servers: c.servers,
            name: c.name,
            node,
            shards: c.shards,
            replicas: c.replicas,
            retention: c.retention,
            duplicate_window: c.duplicate_window,
            lease_ttl: c.lease_ttl,
            max_in_flight: c.max_in_flight,
            max_publish_lag_bytes: c.max_publish_lag_bytes,
            batch_datapoints: c.batch_datapoints,
            batch_bytes: c.batch_bytes,
            batch_delay: c.batch_delay,
            publish_threads: c.publish_threads,
            auth,
            tls: NatsTls {
                required: c.tls || c.tls_ca.is_some() || client.is_some(),
                ca: c.tls_ca,
                client,
            },
        })
    }
}
