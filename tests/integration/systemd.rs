//! The systemd units verify, and socket activation works through the same
//! already-bound-listener path the other tests use. Needs systemd's tools
//! (`tests/install-deps.sh` installs them).

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use aggd_testkit::*;

fn tool(name: &str) -> String {
    let p = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&p).exists(),
        "{p} is missing: run tests/install-deps.sh (Debian package systemd)"
    );
    p
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempdir("units");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    // The unit names the installed binary; point it at the one just built.
    let service = std::fs::read_to_string(format!("{src}/aggd.service"))
        .unwrap()
        .replace("/usr/local/bin/aggd", env!("CARGO_BIN_EXE_aggd"));
    std::fs::write(dir.join("aggd.service"), service).unwrap();
    std::fs::copy(format!("{src}/aggd.socket"), dir.join("aggd.socket")).unwrap();
    let out = Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(dir.join("aggd.service"))
        .arg(dir.join("aggd.socket"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Other units on the machine may warn; ours must not.
    assert!(
        !err.lines()
            .any(|l| l.contains("aggd.service") || l.contains("aggd.socket")),
        "{err}"
    );
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("activation");
    std::fs::write(dir.join("rules.conf"), "total (60) = sum in.*\n").unwrap();
    // The config's address is ignored: systemd passes the socket.
    std::fs::write(
        dir.join("aggd.toml"),
        format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:1\"\n\
             [aggregation]\nrules = \"rules.conf\"\n[workers]\nflush_tick_ms = 50\n\
             [[destination]]\naddress = \"{}\"\nprotocol = \"plaintext\"\n",
            capture.addr
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(tool("systemd-socket-activate"))
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_aggd"))
        .args(["run", "-c"])
        .arg(dir.join("aggd.toml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = previous_bucket(60);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("socket not served: {e}"),
        }
    };
    write!(s, "in.a 2 {base}\nin.b 3 {base}\n").unwrap();
    drop(s);
    capture.wait_for("total", |got| {
        got.get(&("total".into(), base)) == Some(&5.0)
    });
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

/// A free loopback port (bound and released).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// `systemd-socket-activate [-d] -l 127.0.0.1:P …` running `aggd run -c CFG`, where the
/// config names `listens` (its addresses are ignored: the passed sockets are used, in
/// order).
fn activate(
    dir: &std::path::Path,
    listens: &str,
    dest: &str,
    ports: &[u16],
    datagram: bool,
) -> Activated {
    std::fs::write(dir.join("rules.conf"), "total (60) = sum in.*\n").unwrap();
    std::fs::write(
        dir.join("aggd.toml"),
        format!(
            "{listens}[aggregation]\nrules = \"rules.conf\"\n[workers]\nflush_tick_ms = 50\n\
             [[destination]]\naddress = \"{dest}\"\nprotocol = \"plaintext\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tool("systemd-socket-activate"));
    if datagram {
        cmd.arg("--datagram");
    }
    for p in ports {
        cmd.arg("-l").arg(format!("127.0.0.1:{p}"));
    }
    cmd.arg(env!("CARGO_BIN_EXE_aggd"))
        .args(["run", "-c"])
        .arg(dir.join("aggd.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Activated)
        .unwrap()
}

/// The activated aggd; killed if the test ends without [`stop`].
struct Activated(std::process::Child);

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM, then a clean exit.
fn stop(mut a: Activated) {
    let pid = a.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(a.0.wait().unwrap().success());
}

#[test]
fn socket_activation_with_several_sockets_maps_them_to_the_listeners_in_order() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("activation-many");
    let (plain, pickle) = (free_port(false), free_port(false));
    let child = activate(
        &dir,
        "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:1\"\n\
         [[listen]]\nprotocol = \"pickle\"\naddress = \"127.0.0.1:1\"\n",
        &capture.addr.to_string(),
        &[plain, pickle],
        false,
    );
    let base = previous_bucket(60);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", plain)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("first socket not served: {e}"),
        }
    };
    writeln!(s, "in.a 2 {base}").unwrap();
    drop(s);
    // The second passed socket speaks pickle (CPython's own pickle module sends).
    let t = base as f64;
    python_pickle_send(
        ([127, 0, 0, 1], pickle).into(),
        2,
        &[("in.b".into(), t, 3.0), ("in.c".into(), t, 5.0)],
    );
    capture.wait_for("total over both sockets", |got| {
        got.get(&("total".into(), base)) == Some(&10.0)
    });
    stop(child);
}

#[test]
fn socket_activation_passes_a_udp_socket() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("activation-udp");
    let port = free_port(true);
    let child = activate(
        &dir,
        "[[listen]]\nprotocol = \"plaintext\"\ntransport = \"udp\"\naddress = \"127.0.0.1:1\"\n",
        &capture.addr.to_string(),
        &[port],
        true,
    );
    // Once systemd-socket-activate holds the port (binding it fails), a datagram waits in
    // its socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the UDP socket was never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = previous_bucket(60);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // systemd-socket-activate starts aggd on the first datagram, which stays queued for
    // it; later ones are read as they come.
    sock.send_to(format!("in.a 4 {base}\n").as_bytes(), ("127.0.0.1", port))
        .unwrap();
    capture.wait_for("the first datagram", |got| {
        got.get(&("total".into(), base)) == Some(&4.0)
    });
    sock.send_to(format!("in.b 6 {base}\n").as_bytes(), ("127.0.0.1", port))
        .unwrap();
    capture.wait_for("the second datagram", |got| {
        got.get(&("total".into(), base)) == Some(&10.0)
    });
    stop(child);
}
