//! Cluster mode end to end: real aggd binaries over real NATS JetStream servers
//! (`docs/cluster.md`). Every server binds 127.0.0.1 ports picked at start and is killed
//! by process id when its test ends.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aggd_testkit::cluster::{ADMIN, LIBFAKETIME, Node, activation_after, rules_line};
use aggd_testkit::nats::Nats;
use aggd_testkit::{Capture, aggd_ok, append_config, python_pickle_send, tempdir, write_config};

const RULES: &str = "cl.<grp>.count (5) = count in.<grp>.*\ncl.<grp>.sum (5) = sum in.<grp>.*\n";

fn send_lines(addr: SocketAddr, lines: &str) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
}

/// What the senders sent: per (output series, interval start), the expected value.
#[derive(Default, Clone)]
struct Expected(Arc<Mutex<BTreeMap<(String, i64), f64>>>);

const FREQ: i64 = 5;
const GROUPS: usize = 6;
const HOSTS: usize = 4;

impl Expected {
    fn add(&self, group: usize, ts: i64, value: f64) {
        let b = ts - ts.rem_euclid(FREQ);
        let mut m = self.0.lock().unwrap();
        *m.entry((format!("cl.g{group}.count"), b)).or_default() += 1.0;
        *m.entry((format!("cl.g{group}.sum"), b)).or_default() += value;
    }

    fn snapshot(&self) -> BTreeMap<(String, i64), f64> {
        self.0.lock().unwrap().clone()
    }
}

/// One round of datapoints for every group, stamped now: plaintext over TCP (a new
/// connection, as a load balancer would hand out), or CPython's pickle.
fn send_round(addr: SocketAddr, round: usize, pickle: bool, expected: &Expected) {
    let ts = aggd_testkit::now() as i64;
    let mut points = Vec::new();
    for g in 0..GROUPS {
        for h in 0..HOSTS {
            let v = ((round * 7 + g * 3 + h) % 11) as f64;
            points.push((format!("in.g{g}.h{h}"), ts as f64, v));
        }
    }
    if pickle {
        python_pickle_send(addr, 2, &points);
    } else {
        let lines: String = points
            .iter()
            .map(|(p, t, v)| format!("{p} {v} {t}\n"))
            .collect();
        send_lines(addr, &lines);
    }
    for (p, t, v) in &points {
        let g: usize = p[4..p.find(".h").unwrap()].parse().unwrap();
        expected.add(g, *t as i64, *v);
    }
}

/// Waits until the downstream holds exactly `expected` for every key in it.
fn wait_exact(capture: &Capture, expected: &Expected, limit: Duration) {
    let want = expected.snapshot();
    let deadline = Instant::now() + limit;
    loop {
        let got = capture.snapshot();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), *v, got.get(k).copied()))
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} aggregates wrong (key, want, got): {:?}",
            wrong.len(),
            want.len(),
            &wrong[..wrong.len().min(12)]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `aggd cluster status` from `node`'s config.
fn status(node: &Node) -> String {
    aggd_ok(["cluster", "status", "-c", node.cfg.to_str().unwrap()])
}

/// Waits until no shard is unowned and each of `ids` owns at least one; returns the
/// status text.
fn wait_spread(node: &Node, ids: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(node);
        let owners_ok = ids.iter().all(|id| {
            s.lines()
                .any(|l| l.starts_with(&format!("shards of {id}: ")))
        });
        let gone_ok = s
            .lines()
            .filter_map(|l| l.strip_prefix("shards of "))
            .all(|l| ids.iter().any(|id| l.starts_with(&format!("{id}: "))));
        if s.contains("unowned shards: 0") && owners_ok && gone_ok {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "shards did not settle over {ids:?}:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts nodes `ids` (16 shards, [`RULES`]) and waits until the shards are spread over
/// them.
fn start_nodes(nats: &Nats, capture: &Capture, ids: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::start(id, nats, capture, 16, RULES))
        .collect();
    wait_spread(&nodes[0], ids);
    nodes
}

/// The shards `id` owns, from a status text.
fn shards_of(status: &str, id: &str) -> Vec<u32> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("shards of {id}: ")))
        .unwrap_or("");
    line.split(',')
        .filter(|r| !r.is_empty())
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<u32>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

/// Every emitted `.count` value is at least every earlier emission of the same key.
fn assert_no_regression(capture: &Capture) {
    let r = capture.received.lock().unwrap();
    let mut seen: BTreeMap<(&str, i64), f64> = BTreeMap::new();
    for (path, ts, v, _) in &r.history {
        if !path.ends_with(".count") {
            continue;
        }
        let prev = seen.entry((path.as_str(), *ts)).or_insert(*v);
        assert!(*v >= *prev, "{path}@{ts} went from {prev} down to {v}");
        *prev = *v;
    }
}

