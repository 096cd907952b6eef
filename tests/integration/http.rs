//! HTTP ingest over real sockets: body types, gzip, bad bodies, size limits, API keys,
//! rate limits, and journaling.

use std::io::Write;

use aggd_testkit::*;

fn with_http(cfg: &std::path::Path, extra: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text = text.replacen(
        "[aggregation]",
        "[[listen]]\nprotocol = \"http\"\naddress = \"127.0.0.1:0\"\n[aggregation]",
        1,
    );
    text.push_str(extra);
    std::fs::write(cfg, text).unwrap();
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

fn python_pickle_body(points: &str) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import pickle,sys; sys.stdout.buffer.write(pickle.dumps({points}, protocol=2))"
            ),
        ])
        .output()
        .expect("python3 (CPython) is required: install python3");
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_errors_limits_and_journal() {
    let (capture, _dir, cfg) = with_downstream(
        "http",
        "total (60) = sum in.*\ncount (60) = count in.*\n",
        "pickle",
    );
    with_http(
        &cfg,
        "[limits]\nmax_http_body_bytes = 4096\n[journal]\ndir = \"journal\"\nmin_free_disk = 0\n",
    );
    let server = start_aggd(&cfg).await;
    let h = server.addr("http").unwrap();
    let base = previous_bucket(60);
    let pickle = python_pickle_body(&format!("[('in.p', ({base}, 4.0)), ('in.q', ({base}, 5))]"));
    let results = tokio::task::spawn_blocking(move || {
        let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
            http(h, "POST", path, headers, body)
        };
        vec![
            // text/plain (the default), with one bad line.
            post(
                "/api/v1/ingest",
                &[],
                format!("in.a 1 {base}\nbad line\nin.b 2 {base}\n").as_bytes(),
            ),
            // JSON, on the go-carbon-style path.
            post(
                "/",
                &[("Content-Type", "application/json")],
                format!(r#"[{{"path":"in.c","value":3,"timestamp":{base}}}]"#).as_bytes(),
            ),
            // A pickle written by CPython.
            post(
                "/api/v1/ingest",
                &[("Content-Type", "application/python-pickle")],
                &pickle,
            ),
            // gzip.
            post(
                "/api/v1/ingest",
                &[("Content-Encoding", "gzip")],
                &gzip(format!("in.d 10 {base}\n").as_bytes()),
            ),
            // Unusable: bad JSON, bad gzip, an unsupported type.
            post(
                "/api/v1/ingest",
                &[("Content-Type", "application/json")],
                b"{not json",
            ),
            post(
                "/api/v1/ingest",
                &[("Content-Encoding", "gzip")],
                b"not gzip at all",
            ),
            post(
                "/api/v1/ingest",
                &[("Content-Type", "application/xml")],
                b"<x/>",
            ),
            // Over the size limit, raw and as a gzip bomb.
            post("/api/v1/ingest", &[], &vec![b'a'; 10_000]),
            post(
                "/api/v1/ingest",
                &[("Content-Encoding", "gzip")],
                &gzip(&vec![b'\n'; 1_000_000]),
            ),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 400, 400, 415, 413, 413]);
    let first = json(&results[0].2);
    assert_eq!(
        (first["accepted"].as_u64(), first["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(first["reasons"]["parse_error"], 1);
    assert_eq!(json(&results[2].2)["accepted"], 2);
    assert!(
        json(&results[4].2)["error"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    capture.wait_for("HTTP aggregates", |got| {
        got.get(&("total".into(), base)) == Some(&25.0)
            && got.get(&("count".into(), base)) == Some(&6.0)
    });
    server.shutdown().await;
    // Journaled like every other input: a replay recomputes the same aggregate.
    let out = aggd_ok([
        "replay",
        "--dry-run",
        "-c",
        cfg.to_str().unwrap(),
        "--from",
        &base.to_string(),
        "--to",
        &(base + 59).to_string(),
    ]);
    assert!(out.contains("6 datapoints, 2 intervals"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_namespaces_and_rate_limits() {
    let capture = Capture::start("pickle");
    let dir = tempdir("http-tenants");
    std::fs::write(
        dir.join("tenants.toml"),
        "[tenant.acme]\napi_keys = [\"acme-key\"]\n[tenant.tiny]\napi_keys = [\"tiny-key\"]\ndatapoints_per_second = 2\n",
    )
    .unwrap();
    let cfg = write_config(
        &dir,
        "<t>.count (60) = count <t>.*\n",
        "",
        &capture.addr.to_string(),
        "pickle",
    );
    with_http(&cfg, "[tenants]\nregistry = \"tenants.toml\"\n");
    let server = start_aggd(&cfg).await;
    let h = server.addr("http").unwrap();
    let base = previous_bucket(60);
    let basic = format!("Basic {}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("anyone:acme-key")
    });
    let r = tokio::task::spawn_blocking(move || {
        let lines = |n: usize| {
            (0..n)
                .map(|i| format!("x{i} 1 {base}\n"))
                .collect::<String>()
        };
        vec![
            http(h, "POST", "/api/v1/ingest", &[], lines(1).as_bytes()),
            http(
                h,
                "POST",
                "/api/v1/ingest",
                &[("Authorization", "Bearer nope")],
                lines(1).as_bytes(),
            ),
            http(
                h,
                "POST",
                "/api/v1/ingest",
                &[("Authorization", "Bearer acme-key")],
                lines(3).as_bytes(),
            ),
            http(
                h,
                "POST",
                "/api/v1/ingest",
                &[("Authorization", &basic)],
                format!("acme.y 1 {base}\n").as_bytes(),
            ),
            http(
                h,
                "POST",
                "/api/v1/ingest",
                &[("Authorization", "Bearer tiny-key")],
                lines(2).as_bytes(),
            ),
            http(
                h,
                "POST",
                "/api/v1/ingest",
                &[("Authorization", "Bearer tiny-key")],
                lines(5).as_bytes(),
            ),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = r.iter().map(|r| r.0).collect();
    // The last request comes within the same second as the one before it, unless the
    // clock ticked over in between (then it is partly accepted: 200).
    assert_eq!(&statuses[..5], [401, 401, 200, 200, 200]);
    let last = json(&r[5].2);
    match statuses[5] {
        429 => {
            assert!(
                r[5].1.to_ascii_lowercase().contains("retry-after: 1"),
                "{}",
                r[5].1
            );
            assert_eq!(last["accepted"], 0, "{last}");
            assert_eq!(last["reasons"]["rate_limited"], 5, "{last}");
        }
        // A new second began: exactly its allowance of 2 goes through, the rest is limited.
        200 => {
            assert_eq!(last["accepted"], 2, "{last}");
            assert_eq!(last["reasons"]["rate_limited"], 3, "{last}");
        }
        other => panic!("the over-limit request got {other}: {statuses:?}"),
    }
    // acme's datapoints went under acme's namespace, with or without the prefix.
    capture.wait_for("acme.count", |got| {
        got.get(&("acme.count".into(), base)) == Some(&4.0)
    });
    server.shutdown().await;
}
