//! The power-loss model: a property-based state-machine test of the journal, the loss
//! ledger and the clean-shutdown mark on the simulated filesystem ([`super::sim`]).
//!
//! Random sequences of appends (batches, group commit), armed write failures, interval
//! fsync ticks, rotations, retention, ledger entries, tail reads, clean shutdowns and
//! power losses run the real writer, recovery, readers and ledger, checked against a model
//! after every start:
//! - every record acknowledged under the `fsync` mode's documented guarantee is present
//!   and byte-exact (`always`: once acknowledged; `interval`: once a sync tick, a rotation
//!   or a clean shutdown followed it; `never`: nothing is promised), unless retention
//!   deleted its segment;
//! - no record is invented (each one read is one the writer was given, at that sequence
//!   number) and none appears twice; sequence numbers increase;
//! - sequence numbers never go back: the next one is above every record present, every
//!   promised one, and the first of the last run's segment;
//! - the next start always succeeds;
//! - the ledger never loses an entry whose flush reported success, and holds none twice;
//! - the clean-shutdown mark is found exactly after a clean shutdown, never after a power
//!   loss.
//!
//! `AGGD_POWER_CASES` sets the number of generated cases (default 10 000; the long run in
//! `docs/journal.md` uses 1 000 000).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::io::JournalIo;
use super::queue::Control;
use super::reader::read_range_with;
use super::recovery::recover;
use super::sim::SimFs;
use super::tail::Tail;
use super::tests::rec;
use super::writer::Writer;
use super::{Fsync, JournalConfig, OnFull, clean, handle, segment};
use crate::ledger::{self, Ledger};
use crate::time::Window;

#[derive(Clone, Debug)]
enum Op {
    /// One batch of records of these payload sizes.
    Append(Vec<u16>),
    /// The next write writes this many bytes, then fails with EIO.
    FailNextWrite(u16),
    /// A tick of the interval fsync thread.
    FsyncTick,
    Rotate,
    Retention,
    /// A drop of this reason, flushed to the ledger.
    Ledger(u8),
    TailRead,
    /// Close (final fsync, index, mark) and start again.
    CleanShutdown,
    /// Power loss, with the simulated filesystem's choices drawn from this seed, and start
    /// again.
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(1u16..400, 1..4).prop_map(Op::Append),
        1 => (0u16..300).prop_map(Op::FailNextWrite),
        2 => Just(Op::FsyncTick),
        1 => Just(Op::Rotate),
        1 => Just(Op::Retention),
        2 => (0u8..3).prop_map(Op::Ledger),
        1 => Just(Op::TailRead),
        1 => Just(Op::CleanShutdown),
        3 => any::<u64>().prop_map(Op::Crash),
    ]
}

const REASONS: [&str; 3] = ["too_old", "destination_full", "unjournaled"];

fn config(fsync: Fsync) -> JournalConfig {
    let dir = PathBuf::from("/sim/journal");
    JournalConfig {
        ledger: dir.join(ledger::FILE),
        dir,
        fsync,
        segment_bytes: 900,
        segment_max_age: Duration::from_secs(3600),
        max_bytes: 2500,
        max_age: Duration::from_secs(86400 * 365 * 100),
        min_free_disk: 0,
        on_full: OnFull::Ingest,
        queue_records: 16,
    }
}

