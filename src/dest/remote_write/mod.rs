//! A Prometheus remote-write destination (`protocol = "prometheus_remote_write"`;
//! operator's guide in `docs/remote-write.md`).
//!
//! Points are mapped to Prometheus series ([`crate::rules::mapping`]: graphite_exporter's
//! default naming, Graphite tags as labels, the optional mapping file), grouped per series
//! with samples in timestamp order (of two samples of one series at one timestamp in a
//! request, the later one), and POSTed as remote write 1.0 ([`crate::codec::write_request`]:
//! protobuf `WriteRequest`, snappy block compression, `batch_datapoints` samples at most).
//!
//! Each series' labels are encoded once (protobuf bytes kept per output name) and copied
//! into every request that carries it, not rebuilt per sample.
//!
//! Series are spread over `max_in_flight` lanes by a hash of their output name; each lane
//! has one request in flight, so up to `max_in_flight` requests await their answers at
//! once while every series' samples still arrive in order (as Prometheus's queue manager
//! shards).
//!
//! Delivery, per lane one request at a time:
//! - 2xx: delivered (`destination_sent`, `destination_batches` counts requests);
//! - a network error, a timeout (`timeout`), 5xx or 429: sent again, with the same body,
//!   after a backoff doubling from 100 ms to 5 s (`destination_connection_failures`,
//!   event `destination_request_failed`). Re-sending is safe: a sample the store already
//!   holds is a duplicate with the same value;
//! - another 4xx: the store refuses the request and would refuse it again. The batch is
//!   dropped as `destination_rejected`: counted, logged with the answer, and ledgered, so
//!   `aggd replay --lost` recomputes and re-sends the window once the cause is fixed.
//!
//! What waits in the queue meanwhile is bounded like every destination's queue (a full
//! queue drops as `destination_full`), and what is still queued or unanswered when
//! shutdown's drain ends is `destination_down`; both are ledgered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{Link, set_connected};
use crate::config::prometheus::RemoteWriteConfig;
use crate::datapoint::{OutBatch, OutPoint, window};
use crate::events::Event;
use crate::reason::DropReason;
use crate::time::Backoff;

mod writer;

pub use writer::{RemoteWriter, WriteError};

/// Waits for the next queued batch (module docs of [`super`]: drain takes what is left).
async fn next_batch(
    rx: &mut mpsc::Receiver<OutBatch>,
    drain: &CancellationToken,
) -> Option<OutBatch> {
    tokio::select! {
        biased;
        b = rx.recv() => b,
        _ = drain.cancelled() => rx.try_recv().ok(),
    }
}

/// Requests a lane may have waiting besides the one in flight.
const LANE_QUEUE: usize = 1;

/// The sender task of a remote-write destination (module docs): takes queued batches,
/// splits their points over the lanes by output name, and hands each lane its requests.
/// The lanes are tasks of a set it owns: when this task ends or is aborted (shutdown's
/// deadline), so are they.
pub(super) async fn run(
    link: Link,
    cfg: RemoteWriteConfig,
    mut rx: mpsc::Receiver<OutBatch>,
    drain: CancellationToken,
) {
    let name = &link.name;
    let writer = loop {
        match RemoteWriter::new(&cfg) {
            Ok(w) => break w,
            Err(e) => {
                link.stats.events.emit(
                    Event::DestinationConnectFailed,
                    &format_args!("destination {name}: {e}; retrying"),
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let link = Arc::new(link);
    let batch = cfg.batch_datapoints;
    let lanes = cfg.max_in_flight.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut queues = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, lane_rx) = mpsc::channel::<Vec<OutPoint>>(LANE_QUEUE);
        tasks.spawn(lane(Arc::clone(&link), writer.lane(), lane_rx));
        queues.push(tx);
    }
    let mut points: Vec<OutPoint> = Vec::new();
    let mut parts: Vec<Vec<OutPoint>> = vec![Vec::new(); lanes];
    while let Some(first) = next_batch(&mut rx, &drain).await {
        points.clear();
        points.extend_from_slice(&first);
        while points.len() < batch * lanes {
            match rx.try_recv() {
                Ok(b) => points.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        for p in points.drain(..) {
            let l = (crate::hash::fnv1a64(p.path.as_bytes()) % lanes as u64) as usize;
            parts[l].push(p);
        }
        for (l, part) in parts.iter_mut().enumerate() {
            while !part.is_empty() {
                // The points move to the lane (no copy): the last piece is the vector.
                let rest = part.split_off(part.len().min(batch));
                let chunk = std::mem::replace(part, rest);
                let n = chunk.len();
                if queues[l].send(chunk).await.is_err() {
                    // The lane ended (it cannot while this task lives); nothing to send to.
                    link.done(n);
                }
            }
        }
    }
    drop(queues);
    while tasks.join_next().await.is_some() {}
}

/// One lane: sends each request it is handed until it is delivered or refused (module
/// docs), one at a time.
async fn lane(link: Arc<Link>, mut writer: RemoteWriter, mut rx: mpsc::Receiver<Vec<OutPoint>>) {
    let name = &link.name;
    let mut backoff = Backoff::DESTINATION;
    while let Some(mut chunk) = rx.recv().await {
        let mut body = writer.body(&chunk);
        let n = chunk.len();
        let mut fenced = 0;
        loop {
            // The fence, again before every attempt (cluster mode): what this node may no
            // longer emit is left out of the request.
            if let Some((kept, f)) = link.unfenced(chunk.iter()) {
                (chunk, fenced) = (kept, fenced + f);
                body = writer.body(&chunk);
            }
            if chunk.is_empty() {
                break;
            }
            let m = chunk.len() as u64;
            match writer.post(body.clone()).await {
                Ok(()) => {
                    backoff.reset();
                    set_connected(&link.counters, true);
                    link.counters.sent.fetch_add(m, Ordering::Relaxed);
                    link.counters.batches.fetch_add(1, Ordering::Relaxed);
                    link.stats.sent.fetch_add(m, Ordering::Relaxed);
                    break;
                }
                Err(WriteError::Retry(e)) => {
                    set_connected(&link.counters, false);
                    link.counters
                        .connection_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.delay();
                    link.stats.events.emit(
                        Event::DestinationRequestFailed,
                        &format_args!(
                            "destination {name}: {e}; {m} datapoints sent again in {wait:?}"
                        ),
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(WriteError::Rejected(e)) => {
                    link.counters.rejected.fetch_add(m, Ordering::Relaxed);
                    link.stats.record_drop(
                        DropReason::DestinationRejected,
                        m,
                        window(&chunk),
                        &format_args!("destination {name} refused a request: {e}"),
                    );
                    break;
                }
            }
        }
        link.count_fenced(fenced);
        link.done(n);
    }
}
