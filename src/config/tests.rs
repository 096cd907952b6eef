//! Unit tests of loading and validating `aggd.toml`.

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A fresh directory, removed when the guard drops.
fn tmpdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("aggd-cfg-{tag}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn minimal_config_and_relative_paths() {
    let guard = tmpdir("min");
    let d = guard.path();
    write(d, "rules.conf", "a (60) = sum b\n");
    let cfg = write(
        d,
        "aggd.toml",
        "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
         [aggregation]\nrules = \"rules.conf\"\n\
         [[destination]]\naddress = \"stdout\"\n",
    );
    let c = Config::load(&cfg).unwrap();
    assert_eq!(c.aggregation.rules.rules().len(), 1);
    assert_eq!(c.aggregation.max_intervals, 5);
    assert_eq!(c.listeners[0].transport, Transport::Tcp);
    assert!(
        matches!(&c.destinations[0].kind, DestinationKind::Carbon(d) if d.target == CarbonTarget::Stdout)
    );
    assert!(c.workers.count >= 1);
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let guard = tmpdir("bad");
    let d = guard.path();
    write(d, "rules.conf", "a (60) = sum b\n");
    let cfg = write(
        d,
        "a.toml",
        "[aggregation]\nrules = \"rules.conf\"\nbogus = 1\n",
    );
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    let cfg = write(
        d,
        "b.toml",
        "[aggregation]\nrules = \"rules.conf\"\n[[destination]]\naddress = \"nope\"\n",
    );
    assert!(
        Config::load(&cfg)
            .unwrap_err()
            .to_string()
            .contains("host:port")
    );
    let cfg = write(
        d,
        "c.toml",
        "[[listen]]\nprotocol = \"pickle\"\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n[aggregation]\nrules = \"rules.conf\"\n",
    );
    assert!(
        Config::load(&cfg)
            .unwrap_err()
            .to_string()
            .contains("TCP only")
    );
    write(d, "broken.conf", "x (60) = sum a\ny.<q> (60) = sum b\n");
    let cfg = write(d, "d.toml", "[aggregation]\nrules = \"broken.conf\"\n");
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("broken.conf:2:"), "{e}");
}

