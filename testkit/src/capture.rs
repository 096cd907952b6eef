//! A carbon downstream on a real socket that records what aggd sends.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a downstream received: the last value per (path, timestamp), as whisper keeps it,
/// and how many datapoints arrived in all.
#[derive(Default, Debug)]
pub struct Received {
    pub last: BTreeMap<(String, i64), f64>,
    pub datapoints: usize,
    /// Every datapoint in arrival order: path, timestamp, value, and when it arrived.
    pub history: Vec<(String, i64, f64, Instant)>,
    /// What aggd sent that is not the protocol (a failed check in a connection thread),
    /// reported by [`Capture::wait_for`] and [`Capture::snapshot`] at once.
    pub errors: Vec<String>,
}

/// What a [`Capture`] does with its first connection.
#[derive(Clone, Copy)]
enum First {
    /// Serve it like the others.
    Serve,
    /// Close it at once.
    Close,
    /// Read a byte, wait, then reset it.
    Reset,
}

/// A carbon downstream on 127.0.0.1:0 that decodes pickle frames with serde-pickle (the
/// oracle) or plaintext lines, and records everything it receives.
pub struct Capture {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections read to their end (or dropped), everything they carried recorded.
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts its connection closed when dropped (also when the connection's thread panics).
struct Closed(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn record(rx: &Mutex<Received>, path: String, ts: f64, value: f64) {
    let mut r = rx.lock().unwrap();
    r.datapoints += 1;
    r.history
        .push((path.clone(), ts as i64, value, Instant::now()));
    r.last.insert((path, ts as i64), value);
}

fn number(v: &serde_pickle::Value) -> f64 {
    match v {
        serde_pickle::Value::F64(f) => *f,
        serde_pickle::Value::I64(i) => *i as f64,
        other => panic!("not a number: {other:?}"),
    }
}

fn serve_pickle(mut s: std::net::TcpStream, rx: Arc<Mutex<Received>>) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() {
            return; // the sender went away mid-frame (a killed aggd)
        }
        assert_eq!(&body[..2], b"\x80\x02", "aggd must send pickle protocol 2");
        let v = serde_pickle::value_from_slice(&body, serde_pickle::DeOptions::new()).unwrap();
        let serde_pickle::Value::List(items) = v else {
            panic!("frame is not a list")
        };
        for it in items {
            let serde_pickle::Value::Tuple(pair) = it else {
                panic!("element not a tuple")
            };
            let serde_pickle::Value::String(path) = &pair[0] else {
                panic!("path not str")
            };
            let serde_pickle::Value::Tuple(tv) = &pair[1] else {
                panic!("(ts, v) not a tuple")
            };
            record(&rx, path.clone(), number(&tv[0]), number(&tv[1]));
        }
    }
}

fn serve_plaintext(s: std::net::TcpStream, rx: Arc<Mutex<Received>>) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return, // cut by a sender that went away
            Ok(_) => {}
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "bad line from aggd: {line:?}");
        record(
            &rx,
            f[0].to_string(),
            f[2].parse().unwrap(),
            f[1].parse().unwrap(),
        );
    }
}

impl Capture {
    /// Starts a capturing downstream speaking `protocol` ("pickle" or "plaintext").
    pub fn start(protocol: &'static str) -> Capture {
        Capture::start_with(protocol, false)
    }

    /// Like [`Capture::start`]; with `drop_first`, the first connection is closed at once
    /// (a downstream restart).
    pub fn start_with(protocol: &'static str, drop_first: bool) -> Capture {
        let first = if drop_first {
            First::Close
        } else {
            First::Serve
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Capture::serve(l, protocol, first)
    }

    /// A capturing downstream on an already-bound listener (to appear on a port aggd
    /// already tries).
    pub fn start_on(l: TcpListener, protocol: &'static str) -> Capture {
        Capture::serve(l, protocol, First::Serve)
    }

    /// A downstream that fails aggd's first write: it accepts with a 4 KiB receive buffer,
    /// reads one byte, waits 300 ms (so aggd's write blocks on the full window), then
    /// resets the connection. Later connections are captured as usual.
    pub fn start_resetting_first(protocol: &'static str) -> Capture {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.set_recv_buffer_size(4096).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(16).unwrap();
        Capture::serve(l.into(), protocol, First::Reset)
    }

    fn serve(l: TcpListener, protocol: &'static str, first: First) -> Capture {
        let addr = l.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rx = received.clone();
        let conns = connections.clone();
        let done = closed.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match first {
                    First::Close if n == 0 => {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        continue;
                    }
                    First::Reset if n == 0 => {
                        let _ = s.read_exact(&mut [0u8; 1]);
                        std::thread::sleep(Duration::from_millis(300));
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        drop(s);
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        continue;
                    }
                    _ => {}
                }
                let rx = rx.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let _closed = Closed(done);
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match protocol {
                            "pickle" => serve_pickle(s, rx.clone()),
                            _ => serve_plaintext(s, rx.clone()),
                        }));
                    if let Err(p) = r {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| {
                                p.downcast_ref::<&str>()
                                    .map(std::string::ToString::to_string)
                            })
                            .unwrap_or_else(|| "a panic".into());
                        rx.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .errors
                            .push(msg);
                    }
                });
            }
        });
        Capture {
            addr,
            received,
            connections,
            closed,
        }
    }

    /// Waits (up to 20 s) until every connection accepted so far was read to its end:
    /// once the sender has exited, everything it sent is then recorded, so what is absent
    /// was never sent.
    pub fn wait_all_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ord = std::sync::atomic::Ordering::SeqCst;
        while self.closed.load(ord) < self.connections.load(ord) {
            assert!(
                Instant::now() < deadline,
                "{} of {} downstream connections still open",
                self.connections.load(ord) - self.closed.load(ord),
                self.connections.load(ord)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last value received for `path` at `ts`.
    pub fn value(&self, path: &str, ts: i64) -> Option<f64> {
        self.received
            .lock()
            .unwrap()
            .last
            .get(&(path.to_string(), ts))
            .copied()
    }

    /// All (path, ts) → value received; fails the test if aggd sent anything that is not
    /// the protocol.
    pub fn snapshot(&self) -> BTreeMap<(String, i64), f64> {
        let r = self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(
            r.errors.is_empty(),
            "downstream protocol errors: {:?}",
            r.errors
        );
        r.last.clone()
    }

    /// Waits (up to 20 s) until `pred` holds for the received values.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&BTreeMap<(String, i64), f64>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.snapshot()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; downstream has {:?}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
