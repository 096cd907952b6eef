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

/// File name inside the journal directory.
pub const FILE: &str = "clean-shutdown";

/// Writes the mark (through a temporary file and a rename, fsynced).
pub fn write(dir: &Path, next_seq: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(
        &mut &f,
        format!("aggd-clean-shutdown 1 {next_seq}\n").as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::rename(tmp, dir.join(FILE))
}

/// Reads and removes the mark: the sequence number below which the previous run
/// delivered everything, if it shut down cleanly.
pub fn take(dir: &Path) -> Option<u64> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    text?
        .trim()
        .strip_prefix("aggd-clean-shutdown 1 ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_is_taken_once() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        write(&dir, 42).unwrap();
        assert_eq!(take(&dir), Some(42));
        assert_eq!(take(&dir), None);
        std::fs::write(dir.join(FILE), "garbage").unwrap();
        assert_eq!(take(&dir), None);
    }
}
