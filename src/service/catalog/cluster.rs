//! The catalog's entries: Cluster mode: publishing, leases and shard consumers (nothing when standalone).

use super::{Carbon, Metric, Type, cluster, ld};

/// In `/metrics` order.
pub(super) const METRICS: &[Metric] = &[
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
        name: "cluster_lapsed_renewals",
        help: "Cluster mode: shard leases renewed after their allowance had lapsed (NATS slow, or the process stopped); each rebuilt and emitted its shard again.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.lapsedRenewals",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.lapsed_renewals),
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
        name: "cluster_rules_refused",
        help: "Cluster mode: cluster rules changes this node could not take (its files did not load or differ); it kept its rules.",
        ty: Type::Counter,
        label: None,
        carbon: &[Carbon::Stat {
            name: "cluster.rulesRefused",
            always: false,
        }],
        read: |o, f| cluster(o, f, |c| &c.rules_refused),
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
