//! carbon plaintext protocol: `path value timestamp\n`.
//!
//! Grammar (what aggd accepts; `docs/protocols.md` has the full table):
//! - A line ends at `\n`. Fields are separated by runs of ASCII whitespace: space, `\t`,
//!   `\r`, `\v`, `\f` and `\x1c`–`\x1f` (Python's `str.split()` set restricted to ASCII), so
//!   a trailing `\r` is ignored. A line must have exactly three fields; a blank line is
//!   skipped uncounted.
//! - The path must be UTF-8; value and timestamp follow Python's `float()`: decimal or
//!   exponent notation, optional sign, `inf`/`infinity`/`nan` in any case, and single `_`
//!   between digits.
//! - Then [`finish_point`]: NaN values dropped, non-finite timestamps rejected, `-1` = now.
//!
//! Differences from carbon-aggregator 1.1.x, on purpose: a bad line (bad UTF-8, over-long,
//! non-finite timestamp) rejects that line alone instead of closing the connection; a last
//! line without `\n` at EOF is accepted.

use bytes::{Bytes, BytesMut};

use super::{Limits, finish_point};
use crate::datapoint::Datapoint;
use crate::reason::DropReason;

/// Whether `b` separates fields (ASCII subset of Python's whitespace).
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

/// The common form `path value timestamp` with single spaces (and an optional trailing
/// `\r`), found with two `memchr` calls; `None` sends the line to the general splitter.
#[inline]
fn simple_fields(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let a = memchr::memchr(b' ', line)?;
    let b = a + 1 + memchr::memchr(b' ', &line[a + 1..])?;
    let (path, value, ts) = (&line[..a], &line[a + 1..b], &line[b + 1..]);
    let plain = |f: &[u8]| !f.is_empty() && !f.iter().any(|c| is_space(*c));
    // Value and timestamp are short; the path is checked for other whitespace too.
    (plain(path) && plain(value) && plain(ts)).then_some((path, value, ts))
}

/// The next whitespace-separated field of `line` at or after `*pos`.
#[inline]
fn next_field<'a>(line: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let mut i = *pos;
    while i < line.len() && is_space(line[i]) {
        i += 1;
    }
    if i == line.len() {
        *pos = i;
        return None;
    }
    let start = i;
    while i < line.len() && !is_space(line[i]) {
        i += 1;
    }
    *pos = i;
    Some(&line[start..i])
}

/// Parses one plaintext line (its `\n` removed).
///
/// Returns `Ok(None)` for a blank line, `Ok(Some(datapoint))` for a good one, and the
/// reason for a rejected one: [`DropReason::LineTooLong`], [`DropReason::ParseError`],
/// [`DropReason::BadUtf8`], or one of [`finish_point`]'s. `now` (Unix seconds) replaces a
/// `-1` timestamp.
///
/// ```
/// use aggd::codec::{Limits, plaintext::parse_line};
/// use aggd::reason::DropReason;
///
/// let l = Limits::default();
/// let p = parse_line(b"web01.cpu 42.5 1700000000\r", 0.0, &l).unwrap().unwrap();
/// assert_eq!((p.path, p.value, p.timestamp), ("web01.cpu", 42.5, 1700000000.0));
/// assert_eq!(parse_line(b"web01.cpu 1 -1", 99.0, &l).unwrap().unwrap().timestamp, 99.0);
/// assert_eq!(parse_line(b"web01.cpu 1", 0.0, &l), Err(DropReason::ParseError));
/// ```
pub fn parse_line<'a>(
    line: &'a [u8],
    now: f64,
    limits: &Limits,
) -> Result<Option<Datapoint<'a>>, DropReason> {
    if line.len() > limits.max_line_bytes {
        return Err(DropReason::LineTooLong);
    }
    let (path, value, timestamp) = match simple_fields(line) {
        Some(f) => f,
        None => {
            let mut pos = 0;
            let Some(path) = next_field(line, &mut pos) else {
                return Ok(None);
            };
            let (Some(value), Some(timestamp), None) = (
                next_field(line, &mut pos),
                next_field(line, &mut pos),
                next_field(line, &mut pos),
            ) else {
                return Err(DropReason::ParseError);
            };
            (path, value, timestamp)
        }
    };
    let path = std::str::from_utf8(path).map_err(|_| DropReason::BadUtf8)?;
    let value = parse_float(value).ok_or(DropReason::ParseError)?;
    let timestamp = parse_float(timestamp).ok_or(DropReason::ParseError)?;
    finish_point(path, timestamp, value, now, limits).map(Some)
}

