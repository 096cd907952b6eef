//! Routing: which output series a metric path feeds, computed once per distinct path.
//!
//! A route is the `[pre]`-rewritten path matched against every aggregation rule (one
//! [`RegexSet`](regex::RegexSet) pass, then captures for the matching rules only), plus the
//! `[post]`-rewritten name to forward when `forward_all` is on and no output equals the
//! path itself (carbon's rule). Routes are cached in a concurrent map shared by all
//! listener tasks; when it reaches `route_cache_entries` it is emptied and refills on
//! demand, which keeps memory bounded without bookkeeping on the hit path.
//!
//! Each output series is owned by one worker: `fnv1a64(name) % workers`, a stable hash, so
//! the same series always lands on the same worker and its buckets need no locks.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use dashmap::DashMap;

use crate::config::Aggregation;
use crate::method::Method;

use crate::hash::fnv1a64;

/// Identity of an output series, shared between the route cache and the owning worker.
///
/// Equality and hashing use the name only: carbon keys buffers by output name, and the
/// rule that created the buffer first decides its method and frequency.
#[derive(Debug)]
pub struct SeriesKey {
    /// Output metric path.
    pub name: Arc<str>,
    /// `fnv1a64(name)`, reused as the worker's hash-map hash.
    pub hash: u64,
    /// Method of the rule that produced this route.
    pub method: Method,
    /// Interval length in seconds.
    pub frequency: u32,
}

impl PartialEq for SeriesKey {
    /// Same key object, or same name (the hash first, so unequal names rarely get to a
    /// string comparison).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other) || (self.hash == other.hash && self.name == other.name)
    }
}
impl Eq for SeriesKey {}
impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A hasher for keys that carry their own precomputed hash ([`SeriesKey`]).
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys without a precomputed hash; fold the bytes in.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for maps keyed by [`SeriesKey`].
pub(crate) type Prehashed = BuildHasherDefault<PrehashedHasher>;

/// One output series a path feeds, and the batch it goes into.
#[derive(Clone, Debug)]
pub struct Output {
    /// The series.
    pub key: Arc<SeriesKey>,
    /// Its output index, below [`Router::outputs`]: the worker that owns the series
    /// ([`crate::hash::worker_of`]), or for cluster mode's connections its shard (whose
    /// router has one output per shard).
    pub index: usize,
    /// Index of the rule (file order) that produced it.
    pub rule: usize,
}

/// Everything aggd does with datapoints of one metric path.
#[derive(Clone, Debug, Default)]
pub struct Route {
    /// Output series, in rule order; up to two inline (the common sum-and-count case
    /// costs no pointer chase after the route's own cache line).
    pub outputs: smallvec::SmallVec<[Output; 2]>,
    /// Name to forward the raw datapoint under, if `forward_all` applies.
    pub forward: Option<Arc<str>>,
    /// Set when the white/blacklists drop the path (then there are no outputs and no
    /// forward): the reason to count.
    pub filtered: Option<crate::reason::DropReason>,
}

impl Route {
    /// The route of a path the white/blacklists drop for `reason`.
    fn filtered(reason: crate::reason::DropReason) -> Route {
        Route {
            filtered: Some(reason),
            ..Route::default()
        }
    }
}

/// Computes and caches routes.
pub struct Router {
    aggregation: Aggregation,
    workers: usize,
    /// Keyed by the received path; aHash (randomly keyed, so hostile paths cannot force
    /// collisions) instead of SipHash, which was a quarter of the ingest profile.
    cache: DashMap<Box<str>, Arc<Route>, ahash::RandomState>,
    /// One [`SeriesKey`] per output name, shared by every route that feeds it: a worker
    /// recognises it by pointer, and 100 input paths feeding one output hold one key, not
    /// 100. Entries nobody else holds are dropped whenever the route cache is emptied.
    keys: DashMap<Arc<str>, Arc<SeriesKey>, ahash::RandomState>,
    /// Cluster mode's rules cutover: the router of the rules before these, for datapoints
    /// stamped before the activation time (`docs/cluster.md`, "Changing the rules").
    earlier: Option<Cutover>,
}

/// A rules cutover at an interval boundary: datapoints stamped before `at` are routed by
/// `router` (the rules in force before), those from `at` on by the router holding this.
pub struct Cutover {
    /// The activation time (Unix s), a multiple of every rule's frequency.
    pub at: i64,
    /// The router of the earlier rules (itself possibly with an earlier cutover).
    pub router: Arc<Router>,
}

/// Most rule sets a router keeps for datapoints stamped before its activation time: the
/// current one and two earlier ones.
const CUTOVER_DEPTH: usize = 2;

