//! The `aggd` binary as a user runs it: check, explain, and run with SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aggd_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_aggd");

#[test]
fn check_accepts_shipped_config_and_refuses_bad_rules_with_line() {
    let out = Command::new(BIN)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aggd.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("aggregation rules: 3"), "{text}");
    // Settings read back in the config's own words, and the memory bound with its terms.
    for line in [
        "listen: plaintext/tcp on 127.0.0.1:2003",
        "listen: pickle/tcp on 127.0.0.1:2004",
        "journal: ",
        "(fsync interval 1s, on_full ingest)",
        "destination: stdout (plaintext)",
        "memory bound with 100000 live output series: ",
        "  connections and HTTP requests: ",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }

    let dir = tempdir("check");
    let cfg = write_config(
        &dir,
        "ok (60) = sum a.*\nbad.<h> (60) = sum a.<x>\n",
        "",
        "stdout",
        "plaintext",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("aggregation-rules.conf:2:"), "{err}");
    assert!(err.contains("<h>"), "{err}");
}

#[test]
fn explain_shows_rewrites_rules_and_outputs() {
    let out = Command::new(BIN)
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aggd.toml"),
        ])
        .args(["prod.applications.web.h1.latency", "collectd.h1.cpu"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("-> prod.applications.web.all.latency (avg every 60 s"),
        "{text}"
    );
    assert!(
        text.contains("-> prod.applications.web.all.latency_p95 (p95 every 60 s"),
        "{text}"
    );
    assert!(text.contains("[pre] rewrite -> h1.system.cpu"), "{text}");
    assert!(text.contains("no aggregation rule matches"), "{text}");
}

#[test]
fn sigterm_mid_stream_loses_nothing_and_exits_zero() {
    let capture = Capture::start("pickle");
    let dir = tempdir("sigterm");
    let cfg = write_config(
        &dir,
        "all.count (3600) = count in.*\nall.sum (3600) = sum in.*\n",
        "",
        &capture.addr.to_string(),
        "pickle",
    );
    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    let ts = now() as i64;
    let bucket = ts - ts.rem_euclid(3600);
    let mut s = TcpStream::connect(tcp).unwrap();
    let mut sent = 0u64;
    for i in 0..20_000u64 {
        writeln!(s, "in.h{} 1 {ts}", i % 100).unwrap();
        sent += 1;
        if i == 10_000 {
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.flush().unwrap();
    // Once aggd's kernel holds every byte, signal, while the connection is still open.
    wait_acknowledged(&s);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    capture.wait_for("flushed aggregates", |got| {
        got.get(&("all.count".into(), bucket)) == Some(&(sent as f64))
    });
    assert_eq!(capture.value("all.sum", bucket), Some(sent as f64));
}

#[test]
fn carbon_conf_drop_in() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("carbonconf");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("carbon.conf"),
        format!(
            "[aggregator]\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = 0\n\
             PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = 0\n\
             DESTINATIONS = {}:a\nDESTINATION_PROTOCOL = line\nFORWARD_ALL = False\n\
             LOG_LISTENER_CONN_SUCCESS = True\nCACHE_METRIC_NAMES_MAX = 0\n",
            capture.addr
        ),
    )
    .unwrap();
    let (mut child, addrs) = spawn_run(
        &["--carbon-conf", dir.join("carbon.conf").to_str().unwrap()],
        2,
    );
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    let base = previous_bucket(60);
    let mut s = TcpStream::connect(tcp).unwrap();
    write!(s, "in.a 2 {base}\nin.b 3 {}\n", base + 10).unwrap();
    drop(s);
    capture.wait_for("total", |got| {
        got.get(&("total".into(), base)) == Some(&5.0)
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// Also the regression test for a closed stderr: the reader is dropped after the first
/// line, and aggd must keep working (tracing-subscriber used to panic on EPIPE).
#[test]
fn stdout_destination_prints_plaintext_lines() {
    let dir = tempdir("stdout");
    let cfg = write_config(&dir, "total (60) = sum in.*\n", "", "stdout", "pickle");
    let (mut child, addrs) =
        spawn_run_with(&["-c", cfg.to_str().unwrap()], 3, Stdio::piped(), true);
    let tcp = addrs
        .iter()
        .find(|(k, _)| k == "plaintext/tcp")
        .map(|(_, a)| *a);
    let base = previous_bucket(60);
    let mut s = TcpStream::connect(tcp.unwrap()).unwrap();
    write!(s, "in.a 1.5 {base}\nin.b 2 {base}\n").unwrap();
    drop(s);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    if line.is_err() {
        let _ = child.kill();
    }
    assert_eq!(
        line.expect("nothing printed on stdout"),
        format!("total 3.5 {base}")
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
