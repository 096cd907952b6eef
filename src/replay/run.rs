//! `aggd replay`: intervals overlapping given windows recomputed from all the input
//! journaled for them and sent, complete, to the destinations.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::acceptance_span;
use super::options::{ReplayError, ReplayOptions, ReplaySummary};
use super::send::Sender;
use crate::aggregate::series::{SeriesTable, Settings};
use crate::codec::plaintext;
use crate::config::Config;
use crate::datapoint::OutPoint;
use crate::ingest::{FrameRouter, Routes};
use crate::journal::reader;
use crate::route::Router;
use crate::time::Window;

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
///
/// Errors: nowhere to send, the journal cannot be read, a destination cannot be written.
pub fn replay(
    config: &Config,
    dir: &Path,
    opts: &ReplayOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let groups = read_groups(&merge(opts.windows.clone()), acceptance_span(config) + 60.0);
    let plans: Vec<_> = groups
        .iter()
        .map(|(r, _)| {
            let (from_us, to_us) = ((r.from * 1e6) as i64, (r.to * 1e6) as i64);
            reader::plan(dir, from_us, to_us).map(|p| (from_us, to_us, p))
        })
        .collect::<Result<_, _>>()
        .map_err(|source| journal_error(dir, source))?;
    let total: u64 = plans
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, b)| *b))
        .sum();
    let mut done = 0u64;
    let mut progress = |bytes| {
        done += bytes;
        progress(done, total);
    };
    let mut sender = Sender::new(config, opts)?;
    let router = Arc::new(Router::new(config.aggregation.clone(), 1));
    let mut replayer = Replayer {
        config,
        dir,
        opts,
        frames: FrameRouter::new(Arc::new(Routes::new(&router, config))),
    };
    let mut summary = ReplaySummary::default();
    for ((_, group), (from_us, to_us, _)) in groups.iter().zip(plans) {
        let out = replayer.group(from_us, to_us, group, &mut summary, &mut progress)?;
        summary.intervals += out.len() as u64;
        deliver(&mut sender, &out, opts)?;
    }
    sender.map(Sender::finish).transpose()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Sends `out`, or with a dry run prints it when asked (carbon plaintext lines on stdout).
///
/// Errors: a destination refused it, or stdout could not be written.
fn deliver(
    sender: &mut Option<Sender>,
    out: &[OutPoint],
    opts: &ReplayOptions,
) -> Result<(), ReplayError> {
    if let Some(sender) = sender {
        return sender.send(out);
    }
    if opts.print {
        let mut lines = Vec::new();
        plaintext::encode_lines(out, &mut lines);
        std::io::stdout()
            .write_all(&lines)
            .map_err(|source| ReplayError::Destination {
                destination: "stdout".into(),
                source,
            })?;
    }
    Ok(())
}

/// The journal ranges to read, each with the windows it serves: every window widened by
/// `span` (the acceptance span, so late data is read), windows whose ranges overlap
/// sharing one read (each journal range is read once).
fn read_groups(windows: &[Window], span: f64) -> Vec<(Window, Vec<Window>)> {
    let mut groups: Vec<(Window, Vec<Window>)> = Vec::new();
    for w in windows {
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
    groups
}

/// What every read group of one replay shares.
struct Replayer<'a> {
    config: &'a Config,
    dir: &'a Path,
    opts: &'a ReplayOptions,
    /// The live path's routing step, without a gate of its own (one output index).
    frames: FrameRouter,
}

