//! The remote-write client: the kind's one encode step ([`RemoteWriter::body`]: the
//! points of one request as a snappy-compressed protobuf `WriteRequest`, labels encoded
//! once per series) and one POST, its answer classified ([`WriteError`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::write_request::{self, Label, Sample, TimeSeries, WriteRequest};
use crate::config::prometheus::{HttpAuth, RemoteWriteConfig};
use crate::datapoint::OutPoint;

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
fn client(cfg: &RemoteWriteConfig) -> Result<reqwest::Client, String> {
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
                    timestamp: write_request::millis(p.timestamp),
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
    /// [`crate::codec::write_request`] declares them) and snappy-compressed.
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
        Bytes::from(write_request::compress(&raw))
    }

    /// POSTs one encoded request body ([`RemoteWriter::body`]); classifies the outcome
    /// (module docs).
    pub async fn post(&self, body: Bytes) -> Result<(), WriteError> {
        let mut req = self.http.post(&self.cfg.url).body(body);
        for (k, v) in write_request::HEADERS {
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

#[cfg(test)]
mod tests;
