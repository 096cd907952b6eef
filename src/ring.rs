//! Placement: which destinations an outgoing metric name goes to, as carbon and
//! carbon-c-relay place it. A pure function of the name and the destination list; no IO.
//!
//! # Methods
//! - **`carbon_ch`**: carbon's `ConsistentHashRing` (carbon 1.1.x `carbon/hashing.py`,
//!   forced for carbon-aggregator whatever `RELAY_METHOD` says). Each destination is the
//!   node `(host, instance)` and gets 100 ring positions: the first two bytes, big-endian,
//!   of the MD5 of `"<str((host, instance))>:<i>"` for i in 0..100, where `str` is
//!   Python's tuple format (`('127.0.0.1', None):0`, `('10.0.0.1', 'a'):7`). A position
//!   already taken, by this node or an earlier one in `DESTINATIONS` order, moves up by one
//!   until it is free. A name's position is the same MD5 prefix of the name; its
//!   destination is the first ring entry at or after it, wrapping to the start. The port is
//!   not part of the key, so two destinations with the same (host, instance) are refused.
//! - **`carbon_fnv1a_ch`**: carbon's own `fnv1a_ch` (carbon.conf `ROUTER_HASH_TYPE =
//!   fnv1a_ch`): the same ring, positions `(h >> 16) ^ (h & 0xffff)` of FNV-1a 32 over the
//!   UTF-8 bytes, replica keys `"<i>-<instance>"` (`"0-None"` without an instance, so
//!   without instances every node gets the same keys and only the collision rule tells
//!   them apart, as in carbon).
//! - **`mmh3_ch`**: carbon's `mmh3_ch`: the same ring and keys as `carbon_ch`, positions
//!   the signed 32-bit MurmurHash3 (x86, seed 0) of the key, as Python's `mmh3.hash`.
//! - **`fnv1a_ch`**: carbon-c-relay's (3.x `consistent-hash.c`): 100 positions per
//!   server, FNV-1a 32 folded to 16 bits as above, of `"<i>-<instance>"` or, without an
//!   instance, `"<i>-<host>:<port>"`. Entries are sorted by (position, host, port) and an
//!   entry whose position equals the previous one's takes that one's server (no collision
//!   moving). c-relay hashes `char`s, which are signed on x86: bytes ≥ 0x80 are
//!   sign-extended before the xor, and so they are here.
//! - **`jump_fnv1a_ch`**: carbon-c-relay's jump consistent hash (Lamping and Veach, 2014)
//!   over FNV-1a 64 of the name (sign-extended bytes as above). Buckets are the servers
//!   with an instance, sorted by it (numerically when both are whole numbers), then those
//!   without, in the order given. A further replica rehashes with c-relay's xorshift
//!   multiply and picks among the servers not yet chosen.
//! - **`all`**: every destination gets every name (aggd's behaviour before `[routing]`).
//!
//! # Replication
//! `replication` distinct destinations per name (at most the number of destinations).
//! For the carbon methods, walking the ring from the name's position; with
//! `diverse_replicas` (carbon's `DIVERSE_REPLICAS`, default on) a destination whose host
//! was already chosen is skipped, so replicas land on different hosts. Carbon with one
//! destination and a replication factor above one sends each point to it that many times;
//! aggd sends it once. c-relay has no diverse replicas.

use std::collections::HashSet;

mod hashes;

pub(crate) use hashes::py_repr;
use hashes::{carbon_position, jump_bucket, relay_fnv1a_position, relay_fnv1a64, strtol_whole};

/// How names are placed on destinations; see the module docs for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every destination gets every name.
    All,
    /// carbon's MD5 ring.
    #[default]
    CarbonCh,
    /// carbon's FNV-1a ring.
    CarbonFnv1aCh,
    /// carbon's MurmurHash3 ring.
    Mmh3Ch,
    /// carbon-c-relay's FNV-1a ring.
    Fnv1aCh,
    /// carbon-c-relay's jump hash.
    JumpFnv1aCh,
}

