//! The Prometheus remote-write destination end to end: the real aggd binary, carbon
//! plaintext and CPython pickle in (plain and tagged names), and real stores as receivers:
//! Debian's VictoriaMetrics (read back with `/api/v1/export`) and Debian's Prometheus
//! (remote-write receiver on, read back with `/api/v1/query`). Requires
//! `tests/install-deps.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aggd_testkit::edge::{addr_of, send_lines, wait_exit};
use aggd_testkit::promstore::{Series, Store};
use aggd_testkit::*;

const TOKEN: &str = "remote-write-test";

/// Rules' interval in seconds: short, so a test can send a whole interval's input before
/// it ends and see one emission (an interval already over when its input arrives in two
/// sends is emitted, then re-emitted, which a store keeps as two samples).
const F: i64 = 10;

/// The start of the current `F`-second interval once at least 4 s of it are left.
fn open_bucket() -> i64 {
    loop {
        let n = now();
        let start = n as i64 - (n as i64).rem_euclid(F);
        if (start + F) as f64 - n >= 4.0 {
            return start;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The aggd child, killed if the test fails before it stops it.
struct Aggd(std::process::Child);

impl Drop for Aggd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary on `cfg`: the guard and the listeners' addresses.
fn start(cfg: &Path) -> (Aggd, Vec<(String, std::net::SocketAddr)>) {
    let (child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    (Aggd(child), addrs)
}

/// SIGTERM, then a clean exit within 20 s.
fn stop(mut a: Aggd) {
    sigterm(&a.0);
    assert!(wait_exit(&mut a.0, Duration::from_secs(20)).success());
}

/// Writes `aggd.toml`: plaintext and pickle listeners, an admin API, a journal, `rules`,
/// `aggregation` keys, and one remote-write destination to `url` with `dest` keys.
/// [`MAPPING`] is written next to it as `mapping.conf`, for `dest` to name.
fn config(dir: &Path, rules: &str, aggregation: &str, url: &str, dest: &str) -> PathBuf {
    std::fs::write(dir.join("aggregation-rules.conf"), rules).unwrap();
    std::fs::write(dir.join("mapping.conf"), MAPPING).unwrap();
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [[listen]]\nprotocol = \"pickle\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"aggregation-rules.conf\"\nmax_intervals = 40\n{aggregation}\n\
             [workers]\ncount = 2\nflush_tick_ms = 50\n\
             [journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [service]\ndrain_timeout = \"2s\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [[destination]]\nprotocol = \"prometheus_remote_write\"\nurl = \"{url}\"\n{dest}\n"
        ),
    )
    .unwrap();
    cfg
}

/// [`config`] with [`RULES`], the mapping file, and `dest` keys.
fn vm_config(dir: &Path, url: &str, dest: &str) -> PathBuf {
    config(
        dir,
        RULES,
        "",
        url,
        &format!("mapping_file = \"mapping.conf\"\n{dest}"),
    )
}

/// The loss ledger's entries.
fn ledger(dir: &Path) -> Vec<aggd::ledger::Entry> {
    aggd::ledger::read(&dir.join("journal/ledger.jsonl"))
        .unwrap()
        .0
}

/// Asserts the loss ledger has an entry for `reason`.
fn assert_ledgered(dir: &Path, reason: &str) {
    let entries = ledger(dir);
    assert!(entries.iter().any(|e| e.reason == reason), "{entries:?}");
}

/// Waits until `store` holds exactly the aggregates of `i` at `ts` (mapping file on).
fn wait_aggregates(store: &Store, i: &Input, ts: i64) {
    wait_series(
        store,
        "cpu_total|web_all_requests|servers_load",
        &aggregates(i, ts),
        Duration::from_secs(30),
    );
}

/// Polls `store` until the series named by regex `names` are exactly `want` (labels and
/// samples), for up to `within`.
fn wait_series(store: &Store, names: &str, want: &[Series], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = store.series(names, Duration::from_secs(7200));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store holds\n{got:#?}\nwant\n{want:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits (up to 10 s) until `/metrics` sample `sample` is `want` (a counter aggd bumps once
/// the store answered, which can be after the store shows the data).
fn wait_metric(admin: std::net::SocketAddr, sample: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(admin, sample);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sample}: {got}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 20 s) until `/metrics` sample `sample` is at least `least`.
fn wait_at_least(admin: std::net::SocketAddr, sample: &str, least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, sample) < least {
        assert!(Instant::now() < deadline, "{sample} stayed under {least}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `i`: its lines over plaintext, its pickle points with CPython's pickle.
fn send(addrs: &[(String, std::net::SocketAddr)], i: &Input) {
    send_lines(addr_of(addrs, "plaintext/tcp"), &i.lines);
    python_pickle_send(addr_of(addrs, "pickle/tcp"), 2, &i.pickle);
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    Series {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        samples: samples.to_vec(),
    }
}

fn sorted(mut s: Vec<Series>) -> Vec<Series> {
    s.sort_by(|a, b| a.labels.cmp(&b.labels));
    s
}

/// Tagged `cpu.usage` input over two dcs (tags shuffled, dotted values), plain
/// `web.*.requests` and `servers.<dc>.<host>.load`: the lines to send and the expected
/// aggregates per output, all at `ts`.
struct Input {
    lines: String,
    pickle: Vec<(String, f64, f64)>,
    cpu: BTreeMap<String, f64>,
    web: f64,
    load: (f64, usize),
}

fn input(ts: i64, salt: usize) -> Input {
    let mut i = Input {
        lines: String::new(),
        pickle: Vec::new(),
        cpu: BTreeMap::new(),
        web: 0.0,
        load: (0.0, 0),
    };
    for (d, dc) in ["eu.west", "us"].iter().enumerate() {
        for h in 0..5 {
            let v = (salt * 1000 + d * 100 + h) as f64 + 0.5;
            let line = if h % 2 == 0 {
                format!("cpu.usage;dc={dc};host=h{h}.rack1")
            } else {
                format!("cpu.usage;host=h{h}.rack1;dc={dc}")
            };
            if h == 4 {
                i.pickle.push((line, ts as f64 + 1.0, v));
            } else {
                i.lines.push_str(&format!("{line} {v} {}\n", ts + 1));
            }
            *i.cpu.entry(dc.to_string()).or_default() += v;
        }
    }
    for h in 0..4 {
        let v = (salt + h + 1) as f64;
        i.lines
            .push_str(&format!("web.h{h}.requests {v} {}\n", ts + 2));
        i.web += v;
        let load = 0.25 * (h + 1) as f64;
        i.lines
            .push_str(&format!("servers.eu.h{h}.load {load} {}\n", ts + 3));
        i.load.0 += load;
        i.load.1 += 1;
    }
    i
}

const RULES: &str = "cpu.total;dc=<dc> (10) = sum cpu.usage;dc=<dc>;host=*\n\
                     web.all.requests (10) = sum web.*.requests\n\
                     servers.<dc>.all.load (10) = avg servers.<dc>.*.load\n";

/// The aggregates of [`input`] as the store should hold them (mapping file below).
fn aggregates(i: &Input, ts: i64) -> Vec<Series> {
    let ms = ts * 1000;
    let mut want: Vec<Series> = i
        .cpu
        .iter()
        .map(|(dc, v)| series(&[("__name__", "cpu_total"), ("dc", dc)], &[(ms, *v)]))
        .collect();
    want.push(series(&[("__name__", "web_all_requests")], &[(ms, i.web)]));
    want.push(series(
        &[
            ("__name__", "servers_load"),
            ("dc", "eu"),
            ("source", "aggd"),
        ],
        &[(ms, i.load.0 / i.load.1 as f64)],
    ));
    sorted(want)
}

const MAPPING: &str = "# servers.<dc>.all.<metric> → servers_<metric>{dc=…, source=\"aggd\"}\n\
                       servers.<dc>.all.<metric> = servers_<metric> source=aggd\n";

#[test]
fn aggregates_and_forwards_reach_victoria_metrics_with_names_and_labels() {
    let vm = Store::victoria_metrics();
    let dir = tempdir("rw-vm");
    let cfg = config(
        &dir,
        RULES,
        "forward_all = true",
        &vm.write_url(),
        "batch_datapoints = 7\nmapping_file = \"mapping.conf\"\n\
         headers = { \"X-Scope-OrgID\" = \"team-a\" }\n",
    );
    let (aggd, addrs) = start(&cfg);
    let base = open_bucket();
    let i = input(base, 0);
    send(&addrs, &i);

    // Aggregates: exact values at the bucket start in ms, mapped names and labels.
    wait_aggregates(&vm, &i, base);
    // Forwarded raw points: graphite_exporter's default names, tags as labels (dotted
    // values kept), their own timestamps.
    let mut raw = Vec::new();
    for line in i.lines.lines() {
        let mut f = line.split(' ');
        let (path, v, t) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        raw.push((
            path.to_string(),
            t.parse::<f64>().unwrap(),
            v.parse().unwrap(),
        ));
    }
    raw.extend(i.pickle.iter().cloned());
    let mut want_raw: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
    for (path, t, v) in &raw {
        let mut parts = path.split(';');
        let mut labels = BTreeMap::new();
        labels.insert(
            "__name__".to_string(),
            parts.next().unwrap().replace('.', "_"),
        );
        for tag in parts {
            let (k, val) = tag.split_once('=').unwrap();
            labels.insert(k.to_string(), val.to_string());
        }
        want_raw
            .entry(labels)
            .or_default()
            .push(((t * 1000.0) as i64, *v));
    }
    let want_raw: Vec<Series> = want_raw
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect();
    assert_eq!(want_raw.len(), 10 + 4 + 4);
    wait_series(
        &vm,
        "cpu_usage|web_h._requests|servers_eu_h._load",
        &want_raw,
        Duration::from_secs(30),
    );

    // A late datapoint re-emits its interval with the same timestamp: VictoriaMetrics
    // keeps both samples (docs/remote-write.md).
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("web.h9.requests 100 {}\n", base + 5),
    );
    let ms = base * 1000;
    wait_series(
        &vm,
        "web_all_requests",
        &[series(
            &[("__name__", "web_all_requests")],
            &[(ms, i.web), (ms, i.web + 100.0)],
        )],
        Duration::from_secs(30),
    );
    let admin = addr_of(&addrs, "admin/http");
    let requests = metric(admin, "aggd_destination_batches_total{destination=\"http");
    // 4 aggregates + 18 raw points in at most 7 per request, + the late point and its
    // re-emitted aggregate.
    assert!(requests >= 4.0, "{requests} requests");
    wait_metric(
        admin,
        "aggd_destination_sent_total{destination=\"http",
        24.0,
    );
    assert_eq!(
        metric(admin, "aggd_destination_rejected_total{destination=\"http"),
        0.0
    );
    stop(aggd);
}

#[test]
fn victoria_metrics_down_for_10s_is_retried_and_nothing_is_lost() {
    let mut vm = Store::victoria_metrics();
    let dir = tempdir("rw-down");
    let cfg = vm_config(&dir, &vm.write_url(), "timeout = \"2s\"\n");
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    vm.stop();
    let base = open_bucket();
    let i = input(base, 1);
    send(&addrs, &i);
    // The aggregates are emitted into a dead store and retried.
    wait_at_least(
        admin,
        "aggd_destination_connection_failures_total{destination=\"http",
        2.0,
    );
    // It keeps retrying, sending nothing, while the store is down.
    wait_at_least(
        admin,
        "aggd_destination_connection_failures_total{destination=\"http",
        4.0,
    );
    assert_eq!(
        metric(admin, "aggd_destination_sent_total{destination=\"http"),
        0.0
    );
    vm.start();
    wait_aggregates(&vm, &i, base);
    wait_metric(admin, "aggd_destination_sent_total{destination=\"http", 4.0);
    assert!(
        metric(
            admin,
            "aggd_events_total{event=\"destination_request_failed\"}"
        ) >= 2.0,
        "retries are counted as events"
    );
    stop(aggd);
    // Nothing was ledgered: nothing was lost.
    let entries = ledger(&dir);
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_store_that_stops_answering_and_dies_loses_nothing() {
    let mut vm = Store::victoria_metrics();
    let dir = tempdir("rw-stall");
    let cfg = vm_config(&dir, &vm.write_url(), "timeout = \"1s\"\n");
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    // The store stops answering: connections are accepted by its kernel, and requests
    // time out.
    vm.signal("-STOP");
    let base = open_bucket();
    let i = input(base, 6);
    send(&addrs, &i);
    wait_at_least(
        admin,
        "aggd_destination_connection_failures_total{destination=\"http",
        2.0,
    );
    assert_eq!(
        metric(admin, "aggd_destination_sent_total{destination=\"http"),
        0.0
    );
    // Then it dies, and comes back on the same port and data.
    vm.kill();
    vm.start();
    wait_aggregates(&vm, &i, base);
    wait_metric(admin, "aggd_destination_sent_total{destination=\"http", 4.0);
    stop(aggd);
    let entries = ledger(&dir);
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn prometheus_400_for_a_changed_sample_is_counted_and_ledgered() {
    let prom = Store::prometheus();
    let dir = tempdir("rw-prom");
    let cfg = config(&dir, RULES, "", &prom.write_url(), "");
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    let base = open_bucket();
    let i = input(base, 2);
    send(&addrs, &i);
    // Prometheus as a second receiver: the same names and labels (no mapping file here).
    let ms = base * 1000;
    let mut want: Vec<Series> = i
        .cpu
        .iter()
        .map(|(dc, v)| series(&[("__name__", "cpu_total"), ("dc", dc)], &[(ms, *v)]))
        .collect();
    want.push(series(&[("__name__", "web_all_requests")], &[(ms, i.web)]));
    want.push(series(
        &[("__name__", "servers_eu_all_load")],
        &[(ms, i.load.0 / i.load.1 as f64)],
    ));
    wait_series(
        &prom,
        "cpu_total|web_all_requests|servers_eu_all_load",
        &sorted(want),
        Duration::from_secs(30),
    );

    // A late datapoint changes web.all.requests at the same timestamp: Prometheus refuses
    // the re-emission with 400 (duplicate sample for timestamp). aggd drops it, counts it
    // and ledgers its window, and keeps delivering.
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("web.h9.requests 100 {}\n", base + 5),
    );
    wait_at_least(
        admin,
        "aggd_destination_rejected_total{destination=\"http",
        1.0,
    );
    assert_eq!(
        metric(admin, "aggd_destination_rejected_total{destination=\"http"),
        1.0
    );
    assert_eq!(
        metric(admin, "aggd_dropped_total{reason=\"destination_rejected\"}"),
        1.0
    );
    // Prometheus keeps the first value.
    let web = prom.series("web_all_requests", Duration::from_secs(7200));
    assert_eq!(web[0].samples, [(ms, i.web)]);
    // aggd keeps delivering: a new output in the same interval reaches Prometheus.
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("servers.us.h1.load 2.5 {}\n", base + 5),
    );
    wait_series(
        &prom,
        "servers_us_all_load",
        &[series(&[("__name__", "servers_us_all_load")], &[(ms, 2.5)])],
        Duration::from_secs(30),
    );
    stop(aggd);
    let entries = ledger(&dir);
    let rejected: Vec<_> = entries
        .iter()
        .filter(|e| e.reason == "destination_rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{entries:?}");
    assert_eq!((rejected[0].from, rejected[0].count), (base as f64, 1));
}

/// Sleeps until the wall clock reads `t` (Unix s).
fn sleep_until(t: f64) {
    let left = t - now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

#[test]
fn prometheus_gets_one_final_sample_with_emit_delay_and_late_changes_are_ledgered() {
    let prom = Store::prometheus();
    let dir = tempdir("rw-prom-delay");
    let cfg = config(
        &dir,
        RULES,
        "",
        &prom.write_url(),
        "emit_delay = \"4s\"\nlate_changes = \"ledger\"",
    );
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    let rejected = "aggd_destination_rejected_total{destination=\"http";
    let held = "aggd_destination_held{destination=\"http";
    let base = open_bucket();
    let ms = base * 1000;
    let i = input(base, 3);
    send(&addrs, &i);
    // The interval closed a second ago and was emitted: held, not sent.
    sleep_until((base + F) as f64 + 1.0);
    wait_at_least(admin, held, 1.0);
    assert!(
        prom.series("web_all_requests", Duration::from_secs(7200))
            .is_empty()
    );
    // A late datapoint within the delay replaces the held value.
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("web.h9.requests 100 {}\n", base + 5),
    );
    wait_series(
        &prom,
        "web_all_requests",
        &[series(
            &[("__name__", "web_all_requests")],
            &[(ms, i.web + 100.0)],
        )],
        Duration::from_secs(30),
    );
    wait_metric(admin, held, 0.0);
    // A datapoint after the value went out: kept back, counted and ledgered, not sent
    // into a 400.
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("web.h9.requests 7 {}\n", base + 6),
    );
    wait_metric(
        admin,
        "aggd_destination_late_changes_total{destination=\"http",
        1.0,
    );
    assert_eq!(
        metric(admin, "aggd_dropped_total{reason=\"late_change\"}"),
        1.0
    );
    // A new interval goes through the same hold, after which nothing was ever refused.
    let next = open_bucket();
    send_lines(
        addr_of(&addrs, "plaintext/tcp"),
        &format!("web.h1.requests 5 {}\n", next + 1),
    );
    wait_series(
        &prom,
        "web_all_requests",
        &[series(
            &[("__name__", "web_all_requests")],
            &[(ms, i.web + 100.0), (next * 1000, 5.0)],
        )],
        Duration::from_secs(30),
    );
    assert_eq!(metric(admin, rejected), 0.0);
    stop(aggd);
    let entries = ledger(&dir);
    let late: Vec<_> = entries
        .iter()
        .filter(|e| e.reason == "late_change")
        .collect();
    assert_eq!(late.len(), 1, "{entries:?}");
    assert_eq!(
        (late[0].from, late[0].to, late[0].count),
        (base as f64, base as f64, 1)
    );
    assert!(
        !entries.iter().any(|e| e.reason == "destination_rejected"),
        "{entries:?}"
    );
}

#[test]
fn replay_lost_repairs_an_outage_into_victoria_metrics() {
    let mut vm = Store::victoria_metrics();
    let dir = tempdir("rw-replay");
    let cfg = vm_config(&dir, &vm.write_url(), "timeout = \"1s\"\n");
    // Delivered while the store is up.
    let (aggd, addrs) = start(&cfg);
    let before = open_bucket();
    let first = input(before, 3);
    send(&addrs, &first);
    let names = "cpu_total|web_all_requests|servers_load";
    wait_series(
        &vm,
        names,
        &aggregates(&first, before),
        Duration::from_secs(30),
    );

    // The store dies; aggd emits into it, retries, and is stopped before it comes back:
    // what it could not deliver is ledgered as destination_down.
    vm.stop();
    let base = loop {
        match open_bucket() {
            b if b > before => break b,
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    let lost = input(base, 4);
    send(&addrs, &lost);
    let admin = addr_of(&addrs, "admin/http");
    wait_at_least(
        admin,
        "aggd_destination_connection_failures_total{destination=\"http",
        1.0,
    );
    stop(aggd);
    assert_ledgered(&dir, "destination_down");

    vm.start();
    let out = aggd_ok(["replay", "-c", cfg.to_str().unwrap(), "--lost"]);
    let (records, _, intervals) = aggd_testkit::replay_counts(&out);
    assert!(records > 0 && intervals > 0, "{out}");
    let mut want = aggregates(&first, before);
    want.extend(aggregates(&lost, base));
    // One series per name and labels, with both intervals.
    let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
    for s in want {
        merged.entry(s.labels).or_default().extend(s.samples);
    }
    let want: Vec<Series> = merged
        .into_iter()
        .map(|(labels, mut samples)| {
            samples.sort_by_key(|p| p.0);
            Series { labels, samples }
        })
        .collect();
    wait_series(&vm, names, &want, Duration::from_secs(30));
    // The ledger is marked: a second replay has nothing to do.
    let again = aggd_ok(["replay", "-c", cfg.to_str().unwrap(), "--lost"]);
    assert!(again.contains("nothing to replay"), "{again}");
}

#[test]
fn a_full_queue_is_ledgered_and_replay_lost_repairs_it() {
    // Deduplication on, so the aggregates both the live sender and replay deliver (same
    // values) read back once.
    let mut vm = Store::victoria_metrics();
    vm.flags = vec!["-dedup.minScrapeInterval=1ms".into()];
    vm.stop();
    let dir = tempdir("rw-full");
    let cfg = vm_config(
        &dir,
        &vm.write_url(),
        "timeout = \"1s\"\nqueue_datapoints = 1\n",
    );
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    let base = open_bucket();
    let i = input(base, 7);
    send(&addrs, &i);
    // The store is down: the sender holds what it took, and the queue of one datapoint
    // refuses the rest.
    wait_at_least(
        admin,
        "aggd_destination_full_queue_drops_total{destination=\"http",
        1.0,
    );
    stop(aggd);
    assert_ledgered(&dir, "destination_full");
    vm.start();
    aggd_ok(["replay", "-c", cfg.to_str().unwrap(), "--lost"]);
    wait_aggregates(&vm, &i, base);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made by openssl in `dir`:
/// (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is required: run tests/install-deps.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=aggd test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn https_with_a_private_ca_and_basic_auth_reaches_victoria_metrics() {
    let dir = tempdir("rw-tls");
    let (ca, cert, key) = certificates(&dir);
    let mut vm = Store::victoria_metrics_secure(&cert, &key, "aggd", "s3cret");
    std::fs::write(dir.join("password"), "s3cret\n").unwrap();
    let cfg = vm_config(
        &dir,
        &vm.write_url_tls(),
        &format!(
            "tls_ca = \"{}\"\nbasic_auth_username = \"aggd\"\n\
             basic_auth_password_file = \"password\"\n",
            ca.display()
        ),
    );
    let (aggd, addrs) = start(&cfg);
    let admin = addr_of(&addrs, "admin/http");
    let base = open_bucket();
    let i = input(base, 5);
    send(&addrs, &i);
    wait_metric(
        admin,
        "aggd_destination_sent_total{destination=\"https",
        4.0,
    );
    assert_eq!(
        metric(admin, "aggd_destination_rejected_total{destination=\"https"),
        0.0
    );
    stop(aggd);
    // Read back over plain HTTP: the same store and data, restarted without TLS and auth.
    vm.flags.clear();
    vm.stop();
    vm.start();
    wait_aggregates(&vm, &i, base);
}
