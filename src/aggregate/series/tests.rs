//! Unit tests of `series`.
use super::*;
use crate::hash::fnv1a64;

fn key(name: &str, method: &str, frequency: u32) -> Arc<SeriesKey> {
    Arc::new(SeriesKey {
        name: name.into(),
        hash: fnv1a64(name.as_bytes()),
        method: Method::parse(method).unwrap(),
        frequency,
    })
}

fn settings(wbf: u32) -> Settings {
    Settings {
        max_intervals: 5,
        write_back_frequency: wbf,
        max_values_per_bucket: 3,
    }
}

fn sweep(t: &mut SeriesTable, now: f64) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    t.sweep(now, false, &mut out);
    let mut v: Vec<_> = out
        .into_iter()
        .map(|p| (p.path.to_string(), p.timestamp, p.value.as_f64()))
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

#[test]
fn floor_matches_python_modulo() {
    let cases = [
        (1_700_000_039.999_999_8, 60.0),
        (1_700_000_040.0, 60.0),
        (-100.0, 60.0),
        (-2.0, 60.0),
        (0.0, 10.0),
        (119.999_999_999_999_99, 60.0),
        (1e15 + 0.5, 7.0),
    ];
    for (t, f) in cases {
        assert_eq!(floor_to(t, f), t - t.rem_euclid(f), "{t} {f}");
    }
    // Every ulp around interval boundaries of realistic timestamps.
    for k in [28_333_333.0f64, 28_333_334.0] {
        let mut t = k * 60.0;
        for _ in 0..64 {
            t = t.next_down();
        }
        for _ in 0..128 {
            assert_eq!(floor_to(t, 60.0), t - t.rem_euclid(60.0), "{t}");
            t = t.next_up();
        }
    }
}

#[test]
fn bucket_alignment_and_emission_after_interval() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "sum", 60);
    let now = 1_000_000.0; // 1_000_000 mod 60 = 40: now_bucket = 999_960
    t.add(&k, 999_960.0, 1.0, now).unwrap();
    t.add(&k, 999_999.5, 2.0, now).unwrap();
    t.add(&k, 999_900.0, 5.0, now).unwrap();
    // The current interval is open: only the previous one is emitted.
    assert_eq!(sweep(&mut t, now), [("s".into(), 999_900.0, 5.0)]);
    assert_eq!(sweep(&mut t, now + 1.0), []);
    // Once over, the current one is emitted with the full aggregate.
    assert_eq!(sweep(&mut t, 1_000_020.0), [("s".into(), 999_960.0, 3.0)]);
}

#[test]
fn re_emission_is_over_all_values() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "avg", 10);
    let now = 1000.0;
    t.add(&k, 980.0, 3.0, now).unwrap();
    assert_eq!(sweep(&mut t, now), [("s".into(), 980.0, 3.0)]);
    t.add(&k, 985.0, 13.0, now + 1.0).unwrap();
    assert_eq!(sweep(&mut t, now + 1.0), [("s".into(), 980.0, 8.0)]);
    // Nothing new: nothing re-sent.
    assert_eq!(sweep(&mut t, now + 2.0), []);
}

#[test]
fn an_emission_says_its_interval_and_whether_it_corrects_one() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "sum", 10);
    let emitted = |t: &mut SeriesTable, now| {
        let mut out = Vec::new();
        t.sweep(now, false, &mut out);
        out.into_iter()
            .map(|p| (p.timestamp, p.value.as_f64(), p.interval))
            .collect::<Vec<_>>()
    };
    let first = Some(Emitted {
        frequency: 10,
        again: false,
        shard: None,
    });
    let again = Some(Emitted {
        frequency: 10,
        again: true,
        shard: None,
    });
    t.add(&k, 980.0, 3.0, 1000.0).unwrap();
    assert_eq!(emitted(&mut t, 1000.0), [(980.0, 3.0, first)]);
    t.add(&k, 981.0, 5.0, 1001.0).unwrap();
    assert_eq!(emitted(&mut t, 1001.0), [(980.0, 8.0, again)]);
    // A value delivered before a clean restart (rebuilt not dirty) makes the next
    // emission of its interval a correction too.
    t.add_as(&k, 990.0, 1.0, 1001.0, false).unwrap();
    t.add(&k, 991.0, 1.0, 1001.0).unwrap();
    t.add(&k, 970.0, 4.0, 1001.0).unwrap();
    assert_eq!(
        emitted(&mut t, 1001.0),
        [(970.0, 4.0, first), (990.0, 2.0, again)]
    );
}

