//! Cluster-mode benchmark: the real `aggd` binary over real NATS JetStream servers, the
//! ingest benchmark's workload (`testkit::workload`: plaintext over loopback TCP, sum and
//! count rules, every aggregate verified exactly at a capturing downstream).
//!
//! Three runs, in one process so they share the machine's state:
//! 1. **standalone**, journal on (`fsync = "interval"`, 1 s): the baseline;
//! 2. **cluster R=1**: one node against one JetStream server (R=1);
//! 3. **cluster 3×3**: three nodes against a three-server JetStream cluster (R=3), the
//!    senders spread over the nodes.
//!
//! Per run: datapoints/s (first byte sent until the downstream holds every aggregate),
//! aggd CPU (all nodes) and NATS CPU (all servers) per datapoint, from /proc; then the
//! cluster's throughput cost against standalone. `AGGD_BENCH_CLUSTER=1`, `=3` or
//! `=standalone` runs one of them; `AGGD_BENCH_LANES` sets `publish_threads` (1), `AGGD_BENCH_BATCH` the
//! messages' `batch_datapoints` (with `batch_bytes` 64 times that; default the config's),
//! `AGGD_BENCH_DELAY_MS` their `batch_delay`. Defaults: `AGGD_BENCH_POINTS` 4 000 000, the rest as in
//! the ingest benchmark. Run with `cargo bench --bench cluster`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aggd_testkit::nats::Nats;
use aggd_testkit::workload::*;
use aggd_testkit::*;

struct Measured {
    dps: f64,
    aggd_ns: f64,
    nats_ns: f64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster benchmark: run with `cargo bench --bench cluster`");
        return;
    }
    let only = std::env::var("AGGD_BENCH_CLUSTER").unwrap_or_default();
    let want = |m: &str| only.is_empty() || only == m;
    let alone = want("standalone").then(|| run(0));
    let one = want("1").then(|| run(1));
    let three = want("3").then(|| run(3));
    for (name, c) in [("cluster R=1", &one), ("cluster 3x3", &three)] {
        if let (Some(a), Some(c)) = (&alone, c) {
            println!(
                "{name} against standalone: {:.1} % throughput, {:+.0} ns/datapoint aggd CPU, {:.0} ns/datapoint NATS CPU",
                (1.0 - c.dps / a.dps) * 100.0,
                c.aggd_ns - a.aggd_ns,
                c.nats_ns
            );
        }
    }
}

/// One run with `nodes` cluster nodes (0: standalone).
fn run(nodes: usize) -> Measured {
    let mut w = Workload::from_env();
    if std::env::var("AGGD_BENCH_POINTS").is_err() {
        w.points = 4_000_000;
    }
    let nats = (nodes > 0).then(|| Nats::start(nodes));
    let capture = Capture::start("pickle");
    let base = previous_bucket(60);
    let mut payload = w.generate(|i| base + (i % 60) as i64);
    let mut children = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut dirs = Vec::new();
    let mut admins = Vec::new();
    for n in 0..nodes.max(1) {
        let dir = tempdir("bench-cluster");
        std::fs::write(dir.join("rules.conf"), w.rules_conf()).unwrap();
        let cluster = match &nats {
            Some(nats) => format!(
                "[cluster]\nservers = {}\nname = \"bench\"\nnode = \"n{n}\"\nreplicas = {}\n\
                 publish_threads = {}\n{}",
                nats.toml_servers(),
                nodes,
                env_or("AGGD_BENCH_LANES", 1),
                match env_or("AGGD_BENCH_BATCH", 0) {
                    0 => String::new(),
                    b => format!("batch_datapoints = {b}\nbatch_bytes = {}\n", b * 64),
                } + &match env_or("AGGD_BENCH_DELAY_MS", 0) {
                    0 => String::new(),
                    ms => format!("batch_delay = \"{ms}ms\"\n"),
                }
            ),
            None => String::new(),
        };
        let cfg = dir.join("aggd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                 [aggregation]\nrules = \"rules.conf\"\nroute_cache_entries = {}\n\
                 [workers]\nflush_tick_ms = 100\n\
                 [[destination]]\naddress = \"{}\"\nprotocol = \"pickle\"\n\
                 [journal]\ndir = \"journal\"\nfsync = \"interval\"\nfsync_interval = \"1s\"\n\
                 [service]\nself_metrics_interval = \"0s\"\n\
                 [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"bench-token\"\n{cluster}",
                (2 * w.series).max(1_000_000),
                capture.addr
            ),
        )
        .unwrap();
        let (child, a) = spawn_run(&["-c", cfg.to_str().unwrap()], 2);
        children.push(child);
        addrs.push(a.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1);
        admins.push(a.iter().find(|(k, _)| k == "admin/http").unwrap().1);
        dirs.push(dir);
    }
    if nodes > 1 {
        // Let the shards settle over the nodes before timing.
        std::thread::sleep(Duration::from_secs(8));
    }
    let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();
    let nats_pids: Vec<u32> = nats
        .iter()
        .flat_map(|n| {
            n.servers
                .iter()
                .filter_map(aggd_testkit::nats::NatsServer::pid)
        })
        .collect();
    let cpu = |ps: &[u32]| ps.iter().map(|p| proc_usage(*p).0).sum::<f64>();
    let (a0, n0) = (cpu(&pids), cpu(&nats_pids));
    let t0 = Instant::now();
    let conns: Vec<_> = payload
        .conns
        .drain(..)
        .enumerate()
        .map(|(i, p)| {
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || send_tcp(addr, vec![p]))
        })
        .collect();
    for c in conns {
        c.join().unwrap();
    }
    if let Err(e) = payload.verify(&capture, base, Duration::from_secs(120)) {
        for a in &admins {
            let (_, _, body) = http(*a, "GET", "/metrics", &[], b"");
            let text = String::from_utf8_lossy(&body).into_owned();
            for l in text.lines().filter(|l| !l.starts_with('#')) {
                if l.contains("dropped") || l.contains("cluster") || l.contains("received") {
                    eprintln!("{l}");
                }
            }
        }
        panic!("{e}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let (a1, n1) = (cpu(&pids), cpu(&nats_pids));
    for c in &children {
        sigterm(c);
    }
    for mut c in children {
        let _ = c.wait();
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let total = w.points as f64;
    let m = Measured {
        dps: total / secs,
        aggd_ns: (a1 - a0) * 1e9 / total,
        nats_ns: (n1 - n0) * 1e9 / total,
    };
    println!(
        "{}: {} datapoints, {} input series, {} output series, {} senders",
        match nodes {
            0 => "standalone, journal on".to_string(),
            1 => "cluster: 1 node, 1 JetStream server (R=1)".to_string(),
            n => format!("cluster: {n} nodes, {n} JetStream servers (R={n})"),
        },
        w.points,
        w.series,
        w.metrics * 2,
        w.conns
    );
    println!("  throughput: {:.0} datapoints/s ({secs:.2} s)", m.dps);
    println!(
        "  CPU per datapoint: aggd {:.0} ns, NATS {:.0} ns",
        m.aggd_ns, m.nats_ns
    );
    m
}
