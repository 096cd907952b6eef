//! Drop-in migration: build a [`Config`] from carbon.conf's `[aggregator]` section, with
//! `[aggregator:<instance>]` on top (instance `a` unless `--instance` says otherwise), as
//! carbon-aggregator 1.1.x reads it.
//!
//! Keys are case-insensitive, as in carbon's ConfigParser; values follow carbon's rules
//! (ConfigParser booleans, numbers, `None` for unset). [`keys::KEYS`] is the table of
//! every key and what aggd does with it (`docs/operations.md` prints it); absent keys take
//! carbon 1.1.7's code defaults. A key aggd ignores is logged with the reason, one aggd
//! does not know at all (carbon accepts those silently) is logged as unknown.

pub mod keys;
mod section;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{
    AggregationFile, DestinationFile, JournalFile, ListenFile, RoutingFile, ServiceFile,
    WorkersFile, defaults, resolve,
};
use super::{Config, ConfigError, DestProtocol, File, Protocol, Transport, invalid};
use crate::ring::Method;
use section::Section;

/// carbon-aggregator's default instance.
pub const DEFAULT_INSTANCE: &str = "a";

/// Splits a `DESTINATIONS` entry, `host:port[:instance]` (IPv6 as
/// `[addr]:port[:instance]`), into `host:port` and the instance.
fn parse_destination(entry: &str) -> Option<(String, Option<String>)> {
    let e = entry.trim();
    let (address, instance) = if let Some(rest) = e.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let mut parts = after.strip_prefix(':')?.splitn(2, ':');
        let port = parts.next()?;
        port.parse::<u16>().ok()?;
        (format!("[{addr}]:{port}"), parts.next())
    } else {
        let mut parts = e.splitn(3, ':');
        let host = parts.next().filter(|h| !h.is_empty())?;
        let port = parts.next()?;
        port.parse::<u16>().ok()?;
        (format!("{host}:{port}"), parts.next())
    };
    let instance = instance.filter(|i| !i.is_empty()).map(str::to_string);
    Some((address, instance))
}

/// Reads `path` as carbon-aggregator's default instance ([`DEFAULT_INSTANCE`]) would.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_instance(path, DEFAULT_INSTANCE)
}

/// Reads `path`'s `[aggregator]` section, then `[aggregator:<instance>]` over it, into a
/// validated [`Config`]; `instance` also names the self-metrics
/// (`<prefix>.aggregator.<host>-<instance>.<stat>`).
///
/// Errors: unreadable or unparsable file, no `[aggregator]` section, bad values (named by
/// key), settings aggd cannot honour (`DESTINATION_TRANSPORT = ssl`,
/// `DESTINATION_PROTOCOL = protobuf`, an unknown `ROUTER_HASH_TYPE`), or invalid rules
/// files.
pub fn load_instance(path: &Path, instance: &str) -> Result<Config, ConfigError> {
    let (file, _) = read_file(path, instance)?;
    Config::from_file(file, path)
}

/// `aggd migrate`: the aggd.toml equivalent to `path`'s `[aggregator]` (with
/// `[aggregator:<instance>]` over it), as TOML text. It opens with a comment per key the
/// carbon.conf sets, saying what aggd maps it to or why it ignores it; paths in it are
/// absolute (resolved against `path`'s directory), so the file works wherever it is
/// written. `aggd run -c` on it behaves as `aggd run --carbon-conf` on `path`.
///
/// Errors: as [`load_instance`] (the result is validated the same way).
pub fn migrate(path: &Path, instance: &str) -> Result<String, ConfigError> {
    load_instance(path, instance)?;
    let (mut file, keys) = read_file(path, instance)?;
    let absolute = std::path::absolute(path).map_err(|error| ConfigError::Io {
        file: path.to_path_buf(),
        error,
    })?;
    file.resolve_paths(absolute.parent().unwrap_or(Path::new("/")));
    let toml =
        toml::to_string(&file).map_err(|e| invalid(path, format!("cannot write TOML: {e}")))?;
    let mut out = format!(
        "# aggd.toml migrated from {} (carbon-aggregator instance {instance}) by `aggd migrate`.\n\
         # What each key of the carbon.conf became:\n",
        path.display()
    );
    for (k, v) in &keys {
        let said = match keys::lookup(k) {
            Some(keys::Use::Mapped(onto)) => format!("-> {onto}"),
            Some(keys::Use::Ignored(why)) => format!("ignored: {why}"),
            None => "unknown to carbon-aggregator 1.1: ignored".to_string(),
        };
        out.push_str(&format!("#   {k} = {v}  {said}\n"));
    }
    out.push_str("# Keys not set take carbon 1.1.7's defaults, written out below.\n\n");
    out.push_str(&toml);
    Ok(out)
}

