use super::*;
use crate::codec::Limits;
use crate::reason::DropReason;
use proptest::prelude::*;

type Decoded = Vec<Result<(String, f64, f64), DropReason>>;

fn decode_with(frame: &[u8], limits: &Limits) -> Result<Decoded, DropReason> {
    let mut d = PickleDecoder::new();
    let mut out = Vec::new();
    d.decode(frame, 42.0, limits, |r| {
        out.push(r.map(|p| (p.path.to_string(), p.timestamp, p.value)));
    })?;
    Ok(out)
}

fn decode(frame: &[u8]) -> Result<Decoded, DropReason> {
    decode_with(frame, &Limits::default())
}

/// `[("a.b",(1700000000,1.5)),("c;t=v",[1700000001.25,-2]),["ü.x",(1,True)]]` as written
/// by CPython 3.11 `pickle.dumps(data, protocol=p)`.
const CPYTHON: [&[u8]; 6] = [
    b"(lp0\n(Va.b\np1\n(I1700000000\nF1.5\ntp2\ntp3\na(Vc;t=v\np4\n(lp5\nF1700000001.25\naI-2\natp6\na(lp7\nV\xfc.x\np8\na(I1\nI01\ntp9\naa.",
    b"]q\x00((X\x03\x00\x00\x00a.bq\x01(J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00tq\x02tq\x03(X\x05\x00\x00\x00c;t=vq\x04]q\x05(GA\xd9T\xfc@P\x00\x00J\xfe\xff\xff\xffetq\x06]q\x07(X\x04\x00\x00\x00\xc3\xbc.xq\x08(K\x01I01\ntq\tee.",
    b"\x80\x02]q\x00(X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x05\x00\x00\x00c;t=vq\x04]q\x05(GA\xd9T\xfc@P\x00\x00J\xfe\xff\xff\xffe\x86q\x06]q\x07(X\x04\x00\x00\x00\xc3\xbc.xq\x08K\x01\x88\x86q\tee.",
    b"\x80\x03]q\x00(X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x05\x00\x00\x00c;t=vq\x04]q\x05(GA\xd9T\xfc@P\x00\x00J\xfe\xff\xff\xffe\x86q\x06]q\x07(X\x04\x00\x00\x00\xc3\xbc.xq\x08K\x01\x88\x86q\tee.",
    b"\x80\x04\x95I\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x03a.b\x94J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86\x94\x86\x94\x8c\x05c;t=v\x94]\x94(GA\xd9T\xfc@P\x00\x00J\xfe\xff\xff\xffe\x86\x94]\x94(\x8c\x04\xc3\xbc.x\x94K\x01\x88\x86\x94ee.",
    b"\x80\x05\x95I\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x03a.b\x94J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86\x94\x86\x94\x8c\x05c;t=v\x94]\x94(GA\xd9T\xfc@P\x00\x00J\xfe\xff\xff\xffe\x86\x94]\x94(\x8c\x04\xc3\xbc.x\x94K\x01\x88\x86\x94ee.",
];

#[test]
fn cpython_frames_all_protocols() {
    let want: Decoded = vec![
        Ok(("a.b".into(), 1700000000.0, 1.5)),
        Ok(("c;t=v".into(), 1700000001.25, -2.0)),
        Ok(("ü.x".into(), 1.0, 1.0)),
    ];
    for (proto, frame) in CPYTHON.iter().enumerate() {
        assert_eq!(decode(frame), Ok(want.clone()), "protocol {proto}");
    }
}

/// `decode_runs` flattened: the datapoints of each run, then each rejection, in the order
/// they came, plus the length of every run.
fn decode_runs(frame: &[u8], run: usize) -> Result<(Decoded, Vec<usize>), DropReason> {
    let mut d = PickleDecoder::new();
    let (mut out, mut runs) = (Vec::new(), Vec::new());
    d.decode_runs(frame, 42.0, &Limits::default(), run, |r| match r {
        Ok(dps) => {
            runs.push(dps.len());
            out.extend(
                dps.iter()
                    .map(|p| Ok((p.path.to_string(), p.timestamp, p.value))),
            );
        }
        Err(reason) => out.push(Err(reason)),
    })?;
    Ok((out, runs))
}

