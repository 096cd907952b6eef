//! The units that flow through aggd: decoded input datapoints and outgoing datapoints.

use std::sync::Arc;

/// One decoded input datapoint, borrowing its metric path from the received bytes.
///
/// `timestamp` is Unix seconds as received (fractions kept; `-1` already replaced by the
/// receive time); `value` is never NaN (decoders drop NaN values as
/// [`DropReason::NanValue`](crate::drops::DropReason::NanValue)) but may be ±inf.
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
}

/// A batch of outgoing datapoints, shared (not copied) between destinations.
pub type OutBatch = Arc<[OutPoint]>;

/// The time window (timestamps, Unix s) a non-empty set of outgoing datapoints covers.
pub fn window(points: &[OutPoint]) -> crate::journal::ledger::Window {
    use crate::journal::ledger::Window;
    points.iter().fold(
        Window {
            from: f64::INFINITY,
            to: f64::NEG_INFINITY,
        },
        |w, p| w.union(Window::at(p.timestamp)),
    )
}
