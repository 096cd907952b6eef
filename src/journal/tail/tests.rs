use super::*;
use crate::datapoint::Kind;
use crate::journal::record::Meta;
use std::fs::File;
use std::io::Write;

fn write_segment(dir: &Path, first: u64, seqs: std::ops::Range<u64>) -> File {
    let mut f = File::create(segment::segment_path(dir, first)).unwrap();
    f.write_all(MAGIC).unwrap();
    for s in seqs {
        f.write_all(&rec(s)).unwrap();
    }
    f
}

fn rec(seq: u64) -> Vec<u8> {
    let meta = Meta {
        seq,
        received_us: 1,
        listener: 0,
        kind: Kind::PlaintextTcp,
        peer: "127.0.0.1:1".into(),
        tenant: String::new(),
        verdict: Default::default(),
    };
    let mut out = Vec::new();
    record::encode(&meta, format!("a {seq} 1\n").as_bytes(), &mut out);
    out
}

fn collect(t: &mut Tail) -> Vec<u64> {
    let mut seen = Vec::new();
    t.read(usize::MAX, |r| seen.push(r.meta.seq)).unwrap();
    seen
}

#[test]
fn a_skip_delivers_from_its_record_on_and_misses_nothing() {
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 0, 0..5);
    let mut active = write_segment(d.path(), 5, 5..8);
    let mut t = Tail::new(d.path(), 0);
    assert_eq!(collect(&mut t), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    active.write_all(&rec(8)).unwrap();
    active.write_all(&rec(9)).unwrap();
    // Within the segment being read: the records between are passed over.
    t.skip_to(9).unwrap();
    assert_eq!(collect(&mut t), vec![9]);
    // Back is no skip.
    t.skip_to(3).unwrap();
    assert!(collect(&mut t).is_empty());
    // Into a later segment: opened at once.
    write_segment(d.path(), 10, 10..14);
    t.skip_to(12).unwrap();
    assert_eq!(collect(&mut t), vec![12, 13]);
    // From a tail that has not read yet.
    let mut fresh = Tail::new(d.path(), 0);
    fresh.skip_to(6).unwrap();
    assert_eq!(collect(&mut fresh), (6..14).collect::<Vec<_>>());
    assert_eq!(t.stats(), TailStats::default());
    assert_eq!(fresh.stats(), TailStats::default());
}

#[test]
fn follows_appends_and_rotations_from_a_seq() {
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 0, 0..5);
    let mut active = write_segment(d.path(), 5, 5..8);
    let mut t = Tail::new(d.path(), 3);
    assert_eq!(collect(&mut t), vec![3, 4, 5, 6, 7]);
    assert!(collect(&mut t).is_empty());
    // Half a record: not delivered until whole.
    let r = rec(8);
    active.write_all(&r[..10]).unwrap();
    assert!(collect(&mut t).is_empty());
    active.write_all(&r[10..]).unwrap();
    active.write_all(&rec(9)).unwrap();
    assert_eq!(collect(&mut t), vec![8, 9]);
    write_segment(d.path(), 10, 10..12);
    // A newer segment is looked for at most every 20 ms while idle.
    std::thread::sleep(std::time::Duration::from_millis(25));
    assert_eq!(collect(&mut t), vec![10, 11]);
    assert_eq!(t.next_seq(), 12);
    assert_eq!(t.stats(), TailStats::default());
}

#[test]
fn a_deleted_segment_is_counted_as_missed_and_corruption_skipped() {
    let d = tempfile::tempdir().unwrap();
    let mut f = write_segment(d.path(), 20, 20..21);
    f.write_all(b"garbage!").unwrap();
    f.write_all(&rec(21)).unwrap();
    let mut t = Tail::new(d.path(), 10);
    assert_eq!(collect(&mut t), vec![20, 21]);
    assert_eq!(t.stats().missed_records, 10);
    assert_eq!(t.stats().skipped_bytes, 8);
}

#[test]
fn only_records_the_writer_reported_are_delivered_and_a_cut_batch_is_read_again() {
    let d = tempfile::tempdir().unwrap();
    let f = write_segment(d.path(), 0, 0..3);
    let writer = Arc::new(JournalStats::default());
    writer.next_seq.store(2, Ordering::Release);
    let mut t = Tail::new(d.path(), 0).committed_below(Arc::clone(&writer));
    assert_eq!(collect(&mut t), vec![0, 1], "record 2 is not reported yet");
    // Record 2's write failed and was cut back off; the next batch reuses its number.
    let good = MAGIC.len() + rec(0).len() + rec(1).len();
    f.set_len(good as u64).unwrap();
    // A different record 2, as the retry writes it.
    let meta = Meta {
        seq: 2,
        received_us: 2,
        listener: 0,
        kind: Kind::PlaintextTcp,
        peer: "127.0.0.1:2".into(),
        tenant: String::new(),
        verdict: Default::default(),
    };
    let mut retry = Vec::new();
    record::encode(&meta, b"retried 1 1\n", &mut retry);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(segment::segment_path(d.path(), 0))
        .unwrap();
    file.write_all(&retry).unwrap();
    file.write_all(&rec(3)).unwrap();
    writer.next_seq.store(4, Ordering::Release);
    let mut seen = Vec::new();
    t.read(usize::MAX, |r| seen.push((r.meta.seq, r.payload.to_vec())))
        .unwrap();
    assert_eq!(
        seen,
        vec![(2, b"retried 1 1\n".to_vec()), (3, b"a 3 1\n".to_vec())]
    );
    assert_eq!(t.stats(), TailStats::default());
}

#[test]
fn max_bytes_bounds_one_read() {
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 0, 0..100);
    let mut t = Tail::new(d.path(), 0);
    let mut n = 0;
    t.read(1, |_| n += 1).unwrap();
    assert_eq!(n, 1);
    assert_eq!(collect(&mut t).len(), 99);
}

#[test]
fn a_reader_waiting_for_records_wakes_when_they_are_written() {
    use std::time::{Duration, Instant};
    let stats = Arc::new(crate::journal::JournalStats::default());
    let long = Duration::from_secs(30);
    // Records were written since the reader looked: no wait at all.
    stats.next_seq.store(5, Ordering::Release);
    let t0 = Instant::now();
    stats.appended.wait(&stats.next_seq, 4, long);
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Nothing new: waits until the writer publishes and notifies, not the timeout.
    let reader = Arc::clone(&stats);
    let waiting = std::thread::spawn(move || {
        reader.appended.wait(&reader.next_seq, 5, long);
        reader.next_seq.load(Ordering::Acquire)
    });
    std::thread::sleep(Duration::from_millis(100));
    stats.next_seq.store(6, Ordering::Release);
    stats.appended.notify();
    let t0 = Instant::now();
    assert_eq!(waiting.join().unwrap(), 6);
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Nothing new and nobody writes: the timeout ends the wait.
    stats
        .appended
        .wait(&stats.next_seq, 6, Duration::from_millis(20));
}
