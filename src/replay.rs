//! Re-reading the journal: the start-up rebuild of open intervals, and `aggd replay`.
//!
//! Both decode journal records with the same decoders as the listeners, with the record's
//! receive time as "now" (so a `-1` timestamp means what it meant when received), and apply
//! the same rules through a [`Router`].
//!
//! - **Rebuild** ([`rebuild`]): before listeners start, records received within the kept
//!   intervals are fed to the workers like live input; the workers' usual window applies,
//!   so exactly the open intervals are rebuilt, and their first emission carries the full
//!   aggregate.
//! - **Replay** ([`replay`]): records received around a window are aggregated in a private
//!   table **without** the too_old/too_new window, so every interval that overlaps the
//!   window is recomputed from all the input journaled for it (late data included), and the
//!   complete aggregates are sent. Downstream stores keep the last write, so replaying is
//!   idempotent. Nothing replayed is journaled again.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::aggregate::series::{SeriesTable, Settings};
use crate::codec::pickle::{PickleDecoder, encode_frames};
use crate::codec::{Limits, plaintext};
use crate::config::{Config, DestAddress, DestProtocol};
use crate::datapoint::{Datapoint, OutPoint};
use crate::ingest::Ingest;
use crate::journal::ledger;
use crate::journal::reader;
use crate::journal::record::Record;
use crate::reason::DropReason;
use crate::route::Router;
use crate::time::Window;

/// The largest rule frequency, in seconds (0 without rules).
pub fn max_frequency(config: &Config) -> u32 {
    config
        .aggregation
        .rules
        .rules()
        .iter()
        .map(|r| r.frequency)
        .max()
        .unwrap_or(0)
}

/// How far (seconds) a datapoint's interval can be from its receive time and still be
/// accepted live: `(max_intervals + 1) · max frequency`.
pub fn acceptance_span(config: &Config) -> f64 {
    f64::from(config.aggregation.max_intervals + 1) * f64::from(max_frequency(config))
}

