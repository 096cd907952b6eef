//! Journal faults injected through [`FaultyIo`] into the real writer and recovery: quiet
//! restarts, ENOSPC at any byte (rotation included), EIO, a read-only filesystem, failing
//! fsync, backpressure on a full disk and its end at shutdown's deadline, and the
//! directory lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::io::{Faults, FaultyIo};
use super::segment;
use super::tests::{cfg, read_all, rec, tmp};
use super::writer::Writer;
use super::{Fsync, Journal, OnFull};
use crate::datapoint::Kind;

fn faulty() -> (FaultyIo, Arc<FaultyIo>) {
    let io = FaultyIo::new();
    (io.clone(), Arc::new(io))
}

#[tokio::test]
async fn quiet_runs_never_stop_the_next_start() {
    let guard = tmp("quiet");
    let dir = guard.path();
    for run in 0..5 {
        let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30))
            .unwrap_or_else(|e| panic!("start {run} after {run} quiet runs: {e}"));
        assert_eq!(report.next_seq, 0);
        j.close();
    }
    let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert!(report.empty_removed > 0);
    assert!(j.submit(rec(1, b"a 1 1\n")).await.wait().await);
    j.close();
    for _ in 0..3 {
        Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap().0.close();
    }
    let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert_eq!(report.next_seq, 1);
    assert!(j.submit(rec(2, b"b 1 1\n")).await.wait().await);
    j.close();
    let seqs: Vec<u64> = read_all(dir).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [0, 1]);
    // Only the segments that hold records, plus the last run's (empty) active one.
    assert!(segment::list(dir).unwrap().len() <= 3);
}

