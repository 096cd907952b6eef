//! Configuration, in two phases: [`File`] is the TOML as written (unknown keys are errors,
//! closed sets are enums, durations humantime strings; [`file`](mod@file)), [`Config`] is the
//! validated result with compiled rules and resolved sizes, built one section at a time
//! ([`section`]). A reload builds a whole new `Config`.
//!
//! Every key is documented in `config/aggd.toml`. Relative paths are relative to the
//! directory of the file they appear in. [`carbon`] builds the same `Config` from a
//! carbon.conf `[aggregator]` section.

pub mod carbon;
pub mod cluster;
pub mod destination;
pub mod error;
pub mod file;
pub mod prometheus;
pub mod section;
mod summary;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Limits;
use crate::journal::JournalConfig;
use crate::rules::RuleError;
use crate::rules::aggregation::AggregationRules;
use crate::rules::rewrite::RewriteRules;

pub use destination::{
    CarbonDestination, CarbonProtocol, CarbonTarget, DestinationConfig, DestinationKind,
    OutputPlacement, split_host_port,
};
pub use file::{DestProtocol, File, LateChanges, Protocol, Transport};
pub use section::SectionError;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error (part of the message, so not also a `source`: printed once).
        error: std::io::Error,
    },
    /// The file is not valid TOML or INI, or has unknown keys or wrong types.
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A syntax error or a bad value at a known place in the file.
    #[error("{}:{line}:{column}: {message}", file.display())]
    At {
        /// The file.
        file: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Several errors, one per line, in the order of the file's sections.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
    /// A value is out of range or inconsistent.
    #[error("{}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A rules file is invalid.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// The tenant registry file is invalid.
    #[error(transparent)]
    Registry(#[from] crate::tenant::RegistryError),
}

/// Validated `[service]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Longest wait at shutdown for destinations.
    pub drain_timeout: Duration,
    /// Self-metrics period; zero = off.
    pub self_metrics_interval: Duration,
    /// Self-metrics prefix.
    pub self_metrics_prefix: String,
    /// Host name for self-metrics, dots replaced by `_` (as carbon does).
    pub hostname: String,
    /// carbon's instance in self-metric names (`<host>-<instance>`); empty: none.
    pub instance: String,
}

impl Service {
    /// The self-metrics' common prefix, `<prefix>.aggregator.<host>-<instance>` (carbon's
    /// `aggregator_record`), without `-<instance>` when the instance is empty.
    pub fn self_metrics_base(&self) -> String {
        let (prefix, host) = (&self.self_metrics_prefix, &self.hostname);
        match self.instance.as_str() {
            "" => format!("{prefix}.aggregator.{host}"),
            i => format!("{prefix}.aggregator.{host}-{i}"),
        }
    }
}

/// Faults to inject, for tests of isolation (feature `fault-injection`). Not settable
/// from a config file.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Applying a datapoint of this output series panics in the worker.
    pub panic_on_series: Option<String>,
    /// Applying a datapoint of this output series blocks its worker this long.
    pub stall_on_series: Option<(String, Duration)>,
}

/// Validated `[tenants]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantsConfig {
    /// The registry file.
    pub registry: PathBuf,
    /// What to do with unknown tenants.
    pub unknown: crate::tenant::Unknown,
}

/// Validated `[admin]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// Address to bind.
    pub address: String,
    /// Bearer token; empty when none is configured (the tenant API is then off).
    pub token: String,
    /// `/metrics`, `/health` and `/ready` need the token too.
    pub protect_metrics: bool,
}

/// Validated `[quarantine]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuarantineConfig {
    /// The file; `<file>.1` holds the previous one after rotation.
    pub file: PathBuf,
    /// Size at which the file rotates, in bytes.
    pub max_bytes: u64,
}

/// A validated listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Input protocol.
    pub protocol: Protocol,
    /// Transport.
    pub transport: Transport,
    /// Address to bind, `host:port`.
    pub address: String,
    /// Most open connections on this listener (TCP), if limited.
    pub max_connections: Option<usize>,
}

