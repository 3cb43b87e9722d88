//! The xtask binary end to end, on the host (`--host`, no QEMU): a run stopped by SIGTERM (or
//! by Ctrl-C's SIGINT) keeps its finished points and a resume ends with the results a run
//! without a stop gives; the shards of a run merged give the results of the whole run. Results are compared in
//! everything but the measured time of the mechanism (`mechanism_ms`, the summary's `mech ms`),
//! which is the host's, not a result.
//!
//! Each test writes its experiment under its own name, so its runs go to their own
//! `target/experiments/NAME/` (removed at the end), never to a shipped experiment's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs the xtask in the checkout with `args` (and `env`).
fn xtask(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.current_dir(root()).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    eprintln!("xtask {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// An experiment file named `name` with the text of `text` otherwise (in a temporary folder,
/// removed when the first value is dropped), and its runs' folder.
fn experiment(name: &str, text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let base = root().join("target/experiments").join(name);
    let _ = std::fs::remove_dir_all(&base);
    // Its own folder: two checkouts testing at once must not share the file.
    let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir().unwrap();
    let file = dir.path().join("experiment.toml");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = lines.iter().position(|l| l.starts_with("name = ")).unwrap();
    lines[i] = format!("name = \"{name}\"");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    (dir, file, base)
}

/// The run folder `latest` names.
fn latest(base: &Path) -> PathBuf {
    base.join(std::fs::read_link(base.join("latest")).unwrap())
}

/// results.csv without the mechanism's measured time.
fn csv_without_time(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let skip = header.iter().position(|h| h == "mechanism_ms").unwrap();
    let mut rows = vec![header];
    rows.extend(rd.records().map(|r| r.unwrap().iter().map(String::from).collect()));
    for r in &mut rows {
        r.remove(skip);
    }
    rows
}

/// summary.txt without the `mech ms` column (a point's row: workload 28, policy 16, ratio 6,
/// sim ms 11, then mech ms 10 characters wide, one space apart).
fn summary_without_time(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("summary.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let c: Vec<char> = l.chars().collect();
            let mech: String = c.get(65..76).map_or(String::new(), |m| m.iter().collect());
            if mech.trim().parse::<f64>().is_ok() && mech.starts_with(' ') {
                c[..65].iter().chain(&c[76..]).collect()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// Every plot file of a run folder, by name, but the plots of the mechanism's measured time
/// (`plot-*-mech.svg`: host time, different every run), of which only the names are kept.
fn plots(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("plot-"))
        .map(|n| {
            let svg =
                if n.ends_with("-mech.svg") { String::new() } else { std::fs::read_to_string(dir.join(&n)).unwrap() };
            (n, svg)
        })
        .collect();
    v.sort();
    v
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}

const SMALL: &str = r#"
name = "small"
device_memory = ["1M"]
[[workload]]
kind = "stream"
[[workload]]
kind = "random"
updates = 2
[[policy]]
name = "od, \"quoted\""
placement = "on-touch"
eviction = { order = "lru4k" }
[[policy]]
name = "tree"
placement = "tree"
[sweep]
oversubscription = [1.0, 1.5]
"#;

#[test]
fn a_run_stopped_by_sigterm_keeps_its_points_and_a_resume_finishes_it_the_same() {
    let (_file_dir, file, base) = experiment("xtask-test-resume", SMALL);
    let f = file.to_str().unwrap();
    let whole = xtask(&["experiment", f, "--host", "--jobs", "1"], &[]);
    assert!(whole.status.success());
    let whole_dir = latest(&base);
    // Stopped by SIGTERM after its third point.
    let stopped = xtask(&["experiment", f, "--host", "--jobs", "1"], &[("XTASK_TEST_SIGTERM_AFTER", "3")]);
    assert_eq!(stopped.status.code(), Some(128 + 15), "SIGTERM's status");
    let out = String::from_utf8_lossy(&stopped.stdout);
    assert!(out.contains("interrupted by SIGTERM: 3 of 8 points finished"), "{out}");
    let dir = latest(&base);
    assert_ne!(dir, whole_dir, "a run folder was reused");
    assert_eq!(lines(&dir.join("points.jsonl")), 3);
    // The partial results: every point a row, the three finished ones with their results.
    let partial = csv_without_time(&dir);
    assert_eq!(partial.len(), 9);
    let error = partial[0].iter().position(|h| h == "error").unwrap();
    assert_eq!(partial[1..].iter().filter(|r| r[error].is_empty()).count(), 3, "{partial:?}");
    assert_eq!(partial[1..4], csv_without_time(&whole_dir)[1..4]);
    // The resume runs only the five left, and ends with the whole run's results.
    let resumed = xtask(&["experiment", "--resume", dir.to_str().unwrap(), "--jobs", "1"], &[]);
    assert!(resumed.status.success());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("3 of 8 points finished; running 5"));
    assert_eq!(lines(&dir.join("points.jsonl")), 8);
    assert_eq!(csv_without_time(&dir), csv_without_time(&whole_dir));
    assert_eq!(summary_without_time(&dir), summary_without_time(&whole_dir));
    assert_eq!(plots(&dir), plots(&whole_dir));
    let prov = std::fs::read_to_string(dir.join("provenance.toml")).unwrap();
    assert_eq!(prov.matches("[[resumed]]").count(), 1, "{prov}");
    assert!(prov.contains("action = \"resume\""), "{prov}");
    // Nothing is left to run: a second resume runs no point and changes nothing.
    let again = xtask(&["experiment", "--resume", dir.to_str().unwrap()], &[]);
    assert!(again.status.success());
    assert_eq!(lines(&dir.join("points.jsonl")), 8);
    // A resume with another experiment file is refused.
    let other = file.with_file_name("other.toml");
    std::fs::write(&other, SMALL).unwrap();
    let refused = xtask(&["experiment", other.to_str().unwrap(), "--resume", dir.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not the experiment"));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn ctrl_c_keeps_the_finished_points_and_says_how_to_resume() {
    let (_file_dir, file, base) = experiment("xtask-test-ctrl-c", SMALL);
    let f = file.to_str().unwrap();
    // SIGINT, as Ctrl-C sends, after the second point.
    let stopped = xtask(&["experiment", f, "--host", "--jobs", "1"], &[("XTASK_TEST_SIGINT_AFTER", "2")]);
    assert_eq!(stopped.status.code(), Some(128 + 2), "SIGINT's status");
    let out = String::from_utf8_lossy(&stopped.stdout);
    assert!(out.contains("interrupted by SIGINT (Ctrl-C): 2 of 8 points finished"), "{out}");
    assert!(out.contains("resume with: cargo xtask experiment --resume xtask-test-ctrl-c/"), "{out}");
    let dir = latest(&base);
    assert_eq!(lines(&dir.join("points.jsonl")), 2);
    let partial = csv_without_time(&dir);
    let error = partial[0].iter().position(|h| h == "error").unwrap();
    assert_eq!(partial[1..].iter().filter(|r| r[error].is_empty()).count(), 2, "{partial:?}");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_shards_of_the_default_experiment_merged_equal_a_whole_run() {
    let text = std::fs::read_to_string(root().join("experiments/default.toml")).unwrap();
    let (_file_dir, file, base) = experiment("xtask-test-shards", &text);
    let f = file.to_str().unwrap();
    let whole = xtask(&["experiment", f, "--host"], &[]);
    assert!(whole.status.success());
    let whole_dir = latest(&base);
    let first = xtask(&["experiment", f, "--host", "--shard", "0/2"], &[]);
    assert!(first.status.success());
    let dir = latest(&base);
    assert!(String::from_utf8_lossy(&first.stdout).contains("shard 0/2: 6 of its 6 points finished"));
    assert!(!dir.join("results.csv").exists(), "a shard writes no results");
    let d = dir.to_str().unwrap();
    let second = xtask(&["experiment", "--resume", d, "--shard", "1/2"], &[]);
    assert!(second.status.success());
    assert_eq!((lines(&dir.join("points-shard-0-of-2.jsonl")), lines(&dir.join("points-shard-1-of-2.jsonl"))), (6, 6));
    let merged = xtask(&["experiment", "merge", d], &[]);
    assert!(merged.status.success());
    assert_eq!(csv_without_time(&dir), csv_without_time(&whole_dir));
    assert_eq!(
        std::fs::read_to_string(dir.join("results.columns.csv")).unwrap(),
        std::fs::read_to_string(whole_dir.join("results.columns.csv")).unwrap()
    );
    assert_eq!(summary_without_time(&dir), summary_without_time(&whole_dir));
    let p = plots(&dir);
    let names: Vec<&str> = p.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["plot-bfs-mech.svg", "plot-bfs.svg", "plot-stream-mech.svg", "plot-stream.svg"]);
    assert_eq!(p, plots(&whole_dir));
    let _ = std::fs::remove_dir_all(&base);
}
