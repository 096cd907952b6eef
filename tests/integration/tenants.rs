//! Isolation between tenants: the incident test (a tenant deleted mid-run while it keeps
//! sending), limits, and the admin API.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use aggd::reason::DropReason;
use aggd_testkit::edge::send_lines;
use aggd_testkit::*;

const TOKEN: &str = "admin-token-for-tests";

fn tenants_config(
    dir: &std::path::Path,
    registry: &str,
    rules: &str,
    dest: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("tenants.toml"), registry).unwrap();
    let cfg = write_config(dir, rules, "", dest, "pickle");
    append_config(
        &cfg,
        &format!(
            "[tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
    );
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_mid_run_costs_the_others_nothing() {
    let capture = Capture::start("pickle");
    let dir = tempdir("incident");
    let cfg = tenants_config(
        &dir,
        "[tenant.alpha]\n[tenant.beta]\n[tenant.gamma]\n",
        "<t>.all.sum (60) = sum <t>.*.*\n<t>.all.count (60) = count <t>.*.*\n",
        &capture.addr.to_string(),
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let admin = server.addr("admin/http").unwrap();
    let base = previous_bucket(60);
    let rounds = 40;
    let per_round = 250;
    // Three tenants send steadily, each on its own connection.
    let senders: Vec<_> = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|t| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(tcp).unwrap();
                for r in 0..rounds {
                    let mut batch = String::new();
                    for i in 0..per_round {
                        batch.push_str(&format!(
                            "{t}.h{}.m {} {}\n",
                            i % 10,
                            (r + i) % 5,
                            base + 1
                        ));
                    }
                    s.write_all(batch.as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        })
        .collect();
    // Mid-run, once gamma has had five rounds accepted, its account is deleted while it
    // keeps sending.
    let gamma = server.tenants().unwrap().counters("gamma");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gamma.accepted.load(std::sync::atomic::Ordering::Relaxed) < 5 * per_round as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "gamma's input never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        http(
            admin,
            "DELETE",
            "/api/tenants/gamma",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for s in senders {
        s.join().unwrap();
    }
    // The others lose nothing: exact aggregates.
    let want_sum: f64 = (0..rounds)
        .flat_map(|r| (0..per_round).map(move |i| ((r + i) % 5) as f64))
        .sum();
    let n = f64::from(rounds * per_round);
    capture.wait_for("alpha and beta aggregates", |got| {
        ["alpha", "beta"].iter().all(|t| {
            got.get(&(format!("{t}.all.count"), base)) == Some(&n)
                && got.get(&(format!("{t}.all.sum"), base)) == Some(&want_sum)
        })
    });
    // gamma's datapoints after the deletion are counted as tenant_deleted, nothing else
    // is lost, and what gamma got in before the deletion was aggregated.
    let stats = server.stats();
    let deleted = stats.drops(DropReason::TenantDeleted);
    assert!(deleted > 0, "gamma must be rejected after deletion");
    let t = server.tenants().unwrap();
    assert_eq!(
        t.counters("gamma").rejected(DropReason::TenantDeleted),
        deleted
    );
    assert_eq!(stats.total_drops(), deleted, "no other drop of any kind");
    capture.wait_for("gamma's accepted part", |got| {
        got.get(&("gamma.all.count".into(), base)) == Some(&(n - deleted as f64))
    });
    // The admin API reports it, and the change was written to the registry file.
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        http(
            admin,
            "GET",
            "/api/tenants/gamma",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["entry"]["state"], "deleted");
    assert_eq!(v["rejected"]["tenant_deleted"], deleted);
    let file = std::fs::read_to_string(dir.join("tenants.toml")).unwrap();
    assert!(file.contains("state = \"deleted\""), "{file}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_unknown_tenants_admin_auth_and_reload() {
    let capture = Capture::start("pickle");
    let dir = tempdir("limits");
    let cfg = tenants_config(
        &dir,
        "[tenant.small]\ndatapoints_per_second = 100\n[tenant.few]\nmax_series = 3\n",
        "<t>.count (60) = count <t>.*\n",
        &capture.addr.to_string(),
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let admin = server.addr("admin/http").unwrap();
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let mut b = String::new();
        for i in 0..1000 {
            b.push_str(&format!("small.x {i} {base}\n"));
        }
        for i in 0..10 {
            b.push_str(&format!("few.s{i} 1 {base}\nfew.s0 1 {base}\n"));
        }
        b.push_str(&format!("stranger.x 1 {base}\n"));
        s.write_all(b.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("few.count", |got| {
        got.contains_key(&("few.count".into(), base))
    });
    let stats = server.stats();
    let limited = stats.drops(DropReason::RateLimited);
    // One second's allowance of 100 (the lines may straddle two seconds: at most 200).
    assert!((800..=900).contains(&limited), "rate_limited {limited}");
    assert_eq!(
        stats.drops(DropReason::SeriesLimit),
        7,
        "s3..s9 are new series past 3"
    );
    assert_eq!(stats.drops(DropReason::TenantUnknown), 1);
    capture.wait_for("counts", |got| {
        got.get(&("few.count".into(), base)) == Some(&13.0)
            && got.get(&("small.count".into(), base)) == Some(&(1000.0 - limited as f64))
    });

    // The admin API wants its token.
    let (status, _, _) =
        tokio::task::spawn_blocking(move || http(admin, "GET", "/api/tenants", &[], b""))
            .await
            .unwrap();
    assert_eq!(status, 401);
    let (status, _, _) = tokio::task::spawn_blocking(move || {
        http(
            admin,
            "GET",
            "/api/tenants",
            &[("Authorization", "Bearer wrong-token")],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 401);

    // A reload swaps in the edited file; a broken file keeps the old registry.
    std::fs::write(
        dir.join("tenants.toml"),
        "[tenant.small]\nstate = \"blocked\"\n",
    )
    .unwrap();
    server.reload_tenants().unwrap();
    std::fs::write(dir.join("tenants.toml"), "[tenant.small\n").unwrap();
    let err = server.reload_tenants().unwrap_err().to_string();
    assert!(err.contains("tenants.toml"), "{err}");
    let t = server.tenants().unwrap();
    assert_eq!(
        t.admit("small", "small.x", 1),
        Err(DropReason::TenantBlocked)
    );
    assert_eq!(
        t.counters("small").accepted.load(Ordering::Relaxed),
        1000 - limited
    );
    server.shutdown().await;
}

/// aggd's binary with a journal, a tenant registry and `[admin]`, sending every aggregate
/// to a real carbon-cache and to a capture that keeps every write (replication 2 over
/// both), for the tests of what a re-read of the journal aggregates.
struct Refusing {
    carbon: aggd_testkit::carbon::CarbonCache,
    capture: Capture,
    dir: std::path::PathBuf,
    cfg: std::path::PathBuf,
}

impl Refusing {
    fn new(tag: &str, registry: &str, rules: &str) -> Refusing {
        let carbon = aggd_testkit::carbon::CarbonCache::start();
        let capture = Capture::start("pickle");
        let dir = tempdir(tag);
        std::fs::write(dir.join("tenants.toml"), registry).unwrap();
        let cfg = write_config(
            &dir,
            rules,
            "",
            &format!("127.0.0.1:{}", carbon.port),
            "pickle",
        );
        append_config(
            &cfg,
            &format!(
                "[[destination]]\naddress = \"{}\"\nprotocol = \"pickle\"\n\
                 [routing]\nmethod = \"all\"\n\
                 [journal]\ndir = \"journal\"\n\
                 [tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
                 [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
                capture.addr
            ),
        );
        Refusing {
            carbon,
            capture,
            dir,
            cfg,
        }
    }

    fn spawn(&self) -> (std::process::Child, SocketAddr, SocketAddr) {
        let (child, addrs) = spawn_run(&["-c", self.cfg.to_str().unwrap()], 4);
        let at = |k: &str| addrs.iter().find(|(n, _)| n == k).unwrap().1;
        (child, at("plaintext/tcp"), at("admin/http"))
    }

    /// Waits until carbon-cache's whisper files hold `want` at `ts` for each path.
    fn wait_whisper(&self, want: &[(&str, Option<f64>)], ts: i64) {
        let paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
        let values: Vec<Option<f64>> = want.iter().map(|(_, v)| *v).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.carbon.fetch(&paths, ts);
            if got == values {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "whisper holds {got:?}, want {values:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until `/metrics` counts `n` datapoints refused for `reason`.
fn wait_dropped(admin: SocketAddr, reason: &str, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sample = format!("aggd_dropped_total{{reason=\"{reason}\"}}");
    while metric(admin, &sample) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {reason} drops never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The incident of issue 21: a deleted tenant's refused datapoints must not come back
/// when the journal is read again, by the start-up rebuild after `kill -9` or by `aggd
/// replay`; only an explicit `--include-refused`, or `--lost` once the tenant is restored,
/// replays them.
#[test]
fn a_deleted_tenant_stays_refused_across_kill_9_and_replay() {
    let t = Refusing::new(
        "refused-deleted",
        "[tenant.evil]\nstate = \"deleted\"\n[tenant.good]\nstate = \"active\"\n",
        "all.<t>.sum (60) = sum <t>.*\n",
    );
    let ts = previous_bucket(60) + 7;
    let bucket = ts - ts.rem_euclid(60);
    let (mut child, tcp, admin) = t.spawn();
    send_lines(
        tcp,
        &format!("evil.a 100 {ts}\ngood.a 1 {ts}\nevil.b 100 {ts}\ngood.b 2 {ts}\n"),
    );
    wait_received(admin, 2.0);
    wait_dropped(admin, "tenant_deleted", 2.0);
    // The ledger is flushed every 200 ms: wait for the refusal's entry before the kill.
    let ledger = t.dir.join("journal/ledger.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains("tenant_deleted")) {
        assert!(std::time::Instant::now() < deadline, "never ledgered");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The restart rebuilds the open interval from the journal: good's datapoints only.
    let (child, tcp, admin) = t.spawn();
    send_lines(tcp, &format!("good.c 3 {ts}\n"));
    wait_received(admin, 1.0);
    sigterm(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success());
    // The capture kept every write aggd made (all acknowledged by the clean stop).
    let want = std::collections::BTreeMap::from([(("all.good.sum".to_string(), bucket), 6.0)]);
    assert_eq!(t.capture.snapshot(), want);
    t.wait_whisper(
        &[("all.good.sum", Some(6.0)), ("all.evil.sum", None)],
        bucket,
    );

    // aggd replay over the window: exactly what was accepted, and it says what it left out.
    let cfg = t.cfg.to_str().unwrap();
    let window = [
        "--from",
        &(bucket - 60).to_string(),
        "--to",
        &(bucket + 60).to_string(),
    ];
    let replay = |extra: &[&str]| {
        let c = Capture::start("pickle");
        let mut args = vec!["replay", "-c", cfg, "--dest"];
        let dest = c.addr.to_string();
        args.push(&dest);
        args.extend_from_slice(extra);
        let out = aggd_ok(&args);
        (c, out)
    };
    let mut args = window.to_vec();
    let (c, out) = replay(&args);
    assert!(out.contains("2 refused datapoints left out"), "{out}");
    c.wait_for("the replayed window", |got| *got == want);
    assert_eq!(c.snapshot(), want);
    // Asked explicitly, the refused datapoints are replayed too.
    args.extend_from_slice(&["--include-refused", "tenant_deleted"]);
    let (c, out) = replay(&args);
    assert!(out.contains("2 refused datapoints replayed"), "{out}");
    let mut with_evil = want.clone();
    with_evil.insert(("all.evil.sum".to_string(), bucket), 200.0);
    c.wait_for("the refused datapoints", |got| *got == with_evil);

    // --lost while the tenant is still deleted: its entries stay unreplayed.
    let (_, out) = replay(&["--lost"]);
    assert!(
        out.contains("tenant_deleted entries kept unreplayed"),
        "{out}"
    );
    // Restored after a mistaken delete, --lost replays its refused datapoints.
    std::fs::write(
        t.dir.join("tenants.toml"),
        "[tenant.evil]\nstate = \"active\"\n[tenant.good]\nstate = \"active\"\n",
    )
    .unwrap();
    let (c, out) = replay(&["--lost"]);
    assert!(out.contains("2 refused datapoints replayed"), "{out}");
    c.wait_for("the restored tenant's interval", |got| *got == with_evil);
    let (_, out) = replay(&["--lost"]);
    assert_eq!(out.trim(), "nothing to replay");
}

/// Rate-limit decisions are made once, at receive time: after `kill -9`, the rebuild
/// aggregates the datapoints the limit let through and no others (the limiter's state is
/// gone, and a rebuild that applied it again, or not at all, would differ).
#[test]
fn a_rate_limited_tenant_rebuilds_exactly_what_was_accepted() {
    let t = Refusing::new(
        "refused-rate",
        "[tenant.slow]\ndatapoints_per_second = 5\n",
        "all.<t>.count (60) = count <t>.*\nall.<t>.sum (60) = sum <t>.*\n",
    );
    let ts = previous_bucket(60) + 3;
    let bucket = ts - ts.rem_euclid(60);
    let (mut child, tcp, admin) = t.spawn();
    let lines: String = (0..40).map(|i| format!("slow.m{i} {i} {ts}\n")).collect();
    send_lines(tcp, &lines);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (accepted, limited) = loop {
        let a = metric(admin, "aggd_received_total");
        let l = metric(admin, "aggd_dropped_total{reason=\"rate_limited\"}");
        if a + l >= 40.0 {
            break (a, l);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "40 datapoints never decided"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(accepted >= 5.0 && limited >= 1.0, "{accepted} {limited}");
    // Which datapoints got through: the capture sees the live emission.
    t.capture.wait_for("the live aggregate", |got| {
        got.get(&("all.slow.count".to_string(), bucket)) == Some(&accepted)
    });
    let live = t.capture.snapshot();
    child.kill().unwrap();
    child.wait().unwrap();
    let before = t.capture.received.lock().unwrap().history.len();

    let (child, _, _) = t.spawn();
    sigterm(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success());
    // The rebuild re-sent the interval (no clean mark after kill -9) with the same values.
    let resent: Vec<(String, f64)> = t.capture.received.lock().unwrap().history[before..]
        .iter()
        .map(|(p, _, v, _)| (p.clone(), *v))
        .collect();
    let mut want: Vec<(String, f64)> = live.iter().map(|((p, _), v)| (p.clone(), *v)).collect();
    let mut got = resent.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "the rebuild's emission");
    assert_eq!(t.capture.snapshot(), live);
    let sum = live[&("all.slow.sum".to_string(), bucket)];
    t.wait_whisper(
        &[
            ("all.slow.count", Some(accepted)),
            ("all.slow.sum", Some(sum)),
        ],
        bucket,
    );
}
