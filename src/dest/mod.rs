//! Destinations: carbon-cache, go-carbon, a relay, or stdout.
//!
//! Each destination has its own bounded queue (counted in datapoints, `queue_datapoints`)
//! and its own sender task. Workers and listeners only ever `offer` to a queue, which never
//! blocks: when a queue is full the batch is dropped for that destination alone and counted
//! as `destination_full`. A dead or slow destination therefore fills only its own queue.
//!
//! The sender connects (and reconnects after any error) with exponential backoff from
//! 100 ms to 5 s, coalesces queued batches into writes of up to ~10 000 datapoints, and
//! writes carbon pickle frames (protocol 2, `max_datapoints_per_message` per frame) or
//! plaintext lines. A batch whose write failed is written again after reconnecting.
//!
//! # Delivery
//! carbon's protocols have no acknowledgement, so a write that reached the kernel is not a
//! delivery: the peer may be stopped, its receive buffer full, and then die. So:
//! - **Sent** (`destination_sent`) means written into the socket.
//! - The sender keeps the time window and count of everything written into the current
//!   connection within `unconfirmed_window` (and since it connected). When the connection
//!   fails (a write error, or the peer closing or resetting it, which the sender watches for
//!   while idle), all of that is ledgered as `unconfirmed`, so `aggd replay --lost`
//!   recomputes and re-sends it. Full aggregates are idempotent downstream.
//! - At shutdown the sender waits until the kernel's send queue is empty (`SIOCOUTQ` = 0:
//!   the peer's TCP acknowledged every byte) before closing; what is still unacknowledged
//!   at the drain deadline is ledgered as `unconfirmed`. An acknowledgement means the
//!   peer's kernel holds the bytes, not that the peer process read them: a peer killed
//!   later can still lose them, which only its own restart can tell.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::{pickle, plaintext};
use crate::config::{DestAddress, DestProtocol, DestinationConfig};
use crate::datapoint::{OutBatch, Sink, window};
use crate::drops::Stats;
use crate::events::Event;
use crate::reason::DropReason;
use crate::time::Window;

/// Counters of one destination.
#[derive(Debug, Default)]
pub struct DestCounters {
    /// Datapoints written.
    pub sent: AtomicU64,
    /// Datapoints dropped because the queue was full.
    pub full_queue_drops: AtomicU64,
    /// Datapoints waiting in the queue now.
    pub queued: AtomicUsize,
    /// Datapoints written into connections that then failed, within the unconfirmed
    /// window: ledgered as `unconfirmed` for `aggd replay --lost`.
    pub unconfirmed: AtomicU64,
    /// Connections that failed (write error, closed or reset by the destination).
    pub connection_failures: AtomicU64,
    /// Time window covered by what is queued (a superset: reset only when the queue
    /// empties), ledgered if it is still queued when shutdown's drain ends.
    queued_window: Mutex<Option<Window>>,
}

struct Dest {
    name: String,
    tx: mpsc::Sender<OutBatch>,
    max_queued: usize,
    counters: Arc<DestCounters>,
    /// What the sender wrote and cannot yet count as delivered; ledgered if the sender
    /// is still holding it when shutdown's drain ends.
    unconfirmed: Arc<Mutex<Unconfirmed>>,
}

/// The destinations' queues; a [`Sink`] that offers each batch to every destination.
pub struct Destinations {
    dests: Vec<Dest>,
    stats: Arc<Stats>,
}

/// Handle on the running sender tasks.
pub struct Senders {
    tasks: Vec<JoinHandle<()>>,
    drain: CancellationToken,
}

impl Destinations {
    /// Starts one sender task per destination on the current tokio runtime.
    pub fn start(configs: &[DestinationConfig], stats: Arc<Stats>) -> (Arc<Destinations>, Senders) {
        let drain = CancellationToken::new();
        let mut dests = Vec::new();
        let mut tasks = Vec::new();
        for cfg in configs {
            let (tx, rx) = mpsc::channel(cfg.queue_datapoints.clamp(16, 1 << 16));
            let counters = Arc::new(DestCounters::default());
            let unconfirmed = Arc::new(Mutex::new(Unconfirmed::default()));
            let link = Link {
                cfg: cfg.clone(),
                counters: Arc::clone(&counters),
                unconfirmed: Arc::clone(&unconfirmed),
                stats: Arc::clone(&stats),
            };
            tasks.push(tokio::spawn(run_sender(link, rx, drain.clone())));
            dests.push(Dest {
                name: cfg.name().to_string(),
                tx,
                max_queued: cfg.queue_datapoints,
                counters,
                unconfirmed,
            });
        }
        (
            Arc::new(Destinations { dests, stats }),
            Senders { tasks, drain },
        )
    }

    /// Each destination's name and counters.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &DestCounters)> {
        self.dests.iter().map(|d| (d.name.as_str(), &*d.counters))
    }
}

