//! The catalog's entries: What the pipeline took in, emitted, forwarded and dropped, and the events.

use super::{Carbon, Metric, Type, ld};
use crate::events::Event;
use crate::reason::DropReason;

/// In `/metrics` order.
pub(super) const METRICS: &[Metric] = &[
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
];
