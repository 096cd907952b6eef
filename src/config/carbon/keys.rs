//! Every `[aggregator]` key of carbon 1.1.x's carbon.conf, and what aggd does with it: the
//! table `docs/operations.md` shows. A key aggd maps changes aggd's behaviour the way it
//! changes carbon-aggregator's; a key it ignores is logged at start with the reason.

/// What aggd does with one carbon.conf key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Mapped onto aggd's configuration (the text says onto what).
    Mapped(&'static str),
    /// Not used; the reason is logged when the key is set.
    Ignored(&'static str),
}

/// The keys, upper-case, in carbon.conf's order.
pub const KEYS: &[(&str, Use)] = &[
    (
        "LINE_RECEIVER_INTERFACE",
        Use::Mapped("plaintext TCP listener address"),
    ),
    (
        "LINE_RECEIVER_PORT",
        Use::Mapped("plaintext TCP listener port (0: none)"),
    ),
    (
        "PICKLE_RECEIVER_INTERFACE",
        Use::Mapped("pickle TCP listener address"),
    ),
    (
        "PICKLE_RECEIVER_PORT",
        Use::Mapped("pickle TCP listener port (0: none)"),
    ),
    (
        "ENABLE_UDP_LISTENER",
        Use::Mapped("plaintext UDP listener on or off"),
    ),
    (
        "UDP_RECEIVER_INTERFACE",
        Use::Mapped("plaintext UDP listener address"),
    ),
    (
        "UDP_RECEIVER_PORT",
        Use::Mapped("plaintext UDP listener port"),
    ),
    (
        "PICKLE_RECEIVER_MAX_LENGTH",
        Use::Mapped("limits.max_pickle_frame_bytes"),
    ),
    (
        "MAX_RECEIVER_CONNECTIONS",
        Use::Mapped(
            "limits.max_connections (inf, the default: aggd's default 1024, which keeps memory bounded); aggd closes a connection past it at once instead of pausing accept",
        ),
    ),
    (
        "DESTINATIONS",
        Use::Mapped("[[destination]] address and instance"),
    ),
    (
        "DESTINATION_PROTOCOL",
        Use::Mapped("[[destination]] protocol: pickle or line (plaintext); protobuf is refused"),
    ),
    (
        "DESTINATION_TRANSPORT",
        Use::Mapped("none only; ssl is refused (aggd has no TLS client)"),
    ),
    ("REPLICATION_FACTOR", Use::Mapped("routing.replication")),
    ("DIVERSE_REPLICAS", Use::Mapped("routing.diverse_replicas")),
    (
        "ROUTER_HASH_TYPE",
        Use::Mapped("routing.method: carbon_ch, fnv1a_ch (carbon's: carbon_fnv1a_ch) or mmh3_ch"),
    ),
    (
        "MAX_QUEUE_SIZE",
        Use::Mapped(
            "[[destination]] queue_datapoints, at least aggd's default 100 000 (aggd emits whole intervals at once, where carbon's per-series timers spread them)",
        ),
    ),
    (
        "MAX_DATAPOINTS_PER_MESSAGE",
        Use::Mapped("[[destination]] max_datapoints_per_message"),
    ),
    ("FORWARD_ALL", Use::Mapped("aggregation.forward_all")),
    (
        "MAX_AGGREGATION_INTERVALS",
        Use::Mapped("aggregation.max_intervals"),
    ),
    (
        "WRITE_BACK_FREQUENCY",
        Use::Mapped("aggregation.write_back_frequency"),
    ),
    (
        "AGGREGATION_RULES",
        Use::Mapped("aggregation.rules (relative to the file's directory)"),
    ),
    (
        "REWRITE_RULES",
        Use::Mapped("aggregation.rewrite_rules (a missing file: no rewrites, as in carbon)"),
    ),
    (
        "USE_WHITELIST",
        Use::Mapped(
            "aggregation.whitelist / blacklist = whitelist.conf / blacklist.conf in the file's directory",
        ),
    ),
    (
        "CARBON_METRIC_PREFIX",
        Use::Mapped("service.self_metrics_prefix"),
    ),
    (
        "CARBON_METRIC_INTERVAL",
        Use::Mapped("service.self_metrics_interval, seconds (0 or less: no self-metrics)"),
    ),
    (
        "TAG_RELAY_NORMALIZED",
        Use::Mapped("routing.normalize_tags"),
    ),
    (
        "MIN_TIMESTAMP_RESOLUTION",
        Use::Mapped("aggregation.timestamp_resolution"),
    ),
    (
        "USE_INSECURE_UNPICKLER",
        Use::Ignored("aggd's pickle decoder is always the safe, bounded one"),
    ),
    (
        "METRIC_CLIENT_IDLE_TIMEOUT",
        Use::Ignored(
            "aggd keeps idle connections open (one costs a small buffer); limits.max_connections bounds them",
        ),
    ),
    (
        "TCP_KEEPALIVE",
        Use::Ignored("aggd uses the kernel's TCP keepalive settings"),
    ),
    (
        "TCP_KEEPIDLE",
        Use::Ignored("aggd uses the kernel's TCP keepalive settings"),
    ),
    (
        "TCP_KEEPINTVL",
        Use::Ignored("aggd uses the kernel's TCP keepalive settings"),
    ),
    (
        "TCP_KEEPCNT",
        Use::Ignored("aggd uses the kernel's TCP keepalive settings"),
    ),
    ("DESTINATION_SSL_CA", Use::Ignored("aggd has no TLS client")),
    (
        "DYNAMIC_ROUTER",
        Use::Ignored(
            "a dead destination's share is queued and counted, never re-routed to another (which would break placement)",
        ),
    ),
    (
        "DYNAMIC_ROUTER_MAX_RETRIES",
        Use::Ignored("a dead destination's share is queued and counted, never re-routed"),
    ),
    (
        "DESTINATION_POOL_REPLICAS",
        Use::Ignored("aggd keeps one connection per destination"),
    ),
    (
        "QUEUE_LOW_WATERMARK_PCT",
        Use::Ignored(
            "aggd's destination queues never pause input: a full queue drops, counted and ledgered",
        ),
    ),
    (
        "MAX_QUEUE_SIZE_HARD_PCT",
        Use::Ignored("aggd's destination queues never pause input"),
    ),
    (
        "USE_FLOW_CONTROL",
        Use::Ignored(
            "aggd's destination queues never pause input (carbon 1.1.x's aggregator does not either)",
        ),
    ),
    (
        "TIME_TO_DEFER_SENDING",
        Use::Ignored("aggd's senders write as soon as a batch is queued"),
    ),
    (
        "USE_RATIO_RESET",
        Use::Ignored("aggd reconnects only on a connection error"),
    ),
    (
        "MIN_RESET_STAT_FLOW",
        Use::Ignored("aggd reconnects only on a connection error"),
    ),
    (
        "MIN_RESET_RATIO",
        Use::Ignored("aggd reconnects only on a connection error"),
    ),
    (
        "MIN_RESET_INTERVAL",
        Use::Ignored("aggd reconnects only on a connection error"),
    ),
    (
        "CACHE_METRIC_NAMES_MAX",
        Use::Ignored("aggd's route cache is bounded by aggregation.route_cache_entries"),
    ),
    (
        "CACHE_METRIC_NAMES_TTL",
        Use::Ignored("aggd's route cache is bounded by aggregation.route_cache_entries"),
    ),
    (
        "LOG_LISTENER_CONN_SUCCESS",
        Use::Ignored("aggd does not log each connection"),
    ),
    (
        "LOG_AGGREGATOR_MISSES",
        Use::Ignored("aggd does not log each unmatched datapoint"),
    ),
    (
        "USER",
        Use::Ignored("run aggd as a user with the systemd unit's User="),
    ),
    ("PID_DIR", Use::Ignored("systemd tracks aggd's process")),
    (
        "STORAGE_DIR",
        Use::Mapped("base of aggd's journal: <STORAGE_DIR>/aggd/<instance>/journal"),
    ),
    (
        "AGGD_JOURNAL",
        Use::Mapped("aggd's own: False turns the journal off (default True)"),
    ),
    (
        "AGGD_JOURNAL_DIR",
        Use::Mapped("aggd's own: the journal directory"),
    ),
    (
        "LOG_DIR",
        Use::Ignored("aggd logs to stderr (the journal, under systemd)"),
    ),
    ("ENABLE_LOGROTATION", Use::Ignored("aggd logs to stderr")),
    ("ENABLE_MANHOLE", Use::Ignored("no debug shell in aggd")),
    ("MANHOLE_INTERFACE", Use::Ignored("no debug shell in aggd")),
    ("MANHOLE_PORT", Use::Ignored("no debug shell in aggd")),
    ("MANHOLE_USER", Use::Ignored("no debug shell in aggd")),
    ("MANHOLE_PUBLIC_KEY", Use::Ignored("no debug shell in aggd")),
    ("ENABLE_AMQP", Use::Ignored("no AMQP input in aggd")),
    (
        "PROTOBUF_RECEIVER_INTERFACE",
        Use::Ignored("no protobuf input in aggd"),
    ),
    (
        "PROTOBUF_RECEIVER_PORT",
        Use::Ignored("no protobuf input in aggd"),
    ),
];

/// What aggd does with `key` (upper-case); `None` for a key carbon does not know either.
pub fn lookup(key: &str) -> Option<Use> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, u)| *u)
}
