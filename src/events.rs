//! Notable events that are not drops: failures aggd recovers from by itself (an accept
//! that failed, a destination that cannot be reached, a ledger that cannot be written, …).
//! Each [`Event`] is one type that counts and logs at a limited rate, like a
//! [`crate::reason::DropReason`]; the counters are exported as `aggd_events_total{event}`
//! and as carbon self-metrics `events.<event>` (`docs/operations.md` lists them).
//!
//! Rate limit: at most one log line per second per event (and per drop reason, through
//! [`LogLimit`]); the line that is written says how many events the silent ones stood for.

use std::sync::atomic::{AtomicU64, Ordering};

/// A notable event other than a drop. The string form ([`Event::as_str`]) is the counter
/// label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// `accept(2)` failed on a TCP listener (typically EMFILE); the accept loop backs off.
    AcceptFailed,
    /// An inbound connection or HTTP request was refused at once: a connection limit was
    /// reached (`limits.max_connections`, `[[listen]] max_connections`,
    /// `limits.max_http_requests`).
    ConnectionRefused,
    /// At `limits.max_connections`, the TCP connection that had gone longest without a
    /// complete line or frame (at least `limits.evict_idle_after`) was closed to let a new
    /// one in (`src/ingest/slots.rs`).
    ConnectionEvictedIdle,
    /// The connections' memory budget (`limits.connection_memory_bytes`) was spent and a
    /// reading connection needed more: the connection holding budget that had gone longest
    /// without a complete line or frame (at least `limits.evict_idle_after`) was closed.
    ConnectionEvictedMemory,
    /// A destination could not be connected to; the sender retries with backoff.
    DestinationConnectFailed,
    /// A destination connection failed (write error, closed or reset by the peer); the
    /// sender reconnects, and what it may have lost is ledgered as `unconfirmed`.
    DestinationConnectionLost,
    /// A remote-write request failed in a way worth retrying (network error, timeout, an
    /// HTTP 5xx or 429 answer); the sender sends it again with backoff.
    DestinationRequestFailed,
    /// Aggregates could not be encoded for a destination.
    EncodeFailed,
    /// The loss ledger could not be written; its entries are kept in memory and retried.
    LedgerWriteFailed,
    /// The quarantine file could not be written.
    QuarantineWriteFailed,
    /// A reload (SIGHUP) failed; the running configuration stays.
    ReloadFailed,
    /// An HTTP server (ingest or admin) stopped with an error.
    ListenerStopped,
    /// A worker stopped making progress, so the systemd watchdog was not pinged.
    WatchdogWithheld,
    /// An outgoing name could not be parsed as a tagged series for `normalize_tags`
    /// (carbon's TAG_RELAY_NORMALIZED); it was sent unchanged, as carbon does.
    TagNormalizeFailed,
    /// A destination's `emit_delay` hold was full (`queue_datapoints` aggregates): the
    /// aggregate was sent at once, so a later correction of it may be refused.
    HoldFull,
}

impl Event {
    /// Every event, in counter order.
    pub(crate) const ALL: [Event; 15] = [
        Event::AcceptFailed,
        Event::ConnectionRefused,
        Event::ConnectionEvictedIdle,
        Event::ConnectionEvictedMemory,
        Event::DestinationConnectFailed,
        Event::DestinationConnectionLost,
        Event::DestinationRequestFailed,
        Event::EncodeFailed,
        Event::LedgerWriteFailed,
        Event::QuarantineWriteFailed,
        Event::ReloadFailed,
        Event::ListenerStopped,
        Event::WatchdogWithheld,
        Event::TagNormalizeFailed,
        Event::HoldFull,
    ];

    /// The snake_case label used for counters and logs, e.g. `accept_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::AcceptFailed => "accept_failed",
            Event::ConnectionRefused => "connection_refused",
            Event::ConnectionEvictedIdle => "connection_evicted_idle",
            Event::ConnectionEvictedMemory => "connection_evicted_memory",
            Event::DestinationConnectFailed => "destination_connect_failed",
            Event::DestinationConnectionLost => "destination_connection_lost",
            Event::DestinationRequestFailed => "destination_request_failed",
            Event::EncodeFailed => "encode_failed",
            Event::LedgerWriteFailed => "ledger_write_failed",
            Event::QuarantineWriteFailed => "quarantine_write_failed",
            Event::ReloadFailed => "reload_failed",
            Event::ListenerStopped => "listener_stopped",
            Event::WatchdogWithheld => "watchdog_withheld",
            Event::TagNormalizeFailed => "tag_normalize_failed",
            Event::HoldFull => "hold_full",
        }
    }

    /// Whether it is logged as an error (else as a warning).
    fn is_error(self) -> bool {
        matches!(
            self,
            Event::EncodeFailed
                | Event::LedgerWriteFailed
                | Event::QuarantineWriteFailed
                | Event::ReloadFailed
                | Event::ListenerStopped
                | Event::WatchdogWithheld
        )
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter with a once-a-second log limiter.
pub struct LogLimit {
    /// Events counted.
    count: AtomicU64,
    /// Unix second of the last log line.
    last_log_sec: AtomicU64,
    /// Events since the last log line, reported in the next one.
    unlogged: AtomicU64,
}

impl LogLimit {
    pub(crate) const fn new() -> Self {
        LogLimit {
            count: AtomicU64::new(0),
            last_log_sec: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts `n` events; returns `Some(events since the last line)` when this one may
    /// log (at most once per second).
    pub(crate) fn count(&self, n: u64) -> Option<u64> {
        self.count.fetch_add(n, Ordering::Relaxed);
        let now = crate::time::now_secs();
        let last = self.last_log_sec.load(Ordering::Relaxed);
        if now > last
            && self
                .last_log_sec
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(n, Ordering::Relaxed);
            None
        }
    }

    /// Events counted so far.
    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One counter and log limiter per [`Event`].
pub struct Events {
    slots: [LogLimit; Event::ALL.len()],
}

impl Default for Events {
    fn default() -> Self {
        Events {
            slots: [const { LogLimit::new() }; Event::ALL.len()],
        }
    }
}

impl Events {
    /// Counts one `event` and logs it (rate-limited) with `detail`, which names what it
    /// concerns (the peer, destination or file, and the error).
    pub fn emit(&self, event: Event, detail: &dyn std::fmt::Display) {
        let Some(earlier) = self.slots[event as usize].count(1) else {
            return;
        };
        if event.is_error() {
            tracing::error!(
                event = event.as_str(),
                suppressed_since_last_log = earlier,
                "{detail}"
            );
        } else {
            tracing::warn!(
                event = event.as_str(),
                suppressed_since_last_log = earlier,
                "{detail}"
            );
        }
    }

    /// How many times `event` happened.
    pub fn count(&self, event: Event) -> u64 {
        self.slots[event as usize].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexed_in_order() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        let mut labels: Vec<_> = Event::ALL.iter().map(|e| e.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Event::ALL.len());
    }

    #[test]
    fn every_event_counts_and_only_the_first_in_a_second_logs() {
        let events = Events::default();
        events.emit(Event::AcceptFailed, &"first");
        events.emit(Event::AcceptFailed, &"second");
        assert_eq!(events.count(Event::AcceptFailed), 2);
        assert_eq!(events.count(Event::ReloadFailed), 0);
        let limit = LogLimit::new();
        assert_eq!(limit.count(1), Some(0), "the first event logs");
        assert_eq!(limit.count(3), None, "within the same second: silent");
        assert_eq!(limit.get(), 4);
    }
}
