//! The raw-input journal: every accepted frame, as received, before its datapoints reach a
//! worker.
//!
//! # On-disk layout
//!
//! A directory of segment files `<first_seq>.seg` (20-digit zero-padded decimal), each with
//! an index file `<first_seq>.idx` once sealed. All integers little-endian.
//!
//! ```text
//! segment  = magic record*
//! magic    = "AGGDJNL1"                                  8 bytes
//! record   = body_len:u32 crc32c:u32 body                crc32c (Castagnoli) of body
//! body     = seq:u64 received_us:i64 listener:u16 kind:u8
//!            peer_len:u8 tenant_len:u8 peer tenant [verdict] payload
//! kind     = (0x80 when a verdict follows the tenant) |
//!            1 plaintext/tcp (a run of complete lines) | 2 plaintext/udp (a datagram)
//!          | 3 pickle/tcp (one frame body, without its length prefix)
//!          | 4 http/plaintext | 5 http/pickle | 6 http/json (an HTTP body, gzip decoded;
//!            `tenant` is the API key's tenant, whose namespace its paths go under)
//!
//! verdict  = len:u32 (reason:u8 gap:uvarint count:uvarint)*   the datapoints refused
//!            at receive time, as runs of decode items (see [`record::Verdict`])
//! ```
//!
//! `body_len` counts the body only (21 fixed bytes + peer + tenant + payload) and is at most
//! 64 MiB; `received_us` is Unix microseconds; `peer` is `ip:port` text; `tenant` is empty
//! when tenants are off; `payload` is the bytes exactly as received, so a decoder fixed
//! later can re-read old input. A record without a verdict had every datapoint accepted
//! (and records written before verdicts existed read as such).
//!
//! The index file is text: a header line `aggd-journal-index 1`, a summary line
//! `first_seq last_seq records min_us max_us bytes`, one `received_us offset` line about
//! every 256 KiB of records, and a final `crc32c <hex>` line over everything before it. It
//! is derived: a missing or damaged index is rebuilt by scanning the segment.
//!
//! # Invariants
//! - Sequence numbers increase by one per record across segments.
//! - Only the newest segment is ever appended to; at start-up the previous run's newest
//!   segment is scanned, a torn tail is truncated at the last good record (counted), and a
//!   new segment is started.
//! - A corrupt record in the middle of a segment is skipped to the next record that
//!   decodes, during reads (counted); it is never rewritten.
//! - Retention deletes whole sealed segments only, oldest first.
//! - A segment exceeds `segment_bytes` by at most one writer batch (4 MiB).

pub mod clean;
pub mod follow;
pub mod handle;
pub mod io;
pub mod published;
mod queue;
pub mod reader;
pub mod record;
pub mod recovery;
mod retention;
pub mod segment;
pub mod tail;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use handle::{Journal, Ticket};
pub use queue::{Appended, JournalStats, NewRecord};
pub use record::Verdict;
pub use recovery::OpenReport;

/// When the writer calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Never (the OS writes back; a crash of the machine can lose recent records).
    Never,
    /// At most once per interval (default 1 s).
    Interval(Duration),
    /// Before acknowledging each batch (group commit).
    Always,
}

impl std::fmt::Display for Fsync {
    /// As written in the config: `never`, `always`, or `interval 1s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Never => f.write_str("never"),
            Fsync::Always => f.write_str("always"),
            Fsync::Interval(d) => write!(f, "interval {}", humantime::format_duration(*d)),
        }
    }
}

/// What happens when the journal cannot take a record (its queue is full, the disk is full
/// or below `min_free_disk`, or a write fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Keep ingesting without journaling; the window is ledgered as `unjournaled`.
    #[default]
    Ingest,
    /// Push back: TCP connections wait until the journal writes again (UDP datagrams wait
    /// too, so the kernel drops what overflows its buffer).
    Backpressure,
}

impl std::fmt::Display for OnFull {
    /// As written in the config: `ingest` or `backpressure`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFull::Ingest => "ingest",
            OnFull::Backpressure => "backpressure",
        })
    }
}

/// Validated `[journal]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalConfig {
    /// Directory of segments, indexes and the loss ledger.
    pub dir: PathBuf,
    /// fsync policy.
    pub fsync: Fsync,
    /// Segment size at which a new segment starts.
    pub segment_bytes: u64,
    /// Segment age at which a new segment starts.
    pub segment_max_age: Duration,
    /// Total size of all segments kept.
    pub max_bytes: u64,
    /// Age of the newest record in a sealed segment beyond which it is deleted.
    pub max_age: Duration,
    /// Free disk space below which sealed segments are deleted and writing stops (0 = off).
    pub min_free_disk: u64,
    /// Policy when the journal cannot take a record.
    pub on_full: OnFull,
    /// Records queued for the writer before `on_full` applies.
    pub queue_records: usize,
    /// The loss ledger file (default `<dir>/ledger.jsonl`).
    pub ledger: PathBuf,
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod power_tests;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
