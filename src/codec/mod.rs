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
pub mod tagged;
pub mod write_request;

use crate::datapoint::{Datapoint, Kind};
use crate::reason::DropReason;

/// Hard limits applied by the decoders to untrusted input. All sizes in bytes. Also the
/// `[limits]` config section as written (every key optional, unknown keys refused).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
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
    /// Bytes all TCP connections and HTTP requests may hold together: read buffers with
    /// their partial lines and frames, decoded bodies, and the work items of what they
    /// are decoding. Past it, TCP reads wait (after evicting the connection idle longest,
    /// see `evict_idle_after`) and HTTP requests are answered 503.
    pub connection_memory_bytes: usize,
    /// How long a TCP connection must go without a complete line or frame before it can
    /// be evicted, at `max_connections` for a new connection or past
    /// `connection_memory_bytes` for a reading one (milliseconds). A sender that keeps
    /// sending is never evicted.
    pub evict_idle_after_ms: u64,
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
            connection_memory_bytes: 128 << 20,
            evict_idle_after_ms: 10_000,
            max_http_requests: 32,
            private_route_cache_bytes: 64 << 20,
        }
    }
}

/// Most datapoints [`decode_frame`] hands over in one run.
pub const RUN: usize = 8;

/// Why a frame is unusable as a whole (its datapoints decoded before that were handed
/// over). Either way it counts as one rejection of [`FrameError::reason`].
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// A pickle frame that cannot be decoded within the limits, or is not a list.
    Frame(DropReason),
    /// An HTTP body unusable as a whole: the message its 400 answer carries.
    Body(http::BadBody),
}

impl std::fmt::Display for FrameError {
    /// A body's message, or a frame's reason label.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Frame(r) => f.write_str(r.as_str()),
            FrameError::Body(b) => f.write_str(&b.0),
        }
    }
}

impl FrameError {
    /// The reason it is counted under: the frame's own, or `bad_frame` for a body.
    pub fn reason(&self) -> DropReason {
        match self {
            FrameError::Frame(r) => *r,
            FrameError::Body(_) => DropReason::BadFrame,
        }
    }
}

