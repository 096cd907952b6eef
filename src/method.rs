//! Aggregation methods and the per-bucket accumulator.
//!
//! Formulas, over the values a bucket received (n of them, in arrival order):
//! - `sum`: left-to-right float addition from 0 in arrival order (Python's `sum`, as
//!   carbon-aggregator computes it).
//! - `avg`: `sum / n`.
//! - `min`, `max`: smallest and largest value.
//! - `count`: `n`, sent as an integer.
//! - `p50` … `p999` (q = 0.50, 0.75, 0.80, 0.90, 0.95, 0.99, 0.999), carbon's
//!   interpolation: sort ascending; `rank = q·(n−1)`, `lo = ⌊rank⌋`, `hi = ⌈rank⌉`; the result
//!   is `v[lo]` if `lo == hi`, else `v[lo]·(hi−rank) + v[hi]·(rank−lo)`.
//! - `median`: `p50`.
//! - `first`, `last`: the earliest and latest value to arrive.
//! - `variance`: population variance `Σ(v−mean)²/n`, computed with Welford's online
//!   algorithm (B. P. Welford, 1962); `stddev` is its square root. Not in carbon.
//!
//! `sum`, `avg`, `min`, `max`, `count`, `first`, `last`, `variance` and `stddev` keep O(1)
//! state per bucket. Percentiles and `median` keep every value (as carbon does for every
//! method), bounded by `aggregation.max_values_per_bucket`.

use crate::datapoint::OutValue;

/// An aggregation method from an aggregation rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Sum of the values.
    Sum,
    /// Arithmetic mean.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of values (an integer).
    Count,
    /// Percentile `q = per_mille / 1000` with carbon's interpolation.
    Percentile {
        /// q × 1000: 500, 750, 800, 900, 950, 990 or 999.
        per_mille: u16,
    },
    /// The 50th percentile.
    Median,
    /// The earliest value.
    First,
    /// The latest value.
    Last,
    /// Population standard deviation.
    Stddev,
    /// Population variance.
    Variance,
}

impl Method {
    /// Every method name aggd accepts in a rule.
    pub(crate) const NAMES: [&'static str; 17] = [
        "sum", "avg", "min", "max", "count", "p50", "p75", "p80", "p90", "p95", "p99", "p999",
        "median", "first", "last", "stddev", "variance",
    ];

    /// Parses a method name as written in `aggregation-rules.conf`.
    pub fn parse(name: &str) -> Option<Method> {
        let pm = |per_mille| Some(Method::Percentile { per_mille });
        match name {
            "sum" => Some(Method::Sum),
            "avg" => Some(Method::Avg),
            "min" => Some(Method::Min),
            "max" => Some(Method::Max),
            "count" => Some(Method::Count),
            "p50" => pm(500),
            "p75" => pm(750),
            "p80" => pm(800),
            "p90" => pm(900),
            "p95" => pm(950),
            "p99" => pm(990),
            "p999" => pm(999),
            "median" => Some(Method::Median),
            "first" => Some(Method::First),
            "last" => Some(Method::Last),
            "stddev" => Some(Method::Stddev),
            "variance" => Some(Method::Variance),
            _ => None,
        }
    }

    /// Whether the accumulator must keep every value.
    pub(crate) fn keeps_values(self) -> bool {
        matches!(self, Method::Percentile { .. } | Method::Median)
    }

    fn welford(self) -> bool {
        matches!(self, Method::Stddev | Method::Variance)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Method::Sum => "sum",
            Method::Avg => "avg",
            Method::Min => "min",
            Method::Max => "max",
            Method::Count => "count",
            // p50 … p99 are per-mille / 10; p999 is the one three-digit name.
            Method::Percentile { per_mille } if per_mille % 10 == 0 => {
                return write!(f, "p{}", per_mille / 10);
            }
            Method::Percentile { per_mille } => return write!(f, "p{per_mille}"),
            Method::Median => "median",
            Method::First => "first",
            Method::Last => "last",
            Method::Stddev => "stddev",
            Method::Variance => "variance",
        };
        f.write_str(s)
    }
}

/// Running state of one bucket. Only the fields the method needs are maintained beyond
/// `count`.
#[derive(Clone, Debug)]
pub(crate) struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
    /// Welford running mean and sum of squared deviations.
    mean: f64,
    m2: f64,
    /// Every value, for percentile methods.
    values: Vec<f64>,
    /// Whether `values` is sorted (set by [`Acc::value`], cleared by [`Acc::add`]).
    sorted: bool,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: 0.0,
            last: 0.0,
            mean: 0.0,
            m2: 0.0,
            values: Vec::new(),
            sorted: true,
        }
    }
}

impl Acc {
    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Number of values held in memory (percentile methods only).
    pub(crate) fn held_values(&self) -> usize {
        self.values.len()
    }

