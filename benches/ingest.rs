//! End-to-end ingest benchmark: the real `aggd` binary, carbon plaintext over loopback TCP,
//! sum and count rules, aggregates verified exactly at a capturing downstream.
//!
//! Workload (defaults; override with environment variables):
//! - `AGGD_BENCH_POINTS` datapoints (10 000 000) over `AGGD_BENCH_SERIES` input series
//!   (100 000: `bench.h{0..199}.m{0..S/200}`), sent by `AGGD_BENCH_CONNECTIONS` (4) TCP
//!   connections, every datapoint in the previous 60 s interval;
//! - rules `bench.sum.<m> (60) = sum bench.*.<m>` and `bench.count.<m> (60) = count …`:
//!   1 000 output series for 100 000 inputs.
//!
//! Runs the workload twice, with the journal off and on (`fsync = "interval"`, 1 s), then
//! times `aggd replay --dry-run` over the journaled window. Prints, per run, datapoints/s
//! (from the first byte sent until the downstream holds every aggregate, so it includes up
//! to one flush tick of 100 ms), aggd's CPU time (user + sys, from /proc) per datapoint and
//! peak RSS; then the journal's throughput cost and replay's read rate.
//! Run with `cargo bench --bench ingest`; `AGGD_BENCH_JOURNAL=off` or `=on` runs one mode.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user + sys CPU seconds, peak RSS bytes) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = 100.0; // USER_HZ is 100 on Linux.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / hz, hwm_kb * 1024)
}

/// One measured run.
struct Run {
    dps: f64,
    cpu_ns: f64,
    dir: std::path::PathBuf,
    cfg: std::path::PathBuf,
    base: i64,
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either
    // way the full run happens only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest benchmark: run with `cargo bench --bench ingest`");
        return;
    }
    let mode = std::env::var("AGGD_BENCH_JOURNAL").unwrap_or_default();
    let off = (mode != "on").then(|| run(false));
    let on = (mode != "off").then(|| run(true));
    if let (Some(off), Some(on)) = (&off, &on) {
        println!(
            "journal cost: {:.1} % throughput, {:+.0} ns/datapoint CPU",
            (1.0 - on.dps / off.dps) * 100.0,
            on.cpu_ns - off.cpu_ns
        );
    }
    if let Some(on) = &on {
        let t0 = Instant::now();
        let text = aggd_ok([
            "replay".as_ref(),
            "--dry-run".as_ref(),
            "-c".as_ref(),
            on.cfg.as_os_str(),
            "--from".as_ref(),
            (on.base - 60).to_string().as_ref(),
            "--to".as_ref(),
            (on.base + 60).to_string().as_ref(),
        ]);
        println!("replay: {}", text.trim());
        println!(
            "  wall time including process start: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&on.dir);
    }
}

