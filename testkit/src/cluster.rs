//! One aggd node of a test cluster (`docs/cluster.md`): its config (cluster `t`,
//! `lease_ttl = "2s"`, a journal in `journal/` and the loss ledger beside it, pickle to
//! one downstream), its process, and its listeners' addresses. Killed and its directory
//! removed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::nats::Nats;
use crate::{Capture, aggd_ok, append_config, tempdir, write_config};

/// One aggd node of a test cluster.
pub struct Node {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub listeners: usize,
    pub tcp: SocketAddr,
    pub pickle: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// The `[admin]` section that gives a node its fourth listener.
pub const ADMIN: &str = "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"cluster-test-token\"\n";

impl Node {
    /// Writes node `id`'s config (cluster `name`, `shards` shards) and starts it.
    pub fn start(id: &str, nats: &Nats, capture: &Capture, shards: u32, rules: &str) -> Node {
        Node::start_with(id, nats, capture, shards, rules, "")
    }

    /// Like [`Node::start`], with more TOML (`[admin]` adds a fourth listener).
    pub fn start_with(
        id: &str,
        nats: &Nats,
        capture: &Capture,
        shards: u32,
        rules: &str,
        extra: &str,
    ) -> Node {
        let (servers, dest) = (nats.toml_servers(), capture.addr.to_string());
        Node::start_via(
            id,
            (&servers, nats.servers.len()),
            &dest,
            shards,
            rules,
            extra,
        )
    }

    /// Like [`Node::start_with`], reaching NATS at `servers` (a TOML list, and how many
    /// servers the cluster has) and sending to `dest` (`host:port`): through proxies, for
    /// the partition fault.
    pub fn start_via(
        id: &str,
        servers: (&str, usize),
        dest: &str,
        shards: u32,
        rules: &str,
        extra: &str,
    ) -> Node {
        let mut n = Node::configure(id, servers, dest, shards, rules, extra);
        n.restart();
        n
    }

    /// Like [`Node::start_via`], without starting it: the test may edit its config
    /// (`cfg`, e.g. another `lease_ttl`) and then call [`Node::restart`].
    pub fn configure(
        id: &str,
        (servers, count): (&str, usize),
        dest: &str,
        shards: u32,
        rules: &str,
        extra: &str,
    ) -> Node {
        let dir = tempdir(&format!("cluster-{id}"));
        let cfg = write_config(&dir, rules, "max_intervals = 24\n", dest, "pickle");
        append_config(
            &cfg,
            &format!(
                "[journal]\ndir = \"journal\"\nledger = \"ledger.jsonl\"\nmin_free_disk = 0\n\
                 [service]\nself_metrics_interval = \"0s\"\ndrain_timeout = \"10s\"\n\
                 [cluster]\nservers = {}\nname = \"t\"\nnode = \"{id}\"\nshards = {shards}\n\
                 replicas = {}\nlease_ttl = \"2s\"\nbatch_delay = \"20ms\"\n\
                 publish_threads = {}\n",
                servers,
                count.min(3),
                // Node a publishes in one lane, the others in two.
                if id == "a" { 1 } else { 2 }
            ),
        );
        append_config(&cfg, extra);
        Node {
            child: None,
            dir,
            cfg,
            listeners: if extra.contains("[admin]") { 4 } else { 3 },
            tcp: "127.0.0.1:0".parse().unwrap(),
            pickle: "127.0.0.1:0".parse().unwrap(),
            admin: None,
        }
    }

    pub fn restart(&mut self) {
        self.restart_with_env(&[]);
    }

    /// Like [`Node::restart`], with more environment (`LD_PRELOAD` of faketime, …).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = std::process::Command::new(crate::aggd_bin());
        cmd.args(["run", "-c", self.cfg.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null());
        let (child, addrs) = crate::spawn_command(cmd, self.listeners, false);
        self.admin = addrs.iter().find(|(k, _)| k == "admin/http").map(|a| a.1);
        self.child = Some(child);
        self.tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
        self.pickle = addrs.iter().find(|(k, _)| k == "pickle/tcp").unwrap().1;
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::sigterm(&c);
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

/// libfaketime (Debian's `faketime`, installed by `tests/install-deps.sh`), for a node
/// whose wall clock is wrong.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The cluster's rules line of `aggd cluster status -c cfg` (`rules <digest> in force
/// from <Unix s> (<time>)`), if it answers.
pub fn rules_line(cfg: &Path) -> Option<String> {
    let out =
        std::panic::catch_unwind(|| aggd_ok(["cluster", "status", "-c", cfg.to_str().unwrap()]));
    out.ok()?
        .lines()
        .find(|l| l.starts_with("rules "))
        .map(str::to_string)
}

/// The activation time of the cluster's rules once their line differs from `before`;
/// `None` if it stays so for `within` (the change was not stored).
pub fn activation_after(cfg: &Path, before: &str, within: Duration) -> Option<i64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(line) = rules_line(cfg)
            && line != before
        {
            return line.split_whitespace().nth(5)?.parse().ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
