//! Real Prometheus-compatible stores as remote-write receivers: Debian's
//! `victoria-metrics` (single node, remote write at `/api/v1/write`) and Debian's
//! `prometheus` (with `--web.enable-remote-write-receiver`). Each binds a 127.0.0.1 port
//! picked at start, keeps its data in a temp dir, can be stopped and started again on the
//! same port and data, and is killed when dropped. Read back over their HTTP APIs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http, tempdir};

const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// One series read back: its labels (`__name__` included) and samples (ms, value) in
/// timestamp order (then value order).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, f64)>,
}

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Victoria,
    Prometheus,
}

/// A store process on a fixed port and data directory.
pub struct Store {
    kind: Kind,
    pub port: u16,
    pub dir: PathBuf,
    /// More command-line flags for the next [`Store::start`] (e.g. TLS and basic auth).
    pub flags: Vec<String>,
    child: Option<Child>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `%`-encodes everything but unreserved characters (a query-string value).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Store {
    /// Starts VictoriaMetrics single-node on a free port and a temp data dir.
    pub fn victoria_metrics() -> Store {
        Store::start_new(Kind::Victoria)
    }

    /// Starts Prometheus with its remote-write receiver on a free port and a temp dir.
    pub fn prometheus() -> Store {
        Store::start_new(Kind::Prometheus)
    }

    fn start_new(kind: Kind) -> Store {
        let mut s = Store {
            kind,
            port: free_port(),
            dir: tempdir(match kind {
                Kind::Victoria => "victoria-metrics",
                Kind::Prometheus => "prometheus",
            }),
            flags: Vec::new(),
            child: None,
        };
        s.start();
        s
    }

    /// Starts VictoriaMetrics serving HTTPS with `cert`/`key` (PEM) and requiring HTTP
    /// basic auth as `user`/`password`. Reading it back ([`Store::series`]) needs it
    /// restarted without them: clear [`Store::flags`], [`Store::stop`], [`Store::start`].
    pub fn victoria_metrics_secure(cert: &Path, key: &Path, user: &str, password: &str) -> Store {
        let mut s = Store {
            kind: Kind::Victoria,
            port: free_port(),
            dir: tempdir("victoria-metrics-tls"),
            flags: vec![
                "-tls".into(),
                format!("-tlsCertFile={}", cert.display()),
                format!("-tlsKeyFile={}", key.display()),
                format!("-httpAuth.username={user}"),
                format!("-httpAuth.password={password}"),
            ],
            child: None,
        };
        s.start();
        s
    }

    /// The HTTPS remote-write URL (for [`Store::victoria_metrics_secure`]).
    pub fn write_url_tls(&self) -> String {
        format!("https://127.0.0.1:{}/api/v1/write", self.port)
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The store's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The remote-write URL.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// Starts (or starts again, on the same port and data) the store; waits until it is
    /// ready.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the store is running");
        let listen = format!("127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("store.log"))
            .unwrap();
        let mut cmd = match self.kind {
            Kind::Victoria => {
                assert!(
                    std::path::Path::new(VICTORIA_METRICS).exists(),
                    "{VICTORIA_METRICS} is missing: run tests/install-deps.sh (Debian package victoria-metrics)"
                );
                let mut c = Command::new(VICTORIA_METRICS);
                c.arg(format!(
                    "-storageDataPath={}",
                    self.dir.join("data").display()
                ))
                .arg(format!("-httpListenAddr={listen}"))
                .arg("-retentionPeriod=100y")
                .arg("-loggerLevel=WARN");
                c
            }
            Kind::Prometheus => {
                assert!(
                    std::path::Path::new(PROMETHEUS).exists(),
                    "{PROMETHEUS} is missing: run tests/install-deps.sh (Debian package prometheus)"
                );
                let conf = self.dir.join("prometheus.yml");
                std::fs::write(&conf, "global: {}\n").unwrap();
                let mut c = Command::new(PROMETHEUS);
                c.arg(format!("--config.file={}", conf.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        self.dir.join("data").display()
                    ))
                    .arg(format!("--web.listen-address={listen}"))
                    .arg("--web.enable-remote-write-receiver")
                    .arg("--log.level=warn");
                c
            }
        };
        let child = cmd
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the store");
        self.child = Some(child);
        let ready = match self.kind {
            Kind::Victoria => "/health",
            Kind::Prometheus => "/-/ready",
        };
        let secure = !self.flags.is_empty();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Over TLS, a listening port is as ready as the test can tell without a TLS
            // client; senders retry anyway.
            if std::net::TcpStream::connect(self.addr()).is_ok()
                && (secure || http(self.addr(), "GET", ready, &[], b"").0 == 200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "the store did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `sig` (e.g. `-STOP`, `-CONT`) to the running store.
    pub fn signal(&self, sig: &str) {
        crate::edge::signal(self.pid().expect("the store is running"), sig);
    }

    /// Kills the store with SIGKILL (what it had not persisted is lost; its data dir
    /// stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the store cleanly (SIGTERM, so what it acknowledged is on disk; SIGKILL
    /// after 20 s); its data stays.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        crate::edge::signal(c.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Every series the store holds whose name matches the regex `names`, with all its
    /// raw samples (VictoriaMetrics: `/api/v1/export` after `/internal/force_flush`;
    /// Prometheus: a range selector over the last `lookback` at now).
    pub fn series(&self, names: &str, lookback: Duration) -> Vec<Series> {
        let selector = format!("{{__name__=~\"{names}\"}}");
        let mut out = match self.kind {
            Kind::Victoria => {
                let (status, _, _) = http(self.addr(), "GET", "/internal/force_flush", &[], b"");
                assert_eq!(status, 200, "force_flush");
                let path = format!("/api/v1/export?match[]={}", encode(&selector));
                let (status, _, body) = http(self.addr(), "GET", &path, &[], b"");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                String::from_utf8(body)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        let samples = v["timestamps"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .zip(v["values"].as_array().unwrap())
                            .map(|(t, x)| (t.as_i64().unwrap(), number(x)))
                            .collect();
                        Series {
                            labels: labels(&v["metric"]),
                            samples,
                        }
                    })
                    .collect::<Vec<_>>()
            }
            Kind::Prometheus => {
                let q = format!("{selector}[{}s]", lookback.as_secs().max(1));
                let path = format!("/api/v1/query?query={}", encode(&q));
                let (status, _, body) = http(self.addr(), "GET", &path, &[], b"");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                v["data"]["result"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| Series {
                        labels: labels(&r["metric"]),
                        samples: r["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| {
                                (
                                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                                    number(&p[1]),
                                )
                            })
                            .collect(),
                    })
                    .collect()
            }
        };
        // By timestamp; samples sharing one (a store that keeps both) by value, since the
        // stores do not say in which order they were written.
        for s in &mut out {
            s.samples
                .sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

fn labels(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// A sample value: a JSON number, or a string (Prometheus; VictoriaMetrics for NaN/Inf).
fn number(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| v.as_str().unwrap().parse().unwrap())
}
