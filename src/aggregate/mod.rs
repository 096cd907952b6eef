//! Aggregation: methods ([`method`]), per-series buckets and their emission rules
//! ([`series`]), and the worker threads that own them ([`worker`]).

pub mod method;
pub mod series;
pub mod worker;
