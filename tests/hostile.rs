//! Hostile clients against the real binary: idle connections, memo bombs, lone frame
//! headers, huge frames and a flood of distinct paths stay within the memory bound the
//! configuration gives, and a good sender's aggregates stay exact.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aggd_testkit::edge::{Extra, addr_of, edge_config, send_lines, send_minutes, wait_exit};
use aggd_testkit::{metric, sigterm, spawn_run, tempdir};

/// Peak resident set size of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A carbon pickle frame: 4-byte big-endian length, then the body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// What the hostile clients below can make aggd hold, by the per-state costs in
/// `docs/operations.md` ("Memory"): 64 MiB base; 2 000 idle connections at a 4 KiB read
/// buffer each; 420 pickle connections at 4 KiB plus a 64 KiB decoder; one million-object
/// frame decoding on each of two runtime threads (24 MiB each); the private route caches'
/// 8 MiB budget; 100 000 shared route cache entries of about 300 bytes; the worker and
/// destination queues of this small flow. About 200 MiB; before the fix, with a million
/// distinct paths, it was 1 846 MiB.
const HOSTILE_RSS_EXPECTED: u64 = 256 << 20;

/// Raises this process's open-file limit (inherited by the aggd it starts) to at least
/// `n`, within the hard limit.
#[allow(unsafe_code)]
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn hostile_clients_stay_within_the_memory_bound_and_good_senders_aggregate_exactly() {
    raise_fd_limit(8192);
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("hostile");
    let cfg = edge_config(
        &dir,
        down.addr,
        Extra {
            listen: Some(
                "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                 max_connections = 2200\n\
                 [[listen]]\nprotocol = \"pickle\"\naddress = \"127.0.0.1:0\"\n\
                 max_connections = 420\n",
            ),
            aggregation: "route_cache_entries = 100000",
            workers: "queue_batches = 16",
            more: "[limits]\nmax_path_bytes = 256\nmax_connections = 2600\n\
                   private_route_cache_bytes = 8388608",
            ..Extra::default()
        },
    );
    let (mut aggd, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    let plain = addr_of(&addrs, "plaintext/tcp");
    let pickle = addr_of(&addrs, "pickle/tcp");
    let admin = addr_of(&addrs, "admin/http");
    let mut held = Vec::new();
    // 2 000 connections, each holding one byte of an unfinished line.
    for _ in 0..2000 {
        let mut s = TcpStream::connect(plain).unwrap();
        s.write_all(b"x").unwrap();
        held.push(s);
    }
    // 200 pickle connections, each with a 7-byte frame naming a memo slot near the budget.
    for _ in 0..200 {
        let mut s = TcpStream::connect(pickle).unwrap();
        s.write_all(&framed(b"]r\xff\xff\x0f\x00.")).unwrap();
        held.push(s);
    }
    // 200 pickle connections, each with only the 4-byte header of a 1 000 000-byte frame.
    for _ in 0..200 {
        let mut s = TcpStream::connect(pickle).unwrap();
        s.write_all(&1_000_000u32.to_be_bytes()).unwrap();
        held.push(s);
    }
    // 20 pickle connections, each with a frame of a million None opcodes.
    let mut nones = vec![b'N'; 1_000_000];
    nones.push(b'.');
    for _ in 0..20 {
        let mut s = TcpStream::connect(pickle).unwrap();
        s.write_all(&framed(&nones)).unwrap();
        held.push(s);
    }
    // The pickle listener is at its cap of 420: one more is closed at once, and counted.
    let mut extra = TcpStream::connect(pickle).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut extra, &mut byte), Ok(0) | Err(_)),
        "a connection past the cap is closed"
    );
    assert_eq!(metric(admin, "aggd_connections_refused_total"), 1.0);
    // 100 connections × 3 000 distinct paths each, past the private route caches' budget.
    let senders: Vec<_> = (0..100)
        .map(|c| {
            std::thread::spawn(move || {
                let mut text = String::new();
                for i in 0..3_000 {
                    text.push_str(&format!(
                        "hostile.c{c}.p{i}.a.fairly.long.metric.path 1 -1\n"
                    ));
                }
                send_lines(plain, &text);
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // A well-behaved sender on its own connection.
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    let expected = send_minutes(plain, "good", 50, 2..4, base);
    let deadline = Instant::now() + Duration::from_secs(40);
    while metric(admin, "aggd_received_total") < 300_200.0
        || metric(admin, "aggd_dropped_total{reason=\"bad_frame\"}") < 20.0
    {
        assert!(
            Instant::now() < deadline,
            "aggd did not take the input: received {}, bad frames {}",
            metric(admin, "aggd_received_total"),
            metric(admin, "aggd_dropped_total{reason=\"bad_frame\"}")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let peak = peak_rss(aggd.id());
    eprintln!("hostile clients: aggd peak RSS {} MiB", peak >> 20);
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    drop(held);
    let got = down.snapshot();
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k:?}");
    }
    let bound = aggd::config::Config::load(&cfg)
        .unwrap()
        .memory_bound(1000)
        .total();
    assert!(
        peak < bound,
        "peak RSS {} MiB over the documented bound {} MiB",
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak < HOSTILE_RSS_EXPECTED,
        "peak RSS {} MiB over the {} MiB these clients can make aggd hold",
        peak >> 20,
        HOSTILE_RSS_EXPECTED >> 20
    );
}

/// The lock-out of issue 21: 2 000 connections that each send one byte and wait, and 200
/// pickle connections each holding a 7-byte frame, fill `limits.max_connections` (1 024)
/// many times over. A well-behaved sender that connects afterwards still gets in (the
/// connection idle longest gives way), every one of its 200 000 datapoints is aggregated,
/// and aggd stays under 250 MB and under the bound `aggd check` prints.
#[test]
fn a_crowd_of_idle_connections_cannot_lock_a_sender_out() {
    raise_fd_limit(8192);
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("lockout");
    let cfg = edge_config(
        &dir,
        down.addr,
        Extra {
            listen: Some(
                "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                 [[listen]]\nprotocol = \"pickle\"\naddress = \"127.0.0.1:0\"\n",
            ),
            more: "[limits]\nevict_idle_after_ms = 500\n",
            ..Extra::default()
        },
    );
    let (mut aggd, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    let plain = addr_of(&addrs, "plaintext/tcp");
    let pickle = addr_of(&addrs, "pickle/tcp");
    let admin = addr_of(&addrs, "admin/http");
    let mut crowd = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(plain).unwrap();
        let _ = s.write_all(b"x");
        crowd.push(s);
    }
    for _ in 0..200 {
        let mut s = TcpStream::connect(pickle).unwrap();
        let _ = s.write_all(&framed(b"]r\xff\xff\x0f\x00."));
        crowd.push(s);
    }
    // Every slot is taken; the crowd is refused or evicted among itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, "aggd_active_connections") < 1024.0 {
        assert!(
            Instant::now() < deadline,
            "the crowd never filled the slots"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The crowd's youngest must be idle for evict_idle_after_ms before it can give way.
    std::thread::sleep(Duration::from_millis(600));
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    let expected = send_minutes(plain, "good", 50_000, 1..3, base);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(admin, "aggd_received_total") < 200_000.0 {
        assert!(
            Instant::now() < deadline,
            "the good sender's input was not taken: {}",
            metric(admin, "aggd_received_total")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric(
            admin,
            "aggd_events_total{event=\"connection_evicted_idle\"}"
        ) >= 1.0
    );
    let peak = peak_rss(aggd.id());
    eprintln!("idle crowd: aggd peak RSS {} MiB", peak >> 20);
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    drop(crowd);
    let got = down.snapshot();
    assert_eq!(expected.len(), 100_000);
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k:?}");
    }
    let bound = aggd::config::Config::load(&cfg)
        .unwrap()
        .memory_bound(expected.len() as u64)
        .total();
    assert!(peak < 250 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB over the bound {} MiB",
        peak >> 20,
        bound >> 20
    );
}
