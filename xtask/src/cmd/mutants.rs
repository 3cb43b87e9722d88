//! `cargo xtask mutants [FILE[:N]...] [--sample N] [--jobs J] [--rerun-missed]`: mutation
//! testing of the HMM core with cargo-mutants (installed from crates.io on first use).
//!
//! Each mutant (an operator flipped, a return value replaced, a condition negated...) is
//! built with the `mutants` cargo profile (the test profile without debug info: fast builds,
//! every debug assertion and overflow check on) and the `hmm` crate's tests are run against
//! it; a mutant that no test fails is *missed*. The default files are the core ones the
//! reliability issue names; `--sample N` takes every N-th mutant of each (a systematic
//! sample: the first, the N+1-th...), `FILE:N` gives one file its own step. All files go to
//! one cargo-mutants run (one copy of the tree, one baseline), selected by exact name. Only
//! the library's own tests are built and run (`--lib`): the crate has no other test targets
//! and no doc-tests, and building the library a second time without `cfg(test)` would nearly
//! double each mutant's build. `--rerun-missed` runs again only what the last run missed or
//! timed out on (after tests were added: the caught ones stay caught).
//!
//! Results go to `target/mutants/mutants.out` (cargo-mutants' `caught.txt`, `missed.txt`,
//! `timeout.txt`, `unviable.txt`), and a summary line per file with its score, caught ÷
//! (caught + missed + timed out), where a mutant that failed tests before it timed out counts
//! as caught.

use crate::Result;
use std::path::Path;
use std::process::Command;

/// The core files sampled by default.
pub const CORE: [&str; 6] = [
    "hmm/src/notifier.rs",
    "hmm/src/range.rs",
    "hmm/src/mm/migrate.rs",
    "hmm/src/pagemap.rs",
    "hmm/src/mm/exclusive.rs",
    "hmm/src/dmirror.rs",
];

/// Which mutants of a file: every `step`-th, from the `offset`-th on (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    step: u32,
    offset: u32,
}

/// Parsed options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    /// Files with their own sample (`FILE:N` or `FILE:N+K`), or `None` for `--sample`'s.
    files: Vec<(String, Option<Step>)>,
    /// `--sample N`, if given.
    sample: Option<u32>,
    jobs: u32,
    rerun_missed: bool,
}

impl Options {
    /// The sample of `file` (its own, else `--sample`'s, else every mutant), or `None` when
    /// only the last run's missed mutants are wanted (`--rerun-missed` and no sample).
    fn step(&self, own: Option<Step>) -> Option<Step> {
        match (own, self.sample) {
            (Some(s), _) => Some(s),
            (None, Some(n)) => Some(Step { step: n, offset: 0 }),
            (None, None) if self.rerun_missed => None,
            (None, None) => Some(Step { step: 1, offset: 0 }),
        }
    }
}

/// `cargo xtask mutants`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Mutation testing of the HMM core with cargo-mutants",
    long_about = "Mutation testing of the HMM core: cargo-mutants (installed on first use) over the hmm library's tests, one run for all files, and each file's score, caught / (caught + missed + timed out). The missed mutants are listed in target/mutants/mutants.out/missed.txt."
)]
pub struct Args {
    /// Files to mutate, from the workspace root; FILE:N tests every N-th mutant of FILE, FILE:N+K every N-th from the K-th [default: the core files, hmm/src/notifier.rs, range.rs, mm/migrate.rs, pagemap.rs, mm/exclusive.rs, dmirror.rs].
    #[arg(value_name = "FILE[:N[+K]]", value_parser = file_spec)]
    files: Vec<(String, Option<Step>)>,
    /// Test every N-th mutant of each file without its own :N.
    #[arg(long, value_name = "N", value_parser = crate::options::positive::<u32>)]
    sample: Option<u32>,
    /// cargo-mutants' parallel jobs.
    #[arg(long, value_name = "J", default_value_t = 1, value_parser = crate::options::positive::<u32>)]
    jobs: u32,
    /// Run again what the last run missed or timed out on (after adding tests).
    #[arg(long)]
    rerun_missed: bool,
}

/// `FILE`, `FILE:N` or `FILE:N+K`.
fn file_spec(f: &str) -> Result<(String, Option<Step>)> {
    match f.rsplit_once(':') {
        Some((path, n)) => Ok((path.to_string(), Some(step(n, f)?))),
        None => Ok((f.to_string(), None)),
    }
}

fn positive(v: &str, name: &str) -> Result<u32> {
    crate::options::positive(v).map_err(|e| format!("{name}: {e}"))
}

/// `N` or `N+K` (every N-th mutant from the K-th on, K < N).
fn step(v: &str, what: &str) -> Result<Step> {
    let (n, k) = v.split_once('+').unwrap_or((v, "0"));
    let step = positive(n, what)?;
    let offset: u32 =
        k.parse().ok().filter(|&k| k < step).ok_or_else(|| format!("{what}: the offset K of N+K must be below N"))?;
    Ok(Step { step, offset })
}

