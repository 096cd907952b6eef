//! A carbon destination's sender task: connect with backoff, coalesce queued batches,
//! write pickle or plaintext, watch an idle connection for the peer closing it, keep the
//! unconfirmed window, and close only once the peer acknowledged everything (see the
//! parent module's docs). [`encode`] is the carbon kind's one encode step, which replay
//! uses too.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{Link, set_connected};
use crate::codec::{pickle, plaintext};
use crate::config::{CarbonDestination, CarbonProtocol, CarbonTarget};
use crate::datapoint::{OutBatch, OutPoint, window};
use crate::events::Event;
use crate::time::Backoff;

/// A connection to a destination.
pub(super) enum Conn {
    Stdout(tokio::io::Stdout),
    Tcp(tokio::net::TcpStream),
    /// A scripted connection (unit tests of the sender).
    #[cfg(test)]
    Mock(tests::MockConn),
}

impl Conn {
    async fn connect(target: &CarbonTarget) -> std::io::Result<Conn> {
        match target {
            CarbonTarget::Stdout => Ok(Conn::Stdout(tokio::io::stdout())),
            CarbonTarget::Tcp(addr) => {
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
            #[cfg(test)]
            Conn::Mock(m) => m.write(buf),
        }
    }

    /// Resolves when the peer has closed or reset the connection (carbon receivers never
    /// write back, so readability means the end); never for stdout.
    async fn closed(&mut self) -> std::io::Error {
        let Conn::Tcp(s) = self else {
            return std::future::pending().await; // stdout, and a mock
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
            #[cfg(test)]
            Conn::Mock(_) => Ok(0),
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
            #[cfg(test)]
            Conn::Mock(_) => {}
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

/// carbon's encoding of `batches` for `cfg` into `buf` (emptied first): pickle frames of
/// `max_datapoints_per_message` datapoints ([`pickle::encode_frames`]: 4-byte big-endian
/// length, then a protocol 2 pickle of `[(path, (timestamp, value)), …]`), or plaintext
/// lines (`path value timestamp\n`). Returns the number of carbon batches (pickle frames,
/// or for plaintext the same count of chunks): carbon's `batchesSent`.
///
/// Errors: a pickle encoding error (a bug: every [`OutPoint`] is picklable); `buf` then
/// holds the frames before it.
pub fn encode<'a>(
    cfg: &CarbonDestination,
    batches: impl IntoIterator<Item = &'a [OutPoint]>,
    buf: &mut Vec<u8>,
) -> Result<u64, serde_pickle::Error> {
    buf.clear();
    let per = cfg.max_datapoints_per_message.max(1);
    let mut frames = 0;
    for b in batches {
        frames += b.len().div_ceil(per) as u64;
        match cfg.protocol {
            CarbonProtocol::Pickle => pickle::encode_frames(b, per, buf)?,
            CarbonProtocol::Plaintext => plaintext::encode_lines(b, buf),
        }
    }
    Ok(frames)
}

/// Waits for the next queued batch; meanwhile notices a connection the peer closed.
async fn next_batch(
    rx: &mut mpsc::Receiver<OutBatch>,
    conn: &mut Option<Conn>,
    link: &Link,
    window: Duration,
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
        link.failed(&e, window);
    }
}

/// A carbon destination's sender task: takes batches off `rx` until it closes (or
/// `drain` is cancelled and the queue is empty), writes them over a connection made (and
/// remade with backoff) to the destination, and re-sends over the next connection a write
/// that failed.
pub(super) async fn run(
    link: Link,
    cfg: CarbonDestination,
    rx: mpsc::Receiver<OutBatch>,
    drain: CancellationToken,
) {
    let target = cfg.target.clone();
    let connect = move || {
        let target = target.clone();
        Box::pin(async move { Conn::connect(&target).await }) as Connecting
    };
    run_with(link, cfg, rx, drain, connect).await;
}

/// A connection being made.
type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Conn>> + Send>>;

/// Batches are coalesced into writes of about this many datapoints.
const WRITE_DATAPOINTS: usize = 10_000;

/// [`run`], making connections with `connect`.
async fn run_with(
    link: Link,
    cfg: CarbonDestination,
    mut rx: mpsc::Receiver<OutBatch>,
    drain: CancellationToken,
    connect: impl FnMut() -> Connecting,
) {
    let mut out = Connection {
        link: &link,
        window: cfg.unconfirmed_window,
        conn: None,
        backoff: Backoff::DESTINATION,
        connect,
    };
    let mut buf = Vec::new();
    let mut batches = Vec::new();
    while let Some(first) = next_batch(&mut rx, &mut out.conn, &link, out.window, &drain).await {
        let mut n = first.len();
        let mut w = window(&first);
        batches.clear();
        batches.push(first);
        while n < WRITE_DATAPOINTS {
            match rx.try_recv() {
                Ok(b) => {
                    n += b.len();
                    w = w.union(window(&b));
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        // The fence is checked again before every attempt: a write that waits (for a
        // connection, after a failure) leaves out what this node may no longer emit. The
        // batches are encoded again only when it leaves something out (standalone: once).
        let mut encoded: Option<(u64, u64)> = None;
        let (frames, fenced) = loop {
            let kept = link.unfenced(batches.iter().flat_map(|b| b.iter()));
            let (frames, fenced) = match (encoded, &kept) {
                (Some(e), None) => e,
                _ => {
                    let frames = match &kept {
                        None => encode(&cfg, batches.iter().map(|b| &b[..]), &mut buf),
                        Some((k, _)) => encode(&cfg, [&k[..]], &mut buf),
                    };
                    let frames = frames.unwrap_or_else(|e| {
                        let name = &link.name;
                        link.stats.events.emit(
                            Event::EncodeFailed,
                            &format_args!("destination {name}: pickle encoding failed: {e}"),
                        );
                        0
                    });
                    let e = (frames, kept.as_ref().map_or(0, |k| k.1));
                    encoded = Some(e);
                    e
                }
            };
            if buf.is_empty() || out.try_write(&buf).await {
                break (frames, fenced);
            }
        };
        link.count_fenced(fenced);
        let written = n as u64 - fenced;
        link.log().written(w, written, cfg.unconfirmed_window);
        link.done(n);
        let counters = &link.counters;
        counters.sent.fetch_add(written, Ordering::Relaxed);
        counters.batches.fetch_add(frames, Ordering::Relaxed);
        link.stats.sent.fetch_add(written, Ordering::Relaxed);
    }
    if let Some(c) = out.conn {
        close_confirmed(c, &link, cfg.unconfirmed_window).await;
    }
}

/// The sender's connection, made (and remade with backoff) on demand.
struct Connection<'a, C> {
    link: &'a Link,
    /// The destination's `unconfirmed_window`.
    window: Duration,
    conn: Option<Conn>,
    backoff: Backoff,
    connect: C,
}

impl<C: FnMut() -> Connecting> Connection<'_, C> {
    /// One attempt to write `buf` whole into one connection, connecting first if there is
    /// none. Returns false after a failed connection attempt (having waited its backoff)
    /// or a failed write (the connection dropped): the caller tries again.
    async fn try_write(&mut self, buf: &[u8]) -> bool {
        let link = self.link;
        let c = match self.conn.as_mut() {
            Some(c) => c,
            None => match (self.connect)().await {
                Ok(c) => {
                    tracing::info!(destination = link.name, "connected");
                    self.backoff.reset();
                    set_connected(&link.counters, true);
                    self.conn.insert(c)
                }
                Err(e) => {
                    set_connected(&link.counters, false);
                    let name = &link.name;
                    link.stats.events.emit(
                        Event::DestinationConnectFailed,
                        &format_args!("destination {name}: cannot connect ({e}); retrying"),
                    );
                    tokio::time::sleep(self.backoff.delay()).await;
                    return false;
                }
            },
        };
        match c.write(buf).await {
            Ok(()) => true,
            Err(e) => {
                self.conn = None;
                link.failed(&e, self.window);
                false
            }
        }
    }
}

/// Closes a connection once the peer's TCP has acknowledged every byte written (until
/// the drain deadline aborts the task); then nothing written is unconfirmed any more.
async fn close_confirmed(mut c: Conn, link: &Link, window: Duration) {
    loop {
        match c.unacked() {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                link.failed(&e, window);
                return;
            }
        }
        tokio::select! {
            e = c.closed() => {
                link.failed(&e, window);
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    link.log().take(Duration::ZERO);
    c.close().await;
}

#[cfg(test)]
mod tests;
