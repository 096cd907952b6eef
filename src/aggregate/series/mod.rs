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

use crate::datapoint::{Emitted, OutPoint, OutValue};
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
    /// A value of it was emitted (or delivered before a clean restart): the next
    /// emission is a correction ([`Emitted::again`]).
    emitted: bool,
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
    /// The last emission: the interval's start and when (Unix s).
    last_emission: Option<(i64, f64)>,
    /// The bucket the last datapoint went to (a hint: checked before use).
    hot: usize,
    /// The accepted bucket starts for the last `now` and `max_intervals` seen: `(now,
    /// max_intervals, lowest, highest)`. A worker adds a batch with one `now`, so the
    /// division and floor of `now_bucket` are done once per batch, not per datapoint.
    window: (f64, u32, f64, f64),
}

/// One output series as [`SeriesTable::inspect`] reports it (the live-state API).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeriesState {
    /// The output series' name.
    pub name: String,
    /// Its aggregation method (`sum`, `avg`, `p90`, …).
    pub method: String,
    /// Its interval length, seconds.
    pub frequency: u32,
    /// The intervals it holds, oldest first.
    pub intervals: Vec<IntervalState>,
    /// The last emission: the interval's start and when (Unix s).
    pub last_emission: Option<Emission>,
}

/// One interval a series holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IntervalState {
    /// Its start, Unix s.
    pub start: i64,
    /// The aggregate of the datapoints so far.
    pub value: f64,
    /// Datapoints added.
    pub datapoints: u64,
    /// Whether that value was emitted (no datapoint arrived since).
    pub emitted: bool,
}

/// When a series was last emitted.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Emission {
    /// The interval's start, Unix s.
    pub interval: i64,
    /// When it was emitted, Unix s.
    pub at: f64,
}

/// `x.floor()` without a call into libm: baseline x86-64 has no rounding instruction
/// (SSE4.1's `roundsd`), and the call was 4 % of the ingest profile. Exact for every
/// `|x| < 2^52` (where an `i64` holds the integer part exactly); libm's beyond.
#[inline]
fn floor(x: f64) -> f64 {
    if x.abs() < 4_503_599_627_370_496.0 {
        let t = x as i64 as f64;
        if t > x { t - 1.0 } else { t }
    } else {
        x.floor()
    }
}

/// `t − (t mod f)` with Python's floored modulo, for `f > 0`: the start of `t`'s interval.
///
/// Computed as `⌊t/f⌋·f` (libm's `fmod` was a tenth of the worker's time); the division
/// can round up to the next integer when `t` is within an ulp below a boundary, which the
/// correction step undoes, so the result equals the modulo form.
#[inline]
fn floor_to(t: f64, f: f64) -> f64 {
    let start = floor(t / f) * f;
    if start > t { start - f } else { start }
}

