//! TCP connections: plaintext lines and pickle frames.
//!
//! Memory per connection is bounded and follows the traffic: the read buffer starts at
//! [`READ_MIN`] and doubles while reads fill it, up to [`READ_MAX`]; a connection quiet
//! for half a second gives its buffer back (keeping only a partial line or frame) and
//! starts small again. A partial line or frame makes it grow only with the bytes that
//! arrive (at most `max_line_bytes` or `max_pickle_frame_bytes`), never with the length a
//! pickle header declares. All of it, and the work items a read decodes into, is charged
//! to the connections' memory budget before it is allocated, and open connections are
//! capped per listener and in total; at the total cap the idlest connection gives way
//! (`crate::ingest::slots`), and a connection past a cap is closed at once and counted as
//! `connections_refused`.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::pickle::{FrameEvent, PickleFramer};
use crate::codec::plaintext::LineFramer;
use crate::datapoint::Kind;
use crate::events::Event;
use crate::ingest::slots::Slot;
use crate::ingest::{Ingest, Pipeline};
use crate::reason::DropReason;

/// Smallest read buffer (an idle connection holds at most this, plus a partial line).
pub const READ_MIN: usize = 4 << 10;
/// Largest read buffer (a busy connection's reads).
pub const READ_MAX: usize = 256 << 10;
/// Smallest read when the rules make a read's work items large (see `read_more`): small
/// enough that even 100 000 rules leave a read within the default budget.
const MIN_READ: usize = 64;
/// How long a connection's socket stays empty before its read buffer is released.
const IDLE_AFTER: Duration = Duration::from_millis(500);

