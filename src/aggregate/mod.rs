//! Aggregation: methods, per-series buckets, and the worker threads that own them.

pub mod method;
