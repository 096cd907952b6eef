//! Aggregation: per-series buckets and their emission rules ([`series`]), and the worker
//! threads that own them ([`worker`]). The methods' formulas are [`crate::method`].

pub mod series;
pub mod worker;
