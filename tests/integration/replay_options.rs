//! `aggd replay`'s selections (`--match`, `--tenant`, `--dest`, `--dry-run`, `--rate`) and
//! `aggd journal stat`, with the real binary over a journal an in-process aggd wrote.

use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

use aggd_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_selects_by_match_tenant_and_rate_and_journal_stat_reports() {
    let Running {
        capture,
        config,
        aggd: server,
        ..
    } = TestAggd::new("replay-opts", "<t>.sum (60) = sum <t>.*\n")
        .registry(
            "[tenant.acme]\napi_keys = [\"acme-key\"]\n[tenant.beta]\napi_keys = [\"beta-key\"]\n",
        )
        .toml(
            "[[listen]]\nprotocol = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [tenants]\nregistry = \"tenants.toml\"\n\
             [journal]\ndir = \"journal\"\nmin_free_disk = 0\n",
        )
        .start()
        .await;
    let (h, tcp) = (
        server.addr("http").unwrap(),
        server.addr("plaintext/tcp").unwrap(),
    );
    let base = previous_bucket(60);
    tokio::task::spawn_blocking(move || {
        let body = |v: u32| format!("x {v} {base}\ny {v} {base}\n");
        for (key, v) in [("acme-key", 1), ("beta-key", 10)] {
            let auth = format!("Bearer {key}");
            let (status, _, _) = http(
                h,
                "POST",
                "/",
                &[("Authorization", &auth)],
                body(v).as_bytes(),
            );
            assert_eq!(status, 200);
        }
        // Plaintext over TCP: no tenant in its records; one malformed line is ledgered.
        let mut s = TcpStream::connect(tcp).unwrap();
        let mut lines = format!("other.a 100 {base}\nnot a datapoint\n");
        for i in 0..56 {
            lines.push_str(&format!("other.b{i} 0 {base}\n"));
        }
        s.write_all(lines.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("live aggregates", |got| {
        got.get(&("other.sum".into(), base)) == Some(&100.0)
            && got.get(&("acme.sum".into(), base)) == Some(&2.0)
            && got.get(&("beta.sum".into(), base)) == Some(&20.0)
    });
    server.shutdown().await;
    let live = capture.received.lock().unwrap().datapoints;

    let cfg = config.to_str().unwrap().to_string();
    let window = [base.to_string(), (base + 59).to_string()];
    let replay_to = |dest: &Capture, extra: &[&str]| {
        let mut args = vec![
            "replay", "-c", &cfg, "--from", &window[0], "--to", &window[1],
        ];
        let d = dest.addr.to_string();
        args.extend_from_slice(&["--dest", &d]);
        args.extend_from_slice(extra);
        aggd_ok(args)
    };
    let sums = |c: &Capture| -> Vec<(String, f64)> {
        c.snapshot().into_iter().map(|((p, _), v)| (p, v)).collect()
    };

    let matched = Capture::start("pickle");
    let out = replay_to(&matched, &["--match", "^acme\\."]);
    assert!(out.contains(", 1 intervals sent"), "{out}");
    matched.wait_for("acme only", |got| got.len() == 1);
    assert_eq!(sums(&matched), [("acme.sum".to_string(), 2.0)]);

    let tenant = Capture::start("pickle");
    let out = replay_to(&tenant, &["--tenant", "beta"]);
    assert!(
        out.contains(": 1 records,"),
        "only beta's record is read: {out}"
    );
    tenant.wait_for("beta only", |got| got.len() == 1);
    assert_eq!(sums(&tenant), [("beta.sum".to_string(), 20.0)]);

    let dry = Capture::start("pickle");
    let out = replay_to(&dry, &["--dry-run"]);
    assert!(
        out.contains("replay (dry run)") && out.contains(", 3 intervals computed"),
        "{out}"
    );

    // --print shows what a dry run computed, as carbon plaintext lines.
    let printed = aggd_ok([
        "replay",
        "-c",
        &cfg,
        "--from",
        &window[0],
        "--to",
        &window[1],
        "--dry-run",
        "--print",
    ]);
    let mut computed: Vec<(String, f64, i64)> = printed
        .lines()
        .filter(|l| !l.starts_with("replay"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    computed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        computed,
        [
            ("acme.sum".to_string(), 2.0, base),
            ("beta.sum".to_string(), 20.0, base),
            ("other.sum".to_string(), 100.0, base),
        ],
        "{printed}"
    );
    // A reversed window is refused, not read as an empty journal.
    let out = std::process::Command::new(aggd_bin())
        .args(["replay", "-c", &cfg, "--from", "now", "--to", "-10m"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be before --to"), "{err}");

    // --rate bounds the datapoints read per second: 61 datapoints at 20/s take 3 s.
    let slow = Capture::start("pickle");
    let started = Instant::now();
    let out = replay_to(&slow, &["--rate", "20"]);
    assert!(started.elapsed().as_secs_f64() >= 2.5, "{out}");
    assert!(
        out.contains(", 61 datapoints,") && out.contains(", 3 intervals sent"),
        "{out}"
    );
    slow.wait_for("every sum, complete", |got| got.len() == 3);
    assert_eq!(slow.value("other.sum", base), Some(100.0));
    assert_eq!(
        dry.received.lock().unwrap().datapoints,
        0,
        "a dry run sends nothing"
    );
    // --dest replaces the configured destination: it received nothing more.
    assert_eq!(capture.received.lock().unwrap().datapoints, live);

    let stat = aggd_ok(["journal", "stat", "-c", &cfg]);
    let segments = stat
        .lines()
        .find_map(|l| l.strip_prefix("segments: "))
        .unwrap_or_else(|| panic!("no segments line: {stat}"));
    assert!(!segments.starts_with('0'), "{stat}");
    assert!(
        stat.contains("unreplayed by reason: parse_error 1"),
        "{stat}"
    );
    assert!(stat.lines().next().unwrap().contains("first_seq"), "{stat}");
}
