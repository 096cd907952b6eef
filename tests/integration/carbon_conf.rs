//! `aggd run --carbon-conf carbon.conf` with the real binary, one test per carbon key that
//! changes behaviour: self-metrics (interval, names, instance sections), the
//! white/blacklists (and their reload), tag normalisation, and hash placement over two
//! real carbon-caches.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use aggd_testkit::carbon::{CarbonCache, carbon_placement};
use aggd_testkit::edge::{signal, wait_exit};
use aggd_testkit::*;

/// Writes `carbon.conf` in `dir`: one plaintext receiver on a free port, the pickle one
/// off, the given `DESTINATIONS`, then `keys` (more lines of `[aggregator]`, or further
/// sections).
fn carbon_conf(dir: &Path, destinations: &str, keys: &str) -> std::path::PathBuf {
    let path = dir.join("carbon.conf");
    std::fs::write(
        &path,
        format!(
            "[cache]\nLINE_RECEIVER_PORT = 2003\nSTORAGE_DIR = {}\n\n\
             [aggregator]\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {}\n\
             PICKLE_RECEIVER_PORT = 0\nDESTINATIONS = {destinations}\n{keys}",
            dir.join("storage").display(),
            free_port()
        ),
    )
    .unwrap();
    path
}

/// Starts `aggd run --carbon-conf FILE EXTRA…`; its plaintext listener.
fn run(conf: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut args = vec!["--carbon-conf", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (child, addrs) = spawn_run(&args, 1);
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    (child, tcp)
}

fn send(addr: SocketAddr, lines: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
}

fn stop(mut child: Child) {
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// The machine's host name as carbon puts it in self-metric names (`.` → `_`).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .replace('.', "_")
}

/// The sum over all timestamps received for `path`.
fn total(capture: &Capture, path: &str) -> f64 {
    capture
        .snapshot()
        .iter()
        .filter(|((p, _), _)| p == path)
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn carbon_metric_interval_zero_sends_no_self_metric_even_at_shutdown() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-interval0");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\n",
    )
    .unwrap();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        "DESTINATION_PROTOCOL = line\nFORWARD_ALL = False\nCARBON_METRIC_INTERVAL = 0\n",
    );
    let (child, tcp) = run(&conf, &[]);
    let base = previous_bucket(60);
    send(tcp, &format!("in.a 2 {base}\nin.b 3 {base}\n"));
    capture.wait_for("the aggregate", |got| {
        got.get(&("total".into(), base)) == Some(&5.0)
    });
    stop(child);
    capture.wait_all_closed();
    let got = capture.snapshot();
    let names: Vec<&String> = got.keys().map(|(p, _)| p).collect();
    assert!(
        names.iter().all(|p| *p == "total"),
        "with CARBON_METRIC_INTERVAL = 0 only the aggregate may arrive: {names:?}"
    );
}

#[test]
fn carbon_metric_interval_five_sends_carbon_names() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-interval5");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\n",
    )
    .unwrap();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        "DESTINATION_PROTOCOL = line\nFORWARD_ALL = False\nCARBON_METRIC_INTERVAL = 5\n",
    );
    let started = Instant::now();
    let (child, tcp) = run(&conf, &[]);
    let base = previous_bucket(60);
    send(tcp, &format!("in.a 2 {base}\nin.b 3 {base}\n"));
    let prefix = format!("carbon.aggregator.{}-a.", host());
    let dest = format!(
        "destinations.{}:{}:None.",
        capture.addr.ip().to_string().replace('.', "_"),
        capture.addr.port()
    );
    capture.wait_for("carbon's self-metrics", |got| {
        got.keys()
            .any(|(p, _)| *p == format!("{prefix}metricsReceived"))
    });
    // The first report comes one interval after start, as in carbon.
    assert!(started.elapsed() >= Duration::from_secs(5));
    let got = capture.snapshot();
    for stat in [
        "metricsReceived",
        "aggregateDatapointsSent",
        "allocatedBuffers",
        "bufferedDatapoints",
        "activeConnections",
        "blacklistMatches",
        "whitelistRejects",
        "cpuUsage",
        "memUsage",
    ]
    .iter()
    .map(|s| format!("{prefix}{s}"))
    .chain(
        ["attemptedRelays", "sent", "batchesSent"]
            .iter()
            .map(|s| format!("{prefix}{dest}{s}")),
    ) {
        assert!(got.keys().any(|(p, _)| *p == stat), "{stat} missing");
    }
    assert_eq!(total(&capture, &format!("{prefix}metricsReceived")), 2.0);
    stop(child);
}

