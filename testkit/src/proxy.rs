//! A TCP proxy a test can cut and restore: a network partition between one process and a
//! server while both keep running (the nemesis's partition fault, issue 25).
//!
//! Cut, it shuts every connection through it down and closes its port, so the client
//! sees its server gone and cannot connect; restored, it listens and forwards again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy to one target; stops when dropped.
pub struct Proxy {
    /// Where clients connect (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Both sides of every forwarded connection, to shut down at a cut.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards connections on a new loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Proxy {
            addr,
            cut: Arc::default(),
            stop: Arc::default(),
            open: Arc::default(),
        };
        let (cut, stop, open) = (Arc::clone(&p.cut), Arc::clone(&p.stop), Arc::clone(&p.open));
        std::thread::spawn(move || {
            // Cut, the port is closed (connections are refused); restored, bound again.
            let mut listener = Some(listener);
            while !stop.load(Ordering::Relaxed) {
                if cut.load(Ordering::Relaxed) {
                    listener = None;
                } else if listener.is_none() {
                    listener = TcpListener::bind(addr).ok();
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut o = open.lock().unwrap();
                o.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                forward(client.try_clone().unwrap(), server.try_clone().unwrap());
                forward(server, client);
            }
        });
        p
    }

    /// Cuts the link: every connection through the proxy is shut down, and its port
    /// refuses new ones (within 10 ms).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Restores the link: new connections are forwarded again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

/// `proxies` as a TOML list of NATS URLs (`[cluster] servers`): a node that reaches its
/// NATS servers through them.
pub fn nats_servers<'a>(proxies: impl IntoIterator<Item = &'a Proxy>) -> String {
    let urls: Vec<String> = proxies
        .into_iter()
        .map(|p| format!("\"nats://{}\"", p.addr))
        .collect();
    format!("[{}]", urls.join(", "))
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
