//! The per-connection path from received bytes to worker queues.
//!
//! An [`Ingest`] belongs to one connection (or UDP socket). For each frame (a run of
//! complete lines, a datagram, a pickle frame) it first submits the raw bytes to the
//! journal, then decodes them while the journal writer works, looking up the route of each
//! datapoint (a shared cache hit in the common case) and appending one [`WorkItem`] per
//! output series to that series' worker batch, plus the raw datapoint to the forward batch
//! if `forward_all` applies. Batches are handed on only after the journal has written the
//! frames they came from, so every datapoint a worker sees is journaled (invariant 5 of
//! DESIGN.md: a restart rebuilds exactly what was aggregated).
//!
//! Handing on: [`Ingest::flush`] (TCP) waits while a worker queue is full, which slows this
//! connection only; [`Ingest::flush_nowait`] (UDP) drops a batch whose queue is full as
//! `queue_full`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};

use crate::aggregate::worker::{WorkItem, WorkerMsg};
use crate::codec::pickle::PickleDecoder;
use crate::codec::{Limits, plaintext};
use crate::datapoint::{Datapoint, Kind, OutPoint, OutValue, Sink};
use crate::drops::{DropTally, Stats};
use crate::journal::{Journal, NewRecord, Ticket};
use crate::quarantine::Quarantine;
use crate::reason::DropReason;
use crate::route::{LocalRoutes, Route, RouteBudget, Router};
use crate::tenant::{Tenants, prefix};
use crate::time::Window;
use arc_swap::ArcSwap;

/// Everything a connection needs, shared by all connections.
pub struct Pipeline {
    /// Route cache and rules; swapped whole by a reload.
    pub router: ArcSwap<Router>,
    /// Worker queues.
    pub workers: Arc<[Sender<WorkerMsg>]>,
    /// Per worker, woken when it takes a batch off its queue ([`WorkerPool::rooms`]).
    ///
    /// [`WorkerPool::rooms`]: crate::aggregate::worker::WorkerPool::rooms
    pub worker_rooms: Arc<[Arc<tokio::sync::Notify>]>,
    /// Where forwarded raw datapoints go (the destinations).
    pub forward: Arc<dyn Sink>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Decoder limits.
    pub limits: Limits,
    /// The raw-input journal, when on.
    pub journal: Option<Arc<Journal>>,
    /// The tenant gate, when on.
    pub tenants: Option<Arc<Tenants>>,
    /// Where rejected datapoints are written, when on.
    pub quarantine: Option<Arc<Quarantine>>,
    /// Bytes left for the connections' private route caches.
    pub route_budget: Arc<RouteBudget>,
    /// Permits for open TCP connections (`limits.max_connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
}

