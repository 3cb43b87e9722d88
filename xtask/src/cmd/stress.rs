//! `cargo xtask stress`: the seeded randomized interleaving test of the HMM stack
//! (`hmm::stress`) on the host, as a longer soak than `cargo test` runs.
//!
//! `cargo xtask stress [--ops N] [--seed S] [--seeds K] [--threads] [--avoid F,G,...]
//! [--minimize [BUDGET]] [--trace]`: runs `K` seeds from `S` (default one, from 1) of `N`
//! operations each (default 100000), single-threaded and deterministic, or with
//! `--threads` the threaded mode (`N` operations per thread). It prints each seed before it
//! runs, and on a failure the seed, the operation index, the last operations and the broken
//! check; `--minimize` then shrinks the failing sequence (at most BUDGET trial runs, default
//! 400). `--avoid` switches operation classes off (names: `hmm::stress::Feature::name`), e.g.
//! the known bugs the bounded test avoids. Exit status 1 on a failure.

use hmm::stress::{self, Config, Feature, ThreadedConfig, Threads};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The last operations, for the panic hook (the xtask aborts on panic).
static RING: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

std::thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed) as u64);
static NEXT: AtomicUsize = AtomicUsize::new(1);

/// Scoped std threads, each its own notifier context.
struct StdThreads;

impl Threads for StdThreads {
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>) {
        hmm::notifier::set_context_fn(|| ID.with(|i| *i));
        std::thread::scope(|s| {
            for t in tasks {
                s.spawn(t);
            }
        });
    }
}

/// `cargo xtask stress`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "The seeded randomized interleaving test of the HMM stack, as a longer soak",
    long_about = "The seeded randomized interleaving test of the HMM stack (hmm::stress) on the host: K seeds from S of N operations each, single-threaded and deterministic, or with --threads the threaded mode. On a failure it prints the seed, the operation index, the last operations and the broken check; --minimize then shrinks the failing sequence. Exit status 1 on a failure."
)]
pub struct Args {
    /// Operations per run (per thread with --threads).
    #[arg(long, value_name = "N", default_value = "100000", value_parser = number)]
    ops: u64,
    /// The first seed (decimal or 0x hex).
    #[arg(long, value_name = "S", default_value = "1", value_parser = number)]
    seed: u64,
    /// How many seeds, from S on.
    #[arg(long, value_name = "K", default_value = "1", value_parser = number)]
    seeds: u64,
    /// The threaded mode: CPU, device, migration and fork threads on one address space.
    #[arg(long)]
    threads: bool,
    /// Switch operation classes off, e.g. --avoid exclusive,fork (names: hmm::stress::Feature).
    #[arg(long, value_name = "F,G", value_delimiter = ',', value_parser = feature)]
    avoid: Vec<Feature>,
    /// On a failure, shrink the failing sequence in at most BUDGET trial runs.
    #[arg(long, value_name = "BUDGET", num_args = 0..=1, default_missing_value = "400", value_parser = number)]
    minimize: Option<u64>,
    /// Print every operation as it runs.
    #[arg(long)]
    trace: bool,
}

fn number(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("not a number: {s} (decimal, or hex with 0x)"))
}

fn feature(name: &str) -> Result<Feature, String> {
    let all: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
    Feature::from_name(name).ok_or(format!("unknown feature {name}; known: {}", all.join(", ")))
}

/// Runs the command; `Ok(1)` when a run failed.
pub fn cmd_stress(a: &Args) -> Result<u8, String> {
    let (ops, seed, seeds, threads, trace) = (a.ops, a.seed, a.seeds, a.threads, a.trace);
    let minimize = a.minimize.map(|b| b as usize);
    let avoid = a.avoid.clone();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("stress: the code under test panicked: {info}");
        eprintln!("the last operations (the last one panicked):");
        if let Ok(r) = RING.try_lock() {
            for o in r.iter() {
                eprintln!("    {o}");
            }
        }
    }));
    let mut failed = 0;
    for s in seed..seed + seeds {
        let t0 = std::time::Instant::now();
        if threads {
            println!("stress: threaded, seed {s:#x}, {ops} operations per thread");
            let cfg = ThreadedConfig { seed: s, ops_per_thread: ops, disabled: avoid.clone() };
            match stress::run_threaded(&cfg, &StdThreads) {
                Ok(st) => println!("  ok in {:.1?}: {st}", t0.elapsed()),
                Err(f) => {
                    println!("{f}");
                    failed += 1;
                }
            }
            continue;
        }
        println!("stress: seed {s:#x}, {ops} operations");
        let cfg = Config::new(s, ops).without(&avoid);
        let r = stress::run_observed(&cfg, &mut |_, op| {
            if trace {
                println!("  {op}");
            }
            let mut r = RING.lock().unwrap_or_else(|e| e.into_inner());
            if r.len() == stress::RING {
                r.pop_front();
            }
            r.push_back(String::from(op));
        });
        match r {
            Ok(st) => println!("  ok in {:.1?}: {st}", t0.elapsed()),
            Err(f) => {
                println!("{f}");
                failed += 1;
                if let Some(budget) = minimize {
                    println!("minimizing (at most {budget} runs)...");
                    if let Some((m, ops)) = stress::minimize(&cfg, budget) {
                        println!("minimal sequence ({} operations):", ops.len());
                        for o in &ops {
                            println!("    {o}");
                        }
                        println!("{m}");
                    }
                }
            }
        }
    }
    if failed > 0 {
        println!("stress: {failed} of {seeds} runs failed");
        return Ok(1);
    }
    println!("stress: {seeds} runs passed");
    Ok(0)
}
