//! The configuration and process helpers of the edge tests (`tests/integration/edges.rs`,
//! `tests/hostile.rs`): aggd as its real binary with a journal, an admin API and a
//! pickle destination.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// The address of the first listener of `kind` in a `spawn_run` result.
pub fn addr_of(addrs: &[(String, SocketAddr)], kind: &str) -> SocketAddr {
    addrs.iter().find(|(k, _)| k == kind).unwrap().1
}

pub fn send_lines(addr: SocketAddr, lines: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
}

pub fn signal(child_pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child_pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {child_pid}");
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "aggd did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What [`edge_config`] adds to its base configuration.
#[derive(Default)]
pub struct Extra<'a> {
    /// `[[listen]]` tables instead of one plaintext listener.
    pub listen: Option<&'a str>,
    /// Keys of `[aggregation]`, `[workers]` and `[journal]`.
    pub aggregation: &'a str,
    pub workers: &'a str,
    pub journal: &'a str,
    /// Further sections.
    pub more: &'a str,
}

/// Writes `aggd.toml` into `dir`: a plaintext listener, the rule `agg.<t>.<s> (60) = sum
/// <t>.<s>.*` keeping 40 intervals, two workers, a journal, a 2 s drain, an admin API and
/// a pickle destination `dest`, with `x` added.
pub fn edge_config(dir: &std::path::Path, dest: SocketAddr, x: Extra<'_>) -> std::path::PathBuf {
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "agg.<t>.<s> (60) = sum <t>.<s>.*\n",
    )
    .unwrap();
    let listen = x
        .listen
        .unwrap_or("[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n");
    // Journaling must not depend on this machine's free disk (the default keeps 1 GiB).
    let free = if x.journal.contains("min_free_disk") {
        ""
    } else {
        "min_free_disk = 0"
    };
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        format!(
            "{listen}\
             [aggregation]\nrules = \"aggregation-rules.conf\"\nmax_intervals = 40\n{}\n\
             [workers]\ncount = 2\nflush_tick_ms = 50\n{}\n\
             [journal]\ndir = \"journal\"\n{free}\n{}\n\
             [service]\ndrain_timeout = \"2s\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"edges-test-token\"\n\
             {}\n\
             [[destination]]\naddress = \"{dest}\"\nprotocol = \"pickle\"\n",
            x.aggregation, x.workers, x.journal, x.more
        ),
    )
    .unwrap();
    cfg
}

/// [`edge_config`] with `journal_extra` keys in `[journal]`.
pub fn journal_config(
    dir: &std::path::Path,
    dest: SocketAddr,
    journal_extra: &str,
) -> std::path::PathBuf {
    edge_config(
        dir,
        dest,
        Extra {
            journal: journal_extra,
            ..Extra::default()
        },
    )
}

/// Sends `series` input paths × `minutes` past minutes (two datapoints each) and returns
/// the expected sums per (output path, minute).
pub fn send_minutes(
    addr: SocketAddr,
    tag: &str,
    series: usize,
    minutes: std::ops::Range<i64>,
    base: i64,
) -> BTreeMap<(String, i64), f64> {
    let mut expected = BTreeMap::new();
    let mut text = String::new();
    for m in minutes {
        let ts = base - 60 * m;
        for s in 0..series {
            for (i, v) in [(0, 1.5 + s as f64), (1, 2.0 * m as f64)] {
                text.push_str(&format!("{tag}.s{s}.h{i} {v} {}\n", ts + 7));
                *expected
                    .entry((format!("agg.{tag}.s{s}"), ts))
                    .or_insert(0.0) += v;
            }
        }
    }
    send_lines(addr, &text);
    expected
}
