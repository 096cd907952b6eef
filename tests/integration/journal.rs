//! The journal end to end: a `kill -9` loses no aggregate, and `aggd replay --lost` repairs
//! what a destination outage lost in a real carbon-cache, idempotently.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aggd_testkit::carbon::CarbonCache;
use aggd_testkit::*;

fn add_journal(cfg: &std::path::Path, extra_destination: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text = text.replace(
        "[[destination]]",
        &format!("[[destination]]{extra_destination}"),
    );
    if !extra_destination.is_empty() {
        // Each destination gets everything: the tests compare them.
        text.push_str("[routing]\nmethod = \"all\"\n");
    }
    text.push_str(
        "[journal]\ndir = \"journal\"\nfsync = \"interval\"\nfsync_interval = \"1s\"\nmin_free_disk = 0\n",
    );
    std::fs::write(cfg, text).unwrap();
}

/// Sends `lines` over one connection at a steady pace (in 10 slices, 50 ms apart).
fn send_steady(addr: std::net::SocketAddr, lines: &[String]) {
    let mut s = TcpStream::connect(addr).unwrap();
    for slice in lines.chunks(lines.len().div_ceil(10)) {
        s.write_all(slice.concat().as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_and_restart_loses_no_aggregate() {
    let (capture, dir, cfg) = with_downstream(
        "crash",
        "hour.sum (3600) = sum in.*\nhour.count (3600) = count in.*\n\
         min.sum (60) = sum in.*\nmin.count (60) = count in.*\n",
        "pickle",
    );
    add_journal(&cfg, "");
    append_config(
        &cfg,
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"journal-test-token\"\n",
    );
    let args = ["-c", cfg.to_str().unwrap()];
    let ts = now() as i64;
    let hour = ts - ts.rem_euclid(3600);
    let minute = previous_bucket(60);
    let line = |i: usize, t: i64| format!("in.h{} {} {t}\n", i % 50, i % 7);
    // Half of the datapoints in the open hour, half in the previous (closed) minute.
    let all: Vec<(String, i64)> = (0..8000)
        .map(|i| {
            let t = if i % 2 == 0 {
                ts
            } else {
                minute + (i % 60) as i64
            };
            (line(i, t), t)
        })
        .collect();
    let (before, after) = all.split_at(5000);

    let at = |addrs: &[(String, std::net::SocketAddr)], kind: &str| {
        addrs.iter().find(|(k, _)| k == kind).unwrap().1
    };
    let (mut child, addrs) = spawn_run(&args, 4);
    // One malformed line, journaled with the rest: counted and ledgered once, by this run.
    let mut first: Vec<String> = before.iter().map(|(l, _)| l.clone()).collect();
    first.insert(100, "not a datapoint\n".into());
    send_steady(at(&addrs, "plaintext/tcp"), &first);
    // Once every datapoint is journaled and handed on: SIGKILL.
    wait_received(at(&addrs, "admin/http"), before.len() as f64);
    child.kill().unwrap();
    child.wait().unwrap();

    let (child, addrs) = spawn_run(&args, 4);
    send_steady(
        at(&addrs, "plaintext/tcp"),
        &after.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
    );
    wait_received(at(&addrs, "admin/http"), after.len() as f64);
    sigterm(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success());

    // What an uninterrupted run computes over the same input, per rule and bucket.
    let mut want = std::collections::BTreeMap::new();
    for (i, (_, t)) in all.iter().enumerate() {
        let v = (i % 7) as f64;
        for (name, f) in [("hour", 3600), ("min", 60)] {
            let b = t - t.rem_euclid(f);
            *want.entry((format!("{name}.sum"), b)).or_insert(0.0) += v;
            *want.entry((format!("{name}.count"), b)).or_insert(0.0) += 1.0;
        }
    }
    capture.wait_for("aggregates of both runs", |got| *got == want);
    // The open hour spans the kill: downstream counts the datapoints of both runs in it.
    let in_hour = |part: &[(String, i64)]| part.iter().filter(|(_, t)| *t >= hour).count();
    assert!(in_hour(before) > 0 && in_hour(after) > 0);
    assert_eq!(
        capture.value("hour.count", hour),
        Some((in_hour(before) + in_hour(after)) as f64)
    );
    // The rebuild re-read the malformed line but did not count or ledger it again.
    let (entries, _) = aggd::ledger::read(&dir.join("journal/ledger.jsonl")).unwrap();
    let parse_errors: u64 = entries
        .iter()
        .filter(|e| e.reason == "parse_error")
        .map(|e| e.count)
        .sum();
    assert_eq!(parse_errors, 1, "{entries:?}");
}

fn replay(cfg: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["replay", "-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    aggd_ok(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lost_repairs_a_destination_outage_in_carbon_cache() {
    // The destination's port is reserved now, but carbon-cache starts only later: until
    // then aggd's connections are refused and its small queue overflows.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir("replay");
    let cfg = write_config(
        &dir,
        "out.<h>.sum (60) = sum in.<h>.*\nout.<h>.count (60) = count in.<h>.*\n",
        "",
        &format!("127.0.0.1:{port}"),
        "pickle",
    );
    add_journal(&cfg, "\nqueue_datapoints = 10");
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let hosts: i32 = 30;
    let mut lines = String::new();
    for h in 0..hosts {
        for m in 0..4 {
            lines.push_str(&format!(
                "in.h{h}.m{m} {} {}\n",
                h * 10 + m,
                base + i64::from(m)
            ));
        }
    }
    let addr = server.addr("plaintext/tcp").unwrap();
    tokio::task::spawn_blocking(move || {
        TcpStream::connect(addr)
            .unwrap()
            .write_all(lines.as_bytes())
    })
    .await
    .unwrap()
    .unwrap();
    let stats = server.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats
        .aggregates_emitted
        .load(std::sync::atomic::Ordering::Relaxed)
        < (2 * hosts) as u64
    {
        assert!(Instant::now() < deadline, "aggregates not emitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = stats.drops(aggd::reason::DropReason::DestinationFull);
    assert!(dropped > 0, "the outage must lose aggregates");

    // The destination comes back; aggd delivers what it still had queued, and stops.
    let cc = tokio::task::spawn_blocking(move || CarbonCache::start_on(port, tempdir("cc-replay")))
        .await
        .unwrap();
    server.shutdown().await;

    let paths: Vec<String> = (0..hosts)
        .flat_map(|h| [format!("out.h{h}.sum"), format!("out.h{h}.count")])
        .collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let want: Vec<Option<f64>> = (0..hosts)
        .flat_map(|h| {
            let sum: f64 = (0..4).map(|m| f64::from(h * 10 + m)).sum();
            [Some(sum), Some(4.0)]
        })
        .collect();
    let fetch = |cc: &CarbonCache| cc.fetch(&path_refs, base);
    // Before replay, the outage shows: once carbon-cache has written what aggd still had
    // queued, exactly the aggregates the outage dropped are missing downstream.
    let lost = dropped.min(2 * hosts as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let got = fetch(&cc);
        let present = got.iter().filter(|v| v.is_some()).count() as u64;
        if present >= 2 * hosts as u64 - lost || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing = before.iter().filter(|v| v.is_none()).count() as u64;
    assert_eq!(missing, lost, "{before:?}");

    let out = replay(&cfg, &["--lost"]);
    assert!(
        out.contains(&format!("{} intervals sent", 2 * hosts)),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = fetch(&cc);
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after replay whisper holds {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Replaying again changes nothing: the ledger is marked, and an explicit window
    // re-sends the same complete aggregates (to a capture here, so what this replay sent
    // is seen apart from what the first one wrote).
    assert!(replay(&cfg, &["--lost"]).contains("nothing to replay"));
    let again = Capture::start("pickle");
    let window = [
        "--from".to_string(),
        base.to_string(),
        "--to".to_string(),
        (base + 59).to_string(),
        "--dest".to_string(),
        again.addr.to_string(),
    ];
    let out = replay(&cfg, &window.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains(&format!("{} intervals sent", 2 * hosts)),
        "{out}"
    );
    again.wait_for("the second replay's complete aggregates", |got| {
        path_refs
            .iter()
            .zip(&want)
            .all(|(p, w)| got.get(&(p.to_string(), base)).copied() == *w)
    });
    assert_eq!(
        again.received.lock().unwrap().datapoints,
        2 * hosts as usize
    );
    assert_eq!(fetch(&cc), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_not_journaled_is_aggregated_and_counted_on_its_own_not_as_a_drop() {
    // Free space can never reach min_free_disk: every journal write fails, and with
    // on_full = "ingest" the datapoints are processed anyway.
    let running = TestAggd::new("unjournaled", "total (60) = sum in.*\n")
        .toml(
            "[journal]\ndir = \"journal\"\non_full = \"ingest\"\n\
             min_free_disk = 1152921504606846976\n\
             [admin]\naddress = \"127.0.0.1:0\"\n",
        )
        .start()
        .await;
    let (tcp, admin) = (
        running.aggd.addr("plaintext/tcp").unwrap(),
        running.aggd.addr("admin/http").unwrap(),
    );
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        writeln!(TcpStream::connect(tcp).unwrap(), "in.a 5 {base}").unwrap();
    })
    .await
    .unwrap();
    let stats = running.aggd.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.unjournaled() == 0 {
        assert!(Instant::now() < deadline, "the frame was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.unjournaled(), 1);
    assert_eq!(stats.total_drops(), 0, "not journaled is not a drop");
    let text = tokio::task::spawn_blocking(move || {
        String::from_utf8(http(admin, "GET", "/metrics", &[], b"").2).unwrap()
    })
    .await
    .unwrap();
    assert!(
        text.lines().any(|l| l == "aggd_unjournaled_total 1"),
        "{text}"
    );
    assert!(!text.contains("reason=\"unjournaled\""), "{text}");
    // The datapoint was aggregated and is delivered.
    running.aggd.shutdown().await;
    running.capture.wait_for("the aggregate", |got| {
        got.get(&("total".into(), base)) == Some(&5.0)
    });
}
