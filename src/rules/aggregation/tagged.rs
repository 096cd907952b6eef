//! Tagged input patterns and output templates (aggd's extension of carbon's rule syntax;
//! grammar and examples in `docs/aggregation.md`, "Tagged series").
//!
//! An input pattern holding `;` is `NAME_PATTERN;TERM;TERM…`. The name pattern is a carbon
//! pattern matched against the series' name part. Each term is one of:
//! - `key=value`: the series has tag `key` and its value matches `value`;
//! - `key!=value`: the series has no tag `key`, or one whose value does not match.
//!
//! A value pattern is literal text (regex syntax is **not** special in values, and dots are
//! plain characters), where `*` is any run of characters (dots included; a value that is
//! exactly `*` requires the tag with any value) and one `<field>` (or `<<field>>`, the same
//! in a value) captures one or more characters of any kind, as few as possible.
//!
//! The input is parsed and normalised as carbon's `TaggedSeries` ([`crate::codec::tagged`])
//! before matching, so the order of its tags never matters; tags the pattern does not name
//! are allowed. A name that does not parse as a tagged series matches no tagged pattern.
//!
//! Refused at load, as ambiguous: an empty name pattern, term or value; a term without
//! `=`; a key that is not literal text (`<`, `>`, `*`, or one of carbon's forbidden `;!^=`)
//! or is `name`; a key named twice; a value with two captures or a capture and `*`; a
//! capture in a `!=` term; a capture name used twice; a pattern with no `=` term.

use regex::{Regex, RegexBuilder};

use super::super::REGEX_SIZE_LIMIT;
use crate::codec::tagged::Tagged;

/// How a tag term's value is matched.
#[derive(Clone, Debug)]
enum Value {
    /// `*`: any value (the tag is required).
    Any,
    /// Literal text, compared as it is.
    Exact(String),
    /// Literal text with `*` and at most one capture, as an anchored regex.
    Pattern(Regex),
}

impl Value {
    fn parse(text: &str) -> Result<Value, String> {
        if text.is_empty() {
            return Err("a tag term has an empty value".into());
        }
        if text == "*" {
            return Ok(Value::Any);
        }
        let fields = field_spans(text)?;
        if fields.is_empty() && !text.contains('*') {
            return Ok(Value::Exact(text.to_string()));
        }
        if fields.len() > 1 {
            return Err(format!(
                "tag value {text:?} has more than one capture: where one ends is ambiguous"
            ));
        }
        if !fields.is_empty() && text.contains('*') {
            return Err(format!(
                "tag value {text:?} has a capture and `*`: where the capture ends is ambiguous"
            ));
        }
        let mut re = String::from("^(?:");
        let mut rest = text;
        if let Some(&(start, end, ref name)) = fields.first() {
            re.push_str(&regex::escape(&text[..start]));
            re.push_str(&format!("(?P<{name}>.+?)"));
            rest = &text[end..];
        }
        let literal: Vec<String> = rest.split('*').map(regex::escape).collect();
        re.push_str(&literal.join(".*"));
        re.push_str(")$");
        RegexBuilder::new(&re)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Value::Pattern)
            .map_err(|e| format!("tag value {text:?}: {}", super::super::regex_error(&e)))
    }

    /// Whether `value` matches; pushes the capture, if any, onto `caps`.
    fn matches<'r, 'v>(&'r self, value: &'v str, caps: &mut Vec<(&'r str, &'v str)>) -> bool {
        match self {
            Value::Any => true,
            Value::Exact(s) => s == value,
            Value::Pattern(re) => {
                let Some(c) = re.captures(value) else {
                    return false;
                };
                for name in re.capture_names().flatten() {
                    if let Some(m) = c.name(name) {
                        caps.push((name, m.as_str()));
                    }
                }
                true
            }
        }
    }

    fn captures(&self) -> Vec<&str> {
        match self {
            Value::Pattern(re) => re.capture_names().flatten().collect(),
            Value::Any | Value::Exact(_) => Vec::new(),
        }
    }
}

/// The `<field>` / `<<field>>` spans of `text`: (start, end, name). Errors on an unclosed
/// `<` or an empty name.
fn field_spans(text: &str) -> Result<Vec<(usize, usize, String)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = text[at..].find('<').map(|i| i + at) {
        let double = text[open..].starts_with("<<");
        let inner = open + if double { 2 } else { 1 };
        let close_tok = if double { ">>" } else { ">" };
        let close = text[inner..]
            .find(close_tok)
            .map(|i| i + inner)
            .ok_or_else(|| format!("unclosed '<' in {text:?}"))?;
        let name = &text[inner..close];
        if name.is_empty() || name.contains(['<', '>']) {
            return Err(format!("an empty or nested field in {text:?}"));
        }
        let end = close + close_tok.len();
        out.push((open, end, name.to_string()));
        at = end;
    }
    Ok(out)
}