pub(super) async fn accept_loop(
    listener: TcpListener,
    index: u16,
    kind: Kind,
    max_connections: Option<usize>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let cap = max_connections.map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                // The listener's own cap, then a slot among all connections (evicting
                // the idlest if they are all taken).
                let own = match &cap {
                    Some(c) => Arc::clone(c).try_acquire_owned().ok().map(Some),
                    None => Some(None),
                };
                let Some(permits) = own.and_then(|own| Some((own, pipeline.slots.admit(&peer)?)))
                else {
                    drop(sock);
                    pipeline.stats.events.emit(
                        Event::ConnectionRefused,
                        &format_args!("connection limit reached; connection from {peer} to listener {index} closed"),
                    );
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let sd = shutdown.clone();
                let p = Arc::clone(&pipeline);
                let ingest = Ingest::new(p, peer, index, kind);
                let (own, slot) = permits;
                tracker.spawn(async move {
                    if kind == Kind::PickleTcp {
                        pickle_conn(sock, ingest, sd, slot).await;
                    } else {
                        plaintext_conn(sock, ingest, sd, slot).await;
                    }
                    drop(own);
                });
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                pipeline.stats.events.emit(
                    Event::AcceptFailed,
                    &format_args!("accept failed on listener {index}: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection's read buffer, sized by its traffic (see the module docs).
struct ReadBuf {
    buf: BytesMut,
    /// Spare capacity wanted for the next read: [`READ_MIN`]..=[`READ_MAX`], less with
    /// many rules (see `read_more`).
    want: usize,
    /// Work items the last read was charged for (carbon plaintext is routed in pieces
    /// that keep to it, [`Ingest::receive_lines`]).
    charged_items: usize,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: BytesMut::new(),
            want: READ_MIN,
            charged_items: 0,
        }
    }

    /// Makes room for a read: `want` bytes, allocated only now (an idle connection holds
    /// no buffer until its socket is readable).
    fn prepare(&mut self) {
        if self.buf.capacity() - self.buf.len() < self.want / 2 {
            self.buf.reserve(self.want);
        }
    }

    /// Adapts `want` to a read of `n` bytes into `spare` bytes of room: a read that
    /// fills the room doubles it (a busy connection soon reads 256 KiB at a time, so a
    /// journal record and a flush carry many lines). It shrinks only once the connection
    /// goes quiet ([`ReadBuf::idle`]).
    fn read(&mut self, n: usize, spare: usize) {
        if n == spare {
            self.want = (self.want * 2).min(READ_MAX);
        }
    }

    /// The socket has been quiet for [`IDLE_AFTER`]: free a buffer that holds nothing,
    /// and shrink one that holds only a small partial line or frame, so an idle connection
    /// keeps (almost) no memory; its next reads start small again.
    fn idle(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        } else if self.buf.capacity() > 4 * self.buf.len().max(READ_MIN) {
            self.buf = BytesMut::from(&self.buf[..]);
        }
        self.want = READ_MIN;
    }
}

/// Reads into `rb`, waiting for the socket to be readable; on shutdown only what the
/// kernel already holds. Before each read the connection holds, from the memory budget,
/// what the read may cost: the buffer it fills, the work items of decoding it
/// (`items_per_byte` for each byte) and those of the previous read, set aside for the
/// journal ([`Ingest::stage`]). Before it waits for the socket it hands everything on
/// ([`Ingest::flush`]), and while it waits it holds only its buffer. `Ok(0)` = end (or
/// evicted: then `evicted` is set).
async fn read_more(
    sock: &mut TcpStream,
    rb: &mut ReadBuf,
    conn: &Conn<'_>,
    ingest: &mut Ingest,
    draining: &mut bool,
) -> std::io::Result<usize> {
    let Conn {
        shutdown,
        slot,
        items_per_byte,
        overshoot,
    } = *conn;
    if shutdown.is_cancelled() {
        *draining = true;
    }
    // Reads below go straight to the socket; this keeps a busy connection from holding
    // its runtime thread (tokio's cooperative budget, as an awaited read would).
    tokio::task::consume_budget().await;
    // A read may decode into `items_per_byte` bytes of work items per byte (a shortest
    // line feeding every rule). With many rules a full-size read would need more than the
    // whole budget and wait for room that never comes, so a read is cut to what a quarter
    // of the budget covers (about 500 bytes with 10 000 rules and the default budget).
    let cap = (slot.budget() / 4 / (1 + items_per_byte)).clamp(MIN_READ, READ_MAX);
    rb.want = rb.want.min(cap);
    loop {
        let staged = ingest.staged_items() * crate::ingest::slots::WORK_ITEM_BYTES;
        let need = rb.buf.capacity().max(rb.buf.len() + rb.want)
            + rb.want * items_per_byte
            + overshoot
            + staged;
        rb.charged_items =
            (rb.want * items_per_byte / crate::ingest::slots::WORK_ITEM_BYTES).max(1);
        if !slot.hold(need, slot.evicted()).await {
            return Ok(0);
        }
        rb.prepare();
        // At most `want` bytes: what the budget was charged for.
        let spare = (rb.buf.capacity() - rb.buf.len()).min(rb.want);
        match sock.try_read_buf(&mut bytes::BufMut::limit(&mut rb.buf, spare)) {
            Ok(n) => {
                rb.read(n, spare);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if *draining {
                    return Ok(0);
                }
                // Nothing set aside waits for more input.
                ingest.flush().await;
                // Waiting, the connection holds only its buffer.
                slot.hold(rb.buf.capacity(), shutdown).await;
                // A connection quiet for IDLE_AFTER gives its buffer back; a busy one,
                // which often finds its socket empty for a moment, keeps it.
                let quiet = tokio::select! {
                    biased;
                    r = tokio::time::timeout(IDLE_AFTER, sock.readable()) => match r {
                        Ok(r) => {
                            r?;
                            false
                        }
                        Err(_) => true,
                    },
                    _ = shutdown.cancelled() => {
                        *draining = true;
                        false
                    }
                    _ = slot.evicted().cancelled() => return Ok(0),
                };
                if quiet {
                    rb.idle();
                    slot.hold(rb.buf.capacity(), shutdown).await;
                    tokio::select! {
                        biased;
                        r = sock.readable() => r?,
                        _ = shutdown.cancelled() => *draining = true,
                        _ = slot.evicted().cancelled() => return Ok(0),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a connection's reads need besides the socket and the buffer.
#[derive(Clone, Copy)]
struct Conn<'a> {
    /// Cancelled at shutdown.
    shutdown: &'a CancellationToken,
    /// Its slot and budget.
    slot: &'a Slot,
    /// Budget bytes of work items one input byte is charged for: for a pickle frame,
    /// the most it can decode into; for carbon plaintext, a typical line's
    /// ([`Ingest::line_items_per_byte`]), routed in pieces that keep to it.
    items_per_byte: usize,
    /// Budget bytes charged besides, for what a piece may make beyond its charge
    /// ([`Ingest::piece_overshoot_bytes`]; 0 for pickle).
    overshoot: usize,
}

/// How one TCP protocol cuts frames out of the stream (decoding them is
/// [`Ingest::receive`]'s, by the connection's input kind).
trait StreamFramer {
    /// Whether its frames are runs of carbon plaintext lines, which may be routed in
    /// pieces ([`Ingest::receive_lines`]); a pickle frame is routed whole.
    const LINES: bool;
    /// Moves every complete frame (a run of lines, a pickle body) out of `buf` into
    /// `out`; counts framing rejections on `ingest`. Returns false when the stream cannot
    /// be framed any further (the connection closes once `out` is processed).
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>) -> bool;
    /// At end of stream (`eof`) or shutdown: the unfinished tail as a last frame, if it
    /// is one.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) -> Option<Bytes>;
}

/// carbon plaintext lines.
struct Lines(LineFramer);

impl StreamFramer for Lines {
    const LINES: bool = true;
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>) -> bool {
        let framed = self.0.next_chunk(buf);
        ingest.reject(DropReason::LineTooLong, framed.too_long);
        out.extend(framed.chunk);
        true
    }

    /// At end of stream a last line without a newline is accepted; not when cut by
    /// shutdown or a reset.
    fn finish(&mut self, buf: &mut BytesMut, _: &mut Ingest, eof: bool) -> Option<Bytes> {
        if eof { self.0.finish(buf) } else { None }
    }
}

/// carbon pickle frames.
struct Frames(PickleFramer);

impl StreamFramer for Frames {
    const LINES: bool = false;
    /// A header over `max_pickle_frame_bytes` is counted (`frame_too_large`) and ends
    /// the stream: its body cannot be skipped safely, so the frames after it cannot be
    /// found (carbon closes the connection there too).
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>) -> bool {
        while let Some(ev) = self.0.next_frame(buf) {
            match ev {
                FrameEvent::TooLarge(_) => ingest.reject(DropReason::FrameTooLarge, 1),
                FrameEvent::Frame(body) => out.push(body),
            }
        }
        !self.0.refused()
    }

    /// Bytes of an unfinished frame at end of stream are a bad frame.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) -> Option<Bytes> {
        if eof && self.0.truncated(buf) {
            ingest.reject(DropReason::BadFrame, 1);
        }
        None
    }
}

async fn plaintext_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken, slot: Slot) {
    let framer = LineFramer::new(ingest.limits().max_line_bytes);
    serve(sock, ingest, shutdown, Lines(framer), slot).await;
}

async fn pickle_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken, slot: Slot) {
    let framer = PickleFramer::new(ingest.limits().max_pickle_frame_bytes);
    serve(sock, ingest, shutdown, Frames(framer), slot).await;
}

