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
//!
//! aggd's extension, tagged series ([`tagged`]): an input pattern holding `;` is a name
//! pattern (as above) and tag terms, matched against the input in carbon's normal tagged
//! form whatever the order of its tags; an output template holding `;` makes a tagged
//! series, normalised after filling. Since carbon splits a line at its first `=`, which a
//! tagged template contains, the line splits at the first `=` whose left side is exactly
//! `template (frequency)`: for every line carbon accepts, that is the first `=`.

use std::path::Path;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::{Problems, REGEX_SIZE_LIMIT, RuleError};
use crate::codec::tagged::Tagged;
use crate::method::Method;

pub mod tagged;
mod template;

pub use template::Template;

use tagged::TagTerms;

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
    /// The anchored regex the pattern translates to (for a tagged pattern, its name part).
    pub regex: Regex,
    /// A tagged pattern's tag terms ([`tagged`]); `None` for carbon's patterns.
    pub tags: Option<TagTerms>,
}

impl AggregationRule {
    /// The output series this rule makes of `path` (already `[pre]`-rewritten), or `None`
    /// if it does not match; `caps` receives every captured field and its text (emptied
    /// first). A tagged pattern matches `series`, the path parsed as a tagged series
    /// (`None`: it does not parse).
    fn apply<'r, 'p>(
        &'r self,
        path: &'p str,
        series: Option<&'p Tagged<'p>>,
        caps: &mut Vec<(&'r str, &'p str)>,
    ) -> Option<String> {
        caps.clear();
        let name = match (&self.tags, series) {
            (None, _) => path,
            (Some(_), Some(s)) => s.name,
            (Some(_), None) => return None,
        };
        let found = self.regex.captures(name)?;
        for n in self.regex.capture_names().flatten() {
            if let Some(m) = found.name(n) {
                caps.push((n, m.as_str()));
            }
        }
        if let (Some(terms), Some(s)) = (&self.tags, series)
            && !terms.matches(s, caps)
        {
            return None;
        }
        Some(
            self.output
                .fill(|f| caps.iter().find(|c| c.0 == f).map(|c| c.1)),
        )
    }
}

/// One rule's match of a metric path.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    /// The output series.
    pub output: String,
    /// Every captured field and its text, name part first, then tag terms in rule order.
    pub captures: Vec<(String, String)>,
}

/// All rules of one file, in file order, plus a [`RegexSet`] that finds the matching
/// carbon (untagged) rules of a metric path in one pass.
#[derive(Debug)]
pub struct AggregationRules {
    rules: Vec<AggregationRule>,
    /// Over the untagged rules' regexes; `untagged[i]` is the rule of set entry `i`.
    set: RegexSet,
    untagged: Vec<usize>,
    /// The tagged rules, in file order.
    tagged: Vec<usize>,
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
        let (tagged, untagged): (Vec<usize>, Vec<usize>) =
            (0..rules.len()).partition(|&i| rules[i].tags.is_some());
        let set = RegexSetBuilder::new(untagged.iter().map(|&i| rules[i].regex.as_str()))
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
        Ok(AggregationRules {
            rules,
            set,
            untagged,
            tagged,
        })
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[AggregationRule] {
        &self.rules
    }

    /// The first rule, in file order, with `method` and `frequency` whose output template
    /// can make the output series `name`: the rule that made it, unless two rules make
    /// the same names (then the first decides the method, as in carbon). `None` when none
    /// fits (the rules were reloaded since).
    pub fn producing(&self, name: &str, method: &str, frequency: u32) -> Option<&AggregationRule> {
        self.rules.iter().find(|r| {
            r.frequency == frequency && r.method.to_string() == method && r.output.could_make(name)
        })
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
        let mut out = Vec::new();
        self.each_match(path, |rule, output, _| out.push((rule, output)));
        out
    }

    /// Every rule matching `path`, in file order, with its [`Match`] (output series and
    /// captured fields).
    ///
    /// Tagged rules match `path` parsed and normalised as a tagged series, so tag order
    /// does not matter:
    ///
    /// ```
    /// use aggd::rules::aggregation::AggregationRules;
    ///
    /// let rules = AggregationRules::parse(
    ///     "cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n",
    ///     std::path::Path::new("aggregation-rules.conf"),
    /// ).unwrap();
    /// let m = rules.explain("cpu.usage;host=a;dc=eu.west");
    /// assert_eq!(m[0].1.output, "cpu.total;dc=eu.west");
    /// assert_eq!(m[0].1.captures, [("dc".to_string(), "eu.west".to_string())]);
    /// ```
    pub fn explain(&self, path: &str) -> Vec<(usize, Match)> {
        let mut out = Vec::new();
        self.each_match(path, |rule, output, caps| {
            let captures = caps
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
            out.push((rule, Match { output, captures }));
        });
        out
    }

