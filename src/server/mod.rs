//! Assembles the daemon: destinations, workers, route cache and listeners ([`start`], a
//! short sequence of named steps), reloads it and takes it down in order (`lifecycle`).
//!
//! Start-up order: open the journal (and the loss ledger), start the destinations, spawn
//! the workers, rebuild the open intervals from the journal, then serve the admin API and
//! the listeners, and only then report ready.
//!
//! Shutdown order (each step finishes before the next):
//! 1. listeners stop accepting; connections process what the kernel already holds and close;
//! 2. workers receive `Shutdown`, emit every dirty bucket (open intervals included) and exit;
//! 3. destination senders write what is queued; what is left at the deadline is counted as
//!    `destination_down` (and ledgered);
//! 4. the journal writes what is queued and fsyncs; the loss ledger is flushed; if every
//!    destination took and acknowledged everything, the clean-shutdown mark is written
//!    ([`crate::journal::clean`]), so the next start does not re-send what was delivered.
//!
//! One deadline, `service.drain_timeout` after shutdown begins, bounds every wait: the
//! journal stops waiting for a full disk (connections then count `unjournaled`), and the
//! senders stop waiting for their destinations.

mod cluster;
mod lifecycle;

pub use lifecycle::{Signal, run};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::series::Settings;
use crate::aggregate::worker::{Hooks, WorkerPool};
use crate::config::Config;
use crate::datapoint::{OutBatch, Sink};
use crate::dest::{Destinations, Senders};
use crate::drops::Stats;
use crate::events::Event;
use crate::ingest::{Ingest, Pipeline, Routes};
use crate::journal::Journal;
use crate::journal::io::{JournalIo, OsIo};
use crate::ledger::Ledger;
use crate::listen::BoundListener;
use crate::quarantine::Quarantine;
use crate::replay;
use crate::route::Router;
use crate::service::{self, Metrics, Observed};
use crate::tenant::{Registry, Tenants, admin};

