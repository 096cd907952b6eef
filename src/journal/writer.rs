//! The journal writer: one dedicated thread that appends records with group commit.
//!
//! Listeners [`Journal::submit`] a record and get a [`Ticket`]; they parse the payload while
//! the writer works, and hand datapoints to workers only after [`Ticket::wait`] says the
//! record was written (to the page cache; with `fsync = "always"`, to disk). Every record
//! that could not be written is reported, so the caller ledgers the unjournaled window.
//!
//! The writer drains its queue into one buffer (up to 4 MiB), writes it with one
//! `write_all`, fsyncs per policy (`always`: before acknowledging; `interval`: at most once
//! per interval; `never`), rotates segments by size and age, and applies retention (total
//! size, age, free disk) to sealed segments only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use tokio::sync::oneshot;

use super::record::{self, Kind, Meta};
use super::segment::{self, Index, MAGIC};
use super::{JournalConfig, OnFull};

/// Largest batch the writer encodes before writing.
const BATCH_BYTES: usize = 4 << 20;

/// A record to append.
#[derive(Debug)]
pub struct NewRecord {
    /// Receive time, Unix µs.
    pub received_us: i64,
    /// Listener index in the config.
    pub listener: u16,
    /// Input kind.
    pub kind: Kind,
    /// Sender.
    pub peer: SocketAddr,
    /// Tenant, if tenants are on.
    pub tenant: Option<Arc<str>>,
    /// The bytes as received.
    pub payload: Bytes,
}

/// Journal counters.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written (records, including headers).
    pub bytes: AtomicU64,
    /// fsync calls.
    pub fsyncs: AtomicU64,
    /// Records that could not be journaled (queue full or write failure).
    pub unjournaled: AtomicU64,
    /// Bytes of torn tail truncated at start-up.
    pub truncated_bytes: AtomicU64,
    /// Corrupt bytes skipped in segments scanned at start-up.
    pub skipped_bytes: AtomicU64,
    /// Sealed segments deleted by retention.
    pub segments_deleted: AtomicU64,
    /// Sequence number of the last record written.
    pub last_seq: AtomicU64,
}

enum Msg {
    Record(NewRecord, oneshot::Sender<bool>),
    Stop,
}

/// Handle on the journal; shared by all listeners.
pub struct Journal {
    tx: Sender<Msg>,
    on_full: OnFull,
    stats: Arc<JournalStats>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    fsyncer: std::sync::Mutex<Option<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)>>,
    dir: PathBuf,
}

