//! Unit tests of `route`.
use super::*;
use crate::rules::aggregation::AggregationRules;
use crate::rules::rewrite::RewriteRules;
use std::path::{Path, PathBuf};

fn aggregation(rules: &str, rewrite: &str, forward_all: bool, cache: usize) -> Aggregation {
    Aggregation {
        rules_file: PathBuf::from("r"),
        rules: Arc::new(AggregationRules::parse(rules, Path::new("r")).unwrap()),
        rewrite_file: None,
        rewrite: Arc::new(RewriteRules::parse(rewrite, Path::new("w")).unwrap()),
        forward_all,
        max_intervals: 5,
        write_back_frequency: 0,
        route_cache_entries: cache,
        max_values_per_bucket: 10,
        lists: Arc::default(),
        timestamp_resolution: 0,
    }
}

#[test]
fn routes_rewrite_match_and_forward() {
    let r = Router::new(
        aggregation(
            "<h>.total (60) = sum <h>.*\nsame (60) = sum same\n",
            "[pre]\n^old = new\n[post]\n$ = .raw\n",
            true,
            100,
        ),
        4,
    );
    let route = r.compute("old1.cpu");
    assert_eq!(&*route.outputs[0].key.name, "new1.total");
    assert_eq!(
        route.outputs[0].index,
        (fnv1a64(b"new1.total") % 4) as usize
    );
    assert_eq!(route.forward.as_deref(), Some("new1.cpu.raw"));
    // An output equal to its input is not forwarded (carbon's FORWARD_ALL exception).
    assert!(r.compute("same").forward.is_none());
    // Unmatched paths are still forwarded.
    let route = r.compute("x");
    assert!(route.outputs.is_empty());
    assert_eq!(route.forward.as_deref(), Some("x.raw"));
}

#[test]
fn local_routes_are_bounded_and_agree_with_the_router() {
    let r = Router::new(aggregation("<x>.t (60) = sum <x>\n", "", false, 1 << 20), 2);
    let mut local = LocalRoutes::default();
    for i in 0..LOCAL_ROUTES + 10 {
        let p = format!("p{i}");
        let (route, _) = local.get(&r, &p, || Ok(())).unwrap();
        assert_eq!(&*route.outputs[0].key.name, format!("p{i}.t"));
        assert!(local.map.len() <= LOCAL_ROUTES);
    }
    // A refused new path is not cached: the check runs again next time.
    let refused = local.get(&r, "new", || Err(crate::reason::DropReason::SeriesLimit));
    assert_eq!(refused.err(), Some(crate::reason::DropReason::SeriesLimit));
    assert!(local.get(&r, "new", || Ok(())).is_ok());
}

#[test]
fn private_caches_share_one_byte_budget() {
    let r = Router::new(aggregation("<x>.t (60) = sum <x>\n", "", false, 1 << 20), 2);
    let budget = RouteBudget::new(100 * (ENTRY_BYTES + 6));
    let mut a = LocalRoutes::new(Arc::clone(&budget));
    let mut b = LocalRoutes::new(Arc::clone(&budget));
    for i in 0..1000 {
        for (c, tag) in [(&mut a, "a"), (&mut b, "b")] {
            let p = format!("{tag}{i:05}");
            let (route, _) = c.get(&r, &p, || Ok(())).unwrap();
            assert_eq!(&*route.outputs[0].key.name, format!("{p}.t"));
        }
        assert!(budget.left() >= 0);
    }
    assert_eq!(
        a.map.len() + b.map.len(),
        100,
        "exactly the budget's worth is kept"
    );
    drop(a);
    b.clear();
    assert_eq!(budget.left(), (100 * (ENTRY_BYTES + 6)) as isize);
}

#[test]
fn cache_is_bounded() {
    let r = Router::new(aggregation("t (60) = sum *\n", "", false, 10), 2);
    for i in 0..100 {
        let n = r.lookup(&format!("p{i}"), || Ok(())).unwrap().outputs.len();
        assert_eq!(n, 1);
        assert!(r.cached() <= 10);
    }
}

