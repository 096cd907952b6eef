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
//!
//! Failures (all file IO goes through [`JournalIo`], so tests inject them):
//! - A failed batch write is truncated back off the segment, so a retry never writes a
//!   record twice; if even the truncation fails, the segment is sealed and a new one started.
//! - A failed rotation (the new segment cannot be created or its header written) removes
//!   the half-made file and keeps appending to the current segment; the next batch retries.
//! - `on_full = "ingest"`: the batch's tickets resolve `false` at once (the caller ledgers
//!   the window as `unjournaled`). `"backpressure"`: the writer retries the batch every
//!   100 ms and takes nothing more off its queue, so the queue fills and
//!   [`Journal::submit`] waits: TCP readers stop reading. Once shutdown's deadline
//!   ([`Journal::begin_shutdown`]) has passed, both give up and report `unjournaled`, so a
//!   full disk never holds up shutdown past its drain timeout.
//!
//! The directory is locked (`flock` on `lock`, which holds the owner's PID) for the
//! journal's life, so a second daemon on the same directory refuses to start instead of
//! recovering the first one's live segment.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};
use tokio::sync::oneshot;

use super::io::{JournalFile, JournalIo, OsIo};
use super::record::{self, Meta};
use super::segment::{self, Index, MAGIC};
use super::{JournalConfig, OnFull};
use crate::datapoint::Kind;

/// Largest batch the writer encodes before writing.
const BATCH_BYTES: usize = 4 << 20;
/// How often a writer in backpressure retries a failed write.
const RETRY_EVERY: Duration = Duration::from_millis(100);
/// The lock file inside the journal directory.
pub const LOCK_FILE: &str = "lock";

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
    /// fsync calls that failed (the data may not be on disk; `always` reports the batch
    /// as unjournaled).
    pub fsync_errors: AtomicU64,
    /// Batch writes (or rotations) that failed; each is retried or reported.
    pub write_errors: AtomicU64,
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
    /// The sequence number the next record will get.
    pub next_seq: AtomicU64,
}

enum Msg {
    Record(NewRecord, oneshot::Sender<bool>),
    /// Wakes the writer to look at [`Control::stop`].
    Wake,
}

/// Shared between the handle and the writer thread: when to stop and when to give up.
#[derive(Default)]
struct Control {
    /// [`Journal::close`] was called: write what is queued, then exit.
    stop: AtomicBool,
    /// Past this instant a write that fails is reported at once instead of retried, and
    /// [`Journal::submit`] stops waiting for queue space (set by
    /// [`Journal::begin_shutdown`]).
    deadline: Mutex<Option<Instant>>,
    /// Woken each time the writer takes records off its queue, and at shutdown: submitters
    /// waiting for room wait on it.
    room: tokio::sync::Notify,
}

impl Control {
    /// Whether waiting for the disk must end now: shutdown's deadline has passed, or the
    /// journal is closing without one.
    fn give_up(&self) -> bool {
        let deadline = *self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        match deadline {
            Some(d) => Instant::now() >= d,
            None => self.stop.load(Ordering::Relaxed),
        }
    }
}

/// Handle on the journal; shared by all listeners.
pub struct Journal {
    tx: Sender<Msg>,
    on_full: OnFull,
    stats: Arc<JournalStats>,
    control: Arc<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The interval fsync thread and the sender whose drop stops it.
    fsyncer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    /// The locked `lock` file; dropped (unlocked) by [`Journal::close`].
    lock: Mutex<Option<File>>,
    dir: PathBuf,
}

type Active = Arc<Mutex<Option<Box<dyn JournalFile>>>>;

/// The `fsync = "interval"` thread: every interval, fsyncs the active segment through its
/// own file handle, so the writer never waits for the disk.
/// Dropping the returned sender stops the thread at once.
fn spawn_fsyncer(
    active: Active,
    every: Duration,
    stats: Arc<JournalStats>,
) -> std::io::Result<(Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = bounded::<()>(0);
    let t = std::thread::Builder::new()
        .name("aggd-journal-fsync".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let f = active
                    .lock()
                    .ok()
                    .and_then(|a| a.as_ref().and_then(|f| f.try_clone().ok()));
                match f.map(|f| f.sync_data()) {
                    Some(Ok(())) => {
                        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e))
                        if stats
                            .fsync_errors
                            .fetch_add(1, Ordering::Relaxed)
                            .is_multiple_of(100) =>
                    {
                        tracing::error!(error = %e, "journal fsync failed");
                    }
                    _ => {}
                }
            }
        })?;
    Ok((stop, t))
}

