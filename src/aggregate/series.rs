//! Buckets of output series and when they are emitted. Pure logic: the clock is a
//! parameter, so every rule below is tested with chosen times.
//!
//! For a series with frequency `f` (seconds) and `max_intervals` = `m`:
//! - a datapoint with timestamp `ts` goes to the bucket starting at `ts − (ts mod f)`
//!   (floored, as Python's float modulo; epoch-aligned);
//! - `now_bucket = now − (now mod f)`; a datapoint whose bucket starts before
//!   `now_bucket − m·f` is rejected as `too_old`, one after `now_bucket + m·f` as `too_new`
//!   (carbon accepts both; old data overwrote correct aggregates with partial ones, #751,
//!   and far-future data leaked memory);
//! - a sweep emits every bucket that received data since its last emission ("dirty") once
//!   its interval is over (`start + f ≤ now`), with the aggregate over **all** its values and
//!   the bucket start as timestamp; more data later makes it dirty again and it is
//!   re-emitted in full;
//! - with `write_back_frequency` = `w` > 0, every `min(w, f)` seconds a sweep also emits
//!   dirty buckets whose interval is still open (running partial aggregates, like carbon's
//!   WRITE_BACK_FREQUENCY);
//! - a bucket is deleted once it starts before `now_bucket − m·f` (it was emitted first);
//!   a series without buckets is deleted;
//! - a forced sweep (shutdown) emits every dirty bucket, open or not.

use std::collections::HashMap;
use std::sync::Arc;

use crate::datapoint::{OutPoint, OutValue};
use crate::method::{Acc, Method};
use crate::reason::DropReason;
use crate::route::{Prehashed, SeriesKey};

/// Bucket settings shared by all series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Intervals kept (`m` above).
    pub max_intervals: u32,
    /// Seconds between partial emissions; 0 = off.
    pub write_back_frequency: u32,
    /// Most values one bucket keeps for percentile methods.
    pub max_values_per_bucket: usize,
}

#[derive(Debug)]
struct Bucket {
    start: i64,
    acc: Acc,
    /// Received data since it was last emitted.
    dirty: bool,
}

/// The buckets of one output series.
#[derive(Debug)]
pub(crate) struct Series {
    method: Method,
    frequency: u32,
    /// Sorted by start; at most `2·m + 1` long.
    buckets: Vec<Bucket>,
    /// When the next partial emission is due (only with `write_back_frequency`).
    next_partial: f64,
}

/// `t − (t mod f)` with Python's floored modulo, for `f > 0`: the start of `t`'s interval.
///
/// Computed as `⌊t/f⌋·f` (libm's `fmod` was a tenth of the worker's time); the division
/// can round up to the next integer when `t` is within an ulp below a boundary, which the
/// correction step undoes, so the result equals the modulo form.
#[inline]
fn floor_to(t: f64, f: f64) -> f64 {
    let start = (t / f).floor() * f;
    if start > t { start - f } else { start }
}

impl Series {
    fn new(method: Method, frequency: u32, now: f64, s: &Settings) -> Self {
        Series {
            method,
            frequency,
            buckets: Vec::new(),
            next_partial: now + f64::from(s.write_back_frequency.min(frequency)),
        }
    }

    /// Adds a value; `dirty` = it was not yet delivered downstream (see
    /// [`SeriesTable::add_as`]).
    fn add(
        &mut self,
        ts: f64,
        value: f64,
        now: f64,
        s: &Settings,
        dirty: bool,
    ) -> Result<(), DropReason> {
        let f = f64::from(self.frequency);
        let start = floor_to(ts, f);
        let now_bucket = floor_to(now, f);
        let window = f64::from(s.max_intervals) * f;
        if start < now_bucket - window {
            return Err(DropReason::TooOld);
        }
        if start > now_bucket + window {
            return Err(DropReason::TooNew);
        }
        let start = start as i64;
        let i = match self.buckets.binary_search_by_key(&start, |b| b.start) {
            Ok(i) => i,
            Err(i) => {
                self.buckets.insert(
                    i,
                    Bucket {
                        start,
                        acc: Acc::default(),
                        dirty: false,
                    },
                );
                i
            }
        };
        let b = &mut self.buckets[i];
        if self.method.keeps_values() && b.acc.held_values() >= s.max_values_per_bucket {
            return Err(DropReason::BucketFull);
        }
        b.acc.add(value, self.method);
        b.dirty |= dirty;
        Ok(())
    }

    fn sweep(&mut self, now: f64, s: &Settings, force: bool, mut emit: impl FnMut(i64, OutValue)) {
        let f = f64::from(self.frequency);
        let partial = s.write_back_frequency > 0 && now >= self.next_partial;
        if partial {
            self.next_partial = now + f64::from(s.write_back_frequency.min(self.frequency));
        }
        let threshold = floor_to(now, f) - f64::from(s.max_intervals) * f;
        let method = self.method;
        self.buckets.retain_mut(|b| {
            let closed = b.start as f64 + f <= now;
            if b.dirty && (force || partial || closed) {
                emit(b.start, b.acc.value(method));
                b.dirty = false;
            }
            b.start as f64 >= threshold
        });
    }
}

