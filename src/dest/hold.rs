//! One final value for stores that refuse corrections: a destination's `emit_delay` and
//! `late_changes` (`docs/remote-write.md`, "Re-emitted intervals").
//!
//! aggd emits an interval when it closes and again, in full, whenever late data for it
//! arrives. Whisper keeps the last write; Prometheus, Mimir, Cortex and Thanos Receive
//! keep the first and answer a changed sample with `400 duplicate sample`. For them:
//! - **`emit_delay`** holds an aggregate for this destination until its interval closed
//!   that long ago (`timestamp + frequency + emit_delay`). A newer value of the same
//!   (series, interval) that arrives meanwhile replaces it, so the store gets one sample,
//!   with every datapoint that came within the delay.
//! - **`late_changes = "ledger"`** keeps back a correction of an interval whose value was
//!   already sent ([`Emitted::again`](crate::datapoint::Emitted::again) and not held):
//!   it is counted (`aggd_destination_late_changes_total`) and ledgered as
//!   [`DropReason::LateChange`](crate::reason::DropReason::LateChange) over its
//!   timestamp, instead of being sent and refused.
//!
//! Only aggregates from live workers are held ([`OutPoint::interval`] is set); forwarded
//! raw datapoints and self-metrics pass straight through. The hold is bounded by the
//! destination's `queue_datapoints`: an aggregate that finds it full is sent at once and
//! counted as event `hold_full`. At shutdown everything held is sent before the
//! destinations drain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::LateChanges;
use crate::datapoint::OutPoint;

/// Where each point of a share goes ([`Hold::sort`]).
#[derive(Debug, Default)]
pub(crate) struct Sorted {
    /// To send now.
    pub send: Vec<OutPoint>,
    /// Corrections kept back (`late_changes = "ledger"`).
    pub late: Vec<OutPoint>,
    /// Aggregates sent at once because the hold was full.
    pub overflow: u64,
}

/// The aggregates one destination holds back, keyed by (series, interval start).
#[derive(Debug)]
pub(crate) struct Hold {
    /// Seconds after an interval closes before its value is sent; 0 = none held.
    delay: f64,
    late: LateChanges,
    /// Most aggregates held.
    capacity: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// (series, interval start bits) → (latest value, when it is due, Unix s).
    points: HashMap<(Arc<str>, u64), (OutPoint, f64)>,
    /// The earliest due time among `points` (∞ when empty): a release before it is free.
    next_due: f64,
}

impl Hold {
    /// A hold for one destination, or `None` when it has neither setting (no delay,
    /// `late_changes = "send"`).
    pub(crate) fn new(
        delay: std::time::Duration,
        late: LateChanges,
        capacity: usize,
    ) -> Option<Self> {
        if delay.is_zero() && late == LateChanges::Send {
            return None;
        }
        Some(Hold {
            delay: delay.as_secs_f64(),
            late,
            capacity,
            held: Mutex::new(Held {
                points: HashMap::new(),
                next_due: f64::INFINITY,
            }),
        })
    }

    /// Sorts one destination's share at `now` (Unix s): holds what `emit_delay` holds
    /// (replacing a held value of the same interval), keeps back corrections under
    /// `late_changes = "ledger"`, and returns the rest to send now.
    pub(crate) fn sort(&self, share: Vec<OutPoint>, now: f64) -> Sorted {
        let mut out = Sorted::default();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for p in share {
            let Some(e) = p.interval else {
                out.send.push(p);
                continue;
            };
            let key = (Arc::clone(&p.path), p.timestamp.to_bits());
            if let Some((value, _)) = held.points.get_mut(&key) {
                *value = p;
                continue;
            }
            if e.again && self.late == LateChanges::Ledger {
                out.late.push(p);
                continue;
            }
            let due = p.timestamp + f64::from(e.frequency) + self.delay;
            if self.delay == 0.0 || due <= now {
                out.send.push(p);
            } else if held.points.len() >= self.capacity {
                out.overflow += 1;
                out.send.push(p);
            } else {
                held.next_due = held.next_due.min(due);
                held.points.insert(key, (p, due));
            }
        }
        out
    }

