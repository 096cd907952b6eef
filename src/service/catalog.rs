//! The catalog itself: every counter and gauge aggd exports, one entry each (a table, so
//! one file: a new metric is one entry here and nothing else), and the types of its
//! entries. Encoding: [`super::metrics`].

use std::sync::atomic::Ordering;

use crate::events::Event;
use crate::reason::DropReason;

/// Counter (monotonic; carbon self-metrics send its change per interval) or gauge (a level;
/// sent as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Monotonic count.
    Counter,
    /// Current level.
    Gauge,
}

/// One way a metric appears among carbon self-metrics
/// (`<prefix>.aggregator.<host>-<instance>.<stat>`); a metric has any number of them.
///
/// A counter's stat is its change over the interval, a gauge's its level. Omitted when
/// zero for the interval, except `always` stats (carbon's common stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carbon {
    /// One stat: the value, or the sum over its labels.
    Stat {
        /// The stat's name, e.g. `metricsReceived`.
        name: &'static str,
        /// Sent even when zero (a counter's change; a gauge is then sent as it is).
        always: bool,
    },
    /// One stat per label value, `<before><label value, . → _><after>`.
    Each {
        /// Text before the label value, e.g. `drops.`.
        before: &'static str,
        /// Text after the label value.
        after: &'static str,
    },
    /// One always-sent stat from the sample of one label value (e.g. the `blacklist`
    /// drops as `blacklistMatches`).
    Label {
        /// The label value.
        label: &'static str,
        /// The stat's name.
        name: &'static str,
    },
    /// A per-destination family (samples in destination order) as carbon's
    /// `destinations.<dest>.<stat>`, `<dest>` being `host:port:instance` with `.` → `_`.
    Dest {
        /// carbon's stat name, e.g. `attemptedRelays`.
        stat: &'static str,
    },
}

/// Calls its argument with each `(label value, value)` sample (label value `""` when the
/// metric has no label); calls it never when the metric does not apply (no journal, …).
pub type Read = fn(&super::Observed, &mut dyn FnMut(&str, u64));

/// One catalog entry.
pub struct Metric {
    /// Prometheus name without the `aggd_` prefix (and the counter `_total` suffix).
    pub name: &'static str,
    /// Prometheus help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub ty: Type,
    /// The label of a family (`reason`, `destination`, `worker`, `event`).
    pub label: Option<&'static str>,
    /// Its carbon self-metrics (none: not sent).
    pub carbon: &'static [Carbon],
    /// Reads its samples.
    pub read: Read,
}

fn ld(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Reads one counter of every destination, labelled with its name.
fn per_dest(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::dest::DestCounters) -> &std::sync::atomic::AtomicU64,
) {
    o.dests.counters().for_each(|(d, c)| f(d, ld(pick(c))));
}

/// Reads one per-destination gauge kept as an `AtomicUsize`.
fn per_dest_usize(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::dest::DestCounters) -> &std::sync::atomic::AtomicUsize,
) {
    o.dests
        .counters()
        .for_each(|(d, c)| f(d, pick(c).load(Ordering::Relaxed) as u64));
}

/// Reads one cluster-mode counter or gauge (nothing when standalone).
fn cluster(
    o: &super::Observed,
    f: &mut dyn FnMut(&str, u64),
    pick: fn(&crate::cluster::ClusterStats) -> &std::sync::atomic::AtomicU64,
) {
    if let Some(c) = &o.cluster {
        f("", ld(pick(c)));
    }
}

