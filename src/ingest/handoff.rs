//! Hand-off: from per-worker batches to the worker queues, once the journal has the
//! frames they came from, so every datapoint a worker sees is journaled and a restart
//! rebuilds exactly what was aggregated (invariants 5 and 6 of `docs/architecture.md`).
//!
//! One path for every input, differing only in what a full worker queue does ([`Mode`]):
//! TCP and HTTP wait for room (backpressure on that connection only, woken by the worker,
//! never by polling), UDP drops the batch as `queue_full` (it cannot push back), and the
//! start-up rebuild waits and marks its batches as rebuilt.

use std::net::SocketAddr;

use crossbeam_channel::TrySendError;

use crate::aggregate::batch::Batch;
use crate::aggregate::worker::WorkerMsg;
use crate::drops::DropTally;
use crate::journal::{NewRecord, Ticket};
use crate::reason::DropReason;
use crate::time::Window;

use super::Pipeline;
use super::routing::Batches;

/// Most work items one worker-queue slot holds (a larger batch is sent in pieces).
pub const MAX_BATCH_ITEMS: usize = 16_384;

/// What hand-off does when a worker queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Wait for room (TCP, HTTP).
    Wait,
    /// Drop the batch and count it as `queue_full` (UDP).
    Drop,
    /// Wait for room, sending [`WorkerMsg::Rebuild`] batches (the start-up rebuild);
    /// `delivered`: the previous run delivered their aggregates.
    Rebuild {
        /// Whether the previous run delivered these datapoints' aggregates.
        delivered: bool,
    },
}

/// The journal tickets a connection's batches wait for, and what is staged.
pub(super) struct Handoff {
    /// Journal tickets of the frames in `batches`, with their receive times and the
    /// work items attached to their records (cluster mode).
    tickets: Vec<(Ticket, f64, usize)>,
    /// What a full queue does.
    pub mode: Mode,
    /// The previous read's work, set aside by [`Handoff::stage`]: the journal writes its
    /// frames while the connection reads and decodes the next one.
    staged: Option<Staged>,
}

/// A read's work items, forwards and journal tickets, waiting to be handed on.
struct Staged {
    pending: Vec<Batch>,
    forwards: Vec<crate::datapoint::OutPoint>,
    tickets: Vec<(Ticket, f64, usize)>,
    /// Work items pending and attached to the tickets' records.
    items: usize,
    /// Datapoints routed (counted as received once handed on).
    received: u64,
}

/// What a hand-off handed on besides work items: forwards, and datapoints to count as
/// received.
pub(super) type HandedOn = (Vec<crate::datapoint::OutPoint>, u64);

impl Handoff {
    /// Nothing waiting yet; a full queue does what `mode` says.
    pub fn new(mode: Mode) -> Self {
        Handoff {
            tickets: Vec::new(),
            mode,
            staged: None,
        }
    }

    /// Work items attached to records whose tickets have not been waited for (cluster
    /// mode).
    pub fn attached_items(&self) -> usize {
        self.tickets.iter().map(|t| t.2).sum()
    }

    /// Work items set aside by [`Handoff::stage`] and not yet handed on.
    pub fn staged_items(&self) -> usize {
        self.staged.as_ref().map_or(0, |s| s.items)
    }

    /// Pipelined hand-off (TCP): hands on what the previous call set aside (once the
    /// journal has its frames), then sets this read's work (with its `received` count)
    /// aside until the next call or [`Handoff::flush`]. Returns what was handed on.
    /// Order is kept: a read's work items reach the workers after the previous read's.
    pub async fn stage(
        &mut self,
        p: &Pipeline,
        batches: &mut Batches,
        tally: &mut DropTally,
        peer: SocketAddr,
        now: f64,
        received: u64,
    ) -> HandedOn {
        let handed = self.hand_on_staged(p, tally, peer, now).await;
        let pending = batches
            .pending
            .iter_mut()
            // An empty batch stays, with its room (cluster mode's are emptied per frame).
            .map(|b| {
                if b.is_empty() {
                    Batch::new()
                } else {
                    std::mem::take(b)
                }
            })
            .collect::<Vec<_>>();
        batches.emptied();
        let attached = self.attached_items();
        self.staged = Some(Staged {
            items: pending.iter().map(Batch::len).sum::<usize>() + attached,
            pending,
            forwards: std::mem::take(&mut batches.forwards),
            tickets: std::mem::take(&mut self.tickets),
            received,
        });
        handed
    }