/// The carbon.conf as aggd's [`File`], and the keys it sets (upper-case, sorted).
fn read_file(path: &Path, instance: &str) -> Result<(File, Vec<(String, String)>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_path_buf(),
        error,
    })?;
    let ini = ini::Ini::load_from_str_opt(
        &text,
        ini::ParseOption {
            enabled_escape: false,
            ..ini::ParseOption::default()
        },
    )
    .map_err(|e| ConfigError::Syntax {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let keys = Section::read(&ini, instance, path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let file = File {
        cluster: None,
        listen: listeners(&keys)?,
        aggregation: aggregation(&keys, base)?,
        workers: WorkersFile::default(),
        destination: destinations(&keys)?,
        routing: routing(&keys)?,
        limits: limits(&keys)?,
        journal: journal(&keys, &ini, instance)?,
        tenants: None,
        admin: None,
        quarantine: None,
        service: service(&keys, instance)?,
    };
    Ok((file, keys.entries()))
}

/// carbon's default `STORAGE_DIR` (`GRAPHITE_ROOT/storage`, `GRAPHITE_ROOT` being
/// `/opt/graphite`).
pub const DEFAULT_STORAGE_DIR: &str = "/opt/graphite/storage";

/// aggd's journal, on by default: `AGGD_JOURNAL_DIR`, else
/// `<STORAGE_DIR>/aggd/<instance>/journal` (`STORAGE_DIR` from the aggregator's sections,
/// else `[cache]`, else carbon's default; one directory per instance, as each instance is
/// its own daemon). `AGGD_JOURNAL = False` turns it off.
fn journal(
    keys: &Section<'_>,
    ini: &ini::Ini,
    instance: &str,
) -> Result<Option<JournalFile>, ConfigError> {
    if !keys.flag("AGGD_JOURNAL", true)? {
        return Ok(None);
    }
    let storage = keys
        .get("STORAGE_DIR")
        .map(str::to_string)
        .or_else(|| {
            ini.section(Some("cache"))?
                .iter()
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("STORAGE_DIR"))
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_STORAGE_DIR.to_string());
    let dir = match keys.get("AGGD_JOURNAL_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(&storage)
            .join("aggd")
            .join(instance)
            .join("journal"),
    };
    Ok(Some(JournalFile {
        dir,
        fsync: Default::default(),
        fsync_interval: defaults::fsync_interval(),
        segment_bytes: defaults::segment_bytes(),
        segment_max_age: defaults::segment_max_age(),
        max_bytes: defaults::journal_max_bytes(),
        max_age: defaults::journal_max_age(),
        min_free_disk: defaults::min_free_disk(),
        on_full: Default::default(),
        queue_records: defaults::queue_records(),
        ledger: None,
    }))
}

/// The rules files, bucket settings, lists and timestamp resolution.
fn aggregation(keys: &Section<'_>, base: &Path) -> Result<AggregationFile, ConfigError> {
    let rewrite = resolve(
        base,
        Path::new(keys.get("REWRITE_RULES").unwrap_or("rewrite-rules.conf")),
    );
    let lists = keys.flag("USE_WHITELIST", false)?;
    Ok(AggregationFile {
        rules: PathBuf::from(
            keys.get("AGGREGATION_RULES")
                .unwrap_or("aggregation-rules.conf"),
        ),
        rewrite_rules: rewrite.exists().then_some(rewrite),
        forward_all: keys.flag("FORWARD_ALL", true)?,
        max_intervals: keys.num("MAX_AGGREGATION_INTERVALS", 5)? as u32,
        write_back_frequency: keys.num("WRITE_BACK_FREQUENCY", 0)? as u32,
        route_cache_entries: defaults::route_cache_entries(),
        max_values_per_bucket: defaults::max_values_per_bucket(),
        whitelist: lists.then(|| PathBuf::from("whitelist.conf")),
        blacklist: lists.then(|| PathBuf::from("blacklist.conf")),
        timestamp_resolution: keys.num("MIN_TIMESTAMP_RESOLUTION", 0)? as u32,
    })
}

/// The pickle frame limit and the connection limit.
fn limits(keys: &Section<'_>) -> Result<crate::codec::Limits, ConfigError> {
    let defaults = crate::codec::Limits::default();
    // carbon's default, inf, would leave aggd's memory unbounded: aggd keeps its own.
    let max_connections = match keys.get("MAX_RECEIVER_CONNECTIONS") {
        Some(v) if v.eq_ignore_ascii_case("inf") => defaults.max_connections,
        _ => keys.num("MAX_RECEIVER_CONNECTIONS", defaults.max_connections as u64)? as usize,
    };
    Ok(crate::codec::Limits {
        max_pickle_frame_bytes: keys.num("PICKLE_RECEIVER_MAX_LENGTH", 1 << 20)? as usize,
        max_connections,
        ..defaults
    })
}

/// Self-metrics: prefix, interval (0 or less: none), and the instance in their names.
fn service(keys: &Section<'_>, instance: &str) -> Result<ServiceFile, ConfigError> {
    let interval = keys.float("CARBON_METRIC_INTERVAL", 60.0)?;
    Ok(ServiceFile {
        self_metrics_interval: if interval > 0.0 {
            Duration::from_secs_f64(interval)
        } else {
            Duration::ZERO
        },
        self_metrics_prefix: keys
            .get("CARBON_METRIC_PREFIX")
            .unwrap_or("carbon")
            .to_string(),
        instance: instance.to_string(),
        ..ServiceFile::default()
    })
}

/// The hash ring: carbon-aggregator always routes by consistent hashing.
fn routing(keys: &Section<'_>) -> Result<RoutingFile, ConfigError> {
    let method = match keys.get("ROUTER_HASH_TYPE") {
        None | Some("None" | "carbon_ch") => Method::CarbonCh,
        Some("fnv1a_ch") => Method::CarbonFnv1aCh,
        Some("mmh3_ch") => Method::Mmh3Ch,
        Some(other) => {
            return Err(invalid(
                keys.path(),
                format!(
                    "ROUTER_HASH_TYPE = {other:?}: carbon knows carbon_ch, fnv1a_ch and mmh3_ch"
                ),
            ));
        }
    };
    let replication = keys.num("REPLICATION_FACTOR", 1)? as usize;
    if replication == 0 {
        return Err(invalid(
            keys.path(),
            "REPLICATION_FACTOR must be at least 1",
        ));
    }
    Ok(RoutingFile {
        method,
        replication,
        diverse_replicas: keys.flag("DIVERSE_REPLICAS", true)?,
        normalize_tags: keys.flag("TAG_RELAY_NORMALIZED", false)?,
    })
}

/// The line and pickle receivers (a port of 0 turns one off, as in carbon), and the UDP
/// one when enabled.
fn listeners(keys: &Section<'_>) -> Result<Vec<ListenFile>, ConfigError> {
    let listener = |protocol, transport, address| ListenFile {
        protocol,
        transport,
        address,
        max_connections: None,
    };
    let mut listen = Vec::new();
    let receivers = [
        (Protocol::Plaintext, Transport::Tcp, "LINE", 2003, true),
        (Protocol::Pickle, Transport::Tcp, "PICKLE", 2004, true),
        (
            Protocol::Plaintext,
            Transport::Udp,
            "UDP",
            2003,
            keys.flag("ENABLE_UDP_LISTENER", false)?,
        ),
    ];
    for (protocol, transport, name, default_port, on) in receivers {
        let port = keys.num(&format!("{name}_RECEIVER_PORT"), default_port)?;
        if on && port != 0 {
            let address = keys.addr(&format!("{name}_RECEIVER_INTERFACE"), port);
            listen.push(listener(protocol, transport, address));
        }
    }
    Ok(listen)
}

/// One destination per `DESTINATIONS` entry, with the protocol and queue settings.
fn destinations(keys: &Section<'_>) -> Result<Vec<DestinationFile>, ConfigError> {
    let protocol = match keys.get("DESTINATION_PROTOCOL").unwrap_or("pickle") {
        "pickle" => DestProtocol::Pickle,
        "line" => DestProtocol::Plaintext,
        other => {
            return Err(invalid(
                keys.path(),
                format!("DESTINATION_PROTOCOL = {other:?}: aggd sends pickle or line"),
            ));
        }
    };
    match keys.get("DESTINATION_TRANSPORT") {
        None | Some("none" | "None") => {}
        Some(other) => {
            return Err(invalid(
                keys.path(),
                format!("DESTINATION_TRANSPORT = {other:?}: aggd has no TLS client; use none"),
            ));
        }
    }
    let queue = (keys.num("MAX_QUEUE_SIZE", 10_000)? as usize).max(defaults::queue_datapoints());
    let per_message = keys.num("MAX_DATAPOINTS_PER_MESSAGE", 500)? as usize;
    let mut destination = Vec::new();
    for entry in keys.get("DESTINATIONS").unwrap_or("").split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let (address, instance) = parse_destination(entry).ok_or_else(|| {
            invalid(
                keys.path(),
                format!("DESTINATIONS entry {entry:?} is not host:port[:instance]"),
            )
        })?;
        destination.push(DestinationFile {
            address,
            protocol,
            queue_datapoints: queue,
            max_datapoints_per_message: per_message,
            unconfirmed_window: defaults::unconfirmed_window(),
            instance,
            ..DestinationFile::default()
        });
    }
    Ok(destination)
}

#[cfg(test)]
mod tests;
