//! The store's modules stand in layers: no module reaches, directly or
//! through others, back into itself.
//!
//! The graph is read from the sources under `src/`: a module depends on
//! another when its code names `crate::other` (in a `use`, grouped or not,
//! or inline in a path), or names an item that `lib.rs` re-exports from
//! `other`. Comments are not code. `lib.rs` (the crate's face) and
//! `testing.rs` (test support) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules left out of the graph.
const EXCEPTED: &[&str] = &["lib", "testing"];

#[test]
fn store_modules_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("src/ lists").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 file name").to_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        sources.insert(name, text);
    }
    let lib = sources.get("lib").expect("src/lib.rs exists").clone();
    let modules: BTreeSet<String> = sources.keys().filter(|m| !EXCEPTED.contains(&m.as_str())).cloned().collect();
    assert!(modules.len() > 5, "too few modules found under {}", src.display());
    let reexports = reexports(&lib, &modules);
    let graph: Graph =
        modules.iter().map(|m| (m.clone(), dependencies(m, &sources[m], &modules, &reexports))).collect();
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the store's modules import each other in a circle:\n{}\n\nthe whole graph:\n{}",
        cycles.iter().map(|c| format!("  {}", c.join(" -> "))).collect::<Vec<_>>().join("\n"),
        render(&graph),
    );
}

/// Each module and the modules it depends on.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| format!("  {m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which module each name that `lib.rs` re-exports comes from.
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let code = without_comments(lib);
    let mut names = BTreeMap::new();
    for statement in use_statements(&code) {
        let tokens = tokens(statement);
        let mut at = 0;
        if tokens.first().map(String::as_str) == Some("crate") && tokens.get(1).map(String::as_str) == Some("::") {
            at = 2;
        }
        let Some(module) = tokens.get(at) else { continue };
        if !modules.contains(module) {
            continue;
        }
        let mut leaves = Vec::new();
        use_tree_leaves(&tokens, &mut at, &mut Vec::new(), &mut leaves);
        for name in leaves {
            names.insert(name, module.clone());
        }
    }
    names
}

/// The text of each `use` statement, from after `use` to before `;`.
fn use_statements(code: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let end = after.find(';').unwrap_or(after.len());
        found.push(&after[..end]);
        rest = &after[end..];
    }
    found
}

/// The names a use tree brings in (the last segment, or its alias).
fn use_tree_leaves(tokens: &[String], at: &mut usize, path: &mut Vec<String>, leaves: &mut Vec<String>) {
    while *at < tokens.len() {
        let token = tokens[*at].as_str();
        match token {
            "{" => {
                *at += 1;
                loop {
                    let depth = path.len();
                    use_tree_leaves(tokens, at, path, leaves);
                    path.truncate(depth);
                    match tokens.get(*at).map(String::as_str) {
                        Some(",") => *at += 1,
                        Some("}") => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            "::" => *at += 1,
            "," | "}" => {
                if let Some(last) = path.last() {
                    leaves.push(last.clone());
                }
                return;
            }
            "as" => {
                if let Some(alias) = tokens.get(*at + 1) {
                    leaves.push(alias.clone());
                }
                *at += 2;
                return;
            }
            _ => {
                path.push(token.to_owned());
                *at += 1;
            }
        }
    }
    if let Some(last) = path.last() {
        leaves.push(last.clone());
    }
}

/// The modules that `source` (the module `own`) depends on.
fn dependencies(
    own: &str,
    source: &str,
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let code = without_comments(source);
    let mut deps = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = find_word(rest, "crate") {
        rest = &rest[i + "crate".len()..];
        let tail = rest.trim_start();
        let Some(tail) = tail.strip_prefix("::") else { continue };
        for first in first_segments(tail) {
            let module = if modules.contains(&first) { Some(&first) } else { reexports.get(&first) };
            if let Some(module) = module {
                if module != own {
                    deps.insert(module.clone());
                }
            }
        }
    }
    deps
}

/// The first segment of a path after `crate::`, or of each path in a
/// group `{a, b::c, d::{e}}`.
fn first_segments(tail: &str) -> Vec<String> {
    let tail = tail.trim_start();
    if let Some(group) = tail.strip_prefix('{') {
        let mut found = Vec::new();
        let mut depth = 0usize;
        let mut item_start = true;
        for token in tokens(group) {
            match token.as_str() {
                "{" => depth += 1,
                "}" if depth == 0 => break,
                "}" => depth -= 1,
                "," if depth == 0 => item_start = true,
                _ if item_start && depth == 0 => {
                    found.push(token);
                    item_start = false;
                }
                _ => {}
            }
        }
        found
    } else {
        let ident: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            Vec::new()
        } else {
            vec![ident]
        }
    }
}

/// Where `word` first stands alone in `text` (not part of a longer name).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Names, `::` and single punctuation characters, in order.
fn tokens(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            let mut name = c.to_string();
            while let Some(&n) = chars.peek() {
                if !(n.is_alphanumeric() || n == '_') {
                    break;
                }
                name.push(n);
                chars.next();
            }
            found.push(name);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            found.push("::".into());
        } else {
            found.push(c.to_string());
        }
    }
    found
}

