//! The cluster tests, run by `cargo xtask test` on one single-node Slurm cluster started on this
//! machine ([`super::cluster`]; both skipped, saying why, only when Slurm is not installed and
//! cannot be). The cluster is stopped whatever happens (dropping it).
//!
//! - `experiment::slurm_sweep_matches_local` ([`SWEEP`]): runs `experiments/default.toml` on
//!   `--host` through the cluster with `cargo xtask experiment --slurm --tasks 2 --wait` (a job
//!   array of two shards and the merge job after them, each running the built xtask binary),
//!   then the same sweep locally, and compares the two run folders: the same results in
//!   everything but the measured time columns ([`compare`]).
//! - `experiment::slurm_failed_shard_is_named` ([`FAILED`]): a job array whose second task
//!   fails: the merge job is cancelled, not left pending, and [`super::wait`] names the shard, its
//!   exit status and its log.

use super::cluster::{self, Cluster, ClusterError, PARTITION};
use crate::root;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sweep test's name in `cargo xtask test`'s tally.
pub const SWEEP: &str = "experiment::slurm_sweep_matches_local";

/// The failed shard test's name.
pub const FAILED: &str = "experiment::slurm_failed_shard_is_named";

/// Both, in the order they run.
pub const NAMES: [&str; 2] = [SWEEP, FAILED];

/// The sweep it runs.
pub const FILE: &str = "experiments/default.toml";

/// How long the sweep through Slurm may take, in seconds.
pub const TIMEOUT: u64 = 300;

/// A test's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It passed.
    Pass,
    /// It failed, for this reason.
    Fail(String),
    /// It could not run here, for this reason.
    Skip(String),
}

/// Columns of `results.csv` that measure time (the host's or TCG's), which differ run to run.
pub fn is_time_column(name: &str) -> bool {
    name == "mechanism_ms" || name.contains("wall")
}

/// The run folder an `experiment` command's output names (`results in DIR (...)`).
pub fn results_dir(stdout: &str) -> Option<PathBuf> {
    stdout.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("results in ")?;
        Some(PathBuf::from(rest.split(" (").next()?.trim()))
    })
}

/// `results.csv` of `dir` as its header and rows, the time columns left out.
fn rows(dir: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let path = dir.join("results.csv");
    let mut r = csv::Reader::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header: Vec<String> =
        r.headers().map_err(|e| format!("{}: {e}", path.display()))?.iter().map(String::from).collect();
    let keep: Vec<usize> = (0..header.len()).filter(|&i| !is_time_column(&header[i])).collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("{}: {e}", path.display()))?;
        rows.push(keep.iter().map(|&i| rec.get(i).unwrap_or("").to_string()).collect());
    }
    Ok((keep.iter().map(|&i| header[i].clone()).collect(), rows))
}

/// The first difference between the results in `local` and in `slurm`, ignoring the time
/// columns: the CSV's header and rows, and which plots there are and what they show (the plots of
/// simulated time and counts; a plot of measured time may differ). `None` when they agree.
pub fn compare(local: &Path, slurm: &Path) -> Result<Option<String>, String> {
    let (lh, lr) = rows(local)?;
    let (sh, sr) = rows(slurm)?;
    if lh != sh {
        return Ok(Some(format!("results.csv's columns differ: local {lh:?}, Slurm {sh:?}")));
    }
    if lr.len() != sr.len() {
        return Ok(Some(format!("results.csv has {} rows locally, {} through Slurm", lr.len(), sr.len())));
    }
    for (a, b) in lr.iter().zip(&sr) {
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            return Ok(Some(format!(
                "results.csv, point {}: {} is {} locally, {} through Slurm",
                a.first().map_or("?", String::as_str),
                lh[i],
                a[i],
                b[i]
            )));
        }
    }
    let plots = |d: &Path| -> Result<Vec<String>, String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("plot") && n.ends_with(".svg"))
            .collect();
        v.sort();
        Ok(v)
    };
    let (lp, sp) = (plots(local)?, plots(slurm)?);
    if lp != sp {
        return Ok(Some(format!("the plots differ: local {lp:?}, Slurm {sp:?}")));
    }
    // `plot-W-mech.svg` plots the mechanism's measured time (`mechanism_ms`), which differs run to
    // run like that column: only its name is compared. Every other plot is drawn from results
    // alone (experiment::plot) and must be byte for byte the same.
    for p in lp.iter().filter(|p| !is_time_column(p) && !p.contains("mech")) {
        let read = |d: &Path| std::fs::read(d.join(p)).map_err(|e| format!("{}: {e}", d.join(p).display()));
        if read(local)? != read(slurm)? {
            return Ok(Some(format!("{p} differs between the local run and the run through Slurm")));
        }
    }
    Ok(None)
}