/// Validated `[aggregation]`.
#[derive(Clone, Debug)]
pub struct Aggregation {
    /// The aggregation rules file.
    pub rules_file: PathBuf,
    /// Compiled aggregation rules.
    pub rules: Arc<AggregationRules>,
    /// The rewrite rules file, if any.
    pub rewrite_file: Option<PathBuf>,
    /// Compiled rewrite rules (empty without a file).
    pub rewrite: Arc<RewriteRules>,
    /// Forward raw datapoints too.
    pub forward_all: bool,
    /// Intervals kept per series.
    pub max_intervals: u32,
    /// Seconds between partial aggregates; 0 = off.
    pub write_back_frequency: u32,
    /// Route cache capacity, in distinct metric paths.
    pub route_cache_entries: usize,
    /// Values kept per bucket for percentile methods.
    pub max_values_per_bucket: usize,
    /// The white/blacklists, applied to received paths before anything else.
    pub lists: Arc<crate::rules::lists::Lists>,
    /// Seconds timestamps are floored to a multiple of; 0 = off.
    pub timestamp_resolution: u32,
}

/// Validated `[workers]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Workers {
    /// Worker threads (resolved: never 0).
    pub count: usize,
    /// Queue capacity per worker, in batches.
    pub queue_batches: usize,
    /// Time between flush sweeps.
    pub flush_tick: Duration,
}

/// A complete, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Listeners to bind.
    pub listeners: Vec<ListenerConfig>,
    /// Rules and bucket settings.
    pub aggregation: Aggregation,
    /// Worker settings.
    pub workers: Workers,
    /// Destinations.
    pub destinations: Vec<DestinationConfig>,
    /// Which destinations each name goes to.
    pub routing: OutputPlacement,
    /// Decoder limits.
    pub limits: Limits,
    /// The journal, when on.
    pub journal: Option<JournalConfig>,
    /// The tenant gate, when on.
    pub tenants: Option<TenantsConfig>,
    /// The admin API, when on.
    pub admin: Option<AdminConfig>,
    /// The quarantine file, when on.
    pub quarantine: Option<QuarantineConfig>,
    /// Service behaviour.
    pub service: Service,
    /// Cluster mode on NATS JetStream, when on.
    pub cluster: Option<cluster::ClusterConfig>,
    /// Fault injection (tests only, feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub faults: Faults,
}