    /// Adds one value (never NaN: decoders drop NaN values).
    #[inline]
    pub fn add(&mut self, v: f64, method: Method) {
        if self.count == 0 {
            self.first = v;
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
        if method.welford() {
            let delta = v - self.mean;
            self.mean += delta / self.count as f64;
            self.m2 += delta * (v - self.mean);
        }
        if method.keeps_values() {
            self.values.push(v);
            self.sorted = false;
        }
    }

    /// The aggregate of everything added so far. Must not be called on an empty bucket.
    pub fn value(&mut self, method: Method) -> OutValue {
        let n = self.count as f64;
        OutValue::Float(match method {
            Method::Sum => self.sum,
            Method::Avg => self.sum / n,
            Method::Min => self.min,
            Method::Max => self.max,
            Method::Count => return OutValue::Int(self.count as i64),
            Method::First => self.first,
            Method::Last => self.last,
            Method::Variance => self.m2 / n,
            Method::Stddev => (self.m2 / n).sqrt(),
            Method::Median => self.percentile(0.5),
            Method::Percentile { per_mille } => self.percentile(f64::from(per_mille) / 1000.0),
        })
    }

    fn percentile(&mut self, q: f64) -> f64 {
        if !self.sorted {
            self.values.sort_unstable_by(f64::total_cmp);
            self.sorted = true;
        }
        percentile_sorted(&self.values, q)
    }
}

/// carbon's percentile over ascending `v` (non-empty): see the module docs.
pub(crate) fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    let rank = q * (v.len() - 1) as f64;
    let lo = rank.floor();
    let hi = rank.ceil();
    if lo == hi {
        v[lo as usize]
    } else {
        v[lo as usize] * (hi - rank) + v[hi as usize] * (rank - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(method: &str, values: &[f64]) -> OutValue {
        let m = Method::parse(method).unwrap();
        let mut acc = Acc::default();
        for v in values {
            acc.add(*v, m);
        }
        acc.value(m)
    }

    fn f(method: &str, values: &[f64]) -> f64 {
        match agg(method, values) {
            OutValue::Float(v) => v,
            OutValue::Int(_) => panic!("{method} gave an int"),
        }
    }

    #[test]
    fn names_round_trip() {
        for name in Method::NAMES {
            assert_eq!(Method::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(Method::parse("rate"), None);
        assert_eq!(Method::parse("SUM"), None);
    }

    #[test]
    fn basic_methods() {
        let v = [3.0, 1.0, 4.0, 1.0, 5.0];
        assert_eq!(f("sum", &v), 14.0);
        assert_eq!(f("avg", &v), 2.8);
        assert_eq!(f("min", &v), 1.0);
        assert_eq!(f("max", &v), 5.0);
        assert_eq!(agg("count", &v), OutValue::Int(5));
        assert_eq!(f("first", &v), 3.0);
        assert_eq!(f("last", &v), 5.0);
        // mean 2.8; squared deviations 0.04 3.24 1.44 3.24 4.84 → 12.8 / 5
        assert!((f("variance", &v) - 2.56).abs() < 1e-12);
        assert!((f("stddev", &v) - 1.6).abs() < 1e-12);
    }

    #[test]
    fn sum_is_sequential_in_arrival_order() {
        let v = [1e16, 1.0, -1e16, 1.0];
        // ((1e16 + 1) - 1e16) + 1 = 0 + 1 in float arithmetic, as Python's sum gives.
        let seq = v.iter().fold(0.0, |a, b| a + b);
        assert_eq!(f("sum", &v), seq);
        assert_eq!(seq, 1.0);
    }

    #[test]
    fn percentiles_match_carbon() {
        // Expected values computed with carbon's formula in CPython 3.11.
        assert_eq!(f("p80", &[206.0, 201.0, 205.0]), 205.60000000000002);
        assert_eq!(f("p80", &[300.0, 100.0, 205.0, 201.0, 206.0, 200.0]), 206.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(f("p50", &ten), 5.5);
        assert_eq!(f("median", &ten), 5.5);
        assert_eq!(f("p75", &ten), 7.75);
        assert_eq!(f("p90", &ten), 9.1);
        assert_eq!(f("p95", &ten), 9.549999999999999);
        assert_eq!(f("p99", &ten), 9.91);
        assert_eq!(f("p999", &ten), 9.991);
        assert_eq!(f("p99", &[7.0]), 7.0);
        // Exact rank: no interpolation.
        assert_eq!(f("p50", &[1.0, 2.0, 3.0]), 2.0);
    }

    #[test]
    fn infinities_propagate() {
        assert_eq!(f("sum", &[1.0, f64::INFINITY]), f64::INFINITY);
        assert!(f("sum", &[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(f("max", &[1.0, f64::INFINITY]), f64::INFINITY);
        assert_eq!(f("min", &[1.0, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        // carbon's interpolation gives NaN between -inf and inf.
        assert!(f("p50", &[f64::NEG_INFINITY, f64::INFINITY]).is_nan());
    }

    #[test]
    fn values_added_after_a_percentile_are_included() {
        let m = Method::parse("p50").unwrap();
        let mut acc = Acc::default();
        for v in [5.0, 1.0, 3.0] {
            acc.add(v, m);
        }
        assert_eq!(acc.value(m), OutValue::Float(3.0));
        acc.add(0.0, m);
        acc.add(-1.0, m);
        assert_eq!(acc.value(m), OutValue::Float(1.0));
        assert_eq!(acc.held_values(), 5);
    }

    #[test]
    fn streaming_methods_hold_no_values() {
        let mut acc = Acc::default();
        for v in 0..1000 {
            acc.add(f64::from(v), Method::Sum);
        }
        assert_eq!(acc.held_values(), 0);
        assert_eq!(acc.count(), 1000);
    }
}
