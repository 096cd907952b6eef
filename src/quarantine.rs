//! The quarantine file: rejected datapoints, one per line, for inspection.
//!
//! Line format: `<unix time> <reason> <path> <value> <timestamp>`. Datapoints rejected by
//! the tenant gate and datapoints whose processing panicked are written here (besides
//! being counted, logged and ledgered). Writing is off the hot path: callers `try_send`
//! to a bounded queue drained by one thread, so a flood of rejections costs at most the
//! formatting; what does not fit in the queue is counted in
//! [`Quarantine::overflowed`]. The file is bounded: at `max_bytes` it is renamed to
//! `<file>.1` (replacing the previous one) and a new file starts.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Sender, bounded};

use crate::drops::DropReason;

/// Handle on the quarantine writer.
pub struct Quarantine {
    tx: Sender<String>,
    overflowed: AtomicU64,
}

impl Quarantine {
    /// Starts the writer for `file`, rotating at `max_bytes`.
    pub fn open(file: PathBuf, max_bytes: u64) -> std::io::Result<Quarantine> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
        let mut size = out.metadata()?.len();
        let (tx, rx) = bounded::<String>(65536);
        std::thread::Builder::new()
            .name("aggd-quarantine".into())
            .spawn(move || {
                for line in rx {
                    if size + line.len() as u64 > max_bytes {
                        let _ = out.flush();
                        let _ = std::fs::rename(&file, file.with_extension("1"));
                        match std::fs::File::create(&file) {
                            Ok(f) => out = f,
                            Err(e) => {
                                tracing::error!(error = %e, "quarantine file");
                                continue;
                            }
                        }
                        size = 0;
                    }
                    if out.write_all(line.as_bytes()).is_ok() {
                        size += line.len() as u64;
                    }
                }
            })?;
        Ok(Quarantine {
            tx,
            overflowed: AtomicU64::new(0),
        })
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
        let dir = std::env::temp_dir().join(format!("aggd-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("quarantine.log");
        let q = Quarantine::open(file.clone(), 200).unwrap();
        for i in 0..10 {
            q.record(DropReason::TenantDeleted, &format!("acme.m{i}"), 1.5, 60.0);
        }
        drop(q); // closes the queue; the writer drains it
        std::thread::sleep(std::time::Duration::from_millis(200));
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
