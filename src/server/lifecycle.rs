//! The running daemon's life after start: reloads (SIGHUP), the signal loop ([`run`]) and
//! the ordered shutdown (see the parent module's docs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Server, start};
use crate::cluster::rules::RulesKey;
use crate::config::Config;
use crate::dest::Destinations;
use crate::drops::Stats;
use crate::events::Event;
use crate::listen::BoundListener;
use crate::route::Router;
use crate::service::{self, Observed};
use crate::tenant::{Registry, Tenants};

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
    /// (listeners, workers, destinations, routing, journal, limits, bucket settings, admin) are
    /// reported and left as they are.
    ///
    /// Errors: the new tenant registry cannot be read; nothing is changed then.
    pub async fn reload(&mut self, new: Config) -> Result<Vec<String>, crate::config::ConfigError> {
        self.reload_as(new, None).await
    }

    /// [`Server::reload`], asked for by the cluster (`announced`: the rules another node
    /// announced) rather than by an operator's SIGHUP; it is not announced again. In
    /// cluster mode the rules change at an interval boundary, cluster-wide (see
    /// `ClusterRuntime::reload`), and a node whose files differ from the announced rules
    /// keeps its own.
    async fn reload_as(
        &mut self,
        new: Config,
        announced: Option<RulesKey>,
    ) -> Result<Vec<String>, crate::config::ConfigError> {
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
            ("[routing]", old.routing != new.routing),
            ("[journal]", old.journal != new.journal),
            ("[limits]", old.limits != new.limits),
            (
                "[tenants]",
                old.tenants != new.tenants && registry.is_none(),
            ),
            ("[admin]", old.admin != new.admin),
            ("[service]", old.service != new.service),
            ("[quarantine]", old.quarantine != new.quarantine),
            ("[cluster]", old.cluster != new.cluster),
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
        if let (Some((t, _)), Some(r)) = (&self.tenants, registry) {
            t.replace(r);
        }
        let took = match &self.cluster {
            Some(c) => {
                c.reload(&new, announced, &self.pipeline.routes.router)
                    .await
            }
            None => {
                // The same outputs as before: one per worker.
                let outputs = self.pipeline.routes.router.load().outputs();
                let router = Router::new(b.clone(), outputs);
                self.pipeline.routes.router.store(Arc::new(router));
                true
            }
        };
        if !took {
            return Ok(restart);
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
    pub async fn shutdown(mut self) -> Arc<Stats> {
        let deadline = tokio::time::Instant::now() + self.config.service.drain_timeout;
        self.observed.ready.store(false, Ordering::Relaxed);
        if let Some(j) = &self.journal {
            j.begin_shutdown(deadline.into_std());
        }
        if let Some(c) = &self.cluster {
            c.closing();
        }
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let (Some(c), Some(j)) = (&mut self.cluster, &self.journal) {
            // Connections are done and their records written: publish them all, then
            // hand the shards over (the workers then emit none of them at exit).
            let next_seq = j.stats().next_seq.load(Ordering::Relaxed);
            c.leave(next_seq, deadline).await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        if let Some(q) = self.pipeline.routes.quarantine.clone() {
            let _ = tokio::task::spawn_blocking(move || q.close()).await;
        }
        let delivered = self.senders.drain(&self.dests, deadline).await;
        if let Some(j) = self.journal {
            let closed = Arc::clone(&j);
            let _ = tokio::task::spawn_blocking(move || closed.close()).await;
            if delivered {
                let next_seq = j.stats().next_seq.load(Ordering::Relaxed);
                if let Err(e) = j.write_clean_mark(next_seq) {
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
) -> Result<Arc<Stats>, super::StartError> {
    use sd_notify::NotifyState;
    let mut server = start(config, listeners).await?;
    service::notify(&[NotifyState::Ready]);
    let mut cluster_reloads = server.cluster.as_mut().and_then(|c| c.reloads.take());
    loop {
        // A SIGHUP, or (cluster mode) another node announcing new rules.
        let announced = tokio::select! {
            s = signals.recv() => match s {
                Some(Signal::Reload) => None,
                _ => break,
            },
            Some(d) = async { cluster_reloads.as_mut()?.recv().await }, if cluster_reloads.is_some() => {
                tracing::info!(digest = %d.digest_hex(), "the cluster's rules changed; reloading");
                Some(d)
            }
        };
        let mono = NotifyState::monotonic_usec_now().ok();
        let mut states = vec![NotifyState::Reloading];
        states.extend(mono);
        service::notify(&states);
        let reloaded = match load() {
            Ok(cfg) => server.reload_as(cfg, announced).await,
            Err(e) => {
                if let (Some(c), Some(key)) = (&server.cluster, announced) {
                    c.refuse(key, "its configuration does not load");
                }
                Err(e)
            }
        };
        if let Err(e) = reloaded {
            server.stats.events.emit(
                Event::ReloadFailed,
                &format_args!("reload failed; keeping the running configuration: {e}"),
            );
        }
        service::notify(&[NotifyState::Ready]);
    }
    service::notify(&[NotifyState::Stopping]);
    tracing::info!("shutting down: draining connections, flushing buckets and destinations");
    Ok(server.shutdown().await)
}
