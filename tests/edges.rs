//! The promises at the edges, with the real binary: a destination that stops reading and
//! dies (real carbon-cache), start/stop/kill cycles, and hostile clients.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggd_testkit::carbon::CarbonCache;
use aggd_testkit::{aggd_ok, metric, sigterm, spawn_run, tempdir, wait_received};

/// The address of the first listener of `kind` in a `spawn_run` result.
fn addr_of(addrs: &[(String, SocketAddr)], kind: &str) -> SocketAddr {
    addrs.iter().find(|(k, _)| k == kind).unwrap().1
}

fn send_lines(addr: SocketAddr, lines: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
}

fn signal(child_pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child_pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {child_pid}");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "aggd did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `series` input paths × `minutes` past minutes (two datapoints each) and returns
/// the expected sums per (output path, minute).
fn send_minutes(
    addr: SocketAddr,
    tag: &str,
    series: usize,
    minutes: std::ops::Range<i64>,
    base: i64,
) -> BTreeMap<(String, i64), f64> {
    let mut expected = BTreeMap::new();
    let mut text = String::new();
    for m in minutes {
        let ts = base - 60 * m;
        for s in 0..series {
            for (i, v) in [(0, 1.5 + s as f64), (1, 2.0 * m as f64)] {
                text.push_str(&format!("{tag}.s{s}.h{i} {v} {}\n", ts + 7));
                *expected
                    .entry((format!("agg.{tag}.s{s}"), ts))
                    .or_insert(0.0) += v;
            }
        }
    }
    send_lines(addr, &text);
    expected
}

/// Waits until carbon-cache's whisper files hold every expected value.
fn wait_whisper(cc: &CarbonCache, expected: &BTreeMap<(String, i64), f64>, within: Duration) {
    let mut by_ts: BTreeMap<i64, Vec<(&str, f64)>> = BTreeMap::new();
    for ((p, ts), v) in expected {
        by_ts.entry(*ts).or_default().push((p, *v));
    }
    let deadline = Instant::now() + within;
    for (ts, want) in by_ts {
        loop {
            let paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
            let got = cc.fetch(&paths, ts);
            let missing: Vec<_> = want
                .iter()
                .zip(&got)
                .filter(|((_, v), g)| **g != Some(*v))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "at {ts}, {} of {} aggregates missing or wrong, e.g. {:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(3)]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// What [`edge_config`] adds to its base configuration.
#[derive(Default)]
struct Extra<'a> {
    /// `[[listen]]` tables instead of one plaintext listener.
    listen: Option<&'a str>,
    /// Keys of `[aggregation]`, `[workers]` and `[journal]`.
    aggregation: &'a str,
    workers: &'a str,
    journal: &'a str,
    /// Further sections.
    more: &'a str,
}

/// Writes `aggd.toml` into `dir`: a plaintext listener, the rule `agg.<t>.<s> (60) = sum
/// <t>.<s>.*` keeping 40 intervals, two workers, a journal, a 2 s drain, an admin API and
/// a pickle destination `dest`, with `x` added.
fn edge_config(dir: &std::path::Path, dest: SocketAddr, x: Extra<'_>) -> std::path::PathBuf {
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "agg.<t>.<s> (60) = sum <t>.<s>.*\n",
    )
    .unwrap();
    let listen = x
        .listen
        .unwrap_or("[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n");
    // Journaling must not depend on this machine's free disk (the default keeps 1 GiB).
    let free = if x.journal.contains("min_free_disk") {
        ""
    } else {
        "min_free_disk = 0"
    };
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        format!(
            "{listen}\
             [aggregation]\nrules = \"aggregation-rules.conf\"\nmax_intervals = 40\n{}\n\
             [workers]\ncount = 2\nflush_tick_ms = 50\n{}\n\
             [journal]\ndir = \"journal\"\n{free}\n{}\n\
             [service]\ndrain_timeout = \"2s\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"edges-test-token\"\n\
             {}\n\
             [[destination]]\naddress = \"{dest}\"\nprotocol = \"pickle\"\n",
            x.aggregation, x.workers, x.journal, x.more
        ),
    )
    .unwrap();
    cfg
}

/// [`edge_config`] with `journal_extra` keys in `[journal]`.
fn journal_config(
    dir: &std::path::Path,
    dest: SocketAddr,
    journal_extra: &str,
) -> std::path::PathBuf {
    edge_config(
        dir,
        dest,
        Extra {
            journal: journal_extra,
            ..Extra::default()
        },
    )
}

#[test]
fn destination_stopped_then_killed_loses_nothing_after_replay_lost() {
    let cc = CarbonCache::start();
    let dir = tempdir("dest-death");
    let cfg = journal_config(&dir, SocketAddr::from(([127, 0, 0, 1], cc.port)), "");
    let (mut aggd, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 2);
    let input = addr_of(&addrs, "plaintext/tcp");
    let admin = addr_of(&addrs, "admin/http");
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);

    // Delivered while the destination is healthy.
    let before = send_minutes(input, "a", 20, 2..4, base);
    wait_whisper(&cc, &before, Duration::from_secs(60));

    // The destination stops reading: aggd's writes land in kernel buffers.
    let cc_pid = cc.pid();
    signal(cc_pid, "-STOP");
    let during = send_minutes(input, "b", 80, 2..8, base);
    assert_eq!(during.len(), 480);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, "aggd_destination_sent_total{destination=\"127.0.0.1") < 520.0 {
        assert!(
            Instant::now() < deadline,
            "aggd did not write the aggregates"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // ... and dies with them unread; a new carbon-cache takes its place.
    signal(cc_pid, "-KILL");
    let (port, store) = (cc.port, cc.dir.clone());
    drop(cc);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, "aggd_dropped_total{reason=\"unconfirmed\"}") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the failed connection was not noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let unconfirmed = metric(admin, "aggd_dropped_total{reason=\"unconfirmed\"}");
    assert!(
        unconfirmed >= 480.0,
        "everything written since connect is unconfirmed: {unconfirmed}"
    );
    let cc = CarbonCache::start_on(port, store);
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());

    let out = aggd_ok(["replay", "-c", cfg.to_str().unwrap(), "--lost"]);
    assert!(out.contains("replay"), "{out}");
    let mut all = before;
    all.extend(during);
    wait_whisper(&cc, &all, Duration::from_secs(60));
    // Replayed windows are marked: a second --lost has nothing left to do.
    let again = aggd_ok(["replay", "-c", cfg.to_str().unwrap(), "--lost"]);
    assert!(again.contains("nothing to replay"), "{again}");
}

