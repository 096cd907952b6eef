use super::*;
use crate::config::{CarbonTarget, DestinationConfig, DestinationKind};

/// A carbon destination's target.
fn tcp_target(d: &DestinationConfig) -> Option<&CarbonTarget> {
    match &d.kind {
        DestinationKind::Carbon(c) => Some(&c.target),
        DestinationKind::RemoteWrite(_) => None,
    }
}
use std::time::Duration;

#[test]
fn destinations_parse() {
    let p = |e: &str| parse_destination(e);
    let some = |a: &str, i: Option<&str>| Some((a.to_string(), i.map(str::to_string)));
    assert_eq!(p("127.0.0.1:2004"), some("127.0.0.1:2004", None));
    assert_eq!(p(" 10.0.0.1:2004:a "), some("10.0.0.1:2004", Some("a")));
    assert_eq!(p("[::1]:2004:b"), some("[::1]:2004", Some("b")));
    assert_eq!(parse_destination("nohost"), None);
    assert_eq!(parse_destination("h:notaport"), None);
}

#[test]
fn debian_style_carbon_conf() {
    let guard = tempfile::tempdir().unwrap();
    let d = guard.path().to_path_buf();
    std::fs::write(d.join("aggregation-rules.conf"), "a.sum (60) = sum a.*\n").unwrap();
    std::fs::write(
        d.join("carbon.conf"),
        "[cache]\nLINE_RECEIVER_PORT = 2003\n\n\
         [aggregator]\n\
         LINE_RECEIVER_INTERFACE = 127.0.0.1\n\
         line_receiver_port = 2023\n\
         PICKLE_RECEIVER_PORT = 2024\n\
         ENABLE_UDP_LISTENER = yes\n\
         DESTINATIONS = 127.0.0.1:2004:a, 127.0.0.1:2104\n\
         FORWARD_ALL = False\n\
         MAX_QUEUE_SIZE = 10000\n\
         MAX_AGGREGATION_INTERVALS = 3\n\
         USE_FLOW_CONTROL = True\n",
    )
    .unwrap();
    let c = load(&d.join("carbon.conf")).unwrap();
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.listeners[0].address, "127.0.0.1:2023");
    assert_eq!(c.listeners[1].address, "0.0.0.0:2024");
    assert_eq!(c.listeners[2].address, "0.0.0.0:2003");
    assert_eq!(c.listeners[2].transport, Transport::Udp);
    assert_eq!(c.destinations.len(), 2);
    assert_eq!(
        tcp_target(&c.destinations[1]),
        Some(&CarbonTarget::Tcp("127.0.0.1:2104".into()))
    );
    assert_eq!(c.destinations[0].protocol(), DestProtocol::Pickle);
    assert_eq!(c.destinations[0].queue_datapoints, 100_000);
    assert!(!c.aggregation.forward_all);
    assert_eq!(c.aggregation.max_intervals, 3);
    assert_eq!(c.aggregation.rules.rules().len(), 1);
    assert!(c.aggregation.rewrite_file.is_none());
    assert_eq!(c.destinations[0].instance.as_deref(), Some("a"));
    assert_eq!(c.destinations[1].carbon_name(), "127_0_0_1:2104:None");
    assert_eq!(c.routing.placement.method(), Method::CarbonCh);
    assert_eq!(c.service.self_metrics_interval, Duration::from_secs(60));
    assert_eq!(c.service.instance, "a");
}

/// Writes a carbon.conf with `keys` in `[aggregator]` (and `extra` after it) and
/// loads it as `instance`.
fn load_with(keys: &str, extra: &str, instance: &str) -> Result<Config, ConfigError> {
    let guard = tempfile::tempdir().unwrap();
    let d = guard.path();
    std::fs::write(
        d.join("aggregation-rules.conf"),
        "a.sum (60) = sum a.*
",
    )
    .unwrap();
    std::fs::write(
        d.join("carbon.conf"),
        format!("[aggregator]\nDESTINATIONS = 127.0.0.1:2004, 127.0.0.2:2004\n{keys}\n{extra}"),
    )
    .unwrap();
    load_instance(&d.join("carbon.conf"), instance)
}

#[test]
fn self_metrics_interval_and_names() {
    for (v, secs) in [("0", 0), ("-1", 0), ("5", 5), ("None", 60)] {
        let c = load_with(&format!("CARBON_METRIC_INTERVAL = {v}"), "", "a").unwrap();
        assert_eq!(
            c.service.self_metrics_interval,
            Duration::from_secs(secs),
            "{v}"
        );
    }
    let c = load_with(
        "CARBON_METRIC_PREFIX = base",
        "[aggregator:b]\nCARBON_METRIC_PREFIX = other\nLINE_RECEIVER_PORT = 0\n",
        "b",
    )
    .unwrap();
    assert_eq!(c.service.self_metrics_prefix, "other");
    assert_eq!(c.listeners.len(), 1, "port 0 turns the line receiver off");
    let mut s = c.service.clone();
    s.hostname = "web01_example_com".into();
    assert_eq!(
        s.self_metrics_base(),
        "other.aggregator.web01_example_com-b"
    );
}