impl Router {
    /// A router for `workers` workers (at least 1).
    pub fn new(aggregation: Aggregation, workers: usize) -> Self {
        Router {
            aggregation,
            workers: workers.max(1),
            cache: DashMap::with_hasher(ahash::RandomState::new()),
            keys: DashMap::with_hasher(ahash::RandomState::new()),
            earlier: None,
        }
    }

    /// This router, routing datapoints stamped before `at` (Unix s) with `before` (the
    /// router in force until now); of `before`'s own earlier rule sets, those beyond
    /// [`CUTOVER_DEPTH`] are let go (their datapoints are older than two rule changes).
    pub fn cut_over(mut self, at: i64, before: &Arc<Router>) -> Self {
        self.earlier = Some(Cutover {
            at,
            router: before.keeping(CUTOVER_DEPTH - 1),
        });
        self
    }

    /// This router with at most `depth` earlier rule sets below it: itself when it has no
    /// more, else a copy (with empty caches) whose chain is cut there.
    fn keeping(self: &Arc<Router>, depth: usize) -> Arc<Router> {
        let earlier = match (&self.earlier, depth) {
            (None, _) => return Arc::clone(self),
            (Some(_), 0) => None,
            (Some(c), _) => {
                let kept = c.router.keeping(depth - 1);
                if Arc::ptr_eq(&kept, &c.router) {
                    return Arc::clone(self);
                }
                Some(Cutover {
                    at: c.at,
                    router: kept,
                })
            }
        };
        let mut copy = Router::new(self.aggregation.clone(), self.workers);
        copy.earlier = earlier;
        Arc::new(copy)
    }

    /// This router, keeping `other`'s cutover (the rules before it and its activation
    /// time): a reload that changes no rule.
    pub fn keeping_cutover_of(mut self, other: &Router) -> Self {
        self.earlier = other.earlier.as_ref().map(|c| Cutover {
            at: c.at,
            router: Arc::clone(&c.router),
        });
        self
    }

    /// The router of the rules before its cutover, if it has one.
    pub fn earlier(&self) -> Option<&Arc<Router>> {
        self.earlier.as_ref().map(|c| &c.router)
    }

    /// The aggregation settings it routes by.
    pub fn aggregation(&self) -> &Aggregation {
        &self.aggregation
    }

    /// The activation time (Unix s, as `f64`) before which [`Router::for_timestamp`]
    /// routes by earlier rules; `-∞` without a cutover.
    #[inline]
    pub fn cutover_at(&self) -> f64 {
        self.earlier
            .as_ref()
            .map_or(f64::NEG_INFINITY, |c| c.at as f64)
    }

    /// The router whose rules apply to a datapoint stamped `timestamp` (Unix s): this
    /// one, or the earlier rule set in force at that time.
    pub fn for_timestamp(&self, timestamp: f64) -> &Router {
        let mut r = self;
        while let Some(c) = &r.earlier {
            if timestamp >= c.at as f64 {
                break;
            }
            r = &c.router;
        }
        r
    }

    /// The aggregation rules it routes by.
    pub fn rules(&self) -> Arc<crate::rules::aggregation::AggregationRules> {
        Arc::clone(&self.aggregation.rules)
    }

    /// Number of cached routes.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Seconds timestamps are floored to a multiple of (0: off).
    pub fn timestamp_resolution(&self) -> u32 {
        self.aggregation.timestamp_resolution
    }

    /// How many aggregation rules there are (the most output series one path feeds).
    pub fn rule_count(&self) -> usize {
        self.aggregation.rules.rules().len()
    }

    /// How many output indexes its routes use ([`Output::index`]: workers, or shards
    /// for cluster mode's connections).
    pub fn outputs(&self) -> usize {
        self.workers
    }

    /// The shared route cache's capacity (`route_cache_entries`).
    pub fn route_cache_entries(&self) -> usize {
        self.aggregation.route_cache_entries
    }

    /// Computes the route of `path` without the cache: the white/blacklists on the path
    /// as received, then the `[pre]` rewrite, the rules and the forward.
    pub fn compute(&self, path: &str) -> Route {
        match self.aggregation.lists.check(path) {
            Some(reason) => Route::filtered(reason),
            None => self.compute_listed(path),
        }
    }

