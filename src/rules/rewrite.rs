//! `rewrite-rules.conf`: `[pre]` and `[post]` sections of `REGEX = REPLACEMENT` lines
//! (carbon's syntax: split at the first `=`, both sides stripped; `#` comments).
//!
//! Each rule is applied like Python's `re.sub`: every occurrence is replaced, in file
//! order, each rule on the previous one's result. Python replacement syntax is translated:
//! `\1`…`\99` and `\g<name>`/`\g<1>` are group references, `\\` a backslash, `\n`/`\t`
//! newline/tab. `[pre]` rewrites every received metric path before rule matching; `[post]`
//! rewrites raw datapoints forwarded by `forward_all` (never aggregates).
//!
//! Differences from carbon: a regex that does not compile, or a line with no `=`, refuses
//! the file with its line number instead of being logged and skipped; lines before any
//! section header (which carbon silently never uses) are refused too.

use std::borrow::Cow;
use std::path::Path;

use regex::{Regex, RegexBuilder};

use super::{Problems, REGEX_SIZE_LIMIT, RuleError};

/// One `REGEX = REPLACEMENT` line.
#[derive(Clone, Debug)]
pub struct RewriteRule {
    /// 1-based line number.
    pub line: usize,
    /// The compiled (unanchored) regex.
    pub regex: Regex,
    /// The replacement in the regex crate's syntax (`${1}`, `${name}`, `$$`).
    pub replacement: String,
}

/// The `[pre]` and `[post]` rule lists.
#[derive(Clone, Debug, Default)]
pub struct RewriteRules {
    /// Applied to received paths before aggregation rules.
    pub pre: Vec<RewriteRule>,
    /// Applied to raw datapoints forwarded by `forward_all`.
    pub post: Vec<RewriteRule>,
}

/// Translates a Python `re.sub` replacement to the regex crate's syntax.
pub(crate) fn python_replacement(repl: &str) -> String {
    let mut out = String::with_capacity(repl.len());
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        if n.len() == 2 {
                            break;
                        }
                        n.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                        out.push_str(&format!("${{{name}}}"));
                    } else {
                        out.push_str("\\g");
                    }
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn apply<'a>(rules: &[RewriteRule], path: &'a str) -> Cow<'a, str> {
    let mut cur = Cow::Borrowed(path);
    for r in rules {
        if let Cow::Owned(s) = r.regex.replace_all(&cur, r.replacement.as_str()) {
            cur = Cow::Owned(s);
        }
    }
    cur
}

impl RewriteRules {
    /// Reads and parses a rewrite rules file.
    pub fn load(file: &Path) -> Result<Self, RuleError> {
        Self::parse(&super::read(file)?, file)
    }

    /// Parses rewrite rules text; `file` is only used in errors.
    ///
    /// Errors: every bad line, with its number: an unknown section, a rule before any
    /// section, a line without `=`, a regex that does not compile.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RuleError> {
        let mut rules = RewriteRules::default();
        let mut problems = Problems::new(file);
        let mut section: Option<bool> = None; // Some(true) = pre
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line, i + 1, &mut section) {
                Ok(None) => {}
                Ok(Some((true, rule))) => rules.pre.push(rule),
                Ok(Some((false, rule))) => rules.post.push(rule),
                Err(message) => problems.at(i + 1, message),
            }
        }
        problems.done(rules)
    }

    /// Applies the `[pre]` rules (borrows when nothing changes).
    pub(crate) fn apply_pre<'a>(&self, path: &'a str) -> Cow<'a, str> {
        apply(&self.pre, path)
    }

    /// Applies the `[post]` rules (borrows when nothing changes).
    pub(crate) fn apply_post<'a>(&self, path: &'a str) -> Cow<'a, str> {
        apply(&self.post, path)
    }
}

/// One non-blank line: a section header (updates `section`, yields nothing) or a rule with
/// whether it is `[pre]`.
fn parse_line(
    line: &str,
    line_no: usize,
    section: &mut Option<bool>,
) -> Result<Option<(bool, RewriteRule)>, String> {
    if line.starts_with('[') && line.ends_with(']') {
        *section = match line[1..line.len() - 1].trim().to_lowercase().as_str() {
            "pre" => Some(true),
            "post" => Some(false),
            other => return Err(format!("unknown section [{other}] (pre or post)")),
        };
        return Ok(None);
    }
    let pre = section.ok_or("rule before any [pre] or [post] section")?;
    let (re, repl) = line
        .split_once('=')
        .ok_or("expected 'regex = replacement'")?;
    let regex = RegexBuilder::new(re.trim())
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex {:?}: {}", re.trim(), super::regex_error(&e)))?;
    let rule = RewriteRule {
        line: line_no,
        regex,
        replacement: python_replacement(repl.trim()),
    };
    Ok(Some((pre, rule)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RewriteRules, RuleError> {
        RewriteRules::parse(text, Path::new("rw.conf"))
    }

    #[test]
    fn pre_and_post_apply_in_order() {
        let r = parse(
            "[pre]\n\
             ^collectd\\.([a-z0-9]+)\\. = \\1.system.\n\
             system = sys\n\
             [POST]\n\
             _sum$ = \n",
        )
        .unwrap();
        assert_eq!(r.apply_pre("collectd.web01.cpu"), "web01.sys.cpu");
        assert!(matches!(r.apply_pre("other.path"), Cow::Borrowed(_)));
        assert_eq!(r.apply_post("a.b_sum"), "a.b");
        assert_eq!(r.pre[0].line, 2);
    }

    #[test]
    fn every_occurrence_is_replaced() {
        let r = parse("[pre]\n- = _\n").unwrap();
        assert_eq!(r.apply_pre("a-b-c"), "a_b_c");
    }

    #[test]
    fn python_replacement_syntax() {
        assert_eq!(python_replacement(r"\1.x"), "${1}.x");
        assert_eq!(python_replacement(r"\g<name>-\g<2>"), "${name}-${2}");
        assert_eq!(python_replacement(r"a\\b$c"), "a\\b$$c");
        let r = parse("[pre]\n(?P<h>web\\d+)\\.(\\w+) = \\2.\\g<h>\n").unwrap();
        assert_eq!(r.apply_pre("web01.cpu"), "cpu.web01");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("[pre]\nok = fine\n(unclosed = x\n").unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert!(e.to_string().contains("invalid regex"));
        assert_eq!(parse("a = b\n").unwrap_err().line(), Some(1));
        assert_eq!(
            parse("[pre]\nno equals sign\n").unwrap_err().line(),
            Some(2)
        );
        assert_eq!(parse("[mid]\n").unwrap_err().line(), Some(1));
    }
}
