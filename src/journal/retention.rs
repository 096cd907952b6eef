//! Retention: sealed segments are deleted, oldest first, while the journal is over
//! `max_bytes`, while the oldest one's newest record is older than `max_age`, or while the
//! disk has less than `min_free_disk` free. The active segment is never deleted. Runs after
//! each rotation, at least once a minute, and when the disk runs low.

use std::sync::atomic::{AtomicU64, Ordering};

use super::JournalConfig;
use super::io::JournalIo;
use super::segment::{self, Index};
use crate::time::now_us;

/// Deletes sealed segments of the journal `cfg` describes (the active one starts at
/// `active_first_seq`) through `io`, counting them in `deleted` (the journal's
/// `segments_deleted`).
pub(super) fn apply(
    cfg: &JournalConfig,
    io: &dyn JournalIo,
    active_first_seq: u64,
    deleted: &AtomicU64,
) {
    let Ok(segs) = segment::list_with(io, &cfg.dir) else {
        return;
    };
    let mut total: u64 = segs.iter().filter_map(|(_, p)| io.file_len(p).ok()).sum();
    let oldest_kept = now_us() - cfg.max_age.as_micros() as i64;
    for (first, path) in segs {
        if first == active_first_seq {
            break; // the active segment is never deleted
        }
        let idx = Index::read(io, &cfg.dir, first);
        let old = idx.as_ref().is_some_and(|i| i.max_us < oldest_kept);
        let low_disk = cfg.min_free_disk > 0
            && io
                .available_space(&cfg.dir)
                .is_ok_and(|a| a < cfg.min_free_disk);
        if !(total > cfg.max_bytes || old || low_disk) {
            break;
        }
        let len = io.file_len(&path).unwrap_or(0);
        if io.remove_file(&path).is_ok() {
            let _ = io.remove_file(&segment::index_path(&cfg.dir, first));
            total = total.saturating_sub(len);
            deleted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(segment = %path.display(), "journal: retention deleted segment");
        }
    }
}