    /// Takes out what is due at `now` (everything when `now` is ∞), oldest interval first.
    pub(crate) fn release(&self, now: f64) -> Vec<OutPoint> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if now < held.next_due {
            return Vec::new();
        }
        let mut next_due = f64::INFINITY;
        let mut due = Vec::new();
        held.points.retain(|_, (p, at)| {
            if *at <= now {
                due.push(p.clone());
                false
            } else {
                next_due = next_due.min(*at);
                true
            }
        });
        held.next_due = next_due;
        due.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        due
    }

    /// Aggregates held now.
    pub(crate) fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .points
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapoint::{Emitted, OutValue};
    use std::time::Duration;

    fn agg(path: &str, ts: f64, v: f64, again: bool) -> OutPoint {
        OutPoint {
            path: path.into(),
            timestamp: ts,
            value: OutValue::Float(v),
            interval: Some(Emitted {
                frequency: 60,
                again,
                shard: None,
            }),
        }
    }

    fn values(points: &[OutPoint]) -> Vec<(String, f64, f64)> {
        points
            .iter()
            .map(|p| (p.path.to_string(), p.timestamp, p.value.as_f64()))
            .collect()
    }

    #[test]
    fn neither_setting_needs_no_hold() {
        assert!(Hold::new(Duration::ZERO, LateChanges::Send, 10).is_none());
        assert!(Hold::new(Duration::ZERO, LateChanges::Ledger, 10).is_some());
        assert!(Hold::new(Duration::from_secs(1), LateChanges::Send, 10).is_some());
    }

    #[test]
    fn a_held_value_is_replaced_and_sent_once_the_delay_after_its_interval() {
        let h = Hold::new(Duration::from_secs(30), LateChanges::Ledger, 10).unwrap();
        // Interval [600, 660) closes at 660, due at 690.
        let s = h.sort(vec![agg("a", 600.0, 3.0, false)], 660.2);
        assert!(s.send.is_empty() && s.late.is_empty());
        let s = h.sort(vec![agg("a", 600.0, 8.0, true)], 670.0);
        assert!(s.send.is_empty() && s.late.is_empty(), "{s:?}");
        assert_eq!(h.len(), 1);
        assert!(h.release(689.9).is_empty());
        assert_eq!(values(&h.release(690.0)), [("a".into(), 600.0, 8.0)]);
        assert_eq!(h.len(), 0);
        // A correction after it was sent is kept back, as a late change.
        let s = h.sort(vec![agg("a", 600.0, 9.0, true)], 700.0);
        assert!(s.send.is_empty());
        assert_eq!(values(&s.late), [("a".into(), 600.0, 9.0)]);
    }

    #[test]
    fn raw_points_and_overdue_first_values_are_sent_at_once() {
        let h = Hold::new(Duration::from_secs(30), LateChanges::Send, 10).unwrap();
        let mut raw = agg("r", 600.0, 1.0, false);
        raw.interval = None;
        // An interval whose first value comes after its due time (late data into an
        // interval nobody had written) is not held.
        let s = h.sort(vec![raw, agg("b", 0.0, 2.0, false)], 700.0);
        assert_eq!(
            values(&s.send),
            [("r".into(), 600.0, 1.0), ("b".into(), 0.0, 2.0)]
        );
        // late_changes = send: a correction after release goes out too.
        let s = h.sort(vec![agg("b", 0.0, 3.0, true)], 700.0);
        assert_eq!(values(&s.send), [("b".into(), 0.0, 3.0)]);
    }

    #[test]
    fn ledger_without_delay_keeps_back_every_correction() {
        let h = Hold::new(Duration::ZERO, LateChanges::Ledger, 10).unwrap();
        let s = h.sort(
            vec![agg("a", 600.0, 1.0, false), agg("b", 600.0, 2.0, true)],
            660.0,
        );
        assert_eq!(values(&s.send), [("a".into(), 600.0, 1.0)]);
        assert_eq!(values(&s.late), [("b".into(), 600.0, 2.0)]);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_full_hold_sends_at_once_and_release_all_empties_it() {
        let h = Hold::new(Duration::from_secs(30), LateChanges::Send, 2).unwrap();
        let s = h.sort(
            vec![
                agg("a", 660.0, 1.0, false),
                agg("b", 600.0, 2.0, false),
                agg("c", 600.0, 3.0, false),
            ],
            665.0,
        );
        assert_eq!(s.overflow, 1);
        assert_eq!(values(&s.send), [("c".into(), 600.0, 3.0)]);
        // Everything, oldest interval first.
        assert_eq!(
            values(&h.release(f64::INFINITY)),
            [("b".into(), 600.0, 2.0), ("a".into(), 660.0, 1.0)]
        );
        assert_eq!(h.len(), 0);
    }
}
