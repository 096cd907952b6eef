//! The journal's hand-over to the publisher lanes: each record the writer wrote, with the
//! datapoints its connection routed, goes to its lane, within [`FOLLOWED_BYTES`]; beyond
//! that the lanes read the record back from the journal file.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cluster::ClusterStats;
use crate::ingest::Routed;
use crate::journal::follow::{Attachment, Follower};

/// Most bytes of handed-over records (work items at
/// [`crate::ingest::slots::WORK_ITEM_BYTES`] each, plus [`FOLLOWED_RECORD_BYTES`] a
/// record) waiting for the publisher lanes; beyond it the writer's hand-over is refused
/// and the lanes read those records from the journal file. Counted in the memory bound.
pub const FOLLOWED_BYTES: u64 = 64 << 20;

/// What a handed-over record costs besides its work items.
const FOLLOWED_RECORD_BYTES: u64 = 128;

/// A record the journal's writer handed over with its routed datapoints.
pub(super) struct Followed {
    pub(super) seq: u64,
    /// Its bytes in the segment (for the publish lag).
    pub(super) bytes: u64,
    pub(super) routed: Routed,
    /// What it is charged against [`FOLLOWED_BYTES`].
    pub(super) charge: u64,
}

/// The journal's follower: hands each written record to its lane, within
/// [`FOLLOWED_BYTES`].
pub(crate) struct HandOver {
    pub(super) tx: Vec<crossbeam_channel::Sender<Followed>>,
    /// Its `followed_bytes`.
    pub(super) lag: Arc<crate::cluster::PublishLag>,
    /// Counts the records refused.
    pub(super) stats: Arc<ClusterStats>,
}

impl HandOver {
    /// A hand-over to the lanes behind `tx` (one per lane, in lane order), counting in
    /// `stats`.
    pub(super) fn new(
        tx: Vec<crossbeam_channel::Sender<Followed>>,
        stats: &Arc<ClusterStats>,
    ) -> HandOver {
        HandOver {
            tx,
            lag: Arc::clone(&stats.publish),
            stats: Arc::clone(stats),
        }
    }
}

impl Follower for HandOver {
    fn written(&self, seq: u64, bytes: u64, attachment: Attachment) {
        let Ok(routed) = attachment.downcast::<Routed>() else {
            return;
        };
        let items = routed.items.len();
        let charge = FOLLOWED_RECORD_BYTES + (items * crate::ingest::slots::WORK_ITEM_BYTES) as u64;
        let queued = &self.lag.followed_bytes;
        if queued.fetch_add(charge, Ordering::Relaxed) + charge > FOLLOWED_BYTES {
            // The lanes are behind: they read this record from the file.
            queued.fetch_sub(charge, Ordering::Relaxed);
            self.stats.records_read_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let f = Followed {
            seq,
            bytes,
            routed: *routed,
            charge,
        };
        let lane = (seq % self.tx.len() as u64) as usize;
        if let Err(e) = self.tx[lane].send(f) {
            queued.fetch_sub(e.0.charge, Ordering::Relaxed);
        }
    }
}
