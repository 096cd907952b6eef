//! aggd: a Graphite-compatible aggregation daemon.
//!
//! Data flow: [`listen`] (carbon plaintext over TCP/UDP, carbon pickle over TCP) →
//! [`codec`] (pure, bounded decoders) → [`ingest`] (route lookup in the [`route`] cache,
//! per-worker batches) → [`aggregate`] workers (buckets per output series, emission
//! sweeps) → [`dest`] (bounded queue and sender per destination). [`server`] assembles it;
//! [`config`] reads `aggd.toml` or a carbon.conf; [`rules`] reads carbon-aggregator's rule
//! files; every drop is a [`reason::DropReason`].
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
