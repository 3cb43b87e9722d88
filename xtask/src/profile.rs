//! The sampling profiler's host side (`--profile` on `qemu` and `bench`): the guest's
//! `@@PROFILE` lines (`boot::protocol::profile`) decoded, their addresses symbolised from the
//! kernel ELF's symbol table, folded stacks and a flame graph (`inferno`) written, and the
//! functions with the most self samples printed.
//!
//! Symbolisation: the ELF's function symbols (`STT_FUNC`, with their sizes), demangled without
//! the hash (`rustc-demangle`); an address in no function is shown as `0x...`. Every address
//! but the innermost is a return address, so `pc - 1` (inside the call) is looked up for them.
//! A folded line is the stack outermost first, `;`-separated, then its count (the format
//! `inferno` and Brendan Gregg's `flamegraph.pl` read); a user-mode sample is `[user]`.
//!
//! Owns `target/profile/<NAME>/`: `stacks.folded`, `flamegraph.svg` and `samples.txt` (the raw
//! `@@PROFILE` lines), rewritten by each profiled run of that name.

use crate::Result;
use boot::protocol::{Tag, profile::parse_pcs};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `--profile [--profile-hz N]`: sample the kernel while it runs.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct SamplingOpt {
    /// Run the kernel's sampling profiler; writes folded stacks and a flame graph under
    /// target/profile/ and prints the top functions.
    #[arg(long)]
    pub profile: bool,
    /// Samples per second per CPU with --profile: a multiple of 100 from 100 to 10000.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "profile", value_parser = profile_hz)]
    pub profile_hz: u32,
}

fn profile_hz(s: &str) -> std::result::Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|&hz| hz > 0 && hz <= boot::cmdline::PROFILE_HZ_MAX && hz % boot::cmdline::PROFILE_HZ_STEP == 0)
        .ok_or_else(|| format!("'{s}' is not a multiple of 100 from 100 to 10000"))
}

impl SamplingOpt {
    /// The kernel argument that turns the profiler on (with a leading space), or nothing.
    pub fn kernel_arg(self) -> String {
        if self.profile { format!(" profile.hz={}", self.profile_hz) } else { String::new() }
    }
}

/// One CPU's summary line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSummary {
    /// The CPU's index.
    pub cpu: u64,
    /// Samples taken.
    pub samples: u64,
    /// Samples dropped (the table was full).
    pub drops: u64,
}

/// One unique stack with its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampled {
    /// The CPU.
    pub cpu: u64,
    /// Samples of it.
    pub count: u64,
    /// The CPU was in user mode.
    pub user: bool,
    /// Innermost first.
    pub pcs: Vec<u64>,
}

/// A run's decoded report.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Per CPU.
    pub cpus: Vec<CpuSummary>,
    /// Every stack.
    pub stacks: Vec<Sampled>,
    /// The final line came (the report is whole).
    pub done: bool,
    /// Samples of CPUs without a table.
    pub lost: u64,
    /// The samples rate.
    pub hz: u64,
}

impl Samples {
    /// Samples taken on every CPU.
    pub fn total(&self) -> u64 {
        self.cpus.iter().map(|c| c.samples).sum()
    }

    /// Samples dropped on every CPU.
    pub fn drops(&self) -> u64 {
        self.cpus.iter().map(|c| c.drops).sum()
    }
}

