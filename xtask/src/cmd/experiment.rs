//! `cargo xtask experiment FILE [--check] [--list] [--host] [--jobs N] [--timeout SECS] [--kernel ELF] [--shard I/N]`,
//! `cargo xtask experiment --resume RUN [FILE] [--jobs N] [--timeout SECS] [--shard I/N]` and
//! `cargo xtask experiment merge RUN`: runs an experiment file into a run folder, resumes one,
//! or merges its shards.
//!
//! `--check` loads and checks the file and says what a run would do, `--list` lists its points;
//! neither builds or boots anything. Otherwise: loads and checks the file
//! ([`crate::experiment`]), makes a new run folder
//! (`target/experiments/NAME/RUN-ID/`, [`crate::run`]) with the copies of the experiment and
//! machine files and the provenance, then runs its points in QEMU guests (`--jobs` at a time,
//! `points_per_boot` each, a batch rerun in a fresh guest after a mechanism error) or on the
//! host over the HMM stack on the host platform (`--host`: the same hmm core over software
//! page tables and RAM-backed devices, `hmm::place::engine::host`). Each point's result (and
//! trace) is recorded in the run folder as it finishes; the CSV, plots, trace and summary are
//! then written from the records, and the summary and comparison tables printed with each
//! published cell's and ordering's verdict and, last, the `reproduction:` line (also in
//! `summary.txt`).
//!
//! Ctrl-C or SIGTERM stops the run: no new point starts, QEMU is killed and its device-memory
//! files removed, the finished points stay recorded and the partial results are written; the
//! exit status is 128 + the signal. `--resume RUN` runs the points of RUN that have no
//! finished record (the experiment and machine files are RUN's copies, checked against the
//! machine file and the points as they expand now) and writes the whole run's results again.
//! `--shard I/N` runs only the points whose id is I modulo N, recording them in the shard's
//! own file, and writes no results; `merge RUN` writes the results of every record in RUN, as
//! a run of all the points in one place would.

use crate::decode::points_and_traces;
use crate::experiment;
use crate::interrupt;
use crate::options::positive;
use crate::qemu::{Launch, run_qemu};
use crate::run::{self, Invocation, Record, Run, Shard};
use crate::setup::{Profile, build_kernel, ensure_prerequisites};
use crate::{Result, root};
use boot::protocol::Tag;
use hmm::place::spec::Point;
use progress::Progress;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a run of points ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ran {
    /// The signal that stopped it before every point ran, if one did.
    pub interrupted: Option<i32>,
}

/// The test hooks of the end-to-end tests: after this many points are recorded, the xtask
/// sends itself SIGTERM (as `kill` would) or SIGINT (as Ctrl-C would), so a test stops a run at
/// a known point without depending on timing. Unset in normal use.
const STOP_AFTER_ENV: &str = "XTASK_TEST_SIGTERM_AFTER";
const INT_AFTER_ENV: &str = "XTASK_TEST_SIGINT_AFTER";

/// The test hook's point count and signal, if one is set.
fn stop_after() -> Option<(usize, i32)> {
    let after = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    after(STOP_AFTER_ENV)
        .map(|n| (n, signal_hook::consts::SIGTERM))
        .or_else(|| after(INT_AFTER_ENV).map(|n| (n, signal_hook::consts::SIGINT)))
}

/// The kernel a run's guests boot.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// Built from this checkout with the profile.
    Build(Profile),
    /// This ELF, as given (`--kernel`).
    Elf(PathBuf),
}

impl Kernel {
    /// The ELF to boot: built now, or the given one once checked to be an ELF file.
    fn path(&self) -> Result<PathBuf> {
        match self {
            Kernel::Build(p) => build_kernel(*p),
            Kernel::Elf(f) => check_elf(f).map(|()| f.clone()),
        }
    }
}

