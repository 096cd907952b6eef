//! A Prometheus remote-write destination (`protocol = "prometheus_remote_write"`;
//! operator's guide in `docs/remote-write.md`).
//!
//! Points are mapped to Prometheus series ([`crate::rules::mapping`]: graphite_exporter's
//! default naming, Graphite tags as labels, the optional mapping file), grouped per series
//! with samples in timestamp order (of two samples of one series at one timestamp in a
//! request, the later one), and POSTed as remote write 1.0 ([`crate::codec::remote_write`]:
//! protobuf `WriteRequest`, snappy block compression, `batch_datapoints` samples at most).
//!
//! Each series' labels are encoded once (protobuf bytes kept per output name) and copied
//! into every request that carries it, not rebuilt per sample.
//!
//! Series are spread over `max_in_flight` lanes by a hash of their output name; each lane
//! has one request in flight, so up to `max_in_flight` requests await their answers at
//! once while every series' samples still arrive in order (as Prometheus's queue manager
//! shards).
//!
//! Delivery, per lane one request at a time:
//! - 2xx: delivered (`destination_sent`, `destination_batches` counts requests);
//! - a network error, a timeout (`timeout`), 5xx or 429: sent again, with the same body,
//!   after a backoff doubling from 100 ms to 5 s (`destination_connection_failures`,
//!   event `destination_request_failed`). Re-sending is safe: a sample the store already
//!   holds is a duplicate with the same value;
//! - another 4xx: the store refuses the request and would refuse it again. The batch is
//!   dropped as `destination_rejected`: counted, logged with the answer, and ledgered, so
//!   `aggd replay --lost` recomputes and re-sends the window once the cause is fixed.
//!
//! What waits in the queue meanwhile is bounded like every destination's queue (a full
//! queue drops as `destination_full`), and what is still queued or unanswered when
//! shutdown's drain ends is `destination_down`; both are ledgered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sender::{Link, set_connected};
use crate::codec::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use crate::config::remote_write::{HttpAuth, RemoteWriteConfig};
use crate::datapoint::{OutBatch, OutPoint, window};
use crate::events::Event;
use crate::reason::DropReason;

/// Mapped names kept per writer before the cache is emptied (and refills on demand).
const NAME_CACHE_ENTRIES: usize = 100_000;

/// Why a request did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Worth sending again: a network error, a timeout, a 5xx or 429 answer.
    Retry(String),
    /// Refused for good (another 4xx): the status and the start of the answer.
    Rejected(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Retry(e) | WriteError::Rejected(e) => f.write_str(e),
        }
    }
}

/// A remote-write client: the HTTP client, the settings, and mapped names.
pub struct RemoteWriter {
    http: reqwest::Client,
    cfg: RemoteWriteConfig,
    /// Keyed by output name: its labels, encoded as the `labels` fields of a protobuf
    /// `TimeSeries`. aHash, as the route cache (SipHash was a tenth of the forwarding
    /// profile).
    names: HashMap<Arc<str>, Arc<[u8]>, ahash::RandomState>,
}