impl Method {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::All => "all",
            Method::CarbonCh => "carbon_ch",
            Method::CarbonFnv1aCh => "carbon_fnv1a_ch",
            Method::Mmh3Ch => "mmh3_ch",
            Method::Fnv1aCh => "fnv1a_ch",
            Method::JumpFnv1aCh => "jump_fnv1a_ch",
        }
    }

    /// One of carbon's own rings (keyed by (host, instance)), not c-relay's.
    fn is_carbon(self) -> bool {
        matches!(
            self,
            Method::CarbonCh | Method::CarbonFnv1aCh | Method::Mmh3Ch
        )
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A destination as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Host as written (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// carbon's instance, the third field of `host:port:instance`.
    pub instance: Option<String>,
}

impl std::fmt::Display for Node {
    /// `host:port[:instance]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        match &self.instance {
            Some(i) => write!(f, ":{i}"),
            None => Ok(()),
        }
    }
}

/// Why a destination list cannot be placed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Two destinations have the same ring key.
    #[error(
        "destinations {first} and {second} have the same {key} ({method} keys the ring by it, \
         so they would take the same share); give them different instances \
         (host:port:instance), as carbon requires"
    )]
    Duplicate {
        /// The first of the two.
        first: String,
        /// The second.
        second: String,
        /// What they share: `(host, instance)`, `(host, port)` or `instance`.
        key: &'static str,
        /// The method.
        method: Method,
    },
}

/// Replica positions per destination, for every ring method (carbon's and c-relay's
/// `HASH_REPLICAS`).
pub const REPLICAS: usize = 100;

/// A destination list prepared for placing names.
#[derive(Clone)]
pub struct Placement {
    method: Method,
    replication: usize,
    diverse: bool,
    nodes: Vec<Node>,
    /// Ring entries `(position, node index)`, sorted by position (ring methods).
    ring: Vec<(i64, usize)>,
    /// Node indices in bucket order (`jump_fnv1a_ch`).
    buckets: Vec<usize>,
    /// Tells placements apart in the per-thread cache of [`Placement::place_cached`].
    id: u64,
}

