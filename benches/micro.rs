//! Micro-benchmarks of the per-datapoint pieces, each printing datapoints/s and ns per
//! datapoint: the plaintext line parser, the pickle decoder, rule matching (a cache miss:
//! the full match) with 10, 1 000 and 10 000 rules, a cached route lookup, a bucket
//! update, and a journal append. Run with `cargo bench --bench micro`. Every benchmark
//! checks what it computed after its timed loop (counts, sums, names, what the journal
//! reads back), so a fast wrong answer fails instead of reporting a figure. The pickle
//! input is made by CPython's own `pickle` module.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggd::aggregate::series::{SeriesTable, Settings};
use aggd::codec::Limits;
use aggd::codec::pickle::PickleDecoder;
use aggd::codec::plaintext::{lines, parse_line};
use aggd::config::Aggregation;
use aggd::hash::fnv1a64;
use aggd::method::Method;
use aggd::route::{LocalRoutes, Router, SeriesKey};
use aggd::rules::aggregation::AggregationRules;
use aggd::rules::rewrite::RewriteRules;

fn report(name: &str, n: u64, t: Duration) {
    println!(
        "{name:<44} {:>12.0} datapoints/s {:>8.1} ns/datapoint",
        n as f64 / t.as_secs_f64(),
        t.as_nanos() as f64 / n as f64
    );
}