impl Replayer<'_> {
    /// Reads the journal from `from_us` to `to_us` into a private series table without
    /// the too_old/too_new window, and returns the aggregates of the intervals that
    /// overlap one of `windows` (and match `--match`).
    fn group(
        &mut self,
        from_us: i64,
        to_us: i64,
        windows: &[Window],
        summary: &mut ReplaySummary,
        progress: &mut impl FnMut(u64),
    ) -> Result<Vec<OutPoint>, ReplayError> {
        let (config, opts) = (self.config, self.opts);
        let mut table = SeriesTable::new(Settings {
            max_intervals: config.aggregation.max_intervals,
            write_back_frequency: 0,
            max_values_per_bucket: config.aggregation.max_values_per_bucket,
        });
        let frames = &mut self.frames;
        let rate_start = Instant::now();
        let mut read = 0u64;
        let stats = reader::read_range(
            self.dir,
            from_us,
            to_us,
            |rec| {
                if opts.tenant.as_deref().is_some_and(|t| t != rec.meta.tenant) {
                    return;
                }
                summary.records += 1;
                frames.reread_including(rec, &mut |reason, dp| {
                    let tenant = rec
                        .tenant()
                        .unwrap_or_else(|| crate::tenant::prefix(dp.path));
                    if !opts.refused.includes(reason, tenant) {
                        summary.refused_skipped += 1;
                        if opts.refused.lost(reason) && !summary.held.contains(&reason) {
                            summary.held.push(reason);
                        }
                        return false;
                    }
                    summary.refused_included += 1;
                    true
                });
                read += frames.take_routed_count();
                for batch in frames.pending_uncounted() {
                    for it in batch.items() {
                        // Replay has no too_old/too_new window: "now" is the datapoint's
                        // own time.
                        let _ = table.add(it, it.timestamp, it.value, it.timestamp);
                    }
                    batch.clear();
                }
                if opts.rate > 0 {
                    let due = Duration::from_secs_f64(read as f64 / opts.rate as f64);
                    if let Some(wait) = due.checked_sub(rate_start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            },
            progress,
        )
        .map_err(|source| journal_error(self.dir, source))?;
        summary.datapoints += read;
        summary.skipped_bytes += stats.skipped_bytes;
        Ok(overlapping(&mut table, windows, opts))
    }
}

/// Drains `table`, returning the aggregates of the intervals that overlap one of
/// `windows` (and match `--match`).
fn overlapping(table: &mut SeriesTable, windows: &[Window], opts: &ReplayOptions) -> Vec<OutPoint> {
    let mut out = Vec::new();
    table.drain_all(|key, start, value| {
        let (f, s) = (f64::from(key.frequency), start as f64);
        let overlaps = windows.iter().any(|w| s <= w.to && s + f > w.from);
        let wanted = opts
            .matching
            .as_ref()
            .is_none_or(|re| re.is_match(&key.name));
        if overlaps && wanted {
            out.push(OutPoint {
                path: Arc::clone(&key.name),
                timestamp: s,
                value,
                interval: None,
            });
        }
    });
    out
}

/// `aggd replay --cluster`: like [`replay`], reading the cluster's stream instead of the
/// local journal (messages stored from each window's start minus the acceptance span to
/// its end plus the span), so it works from any node and after a node's disk is lost.
/// `--tenant` does not apply (messages carry output series, not records).
///
/// Errors: no `[cluster]`, NATS cannot be reached or the stream read, nowhere to send, a
/// destination cannot be written.
pub fn replay_cluster(config: &Config, opts: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let Some(c) = &config.cluster else {
        return Err(ReplayError::Cluster(
            "no [cluster] section in the config".into(),
        ));
    };
    let mut sender = Sender::new(config, opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReplayError::Cluster(e.to_string()))?;
    let rules = crate::cluster::rules::Material::of(&config.aggregation);
    let joined = rt
        .block_on(crate::cluster::nats::join(c, Some(&rules)))
        .map_err(|e| ReplayError::Cluster(e.to_string()))?;
    let mut summary = ReplaySummary::default();
    for (range, windows) in
        read_groups(&merge(opts.windows.clone()), acceptance_span(config) + 60.0)
    {
        let mut table = SeriesTable::new(Settings {
            max_intervals: config.aggregation.max_intervals,
            write_back_frequency: 0,
            max_values_per_bucket: config.aggregation.max_values_per_bucket,
        });
        let read = rt
            .block_on(crate::cluster::read::read_stream(
                &joined,
                range.from,
                range.to,
                |it| {
                    let _ = table.add(it, it.timestamp, it.value, it.timestamp);
                },
            ))
            .map_err(|e| ReplayError::Cluster(e.to_string()))?;
        summary.records += read.messages;
        summary.datapoints += read.datapoints;
        let out = overlapping(&mut table, &windows, opts);
        summary.intervals += out.len() as u64;
        deliver(&mut sender, &out, opts)?;
    }
    sender.map(Sender::finish).transpose()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn journal_error(dir: &Path, source: std::io::Error) -> ReplayError {
    ReplayError::Journal {
        dir: dir.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_merge() {
        let w = |from, to| Window { from, to };
        assert_eq!(
            merge(vec![w(10.0, 20.0), w(0.0, 5.0), w(15.0, 30.0), w(5.0, 6.0)]),
            vec![w(0.0, 6.0), w(10.0, 30.0)]
        );
    }
}