#[test]
fn output_keys_are_shared_and_released() {
    let r = Router::new(aggregation("<h>.total (60) = sum <h>.*\n", "", false, 4), 2);
    let a = r.lookup("h1.cpu", || Ok(())).unwrap();
    let b = r.lookup("h1.mem", || Ok(())).unwrap();
    // Two paths feeding one output series share its key.
    assert!(Arc::ptr_eq(&a.outputs[0].key, &b.outputs[0].key));
    assert_eq!(r.interned(), 1);
    // A key still held (by a route outside the cache, or a worker) survives emptying
    // the cache; one nobody holds does not.
    let held = Arc::clone(&a.outputs[0].key);
    drop((a, b));
    for i in 0..5 {
        r.lookup(&format!("x{i}.cpu"), || Ok(())).unwrap();
    }
    assert!(r.keys.contains_key("h1.total"), "held key was dropped");
    drop(held);
    for i in 0..5 {
        r.lookup(&format!("y{i}.cpu"), || Ok(())).unwrap();
    }
    assert!(!r.keys.contains_key("h1.total"), "unused key was kept");
    assert!(r.interned() <= 8);
}

#[test]
fn listed_paths_are_filtered_before_admission_and_rules() {
    let d = tempfile::tempdir().unwrap();
    let black = d.path().join("blacklist.conf");
    std::fs::write(&black, "secret\n").unwrap();
    let mut a = aggregation("<h>.total (60) = sum <h>.*\n", "", true, 100);
    a.lists = Arc::new(crate::rules::lists::Lists::load(Some(&black), None).unwrap());
    let r = Router::new(a, 2);
    let route = r
        .lookup("web.secret", || panic!("a filtered path is not admitted"))
        .unwrap();
    assert_eq!(route.filtered, Some(crate::reason::DropReason::Blacklist));
    assert!(route.outputs.is_empty() && route.forward.is_none());
    let route = r.lookup("web.cpu", || Ok(())).unwrap();
    assert_eq!(route.filtered, None);
    assert_eq!(&*route.outputs[0].key.name, "web.total");
    // Over the tenant's series limit: refused before any rule is matched.
    let e = r.lookup("db.cpu", || Err(crate::reason::DropReason::SeriesLimit));
    assert_eq!(e.unwrap_err(), crate::reason::DropReason::SeriesLimit);
}

#[test]
fn a_cutover_routes_by_the_rules_in_force_at_each_timestamp_and_keeps_two_earlier_sets() {
    let set = |out: &str| {
        Router::new(
            aggregation(&format!("{out} (60) = sum a.*\n"), "", false, 100),
            2,
        )
    };
    let names = |r: &Router, ts: f64| -> Vec<String> {
        let route = r.for_timestamp(ts).compute("a.x");
        route
            .outputs
            .iter()
            .map(|o| o.key.name.to_string())
            .collect()
    };
    let r0 = Arc::new(set("v0"));
    assert_eq!(r0.cutover_at(), f64::NEG_INFINITY);
    let r1 = Arc::new(set("v1").cut_over(600, &r0));
    assert_eq!(r1.cutover_at(), 600.0);
    assert_eq!(names(&r1, 599.9), ["v0"]);
    assert_eq!(names(&r1, 600.0), ["v1"]);
    let r2 = Arc::new(set("v2").cut_over(1200, &r1));
    assert_eq!(names(&r2, 0.0), ["v0"]);
    assert_eq!(names(&r2, 900.0), ["v1"]);
    assert_eq!(names(&r2, 1200.0), ["v2"]);
    // A third change lets go of the oldest set: its datapoints go to the next one.
    let r3 = set("v3").cut_over(1800, &r2);
    assert_eq!(names(&r3, 0.0), ["v1"]);
    assert_eq!(names(&r3, 1500.0), ["v2"]);
    assert_eq!(names(&r3, 1800.0), ["v3"]);
    // A reload that changes no rule keeps the pending cutover.
    let same = set("v3").keeping_cutover_of(&r3);
    assert_eq!(same.cutover_at(), 1800.0);
    assert_eq!(names(&same, 1500.0), ["v2"]);
}