impl Pipeline {
    /// Budgets for connections and private route caches, from `limits`.
    pub fn budgets(limits: &Limits) -> (Arc<RouteBudget>, Arc<tokio::sync::Semaphore>) {
        (
            RouteBudget::new(limits.private_route_cache_bytes),
            Arc::new(tokio::sync::Semaphore::new(
                limits
                    .max_connections
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        )
    }
}

/// Per-connection batching state.
pub struct Ingest {
    p: Arc<Pipeline>,
    peer: SocketAddr,
    listener: u16,
    kind: Kind,
    /// Receive time of the frame being decoded (Unix s): replaces `-1` timestamps and
    /// dates drops that have no timestamp of their own.
    now: f64,
    pending: Vec<Vec<WorkItem>>,
    forwards: Vec<OutPoint>,
    tickets: Vec<(Ticket, f64)>,
    tally: DropTally,
    received: u64,
    /// The router in use, refreshed from the pipeline at the start of every frame.
    router: Arc<Router>,
    /// This connection's private route cache (emptied when the router changes).
    routes: LocalRoutes,
    /// Datapoints routed over this Ingest's life (for HTTP responses).
    received_total: u64,
    /// Start-up rebuild: the input was counted (and its drops ledgered) when it was first
    /// received, so nothing is counted again.
    rebuild: bool,
    /// Start-up rebuild of input whose aggregates the previous run delivered.
    delivered: bool,
}

/// Queues `dp` for each of `route`'s output series (per owning worker) and, if the route
/// forwards, for the destinations.
#[inline]
fn dispatch(
    route: &Route,
    dp: &Datapoint<'_>,
    pending: &mut [Vec<WorkItem>],
    forwards: &mut Vec<OutPoint>,
) {
    for o in route.outputs.iter() {
        pending[o.worker].push(WorkItem {
            key: Arc::clone(&o.key),
            timestamp: dp.timestamp,
            value: dp.value,
        });
    }
    if let Some(name) = &route.forward {
        forwards.push(OutPoint {
            path: Arc::clone(name),
            timestamp: dp.timestamp,
            value: OutValue::Float(dp.value),
        });
    }
}

/// Datapoints whose routes [`Ingest::accept_many`] looks up before writing their items.
const LOOKUP_BATCH: usize = 8;

/// Most work items one worker-queue slot holds (a larger batch is sent in pieces).
pub const MAX_BATCH_ITEMS: usize = 16_384;

impl Ingest {
    /// State for one connection from `peer` on listener `listener` (config index) of
    /// `kind`.
    pub fn new(p: Arc<Pipeline>, peer: SocketAddr, listener: u16, kind: Kind) -> Self {
        let n = p.workers.len();
        let router = p.router.load_full();
        Ingest {
            router,
            routes: LocalRoutes::new(Arc::clone(&p.route_budget)),
            p,
            peer,
            listener,
            kind,
            now: 0.0,
            pending: (0..n).map(|_| Vec::new()).collect(),
            forwards: Vec::new(),
            tickets: Vec::new(),
            tally: DropTally::default(),
            received: 0,
            received_total: 0,
            rebuild: false,
            delivered: false,
        }
    }

    /// State for the start-up rebuild from the journal: like [`Ingest::new`], but nothing
    /// is counted or ledgered again, and workers do not count datapoints that have aged
    /// out of the window since they were received.
    pub fn for_rebuild(p: Arc<Pipeline>) -> Self {
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        Ingest {
            rebuild: true,
            ..Ingest::new(p, peer, u16::MAX, Kind::PlaintextTcp)
        }
    }

    /// Start-up rebuild: whether the input that follows was delivered downstream by the
    /// previous run (see [`WorkerMsg::Rebuild`]); hands on what is pending first.
    pub fn set_delivered(&mut self, delivered: bool) {
        if delivered != self.delivered {
            self.flush_blocking();
            self.delivered = delivered;
        }
    }

    /// The process counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.p.stats)
    }

    /// The decoder limits.
    pub fn limits(&self) -> &Limits {
        &self.p.limits
    }

    /// Submits a frame received at `now` (Unix s) from `peer` to the journal (when on);
    /// [`Ingest::flush`] waits for it before handing its datapoints on.
    pub async fn journal(&mut self, payload: &Bytes, now: f64, peer: SocketAddr) {
        self.journal_as(payload, now, peer, self.kind, None).await
    }

    /// Like [`Ingest::journal`], with the record's kind and tenant given (HTTP bodies).
    pub async fn journal_as(
        &mut self,
        payload: &Bytes,
        now: f64,
        peer: SocketAddr,
        kind: Kind,
        tenant: Option<Arc<str>>,
    ) {
        self.now = now;
        let Some(j) = &self.p.journal else { return };
        let ticket = j
            .submit(NewRecord {
                received_us: (now * 1e6) as i64,
                listener: self.listener,
                kind,
                peer,
                tenant,
                payload: payload.clone(),
            })
            .await;
        self.tickets.push((ticket, now));
    }

    /// Takes over a journal ticket for a frame received at `now` that another task
    /// submitted (see [`Journal::submit`]); [`Ingest::flush`] waits for it like for its
    /// own.
    pub fn adopt(&mut self, ticket: Ticket, now: f64) {
        self.now = now;
        self.tickets.push((ticket, now));
    }

    /// Takes one decoder result: a datapoint to route, or a rejection to count.
    #[inline]
    pub fn accept(&mut self, r: Result<Datapoint<'_>, DropReason>) {
        let dp = match r {
            Ok(dp) => dp,
            Err(reason) => return self.tally.add(reason, 1, self.now),
        };
        let Ingest {
            p,
            pending,
            forwards,
            tally,
            received,
            now,
            router,
            routes,
            ..
        } = self;
        // The tenant gate: state and rate limits, then (for a path new to the route cache)
        // the series limit. Reads a lock-free registry snapshot; never blocks.
        let tenant = p.tenants.as_deref().map(|t| (t, prefix(dp.path)));
        if let Some((t, id)) = tenant
            && let Err(reason) = t.admit(id, dp.path, *now as u64)
        {
            if let Some(q) = &p.quarantine {
                q.record(reason, dp.path, dp.value, dp.timestamp);
            }
            return tally.add(reason, 1, dp.timestamp);
        }
        let admit_new = || match tenant {
            Some((t, id)) => t.admit_series(id, dp.path),
            None => Ok(()),
        };
        let routed = routes
            .get(router, dp.path, admit_new)
            .map(|route| dispatch(route, &dp, pending, forwards));
        match routed {
            Ok(()) => {
                *received += 1;
                self.received_total += 1;
            }
            Err(reason) => {
                if let Some(q) = &p.quarantine {
                    q.record(reason, dp.path, dp.value, dp.timestamp);
                }
                tally.add(reason, 1, dp.timestamp);
            }
        }
    }

    /// Datapoints accepted so far, and rejections per reason (with a count), over this
    /// Ingest's life.
    pub fn outcome(&self) -> (u64, Vec<(DropReason, u64)>) {
        (self.received_total, self.tally.totals())
    }

    /// Takes the current router (a reload may have swapped it) for a frame received at
    /// `now`.
    fn start_frame(&mut self, now: f64) {
        self.now = now;
        let current = self.p.router.load();
        if !Arc::ptr_eq(&current, &self.router) {
            self.router = Arc::clone(&current);
            self.routes.clear();
        }
    }

    /// Counts `n` rejections of `reason` found by a framer.
    pub fn reject(&mut self, reason: DropReason, n: u64) {
        self.tally.add(reason, n, self.now);
    }

    /// Decodes a run of complete plaintext lines (or one datagram) received at `now`.
    pub fn plaintext(&mut self, chunk: &[u8], now: f64) {
        self.start_frame(now);
        let limits = self.p.limits.clone();
        let mut batch = Vec::with_capacity(LOOKUP_BATCH);
        for line in plaintext::lines(chunk) {
            match plaintext::parse_line(line, now, &limits) {
                Ok(Some(dp)) => {
                    batch.push(dp);
                    if batch.len() == LOOKUP_BATCH {
                        self.accept_many(&batch);
                        batch.clear();
                    }
                }
                Ok(None) => {}
                Err(reason) => self.tally.add(reason, 1, now),
            }
        }
        self.accept_many(&batch);
    }

    /// Routes `dps` in order, like [`Ingest::accept`] on each.
    ///
    /// Without tenants, the private route cache is first probed for a run of datapoints
    /// and only then are their work items written: the probes do not depend on each
    /// other, so the CPU overlaps their cache misses (with 100 000 paths per connection,
    /// the probe's first touch of a table entry was half of `accept`). A path not yet
    /// cached ends the run and takes the full path.
    fn accept_many(&mut self, dps: &[Datapoint<'_>]) {
        if self.p.tenants.is_some() {
            for dp in dps {
                self.accept(Ok(*dp));
            }
            return;
        }
        let mut next = 0;
        while next < dps.len() {
            let Ingest {
                pending,
                forwards,
                routes,
                ..
            } = self;
            let run = &dps[next..(next + LOOKUP_BATCH).min(dps.len())];
            let mut found: [Option<&Route>; LOOKUP_BATCH] = [None; LOOKUP_BATCH];
            let mut hits = 0;
            for dp in run {
                match routes.peek(dp.path) {
                    Some(r) => found[hits] = Some(r),
                    None => break,
                }
                hits += 1;
            }
            for (dp, route) in run.iter().zip(&found[..hits]) {
                let route = route.expect("found for every hit");
                dispatch(route, dp, pending, forwards);
            }
            self.received += hits as u64;
            self.received_total += hits as u64;
            next += hits;
            if let Some(dp) = dps.get(next) {
                self.accept(Ok(*dp));
                next += 1;
            }
        }
    }

    /// Decodes one pickle frame body received at `now`.
    pub fn pickle(&mut self, decoder: &mut PickleDecoder, body: &[u8], now: f64) {
        self.start_frame(now);
        let limits = self.p.limits.clone();
        let decoded = decoder.decode_runs(body, now, &limits, LOOKUP_BATCH, |r| match r {
            Ok(dps) => self.accept_many(dps),
            Err(reason) => self.tally.add(reason, 1, now),
        });
        if let Err(reason) = decoded {
            self.tally.add(reason, 1, now);
        }
    }

    /// Decodes one frame of any input `kind` received at `now` (for `tenant`, on HTTP):
    /// the one place that picks the decoder for a kind on the routing path.
    ///
    /// Errors: an HTTP body unusable as a whole ([`crate::codec::http::BadBody`]).
    pub fn frame(
        &mut self,
        kind: Kind,
        payload: &[u8],
        tenant: Option<&str>,
        decoder: &mut PickleDecoder,
        now: f64,
    ) -> Result<(), crate::codec::http::BadBody> {
        match kind {
            Kind::PlaintextTcp | Kind::PlaintextUdp => self.plaintext(payload, now),
            Kind::PickleTcp => self.pickle(decoder, payload, now),
            Kind::HttpPlaintext | Kind::HttpPickle | Kind::HttpJson => {
                return self.http(kind, payload, tenant, decoder, now);
            }
        }
        Ok(())
    }

    /// Decodes one HTTP body of `kind` received at `now` for `tenant` (API key).
    ///
    /// Errors: the body is unusable as a whole ([`crate::codec::http::BadBody`]).
    pub fn http(
        &mut self,
        kind: Kind,
        body: &[u8],
        tenant: Option<&str>,
        decoder: &mut PickleDecoder,
        now: f64,
    ) -> Result<(), crate::codec::http::BadBody> {
        self.start_frame(now);
        let limits = self.p.limits.clone();
        crate::codec::http::decode(kind, body, tenant, now, &limits, decoder, |r| {
            self.accept(r)
        })
    }

    /// Waits for the journal to have written every submitted frame; counts the ones it
    /// could not as `unjournaled`.
    async fn await_journal(&mut self) {
        for (ticket, at) in std::mem::take(&mut self.tickets) {
            if !ticket.wait().await {
                self.tally.add(DropReason::Unjournaled, 1, at);
            }
        }
    }

    fn settle(&mut self) {
        if self.rebuild {
            self.forwards.clear();
            self.received = 0;
            self.tally = DropTally::default();
            return;
        }
        if !self.forwards.is_empty() {
            let batch = std::mem::take(&mut self.forwards);
            self.p
                .stats
                .forwarded
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.p.forward.send(batch.into());
        }
        let received = std::mem::take(&mut self.received);
        self.p.stats.received.fetch_add(received, Ordering::Relaxed);
        self.tally
            .flush(&self.p.stats, &format_args!("from {}", self.peer));
    }

    /// Hands every pending batch to its worker once the journal has the frames, waiting
    /// while a queue is full (backpressure on this connection only). A batch of more than
    /// [`MAX_BATCH_ITEMS`] goes in pieces, in order, so a queue slot holds at most that.
    pub async fn flush(&mut self) {
        self.await_journal().await;
        for i in 0..self.pending.len() {
            for piece in pieces(std::mem::take(&mut self.pending[i])) {
                self.send_waiting(i, piece).await;
            }
        }
        self.settle();
    }

    /// Sends `batch` to worker `i`, waiting while its queue is full (woken by the worker
    /// when it takes a batch, never by polling).
    async fn send_waiting(&self, i: usize, batch: Vec<WorkItem>) {
        let mut msg = WorkerMsg::Batch(batch);
        let queue = &self.p.workers[i];
        loop {
            match queue.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => msg = m,
            }
            // Registered before trying again, so a batch taken in between still wakes us.
            let room = self.p.worker_rooms[i].notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match queue.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => msg = m,
            }
            room.await;
        }
    }