/// Every metric, in `/metrics` order (`docs/operations.md` lists them with their meaning).
pub const CATALOG: &[Metric] = &[
    Metric {
        name: "received",
        help: "Datapoints accepted.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "metricsReceived",
            always: true,
        }],
        read: |o, f| f("", ld(&o.stats.received)),
    },
    Metric {
        name: "aggregates_emitted",
        help: "Aggregates emitted, re-emissions included.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "aggregateDatapointsSent",
            always: true,
        }],
        read: |o, f| f("", ld(&o.stats.aggregates_emitted)),
    },
    Metric {
        name: "forwarded",
        help: "Raw datapoints forwarded.",
        ty: Type::Counter,
        label: None,
        carbon: &[],
        read: |o, f| f("", ld(&o.stats.forwarded)),
    },
    Metric {
        name: "sent",
        help: "Datapoints written to destinations.",
        ty: Type::Counter,
        label: None,
        carbon: &[],
        read: |o, f| f("", ld(&o.stats.sent)),
    },
    Metric {
        name: "active_connections",
        help: "Open inbound TCP connections.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "activeConnections",
            always: true,
        }],
        read: |o, f| f("", ld(&o.stats.active_connections)),
    },
    Metric {
        name: "connections_refused",
        help: "Inbound TCP connections closed at once: a connection limit was reached.",
        ty: Type::Counter,
        label: None,
        carbon: &[],
        read: |o, f| f("", o.stats.events.count(Event::ConnectionRefused)),
    },
    Metric {
        name: "dropped",
        help: "Datapoints, lines or frames dropped, by reason.",
        ty: Type::Counter,
        label: Some("reason"),
        carbon: &[
            Carbon::Each {
                before: "drops.",
                after: "",
            },
            Carbon::Label {
                label: "blacklist",
                name: "blacklistMatches",
            },
            Carbon::Label {
                label: "whitelist",
                name: "whitelistRejects",
            },
        ],
        read: |o, f| {
            for r in DropReason::ALL.into_iter().filter(|r| r.is_drop()) {
                f(r.as_str(), o.stats.drops(r));
            }
        },
    },
    Metric {
        name: "unjournaled",
        help: "Frames whose datapoints were aggregated and sent without being journaled \
               (the journal's queue was full or its write failed, on_full = ingest): not a \
               drop, but replay cannot cover their window (ledgered).",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "unjournaled",
            always: false,
        }],
        read: |o, f| f("", o.stats.unjournaled()),
    },
    Metric {
        name: "events",
        help: "Notable events other than drops (failures aggd recovers from), by event.",
        ty: Type::Counter,
        label: Some("event"),
        carbon: &[Carbon::Each {
            before: "events.",
            after: "",
        }],
        read: |o, f| {
            for e in Event::ALL {
                f(e.as_str(), o.stats.events.count(e));
            }
        },
    },
    Metric {
        name: "destination_sent",
        help: "Datapoints written, per destination.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[Carbon::Dest { stat: "sent" }],
        read: |o, f| per_dest(o, f, |c| &c.sent),
    },
    Metric {
        name: "destination_attempted",
        help: "Datapoints offered to a destination's queue, kept or dropped.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[Carbon::Dest {
            stat: "attemptedRelays",
        }],
        read: |o, f| per_dest(o, f, |c| &c.attempted),
    },
    Metric {
        name: "destination_batches",
        help: "Batches written, per destination: pickle frames or plaintext chunks of max_datapoints_per_message for carbon, requests acknowledged for remote write.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[Carbon::Dest {
            stat: "batchesSent",
        }],
        read: |o, f| per_dest(o, f, |c| &c.batches),
    },
    Metric {
        name: "destination_queued_until_connected",
        help: "Datapoints offered to a destination while it was down.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[Carbon::Dest {
            stat: "queuedUntilConnected",
        }],
        read: |o, f| per_dest(o, f, |c| &c.queued_until_connected),
    },
    Metric {
        name: "destination_queue_peak",
        help: "Largest queue length (datapoints) seen since the last carbon self-metrics report.",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: &[Carbon::Dest {
            stat: "relayMaxQueueLength",
        }],
        read: |o, f| per_dest_usize(o, f, |c| &c.peak_queued),
    },
    Metric {
        name: "destination_unconfirmed",
        help: "Datapoints written into connections that then failed (ledgered).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest(o, f, |c| &c.unconfirmed),
    },
    Metric {
        name: "destination_rejected",
        help: "Datapoints in remote-write requests the destination refused (4xx but 429; ledgered).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest(o, f, |c| &c.rejected),
    },
    Metric {
        name: "destination_late_changes",
        help: "Corrections of intervals already sent, kept back by late_changes = \"ledger\" (ledgered as late_change).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest(o, f, |c| &c.late_changes),
    },
    Metric {
        name: "destination_held",
        help: "Aggregates held for the destination's emit_delay now.",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| o.dests.held().for_each(|(d, n)| f(d, n as u64)),
    },
    Metric {
        name: "destination_connection_failures",
        help: "Destination connections that failed (remote write: requests sent again).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest(o, f, |c| &c.connection_failures),
    },
    Metric {
        name: "destination_full_queue_drops",
        help: "Datapoints dropped on a full destination queue.",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[Carbon::Dest {
            stat: "fullQueueDrops",
        }],
        read: |o, f| per_dest(o, f, |c| &c.full_queue_drops),
    },
    Metric {
        name: "destination_queued",
        help: "Datapoints queued, per destination.",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest_usize(o, f, |c| &c.queued),
    },
    Metric {
        name: "destination_up",
        help: "1 while the destination's sender holds a connection, else 0.",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| o.dests.states().for_each(|(d, up, _)| f(d, up)),
    },
    Metric {
        name: "destination_queue_capacity",
        help: "Datapoints the destination's queue holds at most (queue_datapoints).",
        ty: Type::Gauge,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| o.dests.states().for_each(|(d, _, cap)| f(d, cap as u64)),
    },
    Metric {
        name: "worker_queue_depth",
        help: "Batches waiting, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: &[],
        read: |o, f| {
            for (i, q) in o.queues.iter().enumerate() {
                f(&i.to_string(), q.len() as u64);
            }
        },
    },
    Metric {
        name: "series",
        help: "Live output series, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: &[Carbon::Stat {
            name: "allocatedBuffers",
            always: true,
        }],
        read: |o, f| {
            for (i, g) in o.gauges.iter().enumerate() {
                f(&i.to_string(), ld(&g.series));
            }
        },
    },
    Metric {
        name: "buffered_datapoints",
        help: "Datapoints in live buckets, per worker.",
        ty: Type::Gauge,
        label: Some("worker"),
        carbon: &[Carbon::Stat {
            name: "bufferedDatapoints",
            always: true,
        }],
        read: |o, f| {
            for (i, g) in o.gauges.iter().enumerate() {
                f(&i.to_string(), ld(&g.buffered));
            }
        },
    },
    Metric {
        name: "journal_records",
        help: "Records journaled.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.records",
            always: false,
        }],
        read: |o, f| o.journal.iter().for_each(|j| f("", ld(&j.stats().records))),
    },
    Metric {
        name: "journal_bytes",
        help: "Bytes journaled.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.bytes",
            always: false,
        }],
        read: |o, f| o.journal.iter().for_each(|j| f("", ld(&j.stats().bytes))),
    },
    Metric {
        name: "journal_queue",
        help: "Records waiting for the journal writer (lag).",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.queue",
            always: true,
        }],
        read: |o, f| o.journal.iter().for_each(|j| f("", j.queued() as u64)),
    },
    Metric {
        name: "journal_size_bytes",
        help: "Bytes of all journal segments.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.sizeBytes",
            always: true,
        }],
        read: |o, f| o.journal.iter().for_each(|j| f("", j.size_on_disk())),
    },
    Metric {
        name: "journal_max_bytes",
        help: "The size retention keeps the journal's segments under (max_bytes).",
        ty: Type::Gauge,
        label: None,
        carbon: &[],
        read: |o, f| o.journal.iter().for_each(|j| f("", j.max_bytes())),
    },
    Metric {
        name: "journal_free_disk_bytes",
        help: "Bytes free on the journal's filesystem.",
        ty: Type::Gauge,
        label: None,
        carbon: &[],
        read: |o, f| o.journal.iter().for_each(|j| f("", j.free_disk())),
    },
    Metric {
        name: "journal_write_errors",
        help: "Journal batch writes or rotations that failed.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.writeErrors",
            always: false,
        }],
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().write_errors)));
        },
    },
    Metric {
        name: "journal_fsync_errors",
        help: "Journal fsyncs that failed.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.fsyncErrors",
            always: false,
        }],
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().fsync_errors)));
        },
    },
    Metric {
        name: "journal_unjournaled",
        help: "Records the journal could not write.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "journal.unjournaled",
            always: false,
        }],
        read: |o, f| {
            o.journal
                .iter()
                .for_each(|j| f("", ld(&j.stats().unjournaled)));
        },
    },
    Metric {
        name: "ledger_unwritten_entries",
        help: "Loss ledger entries kept in memory because the ledger file cannot be written.",
        ty: Type::Gauge,
        label: None,
        carbon: &[],
        read: |o, f| {
            o.stats
                .ledger()
                .iter()
                .for_each(|l| f("", l.unwritten() as u64));
        },
    },
    Metric {
        name: "ledger_write_errors",
        help: "Loss ledger flushes that failed.",
        ty: Type::Counter,
        label: None,
        carbon: &[],
        read: |o, f| {
            o.stats
                .ledger()
                .iter()
                .for_each(|l| f("", l.write_errors()));
        },
    },
    Metric {
        name: "quarantine_overflowed",
        help: "Rejected datapoints not written to the quarantine file: its queue was full.",
        ty: Type::Counter,
        label: None,
        carbon: &[],
        read: |o, f| o.quarantine.iter().for_each(|q| f("", q.overflowed())),
    },
    Metric {
        name: "process_resident_memory_bytes",
        help: "Resident set size of the process.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "memUsage",
            always: true,
        }],
        read: |_, f| f("", process_usage().1),
    },
    Metric {
        name: "memory_bound_bytes",
        help: "The config's memory bound for 100 000 live output series (aggd check).",
        ty: Type::Gauge,
        label: None,
        carbon: &[],
        read: |o, f| f("", o.memory_bound),
    },
    Metric {
        name: "ready",
        help: "1 when ready.",
        ty: Type::Gauge,
        label: None,
        carbon: &[],
        read: |o, f| f("", u64::from(o.is_ready())),
    },
    Metric {
        name: "cluster_publish_lag_bytes",
        help: "Cluster mode: journal bytes not yet published and acknowledged.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.publishLagBytes",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.publish.bytes),
    },
    Metric {
        name: "cluster_shards_owned",
        help: "Cluster mode: shards this node owns.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.shardsOwned",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.shards_owned),
    },
    Metric {
        name: "cluster_lease_changes",
        help: "Cluster mode: shard leases taken or given up by this node.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.leaseChanges",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.lease_changes),
    },
    Metric {
        name: "cluster_messages_published",
        help: "Cluster mode: messages published and acknowledged by the stream.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.messagesPublished",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.messages_published),
    },
    Metric {
        name: "cluster_datapoints_published",
        help: "Cluster mode: datapoints in the messages published.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.datapointsPublished",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.datapoints_published),
    },
    Metric {
        name: "cluster_publish_errors",
        help: "Cluster mode: publish attempts that failed (each retried).",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.publishErrors",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.publish_errors),
    },
    Metric {
        name: "cluster_rules_mismatch",
        help: "Cluster mode: messages applied whose sender's rules digest differs from this node's.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.rulesMismatch",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.rules_mismatch),
    },
    Metric {
        name: "cluster_duplicates_skipped",
        help: "Cluster mode: journal records an owner skipped as already applied (republished).",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.duplicatesSkipped",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.duplicates_skipped),
    },
    Metric {
        name: "cluster_malformed_messages",
        help: "Cluster mode: stream messages that did not decode (skipped).",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.malformedMessages",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.malformed_messages),
    },
    Metric {
        name: "cluster_consumer_lag",
        help: "Cluster mode: stream messages not yet delivered to this node's shard consumers.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.consumerLag",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.consumer_lag),
    },
    Metric {
        name: "cluster_last_rebuild_ms",
        help: "Cluster mode: milliseconds the last shard rebuild took.",
        ty: Type::Gauge,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.lastRebuildMs",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.last_rebuild_ms),
    },
    Metric {
        name: "cluster_records_missed",
        help: "Cluster mode: journal records deleted before the publisher read them.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.recordsMissed",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.records_missed),
    },
    Metric {
        name: "cluster_records_read_back",
        help: "Cluster mode: records the publisher let go of from its hand-over (full, or the stream down) and reads back from the journal.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.recordsReadBack",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.records_read_back),
    },
    Metric {
        name: "cluster_shard_consumer_lag",
        help: "Cluster mode: per owned shard, stream messages not yet delivered to its consumer.",
        ty: Type::Gauge,
        label: Some("shard"),
        carbon: &[],
        read: |o, f| {
            if let Some(c) = &o.cluster {
                for (k, lag) in c.shard_lag.iter().enumerate() {
                    let v = ld(lag);
                    if v != u64::MAX {
                        f(&k.to_string(), v);
                    }
                }
            }
        },
    },
];

/// (process CPU seconds, RSS bytes) from /proc/self.
pub(crate) fn process_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}