#[test]
fn runs_keep_frame_order_and_size() {
    for (proto, frame) in CPYTHON.iter().enumerate() {
        let (got, runs) = decode_runs(frame, 2).unwrap();
        assert_eq!(Ok(got), decode(frame), "protocol {proto}");
        assert_eq!(runs, [2, 1], "protocol {proto}");
    }
    // Rejections split runs and keep their place.
    let frame = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00](\x8c\x01aK\x01K\x02\x86\x86K\x05\x8c\x01bK\x01\x85\x86\x8c\x01cJ\xff\xff\xff\xff\x8c\x033.5\x86\x86C\x01dK\x01G\x7f\xf8\x00\x00\x00\x00\x00\x00\x86\x86\x8c\x01eG\x7f\xf0\x00\x00\x00\x00\x00\x00K\x01\x86\x86e.";
    let (got, runs) = decode_runs(frame, 8).unwrap();
    assert_eq!(Ok(got), decode(frame));
    assert_eq!(runs, [1, 1]);
    assert_eq!(decode_runs(b"\x80\x02K\x01.", 8), Err(DropReason::BadFrame));
}

#[test]
fn python2_protocol0_strings_and_memo_sharing() {
    // Python 2 protocol 0: quoted STRING with escapes, LONG with L suffix.
    let frame =
        b"(lp0\n(S'a.\\x62'\np1\n(L1700000000L\nF2.5\ntp2\ntp3\na(g1\n(I7\nI8\ntp4\ntp5\na.";
    assert_eq!(
        decode(frame),
        Ok(vec![
            Ok(("a.b".into(), 1700000000.0, 2.5)),
            Ok(("a.b".into(), 7.0, 8.0)),
        ])
    );
}

#[test]
fn element_errors_are_per_element() {
    // [("a",(1,2)), 5, ("b",(1,)), ("c",(-1, "3.5")), (b"d", (1, nan)), ("e", (inf, 1))]
    let frame = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00](\x8c\x01aK\x01K\x02\x86\x86K\x05\x8c\x01bK\x01\x85\x86\x8c\x01cJ\xff\xff\xff\xff\x8c\x033.5\x86\x86C\x01dK\x01G\x7f\xf8\x00\x00\x00\x00\x00\x00\x86\x86\x8c\x01eG\x7f\xf0\x00\x00\x00\x00\x00\x00K\x01\x86\x86e.";
    assert_eq!(
        decode(frame),
        Ok(vec![
            Ok(("a".into(), 1.0, 2.0)),
            Err(DropReason::BadElement),
            Err(DropReason::BadElement),
            Ok(("c".into(), 42.0, 3.5)),
            Err(DropReason::NanValue),
            Err(DropReason::BadTimestamp),
        ])
    );
}

#[test]
fn code_execution_and_garbage_are_refused() {
    // pickle.dumps(os.system) style: GLOBAL + REDUCE.
    assert_eq!(
        decode(b"cos\nsystem\n(S'id'\ntR."),
        Err(DropReason::BadFrame)
    );
    assert_eq!(
        decode(b"\x80\x04\x8c\x02os\x8c\x06system\x93."),
        Err(DropReason::BadFrame)
    );
    assert_eq!(decode(b""), Err(DropReason::BadFrame));
    assert_eq!(decode(b"K\x05."), Err(DropReason::BadFrame)); // top level is an int
    assert_eq!(decode(b"]"), Err(DropReason::BadFrame)); // no STOP
    assert_eq!(decode(b"X\xff\xff\xff\x7fabc."), Err(DropReason::BadFrame)); // length past end
    assert_eq!(decode(b"h\x05."), Err(DropReason::BadFrame)); // memo miss
    assert_eq!(decode(b"a."), Err(DropReason::BadFrame)); // stack underflow
    assert_eq!(decode(b"\x80\x09]."), Err(DropReason::BadFrame)); // unknown protocol
}

#[test]
fn hostile_deep_nesting_is_rejected_fast() {
    let limits = Limits::default();
    // 50 000 MARKs.
    let mut f = vec![b'('; 50_000];
    f.push(b'.');
    assert_eq!(decode_with(&f, &limits), Err(DropReason::BadFrame));
    // 50 000 nested lists built with EMPTY_LIST + APPEND: no recursion anywhere.
    let mut f = vec![b']'; 50_000];
    f.extend(std::iter::repeat_n(b'a', 49_999));
    f.push(b'.');
    assert_eq!(
        decode_with(&f, &limits),
        Ok(vec![Err(DropReason::BadElement)])
    );
    // 50 000 nested 1-tuples.
    let mut f = vec![b')'];
    f.extend(std::iter::repeat_n(0x85u8, 50_000));
    f.extend_from_slice(b"\x85.");
    assert_eq!(
        decode_with(&f, &limits),
        Ok(vec![Err(DropReason::BadElement)])
    );
}

