//! TCP connections: plaintext lines and pickle frames.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::worker::now_unix;
use crate::codec::pickle::{FrameEvent, PickleDecoder, PickleFramer};
use crate::codec::plaintext::LineFramer;
use crate::drops::DropReason;
use crate::ingest::{Ingest, Pipeline};
use crate::journal::record::Kind;

/// Bytes requested per read.
const READ_BYTES: usize = 256 * 1024;

pub(super) async fn accept_loop(
    listener: TcpListener,
    index: u16,
    kind: Kind,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                let sd = shutdown.clone();
                let p = Arc::clone(&pipeline);
                let ingest = Ingest::new(p, peer, index, kind);
                if kind == Kind::PickleTcp {
                    tracker.spawn(pickle_conn(sock, ingest, sd));
                } else {
                    tracker.spawn(plaintext_conn(sock, ingest, sd));
                }
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads into `buf`; on shutdown only what the kernel already holds. `Ok(0)` = end.
async fn read_more(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    shutdown: &CancellationToken,
    draining: &mut bool,
) -> std::io::Result<usize> {
    buf.reserve(READ_BYTES);
    if !*draining {
        tokio::select! {
            biased;
            r = sock.read_buf(buf) => return r,
            _ = shutdown.cancelled() => *draining = true,
        }
    }
    match sock.try_read_buf(buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

/// How one TCP protocol cuts frames out of the stream and decodes them.
trait StreamDecoder {
    /// Moves every complete frame (a run of lines, a pickle body) out of `buf` into
    /// `out`; counts framing rejections on `ingest`.
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>);
    /// Decodes one frame received at `now`.
    fn decode(&mut self, frame: &[u8], ingest: &mut Ingest, now: f64);
    /// At end of stream (`eof`) or shutdown: the unfinished tail as a last frame, if it
    /// is one.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) -> Option<Bytes>;
}

/// carbon plaintext lines.
struct Lines(LineFramer);

impl StreamDecoder for Lines {
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>) {
        let framed = self.0.next_chunk(buf);
        ingest.reject(DropReason::LineTooLong, framed.too_long);
        out.extend(framed.chunk);
    }

    fn decode(&mut self, frame: &[u8], ingest: &mut Ingest, now: f64) {
        ingest.plaintext(frame, now);
    }

    /// At end of stream a last line without a newline is accepted; not when cut by
    /// shutdown or a reset.
    fn finish(&mut self, buf: &mut BytesMut, _: &mut Ingest, eof: bool) -> Option<Bytes> {
        if eof { self.0.finish(buf) } else { None }
    }
}

/// carbon pickle frames.
struct Frames {
    framer: PickleFramer,
    decoder: PickleDecoder,
}

impl StreamDecoder for Frames {
    fn frames(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, out: &mut Vec<Bytes>) {
        while let Some(ev) = self.framer.next_frame(buf) {
            match ev {
                FrameEvent::TooLarge(_) => ingest.reject(DropReason::FrameTooLarge, 1),
                FrameEvent::Frame(body) => out.push(body),
            }
        }
    }

    fn decode(&mut self, frame: &[u8], ingest: &mut Ingest, now: f64) {
        ingest.pickle(&mut self.decoder, frame, now);
    }

    /// Bytes of an unfinished frame at end of stream are a bad frame.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) -> Option<Bytes> {
        if eof && self.framer.truncated(buf) {
            ingest.reject(DropReason::BadFrame, 1);
        }
        None
    }
}

async fn plaintext_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken) {
    let framer = LineFramer::new(ingest.limits().max_line_bytes);
    serve(sock, ingest, shutdown, Lines(framer)).await;
}

async fn pickle_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken) {
    let d = Frames {
        framer: PickleFramer::new(ingest.limits().max_pickle_frame_bytes),
        decoder: PickleDecoder::new(),
    };
    serve(sock, ingest, shutdown, d).await;
}

/// Journals each frame, then decodes it (the journal writes while the frame decodes).
async fn process(
    frames: &mut Vec<Bytes>,
    d: &mut impl StreamDecoder,
    ingest: &mut Ingest,
    peer: SocketAddr,
) {
    let now = now_unix();
    for f in frames.drain(..) {
        ingest.journal(&f, now, peer).await;
        d.decode(&f, ingest, now);
    }
}

/// The connection loop: read, frame, journal, decode, hand batches on (waiting while a
/// worker queue is full), until end of stream, a read error or shutdown.
async fn serve(
    mut sock: TcpStream,
    mut ingest: Ingest,
    shutdown: CancellationToken,
    mut d: impl StreamDecoder,
) {
    let stats = ingest.stats();
    stats
        .active_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let peer = sock
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut frames = Vec::new();
    let mut draining = false;
    // Only a clean end of stream completes an unfinished last line; after a reset it may
    // be a cut-off line that would parse into a wrong datapoint.
    let mut eof = false;
    loop {
        match read_more(&mut sock, &mut buf, &shutdown, &mut draining).await {
            Ok(0) => {
                eof = !draining;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection read error");
                break;
            }
        }
        d.frames(&mut buf, &mut ingest, &mut frames);
        process(&mut frames, &mut d, &mut ingest, peer).await;
        ingest.flush().await;
    }
    frames.extend(d.finish(&mut buf, &mut ingest, eof));
    process(&mut frames, &mut d, &mut ingest, peer).await;
    ingest.flush().await;
    stats
        .active_connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}
