//! The journal's policies through the real writer: rotation by segment age, and what each
//! `fsync` setting does per acknowledged batch.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tests::{cfg, read_all, rec, tmp};
use super::{Fsync, Journal, segment};

/// Submits `n` records one after another, each acknowledged before the next, with `gap`
/// between them.
async fn write_spaced(j: &Journal, n: i64, gap: Duration) {
    for i in 0..n {
        assert!(j.submit(rec(1000 + i, b"a 1 1\n")).await.wait().await);
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test]
async fn a_segment_older_than_segment_max_age_is_sealed_at_the_next_write() {
    let guard = tmp("age");
    let dir = guard.path();
    let mut c = cfg(dir, 1 << 30, 1 << 40);
    c.segment_max_age = Duration::from_millis(30);
    let (j, _) = Journal::open(c).unwrap();
    // Each write comes after the active segment has aged past the limit.
    write_spaced(&j, 4, Duration::from_millis(40)).await;
    j.close();
    let segments = segment::list(dir).unwrap();
    assert_eq!(
        segments.len(),
        4,
        "one segment per aged write: {segments:?}"
    );
    assert_eq!(
        read_all(dir).len(),
        4,
        "every record still readable in order"
    );

    // The same writes well within the age stay in one segment.
    let guard = tmp("young");
    let dir = guard.path();
    let (j, _) = Journal::open(cfg(dir, 1 << 30, 1 << 40)).unwrap();
    write_spaced(&j, 4, Duration::from_millis(1)).await;
    j.close();
    assert_eq!(segment::list(dir).unwrap().len(), 1);
}

#[tokio::test]
async fn fsync_always_syncs_every_batch_and_never_syncs_none() {
    let guard = tmp("always");
    let dir = guard.path();
    let mut c = cfg(dir, 1 << 30, 1 << 40);
    c.fsync = Fsync::Always;
    let (j, _) = Journal::open(c).unwrap();
    write_spaced(&j, 5, Duration::ZERO).await;
    // Acknowledged means on disk: one fsync per batch before its ticket resolves.
    assert!(j.stats().fsyncs.load(Ordering::Relaxed) >= 5);
    j.close();

    let guard = tmp("never");
    let dir = guard.path();
    let mut c = cfg(dir, 1 << 30, 1 << 40);
    c.fsync = Fsync::Never;
    let (j, _) = Journal::open(c).unwrap();
    write_spaced(&j, 5, Duration::from_millis(20)).await;
    assert_eq!(j.stats().fsyncs.load(Ordering::Relaxed), 0);
    j.close();
    assert_eq!(read_all(dir).len(), 5);
}