    /// Hands every pending batch on, blocking the thread while a queue is full. For the
    /// start-up rebuild only (not journaled, not on a tokio thread).
    pub fn flush_blocking(&mut self) {
        for i in 0..self.pending.len() {
            if !self.pending[i].is_empty() {
                let batch = std::mem::take(&mut self.pending[i]);
                let msg = if self.rebuild {
                    WorkerMsg::Rebuild {
                        items: batch,
                        delivered: self.delivered,
                    }
                } else {
                    WorkerMsg::Batch(batch)
                };
                let _ = self.p.workers[i].send(msg);
            }
        }
        self.settle();
    }

    /// Like [`Ingest::flush`], but a batch whose queue is full is dropped and counted as
    /// `queue_full` (UDP cannot push back).
    pub async fn flush_nowait(&mut self) {
        self.await_journal().await;
        for i in 0..self.pending.len() {
            for piece in pieces(std::mem::take(&mut self.pending[i])) {
                let Err(e) = self.p.workers[i].try_send(WorkerMsg::Batch(piece)) else {
                    continue;
                };
                let (WorkerMsg::Batch(batch) | WorkerMsg::Rebuild { items: batch, .. }) =
                    e.into_inner()
                else {
                    continue;
                };
                let n = batch.len() as u64;
                let window = batch.iter().fold(Window::at(self.now), |w, it| {
                    w.union(Window::at(it.timestamp))
                });
                self.p.stats.record_drop(
                    DropReason::QueueFull,
                    n,
                    window,
                    &format_args!("worker {i} queue full, datagram from {}", self.peer),
                );
            }
        }
        self.settle();
    }
}