    /// The route of `path`, which the white/blacklists let through.
    fn compute_listed(&self, path: &str) -> Route {
        let a = &self.aggregation;
        let rewritten = a.rewrite.apply_pre(path);
        let rules = a.rules.rules();
        let outputs: smallvec::SmallVec<[Output; 2]> = a
            .rules
            .matches(&rewritten)
            .into_iter()
            .map(|(i, name)| {
                let key = self.intern(&name, || (rules[i].method, rules[i].frequency));
                Output {
                    index: crate::hash::worker_of(key.hash, self.workers),
                    rule: i,
                    key,
                }
            })
            .collect();
        let forward = (a.forward_all && !outputs.iter().any(|o| *o.key.name == *rewritten))
            .then(|| Arc::from(a.rewrite.apply_post(&rewritten).as_ref()));
        Route {
            outputs,
            forward,
            filtered: None,
        }
    }

    /// The shared key of output series `name`; a new one gets the method and frequency
    /// `rule` gives (the first rule to produce a name decides, as carbon's first buffer).
    fn intern(&self, name: &str, rule: impl FnOnce() -> (Method, u32)) -> Arc<SeriesKey> {
        if let Some(k) = self.keys.get(name) {
            return Arc::clone(&k);
        }
        let (method, frequency) = rule();
        let name: Arc<str> = name.into();
        let key = self.keys.entry(Arc::clone(&name)).or_insert_with(|| {
            Arc::new(SeriesKey {
                hash: fnv1a64(name.as_bytes()),
                name,
                method,
                frequency,
            })
        });
        Arc::clone(&key)
    }

    /// Number of interned output series keys.
    pub fn interned(&self) -> usize {
        self.keys.len()
    }

    /// The route of `path`, shared; computed and cached on a miss after `admit_new`
    /// passes. Connections keep the result in a private cache ([`LocalRoutes`]).
    pub fn lookup(
        &self,
        path: &str,
        admit_new: impl FnOnce() -> Result<(), crate::reason::DropReason>,
    ) -> Result<Arc<Route>, crate::reason::DropReason> {
        if let Some(r) = self.cache.get(path) {
            return Ok(Arc::clone(&r));
        }
        // A filtered path is no series of its tenant's; a path over the tenant's series
        // limit costs no rule matching.
        let route = Arc::new(match self.aggregation.lists.check(path) {
            Some(reason) => Route::filtered(reason),
            None => {
                admit_new()?;
                self.compute_listed(path)
            }
        });
        if self.cache.len() >= self.aggregation.route_cache_entries {
            self.cache.clear();
            // Keys only the interner still holds feed no cached route and no live series.
            // Holders clone a key only through the interner's locked entry, so a count of
            // one cannot grow while `retain` holds the shard.
            self.keys.retain(|_, k| Arc::strong_count(k) > 1);
        }
        self.cache.insert(path.into(), Arc::clone(&route));
        Ok(route)
    }
}

/// The bytes that all connections' private route caches may hold together
/// (`limits.private_route_cache_bytes`): a connection whose cache cannot take another
/// entry is served by the shared cache instead, so many connections with many distinct
/// paths cannot multiply memory.
#[derive(Debug)]
pub struct RouteBudget {
    left: AtomicIsize,
}

