//! Journal record encoding (pure; no IO). The layout is in the [module docs](super).

/// Bytes before the body: body length and CRC32C.
pub(crate) const PREFIX_BYTES: usize = 8;
/// Fixed part of the body: seq, received_us, listener, kind, peer_len, tenant_len.
pub(crate) const FIXED_BODY_BYTES: usize = 21;
/// Largest body accepted when reading; anything larger is corruption.
pub(crate) const MAX_BODY_BYTES: usize = 64 << 20;

use crate::datapoint::Kind;

/// Everything about a record except its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Sequence number, assigned by the writer, increasing by one per record.
    pub seq: u64,
    /// Receive time, Unix microseconds.
    pub received_us: i64,
    /// Index of the listener in the config.
    pub listener: u16,
    /// Input kind.
    pub kind: Kind,
    /// Sender address as text (`ip:port`), at most 255 bytes.
    pub peer: String,
    /// Tenant id, empty when tenants are off; at most 255 bytes.
    pub tenant: String,
}

/// A decoded record borrowing its payload from the segment bytes.
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    /// Metadata.
    pub meta: Meta,
    /// The raw bytes as received.
    pub payload: &'a [u8],
}

/// Appends one encoded record to `out`. `peer` and `tenant` are cut to 255 bytes.
pub fn encode(meta: &Meta, payload: &[u8], out: &mut Vec<u8>) {
    let peer = &meta.peer.as_bytes()[..meta.peer.len().min(255)];
    let tenant = &meta.tenant.as_bytes()[..meta.tenant.len().min(255)];
    let body_len = FIXED_BODY_BYTES + peer.len() + tenant.len() + payload.len();
    let at = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&meta.received_us.to_le_bytes());
    out.extend_from_slice(&meta.listener.to_le_bytes());
    out.push(meta.kind as u8);
    out.push(peer.len() as u8);
    out.push(tenant.len() as u8);
    out.extend_from_slice(peer);
    out.extend_from_slice(tenant);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[body..]);
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes at some offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record says it has (a torn write, or end of data).
    Incomplete,
    /// Length out of range, CRC mismatch, or malformed fields.
    Corrupt,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decodes the record at the start of `buf`; returns it and its encoded length.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if buf.len() < PREFIX_BYTES {
        return Err(DecodeError::Incomplete);
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(FIXED_BODY_BYTES..=MAX_BODY_BYTES).contains(&body_len) {
        return Err(DecodeError::Corrupt);
    }
    let total = PREFIX_BYTES + body_len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[PREFIX_BYTES..total];
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::Corrupt);
    }
    let kind = Kind::from_u8(body[18]).ok_or(DecodeError::Corrupt)?;
    let (peer_len, tenant_len) = (body[19] as usize, body[20] as usize);
    let rest = &body[FIXED_BODY_BYTES..];
    if rest.len() < peer_len + tenant_len {
        return Err(DecodeError::Corrupt);
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Corrupt);
    let meta = Meta {
        seq: le_u64(&body[0..8]),
        received_us: le_u64(&body[8..16]) as i64,
        listener: u16::from_le_bytes([body[16], body[17]]),
        kind,
        peer: text(&rest[..peer_len])?,
        tenant: text(&rest[peer_len..peer_len + tenant_len])?,
    };
    Ok((
        Record {
            meta,
            payload: &rest[peer_len + tenant_len..],
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            seq: 7,
            received_us: 1_700_000_000_123_456,
            listener: 2,
            kind: Kind::PlaintextTcp,
            peer: "127.0.0.1:5000".into(),
            tenant: String::new(),
        }
    }

    /// Pins the byte layout documented in the module docs.
    #[test]
    fn known_answer() {
        let mut out = Vec::new();
        encode(&meta(), b"a 1 2\n", &mut out);
        let body_len = 21 + 14 + 6;
        let mut want = Vec::new();
        want.extend_from_slice(&(body_len as u32).to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&1_700_000_000_123_456i64.to_le_bytes());
        want.extend_from_slice(&2u16.to_le_bytes());
        want.extend_from_slice(&[1, 14, 0]);
        want.extend_from_slice(b"127.0.0.1:5000a 1 2\n");
        let crc = crc32c::crc32c(&want[8..]);
        want[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(out, want);
        // CRC32C (Castagnoli) check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let (rec, n) = decode(&out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(rec.meta, meta());
        assert_eq!(rec.payload, b"a 1 2\n");
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode(&meta(), b"payload bytes", &mut out);
        for cut in 0..out.len() {
            assert_eq!(
                decode(&out[..cut]).unwrap_err(),
                DecodeError::Incomplete,
                "cut {cut}"
            );
        }
        for byte in 0..out.len() {
            for bit in 0..8 {
                let mut b = out.clone();
                b[byte] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip at {byte}:{bit} went unnoticed");
            }
        }
    }
}
