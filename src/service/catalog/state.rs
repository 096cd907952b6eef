//! The catalog's entries: What aggd holds now: worker queues, series, buffers, the journal, the ledger, the quarantine, memory and readiness.

use super::{Carbon, Metric, Type, ld, process_usage};

/// In `/metrics` order.
pub(super) const METRICS: &[Metric] = &[
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
];
