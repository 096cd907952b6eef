//! From received bytes to worker queues (or, in cluster mode, to the publisher), in
//! three parts:
//! - `frame`: the [`FrameRouter`], the one routing step (decode → tenant gate → route
//!   cache → per-worker or per-shard batches), pure, used by every reader of input;
//! - `routing`: its per-datapoint state, the `RouteLookup` (gate, route caches, tallies,
//!   the verdict);
//! - `handoff`: batches → worker queues, once the journal has their frames.
//!
//! An [`Ingest`] is a connection around a frame router (or a UDP socket, an HTTP request,
//! or the start-up rebuild). For each frame the listener first hands the bytes to
//! [`Ingest::frame`], which routes every datapoint and notes the ones refused in the
//! frame's [`crate::journal::Verdict`]; then it submits the raw bytes with that verdict
//! to the journal ([`Ingest::journal`]), so every later read of the record (the rebuild,
//! the publisher, `aggd replay`) sees the same decisions. [`Ingest::flush`] hands the
//! batches on after the journal has written their frames: TCP and HTTP wait while a
//! worker queue is full (this connection only), UDP drops the batch as `queue_full`, and
//! the rebuild waits and marks its batches as rebuilt. In cluster mode the batches are
//! per shard and go with the frame's journal record to the publisher ([`Routed`]).
//!
//! What is counted is fixed when an `Ingest` is made: a connection adds what it routed
//! and refused to the process counters; the rebuild, and the publisher's frame router,
//! count nothing (their input was counted when first received).

mod frame;
mod handoff;
mod routing;
pub mod slots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::aggregate::worker::{WorkerMsg, WorkerPool};
use crate::codec::{FrameError, Limits};
use crate::config::Config;
use crate::datapoint::{Kind, Sink};
use crate::drops::{DropTally, Stats};
use crate::journal::record::Record;
use crate::journal::{Journal, NewRecord};
use crate::quarantine::Quarantine;
use crate::reason::DropReason;
use crate::route::{RouteBudget, Router};
use crate::tenant::Tenants;

pub use frame::FrameRouter;
pub use handoff::MAX_BATCH_ITEMS;
use handoff::{Handoff, Mode};
pub use routing::Routed;

/// What routing a frame needs, shared by every frame router of a pipeline.
pub struct Routes {
    /// Route cache and rules; swapped whole by a reload.
    pub router: ArcSwap<Router>,
    /// Decoder limits.
    pub limits: Limits,
    /// The tenant gate, when on.
    pub tenants: Option<Arc<Tenants>>,
    /// Where rejected datapoints are written, when on.
    pub quarantine: Option<Arc<Quarantine>>,
    /// Bytes left for the private route caches.
    pub route_budget: Arc<RouteBudget>,
}

impl Routes {
    /// Routes over `router` with `config`'s decoder limits and private route cache
    /// budget (`[limits]`), and neither tenant gate nor quarantine (a caller adds those
    /// it has with struct update syntax).
    pub fn new(router: &Arc<Router>, config: &Config) -> Routes {
        Routes {
            router: ArcSwap::from(Arc::clone(router)),
            limits: config.limits.clone(),
            tenants: None,
            quarantine: None,
            route_budget: RouteBudget::new(config.limits.private_route_cache_bytes),
        }
    }
}

/// Everything a connection needs, shared by all connections.
pub struct Pipeline {
    /// What routing needs.
    pub routes: Arc<Routes>,
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
    /// The raw-input journal, when on.
    pub journal: Option<Arc<Journal>>,
    /// Open TCP connections (`limits.max_connections`) and the memory budget of every
    /// connection and HTTP request (`limits.connection_memory_bytes`).
    pub slots: Arc<slots::Slots>,
    /// Cluster mode: the router's outputs are shards, each frame's routed datapoints go
    /// to the publisher with its journal record ([`Routed`]), nothing is handed to a local
    /// worker, and connections wait while the publisher is too far behind.
    pub cluster: Option<Arc<dyn PublishBacklog>>,
}