/// Decodes the `@@PROFILE` lines among `lines` (the tag anywhere in a line, as with `@@BENCH`).
pub fn decode(lines: &[String]) -> Result<Samples> {
    let tag = Tag::Profile.prefix();
    let mut s = Samples::default();
    for l in lines {
        let Some(at) = l.find(tag) else { continue };
        let payload = &l[at + tag.len()..];
        let v: Value = serde_json::from_str(payload)
            .map_err(|e| format!("a @@PROFILE line is not JSON ({e}): {}", crate::decode::brief(l)))?;
        let num = |k: &str| v[k].as_u64();
        if v["done"] == true {
            s.done = true;
            s.lost = num("lost").unwrap_or(0);
        } else if let Some(pcs) = v["pcs"].as_str() {
            let pcs: Vec<u64> =
                parse_pcs(pcs).ok_or_else(|| format!("a @@PROFILE stack has a bad address list: {pcs}"))?.collect();
            s.stacks.push(Sampled {
                cpu: num("cpu").unwrap_or(0),
                count: num("n").unwrap_or(0),
                user: v["user"] == true,
                pcs,
            });
        } else if let Some(samples) = num("samples") {
            s.hz = num("hz").unwrap_or(0);
            s.cpus.push(CpuSummary { cpu: num("cpu").unwrap_or(0), samples, drops: num("drops").unwrap_or(0) });
        }
    }
    Ok(s)
}

/// The kernel's function symbols, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (start, end, demangled name).
    funcs: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// The function symbols of the ELF at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| format!("reading the kernel ELF {}: {e}", path.display()))?;
        Self::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The function symbols of the ELF image `data`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
        let file = object::File::parse(data).map_err(|e| format!("not an ELF file the profiler can read: {e}"))?;
        // Code sections: assembly labels (no type, no size) count when they lie in one.
        let code: Vec<(u64, u64)> = file
            .sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        let in_code = |a: u64| code.iter().any(|&(lo, hi)| a >= lo && a < hi);
        let mut funcs: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| !s.is_undefined() && matches!(s.kind(), SymbolKind::Text | SymbolKind::Unknown))
            .filter(|s| s.address() != 0 && in_code(s.address()))
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                Some((s.address(), s.address() + s.size(), format!("{:#}", rustc_demangle::demangle(name))))
            })
            .collect();
        if funcs.is_empty() {
            return Err("the ELF has no function symbols (stripped?): the profile cannot be symbolised".into());
        }
        // Sized symbols first at an address, then the labels.
        funcs.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        funcs.dedup_by_key(|f| f.0);
        // A label without a size reaches to the next symbol, within its code section.
        for i in 0..funcs.len() {
            if funcs[i].1 == funcs[i].0 {
                let next = funcs.get(i + 1).map_or(u64::MAX, |f| f.0);
                let section_end = code.iter().find(|c| funcs[i].0 >= c.0 && funcs[i].0 < c.1).map_or(0, |c| c.1);
                funcs[i].1 = next.min(section_end);
            }
        }
        Ok(Symbols { funcs })
    }

    /// From `(start, size, name)` triples (tests).
    #[cfg(test)]
    pub fn from_list(list: &[(u64, u64, &str)]) -> Self {
        let mut funcs: Vec<_> = list.iter().map(|&(a, n, s)| (a, a + n, s.to_string())).collect();
        funcs.sort();
        Symbols { funcs }
    }

    /// The function holding `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.funcs.partition_point(|f| f.0 <= addr).checked_sub(1)?;
        let (start, end, name) = &self.funcs[i];
        (addr >= *start && addr < *end).then_some(name.as_str())
    }

    /// The frame name of the `i`th address of a stack (innermost is 0): the function, or the
    /// hex address.
    fn frame(&self, i: usize, pc: u64) -> String {
        let at = if i == 0 { pc } else { pc.saturating_sub(1) };
        match self.lookup(at) {
            // `;` separates frames in the folded format (the count follows the last space).
            Some(n) => n.replace(';', ":"),
            None => format!("{pc:#x}"),
        }
    }
}

/// The folded stacks (`outer;...;inner count`), one per unique symbolised stack (CPUs and
/// stacks that symbolise alike merged), sorted.
pub fn fold(samples: &Samples, syms: &Symbols) -> Vec<String> {
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    for s in &samples.stacks {
        let mut frames: Vec<String> = s.pcs.iter().enumerate().map(|(i, &pc)| syms.frame(i, pc)).collect();
        if s.user {
            frames = vec!["[user]".to_string()];
        }
        frames.reverse();
        *folded.entry(frames.join(";")).or_default() += s.count;
    }
    folded.into_iter().map(|(k, n)| format!("{k} {n}")).collect()
}

