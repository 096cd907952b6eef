//! Journal record encoding (pure; no IO). The layout is in the [module docs](super).

/// Bytes before the body: body length and CRC32C.
pub(crate) const PREFIX_BYTES: usize = 8;
/// Fixed part of the body: seq, received_us, listener, kind, peer_len, tenant_len.
pub(crate) const FIXED_BODY_BYTES: usize = 21;
/// Largest body accepted when reading; anything larger is corruption.
pub(crate) const MAX_BODY_BYTES: usize = 64 << 20;

use crate::datapoint::Kind;
use crate::reason::DropReason;

/// The bit of the kind byte that says a verdict follows the tenant.
const VERDICT_FLAG: u8 = 0x80;

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
    /// The datapoints refused at receive time (empty: every one was accepted).
    pub verdict: Verdict,
}

/// Which datapoints of a record the connection refused when it received them, and why:
/// the receive-time decisions that depend on state a re-read cannot see (the tenant
/// registry, rate and series limits, the white/blacklists). Whatever reads the record
/// again (the start-up rebuild, the cluster publisher, `aggd replay`) skips them, so it
/// aggregates exactly what the live path aggregated (invariant 6 of `DESIGN.md`).
///
/// Items are numbered in decode order from 0, counting every result of
/// [`crate::codec::decode_frame`] for the record's payload: each datapoint and each
/// rejected line or element is one item. Runs of items are kept in increasing order,
/// adjacent runs of one reason merged.
///
/// On disk (after the tenant, when bit 0x80 of `kind` is set):
/// `len:u32 (refusal)*` where `refusal = reason:u8 gap:uvarint count:uvarint`, `gap` being
/// the first item minus the end of the previous run (0 for the first run), LEB128 varints,
/// and `reason` one of [`REFUSAL_CODES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Runs of refused items, increasing, not overlapping.
    runs: Vec<Refused>,
}

/// A run of consecutive refused items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The first item.
    pub first: u32,
    /// Items in the run (at least 1).
    pub count: u32,
    /// Why they were refused.
    pub reason: DropReason,
}

/// The on-disk code of each reason a verdict can hold (the receive-time refusals); the
/// position is the code minus one. Append only.
pub const REFUSAL_CODES: [DropReason; 8] = [
    DropReason::TenantDeleted,
    DropReason::TenantBlocked,
    DropReason::TenantUnknown,
    DropReason::RateLimited,
    DropReason::SeriesLimit,
    DropReason::Blacklist,
    DropReason::Whitelist,
    DropReason::QueueFull,
];

fn refusal_code(reason: DropReason) -> Option<u8> {
    REFUSAL_CODES
        .iter()
        .position(|r| *r == reason)
        .map(|i| i as u8 + 1)
}

impl Verdict {
    /// Every item refused for `reason` (a UDP datagram the decode queue had no room for).
    pub fn all(reason: DropReason) -> Verdict {
        let mut v = Verdict::default();
        if refusal_code(reason).is_some() {
            v.runs.push(Refused {
                first: 0,
                count: u32::MAX,
                reason,
            });
        }
        v
    }

    /// Whether every item was accepted.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Forgets every refusal (keeps the allocation).
    pub fn clear(&mut self) {
        self.runs.clear();
    }

    /// The runs of refused items, in order.
    pub fn runs(&self) -> &[Refused] {
        &self.runs
    }

    /// Items refused in all.
    pub fn refused(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.count)).sum()
    }

    /// Records that `item` was refused for `reason`. Items must come in increasing order;
    /// a reason no verdict holds (see [`REFUSAL_CODES`]) is ignored: it is decided again,
    /// the same way, by whatever reads the record.
    pub fn refuse(&mut self, item: u32, reason: DropReason) {
        if refusal_code(reason).is_none() {
            return;
        }
        if let Some(last) = self.runs.last_mut() {
            debug_assert!(item >= last.first + last.count, "items out of order");
            if last.reason == reason && last.first + last.count == item {
                last.count += 1;
                return;
            }
        }
        self.runs.push(Refused {
            first: item,
            count: 1,
            reason,
        });
    }

    /// Why `item` was refused, or `None`; `cursor` (start at 0) keeps the place between
    /// calls, which must come with increasing items.
    #[inline]
    pub fn refused_at(&self, cursor: &mut usize, item: u32) -> Option<DropReason> {
        while let Some(r) = self.runs.get(*cursor) {
            if item < r.first {
                return None;
            }
            if item < r.first + r.count {
                return Some(r.reason);
            }
            *cursor += 1;
        }
        None
    }

    /// Encoded size in bytes, without the length prefix.
    fn encoded_len(&self) -> usize {
        let mut end = 0;
        self.runs
            .iter()
            .map(|r| {
                let n = 1 + uvarint_len(r.first - end) + uvarint_len(r.count);
                end = r.first + r.count;
                n
            })
            .sum()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        let mut end = 0;
        for r in &self.runs {
            out.push(refusal_code(r.reason).unwrap_or(0));
            put_uvarint(out, r.first - end);
            put_uvarint(out, r.count);
            end = r.first + r.count;
        }
    }

    fn decode(mut b: &[u8]) -> Result<Verdict, DecodeError> {
        let mut v = Verdict::default();
        let mut end = 0u32;
        while let Some((&code, rest)) = b.split_first() {
            let reason = *REFUSAL_CODES
                .get(usize::from(code).wrapping_sub(1))
                .ok_or(DecodeError::Corrupt)?;
            let (gap, rest) = get_uvarint(rest)?;
            let (count, rest) = get_uvarint(rest)?;
            let first = end.checked_add(gap).ok_or(DecodeError::Corrupt)?;
            end = first.checked_add(count).ok_or(DecodeError::Corrupt)?;
            if count == 0 {
                return Err(DecodeError::Corrupt);
            }
            v.runs.push(Refused {
                first,
                count,
                reason,
            });
            b = rest;
        }
        Ok(v)
    }
}

