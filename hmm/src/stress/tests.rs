//! The bounded stress runs of `cargo test` (and so of `cargo xtask test`).

use super::*;
use std::sync::atomic::AtomicUsize;

/// Operation classes switched off because they hit known bugs; remove an entry once its fix
/// has landed (the run must then stay green). Every bug this test found in the
/// single-threaded mode is fixed (the fixes' own tests name them: the stale dmirror entries
/// after another file's migration, after fork and after close, the device fault racing its
/// own device's migration, rebuilt PTEs ignoring PROT_NONE, sections never returned, a false
/// blockable invalidation wedging the notifier, CPU faults failing on migration entries), so
/// nothing is avoided.
const KNOWN_BUGS_AVOIDED: &[(Feature, &str)] = &[];

fn avoided() -> Vec<Feature> {
    KNOWN_BUGS_AVOIDED.iter().map(|&(f, _)| f).collect()
}

/// Runs `cfg`, turning a panic in the code under test into a report with the last operations.
fn checked_run(cfg: &Config) -> Stats {
    let ring = std::sync::Mutex::new(VecDeque::<String>::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_observed(cfg, &mut |_, op| {
            let mut r = ring.lock().unwrap();
            if r.len() == RING {
                r.pop_front();
            }
            r.push_back(String::from(op));
        })
    }));
    match r {
        Ok(Ok(stats)) => stats,
        Ok(Err(f)) => match minimize(cfg, 40) {
            Some((m, ops)) => panic!("{f}\nminimized ({} operations):\n{}\n{m}", ops.len(), ops.join("\n")),
            None => panic!("{f}"),
        },
        Err(_) => {
            let r = ring.lock().unwrap();
            panic!(
                "seed {:#x} panicked; the last operations (the last one panicked):\n{}",
                cfg.seed,
                Vec::from(r.clone()).join("\n")
            )
        }
    }
}

#[test]
fn same_seed_same_run() {
    let cfg = Config::new(7, 1500).without(&avoided());
    assert_eq!(checked_run(&cfg), checked_run(&cfg));
}

/// The bounded run: 100 000 operations over 16 seeds.
#[test]
fn seeded_interleavings_keep_every_page() {
    let mut total = 0;
    for seed in 0..16u64 {
        let s = checked_run(&Config::new(0x5eed_0000 + seed, 6250).without(&avoided()));
        total += s.ops;
    }
    assert!(total >= 100_000);
}

std::thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed) as u64);
static NEXT: AtomicUsize = AtomicUsize::new(1);

/// Scoped std threads, each its own notifier context.
pub(super) struct StdThreads;

impl Threads for StdThreads {
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>) {
        crate::notifier::set_context_fn(|| ID.with(|i| *i));
        std::thread::scope(|s| {
            for t in tasks {
                s.spawn(t);
            }
        });
    }
}

/// The threaded mode, with every operation class on. Its checks hold under any interleaving;
/// before the fake platform's word-sized stores and the retry of a fault on a held device page,
/// about one run in 20 failed (`cargo xtask stress --threads --seeds 48` is the soak; 432 seeds
/// of 3 000 operations per thread passed after those fixes).
#[test]
fn threaded_cpu_device_and_migration_keep_every_page() {
    for seed in 0..2 {
        let cfg = ThreadedConfig { seed, ops_per_thread: 1000, disabled: avoided() };
        if let Err(f) = run_threaded(&cfg, &StdThreads) {
            panic!("{f}");
        }
    }
}
