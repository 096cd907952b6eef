//! The loss ledger: `ledger.jsonl` next to the journal segments, or wherever
//! `journal.ledger` puts it (another filesystem keeps it writable when the journal's disk
//! is full or read-only).
//!
//! Every drop event (a [`crate::reason::DropReason`], by its label) is merged, per reason, into an in-memory entry holding
//! the affected time window (datapoint timestamps, or receive time where a datapoint has no
//! usable timestamp) and a count; a few times a second the entries are appended to the file
//! and fsynced. `aggd replay --lost` reads the unreplayed entries, recomputes their windows
//! from the journal, and appends `replayed` lines.
//!
//! Entries that cannot be written (a full or read-only disk) are kept in memory and written
//! again at the next flush, with their ids, so nothing is lost while the daemon lives. At
//! most [`MAX_UNWRITTEN`] are kept: past that, a new entry is merged into the newest kept
//! entry of its reason (its window widens, so a replay still covers it) and counted in
//! [`Ledger::merged`].
//!
//! Lines (JSON, one object per line):
//! - `{"id":7,"at":1700000123,"reason":"destination_full","from":1700000040.0,"to":1700000100.0,"count":250}`
//!   (`at` = Unix seconds written; `from`/`to` = Unix seconds, inclusive);
//! - `{"replayed":7,"at":1700000500}`.
//!
//! A torn last line (crash or full disk while appending) is ignored when reading, and a
//! line whose id was read before (rewritten after a partly failed append) is read once.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::time::Window;

use crate::journal::io::{JournalIo, OsIo, parent_dir, read_if_exists};

/// File name of the ledger inside the journal directory (the default place).
pub const FILE: &str = "ledger.jsonl";

/// Most entries kept in memory while the ledger cannot be written.
pub const MAX_UNWRITTEN: usize = 4096;

/// One ledger entry as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Entry id, increasing.
    pub id: u64,
    /// Unix seconds when written.
    pub at: u64,
    /// The drop reason's label.
    pub reason: String,
    /// Window start (Unix s).
    pub from: f64,
    /// Window end (Unix s).
    pub to: f64,
    /// Events merged into this entry.
    pub count: u64,
}

#[derive(Serialize, Deserialize)]
struct Replayed {
    replayed: u64,
    at: u64,
}

/// The ledger file of one journal.
pub struct Ledger {
    path: PathBuf,
    io: Arc<dyn JournalIo>,
    state: Mutex<State>,
    next_id: AtomicU64,
    merged: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Drops since the last flush, merged per reason.
    pending: BTreeMap<&'static str, (Window, u64)>,
    /// Entries (with ids) that a flush could not write yet, oldest first.
    unwritten: Vec<Entry>,
    /// A failed append may have left a partial line: start the next one on a new line.
    torn: bool,
    /// The directory was fsynced after the file was first written, so its name is durable.
    named: bool,
}

/// Entries and replay marks read from the ledger file `path` (missing = empty).
///
/// Errors: the file exists but cannot be read.
pub fn read(path: &Path) -> std::io::Result<(Vec<Entry>, HashSet<u64>)> {
    read_with(&OsIo, path)
}

/// Like [`read`], reading through `io`. Bytes that are not UTF-8 (a torn or damaged line)
/// are read as U+FFFD, so only the lines they are in are lost.
pub(crate) fn read_with(
    io: &dyn JournalIo,
    path: &Path,
) -> std::io::Result<(Vec<Entry>, HashSet<u64>)> {
    let bytes = read_if_exists(io, path)?.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut entries = Vec::new();
    let mut ids = HashSet::new();
    let mut replayed = HashSet::new();
    for line in text.lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(line) {
            if ids.insert(e.id) {
                entries.push(e);
            }
        } else if let Ok(r) = serde_json::from_str::<Replayed>(line) {
            replayed.insert(r.replayed);
        }
    }
    Ok((entries, replayed))
}

