//! The module graph of `src/`: arrows only point down the layers written here, so no import
//! cycle can form between modules. A new `use crate::…` that points up (or names a module this
//! table does not know) fails this test with the file and the edge.
//!
//! `cargo test --test architecture -- --nocapture` also prints the figures the issue tracks:
//! edges, the largest strongly connected component of the file graph, files per module, `pub`
//! against `pub(crate)` items, and the longest functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of lower layers (and itself), never a
/// module of its own layer or a higher one.
const LAYERS: &[&[&str]] = &[
    // Foundations: no dependency on anything linkgate-specific.
    &["time", "hash", "body", "tls", "field", "shutdown", "metrics", "runtime"],
    // The event sink's own Redis connection (over `tls` when asked).
    &["resp"],
    // The link model and its rules.
    &["link"],
    &["config"],
    // Who becomes a lead, how a conversion is attributed: plain records and functions.
    &["attribution"],
    // Commission as a ledger: records, entries, and the decisions over a book.
    &["commission"],
    // Analytics: what a tap says (device, app, province), buckets over time, the query's rules.
    &["analytics"],
    // SMS sends, delivery receipts in each provider's format, the funnel.
    &["sms"],
    // Where records live.
    &["store"],
    // Which link a code names (cache in front of the store).
    &["resolve"],
    // The tap: who is tapping, the events it becomes, the hot path's bounded queue.
    &["click"],
    // Errors as HTTP answers; the per-key API rate limit.
    &["error"],
    &["limit"],
    // Events downstream: batcher, sinks, spool.
    &["stream"],
    // Webhooks: events read back from the durable pipeline and POSTed to subscribers.
    &["webhook"],
    // The application state and its assembly from a Config.
    &["app"],
    // Handlers.
    &["redirect", "api"],
    // The browser console: pages rendered from the API's own handlers.
    &["console"],
    // Accept loop, routing, admin listener, drain.
    &["server"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

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

/// The file's top-level module (`src/store/redis/links.rs` → `store`), or `None` for the crate
/// root and the binary.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The file's code without comments (line comments, doc comments) and string literals' insides
/// are kept: `crate::` inside a string is rare enough and would only add an edge.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| match l.find("//") {
        Some(i) => &l[..i],
        None => l,
    })
}

/// Every `crate::<module>` a file names.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !after.starts_with('{'),
                "write one `use crate::<module>::…` per module (a grouped `crate::{{…}}` hides edges from this test): {line}"
            );
            out.insert(name);
            rest = after;
        }
    }
    out
}

struct Source {
    rel: PathBuf,
    module: Option<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(src()).unwrap().to_path_buf();
            Source {
                module: module_of(&rel),
                text: std::fs::read_to_string(&path).unwrap(),
                rel,
            }
        })
        .collect()
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_is_in_a_layer() {
    let root = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<&str> = root
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect();
    assert!(!declared.is_empty());
    for m in &declared {
        assert!(
            layer_of(m).is_some(),
            "src/{m}: add the module to LAYERS in tests/architecture.rs"
        );
    }
    for layer in LAYERS {
        for m in *layer {
            assert!(
                declared.contains(m),
                "LAYERS names `{m}`, which lib.rs does not declare"
            );
        }
    }
}

#[test]
fn imports_only_point_down_the_layers() {
    let mut wrong = Vec::new();
    for s in sources() {
        let Some(module) = &s.module else { continue };
        let Some(own) = layer_of(module) else { continue };
        for target in crate_refs(&s.text) {
            if &target == module {
                continue;
            }
            match layer_of(&target) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!(
                    "{}: {module} -> {target} points up or sideways",
                    s.rel.display()
                )),
                None => wrong.push(format!("{}: {module} -> {target}: unknown module", s.rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

/// Strongly connected components of a directed graph (Tarjan), largest first.
fn components(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort_by_key(|c| std::cmp::Reverse(c.len()));
    s.out
}

#[test]
fn no_import_cycle_between_modules() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources() {
        let Some(module) = s.module else { continue };
        let targets = crate_refs(&s.text);
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(targets.into_iter().filter(|t| *t != module));
    }
    let cycles: Vec<_> = components(&graph).into_iter().filter(|c| c.len() > 1).collect();
    assert!(cycles.is_empty(), "modules in an import cycle: {cycles:?}");
}

/// The figures of the module graph, printed (run with `--nocapture`).
#[test]
fn report_module_figures() {
    let sources = sources();
    // File graph: a file → the files of the modules it names (a module's files all count, as
    // `crate::store::X` may be defined in any of them).
    let mut files_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &sources {
        if let Some(m) = &s.module {
            files_of.entry(m.clone()).or_default().push(s.rel.display().to_string());
        }
    }
    let mut module_edges = 0;
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &sources {
        let Some(m) = &s.module else { continue };
        let file = s.rel.display().to_string();
        graph.entry(file.clone()).or_default();
        for t in crate_refs(&s.text) {
            if &t != m {
                module_edges += 1;
                // Point at the module's root file: the module as a whole.
                if let Some(root) = files_of.get(&t).and_then(|fs| {
                    fs.iter()
                        .find(|f| **f == format!("{t}/mod.rs") || **f == format!("{t}.rs"))
                }) {
                    graph.get_mut(&file).unwrap().insert(root.clone());
                }
            }
        }
        // A module's root reaches its children (they are part of it).
        if file == format!("{m}/mod.rs") || file == format!("{m}.rs") {
            for f in &files_of[m] {
                if *f != file {
                    graph.get_mut(&file).unwrap().insert(f.clone());
                }
            }
        }
    }
    let comps = components(&graph);
    let biggest = comps.first().map_or(0, Vec::len);
    let (mut public, mut crate_public) = (0, 0);
    let mut functions: Vec<(usize, String)> = Vec::new();
    for s in &sources {
        for line in code_lines(&s.text) {
            let t = line.trim_start();
            if t.starts_with("pub(crate) ") {
                crate_public += 1;
            } else if t.starts_with("pub ") && !t.starts_with("pub use") && !t.starts_with("pub mod") {
                public += 1;
            }
        }
        functions.extend(long_functions(&s.rel, &s.text));
    }
    functions.sort_by(|a, b| b.cmp(a));
    println!("module edges (file → other module): {module_edges}");
    println!(
        "files in the largest strongly connected component: {biggest} of {}",
        sources.len()
    );
    if biggest > 1 {
        println!("  {:?}", comps[0]);
    }
    println!("files per module:");
    for (m, fs) in &files_of {
        println!("  {m}: {}", fs.len());
    }
    println!("items declared `pub`: {public}, `pub(crate)`: {crate_public}");
    println!("longest functions (lines):");
    for (n, name) in functions.iter().take(8) {
        println!("  {n} {name}");
    }
}

/// Functions and their length in lines, found by brace depth from each `fn` line.
fn long_functions(rel: &Path, text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let is_fn = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) async fn ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if !is_fn {
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        for (j, l) in lines[i..].iter().enumerate() {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                let name: String = t.split('(').next().unwrap_or(t).to_string();
                out.push((j + 1, format!("{}: {name}", rel.display())));
                break;
            }
            if !opened && l.trim_end().ends_with(';') {
                break;
            }
        }
    }
    out
}
