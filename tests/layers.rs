//! The module graph: every module of `src/` imports only from modules on a lower layer of
//! the data flow, so there are no import cycles and no module reaches up. The layers are
//! the table in `docs/architecture.md` ("Module graph"); this test is its check.
//!
//! An import is any `crate::<module>` in a module's non-test code (comments, `#[cfg(test)]`
//! sections and `tests.rs` files excluded), including `use crate::{a, b::c}` groups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may import from a module on a lower layer only.
const LAYERS: &[&[&str]] = &[
    // Ground floor: imports nothing of aggd (but each other, downward).
    &["time"],
    &["hash", "reason", "events"],
    &["datapoint"],
    // Pure functions over bytes and values.
    &["codec", "method", "ring"],
    &["rules", "journal"],
    // Accounting and the tenant gate.
    &["drops", "quarantine", "tenant"],
    &["config"],
    &["route"],
    &["aggregate"],
    &["ingest", "dest"],
    &["cluster"],
    &[
        "listen",
        "replay",
        "service",
        "explain",
        "memory",
        "preflight",
    ],
    // Assembly.
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `crate::x` names in `text`, with comments and test sections removed.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let group = regex::Regex::new(r"crate::\{([^;]*?)\};").unwrap();
    for g in group.captures_iter(&code) {
        for part in g[1].split(',') {
            let name = part
                .trim()
                .trim_start_matches('{')
                .split("::")
                .next()
                .unwrap();
            let name = name.trim().trim_matches(|c| c == '{' || c == '}');
            if !name.is_empty() && name != "self" {
                out.insert(name.to_string());
            }
        }
    }
    let single = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    for m in single.captures_iter(&code) {
        out.insert(m[1].to_string());
    }
    out
}

/// Top-level module → the modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_str().unwrap();
            if !name.ends_with(".rs") || name == "tests.rs" || name == "fault_tests.rs" {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let deps = g.entry(top.clone()).or_default();
            deps.extend(imports(&text).into_iter().filter(|d| *d != top));
        }
    }
    g
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    let mut wrong = Vec::new();
    for (module, deps) in &g {
        let Some(mine) = layer_of(module) else {
            wrong.push(format!(
                "{module} is on no layer: add it to LAYERS and the docs"
            ));
            continue;
        };
        for d in deps {
            match layer_of(d) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!("{module} imports {d}, on its own layer or above")),
                None => wrong.push(format!("{module} imports {d}, which is on no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "module graph:\n{}", wrong.join("\n"));
    // The table names only modules that exist, so it cannot go stale unnoticed.
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            g.contains_key(*m),
            "LAYERS names {m}, which is not a module"
        );
    }
}

#[test]
fn the_import_scanner_sees_groups_and_paths_but_not_comments_or_tests() {
    let text = "use crate::{a::X, b};\n// crate::c\nfn f() { crate::d::g(); }\n\
                #[cfg(test)]\nmod tests { use crate::e; }\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["a", "b", "d"]);
}
