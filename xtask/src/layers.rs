//! The kernel's layering check: no import circle between the kernel's top-level modules, and no
//! `unsafe` outside its platform layer.
//!
//! The module tree is read from the kernel's own `mod` declarations, starting at
//! `kernel/src/main.rs` (the ground truth: a file no `mod` reaches is not part of the kernel).
//! Every file's references to other modules are its `crate::a::…` paths (in `use` lines and in
//! code, including `use crate::{a, b::c}` groups and `$crate::` in macros), its `super::…`
//! paths, and in the crate root (`main.rs`) its bare paths to the modules it declares. Comments
//! and string literals are skipped, so doc links do not count. A node of the graph is one
//! top-level module (`kernel/src/x.rs` or `kernel/src/x/`), with the crate root as node
//! `crate`; `mod` declarations themselves are not edges. The platform layer (`platform/`) is
//! one node: the cycles inside it are its own business, the layers above it must form no
//! circle among themselves or through it.
//!
//! [`check`] returns every strongly connected component of more than one node, each with one
//! concrete cycle and the file and line of every edge on it, and every file outside the
//! platform layer that contains the `unsafe` keyword, and every file outside it that names the
//! raw physical-memory accessors ([`RAW_PHYS`]). The `#[test]` below runs it on the
//! kernel's sources, so the host test step of `cargo xtask test` fails naming the cycle.

#![cfg(test)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

/// The module that may hold unsafe code, and that is one node of the graph.
pub const PLATFORM: &str = "platform";
/// The node that stands for the crate root (`main.rs`).
pub const ROOT: &str = "crate";

/// One reference from one module to another: where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The file, relative to `kernel/src`.
    pub file: String,
    /// 1-based line.
    pub line: usize,
}

/// A module file the tree names: its path in the module tree and on disk.
#[derive(Debug, Clone)]
struct ModFile {
    /// Module path below the crate root (`[]` for `main.rs`, `["mm", "frame"]`).
    path: Vec<String>,
    /// The file, relative to `kernel/src`.
    rel: String,
    /// Its text.
    text: String,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// The graph's edges: `from -> to -> first site`.
    pub edges: BTreeMap<String, BTreeMap<String, Site>>,
    /// Every import circle: the component's nodes, and one cycle through it with its edges' sites.
    pub cycles: Vec<Cycle>,
    /// Files outside the platform layer that contain `unsafe`, with the first line.
    pub unsafe_outside: Vec<Site>,
    /// Files outside the platform layer that call the raw physical-memory accessors
    /// (`read_phys`, `write_phys`, and `copy_phys`, which is gone and must not come back).
    pub raw_phys_outside: Vec<Site>,
}

/// The platform layer's raw physical-memory accessors, which no file above it may name
/// (memory is reached through handles: `FrameRange`, `PhysWindow`, the checked `ram` ones).
const RAW_PHYS: [&str; 3] = ["read_phys", "write_phys", "copy_phys"];

/// One strongly connected component of more than one module.
#[derive(Debug)]
pub struct Cycle {
    /// Every module of the component, sorted.
    pub members: Vec<String>,
    /// Cycles through the component, together passing through every member: `(from, to, site)`
    /// for each edge, the last one ending where the first begins.
    pub paths: Vec<Vec<(String, String, Site)>>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "import circle among {{{}}}:", self.members.join(", "))?;
        for (n, path) in self.paths.iter().enumerate() {
            writeln!(f, "  cycle {}:", n + 1)?;
            for (from, to, site) in path {
                writeln!(f, "    {from} -> {to}   ({}:{})", site.file, site.line)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cycles {
            write!(f, "{c}")?;
        }
        for s in &self.unsafe_outside {
            writeln!(f, "unsafe outside {PLATFORM}/: {}:{}", s.file, s.line)?;
        }
        for s in &self.raw_phys_outside {
            writeln!(f, "raw physical-memory access outside {PLATFORM}/ (use a handle): {}:{}", s.file, s.line)?;
        }
        Ok(())
    }
}