/// The outcome of a submission, to await before handing datapoints on.
pub enum Ticket {
    /// Queued; resolves when written.
    Queued(oneshot::Receiver<bool>),
    /// Not journaled (queue full with `on_full = "ingest"`, or shutdown's deadline passed).
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

use crate::time::now_us;

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
fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Seals the previous run's last segment (truncating a torn tail), rebuilds missing
/// indexes, removes segment files that hold no record, and returns the next sequence
/// number.
///
/// A segment without a single record (a quiet run, or a rotation that failed before its
/// header was written) is removed: it holds nothing, and keeping it would make its own
/// first sequence number the next one, whose file then exists. A file that holds bytes but
/// no decodable record is renamed `<name>.corrupt`, out of the way but kept.
fn recover(dir: &Path, io: &dyn JournalIo) -> std::io::Result<OpenReport> {
    let mut report = OpenReport::default();
    let segs = segment::list(dir).map_err(|e| at(dir, e))?;
    for (i, (first, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let len = std::fs::metadata(path).map_err(|e| at(path, e))?.len();
        let trusted = Index::read(dir, *first).filter(|x| x.bytes == len);
        let idx = match (last, trusted) {
            (false, Some(idx)) => idx,
            _ => {
                let bytes = std::fs::read(path).map_err(|e| at(path, e))?;
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

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> std::io::Result<File> {
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

pub(super) struct Writer {
    cfg: JournalConfig,
    io: Arc<dyn JournalIo>,
    file: Box<dyn JournalFile>,
    /// A handle on the active segment for the interval fsync thread (which must not hold
    /// up the writer: an inline fsync of a second's data stalled every connection).
    active: Active,
    index: Index,
    opened: Instant,
    next_seq: u64,
    stats: Arc<JournalStats>,
    dirty: bool,
    /// The active segment's tail could not be truncated after a failed write: seal it
    /// (its index will be rebuilt by a scan) before writing again.
    poisoned: bool,
    last_space_check: Instant,
    space_low: bool,
    last_retention: Instant,
    buf: Vec<u8>,
}

impl Writer {
    /// Creates segment `first_seq` and writes its magic; a half-made file is removed.
    fn open_segment(
        io: &dyn JournalIo,
        dir: &Path,
        first_seq: u64,
    ) -> std::io::Result<(Box<dyn JournalFile>, Index)> {
        let path = segment::segment_path(dir, first_seq);
        let mut f = io.create_new(&path).map_err(|e| at(&path, e))?;
        if let Err(e) = f.write_all(MAGIC) {
            drop(f);
            let _ = io.remove_file(&path);
            return Err(at(&path, e));
        }
        Ok((f, Index::new(first_seq)))
    }

    fn new(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
        next_seq: u64,
        stats: Arc<JournalStats>,
    ) -> std::io::Result<Writer> {
        let (file, index) = Writer::open_segment(&*io, &cfg.dir, next_seq)?;
        let active = Arc::new(Mutex::new(file.try_clone().ok()));
        stats.next_seq.store(next_seq, Ordering::Relaxed);
        Ok(Writer {
            cfg,
            io,
            file,
            active,
            index,
            opened: Instant::now(),
            next_seq,
            stats,
            dirty: false,
            poisoned: false,
            last_space_check: Instant::now() - Duration::from_secs(2),
            space_low: false,
            last_retention: Instant::now() - Duration::from_secs(60),
            buf: Vec::new(),
        })
    }

    /// Seals the active segment and starts the next. If the new segment cannot be made,
    /// nothing changes (the current segment stays active) and the error is returned.
    pub(super) fn rotate(&mut self) -> std::io::Result<()> {
        if !self.poisoned {
            self.file.sync_data()?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        let (f, idx) = Writer::open_segment(&*self.io, &self.cfg.dir, self.next_seq)?;
        if self.poisoned {
            let _ = self
                .io
                .remove_file(&segment::index_path(&self.cfg.dir, self.index.first_seq));
        } else if let Err(e) = self.index.write(&self.cfg.dir, &*self.io) {
            // Derived data: readers and recovery rebuild a missing index by a scan.
            tracing::warn!(error = %e, "journal: cannot write a sealed segment's index");
        }
        if let Ok(mut a) = self.active.lock() {
            *a = f.try_clone().ok();
        }
        self.file = f;
        self.index = idx;
        self.opened = Instant::now();
        self.dirty = false;
        self.poisoned = false;
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
                && self
                    .io
                    .available_space(&self.cfg.dir)
                    .is_ok_and(|a| a < self.cfg.min_free_disk);
            if !(total > self.cfg.max_bytes || old || low_disk) {
                break;
            }
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            if self.io.remove_file(&path).is_ok() {
                let _ = self
                    .io
                    .remove_file(&segment::index_path(&self.cfg.dir, first));
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
        let min = self.cfg.min_free_disk;
        let low = |w: &Writer| w.io.available_space(&w.cfg.dir).is_ok_and(|a| a < min);
        if low(self) {
            self.retention();
        }
        self.space_low = low(self);
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
        if self.poisoned || (self.index.records > 0 && (full || aged)) {
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
            if self.file.set_len(start_index.bytes).is_err() {
                self.poisoned = true;
            }
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
        self.stats.next_seq.store(self.next_seq, Ordering::Relaxed);
        self.dirty = true;
        Ok(())
    }

    /// fsyncs the active segment if anything was written since the last fsync.
    fn fsync(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Writes `records`, retrying under backpressure until it works or `control` says to
    /// give up; returns whether they were written (and, with `fsync = "always"`, synced).
    fn write_or_give_up(&mut self, records: &[NewRecord], control: &Control) -> bool {
        let mut logged = false;
        loop {
            match self.write_batch(records) {
                Ok(()) => break,
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if !logged {
                        tracing::warn!(error = %e, records = records.len(), on_full = ?self.cfg.on_full, "journal write failed");
                        logged = true;
                    }
                    if self.cfg.on_full == OnFull::Ingest || control.give_up() {
                        return false;
                    }
                    // Backpressure: hold the waiters (and so their connections), and take
                    // nothing more off the queue, until the journal can write again.
                    std::thread::sleep(RETRY_EVERY);
                }
            }
        }
        if self.cfg.fsync == super::Fsync::Always
            && let Err(e) = self.fsync()
        {
            tracing::warn!(error = %e, "journal fsync failed; batch reported unjournaled");
            return false;
        }
        true
    }

    fn run(mut self, rx: Receiver<Msg>, control: Arc<Control>) {
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        loop {
            let tick = match self.cfg.fsync {
                super::Fsync::Interval(d) => d.min(Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            let mut bytes = 0;
            let mut next = rx.recv_timeout(tick);
            let mut disconnected = false;
            loop {
                match next {
                    Ok(Msg::Record(r, done)) => {
                        bytes += r.payload.len();
                        records.push(r);
                        waiters.push(done);
                    }
                    Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
                if bytes >= BATCH_BYTES || disconnected {
                    break;
                }
                match rx.try_recv() {
                    Ok(m) => next = Ok(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => next = Err(RecvTimeoutError::Disconnected),
                }
            }
            // Room was made in the queue: wake submitters waiting for it.
            control.room.notify_waiters();
            if !records.is_empty() {
                let ok = self.write_or_give_up(&records, &control);
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
            if (control.stop.load(Ordering::Relaxed) && rx.is_empty()) || disconnected {
                break;
            }
            if self.last_retention.elapsed() >= Duration::from_secs(10) {
                self.retention();
            }
        }
        if self.cfg.fsync != super::Fsync::Never
            && let Err(e) = self.fsync()
        {
            tracing::error!(error = %e, "journal: final fsync failed");
        }
        if !self.poisoned {
            let _ = self.index.write(&self.cfg.dir, &*self.io);
        }
    }
}

#[cfg(test)]
impl Writer {
    /// A writer without its thread, for tests that drive it step by step.
    pub(super) fn for_test(cfg: JournalConfig) -> std::io::Result<Writer> {
        Writer::for_test_with(cfg, Arc::new(OsIo))
    }

    /// Like [`Writer::for_test`], writing through `io`.
    pub(super) fn for_test_with(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
    ) -> std::io::Result<Writer> {
        std::fs::create_dir_all(&cfg.dir)?;
        let report = recover(&cfg.dir, &*io)?;
        let mut w = Writer::new(cfg, io, report.next_seq, Arc::default())?;
        w.last_space_check = Instant::now();
        w.last_retention = Instant::now();
        Ok(w)
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
    /// Opens (creating) the journal directory: locks it, recovers the previous run's
    /// segments (see [`OpenReport`]), starts a new active segment and the writer thread.
    ///
    /// Errors (each naming the path): the directory cannot be created or locked (another
    /// aggd holds it: the message names its PID), a segment cannot be read or repaired, or
    /// the new segment cannot be created.
    pub fn open(cfg: JournalConfig) -> std::io::Result<(Arc<Journal>, OpenReport)> {
        Journal::open_with(cfg, Arc::new(OsIo))
    }

    /// Like [`Journal::open`], writing through `io` (a [`super::io::FaultyIo`] in tests).
    pub fn open_with(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
    ) -> std::io::Result<(Arc<Journal>, OpenReport)> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| at(&cfg.dir, e))?;
        let lock = lock(&cfg.dir)?;
        let report = recover(&cfg.dir, &*io)?;
        let stats = Arc::new(JournalStats::default());
        stats
            .truncated_bytes
            .store(report.truncated_bytes, Ordering::Relaxed);
        stats
            .skipped_bytes
            .store(report.skipped_bytes, Ordering::Relaxed);
        let (tx, rx) = bounded(cfg.queue_records);
        let dir = cfg.dir.clone();
        let on_full = cfg.on_full;
        let fsync = cfg.fsync;
        let writer = Writer::new(cfg, io, report.next_seq, Arc::clone(&stats))?;
        let fsyncer = match fsync {
            super::Fsync::Interval(every) => Some(spawn_fsyncer(
                Arc::clone(&writer.active),
                every,
                Arc::clone(&stats),
            )?),
            _ => None,
        };
        let control = Arc::new(Control::default());
        let c = Arc::clone(&control);
        let thread = std::thread::Builder::new()
            .name("aggd-journal".into())
            .spawn(move || writer.run(rx, c))?;
        Ok((
            Arc::new(Journal {
                tx,
                on_full,
                stats,
                control,
                thread: Mutex::new(Some(thread)),
                fsyncer: Mutex::new(fsyncer),
                lock: Mutex::new(Some(lock)),
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

    /// Queues a record. With `on_full = "backpressure"` waits while the queue is full
    /// (until shutdown's deadline, see [`Journal::begin_shutdown`]); with `"ingest"`
    /// returns [`Ticket::Skipped`] at once.
    pub async fn submit(&self, rec: NewRecord) -> Ticket {
        if self.control.stop.load(Ordering::Relaxed) {
            // Closed: nothing would ever write it.
            self.stats.unjournaled.fetch_add(1, Ordering::Relaxed);
            return Ticket::Skipped;
        }
        let (done, rx) = oneshot::channel();
        let mut msg = Msg::Record(rec, done);
        let mut waiting = false;
        loop {
            // Registered before trying, so room made in between still wakes us.
            let room = self.control.room.notified();
            tokio::pin!(room);
            if waiting {
                room.as_mut().enable();
            }
            match self.tx.try_send(msg) {
                Ok(()) => return Ticket::Queued(rx),
                Err(TrySendError::Full(m))
                    if self.on_full == OnFull::Backpressure && !self.control.give_up() =>
                {
                    msg = m;
                    if waiting {
                        // The writer wakes us when it takes records; the timeout re-checks
                        // shutdown's deadline.
                        let _ = tokio::time::timeout(RETRY_EVERY, room).await;
                    }
                    waiting = true;
                }
                Err(_) => {
                    self.stats.unjournaled.fetch_add(1, Ordering::Relaxed);
                    return Ticket::Skipped;
                }
            }
        }
    }

    /// Shutdown has begun: from `deadline` on, nothing waits for the disk any more (a
    /// failing write is reported as unjournaled instead of retried, and
    /// [`Journal::submit`] stops waiting for queue space).
    pub fn begin_shutdown(&self, deadline: Instant) {
        *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.control.room.notify_waiters();
    }

    /// Writes what is queued (giving up on a failing disk at once, or at the deadline of
    /// [`Journal::begin_shutdown`]), fsyncs (unless `fsync = "never"`), stops the writer
    /// and unlocks the directory. Never blocks on a full queue.
    pub fn close(&self) {
        self.control.stop.store(true, Ordering::Relaxed);
        let _ = self.tx.try_send(Msg::Wake);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        if let Some((stop, t)) = self.fsyncer.lock().ok().and_then(|mut t| t.take()) {
            drop(stop);
            let _ = t.join();
        }
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
    }
}
