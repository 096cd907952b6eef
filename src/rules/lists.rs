//! carbon's `whitelist.conf` and `blacklist.conf` (carbon 1.1.x `carbon/regexlist.py`,
//! used with `USE_WHITELIST = True`).
//!
//! Format: one regex per line, stripped; blank lines and lines starting with `#` are
//! skipped. A regex matches anywhere in the metric path (Python's `re.search`, unanchored).
//! A missing file is an empty list, as in carbon. Unlike carbon, which logs a bad regex and
//! skips its line, a file with a bad regex is refused with the line of every bad one: a
//! blacklist entry that silently does nothing lets through what it was meant to stop.
//!
//! Order, as carbon's receivers apply it to the name as received: a path matching the
//! blacklist is dropped (`blacklist`, carbon's `blacklistMatches`); else, if the whitelist
//! has entries, a path matching none of them is dropped (`whitelist`, carbon's
//! `whitelistRejects`).

use std::path::{Path, PathBuf};

use regex::{RegexSet, RegexSetBuilder};

use super::{Problems, REGEX_SIZE_LIMIT, RuleError};
use crate::reason::DropReason;

/// The two lists, compiled.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    /// Paths matching any of these are dropped; `None` when empty or not configured.
    black: Option<RegexSet>,
    /// When set, paths matching none of these are dropped.
    white: Option<RegexSet>,
    /// The files, for messages and reloads.
    files: (Option<PathBuf>, Option<PathBuf>),
}

impl PartialEq for Lists {
    /// Same files and same patterns.
    fn eq(&self, other: &Self) -> bool {
        let patterns = |s: &Option<RegexSet>| s.as_ref().map(|s| s.patterns().to_vec());
        self.files == other.files
            && patterns(&self.black) == patterns(&other.black)
            && patterns(&self.white) == patterns(&other.white)
    }
}

impl Lists {
    /// Reads and compiles the blacklist and whitelist files (either may be absent, or
    /// missing on disk: no list).
    ///
    /// Errors: a file that exists but cannot be read, or regexes that do not compile (every
    /// one, with its line).
    pub fn load(blacklist: Option<&Path>, whitelist: Option<&Path>) -> Result<Lists, RuleError> {
        Ok(Lists {
            black: blacklist.map(read_list).transpose()?.flatten(),
            white: whitelist.map(read_list).transpose()?.flatten(),
            files: (
                blacklist.map(Path::to_path_buf),
                whitelist.map(Path::to_path_buf),
            ),
        })
    }

    /// Whether any list has entries.
    pub fn is_empty(&self) -> bool {
        self.black.is_none() && self.white.is_none()
    }

    /// The blacklist and whitelist sizes, in regexes.
    pub fn len(&self) -> (usize, usize) {
        let n = |s: &Option<RegexSet>| s.as_ref().map_or(0, RegexSet::len);
        (n(&self.black), n(&self.white))
    }

    /// Why `path` is dropped, if it is: [`DropReason::Blacklist`] or
    /// [`DropReason::Whitelist`].
    pub fn check(&self, path: &str) -> Option<DropReason> {
        if self.black.as_ref().is_some_and(|b| b.is_match(path)) {
            return Some(DropReason::Blacklist);
        }
        if self.white.as_ref().is_some_and(|w| !w.is_match(path)) {
            return Some(DropReason::Whitelist);
        }
        None
    }
}

/// One list file: `None` when it does not exist or has no entries.
fn read_list(file: &Path) -> Result<Option<RegexSet>, RuleError> {
    if !file.exists() {
        return Ok(None);
    }
    let text = super::read(file)?;
    let mut problems = Problems::new(file);
    let mut patterns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let pattern = line.trim();
        if line.starts_with('#') || pattern.is_empty() {
            continue;
        }
        match regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(_) => patterns.push(pattern.to_string()),
            Err(e) => problems.at(
                i + 1,
                format!("invalid regex {pattern:?}: {}", super::regex_error(&e)),
            ),
        }
    }
    let patterns = problems.done(patterns)?;
    if patterns.is_empty() {
        return Ok(None);
    }
    RegexSetBuilder::new(&patterns)
        .size_limit(REGEX_SIZE_LIMIT.saturating_mul(patterns.len()))
        .build()
        .map(Some)
        .map_err(|e| RuleError::new(file, None, format!("the list is too large to compile: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(black: &str, white: &str) -> Lists {
        let d = tempfile::tempdir().unwrap();
        let (b, w) = (
            d.path().join("blacklist.conf"),
            d.path().join("whitelist.conf"),
        );
        std::fs::write(&b, black).unwrap();
        std::fs::write(&w, white).unwrap();
        Lists::load(Some(&b), Some(&w)).unwrap()
    }

    #[test]
    fn blacklist_first_then_whitelist_unanchored() {
        let l = lists(
            "# comment\n\nsecret\n^tmp\\.\n",
            "^prod\\.\n\\.web\\d+\\.\n",
        );
        assert_eq!(l.len(), (2, 2));
        assert_eq!(l.check("prod.secret.x"), Some(DropReason::Blacklist));
        assert_eq!(l.check("tmp.web01.cpu"), Some(DropReason::Blacklist));
        assert_eq!(l.check("prod.db.cpu"), None);
        assert_eq!(l.check("dev.web01.cpu"), None);
        assert_eq!(l.check("dev.db.cpu"), Some(DropReason::Whitelist));
    }

    #[test]
    fn empty_or_missing_lists_drop_nothing() {
        let l = lists("", "  \n# only a comment\n");
        assert!(l.is_empty());
        assert_eq!(l.check("anything"), None);
        let missing = Lists::load(Some(Path::new("/nonexistent/b.conf")), None).unwrap();
        assert!(missing.is_empty());
    }

    #[test]
    fn every_bad_regex_is_named_with_its_line() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("blacklist.conf");
        std::fs::write(&b, "ok\n(unclosed\nfine\n[bad\n").unwrap();
        let e = Lists::load(Some(&b), None).unwrap_err();
        let lines: Vec<_> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(2), Some(4)]);
        assert_eq!(e.to_string().lines().count(), 2, "{e}");
    }
}
