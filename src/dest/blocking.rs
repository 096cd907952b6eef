//! The live destinations for a caller outside any tokio runtime (`aggd replay`): the same
//! senders, placement, encoding and retries as the daemon's ([`Destinations`]), on a
//! runtime of their own, offered to without ever dropping.
//!
//! A send waits while a destination's queue has no room; [`BlockingDestinations::finish`]
//! waits until every queue is empty and every connection acknowledged what was written
//! into it. Anything the daemon would have counted as a drop (a request the store
//! refused, data written into a connection that then failed, data still queued or
//! unacknowledged at the end) is an error here, as is a destination that takes nothing
//! for `give_up`: a replay either delivered everything or says what it did not.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{DestCounters, Destinations, Senders};
use crate::config::{DestinationConfig, DestinationKind, LateChanges, OutputPlacement};
use crate::datapoint::{OutPoint, Sink};
use crate::drops::Stats;

/// Each destination's queue, in datapoints.
const QUEUE_DATAPOINTS: usize = 100_000;
/// Datapoints offered at once.
const CHUNK_DATAPOINTS: usize = 10_000;
/// How often a waiting send looks at the queues again.
const POLL: Duration = Duration::from_millis(2);

/// A destination that did not take everything.
#[derive(Debug, thiserror::Error)]
#[error("destination {destination}: {reason}")]
pub struct Undelivered {
    /// Its name ([`DestinationConfig::name`]).
    pub destination: String,
    /// What it did not take, and why.
    pub reason: String,
}

/// The live senders of a set of destinations, driven from blocking code.
pub struct BlockingDestinations {
    runtime: tokio::runtime::Runtime,
    dests: Arc<Destinations>,
    senders: Option<Senders>,
    stats: Arc<Stats>,
    give_up: Duration,
}

