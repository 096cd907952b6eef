//! The frame router: the one routing step every reader of input uses. A frame (a run of
//! complete lines, a datagram, a pickle frame, an HTTP body, or a journal record read
//! back) is decoded ([`crate::codec::decode_frame`]) and each datapoint goes through the
//! tenant gate and the route caches into a batch per output index (per worker, or per
//! shard in cluster mode). Pure: no IO, no waiting, no process counters; it tallies what
//! it routed and refused, and the caller decides what to do with that.
//!
//! Users: a connection ([`super::Ingest`], which journals, hands on and counts), the
//! start-up rebuild (an `Ingest` that counts nothing), cluster mode's publisher (for
//! records it reads back from the journal) and `aggd replay`.

use std::sync::Arc;

use crate::aggregate::batch::Batch;
use crate::codec::FrameError;
use crate::codec::pickle::PickleDecoder;
use crate::datapoint::{Datapoint, Kind};
use crate::drops::DropTally;
use crate::journal::Verdict;
use crate::journal::record::Record;
use crate::reason::DropReason;

use super::Routes;
use super::routing::{Batches, RouteLookup, Routed};

/// Which refused datapoints a re-read routes after all, given the reason each was
/// refused for ([`FrameRouter::reread_including`]).
pub type Include<'a> = &'a mut dyn FnMut(DropReason, &Datapoint<'_>) -> bool;

/// Decodes and routes frames into per-output batches (see the module docs).
pub struct FrameRouter {
    routes: Arc<Routes>,
    /// Pickle decoding scratch, kept between frames.
    decoder: PickleDecoder,
    /// Tenant gate, route caches, tallies and the frame's verdict.
    pub(super) lookup: RouteLookup,
    /// What was routed and not yet taken.
    pub(super) batches: Batches,
}

impl FrameRouter {
    /// A router over `routes`, with one batch per output index of its router.
    pub fn new(routes: Arc<Routes>) -> Self {
        let outputs = routes.router.load().outputs();
        FrameRouter {
            lookup: RouteLookup::new(&routes),
            batches: Batches::new(outputs),
            decoder: PickleDecoder::new(),
            routes,
        }
    }

    /// Like [`FrameRouter::new`], with a private route cache of up to `max_paths` paths
    /// (within the routes' budget): a reader of every path, such as cluster mode's
    /// publisher.
    pub fn with_private_cache(routes: Arc<Routes>, max_paths: usize) -> Self {
        let mut r = FrameRouter::new(routes);
        r.lookup.private_cache(max_paths);
        r
    }

    /// What it routes with.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Decodes and routes one frame of input `kind` received at `now` (for `tenant`, on
    /// HTTP). A frame unusable as a whole is tallied under its reason. The datapoints it
    /// refuses make the frame's verdict ([`FrameRouter::take_verdict`]).
    ///
    /// Errors: the frame is unusable as a whole (an HTTP listener answers 400 with it).
    pub fn frame(
        &mut self,
        kind: Kind,
        payload: &[u8],
        tenant: Option<&str>,
        now: f64,
    ) -> Result<(), FrameError> {
        self.decode(kind, payload, tenant, now, None)
    }

    /// Decodes and routes a run of carbon plaintext lines received at `now`, like
    /// [`FrameRouter::frame`], until the pending work items reach `max_items`: then it
    /// stops after the run of datapoints that reached it (at most [`crate::codec::RUN`]
    /// lines, so at most that many lines' outputs past it). Returns the bytes routed; the
    /// rest is a frame of its own, to be routed once these items are handed on.
    pub fn lines_within(&mut self, payload: &[u8], now: f64, max_items: usize) -> usize {
        let FrameRouter {
            routes,
            lookup,
            batches,
            ..
        } = self;
        lookup.start_frame(routes, now);
        crate::codec::decode_lines_until(payload, now, &routes.limits, |r| match r {
            Ok(run) => {
                lookup.accept_run(routes, batches, run);
                batches.items < max_items
            }
            Err(reason) => {
                lookup.reject_item(reason);
                true
            }
        })
    }

    /// Re-reads a journal record: decoded and routed like [`FrameRouter::frame`] with its
    /// receive time as "now", without the datapoints its verdict says the connection
    /// refused, so exactly what the live path accepted is aggregated (invariant 6 of
    /// `DESIGN.md`).
    pub fn reread(&mut self, rec: &Record<'_>) {
        self.reread_including(rec, &mut |_, _| false);
    }

    /// [`FrameRouter::reread`], routing also each refused datapoint for which `include`
    /// (given the reason it was refused for) says yes: `aggd replay --include-refused`
    /// and `--lost`.
    pub fn reread_including(&mut self, rec: &Record<'_>, include: Include<'_>) {
        let (now, tenant) = (rec.received_at(), rec.tenant());
        // A body unusable as a whole was answered 400 (and counted) when received.
        let _ = self.decode(
            rec.meta.kind,
            rec.payload,
            tenant,
            now,
            Some((&rec.meta.verdict, include)),
        );
    }

    /// [`FrameRouter::frame`], skipping the items `except` refused (a re-read).
    fn decode(
        &mut self,
        kind: Kind,
        payload: &[u8],
        tenant: Option<&str>,
        now: f64,
        except: Option<(&Verdict, Include<'_>)>,
    ) -> Result<(), FrameError> {
        let FrameRouter {
            routes,
            decoder,
            lookup,
            batches,
        } = self;
        lookup.start_frame(routes, now);
        let mut except = except.filter(|(v, _)| !v.is_empty());
        let mut cursor = 0;
        let decoded =
            crate::codec::decode_frame(kind, payload, tenant, now, &routes.limits, decoder, |r| {
                match (r, &mut except) {
                    (Ok(run), None) => lookup.accept_run(routes, batches, run),
                    (Ok(run), Some((v, include))) => {
                        lookup.accept_run_except(routes, batches, run, v, &mut cursor, *include);
                    }
                    (Err(reason), _) => lookup.reject_item(reason),
                }
            });
        if let Err(e) = &decoded {
            lookup.tally.add(e.reason(), 1, now);
        }
        decoded
    }

    /// Datapoints routed (to their outputs, or to none) and filtered by the
    /// white/blacklists since the last call; the count is started again.
    pub fn take_routed_count(&mut self) -> u64 {
        let r = &mut self.lookup;
        std::mem::take(&mut r.received) + std::mem::take(&mut r.filtered)
    }

    /// The datapoints the frame routed last refused, for its journal record.
    pub fn take_verdict(&mut self) -> Verdict {
        std::mem::take(&mut self.lookup.verdict)
    }

    /// Every routed work item, as one [`Routed`] per shard, and their number (cluster
    /// mode's connections attach it to the frame's journal record).
    pub fn take_routed(&mut self) -> (Routed, usize) {
        let (mut routed, n) = self.batches.take_routed();
        routed.cutover = self.lookup.cutover();
        (routed, n)
    }

    /// The cutover time of its routes' router as it is now
    /// ([`crate::route::Router::cutover_at`]; the next frame is routed by it).
    pub fn cutover(&self) -> f64 {
        self.routes.router.load().cutover_at()
    }

    /// The pending work items per output index, to be drained by the caller, with the
    /// tallies forgotten (for a reader whose input was counted when first received).
    pub fn pending_uncounted(&mut self) -> &mut [Batch] {
        let r = &mut self.lookup;
        r.tally = DropTally::default();
        r.received = 0;
        r.filtered = 0;
        self.batches.forwards.clear();
        self.batches.emptied();
        &mut self.batches.pending
    }
}
