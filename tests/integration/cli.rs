//! The `aggd` binary as a user runs it: check, explain, and run with SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aggd_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_aggd");

#[test]
fn check_accepts_shipped_config_and_refuses_bad_rules_with_line() {
    let out = Command::new(BIN)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aggd.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("aggregation rules: 3"), "{text}");
    // Settings read back in the config's own words, and the memory bound with its terms.
    for line in [
        "listen: plaintext/tcp on 127.0.0.1:2003",
        "listen: pickle/tcp on 127.0.0.1:2004",
        "journal: ",
        "(fsync interval 1s, on_full ingest)",
        "destination: stdout (plaintext)",
        "memory bound with 100000 live output series: ",
        "  connections and HTTP requests: ",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }

    let err = check_refuses(
        &tempdir("check"),
        "ok (60) = sum a.*\nbad.<h> (60) = sum a.<x>\n",
    );
    assert!(err.contains("aggregation-rules.conf:2:"), "{err}");
    assert!(err.contains("<h>"), "{err}");
}

/// `aggd check` on a config with `rules`, which must fail: its stderr.
fn check_refuses(dir: &std::path::Path, rules: &str) -> String {
    let cfg = write_config(dir, rules, "", "stdout", "plaintext");
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn check_names_every_bad_line_bad_addresses_and_missing_files() {
    let dir = tempdir("check-all");
    let check = |cfg: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "check accepted {}", cfg.display());
        String::from_utf8(out.stderr).unwrap()
    };
    // Two bad lines (3 and 5) around good ones: both are named, one line each.
    let cfg = write_config(
        &dir,
        "ok (60) = sum a.*\n# comment\nbad (60) = rate a.*\nfine (60) = sum b.*\nworse (x) = sum c\n",
        "",
        "stdout",
        "plaintext",
    );
    let err = check(&cfg);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("aggregation-rules.conf:3:")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("aggregation-rules.conf:5:")),
        "{err}"
    );
    assert_eq!(lines.len(), 2, "one line per problem: {err}");
    // A missing rules file: no line number of 0.
    std::fs::remove_file(dir.join("aggregation-rules.conf")).unwrap();
    let err = check(&cfg);
    assert!(err.contains("aggregation-rules.conf: cannot read"), "{err}");
    assert!(!err.contains(":0:"), "{err}");
    // Listener and destination addresses are validated.
    std::fs::write(dir.join("aggregation-rules.conf"), "ok (60) = sum a.*\n").unwrap();
    for (from, to, needle) in [
        (
            "address = \"stdout\"",
            "address = \"cache:notaport\"",
            "destination address",
        ),
        (
            "address = \"stdout\"",
            "address = \"::1:2004\"",
            "destination address",
        ),
        (
            "address = \"127.0.0.1:0\"",
            "address = \"nohost\"",
            "listen address",
        ),
    ] {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let err = check(&bad);
        assert!(err.contains(needle), "{to}: {err}");
    }
}

