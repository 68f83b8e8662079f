//! `proxy/src` has no import cycle: its modules form layers, each using only those below it,
//! so a reader can start at the bottom and every module can be tested with only what it uses.
//!
//! The module tree is read from `lib.rs` down through its `mod` items; every `use` and every
//! path written in the code (`crate::…`, `super::…`, `self::…`, a child module's name) is an
//! edge to the module that defines the item, following `pub use` re-exports to the definition.
//! Test-only items (`#[cfg(test)]`) are left out: tests may use anything. The check fails with
//! every cycle it finds, spelled out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A module's path from the crate root: `[]` for the root, `["upstream", "h1"]`, ...
type ModPath = Vec<String>;

#[derive(Debug, Default)]
struct Module {
    /// Names this module re-exports (`pub use a::b::C` or `pub use a::b::C as D`): the name
    /// and the absolute path it stands for.
    reexports: BTreeMap<String, ModPath>,
    /// Absolute paths this module uses, as written (resolved later).
    uses: Vec<ModPath>,
    /// Child modules by name.
    children: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct CrateGraph {
    modules: BTreeMap<ModPath, Module>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Flattens a use tree into (path, name bound) pairs; globs bind nothing.
fn flatten(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(ModPath, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name != "self" {
                path.push(name.clone());
            }
            let bound = path.last().cloned();
            out.push((path, bound));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((path, Some(r.rename.to_string())));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), None)),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                flatten(tree, prefix, out);
            }
        }
    }
}

/// Collects the paths written in a module's non-test items.
struct PathCollector<'a> {
    uses: &'a mut Vec<ModPath>,
}

impl<'ast> Visit<'ast> for PathCollector<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.uses
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }

    // `pub(crate)` and `pub(super)` name a module, but use nothing of it.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item(&mut self, item: &'ast syn::Item) {
        // Nested test-only items and inline modules are handled by the module walk.
        if is_test_only(item_attrs(item)) || matches!(item, syn::Item::Mod(_) | syn::Item::Use(_)) {
            return;
        }
        syn::visit::visit_item(self, item);
    }
}

impl CrateGraph {
    /// Reads the crate whose root is `root` (`lib.rs`), through `read`.
    fn read(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Self {
        let mut graph = Self::default();
        let text = read(root).unwrap_or_else(|| panic!("cannot read {}", root.display()));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let dir = root.parent().map(Path::to_path_buf).unwrap_or_default();
        graph.add_module(Vec::new(), &file.items, &dir, read);
        graph
    }

    fn add_module(
        &mut self,
        path: ModPath,
        items: &[syn::Item],
        dir: &Path,
        read: &dyn Fn(&Path) -> Option<String>,
    ) {
        let mut module = Module::default();
        for item in items.iter().filter(|i| !is_test_only(item_attrs(i))) {
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    module.children.insert(name.clone());
                    let mut child = path.clone();
                    child.push(name.clone());
                    match &m.content {
                        Some((_, inner)) => self.add_module(child, inner, &dir.join(&name), read),
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let (file, child_dir) = match read(&flat) {
                                Some(text) => (text, dir.join(&name)),
                                None => {
                                    let nested = dir.join(&name).join("mod.rs");
                                    let text = read(&nested).unwrap_or_else(|| {
                                        panic!("no file for module {}", child.join("::"))
                                    });
                                    (text, dir.join(&name))
                                }
                            };
                            let parsed = syn::parse_file(&file)
                                .unwrap_or_else(|e| panic!("{}: {e}", child.join("::")));
                            self.add_module(child, &parsed.items, &child_dir, read);
                        }
                    }
                }
                syn::Item::Use(u) => {
                    let mut flat = Vec::new();
                    flatten(&u.tree, &mut Vec::new(), &mut flat);
                    let public = !matches!(u.vis, syn::Visibility::Inherited);
                    for (used, bound) in flat {
                        if public && let Some(name) = bound {
                            module.reexports.insert(name, used.clone());
                        }
                        module.uses.push(used);
                    }
                }
                other => PathCollector {
                    uses: &mut module.uses,
                }
                .visit_item(other),
            }
        }
        self.modules.insert(path, module);
    }

    /// `written` (as written in module `at`) made absolute, or `None` for another crate's.
    fn absolute(&self, at: &ModPath, written: &ModPath) -> Option<ModPath> {
        let first = written.first()?;
        let (mut base, rest) = match first.as_str() {
            "crate" => (Vec::new(), &written[1..]),
            "self" => (at.clone(), &written[1..]),
            "super" => {
                let mut base = at.clone();
                let mut rest = &written[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            name if self
                .modules
                .get(at)
                .is_some_and(|m| m.children.contains(name)) =>
            {
                (at.clone(), &written[..])
            }
            _ => return None,
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module that defines what `path` (absolute) names, through re-exports.
    fn defining_module(&self, path: &ModPath, depth: usize) -> Option<ModPath> {
        let mut module = Vec::new();
        for (i, segment) in path.iter().enumerate() {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.modules.contains_key(&next) {
                module = next;
                continue;
            }
            // `segment` is an item of `module`, or a name it re-exports.
            let reexport = self
                .modules
                .get(&module)
                .and_then(|m| m.reexports.get(segment));
            return match reexport {
                // Another crate's item, under a name of this one: no edge.
                Some(target) if depth < 16 => {
                    let mut target = self.absolute(&module, target)?;
                    target.extend(path[i + 1..].iter().cloned());
                    self.defining_module(&target, depth + 1)
                }
                _ => Some(module),
            };
        }
        Some(module)
    }

    /// Module -> the modules it uses (never itself, its ancestors' re-exports followed).
    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (at, module) in &self.modules {
            let targets = edges.entry(at.clone()).or_default();
            for written in &module.uses {
                let Some(absolute) = self.absolute(at, written) else {
                    continue;
                };
                if let Some(target) = self.defining_module(&absolute, 0)
                    && target != *at
                {
                    targets.insert(target);
                }
            }
        }
        edges
    }
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, node: &'a ModPath) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.clone());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !tarjan.index.contains_key(node) {
            tarjan.visit(node);
        }
    }
    tarjan.found
}