#[test]
fn too_old_too_new_and_expiry() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "sum", 10);
    let now = 1000.0;
    assert_eq!(t.add(&k, 949.0, 1.0, now), Err(DropReason::TooOld));
    assert_eq!(t.add(&k, 950.0, 1.0, now), Ok(()));
    assert_eq!(t.add(&k, 1059.0, 1.0, now), Ok(()));
    assert_eq!(t.add(&k, 1060.0, 1.0, now), Err(DropReason::TooNew));
    assert_eq!(t.len(), 1);
    sweep(&mut t, now);
    // At 1010 the 950 bucket falls out of the window and is deleted; 1050 stays.
    sweep(&mut t, 1010.0);
    assert_eq!(t.add(&k, 950.0, 1.0, 1010.0), Err(DropReason::TooOld));
    // After the future bucket is over and expired, the series is gone.
    assert_eq!(sweep(&mut t, 1060.0), [("s".into(), 1050.0, 1.0)]);
    sweep(&mut t, 1200.0);
    assert!(t.is_empty());
}

#[test]
fn a_rebuild_that_an_interval_leaves_the_window_during_does_not_emit_its_part() {
    // The nemesis soak (seed 2026, 30 minutes): a shard rebuilt just as an interval left
    // the window took the interval's first datapoints, skipped the rest as too old, and
    // emitted the part, overwriting the full value emitted before.
    let k = key("s", "sum", 10);
    let run = |rebuild: bool| {
        let mut t = SeriesTable::new(settings(0));
        let mut add = |ts, v, now| match rebuild {
            true => t.add_rebuilt(&k, ts, v, now, true),
            false => t.add(&k, ts, v, now),
        };
        // At 1009 the window starts at 950: the 950 interval is in it, and so is 1000.
        assert_eq!(add(951.0, 1.0, 1009.0), Ok(()));
        assert_eq!(add(1001.0, 5.0, 1009.0), Ok(()));
        // At 1010 it starts at 960.
        assert_eq!(add(952.0, 2.0, 1010.0), Err(DropReason::TooOld));
        assert_eq!(add(953.0, 4.0, 1010.0), Err(DropReason::TooOld));
        sweep(&mut t, 1010.5)
    };
    assert_eq!(run(true), [("s".into(), 1000.0, 5.0)]);
    // Live input keeps carbon's rule: what was accepted is emitted (the rest was counted
    // and ledgered as too_old).
    assert_eq!(
        run(false),
        [("s".into(), 950.0, 1.0), ("s".into(), 1000.0, 5.0)]
    );
}

#[test]
fn negative_and_fractional_timestamps_floor() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "count", 60);
    t.add(&k, -100.0, 1.0, -30.0).unwrap();
    t.add(&k, -61.5, 1.0, -30.0).unwrap();
    t.add(&k, -0.5, 1.0, -30.0).unwrap();
    assert_eq!(
        sweep(&mut t, 0.0),
        [("s".into(), -120.0, 2.0), ("s".into(), -60.0, 1.0)]
    );
}

#[test]
fn write_back_frequency_emits_partials() {
    let mut t = SeriesTable::new(settings(2));
    let k = key("s", "sum", 60);
    let now = 960.0;
    t.add(&k, 960.0, 1.0, now).unwrap();
    assert_eq!(sweep(&mut t, now + 1.0), []);
    assert_eq!(sweep(&mut t, now + 2.0), [("s".into(), 960.0, 1.0)]);
    t.add(&k, 961.0, 2.0, now + 3.0).unwrap();
    assert_eq!(sweep(&mut t, now + 3.0), []);
    assert_eq!(sweep(&mut t, now + 4.0), [("s".into(), 960.0, 3.0)]);
}

