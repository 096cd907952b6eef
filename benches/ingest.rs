//! End-to-end ingest benchmark: the real `aggd` binary, carbon plaintext over loopback TCP,
//! sum and count rules, aggregates verified exactly at a capturing downstream.
//!
//! Workload (see `testkit/src/workload.rs`; defaults, override with environment variables):
//! - `AGGD_BENCH_POINTS` datapoints (10 000 000) over `AGGD_BENCH_SERIES` input series
//!   (100 000: `bench.h{0..S/500}.m{0..499}`), sent by `AGGD_BENCH_CONNECTIONS` (4) TCP
//!   connections, every datapoint in the previous 60 s interval;
//! - rules `bench.sum.<m> (60) = sum bench.*.<m>` and `bench.count.<m> (60) = count …`:
//!   1 000 output series whatever the number of inputs (`AGGD_BENCH_METRICS` = M inputs
//!   per host gives 2·M); `AGGD_BENCH_RULES` = N adds
//!   N − 2 rules that match nothing;
//! - `route_cache_entries` is twice the input series (at least the default 1 000 000);
//! - `AGGD_BENCH_WARMUP=1` first sends one datapoint per series and waits for its
//!   aggregates, so the timed part runs with warm route caches (steady state);
//! - `AGGD_BENCH_PROTOCOL=pickle` sends the same datapoints as pickle frames of 500,
//!   `=udp` as multi-line datagrams of up to 60 KB paced at `AGGD_BENCH_UDP_RATE` (2 M/s).
//!
//! Runs the workload twice, with the journal off and on (`fsync = "interval"`, 1 s), then
//! times `aggd replay` of the journaled window to a second capture, whose aggregates are
//! verified like the live ones. Prints, per run, datapoints/s
//! (from the first byte sent until the downstream holds every aggregate, so it includes up
//! to one flush tick of 100 ms), aggd's CPU time (user + sys, from /proc) per datapoint and
//! peak RSS; then the journal's throughput cost and replay's read rate.
//! Run with `cargo bench --bench ingest`; `AGGD_BENCH_JOURNAL=off` or `=on` runs one mode.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aggd_testkit::workload::*;
use aggd_testkit::*;

/// One measured run.
struct Run {
    /// What the aggregates must be (for replay's).
    payload: Payload,
    /// The input protocol.
    proto: &'static str,
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
        // Replay recomputes the window from the journal and sends it: the same aggregates.
        let replayed = Capture::start("pickle");
        let dest = replayed.addr.to_string();
        let t0 = Instant::now();
        let text = aggd_ok([
            "replay".as_ref(),
            "--dest".as_ref(),
            dest.as_ref(),
            "-c".as_ref(),
            on.cfg.as_os_str(),
            "--from".as_ref(),
            (on.base - 60).to_string().as_ref(),
            "--to".as_ref(),
            (on.base + 60).to_string().as_ref(),
        ]);
        println!("replay: {}", text.trim());
        match on
            .payload
            .verify(&replayed, on.base, Duration::from_secs(60))
        {
            Ok(()) => println!("  replayed aggregates: every sum and count exact"),
            // UDP input lost in the kernel was never journaled; what replay sends must
            // still be consistent.
            Err(Mismatch::Missing(e)) if on.proto == "udp" => println!("  replay: {e}"),
            Err(e) => panic!("replay: {e}"),
        }
        println!(
            "  wall time including process start: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&on.dir);
    }
}