/// `aggd check -c CFG`: (exit success, stdout, stderr).
fn check_output(cfg: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_what_run_refuses() {
    let dir = tempdir("check-run");
    let cfg = write_config(&dir, "ok (60) = sum a.*\n", "", "stdout", "plaintext");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let (ok, out, err) = check_output(&cfg);
    assert!(ok, "{out}{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = format!("address = \"{}\"", taken.local_addr().unwrap());
    std::fs::write(dir.join("notadir"), "").unwrap();
    for (change, needle) in [
        (
            (
                "address = \"127.0.0.1:0\"",
                "address = \"10.99.99.99:2003\"",
            ),
            "no such address",
        ),
        (
            (
                "address = \"127.0.0.1:0\"",
                "address = \"no-such-host.invalid:2003\"",
            ),
            "cannot resolve",
        ),
        (("address = \"127.0.0.1:0\"", in_use.as_str()), "in use"),
        (
            (
                "[workers]",
                "[journal]\ndir = \"/proc/aggd-journal\"\n[workers]",
            ),
            "cannot create the directory",
        ),
        (
            ("[workers]", "[journal]\ndir = \"notadir\"\n[workers]"),
            "is not a directory",
        ),
        (
            ("count = 2\n", "count = 100000\n"),
            "more than this machine",
        ),
    ] {
        assert!(good.contains(change.0), "{good}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, good.replacen(change.0, change.1, 1)).unwrap();
        let (ok, out, err) = check_output(&bad);
        assert!(!ok, "check passed {:?}:\n{out}", change.1);
        let line = out
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line for {:?}:\n{out}{err}", change.1));
        assert!(line.contains(needle), "{line}");
        assert!(err.contains("aggd run would not start"), "{err}");
    }
    // --no-bind leaves a taken port alone.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, good.replacen("address = \"127.0.0.1:0\"", &in_use, 1)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--no-bind", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(taken);
}

#[test]
fn explain_shows_each_outputs_destinations() {
    let dir = tempdir("explain-ring");
    let cfg = write_config(
        &dir,
        "<h>.total (60) = sum <h>.*\n",
        "",
        "127.0.0.1:2004",
        "pickle",
    );
    append_config(
        &cfg,
        "instance = \"a\"\n[[destination]]\naddress = \"127.0.0.1:2104\"\ninstance = \"b\"\n\
         [routing]\nnormalize_tags = true\n",
    );
    let text = aggd_ok([
        "explain",
        "-c",
        cfg.to_str().unwrap(),
        "web.cpu",
        "db.cpu",
        "x;b=1;a=2",
    ]);
    let placed: Vec<&str> = text.lines().filter(|l| l.contains("    to ")).collect();
    assert_eq!(placed.len(), 2, "{text}");
    for l in &placed {
        assert!(
            l.ends_with("to 127.0.0.1:2004:a (carbon_ch)")
                || l.ends_with("to 127.0.0.1:2104:b (carbon_ch)"),
            "{text}"
        );
    }
    assert!(text.contains("no aggregation rule matches"), "{text}");
}

#[test]
fn explain_shows_rewrites_rules_and_outputs() {
    let out = Command::new(BIN)
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aggd.toml"),
        ])
        .args(["prod.applications.web.h1.latency", "collectd.h1.cpu"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("-> prod.applications.web.all.latency (avg every 60 s"),
        "{text}"
    );
    assert!(
        text.contains("-> prod.applications.web.all.latency_p95 (p95 every 60 s"),
        "{text}"
    );
    assert!(text.contains("[pre] rewrite -> h1.system.cpu"), "{text}");
    assert!(text.contains("no aggregation rule matches"), "{text}");
}

#[test]
fn explain_shows_tag_captures_and_refuses_ambiguous_tag_rules() {
    let dir = tempdir("explain-tags");
    let cfg = write_config(
        &dir,
        "cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n",
        "",
        "stdout",
        "plaintext",
    );
    let text = aggd_ok([
        "explain",
        "-c",
        cfg.to_str().unwrap(),
        "cpu.usage;host=a;dc=eu.west",
        "cpu.usage;dc=eu",
    ]);
    assert!(
        text.contains("-> cpu.total;dc=eu.west (sum every 60 s"),
        "{text}"
    );
    assert!(text.contains("captures <dc> = \"eu.west\""), "{text}");
    // The second path lacks the required host tag.
    let second = text.split("cpu.usage;dc=eu\n").nth(1).unwrap();
    assert!(second.contains("no aggregation rule matches"), "{text}");

    let err = check_refuses(&dir, "ok (60) = sum a.*\nbad (60) = sum cpu;dc=a;dc=b\n");
    assert!(err.contains("aggregation-rules.conf:2:"), "{err}");
    assert!(err.contains("named twice"), "{err}");
}

#[test]
fn explain_shows_the_prometheus_series_of_a_remote_write_destination() {
    let dir = tempdir("explain-rw");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n\
         servers.<dc>.all.load (60) = avg servers.<dc>.*.load\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mapping.conf"),
        "servers.<dc>.all.<m> = servers_<m> job=aggd\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("aggd.toml"),
        "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
         [aggregation]\nrules = \"aggregation-rules.conf\"\n\
         [[destination]]\nprotocol = \"prometheus_remote_write\"\n\
         url = \"http://127.0.0.1:8428/api/v1/write\"\nmapping_file = \"mapping.conf\"\n",
    )
    .unwrap();
    let text = aggd_ok([
        "explain",
        "-c",
        dir.join("aggd.toml").to_str().unwrap(),
        "cpu.usage;host=a;dc=eu.west",
        "servers.eu.h1.load",
    ]);
    for want in [
        "remote write to http://127.0.0.1:8428/api/v1/write as cpu_total{dc=\"eu.west\"}",
        "remote write to http://127.0.0.1:8428/api/v1/write as servers_load{dc=\"eu\", job=\"aggd\"}",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
}

#[test]
fn explain_shows_an_untagged_remote_write_series_as_its_name_alone() {
    let dir = tempdir("explain-rw-plain");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "plain.total (60) = sum plain.*\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("aggd.toml"),
        "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
         [aggregation]\nrules = \"aggregation-rules.conf\"\n\
         [[destination]]\nprotocol = \"prometheus_remote_write\"\n\
         url = \"http://127.0.0.1:8428/api/v1/write\"\n",
    )
    .unwrap();
    let text = aggd_ok([
        "explain",
        "-c",
        dir.join("aggd.toml").to_str().unwrap(),
        "plain.a",
    ]);
    let line = text
        .lines()
        .find(|l| l.contains("remote write to"))
        .unwrap_or_else(|| panic!("no remote write line in:\n{text}"));
    assert!(line.ends_with(" as plain_total"), "{line:?} in:\n{text}");
}

