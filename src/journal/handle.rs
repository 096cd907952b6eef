//! The journal's handle, shared by all listeners: [`Journal::submit`] queues a record for
//! the writer thread and returns a [`Ticket`]; [`Journal::begin_shutdown`] and
//! [`Journal::close`] end it. The writer itself is in [`super::writer`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, TrySendError, bounded};
use tokio::sync::oneshot;

use super::io::{JournalIo, OsIo};
use super::queue::{Active, Control, JournalStats, Msg, NewRecord};
use super::recovery::{OpenReport, at, lock, recover};
use super::segment;
use super::writer::{RETRY_EVERY, Writer};
use super::{JournalConfig, OnFull};

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
    /// The journal directory.
    dir: PathBuf,
    /// How the journal writes (the clean-shutdown mark too).
    io: Arc<dyn JournalIo>,
    /// `max_bytes`: retention keeps the segments under it.
    max_bytes: u64,
    /// Who follows the records written ([`super::follow`]).
    follow: Arc<super::follow::FollowSlot>,
}

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
                sync_active(&active, &stats);
            }
        })?;
    Ok((stop, t))
}

/// One tick of the interval fsync thread: fsyncs the active segment through a handle of
/// its own, counting the outcome (a failure is logged once per 100).
pub(super) fn sync_active(active: &Active, stats: &JournalStats) {
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
    pub(crate) fn open_with(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
    ) -> std::io::Result<(Arc<Journal>, OpenReport)> {
        Journal::open_at_least(cfg, io, 0)
    }

    /// Like [`Journal::open_with`], numbering records from at least `floor`: sequence
    /// numbers that were handed out beyond the journal (cluster mode's published
    /// watermark) are never used again, even when a power loss took their records.
    pub(crate) fn open_at_least(
        cfg: JournalConfig,
        io: Arc<dyn JournalIo>,
        floor: u64,
    ) -> std::io::Result<(Arc<Journal>, OpenReport)> {
        io.create_dir_all(&cfg.dir).map_err(|e| at(&cfg.dir, e))?;
        let lock = lock(&cfg.dir)?;
        let report = recover(&cfg.dir, &*io, floor)?;
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
        let max_bytes = cfg.max_bytes;
        let writer = Writer::new(cfg, Arc::clone(&io), report.next_seq, Arc::clone(&stats))?;
        let fsyncer = match fsync {
            super::Fsync::Interval(every) => Some(spawn_fsyncer(
                Arc::clone(&writer.active),
                every,
                Arc::clone(&stats),
            )?),
            _ => None,
        };
        let follow = Arc::clone(&writer.follow);
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
                io,
                max_bytes,
                follow,
            }),
            report,
        ))
    }

    /// Takes the clean-shutdown mark ([`super::clean::take`]).
    pub(crate) fn take_clean_mark(&self) -> Option<u64> {
        super::clean::take(&*self.io, &self.dir)
    }

    /// Writes the clean-shutdown mark for the records below `next_seq`
    /// ([`super::clean::write`]).
    ///
    /// Errors: the mark cannot be written (the error names its file).
    pub(crate) fn write_clean_mark(&self, next_seq: u64) -> std::io::Result<()> {
        super::clean::write(&*self.io, &self.dir, next_seq)
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting for the writer (the journal's lag).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// The size retention keeps the segments under (`max_bytes`).
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes free for an unprivileged user on the journal's filesystem (0 if unknown).
    pub(crate) fn free_disk(&self) -> u64 {
        self.io.available_space(&self.dir).unwrap_or(0)
    }

    /// Bytes of all segment files.
    pub(crate) fn size_on_disk(&self) -> u64 {
        segment::list_with(&*self.io, &self.dir)
            .map(|l| l.iter().filter_map(|(_, p)| self.io.file_len(p).ok()).sum())
            .unwrap_or(0)
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// How the journal's files are read and written (cluster mode's publisher reads it
    /// and keeps `cluster.state` beside it through the same).
    pub(crate) fn io(&self) -> Arc<dyn JournalIo> {
        Arc::clone(&self.io)
    }

    /// From now on, hands every record written with an attachment to `follower`
    /// ([`super::follow`]).
    pub(crate) fn follow(&self, follower: Arc<dyn super::follow::Follower>) {
        self.follow.set(follower);
    }

    /// How far records were offered to the follower ([`super::follow::FollowSlot`]).
    pub(crate) fn follow_slot(&self) -> Arc<super::follow::FollowSlot> {
        Arc::clone(&self.follow)
    }

    /// Counters, shared (cluster mode's publisher reads the bytes written).
    pub(crate) fn stats_arc(&self) -> Arc<JournalStats> {
        Arc::clone(&self.stats)
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
        loop {
            msg = match self.offer(msg) {
                Ok(()) => return Ticket::Queued(rx),
                Err(Some(m)) => m,
                Err(None) => return Ticket::Skipped,
            };
            // Registered before trying again, so room the writer makes in between still
            // wakes us; the timeout re-checks shutdown's deadline.
            let room = self.control.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            msg = match self.offer(msg) {
                Ok(()) => return Ticket::Queued(rx),
                Err(Some(m)) => m,
                Err(None) => return Ticket::Skipped,
            };
            let _ = tokio::time::timeout(RETRY_EVERY, room).await;
        }
    }

    /// Tries to queue `msg`: `Err(Some(msg))` to wait and try again (a full queue under
    /// backpressure), `Err(None)` when it is not journaled (counted). The error hands the
    /// message back by value to be offered again; it is moved, never copied per datapoint.
    #[allow(clippy::result_large_err)]
    fn offer(&self, msg: Msg) -> Result<(), Option<Msg>> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m))
                if self.on_full == OnFull::Backpressure && !self.control.give_up() =>
            {
                Err(Some(m))
            }
            Err(_) => {
                self.stats.unjournaled.fetch_add(1, Ordering::Relaxed);
                Err(None)
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
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(deadline);
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
