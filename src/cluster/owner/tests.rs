use super::*;
use crate::aggregate::batch::Batch;
use crate::cluster::wire;
use crate::method::Method;
use crate::route::SeriesKey;

fn message(node: &str, inc: u64, wm: u64, range: (u64, u64), sections: &[(u64, f64)]) -> Vec<u8> {
    let key = Arc::new(SeriesKey {
        name: "out.count".into(),
        hash: fnv1a64(b"out.count"),
        method: Method::Count,
        frequency: 60,
    });
    let mut b = wire::Builder::default();
    for (seq, v) in sections {
        b.section(*seq);
        b.push(&key, 120.0, *v);
    }
    b.finish(&wire::Header {
        digest: 1,
        incarnation: inc,
        lane: 0,
        watermark: wm,
        first_seq: range.0,
        last_seq: range.1,
        node: node.into(),
    })
}

#[test]
fn a_republished_record_is_applied_once_even_when_rebatched() {
    let mut a = Applier::default();
    let mut out = vec![Batch::new(), Batch::new()];
    let r = a
        .apply(
            &message("n1", 7, 0, (0, 9), &[(2, 1.0), (5, 1.0)]),
            0,
            1,
            &mut out,
        )
        .unwrap();
    assert_eq!((r.points, r.duplicates, r.mismatch), (2, 0, false));
    // After a restart the node republishes from 3 with other batch boundaries.
    let r = a
        .apply(
            &message("n1", 7, 3, (3, 12), &[(5, 1.0), (11, 1.0)]),
            0,
            2,
            &mut out,
        )
        .unwrap();
    assert_eq!((r.points, r.duplicates, r.mismatch), (1, 1, true));
    // Another incarnation (its journal was lost) starts afresh at seq 0.
    let r = a
        .apply(&message("n1", 8, 0, (0, 5), &[(5, 1.0)]), 0, 1, &mut out)
        .unwrap();
    assert_eq!(r.points, 1);
    // The same records of another shard are other datapoints.
    let r = a
        .apply(&message("n1", 7, 0, (0, 9), &[(5, 1.0)]), 1, 1, &mut out)
        .unwrap();
    assert_eq!(r.points, 1);
    let total: usize = out.iter().map(Batch::len).sum();
    assert_eq!(total, 5);
    assert!(a.apply(b"\x09junk", 0, 1, &mut out).is_err());
}

#[test]
fn messages_stored_out_of_order_lose_nothing() {
    // A retried publish lands after the next message of its shard.
    let mut a = Applier::default();
    let mut out = vec![Batch::new()];
    let later = message("n1", 1, 0, (10, 19), &[(12, 1.0), (19, 1.0)]);
    let earlier = message("n1", 1, 0, (0, 9), &[(3, 1.0), (9, 1.0)]);
    assert_eq!(a.apply(&later, 0, 1, &mut out).unwrap().points, 2);
    assert_eq!(a.apply(&earlier, 0, 1, &mut out).unwrap().points, 2);
    // And a copy of either is skipped whole.
    let r = a.apply(&earlier, 0, 1, &mut out).unwrap();
    assert_eq!((r.points, r.duplicates), (0, 2));
    assert_eq!(out[0].len(), 4);
}

#[test]
fn shard_lists_print_as_ranges() {
    assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    assert_eq!(ranges(&[]), "");
}
