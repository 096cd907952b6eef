//! The clean-shutdown mark: the file `clean-shutdown` in the journal directory, one line
//! `aggd-clean-shutdown 1 <next_seq>`.
//!
//! A shutdown writes it last, and only when every destination took and acknowledged the
//! final emission (nothing left queued, nothing unconfirmed): every record below
//! `next_seq` then reached a bucket whose aggregate was delivered. The next start takes
//! (reads and removes) it, and rebuilds those records' buckets as already delivered, so
//! they are not re-sent unless new data arrives for them. Without the mark (a crash, a
//! destination that did not take everything), every open interval is re-sent.

use std::path::Path;

use super::io::{JournalIo, read_if_exists, write_durably};
use super::recovery::at;

/// File name inside the journal directory.
pub const FILE: &str = "clean-shutdown";

/// Writes the mark through `io`, durably ([`write_durably`]: a temporary file, fsynced,
/// renamed, the directory fsynced).
///
/// Errors: a write, fsync or rename failed (the error names the file).
pub fn write(io: &dyn JournalIo, dir: &Path, next_seq: u64) -> std::io::Result<()> {
    write_durably(
        io,
        &dir.join(FILE),
        format!("aggd-clean-shutdown 1 {next_seq}\n").as_bytes(),
    )
}

/// Reads and removes (through `io`) the mark: the sequence number below which the
/// previous run delivered everything, if it shut down cleanly.
///
/// The removal is made durable (the directory is fsynced) before the mark is used: a mark
/// that came back after a power loss would claim records of a later run as delivered
/// once sequence numbers it covered were written again. A mark that cannot be removed
/// durably is not used (every open interval is re-sent, which is always safe).
pub fn take(io: &dyn JournalIo, dir: &Path) -> Option<u64> {
    let path = dir.join(FILE);
    let text = read_if_exists(io, &path).ok().flatten()?;
    if let Err(e) = io
        .remove_file(&path)
        .and_then(|()| io.sync_dir(dir))
        .map_err(|e| at(&path, e))
    {
        tracing::warn!(error = %e, "journal: cannot remove the clean-shutdown mark; not using it");
        return None;
    }
    String::from_utf8(text)
        .ok()?
        .trim()
        .strip_prefix("aggd-clean-shutdown 1 ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::journal::io::{Faults, FaultyIo, OsIo};

    #[test]
    fn mark_is_taken_once() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        write(&OsIo, &dir, 42).unwrap();
        assert_eq!(take(&OsIo, &dir), Some(42));
        assert_eq!(take(&OsIo, &dir), None);
        std::fs::write(dir.join(FILE), "garbage").unwrap();
        assert_eq!(take(&OsIo, &dir), None);
    }

    #[test]
    fn a_mark_that_cannot_be_written_names_its_file_and_leaves_none() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        for faults in [
            Faults {
                read_only: true,
                ..Faults::default()
            },
            Faults {
                fail_fsync: true,
                ..Faults::default()
            },
        ] {
            let io = FaultyIo::new();
            io.set(faults);
            let e = write(&io, &dir, 7).unwrap_err().to_string();
            assert!(e.contains("clean-shutdown.tmp"), "{e}");
            assert!(!dir.join(FILE).exists(), "no mark after a failed write");
            assert_eq!(take(&OsIo, &dir), None);
        }
    }
}