/// Decodes a run of carbon plaintext lines like [`decode_frame`], in runs of at most
/// [`RUN`] datapoints, until `f` returns false for a run of datapoints: decoding stops
/// after that run's last line. Returns the bytes decoded: `payload.len()`, or the end
/// of the line (its `\n` included) where it stopped, so the rest can be decoded as a
/// frame of its own.
pub fn decode_lines_until(
    payload: &[u8],
    now: f64,
    limits: &Limits,
    mut f: impl FnMut(Result<&[Datapoint<'_>], DropReason>) -> bool,
) -> usize {
    let empty = Datapoint {
        path: "",
        timestamp: 0.0,
        value: 0.0,
    };
    let mut run = [empty; RUN];
    let mut n = 0;
    // Where a line begins in `payload`, and where the line after it begins.
    let start_of = |line: &[u8]| line.as_ptr() as usize - payload.as_ptr() as usize;
    let end_of = |line: &[u8]| (start_of(line) + line.len() + 1).min(payload.len());
    // One UTF-8 check for the frame (most are text); a frame with a bad byte is checked
    // line by line, so only that line is refused.
    let text = std::str::from_utf8(payload).ok();
    for line in plaintext::lines(payload) {
        let parsed = match text {
            Some(t) => plaintext::parse_line_of(t, line, now, limits),
            None => plaintext::parse_line(line, now, limits),
        };
        match parsed {
            Ok(Some(dp)) => {
                run[n] = dp;
                n += 1;
                if n == RUN {
                    n = 0;
                    if !f(Ok(&run)) {
                        return end_of(line);
                    }
                }
            }
            Ok(None) => {}
            Err(r) => {
                if n > 0 {
                    let go_on = f(Ok(&run[..n]));
                    n = 0;
                    if !go_on {
                        // This line is the next piece's first.
                        return start_of(line);
                    }
                }
                f(Err(r));
            }
        }
    }
    if n > 0 {
        f(Ok(&run[..n]));
    }
    payload.len()
}

/// Decodes one frame of input `kind` received at `now` (Unix s; it replaces `-1`
/// timestamps): the one decode step per input kind, used by the listeners, the start-up
/// rebuild and `aggd replay` alike. Calls `f` in frame order with runs of at most [`RUN`]
/// accepted datapoints (so the caller can look several routes up at once) and with each
/// per-line or per-element rejection on its own, after the datapoints before it.
///
/// - plaintext (TCP run of lines, UDP datagram): [`plaintext::parse_line`] per line;
/// - pickle (TCP frame body): [`pickle::PickleDecoder::decode_runs`];
/// - HTTP bodies: [`http::decode`], with paths put under `tenant` when it is given.
///
/// Allocates nothing per datapoint (`decoder` keeps its scratch between frames).
///
/// Errors: the frame is unusable as a whole ([`FrameError`]).
pub fn decode_frame(
    kind: Kind,
    payload: &[u8],
    tenant: Option<&str>,
    now: f64,
    limits: &Limits,
    decoder: &mut pickle::PickleDecoder,
    mut f: impl FnMut(Result<&[Datapoint<'_>], DropReason>),
) -> Result<(), FrameError> {
    match kind {
        Kind::PlaintextTcp | Kind::PlaintextUdp => {
            decode_lines_until(payload, now, limits, |r| {
                f(r);
                true
            });
            Ok(())
        }
        Kind::PickleTcp => decoder
            .decode_runs(payload, now, limits, RUN, f)
            .map_err(FrameError::Frame),
        Kind::HttpPlaintext | Kind::HttpPickle | Kind::HttpJson => {
            http::decode(kind, payload, tenant, now, limits, decoder, |r| match r {
                Ok(dp) => f(Ok(std::slice::from_ref(&dp))),
                Err(reason) => f(Err(reason)),
            })
            .map_err(FrameError::Body)
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
    // `trunc(timestamp) == -1` (carbon's `-1` = now, any fraction), without a libm call.
    let timestamp = if timestamp <= -1.0 && timestamp > -2.0 {
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

    /// The paths `decode_lines_until` hands over, and where it stopped, when `f` asks to
    /// stop after `runs` runs.
    fn until(payload: &str, runs: usize) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let mut n = 0;
        let used = decode_lines_until(payload.as_bytes(), 0.0, &Limits::default(), |r| match r {
            Ok(run) => {
                seen.extend(run.iter().map(|d| d.path.to_string()));
                n += 1;
                n < runs
            }
            Err(_) => {
                seen.push("!".into());
                true
            }
        });
        (seen, used)
    }

    #[test]
    fn lines_stop_after_a_run_and_the_rest_is_whole_lines() {
        let text: String = (0..20).map(|i| format!("p{i} 1 1\n")).collect();
        // Not stopped: everything.
        let (all, used) = until(&text, usize::MAX);
        assert_eq!((all.len(), used), (20, text.len()));
        // Stopped after the first run: RUN lines, cut at a line's end.
        let (first, used) = until(&text, 1);
        assert_eq!(first.len(), RUN);
        assert_eq!(
            &text[..used],
            &text[..text.find(&format!("p{RUN} ")).unwrap()]
        );
        // The rest decodes as a frame of its own, to the same datapoints.
        let (rest, _) = until(&text[used..], usize::MAX);
        assert_eq!([first, rest].concat(), all);
        // A bad line after a stopping run starts the rest; a final line without `\n`
        // is whole.
        let (seen, used) = until("a 1 1\nbad\nb 1 1", 1);
        assert_eq!((seen, used), (vec!["a".to_string()], 6));
        let (seen, used) = until("a 1 1\nbad\nb 1 1", usize::MAX);
        assert_eq!(seen, ["a", "!", "b"]);
        assert_eq!(used, 15);
    }

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
