//! The one clock and the time window. Part of the ground floor: imports nothing of aggd.
//!
//! Every "now" in aggd is the system clock read here, as Unix time; a clock before 1970
//! reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Now, in Unix seconds (fractional).
pub fn now() -> f64 {
    since_epoch().as_secs_f64()
}

/// Now, in whole Unix seconds.
pub(crate) fn now_secs() -> u64 {
    since_epoch().as_secs()
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Milliseconds on the monotonic clock since this process first asked, from 1 (so 0 can
/// mean "never"): what cluster mode's lease allowances are measured on, so a wall clock
/// that is wrong or stepped can neither lengthen nor shorten them.
pub fn monotonic_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ANCHOR
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Now, in Unix microseconds (the journal's receive times).
pub(crate) fn now_us() -> i64 {
    since_epoch().as_micros() as i64
}

/// An inclusive time window in Unix seconds: the datapoint timestamps (or receive times)
/// a drop affects, as the loss ledger records it and `aggd replay` recomputes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Start, inclusive.
    pub from: f64,
    /// End, inclusive.
    pub to: f64,
}

impl Window {
    /// A window holding one instant.
    pub fn at(t: f64) -> Window {
        Window { from: t, to: t }
    }

    /// The smallest window holding both.
    pub(crate) fn union(self, o: Window) -> Window {
        Window {
            from: self.from.min(o.from),
            to: self.to.max(o.to),
        }
    }
}

/// Exponential backoff without jitter: the delay before each retry doubles from `first`
/// up to `most`, and starts again at `first` after a success. The one retry delay of the
/// carbon sender, remote write, replay and the cluster publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: std::time::Duration,
    most: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    /// Destinations' (and replay's): 100 ms doubling to 5 s.
    pub const DESTINATION: Backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );

    /// A backoff from `first` doubling to `most`.
    pub const fn new(first: std::time::Duration, most: std::time::Duration) -> Backoff {
        Backoff {
            first,
            most,
            next: first,
        }
    }

    /// The delay the next [`Backoff::delay`] returns.
    pub fn peek(&self) -> std::time::Duration {
        self.next
    }

    /// The delay to wait before this retry; the one after is twice as long, at most `most`.
    pub fn delay(&mut self) -> std::time::Duration {
        let d = self.next;
        self.next = (d * 2).min(self.most);
        d
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A `--from`/`--to` time that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct TimeError {
    /// The time as given.
    pub input: String,
    /// Why it does not parse.
    pub reason: String,
}

/// Parses a time: `now`, epoch seconds (`1700000000`), a relative form (`-2h`, `-30m`),
/// or RFC 3339 (`2026-11-21T06:00:00Z`). Returns Unix seconds.
///
/// Errors: none of these forms.
pub fn parse_time(s: &str, now: f64) -> Result<f64, TimeError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Ok(v) = s.parse::<f64>() {
        return Ok(v);
    }
    if let Some(rel) = s.strip_prefix('-') {
        return humantime::parse_duration(rel)
            .map(|d| now - d.as_secs_f64())
            .map_err(|e| TimeError {
                input: s.into(),
                reason: e.to_string(),
            });
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        })
        .map_err(|e| TimeError {
            input: s.into(),
            reason: format!("not now, epoch seconds, -DURATION or RFC 3339 ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_agree_and_windows_grow() {
        let (s, ms, us) = (now(), now_ms(), now_us());
        assert!((s - ms as f64 / 1e3).abs() < 1.0);
        assert!((s - us as f64 / 1e6).abs() < 1.0);
        assert_eq!(now_secs() as f64, now_secs() as f64);
        let w = Window::at(5.0).union(Window { from: 1.0, to: 3.0 });
        assert_eq!(w, Window { from: 1.0, to: 5.0 });
    }

    #[test]
    fn the_monotonic_clock_starts_at_one_and_never_goes_back() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_ms();
        assert!(a >= 1 && b >= a + 5, "{a} {b}");
    }

    #[test]
    fn backoff_doubles_to_its_most_and_a_success_starts_it_again() {
        let ms = std::time::Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let delays: Vec<_> = (0..4).map(|_| b.delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(350), ms(350)]);
        b.reset();
        assert_eq!((b.peek(), b.delay(), b.peek()), (ms(100), ms(100), ms(200)));
        assert_eq!(Backoff::DESTINATION.peek(), ms(100));
    }

    #[test]
    fn times() {
        let now = 1_700_000_000.0;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("1600000000", now), Ok(1_600_000_000.0));
        assert_eq!(parse_time("-2h", now), Ok(now - 7200.0));
        assert_eq!(parse_time("-90s", now), Ok(now - 90.0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000.0));
        assert!(parse_time("yesterday", now).is_err());
    }
}
