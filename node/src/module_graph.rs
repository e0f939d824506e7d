//! The crate's module graph, read from the source: no top-level module depends on one that
//! depends on it, and the replication layer (`cluster`) depends on no domain module. A new
//! `use crate::…` that closes a cycle fails here, naming the file and line of each edge.
//!
//! An edge is any `crate::MODULE` path (or `crate::{MODULE, …}`) outside comments and outside
//! the `#[cfg(test)] mod tests` at the end of a file (tests may reach across layers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `cluster/` may use: the storage and plumbing below it, nothing of the domain.
const CLUSTER_MAY_USE: &[&str] = &["config", "error", "observe", "store", "tls"];

type Edges = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    // The crate root, the binary and this test are no modules of the graph.
    (!matches!(name, "lib" | "main" | "secrets_cli" | "module_graph")).then(|| name.to_string())
}

fn paths_named(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn edges() -> Edges {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = Edges::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]")
                && lines
                    .get(n + 1)
                    .is_some_and(|next| next.trim_start().starts_with("mod tests"))
            {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            let code = code.split(" //").next().unwrap_or(code);
            for to in paths_named(code) {
                if to != from {
                    let at = format!("{}:{}", file.strip_prefix(&src).unwrap().display(), n + 1);
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert(at);
                }
            }
        }
    }
    edges
}

/// A cycle through `start`, as the modules on it, if there is one.
fn cycle_through(edges: &Edges, start: &str) -> Option<Vec<String>> {
    fn walk(
        edges: &Edges,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in edges.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(edges, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(edges, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_depends_on_one_that_depends_on_it() {
    let edges = edges();
    assert!(
        edges.contains_key("cluster") && edges.contains_key("api"),
        "{edges:?}"
    );
    let mut cycles = Vec::new();
    for module in edges.keys() {
        if let Some(cycle) = cycle_through(&edges, module) {
            let mut shown = Vec::new();
            for (i, from) in cycle.iter().enumerate() {
                let to = &cycle[(i + 1) % cycle.len()];
                shown.push(format!("{from} -> {to} ({})", edges[from][to]));
            }
            cycles.push(shown.join(", "));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_replication_layer_uses_no_domain_module() {
    let edges = edges();
    let used: Vec<String> = edges["cluster"]
        .iter()
        .filter(|(to, _)| !CLUSTER_MAY_USE.contains(&to.as_str()))
        .map(|(to, at)| format!("{to} ({at})"))
        .collect();
    assert!(used.is_empty(), "cluster/ uses {}", used.join(", "));
}
