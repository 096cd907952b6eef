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
