//! aggd's integration tests, one binary: each file is a module (real sockets, the real
//! binary, real Graphite software; shared helpers in `testkit/`). One binary links the
//! crate once, where one per file linked it once per file: after an edit to `src/`,
//! `cargo test --no-run` took 34 s with 24 test binaries and 13 s with this one.
//!
//! Four files stay binaries of their own, in `tests/`:
//! - `hostile.rs` raises the process's open-file limit (which every aggd started after it
//!   would inherit) and holds thousands of sockets: in this binary the other tests, and
//!   the daemons they start, would run under that limit and beside those sockets.
//! - `shutdown.rs` asserts that no `aggd-` thread of the process is left after shutdown:
//!   the daemons other tests run in this process would be counted.
//! - `watchdog.rs` asserts the systemd watchdog's timing to the second; it runs alone,
//!   not beside the daemons of another test.
//! - `nemesis.rs` (the cluster soak) runs seven servers and lease TTLs of 2 s for minutes;
//!   beside other tests on two cores its nodes would lose leases to CPU starvation, not
//!   to its faults.

mod admin;
mod carbon_cache;
mod carbon_conf;
mod cli;
mod cluster;
mod destinations;
mod e2e;
mod edges;
mod http;
mod inspect;
mod isolation;
mod journal;
mod layers;
mod monitoring;
mod placement;
mod reload;
mod remote_write;
mod replay_options;
mod service;
mod systemd;
mod tags;
mod tenants;
