//! Validation, one section at a time: each validated section type is `TryFrom` its
//! [`super::file`] section, whose paths are already absolute
//! ([`super::File::resolve_paths`]). Errors are [`SectionError`]s; the caller adds the
//! config file's name ([`super::ConfigError`]).

use std::sync::Arc;

use super::file::{
    AdminFile, AggregationFile, FsyncMode, JournalFile, ListenFile, QuarantineFile, ServiceFile,
    TenantMode, TenantsFile, WorkersFile,
};
use super::{
    AdminConfig, Aggregation, ListenerConfig, Protocol, QuarantineConfig, Service, TenantsConfig,
    Transport, Workers,
};
use crate::codec::Limits;
use crate::journal::{Fsync, JournalConfig};
use crate::rules::aggregation::AggregationRules;
use crate::rules::lists::Lists;
use crate::rules::rewrite::RewriteRules;
use crate::tenant::Registry;

pub use super::error::SectionError;
pub(crate) use super::error::invalid;

impl TryFrom<ListenFile> for ListenerConfig {
    type Error = SectionError;

    fn try_from(l: ListenFile) -> Result<Self, SectionError> {
        if l.protocol != Protocol::Plaintext && l.transport == Transport::Udp {
            return Err(invalid("listen: pickle and http are TCP only"));
        }
        if super::split_host_port(&l.address).is_none() {
            return Err(invalid(format!(
                "listen address {:?} is not host:port (IPv6 as [addr]:port)",
                l.address
            )));
        }
        Ok(ListenerConfig {
            protocol: l.protocol,
            transport: l.transport,
            address: l.address,
            max_connections: l.max_connections,
        })
    }
}

impl TryFrom<AggregationFile> for Aggregation {
    type Error = SectionError;

    /// Also reads and compiles the rules files.
    fn try_from(a: AggregationFile) -> Result<Self, SectionError> {
        if a.max_intervals == 0 {
            return Err(invalid("aggregation.max_intervals must be at least 1"));
        }
        if a.route_cache_entries == 0 || a.max_values_per_bucket == 0 {
            return Err(invalid(
                "aggregation.route_cache_entries and max_values_per_bucket must be at least 1",
            ));
        }
        let rules = AggregationRules::load(&a.rules)?;
        let rewrite = match &a.rewrite_rules {
            Some(f) => RewriteRules::load(f)?,
            None => RewriteRules::default(),
        };
        let lists = Lists::load(a.blacklist.as_deref(), a.whitelist.as_deref())?;
        Ok(Aggregation {
            rules_file: a.rules,
            rules: Arc::new(rules),
            rewrite_file: a.rewrite_rules,
            rewrite: Arc::new(rewrite),
            forward_all: a.forward_all,
            max_intervals: a.max_intervals,
            write_back_frequency: a.write_back_frequency,
            route_cache_entries: a.route_cache_entries,
            max_values_per_bucket: a.max_values_per_bucket,
            lists: Arc::new(lists),
            timestamp_resolution: a.timestamp_resolution,
        })
    }
}

impl TryFrom<WorkersFile> for Workers {
    type Error = SectionError;

    /// `count = 0` resolves to the number of cores.
    fn try_from(w: WorkersFile) -> Result<Self, SectionError> {
        if w.queue_batches == 0 || w.flush_tick_ms == 0 {
            return Err(invalid(
                "workers.queue_batches and workers.flush_tick_ms must be at least 1",
            ));
        }
        let count = if w.count == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            w.count
        };
        Ok(Workers {
            count,
            queue_batches: w.queue_batches,
            flush_tick: std::time::Duration::from_millis(w.flush_tick_ms),
        })
    }
}

/// Checks `[limits]` (it is used as written).
pub(super) fn check_limits(limits: &Limits) -> Result<(), SectionError> {
    if limits.max_pickle_frame_bytes > (u32::MAX / 4) as usize
        || limits.max_pickle_objects > (u32::MAX / 4) as usize
    {
        return Err(invalid("limits: pickle limits must be below 1 GiB"));
    }
    Ok(())
}

impl TryFrom<JournalFile> for JournalConfig {
    type Error = SectionError;

    fn try_from(j: JournalFile) -> Result<Self, SectionError> {
        if j.segment_bytes < 4096 || j.queue_records == 0 {
            return Err(invalid(
                "journal.segment_bytes must be at least 4096 and queue_records at least 1",
            ));
        }
        Ok(JournalConfig {
            ledger: j.ledger.unwrap_or_else(|| j.dir.join(crate::ledger::FILE)),
            dir: j.dir,
            fsync: match j.fsync {
                FsyncMode::Never => Fsync::Never,
                FsyncMode::Always => Fsync::Always,
                FsyncMode::Interval => Fsync::Interval(j.fsync_interval),
            },
            segment_bytes: j.segment_bytes,
            segment_max_age: j.segment_max_age,
            max_bytes: j.max_bytes,
            max_age: j.max_age,
            min_free_disk: j.min_free_disk,
            on_full: j.on_full,
            queue_records: j.queue_records,
        })
    }
}

impl TryFrom<TenantsFile> for TenantsConfig {
    type Error = SectionError;

    /// Also reads the registry, so `aggd check` reports a broken one.
    fn try_from(t: TenantsFile) -> Result<Self, SectionError> {
        let TenantMode::Prefix = t.mode;
        Registry::load(&t.registry)?;
        Ok(TenantsConfig {
            registry: t.registry,
            unknown: t.unknown,
        })
    }
}

impl TryFrom<AdminFile> for AdminConfig {
    type Error = SectionError;

    /// Reads `token_file` when given (it wins over `token`).
    fn try_from(a: AdminFile) -> Result<Self, SectionError> {
        let token = match (a.token, a.token_file) {
            (_, Some(file)) => std::fs::read_to_string(&file)
                .map_err(|error| SectionError::Io { file, error })?
                .trim()
                .to_string(),
            (Some(t), None) => t,
            (None, None) => String::new(),
        };
        if !token.is_empty() && token.len() < 8 {
            return Err(invalid(
                "admin: the token (or token_file) must have at least 8 characters",
            ));
        }
        if token.is_empty() && a.protect_metrics {
            return Err(invalid(
                "admin: protect_metrics needs a token (or token_file) of at least 8 characters",
            ));
        }
        Ok(AdminConfig {
            address: a.address,
            token,
            protect_metrics: a.protect_metrics,
        })
    }
}

impl From<QuarantineFile> for QuarantineConfig {
    fn from(q: QuarantineFile) -> Self {
        QuarantineConfig {
            file: q.file,
            max_bytes: q.max_bytes,
        }
    }
}

impl From<ServiceFile> for Service {
    /// The host name defaults to the machine's; dots become `_` (as carbon does).
    fn from(s: ServiceFile) -> Self {
        Service {
            drain_timeout: s.drain_timeout,
            self_metrics_interval: s.self_metrics_interval,
            self_metrics_prefix: s.self_metrics_prefix,
            hostname: s
                .hostname
                .unwrap_or_else(machine_hostname)
                .replace('.', "_"),
            instance: s.instance,
        }
    }
}

/// The machine's host name (Linux: /proc/sys/kernel/hostname).
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
