//! UDP plaintext: each datagram (up to 64 KiB, read whole) is a run of lines.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::aggregate::worker::now_unix;
use crate::ingest::{Ingest, Pipeline};

/// Largest UDP payload.
const DATAGRAM_BYTES: usize = 65536;

pub(super) async fn serve(sock: UdpSocket, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut ingest = Ingest::new(pipeline, local);
    loop {
        let r = tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => break,
        };
        match r {
            Ok((n, _peer)) => {
                ingest.plaintext(&buf[..n], now_unix());
                ingest.flush_nowait();
            }
            Err(e) => tracing::debug!(error = %e, "udp receive error"),
        }
    }
    // Datagrams already queued in the kernel are still read.
    while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
        ingest.plaintext(&buf[..n], now_unix());
        ingest.flush_nowait();
    }
}
