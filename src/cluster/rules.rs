//! The cluster's rules (`docs/cluster.md`, "Changing the rules"): the value of the `rules`
//! key in the config bucket, the rules themselves (key `rules.<digest>`, so a node that
//! starts during a change can route by the rules before it), and the activation time of
//! a rules change, so that every node routes intervals before it by the old rules and
//! from it by the new ones.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Aggregation;
use crate::hash::fnv1a64;
use crate::rules::aggregation::AggregationRules;
use crate::rules::rewrite::RewriteRules;

/// The cluster's rules: the `rules` key's value, `<digest> <activation> [<previous>]`
/// (digests as 16 hex digits; a plain digest, as a cluster created before cutovers
/// stored it, reads as activation 0: in force for every timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulesKey {
    /// [`super::rules_digest`] of the rules.
    pub digest: u64,
    /// Unix s from which datapoints are routed by these rules (earlier ones by the rules
    /// before); a multiple of every frequency of both.
    pub activation: i64,
    /// The digest of the rules before, which route datapoints stamped before
    /// `activation` (their text is the key `rules.<previous>`).
    pub previous: Option<u64>,
}

impl RulesKey {
    /// The key's value.
    pub fn encode(&self) -> String {
        match self.previous {
            Some(p) => format!("{:016x} {} {p:016x}", self.digest, self.activation),
            None => format!("{:016x} {}", self.digest, self.activation),
        }
    }

    /// Reads a value of the key; `None` for anything else.
    pub fn parse(value: &str) -> Option<RulesKey> {
        let mut parts = value.split_ascii_whitespace();
        let digest = u64::from_str_radix(parts.next()?, 16).ok()?;
        let activation = match parts.next() {
            Some(a) => a.parse().ok()?,
            None => 0,
        };
        let previous = match parts.next() {
            Some(p) => Some(u64::from_str_radix(p, 16).ok()?),
            None => None,
        };
        parts.next().is_none().then_some(RulesKey {
            digest,
            activation,
            previous,
        })
    }

    /// The digest as the logs and `aggd cluster status` show it.
    pub fn digest_hex(&self) -> String {
        format!("{:016x}", self.digest)
    }
}

/// The rules as a node read them from its files: what the digest is taken over, and what
/// the key `rules.<digest>` holds (JSON), so that another node can route by them.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The aggregation rules file's text.
    pub rules: String,
    /// The rewrite rules file's text, if there is one.
    pub rewrite: Option<String>,
    /// `forward_all`.
    pub forward_all: bool,
    /// `timestamp_resolution` (s).
    pub timestamp_resolution: u32,
}

impl Material {
    /// The rules of `a`, read from its files again (a file that cannot be read counts as
    /// empty, so its digest differs from the cluster's).
    pub fn of(a: &Aggregation) -> Material {
        let read = |f: &std::path::Path| {
            String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned()
        };
        Material {
            rules: read(&a.rules_file),
            rewrite: a.rewrite_file.as_deref().map(read),
            forward_all: a.forward_all,
            timestamp_resolution: a.timestamp_resolution,
        }
    }

    /// FNV-1a 64 over the aggregation rules, `\0rewrite\0` and the rewrite rules (if
    /// any), and `\0forward_all=<b>\0resolution=<s>`: the rules digest.
    pub fn digest(&self) -> u64 {
        let mut bytes = self.rules.as_bytes().to_vec();
        if let Some(r) = &self.rewrite {
            bytes.extend_from_slice(b"\0rewrite\0");
            bytes.extend_from_slice(r.as_bytes());
        }
        bytes.extend_from_slice(
            format!(
                "\0forward_all={}\0resolution={}",
                self.forward_all, self.timestamp_resolution
            )
            .as_bytes(),
        );
        fnv1a64(&bytes)
    }

