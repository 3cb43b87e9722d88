//! `cargo xtask mutants [FILE...] [--sample N] [--jobs J]`: mutation testing of the HMM core
//! with cargo-mutants (installed from crates.io on first use).
//!
//! Each mutant (an operator flipped, a return value replaced, a condition negated...) is
//! built with the `mutants` cargo profile (the test profile without debug info: fast builds,
//! every debug assertion and overflow check on) and the `hmm` crate's tests are run against
//! it; a mutant that no test fails is *missed*. The default files are the core ones the
//! reliability issue names; `--sample N` takes every N-th mutant of each (a systematic
//! sample, cargo-mutants' round-robin sharding). Results go to `target/mutants/<file>/`
//! (cargo-mutants' `mutants.out`: `caught.txt`, `missed.txt`, `timeout.txt`, `unviable.txt`),
//! and a summary line per file with its score, caught ÷ (caught + missed + timeout).

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

/// Parsed options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    files: Vec<String>,
    sample: u32,
    jobs: u32,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { files: Vec::new(), sample: 1, jobs: 1 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u32> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u32| n > 0)
                .ok_or_else(|| format!("{name} takes a positive number"))
        };
        match a.as_str() {
            "--sample" => o.sample = num("--sample")?,
            "--jobs" => o.jobs = num("--jobs")?,
            f if f.starts_with('-') => return Err(format!("unknown option '{f}' (use --sample N, --jobs J)")),
            f => o.files.push(f.to_string()),
        }
    }
    if o.files.is_empty() {
        o.files = CORE.iter().map(|s| s.to_string()).collect();
    }
    Ok(o)
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

/// Lines of a cargo-mutants outcome file (0 when absent).
fn count(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join("mutants.out").join(name))
        .map_or(0, |s| s.lines().filter(|l| !l.is_empty()).count())
}

pub fn cmd(root: &Path, args: &[String]) -> Result<u8> {
    let o = parse(args)?;
    for f in &o.files {
        if !root.join(f).is_file() {
            return Err(format!("{f}: no such file (give paths from the workspace root, e.g. hmm/src/range.rs)"));
        }
    }
    ensure_cargo_mutants()?;
    let mut summary = Vec::new();
    let mut any_missed = false;
    for f in &o.files {
        let out = root.join("target/mutants").join(f.replace('/', "_"));
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root).args(["mutants", "--profile", "mutants", "--test-package", "hmm", "--no-shuffle"]);
        cmd.args(["--file", f, "--output"]).arg(&out).args(["--jobs", &o.jobs.to_string()]);
        if o.sample > 1 {
            cmd.args(["--sharding", "round-robin", "--shard", &format!("0/{}", o.sample)]);
        }
        println!("== {f}{} ==", if o.sample > 1 { format!(" (every {}th mutant)", o.sample) } else { String::new() });
        let status = cmd.status().map_err(|e| format!("running cargo mutants: {e}"))?;
        let (caught, missed, timeout, unviable) = (
            count(&out, "caught.txt"),
            count(&out, "missed.txt"),
            count(&out, "timeout.txt"),
            count(&out, "unviable.txt"),
        );
        let viable = caught + missed + timeout;
        let score = if viable == 0 { 100.0 } else { 100.0 * caught as f64 / viable as f64 };
        any_missed |= missed > 0;
        summary.push(format!(
            "{f}: {caught} caught, {missed} missed, {timeout} timed out, {unviable} unviable: {score:.0} % (missed ones in {})",
            out.join("mutants.out/missed.txt").display()
        ));
        if !status.success() && viable == 0 {
            return Err(format!("cargo mutants failed on {f} before testing any mutant (see above)"));
        }
    }
    println!();
    for l in &summary {
        println!("{l}");
    }
    Ok(if any_missed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&a(&["hmm/src/range.rs", "--sample", "8"])).unwrap();
        assert_eq!(o, Options { files: vec!["hmm/src/range.rs".into()], sample: 8, jobs: 1 });
        assert_eq!(parse(&[]).unwrap().files.len(), CORE.len());
        assert!(parse(&a(&["--sample", "0"])).unwrap_err().contains("positive"));
        assert!(parse(&a(&["--frobnicate"])).unwrap_err().contains("unknown option"));
    }
}
