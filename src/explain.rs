//! `aggd explain`: what aggd does with given metric paths.

use std::fmt::Write;

use crate::config::Config;
use crate::route::Router;

/// A human-readable account, per path, of the `[pre]` rewrite, every matching rule with
/// its output series, method, frequency, worker and captured fields (tag captures
/// included), the forwarded name, and for each
/// outgoing name the destinations `[routing]` places it on (after tag normalisation) and,
/// for a remote-write destination, the Prometheus series it becomes.
pub fn explain(config: &Config, paths: &[String]) -> String {
    let router = Router::new(config.aggregation.clone(), config.workers.count);
    let rules = config.aggregation.rules.rules();
    let mut s = String::new();
    for path in paths {
        let route = router.compute(path);
        let _ = writeln!(s, "{path}");
        let rewritten = config.aggregation.rewrite.apply_pre(path);
        if rewritten != path.as_str() {
            let _ = writeln!(s, "  [pre] rewrite -> {rewritten}");
        }
        if route.outputs.is_empty() {
            let _ = writeln!(s, "  no aggregation rule matches");
        }
        let matches = config.aggregation.rules.explain(&rewritten);
        for o in &route.outputs {
            let r = &rules[o.rule];
            let _ = writeln!(
                s,
                "  rule {}:{}: {}\n    -> {} ({} every {} s, worker {})",
                config.aggregation.rules_file.display(),
                r.line,
                r.text,
                o.key.name,
                r.method,
                r.frequency,
                o.index
            );
            let captures = matches
                .iter()
                .find(|m| m.0 == o.rule)
                .map(|m| &m.1.captures);
            if let Some(c) = captures.filter(|c| !c.is_empty()) {
                let list: Vec<String> = c.iter().map(|(k, v)| format!("<{k}> = {v:?}")).collect();
                let _ = writeln!(s, "    captures {}", list.join(", "));
            }
            if let Some(c) = &config.cluster {
                let k = crate::cluster::shard::shard_of(o.key.hash, c.shards);
                let _ = writeln!(
                    s,
                    "    cluster shard {k} of {}: subject {}",
                    c.shards,
                    crate::cluster::subject(&c.name, k)
                );
            }
            destinations(config, &o.key.name, &mut s);
        }
        match &route.forward {
            Some(f) => {
                let _ = writeln!(s, "  forwarded raw as {f}");
                destinations(config, f, &mut s);
            }
            None if config.aggregation.forward_all => {
                let _ = writeln!(s, "  not forwarded: an output has the same name");
            }
            None => {}
        }
    }
    s
}

/// `    to <destination>[, <replica>…]` for outgoing name `name` (and the normalised name
/// first, if normalisation changes it); nothing without destinations.
fn destinations(config: &Config, name: &str, s: &mut String) {
    use crate::codec::tagged::{Normalized, normalize};
    if config.destinations.is_empty() {
        return;
    }
    let mut name = name.to_string();
    if config.routing.normalize_tags {
        match normalize(&name) {
            Normalized::Same => {}
            Normalized::Changed(n) => {
                let _ = writeln!(s, "    normalised to {n}");
                name = n;
            }
            Normalized::Invalid(why) => {
                let _ = writeln!(s, "    not normalised ({why}): sent unchanged");
            }
        }
    }
    let mut placed = Vec::new();
    config.routing.placement.place(&name, &mut placed);
    let names: Vec<String> = placed
        .iter()
        .map(|&i| {
            let d = &config.destinations[i];
            match &d.instance {
                Some(inst) => format!("{}:{inst}", d.name()),
                None => d.name().to_string(),
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "    to {} ({})",
        names.join(", "),
        config.routing.placement.method()
    );
    for &i in &placed {
        if let Some(rw) = config.destinations[i].remote_write() {
            let mut labels = crate::rules::mapping::map(rw.mapping.as_deref(), &name);
            let metric = labels.remove("__name__").unwrap_or_default();
            let list: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            // An untagged series is its name alone, as PromQL writes it.
            let labels = match list.is_empty() {
                true => String::new(),
                false => format!("{{{}}}", list.join(", ")),
            };
            let _ = writeln!(s, "    remote write to {} as {metric}{labels}", rw.url);
        }
    }
}
