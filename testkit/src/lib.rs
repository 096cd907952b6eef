//! Test support shared by aggd's integration tests (`tests/`) and benchmarks
//! (`benches/`), dev-only: temp dirs, configs, a capturing carbon downstream on a real
//! socket ([`Capture`]), aggd in-process or as its real binary ([`TestAggd`],
//! [`spawn_run`]), a real carbon-cache ([`carbon`]) and the benchmark workload
//! ([`workload`]).
#![allow(missing_docs, clippy::missing_panics_doc)]

pub mod carbon;
pub mod workload;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `aggd` binary Cargo built for the running test or benchmark: next to the
/// directory (`target/<profile>/deps`) that holds the test executable.
pub fn aggd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("aggd");
    assert!(
        bin.exists(),
        "{} missing: run through cargo test or cargo bench",
        bin.display()
    );
    bin
}

/// A fresh directory under the system temp dir.
pub fn tempdir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("aggd-it-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Unix seconds now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Start of the interval before the current one, for frequency `f`.
pub fn previous_bucket(f: i64) -> i64 {
    let n = now() as i64;
    n - n.rem_euclid(f) - f
}

/// What a downstream received: the last value per (path, timestamp), as whisper keeps it,
/// and how many datapoints arrived in all.
#[derive(Default, Debug)]
pub struct Received {
    pub last: BTreeMap<(String, i64), f64>,
    pub datapoints: usize,
    /// What aggd sent that is not the protocol (a failed check in a connection thread),
    /// reported by [`Capture::wait_for`] and [`Capture::snapshot`] at once.
    pub errors: Vec<String>,
}

/// What a [`Capture`] does with its first connection.
#[derive(Clone, Copy)]
enum First {
    /// Serve it like the others.
    Serve,
    /// Close it at once.
    Close,
    /// Read a byte, wait, then reset it.
    Reset,
}

/// A carbon downstream on 127.0.0.1:0 that decodes pickle frames with serde-pickle (the
/// oracle) or plaintext lines, and records everything it receives.
pub struct Capture {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

fn record(rx: &Mutex<Received>, path: String, ts: f64, value: f64) {
    let mut r = rx.lock().unwrap();
    r.datapoints += 1;
    r.last.insert((path, ts as i64), value);
}

fn number(v: &serde_pickle::Value) -> f64 {
    match v {
        serde_pickle::Value::F64(f) => *f,
        serde_pickle::Value::I64(i) => *i as f64,
        other => panic!("not a number: {other:?}"),
    }
}

fn serve_pickle(mut s: std::net::TcpStream, rx: Arc<Mutex<Received>>) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() {
            return; // the sender went away mid-frame (a killed aggd)
        }
        assert_eq!(&body[..2], b"\x80\x02", "aggd must send pickle protocol 2");
        let v = serde_pickle::value_from_slice(&body, serde_pickle::DeOptions::new()).unwrap();
        let serde_pickle::Value::List(items) = v else {
            panic!("frame is not a list")
        };
        for it in items {
            let serde_pickle::Value::Tuple(pair) = it else {
                panic!("element not a tuple")
            };
            let serde_pickle::Value::String(path) = &pair[0] else {
                panic!("path not str")
            };
            let serde_pickle::Value::Tuple(tv) = &pair[1] else {
                panic!("(ts, v) not a tuple")
            };
            record(&rx, path.clone(), number(&tv[0]), number(&tv[1]));
        }
    }
}

fn serve_plaintext(s: std::net::TcpStream, rx: Arc<Mutex<Received>>) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return, // cut by a sender that went away
            Ok(_) => {}
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "bad line from aggd: {line:?}");
        record(
            &rx,
            f[0].to_string(),
            f[2].parse().unwrap(),
            f[1].parse().unwrap(),
        );
    }
}

impl Capture {
    /// Starts a capturing downstream speaking `protocol` ("pickle" or "plaintext").
    pub fn start(protocol: &'static str) -> Capture {
        Capture::start_with(protocol, false)
    }