/// The source with its comments blanked out; strings, raw strings and
/// character literals are kept whole, so `//` inside them is not a comment.
fn without_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(&chars[i..j.min(chars.len())]);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            out.extend(&chars[i..end]);
            i = end;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\'') or a lifetime ('t).
            let end = if next == Some('\\') {
                let mut j = i + 2;
                j += 1;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                j + 1
            } else if chars.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1
            };
            let end = end.min(chars.len());
            out.extend(&chars[i..end]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Circles between modules: for each module, in name order, that no
/// circle found so far passes through, the shortest way back to itself.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut covered = BTreeSet::new();
    for start in graph.keys() {
        if covered.contains(start) {
            continue;
        }
        if let Some(path) = path_back(graph, start) {
            covered.extend(path.iter().cloned());
            let mut circle = path;
            circle.push(start.clone());
            found.push(circle);
        }
    }
    found
}

/// The shortest path from `start` through its dependencies back to it,
/// without its last step.
fn path_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut path = vec![at.to_owned()];
                let mut step = at;
                while step != start {
                    step = came_from[step];
                    path.push(step.to_owned());
                }
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(next.as_str()) {
                came_from.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn every_form_of_reference_counts() {
    let modules = set(&["a", "b", "c", "d", "e", "f", "g"]);
    let reexports = BTreeMap::from([("Thing".to_string(), "g".to_string())]);
    let source = r#"
        use crate::a;
        use crate::{b, c::X, d::{Y, Z}};
        // use crate::h; is a comment
        /* crate::h too */
        fn f() { let url = "postgres://x"; crate::e::go(); let c = '"'; }
        fn g<'t>(x: &'t crate::Thing) -> crate::f::Y { crate::col(x) }
    "#;
    assert_eq!(dependencies("z", source, &modules, &reexports), set(&["a", "b", "c", "d", "e", "f", "g"]));
    assert_eq!(dependencies("a", "use crate::{a::X, b};", &modules, &reexports), set(&["b"]));
}

#[test]
fn reexports_are_read_with_their_aliases() {
    let modules = set(&["people", "secrets"]);
    let lib = "pub use people::{random_secret, Authenticated};\npub use secrets::{slot as secret_slot, SecretView};\npub use custody_domain::Other;";
    let found = reexports(lib, &modules);
    assert_eq!(found.get("Authenticated").map(String::as_str), Some("people"));
    assert_eq!(found.get("secret_slot").map(String::as_str), Some("secrets"));
    assert_eq!(found.get("SecretView").map(String::as_str), Some("secrets"));
    assert_eq!(found.get("Other"), None);
}

#[test]
fn a_circle_is_named() {
    let graph: Graph = BTreeMap::from([
        ("a".to_string(), set(&["b"])),
        ("b".to_string(), set(&["c"])),
        ("c".to_string(), set(&["a"])),
        ("d".to_string(), set(&["a"])),
    ]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c", "a"]]);
    let layered: Graph = BTreeMap::from([("a".to_string(), set(&["b"])), ("b".to_string(), set(&[]))]);
    assert!(cycles(&layered).is_empty());
}