/// Why aggd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file, socket or thread could not be opened, bound or spawned (the error names the
    /// path or address).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The tenant registry could not be read (it may have changed since the config was
    /// checked).
    #[error(transparent)]
    Registry(#[from] crate::tenant::RegistryError),
    /// Cluster mode: NATS cannot be reached, or the cluster refused this node.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running aggd.
pub struct Server {
    /// Each listener's kind and bound address (the admin API's too).
    addrs: Vec<(&'static str, SocketAddr)>,
    /// Process counters.
    stats: Arc<Stats>,
    /// Destination queues and counters.
    dests: Arc<Destinations>,
    /// Destination sender tasks, drained at shutdown.
    senders: Senders,
    /// Worker threads.
    workers: WorkerPool,
    /// Cancelled when shutdown begins.
    shutdown: CancellationToken,
    /// Every task (listeners, connections, admin, watchdog, self-metrics).
    tracker: TaskTracker,
    /// The journal, when on.
    journal: Option<Arc<Journal>>,
    /// The loss ledger's flusher thread and its stop channel, with a journal.
    ledger_flusher: Option<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The tenant gate and its registry file, when on.
    tenants: Option<(Arc<Tenants>, PathBuf)>,
    /// What every connection shares (its router is swapped by a reload).
    pipeline: Arc<Pipeline>,
    /// What `/health`, `/ready` and `/metrics` read.
    observed: Arc<Observed>,
    /// The running configuration (its aggregation section follows reloads).
    config: Config,
    /// Cluster mode's parts, when on.
    cluster: Option<cluster::ClusterRuntime>,
}

/// The forward sink of the start-up rebuild: raw datapoints were forwarded when received.
struct NoForward;
impl Sink for NoForward {
    fn send(&self, _: OutBatch) {}
}

/// Flushes the loss ledger every 200 ms until `stop`, then once more. A flush that fails
/// keeps its entries for the next one (counted and logged as `ledger_write_failed`).
/// Dropping the returned sender stops the thread at once (after its last flush).
fn ledger_flusher(
    stats: Arc<Stats>,
) -> std::io::Result<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let t = std::thread::Builder::new()
        .name("aggd-ledger".into())
        .spawn(move || {
            let Some(l) = stats.ledger() else { return };
            let every = Duration::from_millis(200);
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(every)
            {
                if let Err(e) = l.flush() {
                    let n = l.unwritten();
                    stats.events.emit(
                        Event::LedgerWriteFailed,
                        &format_args!("cannot write the loss ledger ({e}); keeping its {n} entries and retrying"),
                    );
                }
            }
            if let Err(e) = l.flush() {
                let n = l.unwritten();
                stats.events.emit(
                    Event::LedgerWriteFailed,
                    &format_args!("cannot write the loss ledger at shutdown ({e}): its {n} entries are lost"),
                );
            }
        })?;
    Ok((stop, t))
}

/// Starts aggd on already-bound listeners. Must be called inside a tokio runtime.
///
/// With a journal: recovers it (truncating a torn tail), attaches the loss ledger, and
/// rebuilds the open intervals from it before any listener is served.
///
/// Errors: the journal or ledger cannot be opened, the tenant registry cannot be read, a
/// listener socket cannot be registered with tokio, or a thread cannot be spawned.
pub async fn start(config: Config, listeners: Vec<BoundListener>) -> Result<Server, StartError> {
    start_with_io(config, listeners, Arc::new(OsIo)).await
}

/// Like [`start`], with the journal and the ledger writing through `io` (tests inject disk
/// faults with [`crate::journal::io::FaultyIo`]).
pub async fn start_with_io(
    config: Config,
    listeners: Vec<BoundListener>,
    io: Arc<dyn JournalIo>,
) -> Result<Server, StartError> {
    let stats = Arc::new(Stats::default());
    let journal = open_journal(&config, &stats, io)?;
    let ledger_flusher = journal
        .as_ref()
        .map(|_| ledger_flusher(Arc::clone(&stats)))
        .transpose()?;
    if config.destinations.is_empty() {
        tracing::warn!("no [[destination]]: aggregates are computed and discarded");
    }
    let (dests, senders) =
        Destinations::start(&config.destinations, &config.routing, Arc::clone(&stats));
    let quarantine = open_quarantine(&config, &stats)?;
    let joined = cluster::join(&config).await?;
    let gate = joined.as_ref().map(|(_, g)| Arc::clone(g));
    if let Some(g) = &gate {
        // Cluster mode: the senders check each shard's allowance again at the write.
        dests.fence_with(Arc::clone(g));
    }
    let workers = spawn_workers(&config, &dests, &stats, quarantine.clone(), gate)?;
    let router = match &joined {
        Some((j, _)) => Arc::new(cluster::router(&config, j, j.cfg.shards as usize)),
        None => router(&config),
    };
    // In cluster mode the shard owners rebuild from the stream instead.
    if let (Some(j), None) = (&journal, &joined) {
        let routes = Arc::new(Routes::new(&router, &config));
        let quiet = Pipeline::new(routes, &workers, Arc::new(NoForward), &stats, &config);
        rebuild(&config, j, quiet).await?;
    }
    let cluster = match (joined, &journal) {
        (Some((joined, gate)), Some(j)) => {
            Some(cluster::start(joined, gate, &config, j, &workers)?)
        }
        _ => None,
    };
    let tenants = load_tenants(&config)?;
    let routes = Arc::new(Routes {
        tenants: tenants.as_ref().map(|(t, _)| Arc::clone(t)),
        quarantine: quarantine.clone(),
        ..Routes::new(&router, &config)
    });
    let pipeline = Arc::new(Pipeline {
        journal: journal.clone(),
        cluster: cluster.as_ref().map(|c| {
            let lag: Arc<dyn crate::ingest::PublishBacklog> = c.stats.publish.clone();
            lag
        }),
        ..Pipeline::new(routes, &workers, dests.clone(), &stats, &config)
    });
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observed = observe(
        &config, &stats, &dests, &workers, &journal, quarantine, &cluster, &pipeline,
    );
    let metrics = Arc::new(Metrics::new(Arc::clone(&observed)));
    let svc = &config.service;
    let mut addrs = Vec::new();
    if let Some(a) = &config.admin {
        let addr = serve_admin(a, &metrics, &tenants, &shutdown, &tracker).await?;
        addrs.push(("admin/http", addr));
    }
    addrs.extend(serve_listeners(
        &config, listeners, &pipeline, &shutdown, &tracker,
    )?);
    // Step 6: listeners bound and open intervals rebuilt: ready, and reporting.
    observed.ready.store(true, Ordering::Relaxed);
    service::spawn_watchdog(Arc::clone(&observed), shutdown.clone(), &tracker);
    service::spawn_self_metrics(metrics, svc, shutdown.clone(), &tracker);
    Ok(Server {
        addrs,
        stats,
        dests,
        senders,
        workers,
        shutdown,
        tracker,
        journal,
        ledger_flusher,
        tenants,
        pipeline,
        observed,
        config,
        cluster,
    })
}

/// The quarantine file, when `[quarantine]` is on. Errors: it cannot be opened.
fn open_quarantine(config: &Config, stats: &Stats) -> std::io::Result<Option<Arc<Quarantine>>> {
    (config.quarantine.as_ref())
        .map(|q| Quarantine::open(q.file.clone(), q.max_bytes, Arc::clone(&stats.events)))
        .transpose()
        .map(|q| q.map(Arc::new))
}

/// The router of every connection standalone: by worker (in cluster mode by shard,
/// `cluster::router`: the publisher sends each shard's datapoints to its owner).
fn router(config: &Config) -> Arc<Router> {
    Arc::new(Router::new(
        config.aggregation.clone(),
        config.workers.count,
    ))
}

/// What `/metrics`, `/health`, `/ready`, the watchdog and the self-metrics read: every
/// part's counters and gauges, not ready yet.
#[allow(clippy::too_many_arguments)]
fn observe(
    config: &Config,
    stats: &Arc<Stats>,
    dests: &Arc<Destinations>,
    workers: &WorkerPool,
    journal: &Option<Arc<Journal>>,
    quarantine: Option<Arc<Quarantine>>,
    cluster: &Option<cluster::ClusterRuntime>,
    pipeline: &Arc<Pipeline>,
) -> Arc<Observed> {
    Arc::new(Observed {
        stats: Arc::clone(stats),
        dests: Arc::clone(dests),
        gauges: workers.gauges(),
        queues: workers.senders(),
        heartbeats: workers.heartbeats(),
        journal: journal.clone(),
        quarantine,
        cluster: cluster.as_ref().map(|c| Arc::clone(&c.stats)),
        ready: AtomicBool::new(false),
        memory_bound: config
            .memory_bound(crate::memory::CHECK_LIVE_SERIES)
            .total(),
        cluster_node: config.cluster.as_ref().map(|c| (c.node.clone(), c.shards)),
        pipeline: Some(Arc::clone(pipeline)),
    })
}

/// Step 1: opens and recovers the journal and attaches its loss ledger to `stats`.
fn open_journal(
    config: &Config,
    stats: &Stats,
    io: Arc<dyn JournalIo>,
) -> std::io::Result<Option<Arc<Journal>>> {
    let Some(j) = &config.journal else {
        return Ok(None);
    };
    // In cluster mode sequence numbers up to the published watermark were handed out
    // beyond the journal: never number records below it again.
    let floor = match config.cluster {
        Some(_) => crate::journal::published::saved_watermark(&*io, &j.dir),
        None => 0,
    };
    let (journal, report) =
        Journal::open_at_least(j.clone(), Arc::clone(&io), floor).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("journal: {e} (check [journal] dir; `aggd check` tests it)"),
            )
        })?;
    tracing::info!(dir = %j.dir.display(), next_seq = report.next_seq,
        truncated_bytes = report.truncated_bytes, skipped_bytes = report.skipped_bytes,
        empty_segments_removed = report.empty_removed,
        "journal open");
    stats.set_ledger(Ledger::open_with(&j.ledger, io)?);
    Ok(Some(journal))
}

