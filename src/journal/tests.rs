//! Journal tests through the real writer, recovery and reader.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::queue::NewRecord;
use super::reader::read_range;
use super::segment::{self, MAGIC};
use super::writer::Writer;
use super::{Fsync, Journal, JournalConfig, OnFull};
use crate::datapoint::Kind;

/// A fresh directory, removed when the returned guard drops.
pub(super) fn tmp(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("aggd-jt-{tag}-"))
        .tempdir()
        .unwrap()
}

pub(super) fn cfg(dir: &Path, segment_bytes: u64, max_bytes: u64) -> JournalConfig {
    JournalConfig {
        dir: dir.to_path_buf(),
        fsync: Fsync::Interval(Duration::from_millis(50)),
        segment_bytes,
        segment_max_age: Duration::from_secs(3600),
        max_bytes,
        max_age: Duration::from_secs(86400 * 365 * 100),
        min_free_disk: 0,
        on_full: OnFull::Ingest,
        queue_records: 64,
        ledger: dir.join("ledger.jsonl"),
    }
}

pub(super) fn rec(t: i64, payload: &[u8]) -> NewRecord {
    NewRecord {
        received_us: t,
        listener: 1,
        kind: Kind::PlaintextTcp,
        peer: "127.0.0.1:4000".parse().unwrap(),
        tenant: None,
        payload: Bytes::copy_from_slice(payload),
        verdict: Default::default(),
        attachment: None,
    }
}

/// (seq, received_us, payload) of every record readable now.
pub(super) fn read_all(dir: &Path) -> Vec<(u64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    read_range(
        dir,
        i64::MIN,
        i64::MAX,
        |r| out.push((r.meta.seq, r.meta.received_us, r.payload.to_vec())),
        |_| {},
    )
    .unwrap();
    out
}