    /// Like [`Capture::start`]; with `drop_first`, the first connection is closed at once
    /// (a downstream restart).
    pub fn start_with(protocol: &'static str, drop_first: bool) -> Capture {
        let first = if drop_first {
            First::Close
        } else {
            First::Serve
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Capture::serve(l, protocol, first)
    }

    /// A capturing downstream on an already-bound listener (to appear on a port aggd
    /// already tries).
    pub fn start_on(l: TcpListener, protocol: &'static str) -> Capture {
        Capture::serve(l, protocol, First::Serve)
    }

    /// A downstream that fails aggd's first write: it accepts with a 4 KiB receive buffer,
    /// reads one byte, waits 300 ms (so aggd's write blocks on the full window), then
    /// resets the connection. Later connections are captured as usual.
    pub fn start_resetting_first(protocol: &'static str) -> Capture {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.set_recv_buffer_size(4096).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(16).unwrap();
        Capture::serve(l.into(), protocol, First::Reset)
    }

    fn serve(l: TcpListener, protocol: &'static str, first: First) -> Capture {
        let addr = l.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rx = received.clone();
        let conns = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match first {
                    First::Close if n == 0 => {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    First::Reset if n == 0 => {
                        let _ = s.read_exact(&mut [0u8; 1]);
                        std::thread::sleep(Duration::from_millis(300));
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        drop(s);
                        continue;
                    }
                    _ => {}
                }
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match protocol {
                            "pickle" => serve_pickle(s, rx.clone()),
                            _ => serve_plaintext(s, rx.clone()),
                        }));
                    if let Err(p) = r {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| {
                                p.downcast_ref::<&str>()
                                    .map(std::string::ToString::to_string)
                            })
                            .unwrap_or_else(|| "a panic".into());
                        rx.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .errors
                            .push(msg);
                    }
                });
            }
        });
        Capture {
            addr,
            received,
            connections,
        }
    }

    /// The last value received for `path` at `ts`.
    pub fn value(&self, path: &str, ts: i64) -> Option<f64> {
        self.received
            .lock()
            .unwrap()
            .last
            .get(&(path.to_string(), ts))
            .copied()
    }

    /// All (path, ts) → value received; fails the test if aggd sent anything that is not
    /// the protocol.
    pub fn snapshot(&self) -> BTreeMap<(String, i64), f64> {
        let r = self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(
            r.errors.is_empty(),
            "downstream protocol errors: {:?}",
            r.errors
        );
        r.last.clone()
    }

    /// Waits (up to 20 s) until `pred` holds for the received values.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&BTreeMap<(String, i64), f64>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.snapshot()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; downstream has {:?}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `aggd.toml` (listeners on port 0, given rules, one destination) into `dir`.
pub fn write_config(
    dir: &std::path::Path,
    rules: &str,
    extra_aggregation: &str,
    destination: &str,
    dest_protocol: &str,
) -> PathBuf {
    std::fs::write(dir.join("aggregation-rules.conf"), rules).unwrap();
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [[listen]]\nprotocol = \"plaintext\"\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
             [[listen]]\nprotocol = \"pickle\"\naddress = \"127.0.0.1:0\"\n\
             [aggregation]\nrules = \"aggregation-rules.conf\"\n{extra_aggregation}\n\
             [workers]\ncount = 2\nflush_tick_ms = 50\n\
             [[destination]]\naddress = \"{destination}\"\nprotocol = \"{dest_protocol}\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// Appends TOML `extra` (more sections or destinations) to the config file `cfg`.
pub fn append_config(cfg: &std::path::Path, extra: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str(extra);
    std::fs::write(cfg, text).unwrap();
}

/// Loads `cfg`, binds its listeners and starts aggd in-process.
pub async fn start_aggd(cfg: &std::path::Path) -> aggd::server::Server {
    let config = aggd::config::Config::load(cfg).unwrap();
    let listeners = aggd::listen::BoundListener::bind_all(&config.listeners).unwrap();
    aggd::server::start(config, listeners).await.unwrap()
}

/// Runs CPython's own `pickle` module to send `points` as one frame with `protocol` to
/// `addr`; fails the test with a clear message if python3 is missing.
pub fn python_pickle_send(addr: SocketAddr, protocol: u8, points: &[(String, f64, f64)]) {
    let data: Vec<String> = points
        .iter()
        .map(|(p, t, v)| format!("({p:?}, ({t:?}, {v:?}))"))
        .collect();
    let script = format!(
        "import pickle, socket, struct\n\
         data = [{}]\n\
         body = pickle.dumps(data, protocol={protocol})\n\
         s = socket.create_connection(('{}', {}))\n\
         s.sendall(struct.pack('!L', len(body)) + body)\n\
         s.close()\n",
        data.join(", "),
        addr.ip(),
        addr.port()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 (CPython) is required for the pickle tests: install python3");
    assert!(
        out.status.success(),
        "python3 pickle sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- the aggd binary as a child process -------------------------------------------------

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Starts `aggd run ARGS` and returns it with its listeners' addresses, read from its log.
pub fn spawn_run(args: &[&str], listeners: usize) -> (Child, Vec<(String, SocketAddr)>) {
    spawn_run_with(args, listeners, Stdio::null(), false)
}

/// Like [`spawn_run`], with aggd's stdout as given; with `close_stderr`, aggd's stderr is
/// closed once the listeners have been read from it.
pub fn spawn_run_with(
    args: &[&str],
    listeners: usize,
    stdout: Stdio,
    close_stderr: bool,
) -> (Child, Vec<(String, SocketAddr)>) {
    let mut cmd = Command::new(aggd_bin());
    cmd.arg("run").args(args).stdout(stdout);
    spawn_command(cmd, listeners, close_stderr)
}

/// Spawns `cmd` (an `aggd run` with whatever environment the test set) with its stderr
/// piped, and returns it with its `listeners` listeners' addresses, read from its log;
/// with `close_stderr`, the pipe is closed once they have been read.
pub fn spawn_command(
    mut cmd: Command,
    listeners: usize,
    close_stderr: bool,
) -> (Child, Vec<(String, SocketAddr)>) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let (Some(k), Some(a)) = (line.find("listener=\""), line.find("address=")) {
                let kind = line[k + 10..].split('"').next().unwrap().to_string();
                let addr = line[a + 8..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let _ = tx.send((kind, addr));
                seen += 1;
                if close_stderr && seen == listeners {
                    return; // drops the pipe's read end
                }
            }
        }
    });
    let addrs = (0..listeners)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("aggd did not log its listeners")
        })
        .collect();
    (child, addrs)
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Runs `aggd ARGS` to completion; fails the test with its stderr unless it succeeds;
/// returns its stdout.
pub fn aggd_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(aggd_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "aggd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A minimal HTTP/1.1 client over a real socket: returns (status, headers, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no HTTP header end");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

