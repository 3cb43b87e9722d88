//! `cargo xtask experiment FILE [--check] [--list] [--host] [--jobs N] [--timeout SECS]`: runs
//! an experiment file.
//!
//! `--check` loads and checks the file and says what a run would do, `--list` lists its points;
//! neither builds or boots anything. Otherwise: loads and checks the file ([`crate::experiment`]), runs its points in QEMU guests (`--jobs`
//! at a time, `points_per_boot` each, a batch rerun in a fresh guest after a mechanism error)
//! or on the host over the HMM stack on the host platform (`--host`: the same hmm core over
//! software page tables and RAM-backed devices, `hmm::place::engine::host`), then writes the CSV, plots and trace
//! into `target/experiments/NAME/` and prints the summary and comparison tables, each published
//! cell's and ordering's verdict, and, last, the `reproduction:` line (also in `summary.txt`).

use crate::decode::points_and_traces;
use crate::experiment;
use crate::options::positive;
use crate::qemu::{Boot, Launch, run_qemu};
use crate::setup::{Profile, build_kernel, ensure_prerequisites};
use crate::{Result, root};
use boot::protocol::Tag;
use serde_json::Value;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// Runs every point of `l`: in QEMU guests (`jobs` at a time, `points_per_boot` each), or on
/// the host over the HMM stack on the host platform. Returns the results by point and the
/// trace events.
pub fn run_points(
    l: &experiment::Loaded,
    host: bool,
    jobs: usize,
    timeout: u64,
    profile: Profile,
) -> Result<(experiment::Results, Vec<Value>)> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let total = l.points.len();
    let done = AtomicUsize::new(0);
    let progress = |n: usize| {
        let width = 30;
        let filled = n * width / total.max(1);
        eprint!("\r  [{}{}] {n}/{total} points", "#".repeat(filled), ".".repeat(width - filled));
        if n == total {
            eprintln!();
        }
    };
    let results = Mutex::new(experiment::Results::new());
    let traces = Mutex::new(Vec::new());
    if host {
        let queue = Mutex::new(l.points.iter().collect::<std::collections::VecDeque<_>>());
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    while let Some(p) = {
                        let mut q = queue.lock().unwrap();
                        q.pop_front()
                    } {
                        let r = (|| -> std::result::Result<(Value, Vec<Value>), String> {
                            let prepared = p.prepare(&p.devices).map_err(|e| e.to_string())?;
                            // The host's monotonic clock: the mechanism's own time on the host.
                            let t0 = Instant::now();
                            let clock = Box::new(move || t0.elapsed().as_nanos() as u64);
                            let mut m =
                                hmm::place::engine::host::HostStack::new(prepared.pages, &prepared.capacities, clock)
                                    .map_err(|e| e.to_string())?;
                            let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
                            drop(m);
                            let j = hmm::place::spec::result_json(p, &o, "host");
                            let tr = o
                                .trace
                                .iter()
                                .filter_map(|e| serde_json::from_str(&hmm::place::spec::trace_json(p.id, e)).ok())
                                .collect();
                            Ok((serde_json::from_str(&j).map_err(|e| e.to_string())?, tr))
                        })();
                        let v = match r {
                            Ok((v, tr)) => {
                                traces.lock().unwrap().extend(tr);
                                v
                            }
                            Err(e) => serde_json::json!({ "id": p.id, "error": e }),
                        };
                        results.lock().unwrap().insert(p.id, v);
                        progress(done.fetch_add(1, Ordering::SeqCst) + 1);
                    }
                });
            }
        });
    } else {
        ensure_prerequisites(l.machine.firmware == "qboot")?;
        let kernel = build_kernel(profile)?;
        let dir = experiment::out_dir(root(), l);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let per = l.exp.points_per_boot.as_ref().map_or(4, |p| (*p.get_ref()).max(1)) as usize;
        // A batch: the points one guest runs, and why it runs them again (a rerun after a
        // mechanism error in an earlier boot, which its results carry).
        type Batch<'p> = (Vec<&'p hmm::place::spec::Point>, Option<String>);
        let chunks: Vec<Batch<'_>> = l.points.chunks(per).map(|c| (c.iter().collect(), None)).collect();
        let jobs = jobs.max(1).min(chunks.len());
        let queue = Mutex::new(chunks.into_iter().collect::<std::collections::VecDeque<_>>());
        let boots = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        progress(0);
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| {
                    let mut next = None;
                    while let Some((batch, note)) = next.take().or_else(|| queue.lock().unwrap().pop_front()) {
                        let b = boots.fetch_add(1, Ordering::SeqCst);
                        let image = dir.join(format!("image-{b}.txt"));
                        let text: String = batch.iter().map(|p| p.encode()).collect();
                        if let Err(e) = std::fs::write(&image, text) {
                            failures.lock().unwrap().push(format!("writing {}: {e}", image.display()));
                            continue;
                        }
                        let counted = AtomicUsize::new(0);
                        let on_line = |line: &str| {
                            if Tag::Point.payload(line).is_some() {
                                counted.fetch_add(1, Ordering::SeqCst);
                                progress(done.fetch_add(1, Ordering::SeqCst) + 1);
                            }
                        };
                        let run = run_qemu(&Launch {
                            kernel: &kernel,
                            machine: &l.machine,
                            cmdline: "job=experiment log=warn".into(),
                            accel: "tcg",
                            gdb: false,
                            timeout: Duration::from_secs(timeout),
                            echo: false,
                            initrd: Some(&image),
                            on_line: Some(&on_line),
                            boot: Boot::Pvh,
                        });
                        let mut res = results.lock().unwrap();
                        match run {
                            Ok(run) => {
                                let (got, tr) = points_and_traces(&run.lines);
                                traces.lock().unwrap().extend(tr);
                                let ids: Vec<u32> = batch.iter().map(|p| p.id).collect();
                                let sorted = experiment::sort_boot(&ids, &got, note.as_deref());
                                let kept = sorted.keep.len();
                                res.extend(sorted.keep);
                                if let Some((rest, why)) = sorted.rerun {
                                    // The progress bar counted the discarded results once.
                                    let discarded = counted.load(Ordering::SeqCst).saturating_sub(kept);
                                    done.fetch_sub(discarded.min(done.load(Ordering::SeqCst)), Ordering::SeqCst);
                                    eprintln!("\n  {why}; rerunning {} points", rest.len());
                                    next = Some((batch.iter().copied().filter(|p| rest.contains(&p.id)).collect(), Some(why)));
                                    continue;
                                }
                                let why = run.outcome.describe();
                                for p in &batch {
                                    res.entry(p.id).or_insert_with(|| {
                                        let tail = crate::decode::tail(&run.lines, 5);
                                        serde_json::json!({ "id": p.id, "error": format!("no result: the guest ended with {why}; last lines: {tail}") })
                                    });
                                }
                            }
                            Err(e) => {
                                for p in &batch {
                                    res.insert(p.id, serde_json::json!({ "id": p.id, "error": format!("QEMU: {e}") }));
                                }
                            }
                        }
                    }
                });
            }
        });
        if done.load(Ordering::SeqCst) < total {
            eprintln!();
        }
        if let Some(e) = failures.into_inner().unwrap().first() {
            return Err(e.clone());
        }
    }
    Ok((results.into_inner().unwrap(), traces.into_inner().unwrap()))
}

