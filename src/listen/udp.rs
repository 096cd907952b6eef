//! UDP plaintext: each datagram (up to 64 KiB, read whole) is a run of lines.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::aggregate::worker::now_unix;
use crate::ingest::{Ingest, Pipeline};
use crate::journal::record::Kind;

/// Largest UDP payload.
const DATAGRAM_BYTES: usize = 65536;

pub(super) async fn serve(
    sock: UdpSocket,
    index: u16,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    // A large kernel buffer absorbs bursts of datagrams while a frame is being processed.
    let want = pipeline.limits.udp_receive_buffer_bytes;
    let sock_ref = socket2::SockRef::from(&sock);
    if let Err(e) = sock_ref.set_recv_buffer_size(want) {
        tracing::warn!(error = %e, "cannot set the UDP receive buffer");
    }
    if let Ok(got) = sock_ref.recv_buffer_size()
        && got < want
    {
        tracing::info!(
            requested = want,
            got,
            "UDP receive buffer capped by net.core.rmem_max"
        );
    }
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut ingest = Ingest::new(pipeline, local, index, Kind::PlaintextUdp);
    loop {
        let r = tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => break,
        };
        match r {
            Ok((n, peer)) => datagram(&mut ingest, &buf[..n], peer).await,
            Err(e) => tracing::debug!(error = %e, "udp receive error"),
        }
    }
    // Datagrams already queued in the kernel are still read.
    while let Ok((n, peer)) = sock.try_recv_from(&mut buf) {
        datagram(&mut ingest, &buf[..n], peer).await;
    }
}

async fn datagram(ingest: &mut Ingest, bytes: &[u8], peer: std::net::SocketAddr) {
    let now = now_unix();
    let frame = Bytes::copy_from_slice(bytes);
    ingest.journal(&frame, now, peer).await;
    ingest.plaintext(&frame, now);
    ingest.flush_nowait().await;
}
