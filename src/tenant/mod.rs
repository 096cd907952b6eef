//! Tenants: who a datapoint belongs to, whether it may pass, and at what rate.
//!
//! A tenant is the first node of the metric path (`mode = "prefix"`: `acme.web01.cpu`
//! belongs to `acme`) or, on HTTP, the owner of the API key. The registry (a TOML file,
//! reloaded on SIGHUP, and the admin HTTP API) gives each tenant a state (active, blocked,
//! deleted) and limits (datapoints per second, distinct series, bytes per second).
//!
//! The gate runs once per datapoint, before `[pre]` rewrites and rule matching, and never
//! blocks or fails: the registry is an immutable snapshot behind an [`ArcSwap`] (a load is
//! a few atomic operations), per-tenant counters are atomics, and every outcome other than
//! "pass" is a [`DropReason`] that the caller counts, logs, ledgers and quarantines.
//!
//! Limits:
//! - `datapoints_per_second` and `bytes_per_second` count per wall-clock second of the
//!   frame's receive time; a datapoint's bytes are its path length plus 16;
//! - `max_series` counts distinct metric paths ever admitted for the tenant (checked only
//!   when a path is new to the route cache); a new path beyond it is `series_limit`,
//!   known paths keep flowing.

pub mod admin;
pub mod registry;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;

pub use registry::{Registry, RegistryError, TenantEntry, TenantState};

use crate::hash::fnv1a64;
use crate::reason::DropReason;

/// What to do with datapoints of a tenant the registry does not know (`tenants.unknown`:
/// `accept` or `reject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Let them pass, without limits.
    #[default]
    Accept,
    /// Reject them as `tenant_unknown`.
    Reject,
}

/// A per-second fixed-window counter.
#[derive(Debug, Default)]
struct Window {
    second: AtomicU64,
    used: AtomicU64,
}

impl Window {
    /// Takes `n` from this second's allowance of `limit`; false if over.
    fn take(&self, n: u64, limit: u64, second: u64) -> bool {
        let cur = self.second.load(Ordering::Relaxed);
        if cur != second
            && self
                .second
                .compare_exchange(cur, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(n, Ordering::Relaxed) + n <= limit
    }
}

/// Counters and limiter state of one tenant; survives registry reloads.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Datapoints admitted.
    pub accepted: AtomicU64,
    /// Datapoints rejected, per [`DropReason`] index (see [`TenantCounters::rejected`]).
    rejected: [AtomicU64; DropReason::ALL.len()],
    datapoints: Window,
    bytes: Window,
    /// Hashes of the paths admitted so far (at most `max_series`).
    series: Mutex<HashSet<u64>>,
}

impl TenantCounters {
    /// Datapoints of this tenant rejected for `reason`.
    pub fn rejected(&self, reason: DropReason) -> u64 {
        self.rejected[DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0)]
        .load(Ordering::Relaxed)
    }

    fn reject(&self, reason: DropReason) -> DropReason {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
        reason
    }
}

/// The tenant gate; shared by all listeners.
pub struct Tenants {
    registry: ArcSwap<Registry>,
    unknown: Unknown,
    counters: DashMap<Arc<str>, Arc<TenantCounters>>,
}

/// The tenant id of a metric path in prefix mode: its first node.
#[inline]
pub fn prefix(path: &str) -> &str {
    crate::datapoint::first_node(path)
}

impl Tenants {
    /// A gate over `registry`.
    pub fn new(registry: Registry, unknown: Unknown) -> Self {
        Tenants {
            registry: ArcSwap::from_pointee(registry),
            unknown,
            counters: DashMap::new(),
        }
    }

    /// The current registry snapshot.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Replaces the registry (reload or admin change); counters are kept.
    pub fn replace(&self, registry: Registry) {
        self.registry.store(Arc::new(registry));
    }

    /// Counters of a registered tenant (created on first use).
    pub fn counters(&self, id: &str) -> Arc<TenantCounters> {
        if let Some(c) = self.counters.get(id) {
            return Arc::clone(&c);
        }
        let entry = self
            .counters
            .entry(Arc::from(id))
            .or_insert_with(|| Arc::new(TenantCounters::default()));
        Arc::clone(&entry)
    }

    /// The tenant owning an HTTP API key, if any.
    pub(crate) fn tenant_for_key(&self, key: &str) -> Option<Arc<str>> {
        self.registry.load().tenant_for_key(key)
    }