/// The HTTP client for `cfg`: its timeout, TLS roots and identity, no redirects (a
/// redirected POST would be re-sent as a GET).
pub fn client(cfg: &RemoteWriteConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("aggd/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &cfg.tls_ca {
        for c in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("tls_ca: {e}"))? {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(pem) = &cfg.tls_identity {
        b = b.identity(
            reqwest::Identity::from_pem(pem).map_err(|e| format!("tls_cert/tls_key: {e}"))?,
        );
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

impl RemoteWriter {
    /// A writer for `cfg`. Errors: TLS material that does not parse.
    pub fn new(cfg: &RemoteWriteConfig) -> Result<RemoteWriter, String> {
        Ok(RemoteWriter {
            http: client(cfg)?,
            cfg: cfg.clone(),
            names: HashMap::default(),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// Most samples per request.
    pub fn batch_datapoints(&self) -> usize {
        self.cfg.batch_datapoints
    }

    /// Another writer sharing this one's HTTP client (its connection pool), with a name
    /// cache of its own: one per lane.
    pub fn lane(&self) -> RemoteWriter {
        RemoteWriter {
            http: self.http.clone(),
            cfg: self.cfg.clone(),
            names: HashMap::default(),
        }
    }

    /// The labels of output name `path` ([`crate::rules::mapping`]).
    fn label_list(&self, path: &str) -> Vec<Label> {
        crate::rules::mapping::map(self.cfg.mapping.as_deref(), path)
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect()
    }

    /// The labels of `path` encoded as `TimeSeries.labels` fields (field 1, one per label),
    /// from the cache.
    fn encoded_labels(&mut self, path: &Arc<str>) -> Arc<[u8]> {
        if let Some(l) = self.names.get(path) {
            return Arc::clone(l);
        }
        if self.names.len() >= NAME_CACHE_ENTRIES {
            self.names.clear();
        }
        let mut bytes = Vec::new();
        for l in self.label_list(path) {
            prost::encoding::message::encode(1, &l, &mut bytes);
        }
        let bytes: Arc<[u8]> = bytes.into();
        self.names.insert(Arc::clone(path), Arc::clone(&bytes));
        bytes
    }

    /// `points` grouped per output name: the names in order of first appearance, and
    /// every sample tagged with its name's index, sorted by (index, timestamp), one per
    /// timestamp (the later point's). One flat vector, not one per series: a forwarded
    /// series usually has a single sample per request.
    fn grouped(points: &[OutPoint]) -> (Vec<&Arc<str>>, Vec<(u32, Sample)>) {
        let mut index: HashMap<&str, u32, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(points.len(), ahash::RandomState::new());
        let mut names: Vec<&Arc<str>> = Vec::with_capacity(points.len());
        let mut samples: Vec<(u32, Sample)> = points
            .iter()
            .map(|p| {
                let i = *index.entry(&p.path).or_insert_with(|| {
                    names.push(&p.path);
                    names.len() as u32 - 1
                });
                let s = Sample {
                    value: p.value.as_f64(),
                    timestamp: remote_write::millis(p.timestamp),
                };
                (i, s)
            })
            .collect();
        // A stable sort: of two samples at one timestamp the later stays later, and wins.
        samples.sort_by_key(|(i, s)| (*i, s.timestamp));
        let mut kept = 0;
        for i in 0..samples.len() {
            let (series, ts) = (samples[i].0, samples[i].1.timestamp);
            if kept > 0 && samples[kept - 1].0 == series && samples[kept - 1].1.timestamp == ts {
                samples[kept - 1] = samples[i].clone();
            } else {
                samples[kept] = samples[i].clone();
                kept += 1;
            }
        }
        samples.truncate(kept);
        (names, samples)
    }

    /// The runs of `samples` (as [`RemoteWriter::grouped`] sorts them) of one series each.
    fn runs(samples: &[(u32, Sample)]) -> impl Iterator<Item = &[(u32, Sample)]> {
        samples.chunk_by(|a, b| a.0 == b.0)
    }

    /// The `WriteRequest` for `points` (module docs: one series per name, samples in
    /// timestamp order, one sample per timestamp, the later one). What [`RemoteWriter::body`]
    /// encodes; tests compare the two.
    pub fn request(&mut self, points: &[OutPoint]) -> WriteRequest {
        let (names, samples) = Self::grouped(points);
        let timeseries = Self::runs(&samples)
            .map(|run| TimeSeries {
                labels: self.label_list(names[run[0].0 as usize]),
                samples: run.iter().map(|(_, s)| s.clone()).collect(),
            })
            .collect();
        WriteRequest { timeseries }
    }

    /// The request body for `points`: [`RemoteWriter::request`] encoded as protobuf (each
    /// series' labels copied from their cached encoding, field numbers as
    /// [`crate::codec::remote_write`] declares them) and snappy-compressed.
    pub fn body(&mut self, points: &[OutPoint]) -> Bytes {
        use prost::Message;
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, message};
        let (names, samples) = Self::grouped(points);
        let mut raw = Vec::with_capacity(points.len() * 64);
        for run in Self::runs(&samples) {
            let labels = self.encoded_labels(names[run[0].0 as usize]);
            let samples_len: usize = run
                .iter()
                .map(|(_, s)| {
                    let n = s.encoded_len();
                    1 + encoded_len_varint(n as u64) + n
                })
                .sum();
            // WriteRequest.timeseries = 1: the TimeSeries' labels, then samples = 2.
            encode_key(1, WireType::LengthDelimited, &mut raw);
            encode_varint((labels.len() + samples_len) as u64, &mut raw);
            raw.extend_from_slice(&labels);
            for (_, s) in run {
                message::encode(2, s, &mut raw);
            }
        }
        Bytes::from(remote_write::compress(&raw))
    }

    /// POSTs one encoded request body ([`RemoteWriter::body`]); classifies the outcome
    /// (module docs).
    pub async fn post(&self, body: Bytes) -> Result<(), WriteError> {
        let mut req = self.http.post(&self.cfg.url).body(body);
        for (k, v) in remote_write::HEADERS {
            req = req.header(k, v);
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        req = match &self.cfg.auth {
            HttpAuth::None => req,
            HttpAuth::Basic { username, password } => req.basic_auth(username, Some(password)),
            HttpAuth::Bearer(token) => req.bearer_auth(token),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| WriteError::Retry(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = answer_start(resp).await;
        let what = format!("HTTP {status}: {answer}");
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(WriteError::Rejected(what))
        } else {
            Err(WriteError::Retry(what))
        }
    }

    /// Sends `points` in requests of `batch_datapoints` from a thread outside any tokio
    /// runtime (replay), retrying as the daemon does until `give_up` has passed since a
    /// request's first attempt. Errors: a rejection, or a request still failing then.
    pub fn send_blocking(
        &mut self,
        rt: &tokio::runtime::Runtime,
        points: &[OutPoint],
        give_up: Duration,
    ) -> Result<(), WriteError> {
        for chunk in points.chunks(self.cfg.batch_datapoints) {
            let body = self.body(chunk);
            let started = std::time::Instant::now();
            let mut backoff = Duration::from_millis(100);
            loop {
                match rt.block_on(self.post(body.clone())) {
                    Ok(()) => break,
                    Err(WriteError::Retry(e)) if started.elapsed() < give_up => {
                        tracing::warn!(destination = self.url(), error = %e, "retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// The first [`ANSWER_BYTES`] bytes of an answer's body, as text (a misbehaving store's
/// endless body is not read further).
async fn answer_start(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(ANSWER_BYTES - body.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).trim().to_string()
}

/// How much of an error answer is read and quoted in the log.
const ANSWER_BYTES: usize = 512;

/// An error with its causes (reqwest's own message omits them), each said once: a cause
/// whose text its parent already quotes (hyper's DNS error quotes the OS error it wraps)
/// is not repeated.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    s
}

/// Waits for the next queued batch (module docs of [`super`]: drain takes what is left).
async fn next_batch(
    rx: &mut mpsc::Receiver<OutBatch>,
    drain: &CancellationToken,
) -> Option<OutBatch> {
    tokio::select! {
        biased;
        b = rx.recv() => b,
        _ = drain.cancelled() => rx.try_recv().ok(),
    }
}

/// Requests a lane may have waiting besides the one in flight.
const LANE_QUEUE: usize = 1;

/// The sender task of a remote-write destination (module docs): takes queued batches,
/// splits their points over the lanes by output name, and hands each lane its requests.
/// The lanes are tasks of a set it owns: when this task ends or is aborted (shutdown's
/// deadline), so are they.
pub(super) async fn run(link: Link, mut rx: mpsc::Receiver<OutBatch>, drain: CancellationToken) {
    let Some(cfg) = link.cfg.remote_write.clone() else {
        return;
    };
    let name = link.cfg.name().to_string();
    let writer = loop {
        match RemoteWriter::new(&cfg) {
            Ok(w) => break w,
            Err(e) => {
                link.stats.events.emit(
                    Event::DestinationConnectFailed,
                    &format_args!("destination {name}: {e}; retrying"),
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let link = Arc::new(link);
    let batch = cfg.batch_datapoints;
    let lanes = cfg.max_in_flight.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut queues = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, lane_rx) = mpsc::channel::<Vec<OutPoint>>(LANE_QUEUE);
        tasks.spawn(lane(Arc::clone(&link), writer.lane(), lane_rx));
        queues.push(tx);
    }
    let mut points: Vec<OutPoint> = Vec::new();
    let mut parts: Vec<Vec<OutPoint>> = vec![Vec::new(); lanes];
    while let Some(first) = next_batch(&mut rx, &drain).await {
        points.clear();
        points.extend_from_slice(&first);
        while points.len() < batch * lanes {
            match rx.try_recv() {
                Ok(b) => points.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        for p in points.drain(..) {
            let l = (crate::hash::fnv1a64(p.path.as_bytes()) % lanes as u64) as usize;
            parts[l].push(p);
        }
        for (l, part) in parts.iter_mut().enumerate() {
            while !part.is_empty() {
                // The points move to the lane (no copy): the last piece is the vector.
                let rest = part.split_off(part.len().min(batch));
                let chunk = std::mem::replace(part, rest);
                let n = chunk.len();
                if queues[l].send(chunk).await.is_err() {
                    // The lane ended (it cannot while this task lives); nothing to send to.
                    link.done(n);
                }
            }
        }
    }
    drop(queues);
    while tasks.join_next().await.is_some() {}
}

/// One lane: sends each request it is handed until it is delivered or refused (module
/// docs), one at a time.
async fn lane(link: Arc<Link>, mut writer: RemoteWriter, mut rx: mpsc::Receiver<Vec<OutPoint>>) {
    let name = link.cfg.name().to_string();
    let mut backoff = Duration::from_millis(100);
    while let Some(chunk) = rx.recv().await {
        let body = writer.body(&chunk);
        let n = chunk.len();
        loop {
            match writer.post(body.clone()).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    set_connected(&link.counters, true);
                    link.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                    link.counters.batches.fetch_add(1, Ordering::Relaxed);
                    link.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                }
                Err(WriteError::Retry(e)) => {
                    set_connected(&link.counters, false);
                    link.counters
                        .connection_failures
                        .fetch_add(1, Ordering::Relaxed);
                    link.stats.events.emit(
                        Event::DestinationRequestFailed,
                        &format_args!(
                            "destination {name}: {e}; {n} datapoints sent again in {backoff:?}"
                        ),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(WriteError::Rejected(e)) => {
                    link.counters
                        .rejected
                        .fetch_add(n as u64, Ordering::Relaxed);
                    link.stats.record_drop(
                        DropReason::DestinationRejected,
                        n as u64,
                        window(&chunk),
                        &format_args!("destination {name} refused a request: {e}"),
                    );
                    break;
                }
            }
        }
        link.done(n);
    }
}

#[cfg(test)]
mod tests {

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
    use super::*;
    use crate::datapoint::OutValue;

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
            let decoded = remote_write::decode(&body).unwrap();
            assert_eq!(decoded, w.request(&points));
            assert_eq!(decoded.timeseries.len(), 3);
        }
        assert_eq!(w.names.len(), 3, "one cached encoding per series");
        assert_eq!(remote_write::decode(&w.body(&[])).unwrap().timeseries, []);
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
}