/// Writes the CSV, plots and trace, prints the summary and comparison tables; returns whether
/// every point produced a result.
pub fn report_experiment(
    l: &experiment::Loaded,
    results: &experiment::Results,
    traces: &[Value],
    wall: Duration,
) -> Result<bool> {
    let dir = experiment::out_dir(root(), l);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |name: &str, data: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("results.csv", &experiment::csv(l, results))?;
    write("results.columns.csv", &experiment::csv_columns(results))?;
    let plots = experiment::plots(l, results);
    for (name, svg) in &plots {
        write(name, svg)?;
    }
    if !traces.is_empty() {
        write("trace.json", &experiment::trace(l, traces))?;
    }
    let summary = experiment::summary(l, results);
    let comparisons = experiment::comparisons(l, results);
    let reproduction = experiment::reproduction(&experiment::verdicts(l, results));
    write(
        "summary.txt",
        &format!("{summary}{comparisons}{}", reproduction.as_ref().map_or(String::new(), |r| format!("\n{r}"))),
    )?;
    println!("\n== experiment {}: {} ==", l.exp.name.get_ref(), l.exp.description);
    println!("{summary}");
    print!("{comparisons}");
    let failed =
        results.values().filter(|r| r.get("error").is_some()).count() + l.points.len().saturating_sub(results.len());
    let sim_vs_wall: f64 = results.values().filter_map(|r| r["mechanism_ns"].as_f64()).sum::<f64>() / 1e9;
    let host = results.values().any(|r| r["mechanism"].as_str() == Some("host"));
    println!(
        "\n{} points, {} failed; {} {:.1} s (the sim ms column is the cost model's simulated device time); {:.1} s in all",
        l.points.len(),
        failed,
        if host {
            "host time of the mechanism (the HMM stack over the host platform; the mech ms column)"
        } else {
            "TCG time of the real mechanism (measured; the mech ms column)"
        },
        sim_vs_wall,
        wall.as_secs_f64()
    );
    println!(
        "results in {} (results.csv, summary.txt, {} plot(s){})",
        dir.display(),
        plots.len(),
        if traces.is_empty() { "" } else { ", trace.json for Perfetto / chrome://tracing" }
    );
    // Last, so the run ends with it: each table's counts and the whole file's.
    if let Some(r) = reproduction {
        print!("\n{r}");
    }
    Ok(failed == 0)
}

