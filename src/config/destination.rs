//! A validated `[[destination]]` ([`DestinationConfig`]): one of the destination kinds
//! ([`DestinationKind`]), each with only its own settings, plus what every kind shares
//! (queue, ring instance, hold). Also `[routing]`: which destinations each output name is
//! placed on ([`OutputPlacement`]).

use std::sync::Arc;
use std::time::Duration;

use super::error::{SectionError, invalid};
use super::file::{DestProtocol, DestinationFile, LateChanges, RoutingFile};
use super::prometheus::{self, RemoteWriteConfig};
use crate::ring::Placement;

/// A validated destination: its kind and the settings every kind shares.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationConfig {
    /// What it is and how it is written to.
    pub kind: DestinationKind,
    /// Queue capacity in datapoints.
    pub queue_datapoints: usize,
    /// carbon's instance: part of the ring key and of the self-metric name.
    pub instance: Option<String>,
    /// How long after an interval closes its first aggregate is held for this
    /// destination (zero: not held).
    pub emit_delay: Duration,
    /// What to do with a changed value of an interval already sent.
    pub late_changes: LateChanges,
}

/// The kinds of destination, each with its validated settings.
#[derive(Clone, Debug, PartialEq)]
pub enum DestinationKind {
    /// carbon-cache, go-carbon or a relay over TCP, or carbon plaintext on stdout.
    Carbon(CarbonDestination),
    /// A Prometheus remote-write receiver (`protocol = "prometheus_remote_write"`).
    RemoteWrite(RemoteWriteConfig),
}

/// A carbon destination's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CarbonDestination {
    /// Where it writes.
    pub target: CarbonTarget,
    /// The wire protocol: always plaintext on stdout.
    pub protocol: CarbonProtocol,
    /// Datapoints per pickle frame (and per counted batch of plaintext), ≥ 1.
    pub max_datapoints_per_message: usize,
    /// When a connection fails, what was written into it within this long before (and
    /// since it connected) is ledgered as `unconfirmed`.
    pub unconfirmed_window: Duration,
}

/// Where a carbon destination writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CarbonTarget {
    /// Plaintext lines on standard output.
    Stdout,
    /// A TCP `host:port` (port not 0).
    Tcp(String),
}

/// carbon's wire protocols, as a destination speaks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarbonProtocol {
    /// carbon pickle, protocol 2, length-prefixed frames ([`crate::codec::pickle`]).
    Pickle,
    /// carbon plaintext lines ([`crate::codec::plaintext`]).
    Plaintext,
}

impl DestinationConfig {
    /// The name used in logs and counters: the address, the URL, or `stdout`.
    pub fn name(&self) -> &str {
        match &self.kind {
            DestinationKind::Carbon(c) => match &c.target {
                CarbonTarget::Stdout => "stdout",
                CarbonTarget::Tcp(a) => a,
            },
            DestinationKind::RemoteWrite(rw) => &rw.url,
        }
    }

    /// The wire protocol, as `protocol` is written in the config file.
    pub fn protocol(&self) -> DestProtocol {
        match &self.kind {
            DestinationKind::Carbon(c) => match c.protocol {
                CarbonProtocol::Pickle => DestProtocol::Pickle,
                CarbonProtocol::Plaintext => DestProtocol::Plaintext,
            },
            DestinationKind::RemoteWrite(_) => DestProtocol::PrometheusRemoteWrite,
        }
    }

    /// The remote-write settings, if it is a remote-write destination.
    pub fn remote_write(&self) -> Option<&RemoteWriteConfig> {
        match &self.kind {
            DestinationKind::RemoteWrite(rw) => Some(rw),
            DestinationKind::Carbon(_) => None,
        }
    }

    /// The destination as the hash ring sees it: host (IPv6 without brackets), port,
    /// instance; `stdout` is host `stdout`, port 0.
    pub fn node(&self) -> crate::ring::Node {
        let (host, port) = match &self.kind {
            DestinationKind::Carbon(c) => match &c.target {
                CarbonTarget::Stdout => ("stdout".to_string(), 0),
                CarbonTarget::Tcp(a) => split_host_port(a).unwrap_or_else(|| (a.clone(), 0)),
            },
            DestinationKind::RemoteWrite(rw) => {
                prometheus::url_host_port(&rw.url).unwrap_or_else(|_| (rw.url.clone(), 0))
            }
        };
        crate::ring::Node {
            host,
            port,
            instance: self.instance.clone(),
        }
    }

    /// carbon's name of the destination in self-metrics: `host:port:instance` (instance
    /// `None` when not set) with `.` replaced by `_`, e.g. `127_0_0_1:2004:None`.
    pub fn carbon_name(&self) -> String {
        let n = self.node();
        let instance = n.instance.as_deref().unwrap_or("None");
        format!("{}:{}:{instance}", n.host, n.port).replace('.', "_")
    }
}