#[test]
fn one_node_aggregates_through_the_stream() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let node = Node::start_with("a", &nats, &capture, 8, RULES, ADMIN);
    let expected = Expected::default();
    for r in 0..3 {
        send_round(node.tcp, r, false, &expected);
    }
    send_round(node.pickle, 3, true, &expected);
    // A bad line between good ones: counted under its reason, the good ones aggregated.
    let ts = aggd_testkit::now() as i64;
    send_lines(
        node.tcp,
        &format!("in.g0.h0 1 {ts}\nnot-a-number x {ts}\nin.g0.h1 2 {ts}\n"),
    );
    expected.add(0, ts, 1.0);
    expected.add(0, ts, 2.0);
    wait_exact(&capture, &expected, Duration::from_secs(30));
    let s = status(&node);
    assert!(s.contains("unowned shards: 0"), "{s}");
    assert_eq!(shards_of(&s, "a").len(), 8, "{s}");
    let metrics = node.admin.unwrap();
    let metric = |m| aggd_testkit::metric(metrics, m);
    assert_eq!(metric("aggd_cluster_shards_owned"), 8.0);
    // The connections left these frames to the publisher, which counted them once.
    let received = (GROUPS * HOSTS * 4 + 2) as f64;
    assert_eq!(metric("aggd_received_total"), received);
    assert_eq!(metric("aggd_dropped_total{reason=\"parse_error\"}"), 1.0);
    // Each datapoint feeds a count and a sum series: two published items.
    let published = received * 2.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("aggd_cluster_datapoints_published_total") < published {
        assert!(
            Instant::now() < deadline,
            "publish acknowledgements not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric("aggd_cluster_datapoints_published_total"), published);
    assert_eq!(metric("aggd_cluster_publish_lag_bytes"), 0.0);
    assert_eq!(metric("aggd_cluster_shard_consumer_lag{shard=\"0\"}"), 0.0);
    assert_eq!(metric("aggd_cluster_rules_mismatch_total"), 0.0);
}

#[test]
fn failover_after_sigkill_is_exact() {
    let nats = Nats::start(3);
    let capture = Capture::start("pickle");
    let mut nodes = start_nodes(&nats, &capture, &["a", "b", "c"]);
    let before = status(&nodes[0]);
    let b_shards = shards_of(&before, "b");
    assert!(!b_shards.is_empty());
    let expected = Expected::default();
    let mut killed_at = None;
    for round in 0..60 {
        for (i, n) in nodes.iter().enumerate() {
            // The balancer stops sending to b a moment before it dies; then only a and c.
            if i == 1 && round >= 27 {
                continue;
            }
            let pickle = i == 2 && round % 4 == 0;
            send_round(
                if pickle { n.pickle } else { n.tcp },
                round,
                pickle,
                &expected,
            );
        }
        if round == 30 {
            nodes[1].sigkill();
            killed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_exact(&capture, &expected, Duration::from_secs(60));
    let after = wait_spread(&nodes[0], &["a", "c"]);
    assert!(shards_of(&after, "b").is_empty(), "{after}");
    // Time from the kill to the first emission of a series b owned, by its new owner.
    let killed_at = killed_at.unwrap();
    let of_b = |p: &str| b_shards.contains(&aggd::cluster::owner::shard_of_name(p, 16));
    let first = capture
        .received
        .lock()
        .unwrap()
        .history
        .iter()
        .find(|(p, _, _, at)| *at > killed_at && of_b(p))
        .map(|(_, _, _, at)| at.duration_since(killed_at));
    let first = first.expect("no emission of b's shards after the kill");
    eprintln!("failover: first emission of b's shards {first:?} after SIGKILL");
    assert!(first < Duration::from_secs(30), "{first:?}");
}

/// Sends `rounds` rounds to the nodes in turn (plaintext, every fourth round pickle),
/// calling `between(round)` after each.
fn stream(nodes: &[&Node], rounds: usize, expected: &Expected, mut between: impl FnMut(usize)) {
    for round in 0..rounds {
        let n = nodes[round % nodes.len()];
        let pickle = round % 4 == 3;
        send_round(
            if pickle { n.pickle } else { n.tcp },
            round,
            pickle,
            expected,
        );
        between(round);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn losing_a_log_server_loses_nothing() {
    let mut nats = Nats::start(3);
    let capture = Capture::start("pickle");
    let nodes = start_nodes(&nats, &capture, &["a", "b"]);
    let expected = Expected::default();
    let refs: Vec<&Node> = nodes.iter().collect();
    stream(&refs, 60, &expected, |round| {
        if round == 20 {
            nats.servers[1].kill();
        }
    });
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn the_whole_log_down_for_20s_then_everything_is_published() {
    let mut nats = Nats::one();
    let capture = Capture::start("pickle");
    let a = Node::start("a", &nats, &capture, 8, RULES);
    let expected = Expected::default();
    let mut down_at = None;
    stream(&[&a], 260, &expected, |round| {
        if round == 20 {
            nats.servers[0].kill();
            down_at = Some(Instant::now());
        }
        // 20 s of 100 ms rounds (and the sends' own time) later: back.
        if down_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(20)) {
            nats.servers[0].start();
            down_at = None;
        }
    });
    nats.wait_healthy();
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn a_node_joins_and_leaves_without_loss_or_regression() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let nodes = start_nodes(&nats, &capture, &["a", "b", "c"]);
    let expected = Expected::default();
    let refs: Vec<&Node> = nodes.iter().collect();
    let mut d: Option<Node> = None;
    stream(&refs, 90, &expected, |round| {
        if round == 20 {
            d = Some(Node::start("d", &nats, &capture, 16, RULES));
        }
        if round == 45 {
            let s = wait_spread(&nodes[0], &["a", "b", "c", "d"]);
            assert!(!shards_of(&s, "d").is_empty(), "{s}");
            d.as_mut().unwrap().stop();
        }
    });
    let s = wait_spread(&nodes[0], &["a", "b", "c"]);
    assert!(shards_of(&s, "d").is_empty(), "{s}");
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn replay_from_the_stream_repairs_a_downstream_after_a_disk_loss() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let mut a = Node::start("a", &nats, &capture, 8, RULES);
    let b = Node::start("b", &nats, &capture, 8, RULES);
    wait_spread(&b, &["a", "b"]);
    let expected = Expected::default();
    let from = aggd_testkit::now() as i64 - FREQ;
    stream(&[&a, &b], 20, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    // a goes down, its journal directory is deleted, and it starts afresh.
    a.sigkill();
    std::fs::remove_dir_all(a.dir.join("journal")).unwrap();
    a.restart();
    stream(&[&a, &b], 10, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    // The downstream is lost too: a new, empty one, repaired from the stream alone.
    let fresh = Capture::start("pickle");
    let to = aggd_testkit::now() as i64;
    let out = aggd_ok([
        "replay",
        "--cluster",
        "-c",
        b.cfg.to_str().unwrap(),
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--dest",
        &fresh.addr.to_string(),
    ]);
    assert!(out.contains("replay: "), "{out}");
    wait_exact(&fresh, &expected, Duration::from_secs(20));
}

/// Starts a node `z` with `shards` and `rules` that must be refused; returns its stderr.
fn refused_join(nats: &Nats, capture: &Capture, shards: u32, rules: &str) -> String {
    let dir = tempdir("cluster-refused");
    let cfg = write_config(&dir, rules, "", &capture.addr.to_string(), "pickle");
    append_config(
        &cfg,
        &format!(
            "[journal]\ndir = \"journal\"\nmin_free_disk = 0\n\
             [cluster]\nservers = {}\nname = \"t\"\nnode = \"z\"\nshards = {shards}\nreplicas = 1\n",
            nats.toml_servers()
        ),
    );
    let out = std::process::Command::new(aggd_testkit::aggd_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a node that must be refused started");
    let _ = std::fs::remove_dir_all(dir);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_with_other_shards_or_rules_is_refused() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let _a = Node::start("a", &nats, &capture, 8, RULES);
    let refused = |shards: u32, rules: &str| refused_join(&nats, &capture, shards, rules);
    let e = refused(16, RULES);
    assert!(
        e.contains("refusing to join: this node has shards = 16, the cluster has 8"),
        "{e}"
    );
    let e = refused(8, "cl.<grp>.max (5) = max in.<grp>.*\n");
    assert!(
        e.contains("refusing to join: this node's rules digest is"),
        "{e}"
    );
}

#[test]
fn a_node_killed_and_restarted_with_its_disk_republishes_exactly_once() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let mut a = Node::start_with("a", &nats, &capture, 8, RULES, ADMIN);
    let b = Node::start("b", &nats, &capture, 8, RULES);
    wait_spread(&b, &["a", "b"]);
    let expected = Expected::default();
    stream(&[&a, &b], 30, &expected, |_| {});
    // NATS stops answering, a journals a round it cannot have acknowledged (its
    // watermark stays below it; the publishes may still reach the stream), and is killed.
    let journaled = |n: &Node| aggd_testkit::metric(n.admin.unwrap(), "aggd_journal_records_total");
    let before = journaled(&a);
    let nats_pid = nats.servers[0].pid().unwrap();
    aggd_testkit::edge::signal(nats_pid, "-STOP");
    send_round(a.tcp, 99, false, &expected);
    let deadline = Instant::now() + Duration::from_secs(10);
    while journaled(&a) <= before {
        assert!(Instant::now() < deadline, "the round was not journaled");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.sigkill();
    aggd_testkit::edge::signal(nats_pid, "-CONT");
    // Restarted with its disk and no new input, a publishes the round again; owners
    // apply each record once.
    a.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Each datapoint feeds a count and a sum series: two published items.
    while aggd_testkit::metric(a.admin.unwrap(), "aggd_cluster_datapoints_published_total")
        < (2 * GROUPS * HOSTS) as f64
    {
        assert!(Instant::now() < deadline, "a did not republish the round");
        std::thread::sleep(Duration::from_millis(100));
    }
    stream(&[&a, &b], 20, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn a_reload_on_one_node_reloads_every_node() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let a = Node::start("a", &nats, &capture, 8, RULES);
    let b = Node::start("b", &nats, &capture, 8, RULES);
    wait_spread(&b, &["a", "b"]);
    // New rules on both nodes' disks; only a gets a SIGHUP.
    let more = format!("{RULES}cl.<grp>.max (5) = max in.<grp>.*\n");
    for n in [&a, &b] {
        std::fs::write(n.dir.join("aggregation-rules.conf"), &more).unwrap();
    }
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &a.child.as_ref().unwrap().id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // b follows: datapoints it receives feed the new max series.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    loop {
        let ts = aggd_testkit::now() as i64 - 10;
        send_lines(b.tcp, &format!("in.g0.h0 {round} {ts}\n"));
        let b0 = ts - ts.rem_euclid(FREQ);
        if capture.value("cl.g0.max", b0).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never aggregated with the new rules: {:?}",
            capture.snapshot()
        );
        round += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // The cluster's digest is the new rules': a node restarted with the old ones is
    // refused.
    let err = refused_join(&nats, &capture, 8, RULES);
    assert!(err.contains("rules digest"), "{err}");
    // A node that joins with the new rules takes shards and finds every message from a
    // and b under its own digest: their headers carry the reloaded digest.
    let c = Node::start_with("c", &nats, &capture, 8, &more, ADMIN);
    let spread = wait_spread(&c, &["a", "b", "c"]);
    let expected = Expected::default();
    stream(&[&a, &b], 10, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    let metrics = c.admin.unwrap();
    let owned = shards_of(&spread, "c").len();
    assert!(owned > 0, "{spread}");
    assert_eq!(
        aggd_testkit::metric(metrics, "aggd_cluster_shards_owned"),
        owned as f64
    );
    assert_eq!(
        aggd_testkit::metric(metrics, "aggd_cluster_rules_mismatch_total"),
        0.0
    );
}

#[test]
fn a_node_stopped_while_the_log_is_down_exits_and_publishes_at_its_next_start() {
    let mut nats = Nats::one();
    let capture = Capture::start("pickle");
    let mut a = Node::start("a", &nats, &capture, 8, RULES);
    let expected = Expected::default();
    stream(&[&a], 10, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    nats.servers[0].kill();
    // Accepted and journaled while NATS is down, then SIGTERM: the node gives up on the
    // unpublished records at its drain deadline (10 s) and exits.
    stream(&[&a], 10, &expected, |_| {});
    let t0 = Instant::now();
    a.stop();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(25), "shutdown took {took:?}");
    nats.servers[0].start();
    nats.wait_healthy();
    a.restart();
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn hostile_messages_on_the_stream_are_counted_and_skipped() {
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let node = Node::start_with("a", &nats, &capture, 8, RULES, ADMIN);
    // Anyone who can publish to the subjects: junk, a future version, a truncated and an
    // oversized-count message, on every shard.
    let url = nats.servers[0].url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let junk: Vec<Vec<u8>> = vec![
        b"junk".to_vec(),
        vec![2; 64],
        vec![1; 20],
        [vec![1], vec![0; 40], vec![0, 0], vec![0xff; 8]].concat(),
    ];
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for k in 0..8 {
            for j in &junk {
                js.publish(format!("aggd.t.shard.{k}"), j.clone().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    });
    // The owner goes on: good input afterwards is aggregated exactly.
    let expected = Expected::default();
    send_round(node.tcp, 0, false, &expected);
    wait_exact(&capture, &expected, Duration::from_secs(30));
    let malformed =
        aggd_testkit::metric(node.admin.unwrap(), "aggd_cluster_malformed_messages_total");
    assert_eq!(malformed, (8 * junk.len()) as f64);
}

#[test]
fn a_blocked_tenant_stays_refused_when_a_restarted_node_republishes() {
    let mut nats = Nats::one();
    let capture = Capture::start("pickle");
    let carbon = aggd_testkit::carbon::CarbonCache::start();
    let shared = tempdir("cluster-tenants");
    let registry = shared.join("tenants.toml");
    std::fs::write(
        &registry,
        "[tenant.evil]\nstate = \"blocked\"\n[tenant.good]\nstate = \"active\"\n",
    )
    .unwrap();
    // Every aggregate goes to the capture (which keeps every write) and to carbon-cache.
    let extra = |admin: bool| {
        format!(
            "[[destination]]\naddress = \"127.0.0.1:{}\"\nprotocol = \"pickle\"\n\
             [routing]\nmethod = \"all\"\n\
             [tenants]\nregistry = \"{}\"\nunknown = \"reject\"\n{}",
            carbon.port,
            registry.display(),
            if admin { ADMIN } else { "" }
        )
    };
    let rules = "all.<t>.sum (5) = sum <t>.*\n";
    let mut a = Node::start_with("a", &nats, &capture, 8, rules, &extra(true));
    let mut b = Node::start_with("b", &nats, &capture, 8, rules, &extra(false));
    wait_spread(&b, &["a", "b"]);
    let metric = |n: &Node, m: &str| aggd_testkit::metric(n.admin.unwrap(), m);

    // NATS is down: a journals its frames (evil's refused by the verdict) and cannot
    // publish them.
    nats.servers[0].kill();
    let ts = aggd_testkit::now() as i64 - 6;
    let b0 = ts - ts.rem_euclid(FREQ);
    send_lines(a.tcp, &format!("evil.a 100 {ts}\ngood.a 1 {ts}\n"));
    send_lines(b.tcp, &format!("evil.b 100 {ts}\ngood.b 2 {ts}\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "aggd_dropped_total{reason=\"tenant_blocked\"}") < 1.0
        || metric(&a, "aggd_journal_records_total") < 1.0
    {
        assert!(Instant::now() < deadline, "a did not journal the frame");
        std::thread::sleep(Duration::from_millis(20));
    }
    // a dies with its publishes unsent; the tenant is unblocked before it starts again.
    a.sigkill();
    std::fs::write(
        &registry,
        "[tenant.evil]\nstate = \"active\"\n[tenant.good]\nstate = \"active\"\n",
    )
    .unwrap();
    nats.servers[0].start();
    nats.wait_healthy();
    a.restart();

    // a republishes its journal: what the connection refused stays refused.
    capture.wait_for("good's aggregate", |got| {
        got.get(&("all.good.sum".into(), b0)) == Some(&3.0)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while carbon.fetch(&["all.good.sum"], b0) != [Some(3.0)] {
        assert!(Instant::now() < deadline, "carbon-cache never stored 3");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.stop();
    b.stop();
    capture.wait_all_closed();
    let got = capture.snapshot();
    let evil: Vec<_> = got.keys().filter(|(p, _)| p.contains("evil")).collect();
    assert!(evil.is_empty(), "a refused tenant's aggregate: {evil:?}");
    assert_eq!(got.get(&("all.good.sum".into(), b0)), Some(&3.0));
    assert_eq!(carbon.fetch(&["all.evil.sum"], b0), [None]);
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Waits until `metric` of the node's `/metrics` reads `value`; panics after `within`.
fn wait_metric(node: &Node, metric: &str, value: f64, within: Duration) {
    let admin = node.admin.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let now = aggd_testkit::metric(admin, metric);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{metric} is {now}, not {value}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_with_the_log_paused_ends_within_the_drain_timeout_however_many_shards() {
    // Found in issue 25: leaving released the shards one after another, each delete
    // waiting a second on the unreachable log; with 256 shards SIGTERM took over 2 min.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let mut a = Node::start_with("a", &nats, &capture, 256, RULES, ADMIN);
    wait_metric(
        &a,
        "aggd_cluster_shards_owned",
        256.0,
        Duration::from_secs(30),
    );
    let expected = Expected::default();
    stream(&[&a], 2, &expected, |_| {});
    let pid = nats.servers[0].pid().unwrap();
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    a.stop();
    let took = t0.elapsed();
    signal(pid, "CONT");
    // drain_timeout is 10 s; what is left over is process exit.
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
}

#[test]
fn the_shards_owned_gauge_follows_lapsed_leases_while_the_log_is_down() {
    // Found in issue 25: the gauge was written only at the end of a tick that reached
    // NATS, so it kept counting shards whose leases had lapsed.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let a = Node::start_with("a", &nats, &capture, 8, RULES, ADMIN);
    wait_metric(
        &a,
        "aggd_cluster_shards_owned",
        8.0,
        Duration::from_secs(30),
    );
    let pid = nats.servers[0].pid().unwrap();
    signal(pid, "STOP");
    // lease_ttl is 2 s: the allowance (1.5 s) runs out, and the next tick drops them.
    let lapsed = std::panic::catch_unwind(|| {
        wait_metric(&a, "aggd_cluster_shards_owned", 0.0, Duration::from_secs(6));
    });
    signal(pid, "CONT");
    assert!(lapsed.is_ok(), "the gauge still counted lapsed shards");
    // The log back: the node takes its shards again.
    wait_metric(
        &a,
        "aggd_cluster_shards_owned",
        8.0,
        Duration::from_secs(30),
    );
}

#[test]
fn a_wall_clock_step_neither_drops_leases_nor_lengthens_them() {
    // Issue 25: the fence's allowance is measured on the monotonic clock. With it on the
    // wall clock, a step back (an NTP step, a bad clock) lengthened every allowance by the
    // step: a node cut off from NATS went on owning, and emitting, its shards for 30 s.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let mut a = Node::start_with("a", &nats, &capture, 8, RULES, ADMIN);
    a.stop();
    let offset = a.dir.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_file = offset.to_str().unwrap().to_string();
    a.restart_with_env(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &offset_file),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    wait_metric(
        &a,
        "aggd_cluster_shards_owned",
        8.0,
        Duration::from_secs(30),
    );
    let admin = a.admin.unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let changes = aggd_testkit::metric(admin, "aggd_cluster_lease_changes_total");
    // 30 s ahead: the leases stay (several ticks, more than the 1.5 s allowance).
    std::fs::write(&offset, "+30s\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        aggd_testkit::metric(admin, "aggd_cluster_lease_changes_total"),
        changes,
        "leases changed hands after the wall clock stepped ahead"
    );
    // 30 s back, then NATS unreachable: the allowance still runs out after 1.5 s.
    std::fs::write(&offset, "-30s\n").unwrap();
    let pid = nats.servers[0].pid().unwrap();
    signal(pid, "STOP");
    let lapsed = std::panic::catch_unwind(|| {
        wait_metric(&a, "aggd_cluster_shards_owned", 0.0, Duration::from_secs(6));
    });
    signal(pid, "CONT");
    assert!(
        lapsed.is_ok(),
        "a wall clock stepped back lengthened the leases"
    );
}

/// No value the downstream ever received for a (series, interval) the senders fed is
/// above the exact one (every input is ≥ 0): nothing was counted twice, at any time.
fn assert_never_above(capture: &Capture, expected: &Expected) {
    let want = expected.snapshot();
    let r = capture.received.lock().unwrap();
    for (path, ts, v, _) in &r.history {
        if let Some(exact) = want.get(&(path.clone(), *ts)) {
            assert!(*v <= *exact, "{path}@{ts}: {v} emitted, exact {exact}");
        }
    }
}

#[test]
fn a_paused_owner_whose_leases_were_taken_does_not_emit_when_it_wakes() {
    // Issue 25's nemesis fault, deterministic: node a SIGSTOPped for twice lease_ttl
    // while b takes its shards over and aggregates more input for them; when a wakes, its
    // allowance (on the monotonic clock, which ran on) is long gone.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let nodes = start_nodes(&nats, &capture, &["a", "b"]);
    let expected = Expected::default();
    let refs: Vec<&Node> = nodes.iter().collect();
    stream(&refs, 8, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    let a = nodes[0].child.as_ref().unwrap().id();
    signal(a, "STOP");
    std::thread::sleep(Duration::from_secs(4));
    // Input for every shard, to b alone, in the intervals a still holds partial values of.
    stream(&[&nodes[1]], 8, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    signal(a, "CONT");
    // a wakes, finds its leases taken, and gives its shards up without emitting them.
    std::thread::sleep(Duration::from_secs(3));
    stream(&refs, 8, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    assert_never_above(&capture, &expected);
    assert_no_regression(&capture);
}

#[test]
fn a_partitioned_node_keeps_accepting_and_its_shards_move_without_double_counting() {
    // Issue 25's partition fault, deterministic: node a's link to NATS cut for longer than
    // lease_ttl while a keeps running and accepting input; b takes a's shards. When the
    // link is back, a publishes what it journaled meanwhile, and every aggregate is exact.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let proxy = aggd_testkit::proxy::Proxy::start(nats.servers[0].addr());
    let via = aggd_testkit::proxy::nats_servers([&proxy]);
    let dest = capture.addr.to_string();
    let a = Node::start_via("a", (&via, 1), &dest, 16, RULES, "");
    let b = Node::start("b", &nats, &capture, 16, RULES);
    wait_spread(&a, &["a", "b"]);
    let expected = Expected::default();
    stream(&[&a, &b], 8, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(30));
    proxy.cut();
    // 3 s of input to both (lease_ttl is 2 s): a journals its share for later.
    stream(&[&a, &b], 30, &expected, |_| {});
    // b took every shard meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&b);
        if shards_of(&s, "b").len() == 16 {
            break;
        }
        assert!(Instant::now() < deadline, "b did not take a's shards: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.restore();
    stream(&[&a, &b], 8, &expected, |_| {});
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_never_above(&capture, &expected);
    assert_no_regression(&capture);
}

/// The destination queue's gauge (`{`: not `aggd_destination_queued_until_connected_total`).
const QUEUED: &str = "aggd_destination_queued{";

/// Once node `a` (with `[admin]`) owns its `shards` shards: a round aggregated exactly at
/// `capture`, then `downstream` (the proxy `a` sends through) cut and a second round sent,
/// whose interval closes with its aggregates waiting in the destination's queue. Returns
/// both rounds' exact aggregates.
fn queue_a_round(
    a: &Node,
    capture: &Capture,
    downstream: &aggd_testkit::proxy::Proxy,
    shards: u32,
) -> Expected {
    let owned = f64::from(shards);
    wait_metric(
        a,
        "aggd_cluster_shards_owned",
        owned,
        Duration::from_secs(30),
    );
    let expected = Expected::default();
    send_round(a.tcp, 0, false, &expected);
    wait_exact(capture, &expected, Duration::from_secs(30));
    downstream.cut();
    send_round(a.tcp, 1, false, &expected);
    let admin = a.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while aggd_testkit::metric(admin, QUEUED) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "nothing queued for the destination"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    expected
}

#[test]
fn aggregates_queued_for_a_dead_destination_are_not_written_once_the_lease_is_gone() {
    // Issue 25: the fence was checked when a batch was handed to the destination, not
    // when it was written. A node whose destination was down kept its aggregates queued,
    // lost its leases, and wrote them when the destination came back: values of shards
    // another node owned by then. Now each write leaves them out.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let downstream = aggd_testkit::proxy::Proxy::start(capture.addr);
    let (servers, dest) = (nats.toml_servers(), downstream.addr.to_string());
    let a = Node::start_via("a", (&servers, 1), &dest, 8, RULES, ADMIN);
    let expected = queue_a_round(&a, &capture, &downstream, 8);
    let admin = a.admin.unwrap();
    let queued = || aggd_testkit::metric(admin, QUEUED);
    let pid = nats.servers[0].pid().unwrap();
    signal(pid, "STOP");
    let lapsed = std::panic::catch_unwind(|| {
        wait_metric(&a, "aggd_cluster_shards_owned", 0.0, Duration::from_secs(6));
    });
    let written_before = capture.received.lock().unwrap().history.len();
    downstream.restore();
    // The sender reconnects (its backoff is at most 5 s) and works its queue off.
    let drained = std::panic::catch_unwind(|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while queued() > 0.0 {
            assert!(Instant::now() < deadline, "the queue was not worked off");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let written_after = capture.received.lock().unwrap().history.len();
    let fenced = aggd_testkit::metric(admin, "aggd_destination_fenced_total{");
    signal(pid, "CONT");
    assert!(lapsed.is_ok() && drained.is_ok());
    assert_eq!(
        written_after, written_before,
        "aggregates of shards no longer owned were written"
    );
    assert!(fenced > 0.0, "nothing counted as fenced");
    // NATS back: the node takes its shards again, rebuilds them and emits them in full.
    wait_exact(&capture, &expected, Duration::from_secs(60));
    assert_no_regression(&capture);
}

#[test]
fn aggregates_fenced_while_an_allowance_lapsed_are_emitted_again_when_the_same_node_renews() {
    // Issue 25, found by the second 30-minute soak: a node whose allowance lapsed (a slow
    // tick, or the process stopped) but whose lease key was still its own renewed it and
    // carried on. Meanwhile its sender had left out the queued aggregates of the shard as
    // no longer this node's (the fence at the write), and nobody emitted them again: the
    // downstream kept earlier partial values. Now a renewal after a lapse rebuilds the
    // shard, which emits every interval again.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let downstream = aggd_testkit::proxy::Proxy::start(capture.addr);
    let (servers, dest) = (nats.toml_servers(), downstream.addr.to_string());
    let mut a = Node::configure("a", (&servers, 1), &dest, 1, RULES, ADMIN);
    // lease_ttl 8 s: the allowance is 6 s, a tick every 2 s. Stopped for 6.5 s right
    // after a renewal was seen, the node wakes with its allowance lapsed (it ran from the
    // renewal's send) and its key still alive (1.5 s left, for the watch's delay and the
    // renewal), and its sender's backoff (at most 5 s) ran out during the stop.
    let cfg = std::fs::read_to_string(&a.cfg).unwrap();
    std::fs::write(
        &a.cfg,
        cfg.replace("lease_ttl = \"2s\"", "lease_ttl = \"8s\""),
    )
    .unwrap();
    a.restart();
    let expected = queue_a_round(&a, &capture, &downstream, 1);
    let admin = a.admin.unwrap();
    let renewals = aggd_testkit::nats::watch(nats.servers[0].addr(), "$KV.AGGD_t_leases.shard.0");
    renewals
        .recv_timeout(Duration::from_secs(10))
        .expect("no renewal of shard 0 within 10 s");
    let changes = aggd_testkit::metric(admin, "aggd_cluster_lease_changes_total");
    let pid = a.child.as_ref().unwrap().id();
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(6500));
    signal(pid, "CONT");
    // The sender wakes first and leaves the queued aggregates out; the owner renews.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fenced = || aggd_testkit::metric(admin, "aggd_destination_fenced_total{");
    while fenced() == 0.0 {
        assert!(Instant::now() < deadline, "nothing left out by the fence");
        std::thread::sleep(Duration::from_millis(100));
    }
    downstream.restore();
    wait_exact(&capture, &expected, Duration::from_secs(30));
    assert_no_regression(&capture);
    // The same node kept the shard throughout: renewed, not lost and taken again.
    assert_eq!(
        aggd_testkit::metric(admin, "aggd_cluster_lease_changes_total"),
        changes,
        "the shard changed hands"
    );
    let lapsed = aggd_testkit::metric(admin, "aggd_cluster_lapsed_renewals_total");
    assert!(lapsed >= 1.0, "no renewal after a lapse counted");
}

/// The rules of the cutover test: one output, fed by the `.a` inputs (value 1) under the
/// old rules and by the `.b` inputs (value 1000) under the new ones, so a value tells
/// which rules fed it, and a mix of both is neither.
const CUT_OLD: &str = "cut.total (2) = sum cut.<h>.a\n";
const CUT_NEW: &str = "cut.total (2) = sum cut.<h>.b\n";

#[test]
fn a_cluster_rules_change_takes_effect_at_one_interval_boundary_on_every_node() {
    // Issue 25: a reload during traffic. Every interval of the output is wholly old
    // (a count of `.a` inputs) or wholly new (1000 × the `.b` inputs), exact, and the
    // old ones all come before the new ones. A node whose files were not updated keeps
    // its rules, says so in `aggd cluster status` and counts it.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let a = Node::start("a", &nats, &capture, 16, CUT_OLD);
    let b = Node::start("b", &nats, &capture, 16, CUT_OLD);
    let c = Node::start_with("c", &nats, &capture, 16, CUT_OLD, ADMIN);
    wait_spread(&c, &["a", "b", "c"]);
    // Per interval start: (old value, new value) of what was sent.
    let sent: Arc<Mutex<BTreeMap<i64, (f64, f64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (sent, stop, to) = (sent.clone(), stop.clone(), [a.tcp, b.tcp]);
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ts = aggd_testkit::now() as i64;
                let h = i % 3;
                send_lines(
                    to[i % 2],
                    &format!("cut.h{h}.a 1 {ts}\ncut.h{h}.b 1000 {ts}\n"),
                );
                let mut m = sent.lock().unwrap();
                let e = m.entry(ts - ts.rem_euclid(2)).or_default();
                e.0 += 1.0;
                e.1 += 1000.0;
                drop(m);
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        std::fs::write(n.dir.join("aggregation-rules.conf"), CUT_NEW).unwrap();
    }
    signal(a.child.as_ref().unwrap().id(), "HUP");
    // The activation is 2 × lease_ttl ahead, on a 2 s boundary: traffic on both sides.
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    // Every interval settles on the old or the new value, and old ones come first.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kinds = loop {
        let got = capture.snapshot();
        let kinds: Vec<(i64, f64, Option<&str>)> = sent
            .iter()
            .map(|(t, (old, new))| {
                let v = got.get(&("cut.total".to_string(), *t)).copied();
                let kind = match v {
                    Some(v) if v == *old => Some("old"),
                    Some(v) if v == *new => Some("new"),
                    _ => None,
                };
                (*t, v.unwrap_or(f64::NAN), kind)
            })
            .collect();
        if kinds.iter().all(|k| k.2.is_some()) {
            break kinds;
        }
        assert!(
            Instant::now() < deadline,
            "intervals neither wholly old nor wholly new (start, value): {:?}",
            kinds
                .iter()
                .filter(|k| k.2.is_none())
                .map(|k| (k.0, k.1))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let order: String = kinds.iter().map(|k| &k.2.unwrap()[..1]).collect();
    assert!(
        order.contains("on") && !order.contains("no"),
        "old intervals then new ones: {order}"
    );
    // No emission, partial or not, ever mixed the two.
    let r = capture.received.lock().unwrap();
    for (path, ts, v, _) in &r.history {
        if path == "cut.total" {
            assert!(
                *v < 1000.0 || v % 1000.0 == 0.0,
                "{path}@{ts}: {v} mixes the old and the new rules"
            );
        }
    }
    drop(r);
    // c's files were not updated: it keeps its rules, says so, and counts it.
    let status = status(&c);
    assert!(
        status.contains("cannot take the cluster's rules"),
        "{status}"
    );
    assert_eq!(
        aggd_testkit::metric(c.admin.unwrap(), "aggd_cluster_rules_refused_total"),
        1.0
    );
}

#[test]
fn a_node_started_after_a_rules_change_routes_earlier_timestamps_by_the_earlier_rules() {
    // Found by the nemesis soak: a node restarted between a rules change and its
    // activation time (or republishing records journaled before it) has only the new
    // files, and routed everything by them. The cluster's key names the rules before, and
    // their text is in the bucket: the node routes by them what is stamped before.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let a = Node::start("a", &nats, &capture, 8, CUT_OLD);
    let mut b = Node::start("b", &nats, &capture, 8, CUT_OLD);
    wait_spread(&b, &["a", "b"]);
    let before = rules_line(&a.cfg).unwrap();
    for n in [&a, &b] {
        std::fs::write(n.dir.join("aggregation-rules.conf"), CUT_NEW).unwrap();
    }
    signal(a.child.as_ref().unwrap().id(), "HUP");
    let t = activation_after(&a.cfg, &before, Duration::from_secs(20))
        .expect("the change was not stored");
    b.stop();
    b.restart();
    wait_spread(&a, &["a", "b"]);
    for ts in [t - 4, t - 2, t, t + 2] {
        send_lines(b.tcp, &format!("cut.h0.a 1 {ts}\ncut.h0.b 1000 {ts}\n"));
    }
    let want = |ts: i64| if ts < t { 1.0 } else { 1000.0 };
    capture.wait_for("each interval by the rules at its time", |m| {
        [t - 4, t - 2, t, t + 2]
            .iter()
            .all(|ts| m.get(&("cut.total".to_string(), *ts)) == Some(&want(*ts)))
    });
}

#[test]
fn a_node_cut_off_during_a_rules_change_publishes_by_the_new_rules_when_back() {
    // Issue 25: node a is partitioned from NATS while b makes a rules change, and takes
    // input stamped after the activation time. Its connections routed it by the old
    // rules; when the link is back, a takes the change before it publishes (its lanes
    // route nothing while its rules are unconfirmed) and routes those records again.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let proxy = aggd_testkit::proxy::Proxy::start(nats.servers[0].addr());
    let via = aggd_testkit::proxy::nats_servers([&proxy]);
    let a = Node::start_via("a", (&via, 1), &capture.addr.to_string(), 8, CUT_OLD, "");
    let b = Node::start("b", &nats, &capture, 8, CUT_OLD);
    wait_spread(&b, &["a", "b"]);
    let before = rules_line(&b.cfg).unwrap();
    proxy.cut();
    for n in [&a, &b] {
        std::fs::write(n.dir.join("aggregation-rules.conf"), CUT_NEW).unwrap();
    }
    signal(b.child.as_ref().unwrap().id(), "HUP");
    let t = activation_after(&b.cfg, &before, Duration::from_secs(20))
        .expect("the change was not stored");
    while (aggd_testkit::now() as i64) < t + 1 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still cut off: a journals input on both sides of the activation time.
    for ts in [t - 2, t, t + 2] {
        send_lines(a.tcp, &format!("cut.h0.a 1 {ts}\ncut.h0.b 1000 {ts}\n"));
    }
    std::thread::sleep(Duration::from_secs(1));
    proxy.restore();
    let want = |ts: i64| if ts < t { 1.0 } else { 1000.0 };
    capture.wait_for("each interval by the rules at its time", |m| {
        [t - 2, t, t + 2]
            .iter()
            .all(|ts| m.get(&("cut.total".to_string(), *ts)) == Some(&want(*ts)))
    });
    // Nothing was ever emitted by the wrong rules.
    let r = capture.received.lock().unwrap();
    for (path, ts, v, _) in &r.history {
        if path == "cut.total" {
            assert_eq!(*v, want(*ts), "{path}@{ts}");
        }
    }
}

#[test]
fn an_owner_with_its_clock_ahead_ledgers_late_input_it_drops_and_replay_lost_repairs_it() {
    // Found by the nemesis soak (seed 2026, 30 minutes): an interval ended below its exact
    // value while a node ran with its wall clock 30 s ahead. Its workers judge `too_old`
    // by their clock, so late input (here from a node cut off from NATS) that a right
    // clock would still take is dropped: counted and ledgered, as every drop, and
    // `aggd replay --lost` on that node recomputes the interval from the stream.
    let nats = Nats::one();
    let capture = Capture::start("pickle");
    let rules = "cl.<grp>.sum (2) = sum in.<grp>.*\n";
    // One shard, whose desired owner (rendezvous hashing) is b.
    let mut b = Node::start_with("b", &nats, &capture, 1, rules, ADMIN);
    b.stop();
    b.restart_with_env(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "+30s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    wait_metric(
        &b,
        "aggd_cluster_shards_owned",
        1.0,
        Duration::from_secs(30),
    );
    let proxy = aggd_testkit::proxy::Proxy::start(nats.servers[0].addr());
    let via = aggd_testkit::proxy::nats_servers([&proxy]);
    let a = Node::start_via("a", (&via, 1), &capture.addr.to_string(), 1, rules, ADMIN);
    wait_metric(
        &a,
        "aggd_cluster_shards_owned",
        0.0,
        Duration::from_secs(10),
    );
    proxy.cut();
    let ts = aggd_testkit::now() as i64;
    let bucket = ts - ts.rem_euclid(2);
    send_lines(a.tcp, &format!("in.g0.h0 5 {ts}\n"));
    send_lines(b.tcp, &format!("in.g0.h1 7 {ts}\n"));
    capture.wait_for("b's own input", |m| {
        m.get(&("cl.g0.sum".to_string(), bucket)) == Some(&7.0)
    });
    // 22 s later a's input is older than b's clock lets in (48 s window, 30 s ahead).
    std::thread::sleep(Duration::from_secs(22));
    proxy.restore();
    let too_old = "aggd_dropped_total{reason=\"too_old\"} ";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = aggd_testkit::http(b.admin.unwrap(), "GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).unwrap();
        if text
            .lines()
            .any(|l| l.starts_with(too_old) && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "b dropped nothing as too_old");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(capture.value("cl.g0.sum", bucket), Some(7.0));
    b.stop();
    let out = aggd_ok(["replay", "--lost", "-c", b.cfg.to_str().unwrap()]);
    assert!(out.contains("replay: "), "{out}");
    capture.wait_for("the repaired interval", |m| {
        m.get(&("cl.g0.sum".to_string(), bucket)) == Some(&12.0)
    });
}