/// `cargo xtask experiment`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Run an experiment file, or only check it (--check) or list its points (--list)",
    long_about = "Run an experiment file (experiments/*.toml): its points in QEMU guests (--jobs at a time, points_per_boot each) or on the host over the HMM stack (--host); then the CSV, plots, trace and summary in target/experiments/NAME/, the comparison tables with their verdicts, and the `reproduction:` line.\n\nThe file is checked before anything boots; --check stops there and says what a run would do, --list also lists every point."
)]
pub struct Args {
    /// The experiment file, e.g. experiments/reproduce.toml (any of experiments/*.toml).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Only check the file and print what a run would do (points, boots, machine, output folder); boot nothing.
    #[arg(long)]
    check: bool,
    /// Only check the file and list the points a run would run (id, label, workload, policy, ratio, repetition); boot nothing.
    #[arg(long)]
    list: bool,
    /// Run the points on the host, over the HMM stack on the host platform, instead of in QEMU guests.
    #[arg(long)]
    host: bool,
    /// Guests (or host threads) at a time [default: one per host core].
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    jobs: Option<usize>,
    /// Kill a guest after SECS seconds (the xtask's own timeout per boot; not with --host).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = positive::<u64>, conflicts_with = "host")]
    timeout: u64,
}

/// `cargo xtask experiment`.
pub fn cmd(a: &Args) -> Result<u8> {
    let host = a.host;
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let timeout = a.timeout;
    let file = &a.file;
    let l = experiment::load(file, root())?;
    if host && l.exp.cost.get("lines").and_then(|v| v.get_ref().as_str()) == Some("hmat") {
        return Err(format!(
            "{}: cost.lines = \"hmat\" takes the line costs from the guest's ACPI HMAT, which --host has not got; run it without --host",
            file.display()
        ));
    }
    if a.check || a.list {
        print!("{}", experiment::plan::check(&l, file, root(), host, jobs));
        if a.list {
            print!("\n{}", experiment::plan::list(&l));
        }
        return Ok(0);
    }
    eprintln!(
        "xtask: experiment {}: {} points on {}{}",
        l.exp.name.get_ref(),
        l.points.len(),
        l.machine.description,
        if host { " (host: the HMM stack over the host platform)" } else { "" }
    );
    let t0 = Instant::now();
    let (results, traces) = run_points(&l, host, jobs, timeout, Profile::Release)?;
    Ok(if report_experiment(&l, &results, &traces, t0.elapsed())? { 0 } else { 1 })
}
