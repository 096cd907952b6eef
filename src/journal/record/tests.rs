use super::*;

fn meta() -> Meta {
    Meta {
        seq: 7,
        received_us: 1_700_000_000_123_456,
        listener: 2,
        kind: Kind::PlaintextTcp,
        peer: "127.0.0.1:5000".into(),
        tenant: String::new(),
        verdict: Verdict::default(),
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

/// Pins the verdict's layout: the kind's 0x80 bit, a length, then (reason, gap,
/// count) per run of refused items.
#[test]
fn known_answer_with_a_verdict() {
    let mut m = meta();
    m.tenant = "t".into();
    m.verdict.refuse(1, DropReason::TenantDeleted);
    m.verdict.refuse(2, DropReason::TenantDeleted);
    m.verdict.refuse(200, DropReason::RateLimited);
    m.verdict.refuse(201, DropReason::SeriesLimit);
    assert_eq!(m.verdict.runs().len(), 3);
    assert_eq!(m.verdict.refused(), 4);
    let mut out = Vec::new();
    encode(&m, b"x 1 2\n", &mut out);
    let runs = [1, 1, 2, 4, 197, 1, 1, 5, 0, 1];
    let body_len = 21 + 14 + 1 + 4 + runs.len() + 6;
    assert_eq!(out.len(), 8 + body_len);
    assert_eq!(encoded_len(&m, 6), out.len());
    assert_eq!(out[8 + 18], 0x81, "kind 1 with the verdict bit");
    let v = &out[8 + 21 + 14 + 1..];
    assert_eq!(&v[..4], &(runs.len() as u32).to_le_bytes());
    assert_eq!(&v[4..4 + runs.len()], &runs);
    assert_eq!(&v[4 + runs.len()..], b"x 1 2\n");
    let (rec, _) = decode(&out).unwrap();
    assert_eq!(rec.meta, m);
    assert_eq!(rec.payload, b"x 1 2\n");
    let mut cursor = 0;
    let reasons: Vec<_> = (0..203)
        .filter_map(|i| Some((i, rec.meta.verdict.refused_at(&mut cursor, i)?)))
        .collect();
    assert_eq!(
        reasons,
        [
            (1, DropReason::TenantDeleted),
            (2, DropReason::TenantDeleted),
            (200, DropReason::RateLimited),
            (201, DropReason::SeriesLimit)
        ]
    );
}

#[test]
fn a_verdict_holds_only_receive_time_refusals() {
    let mut v = Verdict::default();
    v.refuse(0, DropReason::ParseError);
    v.refuse(1, DropReason::Panic);
    assert!(v.is_empty());
}

#[test]
fn every_truncation_is_incomplete_and_every_bit_flip_is_detected() {
    let mut out = Vec::new();
    let mut m = meta();
    m.verdict.refuse(3, DropReason::Blacklist);
    encode(&m, b"payload bytes", &mut out);
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