#[test]
fn instance_section_and_flag_apply_like_carbon() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-instance");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\n",
    )
    .unwrap();
    let port_b = free_port();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        &format!(
            "DESTINATION_PROTOCOL = line\nFORWARD_ALL = False\nCARBON_METRIC_INTERVAL = 0\n\n\
             [aggregator:b]\nLINE_RECEIVER_PORT = {port_b}\nCARBON_METRIC_INTERVAL = 1\n\
             CARBON_METRIC_PREFIX = custom\n"
        ),
    );
    let (child, tcp) = run(&conf, &["--instance", "b"]);
    assert_eq!(tcp.port(), port_b, "[aggregator:b] sets the port");
    send(tcp, &format!("in.a 1 {}\n", previous_bucket(60)));
    let name = format!("custom.aggregator.{}-b.metricsReceived", host());
    capture.wait_for("instance b's self-metrics", |got| {
        got.keys().any(|(p, _)| *p == name)
    });
    stop(child);
}

#[test]
fn white_and_blacklists_drop_count_and_reload() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-lists");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\nother (60) = sum other.*\n",
    )
    .unwrap();
    std::fs::write(dir.join("blacklist.conf"), "# no secrets\nsecret\n").unwrap();
    std::fs::write(dir.join("whitelist.conf"), "^in\\.\n").unwrap();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        "DESTINATION_PROTOCOL = line\nFORWARD_ALL = False\nUSE_WHITELIST = True\n\
         CARBON_METRIC_INTERVAL = 1\n",
    );
    let (child, tcp) = run(&conf, &[]);
    let base = previous_bucket(60);
    send(
        tcp,
        &format!("in.a 2 {base}\nin.secret 3 {base}\nother.c 4 {base}\n"),
    );
    let prefix = format!("carbon.aggregator.{}-a.", host());
    capture.wait_for("the lists' counts", |_| {
        total(&capture, &format!("{prefix}blacklistMatches")) == 1.0
            && total(&capture, &format!("{prefix}whitelistRejects")) == 1.0
            && total(&capture, &format!("{prefix}metricsReceived")) == 1.0
            && capture.value("total", base) == Some(2.0)
    });
    assert_eq!(total(&capture, &format!("{prefix}drops.blacklist")), 1.0);
    assert!(
        capture.value("other", base).is_none(),
        "other.c was whitelisted out"
    );
    // SIGHUP re-reads the lists: now in.a is blacklisted and in.secret passes.
    std::fs::write(dir.join("blacklist.conf"), "^in\\.a$\n").unwrap();
    signal(child.id(), "-HUP");
    // The reload has taken effect once in.secret passes: probe an older interval.
    let probe = base - 120;
    let deadline = Instant::now() + Duration::from_secs(20);
    while capture.value("total", probe).is_none() {
        assert!(Instant::now() < deadline, "the lists were not reloaded");
        send(tcp, &format!("in.secret 1 {probe}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let earlier = base - 60;
    send(tcp, &format!("in.a 2 {earlier}\nin.secret 3 {earlier}\n"));
    capture.wait_for("the reloaded lists", |got| {
        got.get(&("total".into(), earlier)) == Some(&3.0)
    });
    stop(child);
}

#[test]
fn tagged_and_openmetrics_names_go_out_normalised() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-tags");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "sum.<rest> (60) = sum raw.<<rest>>\n",
    )
    .unwrap();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        "DESTINATION_PROTOCOL = line\nFORWARD_ALL = True\nTAG_RELAY_NORMALIZED = True\n\
         CARBON_METRIC_INTERVAL = 0\n",
    );
    let (child, tcp) = run(&conf, &[]);
    let base = previous_bucket(60);
    send(
        tcp,
        &format!(
            "raw.cpu;zone=eu;host=a 1 {base}\nmem{{zone=\"eu\",host=\"a\"}} 2 {base}\n\
             bad;novalue 3 {base}\n"
        ),
    );
    capture.wait_for("normalised names", |got| {
        let has = |p: &str| got.contains_key(&(p.to_string(), base));
        has("sum.cpu;host=a;zone=eu")
            && has("raw.cpu;host=a;zone=eu")
            && has("mem;host=a;zone=eu")
            && has("bad;novalue")
    });
    let got = capture.snapshot();
    assert!(
        !got.keys().any(|(p, _)| p.contains("zone=eu;host")),
        "a name went out in input order: {:?}",
        got.keys()
    );
    stop(child);
}

