use super::*;
use crate::cluster::wire;
use crate::datapoint::Kind;
use crate::journal::io::OsIo;

/// A lane over a real journal: (the reader, the journal, a connection-side frame
/// router over the same rules, the sealed messages).
fn lane(
    dir: &Path,
) -> (
    Lane,
    Arc<crate::journal::Journal>,
    FrameRouter,
    tokio::sync::mpsc::Receiver<Out>,
) {
    std::fs::write(dir.join("rules.conf"), "out.<g> (60) = sum in.<g>.*\n").unwrap();
    std::fs::write(
        dir.join("aggd.toml"),
        "[aggregation]\nrules = \"rules.conf\"\n\
         [journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
         [cluster]\nservers = [\"nats://127.0.0.1:1\"]\nname = \"t\"\nnode = \"a\"\n\
         shards = 8\nreplicas = 1\nbatch_datapoints = 1000000\n",
    )
    .unwrap();
    let config = crate::config::Config::load(&dir.join("aggd.toml")).unwrap();
    let cfg = config.cluster.clone().unwrap();
    let jcfg = config.journal.clone().unwrap();
    let (journal, _) = crate::journal::Journal::open(jcfg).unwrap();
    let router = Arc::new(crate::route::Router::new(config.aggregation.clone(), 8));
    let routes = || Arc::new(Routes::new(&router, &config));
    let state = load_state(&OsIo, journal.dir(), 0, 1).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let (ftx, frx) = crossbeam_channel::unbounded();
    let stats = Arc::new(ClusterStats {
        shard_lag: (0..8).map(|_| AtomicU64::new(u64::MAX)).collect(),
        ..ClusterStats::default()
    });
    journal.follow(Arc::new(HandOver {
        tx: vec![ftx],
        lag: Arc::clone(&stats.publish),
        stats: Arc::clone(&stats),
    }));
    let reader = Lane {
        cfg,
        digest: Arc::new(AtomicU64::new(1)),
        state,
        lane: 0,
        persisted: Arc::new(AtomicU64::new(0)),
        dir: journal.dir().to_path_buf(),
        io: journal.io(),
        tail: Tail::with_io(journal.dir(), 0, journal.io()).committed_below(journal.stats_arc()),
        frames: FrameRouter::with_private_cache(routes(), 100),
        next: 0,
        followed: frx,
        ahead: None,
        follow: journal.follow_slot(),
        open: (0..8).map(|_| None).collect(),
        next_first: vec![0; 8],
        tx,
        progress: vec![Arc::new(Mutex::new(Progress::default()))],
        stats,
        journal: journal.stats_arc(),
        opened_at_seq: 0,
        consumed_new: Arc::new(AtomicU64::new(0)),
        abandon: Arc::new(AtomicBool::new(false)),
    };
    (reader, journal, FrameRouter::new(routes()), rx)
}

/// Routes the line `in.g<group>.x <seq> 100` as a connection does and journals it,
/// with its routed datapoints attached when `hand_over`.
async fn journal_line(
    conn: &mut FrameRouter,
    journal: &crate::journal::Journal,
    seq: u64,
    group: u64,
    hand_over: bool,
) {
    let payload = format!("in.g{group}.x {seq} 100\n");
    conn.frame(Kind::PlaintextTcp, payload.as_bytes(), None, 100.0)
        .unwrap();
    let (routed, _) = conn.take_routed();
    let attachment: Option<crate::journal::follow::Attachment> =
        hand_over.then(|| Box::new(routed) as _);
    let rec = crate::journal::NewRecord {
        received_us: 100_000_000,
        listener: 0,
        kind: Kind::PlaintextTcp,
        peer: "127.0.0.1:9".parse().unwrap(),
        tenant: None,
        payload: Bytes::from(payload),
        verdict: conn.take_verdict(),
        attachment,
    };
    assert!(journal.submit(rec).await.wait().await);
}

/// Every (record, output series, value) in the sealed messages, in order.
fn published(rx: &mut tokio::sync::mpsc::Receiver<Out>) -> Vec<(u64, String, f64)> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        let msg = wire::decode(&m.payload).unwrap();
        for (seq, points) in &msg.sections {
            for p in points {
                let name = msg.series[p.series as usize].name.to_string();
                out.push((*seq, name, p.value));
            }
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

#[tokio::test]
async fn a_full_hand_over_or_a_shed_lane_reads_back_and_counts_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut reader, journal, mut conn, mut rx) = lane(d.path());
    let lag = Arc::clone(&reader.stats.publish);
    // The hand-over is full: the writer's offer is refused.
    lag.followed_bytes.store(FOLLOWED_BYTES, Ordering::Relaxed);
    journal_line(&mut conn, &journal, 0, 0, true).await;
    lag.followed_bytes.store(0, Ordering::Relaxed);
    assert_eq!(reader.stats.records_read_back.load(Ordering::Relaxed), 1);
    // Taken, then let go of (the stream took nothing for a second).
    journal_line(&mut conn, &journal, 1, 0, true).await;
    assert!(lag.followed_bytes.load(Ordering::Relaxed) > 0);
    reader.shed();
    assert_eq!(lag.followed_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(reader.stats.records_read_back.load(Ordering::Relaxed), 2);
    // Both are published from the file, once.
    for _ in 0..100 {
        if reader.next >= 2 {
            break;
        }
        reader.read().unwrap();
    }
    reader.seal_due(true);
    let got: Vec<(u64, f64)> = published(&mut rx).iter().map(|p| (p.0, p.2)).collect();
    assert_eq!(got, [(0, 0.0), (1, 1.0)]);
    journal.close();
}

#[tokio::test]
async fn a_lane_takes_what_was_handed_over_and_reads_the_rest_back_once() {
    let d = tempfile::tempdir().unwrap();
    let (mut reader, journal, mut conn, mut rx) = lane(d.path());
    let mut expected = Vec::new();
    for seq in 0..12u64 {
        // Not handed over (as from a connection of an earlier run, or beyond the
        // hand-over's room): the lane reads them from the file.
        let hand_over = !matches!(seq, 0 | 4 | 5 | 9);
        journal_line(&mut conn, &journal, seq, seq % 3, hand_over).await;
        expected.push((seq, format!("out.g{}", seq % 3), seq as f64));
        if seq == 6 {
            // Part way: what is there so far, in one read.
            reader.read().unwrap();
        }
    }
    // A record handed over that the lane has already read from the file is not taken
    // twice.
    for _ in 0..100 {
        if reader.next >= 12 {
            break;
        }
        reader.read().unwrap();
    }
    assert_eq!(reader.next, 12, "every record was taken");
    reader.seal_due(true);
    assert_eq!(published(&mut rx), expected);
    assert_eq!(
        reader.stats.publish.followed_bytes.load(Ordering::Relaxed),
        0,
        "every hand-over was let go of"
    );
    journal.close();
}

#[test]
fn lane_numbers_are_dense_and_the_watermark_is_the_lowest_unacknowledged_record() {
    // Lane 1 of 3 holds records 1, 4, 7, …: numbered 0, 1, 2, …
    assert_eq!(lane_index(0, 1, 3), 0);
    assert_eq!(lane_index(1, 1, 3), 0);
    assert_eq!(lane_index(2, 1, 3), 1);
    assert_eq!(lane_index(4, 1, 3), 1);
    assert_eq!(lane_index(5, 1, 3), 2);
    for seq in (1..100).step_by(3) {
        assert_eq!(
            lane_index(seq, 1, 3),
            seq / 3,
            "record {seq} is numbered seq / 3"
        );
    }
    // Lanes 0 and 1 of 2 acknowledged up to lane numbers 5 and 3: records 10 (lane 0,
    // number 5) and 7 (lane 1, number 3) are the first unacknowledged.
    assert_eq!(global_watermark(&[5, 3]), 7);
    assert_eq!(global_watermark(&[3, 5]), 6);
    assert_eq!(global_watermark(&[9]), 9);
    // Every record below the watermark is acknowledged in its lane.
    let wms = [5, 3];
    for seq in 0..global_watermark(&wms) {
        let lane = (seq % 2) as usize;
        assert!(seq / 2 < wms[lane]);
    }
}

#[test]
fn the_watermark_is_the_oldest_unacknowledged_record() {
    let mut p = Progress {
        floor: 100,
        ..Progress::default()
    };
    assert_eq!(p.watermark(), 100);
    p.unacked.insert(40, 2);
    p.unacked.insert(70, 1);
    assert_eq!(p.watermark(), 40);
    p.unacked.remove(&40);
    assert_eq!(p.watermark(), 70);
    p.floor = 50;
    assert_eq!(p.watermark(), 50);
}

#[tokio::test]
async fn a_lane_whose_rules_are_unconfirmed_routes_nothing_and_lets_the_hand_over_go() {
    // Issue 25: while the node has not confirmed the cluster's rules for a lease TTL, a
    // lane takes nothing, and what connections handed over is let go of (connections
    // must not wait for it); once confirmed, it is read back from the file, once.
    let d = tempfile::tempdir().unwrap();
    let (mut reader, journal, mut conn, mut rx) = lane(d.path());
    let lag = Arc::clone(&reader.stats.publish);
    reader
        .stats
        .rules_fresh_until_ms
        .store(1, Ordering::Relaxed);
    journal_line(&mut conn, &journal, 0, 0, true).await;
    journal_line(&mut conn, &journal, 1, 1, true).await;
    assert!(lag.followed_bytes.load(Ordering::Relaxed) > 0);
    assert_eq!(reader.take().unwrap(), 0);
    assert_eq!(reader.next, 0, "nothing routed");
    assert_eq!(lag.followed_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(reader.stats.records_read_back.load(Ordering::Relaxed), 2);
    reader
        .stats
        .rules_fresh_until_ms
        .store(u64::MAX, Ordering::Relaxed);
    for _ in 0..100 {
        if reader.next >= 2 {
            break;
        }
        reader.take().unwrap();
    }
    reader.seal_due(true);
    let got: Vec<(u64, f64)> = published(&mut rx).iter().map(|p| (p.0, p.2)).collect();
    assert_eq!(got, [(0, 0.0), (1, 1.0)]);
    journal.close();
}
