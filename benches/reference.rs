//! The no-IO reference: what this machine can do with the ingest benchmark's bytes, as the
//! floor aggd's CPU per datapoint is measured against (`docs/performance.md`, "Cost
//! table").
//!
//! The same workload bytes as `cargo bench --bench ingest` (`aggd_testkit::workload`,
//! the same `AGGD_BENCH_*` variables), already in memory, through the simplest loop that
//! computes the same aggregates:
//! - split lines and fields with memchr;
//! - parse the value and timestamp with the standard library's `f64` parser;
//! - look the metric path up in a hash map (aHash) of path → output index, filled on a
//!   path's first datapoint by parsing its metric node (the "rule");
//! - add into flat per-output `sum` and `count` tables for the one interval.
//!
//! No sockets, no journal, no threads handing work on, no emission. It runs once on one
//! thread over every connection's bytes, then on two threads, each over half of the
//! connections with tables of its own (merged at the end). Every sum and count is checked
//! against the workload's expected values, so the loop cannot skip work. Prints ns per
//! datapoint (thread CPU time) and datapoints/s.
//!
//! Run with `cargo bench --bench reference`.

use std::collections::HashMap;
use std::time::Instant;

use aggd_testkit::workload::Workload;

/// The tables one thread fills: per output metric, the sum and count of its interval.
struct Tables {
    routes: HashMap<Box<[u8]>, u32, ahash::RandomState>,
    sum: Vec<f64>,
    count: Vec<u64>,
}

impl Tables {
    fn new(metrics: usize) -> Tables {
        Tables {
            routes: HashMap::with_hasher(ahash::RandomState::new()),
            sum: vec![0.0; metrics],
            count: vec![0; metrics],
        }
    }

    /// The output a path feeds: `bench.h<h>.m<m>` → `m`, computed once per path.
    #[inline]
    fn route(&mut self, path: &[u8]) -> u32 {
        if let Some(&m) = self.routes.get(path) {
            return m;
        }
        let dot = memchr::memrchr(b'.', path).expect("bench.h.m");
        let m: u32 = std::str::from_utf8(&path[dot + 2..])
            .unwrap()
            .parse()
            .unwrap();
        self.routes.insert(path.into(), m);
        m
    }

    /// Aggregates every line of `bytes` into the interval starting at `base`.
    fn run(&mut self, bytes: &[u8], base: f64) -> u64 {
        let mut n = 0;
        let mut rest = bytes;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            let sp1 = memchr::memchr(b' ', line).unwrap();
            let sp2 = sp1 + 1 + memchr::memchr(b' ', &line[sp1 + 1..]).unwrap();
            let value: f64 = parse(&line[sp1 + 1..sp2]);
            let ts: f64 = parse(&line[sp2 + 1..]);
            let start = ts - ts.rem_euclid(60.0);
            assert!(start == base, "one interval");
            let m = self.route(&line[..sp1]) as usize;
            self.sum[m] += value;
            self.count[m] += 1;
            n += 1;
        }
        n
    }
}

#[inline]
fn parse(b: &[u8]) -> f64 {
    // The bytes are ASCII digits: from_utf8 is a validation pass, as a real parser has.
    std::str::from_utf8(b).unwrap().parse().unwrap()
}

/// This thread's CPU time, seconds.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t)
    };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reference benchmark: run with `cargo bench --bench reference`");
        return;
    }
    let w = Workload::from_env();
    let base = 1_800_000_000.0;
    let payload = w.generate(|_| base as i64 + 7);
    let check = |t: &Tables| {
        for m in 0..w.metrics {
            assert_eq!(t.sum[m], payload.sum[m] as f64, "sum m{m}");
            assert_eq!(t.count[m], payload.count[m], "count m{m}");
        }
    };
    println!(
        "workload: {} datapoints over {} input series, {} outputs, {} connections' bytes",
        w.points,
        w.series,
        2 * w.metrics,
        w.conns
    );
    for round in 0..3 {
        // One thread, every connection's bytes in turn.
        let mut t = Tables::new(w.metrics);
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        let n: u64 = payload.conns.iter().map(|c| t.run(c, base)).sum();
        let (cpu, wall) = (thread_cpu() - cpu0, t0.elapsed().as_secs_f64());
        assert_eq!(n as usize, w.points);
        check(&t);
        println!(
            "round {round}: one thread: {:.1} ns/datapoint CPU, {:.2} M datapoints/s",
            cpu * 1e9 / n as f64,
            n as f64 / wall / 1e6
        );
        // Two threads, half of the connections each.
        let t0 = Instant::now();
        let halves: Vec<(Tables, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|k| {
                    let conns = &payload.conns;
                    let metrics = w.metrics;
                    s.spawn(move || {
                        let mut t = Tables::new(metrics);
                        let cpu0 = thread_cpu();
                        for c in conns.iter().skip(k).step_by(2) {
                            t.run(c, base);
                        }
                        (t, thread_cpu() - cpu0)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = t0.elapsed().as_secs_f64();
        let mut all = Tables::new(w.metrics);
        let mut cpu = 0.0;
        for (t, c) in &halves {
            cpu += c;
            for m in 0..w.metrics {
                all.sum[m] += t.sum[m];
                all.count[m] += t.count[m];
            }
        }
        check(&all);
        println!(
            "round {round}: two threads: {:.1} ns/datapoint CPU, {:.2} M datapoints/s",
            cpu * 1e9 / w.points as f64,
            w.points as f64 / wall / 1e6
        );
    }
}
