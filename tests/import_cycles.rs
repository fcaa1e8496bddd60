//! No import cycles between the library's source files.
//!
//! Reads every `src/**/*.rs` of the library (not `main.rs`, the binary's own crate),
//! finds which file each one imports from, and fails naming any cycle that is not in
//! [`KNOWN_CYCLES`], with the names that tie it; it also fails when a known cycle is
//! gone, so that the list only shrinks. What counts as an import of file B by file A:
//! a `use` whose path resolves into B (`crate::…`, `super::…`, `self::…`, or a child
//! module's name), or a path written in the code that does (`crate::metrics::metrics()`,
//! or `rpc::server::stopped` after `use crate::rpc`). The deepest module file that the
//! path names is the file meant. Not imports: a parent's `mod child;` declarations, and
//! a module's use of its own ancestors (`super::…` from a child: a child sees its
//! parent's items by Rust's scoping, and the parent owns it), so a `mod.rs` that
//! declares, re-exports or uses its children and holds what they share is no cycle.
//!
//! It reads source as text (comments, strings and characters skipped), without
//! expanding macros; that is enough for this crate, and its own tests below show it
//! finds a planted cycle and ignores what is not one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Cycles that existed when this check was written, each as its files, sorted; the
/// work that removes one deletes its line here. Any other cycle fails the check.
/// None is left: the last two (access/config/limits, and the driver's concern files
/// around runner.rs) went with issue #22. Keep it that way.
const KNOWN_CYCLES: &[&[&str]] = &[];

