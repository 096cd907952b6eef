//! UDP plaintext: each datagram (up to 64 KiB, read whole) is a run of lines.
//!
//! Two tasks per socket. The receiver reads datagrams as fast as the kernel delivers
//! them and queues each in memory for the processor (decode, route, journal with its
//! verdict, hand to the workers). A burst the processor cannot keep up with (a cold route cache computes
//! every route once) waits in that queue, bounded by `limits.udp_queue_bytes`, instead of
//! overflowing the kernel's receive buffer, where datagrams vanish without a count. A
//! datagram that does not fit is dropped as `queue_full`, counted and ledgered with the
//! interval of its datapoints; it is journaled refused, so `aggd replay --lost` can
//! recompute it and nothing else reads it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::plaintext;
use crate::datapoint::Kind;
use crate::ingest::{Ingest, Pipeline};
use crate::journal::{NewRecord, Verdict};
use crate::reason::DropReason;
use crate::time::Window;

/// Largest UDP payload.
const DATAGRAM_BYTES: usize = 65536;

/// A received datagram on its way to the processor.
struct Datagram {
    bytes: Bytes,
    now: f64,
    peer: SocketAddr,
}

pub(super) async fn serve(
    sock: UdpSocket,
    index: u16,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    // A large kernel buffer absorbs bursts between two reads.
    let want = pipeline.routes.limits.udp_receive_buffer_bytes;
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
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let queued = Arc::new(AtomicUsize::new(0));
    // The byte budget bounds the queue; the message bound only caps tiny datagrams.
    let (tx, rx) = mpsc::channel(1 << 16);
    let ingest = Ingest::new(Arc::clone(&pipeline), local, index, Kind::PlaintextUdp);
    let processor = tokio::spawn(process(ingest, rx, Arc::clone(&queued)));
    receive(&sock, index, &pipeline, &queued, &tx, &shutdown).await;
    drop(tx);
    let _ = processor.await;
}

/// Reads datagrams until shutdown, then what the kernel still holds.
async fn receive(
    sock: &UdpSocket,
    index: u16,
    pipeline: &Pipeline,
    queued: &AtomicUsize,
    tx: &mpsc::Sender<Datagram>,
    shutdown: &CancellationToken,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        let r = tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => break,
        };
        match r {
            Ok((n, peer)) => enqueue(&buf[..n], peer, index, pipeline, queued, tx).await,
            Err(e) => tracing::debug!(error = %e, "udp receive error"),
        }
    }
    // Datagrams already queued in the kernel are still read.
    while let Ok((n, peer)) = sock.try_recv_from(&mut buf) {
        enqueue(&buf[..n], peer, index, pipeline, queued, tx).await;
    }
}

/// Queues one datagram for the processor (which journals it), or drops it as
/// `queue_full` when the queue holds `udp_queue_bytes` already: then it is journaled here
/// with a verdict that refuses it whole, so `aggd replay --lost` can recompute its window
/// while every other read of the journal skips it. In cluster mode, with the publish lag
/// over its limit, it is dropped before it is journaled.
async fn enqueue(
    bytes: &[u8],
    peer: SocketAddr,
    index: u16,
    pipeline: &Pipeline,
    queued: &AtomicUsize,
    tx: &mpsc::Sender<Datagram>,
) {
    let now = crate::time::now();
    let d = Datagram {
        bytes: Bytes::copy_from_slice(bytes),
        now,
        peer,
    };
    if pipeline.cluster.as_ref().is_some_and(|c| c.over_limit()) {
        return drop_datagram(pipeline, &d);
    }
    let len = d.bytes.len();
    let fits =
        queued.fetch_add(len, Ordering::Relaxed) + len <= pipeline.routes.limits.udp_queue_bytes;
    let refused = if fits {
        match tx.try_send(d) {
            Ok(()) => return,
            Err(e) => e.into_inner(),
        }
    } else {
        d
    };
    queued.fetch_sub(len, Ordering::Relaxed);
    if let Some(j) = &pipeline.journal {
        // Nobody waits for this ticket: nothing of the datagram reaches a worker.
        let _ticket = j
            .submit(NewRecord {
                received_us: (refused.now * 1e6) as i64,
                listener: index,
                kind: Kind::PlaintextUdp,
                peer,
                tenant: None,
                payload: refused.bytes.clone(),
                verdict: Verdict::all(DropReason::QueueFull),
                attachment: None,
            })
            .await;
    }
    drop_datagram(pipeline, &refused);
}

/// Counts and ledgers every datapoint of a datagram the queue had no room for, over the
/// interval its timestamps span.
fn drop_datagram(pipeline: &Pipeline, d: &Datagram) {
    let (mut n, mut window) = (0u64, Window::at(d.now));
    for line in plaintext::lines(&d.bytes) {
        if let Ok(Some(dp)) = plaintext::parse_line(line, d.now, &pipeline.routes.limits) {
            n += 1;
            window = window.union(Window::at(dp.timestamp));
        }
    }
    pipeline.stats.record_drop(
        DropReason::QueueFull,
        n,
        window,
        &format_args!("UDP queue full, datagram from {}", d.peer),
    );
}

/// Decodes queued datagrams and hands their datapoints to the workers: everything
/// queued at once, then one flush.
async fn process(mut ingest: Ingest, mut rx: mpsc::Receiver<Datagram>, queued: Arc<AtomicUsize>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 64).await > 0 {
        for d in batch.drain(..) {
            ingest.receive_from(&d.bytes, d.now, d.peer).await;
            queued.fetch_sub(d.bytes.len(), Ordering::Relaxed);
        }
        ingest.flush().await;
    }
}