/// Runs the xtask (this binary) with `args` from the checkout's root, `conf` as `SLURM_CONF`;
/// returns its stdout, or why it failed with the end of its output.
fn xtask(args: &[&str], conf: Option<&Path>) -> Result<String, String> {
    let exe = super::running_xtask()?;
    let mut cmd = Command::new(&exe);
    cmd.current_dir(root()).args(args);
    if let Some(c) = conf {
        cmd.env("SLURM_CONF", c);
    }
    let out = cmd.output().map_err(|e| format!("running {}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = all.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  | ");
        return Err(format!("`xtask {}` failed ({}):\n  | {tail}", args.join(" "), out.status));
    }
    Ok(stdout)
}

/// The tests whose names start with `only` (all: `""`), with their verdicts.
pub fn run(only: &str) -> Vec<(&'static str, Verdict)> {
    let names: Vec<&'static str> = NAMES.into_iter().filter(|n| n.starts_with(only)).collect();
    let all = |v: Verdict| names.iter().map(|n| (*n, v.clone())).collect();
    if names.is_empty() {
        return Vec::new();
    }
    match cluster::ensure_installed() {
        Ok(()) => {}
        Err(e @ ClusterError::NotInstalled { .. }) => return all(Verdict::Skip(e.to_string())),
        Err(e) => return all(Verdict::Fail(e.to_string())),
    }
    let dir = std::env::temp_dir().join(format!("hmm-slurm-test-{}", std::process::id()));
    let cluster = match Cluster::start(&dir) {
        Ok(c) => c,
        Err(e) => return all(Verdict::Fail(format!("starting the cluster: {e}"))),
    };
    let verdicts =
        names.iter().map(|&n| (n, if n == SWEEP { sweep(&cluster) } else { failed_shard(&cluster) })).collect();
    // Stops the daemons and removes the directory.
    drop(cluster);
    verdicts
}

