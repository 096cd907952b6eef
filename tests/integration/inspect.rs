//! The live-state API (`GET /api/series`) and `aggd inspect` against a running aggd,
//! standalone and in cluster mode: what each output series holds, bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aggd_testkit::nats::Nats;
use aggd_testkit::*;

const TOKEN: &str = "inspect-token-for-tests";

/// `GET path` on the admin API with the token (or none): (status, JSON body).
async fn get(admin: SocketAddr, path: String, token: bool) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {TOKEN}");
        let headers: Vec<(&str, &str)> = if token {
            vec![("Authorization", auth.as_str())]
        } else {
            vec![]
        };
        let (status, _, body) = http(admin, "GET", &path, &headers, b"");
        (status, serde_json::from_slice(&body).unwrap_or_default())
    })
    .await
    .unwrap()
}

/// Polls `/api/series?match=…` until `done` holds for its answer (30 s at most).
async fn wait_series(
    admin: SocketAddr,
    query: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = get(admin, format!("/api/series?{query}"), true).await;
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_state_of_matching_series_bounded_and_behind_the_token() {
    let port = free_port();
    let running = TestAggd::new("inspect", "total (60) = sum in.*\nn (60) = count in.*\n")
        .toml(&format!(
            "[admin]\naddress = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n"
        ))
        .start()
        .await;
    let (tcp, admin) = (
        running.aggd.addr("plaintext/tcp").unwrap(),
        running.aggd.addr("admin/http").unwrap(),
    );
    // A closed interval (emitted at the next flush tick).
    let closed = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        send_lines_to(tcp, &format!("in.a 2 {closed}\nin.b 3 {closed}\n"));
    })
    .await
    .unwrap();
    let v = wait_series(admin, "match=%5Etotal%24", |v| {
        v["series"][0]["last_emission"]["interval"] == closed
    })
    .await;
    let s = &v["series"][0];
    assert_eq!(s["name"], "total");
    assert_eq!(s["method"], "sum");
    assert_eq!(s["frequency"], 60);
    assert_eq!(s["rule"]["line"], 1);
    assert_eq!(s["rule"]["text"], "total (60) = sum in.*");
    let interval = s["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["start"] == closed)
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(interval["value"], 5.0);
    assert_eq!(interval["datapoints"], 2);
    assert_eq!(interval["emitted"], true);
    assert_eq!(v["truncated"], false);
    assert!(s.get("shard").is_none(), "standalone: no shard");

    // Bounded: two series match, one is shown.
    let (status, v) = get(admin, "/api/series?match=.&limit=1".into(), true).await;
    assert_eq!(status, 200);
    assert_eq!(v["series"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["truncated"], true);
    // The token, and a bad regex.
    let (status, _) = get(admin, "/api/series?match=.".into(), false).await;
    assert_eq!(status, 401);
    let (status, v) = get(admin, "/api/series?match=%28".into(), true).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("match"), "{v}");

    // aggd inspect: the same, as text, from the config.
    let cfg = running.config.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || aggd_ok(["inspect", "-c", &cfg, "^total$"]))
        .await
        .unwrap();
    assert!(out.contains("total (sum over 60 s)"), "{out}");
    assert!(
        out.contains("  rule: line 1: total (60) = sum in.*"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "interval {closed}: 5.0 from 2 datapoints, emitted"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("last emission: interval {closed} at ")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("1 series"), "{out}");
    running.aggd.shutdown().await;
}

fn send_lines_to(addr: SocketAddr, lines: &str) {
    use std::io::Write;
    std::net::TcpStream::connect(addr)
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_each_series_shows_its_shard_and_owner() {
    let nats = tokio::task::spawn_blocking(Nats::one).await.unwrap();
    let running = TestAggd::new("inspect-cluster", "cl.<g>.sum (5) = sum in.<g>.*\n")
        .toml(&format!(
            "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [cluster]\nservers = {}\nname = \"i\"\nnode = \"solo\"\nshards = 8\nreplicas = 1\n\
             lease_ttl = \"2s\"\nbatch_delay = \"20ms\"\n",
            nats.toml_servers()
        ))
        .start()
        .await;
    let (tcp, admin) = (
        running.aggd.addr("plaintext/tcp").unwrap(),
        running.aggd.addr("admin/http").unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        // Sent until the owner holds it (the shards are taken a moment after start).
        let ts = now() as i64;
        tokio::task::spawn_blocking(move || send_lines_to(tcp, &format!("in.g1.h 4 {ts}\n")))
            .await
            .unwrap();
        let (_, v) = get(
            admin,
            "/api/series?match=%5Ecl%5C.g1%5C.sum%24".into(),
            true,
        )
        .await;
        if v["series"].as_array().is_some_and(|s| !s.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "the owner never held it: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = &v["series"][0];
    assert_eq!(s["name"], "cl.g1.sum");
    assert_eq!(s["owner"], "solo");
    assert_eq!(s["rule"]["text"], "cl.<g>.sum (5) = sum in.<g>.*");
    let shard = s["shard"].as_u64().unwrap();
    assert!(shard < 8, "{v}");
    running.aggd.shutdown().await;
    drop(nats);
}
