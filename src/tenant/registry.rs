//! The tenant registry file (TOML), e.g.:
//!
//! ```toml
//! [tenant.acme]
//! state = "active"                 # active | blocked | deleted
//! api_keys = ["k-1f0c…"]           # HTTP ingest keys of this tenant
//! datapoints_per_second = 100000   # optional limits
//! max_series = 50000
//! bytes_per_second = 10000000
//! ```
//!
//! Unknown keys are errors. The admin API writes the file back (atomically: a temporary
//! file renamed over it), so its changes survive reloads and restarts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a registry file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        /// The registry file.
        file: PathBuf,
        /// The IO error (part of the message, so not also a `source`: printed once).
        error: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or wrong types.
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The registry file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A tenant id or API key is invalid.
    #[error("{}: {message}", file.display())]
    Invalid {
        /// The registry file.
        file: PathBuf,
        /// What is wrong, naming the tenant.
        message: String,
    },
}

/// A tenant's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Datapoints pass (within limits).
    #[default]
    Active,
    /// Datapoints are rejected as `tenant_blocked` (ledgered: replayable if unblocked).
    Blocked,
    /// Datapoints are rejected as `tenant_deleted` (ledgered: replayable if restored).
    Deleted,
}

/// One tenant as written in the file and in the admin API's JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// State.
    #[serde(default)]
    pub state: TenantState,
    /// HTTP API keys (Bearer token, or the Basic password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// Datapoints per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapoints_per_second: Option<u64>,
    /// Distinct metric paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_series: Option<u64>,
    /// Bytes per second (path length + 16 per datapoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenant: BTreeMap<String, TenantEntry>,
}

/// An immutable registry snapshot.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    tenants: BTreeMap<String, TenantEntry>,
    keys: HashMap<String, Arc<str>>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['.', ' ', ';']) && id.len() <= 255
}

impl Registry {
    /// Parses registry text; `file` names errors.
    ///
    /// Errors: TOML syntax or unknown keys; an id with `.`, `;` or spaces; an API key used
    /// by two tenants.
    pub fn parse(text: &str, file: &Path) -> Result<Registry, RegistryError> {
        let f: File = toml::from_str(text).map_err(|e| RegistryError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        Registry::from_entries(f.tenant, file)
    }

    fn from_entries(
        tenants: BTreeMap<String, TenantEntry>,
        file: &Path,
    ) -> Result<Registry, RegistryError> {
        let invalid = |message: String| RegistryError::Invalid {
            file: file.to_path_buf(),
            message,
        };
        let mut keys = HashMap::new();
        for (id, t) in &tenants {
            if !valid_id(id) {
                return Err(invalid(format!("tenant id {id:?} must be one path node")));
            }
            for k in &t.api_keys {
                if keys.insert(k.clone(), Arc::from(id.as_str())).is_some() {
                    return Err(invalid(format!("API key of tenant {id} is used twice")));
                }
            }
        }
        Ok(Registry { tenants, keys })
    }

    /// Reads a registry file.
    pub fn load(file: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(file).map_err(|error| RegistryError::Io {
            file: file.to_path_buf(),
            error,
        })?;
        Registry::parse(&text, file)
    }

    /// A tenant's entry.
    #[inline]
    pub fn get(&self, id: &str) -> Option<&TenantEntry> {
        self.tenants.get(id)
    }

    /// All tenants.
    pub fn tenants(&self) -> &BTreeMap<String, TenantEntry> {
        &self.tenants
    }

    /// The tenant owning an API key.
    pub(crate) fn tenant_for_key(&self, key: &str) -> Option<Arc<str>> {
        self.keys.get(key).cloned()
    }

    /// A copy with `id` set to `entry` (`None` removes it).
    pub fn with(
        &self,
        id: &str,
        entry: Option<TenantEntry>,
        file: &Path,
    ) -> Result<Registry, RegistryError> {
        let mut tenants = self.tenants.clone();
        match entry {
            Some(e) => {
                tenants.insert(id.to_string(), e);
            }
            None => {
                tenants.remove(id);
            }
        }
        Registry::from_entries(tenants, file)
    }

    /// Writes the registry to `file` atomically (temporary file, then rename).
    pub(crate) fn save(&self, file: &Path) -> std::io::Result<()> {
        let text = toml::to_string(&File {
            tenant: self.tenants.clone(),
        })
        .map_err(std::io::Error::other)?;
        let tmp = file.with_extension("toml.tmp");
        std::fs::write(
            &tmp,
            format!("# aggd tenant registry (also written by the admin API)\n{text}"),
        )?;
        std::fs::rename(tmp, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_save_round_trip_and_errors() {
        let p = Path::new("t.toml");
        let r = Registry::parse(
            "[tenant.acme]\napi_keys = [\"k1\"]\ndatapoints_per_second = 10\n[tenant.old]\nstate = \"deleted\"\n",
            p,
        )
        .unwrap();
        assert_eq!(r.get("acme").unwrap().datapoints_per_second, Some(10));
        assert_eq!(r.get("old").unwrap().state, TenantState::Deleted);
        assert_eq!(r.tenant_for_key("k1").as_deref(), Some("acme"));
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let f = dir.join("tenants.toml");
        r.save(&f).unwrap();
        let back = Registry::load(&f).unwrap();
        assert_eq!(back.tenants(), r.tenants());
        assert!(Registry::parse("[tenant.\"a.b\"]\n", p).is_err());
        assert!(Registry::parse("[tenant.a]\nbogus = 1\n", p).is_err());
        assert!(
            Registry::parse(
                "[tenant.a]\napi_keys=[\"k\"]\n[tenant.b]\napi_keys=[\"k\"]\n",
                p
            )
            .is_err()
        );
        let r2 = r.with("acme", None, p).unwrap();
        assert!(r2.get("acme").is_none() && r2.tenant_for_key("k1").is_none());
    }
}
