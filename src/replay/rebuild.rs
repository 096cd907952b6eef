//! The start-up rebuild: open intervals recomputed from the journal before listeners
//! start (invariant 5 of `docs/architecture.md`).

use std::path::Path;

use super::acceptance_span;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::journal::reader;

/// Feeds every record received in the last [`acceptance_span`] into the workers through
/// `ingest` (which must not journal), without the datapoints each record's verdict says
/// were refused when received. Records below `delivered_below` (the clean-shutdown
/// mark, [`crate::journal::clean`]) go in as already delivered. Blocking; call before
/// listeners start. Returns the number of records read.
pub fn rebuild(
    config: &Config,
    dir: &Path,
    ingest: &mut Ingest,
    delivered_below: Option<u64>,
) -> std::io::Result<u64> {
    let span = acceptance_span(config);
    if span == 0.0 {
        return Ok(0);
    }
    let now = crate::time::now();
    let from_us = ((now - span - 1.0) * 1e6) as i64;
    let mut n = 0u64;
    let stats = reader::read_range(
        dir,
        from_us,
        i64::MAX,
        |rec| {
            n += 1;
            ingest.set_delivered(delivered_below.is_some_and(|b| rec.meta.seq < b));
            ingest.reread(rec);
            if n.is_multiple_of(64) {
                ingest.flush_blocking();
            }
        },
        |_| {},
    )?;
    ingest.flush_blocking();
    tracing::info!(
        records = stats.records,
        skipped_corrupt_bytes = stats.skipped_bytes,
        "journal: rebuilt open intervals"
    );
    Ok(n)
}
