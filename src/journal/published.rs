//! The journal's publish state: what cluster mode's publisher persisted beside the journal
//! in `<dir>/cluster.state`, the journal's identity (incarnation) and the watermark below
//! which every record was published and acknowledged. The journal owns the file and its
//! durability (written through [`JournalIo`] with write, fsync and rename); the publisher
//! ([`crate::cluster`]) owns what the numbers mean.
//!
//! Format (text): `aggd-cluster-state 1`, then `incarnation <16 hex digits>`,
//! `lanes <n ≥ 1>`, `watermark <seq>`, one per line.

use std::path::Path;

use super::io::{JournalIo, write_durably};

/// The file beside the journal that holds the node's journal identity and watermark.
pub const STATE_FILE: &str = "cluster.state";

/// The journal identity and persisted watermark of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Random, made with the journal directory's state file.
    pub incarnation: u64,
    /// Publisher lanes of this incarnation (fixed: lane numbers depend on it).
    pub lanes: u64,
    /// Records below it were published and acknowledged.
    pub watermark: u64,
}

/// Reads `<dir>/cluster.state`; without one (a new or lost journal) starts a new
/// incarnation of `lanes` lanes at `next_seq` (what an earlier standalone run journaled is
/// not published).
///
/// Errors: the file exists but cannot be read or parsed, or a new one cannot be written.
pub fn load_state(
    io: &dyn JournalIo,
    dir: &Path,
    next_seq: u64,
    lanes: u64,
) -> std::io::Result<State> {
    let path = dir.join(STATE_FILE);
    match io.read(&path) {
        Ok(text) => parse_state(&String::from_utf8_lossy(&text)).ok_or_else(|| {
            std::io::Error::other(format!(
                "{}: not an aggd cluster state file",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 8];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))?;
            let s = State {
                incarnation: u64::from_le_bytes(b),
                lanes: lanes.max(1),
                watermark: next_seq,
            };
            save_state(io, dir, s)?;
            Ok(s)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    }
}

fn parse_state(text: &str) -> Option<State> {
    let mut lines = text.lines();
    (lines.next()? == "aggd-cluster-state 1").then_some(())?;
    let inc = lines.next()?.strip_prefix("incarnation ")?;
    let lanes = lines.next()?.strip_prefix("lanes ")?;
    let wm = lines.next()?.strip_prefix("watermark ")?;
    Some(State {
        incarnation: u64::from_str_radix(inc, 16).ok()?,
        lanes: lanes.parse().ok().filter(|l| *l >= 1)?,
        watermark: wm.parse().ok()?,
    })
}

/// Writes the state file durably ([`write_durably`]: a temporary file, fsynced, renamed
/// over it, the directory fsynced), so a crash or a power loss leaves one whole and a
/// watermark once saved is never lost.
///
/// Errors: a write, fsync or rename failed (the error names the file).
pub fn save_state(io: &dyn JournalIo, dir: &Path, s: State) -> std::io::Result<()> {
    write_durably(
        io,
        &dir.join(STATE_FILE),
        format!(
            "aggd-cluster-state 1\nincarnation {:016x}\nlanes {}\nwatermark {}\n",
            s.incarnation, s.lanes, s.watermark
        )
        .as_bytes(),
    )
}

/// The watermark in `<dir>/cluster.state`, or 0 without a readable one: the journal
/// numbers its records from at least it, so a power loss that took records below it
/// never makes sequence numbers that were published be used again (their message ids
/// would be deduplicated away, and the publisher would skip them).
pub fn saved_watermark(io: &dyn JournalIo, dir: &Path) -> u64 {
    io.read(&dir.join(STATE_FILE))
        .ok()
        .and_then(|t| parse_state(&String::from_utf8_lossy(&t)))
        .map_or(0, |s| s.watermark)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::io::OsIo;

    #[test]
    fn state_round_trips_and_a_new_journal_gets_a_new_incarnation() {
        let d = tempfile::tempdir().unwrap();
        let a = load_state(&OsIo, d.path(), 42, 2).unwrap();
        assert_eq!((a.watermark, a.lanes), (42, 2));
        // The lane count is the incarnation's, whatever the config says now.
        assert_eq!(load_state(&OsIo, d.path(), 0, 4).unwrap(), a);
        save_state(&OsIo, d.path(), State { watermark: 99, ..a }).unwrap();
        assert_eq!(load_state(&OsIo, d.path(), 0, 1).unwrap().watermark, 99);
        assert_eq!(saved_watermark(&OsIo, d.path()), 99);
        let e = tempfile::tempdir().unwrap();
        assert_ne!(
            load_state(&OsIo, e.path(), 0, 2).unwrap().incarnation,
            a.incarnation
        );
        std::fs::write(d.path().join(STATE_FILE), "junk").unwrap();
        assert!(load_state(&OsIo, d.path(), 0, 2).is_err());
        assert_eq!(saved_watermark(&OsIo, d.path()), 0);
    }
}
