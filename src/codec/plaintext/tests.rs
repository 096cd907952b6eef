//! Unit tests of `plaintext`.
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
            interval: None,
        },
        OutPoint {
            path: "a.count".into(),
            timestamp: 1700000040.9,
            value: OutValue::Int(7),
            interval: None,
        },
        OutPoint {
            path: "a.max".into(),
            timestamp: 60.0,
            value: OutValue::Float(f64::NEG_INFINITY),
            interval: None,
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

#[test]
fn a_frame_checked_once_parses_every_line_as_line_by_line_parsing_does() {
    let frame = "a.é.b 1 10\n\tx  2.5\t11\r\nbad\nµ.\u{1c}c 3 12\n\n ctl\u{1}name 4 -1\nlast 5 13";
    let l = Limits::default();
    for line in lines(frame.as_bytes()) {
        assert_eq!(
            parse_line_of(frame, line, 5.0, &l),
            parse_line(line, 5.0, &l),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_bad_byte_refuses_its_line_alone() {
    let frame = b"a 1 10\nb\xff 2 10\nc 3 10\n";
    let mut got = Vec::new();
    crate::codec::decode_frame(
        crate::datapoint::Kind::PlaintextTcp,
        frame,
        None,
        0.0,
        &Limits::default(),
        &mut crate::codec::pickle::PickleDecoder::new(),
        |r| match r {
            Ok(run) => got.extend(run.iter().map(|d| Ok(d.path.to_string()))),
            Err(reason) => got.push(Err(reason)),
        },
    )
    .unwrap();
    assert_eq!(
        got,
        [
            Ok("a".to_string()),
            Err(DropReason::BadUtf8),
            Ok("c".to_string())
        ]
    );
}