/// aggd with rule `agg.<s> (60) = sum in.<s>.*` routing to `dests` by carbon's ring, after
/// `lines(i)` was sent for each of 40 series `agg.s<i>` at `base`.
struct Spread {
    child: Child,
    base: i64,
    series: Vec<String>,
    /// Per series, the destination carbon's own router names.
    expected: Vec<String>,
}

fn spread(tag: &str, dests: &[String], lines: impl Fn(usize, i64) -> String) -> Spread {
    let dir = tempdir(tag);
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "agg.<s> (60) = sum in.<s>.*\n",
    )
    .unwrap();
    let conf = carbon_conf(
        &dir,
        &dests.join(", "),
        "FORWARD_ALL = False\nCARBON_METRIC_INTERVAL = 0\n",
    );
    let (child, tcp) = run(&conf, &[]);
    let base = previous_bucket(60);
    let series: Vec<String> = (0..40).map(|i| format!("agg.s{i}")).collect();
    send(tcp, &(0..40).map(|i| lines(i, base)).collect::<String>());
    let dest_refs: Vec<&str> = dests.iter().map(String::as_str).collect();
    let expected = carbon_placement("carbon_ch", 1, true, &dest_refs, &series, None);
    Spread {
        child,
        base,
        series,
        expected,
    }
}