/// One `key=value` or `key!=value` term of a tagged input pattern.
#[derive(Clone, Debug)]
struct Term {
    key: String,
    negate: bool,
    value: Value,
}

/// The tag terms of a tagged input pattern (module docs), in the order written.
#[derive(Clone, Debug)]
pub struct TagTerms {
    terms: Vec<Term>,
}

/// Checks a tag key as carbon's `TaggedSeries` does, and refuses keys that are not
/// literal text; `what` names the place for the message.
fn check_key(key: &str, what: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{what} has an empty tag key"));
    }
    if key.contains(['<', '>', '*', ';', '!', '^', '=']) {
        return Err(format!(
            "{what}: tag key {key:?} must be literal text (no fields, `*` or `;!^=`)"
        ));
    }
    if key == "name" {
        return Err(format!(
            "{what}: tag key \"name\" is ambiguous (the name is the part before the first `;`)"
        ));
    }
    Ok(())
}

impl TagTerms {
    /// Parses the terms after the name pattern's `;` (`terms` is the text after it).
    /// `name_captures` are the fields the name pattern captures (to refuse duplicates).
    pub fn parse(terms: &str, name_captures: &[&str]) -> Result<TagTerms, String> {
        let mut out: Vec<Term> = Vec::new();
        let mut captures: Vec<String> = name_captures.iter().map(ToString::to_string).collect();
        for raw in terms.split(';') {
            if raw.is_empty() {
                return Err("an empty tag term (`;;` or a trailing `;`)".into());
            }
            let (key, value) = raw
                .split_once('=')
                .ok_or_else(|| format!("tag term {raw:?} has no `=`"))?;
            let (key, negate) = match key.strip_suffix('!') {
                Some(k) => (k, true),
                None => (key, false),
            };
            check_key(key, &format!("tag term {raw:?}"))?;
            if out.iter().any(|t| t.key == key) {
                return Err(format!("tag {key:?} is named twice in the pattern"));
            }
            let value = Value::parse(value)?;
            for c in value.captures() {
                if negate {
                    return Err(format!(
                        "tag term {raw:?} captures in a `!=` term, which has no value to capture"
                    ));
                }
                if captures.iter().any(|n| n == c) {
                    return Err(format!("field <{c}> is captured twice"));
                }
                captures.push(c.to_string());
            }
            out.push(Term {
                key: key.to_string(),
                negate,
                value,
            });
        }
        if out.iter().all(|t| t.negate) {
            return Err("a tagged pattern needs at least one `key=value` term".into());
        }
        Ok(TagTerms { terms: out })
    }

    /// Every field the terms capture.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().flat_map(|t| t.value.captures())
    }

    /// Whether the tags of `series` satisfy every term; appends the captures to `caps`.
    pub fn matches<'r, 's>(
        &'r self,
        series: &'s Tagged<'_>,
        caps: &mut Vec<(&'r str, &'s str)>,
    ) -> bool {
        self.terms.iter().all(|t| match series.get(&t.key) {
            Some(v) => t.value.matches(v, caps) != t.negate,
            None => t.negate,
        })
    }
}

/// Checks the tags of an output template `text` (holding `;`): a non-empty name part, then
/// `key=value` tags with literal keys (fields only in values), each key once.
pub fn check_template(text: &str) -> Result<(), String> {
    let mut parts = text.split(';');
    if parts.next().is_none_or(str::is_empty) {
        return Err(format!("output template {text:?} has an empty name part"));
    }
    let mut keys: Vec<&str> = Vec::new();
    for tag in parts {
        let what = format!("output template {text:?}");
        let (key, value) = tag
            .split_once('=')
            .ok_or_else(|| format!("{what}: tag {tag:?} has no `=`"))?;
        check_key(key, &what)?;
        if value.is_empty() {
            return Err(format!("{what}: tag {key:?} has an empty value"));
        }
        if keys.contains(&key) {
            return Err(format!("{what}: tag {key:?} is named twice"));
        }
        keys.push(key);
    }
    Ok(())
}
