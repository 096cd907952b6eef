//! The message format on the cluster stream (pure; no IO).
//!
//! One message carries the datapoints of one shard from a run of an ingest node's journal
//! records, grouped by output series. All integers little-endian; floats IEEE-754
//! binary64.
//!
//! ```text
//! message  = version:u8 (= 1) digest:u64 incarnation:u64 lane:u16 watermark:u64
//!            first_seq:u64 last_seq:u64 node_len:u8 node
//!            series_count:u32 series*
//!            section_count:u32 section*
//! series   = name_len:u16 name method_len:u8 method frequency:u32
//! section  = seq:u64 count:u32 point*
//! point    = head:varint timestamp value
//! head     = series_index << 2 | int_timestamp << 1 | int_value
//! timestamp = zigzag-varint(ts − previous ts of the section, 0 at its start)  (int_timestamp)
//!           | ts:f64                                                          (otherwise)
//! value    = zigzag-varint(value)  (int_value) | value:f64  (otherwise)
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first); zigzag maps `n` to `2n` and `−n` to
//! `2n − 1`. A timestamp or value is sent as an integer only when it is one exactly (no
//! fraction, magnitude below 2^53, not −0.0), so decoding gives the same f64 bit for bit.
//! A typical datapoint of whole-second timestamps and integer values takes 4 bytes, not
//! 20.
//!
//! - `digest`: the sender's rules digest ([`super::rules_digest`]).
//! - `incarnation`: the sender's journal identity (a random number made with its journal
//!   directory), so a node whose journal was lost and begun anew is a new origin.
//! - `lane`: which of the sender's publisher threads sent it. Lane `l` of `L` publishes
//!   the journal records whose sequence number is `l mod L`, numbered `seq / L` within
//!   the lane; every sequence number below (sections, ranges, watermark) is such a lane
//!   number, so each lane is an origin of its own with dense numbers.
//! - `watermark`: the lane's persisted republish watermark: it never sends a record
//!   below it again, so a receiver forgets what it saw below it.
//! - `first_seq..=last_seq`: the lane's records this message covers for its shard (a
//!   record in the range without a section had nothing for the shard).
//! - `method` is the aggregation method as written in a rule (`sum`, `p95`, …);
//!   `frequency` is in seconds.
//! - A section holds the points of one journal record; `seq` is [`NO_SEQ`] for points
//!   whose record was never journaled (applied whatever was seen before).

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::series::SeriesHandle;
use crate::method::Method;
use crate::route::SeriesKey;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

/// The section seq of points that no journal record holds.
pub const NO_SEQ: u64 = u64::MAX;

/// Bytes of the fixed header before the node id.
const HEADER: usize = 1 + 8 * 5 + 2 + 1;

/// Who sent a message, and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's rules digest.
    pub digest: u64,
    /// The sender's journal identity.
    pub incarnation: u64,
    /// The sender's publisher lane.
    pub lane: u16,
    /// The lane's persisted republish watermark.
    pub watermark: u64,
    /// First journal record covered.
    pub first_seq: u64,
    /// Last journal record covered.
    pub last_seq: u64,
    /// The sender's node id.
    pub node: String,
}

/// Hashes an address (a `usize` key) with one multiplication (Fibonacci hashing, Knuth
/// TAOCP vol. 3, 6.4): addresses are neither chosen by a sender nor stable, so a
/// keyed hash buys nothing here, and SipHash was a twentieth of the publisher's time.
#[derive(Default)]
pub struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        // The high bits of the product mix every bit of the address; hashbrown takes
        // its bucket from the low bits and its tag from the top 7, so fold them down.
        let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

/// Builds one message: series interned by pointer, points in sections.
#[derive(Default)]
pub struct Builder {
    series: Vec<Arc<SeriesKey>>,
    /// Keyed by the key's address (a key only; each is kept alive by `series`).
    index: HashMap<usize, u32, std::hash::BuildHasherDefault<AddressHasher>>,
    /// Encoded sections.
    body: Vec<u8>,
    sections: u32,
    /// Offset of the open section's count, and the count.
    open: Option<(usize, u32)>,
    /// The open section's previous whole-second timestamp.
    prev_ts: i64,
    points: usize,
    names_bytes: usize,
}

