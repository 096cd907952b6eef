//! The defaults `config/aggd.toml` documents.

use std::time::Duration;

pub fn cluster_name() -> String {
    "main".into()
}
pub fn shards() -> u32 {
    256
}
pub fn replicas() -> usize {
    3
}
pub fn retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub fn duplicate_window() -> Duration {
    Duration::from_secs(600)
}
pub fn lease_ttl() -> Duration {
    Duration::from_secs(10)
}
pub fn max_in_flight() -> usize {
    512
}
pub fn max_publish_lag_bytes() -> u64 {
    1 << 30
}
pub fn batch_datapoints() -> usize {
    1000
}
pub fn batch_bytes() -> usize {
    64 << 10
}
pub fn publish_threads() -> usize {
    1
}
pub fn batch_delay() -> Duration {
    Duration::from_millis(50)
}

pub fn max_intervals() -> u32 {
    5
}
pub fn route_cache_entries() -> usize {
    1_000_000
}
pub fn max_values_per_bucket() -> usize {
    100_000
}
pub fn queue_batches() -> usize {
    1024
}
pub(crate) fn flush_tick_ms() -> u64 {
    250
}
pub(crate) fn queue_datapoints() -> usize {
    100_000
}
pub(crate) fn max_datapoints_per_message() -> usize {
    500
}
pub(crate) fn unconfirmed_window() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(crate) fn fsync_interval() -> Duration {
    Duration::from_secs(1)
}
pub fn segment_bytes() -> u64 {
    64 << 20
}
pub fn segment_max_age() -> Duration {
    Duration::from_secs(3600)
}
pub(crate) fn journal_max_bytes() -> u64 {
    10 << 30
}
pub(crate) fn journal_max_age() -> Duration {
    Duration::from_secs(7 * 86_400)
}
pub fn min_free_disk() -> u64 {
    1 << 30
}
pub fn queue_records() -> usize {
    4096
}
pub(crate) fn admin_address() -> String {
    "127.0.0.1:8081".into()
}
pub(crate) fn quarantine_bytes() -> u64 {
    64 << 20
}
pub(crate) fn drain_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn self_metrics_interval() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn self_metrics_prefix() -> String {
    "carbon".into()
}
pub(crate) fn instance() -> String {
    "a".into()
}
pub(crate) fn replication() -> usize {
    1
}
pub(crate) fn yes() -> bool {
    true
}
