//! `aggd replay`: the windows and options from the arguments, progress on the terminal
//! (or in the log), the summary, and the ledger marked.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use aggd::config::Config;
use aggd::replay::{LostWindows, Refusals, ReplayOptions, ReplaySummary, lost_windows};
use aggd::time::{Window, parse_time};

use super::{ReplayArgs, journal_paths};

/// Runs `aggd replay`. Errors: bad arguments, no journal (unless replaying from the
/// cluster's stream), or the replay's own error.
pub(super) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    // In cluster mode a node's journal holds only its own input, and an aggregate needs
    // every node's: replay reads the cluster's stream (the windows of --lost still come
    // from this node's loss ledger).
    let from_stream = args.cluster || config.cluster.is_some();
    let (dir, ledger) = match journal_paths(&config) {
        Ok(p) => p,
        Err(e) if !from_stream || args.lost => return Err(e),
        Err(_) => (PathBuf::new(), PathBuf::new()),
    };
    let (windows, refused, lost) = windows(&args, &config, &ledger)?;
    if windows.is_empty() {
        println!("nothing to replay");
        return Ok(());
    }
    let opts = ReplayOptions {
        windows,
        matching: args
            .matching
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .context("--match")?,
        tenant: args.tenant.clone(),
        rate: args.rate,
        dest: args.dest.clone(),
        dry_run: args.dry_run,
        print: args.print,
        refused,
    };
    let summary = if from_stream {
        aggd::replay::replay_cluster(&config, &opts)?
    } else {
        with_progress(|progress| aggd::replay::replay(&config, &dir, &opts, progress))?
    };
    let ids = lost.replayed(&summary.held);
    if !args.dry_run && !ids.is_empty() {
        aggd::ledger::mark_replayed(&ledger, &ids)?;
    }
    print_summary(&summary, args.dry_run);
    Ok(())
}

/// The windows to replay (`--from`/`--to`, and with `--lost` the ledger's unreplayed
/// entries), the refusals to replay, and the ledger entries read.
fn windows(
    args: &ReplayArgs,
    config: &Config,
    ledger: &std::path::Path,
) -> anyhow::Result<(Vec<Window>, Refusals, LostWindows)> {
    let now = aggd::time::now();
    let mut refused = Refusals::always(&args.include_refused).context("--include-refused")?;
    let mut windows = Vec::new();
    let lost = if args.lost {
        let lost = lost_windows(ledger)?;
        refused = refused.with_lost(&lost.reasons(), config)?;
        windows.clone_from(&lost.windows);
        lost
    } else {
        Default::default()
    };
    match (&args.from, &args.to) {
        (Some(f), Some(t)) => {
            let (from, to) = (
                parse_time(f, now).context("--from")?,
                parse_time(t, now).context("--to")?,
            );
            // A reversed window would read nothing and look like an empty journal.
            anyhow::ensure!(
                from < to,
                "--from ({f}, {from}) must be before --to ({t}, {to}): the window is empty or reversed"
            );
            windows.push(Window { from, to });
        }
        (None, None) if args.lost => {}
        _ => anyhow::bail!("give --from and --to, or --lost"),
    }
    Ok((windows, refused, lost))
}

/// Runs `replay` with a progress callback (bytes done, bytes total): a bar with ETA on a
/// terminal, else a log line every 5 s.
fn with_progress<T>(replay: impl FnOnce(&mut dyn FnMut(u64, u64)) -> T) -> T {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} journal read, {bytes_per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last_log = std::time::Instant::now();
    let out = replay(&mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        } else if last_log.elapsed() >= std::time::Duration::from_secs(5) {
            last_log = std::time::Instant::now();
            tracing::info!(done_bytes = done, total_bytes = total, "replay progress");
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    out
}

/// Prints the summary line, and the reasons whose entries stay unreplayed.
fn print_summary(summary: &ReplaySummary, dry_run: bool) {
    println!(
        "replay{}: {} records, {} datapoints, {} intervals {}, {} refused datapoints left out, {} refused datapoints replayed, {} corrupt bytes skipped, {:.2} s ({:.0} datapoints/s)",
        if dry_run { " (dry run)" } else { "" },
        summary.records,
        summary.datapoints,
        summary.intervals,
        if dry_run { "computed" } else { "sent" },
        summary.refused_skipped,
        summary.refused_included,
        summary.skipped_bytes,
        summary.seconds,
        summary.datapoints as f64 / summary.seconds.max(1e-9)
    );
    for reason in &summary.held {
        println!("{reason} entries kept unreplayed: their tenant is still refused by the registry");
    }
}
