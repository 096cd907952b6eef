//! Following the journal without reading it back: the writer hands each record it wrote,
//! in sequence order, to a [`Follower`] (cluster mode's publisher), with what the
//! submitter attached to it ([`super::NewRecord::attachment`]: the connection's routed
//! datapoints), so the follower need not decode the record again.
//!
//! A record is offered before its submitter's ticket resolves.
//!
//! The file stays the source of truth. A follower may refuse a record (it is full); the
//! writer hands over nothing it could not write; and records written before a follower
//! came, or without an attachment, are never handed over. [`FollowSlot::offered_below`]
//! says how far the writer has gone: a record below it that the follower did not take
//! must be read from the file ([`super::tail::Tail`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a submitter attaches to a record for the follower; opaque to the journal.
pub type Attachment = Box<dyn std::any::Any + Send>;

/// Takes records as the writer writes them.
pub trait Follower: Send + Sync {
    /// Record `seq`, just written, of `bytes` bytes in the segment (header included),
    /// with its attachment. Called by the writer thread in sequence order; must not block
    /// (a follower that is full drops the record and reads it from the file later).
    fn written(&self, seq: u64, bytes: u64, attachment: Attachment);
}

/// The writer's side of following: the follower, if any, and how far records were
/// offered to it.
#[derive(Default)]
pub struct FollowSlot {
    follower: Mutex<Option<Arc<dyn Follower>>>,
    /// Every record below it was written and, if it had an attachment and a follower was
    /// set, offered to the follower.
    offered_below: AtomicU64,
}

impl FollowSlot {
    /// A slot whose records below `next_seq` (written by an earlier run) were never
    /// offered.
    pub(super) fn new(next_seq: u64) -> FollowSlot {
        FollowSlot {
            follower: Mutex::new(None),
            offered_below: AtomicU64::new(next_seq),
        }
    }

    /// Sets the follower: records written from now on are offered to it.
    pub(super) fn set(&self, f: Arc<dyn Follower>) {
        *self
            .follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(f);
    }

    /// The writer wrote records `first..first + n` (`records` gives each one's bytes and
    /// attachment, in order): offers the attachments in order, then moves
    /// [`FollowSlot::offered_below`] past them.
    pub(super) fn written(
        &self,
        first: u64,
        records: impl ExactSizeIterator<Item = (u64, Option<Attachment>)>,
    ) {
        let n = records.len() as u64;
        let f = self
            .follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(f) = f {
            for (i, (bytes, a)) in records.enumerate() {
                if let Some(a) = a {
                    f.written(first + i as u64, bytes, a);
                }
            }
        }
        self.offered_below.store(first + n, Ordering::Release);
    }

    /// Every record below this was written and offered if it could be: a follower that
    /// has not taken one of them reads it from the file. Load it before looking at what
    /// the follower took.
    pub fn offered_below(&self) -> u64 {
        self.offered_below.load(Ordering::Acquire)
    }

    /// [`FollowSlot::offered_below`] itself, to wait on with
    /// [`super::queue::Appended::wait`] (the writer notifies after moving it).
    pub fn offered(&self) -> &AtomicU64 {
        &self.offered_below
    }
}
