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

use super::io::JournalIo;
use super::recovery::at;

/// File name inside the journal directory.
pub const FILE: &str = "clean-shutdown";

/// Writes the mark through `io` (a temporary file, fsynced, then a rename).
///
/// Errors: a write, fsync or rename failed (the error names the file).
pub fn write(io: &dyn JournalIo, dir: &Path, next_seq: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let _ = io.remove_file(&tmp);
    let mut f = io.create_new(&tmp).map_err(|e| at(&tmp, e))?;
    f.write_all(format!("aggd-clean-shutdown 1 {next_seq}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| at(&tmp, e))?;
    drop(f);
    io.rename(&tmp, &dir.join(FILE)).map_err(|e| at(&tmp, e))
}

/// Reads and removes (through `io`) the mark: the sequence number below which the
/// previous run delivered everything, if it shut down cleanly.
pub fn take(io: &dyn JournalIo, dir: &Path) -> Option<u64> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok();
    let _ = io.remove_file(&path);
    text?
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
