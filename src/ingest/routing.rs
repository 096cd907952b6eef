//! Routing: from decoded datapoints to per-worker batches. For each datapoint the tenant
//! gate (state, rate limits, then the series limit for a path new to the route cache),
//! then the route: a hit in the connection's private route cache, else the shared one
//! ([`crate::route`]), then one [`WorkItem`] per output series into its worker's batch and
//! the raw datapoint into the forward batch if the route forwards. Nothing here blocks or
//! does IO; rejections are counted in the connection's [`DropTally`] and quarantined.

use std::sync::Arc;

use crate::aggregate::batch::Batch;
use crate::datapoint::{Datapoint, OutPoint, OutValue};
use crate::drops::DropTally;
use crate::journal::Verdict;
use crate::reason::DropReason;
use crate::route::{LocalRoutes, Route, RouteBudget, RouteOwner, Router};
use crate::tenant::prefix;

use super::Routes;

/// What routing produced and hand-off has not yet sent on.
pub(super) struct Batches {
    /// Per output index of the router's routes (per worker, or per shard in cluster
    /// mode), the work items for its series.
    pub pending: Vec<Batch>,
    /// The indexes of `pending` that became non-empty since it was last emptied.
    touched: Vec<u32>,
    /// Work items in `pending`.
    pub items: usize,
    /// Raw datapoints to forward to the destinations (`forward_all`).
    pub forwards: Vec<OutPoint>,
}

/// A journal record's routed datapoints, per shard (cluster mode): what its connection
/// attaches to the record ([`crate::journal::NewRecord::attachment`]), so the publisher
/// need not decode and route the record again.
pub struct Routed {
    /// The work items, shard by shard.
    pub items: Batch,
    /// `(shard, end)`: shard `shard`'s items end at `items[end]` (and begin where the
    /// previous shard's end), in the order the shards were first fed.
    pub shards: Vec<(u32, usize)>,
    /// The cutover time of the router that routed them ([`Router::cutover_at`]): a
    /// publisher lane whose router has another one routes the record again from the
    /// journal, by the rules the cluster has now.
    pub cutover: f64,
}

impl Routed {
    /// Each shard with its work items.
    pub fn by_shard(&self) -> impl Iterator<Item = (u32, &[crate::aggregate::batch::WorkItem])> {
        let items = self.items.items();
        let mut start = 0;
        self.shards.iter().map(move |&(k, end)| {
            let run = &items[start..end];
            start = end;
            (k, run)
        })
    }
}

impl Batches {
    /// Empty batches for `outputs` output indexes.
    pub fn new(outputs: usize) -> Self {
        Batches {
            pending: (0..outputs).map(|_| Batch::new()).collect(),
            touched: Vec::new(),
            items: 0,
            forwards: Vec::new(),
        }
    }

    /// Takes every pending batch's work items, as one [`Routed`] (one allocation; the
    /// batches keep their room), and their number.
    pub fn take_routed(&mut self) -> (Routed, usize) {
        let total = (self.touched.iter())
            .map(|&k| self.pending[k as usize].len())
            .sum();
        let mut items = Batch::with_capacity(total);
        let mut shards = Vec::with_capacity(self.touched.len());
        for k in self.touched.drain(..) {
            items.append(&mut self.pending[k as usize]);
            shards.push((k, items.len()));
        }
        self.items = 0;
        let cutover = f64::NEG_INFINITY;
        (
            Routed {
                items,
                shards,
                cutover,
            },
            total,
        )
    }

    /// Forgets which batches were fed: every one of `pending` was emptied.
    pub fn emptied(&mut self) {
        self.touched.clear();
        self.items = 0;
    }

