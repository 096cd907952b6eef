//! Unit tests of routing and hand-off.
use super::*;
use crate::aggregate::batch::Batch;
use crate::config::Aggregation;
use crate::datapoint::OutBatch;
use crate::route::Router;
use crate::rules::aggregation::AggregationRules;
use crate::rules::rewrite::RewriteRules;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Discard;
impl Sink for Discard {
    fn send(&self, _: OutBatch) {}
}

fn ingest(
    capacity: usize,
    kind: Kind,
) -> (Ingest, crossbeam_channel::Receiver<WorkerMsg>, Arc<Stats>) {
    ingest_with_rules(capacity, kind, "o (60) = sum *\n")
}

fn ingest_with_rules(
    capacity: usize,
    kind: Kind,
    rules: &str,
) -> (Ingest, crossbeam_channel::Receiver<WorkerMsg>, Arc<Stats>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let stats = Arc::new(Stats::default());
    let routes = Arc::new(Routes {
        router: ArcSwap::from_pointee(Router::new(aggregation(rules), 1)),
        limits: Limits::default(),
        tenants: None,
        quarantine: None,
        route_budget: RouteBudget::new(1 << 20),
    });
    let p = Arc::new(Pipeline {
        routes,
        workers: vec![tx].into(),
        worker_rooms: vec![Arc::new(tokio::sync::Notify::new())].into(),
        forward: Arc::new(Discard),
        stats: stats.clone(),
        journal: None,
        slots: slots::Slots::new(10, 1 << 20, Duration::from_secs(1), stats.clone()),
        cluster: None,
    });
    let peer = "127.0.0.1:9".parse().unwrap();
    (Ingest::new(p, peer, 0, kind), rx, stats)
}

fn aggregation(rules: &str) -> Aggregation {
    Aggregation {
        rules_file: PathBuf::from("r"),
        rules: Arc::new(AggregationRules::parse(rules, Path::new("r")).unwrap()),
        rewrite_file: None,
        rewrite: Arc::new(RewriteRules::default()),
        forward_all: false,
        max_intervals: 5,
        write_back_frequency: 0,
        route_cache_entries: 10,
        max_values_per_bucket: 10,
        lists: Arc::default(),
        timestamp_resolution: 0,
    }
}

#[tokio::test]
async fn a_batch_keeps_its_series_keys_after_a_reload_lets_go_of_them() {
    let (mut ing, rx, _) = ingest(4, Kind::PlaintextTcp);
    ing.frame(Kind::PlaintextTcp, b"a 1 10\n", None, 0.0)
        .unwrap();
    // A reload swaps the router: the connection empties its route cache at the next
    // frame, and the old router (its shared cache and its series keys) is dropped.
    ing.p
        .routes
        .router
        .store(Arc::new(Router::new(aggregation("o (60) = sum *\n"), 1)));
    ing.frame(Kind::PlaintextTcp, b"b 2 10\n", None, 0.0)
        .unwrap();
    ing.flush().await;
    let WorkerMsg::Batch(batch) = rx.recv().unwrap() else {
        panic!()
    };
    let [old, new] = batch.items() else {
        panic!("two items")
    };
    assert_eq!((&*old.key().name, &*new.key().name), ("o", "o"));
    assert!(!std::ptr::eq(old.key(), new.key()), "one key per router");
    let old_key = Arc::downgrade(&old.key_arc());
    assert!(old_key.strong_count() >= 1, "the batch keeps the old key");
    drop(batch);
    assert_eq!(old_key.strong_count(), 0, "and nothing else does");
}

