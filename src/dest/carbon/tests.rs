use super::*;

use std::sync::{Arc, Mutex};

use crate::datapoint::{OutPoint, OutValue};
use crate::dest::DestCounters;
use crate::drops::Stats;

/// What a scripted connection received, and when its writes fail.
#[derive(Default)]
pub(crate) struct Script {
    /// Bytes received, per connection made.
    pub received: Vec<Vec<u8>>,
    /// (connection, write number): that write takes this many bytes and fails.
    pub fail: Option<(usize, usize, usize)>,
}

/// A connection that records what is written into it and fails as its script says.
pub(crate) struct MockConn {
    script: Arc<Mutex<Script>>,
    index: usize,
    writes: usize,
}

impl MockConn {
    pub(crate) fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut s = self.script.lock().unwrap();
        let write = self.writes;
        self.writes += 1;
        match s.fail {
            Some((conn, w, took)) if conn == self.index && w == write => {
                s.received[self.index].extend_from_slice(&buf[..took.min(buf.len())]);
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            }
            _ => {
                s.received[self.index].extend_from_slice(buf);
                Ok(())
            }
        }
    }
}

fn batch(path: &str, ts: f64, n: usize) -> OutBatch {
    (0..n)
        .map(|i| OutPoint {
            path: format!("{path}.{i}").into(),
            timestamp: ts,
            value: OutValue::Float(i as f64),
            interval: None,
        })
        .collect::<Vec<_>>()
        .into()
}

/// Plaintext lines received over one connection.
fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Makes connections that record into `script` (one entry per connection made).
fn scripted(script: &Arc<Mutex<Script>>) -> impl FnMut() -> Connecting + use<> {
    let s = Arc::clone(script);
    move || {
        let mut g = s.lock().unwrap();
        g.received.push(Vec::new());
        let conn = Conn::Mock(MockConn {
            script: Arc::clone(&s),
            index: g.received.len() - 1,
            writes: 0,
        });
        Box::pin(async move { Ok(conn) }) as Connecting
    }
}

#[tokio::test]
async fn a_write_that_fails_is_sent_again_over_the_next_connection() {
    let cfg = CarbonDestination {
        target: CarbonTarget::Tcp("127.0.0.1:2003".into()),
        protocol: CarbonProtocol::Plaintext,
        max_datapoints_per_message: 500,
        unconfirmed_window: Duration::from_secs(60),
    };
    let stats = Arc::new(Stats::default());
    let counters = Arc::new(DestCounters::default());
    let link = Link {
        name: "127.0.0.1:2003".into(),
        counters: Arc::clone(&counters),
        unconfirmed: Arc::default(),
        stats: Arc::clone(&stats),
        fence: Default::default(),
    };
    // The first connection takes batch A, then fails batch B after 10 of its bytes.
    let script = Arc::new(Mutex::new(Script {
        fail: Some((0, 1, 10)),
        ..Script::default()
    }));
    let connect = scripted(&script);
    let (tx, rx) = mpsc::channel(8);
    let drain = CancellationToken::new();
    let task = tokio::spawn(run_with(link, cfg, rx, drain, connect));
    let a = batch("a", 60.0, 3);
    let b = batch("b", 120.0, 4);
    let (mut a_bytes, mut b_bytes) = (Vec::new(), Vec::new());
    plaintext::encode_lines(&a, &mut a_bytes);
    plaintext::encode_lines(&b, &mut b_bytes);
    counters.queued.fetch_add(7, Ordering::Relaxed);
    tx.send(a).await.unwrap();
    // B goes on its own write: wait until A was written.
    while counters.sent.load(Ordering::Relaxed) < 3 {
        tokio::task::yield_now().await;
    }
    tx.send(b).await.unwrap();
    drop(tx);
    task.await.unwrap();

    let s = script.lock().unwrap();
    assert_eq!(s.received.len(), 2, "one reconnection");
    // The first connection took A and 10 bytes of B; B goes again, whole, over the
    // next one.
    assert_eq!(s.received[0][..a_bytes.len()], a_bytes[..]);
    assert_eq!(s.received[0][a_bytes.len()..], b_bytes[..10]);
    assert_eq!(s.received[1], b_bytes);
    assert_eq!(lines(&s.received[1]).len(), 4);
    assert_eq!(
        counters.sent.load(Ordering::Relaxed),
        7,
        "each datapoint sent once"
    );
    assert_eq!(counters.connection_failures.load(Ordering::Relaxed), 1);
    // What the failed connection had taken within the window is unconfirmed.
    assert_eq!(counters.unconfirmed.load(Ordering::Relaxed), 3);
    assert_eq!(counters.queued.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_fence_leaves_out_at_the_write_what_the_node_may_no_longer_emit() {
    use crate::aggregate::gate::ShardGate;
    use crate::datapoint::Emitted;
    let cfg = CarbonDestination {
        target: CarbonTarget::Tcp("127.0.0.1:2003".into()),
        protocol: CarbonProtocol::Plaintext,
        max_datapoints_per_message: 500,
        unconfirmed_window: Duration::from_secs(60),
    };
    let counters = Arc::new(DestCounters::default());
    let link = Link {
        name: "127.0.0.1:2003".into(),
        counters: Arc::clone(&counters),
        unconfirmed: Arc::default(),
        stats: Arc::new(Stats::default()),
        fence: Default::default(),
    };
    // Shard 1 allowed for a minute, shard 0 not (its allowance ran out, or was revoked).
    let gate = Arc::new(ShardGate::new(2));
    gate.allow_until(1, crate::time::monotonic_ms() + 60_000);
    assert!(link.fence.set(Arc::clone(&gate)).is_ok());
    let point = |path: &str, shard: Option<u32>| OutPoint {
        path: path.into(),
        timestamp: 60.0,
        value: OutValue::Float(1.0),
        interval: shard.map(|k| Emitted {
            frequency: 60,
            again: false,
            shard: Some(k),
        }),
    };
    let script = Arc::new(Mutex::new(Script::default()));
    let connect = scripted(&script);
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(run_with(link, cfg, rx, CancellationToken::new(), connect));
    counters.queued.fetch_add(4, Ordering::Relaxed);
    let batch: OutBatch = vec![
        point("lost.shard", Some(0)),
        point("kept.shard", Some(1)),
        point("forwarded", None),
        point("lost.again", Some(0)),
    ]
    .into();
    tx.send(batch).await.unwrap();
    drop(tx);
    task.await.unwrap();
    let s = script.lock().unwrap();
    let got = lines(&s.received.concat());
    assert_eq!(got, ["kept.shard 1 60", "forwarded 1 60"]);
    assert_eq!(counters.fenced.load(Ordering::Relaxed), 2);
    assert_eq!(counters.sent.load(Ordering::Relaxed), 2);
    assert_eq!(counters.queued.load(Ordering::Relaxed), 0);
}
