//! Graphite names as Prometheus series, for the remote-write destination: the default
//! mapping (graphite_exporter's), and the optional mapping file that turns path nodes into
//! labels. Grammar and examples in `docs/remote-write.md`.
//!
//! Default: the name part of the path (for a tagged series, the part before the first
//! `;`) becomes `__name__` with every character Prometheus does not allow replaced by `_`
//! ([`crate::codec::write_request::metric_name`]); each Graphite tag becomes a label (its
//! key sanitised as a label name, its value as it is).
//!
//! A mapping file has one rule per line, `PATTERN = NAME [LABEL=VALUE …]`; `#` comments
//! and blank lines are skipped. `PATTERN` is a carbon input pattern
//! ([`super::aggregation::pattern_to_regex`]: `*`, `<field>`, `<<field>>`) matched against
//! the name part. The first rule that matches decides: `NAME` with its `<field>`s filled
//! becomes `__name__` (sanitised), every field `NAME` does not use becomes a label of the
//! same name, and each `LABEL=VALUE` adds a label (fields filled). Labels from the rule win
//! over tags of the same name. A path no rule matches gets the default mapping.
//!
//! Refused at load with `file:line`: a line without `=`, an empty pattern or name, a
//! pattern that is not a valid regex, a field the pattern does not capture, a label name
//! that is not a valid Prometheus label name, `__name__` as a label, or a label named twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};

use super::{Problems, REGEX_SIZE_LIMIT, RuleError};
use crate::codec::write_request::{label_name, metric_name};

/// A template: literal text and `<field>`s.
#[derive(Debug, Clone)]
struct Fill {
    parts: Vec<(bool, String)>,
}

impl Fill {
    fn parse(text: &str) -> Result<Fill, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let close = rest[open..]
                .find('>')
                .ok_or_else(|| format!("unclosed '<' in {text:?}"))?;
            if open > 0 {
                parts.push((false, rest[..open].to_string()));
            }
            let field = &rest[open + 1..open + close];
            if field.is_empty() || field.contains('<') {
                return Err(format!("an empty or nested field in {text:?}"));
            }
            parts.push((true, field.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push((false, rest.to_string()));
        }
        Ok(Fill { parts })
    }

    fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter(|p| p.0).map(|p| p.1.as_str())
    }

    fn fill(&self, caps: &regex::Captures<'_>) -> String {
        self.parts
            .iter()
            .map(|(field, s)| match field {
                true => caps.name(s).map_or("", |m| m.as_str()),
                false => s.as_str(),
            })
            .collect()
    }
}

/// One mapping rule.
#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    name: Fill,
    /// Fields `name` does not use: labels of the same name.
    implicit: Vec<String>,
    labels: Vec<(String, Fill)>,
}

/// A loaded mapping file (module docs); compared by file and text, for reloads.
#[derive(Debug, Clone)]
pub struct NameMapping {
    file: PathBuf,
    text: String,
    rules: Vec<Rule>,
}

impl PartialEq for NameMapping {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.text == other.text
    }
}

/// A Graphite name mapped for Prometheus: `__name__` and the other labels, by name.
pub type Labels = BTreeMap<String, String>;

impl NameMapping {
    /// Reads and parses a mapping file. Errors: unreadable, or every invalid line.
    pub fn load(file: &Path) -> Result<NameMapping, RuleError> {
        Self::parse(&super::read(file)?, file)
    }

    /// Parses mapping rules; `file` is used in errors.
    pub fn parse(text: &str, file: &Path) -> Result<NameMapping, RuleError> {
        let mut problems = Problems::new(file);
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_rule(line) {
                Ok(r) => rules.push(r),
                Err(m) => problems.at(i + 1, m),
            }
        }
        Ok(NameMapping {
            file: file.to_path_buf(),
            text: text.to_string(),
            rules: problems.done(rules)?,
        })
    }

    /// The labels of Graphite name `path` under this mapping, `__name__` included (see
    /// [`map`], which also gives the default mapping).
    pub fn map(&self, path: &str) -> Labels {
        map(Some(self), path)
    }
}