/// Decodes and routes each frame, then submits it to the journal with its verdict
/// ([`Ingest::receive`]); runs of lines in pieces of at most `line_items` work items
/// ([`Ingest::receive_lines`]).
async fn process(frames: &mut Vec<Bytes>, ingest: &mut Ingest, line_items: Option<usize>) {
    let now = crate::time::now();
    for f in frames.drain(..) {
        match line_items {
            Some(max) => ingest.receive_lines(&f, now, max).await,
            None => ingest.receive(&f, now).await,
        }
    }
}

/// The connection loop: read, frame, decode, journal, and hand batches on (waiting while
/// a worker queue is full) one read later, so the journal writes a read's frames while
/// the next read is decoded; until end of stream, a read error or shutdown.
async fn serve<D: StreamFramer>(
    mut sock: TcpStream,
    mut ingest: Ingest,
    shutdown: CancellationToken,
    mut d: D,
    slot: Slot,
) {
    let _open = OpenConnection::new(ingest.stats());
    let peer = sock
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut rb = ReadBuf::new();
    let mut frames = Vec::new();
    let mut draining = false;
    // Only a clean end of stream completes an unfinished last line; after a reset it may
    // be a cut-off line that would parse into a wrong datapoint.
    let mut eof = false;
    let conn = Conn {
        shutdown: &shutdown,
        slot: &slot,
        items_per_byte: if D::LINES {
            ingest.line_items_per_byte()
        } else {
            ingest.items_per_byte()
        },
        overshoot: if D::LINES {
            ingest.piece_overshoot_bytes()
        } else {
            0
        },
    };
    loop {
        match read_more(&mut sock, &mut rb, &conn, &mut ingest, &mut draining).await {
            Ok(0) => {
                eof = !draining && !slot.evicted().is_cancelled();
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection read error");
                break;
            }
        }
        let framing = d.frames(&mut rb.buf, &mut ingest, &mut frames);
        if !frames.is_empty() {
            slot.progress();
        }
        process(
            &mut frames,
            &mut ingest,
            D::LINES.then_some(rb.charged_items),
        )
        .await;
        if !framing {
            // The frames before it are processed; nothing after it can be.
            tracing::debug!(%peer, "closing a connection whose stream cannot be framed");
            ingest.flush().await;
            return;
        }
        // The journal writes this read's frames while the next one is read and decoded.
        ingest.stage().await;
    }
    if slot.evicted().is_cancelled() {
        // Evicted: what it had completed is handed on; the rest is dropped with it.
        ingest.flush().await;
        return;
    }
    frames.extend(d.finish(&mut rb.buf, &mut ingest, eof));
    process(
        &mut frames,
        &mut ingest,
        D::LINES.then_some(rb.charged_items),
    )
    .await;
    ingest.flush().await;
}

/// Counts a connection in `active_connections` for as long as it lives.
struct OpenConnection(Arc<crate::drops::Stats>);

impl OpenConnection {
    fn new(stats: Arc<crate::drops::Stats>) -> Self {
        stats
            .active_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .active_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
