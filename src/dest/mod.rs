//! Destinations: carbon-cache, go-carbon, a relay, or stdout.
//!
//! Each destination has its own bounded queue (counted in datapoints, `queue_datapoints`)
//! and its own sender task. Workers and listeners only ever `offer` to a queue, which never
//! blocks: when a queue is full the batch is dropped for that destination alone and counted
//! as `destination_full`. A dead or slow destination therefore fills only its own queue.
//!
//! The sender connects (and reconnects after any error) with exponential backoff from
//! 100 ms to 5 s, coalesces queued batches into writes of up to ~10 000 datapoints, and
//! writes carbon pickle frames (protocol 2, `max_datapoints_per_message` per frame) or
//! plaintext lines. A batch whose write failed is written again after reconnecting.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::worker::Sink;
use crate::codec::{pickle, plaintext};
use crate::config::{DestAddress, DestProtocol, DestinationConfig};
use crate::datapoint::{OutBatch, window};
use crate::drops::{DropReason, Stats};
use crate::journal::ledger::Window;

/// Counters of one destination.
#[derive(Debug, Default)]
pub struct DestCounters {
    /// Datapoints written.
    pub sent: AtomicU64,
    /// Datapoints dropped because the queue was full.
    pub full_queue_drops: AtomicU64,
    /// Datapoints waiting in the queue now.
    pub queued: AtomicUsize,
}

struct Dest {
    name: String,
    tx: mpsc::Sender<OutBatch>,
    max_queued: usize,
    counters: Arc<DestCounters>,
    /// Time window covered by what is queued (a superset: reset only when the queue
    /// empties), ledgered if it is still queued when shutdown's drain ends.
    queued_window: Arc<Mutex<Option<Window>>>,
}

/// The destinations' queues; a [`Sink`] that offers each batch to every destination.
pub struct Destinations {
    dests: Vec<Dest>,
    stats: Arc<Stats>,
}

/// Handle on the running sender tasks.
pub struct Senders {
    tasks: Vec<JoinHandle<()>>,
    drain: CancellationToken,
}

impl Destinations {
    /// Starts one sender task per destination on the current tokio runtime.
    pub fn start(configs: &[DestinationConfig], stats: Arc<Stats>) -> (Arc<Destinations>, Senders) {
        let drain = CancellationToken::new();
        let mut dests = Vec::new();
        let mut tasks = Vec::new();
        for cfg in configs {
            let (tx, rx) = mpsc::channel(cfg.queue_datapoints.clamp(16, 1 << 16));
            let counters = Arc::new(DestCounters::default());
            let queued_window = Arc::new(Mutex::new(None));
            tasks.push(tokio::spawn(run_sender(
                cfg.clone(),
                rx,
                Arc::clone(&counters),
                Arc::clone(&queued_window),
                Arc::clone(&stats),
                drain.clone(),
            )));
            dests.push(Dest {
                name: cfg.name().to_string(),
                tx,
                max_queued: cfg.queue_datapoints,
                counters,
                queued_window,
            });
        }
        (
            Arc::new(Destinations { dests, stats }),
            Senders { tasks, drain },
        )
    }

    /// Each destination's name and counters.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &DestCounters)> {
        self.dests.iter().map(|d| (d.name.as_str(), &*d.counters))
    }
}

impl Sink for Destinations {
    fn send(&self, batch: OutBatch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let w = window(&batch);
        for d in &self.dests {
            let before = d.counters.queued.fetch_add(n, Ordering::Relaxed);
            if before + n > d.max_queued || d.tx.try_send(Arc::clone(&batch)).is_err() {
                d.counters.queued.fetch_sub(n, Ordering::Relaxed);
                d.counters
                    .full_queue_drops
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.stats.record_drop(
                    DropReason::DestinationFull,
                    n as u64,
                    w,
                    &format_args!("destination {}", d.name),
                );
            } else if let Ok(mut q) = d.queued_window.lock() {
                // After the add: a sender that empties the queue meanwhile cannot erase it.
                *q = Some(q.map_or(w, |q| q.union(w)));
            }
        }
    }
}

impl Senders {
    /// Lets every sender write what is queued, then stop; waits until `deadline` at most.
    /// What is still queued after that is counted as `destination_down` and the tasks are
    /// stopped.
    pub async fn drain(self, dests: &Destinations, deadline: tokio::time::Instant) {
        self.drain.cancel();
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        for d in &dests.dests {
            let left = d.counters.queued.swap(0, Ordering::Relaxed);
            let w = d.queued_window.lock().ok().and_then(|q| *q);
            if let Some(w) = w {
                dests.stats.record_drop(
                    DropReason::DestinationDown,
                    left as u64,
                    w,
                    &format_args!("destination {} not reachable before shutdown", d.name),
                );
            }
        }
    }
}

type Conn = Box<dyn AsyncWrite + Unpin + Send>;

async fn connect(cfg: &DestinationConfig) -> std::io::Result<Conn> {
    match &cfg.address {
        DestAddress::Stdout => Ok(Box::new(tokio::io::stdout())),
        DestAddress::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
    }
}

fn encode(cfg: &DestinationConfig, batches: &[OutBatch], buf: &mut Vec<u8>) {
    buf.clear();
    let pickle_out = cfg.protocol == DestProtocol::Pickle && cfg.address != DestAddress::Stdout;
    for b in batches {
        if pickle_out {
            if let Err(e) = pickle::encode_frames(b, cfg.max_datapoints_per_message, buf) {
                tracing::error!(error = %e, "pickle encoding failed");
            }
        } else {
            plaintext::encode_lines(b, buf);
        }
    }
}

async fn run_sender(
    cfg: DestinationConfig,
    mut rx: mpsc::Receiver<OutBatch>,
    counters: Arc<DestCounters>,
    queued_window: Arc<Mutex<Option<Window>>>,
    stats: Arc<Stats>,
    drain: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_warn: Option<Instant> = None;
    let mut buf = Vec::new();
    let mut batches = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            b = rx.recv() => b,
            _ = drain.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        let mut n = first.len();
        batches.clear();
        batches.push(first);
        while n < 10_000 {
            match rx.try_recv() {
                Ok(b) => {
                    n += b.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        encode(&cfg, &batches, &mut buf);
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(&cfg).await {
                    Ok(c) => {
                        tracing::info!(destination = cfg.name(), "connected");
                        backoff = Duration::from_millis(100);
                        conn.insert(c)
                    }
                    Err(e) => {
                        if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(destination = cfg.name(), error = %e, "cannot connect; retrying");
                            last_warn = Some(Instant::now());
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            match async {
                c.write_all(&buf).await?;
                c.flush().await
            }
            .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(destination = cfg.name(), error = %e, "write failed; reconnecting");
                    conn = None;
                }
            }
        }
        if counters.queued.fetch_sub(n, Ordering::Relaxed) == n
            && let Ok(mut q) = queued_window.lock()
        {
            *q = None;
        }
        counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        stats.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    if let Some(mut c) = conn {
        let _ = c.flush().await;
        let _ = c.shutdown().await;
    }
}