/// The Prometheus labels of Graphite name `path` under `mapping` (or the default mapping),
/// `__name__` included (module docs). A name that does not parse as a tagged series is
/// mapped whole, as an untagged name.
///
/// ```
/// use aggd::rules::mapping::{NameMapping, map};
///
/// let l = map(None, "cpu.total;dc=eu.west");
/// assert_eq!(l["__name__"], "cpu_total");
/// assert_eq!(l["dc"], "eu.west");
/// let m = NameMapping::parse("a.b.<host>.cpu = a_b_cpu\n", "m.conf".as_ref()).unwrap();
/// let l = m.map("a.b.web-1.cpu");
/// assert_eq!((l["__name__"].as_str(), l["host"].as_str()), ("a_b_cpu", "web-1"));
/// ```
pub fn map(mapping: Option<&NameMapping>, path: &str) -> Labels {
    let parsed = path
        .contains([';', '{'])
        .then(|| crate::codec::tagged::parse(path).ok())
        .flatten();
    let (name, tags) = match &parsed {
        Some(t) => (t.name, t.tags.as_slice()),
        None => (path, &[][..]),
    };
    let mut labels = Labels::new();
    for (k, v) in tags {
        labels.insert(label_name(k), v.clone());
    }
    let found = mapping
        .into_iter()
        .flat_map(|m| m.rules.iter())
        .find_map(|r| r.regex.captures(name).map(|c| (r, c)));
    let metric = match found {
        Some((rule, caps)) => {
            for f in &rule.implicit {
                if let Some(m) = caps.name(f) {
                    labels.insert(f.clone(), m.as_str().to_string());
                }
            }
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), v.fill(&caps));
            }
            rule.name.fill(&caps)
        }
        None => name.to_string(),
    };
    labels.insert("__name__".to_string(), metric_name(&metric));
    labels
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty() && label_name(s) == s && s != "__name__"
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let (pattern, right) = line
        .split_once('=')
        .ok_or("expected 'PATTERN = NAME [LABEL=VALUE ...]'")?;
    let pattern = pattern.trim();
    let mut tokens = right.split_whitespace();
    let (Some(name), false) = (tokens.next(), pattern.is_empty() || pattern.contains(' ')) else {
        return Err("expected one pattern and a name: 'PATTERN = NAME [LABEL=VALUE ...]'".into());
    };
    let regex = RegexBuilder::new(&super::aggregation::pattern_to_regex(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "pattern {pattern:?} is not a valid regex: {}",
                super::regex_error(&e)
            )
        })?;
    let captured: Vec<&str> = regex.capture_names().flatten().collect();
    let name = Fill::parse(name)?;
    let mut labels: Vec<(String, Fill)> = Vec::new();
    for t in tokens {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("label {t:?} is not LABEL=VALUE"))?;
        if !is_label_name(k) {
            return Err(format!(
                "label name {k:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __name__)"
            ));
        }
        if labels.iter().any(|l| l.0 == k) {
            return Err(format!("label {k:?} is named twice"));
        }
        labels.push((k.to_string(), Fill::parse(v)?));
    }
    let used: Vec<&str> = name
        .fields()
        .chain(labels.iter().flat_map(|l| l.1.fields()))
        .collect();
    if let Some(f) = used.iter().find(|f| !captured.contains(f)) {
        return Err(format!(
            "field <{f}> is not captured by pattern {pattern:?}"
        ));
    }
    let in_name: Vec<&str> = name.fields().collect();
    let mut implicit = Vec::new();
    for f in &captured {
        if in_name.contains(f) || labels.iter().any(|l| l.0 == *f) {
            continue;
        }
        if !is_label_name(f) {
            return Err(format!(
                "field <{f}> would become a label but is not a Prometheus label name"
            ));
        }
        implicit.push((*f).to_string());
    }
    Ok(Rule {
        regex,
        name,
        implicit,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> NameMapping {
        NameMapping::parse(text, Path::new("m.conf")).unwrap()
    }

    fn pairs(l: &Labels) -> Vec<(&str, &str)> {
        l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn default_mapping_is_graphite_exporters() {
        assert_eq!(
            pairs(&map(None, "servers.web-01.cpu.user")),
            [("__name__", "servers_web_01_cpu_user")]
        );
        assert_eq!(
            pairs(&map(None, "cpu.total;zone=eu.1;dc=eu")),
            [("__name__", "cpu_total"), ("dc", "eu"), ("zone", "eu.1")]
        );
        assert_eq!(
            pairs(&map(None, "x;a.b=1")),
            [("__name__", "x"), ("a_b", "1")]
        );
        // Not a valid tagged name: mapped whole.
        assert_eq!(pairs(&map(None, "x;a=")), [("__name__", "x_a_")]);
    }

    #[test]
    fn mapping_file_turns_nodes_into_labels() {
        let mapping = m("# comment\n\
             a.b.<host>.cpu = a_b_cpu\n\
             servers.<dc>.<host>.<<rest>> = servers_<rest> job=servers origin=<dc>-<host>\n\
             *.requests = requests\n");
        assert_eq!(
            pairs(&mapping.map("a.b.h1.cpu")),
            [("__name__", "a_b_cpu"), ("host", "h1")]
        );
        assert_eq!(
            pairs(&mapping.map("servers.eu.h2.disk.sda.used;host=tagged")),
            [
                ("__name__", "servers_disk_sda_used"),
                ("dc", "eu"),
                ("host", "h2"),
                ("job", "servers"),
                ("origin", "eu-h2"),
            ]
        );
        assert_eq!(
            pairs(&mapping.map("web.requests")),
            [("__name__", "requests")]
        );
        assert_eq!(pairs(&mapping.map("other.x")), [("__name__", "other_x")]);
        // The first rule that matches decides.
        let first = m("a.<x> = first\na.* = second\n");
        assert_eq!(first.map("a.b")["__name__"], "first");
    }

    #[test]
    fn bad_mapping_lines_are_refused_with_their_line() {
        for (line, why) in [
            ("no equals", "expected"),
            (" = name", "expected one pattern"),
            ("a.b =", "expected one pattern"),
            ("a.<x> = n_<y>", "not captured"),
            ("a.<x> = n 1bad=v", "not a Prometheus label name"),
            ("a.<x> = n __name__=v", "not a Prometheus label name"),
            ("a.<x> = n j=1 j=2", "named twice"),
            ("a.<x-y> = n", "not a valid regex"),
            ("a.(b = n", "not a valid regex"),
            ("a.<x> = n_<x", "unclosed"),
        ] {
            let e = NameMapping::parse(&format!("# c\n{line}\n"), Path::new("m.conf"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("m.conf:2: "), "{line}: {e}");
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