    /// Queues `dp` for each of `route`'s output series (per owning worker) and, if the
    /// route forwards, for the destinations. `owner` owns `route` (and so its output
    /// series' keys): each batch holds it, so no reference count is touched per item.
    #[inline]
    fn dispatch(&mut self, route: &Route, owner: RouteOwner<'_>, dp: &Datapoint<'_>) {
        self.items += route.outputs.len();
        for o in &route.outputs {
            let batch = &mut self.pending[o.index];
            if batch.is_empty() {
                self.touched.push(o.index as u32);
            }
            match owner {
                RouteOwner::Generation(g) => batch.hold_once(g),
                RouteOwner::Alone(r) => batch.hold_once(r),
            }
            // SAFETY: `o.key` is owned by `route`, which `owner` owns and never lets go
            // of (a generation only grows; a route owns its outputs), and the batch holds
            // `owner` from the line above until it is emptied.
            #[allow(unsafe_code)]
            unsafe {
                batch.push_held(&o.key, dp.timestamp, dp.value);
            }
        }
        if let Some(name) = &route.forward {
            self.forwards.push(OutPoint {
                path: Arc::clone(name),
                timestamp: dp.timestamp,
                value: OutValue::Float(dp.value),
                interval: None,
            });
        }
    }
}

/// One frame router's route lookup: the router in use, its private route cache, and
/// what it counted (one per connection, replay, rebuild or publisher lane).
pub(super) struct RouteLookup {
    /// The router in use, refreshed from the pipeline at the start of every frame.
    router: Arc<Router>,
    /// Its cutover time ([`Router::cutover_at`]): datapoints stamped before it are routed
    /// by the earlier rules.
    cutover: f64,
    /// The router of the rules before the cutover, with a private route cache of its own.
    earlier: Option<(Arc<Router>, LocalRoutes)>,
    /// This connection's private route cache (emptied when the router changes).
    routes: LocalRoutes,
    /// The budget it charges.
    routes_budget: Arc<crate::route::RouteBudget>,
    /// Receive time of the frame being routed (Unix s): dates drops that have no
    /// timestamp of their own.
    pub now: f64,
    /// Rejections not yet added to the process counters.
    pub tally: DropTally,
    /// Datapoints routed and not yet added to the process counters.
    pub received: u64,
    /// Datapoints routed over the connection's life (for HTTP responses).
    pub received_total: u64,
    /// Datapoints the white/blacklists filtered, not yet taken.
    pub filtered: u64,
    /// The decode item (see [`Verdict`]) of the frame being routed that comes next.
    pub item: u32,
    /// The frame's datapoints refused so far, for its journal record.
    pub verdict: Verdict,
}

impl RouteLookup {
    /// A lookup with `p`'s current router.
    pub fn new(p: &Routes) -> Self {
        let router = p.router.load_full();
        RouteLookup {
            cutover: router.cutover_at(),
            earlier: earlier_of(&router, &p.route_budget),
            router,
            routes: LocalRoutes::new(Arc::clone(&p.route_budget)),
            routes_budget: Arc::clone(&p.route_budget),
            now: 0.0,
            tally: DropTally::default(),
            received: 0,
            received_total: 0,
            filtered: 0,
            item: 0,
            verdict: Verdict::default(),
        }
    }

    /// The cutover time of its router ([`Router::cutover_at`]).
    pub fn cutover(&self) -> f64 {
        self.cutover
    }

    /// A private route cache of up to `max` paths (within the pipeline's budget).
    pub(crate) fn private_cache(&mut self, max: usize) {
        self.routes = LocalRoutes::with_max_entries(Arc::clone(&self.routes_budget), max);
    }

    /// Takes the current router (a reload may have swapped it) for a frame received at
    /// `now`.
    pub(crate) fn start_frame(&mut self, p: &Routes, now: f64) {
        self.now = now;
        self.item = 0;
        self.verdict.clear();
        let current = p.router.load();
        if !Arc::ptr_eq(&current, &self.router) {
            self.router = Arc::clone(&current);
            self.cutover = current.cutover_at();
            self.earlier = earlier_of(&current, &self.routes_budget);
            self.routes.clear();
        }
    }

