//! TCP connections: plaintext lines and pickle frames.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::worker::now_unix;
use crate::codec::Limits;
use crate::codec::pickle::{FrameEvent, PickleDecoder, PickleFramer};
use crate::codec::plaintext::LineFramer;
use crate::config::Protocol;
use crate::drops::DropReason;
use crate::ingest::{Ingest, Pipeline};

/// Bytes requested per read.
const READ_BYTES: usize = 64 * 1024;

pub(super) async fn accept_loop(
    listener: TcpListener,
    protocol: Protocol,
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
                let ingest = Ingest::new(Arc::clone(&pipeline), peer);
                let sd = shutdown.clone();
                match protocol {
                    Protocol::Plaintext => tracker.spawn(plaintext_conn(sock, ingest, sd)),
                    Protocol::Pickle => tracker.spawn(pickle_conn(sock, ingest, sd)),
                };
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

/// How one TCP protocol turns buffered bytes into datapoints.
trait StreamDecoder {
    /// Takes every complete line or frame out of `buf`.
    fn decode(&mut self, buf: &mut BytesMut, ingest: &mut Ingest);
    /// At end of stream (`eof`) or shutdown: what to do with an unfinished tail.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool);
}

/// carbon plaintext lines.
struct Lines(LineFramer);

impl StreamDecoder for Lines {
    fn decode(&mut self, buf: &mut BytesMut, ingest: &mut Ingest) {
        let framed = self.0.next_chunk(buf);
        ingest.reject(DropReason::LineTooLong, framed.too_long);
        if let Some(chunk) = framed.chunk {
            ingest.plaintext(&chunk, now_unix());
        }
    }

    /// At end of stream a last line without a newline is accepted; not when cut by
    /// shutdown.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) {
        if eof && let Some(last) = self.0.finish(buf) {
            ingest.plaintext(&last, now_unix());
        }
    }
}

/// carbon pickle frames.
struct Frames {
    framer: PickleFramer,
    decoder: PickleDecoder,
    limits: Limits,
}

impl StreamDecoder for Frames {
    fn decode(&mut self, buf: &mut BytesMut, ingest: &mut Ingest) {
        while let Some(ev) = self.framer.next_frame(buf) {
            match ev {
                FrameEvent::TooLarge(_) => ingest.reject(DropReason::FrameTooLarge, 1),
                FrameEvent::Frame(body) => {
                    let r = self
                        .decoder
                        .decode(&body, now_unix(), &self.limits, |r| ingest.accept(r));
                    if let Err(reason) = r {
                        ingest.reject(reason, 1);
                    }
                }
            }
        }
    }

    /// Bytes of an unfinished frame at end of stream are a bad frame.
    fn finish(&mut self, buf: &mut BytesMut, ingest: &mut Ingest, eof: bool) {
        if eof && self.framer.truncated(buf) {
            ingest.reject(DropReason::BadFrame, 1);
        }
    }
}

async fn plaintext_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken) {
    let framer = LineFramer::new(ingest.limits().max_line_bytes);
    serve(sock, ingest, shutdown, Lines(framer)).await;
}

async fn pickle_conn(sock: TcpStream, ingest: Ingest, shutdown: CancellationToken) {
    let limits = ingest.limits().clone();
    let d = Frames {
        framer: PickleFramer::new(limits.max_pickle_frame_bytes),
        decoder: PickleDecoder::new(),
        limits,
    };
    serve(sock, ingest, shutdown, d).await;
}

/// The connection loop: read, decode, hand batches on (waiting while a worker queue is
/// full), until end of stream, a read error or shutdown.
async fn serve(
    mut sock: TcpStream,
    mut ingest: Ingest,
    shutdown: CancellationToken,
    mut d: impl StreamDecoder,
) {
    let mut buf = BytesMut::with_capacity(READ_BYTES);
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
                tracing::debug!(peer = ?sock.peer_addr().ok(), error = %e, "connection read error");
                break;
            }
        }
        d.decode(&mut buf, &mut ingest);
        ingest.flush().await;
    }
    d.finish(&mut buf, &mut ingest, eof);
    ingest.flush().await;
}
