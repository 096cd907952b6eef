//! carbon pickle protocol: each frame is a 4-byte big-endian unsigned body length, then a
//! body that is a pickle of a list of `(path, (timestamp, value))`.
//!
//! - [`PickleFramer`] cuts frames out of a TCP read buffer; a header that declares more
//!   than the limit ends the stream (the connection is closed, as carbon's
//!   `Int32StringReceiver` does past its `MAX_LENGTH`: what follows cannot be framed).
//! - [`PickleDecoder`] decodes a body with hard limits (see its module docs).
//! - [`encode_frames`] writes carbon's output framing with serde-pickle, protocol 2.

mod decode;
pub mod op;

pub use decode::{KEEP_BYTES, PickleDecoder};

use bytes::{Buf, Bytes, BytesMut};
use serde::ser::{Serialize, SerializeSeq, SerializeTuple, Serializer};

use crate::datapoint::{OutPoint, OutValue};

/// Length of the frame header.
pub(crate) const HEADER_BYTES: usize = 4;

/// What [`PickleFramer::next_frame`] found in the buffer.
#[derive(Debug, PartialEq)]
pub enum FrameEvent {
    /// A complete frame body.
    Frame(Bytes),
    /// A frame header declared `len` bytes, over the limit: the stream cannot be framed
    /// past it, and the framer yields nothing more.
    TooLarge(u64),
}

/// Splits a byte stream into pickle frame bodies, bounded by `max_frame_bytes`.
///
/// Invariant: the buffer never needs to hold more than one header plus `max_frame_bytes`.
#[derive(Debug)]
pub struct PickleFramer {
    max_frame_bytes: usize,
    /// An oversize header was seen: the stream is over.
    refused: bool,
}

impl PickleFramer {
    /// A framer that refuses bodies longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        PickleFramer {
            max_frame_bytes,
            refused: false,
        }
    }

    /// The next frame or oversize event, or `None` when more bytes are needed (and
    /// always after [`FrameEvent::TooLarge`], whose bytes it leaves in `buf`).
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Option<FrameEvent> {
        if self.refused || buf.len() < HEADER_BYTES {
            return None;
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame_bytes {
            self.refused = true;
            return Some(FrameEvent::TooLarge(len as u64));
        }
        if buf.len() < HEADER_BYTES + len {
            // No reservation for the declared length: the buffer grows with the bytes
            // that actually arrive (a 4-byte header alone must not pin a megabyte).
            return None;
        }
        buf.advance(HEADER_BYTES);
        Some(FrameEvent::Frame(buf.split_to(len).freeze()))
    }

    /// Bytes of an incomplete frame left at end of stream (counted as a bad frame; not
    /// after an oversize header, which was counted as such).
    pub(crate) fn truncated(&self, buf: &BytesMut) -> bool {
        !self.refused && !buf.is_empty()
    }

    /// Whether an oversize header ended the stream: the connection must close.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

/// Serializes as the Python value `(path, (timestamp, value))`.
struct Wire<'a>(&'a OutPoint);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&*self.0.path)?;
        match self.0.value {
            OutValue::Float(v) => t.serialize_element(&(self.0.timestamp, v))?,
            OutValue::Int(v) => t.serialize_element(&(self.0.timestamp, v))?,
        }
        t.end()
    }
}

struct WireList<'a>(&'a [OutPoint]);

impl Serialize for WireList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            seq.serialize_element(&Wire(p))?;
        }
        seq.end()
    }
}

/// Appends carbon pickle frames for `points` to `out`: at most `per_frame` datapoints per
/// frame (carbon's MAX_DATAPOINTS_PER_MESSAGE, 500), each a 4-byte big-endian length and a
/// protocol-2 pickle of a list of `(str path, (float timestamp, float|int value))` tuples.
///
/// Errors: only if serde-pickle fails, which it does not for these types.
///
/// ```
/// use aggd::codec::pickle::encode_frames;
/// use aggd::datapoint::{OutPoint, OutValue};
///
/// let p = OutPoint { path: "a.count".into(), timestamp: 60.0, value: OutValue::Int(3), interval: None };
/// let mut out = Vec::new();
/// encode_frames(&[p], 500, &mut out).unwrap();
/// let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
/// assert_eq!(len, out.len() - 4);
/// assert_eq!(&out[4..6], b"\x80\x02"); // pickle protocol 2
/// ```
pub fn encode_frames(
    points: &[OutPoint],
    per_frame: usize,
    out: &mut Vec<u8>,
) -> Result<(), serde_pickle::Error> {
    for chunk in points.chunks(per_frame.max(1)) {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        serde_pickle::to_writer(
            out,
            &WireList(chunk),
            serde_pickle::SerOptions::new().proto_v2(),
        )?;
        let len = (out.len() - at - HEADER_BYTES) as u32;
        out[at..at + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