#[test]
fn closed_sets_and_durations_are_typed() {
    let guard = tmpdir("typed");
    let d = guard.path();
    write(d, "rules.conf", "a (60) = sum b\n");
    write(d, "tenants.toml", "");
    let base = "[aggregation]\nrules = \"rules.conf\"\n";
    let load = |name: &str, extra: &str| Config::load(&write(d, name, &format!("{base}{extra}")));
    let c = load(
        "ok.toml",
        "[journal]\ndir = \"j\"\nfsync = \"always\"\non_full = \"backpressure\"\n\
         max_age = \"0\"\nsegment_max_age = \"90s\"\n\
         [tenants]\nregistry = \"tenants.toml\"\nunknown = \"reject\"\n\
         [service]\nself_metrics_interval = \"0s\"\ndrain_timeout = \"1m 30s\"\n",
    )
    .unwrap();
    let j = c.journal.as_ref().unwrap();
    assert_eq!(j.fsync, crate::journal::Fsync::Always);
    assert_eq!(j.on_full, crate::journal::OnFull::Backpressure);
    assert_eq!(j.max_age, Duration::ZERO);
    assert_eq!(j.segment_max_age, Duration::from_secs(90));
    assert_eq!(j.dir, d.join("j"), "relative to the config file");
    assert_eq!(j.ledger, d.join("j").join(crate::ledger::FILE));
    let t = c.tenants.as_ref().unwrap();
    assert_eq!(t.unknown, crate::tenant::Unknown::Reject);
    assert_eq!(c.service.self_metrics_interval, Duration::ZERO);
    assert_eq!(c.service.drain_timeout, Duration::from_secs(90));
    // The summary is in the config's own words, never Debug output.
    let text = c.to_string();
    assert!(
        text.contains("(fsync always, on_full backpressure)"),
        "{text}"
    );
    assert!(
        !text.contains("Always") && !text.contains("Backpressure"),
        "{text}"
    );
    // Defaults.
    let c = load("defaults.toml", "[journal]\ndir = \"j\"\n").unwrap();
    let j = c.journal.unwrap();
    assert_eq!(
        j.fsync,
        crate::journal::Fsync::Interval(Duration::from_secs(1))
    );
    assert_eq!(j.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(c.service.drain_timeout, Duration::from_secs(10));
    // A value outside its set names the key's line and what it accepts.
    for (name, extra, says) in [
        (
            "f.toml",
            "[journal]\ndir = \"j\"\nfsync = \"sometimes\"\n",
            "never",
        ),
        (
            "o.toml",
            "[journal]\ndir = \"j\"\non_full = \"drop\"\n",
            "backpressure",
        ),
        (
            "u.toml",
            "[tenants]\nregistry = \"tenants.toml\"\nunknown = \"maybe\"\n",
            "reject",
        ),
        (
            "m.toml",
            "[tenants]\nregistry = \"tenants.toml\"\nmode = \"header\"\n",
            "prefix",
        ),
        (
            "d.toml",
            "[service]\ndrain_timeout = \"soon\"\n",
            "drain_timeout",
        ),
    ] {
        let e = load(name, extra).unwrap_err();
        assert!(matches!(e, ConfigError::At { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains(name) && e.contains(says), "{e}");
    }
    // Errors of files a section names carry that file's name.
    let e = load("r.toml", "[tenants]\nregistry = \"missing.toml\"\n").unwrap_err();
    assert!(matches!(e, ConfigError::Registry(_)), "{e}");
    assert!(e.to_string().contains("missing.toml"), "{e}");
    let e = load("a.toml", "[admin]\ntoken_file = \"no-token\"\n").unwrap_err();
    assert!(e.to_string().contains("no-token: cannot read"), "{e}");
}

#[test]
fn remote_write_destinations_are_validated() {
    use super::prometheus::HttpAuth;
    let guard = tmpdir("rw");
    let d = guard.path();
    write(d, "rules.conf", "a (60) = sum b\n");
    write(d, "token", "tok\n");
    write(d, "mapping.conf", "a.<h> = a\n");
    let load = |dest: &str| {
        let cfg = write(
            d,
            "aggd.toml",
            &format!(
                "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                 [aggregation]\nrules = \"rules.conf\"\n\
                 [[destination]]\n{dest}\n"
            ),
        );
        Config::load(&cfg).map_err(|e| e.to_string())
    };
    let c = load(
        "protocol = \"prometheus_remote_write\"\nurl = \"http://vm:8428/api/v1/write\"\n\
         bearer_token_file = \"token\"\nmapping_file = \"mapping.conf\"\n\
         headers = { \"X-Scope-OrgID\" = \"a\" }\nbatch_datapoints = 10\ntimeout = \"5s\"\n",
    )
    .unwrap();
    let dest = &c.destinations[0];
    let rw = dest.remote_write().unwrap();
    assert_eq!(dest.name(), "http://vm:8428/api/v1/write");
    assert_eq!((dest.node().host.as_str(), dest.node().port), ("vm", 8428));
    assert_eq!(rw.auth, HttpAuth::Bearer("tok".into()));
    assert_eq!(
        format!("{:?}", rw.auth),
        "bearer token",
        "no secret in logs"
    );
    assert_eq!(
        (rw.batch_datapoints, rw.timeout),
        (10, Duration::from_secs(5))
    );
    assert!(rw.mapping.is_some());
    assert!(
        c.to_string()
            .contains("destination: http://vm:8428/api/v1/write (prometheus_remote_write)")
    );
    // Defaults, and the https port.
    let c =
        load("protocol = \"prometheus_remote_write\"\nurl = \"https://m.example/api/v1/push\"\n")
            .unwrap();
    let rw = c.destinations[0].remote_write().unwrap();
    assert_eq!(
        (rw.batch_datapoints, rw.timeout),
        (2000, Duration::from_secs(30))
    );
    assert_eq!(c.destinations[0].node().port, 443);
    for (dest, why) in [
        ("protocol = \"prometheus_remote_write\"", "needs url"),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"ftp://x/\"",
            "not http",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\naddress = \"x:1\"",
            "not address",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nbearer_token = \"a\"\nbasic_auth_username = \"u\"\nbasic_auth_password = \"p\"",
            "not both",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nbasic_auth_username = \"u\"",
            "needs basic_auth_username and a password",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\ntls_ca = \"token\"",
            "need an https",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"https://x/\"\ntls_ca = \"token\"",
            "tls_ca",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"https://x/\"\ntls_cert = \"token\"",
            "go together",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nheaders = { \"Content-Type\" = \"x\" }",
            "set by aggd",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nheaders = { \"a b\" = \"x\" }",
            "not valid HTTP",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nbatch_datapoints = 0",
            "above 0",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nmapping_file = \"rules.conf\"",
            "rules.conf:1:",
        ),
        (
            "protocol = \"prometheus_remote_write\"\nurl = \"http://x/\"\nbearer_token_file = \"missing\"",
            "cannot read",
        ),
        (
            "address = \"x:1\"\nurl = \"http://x/\"",
            "prometheus_remote_write\" only",
        ),
        (
            "address = \"x:1\"\nheaders = { \"a\" = \"b\" }",
            "prometheus_remote_write\" only",
        ),
    ] {
        let e = load(dest).unwrap_err();
        assert!(e.contains(why), "{dest}: {e}");
    }
}

#[test]
fn emit_delay_and_late_changes_are_per_destination_and_bounded() {
    let guard = tmpdir("hold");
    let d = guard.path();
    write(d, "rules.conf", "a (60) = sum b\n");
    let base = "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
                [aggregation]\nrules = \"rules.conf\"\n";
    let cfg = write(
        d,
        "ok.toml",
        &format!(
            "{base}[[destination]]\naddress = \"stdout\"\n\
             [[destination]]\naddress = \"127.0.0.1:2004\"\nemit_delay = \"90s\"\nlate_changes = \"ledger\"\n"
        ),
    );
    let c = Config::load(&cfg).unwrap();
    assert_eq!(c.destinations[0].emit_delay, Duration::ZERO);
    assert_eq!(c.destinations[0].late_changes, LateChanges::Send);
    assert_eq!(c.destinations[1].emit_delay, Duration::from_secs(90));
    assert_eq!(c.destinations[1].late_changes, LateChanges::Ledger);
    assert!(
        c.to_string().contains(
            "destination: 127.0.0.1:2004 (pickle, emit_delay 1m 30s, late_changes ledger)"
        ),
        "{c}"
    );
    let long = write(
        d,
        "long.toml",
        &format!("{base}[[destination]]\naddress = \"stdout\"\nemit_delay = \"2h\"\n"),
    );
    let e = Config::load(&long).unwrap_err().to_string();
    assert!(
        e.contains("emit_delay 2h is longer than the most, 1h"),
        "{e}"
    );
    assert!(e.contains("long.toml:"), "{e}");
    let bad = write(
        d,
        "bad.toml",
        &format!("{base}[[destination]]\naddress = \"stdout\"\nlate_changes = \"drop\"\n"),
    );
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("unknown variant `drop`"), "{e}");
}