/// Why the check could not run.
#[derive(Debug)]
pub enum LayersError {
    /// A file could not be read.
    Read(PathBuf, std::io::Error),
    /// A `mod x;` names a file that does not exist.
    MissingModule { declared_in: String, name: String },
}

impl fmt::Display for LayersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayersError::Read(p, e) => write!(f, "reading {}: {e}", p.display()),
            LayersError::MissingModule { declared_in, name } => {
                write!(f, "{declared_in} declares `mod {name};` but neither {name}.rs nor {name}/mod.rs exists")
            }
        }
    }
}

impl std::error::Error for LayersError {}

/// Replaces comments, string and char literals by spaces (keeping newlines, so line numbers stay).
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char_before(&b, i) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a): only the former is skipped.
            let is_char = matches!((next, b.get(i + 2)), (Some('\\'), _) | (Some(_), Some('\'')));
            if is_char {
                out.push(' ');
                i += 1;
                while i < b.len() && b[i] != '\'' {
                    if b[i] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_char_before(b: &[char], i: usize) -> bool {
    i > 0 && is_ident(b[i - 1])
}

/// The identifier starting at `i` (after whitespace), and the index after it.
fn ident_at(b: &[char], mut i: usize) -> Option<(String, usize)> {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (i > start).then(|| (b[start..i].iter().collect(), i))
}

/// Whether `b[i..]` starts with `pat`.
fn at(b: &[char], i: usize, pat: &str) -> bool {
    pat.chars().enumerate().all(|(k, p)| b.get(i + k) == Some(&p))
}

/// Skips whitespace, then `::`; the index after it.
fn colons(b: &[char], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    at(b, i, "::").then_some(i + 2)
}

/// The first identifiers of each item of the `{...}` group opening at `i` (which is `{`).
fn group_heads(b: &[char], i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expect = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect = true,
            c if depth == 1 && expect && is_ident(c) => {
                if let Some((id, end)) = ident_at(b, j) {
                    heads.push(id);
                    j = end;
                    expect = false;
                    continue;
                }
            }
            c if depth == 1 && !c.is_whitespace() => expect = false,
            _ => {}
        }
        j += 1;
    }
    heads
}

