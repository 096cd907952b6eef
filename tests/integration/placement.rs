//! Placement on several destinations, against the real implementations: for 100 000 names
//! and several destination lists, aggd's choice (read from a config file, as the daemon
//! builds it) equals that of carbon's own router (Debian's graphite-carbon, imported from
//! CPython) and of carbon-c-relay's test mode (`carbon-c-relay -t`, which prints where
//! each metric goes). Tag normalisation is compared with carbon's own `TaggedSeries`.

use std::path::Path;
use std::process::Command;

use aggd::config::Config;
use aggd_testkit::carbon::carbon_placement;
use aggd_testkit::run_with_input;

/// Debian's CPython, which has the `carbon` package.
const PYTHON: &str = "/usr/bin/python3";

/// 100 000 names of several shapes: plain, deep, tagged, non-ASCII, long.
fn names() -> Vec<String> {
    (0..100_000)
        .map(|i| match i % 5 {
            0 => format!("servers.web{i}.cpu.user"),
            1 => format!("sum.dc{}.app.requests.{i}", i % 7),
            2 => format!("cpu.load;host=h{i};dc=eu{}", i % 3),
            3 => format!("métriques.ñ{i}.valeur"),
            _ => format!("{}.{i}", "long.path.segment".repeat(1 + i % 4)),
        })
        .collect()
}

/// Destination lists as `host:port[:instance]`.
const ONE: &[&str] = &["127.0.0.1:2004"];
const THREE: &[&str] = &["127.0.0.1:2004", "127.0.0.2:2004", "10.0.0.3:2104"];
const THREE_INSTANCES: &[&str] = &["127.0.0.1:2004:a", "127.0.0.1:2104:b", "127.0.0.1:2204:c"];
const FIVE: &[&str] = &[
    "10.0.0.1:2004:a",
    "10.0.0.2:2004",
    "10.0.0.3:2004:c",
    "10.0.0.3:2104:d",
    "10.0.0.5:2004:7",
];

/// (address, instance) of a `host:port[:instance]` entry.
fn split(d: &str) -> (String, Option<String>) {
    let mut p = d.splitn(3, ':');
    let addr = format!("{}:{}", p.next().unwrap(), p.next().unwrap());
    (addr, p.next().map(str::to_string))
}

/// aggd's placement: for each name, the destinations as `host:port[:instance]`.
fn aggd(
    method: &str,
    dests: &[&str],
    replication: usize,
    diverse: bool,
    names: &[String],
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.conf"), "x (60) = sum y\n").unwrap();
    let mut toml = format!(
        "[aggregation]\nrules = \"rules.conf\"\n\
         [routing]\nmethod = \"{method}\"\nreplication = {replication}\ndiverse_replicas = {diverse}\n"
    );
    for d in dests {
        let (addr, instance) = split(d);
        toml.push_str(&format!("[[destination]]\naddress = \"{addr}\"\n"));
        if let Some(i) = instance {
            toml.push_str(&format!("instance = \"{i}\"\n"));
        }
    }
    let path = dir.path().join("aggd.toml");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(&path).unwrap();
    let mut out = Vec::new();
    names
        .iter()
        .map(|n| {
            config.routing.placement.place(n, &mut out);
            let placed: Vec<&str> = out.iter().map(|&i| dests[i]).collect();
            placed.join(",")
        })
        .collect()
}

/// Runs `program args`, feeding `input`; its stdout.
fn run(program: &str, args: &[&str], input: &[u8]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_with_input(cmd, input)
}

fn carbon(
    hash_type: &str,
    dests: &[&str],
    replication: usize,
    diverse: bool,
    names: &[String],
) -> Vec<String> {
    carbon_placement(hash_type, replication, diverse, dests, names, None)
}

/// carbon-c-relay's placement from its test mode: for each name, the servers as
/// `host:port` (c-relay prints no instance).
fn relay(method: &str, dests: &[&str], replication: usize, names: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<String> = dests
        .iter()
        .map(|d| match split(d) {
            (a, Some(i)) => format!("{a}={i}"),
            (a, None) => a,
        })
        .collect();
    let conf = dir.path().join("relay.conf");
    std::fs::write(
        &conf,
        format!(
            "cluster c {method} replication {replication} {};\nmatch * send to c;\n",
            servers.join(" ")
        ),
    )
    .unwrap();
    let input: String = names.iter().map(|n| format!("{n} 1 1\n")).collect();
    let out = run(
        "carbon-c-relay",
        &["-t", "-f", conf.to_str().unwrap()],
        input.as_bytes(),
    );
    let mut placed: Vec<String> = Vec::new();
    let mut in_match = false;
    for line in out.lines() {
        if line == "match" {
            placed.push(String::new());
            in_match = true;
        } else if in_match && line.starts_with("        ") {
            let last = placed.last_mut().unwrap();
            if !last.is_empty() {
                last.push(',');
            }
            last.push_str(line.trim());
        }
    }
    placed
}

/// Compares two placements name by name; reports the first few differences.
fn assert_same(what: &str, names: &[String], ours: &[String], theirs: &[String]) {
    assert_eq!(
        ours.len(),
        names.len(),
        "{what}: aggd placed {}",
        ours.len()
    );
    assert_eq!(
        theirs.len(),
        names.len(),
        "{what}: the reference placed {}",
        theirs.len()
    );
    let wrong: Vec<String> = (0..names.len())
        .filter(|&i| ours[i] != theirs[i])
        .take(5)
        .map(|i| format!("{:?}: aggd {} vs {}", names[i], ours[i], theirs[i]))
        .collect();
    let count = (0..names.len()).filter(|&i| ours[i] != theirs[i]).count();
    assert!(
        wrong.is_empty(),
        "{what}: {count} names differ, e.g. {wrong:#?}"
    );
}

