//! Where replayed aggregates go: the daemon's own senders, driven from blocking code.

use std::time::Duration;

use super::options::{ReplayError, ReplayOptions};
use crate::config::{
    CarbonDestination, CarbonProtocol, CarbonTarget, Config, DestinationConfig, DestinationKind,
    OutputPlacement,
};
use crate::datapoint::OutPoint;
use crate::dest::blocking::BlockingDestinations;

/// Sends replayed aggregates through the daemon's own senders ([`BlockingDestinations`]):
/// names placed on the destinations as the daemon places them (`[routing]`, with tag
/// normalisation), `--dest` (carbon pickle, 500 datapoints a frame) getting everything.
/// A destination that takes nothing for [`GIVE_UP`] fails the replay.
pub(super) struct Sender(BlockingDestinations);

/// How long replay waits on a destination that takes nothing (not reachable, or every
/// request failing) before it gives up with an error.
const GIVE_UP: Duration = Duration::from_secs(60);

impl Sender {
    /// `None` for a dry run. Errors: nowhere to send, a `--dest` that is not
    /// `host:port`, a destination that cannot be set up.
    pub(super) fn new(
        config: &Config,
        opts: &ReplayOptions,
    ) -> Result<Option<Sender>, ReplayError> {
        if opts.dry_run {
            return Ok(None);
        }
        let (destinations, placement) = match &opts.dest {
            Some(a) => {
                if crate::config::split_host_port(a).is_none() {
                    return Err(ReplayError::Destination {
                        destination: a.clone(),
                        source: std::io::Error::other("not host:port"),
                    });
                }
                let d = vec![DestinationConfig {
                    kind: DestinationKind::Carbon(CarbonDestination {
                        target: CarbonTarget::Tcp(a.clone()),
                        protocol: CarbonProtocol::Pickle,
                        max_datapoints_per_message: 500,
                        unconfirmed_window: Duration::from_secs(60),
                    }),
                    queue_datapoints: 1,
                    instance: None,
                    emit_delay: Duration::ZERO,
                    late_changes: Default::default(),
                }];
                let placement = OutputPlacement::all(&d);
                (d, placement)
            }
            None => (config.destinations.clone(), config.routing.clone()),
        };
        if destinations.is_empty() {
            return Err(ReplayError::NoDestination);
        }
        BlockingDestinations::start(&destinations, &placement, GIVE_UP)
            .map(|d| Some(Sender(d)))
            .map_err(undelivered)
    }

    pub(super) fn send(&mut self, points: &[OutPoint]) -> Result<(), ReplayError> {
        self.0.send(points).map_err(undelivered)
    }

    /// Waits until everything sent is delivered and acknowledged.
    pub(super) fn finish(self) -> Result<(), ReplayError> {
        self.0.finish().map_err(undelivered)
    }
}

fn undelivered(e: crate::dest::blocking::Undelivered) -> ReplayError {
    ReplayError::Destination {
        destination: e.destination,
        source: std::io::Error::other(e.reason),
    }
}
