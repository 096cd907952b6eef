//! One destination's sender task: connect with backoff, coalesce queued batches, write
//! pickle or plaintext, watch an idle connection for the peer closing it, keep the
//! unconfirmed window, and close only once the peer acknowledged everything (see the
//! parent module's docs).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DestCounters, ledger_unconfirmed};
use crate::codec::{pickle, plaintext};
use crate::config::{DestAddress, DestProtocol, DestinationConfig};
use crate::datapoint::{OutBatch, window};
use crate::drops::Stats;
use crate::events::Event;
use crate::time::Window;

/// A connection to a destination.
enum Conn {
    Stdout(tokio::io::Stdout),
    Tcp(tokio::net::TcpStream),
}

impl Conn {
    async fn connect(cfg: &DestinationConfig) -> std::io::Result<Conn> {
        match &cfg.address {
            DestAddress::Stdout => Ok(Conn::Stdout(tokio::io::stdout())),
            DestAddress::Url(_) => Err(std::io::Error::other(
                "a remote-write destination has no carbon connection",
            )),
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
pub(super) struct Unconfirmed {
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
    pub(super) fn take(&mut self, keep: Duration) -> Option<(Window, u64)> {
        self.prune(keep);
        let all = self
            .writes
            .drain(..)
            .reduce(|a, b| (a.0, a.1.union(b.1), a.2 + b.2));
        all.map(|(_, w, n)| (w, n))
    }
}

/// The sender's view of one destination: config, counters and the unconfirmed log.
pub(super) struct Link {
    /// The destination's settings.
    pub(super) cfg: DestinationConfig,
    /// Its counters, shared with [`super::Destinations`].
    pub(super) counters: Arc<DestCounters>,
    /// What was written into the current connection and is not yet confirmed.
    pub(super) unconfirmed: Arc<Mutex<Unconfirmed>>,
    /// Process counters and the ledger.
    pub(super) stats: Arc<Stats>,
}

impl Link {
    fn log(&self) -> std::sync::MutexGuard<'_, Unconfirmed> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `n` datapoints left the queue (delivered or dropped): an empty queue forgets the
    /// window it covered.
    pub(super) fn done(&self, n: usize) {
        let counters = &self.counters;
        if counters.queued.fetch_sub(n, Ordering::Relaxed) == n
            && let Ok(mut q) = counters.queued_window.lock()
        {
            *q = None;
        }
    }

    /// The connection failed: ledger what it may have lost.
    fn failed(&self, e: &std::io::Error) {
        set_connected(&self.counters, false);
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

/// Encodes `batches` into `buf`; returns the number of carbon batches (pickle frames, or
/// for plaintext the same count of `max_datapoints_per_message` chunks): carbon's
/// `batchesSent`.
fn encode(cfg: &DestinationConfig, batches: &[OutBatch], buf: &mut Vec<u8>, stats: &Stats) -> u64 {
    buf.clear();
    let per = cfg.max_datapoints_per_message.max(1);
    let frames = batches.iter().map(|b| b.len().div_ceil(per) as u64).sum();
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
    frames
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

/// Notes whether the sender holds a connection (for carbon's `queuedUntilConnected`).
pub(super) fn set_connected(counters: &DestCounters, up: bool) {
    counters
        .state
        .store(if up { super::UP } else { super::DOWN }, Ordering::Relaxed);
}

pub(super) async fn run_sender(
    link: Link,
    mut rx: mpsc::Receiver<OutBatch>,
    drain: CancellationToken,
) {
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
        let frames = encode(cfg, &batches, &mut buf, &link.stats);
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(cfg).await {
                    Ok(c) => {
                        tracing::info!(destination = cfg.name(), "connected");
                        backoff = Duration::from_millis(100);
                        set_connected(&link.counters, true);
                        conn.insert(c)
                    }
                    Err(e) => {
                        set_connected(&link.counters, false);
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
        link.done(n);
        let counters = &link.counters;
        counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        counters.batches.fetch_add(frames, Ordering::Relaxed);
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