/// Appends `replayed` marks for `ids` to the ledger file `path`, fsynced.
pub fn mark_replayed(path: &Path, ids: &[u64]) -> std::io::Result<()> {
    let at = crate::time::now_secs();
    let mut buf = String::from("\n"); // ends a torn last line, if any
    for id in ids {
        buf.push_str(&serde_json::to_string(&Replayed { replayed: *id, at }).unwrap_or_default());
        buf.push('\n');
    }
    let mut f = OsIo.open_append(path)?;
    f.write_all(buf.as_bytes())?;
    f.sync_data()
}

impl Ledger {
    /// Opens the ledger file `path` (created on the first entry, with its directory now),
    /// continuing its ids.
    ///
    /// Errors (naming the path): its directory cannot be created, or the file exists but
    /// cannot be read.
    pub fn open(path: &Path) -> std::io::Result<Ledger> {
        Ledger::open_with(path, Arc::new(OsIo))
    }

    /// Like [`Ledger::open`], writing through `io`.
    pub(crate) fn open_with(path: &Path, io: Arc<dyn JournalIo>) -> std::io::Result<Ledger> {
        let named = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("ledger {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            io.create_dir_all(dir).map_err(named)?;
        }
        let (entries, _) = read_with(&*io, path).map_err(named)?;
        // A torn last line (no newline) is ended before the next entry is appended.
        let torn = read_if_exists(&*io, path)
            .map_err(named)?
            .is_some_and(|b| b.last().is_some_and(|c| *c != b'\n'));
        Ok(Ledger {
            path: path.to_path_buf(),
            io,
            state: Mutex::new(State {
                torn,
                ..State::default()
            }),
            next_id: AtomicU64::new(entries.iter().map(|e| e.id + 1).max().unwrap_or(1)),
            merged: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Merges `n` events of the drop reason labelled `reason` (e.g. `too_old`) over `window`
    /// into the pending entry.
    pub fn record(&self, reason: &'static str, n: u64, window: Window) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = s.pending.entry(reason).or_insert((window, 0));
        e.0 = e.0.union(window);
        e.1 += n;
    }

    /// Entries waiting to be written (a flush failed).
    pub(crate) fn unwritten(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwritten
            .len()
    }

    /// Entries merged into an older one because [`MAX_UNWRITTEN`] were waiting.
    pub fn merged(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Flushes that failed.
    pub(crate) fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Appends the pending entries (and any a failed flush kept) and fsyncs. On error
    /// every entry is kept for the next flush.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = crate::time::now_secs();
        for (reason, (w, count)) in std::mem::take(&mut s.pending) {
            if s.unwritten.len() >= MAX_UNWRITTEN
                && let Some(e) = s.unwritten.iter_mut().rev().find(|e| e.reason == reason)
            {
                e.from = e.from.min(w.from);
                e.to = e.to.max(w.to);
                e.count += count;
                self.merged.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.unwritten.push(Entry {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                at,
                reason: reason.to_string(),
                from: w.from,
                to: w.to,
                count,
            });
        }
        if s.unwritten.is_empty() {
            return Ok(());
        }
        let written = self.io.open_append(&self.path).and_then(|mut f| {
            let mut buf = String::new();
            if s.torn {
                buf.push('\n');
            }
            for e in &s.unwritten {
                buf.push_str(&serde_json::to_string(e).unwrap_or_default());
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())?;
            f.sync_data()?;
            if !s.named {
                // A new file's name is durable only once its directory is synced.
                self.io.sync_dir(parent_dir(&self.path))?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                s.unwritten.clear();
                s.torn = false;
                s.named = true;
                Ok(())
            }
            Err(e) => {
                s.torn = true;
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                Err(std::io::Error::new(
                    e.kind(),
                    format!("ledger {}: {e}", self.path.display()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::io::{Faults, FaultyIo};
    use crate::reason::DropReason;
    use std::io::Write as _;

    #[test]
    fn entries_merge_flush_and_mark() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let file = dir.join(FILE);
        let l = Ledger::open(&file).unwrap();
        l.record(DropReason::DestinationFull.as_str(), 3, Window::at(120.0));
        l.record(
            DropReason::DestinationFull.as_str(),
            2,
            Window {
                from: 60.0,
                to: 90.0,
            },
        );
        l.record(DropReason::TooOld.as_str(), 1, Window::at(10.0));
        l.flush().unwrap();
        l.flush().unwrap(); // nothing pending: no new lines
        let (entries, replayed) = read(&file).unwrap();
        assert_eq!(entries.len(), 2);
        let full = entries
            .iter()
            .find(|e| e.reason == "destination_full")
            .unwrap();
        assert_eq!((full.from, full.to, full.count), (60.0, 120.0, 5));
        assert!(replayed.is_empty());
        mark_replayed(&file, &[full.id]).unwrap();
        // A torn last line is ignored; ids continue after reopening.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"id\":9")
            .unwrap();
        let (entries, replayed) = read(&file).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(replayed.contains(&full.id));
        let l2 = Ledger::open(&file).unwrap();
        assert_eq!(
            l2.next_id.load(Ordering::Relaxed),
            entries.iter().map(|e| e.id).max().unwrap() + 1
        );
        l2.record(DropReason::Panic.as_str(), 1, Window::at(5.0));
        l2.flush().unwrap();
        let (entries, _) = read(&file).unwrap();
        assert_eq!(entries.len(), 3, "the entry after a torn line is readable");
    }

    #[test]
    fn entries_that_cannot_be_written_are_kept_and_written_later() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let file = dir.join(FILE);
        let io = FaultyIo::new();
        let l = Ledger::open_with(&file, Arc::new(io.clone())).unwrap();
        io.set(Faults {
            read_only: true,
            ..Faults::default()
        });
        for i in 0..99 {
            l.record(
                DropReason::Unjournaled.as_str(),
                1,
                Window::at(f64::from(i)),
            );
            assert!(l.flush().is_err());
        }
        assert_eq!(l.unwritten(), 99, "one entry per failed flush, all kept");
        assert_eq!(read(&file).unwrap().0.len(), 0);
        // A full disk writes part of the batch, then fails: the torn line is ignored and
        // the next flush writes every entry again, each read once.
        io.set(Faults {
            space_left: Some(300),
            ..Faults::default()
        });
        assert!(l.flush().is_err());
        io.set(Faults::default());
        l.flush().unwrap();
        let (entries, _) = read(&file).unwrap();
        assert_eq!(entries.len(), 99);
        assert_eq!(entries.iter().map(|e| e.count).sum::<u64>(), 99);
        assert_eq!(l.unwritten(), 0);
        assert_eq!(l.write_errors(), 100);
    }

    #[test]
    fn unwritten_entries_are_bounded_by_merging() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let file = dir.join(FILE);
        let io = FaultyIo::new();
        io.set(Faults {
            eio: true,
            ..Faults::default()
        });
        let l = Ledger::open_with(&file, Arc::new(io.clone())).unwrap();
        // Every reason once per flush, until the bound is reached.
        let mut events = 0;
        let mut t = 0.0;
        while l.unwritten() < MAX_UNWRITTEN {
            for r in DropReason::ALL {
                l.record(r.as_str(), 2, Window::at(t));
                events += 2;
            }
            t += 1.0;
            let _ = l.flush();
        }
        let kept = l.unwritten();
        assert!(kept < MAX_UNWRITTEN + DropReason::ALL.len(), "{kept}");
        let merged = l.merged();
        for _ in 0..10 {
            l.record(DropReason::QueueFull.as_str(), 2, Window::at(t));
            events += 2;
            let _ = l.flush();
        }
        assert_eq!(l.unwritten(), kept, "past the bound, entries merge");
        assert_eq!(l.merged() - merged, 10);
        io.set(Faults::default());
        l.flush().unwrap();
        let (entries, _) = read(&file).unwrap();
        assert_eq!(entries.iter().map(|e| e.count).sum::<u64>(), events);
        let widened = entries
            .iter()
            .rev()
            .find(|e| e.reason == "queue_full")
            .unwrap();
        assert_eq!(widened.to, t, "the merged window covers the newest drop");
    }
}