/// A job array of two tasks, the second failing (exit 3), and the merge after it: [`super::wait`]
/// must report the merge cancelled and name shard 1/2, its exit status and its log.
fn failed_shard(cluster: &Cluster) -> Verdict {
    let d = std::env::temp_dir().join(format!("hmm-slurm-failed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let verdict = (|| -> Result<Verdict, String> {
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let fake = d.join("fake-xtask");
        std::fs::write(
            &fake,
            "#!/bin/bash\necho \"task $SLURM_ARRAY_TASK_ID: $*\"\n[ \"${SLURM_ARRAY_TASK_ID:-}\" != 1 ] || exit 3\n",
        )
        .map_err(|e| format!("{}: {e}", fake.display()))?;
        let s = super::Sweep {
            name: "failing".into(),
            run_dir: d.join("run"),
            workdir: d.clone(),
            xtask: fake,
            shard_args: vec!["--shard".into(), super::SHARD.into()],
            merge_args: vec!["merge".into()],
            tasks: 2,
            cpus_per_task: 1,
            partition: Some(PARTITION.into()),
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.xtask, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let scripts = super::write(&s)?;
        let sub = super::submit(&cluster.client(), &s, &scripts)?;
        let got = super::wait(
            &cluster.client(),
            &sub,
            std::time::Duration::from_secs(120),
            std::time::Duration::from_millis(250),
        );
        let log0 = std::fs::read_to_string(scripts.shard_log(0)).unwrap_or_default();
        let want = format!("shard 1/2 FAILED (exit 3:0), log {}", scripts.shard_log(1).display());
        Ok(match got {
            Err(super::SlurmError::Failed { what }) if what.contains(&want) && what.contains("CANCELLED") => {
                if log0.trim() == "task 0: --shard 0/2" {
                    Verdict::Pass
                } else {
                    Verdict::Fail(format!(
                        "shard 0's log {} holds {log0:?}, not its command line",
                        scripts.shard_log(0).display()
                    ))
                }
            }
            other => Verdict::Fail(format!("expected the merge cancelled and \"{want}\", got {other:?}")),
        })
    })();
    let _ = std::fs::remove_dir_all(&d);
    verdict.unwrap_or_else(|e| Verdict::Fail(format!("{e}\nthe cluster's logs end:\n{}", cluster.logs())))
}

/// The sweep through `cluster` and locally, compared.
fn sweep(cluster: &Cluster) -> Verdict {
    let timeout = TIMEOUT.to_string();
    let through = xtask(
        &[
            "experiment",
            FILE,
            "--host",
            "--slurm",
            "--partition",
            PARTITION,
            "--tasks",
            "2",
            "--wait",
            "--wait-timeout",
            &timeout,
        ],
        Some(cluster.conf()),
    );
    let slurm = match through.map(|o| (results_dir(&o), o)) {
        Ok((Some(d), _)) => d,
        Ok((None, o)) => {
            return Verdict::Fail(format!("the sweep through Slurm named no results folder; it printed:\n{o}"));
        }
        Err(e) => return Verdict::Fail(format!("{e}\nthe cluster's logs end:\n{}", cluster.logs())),
    };
    let local = match xtask(&["experiment", FILE, "--host"], None).map(|o| results_dir(&o)) {
        Ok(Some(d)) => d,
        Ok(None) => return Verdict::Fail("the local sweep named no results folder".into()),
        Err(e) => return Verdict::Fail(e),
    };
    if local == slurm {
        return Verdict::Fail(format!(
            "the local sweep and the one through Slurm wrote the same folder {}",
            local.display()
        ));
    }
    match compare(&local, &slurm) {
        Ok(None) => Verdict::Pass,
        Ok(Some(d)) => Verdict::Fail(format!("{} (local) and {} (Slurm): {d}", local.display(), slurm.display())),
        Err(e) => Verdict::Fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the temp dir (made by tempfile), removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str, csv: &str, plots: &[(&str, &str)]) -> Self {
            let d = tempfile::Builder::new().prefix(&format!("xtask-slurm-check-{name}-")).tempdir().unwrap().keep();
            std::fs::write(d.join("results.csv"), csv).unwrap();
            for (n, t) in plots {
                std::fs::write(d.join(n), t).unwrap();
            }
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CSV: &str = "id,label,sim_ms,mechanism_ms,dev_faults,error\n0,\"a,b\",1.5,12.0,10,\n1,c,2.5,13.0,11,\n";

    #[test]
    fn runs_differing_only_in_time_agree() {
        let a = Dir::new("a", CSV, &[("plot-x.svg", "<svg>1</svg>"), ("plot-x-mech.svg", "<svg>5</svg>")]);
        let b = Dir::new(
            "b",
            &CSV.replace("12.0", "99.9").replace("13.0", "0.1"),
            &[("plot-x.svg", "<svg>1</svg>"), ("plot-x-mech.svg", "<svg>6</svg>")],
        );
        assert_eq!(compare(&a.0, &b.0), Ok(None));
    }

    #[test]
    fn a_difference_outside_time_is_named() {
        let a = Dir::new("c", CSV, &[("plot-x.svg", "<svg>1</svg>")]);
        let b = Dir::new("d", &CSV.replace(",11,", ",12,"), &[("plot-x.svg", "<svg>1</svg>")]);
        let d = compare(&a.0, &b.0).unwrap().unwrap();
        assert_eq!(d, "results.csv, point 1: dev_faults is 11 locally, 12 through Slurm");
        let b = Dir::new("e", CSV.lines().take(2).map(|l| format!("{l}\n")).collect::<String>().as_str(), &[]);
        assert!(compare(&a.0, &b.0).unwrap().unwrap().contains("2 rows locally, 1 through Slurm"));
        let b = Dir::new("f", CSV, &[("plot-x.svg", "<svg>2</svg>")]);
        assert!(compare(&a.0, &b.0).unwrap().unwrap().contains("plot-x.svg differs"));
        let b = Dir::new("g", CSV, &[]);
        assert!(compare(&a.0, &b.0).unwrap().unwrap().contains("the plots differ"));
        let b = Dir::new("h", &CSV.replace("error", "err"), &[("plot-x.svg", "<svg>1</svg>")]);
        assert!(compare(&a.0, &b.0).unwrap().unwrap().contains("columns differ"));
    }

    #[test]
    fn the_results_folder_is_read_from_the_output() {
        let out = "12 points, 0 failed; ...\nresults in /w/target/experiments/default/2026-12-02T14-05-33Z (results.csv, summary.txt, 2 plot(s))\n";
        assert_eq!(results_dir(out), Some(PathBuf::from("/w/target/experiments/default/2026-12-02T14-05-33Z")));
        assert_eq!(results_dir("nothing\n"), None);
    }
}
