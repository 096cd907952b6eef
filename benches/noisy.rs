//! Noisy-neighbour benchmark: two quiet tenants send as fast as they can, once alone and
//! once while a third tenant sends ten times its `datapoints_per_second` limit, every
//! datapoint a new series (far past its `max_series`). Prints the quiet tenants' ingest
//! rate in both runs and the ratio, and verifies their aggregates exactly each time.
//! Run with `cargo bench --bench noisy`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aggd_testkit::*;

const QUIET_POINTS: usize = 5_000_000; // per quiet tenant
const NOISY_LIMIT: u64 = 20_000; // datapoints per second
const NOISY_RATE: u64 = 10 * NOISY_LIMIT;

fn run(noisy: bool) -> f64 {
    let capture = Capture::start("pickle");
    let dir = tempdir("noisy");
    std::fs::write(
        dir.join("tenants.toml"),
        format!("[tenant.quiet0]\n[tenant.quiet1]\n[tenant.noisy]\ndatapoints_per_second = {NOISY_LIMIT}\nmax_series = 1000\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rules.conf"),
        "<t>.sum (60) = sum <t>.*.*\n<t>.count (60) = count <t>.*.*\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("aggd.toml"),
        format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"rules.conf\"\n[workers]\nflush_tick_ms = 100\n\
             [[destination]]\naddress = \"{}\"\n\
             [tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"noisy-bench-token\"\n",
            capture.addr
        ),
    )
    .unwrap();
    let base = previous_bucket(60);
    let quiet: Vec<Vec<u8>> = (0..2)
        .map(|t| {
            let mut b = Vec::with_capacity(QUIET_POINTS * 32);
            for i in 0..QUIET_POINTS {
                writeln!(
                    b,
                    "quiet{t}.h{}.m{} {} {}",
                    i % 100,
                    i % 97,
                    i % 10,
                    base + (i % 60) as i64
                )
                .unwrap();
            }
            b
        })
        .collect();
    let want_sum: f64 = (0..QUIET_POINTS).map(|i| (i % 10) as f64).sum();
    let (mut child, addrs) = spawn_run(&["-c", dir.join("aggd.toml").to_str().unwrap()], 2);
    let at = |kind: &str| addrs.iter().find(|(k, _)| k == kind).unwrap().1;
    let (addr, admin): (SocketAddr, SocketAddr) = (at("plaintext/tcp"), at("admin/http"));

    let stop = Arc::new(AtomicBool::new(false));
    let noisy_sent = Arc::new(AtomicU64::new(0));
    let noisy_thread = noisy.then(|| {
        // Pre-generated batches of 2 000 new series, one batch every 10 ms.
        let batches: Vec<Vec<u8>> = (0..200)
            .map(|b| {
                let mut v = Vec::new();
                for i in 0..2000 {
                    writeln!(v, "noisy.s{b}x{i}.m 1 {base}").unwrap();
                }
                v
            })
            .collect();
        let (stop, sent) = (stop.clone(), noisy_sent.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let t0 = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&batches[(n / 2000) as usize % batches.len()])
                    .unwrap();
                n += 2000;
                sent.store(n, Ordering::Relaxed);
                let due = Duration::from_secs_f64(n as f64 / NOISY_RATE as f64);
                if let Some(w) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(w);
                }
            }
        })
    });
    // Let the noisy tenant reach its pace first.
    if noisy {
        std::thread::sleep(Duration::from_millis(300));
    }
    let t0 = Instant::now();
    aggd_testkit::workload::send_tcp(addr, quiet);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = (0..2)
            .all(|t| capture.value(&format!("quiet{t}.count"), base) == Some(QUIET_POINTS as f64));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "quiet tenants not aggregated");
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = noisy_thread {
        t.join().unwrap();
    }
    for t in 0..2 {
        assert_eq!(
            capture.value(&format!("quiet{t}.sum"), base),
            Some(want_sum),
            "quiet{t}.sum exact"
        );
    }
    // Every noisy datapoint is admitted or refused with its reason, and what was admitted
    // is bounded by the tenant's limits: its datapoints per second over the run (plus one
    // second's allowance), at most max_series distinct series.
    let sent = noisy_sent.load(Ordering::Relaxed) as f64;
    let refused = |r: &str| metric(admin, &format!("aggd_dropped_total{{reason=\"{r}\"}}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let admitted = loop {
        let admitted = metric(admin, "aggd_received_total") - (2 * QUIET_POINTS) as f64;
        if admitted + refused("rate_limited") + refused("series_limit") == sent {
            break admitted;
        }
        assert!(
            Instant::now() < deadline,
            "noisy datapoints unaccounted for"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let noisy_secs = secs + 0.3 + 1.0;
    assert!(
        admitted <= NOISY_LIMIT as f64 * noisy_secs,
        "{admitted} admitted in {noisy_secs} s"
    );
    assert!(
        !noisy || admitted >= 1000.0,
        "the first max_series series are admitted"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while capture.value("noisy.count", base).unwrap_or(0.0) < admitted {
        assert!(
            Instant::now() < deadline,
            "admitted noisy datapoints not aggregated"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let rate = (2 * QUIET_POINTS) as f64 / secs;
    let noisy_counted = capture.value("noisy.count", base).unwrap_or(0.0);
    assert_eq!(
        noisy_counted, admitted,
        "every admitted datapoint counted, no other"
    );
    assert_eq!(
        capture.value("noisy.sum", base).unwrap_or(0.0),
        admitted,
        "values are 1"
    );
    println!(
        "quiet tenants{}: {} datapoints in {secs:.3} s = {rate:.0} datapoints/s{}",
        if noisy {
            " beside the noisy tenant"
        } else {
            " alone"
        },
        2 * QUIET_POINTS,
        if noisy {
            format!(
                "; noisy sent {} (10 × its {NOISY_LIMIT}/s limit, each a new series), {noisy_counted} admitted",
                noisy_sent.load(Ordering::Relaxed)
            )
        } else {
            String::new()
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("noisy-neighbour benchmark: run with `cargo bench --bench noisy`");
        return;
    }
    let alone = run(false);
    let beside = run(true);
    println!(
        "quiet tenants' rate beside the noisy one: {:.1} % of alone",
        beside / alone * 100.0
    );
}