    /// Hands on what [`Handoff::stage`] set aside.
    async fn hand_on_staged(
        &mut self,
        p: &Pipeline,
        tally: &mut DropTally,
        peer: SocketAddr,
        now: f64,
    ) -> HandedOn {
        let Some(mut s) = self.staged.take() else {
            return (Vec::new(), 0);
        };
        hand_on(self.mode, p, &mut s.pending, s.tickets, tally, peer, now).await;
        (s.forwards, s.received)
    }

    /// Submits `record` to the journal when it is on; [`Handoff::flush`] waits for it.
    /// `attached`: the work items of its attachment, charged to the connection until
    /// the record is written.
    pub async fn journal(&mut self, p: &Pipeline, record: NewRecord, attached: usize) {
        let Some(j) = &p.journal else { return };
        let at = record.received_us as f64 / 1e6;
        let ticket = j.submit(record).await;
        self.tickets.push((ticket, at, attached));
    }

    /// Hands every pending batch (what [`Handoff::stage`] set aside first) to its worker
    /// once the journal has the frames (what it could not write is counted
    /// `unjournaled` in `tally`), in pieces of at most [`MAX_BATCH_ITEMS`], in order. A
    /// full queue is handled by the [`Mode`]; `peer` and `now` describe a `queue_full`
    /// drop. Returns what was staged (the current forwards stay in `batches`).
    pub async fn flush(
        &mut self,
        p: &Pipeline,
        batches: &mut Batches,
        tally: &mut DropTally,
        peer: SocketAddr,
        now: f64,
    ) -> HandedOn {
        let handed = self.hand_on_staged(p, tally, peer, now).await;
        let tickets = std::mem::take(&mut self.tickets);
        hand_on(
            self.mode,
            p,
            &mut batches.pending,
            tickets,
            tally,
            peer,
            now,
        )
        .await;
        batches.emptied();
        handed
    }
}

/// Hands `pending` (per worker, emptied) on once `tickets` resolved, as `mode` says.
async fn hand_on(
    mode: Mode,
    p: &Pipeline,
    pending: &mut [Batch],
    tickets: Vec<(Ticket, f64, usize)>,
    tally: &mut DropTally,
    peer: SocketAddr,
    now: f64,
) {
    for (ticket, at, _) in tickets {
        if !ticket.wait().await {
            tally.add(DropReason::Unjournaled, 1, at);
        }
    }
    if let Some(c) = &p.cluster {
        // The datapoints went to the publisher with their records (or, for a frame
        // unusable as a whole, nowhere); the shard owners aggregate them. Backpressure
        // while the publish lag is too high.
        for b in pending.iter_mut() {
            b.clear();
        }
        while mode == Mode::Wait && !c.closing() {
            let wait = if c.over_limit() {
                20
            } else if c.busy() {
                2
            } else {
                break;
            };
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        return;
    }
    for (i, batch) in pending.iter_mut().enumerate() {
        for piece in std::mem::take(batch).pieces(MAX_BATCH_ITEMS) {
            let msg = match mode {
                Mode::Rebuild { delivered } => WorkerMsg::Rebuild {
                    items: piece,
                    delivered,
                },
                Mode::Wait | Mode::Drop => WorkerMsg::Batch(piece),
            };
            if mode == Mode::Drop {
                send_or_drop(p, i, msg, peer, now);
            } else {
                send_waiting(p, i, msg).await;
            }
        }
    }
}

/// Sends `msg` to worker `i`, waiting while its queue is full.
async fn send_waiting(p: &Pipeline, i: usize, msg: WorkerMsg) {
    crate::aggregate::worker::send_waiting(&p.workers[i], &p.worker_rooms[i], msg).await;
}

/// Sends `msg` to worker `i`, or drops it as `queue_full` if the queue is full, with the
/// window of its datapoints.
fn send_or_drop(p: &Pipeline, i: usize, msg: WorkerMsg, peer: SocketAddr, now: f64) {
    let Err(TrySendError::Full(msg)) = p.workers[i].try_send(msg) else {
        return;
    };
    let (WorkerMsg::Batch(batch) | WorkerMsg::Rebuild { items: batch, .. }) = msg else {
        return;
    };
    let window = batch
        .items()
        .iter()
        .fold(Window::at(now), |w, it| w.union(Window::at(it.timestamp)));
    p.stats.record_drop(
        DropReason::QueueFull,
        batch.len() as u64,
        window,
        &format_args!("worker {i} queue full, datagram from {peer}"),
    );
}
