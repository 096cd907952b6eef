//! Unit tests of `worker`.
use super::*;
use crate::datapoint::{OutBatch, OutPoint};
use crate::hash::fnv1a64;
use crate::method::Method;
use crate::route::SeriesKey;
use std::sync::Mutex;

#[derive(Default)]
struct Collect(Mutex<Vec<OutPoint>>);
impl Sink for Collect {
    fn send(&self, batch: OutBatch) {
        self.0.lock().unwrap().extend(batch.iter().cloned());
    }
}

#[test]
fn a_worker_without_progress_is_unhealthy() {
    // A long tick: no sweep renews a heartbeat while the test looks at it.
    let pool = WorkerPool::spawn(
        2,
        4,
        Duration::from_secs(10),
        Settings {
            max_intervals: 5,
            write_back_frequency: 0,
            max_values_per_bucket: 10,
        },
        Arc::new(Collect::default()),
        Arc::new(Stats::default()),
        Hooks::default(),
    )
    .unwrap();
    assert!(pool.healthy(Duration::from_secs(1)));
    // A heartbeat that stopped a minute ago (more than tolerance + tick): what a
    // stuck worker looks like.
    pool.beats[1].store(now_ms() - 60_000, Ordering::Relaxed);
    assert!(!pool.healthy(Duration::from_secs(1)));
    pool.shutdown();
}

#[test]
fn shutdown_flushes_open_buckets_and_counts_too_old() {
    let sink = Arc::new(Collect::default());
    let stats = Arc::new(Stats::default());
    let pool = WorkerPool::spawn(
        2,
        4,
        Duration::from_millis(10),
        Settings {
            max_intervals: 5,
            write_back_frequency: 0,
            max_values_per_bucket: 10,
        },
        sink.clone(),
        stats.clone(),
        Hooks::default(),
    )
    .unwrap();
    let key = Arc::new(SeriesKey {
        name: "out".into(),
        hash: fnv1a64(b"out"),
        method: Method::Sum,
        frequency: 3600,
    });
    let now = time::now();
    let mut items = Batch::new();
    items.push(&key, now, 2.0);
    items.push(&key, now, 3.0);
    items.push(&key, now - 86400.0, 9.0);
    pool.senders()[0].send(WorkerMsg::Batch(items)).unwrap();
    pool.shutdown();
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_f64(), 5.0);
    assert_eq!(stats.drops(DropReason::TooOld), 1);
}