impl Sink for Destinations {
    fn send(&self, batch: OutBatch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let w = window(&batch);
        for d in &self.dests {
            let before = d.counters.queued.fetch_add(n, Ordering::Relaxed);
            if before + n > d.max_queued || d.tx.try_send(Arc::clone(&batch)).is_err() {
                d.counters.queued.fetch_sub(n, Ordering::Relaxed);
                d.counters
                    .full_queue_drops
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.stats.record_drop(
                    DropReason::DestinationFull,
                    n as u64,
                    w,
                    &format_args!("destination {}", d.name),
                );
            } else if let Ok(mut q) = d.counters.queued_window.lock() {
                // After the add: a sender that empties the queue meanwhile cannot erase it.
                *q = Some(q.map_or(w, |q| q.union(w)));
            }
        }
    }
}

impl Senders {
    /// Lets every sender write what is queued, then stop; waits until `deadline` at most.
    /// What is still queued after that is counted as `destination_down` and the tasks are
    /// stopped. Returns whether every destination took everything and acknowledged it.
    pub async fn drain(self, dests: &Destinations, deadline: tokio::time::Instant) -> bool {
        self.drain.cancel();
        let mut complete = true;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
                complete = false;
            }
        }
        for d in &dests.dests {
            let left = d.counters.queued.swap(0, Ordering::Relaxed);
            let w = d.counters.queued_window.lock().ok().and_then(|q| *q);
            complete &= left == 0;
            if let Some(w) = w {
                dests.stats.record_drop(
                    DropReason::DestinationDown,
                    left as u64,
                    w,
                    &format_args!("destination {} not reachable before shutdown", d.name),
                );
            }
            // A sender stopped before its peer acknowledged what it wrote.
            let unconfirmed = d
                .unconfirmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(Duration::MAX);
            if let Some((w, n)) = unconfirmed {
                complete = false;
                ledger_unconfirmed(&dests.stats, &d.counters, &d.name, w, n);
            }
        }
        complete
    }
}

/// A connection to a destination.
enum Conn {
    Stdout(tokio::io::Stdout),
    Tcp(tokio::net::TcpStream),
}

impl Conn {
    async fn connect(cfg: &DestinationConfig) -> std::io::Result<Conn> {
        match &cfg.address {
            DestAddress::Stdout => Ok(Conn::Stdout(tokio::io::stdout())),
            DestAddress::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
        }
    }

    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Stdout(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Conn::Tcp(s) => s.write_all(buf).await,
        }
    }

    /// Resolves when the peer has closed or reset the connection (carbon receivers never
    /// write back, so readability means the end); never for stdout.
    async fn closed(&mut self) -> std::io::Error {
        let Conn::Tcp(s) = self else {
            return std::future::pending().await;
        };
        let mut scratch = [0u8; 512];
        loop {
            if let Err(e) = s.readable().await {
                return e;
            }
            match s.try_read(&mut scratch) {
                Ok(0) => {
                    return std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed by the destination",
                    );
                }
                Ok(_) => {} // bytes from the peer: not part of the protocol, ignored
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return e,
            }
        }
    }

    /// Bytes written but not yet acknowledged by the peer's TCP; 0 for stdout.
    fn unacked(&self) -> std::io::Result<usize> {
        match self {
            Conn::Stdout(_) => Ok(0),
            Conn::Tcp(s) => unacked_bytes(s),
        }
    }

    async fn close(self) {
        match self {
            Conn::Stdout(mut s) => {
                let _ = s.flush().await;
            }
            Conn::Tcp(mut s) => {
                let _ = s.shutdown().await;
            }
        }
    }
}

/// `ioctl(SIOCOUTQ)` (tcp(7)): bytes in the socket's send queue not yet acknowledged by
/// the peer.
#[allow(unsafe_code)]
fn unacked_bytes(s: &tokio::net::TcpStream) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is an open socket borrowed for the call, and SIOCOUTQ (the
    // same request number as TIOCOUTQ) writes one c_int through the pointer, which points
    // at `n`.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What was written into the current connection within the unconfirmed window: written
/// time, bucket window and datapoints, merged per second so it stays small.
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    writes: VecDeque<(Instant, Window, u64)>,
}

impl Unconfirmed {
    fn prune(&mut self, keep: Duration) {
        while self.writes.front().is_some_and(|w| w.0.elapsed() > keep) {
            self.writes.pop_front();
        }
    }

    /// Notes `n` datapoints over `window` written now.
    fn written(&mut self, window: Window, n: u64, keep: Duration) {
        self.prune(keep);
        match self.writes.back_mut() {
            Some(last) if last.0.elapsed() < Duration::from_secs(1) => {
                last.1 = last.1.union(window);
                last.2 += n;
            }
            _ => self.writes.push_back((Instant::now(), window, n)),
        }
    }

    /// Everything noted within `keep`, as one window and a count; empties the log.
    fn take(&mut self, keep: Duration) -> Option<(Window, u64)> {
        self.prune(keep);
        let all = self
            .writes
            .drain(..)
            .reduce(|a, b| (a.0, a.1.union(b.1), a.2 + b.2));
        all.map(|(_, w, n)| (w, n))
    }
}