/// Whether `f` is an ELF file, as `--kernel` needs.
fn check_elf(f: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(f).and_then(|mut h| std::io::Read::read_exact(&mut h, &mut magic));
    match read {
        Err(e) => Err(format!(
            "--kernel {}: cannot read it ({e}); give a kernel ELF, e.g. target/x86_64-unknown-none/release/kernel",
            f.display()
        )),
        Ok(()) if &magic != b"\x7fELF" => Err(format!(
            "--kernel {}: not an ELF file; give the kernel's ELF (target/x86_64-unknown-none/release/kernel), not an ISO or image",
            f.display()
        )),
        Ok(()) => Ok(()),
    }
}

/// Runs `todo` (points of `l`) into `run`, recording each point's result as it finishes: in
/// QEMU guests (`jobs` at a time, `points_per_boot` each), or on the host over the HMM stack
/// on the host platform. Stops early on Ctrl-C or SIGTERM, recording nothing for the points
/// it stopped.
pub fn execute(
    run: &Run,
    l: &experiment::Loaded,
    todo: &[&Point],
    host: bool,
    jobs: usize,
    timeout: u64,
    kernel: &Kernel,
) -> Result<Ran> {
    interrupt::install();
    let progress = Progress::new(todo.len());
    let recorded = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let stop_after = stop_after();
    let keep = |r: Record| {
        if r.result.get("error").is_some() {
            progress.failed();
        }
        if let Err(e) = run.record(&r) {
            failures.lock().unwrap().push(e);
        }
        let n = recorded.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, sig)) = stop_after
            && at == n
        {
            // Delivered to this thread before raise returns: the handler has run.
            let _ = signal_hook::low_level::raise(sig);
        }
    };
    let stopped = || interrupt::requested().is_some();
    if host {
        let queue = Mutex::new(todo.iter().copied().collect::<std::collections::VecDeque<_>>());
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    while let Some(p) = {
                        let mut q = queue.lock().unwrap();
                        if stopped() { None } else { q.pop_front() }
                    } {
                        let (result, trace) = match run_on_host(p) {
                            Ok(x) => x,
                            Err(e) => (serde_json::json!({ "id": p.id, "error": e }), Vec::new()),
                        };
                        keep(Record { id: p.id, result, trace });
                        progress.point();
                    }
                });
            }
        });
    } else if !todo.is_empty() {
        ensure_prerequisites(l.machine.firmware == "qboot")?;
        let kernel = kernel.path()?;
        let per = l.exp.points_per_boot.as_ref().map_or(4, |p| (*p.get_ref()).max(1)) as usize;
        // A batch: the points one guest runs, and why it runs them again (a rerun after a
        // mechanism error in an earlier boot, which its results carry).
        type Batch<'p> = (Vec<&'p Point>, Option<String>);
        // Smaller boots at the end, so the guests finish together (`plan::boot_sizes`).
        let mut rest = todo;
        let chunks: Vec<Batch<'_>> = experiment::plan::boot_sizes(todo.len(), per, jobs)
            .into_iter()
            .map(|n| {
                let (c, r) = rest.split_at(n);
                rest = r;
                (c.to_vec(), None)
            })
            .collect();
        let jobs = jobs.max(1).min(chunks.len());
        let queue = Mutex::new(chunks.into_iter().collect::<std::collections::VecDeque<_>>());
        let boots = AtomicUsize::new(0);
        progress.start();
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| {
                    let mut next = None;
                    while let Some((batch, note)) = next.take().or_else(|| queue.lock().unwrap().pop_front()) {
                        if stopped() {
                            break;
                        }
                        let b = boots.fetch_add(1, Ordering::SeqCst);
                        // Named by its first point too: shards running at once into one folder
                        // never share a point, so never an image.
                        let image = run.dir.join(format!("image-{}-{b}.txt", batch[0].id));
                        let text: String = batch.iter().map(|p| p.encode()).collect();
                        if let Err(e) = std::fs::write(&image, text) {
                            failures.lock().unwrap().push(format!("writing {}: {e}", image.display()));
                            continue;
                        }
                        let ids: Vec<u32> = batch.iter().map(|p| p.id).collect();
                        // This boot's results and trace events as they arrive, and the points
                        // recorded so far: each is recorded as soon as its line arrives, unless
                        // an earlier point of the boot failed with a mechanism error
                        // (`experiment::sort_boot`, applied to the results so far).
                        let got = Mutex::new((experiment::Results::new(), BTreeMap::<u32, Vec<Value>>::new()));
                        let kept = Mutex::new(std::collections::BTreeSet::<u32>::new());
                        let counted = AtomicUsize::new(0);
                        let record_kept = |got: &experiment::Results, traces: &BTreeMap<u32, Vec<Value>>| {
                            let mut kept = kept.lock().unwrap();
                            for (id, r) in experiment::sort_boot(&ids, got, note.as_deref()).keep {
                                if kept.insert(id) {
                                    let trace = traces.get(&id).cloned().unwrap_or_default();
                                    keep(Record { id, result: r, trace });
                                }
                            }
                        };
                        let on_line = |line: &str| {
                            let Some((tag, payload)) = boot::protocol::parse_line(line) else { return };
                            let Ok(j) = serde_json::from_str::<Value>(payload) else { return };
                            let mut g = got.lock().unwrap();
                            match tag {
                                Tag::Trace => {
                                    let id = j["point"].as_u64().unwrap_or(u64::MAX) as u32;
                                    g.1.entry(id).or_default().push(j);
                                }
                                Tag::Point => {
                                    let Some(id) = j["id"].as_u64() else { return };
                                    g.0.insert(id as u32, j);
                                    record_kept(&g.0, &g.1);
                                    counted.fetch_add(1, Ordering::SeqCst);
                                    progress.point();
                                }
                                _ => {}
                            }
                        };
                        let launched = run_qemu(&Launch {
                            restart_on: Some(Tag::Point),
                            initrd: Some(&image),
                            on_line: Some(&on_line),
                            ..Launch::new(
                                &kernel,
                                &l.machine,
                                "job=experiment log=warn".into(),
                                Duration::from_secs(timeout),
                            )
                        });
                        // Stopped: what finished is recorded; the rest is not a failure.
                        if stopped() {
                            break;
                        }
                        match launched {
                            Ok(qemu) => {
                                // The lines again, whole (a line the callback could not take).
                                let (all, traces) = points_and_traces(&qemu.lines);
                                let mut by_point = BTreeMap::<u32, Vec<Value>>::new();
                                for t in traces {
                                    by_point.entry(t["point"].as_u64().unwrap_or(u64::MAX) as u32).or_default().push(t);
                                }
                                record_kept(&all, &by_point);
                                // A boot with a failure leaves its serial log (warnings
                                // included) beside the image, for the why.
                                if experiment::boot_failed(&ids, &all) {
                                    let log = run.dir.join(format!("guest-{}-{b}.log", batch[0].id));
                                    if let Err(e) = std::fs::write(&log, qemu.lines.join("\n") + "\n") {
                                        failures.lock().unwrap().push(format!("writing {}: {e}", log.display()));
                                    } else {
                                        progress.note(&format!(
                                            "  a point of boot {b} failed: its guest's log is {}",
                                            log.display()
                                        ));
                                    }
                                }
                                let sorted = experiment::sort_boot(&ids, &all, note.as_deref());
                                if let Some((rest, why)) = sorted.rerun {
                                    // The progress bar counted the discarded results once.
                                    progress.discard(counted.load(Ordering::SeqCst).saturating_sub(sorted.keep.len()));
                                    progress.note(&format!("  {why}; rerunning {} points", rest.len()));
                                    next = Some((
                                        batch.iter().copied().filter(|p| rest.contains(&p.id)).collect(),
                                        Some(why),
                                    ));
                                    continue;
                                }
                                let why = qemu.outcome.describe();
                                let kept = kept.lock().unwrap().clone();
                                for p in batch.iter().filter(|p| !kept.contains(&p.id)) {
                                    let tail = crate::decode::tail(&qemu.lines, 5);
                                    let error = format!("no result: the guest ended with {why}; last lines: {tail}");
                                    keep(Record {
                                        id: p.id,
                                        result: serde_json::json!({ "id": p.id, "error": error }),
                                        trace: Vec::new(),
                                    });
                                    // No result line: not counted yet.
                                    if !got.lock().unwrap().0.contains_key(&p.id) {
                                        progress.point();
                                    }
                                }
                            }
                            Err(e) => {
                                for p in &batch {
                                    let error = format!("QEMU: {e}");
                                    keep(Record {
                                        id: p.id,
                                        result: serde_json::json!({ "id": p.id, "error": error }),
                                        trace: Vec::new(),
                                    });
                                    // Counted already if its result line arrived.
                                    if !got.lock().unwrap().0.contains_key(&p.id) {
                                        progress.point();
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
    }
    progress.end();
    if let Some(e) = failures.into_inner().unwrap().first() {
        return Err(e.clone());
    }
    Ok(Ran { interrupted: interrupt::requested() })
}

/// One point on the host over the HMM stack on the host platform: its result and trace.
fn run_on_host(p: &Point) -> std::result::Result<(Value, Vec<Value>), String> {
    let prepared = p.prepare(&p.devices).map_err(|e| e.to_string())?;
    // The host's monotonic clock: the mechanism's own time on the host.
    let t0 = Instant::now();
    let clock = Box::new(move || t0.elapsed().as_nanos() as u64);
    let mut m = hmm::place::engine::host::HostStack::new(prepared.pages, &prepared.capacities, clock)
        .map_err(|e| e.to_string())?;
    let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
    drop(m);
    let j = hmm::place::spec::result_json(p, &o, "host");
    let tr = o.trace.iter().filter_map(|e| serde_json::from_str(&hmm::place::spec::trace_json(p.id, e)).ok()).collect();
    Ok((serde_json::from_str(&j).map_err(|e| e.to_string())?, tr))
}

/// Runs every point of `l` (read from `file`) in a new run folder, as `action` (e.g. a check
/// of `cargo xtask test`), and returns the results by point and the trace events. A run
/// stopped by Ctrl-C or SIGTERM is an error.
pub fn run_points(
    file: &Path,
    l: &experiment::Loaded,
    host: bool,
    jobs: usize,
    timeout: u64,
    profile: Profile,
) -> Result<(experiment::Results, Vec<Value>)> {
    let base = experiment::out_dir(root(), l);
    let run = Run::create(&base, root(), file, l, Invocation::now("test", root(), None), host)?;
    let todo: Vec<&Point> = l.points.iter().collect();
    let ran = execute(&run, l, &todo, host, jobs, timeout, &Kernel::Build(profile))?;
    if let Some(sig) = ran.interrupted {
        return Err(format!("interrupted by {}; what finished is in {}", interrupt::name(sig), run.dir.display()));
    }
    Ok(run::results_of(&run::read_records(&run.dir)?))
}

/// Writes the CSV, plots, trace and summary into the run folder `dir`, prints the summary and
/// comparison tables; returns whether every point produced a result.
pub fn report_experiment(
    l: &experiment::Loaded,
    dir: &Path,
    results: &experiment::Results,
    traces: &[Value],
    wall: Duration,
) -> Result<bool> {
    let write = |name: &str, data: &str| run::write_atomic(dir, name, data.as_bytes());
    write("results.csv", &experiment::csv(l, results))?;
    write("results.columns.csv", &experiment::csv_columns(results))?;
    write("workloads.csv", &experiment::workloads_csv(l, results))?;
    let plots = experiment::plots(l, results).map_err(|e| e.to_string())?;
    for (name, svg) in &plots {
        write(name, svg)?;
    }
    if !traces.is_empty() {
        write("trace.json", &experiment::trace(l, results, traces))?;
    }
    let summary = experiment::summary(l, results);
    let comparisons = experiment::comparisons(l, results);
    let reproduction = experiment::reproduction(&experiment::verdicts(l, results));
    write(
        "summary.txt",
        &format!("{summary}{comparisons}{}", reproduction.as_ref().map_or(String::new(), |r| format!("\n{r}"))),
    )?;
    println!("\n== experiment {}: {} ==", l.exp.name.get_ref(), l.exp.description);
    println!("{}", experiment::summary_terminal(l, results));
    print!("{}", experiment::comparisons_terminal(l, results));
    let failed = results.values().filter(|r| r.get("error").is_some()).count();
    let missing = l.points.iter().filter(|p| !results.contains_key(&p.id)).count();
    let sim_vs_wall: f64 = results.values().filter_map(|r| r["mechanism_ns"].as_f64()).sum::<f64>() / 1e9;
    let host = results.values().any(|r| r["mechanism"].as_str() == Some("host"));
    let why =
        if host { "the HMM stack over the host platform; the mech ms column" } else { "measured; the mech ms column" };
    println!(
        "\n{} points, {} failed{}; {} ({why}) {:.1} s (the sim ms column is the cost model's simulated device time); {:.1} s in all",
        l.points.len(),
        failed,
        if missing > 0 { format!(", {missing} without a result") } else { String::new() },
        experiment::mechanism_time(results),
        sim_vs_wall,
        wall.as_secs_f64()
    );
    let truncated = experiment::truncated_traces(results);
    if !truncated.is_empty() {
        let ids: Vec<String> = truncated.iter().map(|t| t.0.to_string()).collect();
        println!(
            "trace truncated at the per-point cap (run.trace) for point(s) {}: {} events dropped in all; raise run.trace to keep them",
            ids.join(", "),
            truncated.iter().map(|t| t.2).sum::<u64>()
        );
    }
    println!(
        "results in {} (results.csv, workloads.csv, summary.txt, {} plot(s){})",
        dir.display(),
        plots.len(),
        if traces.is_empty() { "" } else { ", trace.json for Perfetto / chrome://tracing" }
    );
    // Last, so the run ends with it: each table's counts and the whole file's.
    if let Some(r) = reproduction {
        print!("\n{r}");
    }
    Ok(failed + missing == 0)
}

/// `cargo xtask experiment`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Run an experiment file into a run folder, resume a run (--resume), merge its shards (merge), or only check the file (--check) or list its points (--list)",
    long_about = "Run an experiment file (experiments/*.toml): its points in QEMU guests (--jobs at a time, points_per_boot each) or on the host over the HMM stack (--host), in a new run folder target/experiments/NAME/RUN-ID/ (`latest` beside it names the newest) holding copies of the experiment and machine files, provenance.toml and each point's record as it finishes; then the CSV, plots, trace and summary there, the comparison tables with their verdicts, and the `reproduction:` line.\n\nCtrl-C or SIGTERM stops the run and keeps what finished; --resume RUN runs what is left. --shard I/N runs only the points whose id is I mod N (the first shard with FILE, the others with --resume RUN); `merge RUN` then writes the results of every shard.\n\nThe file is checked before anything boots; --check stops there and says what a run would do, --list also lists every point.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// `merge RUN`.
    #[command(subcommand)]
    sub: Option<Sub>,
    /// The experiment file, e.g. experiments/reproduce.toml (any of experiments/*.toml); with --resume, checked to be the run's.
    #[arg(value_name = "FILE", required_unless_present = "resume")]
    file: Option<PathBuf>,
    /// Only check the file and print what a run would do (points, boots, machine, output folder); boot nothing.
    #[arg(long, conflicts_with = "resume")]
    check: bool,
    /// Only check the file and list the points a run would run (id, label, workload, policy, ratio, repetition); boot nothing.
    #[arg(long, conflicts_with = "resume")]
    list: bool,
    /// Run the points on the host, over the HMM stack on the host platform, instead of in QEMU guests.
    #[arg(long)]
    host: bool,
    /// Guests (or host threads) at a time [default: one per host core].
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    jobs: Option<usize>,
    /// Kill a guest that finishes no point for SECS seconds (the xtask's own timeout; each point's result starts it again; not with --host).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = positive::<u64>, conflicts_with = "host")]
    timeout: u64,
    /// Boot this kernel ELF instead of building one from the checkout (a kernel built elsewhere, or an older build to compare against); with --slurm every shard boots it; not with --host.
    #[arg(long, value_name = "ELF", conflicts_with = "host")]
    kernel: Option<PathBuf>,
    /// `--slurm` and its options: the sweep handed to Slurm (`crate::slurm`).
    #[command(flatten)]
    slurm: crate::slurm::SlurmArgs,
    /// Resume the run folder RUN (a path, or relative to target/experiments/, e.g. default/latest): run its points that have no finished record, the way the run began (--host or QEMU).
    #[arg(long, value_name = "RUN")]
    resume: Option<String>,
    /// Run only shard I of N: the points whose id is I modulo N, recorded in the run folder; no results are written (merge RUN writes them).
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    shard: Option<Shard>,
}

/// `cargo xtask experiment`'s subcommands.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Merge the records of a run folder (every shard's) into the CSV, tables, plots, trace and summary a run of all its points in one place writes.
    Merge {
        /// The run folder: a path, or relative to target/experiments/ (e.g. default/latest).
        #[arg(value_name = "RUN")]
        run: String,
    },
}

impl Args {
    /// `--jobs`, else one per host core.
    fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// `cargo xtask experiment`.
pub fn cmd(a: &Args) -> Result<u8> {
    interrupt::install();
    if let Some(k) = &a.kernel {
        check_elf(k)?;
    }
    match (&a.sub, &a.resume, &a.file) {
        (Some(Sub::Merge { run }), _, _) => merge(run),
        (None, Some(run), file) => resume(a, run, file.as_deref()),
        (None, None, Some(file)) => run_new(a, file),
        (None, None, None) => Err("which experiment? e.g. cargo xtask experiment experiments/reproduce.toml".into()),
    }
}

/// The points of `l` in `shard` that `records` has no finished record of.
fn to_run<'l>(l: &'l experiment::Loaded, shard: Option<Shard>, records: &BTreeMap<u32, Record>) -> Vec<&'l Point> {
    l.points
        .iter()
        .filter(|p| shard.is_none_or(|s| s.contains(p.id)))
        .filter(|p| !records.get(&p.id).is_some_and(Record::finished))
        .collect()
}

fn run_new(a: &Args, file: &Path) -> Result<u8> {
    let l = experiment::load(file, root())?;
    if a.host && l.exp.cost.get("lines").and_then(|v| v.get_ref().as_str()) == Some("hmat") {
        return Err(format!(
            "{}: cost.lines = \"hmat\" takes the line costs from the guest's ACPI HMAT, which --host has not got; run it without --host",
            file.display()
        ));
    }
    if let Some(o) = a.slurm.options() {
        return crate::slurm::submit_experiment(&l, file, a.host, a.jobs, a.timeout, a.kernel.as_deref(), &o);
    }
    if a.check || a.list {
        print!("{}", experiment::plan::check(&l, file, root(), a.host, a.jobs()));
        if a.list {
            print!("\n{}", experiment::plan::list(&l));
        }
        return Ok(0);
    }
    let base = experiment::out_dir(root(), &l);
    let run = Run::create(&base, root(), file, &l, Invocation::now("run", root(), a.shard), a.host)?;
    let todo = to_run(&l, a.shard, &BTreeMap::new());
    eprintln!(
        "xtask: experiment {}: {} points{} on {}{}; run folder {}",
        l.exp.name.get_ref(),
        todo.len(),
        a.shard.map_or(String::new(), |s| format!(" (shard {s} of {})", l.points.len())),
        l.machine.description,
        if a.host { " (host: the HMM stack over the host platform)" } else { "" },
        run.dir.display()
    );
    finish(&run, &l, &todo, a, a.host)
}

fn resume(a: &Args, arg: &str, file: Option<&Path>) -> Result<u8> {
    let dir = run::resolve(root(), arg)?;
    let prov = run::provenance(&dir)?;
    if a.host && !prov.on_host {
        return Err(format!(
            "{} ran its points in QEMU guests; a resume runs them the same way: drop --host",
            dir.display()
        ));
    }
    let copy = dir.join("experiment.toml");
    if let Some(f) = file {
        let given = std::fs::read(f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        if std::fs::read(&copy).ok().as_deref() != Some(given.as_slice()) {
            return Err(format!(
                "{} is not the experiment {} ran (its copy is {}): give the run folder alone to resume it, or start a new run of {}",
                f.display(),
                dir.display(),
                copy.display(),
                f.display()
            ));
        }
    }
    let l = experiment::load(&copy, root())?;
    run::check_machine(&dir, root(), &l)?;
    run::check_points(&dir, &l, &prov)?;
    let records = run::read_records(&dir)?;
    let run = Run::reopen(&dir, Invocation::now("resume", root(), a.shard))?;
    let todo = to_run(&l, a.shard, &records);
    let finished = records.values().filter(|r| r.finished()).count();
    eprintln!(
        "xtask: resuming {}: {finished} of {} points finished; running {}{}",
        dir.display(),
        l.points.len(),
        todo.len(),
        a.shard.map_or(String::new(), |s| format!(" of shard {s}"))
    );
    finish(&run, &l, &todo, a, prov.on_host)
}

/// Runs `todo` into `run`, then writes the run's results (all of its records) unless this is
/// a shard; the exit status.
fn finish(run: &Run, l: &experiment::Loaded, todo: &[&Point], a: &Args, host: bool) -> Result<u8> {
    let t0 = Instant::now();
    let kernel = a.kernel.clone().map_or(Kernel::Build(Profile::Release), Kernel::Elf);
    let ran = execute(run, l, todo, host, a.jobs(), a.timeout, &kernel)?;
    let records = run::read_records(&run.dir)?;
    let finished = records.values().filter(|r| r.finished()).count();
    let rel = run.dir.strip_prefix(root().join("target/experiments")).unwrap_or(&run.dir).display().to_string();
    if let Some(s) = run.shard {
        let mine: Vec<u32> = l.points.iter().map(|p| p.id).filter(|id| s.contains(*id)).collect();
        let done = mine.iter().filter(|id| records.get(id).is_some_and(Record::finished)).count();
        println!(
            "shard {s}: {done} of its {} points finished, recorded in {}; once every shard is done: cargo xtask experiment merge {rel}",
            mine.len(),
            run.dir.display()
        );
        if let Some(sig) = ran.interrupted {
            println!(
                "interrupted by {}: resume the shard with: cargo xtask experiment --resume {rel} --shard {s}",
                interrupt::name(sig)
            );
            return Ok(interrupt::exit_status(sig));
        }
        return Ok(if done == mine.len() { 0 } else { 1 });
    }
    let (results, traces) = run::results_of(&records);
    let ok = report_experiment(l, &run.dir, &results, &traces, t0.elapsed())?;
    if let Some(sig) = ran.interrupted {
        println!(
            "\ninterrupted by {}: {finished} of {} points finished, kept in {} (results.csv has them); resume with: cargo xtask experiment --resume {rel}",
            interrupt::name(sig),
            l.points.len(),
            run.dir.display()
        );
        return Ok(interrupt::exit_status(sig));
    }
    Ok(if ok { 0 } else { 1 })
}

/// `cargo xtask experiment merge RUN`: the results of every record in the run folder.
fn merge(arg: &str) -> Result<u8> {
    let t0 = Instant::now();
    let dir = run::resolve(root(), arg)?;
    let prov = run::provenance(&dir)?;
    let l = experiment::load(&dir.join("experiment.toml"), root())?;
    run::check_points(&dir, &l, &prov)?;
    run::add_invocation(&dir, &Invocation::now("merge", root(), None))?;
    let records = run::read_records(&dir)?;
    let missing: Vec<u32> =
        l.points.iter().map(|p| p.id).filter(|id| !records.get(id).is_some_and(Record::finished)).collect();
    let (results, traces) = run::results_of(&records);
    let ok = report_experiment(&l, &dir, &results, &traces, t0.elapsed())?;
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(u32::to_string).collect();
        println!(
            "\n{} of {} points not finished ({}{}); run them with: cargo xtask experiment --resume {} [--shard I/N]",
            missing.len(),
            l.points.len(),
            shown.join(", "),
            if missing.len() > 20 { ", ..." } else { "" },
            dir.display()
        );
    }
    Ok(if ok { 0 } else { 1 })
}

mod progress;

#[cfg(test)]
mod args_tests;