fn uvarint_len(mut v: u32) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_uvarint(b: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(5) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let v = u32::try_from(v).map_err(|_| DecodeError::Corrupt)?;
            return Ok((v, &b[i + 1..]));
        }
    }
    Err(DecodeError::Corrupt)
}

/// Bytes `meta` and a payload of `payload_len` bytes take in a segment, prefix included.
pub fn encoded_len(meta: &Meta, payload_len: usize) -> usize {
    let verdict = if meta.verdict.is_empty() {
        0
    } else {
        4 + meta.verdict.encoded_len()
    };
    PREFIX_BYTES
        + FIXED_BODY_BYTES
        + meta.peer.len().min(255)
        + meta.tenant.len().min(255)
        + verdict
        + payload_len
}

/// A decoded record borrowing its payload from the segment bytes.
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    /// Metadata.
    pub meta: Meta,
    /// The raw bytes as received.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Its receive time, Unix seconds (fractional): what stands in for a datapoint's `-1`
    /// timestamp and dates drops without a timestamp of their own.
    pub fn received_at(&self) -> f64 {
        self.meta.received_us as f64 / 1e6
    }

    /// Its tenant, `None` when tenants were off when it was received.
    pub fn tenant(&self) -> Option<&str> {
        Some(self.meta.tenant.as_str()).filter(|t| !t.is_empty())
    }

    /// Bytes it takes in its segment, prefix included ([`encoded_len`]).
    pub fn encoded_len(&self) -> usize {
        encoded_len(&self.meta, self.payload.len())
    }
}

/// Appends one encoded record to `out`. `peer` and `tenant` are cut to 255 bytes.
pub fn encode(meta: &Meta, payload: &[u8], out: &mut Vec<u8>) {
    let peer = &meta.peer.as_bytes()[..meta.peer.len().min(255)];
    let tenant = &meta.tenant.as_bytes()[..meta.tenant.len().min(255)];
    let body_len = encoded_len(meta, payload.len()) - PREFIX_BYTES;
    let at = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&meta.received_us.to_le_bytes());
    out.extend_from_slice(&meta.listener.to_le_bytes());
    let flag = if meta.verdict.is_empty() {
        0
    } else {
        VERDICT_FLAG
    };
    out.push(meta.kind as u8 | flag);
    out.push(peer.len() as u8);
    out.push(tenant.len() as u8);
    out.extend_from_slice(peer);
    out.extend_from_slice(tenant);
    if flag != 0 {
        meta.verdict.encode(out);
    }
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
    let kind = Kind::from_u8(body[18] & !VERDICT_FLAG).ok_or(DecodeError::Corrupt)?;
    let (peer_len, tenant_len) = (body[19] as usize, body[20] as usize);
    let rest = &body[FIXED_BODY_BYTES..];
    if rest.len() < peer_len + tenant_len {
        return Err(DecodeError::Corrupt);
    }
    let (verdict, payload) = if body[18] & VERDICT_FLAG == 0 {
        (Verdict::default(), &rest[peer_len + tenant_len..])
    } else {
        let v = &rest[peer_len + tenant_len..];
        let len = v
            .get(..4)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or(DecodeError::Corrupt)?;
        let runs = v.get(4..4 + len).ok_or(DecodeError::Corrupt)?;
        (Verdict::decode(runs)?, &v[4 + len..])
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Corrupt);
    let meta = Meta {
        seq: le_u64(&body[0..8]),
        received_us: le_u64(&body[8..16]) as i64,
        listener: u16::from_le_bytes([body[16], body[17]]),
        kind,
        peer: text(&rest[..peer_len])?,
        tenant: text(&rest[peer_len..peer_len + tenant_len])?,
        verdict,
    };
    Ok((Record { meta, payload }, total))
}

#[cfg(test)]
mod tests;
