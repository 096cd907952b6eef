//! Decoders for the carbon input protocols: pure functions over `&[u8]`, no IO, no tokio.
//!
//! - [`plaintext`]: carbon plaintext lines, `path value timestamp\n`.
//! - [`pickle`]: carbon pickle frames, a bounded decoder for untrusted input and the encoder
//!   for output.
//!
//! Both end in [`finish_point`], carbon's common receive steps (`metricReceived`).

pub mod http;
pub mod pickle;
pub mod plaintext;

use crate::datapoint::{Datapoint, Kind};
use crate::reason::DropReason;

/// Hard limits applied by the decoders to untrusted input. All sizes in bytes. Also the
/// `[limits]` config section as written (every key optional, unknown keys refused).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest plaintext line, newline excluded (carbon: 16384, where it closes the
    /// connection; aggd drops the line).
    pub max_line_bytes: usize,
    /// Longest metric path accepted from any protocol.
    pub max_path_bytes: usize,
    /// Largest pickle frame body (carbon's PICKLE_RECEIVER_MAX_LENGTH, 1 MiB).
    pub max_pickle_frame_bytes: usize,
    /// Deepest nesting of MARKs (open tuples/lists) in a pickle frame.
    pub max_pickle_depth: usize,
    /// Most objects (values, marks and memo slots) one pickle frame may create.
    pub max_pickle_objects: usize,
    /// Largest HTTP ingest body, compressed and decoded.
    pub max_http_body_bytes: usize,
    /// Kernel receive buffer requested for UDP listeners (capped by net.core.rmem_max).
    pub udp_receive_buffer_bytes: usize,
    /// Most datagram bytes a UDP listener holds in memory between receiving and
    /// decoding; datagrams past it are dropped as `queue_full` (counted, ledgered, and
    /// journaled first, so replay recovers them).
    pub udp_queue_bytes: usize,
    /// Most open TCP connections (plaintext and pickle) over all listeners; a connection
    /// past it is closed at once and counted (`connections_refused`).
    pub max_connections: usize,
    /// Most HTTP ingest requests processed at once per HTTP listener; past it, 503 and
    /// counted (`connections_refused`).
    pub max_http_requests: usize,
    /// Bytes all connections' private route caches may hold together (each entry is
    /// charged its path plus 64); past it, lookups go to the shared route cache.
    pub private_route_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 16384,
            max_path_bytes: 4096,
            max_pickle_frame_bytes: 1 << 20,
            max_pickle_depth: 32,
            max_pickle_objects: 1 << 20,
            max_http_body_bytes: 16 << 20,
            udp_receive_buffer_bytes: 32 << 20,
            udp_queue_bytes: 64 << 20,
            max_connections: 1024,
            max_http_requests: 32,
            private_route_cache_bytes: 64 << 20,
        }
    }
}

/// Decodes one frame of input `kind` received at `now` (Unix s; it replaces `-1`
/// timestamps), calling `f` with each datapoint or per-element rejection, in order: the
/// one decode step per input kind, shared by the start-up rebuild and `aggd replay`
/// (listeners call the same decoders through [`crate::ingest::Ingest`]).
///
/// - plaintext (TCP run of lines, UDP datagram, HTTP body): [`plaintext::parse_line`] per line;
/// - pickle (TCP frame body, HTTP body): [`pickle::PickleDecoder`];
/// - HTTP bodies: [`http::decode`], with paths put under `tenant` when it is given.
///
/// Errors: the frame is unusable as a whole ([`DropReason::BadFrame`] or the pickle
/// decoder's reason); datapoints decoded before that were passed to `f`.
pub fn decode_frame(
    kind: Kind,
    payload: &[u8],
    tenant: Option<&str>,
    now: f64,
    limits: &Limits,
    decoder: &mut pickle::PickleDecoder,
    mut f: impl FnMut(Result<Datapoint<'_>, DropReason>),
) -> Result<(), DropReason> {
    match kind {
        Kind::PlaintextTcp | Kind::PlaintextUdp => {
            for line in plaintext::lines(payload) {
                match plaintext::parse_line(line, now, limits) {
                    Ok(Some(dp)) => f(Ok(dp)),
                    Ok(None) => {}
                    Err(r) => f(Err(r)),
                }
            }
            Ok(())
        }
        Kind::PickleTcp => decoder.decode(payload, now, limits, f),
        Kind::HttpPlaintext | Kind::HttpPickle | Kind::HttpJson => {
            http::decode(kind, payload, tenant, now, limits, decoder, f)
                .map_err(|_| DropReason::BadFrame)
        }
    }
}

/// carbon's receive steps after parsing, with aggd's deliberate differences:
///
/// 1. an empty path or one over `max_path_bytes` → [`DropReason::BadPath`];
/// 2. a NaN value → [`DropReason::NanValue`] (carbon drops it uncounted);
/// 3. an infinite or NaN timestamp → [`DropReason::BadTimestamp`] (carbon raises and drops
///    the connection);
/// 4. a timestamp whose integer part is `-1` (`-1`, `-1.0`, `-1.9`) becomes `now`.
pub fn finish_point<'a>(
    path: &'a str,
    timestamp: f64,
    value: f64,
    now: f64,
    limits: &Limits,
) -> Result<Datapoint<'a>, DropReason> {
    if path.is_empty() || path.len() > limits.max_path_bytes {
        return Err(DropReason::BadPath);
    }
    if value.is_nan() {
        return Err(DropReason::NanValue);
    }
    if !timestamp.is_finite() {
        return Err(DropReason::BadTimestamp);
    }
    let timestamp = if timestamp.trunc() == -1.0 {
        now
    } else {
        timestamp
    };
    Ok(Datapoint {
        path,
        timestamp,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_one_means_now() {
        let l = Limits::default();
        for ts in [-1.0, -1.9, -1.5] {
            assert_eq!(
                finish_point("a", ts, 1.0, 99.5, &l).unwrap().timestamp,
                99.5
            );
        }
        assert_eq!(
            finish_point("a", -2.0, 1.0, 99.5, &l).unwrap().timestamp,
            -2.0
        );
        assert_eq!(
            finish_point("a", -0.5, 1.0, 99.5, &l).unwrap().timestamp,
            -0.5
        );
    }

    #[test]
    fn rejects_in_order() {
        let l = Limits::default();
        assert_eq!(
            finish_point("", 1.0, 1.0, 0.0, &l),
            Err(DropReason::BadPath)
        );
        let long = "a".repeat(l.max_path_bytes + 1);
        assert_eq!(
            finish_point(&long, 1.0, 1.0, 0.0, &l),
            Err(DropReason::BadPath)
        );
        assert_eq!(
            finish_point("a", 1.0, f64::NAN, 0.0, &l),
            Err(DropReason::NanValue)
        );
        assert_eq!(
            finish_point("a", f64::INFINITY, 1.0, 0.0, &l),
            Err(DropReason::BadTimestamp)
        );
        assert_eq!(
            finish_point("a", f64::NAN, 1.0, 0.0, &l),
            Err(DropReason::BadTimestamp)
        );
        let p = finish_point("a", 5.0, f64::NEG_INFINITY, 0.0, &l).unwrap();
        assert_eq!(p.value, f64::NEG_INFINITY);
    }
}
