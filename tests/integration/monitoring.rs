//! The operator's kit in `monitoring/`: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`, Debian's `prometheus` package), and
//! every metric the rules and the Grafana dashboard use is exported by a running aggd,
//! standalone and in cluster mode.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use aggd_testkit::nats::Nats;
use aggd_testkit::*;

const PROMTOOL: &str = "/usr/bin/promtool";

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn promtool(args: &[&str]) -> String {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run tests/install-deps.sh (Debian package prometheus)"
    );
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(monitoring())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerting_rules_pass_promtool_and_every_alert_is_tested() {
    let checked = promtool(&["check", "rules", "aggd-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "aggd-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has at least one test that expects it to fire.
    let rules = std::fs::read_to_string(monitoring().join("aggd-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring().join("aggd-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in alerts {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(a) && t.contains("exp_labels"));
        assert!(fires, "no test expects {a} to fire");
    }
}

/// Metric families (without `_total`) named in the rules and the dashboard.
fn used_families() -> BTreeSet<String> {
    let re = regex::Regex::new(r"\baggd_[a-z_]+").unwrap();
    let mut out = BTreeSet::new();
    for f in ["aggd-alerts.yml", "aggd-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring().join(f)).unwrap();
        for m in re.find_iter(&text) {
            let name = m.as_str();
            out.insert(name.strip_suffix("_total").unwrap_or(name).to_string());
        }
    }
    out
}

/// The metric families a running aggd's `/metrics` declares (`# TYPE` lines).
async fn exported(aggd: &aggd::server::Server) -> BTreeSet<String> {
    let admin = aggd.addr("admin/http").unwrap();
    let body = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics", &[], b""))
        .await
        .unwrap()
        .2;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let used = used_families();
    assert!(used.len() >= 30, "{used:?}");
    let (cluster, standalone): (Vec<&String>, Vec<&String>) =
        used.iter().partition(|n| n.starts_with("aggd_cluster_"));

    let running = TestAggd::new("monitoring", "a (60) = sum b.*\n")
        .toml(
            "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [admin]\naddress = \"127.0.0.1:0\"\n",
        )
        .start()
        .await;
    let have = exported(&running.aggd).await;
    running.aggd.shutdown().await;
    for n in standalone {
        assert!(have.contains(n), "{n} is not exported standalone: {have:?}");
    }

    let nats = tokio::task::spawn_blocking(Nats::one).await.unwrap();
    let running = TestAggd::new("monitoring-cluster", "a (5) = sum b.*\n")
        .toml(&format!(
            "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\
             [cluster]\nservers = {}\nname = \"m\"\nnode = \"a\"\nshards = 4\nreplicas = 1\n\
             lease_ttl = \"2s\"\n",
            nats.toml_servers()
        ))
        .start()
        .await;
    let have = exported(&running.aggd).await;
    running.aggd.shutdown().await;
    for n in cluster {
        assert!(
            have.contains(n),
            "{n} is not exported in cluster mode: {have:?}"
        );
    }
    drop(nats);
}
