//! `aggregation-rules.conf`: one rule per line,
//! `OUTPUT_TEMPLATE (FREQUENCY) = METHOD INPUT_PATTERN` (carbon-aggregator 1.1.x syntax).
//!
//! Parsing, as carbon does it: lines are stripped; blank lines and lines starting with `#`
//! are skipped; the line splits at its first `=`; the left side must be exactly two
//! whitespace-separated tokens (template, frequency), the right side exactly two (method,
//! pattern). The frequency is its token with `(` and `)` trimmed from both ends, a positive
//! integer number of seconds.
//!
//! Input pattern → anchored regex, segment by segment (split on `.`, joined with `\.`):
//! 1. a segment with `<<f>>`: `f` captures one or more characters of any kind, dots
//!    included, as few as possible (`.+?`), literal text around it kept;
//! 2. else a segment with `<f>`: `f` captures one or more non-dot characters, as few as
//!    possible (`[^.]+?`); only the first `<…>` in a segment is a capture;
//! 3. else a segment that is exactly `*` matches one or more non-dot characters;
//! 4. else each `*` matches zero or more non-dot characters.
//!
//! Nothing else is escaped: other regex syntax keeps its meaning (`(web|api)`, `\d`, `[…]`).
//! The output template replaces each `<f>` by the captured text.

use std::path::Path;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::{Problems, REGEX_SIZE_LIMIT, RuleError};
use crate::method::Method;

/// One piece of an output template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Field(String),
}

/// An output template such as `<env>.applications.<app>.all.requests`.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['<', '>']) {
            if rest.as_bytes()[open] == b'>' {
                return Err(format!("unbalanced '>' in output template {text:?}"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('>')
                .ok_or_else(|| format!("unclosed '<' in output template {text:?}"))?;
            let name = &after[..close];
            if name.is_empty() || name.contains('<') {
                return Err(format!(
                    "output template {text:?} has an empty field or a '<<field>>' (multi-node fields are for input patterns only)"
                ));
            }
            parts.push(Part::Field(name.to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Fills the template from a match of the rule's input regex.
    fn fill(&self, caps: &regex::Captures<'_>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                // Load-time validation guarantees every field is a capture group that took
                // part in the match (all groups are mandatory in translated patterns; a
                // field inside a user's optional group yields the empty string).
                Part::Field(f) => out.push_str(caps.name(f).map_or("", |m| m.as_str())),
            }
        }
        out
    }
}

/// One aggregation rule.
#[derive(Clone, Debug)]
pub struct AggregationRule {
    /// 1-based line in the rules file.
    pub line: usize,
    /// The rule as written.
    pub text: String,
    /// Output series template.
    pub output: Template,
    /// Interval length in seconds (> 0).
    pub frequency: u32,
    /// Aggregation method.
    pub method: Method,
    /// The input pattern as written.
    pub pattern: String,
    /// The anchored regex the pattern translates to.
    pub regex: Regex,
}

/// All rules of one file, in file order, plus a [`RegexSet`] that finds the matching
/// rules of a metric path in one pass.
#[derive(Debug)]
pub struct AggregationRules {
    rules: Vec<AggregationRule>,
    set: RegexSet,
}

/// Translates a carbon input pattern to an anchored regex (see the module docs).
///
/// ```
/// use aggd::rules::aggregation::pattern_to_regex;
///
/// assert_eq!(pattern_to_regex("<env>.app.*.requests"),
///            r"^(?:(?P<env>[^.]+?)\.app\.[^.]+\.requests)$");
/// ```
pub fn pattern_to_regex(pattern: &str) -> String {
    let mut segs = Vec::new();
    for seg in pattern.split('.') {
        let translated = if let (Some(a), Some(b)) = (seg.find("<<"), seg.find(">>")) {
            if a < b {
                format!("{}(?P<{}>.+?){}", &seg[..a], &seg[a + 2..b], &seg[b + 2..])
            } else {
                seg.to_string()
            }
        } else if let Some(a) = seg.find('<') {
            match seg[a..].find('>') {
                Some(b) => format!(
                    "{}(?P<{}>[^.]+?){}",
                    &seg[..a],
                    &seg[a + 1..a + b],
                    &seg[a + b + 1..]
                ),
                None => seg.to_string(),
            }
        } else if seg == "*" {
            "[^.]+".to_string()
        } else {
            seg.replace('*', "[^.]*")
        };
        segs.push(translated);
    }
    format!("^(?:{})$", segs.join("\\."))
}

impl AggregationRules {
    /// Reads and parses a rules file.
    pub fn load(file: &Path) -> Result<Self, RuleError> {
        Self::parse(&super::read(file)?, file)
    }

    /// Parses rules text; `file` is only used in errors.
    ///
    /// Errors: every invalid line, with its number: wrong token count, bad frequency,
    /// unknown method, a pattern that is not a valid regex, an output template field the
    /// pattern does not capture.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RuleError> {
        let mut rules = Vec::new();
        let mut problems = Problems::new(file);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_rule(line, i + 1) {
                Ok(rule) => rules.push(rule),
                Err(message) => problems.at(i + 1, message),
            }
        }
        let rules = problems.done(rules)?;
        let set = RegexSetBuilder::new(rules.iter().map(|r| r.regex.as_str()))
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(rules.len().max(1)))
            .dfa_size_limit(64 << 20)
            .build()
            .map_err(|e| {
                RuleError::new(
                    file,
                    None,
                    format!("the rules together are too large to compile: {e}"),
                )
            })?;
        Ok(AggregationRules { rules, set })
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[AggregationRule] {
        &self.rules
    }

    /// Every rule matching `path`, in file order, with the output series it produces.
    ///
    /// ```
    /// use aggd::rules::aggregation::AggregationRules;
    ///
    /// let rules = AggregationRules::parse(
    ///     "<env>.all.requests (60) = sum <env>.*.requests\n\
    ///      total.requests (60) = count *.*.requests\n",
    ///     std::path::Path::new("aggregation-rules.conf"),
    /// ).unwrap();
    /// let outputs: Vec<String> =
    ///     rules.matches("prod.web01.requests").into_iter().map(|(_, o)| o).collect();
    /// assert_eq!(outputs, ["prod.all.requests", "total.requests"]);
    /// ```
    pub fn matches(&self, path: &str) -> Vec<(usize, String)> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        self.set
            .matches(path)
            .iter()
            .filter_map(|i| {
                let rule = &self.rules[i];
                rule.regex
                    .captures(path)
                    .map(|caps| (i, rule.output.fill(&caps)))
            })
            .collect()
    }
}