    /// Routes one datapoint, decode item `item` of its frame, through the tenant gate and
    /// the route caches; a path the white/blacklists filter is counted (not quarantined: a
    /// filter is no loss). A refusal goes into the frame's verdict.
    #[inline]
    pub(crate) fn accept(&mut self, p: &Routes, out: &mut Batches, dp: &Datapoint<'_>, item: u32) {
        // The tenant gate: state and rate limits, then (for a path new to the route cache)
        // the series limit. Reads a lock-free registry snapshot; never blocks.
        let tenant = p.tenants.as_deref().map(|t| (t, prefix(dp.path)));
        if let Some((t, id)) = tenant
            && let Err(reason) = t.admit(id, dp.path, self.now as u64)
        {
            return self.reject_point(p, reason, dp, item);
        }
        let admit_new = || match tenant {
            Some((t, id)) => t.admit_series(id, dp.path),
            None => Ok(()),
        };
        // The rules in force at the datapoint's time: the router's, or (stamped before
        // its cutover) the earlier ones'.
        let (router, routes) = match &mut self.earlier {
            Some(earlier) if dp.timestamp < self.cutover => {
                if dp.timestamp < earlier.0.cutover_at() {
                    return self.accept_oldest(p, out, dp, item, admit_new);
                }
                (&*earlier.0, &mut earlier.1)
            }
            _ => (&*self.router, &mut self.routes),
        };
        let resolution = router.timestamp_resolution();
        match routes.get(router, dp.path, admit_new) {
            Ok((route, owner)) => match route.filtered {
                Some(reason) => {
                    self.tally.add(reason, 1, dp.timestamp);
                    self.verdict.refuse(item, reason);
                    self.filtered += 1;
                }
                None => {
                    out.dispatch(route, owner, &floored(dp, resolution));
                    self.received += 1;
                    self.received_total += 1;
                }
            },
            Err(reason) => self.reject_point(p, reason, dp, item),
        }
    }

    /// [`RouteLookup::accept`] for a datapoint stamped before the earlier rules' own
    /// cutover (older than two rules changes): routed by the rules in force at its
    /// timestamp, through their shared route cache.
    #[cold]
    fn accept_oldest(
        &mut self,
        p: &Routes,
        out: &mut Batches,
        dp: &Datapoint<'_>,
        item: u32,
        admit_new: impl FnOnce() -> Result<(), DropReason>,
    ) {
        let router = Arc::clone(&self.router);
        let oldest = router.for_timestamp(dp.timestamp);
        match oldest.lookup(dp.path, admit_new) {
            Ok(route) => match route.filtered {
                Some(reason) => {
                    self.tally.add(reason, 1, dp.timestamp);
                    self.verdict.refuse(item, reason);
                    self.filtered += 1;
                }
                None => {
                    let dp = floored(dp, oldest.timestamp_resolution());
                    out.dispatch(&route, RouteOwner::Alone(&route), &dp);
                    self.received += 1;
                    self.received_total += 1;
                }
            },
            Err(reason) => self.reject_point(p, reason, dp, item),
        }
    }

    /// Counts, quarantines and enters in the verdict a datapoint (decode item `item`)
    /// refused by the gate or the route.
    fn reject_point(&mut self, p: &Routes, reason: DropReason, dp: &Datapoint<'_>, item: u32) {
        if let Some(q) = &p.quarantine {
            q.record(reason, dp.path, dp.value, dp.timestamp);
        }
        self.tally.add(reason, 1, dp.timestamp);
        self.verdict.refuse(item, reason);
    }

    /// A decode item that is a rejection (a bad line or element): counted, and numbered.
    pub(crate) fn reject_item(&mut self, reason: DropReason) {
        self.tally.add(reason, 1, self.now);
        self.item += 1;
    }

