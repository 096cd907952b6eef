//! End-to-end with a real carbon-cache (Debian's graphite-carbon) as the destination: the
//! aggregates aggd sends as pickle land in whisper files, read back with Debian's whisper
//! module. Requires `tests/install-deps.sh` (or `apt-get install graphite-carbon`).

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aggd_testkit::carbon::CarbonCache;
use aggd_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_land_in_whisper() {
    let cc = tokio::task::spawn_blocking(CarbonCache::start)
        .await
        .unwrap();
    let dir = tempdir("to-carbon");
    let cfg = write_config(
        &dir,
        "web.all.requests (60) = sum web.*.requests\n\
         web.all.requests_count (60) = count web.*.requests\n\
         web.all.latency (60) = avg web.*.latency\n\
         web.all.latency_max (60) = max web.*.latency\n\
         web.all.latency_p95 (60) = p95 web.*.latency\n",
        "",
        &format!("127.0.0.1:{}", cc.port),
        "pickle",
    );
    let server = start_aggd(&cfg).await;
    let base = previous_bucket(60);
    let addr = server.addr("plaintext/tcp").unwrap();
    let send = move |lines: String| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(lines.as_bytes()).unwrap();
    };
    let mut first = String::new();
    for h in 0..10 {
        first.push_str(&format!("web.h{h}.requests {} {}\n", h + 1, base + h));
        first.push_str(&format!(
            "web.h{h}.latency {} {}\n",
            (h * 10) as f64 + 0.5,
            base + 30
        ));
    }
    tokio::task::spawn_blocking(move || send(first))
        .await
        .unwrap();

    let paths = [
        "web.all.requests",
        "web.all.requests_count",
        "web.all.latency",
        "web.all.latency_max",
        "web.all.latency_p95",
    ];
    // latency values 0.5, 10.5, …, 90.5: avg 45.5, max 90.5, p95 rank 8.55 → 86.0.
    let p95 = 80.5 * (9.0 - 8.55) + 90.5 * (8.55 - 8.0);
    let want_first = [Some(55.0), Some(10.0), Some(45.5), Some(90.5), Some(p95)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cc.fetch(&paths, base);
        if got == want_first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "whisper holds {got:?}, want {want_first:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // More data for the same interval: aggd re-emits the full aggregate, and whisper keeps
    // the last write.
    let more = format!("web.h10.requests 100 {}\n", base + 59);
    let send2 = move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(more.as_bytes()).unwrap();
    };
    tokio::task::spawn_blocking(send2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cc.fetch(&paths[..2], base);
        if got == [Some(155.0), Some(11.0)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "whisper holds {got:?} after re-emission"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}
