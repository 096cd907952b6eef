//! The quarantine file: rejected datapoints, one per line, for inspection.
//!
//! Line format: `<unix time> <reason> <path> <value> <timestamp>`. Datapoints rejected by
//! the tenant gate and datapoints whose processing panicked are written here (besides
//! being counted, logged and ledgered). Writing is off the hot path: callers `try_send`
//! to a bounded queue drained by one thread, so a flood of rejections costs at most the
//! formatting; what does not fit in the queue is counted in
//! [`Quarantine::overflowed`]. The file is bounded: at `max_bytes` it is renamed to
//! `<file>.1` (replacing the previous one) and a new file starts. [`Quarantine::close`]
//! writes what is queued and joins the writer thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::events::{Event, Events};
use crate::reason::DropReason;

/// Handle on the quarantine writer.
pub struct Quarantine {
    tx: Sender<String>,
    overflowed: AtomicU64,
    /// Tells the writer to drain the queue and exit (dropped by [`Quarantine::close`]).
    stop: Mutex<Option<Sender<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Appends `line` to the file, rotating it at `max_bytes`.
struct Writer {
    /// Where a failure to write is counted and logged.
    events: Arc<Events>,
    file: PathBuf,
    out: std::fs::File,
    size: u64,
    max_bytes: u64,
}

impl Writer {
    fn write(&mut self, line: &str) {
        if self.size + line.len() as u64 > self.max_bytes {
            let _ = self.out.flush();
            let _ = std::fs::rename(&self.file, self.file.with_extension("1"));
            match std::fs::File::create(&self.file) {
                Ok(f) => self.out = f,
                Err(e) => {
                    let file = self.file.display();
                    self.events.emit(
                        Event::QuarantineWriteFailed,
                        &format_args!("quarantine file {file}: cannot create: {e}"),
                    );
                    return;
                }
            }
            self.size = 0;
        }
        match self.out.write_all(line.as_bytes()) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => {
                let file = self.file.display();
                self.events.emit(
                    Event::QuarantineWriteFailed,
                    &format_args!("quarantine file {file}: cannot write: {e}"),
                );
            }
        }
    }

    /// Writes lines until `stop` is dropped (or every sender is gone), then what is left.
    fn run(mut self, rx: Receiver<String>, stop: Receiver<()>) {
        loop {
            crossbeam_channel::select! {
                recv(rx) -> line => match line {
                    Ok(line) => self.write(&line),
                    Err(_) => break,
                },
                recv(stop) -> _ => break,
            }
        }
        for line in rx.try_iter() {
            self.write(&line);
        }
        let _ = self.out.flush();
    }
}

impl Quarantine {
    /// Starts the writer for `file`, rotating at `max_bytes`; write failures are counted
    /// and logged as [`Event::QuarantineWriteFailed`] on `events`.
    ///
    /// Errors: the file or its directory cannot be created or opened (the error names
    /// the file), or the thread cannot be spawned.
    pub fn open(file: PathBuf, max_bytes: u64, events: Arc<Events>) -> std::io::Result<Quarantine> {
        let named = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("quarantine file {}: {e}", file.display()))
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .map_err(named)?;
        let size = out.metadata().map_err(named)?.len();
        let (tx, rx) = bounded::<String>(65536);
        let (stop, stopped) = bounded::<()>(0);
        let writer = Writer {
            events,
            file,
            out,
            size,
            max_bytes,
        };
        let handle = std::thread::Builder::new()
            .name("aggd-quarantine".into())
            .spawn(move || writer.run(rx, stopped))?;
        Ok(Quarantine {
            tx,
            overflowed: AtomicU64::new(0),
            stop: Mutex::new(Some(stop)),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Writes what is queued and stops the writer thread; later records are counted as
    /// overflowed. Idempotent.
    pub fn close(&self) {
        self.stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Queues one rejected datapoint; never blocks.
    pub fn record(&self, reason: DropReason, path: &str, value: f64, timestamp: f64) {
        let now = crate::time::now_secs();
        let line = format!("{now} {reason} {path} {value} {timestamp}\n");
        if self.tx.try_send(line).is_err() {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines that did not fit in the queue.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_rotates() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let file = dir.join("quarantine.log");
        let q = Quarantine::open(file.clone(), 200, Arc::default()).unwrap();
        for i in 0..10 {
            q.record(DropReason::TenantDeleted, &format!("acme.m{i}"), 1.5, 60.0);
        }
        q.close(); // the writer drains the queue and exits
        q.record(DropReason::TenantDeleted, "after.close", 1.0, 1.0);
        assert_eq!(
            q.overflowed(),
            1,
            "a record after close is counted, not written"
        );
        let cur = std::fs::read_to_string(&file).unwrap();
        let old = std::fs::read_to_string(file.with_extension("1")).unwrap();
        assert!(cur.len() <= 200 && old.len() <= 200);
        let all = format!("{old}{cur}");
        assert!(
            all.lines()
                .all(|l| l.contains(" tenant_deleted acme.m") && l.ends_with(" 1.5 60"))
        );
        assert!(cur.contains("acme.m9"));
    }
}
