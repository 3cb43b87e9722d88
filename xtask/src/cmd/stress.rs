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

fn number(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("not a number: {s}"))
}

/// Runs the command; `Ok(1)` when a run failed.
pub fn cmd_stress(args: &[String]) -> Result<u8, String> {
    let (mut ops, mut seed, mut seeds, mut threads, mut trace) = (100_000u64, 1u64, 1u64, false, false);
    let mut minimize: Option<usize> = None;
    let mut avoid: Vec<Feature> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--ops" => ops = number(value()?)?,
            "--seed" => seed = number(value()?)?,
            "--seeds" => seeds = number(value()?)?,
            "--threads" => threads = true,
            "--trace" => trace = true,
            "--avoid" => {
                for name in value()?.split(',') {
                    let all: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                    avoid.push(
                        Feature::from_name(name).ok_or(format!("unknown feature {name}; known: {}", all.join(", ")))?,
                    );
                }
            }
            "--minimize" => {
                minimize = Some(400);
                if let Some(b) = it.peek().and_then(|b| number(b).ok()) {
                    minimize = Some(b as usize);
                    it.next();
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
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