fn run(journal: bool) -> Run {
    let w = Workload::from_env();
    let proto: &'static str = match std::env::var("AGGD_BENCH_PROTOCOL").as_deref() {
        Ok("pickle") => "pickle",
        Ok("udp") => "udp",
        _ => "plaintext",
    };
    let warm = proto != "udp" && env_or("AGGD_BENCH_WARMUP", 0) == 1;
    let conns_f = w.conns as f64;

    let capture = Capture::start("pickle");
    let dir = tempdir("bench");
    std::fs::write(dir.join("rules.conf"), w.rules_conf()).unwrap();
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
             [aggregation]\nrules = \"rules.conf\"\nroute_cache_entries = {}\n\
             [workers]\nflush_tick_ms = 100\n\
             [[destination]]\naddress = \"{}\"\nprotocol = \"pickle\"\n{journal_section}",
            if proto == "pickle" {
                "pickle"
            } else {
                "plaintext"
            },
            if proto == "udp" { "udp" } else { "tcp" },
            // Room for every input path, as an operator would size it.
            (2 * w.series).max(1_000_000),
            capture.addr
        ),
    )
    .unwrap();

    let base = previous_bucket(60);
    eprintln!(
        "generating {} datapoints over {} series …",
        w.points, w.series
    );
    let mut payload = w.generate(|i| base + (i % 60) as i64);
    let warmup = if warm {
        w.warmup(base, &mut payload)
    } else {
        vec![Vec::new(); w.conns]
    };
    // Pickle: the same datapoints as carbon pickle frames of 500 (protocol 2).
    if proto == "pickle" {
        for p in &mut payload.conns {
            *p = to_pickle(p);
        }
    }
    let warmup: Vec<Vec<u8>> = if proto == "pickle" {
        warmup.iter().map(|p| to_pickle(p)).collect()
    } else {
        warmup
    };

    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 1);
    let addr: SocketAddr = addrs[0].1;
    let pid = child.id();

    // Each sender connects and (with AGGD_BENCH_WARMUP=1) sends its warm-up datapoints,
    // then waits for the go.
    let udp_rate = env_or("AGGD_BENCH_UDP_RATE", 2_000_000) as f64;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut go = Vec::new();
    let senders: Vec<_> = payload
        .conns
        .drain(..)
        .zip(warmup)
        .map(|(p, warm)| {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                if proto != "udp" {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&warm).unwrap();
                    ready.send(()).unwrap();
                    go_rx.recv().unwrap();
                    s.write_all(&p).unwrap();
                    return;
                }
                ready.send(()).unwrap();
                go_rx.recv().unwrap();
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
    for _ in 0..w.conns {
        ready_rx.recv().unwrap();
    }
    if warm {
        // The warm-up's bucket is already closed: its counts arrive at the next flush tick.
        let deadline = Instant::now() + Duration::from_secs(300);
        while payload.counted(&capture, base) < w.series as u64 {
            assert!(Instant::now() < deadline, "warm-up not aggregated");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    for g in go {
        g.send(()).unwrap();
    }
    for s in senders {
        s.join().unwrap();
    }
    let sent_at = t0.elapsed();
    let total = w.points as f64;
    let limit = Duration::from_secs(if proto == "udp" { 3 } else { 600 });
    match payload.verify(&capture, base, limit) {
        Ok(()) => {}
        // UDP may lose whole datagrams (consistently); TCP must not lose anything, and no
        // value may ever be wrong.
        Err(Mismatch::Missing(e)) if proto != "udp" => panic!("{e}"),
        Err(Mismatch::Wrong(e)) => panic!("{e}"),
        Err(Mismatch::Missing(_)) => {
            let counted = payload.counted(&capture, base);
            println!(
                "  UDP: {counted} of {} datapoints aggregated ({} lost)",
                payload.points,
                payload.points as u64 - counted
            );
        }
    }
    let elapsed = t0.elapsed();
    let (cpu1, rss) = proc_usage(pid);

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success());

    let secs = elapsed.as_secs_f64();
    let cpu = cpu1 - cpu0;
    println!(
        "ingest {proto}, journal {}: {} datapoints, {} input series, {} output series, {} rules, {} senders{}",
        if journal {
            "on (fsync every 1 s)"
        } else {
            "off"
        },
        w.points,
        w.series,
        w.metrics * 2,
        w.rules,
        w.conns,
        if warm {
            ", route caches warmed first"
        } else {
            ""
        }
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
        payload,
        proto,
        dps: total / secs,
        cpu_ns: cpu * 1e9 / total,
        dir,
        cfg,
        base,
    }
}

/// Carbon plaintext lines re-encoded as carbon pickle frames of 500 (protocol 2).
fn to_pickle(text: &[u8]) -> Vec<u8> {
    let pts: Vec<aggd::datapoint::OutPoint> = aggd::codec::plaintext::lines(text)
        .filter_map(|l| {
            aggd::codec::plaintext::parse_line(l, 0.0, &aggd::codec::Limits::default())
                .ok()
                .flatten()
        })
        .map(|d| aggd::datapoint::OutPoint {
            path: d.path.into(),
            timestamp: d.timestamp,
            value: aggd::datapoint::OutValue::Float(d.value),
            interval: None,
        })
        .collect();
    let mut out = Vec::new();
    aggd::codec::pickle::encode_frames(&pts, 500, &mut out).unwrap();
    out
}