/// Decodes one journal record with the listeners' decoders ([`crate::codec::decode_frame`]),
/// calling `f` per datapoint or rejection. Its receive time replaces `-1` timestamps.
pub fn for_each_datapoint(
    record: &Record<'_>,
    limits: &Limits,
    decoder: &mut PickleDecoder,
    mut f: impl FnMut(Result<Datapoint<'_>, DropReason>),
) {
    let now = record.meta.received_us as f64 / 1e6;
    let tenant = Some(record.meta.tenant.as_str()).filter(|t| !t.is_empty());
    let decoded = crate::codec::decode_frame(
        record.meta.kind,
        record.payload,
        tenant,
        now,
        limits,
        decoder,
        |r| match r {
            Ok(run) => run.iter().for_each(|dp| f(Ok(*dp))),
            Err(reason) => f(Err(reason)),
        },
    );
    if let Err(e) = decoded {
        f(Err(e.reason()));
    }
}

/// Feeds every record received in the last [`acceptance_span`] into the workers through
/// `ingest` (which must not journal). Records below `delivered_below` (the clean-shutdown
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
            let t = rec.meta.received_us as f64 / 1e6;
            let tenant = Some(rec.meta.tenant.as_str()).filter(|t| !t.is_empty());
            // A body unusable as a whole was answered 400 (and counted) when received.
            let _ = ingest.frame(rec.meta.kind, rec.payload, tenant, t);
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

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Intervals overlapping `from..=to` (Unix seconds) are recomputed.
    pub windows: Vec<Window>,
    /// Only output series whose name matches.
    pub matching: Option<regex::Regex>,
    /// Only records of this tenant.
    pub tenant: Option<String>,
    /// Most input datapoints read per second (0 = unlimited).
    pub rate: u64,
    /// Send here (`host:port`, pickle) instead of the configured destinations.
    pub dest: Option<String>,
    /// Compute and report, send nothing.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySummary {
    /// Journal records read.
    pub records: u64,
    /// Input datapoints decoded.
    pub datapoints: u64,
    /// Aggregates (intervals × series) recomputed and sent (or, with dry run, computed).
    pub intervals: u64,
    /// Corrupt journal bytes skipped.
    pub skipped_bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// Merges overlapping or touching windows.
pub fn merge(mut windows: Vec<Window>) -> Vec<Window> {
    windows.sort_by(|a, b| a.from.total_cmp(&b.from));
    let mut out: Vec<Window> = Vec::new();
    for w in windows {
        match out.last_mut() {
            Some(last) if w.from <= last.to => last.to = last.to.max(w.to),
            _ => out.push(w),
        }
    }
    out
}

/// Recomputes the intervals overlapping each window and sends them. `progress` receives
/// (bytes done, bytes total) of journal read.
pub fn replay(
    config: &Config,
    dir: &Path,
    opts: &ReplayOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let span = acceptance_span(config) + 60.0;
    let router = Router::new(config.aggregation.clone(), 1);
    let settings = Settings {
        max_intervals: config.aggregation.max_intervals,
        write_back_frequency: 0,
        max_values_per_bucket: config.aggregation.max_values_per_bucket,
    };
    let mut summary = ReplaySummary::default();
    let windows = merge(opts.windows.clone());
    // Each journal range is read once: windows whose read ranges (the window widened by
    // the acceptance span) overlap are replayed from one read.
    let mut groups: Vec<(Window, Vec<Window>)> = Vec::new();
    for w in &windows {
        let range = Window {
            from: w.from - span,
            to: w.to + span,
        };
        match groups.last_mut() {
            Some((r, ws)) if range.from <= r.to => {
                *r = r.union(range);
                ws.push(*w);
            }
            _ => groups.push((range, vec![*w])),
        }
    }
    let plans: Vec<_> = groups
        .iter()
        .map(|(r, _)| {
            let from_us = (r.from * 1e6) as i64;
            let to_us = (r.to * 1e6) as i64;
            reader::plan(dir, from_us, to_us).map(|p| (from_us, to_us, p))
        })
        .collect::<Result<_, _>>()
        .map_err(|source| journal_error(dir, source))?;
    let total: u64 = plans
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, b)| *b))
        .sum();
    let mut done = 0u64;
    let mut sender = Sender::new(config, opts)?;
    for ((_, group), (from_us, to_us, _)) in groups.iter().zip(plans) {
        let mut table = SeriesTable::new(settings);
        let mut decoder = PickleDecoder::new();
        let limits = config.limits.clone();
        let rate_start = Instant::now();
        let mut read = 0u64;
        let stats = reader::read_range(
            dir,
            from_us,
            to_us,
            |rec| {
                if opts.tenant.as_deref().is_some_and(|t| t != rec.meta.tenant) {
                    return;
                }
                summary.records += 1;
                for_each_datapoint(rec, &limits, &mut decoder, |r| {
                    let Ok(dp) = r else { return };
                    read += 1;
                    router.with_route(dp.path, |route| {
                        for o in route.outputs.iter() {
                            // Replay has no too_old/too_new window: "now" is the datapoint's
                            // own time.
                            let _ = table.add(&o.key, dp.timestamp, dp.value, dp.timestamp);
                        }
                    });
                });
                if opts.rate > 0 {
                    let due = Duration::from_secs_f64(read as f64 / opts.rate as f64);
                    if let Some(wait) = due.checked_sub(rate_start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            },
            |bytes| {
                done += bytes;
                progress(done, total);
            },
        )
        .map_err(|source| journal_error(dir, source))?;
        summary.datapoints += read;
        summary.skipped_bytes += stats.skipped_bytes;
        let mut out = Vec::new();
        table.drain_all(|key, start, value| {
            let f = f64::from(key.frequency);
            let s = start as f64;
            let overlaps = group.iter().any(|w| s <= w.to && s + f > w.from);
            let wanted = opts
                .matching
                .as_ref()
                .is_none_or(|re| re.is_match(&key.name));
            if overlaps && wanted {
                out.push(OutPoint {
                    path: Arc::clone(&key.name),
                    timestamp: s,
                    value,
                });
            }
        });
        summary.intervals += out.len() as u64;
        if !opts.dry_run {
            sender.send(&out)?;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Nowhere to send: no `[[destination]]` and no `--dest`.
    #[error("no destination: configure one or give --dest")]
    NoDestination,
    /// The journal could not be read.
    #[error("journal {}: {source}", dir.display())]
    Journal {
        /// The journal directory.
        dir: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A destination could not be reached or written.
    #[error("destination {destination}: {source}")]
    Destination {
        /// `host:port`, or `stdout`.
        destination: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Aggregates could not be pickled (a bug: every OutPoint is picklable).
    #[error("pickle encoding: {0}")]
    Encode(#[from] serde_pickle::Error),
}

fn journal_error(dir: &Path, source: std::io::Error) -> ReplayError {
    ReplayError::Journal {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Writes replayed aggregates to destinations over plain blocking TCP (or stdout).
struct Sender {
    targets: Vec<(DestAddress, DestProtocol, usize)>,
}

impl Sender {
    fn new(config: &Config, opts: &ReplayOptions) -> Result<Sender, ReplayError> {
        let targets = match &opts.dest {
            Some(a) => vec![(DestAddress::Tcp(a.clone()), DestProtocol::Pickle, 500)],
            None => config
                .destinations
                .iter()
                .map(|d| (d.address.clone(), d.protocol, d.max_datapoints_per_message))
                .collect(),
        };
        if targets.is_empty() && !opts.dry_run {
            return Err(ReplayError::NoDestination);
        }
        Ok(Sender { targets })
    }

    fn send(&mut self, points: &[OutPoint]) -> Result<(), ReplayError> {
        if points.is_empty() {
            return Ok(());
        }
        for (addr, proto, per_frame) in &self.targets {
            let mut buf = Vec::new();
            match (addr, proto) {
                (DestAddress::Tcp(_), DestProtocol::Pickle) => {
                    encode_frames(points, *per_frame, &mut buf)?
                }
                _ => plaintext::encode_lines(points, &mut buf),
            }
            let written = match addr {
                DestAddress::Stdout => std::io::stdout().write_all(&buf),
                DestAddress::Tcp(a) => TcpStream::connect(a.as_str()).and_then(|mut s| {
                    s.write_all(&buf)?;
                    s.flush()?;
                    // FIN after the data: the kernel still delivers what is buffered.
                    s.shutdown(std::net::Shutdown::Write)
                }),
            };
            written.map_err(|source| ReplayError::Destination {
                destination: match addr {
                    DestAddress::Stdout => "stdout".into(),
                    DestAddress::Tcp(a) => a.clone(),
                },
                source,
            })?;
        }
        Ok(())
    }
}

/// Unreplayed entries' windows and ids in the ledger file `ledger`.
pub fn lost_windows(ledger: &Path) -> std::io::Result<(Vec<Window>, Vec<u64>)> {
    let (entries, replayed) = ledger::read(ledger)?;
    let mut windows = Vec::new();
    let mut ids = Vec::new();
    for e in entries {
        if replayed.contains(&e.id) || !e.from.is_finite() || !e.to.is_finite() {
            continue;
        }
        windows.push(Window {
            from: e.from,
            to: e.to,
        });
        ids.push(e.id);
    }
    Ok((windows, ids))
}

/// A `--from`/`--to` time that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct TimeError {
    /// The time as given.
    pub input: String,
    /// Why it does not parse.
    pub reason: String,
}

/// Parses a time: `now`, epoch seconds (`1700000000`), a relative form (`-2h`, `-30m`),
/// or RFC 3339 (`2026-11-21T06:00:00Z`). Returns Unix seconds.
///
/// Errors: none of these forms.
pub fn parse_time(s: &str, now: f64) -> Result<f64, TimeError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Ok(v) = s.parse::<f64>() {
        return Ok(v);
    }
    if let Some(rel) = s.strip_prefix('-') {
        return humantime::parse_duration(rel)
            .map(|d| now - d.as_secs_f64())
            .map_err(|e| TimeError {
                input: s.into(),
                reason: e.to_string(),
            });
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        })
        .map_err(|e| TimeError {
            input: s.into(),
            reason: format!("not now, epoch seconds, -DURATION or RFC 3339 ({e})"),
        })
}

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
    let _ = writeln!(
        s,
        "ledger: {} entries, {} replayed; unreplayed by reason: {open:?}",
        entries.len(),
        replayed.len()
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = 1_700_000_000.0;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("1600000000", now), Ok(1_600_000_000.0));
        assert_eq!(parse_time("-2h", now), Ok(now - 7200.0));
        assert_eq!(parse_time("-90s", now), Ok(now - 90.0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000.0));
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn windows_merge() {
        let w = |from, to| Window { from, to };
        assert_eq!(
            merge(vec![w(10.0, 20.0), w(0.0, 5.0), w(15.0, 30.0), w(5.0, 6.0)]),
            vec![w(0.0, 6.0), w(10.0, 30.0)]
        );
    }
}
