//! The hash functions of the ring methods, as carbon and carbon-c-relay compute them
//! (sources in the parent module's docs).

use super::Method;

/// A ring position of `key` for one of carbon's methods (`carbon.hashing.carbonHash`).
pub(super) fn carbon_position(method: Method, key: &str) -> i64 {
    match method {
        Method::CarbonFnv1aCh => {
            let h = fnv1a32(key.as_bytes(), u32::from);
            i64::from((h >> 16) ^ (h & 0xffff))
        }
        Method::Mmh3Ch => {
            let h = murmur3::murmur3_32(&mut std::io::Cursor::new(key.as_bytes()), 0)
                .unwrap_or_default();
            i64::from(h as i32)
        }
        _ => {
            use md5::Digest;
            let d = md5::Md5::digest(key.as_bytes());
            i64::from(u16::from_be_bytes([d[0], d[1]]))
        }
    }
}

/// FNV-1a 32 (offset basis 2166136261, prime 16777619), each byte widened by `widen`.
pub(super) fn fnv1a32(bytes: &[u8], widen: impl Fn(u8) -> u32) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ widen(b)).wrapping_mul(16_777_619)
    })
}

/// carbon-c-relay's `fnv1a_hashpos`: FNV-1a 32 over sign-extended bytes, folded to 16 bits.
pub(super) fn relay_fnv1a_position(key: &str) -> u16 {
    let h = fnv1a32(key.as_bytes(), |b| i32::from(b as i8) as u32);
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// carbon-c-relay's `fnv1a_64` over sign-extended bytes.
pub(super) fn relay_fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(14_695_981_039_346_656_037u64, |h, &b| {
        (h ^ i64::from(b as i8) as u64).wrapping_mul(1_099_511_628_211)
    })
}

/// Jump consistent hash (Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash
/// Algorithm", 2014), as carbon-c-relay computes it: the bucket in `0..buckets`.
pub(super) fn jump_bucket(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The whole of `s` as C's `strtol(s, &end, 10)` with `*end == '\0'` (leading blanks and a
/// sign allowed; the empty string is 0).
pub(super) fn strtol_whole(s: &str) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    if t.is_empty() {
        return s.is_empty().then_some(0);
    }
    t.parse().ok()
}

/// Python 3's `repr` of a `str` (for carbon's tuple-formatted replica keys): single quotes
/// unless the text has a `'` and no `"`; backslash, the quote, `\t`, `\n`, `\r` and other
/// control characters escaped.
pub(crate) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