fn aggregation(rules: usize) -> Aggregation {
    let mut text = String::new();
    for i in 0..rules {
        text.push_str(&format!(
            "agg.r{i}.<h>.sum (60) = sum svc{i}.<h>.*.requests\n"
        ));
    }
    Aggregation {
        rules_file: "rules".into(),
        rules: Arc::new(AggregationRules::parse(&text, Path::new("rules")).unwrap()),
        rewrite_file: None,
        rewrite: Arc::new(RewriteRules::default()),
        forward_all: false,
        max_intervals: 5,
        write_back_frequency: 0,
        route_cache_entries: 1 << 22,
        max_values_per_bucket: 1000,
        lists: Arc::default(),
        timestamp_resolution: 0,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("micro-benchmarks: run with `cargo bench --bench micro`");
        return;
    }
    let limits = Limits::default();
    let n = 2_000_000usize;

    let text: String = (0..n)
        .map(|i| {
            format!(
                "svc{}.h{}.m{}.requests {} 1700000000\n",
                i % 10,
                i % 1000,
                i % 7,
                i % 100
            )
        })
        .collect();
    let t = Instant::now();
    let mut ok = 0u64;
    let mut sum = 0.0;
    for l in lines(text.as_bytes()) {
        if let Ok(Some(p)) = parse_line(l, 0.0, &limits) {
            ok += 1;
            sum += p.value;
            black_box(p);
        }
    }
    assert_eq!(ok, n as u64);
    assert_eq!(sum, (0..n).map(|i| (i % 100) as f64).sum::<f64>());
    report("plaintext parse_line", n as u64, t.elapsed());

    let body = cpython_pickle_frame(500);
    let mut d = PickleDecoder::new();
    let frames = n / 500;
    let t = Instant::now();
    let mut got = 0u64;
    let mut sum = 0.0;
    for _ in 0..frames {
        d.decode(&body, 0.0, &limits, |r| {
            if let Ok(p) = r {
                got += 1;
                sum += p.value;
            }
        })
        .unwrap();
    }
    assert_eq!(got, (frames * 500) as u64);
    assert_eq!(sum, frames as f64 * (0..500).map(f64::from).sum::<f64>());
    report("pickle decode (protocol 2, 500/frame)", got, t.elapsed());

    for rules in [10usize, 1000, 10_000] {
        let router = Router::new(aggregation(rules), 2);
        let paths: Vec<String> = (0..20_000)
            .map(|i| format!("svc{}.h{}.m{}.requests", i % rules, i, i % 7))
            .collect();
        let t = Instant::now();
        let routes: Vec<_> = paths.iter().map(|p| router.compute(p)).collect();
        let elapsed = t.elapsed();
        for (i, r) in routes.iter().enumerate() {
            assert_eq!(r.outputs.len(), 1);
            assert_eq!(
                &*r.outputs[0].key.name,
                format!("agg.r{}.h{i}.sum", i % rules)
            );
        }
        report(
            &format!("rule match, cache miss, {rules} rules"),
            paths.len() as u64,
            elapsed,
        );
    }
    let router = Router::new(aggregation(1000), 2);
    let paths: Vec<String> = (0..1000)
        .map(|i| format!("svc{}.h{i}.m1.requests", i % 1000))
        .collect();
    let mut local = LocalRoutes::default();
    let t = Instant::now();
    let mut outputs = 0usize;
    for i in 0..n {
        let (r, _) = local
            .get(&router, &paths[i % paths.len()], || Ok(()))
            .unwrap();
        outputs += r.outputs.len();
        black_box(r);
    }
    let elapsed = t.elapsed();
    assert_eq!(outputs, n, "every lookup found its one output series");
    let (r, _) = local.get(&router, &paths[7], || Ok(())).unwrap();
    assert_eq!(&*r.outputs[0].key.name, "agg.r7.h7.sum");
    report("route lookup, connection cache hit", n as u64, elapsed);

    // Placing outgoing names on three destinations, per method (once per emitted or
    // forwarded datapoint when there are several destinations), and tag normalisation.
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("agg.svc{}.h{i}.requests.sum", i % 10))
        .collect();
    for method in [
        aggd::ring::Method::CarbonCh,
        aggd::ring::Method::Fnv1aCh,
        aggd::ring::Method::JumpFnv1aCh,
    ] {
        let nodes = (1..=3)
            .map(|i| aggd::ring::Node {
                host: format!("10.0.0.{i}"),
                port: 2004,
                instance: None,
            })
            .collect();
        let placement = aggd::ring::Placement::new(method, nodes, 1, true).unwrap();
        let mut placed = Vec::new();
        let mut share = [0usize; 3];
        let t = Instant::now();
        for name in &names {
            placement.place(name, &mut placed);
            share[placed[0]] += 1;
        }
        let elapsed = t.elapsed();
        assert!(share.iter().all(|&s| s > 20_000), "{method}: {share:?}");
        report(
            &format!("place a name on 3 destinations, {method}"),
            names.len() as u64,
            elapsed,
        );
        // The senders' path: names seen before (an output series emitted again, a path
        // forwarded again) come from the per-thread cache.
        let shared: Vec<std::sync::Arc<str>> = names.iter().map(|n| n.as_str().into()).collect();
        for name in &shared {
            placement.place_cached(name, &mut placed);
        }
        let t = Instant::now();
        for name in &shared {
            placement.place_cached(name, &mut placed);
            share[placed[0]] += 1;
        }
        report(
            &format!("place a name again (cached), {method}"),
            names.len() as u64,
            t.elapsed(),
        );
    }
    let tagged: Vec<String> = (0..100_000)
        .map(|i| format!("cpu.load;zone=eu{};host=h{i};dc=x", i % 3))
        .collect();
    let t = Instant::now();
    let mut changed = 0;
    for name in &tagged {
        if let aggd::codec::tagged::Normalized::Changed(n) = aggd::codec::tagged::normalize(name) {
            changed += 1;
            black_box(n);
        }
    }
    assert_eq!(changed, tagged.len());
    report(
        "normalise a tagged name (3 tags, reordered)",
        tagged.len() as u64,
        t.elapsed(),
    );

    let mut table = SeriesTable::new(Settings {
        max_intervals: 5,
        write_back_frequency: 0,
        max_values_per_bucket: 1000,
    });
    let keys: Vec<Arc<SeriesKey>> = (0..1000)
        .map(|i| {
            let name = format!("agg.{i}.sum");
            Arc::new(SeriesKey {
                hash: fnv1a64(name.as_bytes()),
                name: name.into(),
                method: Method::Sum,
                frequency: 60,
            })
        })
        .collect();
    let now = 1_700_000_030.0;
    let t = Instant::now();
    for i in 0..n {
        table
            .add(&keys[i % 1000], now - (i % 60) as f64, 1.0, now)
            .unwrap();
    }
    let elapsed = t.elapsed();
    // Every datapoint is in its series' bucket: the sums add up to n, 1000 series.
    let (mut total, mut series) = (0.0, std::collections::HashSet::new());
    table.drain_all(|key, _, value| {
        total += value.as_f64();
        series.insert(Arc::clone(&key.name));
    });
    assert_eq!((total, series.len()), (n as f64, 1000));
    report("bucket update (sum, 1000 series)", n as u64, elapsed);

    let dir = std::env::temp_dir().join(format!("aggd-micro-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chunk = bytes::Bytes::from(text.as_bytes()[..256 * 1024].to_vec());
    let lines_per_chunk = chunk.iter().filter(|b| **b == b'\n').count() as u64;
    let (journal, _) = aggd::journal::Journal::open(aggd::journal::JournalConfig {
        dir: dir.clone(),
        fsync: aggd::journal::Fsync::Interval(Duration::from_secs(1)),
        segment_bytes: 64 << 20,
        segment_max_age: Duration::from_secs(3600),
        max_bytes: 1 << 40,
        max_age: Duration::from_secs(86400),
        min_free_disk: 0,
        on_full: aggd::journal::OnFull::Backpressure,
        queue_records: 64,
        ledger: dir.join("ledger.jsonl"),
    })
    .unwrap();
    let records = 1000u64;
    // Received now: a receive time of 0 is older than max_age, and retention would delete
    // the sealed segments as soon as they rotate.
    let received_us = (aggd::time::now() * 1e6) as i64;
    let t = rt.block_on(async {
        let t = Instant::now();
        let mut tickets = Vec::new();
        for _ in 0..records {
            tickets.push(
                journal
                    .submit(aggd::journal::NewRecord {
                        received_us,
                        listener: 0,
                        kind: aggd::datapoint::Kind::PlaintextTcp,
                        peer: "127.0.0.1:1".parse().unwrap(),
                        tenant: None,
                        payload: chunk.clone(),
                        verdict: Default::default(),
                        attachment: None,
                    })
                    .await,
            );
        }
        for tk in tickets {
            assert!(tk.wait().await);
        }
        t.elapsed()
    });
    journal.close();
    // What was acknowledged reads back: every record, whole.
    let (mut read, mut bytes) = (0u64, 0u64);
    aggd::journal::reader::read_range(
        &dir,
        i64::MIN,
        i64::MAX,
        |r| {
            read += 1;
            bytes += r.payload.len() as u64;
            assert_eq!(r.payload, &chunk[..]);
        },
        |_| {},
    )
    .unwrap();
    assert_eq!((read, bytes), (records, records * chunk.len() as u64));
    report(
        "journal append (256 KiB records, fsync 1 s)",
        records * lines_per_chunk,
        t,
    );
    println!(
        "{:<44} {:>12.0} MB/s",
        "journal append throughput",
        (records * chunk.len() as u64) as f64 / t.as_secs_f64() / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The body of one carbon pickle frame of `n` datapoints (`svc.h<i>.requests`, value `i`)
/// made by CPython's own `pickle` module, protocol 2, as carbon's senders make it.
fn cpython_pickle_frame(n: usize) -> Vec<u8> {
    let script = format!(
        "import pickle, sys\n\
         data = [('svc.h%d.requests' % i, (1700000000, float(i))) for i in range({n})]\n\
         sys.stdout.buffer.write(pickle.dumps(data, protocol=2))\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 (CPython) makes the pickle input: install python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