#[test]
fn the_library_has_no_new_import_cycles() {
    // IMPORT_CYCLES_ROOT=DIR reads another checkout (to see the cycles it has).
    let root = std::env::var_os("IMPORT_CYCLES_ROOT").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    let mut files = Vec::new();
    collect(&root.join("src"), &root, &mut files);
    let graph = Graph::read(&files);
    let found = graph.cycles();
    for cycle in &found {
        eprintln!("import cycle:\n{cycle}");
    }
    let mut failures = Vec::new();
    for cycle in &found {
        if !KNOWN_CYCLES
            .iter()
            .any(|known| known[..] == cycle.files[..])
        {
            failures.push(format!("new import cycle:\n{cycle}"));
        }
    }
    for known in KNOWN_CYCLES {
        if !found.iter().any(|cycle| cycle.files[..] == known[..]) {
            failures.push(format!(
                "the known cycle {known:?} is gone: delete it from KNOWN_CYCLES"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `.rs` file below `dir`, as (path from the crate root, text); not `src/main.rs`.
fn collect(dir: &Path, root: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, files);
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .expect("below the root")
            .to_string_lossy()
            .replace('\\', "/");
        if relative.ends_with(".rs") && relative != "src/main.rs" {
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("reading {relative}: {error}"));
            files.push((relative, text));
        }
    }
}

/// The module path of a file below `src/`: `src/lib.rs` is the crate, `src/a/mod.rs`
/// and `src/a.rs` are `a`, `src/a/b.rs` is `a::b`.
fn module_of(file: &str) -> Vec<String> {
    let inner = file.strip_prefix("src/").unwrap_or(file);
    let inner = inner.strip_suffix(".rs").unwrap_or(inner);
    let mut path: Vec<String> = inner.split('/').map(str::to_string).collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
}

/// Which file imports which, and the names each import takes.
struct Graph {
    /// file -> file it imports -> names taken.
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// One cycle: its files (sorted) and the imports between them.
#[derive(Debug)]
struct Cycle {
    files: Vec<String>,
    ties: Vec<(String, String, Vec<String>)>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  {}", self.files.join(", "))?;
        for (from, to, names) in &self.ties {
            writeln!(f, "  {from} -> {to}: {}", names.join(", "))?;
        }
        Ok(())
    }
}

impl Graph {
    fn read(files: &[(String, String)]) -> Graph {
        let modules: BTreeMap<Vec<String>, String> = files
            .iter()
            .map(|(file, _)| (module_of(file), file.clone()))
            .collect();
        let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (file, text) in files {
            let own = module_of(file);
            let out = edges.entry(file.clone()).or_default();
            for (module, path) in paths(&tokens(text)) {
                let mut current = own.clone();
                current.extend(module);
                let Some(full) = resolve(&current, own.len(), &path, &modules) else {
                    continue;
                };
                // The deepest module file the path names.
                let Some(depth) = (0..=full.len())
                    .rev()
                    .find(|&n| modules.contains_key(&full[..n]))
                else {
                    continue;
                };
                let target = &full[..depth];
                // Itself, or one of its ancestors: not an import (see the module docs).
                if own.starts_with(target) {
                    continue;
                }
                let name = full.get(depth).cloned().unwrap_or_else(|| "self".into());
                out.entry(modules[target].clone()).or_default().insert(name);
            }
        }
        Graph { edges }
    }

    /// The strongly connected components of more than one file (Tarjan's algorithm).
    fn cycles(&self) -> Vec<Cycle> {
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<String>>,
        }
        fn visit<'a>(state: &mut State<'a>, file: &'a str) {
            let n = state.index.len();
            state.index.insert(file, n);
            state.low.insert(file, n);
            state.stack.push(file);
            state.on_stack.insert(file);
            let graph = state.graph;
            for next in graph.edges.get(file).into_iter().flat_map(|out| out.keys()) {
                let next = next.as_str();
                if !state.index.contains_key(next) {
                    visit(state, next);
                    let low = state.low[file].min(state.low[next]);
                    state.low.insert(file, low);
                } else if state.on_stack.contains(next) {
                    let low = state.low[file].min(state.index[next]);
                    state.low.insert(file, low);
                }
            }
            if state.low[file] == state.index[file] {
                let mut component = Vec::new();
                while let Some(top) = state.stack.pop() {
                    state.on_stack.remove(top);
                    component.push(top.to_string());
                    if top == file {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    state.found.push(component);
                }
            }
        }
        let mut state = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for file in self.edges.keys() {
            if !state.index.contains_key(file.as_str()) {
                visit(&mut state, file);
            }
        }
        let mut cycles: Vec<Cycle> = state
            .found
            .into_iter()
            .map(|files| {
                let mut ties = Vec::new();
                for from in &files {
                    for (to, names) in &self.edges[from] {
                        if files.contains(to) {
                            ties.push((from.clone(), to.clone(), names.iter().cloned().collect()));
                        }
                    }
                }
                Cycle { files, ties }
            })
            .collect();
        cycles.sort_by(|a, b| a.files.cmp(&b.files));
        cycles
    }
}

/// Where `path`, written in module `current` of a file whose own module is the first
/// `floor` segments, leads: an absolute module path of this crate, or `None` for
/// another crate's path.
fn resolve(
    current: &[String],
    floor: usize,
    path: &[String],
    modules: &BTreeMap<Vec<String>, String>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (current.to_vec(), &path[1..]),
        "super" => {
            let mut base = current.to_vec();
            let supers = path.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                base.pop()?;
            }
            (base, &path[supers..])
        }
        // A child module of this file's module, 2018-style (from an inline module too),
        // else another crate's name.
        _ => {
            let mut scope = current.to_vec();
            loop {
                let mut candidate = scope.clone();
                candidate.push(first.clone());
                if modules.contains_key(&candidate) {
                    break (scope, path);
                }
                if scope.len() <= floor {
                    return None;
                }
                scope.pop();
            }
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The identifiers, `::` and punctuation of Rust source, without comments, strings,
/// character literals and lifetimes.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && at(i + 1) == 'r'))
            && matches!(at(i + 1 + usize::from(c == 'b')), '"' | '#')
            && raw_string_end(&chars, i + 1 + usize::from(c == 'b')).is_some()
        {
            i = raw_string_end(&chars, i + 1 + usize::from(c == 'b')).unwrap_or(chars.len());
        } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
            i += if c == 'b' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let start = if c == 'b' { i + 1 } else { i };
            if at(start + 1) == '\\' {
                // An escaped character: up to the closing quote.
                i = start + 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(start + 2) == '\'' {
                i = start + 3;
            } else {
                // A lifetime or label: its name is no path.
                i = start + 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token::Sep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// With `open` at the `#`s or quote after a raw string's `r`: the index after it.
fn raw_string_end(chars: &[char], open: usize) -> Option<usize> {
    let hashes = chars[open..].iter().take_while(|&&c| c == '#').count();
    if chars.get(open + hashes) != Some(&'"') {
        return None;
    }
    let mut i = open + hashes + 1;
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// Every path the source names, with the inline module it stands in (relative to the
/// file's): the paths of `use` trees, and `a::b…` paths written in the code whose first
/// segment is `crate`, `super`, `self` or a name a `use` brought in (then replaced by
/// that `use`'s path).
fn paths(tokens: &[Token]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut i = 0;
    while i < tokens.len() {
        let module = || {
            inline
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>()
        };
        match &tokens[i] {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some(name), Some(Token::Punct('{'))) = (ident(i + 1), tokens.get(i + 2)) {
                    inline.push((name.to_string(), depth + 1));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Token::Ident(word) if word == "use" => {
                let mut trees = Vec::new();
                i += 1;
                use_tree(tokens, &mut i, Vec::new(), &mut trees);
                for (path, name) in trees {
                    let path = expand(path, &aliases);
                    if let Some(name) = name {
                        aliases.insert(name, path.clone());
                    }
                    out.push((module(), path));
                }
                continue;
            }
            Token::Ident(word)
                if tokens.get(i + 1) == Some(&Token::Sep)
                    && (matches!(word.as_str(), "crate" | "super" | "self")
                        || aliases.contains_key(word))
                    && (i == 0 || tokens[i - 1] != Token::Sep) =>
            {
                let mut path = vec![word.clone()];
                i += 1;
                while tokens.get(i) == Some(&Token::Sep) {
                    match ident(i + 1) {
                        Some(next) => path.push(next.to_string()),
                        None => break,
                    }
                    i += 2;
                }
                out.push((module(), expand(path, &aliases)));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `path` with its first segment replaced by what a `use` made that name mean.
fn expand(path: Vec<String>, aliases: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    match path.first().and_then(|first| aliases.get(first)) {
        Some(meaning) => meaning.iter().chain(&path[1..]).cloned().collect(),
        None => path,
    }
}

/// Reads one use tree from `tokens[*i]` on (up to `;`, `,` or `}`) into `out`: every
/// leaf as its whole path and the name it brings in (none for a glob).
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let mut path = prefix;
    let mut rename = None;
    let mut glob = false;
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(name)) if name == "as" => {
                if let Some(Token::Ident(alias)) = tokens.get(*i + 1) {
                    rename = Some(alias.clone());
                }
                *i += 2;
            }
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
            }
            Some(Token::Sep) => *i += 1,
            Some(Token::Punct('*')) => {
                glob = true;
                *i += 1;
            }
            Some(Token::Punct('{')) => {
                *i += 1;
                while !matches!(tokens.get(*i), None | Some(Token::Punct('}'))) {
                    use_tree(tokens, i, path.clone(), out);
                    if tokens.get(*i) == Some(&Token::Punct(',')) {
                        *i += 1;
                    }
                }
                *i += 1;
                if tokens.get(*i) == Some(&Token::Punct(';')) {
                    *i += 1;
                }
                return;
            }
            Some(Token::Punct(';')) => {
                *i += 1;
                break;
            }
            Some(Token::Punct(',' | '}')) | None => break,
            Some(Token::Punct(_)) => *i += 1,
        }
    }
    // `use a::b::{self}` brings in `b` itself.
    if path.last().is_some_and(|last| last == "self") {
        path.pop();
    }
    let name = match glob {
        true => None,
        false => rename.or_else(|| path.last().cloned()),
    };
    out.push((path, name));
}

// The check's own tests, on small synthetic trees: it must be able to fail.

fn tree(files: &[(&str, &str)]) -> Vec<Cycle> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(path, text)| (path.to_string(), text.to_string()))
        .collect();
    Graph::read(&files).cycles()
}

#[test]
fn a_planted_cycle_between_siblings_is_found_and_named() {
    let cycles = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("src/a.rs", "use crate::b::Bee;\npub struct Ay;\n"),
        ("src/b.rs", "use super::a::{self, Ay};\npub struct Bee;\n"),
    ]);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0].files, ["src/a.rs", "src/b.rs"]);
    let shown = cycles[0].to_string();
    assert!(shown.contains("src/a.rs -> src/b.rs: Bee"), "{shown}");
    assert!(shown.contains("src/b.rs -> src/a.rs: Ay, self"), "{shown}");
}

