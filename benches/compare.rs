//! Side-by-side comparison with carbon-c-relay: the same workload, the same machine, one
//! run. Run with `cargo bench --bench compare` (`tests/install-deps.sh` or
//! `apt-get install carbon-c-relay` provides carbon-c-relay; without it only aggd runs).
//!
//! Workload: [`aggd_testkit::workload::Workload`] (10 M datapoints over 100 000 input series, 4 TCP
//! senders, sum and count into 1 000 output series; `AGGD_BENCH_*` change it), every
//! datapoint stamped with the start of the current minute, because carbon-c-relay's
//! aggregator only takes datapoints whose bucket has not expired yet.
//!
//! - aggd: `aggd run` with the rules of `support`, journal on (`fsync = "interval"`, 1 s),
//!   a pickle downstream.
//! - carbon-c-relay: `-w 2` (one worker per core, its default), the equivalent
//!   `aggregate ^bench\.h[0-9]+\.m([0-9]+)$ every 60 seconds expire after 61 seconds
//!   … compute sum write to bench.sum.m\1 compute count write to bench.count.m\1`,
//!   forwarding plaintext to the downstream.
//!
//! Both emit their aggregates only after the minute is over, so ingest is timed from the
//! first byte sent to the moment the process went idle (see [`aggd_testkit::workload::wait_idle`]); CPU
//! is user+sys from /proc up to that moment. Every sum and count is then verified exactly
//! at each downstream. Prints datapoints/s, CPU ns/datapoint and peak RSS for each, and
//! aggd's ratio to carbon-c-relay.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aggd_testkit::workload::*;
use aggd_testkit::*;

/// What one daemon did with the workload.
struct Measured {
    dps: f64,
    cpu_ns: f64,
    rss: u64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("comparison benchmark: run with `cargo bench --bench compare`");
        return;
    }
    let w = Workload::from_env();
    println!(
        "workload: {} datapoints, {} input series, {} output series, {} rules, {} TCP senders",
        w.points,
        w.series,
        2 * w.metrics,
        w.rules,
        w.conns
    );
    let aggd = measure("aggd", &w, |rules, downstream| {
        let dir = tempdir("compare");
        std::fs::write(dir.join("rules.conf"), rules).unwrap();
        let cfg = dir.join("aggd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                 [aggregation]\nrules = \"rules.conf\"\n[workers]\nflush_tick_ms = 100\n\
                 [[destination]]\naddress = \"{downstream}\"\nprotocol = \"pickle\"\n\
                 [journal]\ndir = \"journal\"\nfsync = \"interval\"\nfsync_interval = \"1s\"\n"
            ),
        )
        .unwrap();
        let (child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 1);
        (child, addrs[0].1, dir)
    });
    let relay = Command::new("carbon-c-relay")
        .arg("-v")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(version) = relay else {
        println!("carbon-c-relay is not installed (apt-get install carbon-c-relay): no ratio");
        return;
    };
    println!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let relay = measure("carbon-c-relay", &w, |_, downstream| {
        let dir = tempdir("compare-relay");
        let port = free_port();
        let conf = dir.join("relay.conf");
        std::fs::write(
            &conf,
            format!(
                "listen type linemode 127.0.0.1:{port} proto tcp ;\n\
                 cluster out forward {downstream} ;\n\
                 aggregate ^bench\\.h[0-9]+\\.m([0-9]+)$\n  every 60 seconds\n  \
                 expire after 61 seconds\n  timestamp at start of bucket\n  \
                 compute sum write to bench.sum.m\\1\n  compute count write to bench.count.m\\1\n  \
                 send to out\n  stop\n  ;\n"
            ),
        )
        .unwrap();
        let child = Command::new("carbon-c-relay")
            .args(["-f", conf.to_str().unwrap(), "-w", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "carbon-c-relay did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, addr, dir)
    });
    println!(
        "aggd / carbon-c-relay: {:.2}x datapoints/s, {:.2}x less CPU per datapoint, {:.2}x peak RSS",
        aggd.dps / relay.dps,
        relay.cpu_ns / aggd.cpu_ns,
        aggd.rss as f64 / relay.rss as f64
    );
}

/// A port nobody listens on now (bound then released), for a daemon that must be told
/// its port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the workload through the daemon `start` launches (given the rules and the
/// downstream's address, it returns the process, its listening address and a directory to
/// remove), verifies the aggregates and prints the figures.
fn measure(
    name: &str,
    w: &Workload,
    start: impl FnOnce(&str, SocketAddr) -> (Child, SocketAddr, std::path::PathBuf),
) -> Measured {
    // Generating takes a few seconds and sending up to ~15 s: start early in a minute so the
    // whole workload falls in one bucket that has not expired.
    let second = now() as i64 % 60;
    if second > 25 {
        std::thread::sleep(Duration::from_secs((61 - second) as u64));
    }
    let n = now() as i64;
    let bucket = n - n % 60;
    let payload = w.generate(|_| bucket);
    let capture = Capture::start(if name == "aggd" {
        "pickle"
    } else {
        "plaintext"
    });
    let (mut child, addr, dir) = start(&w.rules_conf(), capture.addr);
    let pid = child.id();
    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    send_tcp(addr, payload.conns.clone());
    let (idle, cpu1) = wait_idle(pid, t0);
    let (_, rss) = proc_usage(pid);
    let secs = idle.duration_since(t0).as_secs_f64();
    let m = Measured {
        dps: w.points as f64 / secs,
        cpu_ns: (cpu1 - cpu0) * 1e9 / w.points as f64,
        rss,
    };
    // Aggregates arrive once the minute is over (carbon-c-relay: once the bucket expires).
    let wait = Duration::from_secs((bucket + 130 - now() as i64).max(10) as u64);
    let verified = payload.verify(&capture, bucket, wait);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    if let Err(e) = verified {
        panic!("{name}: aggregates wrong: {e}");
    }
    println!(
        "{name}: ingest {secs:.3} s = {:.0} datapoints/s; CPU {:.0} ns/datapoint; peak RSS {:.1} MB; every aggregate verified",
        m.dps,
        m.cpu_ns,
        m.rss as f64 / 1e6
    );
    m
}
