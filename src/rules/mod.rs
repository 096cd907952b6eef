//! carbon-aggregator's rule files, read as they are.
//!
//! - [`aggregation`]: `aggregation-rules.conf`, `output_template (frequency) = method
//!   input_pattern`.
//! - [`rewrite`]: `rewrite-rules.conf`, `[pre]`/`[post]` sections of `regex = replacement`.
//! - [`lists`]: `whitelist.conf` and `blacklist.conf`, one regex per line.
//!
//! A file with problems is refused with every problem it has, each with its line
//! ([`RuleError`]), so `aggd check` shows them all at once.
//!
//! Differences from carbon, on purpose: every problem carbon only finds per datapoint (an
//! output template using a field the input does not capture, `<<field>>` or an unbalanced
//! `<`/`>` in a template, a rewrite regex that does not compile) refuses the file at load
//! with its file and line, so a bad rule never black-holes data at run time.

pub mod aggregation;
pub mod lists;
pub mod mapping;
pub mod rewrite;

use std::path::{Path, PathBuf};

/// A rules file that cannot be used: every problem in it, each with its line.
///
/// Displayed as one `file:line: message` per problem (`file: message` for a problem of
/// the whole file, such as a file that cannot be read), one per line.
#[derive(Debug, PartialEq)]
pub struct RuleError {
    /// The rules file.
    pub file: PathBuf,
    /// The problems, in file order; never empty.
    pub problems: Vec<Problem>,
}

/// One problem of a rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based line number; `None` for the file as a whole.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl RuleError {
    /// One problem of `file` at `line` (`None`: the file as a whole).
    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> RuleError {
        RuleError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                line,
                message: message.into(),
            }],
        }
    }

    /// The line of the first problem.
    pub fn line(&self) -> Option<usize> {
        self.problems.first().and_then(|p| p.line)
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(f, "{}:{line}: {}", self.file.display(), p.message)?,
                None => write!(f, "{}: {}", self.file.display(), p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}

/// Collects the problems of one rules file while it is parsed.
pub(crate) struct Problems<'a> {
    file: &'a Path,
    found: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a Path) -> Self {
        Problems {
            file,
            found: Vec::new(),
        }
    }

    /// Notes a problem at `line` (1-based).
    pub(crate) fn at(&mut self, line: usize, message: impl Into<String>) {
        self.found.push(Problem {
            line: Some(line),
            message: message.into(),
        });
    }

    /// `value`, or the error of every problem noted.
    pub(crate) fn done<T>(self, value: T) -> Result<T, RuleError> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            Err(RuleError {
                file: self.file.to_path_buf(),
                problems: self.found,
            })
        }
    }
}

/// Largest compiled size of one rule's regex, in bytes (regex crate `size_limit`).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regex error on one line (the regex crate's syntax errors span several, with a caret
/// under the place): the explanation alone, e.g. `unclosed group`.
pub(crate) fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_string()
}

/// Reads a rules file, mapping IO errors to a [`RuleError`] of the whole file.
pub(crate) fn read(file: &Path) -> Result<String, RuleError> {
    std::fs::read_to_string(file)
        .map_err(|e| RuleError::new(file, None, format!("cannot read: {e}")))
}
