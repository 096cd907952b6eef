//! aggd: a Graphite-compatible aggregation daemon.
#![forbid(unsafe_code)]

pub mod codec;
pub mod datapoint;
pub mod drops;