/// The functions with the most self samples (the innermost frame), most first, with their
/// counts; ties by name.
pub fn top_self(samples: &Samples, syms: &Symbols, n: usize) -> Vec<(String, u64)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for s in &samples.stacks {
        let name =
            if s.user { "[user]".to_string() } else { s.pcs.first().map_or("?".into(), |&pc| syms.frame(0, pc)) };
        *by.entry(name).or_default() += s.count;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// What [`report`] wrote and found.
#[derive(Debug)]
pub struct Written {
    /// The folder.
    pub dir: PathBuf,
    /// The decoded samples.
    pub samples: Samples,
    /// The top functions by self samples.
    pub top: Vec<(String, u64)>,
}

/// Decodes the profile in `lines`, symbolises it from `kernel`, writes
/// `target/profile/<name>/{samples.txt,stacks.folded,flamegraph.svg}` under `root` and prints
/// the summary and the top 15 functions by self samples. An error if the guest printed no
/// complete report.
pub fn report(root: &Path, name: &str, kernel: &Path, lines: &[String]) -> Result<Written> {
    let samples = decode(lines)?;
    if !samples.done {
        return Err("--profile: the kernel printed no complete profile (no final @@PROFILE line): did the run end in a crash or a timeout?".into());
    }
    let syms = Symbols::load(kernel)?;
    let dir = root.join("target/profile").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |file: &str, text: &[u8]| {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    let raw: Vec<&str> = lines.iter().filter(|l| l.contains(Tag::Profile.prefix())).map(String::as_str).collect();
    write("samples.txt", (raw.join("\n") + "\n").as_bytes())?;
    let folded = fold(&samples, &syms);
    write("stacks.folded", (folded.join("\n") + "\n").as_bytes())?;
    let mut svg = Vec::new();
    if !folded.is_empty() {
        let mut opt = inferno::flamegraph::Options::default();
        opt.title = format!("kernel profile: {name} ({} Hz, {} samples)", samples.hz, samples.total());
        opt.count_name = "samples".into();
        inferno::flamegraph::from_lines(&mut opt, folded.iter().map(String::as_str), &mut svg)
            .map_err(|e| format!("drawing the flame graph: {e}"))?;
        write("flamegraph.svg", &svg)?;
    }
    let top = top_self(&samples, &syms, 15);
    let total = samples.total();
    println!(
        "\nprofile: {total} samples at {} Hz on {} CPUs, {} dropped (table full), {} lost (CPU without a table)",
        samples.hz,
        samples.cpus.len(),
        samples.drops(),
        samples.lost
    );
    for c in &samples.cpus {
        println!("  cpu {}: {} samples, {} dropped", c.cpu, c.samples, c.drops);
    }
    println!("top {} functions by self samples:", top.len());
    for (f, n) in &top {
        println!("  {:>6.2}% {n:>8}  {f}", 100.0 * *n as f64 / total.max(1) as f64);
    }
    println!(
        "profile files: {} (stacks.folded, flamegraph.svg, samples.txt)",
        dir.strip_prefix(root).unwrap_or(&dir).display()
    );
    Ok(Written { dir, samples, top })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<String> {
        [
            "log line",
            r#"@@PROFILE {"cpu":0,"hz":1000,"samples":10,"drops":1,"stacks":3}"#,
            r#"@@PROFILE {"cpu":0,"n":5,"user":false,"pcs":"1010,2005,3001"}"#,
            r#"@@PROFILE {"cpu":0,"n":3,"user":false,"pcs":"1020,2005,3001"}"#,
            r#"@@PROFILE {"cpu":0,"n":1,"user":true,"pcs":"400000"}"#,
            r#"[cpu1] @@PROFILE {"cpu":1,"hz":1000,"samples":2,"drops":0,"stacks":1}"#,
            r#"@@PROFILE {"cpu":1,"n":2,"user":false,"pcs":"2010,9000"}"#,
            r#"@@PROFILE {"done":true,"cpus":2,"lost":0}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn syms() -> Symbols {
        // `leaf` at 0x1000, `mid` at 0x2000 (its call to leaf returns to 0x2005), `outer` at 0x3000.
        Symbols::from_list(&[(0x1000, 0x100, "leaf"), (0x2000, 0x100, "mid"), (0x3000, 0x10, "outer")])
    }

    #[test]
    fn decodes_summaries_stacks_and_the_end() {
        let s = decode(&lines()).unwrap();
        assert!(s.done);
        assert_eq!((s.total(), s.drops(), s.hz), (12, 1, 1000));
        assert_eq!(s.stacks.len(), 4);
        assert_eq!(s.stacks[0], Sampled { cpu: 0, count: 5, user: false, pcs: vec![0x1010, 0x2005, 0x3001] });
        assert!(s.stacks[2].user);
        assert_eq!(s.stacks[3].cpu, 1);
        let mut bad = lines();
        bad[2] = r#"@@PROFILE {"cpu":0,"n":5,"user":false,"pcs":"10x10"}"#.into();
        assert!(decode(&bad).unwrap_err().contains("bad address"));
        assert!(!decode(&lines()[..7]).unwrap().done);
    }

    #[test]
    fn symbols_cover_their_functions_only() {
        let s = syms();
        assert_eq!(s.lookup(0x1000), Some("leaf"));
        assert_eq!(s.lookup(0x10ff), Some("leaf"));
        assert_eq!(s.lookup(0x1100), None);
        assert_eq!(s.lookup(0xfff), None);
        assert_eq!(s.lookup(0x3010), None);
    }

    #[test]
    fn return_addresses_are_looked_up_inside_the_call() {
        // 0x3010 is just past `outer`: as a return address it means a call at its end.
        let s = syms();
        assert_eq!(s.frame(1, 0x3010), "outer");
        assert_eq!(s.frame(0, 0x3010), "0x3010");
    }

    #[test]
    fn folds_outermost_first_merging_equal_stacks() {
        let s = decode(&lines()).unwrap();
        let folded = fold(&s, &syms());
        assert_eq!(folded, vec!["0x9000;mid 2", "[user] 1", "outer;mid;leaf 8"]);
        let total: u64 = folded.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(total + s.drops(), s.total());
    }

    #[test]
    fn top_functions_by_self_samples() {
        let s = decode(&lines()).unwrap();
        assert_eq!(top_self(&s, &syms(), 15), vec![("leaf".into(), 8), ("mid".into(), 2), ("[user]".into(), 1)]);
        assert_eq!(top_self(&s, &syms(), 1).len(), 1);
    }

    #[test]
    fn report_writes_the_files_with_real_symbols() {
        // This test binary is an ELF too: symbolise one of its own functions.
        let exe = std::env::current_exe().unwrap();
        let syms = Symbols::load(&exe).unwrap();
        let addr = syms
            .funcs
            .iter()
            .find(|x| x.2.ends_with("report_writes_the_files_with_real_symbols"))
            .map(|x| x.0)
            .expect("the test's own symbol");
        let lines: Vec<String> = vec![
            r#"@@PROFILE {"cpu":0,"hz":1000,"samples":4,"drops":0,"stacks":1}"#.into(),
            format!(r#"@@PROFILE {{"cpu":0,"n":4,"user":false,"pcs":"{:x}"}}"#, addr + 1),
            r#"@@PROFILE {"done":true,"cpus":1,"lost":0}"#.into(),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let w = report(dir, "unit", &exe, &lines).unwrap();
        assert!(w.top[0].0.ends_with("report_writes_the_files_with_real_symbols"), "{:?}", w.top);
        let folded = std::fs::read_to_string(w.dir.join("stacks.folded")).unwrap();
        assert!(folded.trim_end().ends_with("report_writes_the_files_with_real_symbols 4"), "{folded}");
        let svg = std::fs::read_to_string(w.dir.join("flamegraph.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("report_writes_the_files_with_real_symbols"));
        assert!(report(dir, "unit", &exe, &lines[..2]).unwrap_err().contains("no complete profile"));
    }
}
