//! Cluster mode end to end: real aggd binaries over real NATS JetStream servers
//! (`docs/cluster.md`). Every server binds 127.0.0.1 ports picked at start and is killed
//! by process id when its test ends.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use aggd_testkit::nats::Nats;
use aggd_testkit::{Capture, append_config, spawn_run, tempdir, write_config};

/// One aggd node of a test cluster.
struct Node {
    child: Option<Child>,
    dir: PathBuf,
    cfg: PathBuf,
    tcp: SocketAddr,
    pickle: SocketAddr,
}

const RULES: &str = "cl.<grp>.count (5) = count in.<grp>.*\ncl.<grp>.sum (5) = sum in.<grp>.*\n";

impl Node {
    /// Writes node `id`'s config (cluster `name`, `shards` shards) and starts it.
    fn start(id: &str, nats: &Nats, capture: &Capture, shards: u32, rules: &str) -> Node {
        let dir = tempdir(&format!("cluster-{id}"));
        let cfg = write_config(
            &dir,
            rules,
            "max_intervals = 24\n",
            &capture.addr.to_string(),
            "pickle",
        );
        append_config(
            &cfg,
            &format!(
                "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
                 [service]\nself_metrics_interval = \"0s\"\ndrain_timeout = \"10s\"\n\
                 [cluster]\nservers = {}\nname = \"t\"\nnode = \"{id}\"\nshards = {shards}\n\
                 replicas = {}\nlease_ttl = \"2s\"\nbatch_delay = \"20ms\"\n",
                nats.toml_servers(),
                nats.servers.len().min(3)
            ),
        );
        let mut n = Node {
            child: None,
            dir,
            cfg,
            tcp: "127.0.0.1:0".parse().unwrap(),
            pickle: "127.0.0.1:0".parse().unwrap(),
        };
        n.restart();
        n
    }

    fn restart(&mut self) {
        let (child, addrs) = spawn_run(&["-c", self.cfg.to_str().unwrap()], 3);
        self.child = Some(child);
        self.tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
        self.pickle = addrs.iter().find(|(k, _)| k == "pickle/tcp").unwrap().1;
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            aggd_testkit::sigterm(&c);
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn send_lines(addr: SocketAddr, lines: &str) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
}

/// Waits until `pred` holds of the downstream's values, up to `limit`.
fn wait_until(
    capture: &Capture,
    limit: Duration,
    what: &str,
    pred: impl Fn(&std::collections::BTreeMap<(String, i64), f64>) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let snap = capture.snapshot();
        if pred(&snap) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; downstream has {snap:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_node_aggregates_through_the_stream() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let node = Node::start("a", &nats, &capture, 8, RULES);
    let ts = aggd_testkit::now() as i64 - 5;
    let mut lines = String::new();
    for g in 0..10 {
        for h in 0..7 {
            lines.push_str(&format!("in.g{g}.h{h} {h} {ts}\n"));
        }
    }
    send_lines(node.tcp, &lines);
    let b = ts - ts.rem_euclid(5);
    wait_until(&capture, Duration::from_secs(30), "all groups", |s| {
        (0..10).all(|g| s.get(&(format!("cl.g{g}.count"), b)) == Some(&7.0))
    });
    for g in 0..10 {
        assert_eq!(capture.value(&format!("cl.g{g}.sum"), b), Some(21.0));
    }
}