#[test]
fn backpressure_on_a_full_disk_holds_input_and_sigterm_still_finishes() {
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("bp-full");
    // Free space can never reach this: every journal write fails as if the disk were full.
    let cfg = journal_config(
        &dir,
        down.addr,
        "on_full = \"backpressure\"\nmin_free_disk = 1152921504606846976\nqueue_records = 8",
    );
    let (mut aggd, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 2);
    let input = addr_of(&addrs, "plaintext/tcp");
    let admin = addr_of(&addrs, "admin/http");
    let now = aggd_testkit::now() as i64;
    let ts = now - now.rem_euclid(60) - 120;
    let mut s = TcpStream::connect(input).unwrap();
    for i in 0..8000 {
        // One frame per write: each waits for the journal.
        s.write_all(format!("bp.s{}.h0 1 {ts}\n", i % 10).as_bytes())
            .unwrap();
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    // Nothing was aggregated unjournaled: input waits.
    assert_eq!(
        metric(admin, "aggd_dropped_total{reason=\"unjournaled\"}"),
        0.0
    );
    assert_eq!(metric(admin, "aggd_received_total"), 0.0);
    assert!(metric(admin, "aggd_journal_write_errors_total") > 0.0);
    let t = Instant::now();
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(15)).success());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown took {:?} with a 2 s drain timeout",
        t.elapsed()
    );
    // What could not be journaled by the deadline is ledgered.
    let (entries, _) = aggd::journal::ledger::read(&dir.join("journal/ledger.jsonl")).unwrap();
    assert!(
        entries.iter().any(|e| e.reason == "unjournaled"),
        "{entries:?}"
    );
}

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

