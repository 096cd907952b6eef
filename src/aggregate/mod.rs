//! Aggregation: per-series buckets and their emission rules ([`series`]), the worker
//! threads that own them ([`worker`]), and cluster mode's fence on what they emit
//! ([`gate`]). The methods' formulas are [`crate::method`].

pub mod gate;
pub mod series;
pub mod worker;