/// Splits `host:port` (IPv6 as `[addr]:port`) into the host without brackets and the
/// port; `None` unless the host is non-empty and the port a number.
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The longest `emit_delay`: held aggregates stay in memory, and a store that refuses
/// corrections should get a value within its own out-of-order window.
const MAX_EMIT_DELAY: Duration = Duration::from_secs(3600);

impl TryFrom<DestinationFile> for DestinationConfig {
    type Error = SectionError;

    /// Errors: a zero queue or frame size, an address that is neither `host:port` nor
    /// `stdout`, remote-write keys on a carbon destination, invalid remote-write settings
    /// ([`RemoteWriteConfig::from_file`]), an `emit_delay` over an hour.
    fn try_from(d: DestinationFile) -> Result<Self, SectionError> {
        let what = d.url.as_deref().unwrap_or(&d.address).to_string();
        if d.queue_datapoints == 0 || d.max_datapoints_per_message == 0 {
            return Err(invalid(format!(
                "destination {what}: queue_datapoints and max_datapoints_per_message must be at least 1"
            )));
        }
        let kind = match d.protocol {
            DestProtocol::PrometheusRemoteWrite => {
                DestinationKind::RemoteWrite(RemoteWriteConfig::from_file(&d)?)
            }
            DestProtocol::Pickle | DestProtocol::Plaintext => {
                DestinationKind::Carbon(CarbonDestination::from_file(&d)?)
            }
        };
        let emit_delay = d.emit_delay.unwrap_or_default();
        if emit_delay > MAX_EMIT_DELAY {
            return Err(invalid(format!(
                "destination {what}: emit_delay {} is longer than the most, 1h",
                humantime::format_duration(emit_delay)
            )));
        }
        Ok(DestinationConfig {
            kind,
            queue_datapoints: d.queue_datapoints,
            instance: d.instance.filter(|i| !i.is_empty()),
            emit_delay,
            late_changes: d.late_changes.unwrap_or_default(),
        })
    }
}

impl CarbonDestination {
    /// Validates a carbon destination's keys. Errors: an address that is neither
    /// `host:port` (port not 0) nor `stdout`, a remote-write key.
    fn from_file(d: &DestinationFile) -> Result<CarbonDestination, SectionError> {
        let target = if d.address == "stdout" {
            CarbonTarget::Stdout
        } else if split_host_port(&d.address).is_some_and(|(_, port)| port > 0) {
            CarbonTarget::Tcp(d.address.clone())
        } else {
            return Err(invalid(format!(
                "destination address {:?} is not host:port (port not 0; IPv6 as [addr]:port) or stdout",
                d.address
            )));
        };
        prometheus::refuse_on_carbon(d)?;
        let protocol = match (&target, d.protocol) {
            (CarbonTarget::Tcp(_), DestProtocol::Pickle) => CarbonProtocol::Pickle,
            _ => CarbonProtocol::Plaintext,
        };
        Ok(CarbonDestination {
            target,
            protocol,
            max_datapoints_per_message: d.max_datapoints_per_message,
            unconfirmed_window: d.unconfirmed_window,
        })
    }
}

/// Validated `[routing]`: which destinations each output name is placed on.
#[derive(Clone, Debug)]
pub struct OutputPlacement {
    /// The destinations prepared for placing names ([`crate::ring`]).
    pub placement: Arc<Placement>,
    /// Normalise tagged names on the way out (carbon's TAG_RELAY_NORMALIZED).
    pub normalize_tags: bool,
}

impl PartialEq for OutputPlacement {
    /// The same settings (the destinations themselves are compared as `[[destination]]`).
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.placement, &other.placement);
        (
            a.method(),
            a.replication(),
            a.diverse(),
            self.normalize_tags,
        ) == (
            b.method(),
            b.replication(),
            b.diverse(),
            other.normalize_tags,
        )
    }
}

impl OutputPlacement {
    /// Every name to each of `destinations` (method `all`), names as they are.
    pub fn all(destinations: &[DestinationConfig]) -> OutputPlacement {
        let nodes = destinations.iter().map(DestinationConfig::node).collect();
        let placement = Placement::new(crate::ring::Method::All, nodes, 1, false)
            .expect("method all refuses nothing");
        OutputPlacement {
            placement: Arc::new(placement),
            normalize_tags: false,
        }
    }

    /// `[routing]` over the validated destinations: builds the ring, which refuses two
    /// destinations with the same ring key. Errors: replication 0, a ring error.
    pub(super) fn from_file(
        r: RoutingFile,
        destinations: &[DestinationConfig],
    ) -> Result<OutputPlacement, SectionError> {
        if r.replication == 0 {
            return Err(invalid("routing.replication must be at least 1"));
        }
        let nodes = destinations.iter().map(DestinationConfig::node).collect();
        let placement = Placement::new(r.method, nodes, r.replication, r.diverse_replicas)
            .map_err(|e| invalid(format!("routing: {e}")))?;
        Ok(OutputPlacement {
            placement: Arc::new(placement),
            normalize_tags: r.normalize_tags,
        })
    }
}
