//! Connecting to NATS and creating or joining the cluster: the stream `AGGD_<name>`
//! (subjects `aggd.<name>.shard.*`, file storage, R replicas, retention by age, a
//! duplicate window for `Nats-Msg-Id`), the KV bucket `AGGD_<name>_config` (keys `shards`
//! and `rules`, fixed by the first node) and the KV bucket `AGGD_<name>_leases` (shard
//! leases `shard.<k>` and node heartbeats `node.<id>`, every key expiring `lease_ttl` after
//! its last write).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use crate::config::cluster::{ClusterConfig, NatsAuth};

/// Why this node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS cannot be reached, or a JetStream request failed (the message names which).
    #[error("cluster {cluster}: {what}: {source}")]
    Nats {
        /// The cluster name.
        cluster: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        source: async_nats::Error,
    },
    /// The cluster was created with another shard count.
    #[error(
        "cluster {cluster}: refusing to join: this node has shards = {mine}, the cluster has {theirs} (fixed when it was created)"
    )]
    Shards {
        /// The cluster name.
        cluster: String,
        /// This node's `shards`.
        mine: u32,
        /// The cluster's.
        theirs: String,
    },
    /// The cluster runs other rules.
    #[error(
        "cluster {cluster}: refusing to join: this node's rules digest is {mine:016x}, the cluster's is {theirs} (the aggregation and rewrite rules files, forward_all and timestamp_resolution must be the same on every node)"
    )]
    Rules {
        /// The cluster name.
        cluster: String,
        /// This node's digest.
        mine: u64,
        /// The cluster's, as stored.
        theirs: String,
    },
    /// Cluster mode needs the local journal: it is what the node republishes from.
    #[error("cluster mode needs a [journal] section: the node republishes from its journal")]
    NoJournal,
}

/// A joined cluster: the client and the handles of its stream and buckets.
#[derive(Clone)]
pub struct Joined {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// The stream.
    pub stream: stream::Stream,
    /// `shards` and `rules`.
    pub config_kv: kv::Store,
    /// Leases and heartbeats.
    pub leases: kv::Store,
    /// The cluster settings.
    pub cfg: ClusterConfig,
    /// The cluster's rules when this node joined.
    pub rules: Option<super::rules::RulesKey>,
    /// The rules before the cluster's (read from the bucket, when the key names them):
    /// datapoints stamped before [`super::rules::RulesKey::activation`] are routed by
    /// them, also by a node that starts after the change was made.
    pub earlier: Option<super::rules::Material>,
}

fn err(cfg: &ClusterConfig, what: &'static str, e: impl Into<async_nats::Error>) -> ClusterError {
    ClusterError::Nats {
        cluster: cfg.name.clone(),
        what,
        source: e.into(),
    }
}

/// Connects to the servers of `cfg` (retrying in the background once connected; the first
/// connection must succeed within `timeout`).
///
/// Errors: [`ClusterError::Nats`] naming the servers.
pub async fn connect(
    cfg: &ClusterConfig,
    timeout: Duration,
) -> Result<async_nats::Client, ClusterError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("aggd-{}", cfg.node))
        .max_reconnects(None)
        .connection_timeout(timeout);
    o = match &cfg.auth {
        NatsAuth::None => o,
        NatsAuth::Token(t) => o.token(t.clone()),
        NatsAuth::Credentials(f) => o
            .credentials_file(f)
            .await
            .map_err(|e| err(cfg, "reading the credentials file", e))?,
    };
    if cfg.tls.required {
        o = o.require_tls(true);
    }
    if let Some(ca) = &cfg.tls.ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((c, k)) = &cfg.tls.client {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    tokio::time::timeout(timeout, o.connect(cfg.servers.clone()))
        .await
        .map_err(|e| err(cfg, "connecting to NATS", e))?
        .map_err(|e| err(cfg, "connecting to NATS", e))
}

/// The bucket `name`, created with `max_age` (0 = none) if it does not exist.
async fn bucket(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
    name: String,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(s) = js.get_key_value(name.clone()).await {
        return Ok(s);
    }
    js.create_key_value(kv::Config {
        bucket: name,
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| err(cfg, "creating a KV bucket", e))
}

/// Stores `value` under `key` if the key is new, else reads what is stored.
async fn create_or_read(
    kv: &kv::Store,
    cfg: &ClusterConfig,
    key: &str,
    value: String,
) -> Result<String, ClusterError> {
    match kv.create(key, Bytes::from(value.clone())).await {
        Ok(_) => Ok(value),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let v = kv
                .get(key)
                .await
                .map_err(|e| err(cfg, "reading the cluster config", e))?
                .unwrap_or_default();
            Ok(String::from_utf8_lossy(&v).into_owned())
        }
        Err(e) => Err(err(cfg, "writing the cluster config", e)),
    }
}

