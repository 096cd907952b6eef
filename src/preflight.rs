//! `aggd check`'s preflight: what `aggd run` does with a config before it serves, short of
//! serving, so that a config `check` passes is one `run` starts with.
//!
//! - Each listener's address (and the admin API's) is resolved and, unless asked not to,
//!   bound and released at once: an address the machine does not have, a host that does
//!   not resolve and a port in use are errors.
//! - The journal directory is created if missing, its `lock` file opened and locked and
//!   released; the loss ledger's directory is created and written to. A path that is a
//!   file, or that cannot be created or written, is an error; a lock held by a running
//!   aggd is a warning (run refuses to start while it runs).
//! - Destination hosts are resolved: a failure is a warning (run keeps retrying).
//! - The memory bound (`Config::memory_bound`) is compared with the machine's memory
//!   (`MemTotal` in `/proc/meminfo`) and with the memory limit of the cgroup `check` runs
//!   in (`memory.max`: a systemd unit's `MemoryMax=` when `check` runs as its
//!   `ExecStartPre=`): over either is an error.

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::Path;

use crate::config::{CarbonTarget, Config, DestinationKind, Transport};

/// How serious a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `aggd run` would refuse to start (or could not keep its promises): `check` fails.
    Error,
    /// Worth knowing; `aggd run` would start.
    Warning,
}

/// One thing the preflight found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What it concerns, as the config names it (`listen 127.0.0.1:2003`, `journal DIR`).
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    /// `error: SUBJECT: MESSAGE` or `warning: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.subject, self.message)
    }
}

/// What the preflight does.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Bind each listener and release it (off: `check --no-bind`, e.g. while aggd runs
    /// on the same addresses).
    pub bind: bool,
    /// The live output series the memory bound is computed for.
    pub live_series: u64,
}

/// Runs every check of the module docs against `config`; an empty list means `run` would
/// start.
pub fn preflight(config: &Config, opts: Options) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let subject = format!("listen {} ({:?})", l.address, l.transport).to_lowercase();
        listener(&mut out, subject, &l.address, l.transport, opts.bind);
    }
    if let Some(a) = &config.admin {
        listener(
            &mut out,
            format!("admin {}", a.address),
            &a.address,
            Transport::Tcp,
            opts.bind,
        );
    }
    if let Some(j) = &config.journal {
        journal(&mut out, &j.dir, &j.ledger);
    }
    for d in &config.destinations {
        if let DestinationKind::Carbon(c) = &d.kind
            && let CarbonTarget::Tcp(a) = &c.target
            && let Err(e) = a.to_socket_addrs()
        {
            out.push(Finding {
                severity: Severity::Warning,
                subject: format!("destination {a}"),
                message: format!(
                    "cannot resolve ({e}); aggd run starts and keeps retrying, queueing for it"
                ),
            });
        }
    }
    memory(&mut out, config.memory_bound(opts.live_series).total());
    out
}

fn error(out: &mut Vec<Finding>, subject: impl Into<String>, message: String) {
    out.push(Finding {
        severity: Severity::Error,
        subject: subject.into(),
        message,
    });
}

/// Resolves `address` and binds it (TCP or UDP) when `bind`.
fn listener(
    out: &mut Vec<Finding>,
    subject: String,
    address: &str,
    transport: Transport,
    bind: bool,
) {
    let addrs: Vec<SocketAddr> = match address.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return error(
                out,
                subject,
                format!(
                    "cannot resolve the address ({e}): use an IP address or a host this machine resolves"
                ),
            );
        }
    };
    let Some(addr) = addrs.first() else {
        return error(out, subject, "resolves to no address".into());
    };
    if !bind {
        return;
    }
    let bound = match transport {
        Transport::Tcp => TcpListener::bind(addr).map(drop),
        Transport::Udp => UdpSocket::bind(addr).map(drop),
    };
    if let Err(e) = bound {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another process listens there (aggd itself? then check with --no-bind)"
            }
            std::io::ErrorKind::AddrNotAvailable => "this machine has no such address",
            std::io::ErrorKind::PermissionDenied => {
                "a port below 1024 needs CAP_NET_BIND_SERVICE (the systemd unit grants it)"
            }
            _ => "aggd run would fail the same way",
        };
        error(out, subject, format!("cannot bind {addr}: {e}; {hint}"));
    }
}

