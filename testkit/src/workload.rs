//! The workload shared by the end-to-end benchmarks (`ingest`, `compare`): generation,
//! senders, exact verification at the downstream, and process CPU/RSS from /proc.
//!
//! Input series are `bench.h{0..H}.m{0..M}` (M = `AGGD_BENCH_METRICS`, 500); the rules
//! `bench.sum.<m> (60) = sum bench.*.<m>` and `bench.count.<m> (60) = count bench.*.<m>`
//! turn them into 2·M output series (1 000) whatever the number of input series `M·H`.
//! Datapoint `i` is series `i mod S`, value `i mod 10`, sent by connection `i mod C`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Capture;

/// An environment variable as a number, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + sys, seconds) and peak RSS (`VmHWM`, bytes) of a process, from /proc.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let (cpu, _) = cpu_ticks(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, hwm_kb * 1024)
}

/// (user + sys seconds, clock ticks) of a process: fields 14 and 15 of `/proc/PID/stat`,
/// in USER_HZ (100 per second on Linux).
fn cpu_ticks(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return (0.0, 0);
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (ticks as f64 / 100.0, ticks)
}

/// The benchmark workload, from the environment.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Datapoints (`AGGD_BENCH_POINTS`, 10 000 000).
    pub points: usize,
    /// Input series (`AGGD_BENCH_SERIES`, 100 000; rounded down to a multiple of
    /// `metrics`).
    pub series: usize,
    /// Metrics per host (`AGGD_BENCH_METRICS`, 500): each becomes one `sum` and one
    /// `count` output series.
    pub metrics: usize,
    /// TCP connections (`AGGD_BENCH_CONNECTIONS`, 4).
    pub conns: usize,
    /// Aggregation rules in all (`AGGD_BENCH_RULES`, 2): the sum and count rules plus
    /// rules that match none of the workload's paths.
    pub rules: usize,
}

impl Workload {
    /// Reads the `AGGD_BENCH_*` variables.
    pub fn from_env() -> Workload {
        let metrics = env_or("AGGD_BENCH_METRICS", 500).max(1);
        Workload {
            points: env_or("AGGD_BENCH_POINTS", 10_000_000),
            series: (env_or("AGGD_BENCH_SERIES", 100_000) / metrics).max(1) * metrics,
            metrics,
            conns: env_or("AGGD_BENCH_CONNECTIONS", 4).max(1),
            rules: env_or("AGGD_BENCH_RULES", 2).max(2),
        }
    }

    /// Hosts: input series per metric.
    pub fn hosts(&self) -> usize {
        self.series / self.metrics
    }

    /// The `aggregation-rules.conf` text.
    pub fn rules_conf(&self) -> String {
        let mut s = String::from(
            "bench.sum.<m> (60) = sum bench.*.<m>\nbench.count.<m> (60) = count bench.*.<m>\n",
        );
        for i in 0..self.rules - 2 {
            s.push_str(&format!("other{i}.sum.<m> (60) = sum other{i}.*.<m>\n"));
        }
        s
    }

    /// The datapoints as carbon plaintext, one buffer per connection, every timestamp
    /// `ts(i)`; with the expected sums and counts per metric.
    pub fn generate(&self, ts: impl Fn(usize) -> i64) -> Payload {
        let hosts = self.hosts();
        let mut conns = vec![Vec::with_capacity(self.points / self.conns * 34); self.conns];
        let mut sum = vec![0u64; self.metrics];
        let mut count = vec![0u64; self.metrics];
        for i in 0..self.points {
            let s = i % self.series;
            let (h, m) = (s % hosts, s / hosts);
            let v = (i % 10) as u64;
            sum[m] += v;
            count[m] += 1;
            writeln!(conns[i % self.conns], "bench.h{h}.m{m} {v} {}", ts(i)).unwrap();
        }
        Payload {
            conns,
            points: self.points,
            sum,
            count,
        }
    }

    /// One datapoint of value 0 per input series at `ts`, split like [`Workload::generate`]
    /// splits series over connections, added to `p`'s expected counts. Sent first, it
    /// fills the route caches: what follows measures the steady state.
    pub fn warmup(&self, ts: i64, p: &mut Payload) -> Vec<Vec<u8>> {
        let hosts = self.hosts();
        let mut out = vec![Vec::new(); self.conns];
        for s in 0..self.series {
            let (h, m) = (s % hosts, s / hosts);
            p.count[m] += 1;
            writeln!(out[s % self.conns], "bench.h{h}.m{m} 0 {ts}").unwrap();
        }
        p.points += self.series;
        out
    }
}