#[test]
fn hostile_shared_string_is_not_expanded() {
    // One 50 KB string, memoized, then used as the path of 20 000 elements.
    let mut f = b"\x80\x04](".to_vec();
    f.push(b'X');
    f.extend_from_slice(&50_000u32.to_le_bytes());
    f.extend(std::iter::repeat_n(b'x', 50_000));
    f.extend_from_slice(b"\x94K\x01K\x02\x86\x94\x86\x94"); // memo 0 = s, 1 = (1,2), 2 = (s,(1,2))
    for _ in 0..20_000 {
        f.extend_from_slice(b"h\x02");
    }
    f.extend_from_slice(b"e.");
    let mut d = PickleDecoder::new();
    let mut results = Vec::new();
    d.decode(&f, 0.0, &Limits::default(), |r| results.push(r.map(|_| ())))
        .unwrap();
    assert_eq!(results.len(), 20_001);
    assert!(results.iter().all(|r| *r == Err(DropReason::BadPath)));
    // With a limit that admits the path, every element borrows the same frame bytes.
    let wide = Limits {
        max_path_bytes: 60_000,
        ..Limits::default()
    };
    let mut total_len = 0usize;
    let mut same_ptr = true;
    let base = f.as_ptr() as usize;
    d.decode(&f, 0.0, &wide, |r| {
        let p = r.unwrap();
        total_len += p.path.len();
        let off = p.path.as_ptr() as usize - base;
        same_ptr &= off == 9;
    })
    .unwrap();
    assert_eq!(total_len, 20_001 * 50_000);
    assert!(same_ptr, "paths must borrow the frame, not copies");
}

#[test]
fn object_budget_is_enforced() {
    let limits = Limits {
        max_pickle_objects: 100,
        ..Limits::default()
    };
    let mut f = b"](".to_vec();
    f.extend(std::iter::repeat_n(b'N', 200));
    f.extend_from_slice(b"e.");
    assert_eq!(decode_with(&f, &limits), Err(DropReason::BadFrame));
    // A memo index far beyond the budget does not allocate a huge memo.
    assert_eq!(
        decode_with(b"Nr\xff\xff\xff\x7f.", &limits),
        Err(DropReason::BadFrame)
    );
}

#[test]
fn framer_stops_at_an_oversize_header_and_splits_anywhere() {
    let mut stream = Vec::new();
    for body in [&b"first"[..], b"", b"third!"] {
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(body);
    }
    // A good frame, an oversize one (4 GiB declared, 20 bytes present), then a good
    // frame that can no longer be found: the framer yields nothing after the header.
    let mut hostile = stream[..9].to_vec();
    hostile.extend_from_slice(&u32::MAX.to_be_bytes());
    hostile.extend_from_slice(&[7u8; 20]);
    hostile.extend_from_slice(&stream[9..]);
    let mut framer = PickleFramer::new(16);
    let mut buf = BytesMut::from(&hostile[..]);
    assert_eq!(
        framer.next_frame(&mut buf),
        Some(FrameEvent::Frame(Bytes::from_static(b"first")))
    );
    assert_eq!(
        framer.next_frame(&mut buf),
        Some(FrameEvent::TooLarge(u32::MAX as u64))
    );
    assert!(framer.refused());
    assert_eq!(framer.next_frame(&mut buf), None);
    assert!(!framer.truncated(&buf), "counted once, as frame_too_large");

    for cut in 0..=stream.len() {
        let mut framer = PickleFramer::new(16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            buf.extend_from_slice(part);
            while let Some(ev) = framer.next_frame(&mut buf) {
                got.push(ev);
            }
        }
        assert!(!framer.truncated(&buf));
        assert_eq!(
            got,
            vec![
                FrameEvent::Frame(Bytes::from_static(b"first")),
                FrameEvent::Frame(Bytes::new()),
                FrameEvent::Frame(Bytes::from_static(b"third!")),
            ],
            "cut at {cut}"
        );
    }
}

fn out_point(path: &str, ts: f64, v: OutValue) -> OutPoint {
    OutPoint {
        path: path.into(),
        timestamp: ts,
        value: v,
        interval: None,
    }
}