    /// `base` (this node's aggregation settings) with these rules.
    ///
    /// Errors: a rule does not parse (the message names the line).
    pub fn aggregation(&self, base: &Aggregation) -> Result<Aggregation, String> {
        let file = std::path::PathBuf::from(format!("<cluster rules {:016x}>", self.digest()));
        let rules = AggregationRules::parse(&self.rules, &file).map_err(|e| e.to_string())?;
        let rewrite = match &self.rewrite {
            Some(r) => RewriteRules::parse(r, &file).map_err(|e| e.to_string())?,
            None => RewriteRules::default(),
        };
        Ok(Aggregation {
            rules_file: file,
            rules: Arc::new(rules),
            rewrite_file: None,
            rewrite: Arc::new(rewrite),
            forward_all: self.forward_all,
            timestamp_resolution: self.timestamp_resolution,
            ..base.clone()
        })
    }

    /// The config bucket's key of the rules with `digest`.
    pub fn key(digest: u64) -> String {
        format!("rules.{digest:016x}")
    }
}

/// Longest step between rule-set boundaries: intervals of frequencies whose least common
/// multiple is longer are not all aligned to one activation time (then the longest
/// frequency is used, and intervals of the others may straddle it; logged).
const MAX_STEP: u64 = 86_400;

/// The step activation times are multiples of: the least common multiple of every rule's
/// frequency and the timestamp resolution of `sets`, so that every interval of either rule
/// set lies wholly before or wholly after it. Above [`MAX_STEP`] the longest frequency.
pub fn step(sets: &[&Aggregation]) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let freqs = sets.iter().flat_map(|a| {
        let rules = a.rules.rules();
        let f: Vec<u64> = rules.iter().map(|r| u64::from(r.frequency)).collect();
        f.into_iter().chain([u64::from(a.timestamp_resolution)])
    });
    let (mut lcm, mut longest) = (1u64, 1u64);
    for f in freqs.filter(|f| *f > 0) {
        longest = longest.max(f);
        lcm = lcm / gcd(lcm, f) * f;
        if lcm > MAX_STEP {
            tracing::warn!(
                "the rules' frequencies have no common multiple within a day: a rules change is aligned to the longest frequency only"
            );
            return longest;
        }
    }
    lcm
}

/// The activation time of a rules change made at `now` (Unix s): the first multiple of
/// `step` at least `margin` ahead. `margin` is what every live node needs to see the
/// change ([`margin`]).
pub fn activation(now: f64, margin: Duration, step: u64) -> i64 {
    let earliest = (now + margin.as_secs_f64()).ceil() as i64;
    let step = step.max(1) as i64;
    earliest.div_euclid(step) * step + if earliest % step == 0 { 0 } else { step }
}

/// How far ahead of a rules change its activation lies: two lease TTLs. A node that has
/// not read the key by then has not renewed a lease either (its tick reads both), and
/// its connections route by the old rules only what the node journals meanwhile.
pub fn margin(lease_ttl: Duration) -> Duration {
    lease_ttl * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_round_trips_and_a_plain_digest_is_always_in_force() {
        let k = RulesKey {
            digest: 0x00ab_cdef_0123_4567,
            activation: 1_700_000_040,
            previous: None,
        };
        assert_eq!(k.encode(), "00abcdef01234567 1700000040");
        assert_eq!(RulesKey::parse(&k.encode()), Some(k));
        let with = RulesKey {
            previous: Some(0x10),
            ..k
        };
        assert_eq!(
            with.encode(),
            "00abcdef01234567 1700000040 0000000000000010"
        );
        assert_eq!(RulesKey::parse(&with.encode()), Some(with));
        assert_eq!(
            RulesKey::parse("00abcdef01234567"),
            Some(RulesKey {
                digest: k.digest,
                activation: 0,
                previous: None,
            })
        );
        assert_eq!(RulesKey::parse(""), None);
        assert_eq!(RulesKey::parse("xyz 10"), None);
        assert_eq!(RulesKey::parse("00 10 20 30"), None);
        assert_eq!(RulesKey::parse("00 10 zz"), None);
    }

    #[test]
    fn the_activation_is_the_first_step_boundary_past_the_margin() {
        let m = Duration::from_secs(20);
        assert_eq!(activation(1000.0, m, 60), 1020);
        assert_eq!(activation(1000.5, m, 60), 1080);
        assert_eq!(activation(1040.0, m, 60), 1080);
        assert_eq!(activation(1000.0, m, 7), 1022);
        assert_eq!(activation(1000.0, Duration::ZERO, 1), 1000);
    }
}
