//! `aggd explain`: what aggd does with given metric paths.

use std::fmt::Write;

use crate::config::Config;
use crate::route::Router;

/// A human-readable account, per path, of the `[pre]` rewrite, every matching rule with
/// its output series, method, frequency and worker, and the forwarded name.
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
                o.worker
            );
        }
        match &route.forward {
            Some(f) => {
                let _ = writeln!(s, "  forwarded raw as {f}");
            }
            None if config.aggregation.forward_all => {
                let _ = writeln!(s, "  not forwarded: an output has the same name");
            }
            None => {}
        }
    }
    s
}