    /// Re-reading a journal record: routes the run `dps` (the next decode items of the
    /// record) except the items `verdict` refused when the record was received, unless
    /// `include` takes one back (`aggd replay --include-refused`, `--lost`); `cursor`
    /// keeps the place in the verdict between runs.
    pub(crate) fn accept_run_except(
        &mut self,
        p: &Routes,
        out: &mut Batches,
        dps: &[Datapoint<'_>],
        verdict: &Verdict,
        cursor: &mut usize,
        include: &mut dyn FnMut(DropReason, &Datapoint<'_>) -> bool,
    ) {
        let base = self.item;
        let mut start = 0;
        for i in 0..=dps.len() {
            let refused = i < dps.len()
                && verdict
                    .refused_at(cursor, base + i as u32)
                    .is_some_and(|reason| !include(reason, &dps[i]));
            if i == dps.len() || refused {
                if start < i {
                    self.item = base + start as u32;
                    self.accept_run(p, out, &dps[start..i]);
                }
                start = i + 1;
            }
        }
        self.item = base + dps.len() as u32;
    }

    /// Routes a run of datapoints in order, like [`RouteLookup::accept`] on each.
    ///
    /// Without tenants or a timestamp resolution, the private route cache is first probed
    /// for the whole run and only then are its work items written: the probes do not
    /// depend on each other, so the CPU overlaps their cache misses (with 100 000 paths
    /// per connection, the probe's first touch of a table entry was half of `accept`). A
    /// path not yet cached, or a datapoint stamped before the router's cutover, ends the
    /// probe and takes the full path.
    pub(crate) fn accept_run(&mut self, p: &Routes, out: &mut Batches, dps: &[Datapoint<'_>]) {
        let base = self.item;
        self.item += dps.len() as u32;
        if p.tenants.is_some() || self.router.timestamp_resolution() > 0 {
            for (i, dp) in dps.iter().enumerate() {
                self.accept(p, out, dp, base + i as u32);
            }
            return;
        }
        let mut next = 0;
        while next < dps.len() {
            let run = &dps[next..(next + crate::codec::RUN).min(dps.len())];
            let mut found: [Option<&Route>; crate::codec::RUN] = [None; crate::codec::RUN];
            let mut hits = 0;
            for dp in run {
                if dp.timestamp < self.cutover {
                    break;
                }
                match self.routes.peek(dp.path) {
                    Some(r) if r.filtered.is_none() => found[hits] = Some(r),
                    _ => break,
                }
                hits += 1;
            }
            let owner = RouteOwner::Generation(self.routes.generation());
            for (dp, route) in run.iter().zip(&found[..hits]) {
                out.dispatch(route.expect("found for every hit"), owner, dp);
            }
            self.received += hits as u64;
            self.received_total += hits as u64;
            next += hits;
            if let Some(dp) = dps.get(next) {
                self.accept(p, out, dp, base + next as u32);
                next += 1;
            }
        }
    }
}

/// The earlier rules of `router`'s cutover, if it has one, with an empty private route
/// cache charging `budget`.
fn earlier_of(router: &Router, budget: &Arc<RouteBudget>) -> Option<(Arc<Router>, LocalRoutes)> {
    let r = router.earlier()?;
    Some((Arc::clone(r), LocalRoutes::new(Arc::clone(budget))))
}

/// `dp` with its timestamp floored to a multiple of `resolution` seconds, as carbon's
/// MIN_TIMESTAMP_RESOLUTION does (`int(ts) // res * res`: truncated to whole seconds, then
/// floored); unchanged for 0.
#[inline]
fn floored<'a>(dp: &Datapoint<'a>, resolution: u32) -> Datapoint<'a> {
    if resolution == 0 {
        return *dp;
    }
    let res = i64::from(resolution);
    Datapoint {
        timestamp: ((dp.timestamp.trunc() as i64).div_euclid(res) * res) as f64,
        ..*dp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_floor_like_carbon() {
        let dp = |t| Datapoint {
            path: "a",
            timestamp: t,
            value: 1.0,
        };
        assert_eq!(floored(&dp(1_700_000_059.9), 60).timestamp, 1_700_000_040.0);
        assert_eq!(floored(&dp(-1.5), 60).timestamp, -60.0);
        assert_eq!(floored(&dp(7.25), 0).timestamp, 7.25);
        assert_eq!(floored(&dp(10.0), 10).timestamp, 10.0);
    }
}