/// Powers of ten exactly representable in f64.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// `[-]digits[.digits]` with at most 15 digits in all: the digits as an integer `m` (below
/// 2^53, exact) divided by `10^k` (exact) is one correctly rounded IEEE division, hence the
/// same value `f64::from_str` gives (Clinger's fast path).
#[inline]
fn fast_decimal(b: &[u8]) -> Option<f64> {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut m: u64 = 0;
    let mut n = 0usize;
    let mut frac: Option<usize> = None;
    for (i, c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                n += 1;
            }
            b'.' if frac.is_none() && i > 0 && i + 1 < digits.len() => frac = Some(i),
            _ => return None,
        }
    }
    if n > 15 {
        return None;
    }
    let k = frac.map_or(0, |f| digits.len() - f - 1);
    let v = m as f64 / POW10[k];
    Some(if neg { -v } else { v })
}

/// Python `float()` on ASCII bytes. A fast path handles plain decimals of up to 15 digits
/// (see `fast_decimal`); everything else goes through `f64::from_str`, and a last try
/// removes digit-group underscores (`1_000`).
#[inline]
pub(crate) fn parse_float(b: &[u8]) -> Option<f64> {
    if let Some(v) = fast_decimal(b) {
        return Some(v);
    }
    let s = std::str::from_utf8(b).ok()?;
    if let Ok(v) = s.parse::<f64>() {
        return Some(v);
    }
    if !s.contains('_') {
        return None;
    }
    // Python allows `_` only between two digits.
    let ok = b
        .windows(3)
        .all(|w| w[1] != b'_' || (w[0].is_ascii_digit() && w[2].is_ascii_digit()))
        && b.first() != Some(&b'_')
        && b.last() != Some(&b'_');
    if !ok {
        return None;
    }
    s.replace('_', "").parse::<f64>().ok()
}

/// Iterates over the lines of a chunk of complete lines; the empty piece after a final `\n`
/// is yielded as a blank line, which [`parse_line`] skips.
pub fn lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(chunk);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Cuts runs of complete lines out of a TCP read buffer, dropping over-long lines without
/// buffering them.
///
/// Invariant: after [`LineFramer::next_chunk`], the buffer holds at most `max_line_bytes`
/// bytes of one unfinished line, so a connection's memory is bounded by the read size plus
/// that.
#[derive(Debug)]
pub struct LineFramer {
    max_line_bytes: usize,
    /// Inside an over-long line: bytes are thrown away up to and including the next `\n`.
    discarding: bool,
}

/// What [`LineFramer::next_chunk`] found.
#[derive(Debug, Default)]
pub struct Framed {
    /// Complete lines, each ending in `\n` (`None` when there are none yet).
    pub chunk: Option<Bytes>,
    /// Over-long lines thrown away (counted as [`DropReason::LineTooLong`]).
    pub too_long: u64,
}

impl LineFramer {
    /// A framer that drops lines longer than `max_line_bytes` (newline excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        LineFramer {
            max_line_bytes,
            discarding: false,
        }
    }

    /// Takes every complete line out of `buf`.
    pub fn next_chunk(&mut self, buf: &mut BytesMut) -> Framed {
        let mut out = Framed::default();
        if self.discarding {
            match buf.iter().position(|b| *b == b'\n') {
                Some(p) => {
                    let _ = buf.split_to(p + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return out;
                }
            }
        }
        if let Some(p) = buf.iter().rposition(|b| *b == b'\n') {
            out.chunk = Some(buf.split_to(p + 1).freeze());
        }
        if buf.len() > self.max_line_bytes {
            buf.clear();
            self.discarding = true;
            out.too_long += 1;
        }
        out
    }

    /// At end of stream: the unfinished last line, if any (accepted without its `\n`).
    pub fn finish(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        if self.discarding || buf.is_empty() {
            buf.clear();
            return None;
        }
        Some(buf.split().freeze())
    }
}