fn name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// Modules by layer: each uses only modules of lower layers.
fn layers(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> BTreeMap<usize, Vec<String>> {
    fn depth(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        memo: &mut BTreeMap<ModPath, usize>,
    ) -> usize {
        if let Some(d) = memo.get(node) {
            return *d;
        }
        let d = edges
            .get(node)
            .into_iter()
            .flatten()
            .map(|next| depth(next, edges, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(node.clone(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut by_layer: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for node in edges.keys() {
        let d = depth(node, edges, &mut memo);
        by_layer.entry(d).or_default().push(name(node));
    }
    by_layer
}

fn from_disk(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

#[test]
fn proxy_src_has_no_import_cycle() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let graph = CrateGraph::read(&root, &from_disk);
    let edges = graph.edges();
    // The walk must have seen the crate, or the check below proves nothing.
    let edge_count: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        graph.modules.len() >= 20,
        "only {} modules read",
        graph.modules.len()
    );
    assert!(edge_count >= 60, "only {edge_count} edges read");

    let found = cycles(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|component| {
            let inside: BTreeSet<&ModPath> = component.iter().collect();
            let detail: Vec<String> = component
                .iter()
                .map(|m| {
                    let to: Vec<String> = edges[m]
                        .iter()
                        .filter(|t| inside.contains(t))
                        .map(name)
                        .collect();
                    format!("    {} -> {}", name(m), to.join(", "))
                })
                .collect();
            format!(
                "  cycle of {} modules:\n{}",
                component.len(),
                detail.join("\n")
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles in proxy/src:\n{}",
        report.join("\n")
    );

    for (layer, modules) in layers(&edges) {
        println!("layer {layer}: {}", modules.join(" "));
    }
}

/// The check finds a cycle that goes through a re-export and a `super::` path, and passes a
/// crate whose only upward path is in a test.
#[test]
fn the_check_sees_cycles_through_reexports_and_skips_tests() {
    let read = |with_cycle: bool| {
        let inner = if with_cycle {
            "pub fn f() { crate::b::g(super::Thing) }"
        } else {
            "#[cfg(test)] mod tests { fn t() { crate::b::g(super::super::a::Thing) } }"
        };
        let files: BTreeMap<PathBuf, String> = [
            ("src/lib.rs", "pub mod a; pub mod b; pub use a::Thing;"),
            (
                "src/a.rs",
                "pub struct Thing; pub mod inner; pub fn h() { inner::f() }",
            ),
            ("src/a/inner.rs", inner),
            ("src/b.rs", "use crate::Thing; pub fn g(_: Thing) {}"),
        ]
        .into_iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_owned()))
        .collect();
        CrateGraph::read(Path::new("src/lib.rs"), &move |p: &Path| {
            files.get(p).cloned()
        })
    };
    let cyclic = read(true).edges();
    let found = cycles(&cyclic);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].iter().map(name).collect::<Vec<_>>(),
        ["a", "a::inner", "b"]
    );
    let fine = read(false).edges();
    assert!(cycles(&fine).is_empty(), "{fine:?}");
    assert!(fine[&vec!["b".to_owned()]].contains(&vec!["a".to_owned()]));
}