/// The journal directory and the ledger's: created, locked, written.
fn journal(out: &mut Vec<Finding>, dir: &Path, ledger: &Path) {
    let subject = format!("journal {}", dir.display());
    if dir.exists() && !dir.is_dir() {
        return error(
            out,
            subject,
            "is not a directory: point [journal] dir at a directory (it is created if missing)"
                .into(),
        );
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return error(out, subject, format!("cannot create the directory: {e}"));
    }
    match crate::journal::recovery::lock(dir) {
        Ok(lock) => drop(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => out.push(Finding {
            severity: Severity::Warning,
            subject,
            message: format!("{e}; aggd run refuses to start until it stops"),
        }),
        Err(e) => {
            return error(
                out,
                subject,
                format!("cannot lock the directory: {e}; aggd run needs to write there"),
            );
        }
    }
    let ledger_dir = crate::journal::io::parent_dir(ledger);
    let subject = format!("journal ledger {}", ledger.display());
    if ledger.is_dir() {
        return error(
            out,
            subject,
            "is a directory: [journal] ledger names a file".into(),
        );
    }
    let probe = ledger_dir.join(".aggd-check");
    let written = std::fs::create_dir_all(ledger_dir)
        .and_then(|()| std::fs::write(&probe, b"aggd check\n"))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = written {
        error(
            out,
            subject,
            format!(
                "cannot write in {}: {e}; the loss ledger must be writable",
                ledger_dir.display()
            ),
        );
    }
}

/// The machine's memory (`MemTotal`), in bytes.
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`), if it has one.
fn cgroup_memory_max() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

fn memory(out: &mut Vec<Finding>, bound: u64) {
    let mib = |b: u64| b >> 20;
    if let Some(total) = machine_memory()
        && bound > total
    {
        error(
            out,
            "memory bound",
            format!(
                "{} MiB is more than this machine's {} MiB: lower the limits it lists \
                 (docs/operations.md, \"Memory\")",
                mib(bound),
                mib(total)
            ),
        );
    }
    if let Some(max) = cgroup_memory_max()
        && bound > max
    {
        error(
            out,
            "memory bound",
            format!(
                "{} MiB is more than this cgroup's memory.max ({} MiB, a unit's MemoryMax=): \
                 raise MemoryMax= or lower the limits",
                mib(bound),
                mib(max)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            bind: true,
            live_series: 1000,
        }
    }

    fn findings(toml: &str) -> Vec<Finding> {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path();
        std::fs::write(dir.join("aggregation-rules.conf"), "a (60) = sum b.*\n").unwrap();
        let path = dir.join("aggd.toml");
        std::fs::write(
            &path,
            format!(
                "[aggregation]\nrules = \"aggregation-rules.conf\"\n\
                 [[destination]]\naddress = \"stdout\"\n{toml}"
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        preflight(&config, opts())
    }

    #[test]
    fn a_config_run_starts_with_finds_nothing() {
        let f = findings(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:0\"\n\
             [[listen]]\nprotocol = \"plaintext\"\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
             [journal]\ndir = \"journal\"\nmin_free_disk = 0\n",
        );
        assert_eq!(f, []);
    }

    #[test]
    fn what_run_refuses_is_an_error_naming_its_subject() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let guard = tempfile::tempdir().unwrap();
        let file = guard.path().join("notadir");
        std::fs::write(&file, "").unwrap();
        let f = findings(&format!(
            "[[listen]]\nprotocol = \"plaintext\"\naddress = \"10.99.99.99:2003\"\n\
             [[listen]]\nprotocol = \"plaintext\"\naddress = \"no-such-host.invalid:2003\"\n\
             [[listen]]\nprotocol = \"plaintext\"\naddress = \"127.0.0.1:{port}\"\n\
             [journal]\ndir = \"{}\"\nmin_free_disk = 0\n",
            file.display()
        ));
        let errors: Vec<String> = f
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].contains("listen 10.99.99.99:2003") && errors[0].contains("no such address")
        );
        assert!(errors[1].contains("no-such-host.invalid") && errors[1].contains("cannot resolve"));
        assert!(errors[2].contains(&format!("127.0.0.1:{port}")) && errors[2].contains("in use"));
        assert!(errors[3].contains("notadir") && errors[3].contains("not a directory"));
        drop(taken);
    }
}
