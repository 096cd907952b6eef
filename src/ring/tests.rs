//! Known answers from carbon 1.1.7's own router (Debian's graphite-carbon) and from
//! carbon-c-relay 3.7.3's test mode (`carbon-c-relay -t`); the exhaustive comparison over
//! 100 000 names is `tests/integration/placement.rs`.

use super::*;
use hashes::fnv1a32;

fn node(host: &str, port: u16, instance: Option<&str>) -> Node {
    Node {
        host: host.into(),
        port,
        instance: instance.map(str::to_string),
    }
}

fn carbon_nodes() -> Vec<Node> {
    vec![
        node("127.0.0.1", 2004, None),
        node("127.0.0.2", 2004, Some("a")),
        node("10.0.0.1", 2104, None),
        node("127.0.0.1", 2204, Some("b")),
    ]
}

const NAMES: [&str; 4] = ["a.b.c", "foo.bar", "carbon.aggregator.x", "sum.cpu;host=a"];

fn placed(p: &Placement) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    NAMES
        .iter()
        .map(|n| {
            p.place(n, &mut out);
            out.clone()
        })
        .collect()
}

#[test]
fn carbon_ch_matches_carbon() {
    let p = Placement::new(Method::CarbonCh, carbon_nodes(), 1, true).unwrap();
    assert_eq!(placed(&p), [vec![1], vec![2], vec![0], vec![3]]);
    let p = Placement::new(Method::CarbonCh, carbon_nodes(), 2, true).unwrap();
    assert_eq!(placed(&p), [vec![1, 2], vec![2, 3], vec![0, 1], vec![3, 1]]);
    let p = Placement::new(Method::CarbonCh, carbon_nodes(), 3, false).unwrap();
    assert_eq!(
        placed(&p),
        [vec![1, 2, 3], vec![2, 3, 1], vec![0, 1, 2], vec![3, 0, 1]]
    );
}

#[test]
fn carbon_fnv1a_ch_matches_carbon() {
    let p = Placement::new(Method::CarbonFnv1aCh, carbon_nodes(), 1, true).unwrap();
    assert_eq!(placed(&p), [vec![1], vec![0], vec![3], vec![0]]);
}

#[test]
fn relay_methods_match_carbon_c_relay() {
    let nodes = vec![
        node("127.0.0.1", 2003, None),
        node("127.0.0.1", 2004, Some("b")),
        node("10.0.0.1", 2003, None),
    ];
    let p = Placement::new(Method::Fnv1aCh, nodes, 1, false).unwrap();
    let mut out = Vec::new();
    p.place("a.b.c", &mut out);
    assert_eq!(out, [2]);
    p.place("foo.bar", &mut out);
    assert_eq!(out, [0]);
    let nodes = vec![
        node("127.0.0.2", 2003, None),
        node("127.0.0.2", 2004, None),
        node("10.0.0.2", 2003, None),
    ];
    let p = Placement::new(Method::JumpFnv1aCh, nodes, 1, false).unwrap();
    p.place("a.b.c", &mut out);
    assert_eq!(out, [1]);
    p.place("foo.bar", &mut out);
    assert_eq!(out, [1]);
}

#[test]
fn replicas_are_distinct_and_capped() {
    for method in [
        Method::CarbonCh,
        Method::CarbonFnv1aCh,
        Method::Mmh3Ch,
        Method::Fnv1aCh,
        Method::JumpFnv1aCh,
    ] {
        let p = Placement::new(method, carbon_nodes(), 9, false).unwrap();
        let mut out = Vec::new();
        for name in NAMES {
            p.place(name, &mut out);
            let mut sorted = out.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "{method} {name}");
        }
    }
}

#[test]
fn one_destination_or_all_is_broadcast() {
    let p = Placement::new(Method::CarbonCh, vec![node("h", 1, None)], 3, true).unwrap();
    let mut out = Vec::new();
    p.place("x", &mut out);
    assert_eq!(out, [0]);
    let p = Placement::new(Method::All, carbon_nodes(), 1, true).unwrap();
    p.place("x", &mut out);
    assert_eq!(out, [0, 1, 2, 3]);
}

#[test]
fn duplicate_ring_keys_are_refused() {
    let dup = vec![node("h", 2004, None), node("h", 2104, None)];
    let e = Placement::new(Method::CarbonCh, dup.clone(), 1, true).unwrap_err();
    assert!(e.to_string().contains("h:2004 and h:2104"), "{e}");
    assert!(e.to_string().contains("(host, instance)"), "{e}");
    // c-relay keys by (host, port): the same two are fine there, and for `all`.
    assert!(Placement::new(Method::Fnv1aCh, dup.clone(), 1, true).is_ok());
    assert!(Placement::new(Method::All, dup, 1, true).is_ok());
    let same_port = vec![node("h", 2004, Some("a")), node("h", 2004, Some("b"))];
    assert!(Placement::new(Method::CarbonCh, same_port.clone(), 1, true).is_ok());
    assert!(Placement::new(Method::JumpFnv1aCh, same_port, 1, true).is_err());
}

#[test]
fn python_repr_of_str() {
    assert_eq!(py_repr("127.0.0.1"), "'127.0.0.1'");
    assert_eq!(py_repr("it's"), "\"it's\"");
    assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
    assert_eq!(py_repr("t\tn\\"), "'t\\tn\\\\'");
    assert_eq!(py_repr("\x01"), "'\\x01'");
}

#[test]
fn hash_known_answers() {
    // FNV-1a 32 published vectors; jump hash: Lamping and Veach's reference outputs.
    assert_eq!(fnv1a32(b"", u32::from), 0x811c_9dc5);
    assert_eq!(fnv1a32(b"a", u32::from), 0xe40c_292c);
    assert_eq!(fnv1a32(b"foobar", u32::from), 0xbf9c_f968);
    assert_eq!(jump_bucket(0, 1), 0);
    for n in 1..50 {
        assert!(jump_bucket(0xdead_beef, n) < n);
    }
    // Signed bytes: c-relay differs from carbon only above 0x7f.
    assert_eq!(relay_fnv1a64(b"abc"), crate::hash::fnv1a64(b"abc"));
    assert_ne!(
        relay_fnv1a64("é".as_bytes()),
        crate::hash::fnv1a64("é".as_bytes())
    );
    assert_eq!(strtol_whole(" 12"), Some(12));
    assert_eq!(strtol_whole("12a"), None);
    assert_eq!(strtol_whole(""), Some(0));
}

#[test]
fn a_cached_placement_is_the_computed_one_for_every_placement() {
    let nodes = |n: u16| -> Vec<Node> {
        (1..=n)
            .map(|i| Node {
                host: format!("10.0.0.{i}"),
                port: 2004,
                instance: None,
            })
            .collect()
    };
    // Two placements used in turn on one thread: the cache must not mix them up.
    let a = Placement::new(Method::CarbonCh, nodes(3), 2, false).unwrap();
    let b = Placement::new(Method::JumpFnv1aCh, nodes(5), 1, false).unwrap();
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for i in 0..2000 {
            let name: std::sync::Arc<str> = format!("svc.h{i}.m{round}").into();
            for p in [&a, &b] {
                p.place(&name, &mut want);
                p.place_cached(&name, &mut got);
                assert_eq!(got, want, "{name}");
                p.place_cached(&name, &mut got);
                assert_eq!(got, want, "{name}, cached");
            }
        }
    }
}