#[tokio::test]
async fn tcp_flush_waits_for_a_full_queue() {
    let (mut ing, rx, stats) = ingest(1, Kind::PlaintextTcp);
    let room = Arc::clone(&ing.p.worker_rooms[0]);
    ing.frame(Kind::PlaintextTcp, b"a 1 10\n", None, 0.0)
        .unwrap();
    ing.flush().await; // fills the queue
    ing.frame(Kind::PlaintextTcp, b"b 2 10\nc 3 10\n", None, 0.0)
        .unwrap();
    let waiting = tokio::spawn(async move {
        ing.flush().await;
        ing
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "flush must wait while the queue is full"
    );
    let WorkerMsg::Batch(first) = rx.recv().unwrap() else {
        panic!()
    };
    assert_eq!(first.len(), 1);
    // As a worker does when it takes a batch: wake whoever waits for room.
    room.notify_waiters();
    waiting.await.unwrap();
    let WorkerMsg::Batch(second) = rx.recv().unwrap() else {
        panic!()
    };
    assert_eq!(second.len(), 2);
    assert_eq!(stats.total_drops(), 0);
    assert_eq!(stats.received.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn udp_flush_drops_and_counts_on_a_full_queue() {
    let (mut ing, rx, stats) = ingest(1, Kind::PlaintextUdp);
    ing.frame(Kind::PlaintextTcp, b"a 1 10\n", None, 0.0)
        .unwrap();
    ing.flush().await;
    ing.frame(Kind::PlaintextTcp, b"b 2 10\nc 3 10\n", None, 0.0)
        .unwrap();
    ing.flush().await;
    assert_eq!(stats.drops(DropReason::QueueFull), 2);
    assert_eq!(rx.len(), 1);
}

/// The tenant gate's refusals become the frame's verdict, by decode item (bad lines
/// count as items), and a re-read of the record with that verdict routes exactly the
/// datapoints the gate let through, even after the tenant's state has changed.
#[test]
fn refusals_make_the_verdict_and_a_reread_skips_them() {
    use crate::journal::record::{Meta, Record};
    use crate::tenant::{Registry, Tenants, Unknown};
    let (ing, rx, _) = ingest_with_rules(16, Kind::PlaintextTcp, "o (60) = sum *.*\n");
    let registry = |text: &str| Registry::parse(text, Path::new("t")).unwrap();
    let gate = Arc::new(Tenants::new(
        registry("[tenant.evil]\nstate = \"deleted\"\n[tenant.good]\nstate = \"active\"\n"),
        Unknown::Reject,
    ));
    let routes = Arc::new(Routes {
        router: ArcSwap::from(ing.p.routes.router.load_full()),
        limits: Limits::default(),
        tenants: Some(Arc::clone(&gate)),
        quarantine: None,
        route_budget: RouteBudget::new(1 << 20),
    });
    let p = Arc::new(Pipeline {
        routes,
        workers: ing.p.workers.clone(),
        worker_rooms: ing.p.worker_rooms.clone(),
        forward: Arc::new(Discard),
        stats: ing.p.stats.clone(),
        journal: None,
        slots: slots::Slots::new(10, 1 << 20, Duration::from_secs(1), ing.p.stats.clone()),
        cluster: None,
    });
    let peer = "127.0.0.1:9".parse().unwrap();
    let mut live = Ingest::new(Arc::clone(&p), peer, 0, Kind::PlaintextTcp);
    let payload =
        b"evil.a 100 10\ngood.a 1 10\nnot a line\nevil.b 100 10\ngood.b 2 10\nwho.c 5 10\n";
    live.frame(Kind::PlaintextTcp, payload, None, 0.0).unwrap();
    let verdict = live.frames.take_verdict();
    let runs: Vec<_> = verdict
        .runs()
        .iter()
        .map(|r| (r.first, r.count, r.reason))
        .collect();
    assert_eq!(
        runs,
        [
            (0, 1, DropReason::TenantDeleted),
            (3, 1, DropReason::TenantDeleted),
            (5, 1, DropReason::TenantUnknown)
        ]
    );
    let values = |b: &Batch| b.items().iter().map(|i| i.value).collect::<Vec<_>>();
    assert_eq!(values(&live.frames.batches.pending[0]), [1.0, 2.0]);

    // The tenant is restored; the re-read (like the rebuild: no gate of its own) still
    // goes by what was decided at receive time.
    gate.replace(registry("[tenant.evil]\nstate = \"active\"\n"));
    let mut again = Ingest::for_rebuild(Arc::clone(&ing.p));
    let rec = Record {
        meta: Meta {
            seq: 0,
            received_us: 0,
            listener: 0,
            kind: Kind::PlaintextTcp,
            peer: String::new(),
            tenant: String::new(),
            verdict,
        },
        payload,
    };
    again.reread(&rec);
    assert_eq!(values(&again.frames.batches.pending[0]), [1.0, 2.0]);
    drop(rx);
}

#[tokio::test]
async fn a_cutover_routes_each_datapoint_by_the_rules_at_its_timestamp() {
    // Cluster mode's rules change: datapoints stamped before 600 feed the old output,
    // from 600 on the new one, whether the route is cached or not, in one frame.
    let (mut ing, rx, _) = ingest_with_rules(4, Kind::PlaintextTcp, "old (60) = sum *\n");
    let old = ing.p.routes.router.load_full();
    let new = Router::new(aggregation("new (60) = sum *\n"), 1).cut_over(600, &old);
    ing.p.routes.router.store(Arc::new(new));
    let lines = b"a 1 599\na 2 600\na 3 10\na 4 900\nb 5 599.5\nb 6 600\n";
    ing.frame(Kind::PlaintextTcp, lines, None, 0.0).unwrap();
    ing.frame(Kind::PlaintextTcp, lines, None, 0.0).unwrap();
    ing.flush().await;
    let mut got = Vec::new();
    while let Ok(WorkerMsg::Batch(b)) = rx.try_recv() {
        got.extend(
            b.items()
                .iter()
                .map(|i| (i.key().name.to_string(), i.timestamp)),
        );
    }
    let want: Vec<(String, f64)> = [599.0, 600.0, 10.0, 900.0, 599.5, 600.0]
        .iter()
        .map(|&t| ((if t < 600.0 { "old" } else { "new" }).to_string(), t))
        .collect();
    assert_eq!(got, [want.clone(), want].concat());
}

#[tokio::test]
async fn datapoints_older_than_two_rules_changes_go_by_the_oldest_rules_kept() {
    // Two cutovers (600, 900): each datapoint feeds the output of the rules at its time,
    // the oldest set through the shared route cache.
    let (mut ing, rx, _) = ingest_with_rules(4, Kind::PlaintextTcp, "v0 (60) = sum *\n");
    let r0 = ing.p.routes.router.load_full();
    let r1 = Arc::new(Router::new(aggregation("v1 (60) = sum *\n"), 1).cut_over(600, &r0));
    let r2 = Router::new(aggregation("v2 (60) = sum *\n"), 1).cut_over(900, &r1);
    ing.p.routes.router.store(Arc::new(r2));
    let lines = b"a 1 10\na 2 700\na 3 950\na 4 599\na 5 899\n";
    ing.frame(Kind::PlaintextTcp, lines, None, 0.0).unwrap();
    ing.flush().await;
    let mut got = Vec::new();
    while let Ok(WorkerMsg::Batch(b)) = rx.try_recv() {
        got.extend(b.items().iter().map(|i| i.key().name.to_string()));
    }
    assert_eq!(got, ["v0", "v1", "v2", "v0", "v1"]);
}