#[test]
fn a_segment_file_without_its_header_is_removed_at_start() {
    // What a rotation that hit ENOSPC left behind before this was fixed: an empty file.
    let guard = tmp("headerless");
    let dir = guard.path();
    let mut w = Writer::for_test(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    w.write_batch(&[rec(1, b"a 1 1\n")]).unwrap();
    drop(w);
    std::fs::write(segment::segment_path(dir, 1), b"").unwrap();
    std::fs::write(segment::segment_path(dir, 7), b"AGGD").unwrap();
    let mut w = Writer::for_test(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    // Sequence numbers never go back, even past a segment that held none.
    assert_eq!(w.next_seq(), 7);
    w.write_batch(&[rec(2, b"b 1 1\n")]).unwrap();
    drop(w);
    let seqs: Vec<u64> = read_all(dir).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [0, 7]);
}

/// Writes batches of 3 records, with the disk full after `space` bytes until batch
/// `heal_at`; returns (batches written, records read back after a restart).
fn enospc_run(space: u64, heal_at: usize) -> (Vec<u64>, Vec<u64>) {
    let guard = tmp("enospc");
    let dir = guard.path();
    let (faults, io) = faulty();
    // Small segments: most runs rotate while the disk is full.
    let mut w = Writer::for_test_with(cfg(dir, 400, 1 << 30), io.clone()).unwrap();
    faults.set(Faults {
        space_left: Some(space),
        ..Faults::default()
    });
    let mut written = Vec::new();
    for b in 0..8u64 {
        if b as usize == heal_at {
            faults.set(Faults::default());
        }
        let batch: Vec<_> = (0..3)
            .map(|i| rec((b * 10 + i) as i64, format!("m.{b}.{i} 1 1\n").as_bytes()))
            .collect();
        if w.write_batch(&batch).is_ok() {
            written.push(b);
        }
    }
    drop(w);
    // The next start must succeed and see exactly the batches that were written.
    let w = Writer::for_test_with(cfg(dir, 400, 1 << 30), io).unwrap();
    drop(w);
    let read: Vec<u64> = read_all(dir).iter().map(|r| r.1 as u64 / 10).collect();
    let _ = std::fs::remove_dir_all(dir);
    (written, read)
}

#[test]
fn enospc_at_any_byte_loses_nothing_written_and_never_wedges() {
    for space in 0..700 {
        let (written, read) = enospc_run(space, 5);
        assert!(
            written.contains(&5) && written.contains(&7),
            "space {space}: writing must resume once the disk has room: {written:?}"
        );
        let mut expected: Vec<u64> = written.iter().flat_map(|b| [*b; 3]).collect();
        expected.sort();
        assert_eq!(read, expected, "space {space}");
    }
}

#[test]
fn enospc_while_creating_the_next_segment_keeps_the_current_one() {
    let guard = tmp("rotate-enospc");
    let dir = guard.path();
    let (faults, io) = faulty();
    let mut w = Writer::for_test_with(cfg(dir, 200, 1 << 30), io).unwrap();
    w.write_batch(&[rec(1, &[b'x'; 150])]).unwrap();
    let first = w.active_first_seq();
    faults.set(Faults {
        space_left: Some(0),
        ..Faults::default()
    });
    // This batch needs a new segment; its header cannot be written.
    let e = w.write_batch(&[rec(2, &[b'y'; 150])]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
    assert!(e.to_string().contains(".seg"), "names the file: {e}");
    assert_eq!(w.active_first_seq(), first);
    assert_eq!(segment::list(dir).unwrap().len(), 1, "no half-made segment");
    faults.set(Faults::default());
    w.write_batch(&[rec(3, &[b'z'; 150])]).unwrap();
    assert_ne!(w.active_first_seq(), first);
    drop(w);
    let seqs: Vec<u64> = read_all(dir).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [0, 1]);
}

#[test]
fn eio_and_a_failing_truncate_seal_the_segment() {
    let guard = tmp("eio");
    let dir = guard.path();
    let (faults, io) = faulty();
    let mut w = Writer::for_test_with(cfg(dir, 1 << 20, 1 << 30), io.clone()).unwrap();
    w.write_batch(&[rec(1, b"a 1 1\n")]).unwrap();
    let first = w.active_first_seq();
    // A partial write, then the truncation back fails too (the filesystem went read-only).
    faults.set(Faults {
        space_left: Some(10),
        ..Faults::default()
    });
    assert!(w.write_batch(&[rec(2, b"b 1 1\n")]).is_err());
    faults.set(Faults {
        eio: true,
        ..Faults::default()
    });
    assert!(w.write_batch(&[rec(2, b"b 1 1\n")]).is_err());
    faults.set(Faults::default());
    w.write_batch(&[rec(3, b"c 1 1\n")]).unwrap();
    drop(w);
    let w = Writer::for_test_with(cfg(dir, 1 << 20, 1 << 30), io).unwrap();
    drop(w);
    let got: Vec<(u64, i64)> = read_all(dir).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, [(0, 1), (1, 3)]);
    assert!(first < 1);
}

#[tokio::test]
async fn read_only_filesystem_is_an_error_naming_the_path() {
    let guard = tmp("ro");
    let dir = guard.path();
    let (faults, io) = faulty();
    faults.set(Faults {
        read_only: true,
        ..Faults::default()
    });
    let e = Journal::open_with(cfg(dir, 1 << 20, 1 << 30), io)
        .err()
        .expect("a read-only journal cannot open");
    assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
    assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
}