fn parse_rule(line: &str, line_no: usize) -> Result<AggregationRule, String> {
    let (left, right) = line
        .split_once('=')
        .ok_or("expected 'output (frequency) = method input'")?;
    let left: Vec<&str> = left.split_whitespace().collect();
    let right: Vec<&str> = right.split_whitespace().collect();
    let ([template, freq], [method, pattern]) = (left.as_slice(), right.as_slice()) else {
        return Err(
            "expected exactly 'output (frequency)' before '=' and 'method input' after it".into(),
        );
    };
    let freq_text = freq.trim_matches(|c| c == '(' || c == ')');
    let frequency: u32 =
        freq_text.parse().ok().filter(|f| *f > 0).ok_or_else(|| {
            format!("frequency {freq:?} is not a positive whole number of seconds")
        })?;
    let method = Method::parse(method).ok_or_else(|| {
        format!(
            "unknown aggregation method {method:?} (one of {})",
            Method::NAMES.join(", ")
        )
    })?;
    let regex_text = pattern_to_regex(pattern);
    let regex = RegexBuilder::new(&regex_text)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "input pattern {pattern:?} is not a valid regex: {}",
                super::regex_error(&e)
            )
        })?;
    let output = Template::parse(template)?;
    for field in output.fields() {
        if !regex.capture_names().flatten().any(|n| n == field) {
            return Err(format!(
                "output template {template:?} uses field <{field}>, which input pattern {pattern:?} does not capture"
            ));
        }
    }
    Ok(AggregationRule {
        line: line_no,
        text: line.to_string(),
        output,
        frequency,
        method,
        pattern: pattern.to_string(),
        regex,
    })
}

#[cfg(test)]
mod tests;
