use super::*;
use crate::hash::fnv1a64;

fn key(name: &str, method: Method, frequency: u32) -> Arc<SeriesKey> {
    Arc::new(SeriesKey {
        name: name.into(),
        hash: fnv1a64(name.as_bytes()),
        method,
        frequency,
    })
}

fn header() -> Header {
    Header {
        digest: 7,
        incarnation: 0xabc,
        lane: 1,
        watermark: 3,
        first_seq: 10,
        last_seq: 12,
        node: "n1".into(),
    }
}

#[test]
fn round_trip_groups_series_and_sections() {
    let a = key("a.sum", Method::Sum, 60);
    let b = key("b.p95", Method::Percentile { per_mille: 950 }, 10);
    let mut w = Builder::default();
    w.section(10);
    w.push(&a, 100.0, 1.5);
    w.push(&b, 101.0, -2.0);
    w.section(11); // empty: dropped
    w.section(12);
    w.push(&a, 102.0, 3.0);
    assert_eq!(w.points(), 3);
    let bytes = w.finish(&header());
    assert_eq!(w.points(), 0);
    let m = decode(&bytes).unwrap();
    assert_eq!(m.header, header());
    assert_eq!(m.series.len(), 2);
    assert_eq!(m.series[1].name, "b.p95");
    assert_eq!(m.series[1].method, Method::Percentile { per_mille: 950 });
    assert_eq!(m.series[1].frequency, 10);
    let seqs: Vec<u64> = m.sections.iter().map(|s| s.0).collect();
    assert_eq!(seqs, vec![10, 12]);
    assert_eq!(m.sections[0].1[1].series, 1);
    assert_eq!(m.sections[1].1[0].value, 3.0);
    assert_eq!(msg_id(&m.header, 5), "n1.abc.1.5.10-12");
}

#[test]
fn every_float_survives_bit_for_bit_and_integers_are_short() {
    let a = key("a", Method::Sum, 60);
    let values = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        1.5,
        -7.25,
        1e300,
        -1e-300,
        9_007_199_254_740_992.0,
        -9_007_199_254_740_991.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let mut w = Builder::default();
    w.section(1);
    for (i, v) in values.iter().enumerate() {
        // Timestamps going up and down, whole and fractional.
        let ts = [1_700_000_000.0, 1_699_999_990.0, 1_700_000_000.5, -5.0][i % 4];
        w.push(&a, ts, *v);
    }
    let bytes = w.finish(&header());
    let m = decode(&bytes).unwrap();
    for (i, (p, v)) in m.sections[0].1.iter().zip(values).enumerate() {
        let ts: f64 = [1_700_000_000.0, 1_699_999_990.0, 1_700_000_000.5, -5.0][i % 4];
        assert_eq!(p.value.to_bits(), v.to_bits(), "value {v}");
        assert_eq!(p.timestamp.to_bits(), ts.to_bits(), "timestamp {ts}");
    }
    // Whole-second timestamps a second apart and small integer values: 4 bytes each.
    let mut w = Builder::default();
    w.section(1);
    let before = w.bytes();
    for t in 0..100 {
        w.push(&a, 1_700_000_000.0 + f64::from(t), 7.0);
    }
    assert!(
        w.bytes() - before <= 100 * 4 + 8,
        "{} bytes",
        w.bytes() - before
    );
}

#[test]
fn points_without_a_section_get_no_seq() {
    let a = key("a", Method::Count, 60);
    let mut w = Builder::default();
    w.push(&a, 1.0, 1.0);
    let bytes = w.finish(&header());
    assert_eq!(decode(&bytes).unwrap().sections[0].0, NO_SEQ);
}

#[test]
fn every_truncation_and_a_bad_version_are_refused() {
    let a = key("a", Method::Sum, 60);
    let mut w = Builder::default();
    w.section(1);
    w.push(&a, 1.0, 1.0);
    let bytes = w.finish(&header());
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
    }
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert_eq!(decode(&v2).unwrap_err(), WireError::Version(2));
    let mut huge = bytes;
    let at = HEADER + 2; // the series count after node "n1"
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode(&huge), Err(WireError::Malformed(_))));
}
