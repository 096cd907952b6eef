//! The units that flow through aggd: input kinds, decoded input datapoints and outgoing
//! datapoints. Part of the ground floor: imports nothing of aggd above [`crate::time`].

use std::sync::Arc;

/// What kind of input a frame is (a journal record's kind), which decides how its bytes
/// are decoded. The numbers are the journal's on-disk codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A run of complete carbon plaintext lines from a TCP connection.
    PlaintextTcp = 1,
    /// One UDP datagram of carbon plaintext lines.
    PlaintextUdp = 2,
    /// One carbon pickle frame body (without its length prefix).
    PickleTcp = 3,
    /// An HTTP body of carbon plaintext lines (gzip already decoded).
    HttpPlaintext = 4,
    /// An HTTP body holding one pickled list.
    HttpPickle = 5,
    /// An HTTP body holding a JSON array of datapoints.
    HttpJson = 6,
}

impl Kind {
    /// The kind with journal code `b`.
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::PlaintextTcp),
            2 => Some(Kind::PlaintextUdp),
            3 => Some(Kind::PickleTcp),
            4 => Some(Kind::HttpPlaintext),
            5 => Some(Kind::HttpPickle),
            6 => Some(Kind::HttpJson),
            _ => None,
        }
    }

    /// Whether it is an HTTP body (whose request is answered with its counts).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Kind::HttpPlaintext | Kind::HttpPickle | Kind::HttpJson
        )
    }

    /// `plaintext/tcp`, `plaintext/udp`, `pickle/tcp` or `http/…`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PlaintextTcp => "plaintext/tcp",
            Kind::PlaintextUdp => "plaintext/udp",
            Kind::PickleTcp => "pickle/tcp",
            Kind::HttpPlaintext => "http/plaintext",
            Kind::HttpPickle => "http/pickle",
            Kind::HttpJson => "http/json",
        }
    }
}

/// The first node of a metric path (all of it if it has no `.`), e.g. `acme` for
/// `acme.web.cpu`: the tenant id in prefix mode.
#[inline]
pub(crate) fn first_node(path: &str) -> &str {
    path.split_once('.').map_or(path, |(t, _)| t)
}

/// One decoded input datapoint, borrowing its metric path from the received bytes.
///
/// `timestamp` is Unix seconds as received (fractions kept; `-1` already replaced by the
/// receive time); `value` is never NaN (decoders drop NaN values as
/// [`DropReason::NanValue`](crate::reason::DropReason::NanValue)) but may be ±inf.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Datapoint<'a> {
    /// Metric path, e.g. `servers.web01.cpu` or a tagged `cpu;host=web01`.
    pub path: &'a str,
    /// Unix seconds.
    pub timestamp: f64,
    /// The measurement.
    pub value: f64,
}

/// The value of an outgoing datapoint: carbon sends `count` aggregates as ints, everything
/// else as floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutValue {
    /// A float value (every method but `count`, and raw forwards).
    Float(f64),
    /// An integer value (`count`).
    Int(i64),
}

impl OutValue {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            OutValue::Float(v) => v,
            OutValue::Int(v) => v as f64,
        }
    }
}

/// A datapoint on its way to the destinations: an aggregate or a forwarded raw point.
#[derive(Clone, Debug, PartialEq)]
pub struct OutPoint {
    /// Metric path of the output series.
    pub path: Arc<str>,
    /// Unix seconds: the bucket start for aggregates, the received timestamp for forwards.
    pub timestamp: f64,
    /// The value.
    pub value: OutValue,
    /// For an aggregate a live worker emitted: its interval; `None` for a forwarded raw
    /// datapoint, a self-metric, or a replayed aggregate. Destinations with `emit_delay`
    /// or `late_changes` ([`crate::dest`]) read it; the carbon and remote-write encoders
    /// do not.
    pub interval: Option<Emitted>,
}

/// The interval an emitted aggregate is the value of, as its destinations see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The interval's length, seconds (the rule's frequency): it closes at the point's
    /// timestamp plus this.
    pub frequency: u32,
    /// Whether a value of this interval was emitted before (more data arrived after it,
    /// or it was delivered before a clean restart): this emission is a correction.
    pub again: bool,
    /// In cluster mode, the shard of its series: a destination writes it only while this
    /// node may still emit that shard (the fence at the write, [`crate::dest`]).
    pub shard: Option<u32>,
}

/// A batch of outgoing datapoints, shared (not copied) between destinations.
pub(crate) type OutBatch = Arc<[OutPoint]>;

/// The time window (timestamps, Unix s) a non-empty set of outgoing datapoints covers.
pub fn window(points: &[OutPoint]) -> crate::time::Window {
    use crate::time::Window;
    points.iter().fold(
        Window {
            from: f64::INFINITY,
            to: f64::NEG_INFINITY,
        },
        |w, p| w.union(Window::at(p.timestamp)),
    )
}

/// Where outgoing datapoints go: workers hand their emitted aggregates, and ingest its
/// forwarded raw datapoints, to a sink (the destinations, or a test collector). Must not
/// block.
pub trait Sink: Send + Sync {
    /// Takes one batch of outgoing datapoints.
    fn send(&self, batch: OutBatch);
}