fn run(journal: bool) -> Run {
    let points = env_or("AGGD_BENCH_POINTS", 10_000_000);
    let proto: &'static str = match std::env::var("AGGD_BENCH_PROTOCOL").as_deref() {
        Ok("pickle") => "pickle",
        Ok("udp") => "udp",
        _ => "plaintext",
    };
    let series = env_or("AGGD_BENCH_SERIES", 100_000).max(200);
    let conns = env_or("AGGD_BENCH_CONNECTIONS", 4).max(1);
    let conns_f = conns as f64;
    let hosts = 200;
    let metrics = series / hosts;

    let capture = Capture::start("pickle");
    let dir = tempdir("bench");
    std::fs::write(
        dir.join("rules.conf"),
        "bench.sum.<m> (60) = sum bench.*.<m>\nbench.count.<m> (60) = count bench.*.<m>\n",
    )
    .unwrap();
    let cfg = dir.join("aggd.toml");
    let journal_section = if journal {
        "[journal]\ndir = \"journal\"\nfsync = \"interval\"\nfsync_interval = \"1s\"\n"
    } else {
        ""
    };
    std::fs::write(
        &cfg,
        format!(
            "[[listen]]\nprotocol = \"{}\"\ntransport = \"{}\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"rules.conf\"\n\
             [workers]\nflush_tick_ms = 100\n\
             [[destination]]\naddress = \"{}\"\nprotocol = \"pickle\"\n{journal_section}",
            if proto == "pickle" {
                "pickle"
            } else {
                "plaintext"
            },
            if proto == "udp" { "udp" } else { "tcp" },
            capture.addr
        ),
    )
    .unwrap();

    let base = previous_bucket(60);
    eprintln!("generating {points} datapoints over {series} series …");
    let mut payloads = vec![Vec::with_capacity(points / conns * 32); conns];
    let mut want_sum = vec![0u64; metrics];
    for i in 0..points {
        let s = i % (hosts * metrics);
        let (h, m) = (s % hosts, s / hosts);
        let v = (i % 10) as u64;
        want_sum[m] += v;
        writeln!(
            payloads[i % conns],
            "bench.h{h}.m{m} {v} {}",
            base + (i % 60) as i64
        )
        .unwrap();
    }
    let mut want_count = vec![0u64; metrics];
    for i in 0..points {
        want_count[(i % (hosts * metrics)) / hosts] += 1;
    }
    // Pickle: the same datapoints as carbon pickle frames of 500 (protocol 2).
    if proto == "pickle" {
        for p in payloads.iter_mut() {
            let text = std::mem::take(p);
            let pts: Vec<aggd::datapoint::OutPoint> = aggd::codec::plaintext::lines(&text)
                .filter_map(|l| {
                    aggd::codec::plaintext::parse_line(l, 0.0, &aggd::codec::Limits::default())
                        .ok()
                        .flatten()
                })
                .map(|d| aggd::datapoint::OutPoint {
                    path: d.path.into(),
                    timestamp: d.timestamp,
                    value: aggd::datapoint::OutValue::Float(d.value),
                })
                .collect();
            aggd::codec::pickle::encode_frames(&pts, 500, p).unwrap();
        }
    }

    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 1);
    let addr: SocketAddr = addrs[0].1;
    let pid = child.id();

    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    let udp_rate = env_or("AGGD_BENCH_UDP_RATE", 2_000_000) as f64;
    let senders: Vec<_> = payloads
        .into_iter()
        .map(|p| {
            std::thread::spawn(move || {
                if proto != "udp" {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&p).unwrap();
                    return;
                }
                // Multi-line datagrams of up to 60 KB, paced to the rate (per sender).
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let t0 = Instant::now();
                let (mut sent, mut rest) = (0usize, &p[..]);
                while !rest.is_empty() {
                    let cut = rest[..rest.len().min(60_000)]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .unwrap()
                        + 1;
                    sock.send_to(&rest[..cut], addr).unwrap();
                    sent += rest[..cut].iter().filter(|b| **b == b'\n').count();
                    rest = &rest[cut..];
                    let due = Duration::from_secs_f64(sent as f64 / (udp_rate / conns_f));
                    if let Some(w) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(w);
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let sent_at = t0.elapsed();
    let total = points as f64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut complete = true;
    loop {
        let counted: f64 = (0..metrics)
            .filter_map(|m| capture.value(&format!("bench.count.m{m}"), base))
            .sum();
        if counted == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {counted} of {total} datapoints aggregated"
        );
        // UDP can lose datagrams: stop waiting once nothing more arrives for 3 s.
        if proto == "udp" && t0.elapsed() > sent_at + Duration::from_secs(3) {
            println!(
                "  UDP: {counted} of {total} datapoints aggregated ({} lost)",
                total - counted
            );
            complete = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = t0.elapsed();
    let (cpu1, rss) = proc_usage(pid);

    for m in (0..metrics).filter(|_| complete) {
        assert_eq!(
            capture.value(&format!("bench.sum.m{m}"), base),
            Some(want_sum[m] as f64),
            "bench.sum.m{m}"
        );
        assert_eq!(
            capture.value(&format!("bench.count.m{m}"), base),
            Some(want_count[m] as f64),
            "bench.count.m{m}"
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success());

    let secs = elapsed.as_secs_f64();
    let cpu = cpu1 - cpu0;
    println!(
        "ingest {proto}, journal {}: {points} datapoints, {series} input series, {} output series, {conns} senders",
        if journal {
            "on (fsync every 1 s)"
        } else {
            "off"
        },
        metrics * 2
    );
    println!(
        "  all bytes written after {:.3} s; all aggregates verified after {secs:.3} s",
        sent_at.as_secs_f64()
    );
    println!("  throughput: {:.0} datapoints/s", total / secs);
    println!(
        "  aggd CPU: {cpu:.2} s user+sys = {:.0} ns/datapoint",
        cpu * 1e9 / total
    );
    println!("  aggd peak RSS: {:.1} MB", rss as f64 / 1e6);
    if !journal {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Run {
        dps: total / secs,
        cpu_ns: cpu * 1e9 / total,
        dir,
        cfg,
        base,
    }
}