/// The "N records" figure of an `aggd replay` summary line.
fn records_read(out: &str) -> u64 {
    let rest = out.split("replay").nth(1).unwrap();
    let n = rest.split(" records").next().unwrap();
    n.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn replay_lost_reads_the_journal_once_for_many_ledger_entries() {
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("lost-once");
    let cfg = journal_config(&dir, down.addr, "");
    let (mut aggd, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 2);
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    send_minutes(addr_of(&addrs, "plaintext/tcp"), "r", 10, 2..4, base);
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    // Fifty losses ten seconds apart, as a flapping destination leaves them.
    let mut ledger = String::new();
    for i in 0..50 {
        let t = base - 240 + 10 * i;
        ledger.push_str(&format!(
            "{{\"id\":{},\"at\":{now},\"reason\":\"unconfirmed\",\"from\":{t}.0,\"to\":{t}.0,\"count\":1}}\n",
            i + 1
        ));
    }
    std::fs::write(dir.join("journal/ledger.jsonl"), ledger).unwrap();
    let c = cfg.to_str().unwrap();
    let lost = aggd_ok(["replay", "-c", c, "--lost", "--dry-run"]);
    let from = (base - 240).to_string();
    let to = (base + 250).to_string();
    let whole = aggd_ok(["replay", "-c", c, "--from", &from, "--to", &to, "--dry-run"]);
    assert!(records_read(&whole) > 0, "{whole}");
    assert_eq!(records_read(&lost), records_read(&whole), "{lost}\n{whole}");
}

/// A small deterministic generator (SplitMix64), so a failing soak can be re-run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn clean_restart_does_not_resend_what_was_delivered() {
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("clean-restart");
    let cfg = journal_config(&dir, down.addr, "");
    let c = cfg.to_str().unwrap();
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    let (mut aggd, addrs) = spawn_run(&["-c", c], 2);
    let expected = send_minutes(addr_of(&addrs, "plaintext/tcp"), "c", 20, 2..4, base);
    wait_received(addr_of(&addrs, "admin/http"), 80.0);
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    let delivered = down.received.lock().unwrap().datapoints;
    assert!(delivered >= expected.len(), "{delivered}");
    // A quiet run after a clean shutdown sends nothing again.
    let (mut aggd, _) = spawn_run(&["-c", c], 2);
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    assert_eq!(down.received.lock().unwrap().datapoints, delivered);
    // After a crash, the next start re-sends the open intervals, complete.
    let (aggd, addrs) = spawn_run(&["-c", c], 2);
    let more = send_minutes(addr_of(&addrs, "plaintext/tcp"), "c", 20, 2..3, base);
    wait_received(addr_of(&addrs, "admin/http"), 40.0);
    signal(aggd.id(), "-KILL");
    let (mut aggd, _) = spawn_run(&["-c", c], 2);
    let mut all = expected.clone();
    for (k, v) in more {
        *all.get_mut(&k).unwrap() += v;
    }
    down.wait_for("complete aggregates after the crash", |got| {
        all.iter().all(|(k, v)| got.get(k) == Some(v))
    });
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
}

#[test]
fn lifecycle_soak_every_start_succeeds_and_downstream_matches() {
    let seed = aggd_testkit::now() as u64;
    eprintln!("lifecycle soak seed {seed}");
    let mut rng = Rng(seed);
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("soak");
    let cfg = journal_config(&dir, down.addr, "fsync = \"never\"");
    let c = cfg.to_str().unwrap();
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    let mut expected: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for cycle in 0..30 {
        let mode = rng.below(5);
        if mode == 4 {
            // Killed at a random point of its start (recovery, rebuild, binding).
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aggd"))
                .args(["run", "-c", c])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.below(400)));
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        let (mut aggd, addrs) = spawn_run(&["-c", c], 2);
        assert!(
            aggd.try_wait().unwrap().is_none(),
            "start {cycle} failed (seed {seed})"
        );
        if mode >= 2 {
            let series = 1 + rng.below(30) as usize;
            let first = 2 + rng.below(4) as i64;
            let sent = send_minutes(
                addr_of(&addrs, "plaintext/tcp"),
                &format!("k{}", rng.below(3)),
                series,
                first..first + 1 + rng.below(2) as i64,
                base,
            );
            let n = sent.len() as f64 * 2.0;
            for (k, v) in sent {
                *expected.entry(k).or_insert(0.0) += v;
            }
            wait_received(addr_of(&addrs, "admin/http"), n);
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        if mode.is_multiple_of(2) {
            signal(aggd.id(), "-KILL");
            let _ = aggd.wait();
        } else {
            sigterm(&aggd);
            let st = wait_exit(&mut aggd, Duration::from_secs(30));
            assert!(st.success(), "cycle {cycle}: {st} (seed {seed})");
        }
    }
    // One last clean run delivers whatever a kill left open.
    let (mut aggd, _) = spawn_run(&["-c", c], 2);
    down.wait_for("every aggregate of the soak", |got| {
        expected.iter().all(|(k, v)| got.get(k) == Some(v))
    });
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    let got = down.snapshot();
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k:?} (seed {seed})");
    }
}

