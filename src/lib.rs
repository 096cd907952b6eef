//! aggd: a Graphite-compatible aggregation daemon.
//!
//! Data flow: [`listen`] (carbon plaintext over TCP/UDP, carbon pickle over TCP, HTTP) →
//! [`ingest`]'s frame router ([`codec`]'s pure, bounded decoders; the [`tenant`] gate;
//! route lookup in the [`route`] cache; per-worker batches) → [`journal`] (every
//! accepted frame, with its verdict, before its datapoints go on) → [`aggregate`]
//! workers (buckets per output series, emission sweeps) → [`dest`] (a bounded queue and
//! sender per destination: carbon plaintext or pickle, or Prometheus remote write).
//! In cluster mode ([`cluster`]) the batches are per shard and go with their journal
//! records to the publisher, which publishes them to NATS JetStream; each shard's owner
//! node aggregates them in its workers. [`replay`] rebuilds open intervals at start-up
//! and recomputes windows from the journal (`aggd replay`). [`server`] assembles it;
//! [`config`] reads `aggd.toml` or a carbon.conf; [`rules`] reads carbon-aggregator's rule
//! files; every drop is a [`reason::DropReason`], counted by [`drops`] and written to the
//! loss [`ledger`] for `aggd replay --lost`.
// One audited exception: the SIOCOUTQ ioctl in `dest` (no safe wrapper exists).
#![deny(unsafe_code)]

pub mod aggregate;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod datapoint;
pub mod dest;
pub mod drops;
pub mod events;
pub mod explain;
pub mod hash;
pub mod ingest;
pub mod journal;
pub mod ledger;
pub mod listen;
pub mod memory;
pub mod method;
pub mod preflight;
pub mod quarantine;
pub mod reason;
pub mod replay;
pub mod ring;
pub mod route;
pub mod rules;
pub mod server;
pub mod service;
pub mod tenant;
pub mod time;
