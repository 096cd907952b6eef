//! The promises at the edges, with the real binary: a destination that stops reading and
//! dies (real carbon-cache), a full disk, start/stop/kill cycles, a second daemon, start
//! errors (hostile clients: `tests/hostile.rs`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggd_testkit::carbon::CarbonCache;
use aggd_testkit::edge::{addr_of, journal_config, send_lines, send_minutes, signal, wait_exit};
use aggd_testkit::{Rng, aggd_ok, metric, sigterm, spawn_run, tempdir, wait_received};

/// Waits until carbon-cache's whisper files hold every expected value.
fn wait_whisper(cc: &CarbonCache, expected: &BTreeMap<(String, i64), f64>, within: Duration) {
    wait_whisper_or(cc, expected, within, &String::new);
}

/// [`wait_whisper`], adding `context()` to the failure's message.
fn wait_whisper_or(
    cc: &CarbonCache,
    expected: &BTreeMap<(String, i64), f64>,
    within: Duration,
    context: &dyn Fn() -> String,
) {
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
                "at {ts}, {} of {} aggregates missing or wrong, e.g. {:?}{}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(3)],
                context()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
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
    let (records, datapoints, intervals) = aggd_testkit::replay_counts(&out);
    assert!(records > 0 && datapoints > 0 && intervals >= 480, "{out}");
    let mut all = before;
    all.extend(during);
    // On failure, say what the ledger held and what replay did (a flake seen once).
    let ledger = dir.join("journal/ledger.jsonl");
    let context = || {
        format!(
            "\nreplay: {out}\nledger:\n{}",
            std::fs::read_to_string(&ledger).unwrap_or_default()
        )
    };
    wait_whisper_or(&cc, &all, Duration::from_secs(60), &context);
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
    // The writer has retried its failing batch five times (every 100 ms): input has been
    // waiting on the journal all along.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(admin, "aggd_journal_write_errors_total") < 5.0 {
        assert!(Instant::now() < deadline, "the journal write never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing was aggregated unjournaled: input waits.
    assert_eq!(metric(admin, "aggd_unjournaled_total"), 0.0);
    assert_eq!(metric(admin, "aggd_received_total"), 0.0);
    let t = Instant::now();
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(15)).success());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown took {:?} with a 2 s drain timeout",
        t.elapsed()
    );
    // What could not be journaled by the deadline is ledgered.
    let (entries, _) = aggd::ledger::read(&dir.join("journal/ledger.jsonl")).unwrap();
    assert!(
        entries.iter().any(|e| e.reason == "unjournaled"),
        "{entries:?}"
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
    let got = down.snapshot();
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "{k:?} at the clean shutdown");
    }
    // A quiet run after a clean shutdown sends nothing again.
    let (mut aggd, _) = spawn_run(&["-c", c], 2);
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&aggd);
    assert!(wait_exit(&mut aggd, Duration::from_secs(30)).success());
    assert_eq!(down.received.lock().unwrap().datapoints, delivered);
    assert_eq!(down.snapshot(), got);
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
    // ... and says it concerns the journal.
    assert!(err.contains("journal: "), "{err}");
    assert!(err.contains("[journal] dir"), "{err}");
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
    let (entries, _) = aggd::ledger::read(&dir.join("elsewhere/ledger.jsonl")).unwrap();
    let unjournaled: u64 = entries
        .iter()
        .filter(|e| e.reason == "unjournaled")
        .map(|e| e.count)
        .sum();
    assert_eq!(unjournaled, 99, "{entries:?}");
}
