//! Assembles the daemon: destinations, workers, route cache and listeners, and takes them
//! down in order.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::aggregate::series::Settings;
use crate::aggregate::worker::{Hooks, WorkerPool};
use crate::config::Config;
use crate::datapoint::OutBatch;
use crate::datapoint::Sink;
use crate::dest::{Destinations, Senders};
use crate::drops::Stats;
use crate::ingest::Ingest;
use crate::ingest::Pipeline;
use crate::journal::Journal;
use crate::journal::io::{JournalIo, OsIo};
use crate::journal::ledger::Ledger;
use crate::listen::BoundListener;
use crate::quarantine::Quarantine;
use crate::replay;
use crate::route::Router;
use crate::service::{self, Observed};
use crate::tenant::{Registry, Tenants, admin};
use arc_swap::ArcSwap;
use std::path::PathBuf;

/// A running aggd.
pub struct Server {
    addrs: Vec<(&'static str, SocketAddr)>,
    stats: Arc<Stats>,
    dests: Arc<Destinations>,
    senders: Senders,
    workers: WorkerPool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    journal: Option<Arc<Journal>>,
    ledger_flusher: Option<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)>,
    tenants: Option<(Arc<Tenants>, PathBuf)>,
    pipeline: Arc<Pipeline>,
    observed: Arc<Observed>,
    config: Config,
}

/// The forward sink of the start-up rebuild: raw datapoints were forwarded when received.
struct NoForward;
impl Sink for NoForward {
    fn send(&self, _: OutBatch) {}
}

/// Flushes the loss ledger every 200 ms until `stop`, then once more. A flush that fails
/// keeps its entries for the next one; failures are logged at most every 10 s.
/// Dropping the returned sender stops the thread at once (after its last flush).
fn ledger_flusher(
    stats: Arc<Stats>,
) -> std::io::Result<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let t = std::thread::Builder::new()
        .name("aggd-ledger".into())
        .spawn(move || {
            let Some(l) = stats.ledger() else { return };
            let mut last_log: Option<std::time::Instant> = None;
            let every = Duration::from_millis(200);
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(every)
            {
                if let Err(e) = l.flush()
                    && last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    last_log = Some(std::time::Instant::now());
                    tracing::error!(error = %e, unwritten_entries = l.unwritten(), "cannot write the loss ledger; keeping its entries and retrying");
                }
            }
            if let Err(e) = l.flush() {
                tracing::error!(error = %e, unwritten_entries = l.unwritten(), "cannot write the loss ledger at shutdown: these entries are lost");
            }
        })?;
    Ok((stop, t))
}

/// Starts aggd on already-bound listeners. Must be called inside a tokio runtime.
///
/// With a journal: recovers it (truncating a torn tail), attaches the loss ledger, and
/// rebuilds the open intervals from it before any listener is served.
///
/// Errors: the journal or ledger cannot be opened, a listener socket cannot be registered
/// with tokio, or a thread cannot be spawned.
pub async fn start(config: Config, listeners: Vec<BoundListener>) -> std::io::Result<Server> {
    start_with_io(config, listeners, Arc::new(OsIo)).await
}

