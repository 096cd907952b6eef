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
    // Bytes above `' '` are never whitespace: one branch-free pass (it vectorizes) settles
    // the common field; one with a control byte is checked byte by byte.
    let plain = |f: &[u8]| {
        !f.is_empty()
            && (f.iter().fold(true, |ok, c| ok & (*c > b' ')) || !f.iter().any(|c| is_space(*c)))
    };
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
    parse_line_in(line, now, limits, |path| std::str::from_utf8(path).ok())
}

/// [`parse_line`] for a line of `frame`, a chunk already known to be UTF-8: the path is
/// sliced from it instead of validated again (fields end at ASCII bytes, so they are
/// whole characters). The connection's frames are validated once, not line by line.
#[inline]
pub(crate) fn parse_line_of<'a>(
    frame: &'a str,
    line: &'a [u8],
    now: f64,
    limits: &Limits,
) -> Result<Option<Datapoint<'a>>, DropReason> {
    parse_line_in(line, now, limits, |path| {
        let at = (path.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        frame.get(at..at + path.len())
    })
}

/// [`parse_line`] with the path turned into text by `text` (`None`: not UTF-8).
#[inline]
fn parse_line_in<'a>(
    line: &'a [u8],
    now: f64,
    limits: &Limits,
    text: impl FnOnce(&'a [u8]) -> Option<&'a str>,
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
    let path = text(path).ok_or(DropReason::BadUtf8)?;
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
    // An integer (the common timestamp and counter) needs no division.
    let v = match frac {
        None => m as f64,
        Some(f) => m as f64 / POW10[digits.len() - f - 1],
    };
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
mod tests;
