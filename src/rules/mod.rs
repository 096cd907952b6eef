//! carbon-aggregator's rule files, read as they are.
//!
//! - [`aggregation`]: `aggregation-rules.conf`, `output_template (frequency) = method
//!   input_pattern`.
//! - [`rewrite`]: `rewrite-rules.conf`, `[pre]`/`[post]` sections of `regex = replacement`.
//!
//! Differences from carbon, on purpose: every problem carbon only finds per datapoint (an
//! output template using a field the input does not capture, `<<field>>` or an unbalanced
//! `<`/`>` in a template, a rewrite regex that does not compile) refuses the file at load
//! with its file and line, so a bad rule never black-holes data at run time.

pub mod aggregation;
pub mod rewrite;

use std::path::PathBuf;

/// A rules file that cannot be used, with the place of the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}:{line}: {message}", file.display())]
pub struct RuleError {
    /// The rules file.
    pub file: PathBuf,
    /// 1-based line number (0 when the file itself cannot be read).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Largest compiled size of one rule's regex, in bytes (regex crate `size_limit`).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Reads a rules file, mapping IO errors to a [`RuleError`] at line 0.
pub(crate) fn read(file: &std::path::Path) -> Result<String, RuleError> {
    std::fs::read_to_string(file).map_err(|e| RuleError {
        file: file.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })
}