fn options(a: &Args) -> Options {
    let mut o = Options { files: a.files.clone(), sample: a.sample, jobs: a.jobs, rerun_missed: a.rerun_missed };
    if o.files.is_empty() {
        o.files = CORE.iter().map(|s| (s.to_string(), None)).collect();
    }
    o
}

fn ensure_cargo_mutants() -> Result<()> {
    let have = Command::new("cargo").args(["mutants", "--version"]).output().is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-mutants (cargo install cargo-mutants --locked)");
    let ok = Command::new("cargo").args(["install", "cargo-mutants", "--locked"]).status().is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err("could not install cargo-mutants: run `cargo install cargo-mutants --locked`".into()) }
}

/// Lines of a cargo-mutants outcome file (none when absent).
fn lines(out: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(out.join("mutants.out").join(name))
        .map(|s| s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The timed-out mutants whose test run had reported a failed test before the timeout
/// (from cargo-mutants' `outcomes.json` and each mutant's log).
fn failed_then_timed_out(out: &Path) -> Vec<String> {
    let dir = out.join("mutants.out");
    let Ok(text) = std::fs::read_to_string(dir.join("outcomes.json")) else { return Vec::new() };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let Some(list) = v["outcomes"].as_array() else { return Vec::new() };
    list.iter()
        .filter(|o| o["summary"] == "Timeout")
        .filter(|o| {
            o["log_path"]
                .as_str()
                .and_then(|p| std::fs::read_to_string(dir.join(p)).ok())
                .is_some_and(|log| log.lines().any(|l| l.starts_with("test ") && l.ends_with(" ... FAILED")))
        })
        .filter_map(|o| o["scenario"]["Mutant"]["name"].as_str().map(str::to_string))
        .collect()
}

/// A regular expression matching exactly the mutant named `name` (as `--list` prints it).
fn exact(name: &str) -> String {
    let mut r = String::from("^");
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            r.push('\\');
        }
        r.push(c);
    }
    r.push('$');
    r
}

/// Every `step`-th of `names` from the `offset`-th on: a systematic sample (with offset 0,
/// cargo-mutants' round-robin shard 0 of `step`).
fn sample(names: &[String], s: Step) -> Vec<String> {
    names.iter().skip(s.offset as usize).step_by(s.step as usize).cloned().collect()
}

