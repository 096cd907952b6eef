//! What to replay ([`ReplayOptions`]), what a replay did ([`ReplaySummary`]) and why one
//! stopped ([`ReplayError`]).

use crate::time::Window;

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
    /// With `dry_run`: print each computed aggregate to stdout as a carbon plaintext line
    /// (`path value timestamp`).
    pub print: bool,
    /// Which datapoints refused at receive time are replayed too (none by default).
    pub refused: super::Refusals,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySummary {
    /// Journal records read.
    pub records: u64,
    /// Input datapoints decoded and aggregated.
    pub datapoints: u64,
    /// Datapoints refused at receive time and left out, as the live path left them out.
    pub refused_skipped: u64,
    /// Datapoints refused at receive time and replayed as asked.
    pub refused_included: u64,
    /// Reasons of `--lost`'s entries whose refused datapoints were held back (a tenant
    /// still not admitted): those entries stay unreplayed.
    pub held: Vec<crate::reason::DropReason>,
    /// Aggregates (intervals × series) recomputed and sent (or, with dry run, computed).
    pub intervals: u64,
    /// Corrupt journal bytes skipped.
    pub skipped_bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
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
    /// `--cluster`: no `[cluster]` section, or the cluster's stream could not be read.
    #[error("cluster: {0}")]
    Cluster(String),
}