#[test]
fn sigterm_mid_stream_loses_nothing_and_exits_zero() {
    let (capture, _dir, cfg) = with_downstream(
        "sigterm",
        "all.count (3600) = count in.*\nall.sum (3600) = sum in.*\n",
        "pickle",
    );
    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    let ts = now() as i64;
    let bucket = ts - ts.rem_euclid(3600);
    let mut s = TcpStream::connect(tcp).unwrap();
    let mut sent = 0u64;
    for i in 0..20_000u64 {
        writeln!(s, "in.h{} 1 {ts}", i % 100).unwrap();
        sent += 1;
        if i == 10_000 {
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.flush().unwrap();
    // Once aggd's kernel holds every byte, signal, while the connection is still open.
    wait_acknowledged(&s);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    capture.wait_for("flushed aggregates", |got| {
        got.get(&("all.count".into(), bucket)) == Some(&(sent as f64))
    });
    assert_eq!(capture.value("all.sum", bucket), Some(sent as f64));
}

#[test]
fn carbon_conf_drop_in() {
    let capture = Capture::start("plaintext");
    let dir = tempdir("carbonconf");
    std::fs::write(
        dir.join("aggregation-rules.conf"),
        "total (60) = sum in.*\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("carbon.conf"),
        format!(
            "[aggregator]\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {}\n\
             PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {}\n\
             DESTINATIONS = {}:a\nDESTINATION_PROTOCOL = line\nFORWARD_ALL = False\n\
             LOG_LISTENER_CONN_SUCCESS = True\nCACHE_METRIC_NAMES_MAX = 0\n\
             STORAGE_DIR = {}\n",
            free_port(),
            free_port(),
            capture.addr,
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let (mut child, addrs) = spawn_run(
        &["--carbon-conf", dir.join("carbon.conf").to_str().unwrap()],
        2,
    );
    let tcp = addrs.iter().find(|(k, _)| k == "plaintext/tcp").unwrap().1;
    let base = previous_bucket(60);
    let mut s = TcpStream::connect(tcp).unwrap();
    write!(s, "in.a 2 {base}\nin.b 3 {}\n", base + 10).unwrap();
    drop(s);
    capture.wait_for("total", |got| {
        got.get(&("total".into(), base)) == Some(&5.0)
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    // The carbon.conf user got the journal, under STORAGE_DIR/aggd/<instance>/journal,
    // and the journal commands take --carbon-conf.
    let conf = dir.join("carbon.conf");
    let conf = conf.to_str().unwrap();
    let journal = dir.join("storage/aggd/a/journal");
    assert!(journal.join("ledger.jsonl").exists() || journal.is_dir());
    let check = aggd_ok(["check", "--no-bind", "--carbon-conf", conf]);
    assert!(
        check.contains(&format!("journal: {}", journal.display())),
        "{check}"
    );
    let stat = aggd_ok(["journal", "stat", "--carbon-conf", conf]);
    let segments = stat
        .lines()
        .find_map(|l| l.strip_prefix("segments: "))
        .unwrap_or_else(|| panic!("{stat}"));
    assert!(!segments.starts_with('0'), "{stat}");
    let replayed = aggd_ok([
        "replay",
        "--carbon-conf",
        conf,
        "--from",
        &base.to_string(),
        "--to",
        &(base + 59).to_string(),
        "--dry-run",
        "--print",
    ]);
    assert!(
        replayed.lines().any(|l| l == format!("total 5 {base}")),
        "{replayed}"
    );
    let lost = aggd_ok(["replay", "--carbon-conf", conf, "--lost"]);
    assert!(lost.contains("nothing to replay"), "{lost}");
    // AGGD_JOURNAL = False turns it off.
    let text = std::fs::read_to_string(dir.join("carbon.conf")).unwrap();
    std::fs::write(
        dir.join("carbon.conf"),
        format!("{text}AGGD_JOURNAL = False\n"),
    )
    .unwrap();
    let check = aggd_ok(["check", "--no-bind", "--carbon-conf", conf]);
    assert!(check.contains("journal: off"), "{check}");
}

/// Also the regression test for a closed stderr: the reader is dropped after the first
/// line, and aggd must keep working (tracing-subscriber used to panic on EPIPE).
#[test]
fn stdout_destination_prints_plaintext_lines() {
    let dir = tempdir("stdout");
    let cfg = write_config(&dir, "total (60) = sum in.*\n", "", "stdout", "pickle");
    let (mut child, addrs) =
        spawn_run_with(&["-c", cfg.to_str().unwrap()], 3, Stdio::piped(), true);
    let tcp = addrs
        .iter()
        .find(|(k, _)| k == "plaintext/tcp")
        .map(|(_, a)| *a);
    let base = previous_bucket(60);
    let mut s = TcpStream::connect(tcp.unwrap()).unwrap();
    write!(s, "in.a 1.5 {base}\nin.b 2 {base}\n").unwrap();
    drop(s);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    if line.is_err() {
        let _ = child.kill();
    }
    assert_eq!(
        line.expect("nothing printed on stdout"),
        format!("total 3.5 {base}")
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_accepts_the_three_node_cluster_example() {
    for n in ["a", "b", "c"] {
        let cfg = format!(
            "{}/config/cluster/aggd-{n}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = Command::new(BIN)
            .args(["check", "-c", &cfg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let want = format!(
            "cluster: main as node {n}, 256 shards, 3 replicas, lease 10s, servers nats://127.0.0.1:4221, nats://127.0.0.1:4222, nats://127.0.0.1:4223"
        );
        assert!(text.contains(&want), "{want:?} missing in:\n{text}");
    }
    // explain names each output series' shard and subject.
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster/aggd-a.toml");
    let out = Command::new(BIN)
        .args(["explain", "-c", cfg, "prod.applications.web.h1.latency"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let k = aggd::hash::fnv1a64(b"prod.applications.web.all.latency") % 256;
    let want = format!("cluster shard {k} of 256: subject aggd.main.shard.{k}");
    assert!(
        text.contains(&want),
        "{want:?} missing in:
{text}"
    );
    // A cluster without a journal is refused at start, not silently standalone.
    let dir = std::env::temp_dir().join(format!("aggd-cli-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("r.conf"), "a (10) = sum b\n").unwrap();
    let cfg = dir.join("aggd.toml");
    let refused = |toml: &str| {
        std::fs::write(&cfg, format!("[aggregation]\nrules = \"r.conf\"\n{toml}")).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let servers = "[cluster]\nservers = [\"nats://127.0.0.1:1\"]\n";
    let err = refused(&format!(
        "[journal]\ndir = \"j\"\n{servers}node = \"x y\"\n"
    ));
    assert!(
        err.contains("cluster: node \"x y\" must be 1 to 64 letters"),
        "{err}"
    );
    let err = refused(servers);
    assert!(
        err.contains("cluster mode needs a [journal] section"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_the_man_page_cover_every_subcommand() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = ["run", "check", "explain", "replay", "journal", "cluster"];
    for (shell, marker) in [
        ("bash", "complete -F _aggd"),
        ("zsh", "#compdef aggd"),
        ("fish", "complete -c aggd"),
    ] {
        let script = run(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in subcommands {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
    }
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH aggd 1"),
        "{man}"
    );
    assert!(man.contains(".TH aggd 1"), "{man}");
    for sub in subcommands {
        assert!(man.contains(sub), "the man page lists {sub}");
    }
}

#[test]
fn check_reports_every_config_error_at_its_line_and_column() {
    let dir = tempdir("check-lines");
    std::fs::write(dir.join("rules.conf"), "ok (60) = sum a.*\n").unwrap();
    let cfg = dir.join("aggd.toml");
    std::fs::write(
        &cfg,
        "[[listen]]\n\
         protocol = \"plaintext\"\n\
         address = \"127.0.0.1:99999\"\n\
         [aggregation]\n\
         rules = \"rules.conf\"\n\
         [[destination]]\n\
         address = \"cache:notaport\"\n\
         [admin]\n\
         token = \"short\"\n",
    )
    .unwrap();
    let (ok, _, err) = check_output(&cfg);
    assert!(!ok);
    let file = cfg.to_str().unwrap();
    let lines: Vec<&str> = err.trim_start_matches("aggd: ").lines().collect();
    assert_eq!(lines.len(), 3, "one line per error: {err}");
    assert!(lines[0].starts_with(&format!("{file}:3:11: ")), "{err}");
    assert!(lines[0].contains("127.0.0.1:99999"), "{err}");
    assert!(lines[1].starts_with(&format!("{file}:7:11: ")), "{err}");
    assert!(lines[1].contains("cache:notaport"), "{err}");
    assert!(lines[2].starts_with(&format!("{file}:8:1: ")), "{err}");
    assert!(lines[2].contains("at least 8 characters"), "{err}");
    // A syntax error (an unknown key) has its place too.
    std::fs::write(&cfg, "[aggregation]\nrules = \"rules.conf\"\nrulez = 1\n").unwrap();
    let (ok, _, err) = check_output(&cfg);
    assert!(!ok);
    assert!(err.contains(&format!("{file}:3:1: ")), "{err}");
    assert!(err.contains("rulez"), "{err}");
}