/// The mutants of `file`, in source order (`cargo mutants --list`).
fn list(root: &Path, file: &str) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["mutants", "--list", "--file", file])
        .output()
        .map_err(|e| format!("running cargo mutants --list: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo mutants --list --file {file} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// `cargo xtask mutants`.
pub fn cmd(root: &Path, args: &Args) -> Result<u8> {
    let o = options(args);
    for (f, _) in &o.files {
        if !root.join(f).is_file() {
            return Err(format!("{f}: no such file (give paths from the workspace root, e.g. hmm/src/range.rs)"));
        }
    }
    ensure_cargo_mutants()?;
    let out = root.join("target/mutants");
    // The mutants to test: a sample of each file, and with `--rerun-missed` what the last run
    // missed or timed out on without a failed test (after adding tests: the caught ones stay
    // caught, as tests were only added).
    let last: Vec<String> = if o.rerun_missed {
        let late = failed_then_timed_out(&out);
        let timeouts = lines(&out, "timeout.txt").into_iter().filter(|n| !late.contains(n));
        lines(&out, "missed.txt").into_iter().chain(timeouts).collect()
    } else {
        Vec::new()
    };
    let mut chosen: Vec<(String, Vec<String>)> = Vec::new();
    // cargo-mutants 27.1 tests every struct-field deletion ("delete field x from struct S
    // expression") of a `--file` whatever `--re` and `--exclude-re` say: they come on top of
    // the sample, and the summary counts by file.
    for (f, own) in &o.files {
        let all = list(root, f)?;
        let again: Vec<String> = all.iter().filter(|n| last.contains(n)).cloned().collect();
        let mut picked = again.clone();
        if let Some(st) = o.step(*own) {
            let sampled = sample(&all, st);
            println!("{f}: {} of {} mutants (every {} from the {}th)", sampled.len(), all.len(), st.step, st.offset);
            picked.extend(sampled.into_iter().filter(|n| !again.contains(n)));
        }
        if o.rerun_missed {
            println!("{f}: {} missed or timed out last time", again.len());
        }
        if !picked.is_empty() {
            chosen.push((f.clone(), picked));
        }
    }
    let names: Vec<&String> = chosen.iter().flat_map(|(_, n)| n).collect();
    if names.is_empty() {
        return Err("no mutant to test".into());
    }
    // One cargo-mutants run for all files: one copy of the tree, one baseline build and test.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["mutants", "--profile", "mutants", "--test-package", "hmm", "--no-shuffle"]);
    // Only the library's test harness: `hmm` has no integration tests, examples or
    // doc-tests (its doc code blocks are all `text`), so a plain `cargo test` would also
    // build the library a second time without `cfg(test)` and run rustdoc for nothing,
    // nearly doubling every mutant's build on a loaded machine.
    cmd.args(["--cargo-arg=--lib"]);
    // A hung mutant (a wait that no longer ends) is cut at 3 baseline test times, not 5.
    cmd.args(["--timeout-multiplier", "3"]);
    for (f, _) in &chosen {
        cmd.args(["--file", f]);
    }
    for n in &names {
        cmd.args(["--re", &exact(n)]);
    }
    cmd.arg("--output").arg(&out).args(["--jobs", &o.jobs.to_string()]);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let status = cmd.status().map_err(|e| format!("running cargo mutants: {e}"))?;
    let outcomes = ["caught.txt", "missed.txt", "timeout.txt", "unviable.txt"].map(|n| lines(&out, n));
    let failed_first = failed_then_timed_out(&out);
    let mut tested = 0;
    let mut any_missed = false;
    println!();
    for (f, _) in &chosen {
        let prefix = format!("{f}:");
        let [caught, missed, timeout, unviable] =
            outcomes.each_ref().map(|l| l.iter().filter(|n| n.starts_with(&prefix)).count());
        // A mutant whose run had already failed tests when it timed out (a slow test made
        // slower still) was caught.
        let late = failed_first.iter().filter(|n| n.starts_with(&prefix)).count();
        let late = late.min(timeout);
        let (caught, timeout) = (caught + late, timeout - late);
        tested += caught + missed + timeout + unviable;
        let viable = caught + missed + timeout;
        let score = if viable == 0 { 100.0 } else { 100.0 * caught as f64 / viable as f64 };
        any_missed |= missed + timeout > 0;
        let late = if late > 0 { format!(" ({late} of them failed tests, then timed out)") } else { String::new() };
        println!("{f}: {caught} caught{late}, {missed} missed, {timeout} timed out, {unviable} unviable: {score:.0} %");
    }
    println!("(the missed ones are in {})", out.join("mutants.out/missed.txt").display());
    if !status.success() && tested == 0 {
        return Err("cargo mutants failed before testing any mutant (see above)".into());
    }
    Ok(if any_missed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[String]) -> std::result::Result<Options, String> {
        let all = ["cargo xtask", "mutants"].into_iter().map(String::from).chain(args.iter().cloned());
        match <crate::options::Cli as clap::Parser>::try_parse_from(all).map_err(|e| e.to_string())?.command {
            crate::options::Command::Mutants(a) => Ok(super::options(&a)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&a(&["hmm/src/range.rs", "--sample", "8", "hmm/src/notifier.rs:3", "x.rs:5+2"])).unwrap();
        let st = |step, offset| Some(Step { step, offset });
        let files = vec![
            ("hmm/src/range.rs".into(), None),
            ("hmm/src/notifier.rs".into(), st(3, 0)),
            ("x.rs".into(), st(5, 2)),
        ];
        assert_eq!(o, Options { files, sample: Some(8), jobs: 1, rerun_missed: false });
        assert_eq!(o.step(None), st(8, 0));
        assert_eq!(o.step(st(3, 1)), st(3, 1));
        // No sample: every mutant; with --rerun-missed alone, only the missed ones.
        assert_eq!(parse(&a(&["f.rs"])).unwrap().step(None), st(1, 0));
        let o = parse(&a(&["--rerun-missed"])).unwrap();
        assert!(o.rerun_missed && o.step(None).is_none());
        assert!(parse(&a(&["hmm/src/range.rs:0"])).unwrap_err().contains("positive"));
        assert!(parse(&a(&["hmm/src/range.rs:4+4"])).unwrap_err().contains("below"));
        assert_eq!(parse(&[]).unwrap().files.len(), CORE.len());
        assert!(parse(&a(&["--sample", "0"])).unwrap_err().contains("positive"));
        assert!(parse(&a(&["--frobnicate"])).unwrap_err().contains("unexpected argument '--frobnicate'"));
    }

    #[test]
    fn exact_names_and_samples() {
        let n = "hmm/src/range.rs:133:37: replace | with ^ in <impl PfnEncoding for HmmPfn>::encode";
        assert_eq!(
            exact(n),
            r"^hmm/src/range\.rs:133:37: replace \| with \^ in <impl PfnEncoding for HmmPfn>::encode$"
        );
        let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(sample(&names, Step { step: 4, offset: 0 }), ["0", "4", "8"]);
        assert_eq!(sample(&names, Step { step: 4, offset: 2 }), ["2", "6"]);
        assert_eq!(sample(&names, Step { step: 1, offset: 0 }).len(), 10);
    }
}