/// All series owned by one worker.
#[derive(Debug)]
pub struct SeriesTable {
    settings: Settings,
    series: HashMap<Arc<SeriesKey>, Series, Prehashed>,
}

impl SeriesTable {
    /// An empty table.
    pub fn new(settings: Settings) -> Self {
        SeriesTable {
            settings,
            series: HashMap::default(),
        }
    }

    /// Number of live series (carbon's allocatedBuffers).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Datapoints held in live buckets (carbon's bufferedDatapoints).
    pub fn buffered(&self) -> u64 {
        self.series
            .values()
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.acc.count())
            .sum()
    }

    /// Whether there are no live series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Adds one value to `key`'s bucket for `ts`; creates the series on first use with the
    /// key's method and frequency.
    #[inline]
    pub fn add(
        &mut self,
        key: &Arc<SeriesKey>,
        ts: f64,
        value: f64,
        now: f64,
    ) -> Result<(), DropReason> {
        self.add_as(key, ts, value, now, true)
    }

    /// Like [`SeriesTable::add`]; with `dirty` false the value counts as already delivered
    /// in its bucket's last emission (the start-up rebuild of input that the previous run
    /// flushed and delivered before a clean shutdown): the bucket is emitted again only
    /// once it gets new data, and then with every value.
    #[inline]
    pub(crate) fn add_as(
        &mut self,
        key: &Arc<SeriesKey>,
        ts: f64,
        value: f64,
        now: f64,
        dirty: bool,
    ) -> Result<(), DropReason> {
        let s = &self.settings;
        if let Some(series) = self.series.get_mut(key) {
            return series.add(ts, value, now, s, dirty);
        }
        let mut series = Series::new(key.method, key.frequency, now, s);
        let r = series.add(ts, value, now, s, dirty);
        if r.is_ok() {
            self.series.insert(Arc::clone(key), series);
        }
        r
    }

    /// Calls `f` with every non-empty bucket's aggregate (dirty or not) and empties the
    /// table. Replay uses this to send complete aggregates.
    pub fn drain_all(&mut self, mut f: impl FnMut(&SeriesKey, i64, OutValue)) {
        for (key, mut series) in self.series.drain() {
            let method = series.method;
            for b in &mut series.buckets {
                if b.acc.count() > 0 {
                    f(&key, b.start, b.acc.value(method));
                }
            }
        }
    }

    /// Emits what is due at `now` into `out` (everything dirty when `force`), and deletes
    /// expired buckets and empty series.
    pub fn sweep(&mut self, now: f64, force: bool, out: &mut Vec<OutPoint>) {
        let s = self.settings;
        self.series.retain(|key, series| {
            series.sweep(now, &s, force, |start, value| {
                out.push(OutPoint {
                    path: Arc::clone(&key.name),
                    timestamp: start as f64,
                    value,
                });
            });
            !series.buckets.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::fnv1a64;

    fn key(name: &str, method: &str, frequency: u32) -> Arc<SeriesKey> {
        Arc::new(SeriesKey {
            name: name.into(),
            hash: fnv1a64(name.as_bytes()),
            method: Method::parse(method).unwrap(),
            frequency,
        })
    }

    fn settings(wbf: u32) -> Settings {
        Settings {
            max_intervals: 5,
            write_back_frequency: wbf,
            max_values_per_bucket: 3,
        }
    }

    fn sweep(t: &mut SeriesTable, now: f64) -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        t.sweep(now, false, &mut out);
        let mut v: Vec<_> = out
            .into_iter()
            .map(|p| (p.path.to_string(), p.timestamp, p.value.as_f64()))
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }

    #[test]
    fn floor_matches_python_modulo() {
        let cases = [
            (1_700_000_039.999_999_8, 60.0),
            (1_700_000_040.0, 60.0),
            (-100.0, 60.0),
            (-2.0, 60.0),
            (0.0, 10.0),
            (119.999_999_999_999_99, 60.0),
            (1e15 + 0.5, 7.0),
        ];
        for (t, f) in cases {
            assert_eq!(floor_to(t, f), t - t.rem_euclid(f), "{t} {f}");
        }
        // Every ulp around interval boundaries of realistic timestamps.
        for k in [28_333_333.0f64, 28_333_334.0] {
            let mut t = k * 60.0;
            for _ in 0..64 {
                t = t.next_down();
            }
            for _ in 0..128 {
                assert_eq!(floor_to(t, 60.0), t - t.rem_euclid(60.0), "{t}");
                t = t.next_up();
            }
        }
    }

    #[test]
    fn bucket_alignment_and_emission_after_interval() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "sum", 60);
        let now = 1_000_000.0; // 1_000_000 mod 60 = 40: now_bucket = 999_960
        t.add(&k, 999_960.0, 1.0, now).unwrap();
        t.add(&k, 999_999.5, 2.0, now).unwrap();
        t.add(&k, 999_900.0, 5.0, now).unwrap();
        // The current interval is open: only the previous one is emitted.
        assert_eq!(sweep(&mut t, now), [("s".into(), 999_900.0, 5.0)]);
        assert_eq!(sweep(&mut t, now + 1.0), []);
        // Once over, the current one is emitted with the full aggregate.
        assert_eq!(sweep(&mut t, 1_000_020.0), [("s".into(), 999_960.0, 3.0)]);
    }

    #[test]
    fn re_emission_is_over_all_values() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "avg", 10);
        let now = 1000.0;
        t.add(&k, 980.0, 3.0, now).unwrap();
        assert_eq!(sweep(&mut t, now), [("s".into(), 980.0, 3.0)]);
        t.add(&k, 985.0, 13.0, now + 1.0).unwrap();
        assert_eq!(sweep(&mut t, now + 1.0), [("s".into(), 980.0, 8.0)]);
        // Nothing new: nothing re-sent.
        assert_eq!(sweep(&mut t, now + 2.0), []);
    }

    #[test]
    fn too_old_too_new_and_expiry() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "sum", 10);
        let now = 1000.0;
        assert_eq!(t.add(&k, 949.0, 1.0, now), Err(DropReason::TooOld));
        assert_eq!(t.add(&k, 950.0, 1.0, now), Ok(()));
        assert_eq!(t.add(&k, 1059.0, 1.0, now), Ok(()));
        assert_eq!(t.add(&k, 1060.0, 1.0, now), Err(DropReason::TooNew));
        assert_eq!(t.len(), 1);
        sweep(&mut t, now);
        // At 1010 the 950 bucket falls out of the window and is deleted; 1050 stays.
        sweep(&mut t, 1010.0);
        assert_eq!(t.add(&k, 950.0, 1.0, 1010.0), Err(DropReason::TooOld));
        // After the future bucket is over and expired, the series is gone.
        assert_eq!(sweep(&mut t, 1060.0), [("s".into(), 1050.0, 1.0)]);
        sweep(&mut t, 1200.0);
        assert!(t.is_empty());
    }

    #[test]
    fn negative_and_fractional_timestamps_floor() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "count", 60);
        t.add(&k, -100.0, 1.0, -30.0).unwrap();
        t.add(&k, -61.5, 1.0, -30.0).unwrap();
        t.add(&k, -0.5, 1.0, -30.0).unwrap();
        assert_eq!(
            sweep(&mut t, 0.0),
            [("s".into(), -120.0, 2.0), ("s".into(), -60.0, 1.0)]
        );
    }

    #[test]
    fn write_back_frequency_emits_partials() {
        let mut t = SeriesTable::new(settings(2));
        let k = key("s", "sum", 60);
        let now = 960.0;
        t.add(&k, 960.0, 1.0, now).unwrap();
        assert_eq!(sweep(&mut t, now + 1.0), []);
        assert_eq!(sweep(&mut t, now + 2.0), [("s".into(), 960.0, 1.0)]);
        t.add(&k, 961.0, 2.0, now + 3.0).unwrap();
        assert_eq!(sweep(&mut t, now + 3.0), []);
        assert_eq!(sweep(&mut t, now + 4.0), [("s".into(), 960.0, 3.0)]);
    }

    #[test]
    fn forced_sweep_flushes_open_buckets() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "max", 60);
        t.add(&k, 965.0, 4.0, 970.0).unwrap();
        let mut out = Vec::new();
        t.sweep(970.0, true, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, OutValue::Float(4.0));
    }

    #[test]
    fn percentile_buckets_are_bounded() {
        let mut t = SeriesTable::new(settings(0));
        let k = key("s", "p90", 60);
        for _ in 0..3 {
            t.add(&k, 960.0, 1.0, 970.0).unwrap();
        }
        assert_eq!(t.add(&k, 960.0, 1.0, 970.0), Err(DropReason::BucketFull));
        // Streaming methods are not bounded by it.
        let k = key("c", "count", 60);
        for _ in 0..10 {
            t.add(&k, 960.0, 1.0, 970.0).unwrap();
        }
    }

    #[test]
    fn first_rule_decides_method() {
        let mut t = SeriesTable::new(settings(0));
        t.add(&key("s", "sum", 60), 900.0, 2.0, 970.0).unwrap();
        t.add(&key("s", "max", 60), 900.0, 5.0, 970.0).unwrap();
        assert_eq!(sweep(&mut t, 970.0), [("s".into(), 900.0, 7.0)]);
    }
}