/// The `fsync = "interval"` thread: every interval, fsyncs the active segment through its
/// own file handle, so the writer never waits for the disk.
fn spawn_fsyncer(
    active: Arc<std::sync::Mutex<Option<File>>>,
    every: Duration,
    stats: Arc<JournalStats>,
) -> std::io::Result<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let t = std::thread::Builder::new()
        .name("aggd-journal-fsync".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(every.min(Duration::from_millis(100)));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let f = active
                    .lock()
                    .ok()
                    .and_then(|a| a.as_ref().and_then(|f| f.try_clone().ok()));
                if let Some(f) = f
                    && f.sync_data().is_ok()
                {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
    Ok((stop, t))
}

/// The outcome of a submission, to await before handing datapoints on.
pub enum Ticket {
    /// Queued; resolves when written.
    Queued(oneshot::Receiver<bool>),
    /// Not journaled (queue full with `on_full = "ingest"`).
    Skipped,
}

impl Ticket {
    /// Whether the record was journaled.
    pub async fn wait(self) -> bool {
        match self {
            Ticket::Queued(rx) => rx.await.unwrap_or(false),
            Ticket::Skipped => false,
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What opening the journal found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpenReport {
    /// Torn-tail bytes truncated from the last segment.
    pub truncated_bytes: u64,
    /// Corrupt bytes skipped (left in place) in the last segment.
    pub skipped_bytes: u64,
    /// Sealed segments whose missing or damaged index was rebuilt.
    pub indexes_rebuilt: usize,
    /// The next sequence number.
    pub next_seq: u64,
}

/// Seals the previous run's last segment (truncating a torn tail), rebuilds missing
/// indexes, and returns the next sequence number.
fn recover(dir: &Path) -> std::io::Result<OpenReport> {
    let mut report = OpenReport::default();
    let segs = segment::list(dir)?;
    for (i, (first, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let idx = match (last, Index::read(dir, *first)) {
            (false, Some(idx)) => idx,
            _ => {
                let bytes = std::fs::read(path)?;
                let (mut idx, skipped, torn) = Index::scan(*first, &bytes);
                if last {
                    report.skipped_bytes += skipped;
                    if let Some((offset, len)) = torn {
                        let f = OpenOptions::new().write(true).open(path)?;
                        f.set_len(offset.max(MAGIC.len() as u64))?;
                        f.sync_all()?;
                        report.truncated_bytes += len;
                        idx.bytes = offset.max(MAGIC.len() as u64);
                        tracing::warn!(segment = %path.display(), offset, bytes = len, "journal: truncated torn tail");
                    }
                } else {
                    report.indexes_rebuilt += 1;
                }
                idx.write(dir)?;
                idx
            }
        };
        report.next_seq = report
            .next_seq
            .max(idx.last_seq.wrapping_add(1).max(*first));
    }
    Ok(report)
}

pub(super) struct Writer {
    cfg: JournalConfig,
    file: File,
    /// A handle on the active segment for the interval fsync thread (which must not hold
    /// up the writer: an inline fsync of a second's data stalled every connection).
    active: Arc<std::sync::Mutex<Option<File>>>,
    index: Index,
    opened: Instant,
    next_seq: u64,
    stats: Arc<JournalStats>,
    dirty: bool,
    last_space_check: Instant,
    space_low: bool,
    last_retention: Instant,
    buf: Vec<u8>,
}

impl Writer {
    fn open_segment(dir: &Path, first_seq: u64) -> std::io::Result<(File, Index)> {
        let path = segment::segment_path(dir, first_seq);
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        f.write_all(MAGIC)?;
        Ok((f, Index::new(first_seq)))
    }

    pub(super) fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.index.write(&self.cfg.dir)?;
        let (f, idx) = Writer::open_segment(&self.cfg.dir, self.next_seq)?;
        if let Ok(mut a) = self.active.lock() {
            *a = f.try_clone().ok();
        }
        self.file = f;
        self.index = idx;
        self.opened = Instant::now();
        self.dirty = false;
        self.retention();
        Ok(())
    }

    pub(super) fn retention(&mut self) {
        self.last_retention = Instant::now();
        let Ok(segs) = segment::list(&self.cfg.dir) else {
            return;
        };
        let mut total: u64 = segs
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let oldest_kept = now_us() - self.cfg.max_age.as_micros() as i64;
        for (first, path) in segs {
            if first == self.index.first_seq {
                break; // the active segment is never deleted
            }
            let idx = Index::read(&self.cfg.dir, first);
            let old = idx.as_ref().is_some_and(|i| i.max_us < oldest_kept);
            let low_disk = self.cfg.min_free_disk > 0
                && fs4::available_space(&self.cfg.dir).is_ok_and(|a| a < self.cfg.min_free_disk);
            if !(total > self.cfg.max_bytes || old || low_disk) {
                break;
            }
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(segment::index_path(&self.cfg.dir, first));
                total = total.saturating_sub(len);
                self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(segment = %path.display(), "journal: retention deleted segment");
            }
        }
    }

    /// Whether the disk is below `min_free_disk` even after retention (checked ≤ 1/s).
    fn disk_low(&mut self) -> bool {
        if self.cfg.min_free_disk == 0 || self.last_space_check.elapsed() < Duration::from_secs(1) {
            return self.space_low;
        }
        self.last_space_check = Instant::now();
        let low = |d: &Path, min| fs4::available_space(d).is_ok_and(|a| a < min);
        if low(&self.cfg.dir, self.cfg.min_free_disk) {
            self.retention();
        }
        self.space_low = low(&self.cfg.dir, self.cfg.min_free_disk);
        self.space_low
    }

    /// Encodes and writes `batch` with one `write_all`; on error truncates the segment back
    /// to where it was, so a retry cannot write a record twice. Rotation happens only
    /// between batches, so a segment may exceed `segment_bytes` by up to one batch.
    pub(super) fn write_batch(&mut self, batch: &[NewRecord]) -> std::io::Result<()> {
        if self.disk_low() {
            return Err(std::io::Error::other(format!(
                "less than min_free_disk ({} bytes) free",
                self.cfg.min_free_disk
            )));
        }
        let batch_bytes: u64 = batch.iter().map(|r| r.payload.len() as u64 + 64).sum();
        let full = self.index.bytes + batch_bytes > self.cfg.segment_bytes;
        let aged = self.opened.elapsed() >= self.cfg.segment_max_age;
        if self.index.records > 0 && (full || aged) {
            self.rotate()?;
        }
        let start_index = self.index.clone();
        let start_seq = self.next_seq;
        self.buf.clear();
        for r in batch {
            let meta = Meta {
                seq: self.next_seq,
                received_us: r.received_us,
                listener: r.listener,
                kind: r.kind,
                peer: r.peer.to_string(),
                tenant: r.tenant.as_deref().unwrap_or("").to_string(),
            };
            let offset = self.index.bytes;
            let before = self.buf.len();
            record::encode(&meta, &r.payload, &mut self.buf);
            self.index.add(
                meta.seq,
                meta.received_us,
                offset,
                (self.buf.len() - before) as u64,
            );
            self.next_seq += 1;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            let _ = self.file.set_len(start_index.bytes);
            self.index = start_index;
            self.next_seq = start_seq;
            return Err(e);
        }
        self.stats
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.stats
            .last_seq
            .store(self.next_seq.wrapping_sub(1), Ordering::Relaxed);
        self.dirty = true;
        Ok(())
    }

    fn fsync(&mut self) {
        if self.dirty && self.file.sync_data().is_ok() {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        let mut stop = false;
        while !stop {
            let tick = match self.cfg.fsync {
                super::Fsync::Interval(d) => d.min(Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            match rx.recv_timeout(tick) {
                Ok(Msg::Record(r, done)) => {
                    let mut bytes = r.payload.len();
                    records.push(r);
                    waiters.push(done);
                    while bytes < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(Msg::Record(r, done)) => {
                                bytes += r.payload.len();
                                records.push(r);
                                waiters.push(done);
                            }
                            Ok(Msg::Stop) => {
                                stop = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if !records.is_empty() {
                let ok = loop {
                    match self.write_batch(&records) {
                        Ok(()) => break true,
                        Err(e) => {
                            tracing::warn!(error = %e, records = records.len(), "journal write failed");
                            if self.cfg.on_full == OnFull::Ingest || stop {
                                break false;
                            }
                            // Backpressure: hold the waiters (and so their connections)
                            // until the journal can write again.
                            std::thread::sleep(Duration::from_millis(100));
                            if let Ok(Msg::Stop) = rx.try_recv() {
                                stop = true;
                            }
                        }
                    }
                };
                if ok && self.cfg.fsync == super::Fsync::Always {
                    self.fsync();
                }
                if !ok {
                    self.stats
                        .unjournaled
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                }
                for w in waiters.drain(..) {
                    let _ = w.send(ok);
                }
                records.clear();
            }
            if self.last_retention.elapsed() >= Duration::from_secs(10) {
                self.retention();
            }
        }
        if self.cfg.fsync != super::Fsync::Never {
            self.fsync();
        }
        let _ = self.index.write(&self.cfg.dir);
    }
}

#[cfg(test)]
impl Writer {
    /// A writer without its thread, for tests that drive it step by step.
    pub(super) fn for_test(cfg: JournalConfig) -> std::io::Result<Writer> {
        std::fs::create_dir_all(&cfg.dir)?;
        let report = recover(&cfg.dir)?;
        let (file, index) = Writer::open_segment(&cfg.dir, report.next_seq)?;
        Ok(Writer {
            cfg,
            file,
            index,
            opened: Instant::now(),
            next_seq: report.next_seq,
            stats: Arc::default(),
            dirty: false,
            active: Arc::default(),
            last_space_check: Instant::now(),
            space_low: false,
            last_retention: Instant::now(),
            buf: Vec::new(),
        })
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(super) fn records_in_segment(&self) -> u64 {
        self.index.records
    }

    pub(super) fn active_first_seq(&self) -> u64 {
        self.index.first_seq
    }

    /// The active segment's first seq and, per seq, (offset, length) of its records,
    /// read back from the file.
    pub(super) fn segment_layout(&self) -> (u64, std::collections::HashMap<u64, (u64, u64)>) {
        let path = segment::segment_path(&self.cfg.dir, self.index.first_seq);
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut m = std::collections::HashMap::new();
        for item in segment::scan(&bytes, 0) {
            if let segment::Item::Record {
                offset,
                len,
                record,
            } = item
            {
                m.insert(record.meta.seq, (offset, len));
            }
        }
        (self.index.first_seq, m)
    }
}

impl Journal {
    /// Opens (creating) the journal directory: recovers the previous run's segments (see
    /// [`OpenReport`]), starts a new active segment and the writer thread.
    pub fn open(cfg: JournalConfig) -> std::io::Result<(Arc<Journal>, OpenReport)> {
        std::fs::create_dir_all(&cfg.dir)?;
        let report = recover(&cfg.dir)?;
        let stats = Arc::new(JournalStats::default());
        stats
            .truncated_bytes
            .store(report.truncated_bytes, Ordering::Relaxed);
        stats
            .skipped_bytes
            .store(report.skipped_bytes, Ordering::Relaxed);
        let (file, index) = Writer::open_segment(&cfg.dir, report.next_seq)?;
        let (tx, rx) = bounded(cfg.queue_records);
        let dir = cfg.dir.clone();
        let on_full = cfg.on_full;
        let active = Arc::new(std::sync::Mutex::new(file.try_clone().ok()));
        let fsyncer = match cfg.fsync {
            super::Fsync::Interval(every) => Some(spawn_fsyncer(
                Arc::clone(&active),
                every,
                Arc::clone(&stats),
            )?),
            _ => None,
        };
        let writer = Writer {
            cfg,
            active,
            file,
            index,
            opened: Instant::now(),
            next_seq: report.next_seq,
            stats: Arc::clone(&stats),
            dirty: false,
            last_space_check: Instant::now() - Duration::from_secs(2),
            space_low: false,
            last_retention: Instant::now() - Duration::from_secs(60),
            buf: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("aggd-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Arc::new(Journal {
                tx,
                on_full,
                stats,
                thread: std::sync::Mutex::new(Some(thread)),
                fsyncer: std::sync::Mutex::new(fsyncer),
                dir,
            }),
            report,
        ))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting for the writer (the journal's lag).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Bytes of all segment files.
    pub fn size_on_disk(&self) -> u64 {
        segment::list(&self.dir)
            .map(|l| {
                l.iter()
                    .filter_map(|(_, p)| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Queues a record. With `on_full = "backpressure"` waits while the queue is full;
    /// with `"ingest"` returns [`Ticket::Skipped`] at once.
    pub async fn submit(&self, rec: NewRecord) -> Ticket {
        let (done, rx) = oneshot::channel();
        let mut msg = Msg::Record(rec, done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return Ticket::Queued(rx),
                Err(TrySendError::Full(m)) if self.on_full == OnFull::Backpressure => {
                    msg = m;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(_) => {
                    self.stats.unjournaled.fetch_add(1, Ordering::Relaxed);
                    return Ticket::Skipped;
                }
            }
        }
    }

    /// Writes what is queued, fsyncs (unless `fsync = "never"`), stops the writer.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        if let Some((stop, t)) = self.fsyncer.lock().ok().and_then(|mut t| t.take()) {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}
