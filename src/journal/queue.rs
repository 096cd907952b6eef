//! What the journal's handle, its writer thread and its readers share: the records
//! queued for the writer ([`NewRecord`], [`Msg`]), when to stop and give up
//! ([`Control`]), the counters ([`JournalStats`]) and the readers' wake-up ([`Appended`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::io::JournalFile;
use crate::datapoint::Kind;

/// A record to append.
#[derive(Debug)]
pub struct NewRecord {
    /// Receive time, Unix µs.
    pub received_us: i64,
    /// Listener index in the config.
    pub listener: u16,
    /// Input kind.
    pub kind: Kind,
    /// Sender.
    pub peer: SocketAddr,
    /// Tenant, if tenants are on.
    pub tenant: Option<Arc<str>>,
    /// The bytes as received.
    pub payload: Bytes,
    /// The datapoints the connection refused (see [`super::Verdict`]).
    pub verdict: super::Verdict,
    /// Handed with the record to the journal's follower once written, if one follows
    /// ([`super::follow`]); not written.
    pub attachment: Option<super::follow::Attachment>,
}

/// Journal counters.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written (records, including headers).
    pub bytes: AtomicU64,
    /// fsync calls.
    pub fsyncs: AtomicU64,
    /// fsync calls that failed (the data may not be on disk; `always` reports the batch
    /// as unjournaled).
    pub fsync_errors: AtomicU64,
    /// Batch writes (or rotations) that failed; each is retried or reported.
    pub write_errors: AtomicU64,
    /// Records that could not be journaled (queue full or write failure).
    pub unjournaled: AtomicU64,
    /// Bytes of torn tail truncated at start-up.
    pub truncated_bytes: AtomicU64,
    /// Corrupt bytes skipped in segments scanned at start-up.
    pub skipped_bytes: AtomicU64,
    /// Sealed segments deleted by retention.
    pub segments_deleted: AtomicU64,
    /// Sequence number of the last record written.
    pub last_seq: AtomicU64,
    /// The sequence number the next record will get.
    pub next_seq: AtomicU64,
    /// Wakes readers of the journal's tail (cluster mode's publisher) when records are
    /// written.
    pub appended: Appended,
}

/// A wake-up for readers that follow the journal's tail: [`Appended::wait`] returns once
/// [`JournalStats::next_seq`] moved past what the reader saw, or at its timeout, instead
/// of the reader polling on a sleep. A mutex and a condition variable: the writer takes
/// the mutex once per written batch, after publishing `next_seq`, so a reader that saw
/// the old value under the mutex is already waiting when the writer notifies.
#[derive(Debug, Default)]
pub struct Appended {
    lock: std::sync::Mutex<()>,
    written: std::sync::Condvar,
}

impl Appended {
    /// Wakes every waiting reader; called after `next_seq` was stored.
    pub(crate) fn notify(&self) {
        drop(
            self.lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.written.notify_all();
    }

    /// Waits until `next_seq` is no longer `seen`, for at most `timeout`.
    pub(crate) fn wait(&self, next_seq: &AtomicU64, seen: u64, timeout: std::time::Duration) {
        let g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next_seq.load(Ordering::Acquire) != seen {
            return;
        }
        let _ = self.written.wait_timeout(g, timeout);
    }
}

pub(super) enum Msg {
    Record(NewRecord, oneshot::Sender<bool>),
    /// Wakes the writer to look at [`Control::stop`].
    Wake,
}

/// Shared between the handle and the writer thread: when to stop and when to give up.
#[derive(Default)]
pub(super) struct Control {
    /// [`Journal::close`] was called: write what is queued, then exit.
    pub(super) stop: AtomicBool,
    /// Past this instant a write that fails is reported at once instead of retried, and
    /// [`Journal::submit`] stops waiting for queue space (set by
    /// [`Journal::begin_shutdown`]).
    pub(super) deadline: Mutex<Option<Instant>>,
    /// Woken each time the writer takes records off its queue, and at shutdown: submitters
    /// waiting for room wait on it.
    pub(super) room: tokio::sync::Notify,
}

impl Control {
    /// Whether waiting for the disk must end now: shutdown's deadline has passed, or the
    /// journal is closing without one.
    pub(super) fn give_up(&self) -> bool {
        let deadline = *self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match deadline {
            Some(d) => Instant::now() >= d,
            None => self.stop.load(Ordering::Relaxed),
        }
    }
}

pub(super) type Active = Arc<Mutex<Option<Box<dyn JournalFile>>>>;
