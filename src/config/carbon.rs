//! Drop-in migration: build a [`Config`] from carbon.conf's `[aggregator]` section.
//!
//! Keys are case-insensitive, as in carbon's ConfigParser. Understood keys and the carbon
//! 1.1.7 code defaults used when a key is absent:
//!
//! | key | default | becomes |
//! |---|---|---|
//! | LINE_RECEIVER_INTERFACE / _PORT | 0.0.0.0 / 2003 | plaintext TCP listener |
//! | PICKLE_RECEIVER_INTERFACE / _PORT | 0.0.0.0 / 2004 | pickle TCP listener |
//! | ENABLE_UDP_LISTENER, UDP_RECEIVER_INTERFACE / _PORT | False, 0.0.0.0 / 2003 | plaintext UDP listener |
//! | DESTINATIONS | (none) | `host:port[:instance]` list; the instance is ignored |
//! | DESTINATION_PROTOCOL | pickle | `pickle` or `line` (plaintext) |
//! | MAX_QUEUE_SIZE | 10000 | destination queue, datapoints, but at least aggd's default 100 000 (aggd emits whole intervals at once, where carbon's per-series timers spread them) |
//! | MAX_DATAPOINTS_PER_MESSAGE | 500 | datapoints per pickle frame |
//! | PICKLE_RECEIVER_MAX_LENGTH | 1048576 | largest pickle frame |
//! | FORWARD_ALL | True | `forward_all` |
//! | MAX_AGGREGATION_INTERVALS | 5 | `max_intervals` |
//! | WRITE_BACK_FREQUENCY | None (off) | `write_back_frequency` |
//! | AGGREGATION_RULES / REWRITE_RULES | aggregation-rules.conf / rewrite-rules.conf in the file's directory | rules files (a missing rewrite file means no rewrites, as in carbon) |
//!
//! Every other key in the section is logged as ignored.

use std::path::{Path, PathBuf};

use super::file::{
    AggregationFile, DestinationFile, ListenFile, ServiceFile, WorkersFile, defaults, resolve,
};
use super::{Config, ConfigError, DestProtocol, File, Protocol, Transport, invalid};

const UNDERSTOOD: [&str; 20] = [
    "LINE_RECEIVER_INTERFACE",
    "LINE_RECEIVER_PORT",
    "PICKLE_RECEIVER_INTERFACE",
    "PICKLE_RECEIVER_PORT",
    "ENABLE_UDP_LISTENER",
    "UDP_RECEIVER_INTERFACE",
    "UDP_RECEIVER_PORT",
    "DESTINATIONS",
    "DESTINATION_PROTOCOL",
    "MAX_QUEUE_SIZE",
    "MAX_DATAPOINTS_PER_MESSAGE",
    "PICKLE_RECEIVER_MAX_LENGTH",
    "FORWARD_ALL",
    "MAX_AGGREGATION_INTERVALS",
    "WRITE_BACK_FREQUENCY",
    "AGGREGATION_RULES",
    "REWRITE_RULES",
    // Read by carbon for logging and daemon control; meaningless to aggd but harmless.
    "LOG_LISTENER_CONN_SUCCESS",
    "LOG_AGGREGATOR_MISSES",
    "USER",
];

/// ConfigParser's boolean words.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Splits `host:port[:instance]` (IPv6 as `[addr]:port[:instance]`) into `host:port`.
fn parse_destination(entry: &str) -> Option<String> {
    let e = entry.trim();
    if let Some(rest) = e.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?.split(':').next()?;
        port.parse::<u16>().ok()?;
        return Some(format!("[{addr}]:{port}"));
    }
    let mut parts = e.split(':');
    let host = parts.next().filter(|h| !h.is_empty())?;
    let port = parts.next()?;
    port.parse::<u16>().ok()?;
    Some(format!("{host}:{port}"))
}

/// Reads `path`'s `[aggregator]` section into a validated [`Config`].
///
/// Errors: unreadable or unparsable file, no `[aggregator]` section, bad values (named by
/// key), or invalid rules files.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
    let section = ini
        .section(Some("aggregator"))
        .ok_or_else(|| invalid(path, "no [aggregator] section"))?;
    let keys = Section::read(section, path);
    let base = path.parent().unwrap_or(Path::new("."));
    let rewrite = resolve(
        base,
        Path::new(keys.get("REWRITE_RULES").unwrap_or("rewrite-rules.conf")),
    );
    let limits = crate::codec::Limits {
        max_pickle_frame_bytes: keys.num("PICKLE_RECEIVER_MAX_LENGTH", 1 << 20)? as usize,
        ..crate::codec::Limits::default()
    };
    let file = File {
        listen: listeners(&keys)?,
        aggregation: AggregationFile {
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
        },
        workers: WorkersFile::default(),
        destination: destinations(&keys)?,
        limits,
        journal: None,
        tenants: None,
        admin: None,
        quarantine: None,
        service: ServiceFile::default(),
    };
    Config::from_file(file, path)
}

/// The `[aggregator]` section's keys (upper-cased, values trimmed) and the file they came
/// from, read with carbon's value rules.
struct Section<'a> {
    keys: std::collections::HashMap<String, String>,
    path: &'a Path,
}

