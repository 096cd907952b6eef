//! `Config`'s summary, as `aggd check` prints it: one line per listener, rule file,
//! setting, destination and section that is on.

use std::fmt::{Formatter, Result};

use super::{Config, LateChanges};

impl std::fmt::Display for Config {
    fn fmt(&self, s: &mut Formatter<'_>) -> Result {
        writeln!(s, "config: {}", self.source.display())?;
        for l in &self.listeners {
            writeln!(s, "listen: {}/{} on {}", l.protocol, l.transport, l.address)?;
        }
        self.aggregation_lines(s)?;
        writeln!(s, "workers: {}", self.workers.count)?;
        match &self.journal {
            Some(j) => writeln!(
                s,
                "journal: {} (fsync {}, on_full {})",
                j.dir.display(),
                j.fsync,
                j.on_full
            )?,
            None => writeln!(s, "journal: off")?,
        }
        self.destination_lines(s)?;
        if let Some(c) = &self.cluster {
            writeln!(
                s,
                "cluster: {} as node {}, {} shards, {} replicas, lease {}, servers {}",
                c.name,
                c.node,
                c.shards,
                c.replicas,
                humantime::format_duration(c.lease_ttl),
                c.servers.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Config {
    /// The rules files and the aggregation settings.
    fn aggregation_lines(&self, s: &mut Formatter<'_>) -> Result {
        let a = &self.aggregation;
        writeln!(
            s,
            "aggregation rules: {} from {}",
            a.rules.rules().len(),
            a.rules_file.display()
        )?;
        if let Some(f) = &a.rewrite_file {
            writeln!(
                s,
                "rewrite rules: {} [pre], {} [post] from {}",
                a.rewrite.pre.len(),
                a.rewrite.post.len(),
                f.display()
            )?;
        }
        writeln!(
            s,
            "forward_all: {}, max_intervals: {}, write_back_frequency: {}s",
            a.forward_all, a.max_intervals, a.write_back_frequency
        )?;
        if !a.lists.is_empty() {
            let (black, white) = a.lists.len();
            writeln!(s, "blacklist: {black} regexes, whitelist: {white} regexes")?;
        }
        if a.timestamp_resolution > 0 {
            writeln!(s, "timestamps floored to {} s", a.timestamp_resolution)?;
        }
        Ok(())
    }

    /// The destinations and how names are placed on them.
    fn destination_lines(&self, s: &mut Formatter<'_>) -> Result {
        for d in &self.destinations {
            let instance = d.instance.as_deref().map(|i| format!(", instance {i}"));
            let delay = (!d.emit_delay.is_zero())
                .then(|| format!(", emit_delay {}", humantime::format_duration(d.emit_delay)));
            let late = (d.late_changes != LateChanges::Send)
                .then(|| format!(", late_changes {}", d.late_changes));
            writeln!(
                s,
                "destination: {} ({}{}{}{})",
                d.name(),
                d.protocol(),
                instance.unwrap_or_default(),
                delay.unwrap_or_default(),
                late.unwrap_or_default()
            )?;
        }
        if self.destinations.len() > 1 {
            let p = &self.routing.placement;
            writeln!(
                s,
                "routing: {} ({} per name)",
                p.method(),
                if p.is_broadcast() {
                    "every destination".to_string()
                } else {
                    format!("{} destination(s)", p.replication())
                }
            )?;
        }
        if self.routing.normalize_tags {
            writeln!(s, "tagged names normalised on output")?;
        }
        Ok(())
    }
}
