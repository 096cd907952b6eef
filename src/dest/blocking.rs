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
