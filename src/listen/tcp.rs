//! TCP connections: plaintext lines and pickle frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::worker::now_unix;
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

fn log_read_error(peer: SocketAddr, e: &std::io::Error) {
    tracing::debug!(%peer, error = %e, "connection read error");
}

async fn plaintext_conn(mut sock: TcpStream, mut ingest: Ingest, shutdown: CancellationToken) {
    let peer = sock.peer_addr().ok();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut framer = LineFramer::new(ingest.limits().max_line_bytes);
    let mut draining = false;
    loop {
        match read_more(&mut sock, &mut buf, &shutdown, &mut draining).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                if let Some(p) = peer {
                    log_read_error(p, &e);
                }
                break;
            }
        }
        let framed = framer.next_chunk(&mut buf);
        ingest.reject(DropReason::LineTooLong, framed.too_long);
        if let Some(chunk) = framed.chunk {
            ingest.plaintext(&chunk, now_unix());
        }
        ingest.flush().await;
    }
    // At end of stream a last line without a newline is accepted; not when cut by shutdown.
    if !draining && let Some(last) = framer.finish(&mut buf) {
        ingest.plaintext(&last, now_unix());
    }
    ingest.flush().await;
}

async fn pickle_conn(mut sock: TcpStream, mut ingest: Ingest, shutdown: CancellationToken) {
    let peer = sock.peer_addr().ok();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let limits = ingest.limits().clone();
    let mut framer = PickleFramer::new(limits.max_pickle_frame_bytes);
    let mut decoder = PickleDecoder::new();
    let mut draining = false;
    loop {
        match read_more(&mut sock, &mut buf, &shutdown, &mut draining).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                if let Some(p) = peer {
                    log_read_error(p, &e);
                }
                break;
            }
        }
        while let Some(ev) = framer.next_frame(&mut buf) {
            match ev {
                FrameEvent::TooLarge(_) => ingest.reject(DropReason::FrameTooLarge, 1),
                FrameEvent::Frame(body) => {
                    let now = now_unix();
                    let r = decoder.decode(&body, now, &limits, |r| ingest.accept(r));
                    if let Err(reason) = r {
                        ingest.reject(reason, 1);
                    }
                }
            }
        }
        ingest.flush().await;
    }
    if !draining && framer.truncated(&buf) {
        ingest.reject(DropReason::BadFrame, 1);
    }
    ingest.flush().await;
}