#[test]
fn routing_keys_and_refusals() {
    let c = load_with(
        "ROUTER_HASH_TYPE = fnv1a_ch\nREPLICATION_FACTOR = 2\nDIVERSE_REPLICAS = False\n\
         TAG_RELAY_NORMALIZED = True\nMIN_TIMESTAMP_RESOLUTION = 10\n\
         MAX_RECEIVER_CONNECTIONS = 7",
        "",
        "a",
    )
    .unwrap();
    let p = &c.routing.placement;
    assert_eq!(p.method(), Method::CarbonFnv1aCh);
    assert_eq!((p.replication(), p.diverse()), (2, false));
    assert!(c.routing.normalize_tags);
    assert_eq!(c.aggregation.timestamp_resolution, 10);
    assert_eq!(c.limits.max_connections, 7);
    for (keys, needle) in [
        ("ROUTER_HASH_TYPE = md5", "ROUTER_HASH_TYPE"),
        ("DESTINATION_TRANSPORT = ssl", "TLS"),
        ("DESTINATION_PROTOCOL = protobuf", "pickle or line"),
        ("REPLICATION_FACTOR = 0", "REPLICATION_FACTOR"),
    ] {
        let e = load_with(keys, "", "a").unwrap_err().to_string();
        assert!(e.contains(needle), "{keys}: {e}");
    }
    // Two destinations on one host without instances share a ring key: refused, as
    // carbon refuses them.
    let guard = tempfile::tempdir().unwrap();
    let d = guard.path();
    std::fs::write(d.join("aggregation-rules.conf"), "a.sum (60) = sum a.*\n").unwrap();
    std::fs::write(
        d.join("carbon.conf"),
        "[aggregator]\nDESTINATIONS = 127.0.0.1:2004, 127.0.0.1:2104\n",
    )
    .unwrap();
    let e = load(&d.join("carbon.conf")).unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:2004 and 127.0.0.1:2104"), "{e}");
}

#[test]
fn migrate_gives_the_same_config_for_every_kind_of_carbon_conf() {
    let guard = tempfile::tempdir().unwrap();
    let d = guard.path();
    std::fs::write(d.join("aggregation-rules.conf"), "a.sum (60) = sum a.*\n").unwrap();
    std::fs::write(d.join("rewrite-rules.conf"), "[pre]\n^x\\. = a.\n").unwrap();
    std::fs::write(d.join("whitelist.conf"), "^a\\.\n").unwrap();
    std::fs::write(d.join("blacklist.conf"), "secret\n").unwrap();
    let variants = [
        // Instances: [aggregator:b] over [aggregator], with a [relay] section beside.
        (
            "b",
            "[relay]\nLINE_RECEIVER_PORT = 2013\n[aggregator]\nLINE_RECEIVER_PORT = 2023\n\
               DESTINATIONS = 127.0.0.1:2004\n[aggregator:b]\nLINE_RECEIVER_PORT = 2123\n\
               DESTINATIONS = 127.0.0.1:2104:b\n",
        ),
        // Lists.
        (
            "a",
            "[aggregator]\nDESTINATIONS = 127.0.0.1:2004\nUSE_WHITELIST = True\n",
        ),
        // Hashing: fnv1a, replication, several destinations with instances.
        (
            "a",
            "[aggregator]\nDESTINATIONS = 10.0.0.1:2004:a, 10.0.0.2:2004:b, 10.0.0.3:2004:c\n\
               ROUTER_HASH_TYPE = fnv1a_ch\nREPLICATION_FACTOR = 2\nDIVERSE_REPLICAS = False\n",
        ),
        // Receivers, limits, self-metrics, plaintext out, no journal.
        (
            "a",
            "[aggregator]\nDESTINATIONS = 127.0.0.1:2003\nDESTINATION_PROTOCOL = line\n\
               ENABLE_UDP_LISTENER = True\nUDP_RECEIVER_PORT = 2025\nPICKLE_RECEIVER_PORT = 0\n\
               PICKLE_RECEIVER_MAX_LENGTH = 2097152\nMAX_RECEIVER_CONNECTIONS = 500\n\
               CARBON_METRIC_PREFIX = agg\nCARBON_METRIC_INTERVAL = 10\nFORWARD_ALL = False\n\
               MAX_AGGREGATION_INTERVALS = 12\nWRITE_BACK_FREQUENCY = 30\nAGGD_JOURNAL = False\n",
        ),
    ];
    for (i, (instance, text)) in variants.into_iter().enumerate() {
        let conf = d.join(format!("carbon-{i}.conf"));
        std::fs::write(&conf, text).unwrap();
        let direct = load_instance(&conf, instance).unwrap();
        let toml = migrate(&conf, instance).unwrap();
        let migrated = d.join(format!("aggd-{i}.toml"));
        std::fs::write(&migrated, &toml).unwrap();
        let mut back = Config::load(&migrated).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        back.source = direct.source.clone();
        assert_eq!(
            format!("{back:?}"),
            format!("{direct:?}"),
            "variant {i}:\n{toml}"
        );
    }
}

#[test]
fn every_key_of_the_table_is_documented() {
    let doc = include_str!("../../../docs/operations.md");
    for (key, _) in keys::KEYS {
        assert!(
            doc.contains(&format!("| {key} |")),
            "{key} missing from docs/operations.md"
        );
    }
}
