//! Why aggd did not aggregate or deliver something: the reason of every drop. Part of the
//! ground floor: imports nothing of aggd.
//!
//! A [`DropReason`] is a small `Copy` enum, so codecs return it directly as their error
//! type; [`crate::drops`] counts, logs and ledgers it.

/// Why a line, frame or datapoint was not aggregated or not delivered.
///
/// The string form ([`DropReason::as_str`]) is the counter label and the log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A plaintext line without exactly three fields, or whose value or timestamp is not a
    /// number.
    ParseError,
    /// A plaintext line or a pickled metric path that is not valid UTF-8.
    BadUtf8,
    /// A plaintext line longer than `limits.max_line_bytes`.
    LineTooLong,
    /// A metric path longer than `limits.max_path_bytes`, or empty.
    BadPath,
    /// A timestamp that is infinite or NaN (carbon drops the connection; aggd drops the line).
    BadTimestamp,
    /// A NaN value (carbon drops these silently; aggd counts them).
    NanValue,
    /// A pickle frame whose declared length exceeds `limits.max_pickle_frame_bytes`.
    FrameTooLarge,
    /// A pickle frame that could not be decoded within the decoder's limits, or whose top
    /// level is not a list or tuple.
    BadFrame,
    /// One element of a pickle frame that is not `(path, (timestamp, value))`.
    BadElement,
    /// A datapoint for an interval older than `max_intervals` intervals before now.
    TooOld,
    /// A datapoint for an interval more than `max_intervals` intervals after now.
    TooNew,
    /// A bucket already holds `aggregation.max_values_per_bucket` values for a percentile
    /// method.
    BucketFull,
    /// A worker queue was full and the input (UDP) cannot wait.
    QueueFull,
    /// A destination's queue was full.
    DestinationFull,
    /// A destination could not be reached before shutdown finished.
    DestinationDown,
    /// Aggregates written into a destination connection that then failed (or was not
    /// acknowledged by shutdown's deadline), within the destination's
    /// `unconfirmed_window`: carbon has no acknowledgements, so they may be lost.
    Unconfirmed,
    /// A destination refused a batch as invalid and will refuse it again: remote write's
    /// HTTP 4xx answers other than 429 (e.g. Prometheus's 400 for a duplicate or
    /// out-of-order sample). The batch is dropped, not retried.
    DestinationRejected,
    /// A changed value of an interval a destination with `late_changes = "ledger"` was
    /// already sent: not sent, so the store (one that refuses changed samples) keeps the
    /// earlier value.
    LateChange,
    /// Processing a batch panicked; the batch was dropped and the worker went on.
    Panic,
    /// A frame was processed without being journaled (the journal's queue was full or it
    /// could not write, with `on_full = "ingest"`). Not a datapoint loss, but replay cannot
    /// cover the window. Counted in frames.
    Unjournaled,
    /// The tenant is deleted in the registry.
    TenantDeleted,
    /// The tenant is blocked in the registry.
    TenantBlocked,
    /// The tenant is not in the registry and `tenants.unknown = "reject"`.
    TenantUnknown,
    /// The tenant is over its datapoints or bytes per second.
    RateLimited,
    /// A new metric path of a tenant already at its `max_series`.
    SeriesLimit,
    /// The metric path matches the blacklist (carbon's `blacklistMatches`). A filter, not
    /// a loss: counted, but neither ledgered nor quarantined.
    Blacklist,
    /// A whitelist is set and the metric path matches none of it (carbon's
    /// `whitelistRejects`). A filter, not a loss, like [`DropReason::Blacklist`].
    Whitelist,
}

impl DropReason {
    /// Every reason, in counter order.
    pub(crate) const ALL: [DropReason; 27] = [
        DropReason::ParseError,
        DropReason::BadUtf8,
        DropReason::LineTooLong,
        DropReason::BadPath,
        DropReason::BadTimestamp,
        DropReason::NanValue,
        DropReason::FrameTooLarge,
        DropReason::BadFrame,
        DropReason::BadElement,
        DropReason::TooOld,
        DropReason::TooNew,
        DropReason::BucketFull,
        DropReason::QueueFull,
        DropReason::DestinationFull,
        DropReason::DestinationDown,
        DropReason::Unconfirmed,
        DropReason::DestinationRejected,
        DropReason::LateChange,
        DropReason::Panic,
        DropReason::Unjournaled,
        DropReason::TenantDeleted,
        DropReason::TenantBlocked,
        DropReason::TenantUnknown,
        DropReason::RateLimited,
        DropReason::SeriesLimit,
        DropReason::Blacklist,
        DropReason::Whitelist,
    ];

    /// The snake_case label used for counters and logs, e.g. `too_old`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ParseError => "parse_error",
            DropReason::BadUtf8 => "bad_utf8",
            DropReason::LineTooLong => "line_too_long",
            DropReason::BadPath => "bad_path",
            DropReason::BadTimestamp => "bad_timestamp",
            DropReason::NanValue => "nan_value",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::BadFrame => "bad_frame",
            DropReason::BadElement => "bad_element",
            DropReason::TooOld => "too_old",
            DropReason::TooNew => "too_new",
            DropReason::BucketFull => "bucket_full",
            DropReason::QueueFull => "queue_full",
            DropReason::DestinationFull => "destination_full",
            DropReason::DestinationDown => "destination_down",
            DropReason::Unconfirmed => "unconfirmed",
            DropReason::DestinationRejected => "destination_rejected",
            DropReason::LateChange => "late_change",
            DropReason::Panic => "panic",
            DropReason::Unjournaled => "unjournaled",
            DropReason::TenantDeleted => "tenant_deleted",
            DropReason::TenantBlocked => "tenant_blocked",
            DropReason::TenantUnknown => "tenant_unknown",
            DropReason::RateLimited => "rate_limited",
            DropReason::SeriesLimit => "series_limit",
            DropReason::Blacklist => "blacklist",
            DropReason::Whitelist => "whitelist",
        }
    }

    /// The reason whose label ([`DropReason::as_str`]) is `label`.
    pub fn from_label(label: &str) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.as_str() == label)
    }

    /// Whether it is a drop: every reason but [`DropReason::Unjournaled`], a frame whose
    /// datapoints were aggregated and sent, only not journaled (counted on its own,
    /// `aggd_unjournaled_total`, and ledgered: replay cannot cover that window).
    pub fn is_drop(self) -> bool {
        self != DropReason::Unjournaled
    }

    /// Whether it is a configured filter (the white/blacklists) rather than a loss: such
    /// drops are counted and logged but not ledgered (replay filters them the same way)
    /// nor quarantined.
    pub fn is_filter(self) -> bool {
        matches!(self, DropReason::Blacklist | DropReason::Whitelist)
    }

    /// Position in [`DropReason::ALL`] (counter slots are indexed by it).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_label(r.as_str()), Some(r));
        }
        assert_eq!(DropReason::from_label("nope"), None);
    }
}