/// What the journal promised, and what it was given.
#[derive(Default)]
struct Model {
    /// Every payload the writer was given, per sequence number it was given at.
    given: HashMap<u64, Vec<Vec<u8>>>,
    /// Acknowledged, not yet promised durable.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Promised durable.
    promised: BTreeMap<u64, Vec<u8>>,
    /// Records below this may have been deleted by retention.
    retained_from: u64,
    /// Ledger entries (reason, count) whose flush reported success.
    ledger: Vec<(&'static str, u64)>,
    /// The mark the next start must find.
    mark: Option<u64>,
    /// The first sequence number of the segment the last run appended to.
    floor: u64,
    /// Distinct payloads and ledger counts.
    counter: u64,
}

impl Model {
    fn promise_acked(&mut self, below: u64) {
        let later = self.acked.split_off(&below);
        self.promised.append(&mut self.acked);
        self.acked = later;
    }
}

struct Node {
    io: Arc<dyn JournalIo>,
    cfg: JournalConfig,
    writer: Writer,
    ledger: Ledger,
    tail: Tail,
    tail_next: u64,
    control: Control,
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// Starts as the daemon does (recovery, a new segment, the mark, the ledger) and checks
/// everything the model promised.
fn start(fs: &SimFs, cfg: &JournalConfig, m: &mut Model) -> Result<Node, TestCaseError> {
    let io: Arc<dyn JournalIo> = Arc::new(fs.clone());
    let report = recover(&cfg.dir, &*io, 0).map_err(|e| fail(format!("recovery: {e}")))?;
    let writer = Writer::new(
        cfg.clone(),
        Arc::clone(&io),
        report.next_seq,
        Arc::default(),
    )
    .map_err(|e| fail(format!("new segment: {e}")))?;
    let mark = clean::take(&*io, &cfg.dir);
    prop_assert_eq!(mark, m.mark.take(), "clean-shutdown mark");
    let ledger = Ledger::open_with(&cfg.ledger, Arc::clone(&io))
        .map_err(|e| fail(format!("ledger: {e}")))?;

    // The records: given, in order, promised ones present and exact.
    let mut read = Vec::new();
    read_range_with(
        &*io,
        &cfg.dir,
        i64::MIN,
        i64::MAX,
        |r| read.push((r.meta.seq, r.payload.to_vec())),
        |_| {},
    )
    .map_err(|e| fail(format!("read: {e}")))?;
    let mut last = None;
    for (seq, payload) in &read {
        prop_assert!(
            last < Some(*seq),
            "seq {} after {:?}: twice or backwards",
            seq,
            last
        );
        last = Some(*seq);
        let given = m.given.get(seq).is_some_and(|g| g.contains(payload));
        prop_assert!(
            given,
            "record {} invented: {:?}",
            seq,
            String::from_utf8_lossy(payload)
        );
    }
    let present: BTreeMap<u64, Vec<u8>> = read.into_iter().collect();
    for (seq, payload) in m.promised.range(m.retained_from..) {
        prop_assert_eq!(
            present.get(seq),
            Some(payload),
            "promised record {} lost",
            seq
        );
    }
    // Sequence numbers never go back.
    let high = [
        present.keys().next_back().map(|s| s + 1),
        m.promised.keys().next_back().map(|s| s + 1),
        Some(m.floor),
    ];
    let need = high.into_iter().flatten().max().unwrap_or(0);
    prop_assert!(
        report.next_seq >= need,
        "next seq {} below {}",
        report.next_seq,
        need
    );
    m.floor = report.next_seq;
    m.acked.clear();

    // The ledger: every entry reported written, once.
    let (entries, _) = ledger::read_with(&*io, &cfg.ledger).map_err(fail)?;
    for (reason, count) in &m.ledger {
        let n = entries
            .iter()
            .filter(|e| e.reason == *reason && e.count == *count)
            .count();
        prop_assert_eq!(n, 1, "ledger entry {} {} found {} times", reason, count, n);
    }
    Ok(Node {
        tail: Tail::with_io(&cfg.dir, 0, Arc::clone(&io)),
        tail_next: 0,
        io,
        cfg: cfg.clone(),
        writer,
        ledger,
        control: Control::default(),
    })
}

impl Node {
    fn append(&mut self, m: &mut Model, sizes: &[u16]) {
        let first = self.writer.next_seq();
        let batch: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                m.counter += 1;
                let mut p = format!("m.{} {} 1\n", m.counter, i).into_bytes();
                p.resize((*n as usize).max(p.len()), b'x');
                m.given.entry(first + i as u64).or_default().push(p.clone());
                rec(1_000_000 + m.counter as i64, &p)
            })
            .collect();
        let before = self.writer.active_first_seq();
        let ok = self.writer.write_or_give_up(&batch, &self.control);
        self.rotated(m, before);
        if ok {
            for (i, r) in batch.iter().enumerate() {
                m.acked.insert(first + i as u64, r.payload.to_vec());
            }
            if self.cfg.fsync == Fsync::Always {
                m.promise_acked(u64::MAX);
            }
        }
    }