/// Cluster mode's publisher as connections see it (cluster mode implements it): whether
/// it is so far behind that TCP readers must wait and UDP datagrams be refused as
/// `queue_full`, whether it is too busy to take more routed records (TCP readers wait a
/// moment; the others' records it reads back from the journal), and whether shutdown
/// has begun (then nobody waits).
pub trait PublishBacklog: Send + Sync {
    /// Whether the publisher's backlog is over its limit.
    fn over_limit(&self) -> bool;
    /// Whether the routed records waiting for the publisher are near their limit.
    fn busy(&self) -> bool;
    /// Whether shutdown has begun: connections stop waiting.
    fn closing(&self) -> bool;
}

impl Pipeline {
    /// A pipeline routing by `routes` into `workers`, forwarding raw datapoints to
    /// `forward`, with the connection budgets of `config`'s `[limits]`, and no journal (a
    /// caller adds it with struct update syntax; the start-up rebuild uses it as it is).
    pub fn new(
        routes: Arc<Routes>,
        workers: &WorkerPool,
        forward: Arc<dyn Sink>,
        stats: &Arc<Stats>,
        config: &Config,
    ) -> Pipeline {
        let limits = &config.limits;
        Pipeline {
            routes,
            workers: workers.senders(),
            worker_rooms: workers.rooms(),
            forward,
            stats: Arc::clone(stats),
            journal: None,
            slots: slots::Slots::new(
                limits.max_connections,
                limits.connection_memory_bytes,
                std::time::Duration::from_millis(limits.evict_idle_after_ms),
                Arc::clone(stats),
            ),
            cluster: None,
        }
    }
}

/// One connection's ingest state: its routing and its hand-off.
pub struct Ingest {
    /// What every connection shares.
    p: Arc<Pipeline>,
    /// The sender (named in drop logs; the journal record's peer).
    peer: SocketAddr,
    /// The listener's index in the config (the journal record's listener).
    listener: u16,
    /// The listener's input kind (the journal record's kind unless given).
    kind: Kind,
    /// Decoding and routing.
    frames: FrameRouter,
    /// Journal tickets, staged work and what a full queue does.
    handoff: Handoff,
    /// Whether what it routes and refuses is added to the process counters (not for the
    /// rebuild, whose input was counted when first received).
    counted: bool,
}

impl Ingest {
    /// State for one connection from `peer` on listener `listener` (config index) of
    /// `kind`: a full worker queue waits, except for UDP, which drops.
    pub fn new(p: Arc<Pipeline>, peer: SocketAddr, listener: u16, kind: Kind) -> Self {
        let mode = if kind == Kind::PlaintextUdp {
            Mode::Drop
        } else {
            Mode::Wait
        };
        Ingest {
            frames: FrameRouter::new(Arc::clone(&p.routes)),
            handoff: Handoff::new(mode),
            p,
            peer,
            listener,
            kind,
            counted: true,
        }
    }

    /// State for the start-up rebuild from the journal: like [`Ingest::new`], but nothing
    /// is counted or ledgered again (the input was counted when first received), and
    /// workers do not count datapoints that have aged out of the window since.
    pub(crate) fn for_rebuild(p: Arc<Pipeline>) -> Self {
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut ingest = Ingest::new(p, peer, u16::MAX, Kind::PlaintextTcp);
        ingest.handoff.mode = Mode::Rebuild { delivered: false };
        ingest.counted = false;
        ingest
    }

    /// Start-up rebuild: whether the input that follows was delivered downstream by the
    /// previous run (see [`WorkerMsg::Rebuild`]); hands on what is pending first.
    pub(crate) fn set_delivered(&mut self, delivered: bool) {
        if self.handoff.mode != (Mode::Rebuild { delivered }) {
            self.flush_blocking();
            self.handoff.mode = Mode::Rebuild { delivered };
        }
    }