    /// Decides whether a datapoint of `tenant` with `path`, received in Unix second
    /// `second`, may pass. Never blocks.
    ///
    /// Errors: `tenant_deleted`, `tenant_blocked`, `tenant_unknown` (with
    /// `unknown = "reject"`), `rate_limited` (datapoints or bytes per second).
    #[inline]
    pub fn admit(&self, tenant: &str, path: &str, second: u64) -> Result<(), DropReason> {
        let reg = self.registry.load();
        let Some(entry) = reg.get(tenant) else {
            return match self.unknown {
                Unknown::Accept => Ok(()),
                Unknown::Reject => Err(DropReason::TenantUnknown),
            };
        };
        let c = self.counters(tenant);
        match entry.state {
            TenantState::Deleted => return Err(c.reject(DropReason::TenantDeleted)),
            TenantState::Blocked => return Err(c.reject(DropReason::TenantBlocked)),
            TenantState::Active => {}
        }
        if let Some(limit) = entry.datapoints_per_second
            && !c.datapoints.take(1, limit, second)
        {
            return Err(c.reject(DropReason::RateLimited));
        }
        if let Some(limit) = entry.bytes_per_second
            && !c.bytes.take(path.len() as u64 + 16, limit, second)
        {
            return Err(c.reject(DropReason::RateLimited));
        }
        c.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Called when `path` is new to the route cache: admits it against the tenant's
    /// `max_series`.
    pub(crate) fn admit_series(&self, tenant: &str, path: &str) -> Result<(), DropReason> {
        let reg = self.registry.load();
        let Some(max) = reg.get(tenant).and_then(|e| e.max_series) else {
            return Ok(());
        };
        let c = self.counters(tenant);
        let Ok(mut known) = c.series.lock() else {
            return Ok(());
        };
        let h = fnv1a64(path.as_bytes());
        if known.contains(&h) || (known.len() as u64) < max {
            known.insert(h);
            return Ok(());
        }
        drop(known);
        // `admit` counted this datapoint as accepted before the path was known to be new.
        c.accepted.fetch_sub(1, Ordering::Relaxed);
        Err(c.reject(DropReason::SeriesLimit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(text: &str) -> Registry {
        Registry::parse(text, std::path::Path::new("tenants.toml")).unwrap()
    }

    #[test]
    fn states_and_unknown_tenants() {
        let t = Tenants::new(
            reg("[tenant.a]\n[tenant.b]\nstate = \"blocked\"\n[tenant.c]\nstate = \"deleted\"\n"),
            Unknown::Reject,
        );
        assert_eq!(t.admit("a", "a.x", 1), Ok(()));
        assert_eq!(t.admit("b", "b.x", 1), Err(DropReason::TenantBlocked));
        assert_eq!(t.admit("c", "c.x", 1), Err(DropReason::TenantDeleted));
        assert_eq!(t.admit("z", "z.x", 1), Err(DropReason::TenantUnknown));
        assert_eq!(t.counters("c").rejected(DropReason::TenantDeleted), 1);
        let open = Tenants::new(reg(""), Unknown::Accept);
        assert_eq!(open.admit("z", "z.x", 1), Ok(()));
    }

    #[test]
    fn rate_limit_per_second_and_reload_keeps_counters() {
        let t = Tenants::new(
            reg("[tenant.a]\ndatapoints_per_second = 3\n"),
            Unknown::Accept,
        );
        let results: Vec<bool> = (0..5).map(|_| t.admit("a", "a.x", 100).is_ok()).collect();
        assert_eq!(results, [true, true, true, false, false]);
        assert!(t.admit("a", "a.x", 101).is_ok(), "a new second refills");
        t.replace(reg("[tenant.a]\nstate = \"deleted\"\n"));
        assert_eq!(t.admit("a", "a.x", 101), Err(DropReason::TenantDeleted));
        let c = t.counters("a");
        assert_eq!(c.accepted.load(Ordering::Relaxed), 4);
        assert_eq!(c.rejected(DropReason::RateLimited), 2);
    }

    #[test]
    fn bytes_limit_and_series_limit() {
        let t = Tenants::new(
            reg("[tenant.a]\nbytes_per_second = 40\nmax_series = 2\n"),
            Unknown::Accept,
        );
        assert!(t.admit("a", "a.xx", 1).is_ok()); // 20 bytes
        assert!(t.admit("a", "a.xx", 1).is_ok()); // 40
        assert_eq!(t.admit("a", "a.xx", 1), Err(DropReason::RateLimited));
        assert!(t.admit_series("a", "a.1").is_ok());
        assert!(t.admit_series("a", "a.2").is_ok());
        assert!(
            t.admit_series("a", "a.1").is_ok(),
            "known series keep flowing"
        );
        assert_eq!(t.admit_series("a", "a.3"), Err(DropReason::SeriesLimit));
        assert_eq!(prefix("acme.web.cpu"), "acme");
        assert_eq!(prefix("single"), "single");
    }
}