/// Generated input and what the aggregates must be.
pub struct Payload {
    /// Carbon plaintext per connection.
    pub conns: Vec<Vec<u8>>,
    /// Datapoints the expected counts cover.
    pub points: usize,
    /// Expected `bench.sum.m{m}`.
    pub sum: Vec<u64>,
    /// Expected `bench.count.m{m}`.
    pub count: Vec<u64>,
}

impl Payload {
    /// Datapoints counted so far by the `count` aggregates at `ts`.
    pub fn counted(&self, capture: &Capture, ts: i64) -> u64 {
        let r = capture.received.lock().unwrap();
        (0..self.sum.len())
            .filter_map(|m| r.last.get(&(format!("bench.count.m{m}"), ts)))
            .map(|v| *v as u64)
            .sum()
    }

    /// Waits up to `limit` until the counts cover every datapoint, then checks every sum
    /// and count exactly. If the counts never cover every datapoint, what did arrive must
    /// still be consistent with datapoints lost whole (a count and a sum below the expected
    /// ones, and a complete count with its exact sum): [`Mismatch::Missing`]; anything else
    /// is [`Mismatch::Wrong`].
    pub fn verify(&self, capture: &Capture, ts: i64, limit: Duration) -> Result<(), Mismatch> {
        let deadline = Instant::now() + limit;
        while self.counted(capture, ts) < self.points as u64 {
            if Instant::now() > deadline {
                self.consistent_with_loss(capture, ts)?;
                return Err(Mismatch::Missing(format!(
                    "only {} of {} datapoints aggregated",
                    self.counted(capture, ts),
                    self.points
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for m in 0..self.sum.len() {
            for (name, want) in [("sum", self.sum[m]), ("count", self.count[m])] {
                let path = format!("bench.{name}.m{m}");
                let got = capture.value(&path, ts);
                if got != Some(want as f64) {
                    return Err(Mismatch::Wrong(format!(
                        "{path} at {ts}: got {got:?}, want {want}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every series' count and sum at most the expected ones (values are never negative),
    /// and exact where the count is complete.
    fn consistent_with_loss(&self, capture: &Capture, ts: i64) -> Result<(), Mismatch> {
        for m in 0..self.sum.len() {
            let sum = capture.value(&format!("bench.sum.m{m}"), ts).unwrap_or(0.0);
            let count = capture
                .value(&format!("bench.count.m{m}"), ts)
                .unwrap_or(0.0);
            let (want_sum, want_count) = (self.sum[m] as f64, self.count[m] as f64);
            if count > want_count || sum > want_sum || (count == want_count && sum != want_sum) {
                return Err(Mismatch::Wrong(format!(
                    "bench.*.m{m} at {ts}: count {count} sum {sum}, want at most {want_count} and {want_sum}"
                )));
            }
        }
        Ok(())
    }
}

/// How aggregates differ from what the workload must give.
#[derive(Debug)]
pub enum Mismatch {
    /// Datapoints are missing, and what arrived is consistent with their loss.
    Missing(String),
    /// A value is wrong: more than was sent, or a complete count with the wrong sum.
    Wrong(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Missing(m) => write!(f, "missing: {m}"),
            Mismatch::Wrong(m) => write!(f, "wrong: {m}"),
        }
    }
}

/// Writes each buffer over its own TCP connection to `addr`, all at once; returns when
/// every byte is written.
pub fn send_tcp(addr: SocketAddr, conns: Vec<Vec<u8>>) {
    let senders: Vec<_> = conns
        .into_iter()
        .map(|p| {
            std::thread::spawn(move || TcpStream::connect(addr).unwrap().write_all(&p).unwrap())
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
}

/// When a process stopped working: the first moment after `after` from which its CPU
/// time grows by at most 20 ms over the next 300 ms, found by sampling `/proc` every
/// 5 ms. Measures ingest for daemons whose output comes later (carbon-c-relay emits a
/// bucket only once it expires). Returns that moment and the CPU seconds used up to it.
pub fn wait_idle(pid: u32, after: Instant) -> (Instant, f64) {
    let window = Duration::from_millis(300);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut i = 0; // first candidate moment not yet ruled out
    loop {
        let now = Instant::now();
        samples.push((now, cpu_ticks(pid).1));
        while i < samples.len() {
            let (t, c) = samples[i];
            if t < after {
                i += 1;
                continue;
            }
            if now.duration_since(t) < window {
                break; // its window is not over yet
            }
            let end = samples[i..]
                .iter()
                .take_while(|(u, _)| u.duration_since(t) <= window)
                .last()
                .unwrap();
            if end.1 - c <= 2 {
                return (t, c as f64 / 100.0);
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