impl Builder {
    /// Starts a section for journal record `seq` (ends the previous one).
    pub fn section(&mut self, seq: u64) {
        self.close();
        self.body.extend_from_slice(&seq.to_le_bytes());
        self.open = Some((self.body.len(), 0));
        self.prev_ts = 0;
        self.body.extend_from_slice(&0u32.to_le_bytes());
        self.sections += 1;
    }

    fn close(&mut self) {
        if let Some((at, n)) = self.open.take() {
            if n == 0 {
                // An empty section is dropped again.
                self.body.truncate(at - 8);
                self.sections -= 1;
            } else {
                self.body[at..at + 4].copy_from_slice(&n.to_le_bytes());
            }
        }
    }

    /// Adds a point of `key` to the open section (one is opened with [`NO_SEQ`] if none
    /// is).
    pub fn push(&mut self, key: &impl SeriesHandle, timestamp: f64, value: f64) {
        if self.open.is_none() {
            self.section(NO_SEQ);
        }
        let next = self.series.len() as u32;
        let k = key.series_key();
        let i = *self
            .index
            .entry(std::ptr::from_ref(k) as usize)
            .or_insert(next);
        if i == next {
            self.names_bytes += k.name.len() + 12;
            self.series.push(key.to_arc());
        }
        let ts = exact_int(timestamp);
        let v = exact_int(value);
        let head = u64::from(i) << 2 | u64::from(ts.is_some()) << 1 | u64::from(v.is_some());
        put_varint(&mut self.body, head);
        match ts {
            Some(t) => {
                put_varint(&mut self.body, zigzag(t.wrapping_sub(self.prev_ts)));
                self.prev_ts = t;
            }
            None => self.body.extend_from_slice(&timestamp.to_le_bytes()),
        }
        match v {
            Some(v) => put_varint(&mut self.body, zigzag(v)),
            None => self.body.extend_from_slice(&value.to_le_bytes()),
        }
        if let Some((_, n)) = &mut self.open {
            *n += 1;
        }
        self.points += 1;
    }

    /// Points added.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Bytes the message would have (about; without the header).
    pub fn bytes(&self) -> usize {
        self.body.len() + self.names_bytes
    }

    /// The encoded message; the builder is empty again.
    pub fn finish(&mut self, h: &Header) -> Vec<u8> {
        self.close();
        let node = &h.node.as_bytes()[..h.node.len().min(255)];
        let mut out = Vec::with_capacity(HEADER + node.len() + 8 + self.bytes());
        out.push(VERSION);
        out.extend_from_slice(&h.digest.to_le_bytes());
        out.extend_from_slice(&h.incarnation.to_le_bytes());
        out.extend_from_slice(&h.lane.to_le_bytes());
        for v in [h.watermark, h.first_seq, h.last_seq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(node.len() as u8);
        out.extend_from_slice(node);
        out.extend_from_slice(&(self.series.len() as u32).to_le_bytes());
        for k in &self.series {
            let name = &k.name.as_bytes()[..k.name.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            let m = k.method.to_string();
            out.push(m.len() as u8);
            out.extend_from_slice(m.as_bytes());
            out.extend_from_slice(&k.frequency.to_le_bytes());
        }
        out.extend_from_slice(&self.sections.to_le_bytes());
        out.extend_from_slice(&self.body);
        *self = Builder::default();
        out
    }
}

/// `x` as an integer if it is one exactly and converts back bit for bit (|x| < 2^53,
/// no fraction, not −0.0).
#[inline]
fn exact_int(x: f64) -> Option<i64> {
    let i = x as i64;
    (x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 && (i != 0 || x.is_sign_positive()))
        .then_some(i)
}

#[inline]
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

#[inline]
fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One output series of a decoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct Series<'a> {
    /// Output metric path.
    pub name: &'a str,
    /// Aggregation method.
    pub method: Method,
    /// Interval in seconds.
    pub frequency: u32,
}

/// A decoded message.
#[derive(Debug, PartialEq)]
pub struct Message<'a> {
    /// Who sent it and what it covers.
    pub header: Header,
    /// Its series, indexed by [`Point::series`].
    pub series: Vec<Series<'a>>,
    /// Per journal record: its seq and points.
    pub sections: Vec<(u64, Vec<Point>)>,
}

