//! Assembles the daemon: destinations, workers, route cache and listeners, and takes them
//! down in order.
//!
//! Shutdown order (each step finishes before the next):
//! 1. listeners stop accepting; connections process what the kernel already holds and close;
//! 2. workers receive `Shutdown`, emit every dirty bucket (open intervals included) and exit;
//! 3. destination senders write what is queued, for at most `drain_timeout`; what is left
//!    is counted as `destination_down`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::series::Settings;
use crate::aggregate::worker::WorkerPool;
use crate::config::Config;
use crate::dest::{Destinations, Senders};
use crate::drops::Stats;
use crate::ingest::Pipeline;
use crate::listen::BoundListener;
use crate::route::Router;

/// Longest time shutdown waits for destinations to take what is queued.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running aggd.
pub struct Server {
    addrs: Vec<(&'static str, SocketAddr)>,
    stats: Arc<Stats>,
    dests: Arc<Destinations>,
    senders: Senders,
    workers: WorkerPool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Starts aggd on already-bound listeners. Must be called inside a tokio runtime.
///
/// Errors: a listener socket that cannot be registered with tokio, or a worker thread that
/// cannot be spawned.
pub async fn start(config: Config, listeners: Vec<BoundListener>) -> std::io::Result<Server> {
    let stats = Arc::new(Stats::default());
    if config.destinations.is_empty() {
        tracing::warn!("no [[destination]]: aggregates are computed and discarded");
    }
    let (dests, senders) = Destinations::start(&config.destinations, Arc::clone(&stats));
    let a = &config.aggregation;
    let workers = WorkerPool::spawn(
        config.workers.count,
        config.workers.queue_batches,
        config.workers.flush_tick,
        Settings {
            max_intervals: a.max_intervals,
            write_back_frequency: a.write_back_frequency,
            max_values_per_bucket: a.max_values_per_bucket,
        },
        dests.clone(),
        Arc::clone(&stats),
    )?;
    let router = Arc::new(Router::new(a.clone(), config.workers.count));
    let pipeline = Arc::new(Pipeline {
        router,
        workers: workers.senders(),
        forward: dests.clone(),
        stats: Arc::clone(&stats),
        limits: config.limits.clone(),
    });
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut addrs = Vec::new();
    for l in listeners {
        let addr = l.local_addr()?;
        let kind = l.kind();
        tracing::info!(listener = kind, address = %addr, "listening");
        addrs.push((kind, addr));
        l.serve(Arc::clone(&pipeline), shutdown.clone(), &tracker)?;
    }
    Ok(Server {
        addrs,
        stats,
        dests,
        senders,
        workers,
        shutdown,
        tracker,
    })
}

impl Server {
    /// Each listener's kind (`plaintext/tcp`, `pickle/tcp`, `plaintext/udp`) and address.
    pub fn local_addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.addrs
    }

    /// The address of the first listener of `kind`.
    pub fn addr(&self, kind: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// The process counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The destinations, for their counters.
    pub fn destinations(&self) -> Arc<Destinations> {
        Arc::clone(&self.dests)
    }

    /// Stops in the documented order and returns the final counters.
    pub async fn shutdown(self) -> Arc<Stats> {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        self.senders.drain(&self.dests, DRAIN_TIMEOUT).await;
        self.stats
    }
}

/// Runs aggd until `signal` completes, then shuts down cleanly.
pub async fn run(
    config: Config,
    listeners: Vec<BoundListener>,
    signal: impl std::future::Future<Output = ()>,
) -> std::io::Result<Arc<Stats>> {
    let server = start(config, listeners).await?;
    signal.await;
    tracing::info!("shutting down: draining connections, flushing buckets and destinations");
    Ok(server.shutdown().await)
}
