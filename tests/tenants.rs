//! Isolation between tenants: the incident test (a tenant deleted mid-run while it keeps
//! sending), limits, and the admin API.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aggd::reason::DropReason;
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