#[tokio::test]
async fn failing_fsync_with_always_reports_unjournaled() {
    let guard = tmp("fsync");
    let dir = guard.path();
    let (faults, io) = faulty();
    let mut c = cfg(dir, 1 << 20, 1 << 30);
    c.fsync = Fsync::Always;
    let (j, _) = Journal::open_with(c, io).unwrap();
    assert!(j.submit(rec(1, b"a 1 1\n")).await.wait().await);
    faults.set(Faults {
        fail_fsync: true,
        ..Faults::default()
    });
    assert!(!j.submit(rec(2, b"b 1 1\n")).await.wait().await);
    assert!(j.stats().fsync_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(j.stats().unjournaled.load(Ordering::Relaxed), 1);
    faults.set(Faults::default());
    j.close();
}

/// A backpressure journal (queue of 4) whose disk fails with `fault`, and `n` senders
/// submitting one record each; returns the fault switch, the journal, its directory (removed
/// when dropped) and
/// the senders (each resolving to whether its record was journaled).
fn backpressured(
    tag: &str,
    fault: Faults,
    n: i64,
) -> (
    FaultyIo,
    Arc<Journal>,
    tempfile::TempDir,
    Vec<tokio::task::JoinHandle<bool>>,
) {
    let guard = tmp(tag);
    let (faults, io) = faulty();
    let mut c = cfg(guard.path(), 1 << 20, 1 << 30);
    c.on_full = OnFull::Backpressure;
    c.queue_records = 4;
    let (j, _) = Journal::open_with(c, io).unwrap();
    faults.set(fault);
    let senders = (0..n)
        .map(|i| {
            let j = Arc::clone(&j);
            tokio::spawn(async move {
                j.submit(rec(i, format!("m {i} 1\n").as_bytes()))
                    .await
                    .wait()
                    .await
            })
        })
        .collect();
    (faults, j, guard, senders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_every_record_until_the_disk_has_room() {
    let full = Faults {
        space_left: Some(0),
        ..Faults::default()
    };
    let (faults, j, dir, senders) = backpressured("bp", full, 40);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        senders.iter().all(|s| !s.is_finished()),
        "every sender waits while the disk is full"
    );
    assert_eq!(j.stats().unjournaled.load(Ordering::Relaxed), 0);
    faults.set(Faults::default());
    for s in senders {
        assert!(s.await.unwrap(), "journaled once the disk has room");
    }
    j.close();
    assert_eq!(read_all(dir.path()).len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_ends_backpressure_on_a_full_disk() {
    let read_only = Faults {
        read_only: true,
        ..Faults::default()
    };
    let (_faults, j, _dir, senders) = backpressured("bp-stop", read_only, 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    j.begin_shutdown(started + Duration::from_millis(300));
    for s in senders {
        assert!(!s.await.unwrap(), "reported unjournaled, not written");
    }
    let j2 = Arc::clone(&j);
    tokio::task::spawn_blocking(move || j2.close())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(j.stats().unjournaled.load(Ordering::Relaxed), 20);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_directory_is_refused() {
    let guard = tmp("lock");
    let dir = guard.path();
    let (j, _) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert!(j.submit(rec(1, b"a 1 1\n")).await.wait().await);
    let e = Journal::open(cfg(dir, 1 << 20, 1 << 30))
        .err()
        .expect("the directory is locked");
    let msg = e.to_string();
    assert!(msg.contains(&*dir.to_string_lossy()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // The refused open changed nothing: the live segment is still being appended to.
    assert!(j.submit(rec(2, b"b 1 1\n")).await.wait().await);
    j.close();
    let (j, report) = Journal::open(cfg(dir, 1 << 20, 1 << 30)).unwrap();
    assert_eq!(report.next_seq, 2);
    j.close();
}

/// A journal of 3 sealed segments and an active one: (dir guard, records as read with no
/// fault).
fn four_segments() -> (tempfile::TempDir, Vec<(u64, i64, Vec<u8>)>) {
    let guard = tmp("readfaults");
    let dir = guard.path();
    let mut w = Writer::for_test(cfg(dir, 600, 1 << 30)).unwrap();
    for b in 0..12i64 {
        let batch: Vec<_> = (0..3)
            .map(|i| {
                rec(
                    b * 10 + i,
                    format!("m.{b}.{i} {i} 1\n").repeat(5).as_bytes(),
                )
            })
            .collect();
        w.write_batch(&batch).unwrap();
    }
    drop(w);
    assert!(segment::list(dir).unwrap().len() >= 4);
    let all = read_all(dir);
    assert_eq!(all.len(), 36);
    (guard, all)
}

/// Every file's bytes under `dir`, to show a failed start changed nothing.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

/// Reads `tail` until it has delivered records up to `upto` (exclusive) into `seen` (a
/// tail looks for a newer segment at most every 20 ms, so it is polled).
fn tail_to(tail: &mut super::tail::Tail, seen: &mut Vec<u64>, upto: u64) {
    for _ in 0..400 {
        tail.read(usize::MAX, |r| seen.push(r.meta.seq)).unwrap();
        if tail.next_seq() >= upto {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the tail stopped at {} of {upto}", tail.next_seq());
}

fn read_with(io: &FaultyIo, dir: &std::path::Path) -> std::io::Result<Vec<(u64, i64, Vec<u8>)>> {
    let mut out = Vec::new();
    super::reader::read_range_with(
        io,
        dir,
        i64::MIN,
        i64::MAX,
        |r| out.push((r.meta.seq, r.meta.received_us, r.payload.to_vec())),
        |_| {},
    )?;
    Ok(out)
}

#[test]
fn short_reads_give_the_reader_the_tail_and_recovery_the_same_records() {
    let (guard, all) = four_segments();
    let dir = guard.path();
    for max in [1, 7, 29, 4096] {
        let (faults, io) = faulty();
        faults.set(Faults {
            short_reads: Some(max),
            ..Faults::default()
        });
        assert_eq!(
            read_with(&faults, dir).unwrap(),
            all,
            "reader, {max}-byte reads"
        );
        let mut tail = super::tail::Tail::with_io(dir, 5, io.clone());
        let mut seen = Vec::new();
        tail_to(&mut tail, &mut seen, 36);
        assert_eq!(seen, (5..36).collect::<Vec<_>>(), "tail, {max}-byte reads");
        assert_eq!(tail.stats(), super::tail::TailStats::default());
        let before = snapshot(dir);
        let w = Writer::for_test_with(cfg(dir, 600, 1 << 30), io).unwrap();
        assert_eq!(w.next_seq(), 36, "recovery, {max}-byte reads");
        drop(w);
        // Recovery with short reads found nothing torn and cut nothing.
        for (p, b) in before
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|x| x == "seg"))
        {
            assert_eq!(&std::fs::read(p).unwrap(), b, "{}", p.display());
        }
    }
    assert_eq!(read_all(dir), all);
}

#[test]
fn eio_on_a_read_is_an_error_naming_the_file_never_a_wrong_value() {
    let (guard, all) = four_segments();
    let dir = guard.path();
    let (faults, io) = faulty();
    faults.set(Faults {
        read_eio: true,
        ..Faults::default()
    });
    // The reader: an error naming the directory; nothing delivered.
    let e = read_with(&faults, dir).unwrap_err();
    assert_eq!(e.raw_os_error(), None, "wrapped with the path");
    assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
    assert!(e.to_string().contains("Input/output error"), "{e}");
    // Recovery: the start fails naming the path, and touches no file.
    let before = snapshot(dir);
    let e = Writer::for_test_with(cfg(dir, 600, 1 << 30), io.clone())
        .err()
        .expect("a journal that cannot be read cannot start");
    assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
    assert_eq!(snapshot(dir), before, "a failed start changed nothing");
    // Only the segments unreadable (the directory lists): recovery names the segment.
    faults.set(Faults {
        read_eio: true,
        only_under: Some(segment::segment_path(dir, 0)),
        ..Faults::default()
    });
    std::fs::remove_file(segment::index_path(dir, 0)).unwrap();
    let before = snapshot(dir);
    let e = Writer::for_test_with(cfg(dir, 600, 1 << 30), io.clone())
        .err()
        .expect("an unreadable sealed segment without an index stops the start");
    let seg0 = segment::segment_path(dir, 0);
    assert!(e.to_string().contains(&*seg0.to_string_lossy()), "{e}");
    assert_eq!(snapshot(dir), before, "nothing cut, removed or renamed");

    // The tail: an error, its place kept; once the disk reads again it goes on with the
    // next record, skipping none and repeating none.
    faults.set(Faults::default());
    let mut tail = super::tail::Tail::with_io(dir, 0, io.clone());
    let mut seen = Vec::new();
    tail.read(400, |r| seen.push(r.meta.seq)).unwrap();
    assert!(!seen.is_empty() && seen.len() < 36);
    faults.set(Faults {
        read_eio: true,
        ..Faults::default()
    });
    for _ in 0..3 {
        let n = seen.len();
        let e = tail.read(usize::MAX, |r| seen.push(r.meta.seq));
        // What was buffered before the fault may still be delivered; then the error.
        assert!(e.is_err() || seen.len() > n, "{e:?}");
    }
    faults.set(Faults::default());
    tail_to(&mut tail, &mut seen, 36);
    assert_eq!(seen, (0..36).collect::<Vec<_>>());
    assert_eq!(tail.stats(), super::tail::TailStats::default());

    // After the fault the start succeeds and every record is there.
    let w = Writer::for_test_with(cfg(dir, 600, 1 << 30), io).unwrap();
    assert_eq!(w.next_seq(), 36);
    drop(w);
    assert_eq!(read_all(dir), all);
}

/// A follower that keeps what it was handed: (seq, bytes, attachment as u32).
#[derive(Default)]
struct Keep(std::sync::Mutex<Vec<(u64, u64, u32)>>);

impl super::follow::Follower for Keep {
    fn written(&self, seq: u64, bytes: u64, a: super::follow::Attachment) {
        let v = *a.downcast::<u32>().expect("a u32 was attached");
        self.0.lock().unwrap().push((seq, bytes, v));
    }
}

#[tokio::test]
async fn the_follower_gets_exactly_the_records_written_with_attachments_in_order() {
    let guard = tmp("follow");
    let dir = guard.path();
    let (faults, io) = faulty();
    let (j, _) = Journal::open_with(cfg(dir, 1 << 20, 1 << 30), io).unwrap();
    // Written before a follower came: never offered, but counted as offered past.
    assert!(j.submit(rec(1, b"a 1 1\n")).await.wait().await);
    let slot = j.follow_slot();
    assert_eq!(slot.offered_below(), 1);
    let keep = Arc::new(Keep::default());
    j.follow(keep.clone());
    let with = |t: i64, v: u32| {
        let mut r = rec(t, b"b 1 1\n");
        r.attachment = Some(Box::new(v));
        r
    };
    assert!(j.submit(with(2, 10)).await.wait().await);
    // A record without an attachment is written and passed over.
    assert!(j.submit(rec(3, b"c 1 1\n")).await.wait().await);
    // A record the disk refuses is never handed over, and the offer does not move past
    // what was written.
    faults.set(Faults {
        eio: true,
        ..Faults::default()
    });
    assert!(!j.submit(with(4, 11)).await.wait().await);
    assert_eq!(slot.offered_below(), 3);
    faults.set(Faults::default());
    assert!(j.submit(with(5, 12)).await.wait().await);
    assert_eq!(slot.offered_below(), 4);
    j.close();
    let got = keep.0.lock().unwrap().clone();
    // The refused record's sequence number was used again (its write was cut back off).
    let seqs: Vec<(u64, u32)> = got.iter().map(|(s, _, v)| (*s, *v)).collect();
    assert_eq!(seqs, vec![(1, 10), (3, 12)]);
    // Each hand-over names the record's bytes in the segment, as a reader finds them.
    let on_disk = read_all(dir);
    assert_eq!(
        on_disk.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for (seq, bytes, _) in got {
        let (_, t, payload) = &on_disk[seq as usize];
        let meta = super::record::Meta {
            seq,
            received_us: *t,
            listener: 1,
            kind: Kind::PlaintextTcp,
            peer: "127.0.0.1:4000".into(),
            tenant: String::new(),
            verdict: Default::default(),
        };
        assert_eq!(
            bytes,
            super::record::encoded_len(&meta, payload.len()) as u64
        );
    }
}