#[test]
fn two_carbon_caches_each_series_lands_where_carbons_ring_says() {
    let a = CarbonCache::start();
    let b = CarbonCache::start();
    let dests = [
        format!("127.0.0.1:{}:a", a.port),
        format!("127.0.0.1:{}:b", b.port),
    ];
    let Spread {
        child,
        base,
        series,
        expected,
    } = spread("cc-ring", &dests, |i, base| {
        format!("in.s{i}.x {i} {base}\nin.s{i}.y 1 {base}\n")
    });
    assert!(
        expected.iter().any(|e| *e == dests[0]) && expected.iter().any(|e| *e == dests[1]),
        "the ring should use both caches: {expected:?}"
    );
    let names: Vec<&str> = series.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (in_a, in_b) = (a.fetch(&names, base), b.fetch(&names, base));
        let landed = (0..series.len())
            .filter(|&i| in_a[i].is_some() || in_b[i].is_some())
            .count();
        if landed == series.len() {
            // Give a copy sent to the wrong cache time to be written too.
            std::thread::sleep(Duration::from_secs(2));
            let (in_a, in_b) = (a.fetch(&names, base), b.fetch(&names, base));
            for (i, s) in series.iter().enumerate() {
                let want = i as f64 + 1.0;
                let (here, other) = if expected[i] == dests[0] {
                    (in_a[i], in_b[i])
                } else {
                    (in_b[i], in_a[i])
                };
                assert_eq!(here, Some(want), "{s} should be in {}", expected[i]);
                assert_eq!(other, None, "{s} is in both caches");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {landed} of {} series reached a cache",
            series.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    stop(child);
}

#[test]
fn a_dead_destinations_share_waits_and_is_never_rerouted() {
    let capture = Capture::start("pickle");
    let dead = free_port(); // nothing listens there
    let dests = [capture.addr.to_string(), format!("127.0.0.2:{dead}")];
    let Spread {
        child,
        base,
        series,
        expected,
    } = spread("cc-dead", &dests, |i, base| format!("in.s{i}.x 1 {base}\n"));
    let live: Vec<&String> = (0..40)
        .filter(|&i| expected[i] == dests[0])
        .map(|i| &series[i])
        .collect();
    assert!(
        !live.is_empty() && live.len() < series.len(),
        "{expected:?}"
    );
    capture.wait_for("the live destination's share", |got| {
        live.iter().all(|s| got.contains_key(&((*s).clone(), base)))
    });
    // Once aggd has exited and the capture has read its connections to the end, what
    // is not there was never sent.
    stop(child);
    capture.wait_all_closed();
    let got = capture.snapshot();
    for (i, s) in series.iter().enumerate() {
        if expected[i] != dests[0] {
            assert!(
                !got.contains_key(&(s.clone(), base)),
                "{s} belongs to the dead destination and was re-routed"
            );
        }
    }
}

#[test]
fn migrate_writes_an_aggd_toml_that_sends_the_same_lines() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("cc-migrate");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\nn (60) = count in.*\n",
    )
    .unwrap();
    std::fs::write(dir.join("rewrite-rules.conf"), "[pre]\n^old\\. = in.\n").unwrap();
    let conf = carbon_conf(
        &dir,
        &capture.addr.to_string(),
        "DESTINATION_PROTOCOL = line\nFORWARD_ALL = True\nCARBON_METRIC_INTERVAL = 0\n\
         MAX_AGGREGATION_INTERVALS = 10\nLOG_LISTENER_CONN_SUCCESS = True\n",
    );
    let base = previous_bucket(60);
    let input = format!("in.a 2 {base}\nin.b 3 {base}\nold.c 4 {base}\nother.x 9 {base}\n");
    let lines_of = |from: usize| -> Vec<(String, i64, String)> {
        let r = capture.received.lock().unwrap();
        let mut v: Vec<_> = r.history[from..]
            .iter()
            .map(|(p, t, v, _)| (p.clone(), *t, v.to_string()))
            .collect();
        v.sort();
        v
    };

    // carbon.conf as it is.
    let (child, tcp) = run(&conf, &[]);
    send(tcp, &input);
    capture.wait_for("the carbon.conf run's aggregates", |got| {
        got.get(&("total".into(), base)) == Some(&9.0)
    });
    stop(child);
    capture.wait_all_closed();
    let first = lines_of(0);
    let seen = capture.received.lock().unwrap().history.len();
    // A fresh journal for the second run: the first one's would be rebuilt into it.
    std::fs::remove_dir_all(dir.join("storage")).unwrap();

    // The migrated aggd.toml: every key commented, and the same behaviour.
    let toml = aggd_testkit::aggd_ok(["migrate", "--carbon-conf", conf.to_str().unwrap()]);
    for key in ["DESTINATIONS", "FORWARD_ALL", "MAX_AGGREGATION_INTERVALS"] {
        assert!(
            toml.contains(&format!("#   {key} = ")),
            "{key} not commented:\n{toml}"
        );
    }
    assert!(
        toml.contains("#   LOG_LISTENER_CONN_SUCCESS = True  ignored: "),
        "{toml}"
    );
    let migrated = dir.join("aggd.toml");
    std::fs::write(&migrated, &toml).unwrap();
    let (child, addrs) = spawn_run(&["-c", migrated.to_str().unwrap()], 1);
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    send(tcp, &input);
    let deadline = Instant::now() + Duration::from_secs(20);
    while capture.received.lock().unwrap().history.len() < seen + first.len() {
        assert!(Instant::now() < deadline, "the migrated run sent less");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    capture.wait_all_closed();
    assert_eq!(lines_of(seen), first, "the same lines downstream");
    assert!(
        first.len() >= 6,
        "aggregates and forwarded datapoints: {first:?}"
    );
}
