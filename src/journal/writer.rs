//! The journal writer: one dedicated thread that appends records with group commit.
//!
//! Listeners [`Journal::submit`](super::Journal::submit) a record and get a [`Ticket`](super::Ticket); they parse the payload while
//! the writer works, and hand datapoints to workers only after [`Ticket::wait`](super::Ticket::wait) says the
//! record was written (to the page cache; with `fsync = "always"`, to disk). Every record
//! that could not be written is reported, so the caller ledgers the unjournaled window.
//!
//! The writer drains its queue into one buffer (up to 4 MiB), writes it with one
//! `write_all`, fsyncs per policy (`always`: before acknowledging; `interval`: at most once
//! per interval; `never`), rotates segments by size and age, and applies retention (total
//! size, age, free disk) to sealed segments only.
//!
//! Failures (all file IO goes through [`JournalIo`], so tests inject them):
//! - A failed batch write is truncated back off the segment and the truncation fsynced, so
//!   a retry never writes a record twice, not even after a power loss; if even the
//!   truncation fails, the segment is sealed and a new one started, and the failed batch's
//!   sequence numbers are not used again.
//! - A failed rotation (the new segment cannot be created or its header written) removes
//!   the half-made file and keeps appending to the current segment; the next batch retries.
//! - `on_full = "ingest"`: the batch's tickets resolve `false` at once (the caller ledgers
//!   the window as `unjournaled`). `"backpressure"`: the writer retries the batch every
//!   100 ms and takes nothing more off its queue, so the queue fills and
//!   [`Journal::submit`](super::Journal::submit) waits: TCP readers stop reading. Once shutdown's deadline
//!   ([`Journal::begin_shutdown`](super::Journal::begin_shutdown)) has passed, both give up and report `unjournaled`, so a
//!   full disk never holds up shutdown past its drain timeout.
//!
//! Opening (the directory lock, recovery) is in [`super::recovery`]; the handle listeners
//! share is [`super::handle`].

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::io::{JournalFile, JournalIo};
use super::queue::{Active, Control, Msg};
use super::queue::{JournalStats, NewRecord};
use super::record::{self, Meta};
use super::recovery::at;
use super::segment::{self, Index, MAGIC};
use super::{JournalConfig, OnFull};

/// Largest batch the writer encodes before writing.
const BATCH_BYTES: usize = 4 << 20;
/// How often a writer in backpressure retries a failed write.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(100);

pub(super) struct Writer {
    cfg: JournalConfig,
    io: Arc<dyn JournalIo>,
    file: Box<dyn JournalFile>,
    /// A handle on the active segment for the interval fsync thread (which must not hold
    /// up the writer: an inline fsync of a second's data stalled every connection).
    pub(super) active: Active,
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
    /// Bytes of each record of the last batch written.
    lens: Vec<u64>,
    /// Who follows the records written.
    pub(super) follow: Arc<super::follow::FollowSlot>,
}

impl Writer {
    /// Creates segment `first_seq`, writes its magic and fsyncs the directory, so the
    /// segment's name is durable before any record in it is acknowledged (and sequence
    /// numbers never go back below `first_seq`, whatever a power loss takes); a half-made
    /// file is removed.
    fn open_segment(
        io: &dyn JournalIo,
        dir: &Path,
        first_seq: u64,
    ) -> std::io::Result<(Box<dyn JournalFile>, Index)> {
        let path = segment::segment_path(dir, first_seq);
        let mut f = io.create_new(&path).map_err(|e| at(&path, e))?;
        if let Err(e) = f
            .write_all(MAGIC)
            .map_err(|e| at(&path, e))
            .and_then(|()| io.sync_dir(dir).map_err(|e| at(dir, e)))
        {
            drop(f);
            let _ = io.remove_file(&path);
            return Err(e);
        }
        Ok((f, Index::new(first_seq)))
    }

    pub(super) fn new(
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
            lens: Vec::new(),
            follow: Arc::new(super::follow::FollowSlot::new(next_seq)),
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

    /// Applies retention now (see [`super::retention`]).
    pub(super) fn retention(&mut self) {
        self.last_retention = Instant::now();
        let deleted = &self.stats.segments_deleted;
        super::retention::apply(&self.cfg, &*self.io, self.index.first_seq, deleted);
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
        self.lens.clear();
        for r in batch {
            let meta = Meta {
                seq: self.next_seq,
                received_us: r.received_us,
                listener: r.listener,
                kind: r.kind,
                peer: r.peer.to_string(),
                tenant: r.tenant.as_deref().unwrap_or("").to_string(),
                verdict: r.verdict.clone(),
            };
            let offset = self.index.bytes;
            let before = self.buf.len();
            record::encode(&meta, &r.payload, &mut self.buf);
            self.lens.push((self.buf.len() - before) as u64);
            self.index.add(
                meta.seq,
                meta.received_us,
                offset,
                (self.buf.len() - before) as u64,
            );
            self.next_seq += 1;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Cut the failed batch back off, durably: a record of it that reached the disk
            // must not come back after a power loss beside the retry that reuses its
            // sequence number.
            let cut = self.file.set_len(start_index.bytes);
            if cut.and_then(|()| self.file.sync_data()).is_ok() {
                self.next_seq = start_seq;
            } else {
                // Sealed as it is. Whatever of the batch reached it keeps its sequence
                // numbers, which are never used again.
                self.poisoned = true;
            }
            self.index = start_index;
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
        // Release: a tail that reads this value finds these records in the file.
        self.stats.next_seq.store(self.next_seq, Ordering::Release);
        self.stats.appended.notify();
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
    pub(super) fn write_or_give_up(&mut self, records: &[NewRecord], control: &Control) -> bool {
        let mut logged = false;
        loop {
            match self.write_batch(records) {
                Ok(()) => break,
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if !logged {
                        tracing::warn!(error = %e, records = records.len(), on_full = %self.cfg.on_full, "journal write failed");
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

    pub(super) fn run(mut self, rx: Receiver<Msg>, control: Arc<Control>) {
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
                if ok {
                    // Offered before the tickets resolve: a submitter that sees its record
                    // written knows the follower was offered it.
                    let first = self.next_seq - records.len() as u64;
                    let lens = self.lens.iter().copied();
                    let taken = records.iter_mut().map(|r| r.attachment.take());
                    self.follow.written(first, lens.zip(taken));
                    self.stats.appended.notify();
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
        self.finish();
    }

    /// The end of a run: fsyncs the active segment (unless `fsync = "never"`) and writes
    /// its index.
    pub(super) fn finish(&mut self) {
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
        Writer::for_test_with(cfg, Arc::new(super::io::OsIo))
    }

    /// Like [`Writer::for_test`], writing through `io`.
    pub(super) fn for_test_with(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
    ) -> std::io::Result<Writer> {
        io.create_dir_all(&cfg.dir)?;
        let report = super::recovery::recover(&cfg.dir, &*io, 0)?;
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
        let bytes = self.io.read(&path).unwrap_or_default();
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