/// The `mod name;` declarations of a stripped file (not inline `mod name { … }`).
fn mod_decls(stripped: &str) -> Vec<String> {
    let b: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 < b.len() {
        if at(&b, i, "mod")
            && !ident_char_before(&b, i)
            && b.get(i + 3).is_some_and(|c| c.is_whitespace())
            && let Some((name, end)) = ident_at(&b, i + 3)
        {
            {
                let mut k = end;
                while k < b.len() && b[k].is_whitespace() {
                    k += 1;
                }
                if b.get(k) == Some(&';') {
                    out.push(name);
                }
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Reads the module tree from `src/main.rs` down, following `mod x;` declarations.
fn module_files(src: &Path) -> Result<Vec<ModFile>, LayersError> {
    let mut out = Vec::new();
    // (module path, file relative to src, directory its children live in)
    let mut todo = vec![(Vec::<String>::new(), "main.rs".to_string(), PathBuf::new())];
    while let Some((path, rel, child_dir)) = todo.pop() {
        let full = src.join(&rel);
        let text = std::fs::read_to_string(&full).map_err(|e| LayersError::Read(full.clone(), e))?;
        for name in mod_decls(&strip(&text)) {
            let flat = child_dir.join(format!("{name}.rs"));
            let nested = child_dir.join(&name).join("mod.rs");
            let mut child = path.clone();
            child.push(name.clone());
            if src.join(&flat).is_file() {
                todo.push((child, flat.to_string_lossy().into_owned(), child_dir.join(&name)));
            } else if src.join(&nested).is_file() {
                todo.push((child, nested.to_string_lossy().into_owned(), child_dir.join(&name)));
            } else {
                return Err(LayersError::MissingModule { declared_in: rel.clone(), name });
            }
        }
        out.push(ModFile { path, rel, text });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The graph node of a module path: its top-level module, or the root.
fn node(path: &[String]) -> String {
    path.first().cloned().unwrap_or_else(|| ROOT.to_string())
}

/// What a name at the crate root stands for, besides the modules it declares: the names its
/// `use` items bring in (`pub use platform::arch;` makes `crate::arch` the platform), and the
/// `#[macro_export]` macros (which live at the root but belong to the module defining them).
#[derive(Debug, Default)]
struct Names {
    /// Top-level modules.
    top: BTreeSet<String>,
    /// Root `use` leaves: name -> node.
    aliases: BTreeMap<String, String>,
    /// `macro_rules!` name -> node of the defining file.
    macros: BTreeMap<String, String>,
}

impl Names {
    /// The node a path naming `first` below module `base` resolves to.
    fn resolve(&self, base: &[String], first: &str, is_macro: bool) -> String {
        if !base.is_empty() {
            return node(base);
        }
        if is_macro && let Some(n) = self.macros.get(first) {
            return n.clone();
        }
        if self.top.contains(first) {
            first.to_string()
        } else if let Some(n) = self.aliases.get(first) {
            n.clone()
        } else {
            ROOT.to_string()
        }
    }
}

/// The names the root's `use` items bring in, each with the node its path starts in.
fn root_aliases(stripped: &str, top: &BTreeSet<String>) -> BTreeMap<String, String> {
    let b: Vec<char> = stripped.chars().collect();
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i + 3 < b.len() {
        let is_use = at(&b, i, "use") && !ident_char_before(&b, i) && b[i + 3].is_whitespace();
        if !is_use {
            i += 1;
            continue;
        }
        let end = (i..b.len()).find(|&k| b[k] == ';').unwrap_or(b.len());
        // Tokens: identifiers and the punctuation that matters.
        let mut toks: Vec<String> = Vec::new();
        let mut k = i + 3;
        while k < end {
            if is_ident(b[k]) {
                let (id, e) = ident_at(&b, k).expect("an identifier starts here");
                toks.push(id);
                k = e;
            } else {
                if !b[k].is_whitespace() && b[k] != ':' {
                    toks.push(b[k].to_string());
                }
                k += 1;
            }
        }
        let mut segs = toks.iter().filter(|t| t.chars().all(is_ident));
        let first = match segs.next().map(String::as_str) {
            Some("crate" | "self") => segs.next().cloned(),
            other => other.map(str::to_string),
        };
        if let Some(first) = first.filter(|f| top.contains(f)) {
            for (n, t) in toks.iter().enumerate() {
                let ends_leaf = matches!(toks.get(n + 1).map(String::as_str), None | Some("," | "}"));
                let renamed = n > 0 && toks[n - 1] == "as";
                if t.chars().all(is_ident) && t != "self" && t != "as" && (ends_leaf || renamed) {
                    out.insert(t.clone(), first.clone());
                }
            }
        }
        i = end;
    }
    out
}

/// The `macro_rules! name` definitions of a stripped file.
fn macro_defs(stripped: &str) -> Vec<String> {
    let b: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    for i in 0..b.len() {
        if at(&b, i, "macro_rules!")
            && !ident_char_before(&b, i)
            && let Some((name, _)) = ident_at(&b, i + "macro_rules!".len())
        {
            out.push(name);
        }
    }
    out
}

/// Every reference in one file to another module: `(target node, line)`.
fn references(file: &ModFile, names: &Names) -> Vec<(String, usize)> {
    let stripped = strip(&file.text);
    let b: Vec<char> = stripped.chars().collect();
    let mut line_of = Vec::with_capacity(b.len());
    let mut line = 1;
    for &c in &b {
        line_of.push(line);
        if c == '\n' {
            line += 1;
        }
    }
    let mut out = Vec::new();
    let push = |out: &mut Vec<(String, usize)>, base: &[String], after: usize, pos: usize| {
        // `after` is just past `crate::` / the last `super::`: an identifier or a `{` group.
        let mut k = after;
        while k < b.len() && b[k].is_whitespace() {
            k += 1;
        }
        let heads = if b.get(k) == Some(&'{') {
            group_heads(&b, k).into_iter().map(|h| (h, false)).collect()
        } else {
            ident_at(&b, k).map(|(id, e)| vec![(id, b.get(e) == Some(&'!'))]).unwrap_or_default()
        };
        for (h, is_macro) in heads {
            let target = if h == "self" { node(base) } else { names.resolve(base, &h, is_macro) };
            out.push((target, line_of[pos]));
        }
    };
    let mut i = 0;
    while i < b.len() {
        if at(&b, i, "crate") && (i == 0 || !is_ident(b[i - 1])) && !b.get(i + 5).copied().is_some_and(is_ident) {
            if let Some(after) = colons(&b, i + 5) {
                push(&mut out, &[], after, i);
                i = after;
                continue;
            }
        } else if at(&b, i, "super") && (i == 0 || !is_ident(b[i - 1])) && !b.get(i + 5).copied().is_some_and(is_ident)
        {
            // `super::super::x`: climb once per `super`.
            let mut base = file.path.clone();
            let mut j = i;
            let mut last = None;
            while at(&b, j, "super") {
                match colons(&b, j + 5) {
                    Some(after) => {
                        base.pop();
                        last = Some(after);
                        j = after;
                        while j < b.len() && b[j].is_whitespace() {
                            j += 1;
                        }
                    }
                    None => break,
                }
            }
            if let Some(after) = last {
                push(&mut out, &base, after, i);
                i = after;
                continue;
            }
        } else if file.path.is_empty() && is_ident(b[i]) && (i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == ':')) {
            // The crate root reaches its modules by bare paths (`arch::serial`, `use arch::…`).
            if let Some((id, end)) = ident_at(&b, i) {
                if (names.top.contains(&id) || names.aliases.contains_key(&id)) && colons(&b, end).is_some() {
                    let id = names.resolve(&[], &id, false);
                    out.push((id.clone(), line_of[i]));
                }
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The first line of a file (comments and strings skipped) with one of the identifiers `words`.
fn first_word_line(text: &str, words: &[&str]) -> Option<usize> {
    let stripped = strip(text);
    for (n, l) in stripped.lines().enumerate() {
        let b: Vec<char> = l.chars().collect();
        for i in 0..b.len() {
            let hit = words.iter().any(|w| {
                at(&b, i, w) && !ident_char_before(&b, i) && !b.get(i + w.len()).copied().is_some_and(is_ident)
            });
            if hit {
                return Some(n + 1);
            }
        }
    }
    None
}

/// The first line of a file with the `unsafe` keyword.
fn unsafe_line(text: &str) -> Option<usize> {
    first_word_line(text, &["unsafe"])
}

/// Strongly connected components (Tarjan), each sorted.
fn components(nodes: &BTreeSet<String>, edges: &BTreeMap<String, BTreeMap<String, Site>>) -> Vec<Vec<String>> {
    struct St<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, Site>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        on: BTreeSet<String>,
        stack: Vec<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(s: &mut St<'_>, v: &str) {
        s.index.insert(v.into(), s.next);
        s.low.insert(v.into(), s.next);
        s.next += 1;
        s.stack.push(v.into());
        s.on.insert(v.into());
        let succ: Vec<String> = s.edges.get(v).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for w in succ {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in nodes {
        if !s.index.contains_key(n) {
            visit(&mut s, n);
        }
    }
    s.out.retain(|c| c.len() > 1);
    s.out.sort();
    s.out
}

/// A shortest cycle through `start` inside `members` (breadth-first).
fn cycle_through(
    start: &str,
    members: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeMap<String, Site>>,
) -> Vec<(String, String, Site)> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    let mut end = None;
    'bfs: while let Some(v) = queue.pop_front() {
        for w in edges.get(&v).into_iter().flat_map(|m| m.keys()) {
            if !members.contains(w) {
                continue;
            }
            if w == start {
                end = Some(v.clone());
                break 'bfs;
            }
            if !prev.contains_key(w) {
                prev.insert(w.clone(), v.clone());
                queue.push_back(w.clone());
            }
        }
    }
    // Walk back from the last node before `start` to `start`, then turn it around: start, a, …, start.
    let mut nodes = Vec::new();
    let mut cur = end.unwrap_or_else(|| start.to_string());
    loop {
        nodes.push(cur.clone());
        if cur == start {
            break;
        }
        cur = prev[&cur].clone();
    }
    nodes.reverse();
    nodes.push(start.to_string());
    nodes.windows(2).map(|w| (w[0].clone(), w[1].clone(), edges[&w[0]][&w[1]].clone())).collect()
}

/// Runs the check on the kernel sources in `src` (`kernel/src`).
pub fn check(src: &Path) -> Result<Report, LayersError> {
    let files = module_files(src)?;
    let top: BTreeSet<String> = files.iter().filter(|f| f.path.len() == 1).map(|f| f.path[0].clone()).collect();
    let mut names = Names { top: top.clone(), ..Names::default() };
    for f in &files {
        let stripped = strip(&f.text);
        if f.path.is_empty() {
            names.aliases = root_aliases(&stripped, &top);
        }
        for m in macro_defs(&stripped) {
            names.macros.insert(m, node(&f.path));
        }
    }
    let mut nodes = top.clone();
    nodes.insert(ROOT.into());
    let mut report = Report::default();
    for f in &files {
        let from = node(&f.path);
        for (to, line) in references(f, &names) {
            if to != from {
                report.edges.entry(from.clone()).or_default().entry(to).or_insert(Site { file: f.rel.clone(), line });
            }
        }
        if from != PLATFORM
            && let Some(line) = unsafe_line(&f.text)
        {
            report.unsafe_outside.push(Site { file: f.rel.clone(), line });
        }
        if from != PLATFORM
            && let Some(line) = first_word_line(&f.text, &RAW_PHYS)
        {
            report.raw_phys_outside.push(Site { file: f.rel.clone(), line });
        }
    }
    for members in components(&nodes, &report.edges) {
        let set: BTreeSet<String> = members.iter().cloned().collect();
        // One shortest cycle through each member no cycle shown so far passes through.
        let mut covered = BTreeSet::new();
        let mut paths = Vec::new();
        for m in &members {
            if covered.insert(m.clone()) {
                let path = cycle_through(m, &set, &report.edges);
                covered.extend(path.iter().map(|(from, _, _)| from.clone()));
                paths.push(path);
            }
        }
        report.cycles.push(Cycle { members, paths });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_src() -> PathBuf {
        // Tests run from the xtask package's directory; the workspace root is found from there.
        crate::workspace::init().expect("the tests run inside the checkout").join("kernel/src")
    }

    /// The kernel itself: no import circle outside the platform layer, no unsafe outside it.
    #[test]
    fn kernel_has_no_import_circle_and_no_unsafe_outside_platform() {
        let report = check(&kernel_src()).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.edges.len() > 3, "the parser found almost no edges: {:?}", report.edges);
        // The layering, for `cargo test -p xtask layers -- --nocapture`.
        for (from, to) in &report.edges {
            println!("{from} -> {}", to.keys().cloned().collect::<Vec<_>>().join(", "));
        }
        assert!(
            report.cycles.is_empty() && report.unsafe_outside.is_empty() && report.raw_phys_outside.is_empty(),
            "kernel layering:\n{report}"
        );
    }

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (p, t) in files {
            let full = d.0.join(p);
            std::fs::create_dir_all(full.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(full, t).expect("write");
        }
        d
    }

    mod tempdir {
        /// A scratch directory (made by tempfile) removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                Dir(tempfile::Builder::new().prefix("layers-test-").tempdir().expect("mkdir").keep())
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn finds_a_circle_through_groups_super_and_the_root() {
        let d = tree(&[
            ("main.rs", "mod a;\nmod b;\nmod c;\nfn main() { a::go(); }\npub fn crash() {}\n"),
            ("a.rs", "mod inner;\n"),
            ("a/inner.rs", "use crate::{b::{x, y}, c};\n"),
            ("b.rs", "// crate::a is a comment\nfn f() { let s = \"crate::a\"; super::crash(); }\n"),
            ("c.rs", "/// [`crate::b`]\nfn g() {}\n"),
        ]);
        let r = check(&d.0).expect("check");
        assert_eq!(r.cycles.len(), 1, "{r}");
        assert_eq!(r.cycles[0].members, ["a", "b", "crate"]);
        let text = r.cycles[0].to_string();
        assert_eq!(r.cycles[0].paths.len(), 1, "{text}");
        assert!(text.contains("a -> b   (a/inner.rs:1)"), "{text}");
        assert!(text.contains("b -> crate   (b.rs:2)"), "{text}");
        // The comment, the string and the doc link are not edges.
        assert!(!r.edges.get("b").is_some_and(|m| m.contains_key("a")), "{:?}", r.edges);
        assert!(!r.edges.contains_key("c"), "{:?}", r.edges);
    }

    #[test]
    fn platform_is_one_node_and_may_hold_unsafe() {
        let d = tree(&[
            ("main.rs", "#[allow(unsafe_code)]\nmod platform;\nmod up;\nfn main() { up::run(); }\n"),
            ("platform/mod.rs", "pub mod x;\npub mod y;\n"),
            ("platform/x.rs", "use super::y; fn f() { unsafe { y::g() } }\n"),
            ("platform/y.rs", "use crate::platform::x;\n"),
            ("up.rs", "use crate::platform::x;\nfn h() { let _ = unsafe_code; }\n"),
        ]);
        let r = check(&d.0).expect("check");
        assert!(r.cycles.is_empty(), "{r}");
        assert!(r.unsafe_outside.is_empty(), "{r}");
        // An upward call from the platform closes a circle, and unsafe above it is reported.
        let d = tree(&[
            ("main.rs", "mod platform;\nmod up;\n"),
            ("platform/mod.rs", "fn f() { crate::up::h() }\n"),
            (
                "up.rs",
                "use crate::platform;\nfn h() { unsafe {} }\nfn g() { crate::platform::read_phys(0, &mut []); }\n",
            ),
        ]);
        let r = check(&d.0).expect("check");
        assert_eq!(r.cycles.len(), 1, "{r}");
        assert_eq!(r.unsafe_outside, [Site { file: "up.rs".into(), line: 2 }]);
        assert_eq!(r.raw_phys_outside, [Site { file: "up.rs".into(), line: 3 }]);
    }

    #[test]
    fn root_reexports_and_exported_macros_resolve_to_their_module() {
        let d = tree(&[
            ("main.rs", "mod low;\nmod up;\npub use low::{inner as moved, Thing};\nfn main() { moved::f(); }\n"),
            ("low.rs", "pub mod inner;\n#[macro_export]\nmacro_rules! say { () => { $crate::low::g() } }\n"),
            ("low/inner.rs", "pub fn f() {}\n"),
            ("up.rs", "fn h() { crate::moved::f(); let _: crate::Thing; crate::say!(); }\n"),
        ]);
        let r = check(&d.0).expect("check");
        assert!(r.cycles.is_empty(), "{r}");
        assert!(r.edges["up"].contains_key("low") && !r.edges["up"].contains_key("crate"), "{:?}", r.edges);
        assert!(r.edges["crate"].contains_key("low"), "{:?}", r.edges);
        assert!(!r.edges.contains_key("low"), "{:?}", r.edges);
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let d = tree(&[("main.rs", "mod gone;\n")]);
        let e = check(&d.0).expect_err("gone.rs does not exist");
        assert!(e.to_string().contains("mod gone;"), "{e}");
    }
}
