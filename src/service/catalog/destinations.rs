//! The catalog's entries: Per destination: what it was offered, sent, queued and lost, and its connection.

use super::{Carbon, Metric, Type, per_dest, per_dest_usize};

/// In `/metrics` order.
pub(super) const METRICS: &[Metric] = &[
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
        name: "destination_fenced",
        help: "Cluster mode: aggregates not written because this node's allowance for their shard ran out before the write (their shard's new owner emits them).",
        ty: Type::Counter,
        label: Some("destination"),
        carbon: &[],
        read: |o, f| per_dest(o, f, |c| &c.fenced),
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
];
