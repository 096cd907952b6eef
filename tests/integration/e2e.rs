//! End-to-end over real sockets: aggd in-process on 127.0.0.1 ports it picked, senders
//! speaking carbon plaintext (TCP, UDP) and pickle (CPython's own `pickle` module), and a
//! capturing downstream that decodes with serde-pickle.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use aggd::reason::DropReason;
use aggd_testkit::*;

const RULES: &str = "\
agg.<g>.sum (60) = sum in.<g>.*
agg.<g>.count (60) = count in.<g>.*
agg.<g>.avg (60) = avg in.<g>.*
agg.<g>.max (60) = max in.<g>.*
agg.<g>.p90 (60) = p90 in.<g>.*
";

/// The aggregates carbon would compute for these values.
fn expected(g: &str, values: &[f64]) -> Vec<(String, f64)> {
    let sum: f64 = values.iter().fold(0.0, |a, b| a + b);
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = 0.9 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor(), rank.ceil());
    let p90 = if lo == hi {
        sorted[lo as usize]
    } else {
        sorted[lo as usize] * (hi - rank) + sorted[hi as usize] * (rank - lo)
    };
    vec![
        (format!("agg.{g}.sum"), sum),
        (format!("agg.{g}.count"), values.len() as f64),
        (format!("agg.{g}.avg"), sum / values.len() as f64),
        (format!("agg.{g}.max"), sorted[sorted.len() - 1]),
        (format!("agg.{g}.p90"), p90),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_udp_and_pickle_aggregate_exactly() {
    let capture = Capture::start("pickle");
    let dir = tempdir("e2e");
    let cfg = write_config(&dir, RULES, "", &capture.addr.to_string(), "pickle");
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let mut want = Vec::new();

    // Plaintext over TCP, with bad lines in between that must not close the connection,
    // and a last line without a newline.
    let tcp_values: Vec<f64> = (0..50).map(|i| f64::from(i) * 1.5 - 10.0).collect();
    let mut payload = Vec::new();
    for (i, v) in tcp_values.iter().enumerate() {
        writeln!(payload, "in.tcp.h{} {v} {}", i % 7, base + (i as i64 % 60)).unwrap();
        if i == 10 {
            payload.extend_from_slice(b"in.tcp.bad not_a_number 1\n");
            payload.extend_from_slice(b"in.tcp.\xff\xfe 1 1\n");
            writeln!(payload, "in.tcp.h1 1 inf").unwrap();
            writeln!(payload, "in.tcp.h1 nan {base}").unwrap();
            payload.extend_from_slice(format!("{} 1 1\n", "x".repeat(20000)).as_bytes());
        }
    }
    payload.truncate(payload.len() - 1); // last line without '\n'
    let addr = server.addr("plaintext/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // Write in small pieces so lines are split across reads.
        for piece in payload.chunks(7) {
            s.write_all(piece).unwrap();
        }
    })
    .await
    .unwrap();
    want.extend(expected("tcp", &tcp_values));

    // Plaintext over UDP: several multi-line datagrams.
    let udp_values: Vec<f64> = (0..30).map(|i| f64::from(i * i)).collect();
    let udp_addr = server.addr("plaintext/udp").unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for chunk in udp_values.chunks(10) {
        let mut dgram = String::new();
        for (i, v) in chunk.iter().enumerate() {
            dgram.push_str(&format!("in.udp.h{i} {v} {}\n", base + 3));
        }
        sock.send_to(dgram.as_bytes(), udp_addr).unwrap();
    }
    want.extend(expected("udp", &udp_values));

    // Pickle frames written by CPython, protocols 0, 2 and 4; ints and floats mixed.
    let pickle_addr = server.addr("pickle/tcp").unwrap();
    for proto in [0u8, 2, 4] {
        let g = format!("pk{proto}");
        let values: Vec<f64> = (0..20)
            .map(|i| f64::from(i) + f64::from(proto) / 4.0)
            .collect();
        let points: Vec<(String, f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("in.{g}.h{i}"), (base + i as i64) as f64, *v))
            .collect();
        python_pickle_send(pickle_addr, proto, &points);
        want.extend(expected(&g, &values));
    }

    capture.wait_for("every aggregate", |got| {
        want.iter()
            .all(|(p, v)| got.get(&(p.clone(), base)) == Some(v))
    });
    for (p, v) in &want {
        assert_eq!(capture.value(p, base), Some(*v), "{p}");
    }
    let stats = server.stats();
    assert_eq!(stats.drops(DropReason::ParseError), 1);
    assert_eq!(stats.drops(DropReason::BadUtf8), 1);
    assert_eq!(stats.drops(DropReason::BadTimestamp), 1);
    assert_eq!(stats.drops(DropReason::NanValue), 1);
    assert_eq!(stats.drops(DropReason::LineTooLong), 1);
    let received = stats.received.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(received, 50 + 30 + 60);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_future_and_bad_pickle_are_counted_not_fatal() {
    let (capture, _dir, cfg) = with_downstream("reject", "total (60) = sum in.*\n", "plaintext");
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let pickle_addr = server.addr("pickle/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "in.a 1 {}\nin.a 2 {}\nin.a 4 {base}\n",
            base - 3600,
            base + 3600
        )
        .unwrap();
        // Pickle: an oversize length prefix, a garbage frame, a GLOBAL/REDUCE frame, then a
        // good frame on the same connection.
        let mut p = TcpStream::connect(pickle_addr).unwrap();
        p.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
        p.write_all(&[0u8; 1000]).unwrap();
        drop(p);
        let mut p = TcpStream::connect(pickle_addr).unwrap();
        for body in [&b"\x80\x02garbage"[..], b"cos\nsystem\n(S'true'\ntR."] {
            p.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
            p.write_all(body).unwrap();
        }
        let good = format!("(lp0\n(Vin.b\n(I{base}\nF8.0\ntta.");
        p.write_all(&(good.len() as u32).to_be_bytes()).unwrap();
        p.write_all(good.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("total", |got| {
        got.get(&("total".into(), base)) == Some(&12.0)
    });
    let stats = server.stats();
    assert_eq!(stats.drops(DropReason::TooOld), 1);
    assert_eq!(stats.drops(DropReason::TooNew), 1);
    assert_eq!(stats.drops(DropReason::FrameTooLarge), 1);
    assert_eq!(stats.drops(DropReason::BadFrame), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_pickle_header_closes_the_connection_after_the_frames_before_it() {
    let (capture, _dir, cfg) = with_downstream("oversize", "total (60) = sum in.*\n", "plaintext");
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let pickle_addr = server.addr("pickle/tcp").unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        let frame = |v: u32| {
            let body = format!("(lp0\n(Vin.c\n(I{base}\nI{v}\ntta.");
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(body.as_bytes());
            f
        };
        // A good frame, a header declaring 4 GiB with 20 bytes of it, a good frame.
        let mut p = TcpStream::connect(pickle_addr).unwrap();
        let mut bytes = frame(1);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[7u8; 20]);
        bytes.extend_from_slice(&frame(2));
        p.write_all(&bytes).unwrap();
        // aggd closes the connection (an end of stream, or a reset for the unread bytes).
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match std::io::Read::read(&mut p, &mut [0u8; 16]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    })
    .await
    .unwrap();
    assert!(closed, "the connection stayed open after a 4 GiB header");
    capture.wait_for("the frame before the header", |got| {
        got.get(&("total".into(), base)) == Some(&1.0)
    });
    let stats = server.stats();
    assert_eq!(stats.drops(DropReason::FrameTooLarge), 1);
    assert_eq!(stats.drops(DropReason::BadFrame), 0);
    server.shutdown().await;
    capture.wait_all_closed();
    // The frame after the header was never read as one.
    assert_eq!(capture.value("total", base), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_all_with_rewrites() {
    let capture = Capture::start("pickle");
    let dir = tempdir("fwd");
    std::fs::write(
        dir.join("rewrite-rules.conf"),
        "[pre]\n^raw\\.(\\w+)\\. = in.\\1.\n[post]\n^in\\. = fwd.\n",
    )
    .unwrap();
    let cfg = write_config(
        &dir,
        "agg.<g>.sum (60) = sum in.<g>.*\nin.x.same (60) = sum in.x.same\n",
        "rewrite_rules = \"rewrite-rules.conf\"\nforward_all = true\n",
        &capture.addr.to_string(),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "raw.x.a 1.25 {base}\nin.x.b 2 {}\nin.x.same 7 {base}\n",
            base + 1
        )
        .unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("aggregates and forwards", |got| got.len() >= 4);
    let got = capture.snapshot();
    // [pre] rewrote raw.x.a before matching; aggregates are never [post]-rewritten.
    assert_eq!(got.get(&("agg.x.sum".into(), base)), Some(&10.25));
    assert_eq!(got.get(&("in.x.same".into(), base)), Some(&7.0));
    // Raw forwards carry [post] rewrites; an input equal to an output is not forwarded.
    assert_eq!(got.get(&("fwd.x.a".into(), base)), Some(&1.25));
    assert_eq!(got.get(&("fwd.x.b".into(), base + 1)), Some(&2.0));
    assert!(!got.contains_key(&("fwd.x.same".into(), base)));
    assert_eq!(got.len(), 4, "{got:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_open_intervals() {
    let (capture, _dir, cfg) = with_downstream("flush", "hour.sum (3600) = sum in.*\n", "pickle");
    let server = start_aggd(&cfg).await;
    let ts = now() as i64;
    let bucket = ts - ts.rem_euclid(3600);
    let addr = server.addr("plaintext/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "in.a 3 {ts}\nin.b 4 {ts}\n").unwrap();
    })
    .await
    .unwrap();
    // Once a sweep has run with both datapoints in their bucket (workers publish their
    // gauges right after a sweep): the interval is open, so nothing was emitted.
    let observed = server.observed();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while observed
        .gauges
        .iter()
        .map(|g| g.buffered.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "datapoints never reached a bucket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let emitted = server
        .stats()
        .aggregates_emitted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(emitted, 0, "an open interval is not emitted");
    assert_eq!(capture.value("hour.sum", bucket), None);
    server.shutdown().await;
    capture.wait_for("flushed open bucket", |got| {
        got.get(&("hour.sum".into(), bucket)) == Some(&7.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_destination_fills_only_its_own_queue() {
    let capture = Capture::start("pickle");
    // Port 1 is below the ephemeral range, so no bind(0) in any test can take it, and
    // nothing listens there: connections are refused and the queue only fills.
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(
        TcpStream::connect(dead).is_err(),
        "something listens on {dead}"
    );
    let dir = tempdir("dead");
    let cfg = write_config(
        &dir,
        "out.<h> (60) = sum in.<h>\n",
        "",
        &capture.addr.to_string(),
        "pickle",
    );
    append_config(
        &cfg,
        &format!(
            "[[destination]]\naddress = \"{dead}\"\nprotocol = \"pickle\"\nqueue_datapoints = 300\n\
             [routing]\nmethod = \"all\"\n"
        ),
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for h in 0..500 {
            writeln!(s, "in.h{h} {h} {base}").unwrap();
        }
    })
    .await
    .unwrap();
    capture.wait_for("all 500 aggregates at the live destination", |got| {
        got.len() == 500
    });
    for h in 0..500 {
        assert_eq!(
            capture.value(&format!("out.h{h}"), base),
            Some(f64::from(h))
        );
    }
    let stats = server.stats();
    let dests = server.destinations();
    let (name, dead_counters) = dests.counters().nth(1).unwrap();
    assert_eq!(name, dead.to_string());
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    // Wait until every aggregate offered to the dead destination is queued or dropped.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let (dropped, queued) = loop {
        let dropped = load(&dead_counters.full_queue_drops);
        let queued = dead_counters
            .queued
            .load(std::sync::atomic::Ordering::Relaxed) as u64;
        if dropped + queued == 500 || Instant::now() > deadline {
            break (dropped, queued);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        dropped + queued,
        500,
        "every aggregate is queued or counted"
    );
    assert!(
        dropped > 0 && queued > 0 && queued <= 300,
        "dropped {dropped}, queued {queued}"
    );
    assert_eq!(stats.drops(DropReason::DestinationFull), dropped);
    let (_, live) = dests.counters().next().unwrap();
    assert_eq!(load(&live.full_queue_drops), 0);
    assert_eq!(load(&dead_counters.sent), 0);
    server.shutdown().await;
    // What was still queued for the dead destination at shutdown is counted too.
    assert_eq!(stats.drops(DropReason::DestinationDown), queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_downstream_drops_the_connection() {
    let capture = Capture::start_with("pickle", true);
    let dir = tempdir("reconnect");
    let cfg = write_config(
        &dir,
        "out.<k> (60) = sum in.<k>\n",
        "",
        &capture.addr.to_string(),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    // Keep sending new series until one arrives over a second connection. What was written
    // into the dropped connection is lost in transit (carbon's protocol has no acks).
    let mut arrived = None;
    for k in 0..100 {
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            writeln!(s, "in.k{k} {k} {base}").unwrap();
        })
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Some(v) = capture.value(&format!("out.k{k}"), base) {
            arrived = Some((k, v));
            break;
        }
    }
    let (k, v) = arrived.expect("no aggregate arrived after the downstream dropped a connection");
    assert_eq!(v, f64::from(k));
    assert!(
        capture
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_read_whole_up_to_64k() {
    let (capture, _dir, cfg) = with_downstream(
        "bigudp",
        "total (60) = sum in.*\ncount (60) = count in.*\n",
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    // ~45 KB in one datagram: carbon reads 8192 bytes and cuts the rest silently.
    let mut dgram = String::new();
    let mut n = 0;
    while dgram.len() < 45_000 {
        dgram.push_str(&format!("in.h{n:05} 2 {base}\n"));
        n += 1;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(dgram.as_bytes(), server.addr("plaintext/udp").unwrap())
        .unwrap();
    capture.wait_for("the whole datagram", |got| {
        got.get(&("count".into(), base)) == Some(&f64::from(n))
    });
    assert_eq!(capture.value("total", base), Some(f64::from(2 * n)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_queue_overflow_is_counted_ledgered_and_journaled_refused() {
    let (capture, dir, cfg) = with_downstream("udpqueue", "total (60) = sum in.*\n", "pickle");
    // A queue of 100 bytes: a 2-line datagram fits, a 6-line one (over 100 bytes) never.
    append_config(
        &cfg,
        "[limits]\nudp_queue_bytes = 100\n[journal]\ndir = \"journal\"\nmin_free_disk = 0\n",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let small = format!("in.a 1 {base}\nin.b 2 {base}\n");
    let big: String = (0..6)
        .map(|i| format!("in.big{i} 100 {}\n", base + i))
        .collect();
    assert!(small.len() <= 100 && big.len() > 100);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.addr("plaintext/udp").unwrap();
    sock.send_to(big.as_bytes(), addr).unwrap();
    sock.send_to(small.as_bytes(), addr).unwrap();
    capture.wait_for("the datagram that fit", |got| {
        got.get(&("total".into(), base)) == Some(&3.0)
    });
    let stats = server.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.drops(DropReason::QueueFull) < 6 {
        assert!(Instant::now() < deadline, "queue_full not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.drops(DropReason::QueueFull), 6);
    server.shutdown().await;
    // Ledgered with the interval its datapoints span…
    let (entries, _) = aggd::ledger::read(&dir.join("journal/ledger.jsonl")).unwrap();
    let full: Vec<_> = entries
        .iter()
        .filter(|e| e.reason == "queue_full")
        .collect();
    assert_eq!(full.iter().map(|e| e.count).sum::<u64>(), 6, "{entries:?}");
    assert!(
        full.iter()
            .any(|e| e.from <= base as f64 && e.to >= (base + 5) as f64)
    );
    // …and journaled refused: a replay of the window reads both datagrams back and sends
    // what was accepted; `--lost` brings the refused one back.
    let cfg = cfg.to_str().unwrap();
    let (from, to) = ((base - 60).to_string(), (base + 60).to_string());
    let out = aggd_ok([
        "replay",
        "--dry-run",
        "-c",
        cfg,
        "--from",
        &from,
        "--to",
        &to,
    ]);
    assert!(out.contains("2 records, 2 datapoints"), "{out}");
    assert!(out.contains("6 refused datapoints left out"), "{out}");
    let out = aggd_ok(["replay", "--dry-run", "-c", cfg, "--lost"]);
    assert!(out.contains("2 records, 8 datapoints"), "{out}");
    assert!(out.contains("6 refused datapoints replayed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_feeding_every_rule_are_routed_in_pieces_within_the_budget_and_journaled_once() {
    // 500 rules that every path matches: a line makes 500 work items (20 kB), and a read
    // is charged for two items a line. The connection routes and journals its reads in
    // pieces that keep to that, and each datapoint is aggregated and journaled once.
    let capture = Capture::start("pickle");
    let dir = tempdir("fan-out");
    let rules: String = (0..500)
        .map(|i| format!("o{i}.sum (60) = sum in.*\n"))
        .collect();
    let cfg = write_config(
        &dir,
        &rules,
        "max_intervals = 24\n",
        &capture.addr.to_string(),
        "pickle",
    );
    append_config(
        &cfg,
        "[limits]\nconnection_memory_bytes = 16777216\n\
         [journal]\ndir = \"journal\"\nmin_free_disk = 0\n",
    );
    let server = start_aggd(&cfg).await;
    let ts = now() as i64 - 60;
    let bucket = ts - ts.rem_euclid(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let lines: u32 = 4_000;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let payload: String = (0..lines).map(|i| format!("in.h{i} 1 {ts}\n")).collect();
        s.write_all(payload.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    let exact = |got: &std::collections::BTreeMap<(String, i64), f64>| {
        (0..500).all(|i| got.get(&(format!("o{i}.sum"), bucket)) == Some(&f64::from(lines)))
    };
    capture.wait_for("every output exact", exact);
    let received = server
        .stats()
        .received
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(received, u64::from(lines));
    server.shutdown().await;
    // Each piece is a journal record of whole lines: 4 000 lines of 500 items each make
    // far more records than the reads of 84 kB would.
    let (mut records, mut journaled) = (0, 0);
    aggd::journal::reader::read_range(
        &dir.join("journal"),
        i64::MIN,
        i64::MAX,
        |r| {
            records += 1;
            assert!(r.payload.ends_with(b"\n"), "a piece ends at a line's end");
            journaled += r
                .payload
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(journaled, lines as usize, "every line journaled once");
    assert!(records > 20, "{records} records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rules_never_starve_a_connection_of_its_memory_budget() {
    // With 1 000 rules a shortest line could feed 1 000 work items: a connection's reads
    // must shrink to what the budget covers, not wait for ever for room that cannot come
    // (a 256 KiB read would need 1 GB of budget against the default 128 MiB).
    let capture = Capture::start("pickle");
    let dir = tempdir("many-rules");
    let mut rules = String::from("big.sum (60) = sum in.*\n");
    for i in 1..1000 {
        rules.push_str(&format!("none{i}.sum (60) = sum none{i}.*\n"));
    }
    let cfg = write_config(&dir, &rules, "", &capture.addr.to_string(), "pickle");
    let server = start_aggd(&cfg).await;
    let ts = now() as i64 - 60;
    let bucket = ts - ts.rem_euclid(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let lines = 60_000;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut payload = String::new();
        for i in 0..lines {
            payload.push_str(&format!("in.h{i} 1 {ts}\n"));
        }
        s.write_all(payload.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("every datapoint aggregated", |got| {
        got.get(&("big.sum".into(), bucket)) == Some(&f64::from(lines))
    });
    server.shutdown().await;
}
