//! Shutdown ends everything aggd started: every thread it named is gone afterwards. In a
//! test binary of its own, so no other test's daemon shares the process.

use std::io::Write;
use std::time::{Duration, Instant};

use aggd_testkit::*;

/// Names of this process's threads that aggd started (`aggd-…`).
fn aggd_threads() -> Vec<String> {
    let mut names = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let comm = t.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm)
            && name.starts_with("aggd-")
        {
            names.push(name.trim().to_string());
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thread_ends_at_shutdown() {
    let (capture, _dir, cfg) = with_downstream("shutdown", "out (60) = sum in.*\n", "pickle");
    append_config(
        &cfg,
        "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
         [quarantine]\nfile = \"quarantine.log\"\n",
    );
    let server = start_aggd(&cfg).await;
    let running = aggd_threads();
    for name in [
        "aggd-worker-0",
        "aggd-worker-1",
        "aggd-journal",
        "aggd-journal-f",
        "aggd-ledger",
        "aggd-quarantine",
    ] {
        assert!(
            running.iter().any(|t| t.starts_with(name)),
            "{name} not running: {running:?}"
        );
    }
    let addr = server.addr("plaintext/tcp").unwrap();
    let ts = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        writeln!(s, "in.a 1 {ts}").unwrap();
    })
    .await
    .unwrap();
    let stats = server.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.received.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the datapoint never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await;
    // Shutdown joins every thread it started before it returns.
    let left = aggd_threads();
    assert!(left.is_empty(), "still running after shutdown: {left:?}");
    capture.wait_for("the flushed aggregate", |got| {
        got.get(&("out".to_string(), ts)) == Some(&1.0)
    });
}