/// Starts aggd in-process on an already-loaded (possibly modified) config.
pub async fn start_aggd_config(config: aggd::config::Config) -> aggd::server::Server {
    let listeners = aggd::listen::BoundListener::bind_all(&config.listeners).unwrap();
    aggd::server::start(config, listeners).await.unwrap()
}

/// The first Prometheus sample from `/metrics` whose line starts with `sample`, e.g.
/// `aggd_dropped_total{reason="unconfirmed"}`; fails the test if there is none.
pub fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(sample))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
}

/// Waits (up to 30 s) until aggd says it took (journaled and handed on) `n` datapoints
/// in this run.
pub fn wait_received(admin: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "aggd_received_total") < n {
        assert!(
            Instant::now() < deadline,
            "aggd did not take {n} datapoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 10 s) until the peer's TCP has acknowledged every byte written to `s`
/// (`SIOCOUTQ` is 0): the bytes are then in the peer's receive queue.
#[allow(unsafe_code)]
pub fn wait_acknowledged(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points at `n`.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert!(r == 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} bytes never acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An aggd for one test, built step by step: the rules, `[aggregation]` keys, and more
/// TOML; a capturing downstream ([`Capture`]) as its destination; its own temp dir. Then
/// [`TestAggd::start`] runs it in-process, or [`TestAggd::spawn`] as the real binary.
pub struct TestAggd {
    tag: &'static str,
    rules: String,
    aggregation: String,
    extra: String,
    dest_protocol: &'static str,
    registry: Option<String>,
}

/// A started [`TestAggd`]: the downstream, the directory and config file, and aggd.
pub struct Running<A> {
    /// The downstream aggd sends to.
    pub capture: Capture,
    /// The test's directory (config, rules, journal).
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The in-process server, or the child process with its listeners' addresses.
    pub aggd: A,
}

impl TestAggd {
    /// aggd with `rules` (an `aggregation-rules.conf`), its directory tagged `tag`.
    pub fn new(tag: &'static str, rules: &str) -> TestAggd {
        TestAggd {
            tag,
            rules: rules.to_string(),
            aggregation: String::new(),
            extra: String::new(),
            dest_protocol: "pickle",
            registry: None,
        }
    }

    /// More `[aggregation]` keys, e.g. `forward_all = true`.
    pub fn aggregation(mut self, keys: &str) -> TestAggd {
        self.aggregation.push_str(keys);
        self
    }

    /// More TOML sections, appended to the config.
    pub fn toml(mut self, sections: &str) -> TestAggd {
        self.extra.push_str(sections);
        self
    }

    /// The destination's protocol (`pickle`, the default, or `plaintext`).
    pub fn dest_protocol(mut self, protocol: &'static str) -> TestAggd {
        self.dest_protocol = protocol;
        self
    }

    /// A tenant registry, written as `tenants.toml` next to the config (for a
    /// `[tenants]` section's `registry = "tenants.toml"`).
    pub fn registry(mut self, toml: &str) -> TestAggd {
        self.registry = Some(toml.to_string());
        self
    }

    fn write(self) -> (Capture, PathBuf, PathBuf) {
        let capture = Capture::start(self.dest_protocol);
        let dir = tempdir(self.tag);
        if let Some(r) = &self.registry {
            std::fs::write(dir.join("tenants.toml"), r).unwrap();
        }
        let cfg = write_config(
            &dir,
            &self.rules,
            &self.aggregation,
            &capture.addr.to_string(),
            self.dest_protocol,
        );
        append_config(&cfg, &self.extra);
        (capture, dir, cfg)
    }

    /// Writes the config and starts aggd in-process (inside a tokio runtime).
    pub async fn start(self) -> Running<aggd::server::Server> {
        let (capture, dir, config) = self.write();
        let aggd = start_aggd(&config).await;
        Running {
            capture,
            dir,
            config,
            aggd,
        }
    }

    /// Writes the config and starts the real binary (`aggd run -c`), waiting for its
    /// `listeners` listeners (the config has three, more with `[admin]` or HTTP).
    pub fn spawn(self, listeners: usize) -> Running<(Child, Vec<(String, SocketAddr)>)> {
        let (capture, dir, config) = self.write();
        let aggd = spawn_run(&["-c", config.to_str().unwrap()], listeners);
        Running {
            capture,
            dir,
            config,
            aggd,
        }
    }
}