#[test]
fn carbon_ch_places_every_name_where_carbon_does() {
    let names = names();
    for (dests, rf, diverse) in [
        (ONE, 1, true),
        (THREE, 1, true),
        (THREE_INSTANCES, 1, true),
        (FIVE, 1, true),
        (FIVE, 2, true),
        (FIVE, 3, false),
        (THREE_INSTANCES, 2, true),
    ] {
        let what = format!("carbon_ch {dests:?} replication {rf} diverse {diverse}");
        let ours = aggd("carbon_ch", dests, rf, diverse, &names);
        assert_same(
            &what,
            &names,
            &ours,
            &carbon("carbon_ch", dests, rf, diverse, &names),
        );
    }
    // carbon's own fnv1a_ch, which carbon.conf's ROUTER_HASH_TYPE = fnv1a_ch selects.
    for dests in [THREE, THREE_INSTANCES, FIVE] {
        let ours = aggd("carbon_fnv1a_ch", dests, 1, true, &names);
        let theirs = carbon("fnv1a_ch", dests, 1, true, &names);
        assert_same(
            &format!("carbon fnv1a_ch {dests:?}"),
            &names,
            &ours,
            &theirs,
        );
    }
}

#[test]
fn mmh3_ch_places_every_name_where_carbon_does() {
    let pydeps = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pydeps");
    let probe = Command::new(PYTHON)
        .args(["-c", "import mmh3"])
        .env("PYTHONPATH", &pydeps)
        .status()
        .unwrap();
    assert!(
        probe.success(),
        "python mmh3 is missing: tests/install-deps.sh installs it into target/pydeps"
    );
    let names: Vec<String> = names().into_iter().step_by(10).collect();
    for dests in [THREE, FIVE] {
        let ours = aggd("mmh3_ch", dests, 1, true, &names);
        let theirs = carbon_placement("mmh3_ch", 1, true, dests, &names, Some(&pydeps));
        assert_same(&format!("mmh3_ch {dests:?}"), &names, &ours, &theirs);
    }
}

#[test]
fn relay_methods_place_every_name_where_carbon_c_relay_does() {
    let names = names();
    let host_port = |placed: Vec<String>| -> Vec<String> {
        placed
            .into_iter()
            .map(|p| {
                p.split(',')
                    .map(|d| split(d).0)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    for method in ["fnv1a_ch", "jump_fnv1a_ch"] {
        for (dests, rf) in [
            (ONE, 1),
            (THREE, 1),
            (THREE_INSTANCES, 1),
            (FIVE, 1),
            (FIVE, 2),
            (THREE, 3),
        ] {
            let what = format!("{method} {dests:?} replication {rf}");
            let ours = host_port(aggd(method, dests, rf, false, &names));
            assert_same(&what, &names, &ours, &relay(method, dests, rf, &names));
        }
    }
}

/// carbon's `TaggedSeries.parse(name).path`, or `!` when it raises.
const CARBON_TAGS: &str = r#"
import sys
from carbon.util import TaggedSeries
out = []
for line in sys.stdin.buffer.read().decode("utf-8").split("\n")[:-1]:
    try:
        out.append(TaggedSeries.parse(line).path)
    except Exception:
        out.append("!")
sys.stdout.write("\n".join(out) + "\n")
"#;

#[test]
fn tag_normalisation_matches_carbon() {
    use aggd::codec::tagged::{Normalized, normalize};
    let mut names: Vec<String> = vec![
        "cpu;zone=eu;host=a".into(),
        "~cpu;b=1;a=2".into(),
        "cpu;a=1;a-b=2".into(),
        "cpu;a=1;a=2".into(),
        "cpu;name=x;y=1".into(),
        "cpu{zone=\"eu\",host=\"a\"}".into(),
        "cpu{a=\"x\\\"y\",b=\"\\\\z\"}".into(),
        "cpu{a=\"1\":,b=\"2\"}".into(),
        "cpu{a=\"1\"b=\"2\"}".into(),
        "c{p{u{a=\"1\"}".into(),
        "{a=\"1\"}".into(),
        ";a=1".into(),
        "cpu;novalue".into(),
        "cpu;=1".into(),
        "cpu;a=".into(),
        "cpu;a=~x".into(),
        "cpu;a!b=1".into(),
        "cpu;a^b=1".into(),
        "cpu;k=v=w".into(),
        "~".into(),
        "~~plain".into(),
        "plain.name".into(),
        "a{b".into(),
        "x;é=ü;a=b".into(),
    ];
    names.extend((0..2000).map(|i| format!("m{i};t{}=v{i};s{}=w", i % 13, i % 5)));
    let input = names.join("\n") + "\n";
    let theirs = run(PYTHON, &["-c", CARBON_TAGS], input.as_bytes());
    for (name, theirs) in names.iter().zip(theirs.lines()) {
        let ours = match normalize(name) {
            Normalized::Same => name.clone(),
            Normalized::Changed(n) => n,
            Normalized::Invalid(_) => "!".into(),
        };
        assert_eq!(ours, theirs, "{name:?}");
    }
}
