//! Remote-write benchmark: the ingest benchmark's workload (`benches/ingest.rs`,
//! `testkit::workload`: 10 M datapoints over 100 000 input series, 1 000 output series,
//! 4 TCP senders, journal off) with Debian's VictoriaMetrics as the only destination,
//! over Prometheus remote write. Timed from the first byte sent until VictoriaMetrics
//! holds every aggregate exactly (read back with `/api/v1/export`; the bucket is already
//! over, so aggregates are re-emitted at every flush while input arrives, and the last,
//! largest sample per series is the full one).
//!
//! `AGGD_BENCH_FORWARD=1` also forwards every raw datapoint (`forward_all`), so the store
//! receives as many samples as aggd receives; then the run also waits until aggd counts
//! every datapoint as delivered. Prints datapoints/s, aggd's and VictoriaMetrics' CPU per
//! datapoint, requests and samples sent. Run with `cargo bench --bench remote_write`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aggd_testkit::promstore::Store;
use aggd_testkit::workload::*;
use aggd_testkit::*;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("remote-write benchmark: run with `cargo bench --bench remote_write`");
        return;
    }
    let forward = env_or("AGGD_BENCH_FORWARD", 0) == 1;
    let w = Workload::from_env();
    let vm = Store::victoria_metrics();
    let vm_pid = vm.pid().expect("running");
    let dir = tempdir("bench-rw");
    std::fs::write(dir.join("rules.conf"), w.rules_conf()).unwrap();
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"rules.conf\"\nroute_cache_entries = {}\nforward_all = {forward}\n\
             [workers]\nflush_tick_ms = 100\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"bench-admin-token\"\n\
             [[destination]]\nprotocol = \"prometheus_remote_write\"\nurl = \"{}\"\n\
             queue_datapoints = {}\n",
            (2 * w.series).max(1_000_000),
            vm.write_url(),
            // Room for the forwarded points while the store ingests them.
            if forward { w.points + 100_000 } else { 100_000 },
        ),
    )
    .unwrap();
    let base = previous_bucket(60);
    eprintln!(
        "generating {} datapoints over {} series …",
        w.points, w.series
    );
    let mut payload = w.generate(|i| base + (i % 60) as i64);
    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 2);
    let input: SocketAddr = aggd_testkit::edge::addr_of(&addrs, "plaintext/tcp");
    let admin: SocketAddr = aggd_testkit::edge::addr_of(&addrs, "admin/http");
    let pid = child.id();

    let (cpu0, _) = proc_usage(pid);
    let (vm_cpu0, _) = proc_usage(vm_pid);
    let t0 = Instant::now();
    send_tcp(input, std::mem::take(&mut payload.conns));
    let sent_at = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    // Every aggregate in the store, exact.
    let ms = base * 1000;
    loop {
        let held = vm.series("bench_(sum|count)_m[0-9]+", Duration::from_secs(7200));
        let last = |name: &str| {
            held.iter()
                .find(|s| s.labels["__name__"] == name)
                .and_then(|s| {
                    s.samples
                        .iter()
                        .filter(|p| p.0 == ms)
                        .map(|p| p.1)
                        .reduce(f64::max)
                })
        };
        let counted: f64 = (0..w.metrics)
            .filter_map(|m| last(&format!("bench_count_m{m}")))
            .sum();
        if counted as usize == payload.points {
            for m in 0..w.metrics {
                assert_eq!(
                    last(&format!("bench_count_m{m}")),
                    Some(payload.count[m] as f64)
                );
                assert_eq!(
                    last(&format!("bench_sum_m{m}")),
                    Some(payload.sum[m] as f64)
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {counted} datapoints in the store"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if forward {
        let sample = "aggd_destination_sent_total{destination=\"http";
        while metric(admin, sample) < payload.points as f64 {
            assert!(Instant::now() < deadline, "forwarded points not delivered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_usage(pid);
    let (vm_cpu1, _) = proc_usage(vm_pid);
    let requests = metric(admin, "aggd_destination_batches_total{destination=\"http");
    let samples = metric(admin, "aggd_destination_sent_total{destination=\"http");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let total = w.points as f64;
    println!(
        "remote write{}: {} datapoints, {} input series, {} output series, {} senders",
        if forward {
            " with every raw datapoint forwarded"
        } else {
            ""
        },
        w.points,
        w.series,
        w.metrics * 2,
        w.conns
    );
    println!(
        "  all bytes written after {:.3} s; the store held every aggregate after {secs:.3} s",
        sent_at.as_secs_f64()
    );
    println!("  throughput: {:.0} datapoints/s", total / secs);
    println!(
        "  aggd CPU: {:.2} s = {:.0} ns/datapoint; VictoriaMetrics CPU: {:.2} s = {:.0} ns/datapoint",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e9 / total,
        vm_cpu1 - vm_cpu0,
        (vm_cpu1 - vm_cpu0) * 1e9 / total
    );
    println!(
        "  {requests} requests, {samples} samples sent; aggd peak RSS {:.1} MB",
        rss as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
