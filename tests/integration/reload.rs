//! Reload edge cases: settings that need a restart are reported and left as they are,
//! `[tenants]` added or removed, and a broken tenant registry on SIGHUP (the real binary
//! keeps its registry, counts `reload_failed`, and applies the next good one).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use aggd::config::Config;
use aggd::reason::DropReason;
use aggd_testkit::*;

fn edit(cfg: &std::path::Path, from: &str, to: &str) -> Config {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(cfg, text.replacen(from, to, 1)).unwrap();
    Config::load(cfg).unwrap()
}

fn send(addr: SocketAddr, lines: &str) {
    TcpStream::connect(addr)
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_reported_and_the_rules_still_apply() {
    let Running {
        capture,
        dir,
        config,
        aggd: mut server,
    } = TestAggd::new("reload-keys", "a.sum (60) = sum a.*\n")
        .start()
        .await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    std::fs::write(dir.join("aggregation-rules.conf"), "b.sum (60) = sum b.*\n").unwrap();
    edit(&config, "count = 2", "count = 3");
    let new = edit(
        &config,
        "[[destination]]",
        "[[destination]]\naddress = \"127.0.0.2:9\"\n[[destination]]",
    );
    let restart = server.reload(new).await.unwrap();
    for key in ["[workers]", "[[destination]]"] {
        let said = format!("{key} changed: restart to apply");
        assert!(restart.contains(&said), "{said:?} not in {restart:?}");
    }
    assert_eq!(restart.len(), 2, "{restart:?}");
    // The new rules apply at once; the destinations are the ones it started with.
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || send(tcp, &format!("b.x 2 {base}\na.x 5 {base}\n")))
        .await
        .unwrap();
    capture.wait_for("b.sum from the reloaded rules", |got| {
        got.get(&("b.sum".into(), base)) == Some(&2.0)
    });
    assert_eq!(capture.value("a.sum", base), None, "the old rule is gone");
    assert_eq!(server.destinations().counters().count(), 1);

    // [tenants] added by a reload: reported, and no gate appears until a restart.
    std::fs::write(
        dir.join("tenants.toml"),
        "[tenant.b]\nstate = \"blocked\"\n",
    )
    .unwrap();
    let with_tenants = edit(
        &config,
        "[workers]",
        "[tenants]\nregistry = \"tenants.toml\"\n[workers]",
    );
    let restart = server.reload(with_tenants).await.unwrap();
    assert!(
        restart.iter().any(|r| r.starts_with("[tenants] changed")),
        "{restart:?}"
    );
    assert!(server.tenants().is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_tenants_by_reload_is_reported_and_the_gate_stays() {
    let Running {
        config,
        aggd: mut server,
        ..
    } = TestAggd::new("reload-untenant", "a.sum (60) = sum a.*\n")
        .registry("[tenant.a]\nstate = \"blocked\"\n")
        .toml("[tenants]\nregistry = \"tenants.toml\"\n")
        .start()
        .await;
    let without = edit(&config, "[tenants]\nregistry = \"tenants.toml\"\n", "");
    let restart = server.reload(without).await.unwrap();
    assert!(
        restart.iter().any(|r| r.starts_with("[tenants] changed")),
        "{restart:?}"
    );
    let gate = server.tenants().expect("the gate stays until a restart");
    assert_eq!(gate.admit("a", "a.x", 1), Err(DropReason::TenantBlocked));
    server.shutdown().await;
}

#[test]
fn a_broken_registry_on_sighup_keeps_the_running_one() {
    let running = TestAggd::new("reload-registry", "<t>.count (60) = count <t>.*\n")
        .registry("[tenant.acme]\n[tenant.beta]\n")
        .toml(
            "[tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"reload-test-token\"\n",
        )
        .spawn(4);
    let Running {
        aggd: (mut child, addrs),
        dir,
        ..
    } = running;
    let at = |kind: &str| addrs.iter().find(|(k, _)| k == kind).unwrap().1;
    let (tcp, admin) = (at("plaintext/tcp"), at("admin/http"));
    let sighup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let wait_metric = |sample: &str, want: f64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(admin, sample) != want {
            assert!(Instant::now() < deadline, "{sample} never reached {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let registry = dir.join("tenants.toml");
    std::fs::write(&registry, "[tenant.acme\nstate = \"blocked\"\n").unwrap();
    sighup();
    wait_metric("aggd_events_total{event=\"reload_failed\"}", 1.0);
    // The running registry still holds: both tenants pass.
    let base = previous_bucket(60);
    send(tcp, &format!("acme.x 1 {base}\nbeta.x 1 {base}\n"));
    wait_received(admin, 2.0);
    assert_eq!(
        metric(admin, "aggd_dropped_total{reason=\"tenant_blocked\"}"),
        0.0
    );
    // The next good registry applies.
    std::fs::write(
        &registry,
        "[tenant.acme]\nstate = \"blocked\"\n[tenant.beta]\n",
    )
    .unwrap();
    sighup();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        send(tcp, &format!("acme.x 1 {base}\n"));
        if metric(admin, "aggd_dropped_total{reason=\"tenant_blocked\"}") > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed registry was never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(admin, "aggd_events_total{event=\"reload_failed\"}"),
        1.0
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