/// `batch` in order, in pieces of at most [`MAX_BATCH_ITEMS`] (no piece if it is empty; no
/// copy if it fits in one).
fn pieces(batch: Vec<WorkItem>) -> impl Iterator<Item = Vec<WorkItem>> {
    let (mut whole, mut rest) = if batch.len() <= MAX_BATCH_ITEMS {
        (Some(batch).filter(|b| !b.is_empty()), None)
    } else {
        (None, Some(batch.into_iter()))
    };
    std::iter::from_fn(move || {
        if let Some(b) = whole.take() {
            return Some(b);
        }
        let piece: Vec<WorkItem> = rest.as_mut()?.by_ref().take(MAX_BATCH_ITEMS).collect();
        (!piece.is_empty()).then_some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Aggregation;
    use crate::datapoint::OutBatch;
    use crate::route::Router;
    use crate::rules::aggregation::AggregationRules;
    use crate::rules::rewrite::RewriteRules;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    struct Discard;
    impl Sink for Discard {
        fn send(&self, _: OutBatch) {}
    }

    fn ingest(capacity: usize) -> (Ingest, crossbeam_channel::Receiver<WorkerMsg>, Arc<Stats>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let stats = Arc::new(Stats::default());
        let aggregation = Aggregation {
            rules_file: PathBuf::from("r"),
            rules: Arc::new(AggregationRules::parse("o (60) = sum *\n", Path::new("r")).unwrap()),
            rewrite_file: None,
            rewrite: Arc::new(RewriteRules::default()),
            forward_all: false,
            max_intervals: 5,
            write_back_frequency: 0,
            route_cache_entries: 10,
            max_values_per_bucket: 10,
        };
        let p = Arc::new(Pipeline {
            router: ArcSwap::from_pointee(Router::new(aggregation, 1)),
            workers: vec![tx].into(),
            worker_rooms: vec![Arc::new(tokio::sync::Notify::new())].into(),
            forward: Arc::new(Discard),
            stats: stats.clone(),
            limits: Limits::default(),
            journal: None,
            tenants: None,
            quarantine: None,
            route_budget: RouteBudget::new(1 << 20),
            connections: Arc::new(tokio::sync::Semaphore::new(10)),
        });
        let peer = "127.0.0.1:9".parse().unwrap();
        (Ingest::new(p, peer, 0, Kind::PlaintextTcp), rx, stats)
    }

    #[tokio::test]
    async fn tcp_flush_waits_for_a_full_queue() {
        let (mut ing, rx, stats) = ingest(1);
        let room = Arc::clone(&ing.p.worker_rooms[0]);
        ing.plaintext(b"a 1 10\n", 0.0);
        ing.flush().await; // fills the queue
        ing.plaintext(b"b 2 10\nc 3 10\n", 0.0);
        let waiting = tokio::spawn(async move {
            ing.flush().await;
            ing
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "flush must wait while the queue is full"
        );
        let WorkerMsg::Batch(first) = rx.recv().unwrap() else {
            panic!()
        };
        assert_eq!(first.len(), 1);
        // As a worker does when it takes a batch: wake whoever waits for room.
        room.notify_waiters();
        waiting.await.unwrap();
        let WorkerMsg::Batch(second) = rx.recv().unwrap() else {
            panic!()
        };
        assert_eq!(second.len(), 2);
        assert_eq!(stats.total_drops(), 0);
        assert_eq!(stats.received.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn large_batches_go_in_ordered_pieces() {
        let key = Arc::new(crate::route::SeriesKey {
            name: "k".into(),
            hash: 0,
            method: crate::method::Method::Sum,
            frequency: 60,
        });
        let batch: Vec<WorkItem> = (0..2 * MAX_BATCH_ITEMS + 5)
            .map(|i| WorkItem {
                key: Arc::clone(&key),
                timestamp: i as f64,
                value: 1.0,
            })
            .collect();
        let sizes: Vec<usize> = pieces(batch).map(|p| p.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_ITEMS, MAX_BATCH_ITEMS, 5]);
        let small: Vec<WorkItem> = (0..3)
            .map(|i| WorkItem {
                key: Arc::clone(&key),
                timestamp: i as f64,
                value: 1.0,
            })
            .collect();
        let order: Vec<f64> = pieces(small).flatten().map(|w| w.timestamp).collect();
        assert_eq!(order, [0.0, 1.0, 2.0]);
        assert_eq!(pieces(Vec::new()).count(), 0);
    }

    #[tokio::test]
    async fn udp_flush_drops_and_counts_on_a_full_queue() {
        let (mut ing, rx, stats) = ingest(1);
        ing.plaintext(b"a 1 10\n", 0.0);
        ing.flush_nowait().await;
        ing.plaintext(b"b 2 10\nc 3 10\n", 0.0);
        ing.flush_nowait().await;
        assert_eq!(stats.drops(DropReason::QueueFull), 2);
        assert_eq!(rx.len(), 1);
    }
}
