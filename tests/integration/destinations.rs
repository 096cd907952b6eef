//! A destination's sender: reconnect backoff while the destination refuses connections,
//! and a connection reset in the middle of a large emission: what it had taken is counted
//! `unconfirmed`, everything after goes over the next connection, nothing twice.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aggd::events::Event;
use aggd::reason::DropReason;
use aggd_testkit::*;

/// Waits (up to `within`) until `f()` holds.
async fn wait_until(what: &str, within: Duration, f: impl Fn() -> bool) -> Instant {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_destination_is_retried_with_growing_backoff_then_delivered_to() {
    // A port nothing listens on yet: connections to it are refused.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = tempdir("backoff");
    let cfg = write_config(
        &dir,
        "out (60) = sum in.*\n",
        "",
        &port.to_string(),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        write!(
            TcpStream::connect(tcp).unwrap(),
            "in.a 3 {base}\nin.b 4 {base}\n"
        )
        .unwrap();
    })
    .await
    .unwrap();
    let events = server.stats().events.clone();
    let failed = move || events.count(Event::DestinationConnectFailed);
    let first = wait_until("no connection attempt", Duration::from_secs(10), || {
        failed() >= 1
    })
    .await;
    let fifth = wait_until("no fifth attempt", Duration::from_secs(20), || {
        failed() >= 5
    })
    .await;
    // Waits of 100, 200, 400 and 800 ms come between the first and the fifth attempt: at
    // least 1.5 s (a fixed 100 ms retry would take 0.4 s).
    let span = fifth - first;
    assert!(
        span >= Duration::from_millis(1400),
        "five attempts in {span:?}"
    );
    // The destination comes up on that port: the next attempt (within the 5 s cap)
    // connects and delivers what waited.
    let capture = Capture::start_on(TcpListener::bind(port).unwrap(), "pickle");
    capture.wait_for("the aggregate after reconnecting", |got| {
        got.get(&("out".into(), base)) == Some(&7.0)
    });
    let attempts = failed();
    let stats = server.shutdown().await;
    assert_eq!(
        stats.events.count(Event::DestinationConnectFailed),
        attempts
    );
    assert_eq!(stats.total_drops(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_emission_loses_nothing_uncounted() {
    let capture = Capture::start_resetting_first("pickle");
    let dir = tempdir("resend");
    let cfg = write_config(
        &dir,
        "out.<k> (60) = sum in.<k>\n",
        "",
        &capture.addr.to_string(),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let tcp = server.addr("plaintext/tcp").unwrap();
    let base = previous_bucket(60);
    // 200 000 aggregates, about 8 MB of pickle, emitted while the first connection's peer
    // stops reading and then resets it.
    let n = 200_000;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let lines: String = (0..n).map(|k| format!("in.k{k} {k} {base}\n")).collect();
        s.write_all(lines.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    let stats = server.stats();
    let lost = stats.clone();
    wait_until(
        "the first connection never failed",
        Duration::from_secs(30),
        move || lost.events.count(Event::DestinationConnectionLost) >= 1,
    )
    .await;
    // What the reset connection had taken is counted unconfirmed (ledgered, for
    // `replay --lost`); every later batch arrives over the next connection: together,
    // every aggregate, each counted sent once.
    let unconfirmed = || stats.drops(DropReason::Unconfirmed) as usize;
    capture.wait_for("the rest over the next connection", |got| {
        got.len() + unconfirmed() == n
    });
    let got = capture.snapshot();
    assert!(
        got.len() >= 10_000,
        "the rest went over a new connection: {}",
        got.len()
    );
    for ((path, ts), v) in got.iter().take(1000) {
        let k: f64 = path.strip_prefix("out.k").unwrap().parse().unwrap();
        assert_eq!((*ts, *v), (base, k), "{path}");
    }
    assert!(
        capture
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    assert_eq!(
        stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        n as u64
    );
    let stats = server.shutdown().await;
    let other: u64 = stats.total_drops() - stats.drops(DropReason::Unconfirmed);
    assert_eq!(other, 0, "nothing else dropped");
}

/// `emit_delay` holds aggregates for its own destination only, and a shutdown sends what
/// it holds: one destination with a delay of an hour and one without, routed to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_aggregate_waits_for_its_destination_alone_and_goes_out_at_shutdown() {
    let prompt = Capture::start("pickle");
    let held = Capture::start("plaintext");
    let dir = tempdir("hold");
    let cfg = write_config(
        &dir,
        "out (60) = sum in.*\n",
        "",
        &prompt.addr.to_string(),
        "pickle",
    );
    append_config(
        &cfg,
        &format!(
            "[[destination]]\naddress = \"{}\"\nprotocol = \"plaintext\"\nemit_delay = \"1h\"\n\
             [routing]\nmethod = \"all\"\n",
            held.addr
        ),
    );
    let server = start_aggd(&cfg).await;
    let addr = server.addr("plaintext/tcp").unwrap();
    // An interval that is over: emitted at the next sweep.
    let ts = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        writeln!(s, "in.a 2 {ts}\nin.b 3 {}", ts + 1).unwrap();
    })
    .await
    .unwrap();
    let key = ("out".to_string(), ts);
    prompt.wait_for("the prompt destination's aggregate", |got| {
        got.get(&key) == Some(&5.0)
    });
    // The other destination holds it: a few sweeps later it still has nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(held.snapshot().is_empty(), "{:?}", held.snapshot());
    let observed = server.observed();
    let holding: Vec<(String, usize)> = observed
        .dests
        .held()
        .map(|(d, n)| (d.to_string(), n))
        .collect();
    assert_eq!(
        holding,
        [(prompt.addr.to_string(), 0), (held.addr.to_string(), 1)]
    );
    server.shutdown().await;
    held.wait_for("the held aggregate, sent at shutdown", |got| {
        got.get(&key) == Some(&5.0)
    });
}
