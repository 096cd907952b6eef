//! Test support shared by aggd's integration tests (`tests/`) and benchmarks
//! (`benches/`), dev-only: temp dirs, configs, a capturing carbon downstream on a real
//! socket ([`Capture`]), aggd in-process or as its real binary ([`TestAggd`],
//! [`spawn_run`]), a real carbon-cache ([`carbon`]), real NATS servers ([`nats`]), real
//! remote-write stores ([`promstore`]) and the benchmark workload
//! ([`workload`]).
#![allow(missing_docs, clippy::missing_panics_doc)]

mod capture;
pub mod carbon;
pub mod cluster;
pub mod edge;
mod http;
pub mod nats;
mod process;
pub mod promstore;
pub mod proxy;
mod rng;
pub mod workload;

pub use capture::{Capture, Received};
pub use http::{http, metric, wait_acknowledged, wait_received};
pub use process::{
    aggd_bin, aggd_ok, python_pickle_send, replay_counts, run_with_input, sigterm, spawn_command,
    spawn_run, spawn_run_with,
};
pub use rng::Rng;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{SystemTime, UNIX_EPOCH};

/// A port on 127.0.0.1 free a moment ago (bound to port 0 and released), for programs
/// that take a port number, where 0 means "off" (carbon-cache, carbon.conf receivers):
/// a small race, if another process takes it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
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

/// What most end-to-end tests start from: a capturing downstream speaking `protocol`
/// (`pickle` or `plaintext`), a fresh directory (`tag`), and in it a config with `rules`
/// ([`write_config`]) whose one destination is that downstream. Returns the downstream,
/// the directory and the config file.
pub fn with_downstream(
    tag: &str,
    rules: &str,
    protocol: &'static str,
) -> (Capture, PathBuf, PathBuf) {
    let capture = Capture::start(protocol);
    let dir = tempdir(tag);
    let cfg = write_config(&dir, rules, "", &capture.addr.to_string(), protocol);
    (capture, dir, cfg)
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

/// Starts aggd in-process on an already-loaded (possibly modified) config.
pub async fn start_aggd_config(config: aggd::config::Config) -> aggd::server::Server {
    let listeners = aggd::listen::BoundListener::bind_all(&config.listeners).unwrap();
    aggd::server::start(config, listeners).await.unwrap()
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
