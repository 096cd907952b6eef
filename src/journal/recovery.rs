//! Opening a journal directory: the lock that keeps a second daemon out, and recovery of
//! the previous run's segments (torn tails, missing indexes, segment files that hold no
//! record). The layout is in the [module docs](super).
//!
//! The directory is locked (`flock` on `lock`, which holds the owner's PID) for the
//! journal's life, so a second daemon on the same directory refuses to start instead of
//! recovering the first one's live segment.

use std::fs::File;
use std::path::Path;

use super::io::JournalIo;
use super::segment::{self, Index, MAGIC};

/// The lock file inside the journal directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// What opening the journal found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpenReport {
    /// Torn-tail bytes truncated from the last segment.
    pub truncated_bytes: u64,
    /// Corrupt bytes skipped (left in place) in the last segment.
    pub skipped_bytes: u64,
    /// Sealed segments whose missing or damaged index was rebuilt.
    pub indexes_rebuilt: usize,
    /// Segment files holding no record (left by a quiet run or a failed rotation), removed.
    pub empty_removed: usize,
    /// The next sequence number.
    pub next_seq: u64,
}

/// Adds the path to an IO error's message.
pub(super) fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Seals the previous run's last segment (truncating a torn tail), rebuilds missing
/// indexes, removes segment files that hold no record, and returns the next sequence
/// number: above every record present and every segment's first, and at least `floor`
/// (a sequence number handed out before that a power loss may have taken from the
/// segments, e.g. cluster mode's published watermark).
///
/// A segment without a single record (a quiet run, or a rotation that failed before its
/// header was written) is removed: it holds nothing, and keeping it would make its own
/// first sequence number the next one, whose file then exists. A file that holds bytes but
/// no decodable record is renamed `<name>.corrupt`, out of the way but kept.
pub(super) fn recover(dir: &Path, io: &dyn JournalIo, floor: u64) -> std::io::Result<OpenReport> {
    let mut report = OpenReport {
        next_seq: floor,
        ..OpenReport::default()
    };
    let segs = segment::list_with(io, dir).map_err(|e| at(dir, e))?;
    for (i, (first, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let len = io.file_len(path).map_err(|e| at(path, e))?;
        let trusted = Index::read(io, dir, *first).filter(|x| x.bytes == len);
        let idx = match (last, trusted) {
            (false, Some(idx)) => idx,
            _ => {
                let bytes = io.read(path).map_err(|e| at(path, e))?;
                let (mut idx, skipped, torn) = Index::scan(*first, &bytes);
                if idx.records == 0 {
                    let _ = io.remove_file(&segment::index_path(dir, *first));
                    if bytes.len() > MAGIC.len() && !bytes.starts_with(MAGIC) {
                        let to = path.with_extension("seg.corrupt");
                        io.rename(path, &to).map_err(|e| at(path, e))?;
                        tracing::warn!(segment = %path.display(), "journal: no record in a non-empty segment; renamed .corrupt");
                    } else {
                        io.remove_file(path).map_err(|e| at(path, e))?;
                    }
                    report.empty_removed += 1;
                    report.next_seq = report.next_seq.max(*first);
                    continue;
                }
                if last {
                    report.skipped_bytes += skipped;
                    if let Some((offset, len)) = torn {
                        let f = io.open_write(path).map_err(|e| at(path, e))?;
                        f.set_len(offset.max(MAGIC.len() as u64))
                            .map_err(|e| at(path, e))?;
                        f.sync_data().map_err(|e| at(path, e))?;
                        report.truncated_bytes += len;
                        idx.bytes = offset.max(MAGIC.len() as u64);
                        tracing::warn!(segment = %path.display(), offset, bytes = len, "journal: truncated torn tail");
                    }
                } else {
                    report.indexes_rebuilt += 1;
                }
                idx.write(dir, io).map_err(|e| at(dir, e))?;
                idx
            }
        };
        report.next_seq = report.next_seq.max(idx.last_seq + 1);
    }
    Ok(report)
}

/// Takes the directory's lock, or says who holds it (`WouldBlock`, naming the PID).
///
/// Errors: the lock file cannot be created or opened (naming it), or another process
/// holds the lock.
pub(crate) fn lock(dir: &Path) -> std::io::Result<File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| at(&path, e))?;
    if let Err(e) = f.try_lock() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "journal directory {} is in use by another aggd (pid {}): {e}",
                dir.display(),
                if pid.is_empty() { "unknown" } else { pid }
            ),
        ));
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    Ok(f)
}