    /// Calls `f(rule, output, captures)` for every rule matching `path`, in file order:
    /// the untagged candidates the [`RegexSet`] finds and, if `path` parses as a tagged
    /// series with tags, every tagged rule, merged by line.
    fn each_match(&self, path: &str, mut f: impl FnMut(usize, String, &[(&str, &str)])) {
        let untagged: Vec<usize> = match self.untagged.is_empty() {
            true => Vec::new(),
            false => self
                .set
                .matches(path)
                .iter()
                .map(|i| self.untagged[i])
                .collect(),
        };
        let series = (!self.tagged.is_empty() && path.contains([';', '{']))
            .then(|| crate::codec::tagged::parse(path).ok())
            .flatten()
            .filter(|s| !s.tags.is_empty());
        let tagged: &[usize] = if series.is_some() { &self.tagged } else { &[] };
        let (mut u, mut t) = (untagged.iter().peekable(), tagged.iter().peekable());
        let mut caps = Vec::new();
        loop {
            let rule = match (u.peek(), t.peek()) {
                (Some(&&a), Some(&&b)) if a < b => u.next(),
                (Some(_), None) => u.next(),
                (_, Some(_)) => t.next(),
                (None, None) => break,
            };
            let Some(&rule) = rule else { break };
            if let Some(o) = self.rules[rule].apply(path, series.as_ref(), &mut caps) {
                f(rule, o, &caps);
            }
        }
    }
}

/// Splits a rule line into `template (frequency)` and `method pattern`: at the first `=`
/// whose left side is two tokens, the second a frequency (so a tagged template may hold
/// `=`); carbon's split at the first `=` when no `=` qualifies (for its error messages).
fn split_rule(line: &str) -> Option<(&str, &str)> {
    let qualifies = |left: &str| {
        let mut t = left.split_whitespace();
        matches!((t.next(), t.next(), t.next()), (Some(_), Some(f), None) if parse_frequency(f).is_some())
    };
    line.match_indices('=')
        .map(|(i, _)| (&line[..i], &line[i + 1..]))
        .find(|(left, _)| qualifies(left))
        .or_else(|| line.split_once('='))
}

/// A frequency token: `(` and `)` trimmed from both ends, a positive whole number.
fn parse_frequency(token: &str) -> Option<u32> {
    token
        .trim_matches(|c| c == '(' || c == ')')
        .parse()
        .ok()
        .filter(|f| *f > 0)
}

fn parse_rule(line: &str, line_no: usize) -> Result<AggregationRule, String> {
    let (left, right) = split_rule(line).ok_or("expected 'output (frequency) = method input'")?;
    let left: Vec<&str> = left.split_whitespace().collect();
    let right: Vec<&str> = right.split_whitespace().collect();
    let ([template, freq], [method, pattern]) = (left.as_slice(), right.as_slice()) else {
        return Err(
            "expected exactly 'output (frequency)' before '=' and 'method input' after it".into(),
        );
    };
    let frequency = parse_frequency(freq)
        .ok_or_else(|| format!("frequency {freq:?} is not a positive whole number of seconds"))?;
    let method = Method::parse(method).ok_or_else(|| {
        format!(
            "unknown aggregation method {method:?} (one of {})",
            Method::NAMES.join(", ")
        )
    })?;
    let (name_pattern, terms) = match pattern.split_once(';') {
        Some((name, terms)) => (name, Some(terms)),
        None => (*pattern, None),
    };
    if terms.is_some() && name_pattern.is_empty() {
        return Err(format!(
            "tagged input pattern {pattern:?} has an empty name part"
        ));
    }
    let regex_text = pattern_to_regex(name_pattern);
    let regex = RegexBuilder::new(&regex_text)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "input pattern {pattern:?} is not a valid regex: {}",
                super::regex_error(&e)
            )
        })?;
    let name_captures: Vec<&str> = regex.capture_names().flatten().collect();
    let tags = terms
        .map(|t| TagTerms::parse(t, &name_captures))
        .transpose()
        .map_err(|e| format!("input pattern {pattern:?}: {e}"))?;
    let output = Template::parse(template)?;
    for field in output.fields() {
        let tag_capture = tags
            .as_ref()
            .is_some_and(|t| t.captures().any(|c| c == field));
        if !tag_capture && !name_captures.contains(&field) {
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
        tags,
    })
}

#[cfg(test)]
mod tests;
