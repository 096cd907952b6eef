//! The `[aggregator]` keys as carbon reads them: `[aggregator]`, then
//! `[aggregator:<instance>]` on top; names case-insensitive; values trimmed, with
//! ConfigParser's booleans and `None` for unset.

use std::collections::HashMap;
use std::path::Path;

use super::keys::{Use, lookup};
use crate::config::{ConfigError, invalid};

/// ConfigParser's boolean words.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// The keys (upper-cased, values trimmed) and the file they came from.
pub(super) struct Section<'a> {
    keys: HashMap<String, String>,
    path: &'a Path,
}

impl<'a> Section<'a> {
    /// `[aggregator]` with `[aggregator:<instance>]` over it. Keys aggd ignores are logged
    /// with the reason, keys it does not know as unknown.
    ///
    /// Errors: no `[aggregator]` section.
    pub fn read(ini: &ini::Ini, instance: &str, path: &'a Path) -> Result<Self, ConfigError> {
        let base = ini
            .section(Some("aggregator"))
            .ok_or_else(|| invalid(path, "no [aggregator] section"))?;
        let mut keys = HashMap::new();
        let overlay = ini.section(Some(format!("aggregator:{instance}")));
        for (k, v) in base
            .iter()
            .chain(overlay.into_iter().flat_map(|s| s.iter()))
        {
            keys.insert(k.trim().to_ascii_uppercase(), v.trim().to_string());
        }
        for k in keys.keys() {
            match lookup(k) {
                Some(Use::Mapped(_)) => {}
                Some(Use::Ignored(reason)) => {
                    tracing::info!(key = %k, reason, "carbon.conf key ignored by aggd");
                }
                None => tracing::info!(
                    key = %k,
                    "carbon.conf key unknown to carbon-aggregator 1.1; ignored"
                ),
            }
        }
        Ok(Section { keys, path })
    }

    /// Every key set, upper-case, with its value, sorted by key.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort();
        out
    }

    /// The file the keys came from.
    pub fn path(&self) -> &Path {
        self.path
    }

    /// A key's value, if set and not empty.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.keys
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A whole, non-negative number (`None` or unset: `default`).
    pub fn num(&self, k: &str, default: u64) -> Result<u64, ConfigError> {
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

    /// A number, negative allowed (`None` or unset: `default`).
    pub fn float(&self, k: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(k) {
            None | Some("None") => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| invalid(self.path, format!("{k} = {v:?} is not a number"))),
        }
    }

    /// A boolean in ConfigParser's words (unset: `default`).
    pub fn flag(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(k).map_or(Ok(default), |v| {
            parse_bool(v).ok_or_else(|| invalid(self.path, format!("{k} = {v:?} is not a boolean")))
        })
    }

    /// `host:port` from an interface key (default `0.0.0.0`; IPv6 gets brackets).
    pub fn addr(&self, iface: &str, port: u64) -> String {
        let host = self.get(iface).unwrap_or("0.0.0.0");
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}
