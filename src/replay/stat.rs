//! `aggd journal stat`: the journal's segments and the loss ledger, as text.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::journal::reader;
use crate::ledger;

/// Per-segment lines for `aggd journal stat`, and a summary of the ledger file `ledger`.
pub fn journal_stat(dir: &Path, ledger: &Path) -> std::io::Result<String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let segs = reader::stat(dir)?;
    let mut total = 0;
    let fmt_t = |us: i64| {
        if us == i64::MAX || us == i64::MIN {
            "-".to_string()
        } else {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
                .to_string()
        }
    };
    let _ = writeln!(
        s,
        "{:>20} {:>10} {:>12} {:<24} {:<24} {:>8} {:>8} index",
        "first_seq", "records", "bytes", "first received", "last received", "corrupt", "tail"
    );
    for st in &segs {
        total += st.index.bytes;
        let _ = writeln!(
            s,
            "{:>20} {:>10} {:>12} {:<24} {:<24} {:>8} {:>8} {}",
            st.first_seq,
            st.index.records,
            st.index.bytes,
            fmt_t(st.index.min_us),
            fmt_t(st.index.max_us),
            st.skipped_bytes,
            st.tail_bytes,
            if st.indexed { "yes" } else { "scanned" }
        );
    }
    let (entries, replayed) = ledger::read(ledger)?;
    let open: BTreeMap<&str, u64> =
        entries
            .iter()
            .filter(|e| !replayed.contains(&e.id))
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e.reason.as_str()).or_default() += e.count;
                m
            });
    let _ = writeln!(s, "segments: {}, bytes: {total}", segs.len());
    let open: Vec<String> = open.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let _ = writeln!(
        s,
        "ledger: {} entries, {} replayed; unreplayed by reason: {}",
        entries.len(),
        replayed.len(),
        if open.is_empty() {
            "none".to_string()
        } else {
            open.join(", ")
        }
    );
    Ok(s)
}