/// One datapoint of a decoded message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Index into [`Message::series`].
    pub series: u32,
    /// Unix seconds.
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The version byte is not [`VERSION`].
    #[error("message version {0}, this aggd reads version {VERSION}")]
    Version(u8),
    /// The message ends early, a name is not UTF-8, a method is unknown or a point names
    /// a series the message does not have.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f64(&mut self) -> Result<f64, WireError> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(WireError::Malformed("varint longer than 10 bytes"))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| WireError::Malformed("name not UTF-8"))
    }
}

impl<'a> Cursor<'a> {
    /// The series table: count, then per series its name, method and frequency.
    fn series(&mut self) -> Result<Vec<Series<'a>>, WireError> {
        let count = self.u32()? as usize;
        if count > self.0.len() / 8 {
            return Err(WireError::Malformed("series count beyond the message"));
        }
        let mut series = Vec::with_capacity(count);
        for _ in 0..count {
            let n = self.u16()? as usize;
            let name = self.str(n)?;
            let m = self.u8()? as usize;
            let method =
                Method::parse(self.str(m)?).ok_or(WireError::Malformed("unknown method"))?;
            let frequency = self.u32()?;
            if frequency == 0 {
                return Err(WireError::Malformed("frequency 0"));
            }
            series.push(Series {
                name,
                method,
                frequency,
            });
        }
        Ok(series)
    }

    /// The sections: count, then per section its record and its points (of `series`
    /// series at most).
    fn sections(&mut self, series: usize) -> Result<Vec<(u64, Vec<Point>)>, WireError> {
        let count = self.u32()? as usize;
        if count > self.0.len() / 12 {
            return Err(WireError::Malformed("section count beyond the message"));
        }
        let mut sections = Vec::with_capacity(count);
        for _ in 0..count {
            let seq = self.u64()?;
            let n = self.u32()? as usize;
            // A point takes at least 3 bytes.
            if n > self.0.len() / 3 {
                return Err(WireError::Malformed("point count beyond the message"));
            }
            let mut points = Vec::with_capacity(n);
            let mut prev_ts = 0i64;
            for _ in 0..n {
                points.push(self.point(series, &mut prev_ts)?);
            }
            sections.push((seq, points));
        }
        Ok(sections)
    }

    /// One point: its head (series index, and whether timestamp and value are small
    /// integers), then its timestamp (a delta from `prev_ts`, or an f64) and value.
    fn point(&mut self, series: usize, prev_ts: &mut i64) -> Result<Point, WireError> {
        let head = self.varint()?;
        let index = head >> 2;
        if index >= series as u64 {
            return Err(WireError::Malformed("point of an unknown series"));
        }
        let timestamp = if head & 2 != 0 {
            *prev_ts = prev_ts.wrapping_add(unzigzag(self.varint()?));
            *prev_ts as f64
        } else {
            self.f64()?
        };
        let value = if head & 1 != 0 {
            unzigzag(self.varint()?) as f64
        } else {
            self.f64()?
        };
        Ok(Point {
            series: index as u32,
            timestamp,
            value,
        })
    }
}

/// Decodes a message. Counts are checked against the bytes left before anything is
/// allocated, so a hostile message cannot make it allocate more than its own size.
///
/// Errors: [`WireError`].
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, WireError> {
    let mut c = Cursor(bytes);
    let v = c.u8()?;
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    let digest = c.u64()?;
    let incarnation = c.u64()?;
    let lane = c.u16()?;
    let watermark = c.u64()?;
    let first_seq = c.u64()?;
    let last_seq = c.u64()?;
    let n = c.u8()? as usize;
    let node = c.str(n)?.to_string();
    let series = c.series()?;
    let sections = c.sections(series.len())?;
    if !c.0.is_empty() {
        return Err(WireError::Malformed("bytes after the last section"));
    }
    Ok(Message {
        header: Header {
            digest,
            incarnation,
            lane,
            watermark,
            first_seq,
            last_seq,
            node,
        },
        series,
        sections,
    })
}

/// The `Nats-Msg-Id` of a message: `<node>.<incarnation hex>.<lane>.<shard>.<first>-<last>`,
/// the same for a retried publish of the same message, so the stream drops the copy.
pub fn msg_id(h: &Header, shard: u32) -> String {
    format!(
        "{}.{:x}.{}.{shard}.{}-{}",
        h.node, h.incarnation, h.lane, h.first_seq, h.last_seq
    )
}

#[cfg(test)]
mod tests;