impl BlockingDestinations {
    /// Starts senders for `configs` (placed by `placement`, which must be built over
    /// them, in order), without their `emit_delay` and `late_changes` holds: what is
    /// sent is final. A destination that takes nothing for `give_up` fails the send.
    ///
    /// Errors: the runtime cannot start, a remote-write client cannot be built.
    pub fn start(
        configs: &[DestinationConfig],
        placement: &OutputPlacement,
        give_up: Duration,
    ) -> Result<BlockingDestinations, Undelivered> {
        let configs: Vec<DestinationConfig> = configs
            .iter()
            .map(|c| DestinationConfig {
                queue_datapoints: QUEUE_DATAPOINTS,
                emit_delay: Duration::ZERO,
                late_changes: LateChanges::Send,
                ..c.clone()
            })
            .collect();
        for c in &configs {
            if let DestinationKind::RemoteWrite(rw) = &c.kind {
                super::remote_write::RemoteWriter::new(rw).map_err(|reason| Undelivered {
                    destination: c.name().to_string(),
                    reason,
                })?;
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aggd-dest")
            .enable_all()
            .build()
            .map_err(|e| Undelivered {
                destination: "all".into(),
                reason: format!("cannot start a runtime: {e}"),
            })?;
        let stats = Arc::new(Stats::default());
        let (dests, senders) = {
            let _in = runtime.enter();
            Destinations::start(&configs, placement, Arc::clone(&stats))
        };
        Ok(BlockingDestinations {
            runtime,
            dests,
            senders: Some(senders),
            stats,
            give_up,
        })
    }

    /// Offers `points` to the destinations their names are placed on, waiting for room
    /// in each queue. Errors: [`Undelivered`] (module docs).
    pub fn send(&self, points: &[OutPoint]) -> Result<(), Undelivered> {
        for chunk in points.chunks(CHUNK_DATAPOINTS) {
            self.wait_until(|queued| queued + chunk.len() <= QUEUE_DATAPOINTS)?;
            self.dests.send(chunk.into());
        }
        self.refused()
    }

    /// Waits until every destination delivered and its peer acknowledged everything
    /// sent, then stops the senders. Errors: [`Undelivered`] (module docs).
    pub fn finish(mut self) -> Result<(), Undelivered> {
        self.wait_until(|queued| queued == 0)?;
        let Some(senders) = self.senders.take() else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.give_up;
        let complete = self.runtime.block_on(senders.drain(&self.dests, deadline));
        self.refused()?;
        match complete {
            true => Ok(()),
            false => Err(Undelivered {
                destination: "some".into(),
                reason: format!("not acknowledged within {:?}", self.give_up),
            }),
        }
    }

    /// Waits until `room` holds for every destination's queued datapoints; fails when one
    /// takes nothing for `give_up`, or something was refused.
    fn wait_until(&self, room: impl Fn(usize) -> bool) -> Result<(), Undelivered> {
        let sent = || -> u64 {
            self.dests
                .counters()
                .map(|(_, c)| c.sent.load(Ordering::Relaxed))
                .sum()
        };
        let (mut last, mut since) = (sent(), Instant::now());
        loop {
            self.refused()?;
            let waiting = self
                .dests
                .counters()
                .find(|(_, c)| !room(c.queued.load(Ordering::Relaxed)));
            let Some((name, c)) = waiting else {
                return Ok(());
            };
            let now = sent();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > self.give_up {
                return Err(Undelivered {
                    destination: name.to_string(),
                    reason: format!(
                        "{} datapoints not delivered: nothing taken for {:?} (not reachable or not answering; see the log)",
                        c.queued.load(Ordering::Relaxed),
                        self.give_up
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The first destination that dropped something, as an error.
    fn refused(&self) -> Result<(), Undelivered> {
        if self.stats.total_drops() == 0 {
            return Ok(());
        }
        let lost = |c: &DestCounters| {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let (rejected, unconfirmed) = (n(&c.rejected), n(&c.unconfirmed));
            let full = n(&c.full_queue_drops);
            if rejected > 0 {
                Some(format!(
                    "refused {rejected} datapoints (its answer is in the log)"
                ))
            } else if unconfirmed > 0 {
                Some(format!(
                    "{unconfirmed} datapoints written into a connection that failed, maybe lost"
                ))
            } else if full > 0 {
                Some(format!("{full} datapoints dropped: its queue was full"))
            } else {
                None
            }
        };
        let (destination, reason) = self
            .dests
            .counters()
            .find_map(|(name, c)| lost(c).map(|r| (name.to_string(), r)))
            .unwrap_or_else(|| {
                let n = self.stats.total_drops();
                ("some".into(), format!("{n} datapoints not delivered"))
            });
        Err(Undelivered {
            destination,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::config::file::DestinationFile;
    use crate::config::{DestProtocol, OutputPlacement};
    use crate::datapoint::OutValue;

    fn points(n: usize) -> Vec<OutPoint> {
        (0..n)
            .map(|i| OutPoint {
                path: format!("replayed.{i}").into(),
                timestamp: 60.0,
                value: OutValue::Float(i as f64),
                interval: None,
            })
            .collect()
    }

    fn destination(protocol: DestProtocol, address: &str) -> DestinationConfig {
        let mut file = DestinationFile {
            protocol,
            address: address.into(),
            queue_datapoints: 1,
            max_datapoints_per_message: 500,
            ..Default::default()
        };
        if protocol == DestProtocol::PrometheusRemoteWrite {
            file.url = Some(format!("http://{address}/api/v1/write"));
            file.address.clear();
            // One lane: the points go in one request, refused as a whole.
            file.max_in_flight = Some(1);
        }
        DestinationConfig::try_from(file).unwrap()
    }

    fn start(d: DestinationConfig, give_up: Duration) -> Result<BlockingDestinations, Undelivered> {
        let d = [d];
        BlockingDestinations::start(&d, &OutputPlacement::all(&d), give_up)
    }

    #[test]
    fn everything_sent_is_delivered_before_finish_returns() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        });
        let d = destination(DestProtocol::Plaintext, &addr);
        let out = start(d, Duration::from_secs(10)).unwrap();
        // More than one chunk, and more than a queue holds at once.
        let sent = points(CHUNK_DATAPOINTS * 2 + 7);
        out.send(&sent).unwrap();
        out.send(&sent).unwrap();
        out.finish().unwrap();
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count(), sent.len() * 2);
        assert!(text.starts_with("replayed.0 0 60\n"), "{}", &text[..40]);
    }

    #[test]
    fn a_destination_that_takes_nothing_fails_the_replay_naming_it() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let d = destination(DestProtocol::Pickle, &addr);
        let out = start(d, Duration::from_millis(300)).unwrap();
        out.send(&points(10)).unwrap();
        let started = Instant::now();
        let e = out.finish().unwrap_err();
        assert_eq!(e.destination, addr);
        assert!(e.reason.contains("10 datapoints not delivered"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_request_the_store_refuses_fails_the_replay() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                let end = loop {
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let n = s.read(&mut b).unwrap();
                    head.extend_from_slice(&b[..n]);
                };
                // Read the whole body first: closing on unread bytes resets the
                // connection, and the client would see a network error, not the answer.
                let text = String::from_utf8_lossy(&head[..end]).to_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while head.len() < end + len {
                    let n = s.read(&mut b).unwrap();
                    head.extend_from_slice(&b[..n]);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
                );
            }
        });
        let d = destination(DestProtocol::PrometheusRemoteWrite, &addr);
        let out = start(d, Duration::from_secs(10)).unwrap();
        out.send(&points(3)).unwrap();
        let e = out.finish().unwrap_err();
        assert!(e.destination.contains(&addr), "{e}");
        assert!(e.reason.contains("refused 3 datapoints"), "{e}");
    }
}