/// Step 2: the worker threads, emitting into the destinations.
fn spawn_workers(
    config: &Config,
    dests: &Arc<Destinations>,
    stats: &Arc<Stats>,
    quarantine: Option<Arc<Quarantine>>,
    gate: Option<Arc<crate::cluster::ShardGate>>,
) -> std::io::Result<WorkerPool> {
    let a = &config.aggregation;
    WorkerPool::spawn(
        config.workers.count,
        config.workers.queue_batches,
        config.workers.flush_tick,
        Settings {
            max_intervals: a.max_intervals,
            write_back_frequency: a.write_back_frequency,
            max_values_per_bucket: a.max_values_per_bucket,
        },
        dests.clone(),
        Arc::clone(stats),
        Hooks {
            quarantine,
            gate,
            #[cfg(feature = "fault-injection")]
            panic_on_series: config.faults.panic_on_series.as_deref().map(Arc::from),
            #[cfg(feature = "fault-injection")]
            stall_on_series: (config.faults.stall_on_series.as_ref())
                .map(|(s, d)| (Arc::from(s.as_str()), *d)),
        },
    )
}

/// Step 3: rebuilds the open intervals from the journal through `quiet` (a pipeline that
/// neither journals, gates nor forwards), on the blocking pool, before anything is served.
async fn rebuild(config: &Config, journal: &Journal, quiet: Pipeline) -> std::io::Result<()> {
    let dir = journal.dir().to_path_buf();
    let cfg = config.clone();
    let delivered_below = journal.take_clean_mark();
    tokio::task::spawn_blocking(move || {
        let mut ingest = Ingest::for_rebuild(Arc::new(quiet));
        replay::rebuild(&cfg, &dir, &mut ingest, delivered_below)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(())
}

/// The tenant gate and its registry file, when `[tenants]` is on.
fn load_tenants(config: &Config) -> Result<Option<(Arc<Tenants>, PathBuf)>, StartError> {
    let Some(t) = &config.tenants else {
        return Ok(None);
    };
    let registry = Registry::load(&t.registry)?;
    let gate = Arc::new(Tenants::new(registry, t.unknown));
    Ok(Some((gate, t.registry.clone())))
}

/// Step 4: binds and serves the admin API (`/health`, `/ready`, `/metrics`, and the
/// tenant API with a tenant gate); returns its address.
async fn serve_admin(
    a: &crate::config::AdminConfig,
    metrics: &Arc<Metrics>,
    tenants: &Option<(Arc<Tenants>, PathBuf)>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(a.address.as_str())
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin address {}: {e}", a.address)))?;
    let addr = l.local_addr()?;
    tracing::info!(listener = "admin/http", address = %addr, "listening");
    let guard = a.protect_metrics.then(|| Arc::from(a.token.as_str()));
    let mut app = service::routes(Arc::clone(metrics), guard).merge(service::series_routes(
        Arc::clone(metrics.observed()),
        Arc::from(a.token.as_str()),
    ));
    if let Some((t, file)) = tenants {
        app = app.merge(admin::router(Arc::new(admin::Admin {
            tenants: Arc::clone(t),
            registry_file: Some(file.clone()),
            token: a.token.clone(),
            write: tokio::sync::Mutex::new(()),
        })));
    }
    let sd = shutdown.clone();
    let stats = Arc::clone(&metrics.observed().stats);
    tracker.spawn(async move {
        let serve = axum::serve(l, app).with_graceful_shutdown(async move { sd.cancelled().await });
        if let Err(e) = serve.await {
            stats.events.emit(
                Event::ListenerStopped,
                &format_args!("admin API stopped: {e}"),
            );
        }
    });
    Ok(addr)
}

/// Step 5: serves every listener; returns each one's kind and address.
fn serve_listeners(
    config: &Config,
    listeners: Vec<BoundListener>,
    pipeline: &Arc<Pipeline>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<Vec<(&'static str, SocketAddr)>> {
    let mut addrs = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let addr = l.local_addr()?;
        let kind = l.kind();
        tracing::info!(listener = kind, address = %addr, "listening");
        addrs.push((kind, addr));
        let cap = config.listeners.get(i).and_then(|c| c.max_connections);
        l.serve(
            i as u16,
            cap,
            Arc::clone(pipeline),
            shutdown.clone(),
            tracker,
        )?;
    }
    Ok(addrs)
}