impl std::fmt::Debug for Placement {
    /// Every field but the cache identity (two placements of one configuration print
    /// alike).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("method", &self.method)
            .field("replication", &self.replication)
            .field("diverse", &self.diverse)
            .field("nodes", &self.nodes)
            .field("ring", &self.ring)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

/// Names whose placement one thread remembers before it forgets them all.
pub const PLACED_CACHE_ENTRIES: usize = 1 << 17;
/// Heap bytes one remembered placement takes at most (key, value, table overhead).
pub const PLACED_ENTRY_BYTES: usize = 64;

/// Numbers placements for [`Placement::place_cached`].
static NEXT_PLACEMENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Per thread: the placement whose names are cached, and each name's destinations, keyed by
/// two independently seeded 64-bit hashes of the name (not the name itself, which may be
/// `max_path_bytes` long): a wrong placement would take two colliding 64-bit hashes of a
/// per-process random key.
type PlacedCache = (
    u64,
    std::collections::HashMap<(u64, u64), smallvec::SmallVec<[usize; 2]>, ahash::RandomState>,
);

/// The two seeded hashers of [`PlacedCache`] keys, per process.
static PLACED_KEYS: std::sync::LazyLock<(ahash::RandomState, ahash::RandomState)> =
    std::sync::LazyLock::new(|| (ahash::RandomState::new(), ahash::RandomState::new()));

thread_local! {
    static PLACED: std::cell::RefCell<PlacedCache> = std::cell::RefCell::new((u64::MAX, Default::default()));
}

impl Placement {
    /// Prepares `nodes` (in configuration order) for `method`, with `replication` copies
    /// per name (0 counts as 1; more than the destinations as all of them).
    ///
    /// Errors: two destinations with the same ring key — (host, instance) for carbon's
    /// methods, (host, port) or the instance for c-relay's.
    pub fn new(
        method: Method,
        nodes: Vec<Node>,
        replication: usize,
        diverse: bool,
    ) -> Result<Placement, PlacementError> {
        check_unique(method, &nodes)?;
        let mut p = Placement {
            method,
            replication: replication.clamp(1, nodes.len().max(1)),
            diverse,
            ring: Vec::new(),
            buckets: Vec::new(),
            nodes,
            id: NEXT_PLACEMENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        match method {
            Method::All => {}
            Method::CarbonCh | Method::CarbonFnv1aCh | Method::Mmh3Ch => p.build_carbon_ring(),
            Method::Fnv1aCh => p.build_relay_ring(),
            Method::JumpFnv1aCh => p.build_buckets(),
        }
        Ok(p)
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Destinations per name.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// Whether replicas go to different hosts.
    pub fn diverse(&self) -> bool {
        self.diverse
    }

    /// The destinations, in configuration order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether every name goes to every destination (method `all`, or at most one
    /// destination): then [`Placement::place`] need not be asked.
    pub fn is_broadcast(&self) -> bool {
        self.method == Method::All || self.nodes.len() <= 1
    }

    /// [`Placement::place`], remembered per thread and name: an output series or a
    /// forwarded path is placed once, not per datapoint (carbon_ch's MD5 costs about
    /// 140 ns). A thread remembers up to [`PLACED_CACHE_ENTRIES`] names of one placement,
    /// then starts again.
    pub fn place_cached(&self, name: &str, out: &mut Vec<usize>) {
        // Only carbon's MD5 and mmh3 rings cost more than a lookup in a large table (the
        // FNV-1a ring and jump hash take 30–35 ns, `cargo bench --bench micro`).
        if self.is_broadcast() || !matches!(self.method, Method::CarbonCh | Method::Mmh3Ch) {
            return self.place(name, out);
        }
        PLACED.with_borrow_mut(|(id, names)| {
            if *id != self.id {
                *id = self.id;
                names.clear();
            }
            let (a, b) = &*PLACED_KEYS;
            let key = (a.hash_one(name), b.hash_one(name));
            if let Some(p) = names.get(&key) {
                out.clear();
                out.extend_from_slice(p);
                return;
            }
            self.place(name, out);
            if names.len() >= PLACED_CACHE_ENTRIES {
                names.clear();
            }
            names.insert(key, out.iter().copied().collect());
        });
    }

    /// Sets `out` to the indices (configuration order) of the destinations `name` goes to:
    /// the primary first, then the replicas.
    pub fn place(&self, name: &str, out: &mut Vec<usize>) {
        out.clear();
        if self.is_broadcast() {
            out.extend(0..self.nodes.len());
            return;
        }
        match self.method {
            Method::All => unreachable!("broadcast"),
            Method::CarbonCh | Method::CarbonFnv1aCh | Method::Mmh3Ch => {
                self.place_carbon(name, out);
            }
            Method::Fnv1aCh => self.place_relay(name, out),
            Method::JumpFnv1aCh => self.place_jump(name, out),
        }
    }

    fn build_carbon_ring(&mut self) {
        let mut taken = HashSet::new();
        for (n, node) in self.nodes.iter().enumerate() {
            for i in 0..REPLICAS {
                let key = match self.method {
                    Method::CarbonFnv1aCh => {
                        format!("{i}-{}", node.instance.as_deref().unwrap_or("None"))
                    }
                    _ => format!(
                        "({}, {}):{i}",
                        py_repr(&node.host),
                        node.instance.as_deref().map_or("None".into(), py_repr)
                    ),
                };
                let mut pos = carbon_position(self.method, &key);
                while !taken.insert(pos) {
                    pos += 1;
                }
                self.ring.push((pos, n));
            }
        }
        self.ring.sort_unstable();
    }

    /// carbon's `ConsistentHashingRouter.getDestinations` over `ConsistentHashRing`.
    fn place_carbon(&self, name: &str, out: &mut Vec<usize>) {
        let len = self.ring.len();
        let pos = carbon_position(self.method, name);
        let mut i = self.ring.partition_point(|e| e.0 < pos) % len;
        // carbon walks every entry but the one just before the start.
        let last = (i + len - 1) % len;
        let mut hosts: Vec<&str> = Vec::new();
        while out.len() < self.replication && i != last {
            let n = self.ring[i].1;
            i = (i + 1) % len;
            if out.contains(&n) {
                continue;
            }
            let host = self.nodes[n].host.as_str();
            if self.diverse {
                if hosts.contains(&host) {
                    continue;
                }
                hosts.push(host);
            }
            out.push(n);
        }
    }

    fn build_relay_ring(&mut self) {
        for (n, node) in self.nodes.iter().enumerate() {
            for i in 0..REPLICAS {
                let key = match &node.instance {
                    Some(inst) => format!("{i}-{inst}"),
                    None => format!("{i}-{}:{}", node.host, node.port),
                };
                self.ring.push((i64::from(relay_fnv1a_position(&key)), n));
            }
        }
        let nodes = &self.nodes;
        self.ring.sort_by(|a, b| {
            let (x, y) = (&nodes[a.1], &nodes[b.1]);
            (a.0, x.host.as_bytes(), x.port).cmp(&(b.0, y.host.as_bytes(), y.port))
        });
        for i in 1..self.ring.len() {
            if self.ring[i].0 == self.ring[i - 1].0 {
                self.ring[i].1 = self.ring[i - 1].1;
            }
        }
    }

    /// carbon-c-relay's `ch_get_nodes` for `fnv1a_ch`.
    fn place_relay(&self, name: &str, out: &mut Vec<usize>) {
        let pos = i64::from(relay_fnv1a_position(name));
        let len = self.ring.len();
        let mut t = self.ring.partition_point(|e| e.0 < pos);
        while out.len() < self.replication {
            if t >= len {
                t = 0;
            }
            let n = self.ring[t].1;
            if !out.contains(&n) {
                out.push(n);
            }
            t += 1;
        }
    }

    fn build_buckets(&mut self) {
        let nodes = &self.nodes;
        let mut with: Vec<usize> = (0..nodes.len())
            .filter(|&n| nodes[n].instance.is_some())
            .collect();
        with.sort_by(|&a, &b| {
            let (a, b) = (
                nodes[a].instance.as_deref().unwrap_or(""),
                nodes[b].instance.as_deref().unwrap_or(""),
            );
            match (strtol_whole(a), strtol_whole(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a.as_bytes().cmp(b.as_bytes()),
            }
        });
        self.buckets = with;
        self.buckets
            .extend((0..nodes.len()).filter(|&n| nodes[n].instance.is_none()));
    }

    /// carbon-c-relay's `ch_get_nodes` for `jump_fnv1a_ch`.
    fn place_jump(&self, name: &str, out: &mut Vec<usize>) {
        let mut hash = relay_fnv1a64(name.as_bytes());
        if self.replication == 1 {
            out.push(self.buckets[jump_bucket(hash, self.buckets.len())]);
            return;
        }
        let mut buckets = self.buckets.clone();
        let mut i = buckets.len();
        while i > 0 {
            let j = jump_bucket(hash, i);
            out.push(buckets[j]);
            if out.len() == self.replication {
                return;
            }
            hash ^= hash >> 12;
            hash ^= hash << 25;
            hash ^= hash >> 27;
            hash = hash.wrapping_mul(2_685_821_657_736_338_717);
            i -= 1;
            buckets[j] = buckets[i];
        }
    }
}

/// Refuses two destinations with the same ring key.
fn check_unique(method: Method, nodes: &[Node]) -> Result<(), PlacementError> {
    if method == Method::All {
        return Ok(());
    }
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[..i] {
            let key = if method.is_carbon() {
                (a.host == b.host && a.instance == b.instance).then_some("(host, instance)")
            } else if a.host == b.host && a.port == b.port {
                Some("(host, port)")
            } else {
                (a.instance.is_some() && a.instance == b.instance).then_some("instance")
            };
            if let Some(key) = key {
                return Err(PlacementError::Duplicate {
                    first: b.to_string(),
                    second: a.to_string(),
                    key,
                    method,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