    /// A rotation fsyncs the sealed segment: with `always` or `interval`, what it holds is
    /// promised.
    fn rotated(&mut self, m: &mut Model, before: u64) {
        let now = self.writer.active_first_seq();
        if now != before && self.cfg.fsync != Fsync::Never {
            m.promise_acked(now);
        }
    }

    /// Records below the oldest segment file may have been deleted by retention.
    fn retained(&self, m: &mut Model) {
        if let Some((first, _)) = segment::list_with(&*self.io, &self.cfg.dir)
            .ok()
            .and_then(|l| l.into_iter().next())
        {
            m.retained_from = m.retained_from.max(first);
        }
    }

    fn tail_read(&mut self, m: &Model) -> Result<(), TestCaseError> {
        let mut got = Vec::new();
        self.tail
            .read(usize::MAX, |r| got.push((r.meta.seq, r.payload.to_vec())))
            .map_err(|e| fail(format!("tail: {e}")))?;
        for (seq, payload) in got {
            prop_assert!(seq >= self.tail_next, "tail went back to {}", seq);
            self.tail_next = seq + 1;
            let given = m.given.get(&seq).is_some_and(|g| g.contains(&payload));
            prop_assert!(given, "tail read record {} that was never given", seq);
        }
        Ok(())
    }
}

fn run(fsync: Fsync, ops: &[Op]) -> Result<(), TestCaseError> {
    let fs = SimFs::new();
    let cfg = config(fsync);
    let mut m = Model::default();
    let mut node = start(&fs, &cfg, &mut m)?;
    for op in ops {
        match op {
            Op::Append(sizes) => node.append(&mut m, sizes),
            Op::FailNextWrite(n) => fs.fail_next_write(*n as usize),
            Op::FsyncTick => {
                if let Fsync::Interval(_) = fsync {
                    let stats = super::queue::JournalStats::default();
                    handle::sync_active(&node.writer.active, &stats);
                    m.promise_acked(u64::MAX);
                }
            }
            Op::Rotate => {
                let before = node.writer.active_first_seq();
                let _ = node.writer.rotate();
                node.rotated(&mut m, before);
            }
            Op::Retention => node.writer.retention(),
            Op::Ledger(r) => {
                let reason = REASONS[*r as usize % REASONS.len()];
                m.counter += 1;
                node.ledger
                    .record(reason, m.counter, Window::at(m.counter as f64));
                if node.ledger.flush().is_ok() {
                    m.ledger.push((reason, m.counter));
                }
            }
            Op::TailRead => node.tail_read(&m)?,
            Op::CleanShutdown => {
                node.writer.finish();
                if fsync != Fsync::Never {
                    m.promise_acked(u64::MAX);
                }
                let _ = node.ledger.flush();
                let next = node.writer.next_seq();
                m.mark = clean::write(&*node.io, &cfg.dir, next).ok().map(|()| next);
                m.floor = node.writer.active_first_seq();
                drop(node);
                node = start(&fs, &cfg, &mut m)?;
            }
            Op::Crash(seed) => {
                m.floor = node.writer.active_first_seq();
                drop(node);
                let _ = fs.crash(*seed);
                node = start(&fs, &cfg, &mut m)?;
            }
        }
        node.retained(&mut m);
    }
    // Every history ends in a power loss.
    m.floor = node.writer.active_first_seq();
    drop(node);
    fs.crash(0x5eed);
    start(&fs, &cfg, &mut m).map(drop)
}

fn cases() -> u32 {
    std::env::var("AGGD_POWER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn fsync_mode() -> impl Strategy<Value = Fsync> {
    prop_oneof![
        Just(Fsync::Always),
        Just(Fsync::Interval(Duration::from_secs(1))),
        Just(Fsync::Never),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_journal_survives_any_power_loss(
        fsync in fsync_mode(),
        ops in prop::collection::vec(op(), 1..48),
    ) {
        run(fsync, &ops)?;
    }
}