impl<'a> Section<'a> {
    /// The section's keys; a key aggd does not use is logged (carbon accepts unknown keys
    /// silently).
    fn read(section: &ini::Properties, path: &'a Path) -> Section<'a> {
        let mut keys = std::collections::HashMap::new();
        for (k, v) in section {
            let k = k.trim().to_ascii_uppercase();
            if !UNDERSTOOD.contains(&k.as_str()) {
                tracing::info!(key = %k, "carbon.conf key ignored by aggd");
            }
            keys.insert(k, v.trim().to_string());
        }
        Section { keys, path }
    }

    /// A key's value, if set and not empty.
    fn get(&self, k: &str) -> Option<&str> {
        self.keys
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A whole, non-negative number (`None` or unset: `default`).
    fn num(&self, k: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(k) {
            None | Some("None") => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
                .ok_or_else(|| invalid(self.path, format!("{k} = {v:?} is not a whole number"))),
        }
    }

    /// A boolean in ConfigParser's words (unset: `default`).
    fn flag(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(k).map_or(Ok(default), |v| {
            parse_bool(v).ok_or_else(|| invalid(self.path, format!("{k} = {v:?} is not a boolean")))
        })
    }

    /// `host:port` from an interface key (default `0.0.0.0`) and a port key.
    fn addr(&self, iface: &str, port: &str, default_port: u64) -> Result<String, ConfigError> {
        let host = self.get(iface).unwrap_or("0.0.0.0");
        let port = self.num(port, default_port)?;
        Ok(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    }
}

/// The line and pickle receivers, and the UDP one when enabled.
fn listeners(keys: &Section<'_>) -> Result<Vec<ListenFile>, ConfigError> {
    let listener = |protocol, transport, address| ListenFile {
        protocol,
        transport,
        address,
        max_connections: None,
    };
    let mut listen = vec![
        listener(
            Protocol::Plaintext,
            Transport::Tcp,
            keys.addr("LINE_RECEIVER_INTERFACE", "LINE_RECEIVER_PORT", 2003)?,
        ),
        listener(
            Protocol::Pickle,
            Transport::Tcp,
            keys.addr("PICKLE_RECEIVER_INTERFACE", "PICKLE_RECEIVER_PORT", 2004)?,
        ),
    ];
    if keys.flag("ENABLE_UDP_LISTENER", false)? {
        listen.push(listener(
            Protocol::Plaintext,
            Transport::Udp,
            keys.addr("UDP_RECEIVER_INTERFACE", "UDP_RECEIVER_PORT", 2003)?,
        ));
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
                keys.path,
                format!("DESTINATION_PROTOCOL = {other:?}: aggd sends pickle or line"),
            ));
        }
    };
    let queue = (keys.num("MAX_QUEUE_SIZE", 10_000)? as usize).max(defaults::queue_datapoints());
    let per_message = keys.num("MAX_DATAPOINTS_PER_MESSAGE", 500)? as usize;
    let mut destination = Vec::new();
    for entry in keys.get("DESTINATIONS").unwrap_or("").split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let address = parse_destination(entry).ok_or_else(|| {
            invalid(
                keys.path,
                format!("DESTINATIONS entry {entry:?} is not host:port[:instance]"),
            )
        })?;
        destination.push(DestinationFile {
            address,
            protocol,
            queue_datapoints: queue,
            max_datapoints_per_message: per_message,
            unconfirmed_window: defaults::unconfirmed_window(),
        });
    }
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestAddress;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_destination("127.0.0.1:2004").as_deref(),
            Some("127.0.0.1:2004")
        );
        assert_eq!(
            parse_destination(" 10.0.0.1:2004:a ").as_deref(),
            Some("10.0.0.1:2004")
        );
        assert_eq!(
            parse_destination("[::1]:2004:b").as_deref(),
            Some("[::1]:2004")
        );
        assert_eq!(parse_destination("nohost"), None);
        assert_eq!(parse_destination("h:notaport"), None);
    }

    #[test]
    fn debian_style_carbon_conf() {
        let guard = tempfile::tempdir().unwrap();
        let d = guard.path().to_path_buf();
        std::fs::write(d.join("aggregation-rules.conf"), "a.sum (60) = sum a.*\n").unwrap();
        std::fs::write(
            d.join("carbon.conf"),
            "[cache]\nLINE_RECEIVER_PORT = 2003\n\n\
             [aggregator]\n\
             LINE_RECEIVER_INTERFACE = 127.0.0.1\n\
             line_receiver_port = 2023\n\
             PICKLE_RECEIVER_PORT = 2024\n\
             ENABLE_UDP_LISTENER = yes\n\
             DESTINATIONS = 127.0.0.1:2004:a, 127.0.0.1:2104\n\
             FORWARD_ALL = False\n\
             MAX_QUEUE_SIZE = 10000\n\
             MAX_AGGREGATION_INTERVALS = 3\n\
             USE_FLOW_CONTROL = True\n",
        )
        .unwrap();
        let c = load(&d.join("carbon.conf")).unwrap();
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[0].address, "127.0.0.1:2023");
        assert_eq!(c.listeners[1].address, "0.0.0.0:2024");
        assert_eq!(c.listeners[2].address, "0.0.0.0:2003");
        assert_eq!(c.listeners[2].transport, Transport::Udp);
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(
            c.destinations[1].address,
            DestAddress::Tcp("127.0.0.1:2104".into())
        );
        assert_eq!(c.destinations[0].protocol, DestProtocol::Pickle);
        assert_eq!(c.destinations[0].queue_datapoints, 100_000);
        assert!(!c.aggregation.forward_all);
        assert_eq!(c.aggregation.max_intervals, 3);
        assert_eq!(c.aggregation.rules.rules().len(), 1);
        assert!(c.aggregation.rewrite_file.is_none());
    }
}
