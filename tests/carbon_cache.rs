//! End-to-end with a real carbon-cache (Debian's graphite-carbon) as the destination: the
//! aggregates aggd sends as pickle land in whisper files, read back with Debian's whisper
//! module. Requires `tests/install-deps.sh` (or `apt-get install graphite-carbon`).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CARBON_CACHE: &str = "/usr/bin/carbon-cache";
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// A carbon-cache child process, killed on drop.
struct CarbonCache {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for CarbonCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CarbonCache {
    fn start() -> CarbonCache {
        assert!(
            Path::new(CARBON_CACHE).exists(),
            "{CARBON_CACHE} is missing: run tests/install-deps.sh (Debian package graphite-carbon)"
        );
        let dir = tempdir("carbon-cache");
        // carbon-cache treats port 0 as "receiver off", so the pickle port is reserved by
        // binding port 0 and released just before carbon-cache binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
    /// the file or point does not exist yet.
    fn fetch(&self, paths: &[&str], ts: i64) -> Vec<Option<f64>> {
        let files: Vec<String> = paths
            .iter()
            .map(|p| {
                format!(
                    "{:?}",
                    self.dir
                        .join("storage/whisper")
                        .join(p.replace('.', "/") + ".wsp")
                        .display()
                        .to_string()
                )
            })
            .collect();
        let script = format!(
            "import os, whisper\n\
             for f in [{}]:\n\
             \x20   v = None\n\
             \x20   if os.path.exists(f):\n\
             \x20       (start, end, step), values = whisper.fetch(f, {from}, {until})\n\
             \x20       v = values[({ts} - start) // step]\n\
             \x20   print(v)\n",
            files.join(", "),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_land_in_whisper() {
    let cc = tokio::task::spawn_blocking(CarbonCache::start)
        .await
        .unwrap();
    let dir = tempdir("to-carbon");
    let cfg = write_config(
        &dir,
        "web.all.requests (60) = sum web.*.requests\n\
         web.all.requests_count (60) = count web.*.requests\n\
         web.all.latency (60) = avg web.*.latency\n\
         web.all.latency_max (60) = max web.*.latency\n\
         web.all.latency_p95 (60) = p95 web.*.latency\n",
        "",
        &format!("127.0.0.1:{}", cc.port),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let send = move |lines: String| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(lines.as_bytes()).unwrap();
    };
    let mut first = String::new();
    for h in 0..10 {
        first.push_str(&format!("web.h{h}.requests {} {}\n", h + 1, base + h));
        first.push_str(&format!(
            "web.h{h}.latency {} {}\n",
            (h * 10) as f64 + 0.5,
            base + 30
        ));
    }
    tokio::task::spawn_blocking(move || send(first))
        .await
        .unwrap();

    let paths = [
        "web.all.requests",
        "web.all.requests_count",
        "web.all.latency",
        "web.all.latency_max",
        "web.all.latency_p95",
    ];
    // latency values 0.5, 10.5, …, 90.5: avg 45.5, max 90.5, p95 rank 8.55 → 86.0.
    let p95 = 80.5 * (9.0 - 8.55) + 90.5 * (8.55 - 8.0);
    let want_first = [Some(55.0), Some(10.0), Some(45.5), Some(90.5), Some(p95)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cc.fetch(&paths, base);
        if got == want_first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "whisper holds {got:?}, want {want_first:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // More data for the same interval: aggd re-emits the full aggregate, and whisper keeps
    // the last write.
    let more = format!("web.h10.requests 100 {}\n", base + 59);
    let send2 = move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(more.as_bytes()).unwrap();
    };
    tokio::task::spawn_blocking(send2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cc.fetch(&paths[..2], base);
        if got == [Some(155.0), Some(11.0)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "whisper holds {got:?} after re-emission"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}
