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
    // The loss ledger (a file written through the journal's IO).
    &["ledger"],
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
    let code = code_of(text);
    let mut out = BTreeSet::new();
    let group = regex::Regex::new(r"crate::\{([^;]*?)\};").unwrap();
    for g in group.captures_iter(&code) {
        names_in(&g[1], &mut out);
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
            if !name.ends_with(".rs") || is_test_file(name) {
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

/// `text` without comments and test sections (what [`imports`] scans).
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a file is a test file (its code is not part of the module graph).
fn is_test_file(name: &str) -> bool {
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// Every `.rs` file under `dir`, recursively, with its module depth below `dir`'s
/// children (`x.rs` and `x/mod.rs` are 0, `x/y.rs` is 1, ...).
fn files_under(dir: &Path, depth: usize, out: &mut Vec<(std::path::PathBuf, usize)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, depth + 1, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && !is_test_file(p.file_name().unwrap().to_str().unwrap())
        {
            let d = if p.file_name().unwrap() == "mod.rs" {
                depth
            } else {
                depth + 1
            };
            out.push((p, d));
        }
    }
}

/// The names a module at `depth` below a folder's children refers to in the folder:
/// `super::x` from a child (one more `super::` per level down), and
/// `crate::<folder path>::x` from anywhere.
fn sibling_refs(code: &str, depth: usize, crate_path: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let supers = regex::Regex::new(r"(?:^|[^:\w])((?:super::)+)(\{[^;]*?\}|\w+)").unwrap();
    for c in supers.captures_iter(code) {
        if c[1].len() / "super::".len() != depth + 1 {
            continue;
        }
        names_in(&c[2], &mut out);
    }
    let krate = regex::Regex::new(&format!(
        r"crate::{}::(\{{[^;]*?\}}|\w+)",
        regex::escape(crate_path)
    ))
    .unwrap();
    for c in krate.captures_iter(code) {
        names_in(&c[1], &mut out);
    }
    out
}

/// The first segment of each path in `x` (`a` or a group `{a::B, c}`).
fn names_in(x: &str, out: &mut BTreeSet<String>) {
    for part in x.trim_matches(|c| c == '{' || c == '}').split(',') {
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

/// Per folder of `src/` (its module path, `journal`, `aggregate::worker`), each
/// submodule (a file or a subfolder, `mod.rs` aside) and the siblings it imports.
fn folder_graphs(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graphs = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let rel = dir.strip_prefix(src).unwrap();
        let crate_path = rel
            .components()
            .map(|c| c.as_os_str().to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("::");
        let mut children: BTreeMap<String, Vec<(std::path::PathBuf, usize)>> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                dirs.push(p.clone());
                let mut files = Vec::new();
                files_under(&p, 0, &mut files);
                children.insert(name, files);
            } else if name.ends_with(".rs")
                && !["mod.rs", "lib.rs", "main.rs"].contains(&name.as_str())
                && !is_test_file(&name)
            {
                children.insert(name.trim_end_matches(".rs").to_string(), vec![(p, 0)]);
            }
        }
        if crate_path.is_empty() {
            // The crate root: its children's imports are the layers' business.
            continue;
        }
        let names: BTreeSet<String> = children.keys().cloned().collect();
        let mut g = BTreeMap::new();
        for (child, files) in &children {
            let mut deps = BTreeSet::new();
            for (f, depth) in files {
                let code = code_of(&std::fs::read_to_string(f).unwrap());
                deps.extend(sibling_refs(&code, *depth, &crate_path));
            }
            deps.retain(|d| names.contains(d) && d != child);
            g.insert(child.clone(), deps);
        }
        graphs.insert(crate_path, g);
    }
    graphs
}

/// A cycle in `g`, as the modules on it, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_folder_has_an_import_cycle_among_its_submodules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = folder_graphs(&src);
    assert!(graphs.contains_key("journal") && graphs.contains_key("aggregate::worker"));
    let cycles: Vec<String> = graphs
        .iter()
        .filter_map(|(folder, g)| find_cycle(g).map(|c| format!("{folder}: {}", c.join(" -> "))))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles inside folders:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_folder_scanner_sees_siblings_at_every_depth_and_finds_cycles() {
    let code = "use super::{writer::X, io};\nuse super::super::up;\nfn f() { crate::j::seg::g(); }";
    let found: Vec<String> = sibling_refs(code, 0, "j").into_iter().collect();
    assert_eq!(found, ["io", "seg", "writer"]);
    let deeper: Vec<String> = sibling_refs(code, 1, "j").into_iter().collect();
    assert_eq!(deeper, ["seg", "up"]);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    let mut acyclic = g.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
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
