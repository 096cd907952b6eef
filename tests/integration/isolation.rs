//! Poison records and slow destinations: one bad record or one slow downstream never
//! costs anyone else anything.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use aggd::reason::DropReason;
use aggd_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_one_path_costs_nothing_else() {
    let (capture, dir, cfg) = with_downstream(
        "poison",
        "agg.<g>.sum (60) = sum in.<g>.*\nagg.<g>.count (60) = count in.<g>.*\n",
        "pickle",
    );
    append_config(&cfg, "[quarantine]\nfile = \"quarantine.log\"\n");
    let mut config = aggd::config::Config::load(&cfg).unwrap();
    config.faults.panic_on_series = Some("agg.poison.sum".into());
    let server = start_aggd_config(config).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    // Poison datapoints are interleaved with good ones, so they share batches.
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut b = String::new();
        for i in 0..2000 {
            let g = ["a", "b", "poison", "c"][i % 4];
            b.push_str(&format!("in.{g}.h{} {} {base}\n", i % 9, i % 10));
        }
        s.write_all(b.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    let expect = |g: usize| -> (f64, f64) {
        let vals: Vec<f64> = (0..2000)
            .filter(|i| i % 4 == g)
            .map(|i| (i % 10) as f64)
            .collect();
        (vals.iter().sum(), vals.len() as f64)
    };
    capture.wait_for("the healthy series", |got| {
        [("a", 0), ("b", 1), ("c", 3)].iter().all(|(g, i)| {
            let (sum, n) = expect(*i);
            got.get(&(format!("agg.{g}.sum"), base)) == Some(&sum)
                && got.get(&(format!("agg.{g}.count"), base)) == Some(&n)
        })
    });
    // The poison series' other rule is unaffected too; only the panicking datapoints go.
    let (_, n) = expect(2);
    capture.wait_for("agg.poison.count", |got| {
        got.get(&("agg.poison.count".into(), base)) == Some(&n)
    });
    let stats = server.stats();
    assert_eq!(stats.drops(DropReason::Panic), n as u64);
    assert_eq!(stats.total_drops(), n as u64);
    assert!(
        server.workers_healthy(Duration::from_secs(1)),
        "workers keep making progress"
    );
    // More input after the panics is still aggregated.
    let addr2 = addr;
    tokio::task::spawn_blocking(move || {
        writeln!(TcpStream::connect(addr2).unwrap(), "in.late.h1 5 {base}").unwrap();
    })
    .await
    .unwrap();
    capture.wait_for("later input", |got| {
        got.get(&("agg.late.sum".into(), base)) == Some(&5.0)
    });
    server.shutdown().await;
    let q = std::fs::read_to_string(dir.join("quarantine.log")).unwrap();
    assert_eq!(
        q.lines()
            .filter(|l| l.contains(" panic agg.poison.sum "))
            .count(),
        n as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_destination_costs_the_other_nothing() {
    let fast = Capture::start("pickle");
    // The slow destination accepts, then reads 100 bytes a second, through a 4 KiB receive
    // buffer, so aggd's sender to it really blocks.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let slow: TcpListener = sock.listen(8).unwrap().into_std().unwrap();
    slow.set_nonblocking(false).unwrap();
    let slow_addr = slow.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in slow.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 10];
                while s.read(&mut buf).is_ok_and(|n| n > 0) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    let dir = tempdir("slow");
    let cfg = write_config(
        &dir,
        "out.<h> (60) = sum in.<h>\n",
        "",
        &fast.addr.to_string(),
        "pickle",
    );
    append_config(
        &cfg,
        &format!(
            "[[destination]]\naddress = \"{slow_addr}\"\nprotocol = \"pickle\"\nqueue_datapoints = 100000\n\
         [routing]\nmethod = \"all\"\n\
         [journal]\ndir = \"journal\"\nmin_free_disk = 0\n"
        ),
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let series = 80_000;
    // Three rounds re-emit every interval: ~8 MB for the slow destination, more than a
    // socket can buffer (TCP send buffers grow to 4 MB here).
    for round in 1..=3 {
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut b = String::new();
            for h in 0..series {
                b.push_str(&format!("in.h{h} {} {base}\n", h % 100));
            }
            s.write_all(b.as_bytes()).unwrap();
        })
        .await
        .unwrap();
        // The fast destination gets every aggregate while the slow one is stuck.
        fast.wait_for("all aggregates at the fast destination", |got| {
            got.len() == series
                && (0..series).step_by(997).all(|h| {
                    got.get(&(format!("out.h{h}"), base)) == Some(&((round * (h % 100)) as f64))
                })
        });
    }
    let dests = server.destinations();
    let (name, slow_c) = dests.counters().nth(1).unwrap();
    assert_eq!(name, slow_addr.to_string());
    let (_, fast_c) = dests.counters().next().unwrap();
    assert_eq!(fast_c.full_queue_drops.load(Ordering::Relaxed), 0);
    assert!(
        slow_c.queued.load(Ordering::Relaxed) > 0,
        "the slow sender is blocked"
    );
    let stats = server.stats();
    assert_eq!(
        stats.drops(DropReason::DestinationFull),
        slow_c.full_queue_drops.load(Ordering::Relaxed)
    );
    server.shutdown().await;
    // What it could not take is counted: overflow while running, the rest at shutdown.
    let lost = stats.drops(DropReason::DestinationFull) + stats.drops(DropReason::DestinationDown);
    assert!(stats.drops(DropReason::DestinationDown) > 0);
    assert_eq!(
        lost + slow_c.sent.load(Ordering::Relaxed),
        3 * series as u64,
        "every aggregate for the slow destination was sent or counted"
    );
    // Its losses are ledgered: what overflowed, and what was still queued at shutdown.
    let (entries, _) = aggd::ledger::read(&dir.join("journal/ledger.jsonl")).unwrap();
    let count = |r: &str| {
        entries
            .iter()
            .filter(|e| e.reason == r)
            .map(|e| e.count)
            .sum::<u64>()
    };
    assert_eq!(
        count("destination_full"),
        stats.drops(DropReason::DestinationFull)
    );
    assert_eq!(
        count("destination_down"),
        stats.drops(DropReason::DestinationDown)
    );
    assert!(
        entries
            .iter()
            .all(|e| e.from <= base as f64 && e.to >= base as f64)
    );
}
