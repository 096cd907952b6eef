//! aggd as a service: the systemd notify protocol, reload mid-stream, `/metrics`,
//! `/health`, `/ready`, and carbon self-metrics.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aggd_testkit::*;

/// A running `aggd run -c CFG` whose stderr lines are collected.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(cfg: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aggd"))
            .args(["run", "-c"])
            .arg(cfg)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (10 s at most) for a log line containing `needle`, and returns it.
    fn wait_log(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no log line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    fn addr(&mut self, kind: &str) -> SocketAddr {
        let l = self.wait_log(&format!("listener=\"{kind}\""));
        let a = l.find("address=").unwrap();
        l[a + 8..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
}

#[test]
fn notify_protocol_in_order() {
    let dir = tempdir("notify");
    let cfg = write_config(&dir, "x (60) = sum in.*\n", "", "stdout", "plaintext");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Daemon::start(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no notify message");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    };
    assert_eq!(recv(), "READY=1");
    // The watchdog is pinged while the workers make progress (every 100 ms here).
    assert_eq!(recv(), "WATCHDOG=1");
    assert_eq!(recv(), "WATCHDOG=1");
    d.signal("-HUP");
    let mut msgs = Vec::new();
    while !msgs.iter().any(|m: &String| m == "READY=1") {
        let m = recv();
        if m != "WATCHDOG=1" {
            msgs.push(m);
        }
    }
    assert!(msgs[0].starts_with("RELOADING=1"), "{msgs:?}");
    assert!(msgs[0].contains("MONOTONIC_USEC="), "{msgs:?}");
    d.wait_log("reloaded");
    d.signal("-TERM");
    loop {
        let m = recv();
        if m != "WATCHDOG=1" {
            assert_eq!(m, "STOPPING=1");
            break;
        }
    }
    assert!(d.child.wait().unwrap().success());
}

#[test]
fn sighup_applies_new_rules_mid_stream_without_loss_and_keeps_them_on_a_broken_file() {
    let (capture, dir, cfg) = with_downstream("reload", "a.sum (3600) = sum in.*\n", "pickle");
    append_config(
        &cfg,
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"reload-test-token\"\n",
    );
    let mut d = Daemon::start(&cfg, &[]);
    let tcp = d.addr("plaintext/tcp");
    let admin = d.addr("admin/http");
    let ts = now() as i64;
    let hour = ts - ts.rem_euclid(3600);
    let send = |n: usize| {
        let mut s = TcpStream::connect(tcp).unwrap();
        for i in 0..n {
            writeln!(s, "in.h{} 1 {ts}", i % 10).unwrap();
        }
    };
    // One connection stays open across the reload: it must not be dropped.
    let mut kept = TcpStream::connect(tcp).unwrap();
    send(1000);
    writeln!(kept, "in.kept 1 {ts}").unwrap();
    // Every datapoint is routed by the old rules before the reload.
    wait_received(admin, 1001.0);
    // New rules: a second rule, which applies from the reload on.
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "a.sum (3600) = sum in.*\nb.count (3600) = count in.*\n",
    )
    .unwrap();
    d.signal("-HUP");
    d.wait_log("reloaded");
    send(500);
    writeln!(kept, "in.kept 1 {ts}").unwrap();
    wait_received(admin, 1502.0);
    // A broken rules file: refused with file and line, the running rules stay.
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "a.sum (3600) = sum in.*\nbroken.<x> (60) = sum in.<y>\n",
    )
    .unwrap();
    d.signal("-HUP");
    let err = d.wait_log("reload failed");
    assert!(err.contains("aggregation-rules.conf:2:"), "{err}");
    send(200);
    wait_received(admin, 1702.0);
    drop(kept);
    d.signal("-TERM");
    assert!(d.child.wait().unwrap().success());
    // Nothing lost or counted twice across the reloads; the new rule from its reload on.
    capture.wait_for("flushed aggregates", |got| {
        got.get(&("a.sum".into(), hour)) == Some(&1702.0)
            && got.get(&("b.count".into(), hour)) == Some(&701.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_self_metrics_match_the_traffic() {
    let (capture, _dir, cfg) = with_downstream("metrics", "total (60) = sum in.*\n", "pickle");
    append_config(
        &cfg,
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"unused-token\"\n[service]\nself_metrics_interval = \"1s\"\nhostname = \"test.host\"\n",
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let admin = server.addr("admin/http").unwrap();
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let mut b = String::new();
        for i in 0..300 {
            b.push_str(&format!("in.h{i} 2 {base}\n"));
        }
        b.push_str("bad\nbad again\n");
        b.push_str(&format!("in.old 1 {}\n", base - 7200));
        s.write_all(b.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("total", |got| {
        got.get(&("total".into(), base)) == Some(&600.0)
    });
    let get = move |path: &'static str| {
        tokio::task::spawn_blocking(move || http(admin, "GET", path, &[], b""))
    };
    let (status, _, body) = get("/health").await.unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, "ok"));
    let (status, _, _) = get("/ready").await.unwrap();
    assert_eq!(status, 200);
    let (status, _, body) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let m = String::from_utf8(body).unwrap();
    let metric = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing in:\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(metric("aggd_received_total"), 301.0);
    assert_eq!(metric("aggd_dropped_total{reason=\"parse_error\"}"), 2.0);
    assert_eq!(metric("aggd_dropped_total{reason=\"too_old\"}"), 1.0);
    // One rule, one interval: one aggregate.
    assert_eq!(metric("aggd_aggregates_emitted_total"), 1.0);
    let dest = format!(
        "aggd_destination_sent_total{{destination=\"{}\"}}",
        capture.addr
    );
    assert!(metric(&dest) >= 1.0);
    assert_eq!(metric("aggd_ready"), 1.0);
    assert!(m.contains("aggd_worker_queue_depth{worker=\"0\"}"));
    // Carbon-style self-metrics reach the destination, never through the rules. Each is
    // the count of one interval, so the datapoints may show in one interval or be split
    // over two: their sum is exact either way.
    capture.wait_for("self-metrics", |got| {
        got.iter()
            .filter(|((p, _), _)| p == "carbon.aggregator.test_host-a.metricsReceived")
            .map(|(_, v)| v)
            .sum::<f64>()
            == 301.0
    });
    let got = capture.snapshot();
    for stat in [
        "aggregateDatapointsSent",
        "allocatedBuffers",
        "activeConnections",
        "cpuUsage",
        "memUsage",
        "drops.parse_error",
    ] {
        let p = format!("carbon.aggregator.test_host-a.{stat}");
        assert!(got.keys().any(|(k, _)| *k == p), "{p} missing");
    }
    server.shutdown().await;
}

/// Every `(metric, label)` sample of counter families in `/metrics` text, as
/// `(carbon stat, value)` for the families the self-metrics also report.
fn counters_as_carbon_stats(metrics: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (sample, value) = l.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let label = |family: &str, key: &str| {
            sample
                .strip_prefix(&format!("{family}{{{key}=\""))
                .and_then(|r| r.strip_suffix("\"}"))
                .map(str::to_string)
        };
        let stat = if sample == "aggd_received_total" {
            Some("metricsReceived".to_string())
        } else if let Some(r) = label("aggd_dropped_total", "reason") {
            Some(format!("drops.{r}"))
        } else {
            label("aggd_events_total", "event").map(|e| format!("events.{e}"))
        };
        out.extend(stat.map(|s| (s, value)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_self_metrics_report_the_same_counts() {
    let (capture, _dir, cfg) = with_downstream("same-counts", "total (60) = sum in.*\n", "pickle");
    append_config(
        &cfg,
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"unused-token\"\n\
         [service]\nself_metrics_interval = \"1s\"\nhostname = \"h\"\n\
         [limits]\nmax_connections = 1\n",
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let admin = server.addr("admin/http").unwrap();
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let mut b = format!("in.a 1 {base}\nin.b 2 {base}\nno value\n");
        b.push_str(&format!("in.old 1 {}\nin.nan nan {base}\n", base - 7200));
        s.write_all(b.as_bytes()).unwrap();
        drop(s);
        // in.a, in.b and in.old (too old only once a worker sees it).
        wait_received(admin, 3.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(admin, "aggd_active_connections") > 0.0 {
            assert!(Instant::now() < deadline, "the connection never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        // One connection held open; the next one is past max_connections: refused.
        let held = TcpStream::connect(tcp).unwrap();
        let mut refused = TcpStream::connect(tcp).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(
            std::io::Read::read(&mut refused, &mut buf),
            Ok(0) | Err(_)
        ));
        drop(held);
    })
    .await
    .unwrap();
    let stat = |got: &std::collections::BTreeMap<(String, i64), f64>, name: &str| -> f64 {
        let p = format!("carbon.aggregator.h-a.{name}");
        got.iter()
            .filter(|((k, _), _)| *k == p)
            .map(|(_, v)| v)
            .sum()
    };
    capture.wait_for("self-metrics of the traffic", |got| {
        stat(got, "metricsReceived") == 3.0 && stat(got, "events.connection_refused") == 1.0
    });
    let (_, _, body) = http(admin, "GET", "/metrics", &[], b"");
    let counters = counters_as_carbon_stats(&String::from_utf8(body).unwrap());
    let got = capture.snapshot();
    // Every nonzero counter the self-metrics carry sums to the same value over the reports
    // (each report holds the change of one interval); zero ones are never sent.
    let mut compared = Vec::new();
    for (stat_name, value) in &counters {
        assert_eq!(stat(&got, stat_name), *value, "{stat_name}");
        if *value > 0.0 {
            compared.push(stat_name.as_str());
        }
    }
    for expected in [
        "metricsReceived",
        "drops.parse_error",
        "drops.too_old",
        "drops.nan_value",
        "events.connection_refused",
    ] {
        assert!(
            compared.contains(&expected),
            "{expected} not counted: {counters:?}"
        );
    }
    assert_eq!(metric(admin, "aggd_connections_refused_total"), 1.0);
    server.shutdown().await;
}