/// Runs `aggd ARGS`, expecting it to fail within 15 s; returns its stderr.
fn aggd_fails(args: &[&str]) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aggd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aggd {args:?} should fail, but it is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "aggd {args:?} should fail");
    err
}

#[test]
fn start_errors_name_the_path_and_say_it_once() {
    let dir = tempdir("errors");
    let missing = dir.join("missing.toml");
    let err = aggd_fails(&["run", "-c", missing.to_str().unwrap()]);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // A journal directory that cannot be created: the error names it.
    let down = aggd_testkit::Capture::start("pickle");
    let cfg = journal_config(&dir, down.addr, "");
    std::fs::write(dir.join("journal"), b"a file, not a directory").unwrap();
    let err = aggd_fails(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(
        err.contains(&*dir.join("journal").to_string_lossy()),
        "{err}"
    );
}

#[test]
fn a_second_daemon_on_the_same_journal_is_refused_and_the_first_is_untouched() {
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("two-daemons");
    let cfg = journal_config(&dir, down.addr, "");
    let c = cfg.to_str().unwrap();
    let (mut first, addrs) = spawn_run(&["-c", c], 2);
    let err = aggd_fails(&["run", "-c", c]);
    assert!(
        err.contains(&*dir.join("journal").to_string_lossy())
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // The first daemon still aggregates exactly.
    let now = aggd_testkit::now() as i64;
    let base = now - now.rem_euclid(60);
    let expected = send_minutes(addr_of(&addrs, "plaintext/tcp"), "two", 5, 2..3, base);
    sigterm(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(30)).success());
    let got = down.snapshot();
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_journal_is_ledgered_on_another_path_and_nothing_is_thrown_away() {
    use aggd::journal::io::{Faults, FaultyIo};
    let down = aggd_testkit::Capture::start("pickle");
    let dir = tempdir("ro-journal");
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    let cfg = journal_config(&dir, down.addr, "ledger = \"elsewhere/ledger.jsonl\"");
    let config = aggd::config::Config::load(&cfg).unwrap();
    let listeners = aggd::listen::BoundListener::bind_all(&config.listeners).unwrap();
    let faults = FaultyIo::new();
    let server = aggd::server::start_with_io(config, listeners, Arc::new(faults.clone()))
        .await
        .unwrap();
    // The journal's filesystem turns read-only; the ledger's does not.
    faults.set(Faults {
        read_only: true,
        only_under: Some(dir.join("journal")),
        ..Faults::default()
    });
    let addr = server.addr("plaintext/tcp").unwrap();
    let ts = aggd_testkit::now() as i64 - 120;
    tokio::task::spawn_blocking(move || {
        for i in 0..99 {
            send_lines(addr, &format!("ro.s{i}.h0 1 {ts}\n"));
        }
    })
    .await
    .unwrap();
    let stats = server.stats();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.drops(aggd::reason::DropReason::Unjournaled) < 99 {
        assert!(Instant::now() < deadline, "frames not counted unjournaled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    let (entries, _) = aggd::journal::ledger::read(&dir.join("elsewhere/ledger.jsonl")).unwrap();
    let unjournaled: u64 = entries
        .iter()
        .filter(|e| e.reason == "unjournaled")
        .map(|e| e.count)
        .sum();
    assert_eq!(unjournaled, 99, "{entries:?}");
}
