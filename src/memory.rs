//! The daemon's memory bound, as a formula over its configuration.
//!
//! Every term is the most that part of aggd can hold with the configuration as it is;
//! `aggd check` prints them, and `docs/operations.md` explains each. The bound is a worst
//! case: each term assumes its part is full at the same moment. Live output series are
//! the one quantity the configuration bounds only through tenants' `max_series`, so the
//! caller names how many to count.

use crate::codec::pickle::KEEP_BYTES;
use crate::config::{Config, Protocol, Transport};
use crate::ingest::MAX_BATCH_ITEMS;
use crate::route::ENTRY_BYTES;

/// Code, the tokio runtime, thread stacks and allocator slack.
pub(crate) const BASE_BYTES: u64 = 64 << 20;
/// Per output series: its key, table slot and `max_intervals` buckets (measured, see
/// `docs/performance.md`: about 1.6 KB).
pub(crate) const SERIES_BYTES: u64 = 2 << 10;
/// What an open TCP connection holds outside the memory budget: its task, socket, framer
/// and `Ingest` (measured as under 8 KiB; counted twice).
pub(crate) const CONNECTION_BYTES: u64 = 16 << 10;
/// Arena bytes the pickle decoder uses per object (object, stack slot, container item).
pub(crate) const PICKLE_BYTES_PER_OBJECT: u64 = 24;
/// Bytes of one queued work item (series key pointer, timestamp, value).
pub(crate) const WORK_ITEM_BYTES: u64 = crate::ingest::slots::WORK_ITEM_BYTES as u64;

/// The live output series `aggd check` and `aggd_memory_bound_bytes` compute the bound
/// for.
pub const CHECK_LIVE_SERIES: u64 = 100_000;

/// The terms of the bound, in bytes (`docs/operations.md`, "Memory").
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBound {
    /// The live output series counted.
    pub live_series: u64,
    /// `(what, bytes)`, in the order `docs/operations.md` lists them.
    pub terms: Vec<(&'static str, u64)>,
}

impl MemoryBound {
    /// The sum of every term.
    pub fn total(&self) -> u64 {
        self.terms.iter().map(|(_, b)| b).sum()
    }
}

/// As `aggd check` prints it: the total, then each term, in MiB.
impl std::fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "memory bound with {} live output series: {} MiB (docs/operations.md)",
            self.live_series,
            self.total() >> 20
        )?;
        for (what, bytes) in &self.terms {
            writeln!(f, "  {what}: {} MiB", bytes >> 20)?;
        }
        Ok(())
    }
}

impl Config {
    /// The memory bound of this configuration with `live_series` output series.
    pub fn memory_bound(&self, live_series: u64) -> MemoryBound {
        let l = &self.limits;
        let u = |v: usize| v as u64;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
        let decode = PICKLE_BYTES_PER_OBJECT * u(l.max_pickle_objects);
        let mut udp = 0;
        let mut http_bodies = 0;
        for c in &self.listeners {
            match c.transport {
                Transport::Udp => udp += u(l.udp_queue_bytes) + (64 << 10),
                // A request's body and its gzip-decoded copy (up to the limit each) are
                // read before its decoding is charged to the budget.
                Transport::Tcp if c.protocol == Protocol::Http => {
                    http_bodies += 2 * u(l.max_http_requests) * u(l.max_http_body_bytes);
                }
                Transport::Tcp => {}
            }
        }
        // Read buffers, partial lines and frames, the work items of the reads being
        // decoded and HTTP decoding come out of one budget; each open connection adds its
        // task, socket, framer and pickle scratch.
        let connections = u(l.connection_memory_bytes)
            + u(l.max_connections) * (CONNECTION_BYTES + u(KEEP_BYTES))
            + http_bodies;
        // A queue slot holds at most MAX_BATCH_ITEMS work items.
        let per_batch = u(MAX_BATCH_ITEMS) * WORK_ITEM_BYTES;
        let worker_queues = u(self.workers.count) * u(self.workers.queue_batches) * per_batch;
        let destinations: u64 = self
            .destinations
            .iter()
            // A queued datapoint; with emit_delay, as many held ones in a map.
            .map(|d| u(d.queue_datapoints) * if d.emit_delay.is_zero() { 48 } else { 48 + 128 })
            .sum();
        let journal = if self.journal.is_some() { 8 << 20 } else { 0 };
        // Remembered placements, per thread that sends to the destinations (the workers
        // and the runtime's threads), with a ring that hashes with MD5 or mmh3.
        let placements = if self.destinations.len() > 1 {
            (u(self.workers.count) + threads)
                * u(crate::ring::PLACED_CACHE_ENTRIES * crate::ring::PLACED_ENTRY_BYTES)
        } else {
            0
        };
        // Cluster mode: routed records the journal handed to the publisher lanes.
        let handed_over = if self.cluster.is_some() {
            crate::cluster::publish::FOLLOWED_BYTES
        } else {
            0
        };
        MemoryBound {
            live_series,
            terms: vec![
                ("base", BASE_BYTES),
                ("connections and HTTP requests", connections),
                ("UDP queues", udp),
                ("pickle decoding in progress", threads * decode),
                ("private route caches", u(l.private_route_cache_bytes)),
                (
                    "shared route cache",
                    u(self.aggregation.route_cache_entries)
                        * (u(l.max_path_bytes) + ENTRY_BYTES as u64 + 192),
                ),
                ("worker queues", worker_queues),
                ("destination queues", destinations),
                ("journal writer", journal),
                ("remembered placements", placements),
                ("cluster publisher hand-over", handed_over),
                ("live output series", live_series * SERIES_BYTES),
            ],
        }
    }
}
