//! Tag-aware aggregation rules end to end: the real aggd binary, tagged input over carbon
//! plaintext and CPython's pickle with the tags in shuffled orders, a real carbon-cache
//! (Debian's graphite-carbon) as the destination, read back where carbon stores tagged
//! series. Requires `tests/install-deps.sh`.

use std::time::{Duration, Instant};

use aggd_testkit::carbon::CarbonCache;
use aggd_testkit::edge::{addr_of, send_lines, wait_exit};
use aggd_testkit::*;

/// `name;k=v…` with the tags in an order picked by `seed` (a rotation, then maybe reversed).
fn shuffled(name: &str, tags: &[(&str, String)], seed: usize) -> String {
    let mut t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let n = t.len();
    t.rotate_left(seed % n);
    if seed % 3 == 1 {
        t.reverse();
    }
    format!("{name};{}", t.join(";"))
}

#[test]
fn tagged_series_in_any_tag_order_are_summed_by_dc_exactly() {
    let cc = CarbonCache::start();
    let dir = tempdir("tags-e2e");
    let cfg = write_config(
        &dir,
        "# tag-aware rules next to a carbon rule\n\
         cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n\
         cpu.hosts;dc=<dc>;env=<env> (60) = count cpu.usage;dc=<dc>;env=<env>;host=*\n\
         web.all.requests (60) = sum web.*.requests\n",
        "",
        &format!("127.0.0.1:{}", cc.port),
        "pickle",
    );
    let (mut child, addrs) = spawn_run(&["-c", cfg.to_str().unwrap()], 3);
    let plaintext = addr_of(&addrs, "plaintext/tcp");
    let pickle = addr_of(&addrs, "pickle/tcp");

    let base = previous_bucket(60);
    let dcs = ["eu.west", "us"];
    let mut want_sum = std::collections::BTreeMap::<&str, f64>::new();
    let mut want_count = std::collections::BTreeMap::<&str, f64>::new();
    let (mut lines, mut points) = (String::new(), Vec::new());
    let mut seed = 0;
    for (d, dc) in dcs.iter().enumerate() {
        for h in 0..12 {
            for sample in 0..3 {
                seed += 1;
                let value = (d * 100 + h * 3 + sample) as f64 + 0.25;
                let tags = [
                    ("dc", dc.to_string()),
                    ("host", format!("h{h}.rack{}", h % 2)),
                    ("env", "prod".to_string()),
                    ("role", format!("r{}", h % 3)),
                ];
                let name = shuffled("cpu.usage", &tags, seed);
                let ts = (base + sample as i64 * 10) as f64;
                if seed % 2 == 0 {
                    lines.push_str(&format!("{name} {value} {ts}\n"));
                } else {
                    points.push((name, ts, value));
                }
                *want_sum.entry(dc).or_default() += value;
                *want_count.entry(dc).or_default() += 1.0;
            }
        }
    }
    // Not summed: no host tag; another name; a name that does not parse as tagged.
    lines.push_str(&format!("cpu.usage;dc=us;env=prod 1000 {base}\n"));
    lines.push_str(&format!("cpu.idle;dc=us;host=a;env=prod 1000 {base}\n"));
    lines.push_str(&format!("cpu.usage;dc=us;host=;env=prod 1000 {base}\n"));
    for h in 0..4 {
        lines.push_str(&format!("web.h{h}.requests {} {base}\n", h + 1));
    }
    send_lines(plaintext, &lines);
    python_pickle_send(pickle, 2, &points);

    let paths = [
        "cpu.total;dc=eu.west",
        "cpu.total;dc=us",
        "cpu.hosts;dc=eu.west;env=prod",
        "cpu.hosts;dc=us;env=prod",
        "web.all.requests",
    ];
    let want = vec![
        Some(want_sum["eu.west"]),
        Some(want_sum["us"]),
        Some(want_count["eu.west"]),
        Some(want_count["us"]),
        Some(10.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = cc.fetch(&paths, base);
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "whisper holds {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The tag order never split a series: one file per output, none per input order.
    let tagged = cc.dir.join("storage/whisper/_tagged");
    let files = walk(&tagged);
    assert_eq!(
        files, 4,
        "one whisper file per tagged output under {tagged:?}"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    usize::from(p.extension().is_some_and(|x| x == "wsp"))
                }
            })
            .sum()
    })
}
