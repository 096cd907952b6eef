//! Unit tests of the metrics catalog and its two views.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use std::sync::Arc;

use super::Observed;
use super::metrics::Metrics;
use crate::aggregate::series::Settings;
use crate::aggregate::worker::{Hooks, WorkerPool};
use crate::dest::Destinations;
use crate::drops::Stats;
use crate::events::Event;
use crate::quarantine::Quarantine;
use crate::reason::DropReason;
use crate::service::self_metrics::Report;
use crate::time::Window;

/// The metrics of a process with one worker, `dests` and `quarantine`; the worker pool
/// to shut down.
fn observe(
    stats: &Arc<Stats>,
    dests: Arc<Destinations>,
    quarantine: Option<Arc<Quarantine>>,
) -> (Metrics, WorkerPool) {
    let settings = Settings {
        max_intervals: 5,
        write_back_frequency: 0,
        max_values_per_bucket: 10,
    };
    let hooks = Hooks {
        quarantine: None,
        gate: None,
        #[cfg(feature = "fault-injection")]
        panic_on_series: None,
        #[cfg(feature = "fault-injection")]
        stall_on_series: None,
    };
    let workers = WorkerPool::spawn(
        1,
        4,
        Duration::from_millis(50),
        settings,
        dests.clone(),
        Arc::clone(stats),
        hooks,
    )
    .unwrap();
    let observed = Arc::new(Observed {
        stats: Arc::clone(stats),
        dests,
        gauges: workers.gauges(),
        queues: workers.senders(),
        heartbeats: workers.heartbeats(),
        journal: None,
        quarantine,
        cluster: None,
        ready: AtomicBool::new(true),
        memory_bound: 1 << 30,
        cluster_node: None,
        pipeline: None,
    });
    (Metrics::new(observed), workers)
}

#[tokio::test]
async fn both_views_read_the_same_counters_and_only_what_applies() {
    let guard = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::default());
    let (dests, _senders) = Destinations::start(
        &[],
        &crate::config::OutputPlacement::all(&[]),
        Arc::clone(&stats),
    );
    let events = Arc::clone(&stats.events);
    let q = Arc::new(Quarantine::open(guard.path().join("q.log"), 1 << 20, events).unwrap());
    q.close();
    q.record(DropReason::TenantDeleted, "gone.cpu", 1.0, 1.0); // after close: overflow
    stats.record_drop(DropReason::TooOld, 3, Window::at(1.0), &"test");
    stats.events.emit(Event::AcceptFailed, &"test");
    let (m, workers) = observe(&stats, dests, Some(q));
    let text = m.prometheus();
    for sample in [
        "aggd_quarantine_overflowed_total 1",
        "aggd_dropped_total{reason=\"too_old\"} 3",
        "aggd_events_total{event=\"accept_failed\"} 1",
        "aggd_received_total 0",
        "aggd_worker_queue_depth{worker=\"0\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "{sample} missing:\n{text}"
        );
    }
    assert!(
        !text.contains("aggd_journal_"),
        "no journal, no journal metrics"
    );
    let mut report = Report::default();
    let first = report.stats(&m);
    for stat in [
        ("drops.too_old", 3),
        ("events.accept_failed", 1),
        ("metricsReceived", 0),
    ] {
        assert!(
            first.contains(&(stat.0.to_string(), stat.1)),
            "{stat:?}: {first:?}"
        );
    }
    // Counters report their change: unchanged ones are left out, always-sent ones are 0.
    stats.record_drop(DropReason::TooOld, 2, Window::at(1.0), &"test");
    let second = report.stats(&m);
    assert!(
        second.contains(&("drops.too_old".to_string(), 2)),
        "{second:?}"
    );
    assert!(
        second.contains(&("metricsReceived".to_string(), 0)),
        "{second:?}"
    );
    assert!(
        !second.iter().any(|(s, _)| s == "events.accept_failed"),
        "{second:?}"
    );
    tokio::task::spawn_blocking(move || workers.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_max_queue_length_is_sent_in_every_interval_the_destination_relayed() {
    use crate::config::{
        CarbonDestination, CarbonProtocol, CarbonTarget, DestinationConfig, DestinationKind,
    };
    use std::sync::atomic::Ordering;
    let stats = Arc::new(Stats::default());
    // Nothing listens on port 1: the sender keeps reconnecting, which does not matter.
    let configs = [DestinationConfig {
        kind: DestinationKind::Carbon(CarbonDestination {
            target: CarbonTarget::Tcp("127.0.0.1:1".into()),
            protocol: CarbonProtocol::Pickle,
            max_datapoints_per_message: 500,
            unconfirmed_window: Duration::from_secs(1),
        }),
        queue_datapoints: 1000,
        instance: None,
        emit_delay: Duration::ZERO,
        late_changes: Default::default(),
    }];
    let (dests, senders) = Destinations::start(
        &configs,
        &crate::config::OutputPlacement::all(&configs),
        Arc::clone(&stats),
    );
    let (m, workers) = observe(&stats, Arc::clone(&dests), None);
    let mut report = Report::default();
    let stat = "destinations.127_0_0_1:1:None.relayMaxQueueLength".to_string();
    let peak = |r: &[(String, u64)]| r.iter().find(|(s, _)| *s == stat).map(|(_, v)| *v);
    assert_eq!(peak(&report.stats(&m)), None, "nothing relayed yet");
    let (_, c) = dests.counters().next().unwrap();
    // Relayed with an empty queue: carbon still sends the peak, 0.
    c.attempted.fetch_add(3, Ordering::Relaxed);
    assert_eq!(peak(&report.stats(&m)), Some(0));
    // An interval with no relay: left out.
    assert_eq!(peak(&report.stats(&m)), None);
    // A peak is sent as it is, and reset after the report.
    c.attempted.fetch_add(5, Ordering::Relaxed);
    c.peak_queued.store(7, Ordering::Relaxed);
    assert_eq!(peak(&report.stats(&m)), Some(7));
    c.attempted.fetch_add(1, Ordering::Relaxed);
    assert_eq!(peak(&report.stats(&m)), Some(0));
    drop(senders);
    tokio::task::spawn_blocking(move || workers.shutdown())
        .await
        .unwrap();
}