impl Series {
    fn new(method: Method, frequency: u32, now: f64, s: &Settings) -> Self {
        Series {
            method,
            frequency,
            buckets: Vec::new(),
            next_partial: now + f64::from(s.write_back_frequency.min(frequency)),
            last_emission: None,
            hot: 0,
            window: (f64::NAN, 0, 0.0, 0.0),
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
        if self.window.0 != now || self.window.1 != s.max_intervals {
            let now_bucket = floor_to(now, f);
            let window = f64::from(s.max_intervals) * f;
            self.window = (
                now,
                s.max_intervals,
                now_bucket - window,
                now_bucket + window,
            );
        }
        // Most datapoints go where the previous one went: its range needs no division
        // (a multiple of `f` in [start, start + f) floors to `start` exactly).
        let start = match self.buckets.get(self.hot) {
            Some(b) if ts >= b.start as f64 && ts < b.start as f64 + f => b.start as f64,
            _ => floor_to(ts, f),
        };
        if start < self.window.2 {
            return Err(DropReason::TooOld);
        }
        if start > self.window.3 {
            return Err(DropReason::TooNew);
        }
        let start = start as i64;
        let hot = self.buckets.get(self.hot).is_some_and(|b| b.start == start);
        let found = if hot {
            Ok(self.hot)
        } else {
            self.buckets.binary_search_by_key(&start, |b| b.start)
        };
        let i = match found {
            Ok(i) => i,
            Err(i) => {
                self.buckets.insert(
                    i,
                    Bucket {
                        start,
                        acc: Acc::default(),
                        dirty: false,
                        emitted: false,
                    },
                );
                i
            }
        };
        self.hot = i;
        let b = &mut self.buckets[i];
        if self.method.keeps_values() && b.acc.held_values() >= s.max_values_per_bucket {
            return Err(DropReason::BucketFull);
        }
        b.acc.add(value, self.method);
        b.dirty |= dirty;
        b.emitted |= !dirty;
        Ok(())
    }

    /// Emits what is due: `emit(start, value, again)`, `again` = a value of that interval
    /// was emitted before.
    fn sweep(
        &mut self,
        now: f64,
        s: &Settings,
        force: bool,
        mut emit: impl FnMut(i64, OutValue, bool),
    ) {
        let f = f64::from(self.frequency);
        let partial = s.write_back_frequency > 0 && now >= self.next_partial;
        if partial {
            self.next_partial = now + f64::from(s.write_back_frequency.min(self.frequency));
        }
        let threshold = floor_to(now, f) - f64::from(s.max_intervals) * f;
        let method = self.method;
        let last = &mut self.last_emission;
        self.buckets.retain_mut(|b| {
            let closed = b.start as f64 + f <= now;
            if b.dirty && (force || partial || closed) {
                emit(b.start, b.acc.value(method), b.emitted);
                b.dirty = false;
                b.emitted = true;
                *last = Some((b.start, now));
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

/// An output series' key as the table is given it: a counted reference, or a work item
/// (whose key its batch keeps alive, see [`crate::aggregate::batch`]).
pub trait SeriesHandle {
    /// The key.
    fn series_key(&self) -> &SeriesKey;
    /// A counted reference to it, for a new series.
    fn to_arc(&self) -> Arc<SeriesKey>;
}

impl SeriesHandle for Arc<SeriesKey> {
    #[inline]
    fn series_key(&self) -> &SeriesKey {
        self
    }
    fn to_arc(&self) -> Arc<SeriesKey> {
        Arc::clone(self)
    }
}

impl SeriesHandle for crate::aggregate::batch::WorkItem {
    #[inline]
    fn series_key(&self) -> &SeriesKey {
        self.key()
    }
    fn to_arc(&self) -> Arc<SeriesKey> {
        self.key_arc()
    }
}

impl SeriesTable {
    /// An empty table.
    pub fn new(settings: Settings) -> Self {
        SeriesTable {
            settings,
            series: HashMap::default(),
        }
    }

    /// The live state of at most `limit` series whose name `matching` matches, in no
    /// particular order: their intervals with the aggregate so far, and their last
    /// emission.
    pub fn inspect(&mut self, matching: &regex::Regex, limit: usize) -> Vec<SeriesState> {
        let mut out = Vec::new();
        for (key, series) in &mut self.series {
            if out.len() >= limit {
                break;
            }
            if !matching.is_match(&key.name) {
                continue;
            }
            let method = series.method;
            out.push(SeriesState {
                name: key.name.to_string(),
                method: method.to_string(),
                frequency: series.frequency,
                intervals: series
                    .buckets
                    .iter_mut()
                    .filter(|b| b.acc.count() > 0)
                    .map(|b| IntervalState {
                        start: b.start,
                        value: match b.acc.value(method) {
                            OutValue::Float(v) => v,
                            OutValue::Int(v) => v as f64,
                        },
                        datapoints: b.acc.count(),
                        emitted: !b.dirty,
                    })
                    .collect(),
                last_emission: series
                    .last_emission
                    .map(|(interval, at)| Emission { interval, at }),
            });
        }
        out
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
        key: &impl SeriesHandle,
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
        key: &impl SeriesHandle,
        ts: f64,
        value: f64,
        now: f64,
        dirty: bool,
    ) -> Result<(), DropReason> {
        let s = &self.settings;
        let k = key.series_key();
        if let Some(series) = self.series.get_mut(k) {
            return series.add(ts, value, now, s, dirty);
        }
        let mut series = Series::new(k.method, k.frequency, now, s);
        let r = series.add(ts, value, now, s, dirty);
        if r.is_ok() {
            self.series.insert(key.to_arc(), series);
        }
        r
    }

    /// Like [`SeriesTable::add_as`], for rebuild input (re-read from the journal or the
    /// cluster stream, its drops not counted again). A datapoint refused as `too_old` also
    /// deletes its interval's bucket, without emitting it: its interval left the window
    /// while the rebuild ran, so the bucket holds only the part read before, and emitting
    /// it would overwrite the interval's full value, emitted before the rebuild, with a
    /// partial one (found by the nemesis soak, `docs/cluster.md`).
    pub(crate) fn add_rebuilt(
        &mut self,
        key: &impl SeriesHandle,
        ts: f64,
        value: f64,
        now: f64,
        dirty: bool,
    ) -> Result<(), DropReason> {
        let r = self.add_as(key, ts, value, now, dirty);
        if r == Err(DropReason::TooOld)
            && let Some(series) = self.series.get_mut(key.series_key())
        {
            let start = floor_to(ts, f64::from(series.frequency)) as i64;
            if let Ok(i) = series.buckets.binary_search_by_key(&start, |b| b.start) {
                series.buckets.remove(i);
                series.hot = 0;
            }
        }
        r
    }

    /// Deletes the series `keep` refuses, without emitting them.
    pub fn retain(&mut self, keep: impl Fn(&SeriesKey) -> bool) {
        self.series.retain(|key, _| keep(key));
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
        self.sweep_where(now, force, out, |_| true);
    }

    /// Like [`SeriesTable::sweep`], for the series `emit` accepts only; the others are
    /// left as they are (cluster mode: a shard not yet rebuilt, or whose lease lapsed).
    pub fn sweep_where(
        &mut self,
        now: f64,
        force: bool,
        out: &mut Vec<OutPoint>,
        emit: impl Fn(&SeriesKey) -> bool,
    ) {
        let s = self.settings;
        self.series.retain(|key, series| {
            if !emit(key) {
                return true;
            }
            let frequency = series.frequency;
            series.sweep(now, &s, force, |start, value, again| {
                out.push(OutPoint {
                    path: Arc::clone(&key.name),
                    timestamp: start as f64,
                    value,
                    interval: Some(Emitted {
                        frequency,
                        again,
                        shard: None,
                    }),
                });
            });
            !series.buckets.is_empty()
        });
    }
}

#[cfg(test)]
mod tests;