/// Appends carbon plaintext lines `path value timestamp\n` for `points` to `out`.
///
/// Values: integers (`count`) as integers; floats in Rust's shortest round-trip decimal form
/// (carbon prints 10 decimals and loses precision); `inf`, `-inf` and `NaN` as Python's
/// `float()` reads them. Timestamps are truncated to whole seconds, as carbon does.
pub(crate) fn encode_lines(points: &[crate::datapoint::OutPoint], out: &mut Vec<u8>) {
    use crate::datapoint::OutValue;
    use std::io::Write;
    for p in points {
        out.extend_from_slice(p.path.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = match p.value {
            OutValue::Int(v) => writeln!(out, " {v} {}", p.timestamp as i64),
            OutValue::Float(v) => writeln!(out, " {v} {}", p.timestamp as i64),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Datapoint<'_>>, DropReason> {
        parse_line(s.as_bytes(), 1000.0, &Limits::default())
    }

    fn point(s: &str) -> (String, f64, f64) {
        let p = parse(s).unwrap().unwrap();
        (p.path.to_string(), p.value, p.timestamp)
    }

    #[test]
    fn good_lines() {
        assert_eq!(
            point("a.b 1.5 1700000000"),
            ("a.b".into(), 1.5, 1700000000.0)
        );
        assert_eq!(point("  a.b\t2   3\r"), ("a.b".into(), 2.0, 3.0));
        assert_eq!(point("a 1e1 +7"), ("a".into(), 10.0, 7.0));
        assert_eq!(point("a .5 5."), ("a".into(), 0.5, 5.0));
        assert_eq!(point("a 1_000 10"), ("a".into(), 1000.0, 10.0));
        assert_eq!(point("a Infinity 10").1, f64::INFINITY);
        assert_eq!(point("a -inf 10").1, f64::NEG_INFINITY);
        assert_eq!(point("a 1 -1").2, 1000.0);
        assert_eq!(point("a 1 -1.9").2, 1000.0);
        assert_eq!(point("a 1 1700000000.25").2, 1700000000.25);
        assert_eq!(
            point("cpu;host=web01;env=prod 4 10").0,
            "cpu;host=web01;env=prod"
        );
        assert_eq!(point("a\x1c1\x1f2"), ("a".into(), 1.0, 2.0));
        assert_eq!(point("ünïcode.path 1 2").0, "ünïcode.path");
    }

    #[test]
    fn rejected_lines() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse(" \r"), Ok(None));
        assert_eq!(parse("a 1"), Err(DropReason::ParseError));
        assert_eq!(parse("a 1 2 3"), Err(DropReason::ParseError));
        assert_eq!(parse("a x 2"), Err(DropReason::ParseError));
        assert_eq!(parse("a 0x10 2"), Err(DropReason::ParseError));
        assert_eq!(parse("a 1,5 2"), Err(DropReason::ParseError));
        assert_eq!(parse("a 1__0 2"), Err(DropReason::ParseError));
        assert_eq!(parse("a _10 2"), Err(DropReason::ParseError));
        assert_eq!(parse("a nan 2"), Err(DropReason::NanValue));
        assert_eq!(parse("a 1 inf"), Err(DropReason::BadTimestamp));
        assert_eq!(parse("a 1 NaN"), Err(DropReason::BadTimestamp));
        assert_eq!(
            parse_line(b"a\xff 1 2", 0.0, &Limits::default()),
            Err(DropReason::BadUtf8)
        );
        let long = format!("{} 1 2", "a".repeat(20000));
        assert_eq!(parse(&long), Err(DropReason::LineTooLong));
    }

    #[test]
    fn encoded_lines_parse_back() {
        use crate::datapoint::{OutPoint, OutValue};
        let pts = [
            OutPoint {
                path: "a.sum".into(),
                timestamp: 1700000040.0,
                value: OutValue::Float(0.1),
            },
            OutPoint {
                path: "a.count".into(),
                timestamp: 1700000040.9,
                value: OutValue::Int(7),
            },
            OutPoint {
                path: "a.max".into(),
                timestamp: 60.0,
                value: OutValue::Float(f64::NEG_INFINITY),
            },
        ];
        let mut out = Vec::new();
        encode_lines(&pts, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "a.sum 0.1 1700000040\na.count 7 1700000040\na.max -inf 60\n"
        );
        let back: Vec<_> = lines(&out)
            .filter_map(|l| parse_line(l, 0.0, &Limits::default()).unwrap())
            .map(|p| p.value)
            .collect();
        assert_eq!(back, [0.1, 7.0, f64::NEG_INFINITY]);
    }

    #[test]
    fn fast_path_agrees_with_std() {
        for s in [
            "0",
            "7",
            "123456789012345",
            "000001",
            "1.5",
            "-2.25",
            "0.1",
            "3.14159265358979",
            "-0",
            "-0.0",
            "99999999.9999999",
            "1700000000",
            "1700000000.25",
            "0.000000000000001",
        ] {
            assert_eq!(parse_float(s.as_bytes()), s.parse::<f64>().ok(), "{s}");
            assert_eq!(
                parse_float(s.as_bytes()).map(f64::to_bits),
                s.parse::<f64>().ok().map(f64::to_bits),
                "{s} bits"
            );
        }
        // Not fast-path forms still parse like std: exponents, long mantissas, signs.
        for s in ["1e3", "+7", ".5", "5.", "1234567890123456.5", "-.5"] {
            assert_eq!(parse_float(s.as_bytes()), s.parse::<f64>().ok(), "{s}");
        }
        assert_eq!(
            parse_float(b"1234567890123456789"),
            Some(1234567890123456789.0)
        );
        assert_eq!(parse_float(b""), None);
    }

    proptest::proptest! {
        /// The fast path gives bit-identical results to `f64::from_str`.
        #[test]
        fn fast_decimal_matches_std(int in 0u64..10_000_000_000, frac in 0u64..100_000, digits in 0usize..6, neg: bool) {
            let s = if digits == 0 {
                format!("{}{int}", if neg { "-" } else { "" })
            } else {
                format!("{}{int}.{:0width$}", if neg { "-" } else { "" }, frac % 10u64.pow(digits as u32), width = digits)
            };
            proptest::prop_assert_eq!(
                parse_float(s.as_bytes()).map(f64::to_bits),
                s.parse::<f64>().ok().map(f64::to_bits),
                "{}", s
            );
        }
    }

    /// Feeds `input` to a framer split at `cut`, returning all lines seen and the count of
    /// over-long ones.
    fn frame_split(input: &[u8], cut: usize, max: usize) -> (Vec<Vec<u8>>, u64) {
        let mut f = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut lines_seen = Vec::new();
        let mut too_long = 0;
        for part in [&input[..cut], &input[cut..]] {
            buf.extend_from_slice(part);
            let out = f.next_chunk(&mut buf);
            too_long += out.too_long;
            if let Some(c) = out.chunk {
                assert_eq!(c.last(), Some(&b'\n'));
                lines_seen.extend(c[..c.len() - 1].split(|b| *b == b'\n').map(<[u8]>::to_vec));
            }
            assert!(buf.len() <= max);
        }
        if let Some(rest) = f.finish(&mut buf) {
            lines_seen.push(rest.to_vec());
        }
        (lines_seen, too_long)
    }

    #[test]
    fn framer_split_at_every_byte() {
        let long = "x".repeat(40);
        let input = format!("a 1 2\nbb 3 4\n{long} 5 6\nc 7 8\nlast 9 10");
        for cut in 0..=input.len() {
            let (lines_seen, too_long) = frame_split(input.as_bytes(), cut, 20);
            let strs: Vec<_> = lines_seen
                .iter()
                .map(|l| String::from_utf8(l.clone()).unwrap())
                .filter(|l| l.len() <= 20)
                .collect();
            assert_eq!(
                strs,
                ["a 1 2", "bb 3 4", "c 7 8", "last 9 10"],
                "cut at {cut}"
            );
            // The long line is dropped by the framer (when it sees it unfinished) or by
            // parse_line (when it arrives whole): exactly once either way.
            let whole_long = lines_seen.iter().filter(|l| l.len() > 20).count() as u64;
            assert_eq!(too_long + whole_long, 1, "cut at {cut}");
        }
    }

    #[test]
    fn framer_drops_long_line_across_reads() {
        let mut f = LineFramer::new(8);
        let mut buf = BytesMut::from(&b"ok 1 2\n0123456789"[..]);
        let out = f.next_chunk(&mut buf);
        assert_eq!(out.chunk.as_deref(), Some(&b"ok 1 2\n"[..]));
        assert_eq!(out.too_long, 1);
        buf.extend_from_slice(b"abcdef");
        assert!(f.next_chunk(&mut buf).chunk.is_none());
        buf.extend_from_slice(b"gh\nz 1 2\n");
        let out = f.next_chunk(&mut buf);
        assert_eq!(out.chunk.as_deref(), Some(&b"z 1 2\n"[..]));
        assert_eq!(out.too_long, 0);
        assert!(f.finish(&mut buf).is_none());
    }
}