    /// The process counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.p.stats)
    }

    /// Bytes of work items one input byte can decode into at most, under the current
    /// rules: a datapoint of the shortest line (`a 1 1\n`, 6 bytes) feeding every rule.
    pub fn items_per_byte(&self) -> usize {
        slots::items_per_byte(self.p.routes.router.load().rule_count())
    }

    /// Bytes of work items a connection is charged per byte of carbon plaintext it reads:
    /// what a shortest line feeding two rules makes (or every rule, if fewer). Lines
    /// that make more are routed in pieces ([`Ingest::receive_lines`]), each over its
    /// charge by at most [`Ingest::piece_overshoot_bytes`].
    pub fn line_items_per_byte(&self) -> usize {
        self.items_per_byte().min(slots::items_per_byte(2))
    }

    /// Bytes of work items a piece of [`Ingest::receive_lines`] may make beyond its
    /// charge: [`crate::codec::RUN`] lines each feeding every rule.
    pub fn piece_overshoot_bytes(&self) -> usize {
        let rules = self.p.routes.router.load().rule_count().max(1);
        crate::codec::RUN * rules * slots::WORK_ITEM_BYTES
    }

    /// The decoder limits.
    pub fn limits(&self) -> &Limits {
        &self.p.routes.limits
    }

    /// Submits the frame of this connection's kind received at `now` (Unix s) that
    /// [`Ingest::frame`] has just routed to the journal, with its verdict, when the
    /// journal is on; [`Ingest::flush`] waits for it before handing its datapoints on.
    pub async fn journal(&mut self, payload: &Bytes, now: f64) {
        self.journal_as(payload, now, self.kind, None).await;
    }

    /// Like [`Ingest::journal`], with the record's kind and tenant given (HTTP bodies).
    pub(crate) async fn journal_as(
        &mut self,
        payload: &Bytes,
        now: f64,
        kind: Kind,
        tenant: Option<Arc<str>>,
    ) {
        self.submit(payload, now, kind, self.peer, tenant).await;
    }

    /// Submits a record of the frame just routed, with the verdict routing made.
    async fn submit(
        &mut self,
        payload: &Bytes,
        now: f64,
        kind: Kind,
        peer: SocketAddr,
        tenant: Option<Arc<str>>,
    ) {
        self.frames.lookup.now = now;
        if self.p.journal.is_none() {
            return;
        }
        let (attachment, attached) = match self.p.cluster {
            Some(_) => {
                let (routed, items) = self.frames.take_routed();
                let a: crate::journal::follow::Attachment = Box::new(routed);
                (Some(a), items)
            }
            None => (None, 0),
        };
        let record = NewRecord {
            received_us: (now * 1e6) as i64,
            listener: self.listener,
            kind,
            peer,
            tenant,
            payload: payload.clone(),
            verdict: self.frames.take_verdict(),
            attachment,
        };
        self.handoff.journal(&self.p, record, attached).await;
    }

    /// Decodes and routes one frame of input `kind` received at `now` (for `tenant`, on
    /// HTTP), through the frame router ([`FrameRouter::frame`]). A frame unusable as a
    /// whole is counted under its reason. The datapoints it refuses make the frame's
    /// verdict, which [`Ingest::journal_as`] writes with its record.
    ///
    /// Errors: the frame is unusable as a whole (an HTTP listener answers 400 with it).
    pub fn frame(
        &mut self,
        kind: Kind,
        payload: &[u8],
        tenant: Option<&str>,
        now: f64,
    ) -> Result<(), FrameError> {
        self.frames.frame(kind, payload, tenant, now)
    }

    /// Re-reads a journal record (the start-up rebuild): [`FrameRouter::reread`].
    pub(crate) fn reread(&mut self, rec: &Record<'_>) {
        self.frames.reread(rec);
    }

    /// A frame of this connection's kind received at `now`: decoded and routed, then
    /// journaled with its verdict ([`Ingest::frame`], then [`Ingest::journal`]; a frame
    /// unusable as a whole is counted there).
    pub async fn receive(&mut self, payload: &Bytes, now: f64) {
        let _ = self.frame(self.kind, payload, None, now);
        self.journal(payload, now).await;
    }

    /// A run of complete carbon plaintext lines received at `now`, like
    /// [`Ingest::receive`], in pieces whose work items stay within `max_items` (with the
    /// work attached to records not yet written): a piece is routed
    /// ([`FrameRouter::lines_within`]) and journaled as a record of its own, and
    /// everything pending is handed on ([`Ingest::flush`]) before the next piece is
    /// routed. So a connection is charged for the work items its lines actually make, not
    /// for a shortest line feeding every rule; a piece exceeds `max_items` by at most
    /// [`crate::codec::RUN`] lines' outputs.
    pub async fn receive_lines(&mut self, payload: &Bytes, now: f64, max_items: usize) {
        let mut rest = payload.clone();
        loop {
            let room = max_items.saturating_sub(self.handoff.attached_items());
            let used = match self.frames.lines_within(&rest, now, room.max(1)) {
                0 => rest.len(),
                n => n,
            };
            let piece = rest.split_to(used);
            self.journal(&piece, now).await;
            if rest.is_empty() {
                return;
            }
            self.flush().await;
        }
    }

    /// A datagram from `peer` received at `now`, like [`Ingest::receive`] (a UDP
    /// socket's one `Ingest` serves every peer).
    pub(crate) async fn receive_from(&mut self, payload: &Bytes, now: f64, peer: SocketAddr) {
        let _ = self.frame(self.kind, payload, None, now);
        self.submit(payload, now, self.kind, peer, None).await;
    }

    /// Counts `n` rejections of `reason` found by a framer.
    pub fn reject(&mut self, reason: DropReason, n: u64) {
        self.frames
            .lookup
            .tally
            .add(reason, n, self.frames.lookup.now);
    }

    /// Datapoints accepted so far, and rejections per reason (with a count), over this
    /// Ingest's life.
    pub(crate) fn outcome(&self) -> (u64, Vec<(DropReason, u64)>) {
        let r = &self.frames.lookup;
        (r.received_total, r.tally.totals())
    }

    /// Hands every pending batch on once the journal has its frames (see the module
    /// docs for what a full worker queue does), then adds this connection's counts to the
    /// process counters (not for the rebuild, whose input was counted when received).
    pub async fn flush(&mut self) {
        let FrameRouter {
            lookup: r, batches, ..
        } = &mut self.frames;
        let (mut forwards, staged) = self
            .handoff
            .flush(&self.p, batches, &mut r.tally, self.peer, r.now)
            .await;
        forwards.append(&mut batches.forwards);
        let received = staged + std::mem::take(&mut r.received);
        self.publish(forwards, received);
    }

    /// Pipelined [`Ingest::flush`] for a TCP connection's reads: hands on the previous
    /// read's work (once the journal has its frames) and sets this read's aside, so the
    /// journal writes it while the connection reads and decodes the next. A connection
    /// calls [`Ingest::flush`] before it waits for its socket, so nothing set aside
    /// waits for more input.
    pub async fn stage(&mut self) {
        let FrameRouter {
            lookup: r, batches, ..
        } = &mut self.frames;
        let routed = std::mem::take(&mut r.received);
        let (forwards, received) = self
            .handoff
            .stage(&self.p, batches, &mut r.tally, self.peer, r.now, routed)
            .await;
        self.publish(forwards, received);
    }

    /// Work items set aside by [`Ingest::stage`] and not yet handed on.
    pub fn staged_items(&self) -> usize {
        self.handoff.staged_items()
    }

    /// Forwards `forwards` and adds this connection's counts (`received` datapoints
    /// handed on, and its drops) to the process counters (not for the rebuild, whose
    /// input was counted when received).
    fn publish(&mut self, forwards: Vec<crate::datapoint::OutPoint>, received: u64) {
        let r = &mut self.frames.lookup;
        if !self.counted {
            r.tally = DropTally::default();
            return;
        }
        if !forwards.is_empty() {
            let s = &self.p.stats;
            s.forwarded
                .fetch_add(forwards.len() as u64, Ordering::Relaxed);
            self.p.forward.send(forwards.into());
        }
        self.p.stats.received.fetch_add(received, Ordering::Relaxed);
        r.tally
            .flush(&self.p.stats, &format_args!("from {}", self.peer));
    }

    /// [`Ingest::flush`] from a thread that may block: the start-up rebuild, which runs
    /// on tokio's blocking pool.
    pub(crate) fn flush_blocking(&mut self) {
        tokio::runtime::Handle::current().block_on(self.flush());
    }
}

#[cfg(test)]
mod tests;
