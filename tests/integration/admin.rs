//! The admin API's tenant changes (PUT, DELETE, 400 and 404 answers) and the HTTP ingest
//! API's authentication edge cases, over real sockets against an in-process aggd.

use std::net::SocketAddr;

use aggd::reason::DropReason;
use aggd_testkit::*;

const TOKEN: &str = "admin-token-for-tests";

/// aggd with an HTTP ingest listener, a tenant registry (unknown tenants rejected) and the
/// admin API.
async fn start(registry: &str) -> (Running<aggd::server::Server>, SocketAddr, SocketAddr) {
    let running = TestAggd::new("admin", "<t>.count (60) = count <t>.*\n")
        .toml(&format!(
            "[[listen]]\nprotocol = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ))
        .registry(registry)
        .start()
        .await;
    let h = running.aggd.addr("http").unwrap();
    let admin = running.aggd.addr("admin/http").unwrap();
    (running, h, admin)
}

/// `http` off the async runtime.
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = http(addr, method, &path, &h, &body);
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, v)
    })
    .await
    .unwrap()
}

fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {t}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_puts_deletes_and_answers_400_and_404() {
    let (running, h, admin) = start("[tenant.acme]\napi_keys = [\"acme-key\"]\n").await;
    let registry = running.dir.join("tenants.toml");
    let api = |p: &str| format!("/api/tenants{p}");

    let (status, v) = call(admin, "GET", api("/nobody"), bearer(TOKEN), vec![]).await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nobody"), "{v}");

    // PUT creates a tenant, writes the file, and its key works at once.
    let entry = br#"{"state": "active", "api_keys": ["new-key"], "max_series": 5}"#;
    let (status, v) = call(admin, "PUT", api("/newco"), bearer(TOKEN), entry.to_vec()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entry"]["max_series"], 5, "{v}");
    let file = std::fs::read_to_string(&registry).unwrap();
    assert!(
        file.contains("[tenant.newco]") && file.contains("new-key"),
        "{file}"
    );
    let (status, v) = call(
        h,
        "POST",
        "/api/v1/ingest".into(),
        bearer("new-key"),
        b"x 1 -1\n".to_vec(),
    )
    .await;
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(1)), "{v}");

    // What the registry cannot hold is a 400 naming the problem; nothing changes.
    for (path, body, says) in [
        ("/bad", b"{not json".to_vec(), "bad tenant JSON"),
        ("/bad", br#"{"state": "gone"}"#.to_vec(), "bad tenant JSON"),
        ("/bad", br#"{"bogus": 1}"#.to_vec(), "bogus"),
        ("/a.b", b"{}".to_vec(), "one path node"),
        (
            "/thief",
            br#"{"api_keys": ["acme-key"]}"#.to_vec(),
            "used twice",
        ),
    ] {
        let (status, v) = call(admin, "PUT", api(path), bearer(TOKEN), body).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    let (_, listed) = call(admin, "GET", api(""), bearer(TOKEN), vec![]).await;
    let ids: Vec<&String> = listed.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["acme", "newco"], "a refused PUT changes nothing");

    // DELETE of a tenant the registry does not know records it as deleted: its data is
    // then tenant_deleted (ledgered, replayable if restored), not merely unknown.
    let (status, v) = call(admin, "DELETE", api("/ghost"), bearer(TOKEN), vec![]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entry"]["state"], "deleted", "{v}");
    let gate = running.aggd.tenants().unwrap();
    assert_eq!(
        gate.admit("ghost", "ghost.x", 1),
        Err(DropReason::TenantDeleted)
    );
    // DELETE of a known tenant turns its key away at the gate, not at authentication.
    let (status, _) = call(admin, "DELETE", api("/acme"), bearer(TOKEN), vec![]).await;
    assert_eq!(status, 200);
    let (status, v) = call(
        h,
        "POST",
        "/api/v1/ingest".into(),
        bearer("acme-key"),
        b"x 1 -1\n".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 0, "{v}");
    assert_eq!(v["reasons"]["tenant_deleted"], 1, "{v}");

    // Every change wants the token, in the Bearer scheme exactly.
    for headers in [
        vec![],
        bearer("wrong"),
        vec![("Authorization", format!("bearer {TOKEN}"))],
        vec![("Authorization", TOKEN.to_string())],
    ] {
        for (method, path) in [("PUT", "/x"), ("DELETE", "/newco"), ("GET", "/newco")] {
            let (status, _) = call(admin, method, api(path), headers.clone(), b"{}".to_vec()).await;
            assert_eq!(status, 401, "{method} {path} with {headers:?}");
        }
    }
    let (_, after) = call(admin, "GET", api("/newco"), bearer(TOKEN), vec![]).await;
    assert_eq!(
        after["entry"]["state"], "active",
        "refused requests changed nothing"
    );
    running.aggd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_authentication_edge_cases() {
    let (running, h, _) = start(
        "[tenant.acme]\napi_keys = [\"acme-key\"]\n\
         [tenant.paused]\napi_keys = [\"paused-key\"]\nstate = \"blocked\"\n",
    )
    .await;
    let basic = |user_pass: &str| {
        use base64::Engine;
        let enc = base64::engine::general_purpose::STANDARD.encode(user_pass);
        vec![("Authorization", format!("Basic {enc}"))]
    };
    let post = |headers: Vec<(&'static str, String)>| {
        call(
            h,
            "POST",
            "/api/v1/ingest".into(),
            headers,
            b"x 1 -1\n".to_vec(),
        )
    };
    // Refused at authentication: 401 with an error body, nothing accepted.
    for headers in [
        vec![],
        vec![("Authorization", "Basic %%%not-base64".to_string())],
        basic("no-colon-acme-key"),
        basic("acme-key:"),
        vec![("Authorization", "Token acme-key".to_string())],
        bearer(""),
    ] {
        let (status, v) = post(headers.clone()).await;
        assert_eq!(status, 401, "{headers:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
    }
    // Accepted: Bearer (surrounding blanks trimmed), and Basic with any user name.
    for headers in [
        bearer(" acme-key "),
        basic("anyone:acme-key"),
        basic(":acme-key"),
    ] {
        let (status, v) = post(headers.clone()).await;
        assert_eq!(
            (status, v["accepted"].as_u64()),
            (200, Some(1)),
            "{headers:?}: {v}"
        );
    }
    // A blocked tenant's key authenticates; its datapoints are refused by the gate.
    let (status, v) = post(bearer("paused-key")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["reasons"]["tenant_blocked"].as_u64()
        ),
        (Some(0), Some(1)),
        "{v}"
    );
    let stats = running.aggd.stats();
    assert_eq!(stats.drops(DropReason::TenantBlocked), 1);
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 3);
    running.aggd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_token_unless_protected_and_the_tenant_api_needs_one() {
    // No token: /metrics, /health and /ready answer; the tenant API says it is off.
    let running = TestAggd::new("admin-open", "a (60) = sum b.*\n")
        .toml("[admin]\naddress = \"127.0.0.1:0\"\n")
        .start()
        .await;
    let admin = running.aggd.addr("admin/http").unwrap();
    for path in ["/metrics", "/health", "/ready"] {
        let (status, _) = call(admin, "GET", path.into(), vec![], vec![]).await;
        assert_eq!(status, 200, "{path}");
    }
    running.aggd.shutdown().await;

    // protect_metrics: every path needs the token.
    let running = TestAggd::new("admin-protected", "<t>.count (60) = count <t>.*\n")
        .toml(&format!(
            "[tenants]\nregistry = \"tenants.toml\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nprotect_metrics = true\n"
        ))
        .registry("[tenant.acme]\n")
        .start()
        .await;
    let admin = running.aggd.addr("admin/http").unwrap();
    for path in ["/metrics", "/health", "/ready"] {
        let (status, _) = call(admin, "GET", path.into(), vec![], vec![]).await;
        assert_eq!(status, 401, "{path} without the token");
        let (status, _) = call(admin, "GET", path.into(), bearer("wrong-token"), vec![]).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = call(admin, "GET", path.into(), bearer(TOKEN), vec![]).await;
        assert_eq!(status, 200, "{path} with the token");
    }
    running.aggd.shutdown().await;

    // Tenants without a token: the API answers that it is off.
    let running = TestAggd::new("admin-no-token", "<t>.count (60) = count <t>.*\n")
        .toml("[tenants]\nregistry = \"tenants.toml\"\n[admin]\naddress = \"127.0.0.1:0\"\n")
        .registry("[tenant.acme]\n")
        .start()
        .await;
    let admin = running.aggd.addr("admin/http").unwrap();
    let (status, v) = call(admin, "GET", "/api/tenants".into(), bearer(TOKEN), vec![]).await;
    assert_eq!(status, 401);
    assert!(
        v["error"].as_str().unwrap().contains("tenant API is off"),
        "{v}"
    );
    running.aggd.shutdown().await;
}
