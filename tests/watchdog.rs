//! A stalled worker, with the real binary: the systemd watchdog stops being pinged,
//! `/health` and `/ready` answer 503, and both recover when the worker does. The stall is
//! the test-only fault `AGGD_FAULT_STALL_SERIES` (feature `fault-injection`).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aggd_testkit::*;

#[test]
fn a_stalled_worker_withholds_the_watchdog_and_fails_health_until_it_recovers() {
    let dir = tempdir("watchdog");
    let cfg = write_config(
        &dir,
        "stall.sum (60) = sum stall.*\n",
        "",
        "stdout",
        "plaintext",
    );
    append_config(
        &cfg,
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"watchdog-token\"\n",
    );
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let recv = |within: Duration| -> Option<String> {
        sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    };
    // The stall (10 s) outlasts the health tolerance (5 s) plus a margin.
    let mut cmd = Command::new(aggd_bin());
    cmd.args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("AGGD_FAULT_STALL_SERIES", "stall.sum:10000")
        .stdout(Stdio::null());
    let (mut child, addrs) = spawn_command(cmd, 4, false);
    let at = |kind: &str| addrs.iter().find(|(k, _)| k == kind).unwrap().1;
    let (tcp, admin) = (at("plaintext/tcp"), at("admin/http"));
    assert_eq!(recv(Duration::from_secs(10)).as_deref(), Some("READY=1"));
    assert_eq!(recv(Duration::from_secs(5)).as_deref(), Some("WATCHDOG=1"));
    let status = |path: &str| http(admin, "GET", path, &[], b"").0;
    assert_eq!((status("/health"), status("/ready")), (200, 200));

    std::io::Write::write_all(
        &mut std::net::TcpStream::connect(tcp).unwrap(),
        b"stall.x 1 -1\n",
    )
    .unwrap();
    let stalled = Instant::now();
    // Health fails once the worker has made no progress for the tolerance.
    let deadline = stalled + Duration::from_secs(7);
    while status("/health") != 503 {
        assert!(Instant::now() < deadline, "/health never answered 503");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status("/ready"), 503);
    // By now the watchdog has been withheld for seconds: drain what came before the stall
    // was seen, then nothing more arrives while it lasts.
    while recv(Duration::from_millis(10)).is_some() {}
    assert_eq!(
        recv(Duration::from_millis(1500)),
        None,
        "pinged while stalled"
    );
    assert!(metric(admin, "aggd_events_total{event=\"watchdog_withheld\"}") >= 1.0);
    // The worker recovers: pings and health come back.
    assert_eq!(recv(Duration::from_secs(10)).as_deref(), Some("WATCHDOG=1"));
    assert!(
        stalled.elapsed() >= Duration::from_secs(9),
        "pinged again before the stall ended"
    );
    assert_eq!((status("/health"), status("/ready")), (200, 200));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
