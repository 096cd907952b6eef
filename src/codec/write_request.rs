//! Prometheus remote write 1.0: the request body, and Prometheus's naming rules.
//!
//! The body is a protobuf `prometheus.WriteRequest` (Prometheus `prompb/remote.proto` and
//! `prompb/types.proto`; only the fields remote write 1.0 senders set: `timeseries = 1`;
//! `TimeSeries { labels = 1, samples = 2 }`; `Label { name = 1, value = 2 }`;
//! `Sample { value = 1 (double), timestamp = 2 (int64, milliseconds since the epoch) }`),
//! encoded by prost and compressed with snappy's block format (not the framed format), as
//! the remote write 1.0 specification requires. The messages are declared with prost's
//! derive from those field numbers; prost does the encoding.
//!
//! Names: a metric name must match `[a-zA-Z_:][a-zA-Z0-9_:]*` and a label name
//! `[a-zA-Z_][a-zA-Z0-9_]*` (Prometheus data model). [`metric_name`] and [`label_name`]
//! replace every other character by `_`, as graphite_exporter does by default, and also put
//! a `_` before a leading digit (graphite_exporter leaves it, which stores then refuse).

use prost::Message;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, `__name__` among them; samples in
/// timestamp order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// The series' labels.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Its samples.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    /// Label name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Label value (any UTF-8).
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The HTTP headers a remote write 1.0 request carries besides auth:
/// `Content-Encoding: snappy`, `Content-Type: application/x-protobuf`,
/// `X-Prometheus-Remote-Write-Version: 0.1.0`.
pub const HEADERS: [(&str, &str); 3] = [
    ("content-encoding", "snappy"),
    ("content-type", "application/x-protobuf"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

/// The request body for `request`: protobuf, then snappy block compression.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    compress(&request.encode_to_vec())
}

/// An encoded protobuf `WriteRequest` in snappy's block format: the body remote write 1.0
/// sends (a sender that encodes the protobuf itself, with labels it encoded before, uses
/// this for the rest).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("snappy compresses any input under 4 GiB")
}

/// Decodes a body made by [`encode`] (tests and diagnostics). Errors: not snappy, or not
/// a `WriteRequest`.
pub fn decode(body: &[u8]) -> Result<WriteRequest, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

/// Seconds (a carbon timestamp) as remote write's milliseconds, rounded to the nearest.
pub fn millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// `text` as a Prometheus metric name (module docs): `a.b-c` → `a_b_c`, `5xx` → `_5xx`.
pub fn metric_name(text: &str) -> String {
    sanitize(text, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `text` as a Prometheus label name (module docs): `a.b` → `a_b`, `1x` → `_1x`.
pub fn label_name(text: &str) -> String {
    sanitize(text, |c| c.is_ascii_alphanumeric() || c == '_')
}

fn sanitize(text: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(text.chars().map(|c| if allowed(c) { c } else { '_' }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_like_graphite_exporter() {
        assert_eq!(metric_name("a.b.c"), "a_b_c");
        assert_eq!(metric_name("web-01.requests:rate"), "web_01_requests:rate");
        assert_eq!(metric_name("5xx.count"), "_5xx_count");
        assert_eq!(metric_name("ünï.x"), "_n__x");
        assert_eq!(label_name("a:b.c"), "a_b_c");
        assert_eq!(label_name("dc"), "dc");
        assert_eq!(label_name(""), "_");
    }

    #[test]
    fn body_is_snappy_block_protobuf() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "x".into(),
                    },
                    Label {
                        name: "dc".into(),
                        value: "eu.west".into(),
                    },
                ],
                samples: vec![Sample {
                    value: 0.1 + 0.2,
                    timestamp: millis(1_700_000_060.0),
                }],
            }],
        };
        let body = encode(&req);
        // snappy block format: a varint of the uncompressed length, no stream header.
        assert_ne!(&body[..4], b"\xff\x06\x00\x00");
        assert_eq!(decode(&body).unwrap(), req);
        assert_eq!(req.timeseries[0].samples[0].timestamp, 1_700_000_060_000);
        assert!(decode(b"junk").is_err());
    }
}
