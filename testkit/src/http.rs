//! A minimal HTTP client over real sockets, `/metrics` samples, and waits on aggd's
//! counters and a socket's acknowledgements.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 client over a real socket: returns (status, headers, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no HTTP header end");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

/// The first Prometheus sample from `/metrics` whose line starts with `sample`, e.g.
/// `aggd_dropped_total{reason="unconfirmed"}`; fails the test if there is none.
pub fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(sample))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
}

/// Waits (up to 30 s) until aggd says it took (journaled and handed on) `n` datapoints
/// in this run.
pub fn wait_received(admin: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "aggd_received_total") < n {
        assert!(
            Instant::now() < deadline,
            "aggd did not take {n} datapoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 10 s) until the peer's TCP has acknowledged every byte written to `s`
/// (`SIOCOUTQ` is 0): the bytes are then in the peer's receive queue.
#[allow(unsafe_code)]
pub fn wait_acknowledged(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points at `n`.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert!(r == 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} bytes never acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
}
