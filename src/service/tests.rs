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

#[tokio::test]
async fn both_views_read_the_same_counters_and_only_what_applies() {
    let guard = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::default());
    let (dests, _senders) =
        Destinations::start(&[], &crate::config::Routing::all(&[]), Arc::clone(&stats));
    let events = Arc::clone(&stats.events);
    let q = Arc::new(Quarantine::open(guard.path().join("q.log"), 1 << 20, events).unwrap());
    q.close();
    q.record(DropReason::TenantDeleted, "gone.cpu", 1.0, 1.0); // after close: overflow
    stats.record_drop(DropReason::TooOld, 3, Window::at(1.0), &"test");
    stats.events.emit(Event::AcceptFailed, &"test");
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
        Arc::clone(&stats),
        hooks,
    )
    .unwrap();
    let observed = Arc::new(Observed {
        stats: Arc::clone(&stats),
        dests,
        gauges: workers.gauges(),
        queues: workers.senders(),
        heartbeats: workers.heartbeats(),
        journal: None,
        quarantine: Some(q),
        cluster: None,
        ready: AtomicBool::new(true),
    });
    let m = Metrics::new(observed);
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
