use super::*;
use crate::datapoint::OutValue;

/// An error quoting its cause's text, as hyper's DNS error does.
#[derive(Debug)]
struct Quoting(std::io::Error);

impl std::fmt::Display for Quoting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dns error: {}", self.0)
    }
}

impl std::error::Error for Quoting {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn a_cause_already_quoted_is_not_repeated() {
    let e = Quoting(std::io::Error::other(
        "failed to lookup address information",
    ));
    assert_eq!(
        describe(&e),
        "dns error: failed to lookup address information"
    );
    let plain = std::io::Error::other(Quoting(std::io::Error::other("refused")));
    assert_eq!(describe(&plain), "dns error: refused");
}

fn cfg() -> RemoteWriteConfig {
    let file = crate::config::file::DestinationFile {
        protocol: crate::config::DestProtocol::PrometheusRemoteWrite,
        url: Some("http://127.0.0.1:9/api/v1/write".into()),
        ..Default::default()
    };
    RemoteWriteConfig::from_file(&file).unwrap()
}

fn p(path: &str, ts: f64, v: f64) -> OutPoint {
    OutPoint {
        path: path.into(),
        timestamp: ts,
        value: OutValue::Float(v),
        interval: None,
    }
}

#[test]
fn request_groups_series_sorts_samples_and_keeps_the_later_duplicate() {
    let mut w = RemoteWriter::new(&cfg()).unwrap();
    let req = w.request(&[
        p("a.b", 120.0, 1.0),
        p("cpu;dc=eu", 60.0, 5.0),
        p("a.b", 60.0, 2.0),
        p("a.b", 120.0, 3.0),
    ]);
    assert_eq!(req.timeseries.len(), 2);
    let ab = &req.timeseries[0];
    assert_eq!(
        ab.labels,
        [Label {
            name: "__name__".into(),
            value: "a_b".into()
        }]
    );
    let samples: Vec<(i64, f64)> = ab.samples.iter().map(|s| (s.timestamp, s.value)).collect();
    assert_eq!(samples, [(60_000, 2.0), (120_000, 3.0)]);
    let names: Vec<&str> = req.timeseries[1]
        .labels
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, ["__name__", "dc"], "sorted by name");
}

#[test]
fn the_body_is_the_request_encoded_with_labels_from_the_cache() {
    let mut w = RemoteWriter::new(&cfg()).unwrap();
    let points = [
        p("a.b", 120.0, 1.0),
        p("cpu;dc=eu;host=h1", 60.0, 5.5),
        p("a.b", 60.0, 2.0),
        p("a.b", 120.0, 3.0),
        p("x", 1.25, -1.0),
    ];
    // Twice: the second body takes every series' labels from the cache.
    for _ in 0..2 {
        let body = w.body(&points);
        let decoded = write_request::decode(&body).unwrap();
        assert_eq!(decoded, w.request(&points));
        assert_eq!(decoded.timeseries.len(), 3);
    }
    assert_eq!(w.names.len(), 3, "one cached encoding per series");
    assert_eq!(write_request::decode(&w.body(&[])).unwrap().timeseries, []);
}

/// A one-request HTTP server on loopback answering `status`: its port, and the
/// request head it read (a stand-in for a store, to see headers and classify answers).
async fn answer_once(status: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
    answer_once_with(status, b"nope".to_vec()).await
}

/// [`answer_once`] with the answer body `body`.
async fn answer_once_with(
    status: &'static str,
    body: Vec<u8>,
) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
        // The client may stop reading a long body.
        let _ = s.write_all(&body).await;
        String::from_utf8_lossy(&buf).to_lowercase()
    });
    (port, task)
}

/// What posting to a stand-in store answering `status` with `body` gives.
async fn post_to(status: &'static str, body: Vec<u8>) -> WriteError {
    let (port, _head) = answer_once_with(status, body).await;
    let mut c = cfg();
    c.url = format!("http://127.0.0.1:{port}/api/v1/write");
    RemoteWriter::new(&c)
        .unwrap()
        .post(Bytes::from_static(b"x"))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn requests_carry_the_protocol_headers_auth_and_extra_headers() {
    let (port, head) = answer_once("204 No Content").await;
    let mut c = cfg();
    c.url = format!("http://127.0.0.1:{port}/api/v1/write");
    c.auth = HttpAuth::Bearer("t0ken".into());
    c.headers = vec![("X-Scope-OrgID".into(), "team-a".into())];
    let w = RemoteWriter::new(&c).unwrap();
    w.post(Bytes::from_static(b"x")).await.unwrap();
    let head = head.await.unwrap();
    for h in [
        "post /api/v1/write http/1.1",
        "content-encoding: snappy",
        "content-type: application/x-protobuf",
        "x-prometheus-remote-write-version: 0.1.0",
        "authorization: bearer t0ken",
        "x-scope-orgid: team-a",
    ] {
        assert!(head.contains(h), "{h:?} missing in {head}");
    }
}

#[tokio::test]
async fn answers_are_classified() {
    for (status, retry) in [
        ("400 Bad Request", false),
        ("401 Unauthorized", false),
        ("404 Not Found", false),
        ("429 Too Many Requests", true),
        ("500 Internal Server Error", true),
        ("503 Service Unavailable", true),
    ] {
        let err = post_to(status, b"nope".to_vec()).await;
        assert_eq!(
            matches!(err, WriteError::Retry(_)),
            retry,
            "{status}: {err:?}"
        );
        assert!(err.to_string().contains(&status[..3]), "{err}");
        assert!(
            err.to_string().contains("nope"),
            "the answer is kept: {err}"
        );
    }
}

#[tokio::test]
async fn a_huge_error_answer_is_quoted_only_in_part() {
    let err = post_to("400 Bad Request", vec![b'x'; 8 << 20]).await;
    assert!(matches!(err, WriteError::Rejected(_)));
    assert!(
        err.to_string().len() < ANSWER_BYTES + 100,
        "{} bytes",
        err.to_string().len()
    );
}

#[tokio::test]
async fn a_closed_port_is_retried_not_rejected() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = cfg();
    c.url = format!("http://127.0.0.1:{port}/api/v1/write");
    let w = RemoteWriter::new(&c).unwrap();
    let err = w.post(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, WriteError::Retry(_)), "{err:?}");
}
