//! A real carbon-cache (Debian's graphite-carbon) as a downstream, and reading its whisper
//! files back with Debian's whisper module.
//!
//! carbon-cache treats port 0 as "receiver off", so its pickle port is reserved by binding
//! port 0 and releasing it just before carbon-cache binds it (a small race).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tempdir;

const CARBON_CACHE: &str = "/usr/bin/carbon-cache";
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// A carbon-cache child process, killed on drop.
pub struct CarbonCache {
    child: Child,
    /// Its config and storage directory.
    pub dir: PathBuf,
    /// Its pickle receiver port.
    pub port: u16,
}

impl Drop for CarbonCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CarbonCache {
    /// The carbon-cache process id (to stop or kill it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts carbon-cache on a free port.
    pub fn start() -> CarbonCache {
        CarbonCache::start_on(super::free_port(), tempdir("carbon-cache"))
    }

    /// Starts carbon-cache with its pickle receiver on `port`, storing under `dir`.
    pub fn start_on(port: u16, dir: PathBuf) -> CarbonCache {
        assert!(
            Path::new(CARBON_CACHE).exists(),
            "{CARBON_CACHE} is missing: run tests/install-deps.sh (Debian package graphite-carbon)"
        );
        let d = dir.display();
        std::fs::write(
            dir.join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage\nLOCAL_DATA_DIR = {d}/storage/whisper\n\
                 WHITELISTS_DIR = {d}/lists\nLOG_DIR = {d}/log\nPID_DIR = {d}\nUSER =\n\
                 MAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = inf\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_PORT = 0\nENABLE_UDP_LISTENER = False\n\
                 PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {port}\n\
                 CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = 0\n\
                 LOG_UPDATES = False\nLOG_CREATES = False\nCARBON_METRIC_INTERVAL = 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage-schemas.conf"),
            "[default]\npattern = .*\nretentions = 60s:1d\n",
        )
        .unwrap();
        let child = Command::new(CARBON_CACHE)
            .arg(format!("--config={}", dir.join("carbon.conf").display()))
            .args(["--nodaemon", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start carbon-cache");
        let cc = CarbonCache { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "carbon-cache did not start listening"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cc
    }

    /// Values stored at `ts` for each metric path, via the whisper module; `None` where
    /// the file or point does not exist yet, or the file is still being created (carbon
    /// writes its header after creating it: a read in between finds it short). A tagged
    /// name (`name;tag=value`) is looked up where carbon-cache stores it, by carbon's own
    /// `TaggedSeries.encode` (under `_tagged/`, hashed file names, carbon's default).
    pub fn fetch(&self, paths: &[&str], ts: i64) -> Vec<Option<f64>> {
        let names: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        let root = self.dir.join("storage/whisper");
        let script = format!(
            "import os, whisper\n\
             from carbon.util import TaggedSeries\n\
             for p in [{}]:\n\
             \x20   rel = TaggedSeries.encode(p, os.sep, hash_only=True) if ';' in p else p.replace('.', os.sep)\n\
             \x20   f = os.path.join({root:?}, rel + '.wsp')\n\
             \x20   v = None\n\
             \x20   try:\n\
             \x20       (start, end, step), values = whisper.fetch(f, {from}, {until})\n\
             \x20       v = values[({ts} - start) // step]\n\
             \x20   except (FileNotFoundError, whisper.CorruptWhisperFile):\n\
             \x20       pass\n\
             \x20   print(v)\n",
            names.join(", "),
            root = root.display().to_string(),
            from = ts - 60,
            until = ts + 60,
        );
        let out = Command::new(DEBIAN_PYTHON)
            .arg("-c")
            .arg(script)
            .output()
            .expect("Debian's python3 with the whisper module is required");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().ok())
            .collect()
    }
}

/// carbon's own `ConsistentHashingRouter` (what carbon-aggregator routes with), run by
/// Debian's CPython from the graphite-carbon package.
const CARBON_ROUTER: &str = r#"
import sys
from carbon.routers import ConsistentHashingRouter
class Settings:
    REPLICATION_FACTOR = int(sys.argv[1])
    DIVERSE_REPLICAS = sys.argv[2] == "1"
    ROUTER_HASH_TYPE = sys.argv[3]
dests = []
for d in sys.argv[4:]:
    parts = d.split(":")
    dests.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else None))
router = ConsistentHashingRouter(Settings())
for d in dests:
    router.addDestination(d)
label = dict(zip(dests, sys.argv[4:]))
out = []
for line in sys.stdin.buffer.read().decode("utf-8").split("\n")[:-1]:
    seen = []
    for d in router.getDestinations(line):
        if label[d] not in seen:
            seen.append(label[d])
    out.append(",".join(seen))
sys.stdout.write("\n".join(out) + "\n")
"#;

/// Where carbon's router (`ROUTER_HASH_TYPE` `hash_type`, `REPLICATION_FACTOR`,
/// `DIVERSE_REPLICAS`) places each of `names` over `destinations` (`host:port[:instance]`):
/// per name, its destinations as given, comma-separated, primary first (a destination
/// carbon yields twice is listed once). `pythonpath` is added for optional modules (mmh3).
pub fn carbon_placement(
    hash_type: &str,
    replication: usize,
    diverse: bool,
    destinations: &[&str],
    names: &[String],
    pythonpath: Option<&Path>,
) -> Vec<String> {
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.args(["-c", CARBON_ROUTER, &replication.to_string()])
        .arg(if diverse { "1" } else { "0" })
        .arg(hash_type)
        .args(destinations);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let input = names.join("\n") + "\n";
    super::process::run_with_input(cmd, input.as_bytes())
        .lines()
        .map(str::to_string)
        .collect()
}