impl RouteBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Arc<RouteBudget> {
        Arc::new(RouteBudget {
            left: AtomicIsize::new(isize::try_from(bytes).unwrap_or(isize::MAX)),
        })
    }

    /// Takes `n` bytes if that many are left.
    fn take(&self, n: usize) -> bool {
        let n = n as isize;
        if self.left.fetch_sub(n, Ordering::Relaxed) < n {
            self.left.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give(&self, n: usize) {
        self.left.fetch_add(n as isize, Ordering::Relaxed);
    }

    /// Bytes not taken.
    pub fn left(&self) -> isize {
        self.left.load(Ordering::Relaxed)
    }
}

/// Heap bytes a private cache entry is charged beyond its path: the table slot, the
/// `String` and the `Arc` of its route.
pub(crate) const ENTRY_BYTES: usize = 64;

/// A connection's private route cache in front of the shared one: no lock and no atomic
/// operation on a hit, and warm in the connection's core. Bounded by [`LOCAL_ROUTES`]
/// entries and by a [`RouteBudget`] shared with every other connection: when either is
/// reached, further paths are served by the shared cache without being kept (emptying it
/// each time would thrash when a connection sees more paths than that), and it is emptied
/// only after eight times its size in such misses, so a drifting set of paths still renews
/// it. Emptied when a reload swaps the router; its bytes go back to the budget when it is
/// emptied or dropped.
pub struct LocalRoutes {
    /// Keyed by the received path, held inline up to 24 bytes (no pointer chase to
    /// compare a short path).
    map: hashbrown::HashMap<compact_str::CompactString, Arc<Route>, ahash::RandomState>,
    /// Owns every route in `map` (and outlives it in the batches that hold it).
    generation: Arc<RouteGeneration>,
    /// Lookups that missed while the cache was full, since it was last emptied.
    full_misses: usize,
    /// The route of the last such miss (held so a reference can be returned).
    overflow: Option<Arc<Route>>,
    /// Where this cache's bytes come from.
    budget: Arc<RouteBudget>,
    /// Bytes taken from the budget.
    bytes: usize,
    /// Most entries ([`LOCAL_ROUTES`] unless [`LocalRoutes::with_max_entries`]).
    max_entries: usize,
}

impl Default for LocalRoutes {
    /// A cache with a budget of its own, unbounded in bytes (replay and tests).
    fn default() -> Self {
        LocalRoutes::new(RouteBudget::new(usize::MAX))
    }
}

impl Drop for LocalRoutes {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Owns every route a [`LocalRoutes`] cached since it was last emptied, so that work items
/// pointing at their output series' keys stay valid after the cache lets go of them: a
/// batch of work items holds the generation its routes came from
/// ([`crate::aggregate::batch`]). Locked only when a route is added.
#[derive(Debug, Default)]
pub struct RouteGeneration(std::sync::Mutex<Vec<Arc<Route>>>);

/// What owns a route [`LocalRoutes::get`] returned, for as long as it lives.
#[derive(Clone, Copy, Debug)]
pub enum RouteOwner<'a> {
    /// The cache's current generation.
    Generation(&'a Arc<RouteGeneration>),
    /// The route itself (the cache had no room for it).
    Alone(&'a Arc<Route>),
}

/// Most routes one connection caches privately.
pub const LOCAL_ROUTES: usize = 1 << 16;

impl LocalRoutes {
    /// An empty cache charging `budget`.
    pub fn new(budget: Arc<RouteBudget>) -> Self {
        LocalRoutes {
            map: hashbrown::HashMap::default(),
            generation: Arc::default(),
            full_misses: 0,
            overflow: None,
            budget,
            bytes: 0,
            max_entries: LOCAL_ROUTES,
        }
    }

    /// An empty cache charging `budget` that holds up to `max` entries (cluster mode's
    /// publisher, the one reader of every path the node receives).
    pub fn with_max_entries(budget: Arc<RouteBudget>, max: usize) -> Self {
        let mut routes = LocalRoutes::new(budget);
        routes.max_entries = max;
        routes
    }

    /// The route of `path`: from this cache, else from `router` (see [`Router::lookup`]),
    /// with what owns it: this cache's generation, or (a route the cache had no room for)
    /// the route alone.
    #[inline]
    pub fn get(
        &mut self,
        router: &Router,
        path: &str,
        admit_new: impl FnOnce() -> Result<(), crate::reason::DropReason>,
    ) -> Result<(&Route, RouteOwner<'_>), crate::reason::DropReason> {
        if self.full_misses > 8 * self.map.len().max(1024) {
            self.clear();
        }
        let room = self.map.len() < self.max_entries;
        let LocalRoutes {
            map,
            generation,
            full_misses,
            overflow,
            budget,
            bytes,
            ..
        } = self;
        // One hash lookup on a hit; the key is allocated only on insert.
        match map.entry_ref(path) {
            hashbrown::hash_map::EntryRef::Occupied(o) => {
                Ok((&**o.into_mut(), RouteOwner::Generation(generation)))
            }
            hashbrown::hash_map::EntryRef::Vacant(v) => {
                let r = router.lookup(path, admit_new)?;
                let cost = path.len() + ENTRY_BYTES;
                if room && budget.take(cost) {
                    *bytes += cost;
                    generation
                        .0
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Arc::clone(&r));
                    let key = compact_str::CompactString::from(path);
                    Ok((
                        &**v.insert_with_key(key, r),
                        RouteOwner::Generation(generation),
                    ))
                } else {
                    *full_misses += 1;
                    let r = overflow.insert(r);
                    Ok((&**r, RouteOwner::Alone(r)))
                }
            }
        }
    }

    /// The cached route of `path`, without asking the router (owned by
    /// [`LocalRoutes::generation`]).
    #[inline]
    pub(crate) fn peek(&self, path: &str) -> Option<&Route> {
        self.map.get(path).map(|r| &**r)
    }

    /// What owns every route this cache holds now.
    #[inline]
    pub(crate) fn generation(&self) -> &Arc<RouteGeneration> {
        &self.generation
    }

    /// Forgets every route (the router was swapped) and frees the table; the routes stay
    /// alive in their generation while a batch holds it.
    pub fn clear(&mut self) {
        self.map = hashbrown::HashMap::default();
        self.generation = Arc::default();
        self.full_misses = 0;
        self.budget.give(std::mem::take(&mut self.bytes));
    }
}

#[cfg(test)]
mod tests;