#[test]
fn encoder_output_reads_back_with_serde_pickle() {
    let pts = vec![
        out_point("a.sum", 1700000040.0, OutValue::Float(1.25)),
        out_point("a.count", 1700000040.0, OutValue::Int(3)),
        out_point("ü;t=v", 60.0, OutValue::Float(f64::INFINITY)),
    ];
    let mut out = Vec::new();
    encode_frames(&pts, 2, &mut out).unwrap();
    let mut buf = BytesMut::from(&out[..]);
    let mut framer = PickleFramer::new(1 << 20);
    let mut seen = Vec::new();
    while let Some(FrameEvent::Frame(body)) = framer.next_frame(&mut buf) {
        assert_eq!(&body[..2], b"\x80\x02", "protocol 2");
        let v = serde_pickle::value_from_slice(&body, serde_pickle::DeOptions::new()).unwrap();
        let serde_pickle::Value::List(items) = v else {
            panic!("not a list: {v:?}")
        };
        seen.push(items.len());
        for it in items {
            let serde_pickle::Value::Tuple(pair) = it else {
                panic!("element not a tuple: {it:?}")
            };
            assert!(matches!(pair[0], serde_pickle::Value::String(_)));
            assert!(matches!(pair[1], serde_pickle::Value::Tuple(_)));
        }
    }
    assert_eq!(seen, vec![2, 1]);
    // And our decoder reads it too.
    let mut d = PickleDecoder::new();
    let mut n = 0;
    let mut buf = BytesMut::from(&out[..]);
    while let Some(FrameEvent::Frame(body)) = framer.next_frame(&mut buf) {
        d.decode(&body, 0.0, &Limits::default(), |r| {
            let p = r.unwrap();
            assert_eq!(p.path, &*pts[n].path);
            assert_eq!(p.value, pts[n].value.as_f64());
            n += 1;
        })
        .unwrap();
    }
    assert_eq!(n, 3);
}

proptest! {
    /// serde-pickle is the oracle: whatever it writes (protocol 2 or 3, ints or floats),
    /// the bounded decoder reads back the same datapoints.
    #[test]
    fn round_trip_against_serde_pickle(
        items in proptest::collection::vec(
            ("[a-z0-9._;=ü-]{1,40}", any::<i32>(), any::<f64>().prop_filter("no nan", |v| !v.is_nan()), any::<bool>()),
            0..200),
        v2 in any::<bool>(),
    ) {
        let opts = if v2 { serde_pickle::SerOptions::new().proto_v2() } else { serde_pickle::SerOptions::new() };
        let want: Decoded = items.iter().map(|(p, ts, v, _)| {
            let ts = if *ts == -1 { 42.0 } else { f64::from(*ts) };
            Ok((p.clone(), ts, *v))
        }).collect();
        // Half of the elements use a float timestamp, half an int one.
        use serde_pickle::Value as V;
        let mixed = V::List(items.iter().map(|(p, ts, v, f)| {
            let t = if *f { V::F64(f64::from(*ts)) } else { V::I64(i64::from(*ts)) };
            V::Tuple(vec![V::String(p.clone()), V::Tuple(vec![t, V::F64(*v)])])
        }).collect());
        let bytes = serde_pickle::value_to_vec(&mixed, opts).unwrap();
        prop_assert_eq!(decode(&bytes), Ok(want));
    }

    /// Arbitrary bytes never panic, and never yield more elements than bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(out) = decode(&bytes) {
            prop_assert!(out.len() <= bytes.len());
        }
    }
}

#[test]
fn memo_and_opcode_bombs_leave_nothing_behind() {
    let limits = Limits::default();
    let mut d = PickleDecoder::new();
    // A 7-byte frame that names a memo slot near the object budget: one sparse entry.
    let r = d.decode(b"]r\xff\xff\x0f\x00.", 0.0, &limits, |_| {});
    assert_eq!(r, Ok(()));
    assert!(d.retained_bytes() <= KEEP_BYTES, "{}", d.retained_bytes());
    // A million None opcodes: decoded (and rejected), then released.
    let mut nones = vec![b'N'; 1_000_000];
    nones.push(b'.');
    assert_eq!(
        d.decode(&nones, 0.0, &limits, |_| {}),
        Err(DropReason::BadFrame)
    );
    assert!(
        d.retained_bytes() <= 6 * KEEP_BYTES,
        "{}",
        d.retained_bytes()
    );
    // The decoder still decodes a normal frame afterwards.
    assert_eq!(decode(CPYTHON[2]).unwrap().len(), 3);
    assert_eq!(
        d.decode(CPYTHON[2], 42.0, &limits, |_| {}),
        Ok(()),
        "reused after the bombs"
    );
}

#[test]
fn sparse_memo_slots_resolve_like_dense_ones() {
    // [("a", (1, 2))] with the path put in slot 70000 and fetched back from it.
    let frame =
        b"\x80\x02]X\x01\x00\x00\x00ar\x70\x11\x01\x000j\x70\x11\x01\x00K\x01K\x02\x86\x86a.";
    let mut d = PickleDecoder::new();
    let mut out = Vec::new();
    let r = d.decode(frame, 0.0, &Limits::default(), |p| {
        out.push(p.map(|p| (p.path.to_string(), p.timestamp, p.value)));
    });
    assert_eq!(r, Ok(()));
    assert_eq!(out, vec![Ok(("a".to_string(), 1.0, 2.0))]);
}
