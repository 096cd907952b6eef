//! Re-reading the journal: the start-up rebuild of open intervals ([`rebuild`]), `aggd
//! replay` (`run`) and `aggd journal stat` (`stat`).
//!
//! Both decode journal records with the same decoders as the listeners, with the record's
//! receive time as "now" (so a `-1` timestamp means what it meant when received), and apply
//! the same rules through a [`Router`](crate::route::Router).
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

mod lost;
mod options;
mod rebuild;
mod refused;
mod run;
mod send;
mod stat;

pub use lost::{LostWindows, lost_windows};
pub use options::{ReplayError, ReplayOptions, ReplaySummary};
pub use rebuild::rebuild;
pub use refused::{NotARefusal, Refusals};
pub use run::{merge, replay, replay_cluster};
pub use stat::journal_stat;

use crate::config::Config;

/// The largest rule frequency, in seconds (0 without rules).
pub(crate) fn max_frequency(config: &Config) -> u32 {
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
