//! Aggregation: per-series buckets and their emission rules ([`series`]), the worker
//! threads that own them ([`worker`]) and the batches they are fed ([`batch`]), and cluster mode's fence on what they emit
//! ([`gate`]). The methods' formulas are [`crate::method`].

pub mod batch;
pub mod gate;
pub mod series;
pub mod worker;