#[test]
fn forced_sweep_flushes_open_buckets() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "max", 60);
    t.add(&k, 965.0, 4.0, 970.0).unwrap();
    let mut out = Vec::new();
    t.sweep(970.0, true, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value, OutValue::Float(4.0));
}

#[test]
fn percentile_buckets_are_bounded() {
    let mut t = SeriesTable::new(settings(0));
    let k = key("s", "p90", 60);
    for _ in 0..3 {
        t.add(&k, 960.0, 1.0, 970.0).unwrap();
    }
    assert_eq!(t.add(&k, 960.0, 1.0, 970.0), Err(DropReason::BucketFull));
    // Streaming methods are not bounded by it.
    let k = key("c", "count", 60);
    for _ in 0..10 {
        t.add(&k, 960.0, 1.0, 970.0).unwrap();
    }
}

#[test]
fn first_rule_decides_method() {
    let mut t = SeriesTable::new(settings(0));
    t.add(&key("s", "sum", 60), 900.0, 2.0, 970.0).unwrap();
    t.add(&key("s", "max", 60), 900.0, 5.0, 970.0).unwrap();
    assert_eq!(sweep(&mut t, 970.0), [("s".into(), 900.0, 7.0)]);
}

#[test]
fn floor_without_libm_agrees_with_libm() {
    let mut xs = vec![
        0.0,
        0.5,
        0.999_999_9,
        1.0,
        -0.5,
        -1.0,
        -1.5,
        -2.0,
        59.999,
        1.7e9,
        -1.7e9 - 0.25,
        4_503_599_627_370_495.5,
        -4_503_599_627_370_495.5,
        4.6e15,
        -9.3e18,
        1e300,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let mut x = 0.37_f64;
    for _ in 0..10_000 {
        x = (x * 7919.0 + 0.123) % 3.3e9 - 1.6e9;
        xs.push(x);
        xs.push(x / 60.0);
    }
    for x in xs {
        assert_eq!(floor(x), x.floor(), "floor({x})");
    }
    assert!(floor(f64::NAN).is_nan());
}

#[test]
fn the_last_bucket_shortcut_files_every_datapoint_where_the_formula_does() {
    // Datapoints in and out of order, on and around interval boundaries, with `now`
    // moving on every few: the table must hold exactly what the modulo formula and the
    // window say, datapoint by datapoint.
    let k = key("s", "sum", 60);
    let mut t = SeriesTable::new(settings(0));
    let mut model: std::collections::BTreeMap<i64, f64> = Default::default();
    let mut x: u64 = 7;
    let mut now = 1_000_000.0;
    for i in 0..20_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let r = (x >> 33) as f64 / f64::from(1u32 << 31);
        if i % 7 == 0 {
            now += 0.5;
        }
        let ts = match i % 4 {
            0 => now - 700.0 + r * 1400.0,
            1 => floor_to(now, 60.0) - 60.0 * (r * 8.0).floor(),
            2 => floor_to(now, 60.0) - 60.0 * (r * 8.0).floor() - 1e-7,
            _ => now - r * 30.0,
        };
        let start = floor_to(ts, 60.0);
        let now_bucket = floor_to(now, 60.0);
        let want = if start < now_bucket - 300.0 {
            Err(DropReason::TooOld)
        } else if start > now_bucket + 300.0 {
            Err(DropReason::TooNew)
        } else {
            *model.entry(start as i64).or_default() += 1.0;
            Ok(())
        };
        assert_eq!(t.add(&k, ts, 1.0, now), want, "ts {ts} now {now}");
    }
    let mut got = std::collections::BTreeMap::new();
    t.drain_all(|_, start, v| {
        got.insert(start, v.as_f64());
    });
    assert_eq!(got, model);
}
