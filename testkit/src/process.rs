//! The aggd binary as a child process, and CPython as a pickle sender.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

/// The counts in `aggd replay`'s summary line (`replay: N records, N datapoints, N
/// intervals sent, …`): (records, datapoints, intervals). Fails the test if `out` has no
/// such line (e.g. it printed `nothing to replay`).
pub fn replay_counts(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("replay: ") || l.starts_with("replay (dry run): "))
        .unwrap_or_else(|| panic!("no replay summary in {out:?}"));
    let count = |unit: &str| -> u64 {
        let at = line
            .find(unit)
            .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"));
        let digits = line[..at].trim_end();
        let start = digits
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        digits[start..].parse().unwrap()
    };
    (
        count(" records"),
        count(" datapoints,"),
        count(" intervals"),
    )
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

/// Runs `cmd` with `input` on its stdin (written from a thread, so a child that answers
/// while it reads cannot deadlock); fails the test unless it succeeds; returns its stdout.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> String {
    use std::io::Write as _;
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e} (tests/install-deps.sh installs it)"));
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("the child ran");
    feeder.join().expect("feeder").expect("writing stdin");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