pub(crate) fn invalid(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

impl ConfigError {
    /// A section's error, as an error of the config file `file`.
    fn in_file(file: &Path, e: SectionError) -> ConfigError {
        match e {
            SectionError::Invalid(message) => ConfigError::Invalid {
                file: file.to_path_buf(),
                message,
            },
            SectionError::Io { file, error } => ConfigError::Io { file, error },
            SectionError::Rules(e) => ConfigError::Rules(e),
            SectionError::Registry(e) => ConfigError::Registry(e),
        }
    }
}

/// The errors found so far while validating a config: validation goes on past an error,
/// so every one is reported.
#[derive(Default)]
struct Errors(Vec<SectionError>);

impl Errors {
    /// The value, or `None` with the error kept.
    fn ok<T>(&mut self, r: Result<T, SectionError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    /// Every item of `items` validated into `T`, in order; the errors of all of them kept.
    fn each<F, T: TryFrom<F, Error = SectionError>>(&mut self, items: Vec<F>) -> Option<Vec<T>> {
        let before = self.0.len();
        let out: Vec<T> = items
            .into_iter()
            .filter_map(|i| self.ok(T::try_from(i)))
            .collect();
        (self.0.len() == before).then_some(out)
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

/// Where in the config `text` a validation `message` points: the first value it quotes,
/// found quoted in the file, else the header of the section it names (`admin: …` →
/// `[admin]`).
fn locate(text: &str, message: &str) -> Option<(usize, usize)> {
    let quoted = message
        .split('"')
        .nth(1)
        .filter(|q| !q.is_empty())
        .and_then(|q| text.find(&format!("\"{q}\"")));
    let section = || {
        let name = message.split(':').next()?.trim();
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then_some(())?;
        text.find(&format!("[{name}]"))
            .or_else(|| text.find(&format!("[[{name}]]")))
    };
    quoted.or_else(section).map(|o| line_col(text, o))
}

impl Config {
    /// Reads, parses and validates a TOML config file (and the rules files it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            file: path.to_path_buf(),
            error,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| match e.span() {
            Some(span) => {
                let (line, column) = line_col(&text, span.start);
                // The message, then the line it is about (which names the key).
                let source = text.lines().nth(line - 1).unwrap_or("").trim();
                ConfigError::At {
                    file: path.to_path_buf(),
                    line,
                    column,
                    message: format!("{} (in `{source}`)", e.message().trim()),
                }
            }
            None => ConfigError::Syntax {
                file: path.to_path_buf(),
                message: e.to_string(),
            },
        })?;
        Config::validate(file, path, Some(&text))
    }

    /// Validates a parsed [`File`]: its relative paths are resolved against `path`'s
    /// directory, then each section becomes its validated type; `path` names errors.
    ///
    /// Errors: every section's, in order ([`ConfigError::Many`] when there are several).
    pub fn from_file(file: File, path: &Path) -> Result<Config, ConfigError> {
        Config::validate(file, path, None)
    }

    /// [`Config::from_file`], placing each error at its line and column when the file's
    /// `text` is known.
    fn validate(mut file: File, path: &Path, text: Option<&str>) -> Result<Config, ConfigError> {
        file.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Config::from_sections(file, path).map_err(|errors| {
            let mut all: Vec<ConfigError> = errors
                .into_iter()
                .map(|e| match (ConfigError::in_file(path, e), text) {
                    (ConfigError::Invalid { file, message }, Some(t)) => {
                        match locate(t, &message) {
                            Some((line, column)) => ConfigError::At {
                                file,
                                line,
                                column,
                                message,
                            },
                            None => ConfigError::Invalid { file, message },
                        }
                    }
                    (e, _) => e,
                })
                .collect();
            match all.len() {
                1 => all.remove(0),
                _ => ConfigError::Many(all),
            }
        })
    }

    /// Validates every section, going on past errors; all of them on failure.
    fn from_sections(file: File, path: &Path) -> Result<Config, Vec<SectionError>> {
        let mut errs = Errors::default();
        errs.ok(section::check_limits(&file.limits));
        if file.cluster.is_some() && file.journal.is_none() {
            errs.0.push(section::invalid(
                "cluster: cluster mode needs a [journal] section: the node republishes from it",
            ));
        }
        let listeners = errs.each(file.listen);
        let destinations: Option<Vec<DestinationConfig>> = errs.each(file.destination);
        let aggregation = errs.ok(file.aggregation.try_into());
        let workers = errs.ok(file.workers.try_into());
        let routing = destinations
            .as_ref()
            .and_then(|d| errs.ok(OutputPlacement::from_file(file.routing, d)));
        let journal = errs.ok(file.journal.map(TryInto::try_into).transpose());
        let tenants = errs.ok(file.tenants.map(TryInto::try_into).transpose());
        let admin = errs.ok(file.admin.map(TryInto::try_into).transpose());
        let cluster = errs.ok(file.cluster.map(TryInto::try_into).transpose());
        match (
            listeners,
            destinations,
            aggregation,
            workers,
            routing,
            journal,
            tenants,
            admin,
            cluster,
        ) {
            (
                Some(listeners),
                Some(destinations),
                Some(aggregation),
                Some(workers),
                Some(routing),
                Some(journal),
                Some(tenants),
                Some(admin),
                Some(cluster),
            ) if errs.0.is_empty() => Ok(Config {
                source: path.to_path_buf(),
                listeners,
                aggregation,
                workers,
                routing,
                destinations,
                limits: file.limits,
                journal,
                tenants,
                admin,
                quarantine: file.quarantine.map(Into::into),
                service: file.service.into(),
                cluster,
                #[cfg(feature = "fault-injection")]
                faults: Faults::default(),
            }),
            _ => Err(errs.0),
        }
    }
}

/// The summary `aggd check` prints: every setting in the config's own words.
#[cfg(test)]
mod tests;