#[tokio::test]
async fn submit_close_reopen_continues_sequence() {
    let guard = tmp("reopen");
    let dir = guard.path();
    let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert_eq!(report.next_seq, 0);
    for i in 0..10 {
        let t = j
            .submit(rec(1000 + i, format!("line {i}\n").as_bytes()))
            .await;
        assert!(t.wait().await);
    }
    j.close();
    let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert_eq!(report.next_seq, 10);
    assert!(j.submit(rec(2000, b"after\n")).await.wait().await);
    j.close();
    let all = read_all(dir);
    assert_eq!(all.len(), 11);
    assert!(
        all.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "sequence numbers"
    );
    assert_eq!(all[10], (10, 2000, b"after\n".to_vec()));
    // A time range reads only what was received in it.
    let mut n = 0;
    read_range(dir, 1003, 1005, |_| n += 1, |_| {}).unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn torn_tail_is_truncated_at_every_byte_on_restart() {
    // Build a closed journal of 4 records, then cut its last segment inside the last
    // record at every byte and reopen.
    let src_guard = tmp("torn-src");
    let src = src_guard.path();
    let (j, _) = Journal::open(cfg(src, 1 << 20, 1 << 30)).unwrap();
    for i in 0..4 {
        assert!(j.submit(rec(i, &[b'x'; 30])).await.wait().await);
    }
    j.close();
    let (first, path) = segment::list(src).unwrap().into_iter().last().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let last_start = segment::scan(&bytes, 0)
        .find_map(|item| match item {
            segment::Item::Record { offset, record, .. } if record.meta.seq == 3 => {
                Some(offset as usize)
            }
            _ => None,
        })
        .unwrap();
    for cut in last_start..bytes.len() {
        let guard = tmp("torn");
        let dir = guard.path();
        std::fs::write(segment::segment_path(dir, first), &bytes[..cut]).unwrap();
        let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
        j.close();
        assert_eq!(
            report.truncated_bytes,
            (cut - last_start) as u64,
            "cut {cut}"
        );
        assert_eq!(report.next_seq, 3, "cut {cut}");
        let seqs: Vec<u64> = read_all(dir).iter().map(|r| r.0).collect();
        assert_eq!(seqs, [0, 1, 2], "cut {cut}");
        assert_eq!(
            std::fs::metadata(segment::segment_path(dir, first))
                .unwrap()
                .len(),
            last_start as u64
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn queue_full_with_ingest_policy_skips_and_counts() {
    let guard = tmp("full");
    let dir = guard.path();
    let mut c = cfg(dir, 1 << 20, 1 << 30);
    c.queue_records = 1;
    let (j, _) = Journal::open(c).unwrap();
    let mut tickets = Vec::new();
    for i in 0..200 {
        tickets.push(j.submit(rec(i, &[0u8; 60_000])).await);
    }
    let mut written = 0;
    for t in tickets {
        written += u64::from(t.wait().await);
    }
    j.close();
    let skipped = j
        .stats()
        .unjournaled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(skipped > 0, "a queue of one record must overflow");
    assert_eq!(written + skipped, 200);
    assert_eq!(read_all(dir).len() as u64, written);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Rotate,
    Retention,
    /// Flip a bit at this (fraction of a sealed segment, bit).
    Flip(f64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6).prop_map(Op::Append),
        1 => Just(Op::Rotate),
        1 => Just(Op::Retention),
        1 => (0.0f64..1.0, 0u8..8).prop_map(|(f, b)| Op::Flip(f, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random appends, rotations, retention and bit flips against an in-memory model:
    /// reads return exactly the model's records minus deleted segments and minus the one
    /// record each flip damaged; retention deletes only whole sealed segments, oldest
    /// first, never the active one.
    #[test]
    fn journal_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let guard = tmp("prop");
    let dir = guard.path();
        let mut w = Writer::for_test(cfg(dir, 2048, 6000)).unwrap();
        // seq → (segment first_seq, offset, len, payload)
        let mut model: BTreeMap<u64, (u64, u64, u64, Vec<u8>)> = BTreeMap::new();
        let mut damaged: Vec<u64> = Vec::new();
        let mut t = 0i64;
        for op in ops {
            match op {
                Op::Append(payloads) => {
                    let recs: Vec<NewRecord> = payloads.iter().map(|p| { t += 1; rec(t, p) }).collect();
                    let before = w.next_seq();
                    w.write_batch(&recs).unwrap();
                    let (first, entries) = w.segment_layout();
                    for (i, p) in payloads.into_iter().enumerate() {
                        let seq = before + i as u64;
                        let (off, len) = entries[&seq];
                        model.insert(seq, (first, off, len, p));
                    }
                }
                Op::Rotate => { if w.records_in_segment() > 0 { w.rotate().unwrap(); } }
                Op::Retention => w.retention(),
                Op::Flip(f, bit) => {
                    let segs = segment::list(dir).unwrap();
                    let sealed: Vec<_> = segs.iter().filter(|(s, _)| *s != w.active_first_seq()).collect();
                    if let Some((first, path)) = sealed.first() {
                        let mut b = std::fs::read(path).unwrap();
                        if b.len() > MAGIC.len() {
                            let pos = MAGIC.len() + ((b.len() - MAGIC.len()) as f64 * f) as usize;
                            let pos = pos.min(b.len() - 1);
                            b[pos] ^= 1 << bit;
                            std::fs::write(path, &b).unwrap();
                            let _ = std::fs::remove_file(segment::index_path(dir, *first));
                            for (seq, (s, off, len, _)) in &model {
                                if s == first && (*off..off + len).contains(&(pos as u64)) {
                                    damaged.push(*seq);
                                }
                            }
                        }
                    }
                }
            }
        }
        let present: Vec<u64> = segment::list(dir).unwrap().iter().map(|(s, _)| *s).collect();
        // Retention leaves a suffix of segments that includes the active one.
        prop_assert!(present.contains(&w.active_first_seq()));
        let firsts: Vec<u64> = model.values().map(|v| v.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let kept_from = firsts.iter().position(|f| present.contains(f)).unwrap_or(firsts.len());
        prop_assert!(firsts[kept_from..].iter().all(|f| present.contains(f) || *f == w.active_first_seq()));
        let want: Vec<(u64, Vec<u8>)> = model
            .iter()
            .filter(|(seq, (s, ..))| present.contains(s) && !damaged.contains(seq))
            .map(|(seq, (.., p))| (*seq, p.clone()))
            .collect();
        let got: Vec<(u64, Vec<u8>)> = read_all(dir).into_iter().map(|(s, _, p)| (s, p)).collect();
        prop_assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn readers_see_what_a_running_writer_wrote() {
    let guard = tmp("live");
    let dir = guard.path();
    let (j, _) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    for i in 0..5 {
        assert!(j.submit(rec(i, b"x 1 1\n")).await.wait().await);
    }
    // The writer is still running and its segment has no index yet.
    let mut n = 0;
    let stats = read_range(dir, i64::MIN, i64::MAX, |_| n += 1, |_| {}).unwrap();
    assert_eq!(n, 5);
    assert_eq!((stats.skipped_bytes, stats.incomplete_tail_bytes), (0, 0));
    // A write in progress (a partial record at the end) is not corruption.
    let (_, path) = segment::list(dir).unwrap().into_iter().last().unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2]))
        .unwrap();
    let stats = read_range(dir, i64::MIN, i64::MAX, |_| {}, |_| {}).unwrap();
    assert_eq!(
        (
            stats.records,
            stats.skipped_bytes,
            stats.incomplete_tail_bytes
        ),
        (5, 0, 6)
    );
    j.close();
}

#[test]
fn retention_deletes_old_sealed_segments_by_age() {
    let guard = tmp("age");
    let dir = guard.path();
    let mut c = cfg(dir, 1 << 20, 1 << 30);
    c.max_age = Duration::from_secs(3600);
    let mut w = Writer::for_test(c).unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    // Two sealed segments received two hours ago, one sealed segment received now.
    for t in [now_us - 7_200_000_000, now_us - 7_100_000_000, now_us] {
        w.write_batch(&[rec(t, b"a 1 1\n")]).unwrap();
        w.rotate().unwrap();
    }
    w.retention();
    let left: Vec<u64> = segment::list(dir)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        left,
        [2, 3],
        "old sealed segments go; the recent and the active one stay"
    );
    let seqs: Vec<u64> = read_all(dir).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [2]);
}
