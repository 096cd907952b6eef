//! Bodies of the HTTP ingest API (`POST /api/v1/ingest`, `POST /`), after gzip decoding.
//!
//! | Content-Type | body |
//! |---|---|
//! | `text/plain` (default) | carbon plaintext lines |
//! | `application/python-pickle` | one carbon pickle body (a pickled list, no length prefix) |
//! | `application/json` | `[{"path": "a.b", "value": 1.5, "timestamp": 1700000000}, …]`; `timestamp` optional (now) |
//!
//! With an API key, the datapoints belong to the key's tenant: a path whose first node is
//! not the tenant is put under it (`cpu.load` → `acme.cpu.load`). The same function decodes
//! journaled HTTP bodies on replay, with the tenant the record carries.

use serde::Deserialize;

use super::pickle::PickleDecoder;
use super::{Limits, finish_point, plaintext};
use crate::datapoint::Datapoint;
use crate::datapoint::Kind;
use crate::reason::DropReason;

/// One element of a JSON body.
#[derive(Deserialize)]
struct JsonPoint {
    path: String,
    value: Option<f64>,
    timestamp: Option<f64>,
}

/// Why a body is unusable as a whole (HTTP 400).
#[derive(Debug, Clone, PartialEq)]
pub struct BadBody(pub String);

/// The journal kind of a `Content-Type` (parameters ignored), or `None` if unsupported.
pub(crate) fn kind_of(content_type: Option<&str>) -> Option<Kind> {
    let ct = content_type.unwrap_or("text/plain");
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "" | "text/plain" => Some(Kind::HttpPlaintext),
        "application/python-pickle" | "application/x-python-pickle" => Some(Kind::HttpPickle),
        "application/json" => Some(Kind::HttpJson),
        _ => None,
    }
}

fn emit_under<F>(tenant: Option<&str>, dp: Datapoint<'_>, f: &mut F)
where
    F: FnMut(Result<Datapoint<'_>, DropReason>),
{
    match tenant {
        Some(t) if crate::datapoint::first_node(dp.path) != t => {
            let path = format!("{t}.{}", dp.path);
            f(Ok(Datapoint { path: &path, ..dp }));
        }
        _ => f(Ok(dp)),
    }
}

/// Decodes an HTTP body of `kind`, calling `f` per datapoint or rejection; `now` replaces
/// `-1` (and missing JSON) timestamps.
///
/// Errors: a pickle body that is not a decodable list, or a JSON body that is not an array
/// of objects with a `path` (nothing is emitted then).
pub fn decode<F>(
    kind: Kind,
    body: &[u8],
    tenant: Option<&str>,
    now: f64,
    limits: &Limits,
    decoder: &mut PickleDecoder,
    mut f: F,
) -> Result<(), BadBody>
where
    F: FnMut(Result<Datapoint<'_>, DropReason>),
{
    match kind {
        Kind::HttpPickle => decoder
            .decode(body, now, limits, |r| match r {
                Ok(dp) => emit_under(tenant, dp, &mut f),
                Err(e) => f(Err(e)),
            })
            .map_err(|e| BadBody(format!("pickle body: {e}"))),
        Kind::HttpJson => {
            let points: Vec<JsonPoint> =
                serde_json::from_slice(body).map_err(|e| BadBody(format!("JSON body: {e}")))?;
            for p in &points {
                let r = finish_point(
                    &p.path,
                    p.timestamp.unwrap_or(-1.0),
                    p.value.unwrap_or(f64::NAN),
                    now,
                    limits,
                );
                match r {
                    Ok(dp) => emit_under(tenant, dp, &mut f),
                    Err(e) => f(Err(e)),
                }
            }
            Ok(())
        }
        _ => {
            for line in plaintext::lines(body) {
                match plaintext::parse_line(line, now, limits) {
                    Ok(Some(dp)) => emit_under(tenant, dp, &mut f),
                    Ok(None) => {}
                    Err(e) => f(Err(e)),
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Vec<Result<(String, f64, f64), DropReason>>;

    fn run(kind: Kind, body: &[u8], tenant: Option<&str>) -> Result<Decoded, BadBody> {
        let mut out = Vec::new();
        decode(
            kind,
            body,
            tenant,
            99.0,
            &Limits::default(),
            &mut PickleDecoder::new(),
            |r| out.push(r.map(|p| (p.path.to_string(), p.value, p.timestamp))),
        )?;
        Ok(out)
    }

    #[test]
    fn content_types() {
        assert_eq!(kind_of(None), Some(Kind::HttpPlaintext));
        assert_eq!(
            kind_of(Some("text/plain; charset=utf-8")),
            Some(Kind::HttpPlaintext)
        );
        assert_eq!(kind_of(Some("application/JSON")), Some(Kind::HttpJson));
        assert_eq!(
            kind_of(Some("application/python-pickle")),
            Some(Kind::HttpPickle)
        );
        assert_eq!(kind_of(Some("application/xml")), None);
    }

    #[test]
    fn json_bodies_and_tenant_namespacing() {
        let got = run(
            Kind::HttpJson,
            br#"[{"path":"cpu","value":1.5,"timestamp":60},{"path":"acme.mem","value":2},{"path":"x"}]"#,
            Some("acme"),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Ok(("acme.cpu".into(), 1.5, 60.0)),
                Ok(("acme.mem".into(), 2.0, 99.0)),
                Err(DropReason::NanValue),
            ]
        );
        assert!(run(Kind::HttpJson, b"{\"path\":1}", None).is_err());
        assert!(run(Kind::HttpJson, b"[{\"value\":1}]", None).is_err());
        let deep = "[".repeat(5000);
        assert!(
            run(Kind::HttpJson, deep.as_bytes(), None).is_err(),
            "nesting is bounded"
        );
    }

    #[test]
    fn plaintext_and_pickle_bodies() {
        assert_eq!(
            run(Kind::HttpPlaintext, b"a 1 60\nbad\nb 2 -1\n", None).unwrap(),
            vec![
                Ok(("a".into(), 1.0, 60.0)),
                Err(DropReason::ParseError),
                Ok(("b".into(), 2.0, 99.0))
            ]
        );
        let body = b"\x80\x02]q\x00X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03a.";
        assert_eq!(
            run(Kind::HttpPickle, body, Some("t")).unwrap(),
            vec![Ok(("t.a.b".into(), 1.5, 1700000000.0))]
        );
        assert!(run(Kind::HttpPickle, b"garbage", None).is_err());
    }
}