/// How long [`join`] retries a JetStream that is not ready (a new cluster electing its
/// leaders, a server restarting).
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// Connects, creates the stream and buckets if this is the first node, and checks that
/// this node's shard count and rules (`rules`, read from its files) are the cluster's
/// (`None`: a look at the cluster, `aggd cluster status`, whatever this node's rules);
/// stores its rules under `rules.<digest>` for nodes that start during a later change,
/// and reads the rules before the cluster's, if the key names them. A JetStream request that
/// fails is retried for 30 s (a new JetStream cluster takes seconds to elect leaders for
/// new streams); a refusal is final.
///
/// Errors: [`ClusterError::Nats`], [`ClusterError::Shards`], [`ClusterError::Rules`].
pub async fn join(
    cfg: &ClusterConfig,
    rules: Option<&super::rules::Material>,
) -> Result<Joined, ClusterError> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    loop {
        match join_once(cfg, rules).await {
            Err(e @ ClusterError::Nats { .. }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot join the cluster yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

async fn join_once(
    cfg: &ClusterConfig,
    rules: Option<&super::rules::Material>,
) -> Result<Joined, ClusterError> {
    let client = connect(cfg, Duration::from_secs(10)).await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(5));
    let stream = js
        .get_or_create_stream(stream::Config {
            name: super::stream_name(&cfg.name),
            subjects: vec![format!("aggd.{}.shard.*", cfg.name)],
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            max_age: cfg.retention,
            duplicate_window: cfg.duplicate_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| err(cfg, "creating the stream", e))?;
    let config_kv = bucket(
        &js,
        cfg,
        format!("{}_config", super::stream_name(&cfg.name)),
        Duration::ZERO,
    )
    .await?;
    let leases = bucket(
        &js,
        cfg,
        format!("{}_leases", super::stream_name(&cfg.name)),
        cfg.lease_ttl,
    )
    .await?;
    let theirs = create_or_read(&config_kv, cfg, "shards", cfg.shards.to_string()).await?;
    if theirs != cfg.shards.to_string() {
        return Err(ClusterError::Shards {
            cluster: cfg.name.clone(),
            mine: cfg.shards,
            theirs,
        });
    }
    let (mut key, mut earlier) = (None, None);
    if let Some(material) = rules {
        let digest = material.digest();
        let mine = super::rules::RulesKey {
            digest,
            activation: 0,
            previous: None,
        };
        let theirs = create_or_read(&config_kv, cfg, "rules", mine.encode()).await?;
        let theirs_key = super::rules::RulesKey::parse(&theirs);
        if theirs_key.map(|k| k.digest) != Some(digest) {
            return Err(ClusterError::Rules {
                cluster: cfg.name.clone(),
                mine: digest,
                theirs: theirs.split_whitespace().next().unwrap_or("").to_string(),
            });
        }
        store_material(&config_kv, material).await;
        earlier = match theirs_key.and_then(|k| k.previous) {
            Some(p) => read_material(&config_kv, p).await,
            None => None,
        };
        key = theirs_key;
    }
    Ok(Joined {
        client,
        js,
        stream,
        config_kv,
        leases,
        cfg: cfg.clone(),
        rules: key,
        earlier,
    })
}

/// Stores `m` under `rules.<digest>` (JSON) unless it is there; a failure is logged (the
/// key is only needed by a node starting during a later change).
pub async fn store_material(kv: &kv::Store, m: &super::rules::Material) {
    let key = super::rules::Material::key(m.digest());
    let value = serde_json::to_vec(m).unwrap_or_default();
    match kv.create(&key, Bytes::from(value)).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => tracing::warn!(error = %e, key = %key, "cannot store the rules in the cluster"),
    }
}

/// The rules with `digest` from the config bucket, if they are there and have it.
async fn read_material(kv: &kv::Store, digest: u64) -> Option<super::rules::Material> {
    let key = super::rules::Material::key(digest);
    let v = match kv.get(&key).await {
        Ok(v) => v?,
        Err(e) => {
            tracing::warn!(error = %e, key = %key, "cannot read the earlier rules");
            return None;
        }
    };
    let m: super::rules::Material = serde_json::from_slice(&v).ok()?;
    (m.digest() == digest).then_some(m)
}
