//! The loss ledger: `ledger.jsonl` next to the journal segments.
//!
//! Every drop event ([`DropReason`]) is merged, per reason, into an in-memory entry holding
//! the affected time window (datapoint timestamps, or receive time where a datapoint has no
//! usable timestamp) and a count; once a second the entries are appended to the file and
//! fsynced. `aggd replay --lost` reads the unreplayed entries, recomputes their windows
//! from the journal, and appends `replayed` lines.
//!
//! Lines (JSON, one object per line):
//! - `{"id":7,"at":1700000123,"reason":"destination_full","from":1700000040.0,"to":1700000100.0,"count":250}`
//!   (`at` = Unix seconds written; `from`/`to` = Unix seconds, inclusive);
//! - `{"replayed":7,"at":1700000500}`.
//!
//! A torn last line (crash while appending) is ignored when reading.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::drops::DropReason;

/// File name of the ledger inside the journal directory.
pub const FILE: &str = "ledger.jsonl";

/// An inclusive time window in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Start, inclusive.
    pub from: f64,
    /// End, inclusive.
    pub to: f64,
}

impl Window {
    /// A window holding one instant.
    pub fn at(t: f64) -> Window {
        Window { from: t, to: t }
    }

    /// The smallest window holding both.
    pub fn union(self, o: Window) -> Window {
        Window {
            from: self.from.min(o.from),
            to: self.to.max(o.to),
        }
    }
}

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The ledger of one journal directory.
pub struct Ledger {
    path: PathBuf,
    pending: Mutex<BTreeMap<&'static str, (Window, u64)>>,
    next_id: AtomicU64,
}

/// Entries and replay marks read from a ledger file.
pub fn read(dir: &Path) -> std::io::Result<(Vec<Entry>, HashSet<u64>)> {
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    let mut replayed = HashSet::new();
    for line in text.lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(line) {
            entries.push(e);
        } else if let Ok(r) = serde_json::from_str::<Replayed>(line) {
            replayed.insert(r.replayed);
        }
    }
    Ok((entries, replayed))
}

/// Appends `replayed` marks for `ids`, fsynced.
pub fn mark_replayed(dir: &Path, ids: &[u64]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FILE))?;
    let at = unix_now();
    let mut buf = String::new();
    for id in ids {
        buf.push_str(&serde_json::to_string(&Replayed { replayed: *id, at }).unwrap_or_default());
        buf.push('\n');
    }
    f.write_all(buf.as_bytes())?;
    f.sync_data()
}

impl Ledger {
    /// Opens the ledger in `dir`, continuing its ids. A torn last line (no newline) is
    /// ended first so the next entry starts on its own line.
    pub fn open(dir: &Path) -> std::io::Result<Ledger> {
        let path = dir.join(FILE);
        if let Ok(bytes) = std::fs::read(&path)
            && bytes.last().is_some_and(|b| *b != b'\n')
        {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)?
                .write_all(b"\n")?;
        }
        let (entries, _) = read(dir)?;
        Ok(Ledger {
            path: dir.join(FILE),
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(entries.iter().map(|e| e.id + 1).max().unwrap_or(1)),
        })
    }

    /// Merges `n` events of `reason` over `window` into the pending entry.
    pub fn record(&self, reason: DropReason, n: u64, window: Window) {
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry(reason.as_str()).or_insert((window, 0));
            e.0 = e.0.union(window);
            e.1 += n;
        }
    }

    /// Appends the pending entries and fsyncs.
    pub fn flush(&self) -> std::io::Result<()> {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let at = unix_now();
        let mut buf = String::new();
        for (reason, (w, count)) in pending {
            let e = Entry {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                at,
                reason: reason.to_string(),
                from: w.from,
                to: w.to,
                count,
            };
            buf.push_str(&serde_json::to_string(&e).unwrap_or_default());
            buf.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(buf.as_bytes())?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_merge_flush_and_mark() {
        let dir = std::env::temp_dir().join(format!("aggd-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l = Ledger::open(&dir).unwrap();
        l.record(DropReason::DestinationFull, 3, Window::at(120.0));
        l.record(
            DropReason::DestinationFull,
            2,
            Window {
                from: 60.0,
                to: 90.0,
            },
        );
        l.record(DropReason::TooOld, 1, Window::at(10.0));
        l.flush().unwrap();
        l.flush().unwrap(); // nothing pending: no new lines
        let (entries, replayed) = read(&dir).unwrap();
        assert_eq!(entries.len(), 2);
        let full = entries
            .iter()
            .find(|e| e.reason == "destination_full")
            .unwrap();
        assert_eq!((full.from, full.to, full.count), (60.0, 120.0, 5));
        assert!(replayed.is_empty());
        mark_replayed(&dir, &[full.id]).unwrap();
        // A torn last line is ignored; ids continue after reopening.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .unwrap()
            .write_all(b"{\"id\":9")
            .unwrap();
        let (entries, replayed) = read(&dir).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(replayed.contains(&full.id));
        let l2 = Ledger::open(&dir).unwrap();
        assert_eq!(
            l2.next_id.load(Ordering::Relaxed),
            entries.iter().map(|e| e.id).max().unwrap() + 1
        );
        l2.record(DropReason::Panic, 1, Window::at(5.0));
        l2.flush().unwrap();
        let (entries, _) = read(&dir).unwrap();
        assert_eq!(entries.len(), 3, "the entry after a torn line is readable");
    }
}