#[test]
fn a_cycle_through_a_path_in_the_code_is_found() {
    // No `use` on one side: a path written in a function body ties it.
    let cycles = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("src/a/mod.rs", "pub mod x;\npub fn f() { crate::b::g() }\n"),
        ("src/a/x.rs", "pub fn h() {}\n"),
        ("src/b.rs", "use crate::c;\npub fn g() { c::i() }\n"),
        ("src/c.rs", "// use crate::b; is only a comment\nuse crate::a::x;\npub fn i() { let _ = \"crate::b::g\"; x::h() }\n"),
        ("src/d.rs", "pub fn j() { crate::a::x::h() }\n"),
    ]);
    assert!(cycles.is_empty(), "{cycles:?}");
    let cycles = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("src/a/mod.rs", "pub mod x;\n"),
        ("src/a/x.rs", "pub fn h() { crate::b::g() }\n"),
        ("src/b.rs", "use crate::a;\npub fn g() { a::x::h() }\n"),
    ]);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0].files, ["src/a/x.rs", "src/b.rs"]);
}

#[test]
fn a_parent_and_its_children_are_no_cycle() {
    // The parent declares, re-exports and uses its children; they use what it holds.
    let cycles = tree(&[
        ("src/lib.rs", "pub mod store;\n"),
        (
            "src/store/mod.rs",
            "mod wal;\npub use wal::Wal;\nuse wal::SUFFIX;\npub struct Error;\n\
             #[cfg(test)]\nmod tests { use super::*; use crate::store::wal::Wal; }\n",
        ),
        (
            "src/store/wal.rs",
            "use super::Error;\npub struct Wal;\npub const SUFFIX: &str = \"\";\n",
        ),
    ]);
    assert!(cycles.is_empty(), "{cycles:?}");
}

#[test]
fn tokens_skip_comments_strings_and_lifetimes() {
    let text = "fn f<'a>(x: &'a str) -> char { /* crate::a::b */ let _ = r#\"crate::x\"#; \
                let _ = b'\\''; 'q' } // crate::y";
    let names: Vec<Token> = tokens(text)
        .into_iter()
        .filter(|t| matches!(t, Token::Ident(_) | Token::Sep))
        .collect();
    let idents: Vec<&str> = names
        .iter()
        .filter_map(|t| match t {
            Token::Ident(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        idents,
        ["fn", "f", "x", "str", "char", "let", "_", "let", "_"]
    );
}
