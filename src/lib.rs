//! aggd: a Graphite-compatible aggregation daemon.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod codec;
pub mod config;
pub mod datapoint;
pub mod drops;
pub mod rules;