/// Like [`start`], with the journal and the ledger writing through `io` (tests inject disk
/// faults with [`crate::journal::io::FaultyIo`]).
pub async fn start_with_io(
    config: Config,
    listeners: Vec<BoundListener>,
    io: Arc<dyn JournalIo>,
) -> std::io::Result<Server> {
    let stats = Arc::new(Stats::default());
    let journal = match &config.journal {
        Some(j) => {
            let (journal, report) = Journal::open_with(j.clone(), Arc::clone(&io))?;
            tracing::info!(dir = %j.dir.display(), next_seq = report.next_seq,
                truncated_bytes = report.truncated_bytes, skipped_bytes = report.skipped_bytes,
                empty_segments_removed = report.empty_removed,
                "journal open");
            stats.set_ledger(Ledger::open_with(&j.ledger, io)?);
            Some(journal)
        }
        None => None,
    };
    let ledger_flusher = journal
        .as_ref()
        .map(|_| ledger_flusher(Arc::clone(&stats)))
        .transpose()?;
    if config.destinations.is_empty() {
        tracing::warn!("no [[destination]]: aggregates are computed and discarded");
    }
    let (dests, senders) = Destinations::start(&config.destinations, Arc::clone(&stats));
    let quarantine = match &config.quarantine {
        Some(q) => Some(Arc::new(Quarantine::open(q.file.clone(), q.max_bytes)?)),
        None => None,
    };
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
        Hooks {
            quarantine: quarantine.clone(),
            #[cfg(feature = "fault-injection")]
            panic_on_series: config.faults.panic_on_series.as_deref().map(Arc::from),
        },
    )?;
    let router = Arc::new(Router::new(a.clone(), config.workers.count));
    let (route_budget, connections) = Pipeline::budgets(&config.limits);
    if let Some(j) = &journal {
        let rebuild_pipeline = Arc::new(Pipeline {
            router: ArcSwap::from(Arc::clone(&router)),
            workers: workers.senders(),
            worker_rooms: workers.rooms(),
            forward: Arc::new(NoForward),
            stats: Arc::clone(&stats),
            limits: config.limits.clone(),
            journal: None,
            tenants: None,
            quarantine: None,
            route_budget: Arc::clone(&route_budget),
            connections: Arc::clone(&connections),
        });
        let dir = j.dir().to_path_buf();
        let cfg = config.clone();
        let delivered_below = crate::journal::clean::take(&dir);
        tokio::task::spawn_blocking(move || {
            let mut ingest = Ingest::for_rebuild(rebuild_pipeline);
            replay::rebuild(&cfg, &dir, &mut ingest, delivered_below)
        })
        .await
        .map_err(std::io::Error::other)??;
    }
    let tenants = match &config.tenants {
        Some(t) => Some((
            Arc::new(Tenants::new(
                Registry::load(&t.registry).map_err(std::io::Error::other)?,
                t.unknown,
            )),
            t.registry.clone(),
        )),
        None => None,
    };
    let pipeline = Arc::new(Pipeline {
        router: ArcSwap::from(router),
        workers: workers.senders(),
        worker_rooms: workers.rooms(),
        forward: dests.clone(),
        stats: Arc::clone(&stats),
        limits: config.limits.clone(),
        journal: journal.clone(),
        tenants: tenants.as_ref().map(|(t, _)| Arc::clone(t)),
        quarantine,
        route_budget,
        connections,
    });
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut addrs = Vec::new();
    let observed = Arc::new(Observed {
        stats: Arc::clone(&stats),
        dests: Arc::clone(&dests),
        gauges: workers.gauges(),
        queues: workers.senders(),
        heartbeats: workers.heartbeats(),
        journal: journal.clone(),
        ready: AtomicBool::new(false),
    });
    if let Some(a) = &config.admin {
        let l = tokio::net::TcpListener::bind(a.address.as_str()).await?;
        let addr = l.local_addr()?;
        tracing::info!(listener = "admin/http", address = %addr, "listening");
        addrs.push(("admin/http", addr));
        let mut app = service::routes(Arc::clone(&observed));
        if let Some((t, file)) = &tenants {
            app = app.merge(admin::router(Arc::new(admin::Admin {
                tenants: Arc::clone(t),
                registry_file: Some(file.clone()),
                token: a.token.clone(),
                write: tokio::sync::Mutex::new(()),
            })));
        }
        let sd = shutdown.clone();
        tracker.spawn(async move {
            let serve =
                axum::serve(l, app).with_graceful_shutdown(async move { sd.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    for (i, l) in listeners.into_iter().enumerate() {
        let addr = l.local_addr()?;
        let kind = l.kind();
        tracing::info!(listener = kind, address = %addr, "listening");
        addrs.push((kind, addr));
        let cap = config.listeners.get(i).and_then(|c| c.max_connections);
        l.serve(
            i as u16,
            cap,
            Arc::clone(&pipeline),
            shutdown.clone(),
            &tracker,
        )?;
    }
    // Listeners bound and open intervals rebuilt: ready.
    observed.ready.store(true, Ordering::Relaxed);
    service::spawn_watchdog(Arc::clone(&observed), shutdown.clone(), &tracker);
    let svc = &config.service;
    service::spawn_self_metrics(
        Arc::clone(&observed),
        svc.self_metrics_interval,
        svc.self_metrics_prefix.clone(),
        svc.hostname.clone(),
        shutdown.clone(),
        &tracker,
    );
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

    /// Applies a new, already validated configuration without losing buffered aggregates
    /// or dropping connections: the rules, rewrites, `forward_all` and route cache (a new
    /// router, swapped whole) and the tenant registry. Settings that need a restart
    /// (listeners, workers, destinations, journal, limits, bucket settings, admin) are
    /// reported and left as they are.
    ///
    /// Errors: the new tenant registry cannot be read; nothing is changed then.
    pub fn reload(&mut self, new: Config) -> Result<Vec<String>, crate::config::ConfigError> {
        let registry = match (&self.tenants, &new.tenants) {
            (Some(_), Some(t)) => Some(Registry::load(&t.registry)?),
            _ => None,
        };
        let mut restart = Vec::new();
        let old = &self.config;
        let (a, b) = (&old.aggregation, &new.aggregation);
        let checks = [
            ("[[listen]]", old.listeners != new.listeners),
            ("[workers]", old.workers != new.workers),
            ("[[destination]]", old.destinations != new.destinations),
            ("[journal]", old.journal != new.journal),
            ("[limits]", old.limits != new.limits),
            (
                "[tenants]",
                old.tenants != new.tenants && registry.is_none(),
            ),
            ("[admin]", old.admin != new.admin),
            ("[service]", old.service != new.service),
            ("[quarantine]", old.quarantine != new.quarantine),
            (
                "aggregation.max_intervals / write_back_frequency / max_values_per_bucket",
                (
                    a.max_intervals,
                    a.write_back_frequency,
                    a.max_values_per_bucket,
                ) != (
                    b.max_intervals,
                    b.write_back_frequency,
                    b.max_values_per_bucket,
                ),
            ),
        ];
        for (what, changed) in checks {
            if changed {
                restart.push(format!("{what} changed: restart to apply"));
            }
        }
        self.pipeline
            .router
            .store(Arc::new(Router::new(b.clone(), self.config.workers.count)));
        if let (Some((t, _)), Some(r)) = (&self.tenants, registry) {
            t.replace(r);
        }
        self.config.aggregation = b.clone();
        tracing::info!(
            rules = b.rules.rules().len(),
            rules_file = %b.rules_file.display(),
            "reloaded"
        );
        for r in &restart {
            tracing::warn!("{r}");
        }
        Ok(restart)
    }

    /// Re-reads the tenant registry file and swaps it in; on error the old registry stays
    /// and the error (with the file) is returned.
    pub fn reload_tenants(&self) -> Result<(), crate::config::ConfigError> {
        if let Some((t, file)) = &self.tenants {
            t.replace(Registry::load(file)?);
            tracing::info!(registry = %file.display(), "tenant registry reloaded");
        }
        Ok(())
    }

    /// Whether every worker made progress within the last `tolerance` (plus a flush tick).
    pub fn workers_healthy(&self, tolerance: Duration) -> bool {
        self.workers.healthy(tolerance)
    }

    /// The tenant gate, when on.
    pub fn tenants(&self) -> Option<Arc<Tenants>> {
        self.tenants.as_ref().map(|(t, _)| Arc::clone(t))
    }

    /// The process counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The destinations, for their counters.
    pub fn destinations(&self) -> Arc<Destinations> {
        Arc::clone(&self.dests)
    }

    /// What `/health`, `/ready` and `/metrics` read.
    pub fn observed(&self) -> Arc<Observed> {
        Arc::clone(&self.observed)
    }

    /// Stops in the documented order, within `service.drain_timeout` (plus the time the
    /// workers take to emit their buckets), and returns the final counters.
    pub async fn shutdown(self) -> Arc<Stats> {
        let deadline = tokio::time::Instant::now() + self.config.service.drain_timeout;
        self.observed.ready.store(false, Ordering::Relaxed);
        if let Some(j) = &self.journal {
            j.begin_shutdown(deadline.into_std());
        }
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        if let Some(q) = self.pipeline.quarantine.clone() {
            let _ = tokio::task::spawn_blocking(move || q.close()).await;
        }
        let delivered = self.senders.drain(&self.dests, deadline).await;
        if let Some(j) = self.journal {
            let closed = Arc::clone(&j);
            let _ = tokio::task::spawn_blocking(move || closed.close()).await;
            if delivered {
                let next_seq = j.stats().next_seq.load(Ordering::Relaxed);
                if let Err(e) = crate::journal::clean::write(j.dir(), next_seq) {
                    tracing::warn!(error = %e, "cannot write the clean-shutdown mark; the next start re-sends open intervals");
                }
            }
        }
        if let Some((stop, t)) = self.ledger_flusher {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.stats
    }
}

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Re-read what can be reloaded (SIGHUP).
    Reload,
    /// Shut down (SIGTERM, SIGINT).
    Stop,
}

/// Runs aggd until [`Signal::Stop`] (or the end of `signals`), then shuts down cleanly.
/// On [`Signal::Reload`] it calls `load` for a new configuration (re-reading and
/// validating every file) and applies it with [`Server::reload`]; a configuration that
/// does not load is logged (with file and line) and the running one stays.
///
/// systemd is told `READY=1` once started, `RELOADING=1`/`READY=1` around each reload and
/// `STOPPING=1` at shutdown (no-ops outside systemd).
pub async fn run(
    config: Config,
    listeners: Vec<BoundListener>,
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
    load: impl Fn() -> Result<Config, crate::config::ConfigError>,
) -> std::io::Result<Arc<Stats>> {
    use sd_notify::NotifyState;
    let mut server = start(config, listeners).await?;
    service::notify(&[NotifyState::Ready]);
    while let Some(Signal::Reload) = signals.recv().await {
        let mono = NotifyState::monotonic_usec_now().ok();
        let mut states = vec![NotifyState::Reloading];
        states.extend(mono);
        service::notify(&states);
        match load() {
            Ok(cfg) => {
                if let Err(e) = server.reload(cfg) {
                    tracing::error!(error = %e, "reload failed; keeping the running configuration");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running configuration")
            }
        }
        service::notify(&[NotifyState::Ready]);
    }
    service::notify(&[NotifyState::Stopping]);
    tracing::info!("shutting down: draining connections, flushing buckets and destinations");
    Ok(server.shutdown().await)
}
