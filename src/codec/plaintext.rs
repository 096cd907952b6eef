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
use crate::drops::DropReason;

/// Whether `b` separates fields (ASCII subset of Python's whitespace).
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

/// Splits one line (without its `\n`) into whitespace-separated fields.
#[inline]
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| is_space(*b)).filter(|f| !f.is_empty())
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
/// use aggd::drops::DropReason;
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
    let mut it = fields(line);
    let Some(path) = it.next() else {
        return Ok(None);
    };
    let (Some(value), Some(timestamp), None) = (it.next(), it.next(), it.next()) else {
        return Err(DropReason::ParseError);
    };
    let path = std::str::from_utf8(path).map_err(|_| DropReason::BadUtf8)?;
    let value = parse_float(value).ok_or(DropReason::ParseError)?;
    let timestamp = parse_float(timestamp).ok_or(DropReason::ParseError)?;
    finish_point(path, timestamp, value, now, limits).map(Some)
}

/// Python `float()` on ASCII bytes. A fast path handles plain integers of up to 15 digits
/// (exact in f64); everything else goes through `f64::from_str`, and a last try removes
/// digit-group underscores (`1_000`).
pub fn parse_float(b: &[u8]) -> Option<f64> {
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        let n = b.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        return Some(n as f64);
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
    chunk.split(|b| *b == b'\n')
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
pub fn encode_lines(points: &[crate::datapoint::OutPoint], out: &mut Vec<u8>) {
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
        for s in ["0", "7", "123456789012345", "000001"] {
            assert_eq!(parse_float(s.as_bytes()), s.parse::<f64>().ok());
        }
        assert_eq!(
            parse_float(b"1234567890123456789"),
            Some(1234567890123456789.0)
        );
        assert_eq!(parse_float(b""), None);
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
                lines_seen.extend(c[..c.len() - 1].split(|b| *b == b'\n').map(|l| l.to_vec()));
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
