//! Which datapoints refused at receive time a replay includes.
//!
//! Every re-read of the journal skips the datapoints a record's verdict refused
//! ([`crate::journal::Verdict`]), so a replay sends exactly what the live path aggregated.
//! Replaying what was refused must be asked for:
//! - `aggd replay --include-refused REASON,…` includes every datapoint refused for those
//!   reasons in the window (with `--tenant`, one tenant's);
//! - `aggd replay --lost` includes the datapoints refused for the reasons of the ledger
//!   entries it replays: `rate_limited`, `series_limit` and `queue_full` always (the
//!   ledger entry is the loss to repair), `tenant_deleted`, `tenant_blocked` and
//!   `tenant_unknown` only for a tenant the registry admits now (restored after a mistaken
//!   delete), and never the white/blacklists' (a filter is no loss).

use std::sync::Arc;

use crate::config::Config;
use crate::journal::record::REFUSAL_CODES;
use crate::reason::DropReason;
use crate::tenant::{Registry, TenantState, Unknown};

/// Which refused datapoints a replay includes; the default includes none.
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    /// Included whatever the tenant's state (`--include-refused`).
    always: Vec<DropReason>,
    /// Included as `--lost` does (see the module docs).
    lost: Vec<DropReason>,
    /// The tenant registry now, and what it does with an unknown tenant (tenants on).
    registry: Option<(Arc<Registry>, Unknown)>,
}

/// A reason a verdict cannot hold was named.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a receive-time refusal (one of: {list})", list = refusal_labels())]
pub struct NotARefusal(pub String);

fn refusal_labels() -> String {
    REFUSAL_CODES.map(DropReason::as_str).join(", ")
}

impl Refusals {
    /// `--include-refused`: the datapoints refused for each of `labels`.
    ///
    /// Errors: a label that is not a receive-time refusal.
    pub fn always<S: AsRef<str>>(labels: &[S]) -> Result<Refusals, NotARefusal> {
        let always = labels
            .iter()
            .map(|l| {
                DropReason::from_label(l.as_ref())
                    .filter(|r| REFUSAL_CODES.contains(r))
                    .ok_or_else(|| NotARefusal(l.as_ref().to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Refusals {
            always,
            ..Refusals::default()
        })
    }

    /// Adds what `--lost` includes for ledger entries of `reasons` (labels; others are
    /// ignored), judged against the tenant registry `config` names now.
    ///
    /// Errors: the registry cannot be read.
    pub fn with_lost<S: AsRef<str>>(
        mut self,
        reasons: &[S],
        config: &Config,
    ) -> Result<Refusals, crate::tenant::RegistryError> {
        for r in reasons
            .iter()
            .filter_map(|l| DropReason::from_label(l.as_ref()))
        {
            if REFUSAL_CODES.contains(&r) && !r.is_filter() && !self.lost.contains(&r) {
                self.lost.push(r);
            }
        }
        if let Some(t) = &config.tenants {
            self.registry = Some((Arc::new(Registry::load(&t.registry)?), t.unknown));
        }
        Ok(self)
    }

    /// Whether a datapoint of `tenant` refused for `reason` is replayed.
    pub fn includes(&self, reason: DropReason, tenant: &str) -> bool {
        if self.always.contains(&reason) {
            return true;
        }
        if !self.lost.contains(&reason) {
            return false;
        }
        match reason {
            DropReason::TenantDeleted | DropReason::TenantBlocked | DropReason::TenantUnknown => {
                self.admitted_now(tenant)
            }
            _ => true,
        }
    }

    /// Whether `reason`'s refusals are replayed as `--lost` does.
    pub fn lost(&self, reason: DropReason) -> bool {
        self.lost.contains(&reason)
    }

    /// Whether the registry now lets `tenant` in.
    fn admitted_now(&self, tenant: &str) -> bool {
        let Some((registry, unknown)) = &self.registry else {
            return true;
        };
        match registry.get(tenant) {
            Some(e) => e.state == TenantState::Active,
            None => *unknown == Unknown::Accept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(text: &str) -> Arc<Registry> {
        Arc::new(Registry::parse(text, std::path::Path::new("t.toml")).unwrap())
    }

    #[test]
    fn nothing_refused_is_replayed_unless_asked() {
        let r = Refusals::default();
        for reason in REFUSAL_CODES {
            assert!(!r.includes(reason, "a"));
        }
    }

    #[test]
    fn include_refused_names_reasons() {
        let r = Refusals::always(&["tenant_deleted", "rate_limited"]).unwrap();
        assert!(r.includes(DropReason::TenantDeleted, "a"));
        assert!(r.includes(DropReason::RateLimited, "a"));
        assert!(!r.includes(DropReason::TenantBlocked, "a"));
        let e = Refusals::always(&["too_old"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"too_old\" is not a receive-time refusal")
        );
        assert!(Refusals::always(&["nope"]).is_err());
    }

    #[test]
    fn lost_replays_a_tenant_only_once_it_is_admitted_again() {
        let mut r = Refusals {
            lost: vec![
                DropReason::TenantDeleted,
                DropReason::RateLimited,
                DropReason::TenantUnknown,
            ],
            ..Refusals::default()
        };
        r.registry = Some((
            registry("[tenant.gone]\nstate = \"deleted\"\n[tenant.back]\nstate = \"active\"\n"),
            Unknown::Reject,
        ));
        assert!(!r.includes(DropReason::TenantDeleted, "gone"));
        assert!(r.includes(DropReason::TenantDeleted, "back"));
        assert!(
            r.includes(DropReason::RateLimited, "gone"),
            "a loss to repair"
        );
        assert!(!r.includes(DropReason::TenantUnknown, "stranger"));
        assert!(
            !r.includes(DropReason::TenantBlocked, "back"),
            "not ledgered"
        );
        r.registry.as_mut().unwrap().1 = Unknown::Accept;
        assert!(r.includes(DropReason::TenantUnknown, "stranger"));
    }
}