/// The sender's view of one destination: config, counters and the unconfirmed log.
struct Link {
    cfg: DestinationConfig,
    counters: Arc<DestCounters>,
    unconfirmed: Arc<Mutex<Unconfirmed>>,
    stats: Arc<Stats>,
}

impl Link {
    fn log(&self) -> std::sync::MutexGuard<'_, Unconfirmed> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection failed: ledger what it may have lost.
    fn failed(&self, e: &std::io::Error) {
        self.counters
            .connection_failures
            .fetch_add(1, Ordering::Relaxed);
        let lost = self.log().take(self.cfg.unconfirmed_window);
        let (name, n) = (self.cfg.name(), lost.map_or(0, |l| l.1));
        self.stats.events.emit(
            Event::DestinationConnectionLost,
            &format_args!("destination {name}: connection failed ({e}); reconnecting; {n} datapoints unconfirmed"),
        );
        if let Some((w, n)) = lost {
            ledger_unconfirmed(&self.stats, &self.counters, self.cfg.name(), w, n);
        }
    }
}

fn ledger_unconfirmed(stats: &Stats, counters: &DestCounters, name: &str, w: Window, n: u64) {
    counters.unconfirmed.fetch_add(n, Ordering::Relaxed);
    stats.record_drop(
        DropReason::Unconfirmed,
        n,
        w,
        &format_args!("destination {name}: written into a connection that failed"),
    );
}

fn encode(cfg: &DestinationConfig, batches: &[OutBatch], buf: &mut Vec<u8>, stats: &Stats) {
    buf.clear();
    let pickle_out = cfg.protocol == DestProtocol::Pickle && cfg.address != DestAddress::Stdout;
    for b in batches {
        if pickle_out {
            if let Err(e) = pickle::encode_frames(b, cfg.max_datapoints_per_message, buf) {
                let name = cfg.name();
                stats.events.emit(
                    Event::EncodeFailed,
                    &format_args!("destination {name}: pickle encoding failed: {e}"),
                );
            }
        } else {
            plaintext::encode_lines(b, buf);
        }
    }
}

/// Waits for the next queued batch; meanwhile notices a connection the peer closed.
async fn next_batch(
    rx: &mut mpsc::Receiver<OutBatch>,
    conn: &mut Option<Conn>,
    link: &Link,
    drain: &CancellationToken,
) -> Option<OutBatch> {
    loop {
        let closed = async {
            match conn.as_mut() {
                Some(c) => c.closed().await,
                None => std::future::pending().await,
            }
        };
        let e = tokio::select! {
            biased;
            b = rx.recv() => return b,
            _ = drain.cancelled() => return rx.try_recv().ok(),
            e = closed => e,
        };
        *conn = None;
        link.failed(&e);
    }
}

async fn run_sender(link: Link, mut rx: mpsc::Receiver<OutBatch>, drain: CancellationToken) {
    let cfg = &link.cfg;
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(100);
    let mut buf = Vec::new();
    let mut batches = Vec::new();
    while let Some(first) = next_batch(&mut rx, &mut conn, &link, &drain).await {
        let mut n = first.len();
        let mut w = window(&first);
        batches.clear();
        batches.push(first);
        while n < 10_000 {
            match rx.try_recv() {
                Ok(b) => {
                    n += b.len();
                    w = w.union(window(&b));
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        encode(cfg, &batches, &mut buf, &link.stats);
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(cfg).await {
                    Ok(c) => {
                        tracing::info!(destination = cfg.name(), "connected");
                        backoff = Duration::from_millis(100);
                        conn.insert(c)
                    }
                    Err(e) => {
                        let name = cfg.name();
                        link.stats.events.emit(
                            Event::DestinationConnectFailed,
                            &format_args!("destination {name}: cannot connect ({e}); retrying"),
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            match c.write(&buf).await {
                Ok(()) => break,
                Err(e) => {
                    conn = None;
                    link.failed(&e);
                }
            }
        }
        link.log().written(w, n as u64, cfg.unconfirmed_window);
        let counters = &link.counters;
        if counters.queued.fetch_sub(n, Ordering::Relaxed) == n
            && let Ok(mut q) = counters.queued_window.lock()
        {
            *q = None;
        }
        counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        link.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    if let Some(c) = conn {
        close_confirmed(c, &link).await;
    }
}

/// Closes a connection once the peer's TCP has acknowledged every byte written (until
/// the drain deadline aborts the task); then nothing written is unconfirmed any more.
async fn close_confirmed(mut c: Conn, link: &Link) {
    loop {
        match c.unacked() {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                link.failed(&e);
                return;
            }
        }
        tokio::select! {
            e = c.closed() => {
                link.failed(&e);
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    link.log().take(Duration::ZERO);
    c.close().await;
}
