//! `cargo xtask test [FILTER] [--machine FILE] [--skip-host] [--timeout SECS]`: every test.
//!
//! Host tests (`cargo test`), then the in-kernel tests under qboot (the whole suite, booting
//! again after a test that crashes or hangs to resume with the next), the PCI tests under
//! SeaBIOS, the device tests with coherent device memory, boot checks (a deliberate page fault,
//! panic, triple fault, stack overflow and bad kernel argument must each be reported clearly),
//! the default job booted through GRUB under SeaBIOS, the default job's CPU-side
//! checks on QEMU's microvm with and without ACPI,
//! the NUMA experiment's HMAT check, and the default experiment run on the host and in the guest,
//! which must agree. Ends with `N passed, N failed, N skipped`. With a `FILTER` (or
//! `--filter FILTER`) only the tests whose names contain it: the host tests `cargo test FILTER`
//! selects, then the in-kernel tests (`ktest.filter=FILTER`) on the machine and the boot checks
//! whose names contain it (or, for FILTER starting `boot::microvm`, `boot::grub` or `boot::clock`, or the start
//! of an experiment check's name, only those checks). A filter no test matches is a failure.

use super::experiment::run_points;
use crate::decode::{brief, json_line, tail};
use crate::experiment;
use crate::grub::{self, Firmware};
use crate::machine::Machine;
use crate::options::{MachineOpt, positive};
use crate::qemu::{Boot, Launch, Outcome, run_qemu};
use crate::setup::{Profile, build_kernel, ensure_prerequisites};
use crate::{Result, root};
use boot::protocol::{KTEST, Ktest, Tag};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

/// `cargo xtask test`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Every test: host tests, in-kernel tests in QEMU, boot checks",
    long_about = "Every test: `cargo test` over the host-testable crates, the in-kernel tests in QEMU (resuming after a test that crashes or hangs), the PCI tests under SeaBIOS, the device tests with coherent device memory, the boot checks, the GRUB and microvm boots, the clock-source boots and the experiment checks; ends with `N passed, N failed, N skipped`.\n\nWith FILTER, only the tests whose names contain it: `cargo test FILTER` on the host (unless --skip-host), then the in-kernel tests on the machine (the kernel's ktest.filter) and the boot checks whose names contain it. `boot::microvm...`, `boot::grub...`, `boot::clock...` and the experiment checks (`experiment::numa_hmat_line_costs`, `experiment::host_and_guest_agree_on_default`, `experiment::host_and_guest_agree_on_tenants`, `experiment::host_and_guest_agree_on_multigpu`, or a start of their names) run just those checks."
)]
pub struct Args {
    /// Run only the tests whose names contain FILTER (host and in-kernel), e.g. `faults::` or `mm::fork`.
    #[arg(value_name = "FILTER", value_parser = filter_value)]
    filter: Option<String>,
    /// The same as FILTER (kept for older scripts).
    #[arg(long = "filter", value_name = "FILTER", conflicts_with = "filter", value_parser = filter_value)]
    filter_option: Option<String>,
    #[command(flatten)]
    machine: MachineOpt,
    /// Skip the host tests (`cargo test`): only the tests in QEMU.
    #[arg(long)]
    skip_host: bool,
    /// Give every QEMU boot at least SECS seconds before the xtask kills it [default: 240 for the in-kernel suite, 60 to 300 for the other checks].
    #[arg(long, value_name = "SECS", value_parser = positive::<u64>)]
    timeout: Option<u64>,
}

impl Args {
    /// The filter, from the positional argument or `--filter`.
    fn filter(&self) -> Option<&str> {
        self.filter.as_deref().or(self.filter_option.as_deref())
    }
}

/// A test filter: it goes on the kernel command line as `ktest.filter=FILTER`, which splits at
/// whitespace.
fn filter_value(s: &str) -> Result<String> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "'{s}': a filter is one word (no spaces): it is passed to the kernel as ktest.filter=FILTER"
        ));
    }
    Ok(s.to_string())
}

/// The timeout of one boot: the check's own, or the `--timeout` floor if that is longer.
fn secs(own: u64, floor: Option<u64>) -> Duration {
    Duration::from_secs(own.max(floor.unwrap_or(0)))
}

/// The running count, printed as `test NAME ... ok|FAILED|skipped` lines.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    skipped: usize,
}

impl Tally {
    fn pass(&mut self, name: &str) {
        self.passed += 1;
        println!("test {name} ... ok");
    }
    fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        println!("test {name} ... skipped: {why}");
    }
    fn fail(&mut self, name: &str, why: &str) {
        self.failed.push(name.to_string());
        println!("test {name} ... FAILED: {why}");
    }
}

/// Runs the in-kernel suite, booting again after a crash or hang to continue with the next
/// test.
/// The kernel command line of the in-kernel suite from test `from`, only the tests whose names
/// contain `filter` (the kernel's `ktest.filter`).
fn suite_cmdline(from: usize, filter: Option<&str>) -> String {
    let mut cmdline = format!("log=warn ktest.from={from}");
    if let Some(f) = filter {
        cmdline.push_str(&format!(" ktest.filter={f}"));
    }
    cmdline
}

fn kernel_suite(
    kernel: &Path,
    machine: &Machine,
    filter: Option<&str>,
    label: &str,
    floor: Option<u64>,
    tally: &mut Tally,
) -> Result<()> {
    let mut from = 0usize;
    loop {
        let cmdline = suite_cmdline(from, filter);
        let run = run_qemu(&Launch::new(kernel, machine, cmdline, secs(240, floor)))?;
        let Suite { last_started, finished } = read_suite(&run.lines, label, tally);
        match (&run.outcome, finished) {
            (Outcome::Success | Outcome::Failure, true) => return Ok(()),
            (Outcome::TestPanicked | Outcome::TestHung, _) | (Outcome::Timeout(_), _) => {
                // The crashed test has already been reported unless the kernel died silently.
                let Some((i, name)) = last_started.or_else(|| {
                    run.lines.iter().rev().find_map(|l| match Ktest::parse(l)? {
                        Ktest::Fail { index, .. } | Ktest::Hang { index, .. } => Some((index, String::new())),
                        _ => None,
                    })
                }) else {
                    return Err(format!("{label}in-kernel tests: {} before any test started", run.outcome.describe()));
                };
                if !name.is_empty() {
                    tally.fail(&format!("{label}{name}"), &run.outcome.describe());
                }
                from = i + 1;
            }
            (outcome, _) => {
                for l in &run.lines[run.lines.len().saturating_sub(30)..] {
                    println!("  | {}", brief(l));
                }
                return Err(format!("{label}in-kernel tests did not finish: {}", outcome.describe()));
            }
        }
    }
}

/// What one boot's test runner lines said, beyond the tally.
#[derive(Debug, PartialEq)]
struct Suite {
    /// The test that started and did not end (it crashed or hung): its index and name.
    last_started: Option<(usize, String)>,
    /// The runner printed `done`.
    finished: bool,
}

/// Tallies one boot's `ktest:` lines (`boot::protocol::Ktest`), test names prefixed with
/// `label`, and prints the kernel's crash and warning lines among the others.
fn read_suite(lines: &[String], label: &str, tally: &mut Tally) -> Suite {
    let mut suite = Suite { last_started: None, finished: false };
    for line in lines {
        if !line.starts_with(KTEST) {
            if line.starts_with("BOOT FAILED")
                || line.starts_with("PANIC")
                || line.starts_with("FATAL")
                || line.contains("WARN")
            {
                println!("  {line}");
            }
            continue;
        }
        let Some(k) = Ktest::parse(line) else { continue };
        match k {
            Ktest::Start { index, name } => suite.last_started = Some((index, name.to_string())),
            Ktest::Ok { name, .. } => tally.pass(&format!("{label}{name}")),
            Ktest::Skip { name, why, .. } => tally.skip(&format!("{label}{name}"), why.to_string().trim()),
            Ktest::Fail { name, why, .. } => tally.fail(&format!("{label}{name}"), why.to_string().trim()),
            Ktest::Hang { name, ms, .. } => {
                tally.fail(&format!("{label}{name}"), &format!("(stopped by the watchdog after {ms} ms)"))
            }
            Ktest::Leak { .. } => tally.fail(&format!("{label}frame-leak-check"), &line[KTEST.len()..]),
            Ktest::Done { .. } => suite.finished = true,
            Ktest::Plan { .. } => {}
        }
        if matches!(k, Ktest::Ok { .. } | Ktest::Skip { .. } | Ktest::Fail { .. } | Ktest::Hang { .. }) {
            suite.last_started = None;
        }
    }
    suite
}

/// Boots that must fail in a specific, clearly reported way (`only`: just the checks whose
/// names contain it).
fn boot_checks(
    kernel: &Path,
    machine: &Machine,
    only: Option<&str>,
    floor: Option<u64>,
    tally: &mut Tally,
) -> Result<()> {
    let checks: [(&str, &str, Outcome, &[&str]); 5] = [
        (
            "boot::unhandled_page_fault_reported",
            "ktest.crash=pagefault",
            Outcome::Failure,
            &[
                "FATAL EXCEPTION: #PF page fault",
                "page fault at address 0x00000000deadb000: not-present page read in kernel mode",
                "rip 0x",
            ],
        ),
        (
            "boot::panic_reported_with_location",
            "ktest.crash=panic",
            Outcome::Failure,
            &["PANIC at kernel/src/main.rs:", "deliberate panic"],
        ),
        ("boot::triple_fault_detected", "ktest.crash=triplefault", Outcome::Reset, &[]),
        (
            "boot::task_stack_overflow_hits_its_guard",
            "ktest.crash=stackoverflow",
            Outcome::Failure,
            &["FATAL EXCEPTION: #DF double fault", "rsp 0xffffd000"],
        ),
        (
            "boot::bad_kernel_argument_named",
            "log=info bogus=1",
            Outcome::Failure,
            &["BOOT FAILED: kernel command line: unknown kernel argument 'bogus=1'"],
        ),
    ];
    for (name, cmdline, want, needles) in checks.into_iter().filter(|c| only.is_none_or(|o| c.0.contains(o))) {
        let run = run_qemu(&Launch::new(kernel, machine, cmdline.into(), secs(60, floor)))?;
        let text = run.lines.join("\n");
        let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
        if run.outcome != want {
            tally.fail(name, &format!("expected '{}', got '{}'", want.describe(), run.outcome.describe()));
        } else if !missing.is_empty() {
            tally.fail(name, &format!("output lacks {missing:?}"));
        } else {
            tally.pass(name);
        }
    }
    if only.is_none_or(|o| PROFILE_CHECK.contains(o)) {
        profile_check(kernel, machine, floor, tally)?;
    }
    Ok(())
}

/// The profiled boot's check.
const PROFILE_CHECK: &str = "boot::profile_samples_symbolised";

/// Boots `kernel` with the sampling profiler on (1000 Hz) around one short in-kernel test: the
/// report must be complete, say how many samples were dropped, hold samples, and its top
/// function by self samples must be a kernel symbol, with at least one stack walked past its
/// first frame. Counts are not checked (they depend on the host's speed).
fn profile_check(kernel: &Path, machine: &Machine, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let run = run_qemu(&Launch::new(
        kernel,
        machine,
        "ktest.filter=devices::dma_round_trip profile.hz=1000".into(),
        secs(60, floor),
    ))?;
    if run.outcome != Outcome::Success {
        tally.fail(PROFILE_CHECK, &format!("the profiled boot: {}", run.outcome.describe()));
        return Ok(());
    }
    let problem = match crate::profile::report(root(), "test", kernel, &run.lines) {
        Err(e) => Some(e),
        Ok(w) => profile_problem(&w),
    };
    match problem {
        Some(p) => tally.fail(PROFILE_CHECK, &p),
        None => tally.pass(PROFILE_CHECK),
    }
    Ok(())
}

/// What is wrong with a profiled run's report, if anything.
fn profile_problem(w: &crate::profile::Written) -> Option<String> {
    let raw = std::fs::read_to_string(w.dir.join("samples.txt")).unwrap_or_default();
    let deep = w.samples.stacks.iter().any(|s| s.pcs.len() > 1);
    if w.samples.total() == 0 {
        Some("the profile holds no samples".into())
    } else if !raw.contains("\"drops\":") {
        Some("the profile's summary lines do not report drops".into())
    } else if w.top.first().is_none_or(|(f, _)| f.starts_with("0x") || f == "[user]") {
        Some(format!("the top function is not a kernel symbol: {:?}", w.top.first()))
    } else if !deep {
        Some("no sample's stack was walked past the interrupted instruction".into())
    } else if !w.dir.join("flamegraph.svg").is_file() {
        Some("no flame graph was written".into())
    } else {
        None
    }
}

/// Boots the kernel through GRUB (Multiboot2) under SeaBIOS and under OVMF on `machine`,
/// running the default job: the boot report must say Multiboot2 entered the kernel, and the
/// job must pass its checks on the machine's devices. `only`: run just the checks whose names
/// contain it. The release kernel (a `ktest` build runs its suite, not the job).
fn grub_checks(machine: &Machine, only: Option<&str>, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let names =
        [Firmware::Bios, Firmware::Uefi].map(|fw| (fw, format!("boot::grub_{}_runs_the_default_job", fw.name())));
    if names.iter().all(|(_, n)| only.is_some_and(|o| !n.contains(o))) {
        return Ok(());
    }
    grub::ensure_tools()?;
    let kernel = &build_kernel(Profile::Release)?;
    let cmdline = format!("job=default{}", machine.kernel_args());
    let iso = grub::make_iso(root(), "test", kernel, &cmdline)?;
    for (fw, name) in names.into_iter().filter(|(_, n)| only.is_none_or(|o| n.contains(o))) {
        let run = run_qemu(&Launch {
            boot: Boot::Grub { iso: &iso, firmware: fw },
            ..Launch::new(kernel, machine, String::new(), secs(180, floor))
        })?;
        let loader = json_line(&run.lines, Tag::Boot).and_then(|v| v["loader"].as_str().map(str::to_string));
        if run.outcome != Outcome::Success {
            let last = tail(&run.lines, 5);
            tally.fail(&name, &format!("expected success, got '{}'; last lines: {last}", run.outcome.describe()));
        } else if loader.as_deref() != Some("multiboot2") {
            tally.fail(&name, &format!("the boot report names loader {loader:?}, not multiboot2"));
        } else if json_line(&run.lines, Tag::Result).is_none() {
            tally.fail(&name, "the default job printed no result");
        } else {
            tally.pass(&name);
        }
    }
    Ok(())
}

/// The clock checks' names: one q35 boot per counted source `tsc.source` names, a source
/// microvm lacks, and kvmclock under KVM.
const CLOCK_SOURCES: [(&str, &str); 3] = [
    ("boot::clock_tsc_from_the_pm_timer", "pm-timer"),
    ("boot::clock_tsc_from_the_hpet", "hpet"),
    ("boot::clock_tsc_from_the_pit", "pit"),
];
const CLOCK_MISSING: &str = "boot::clock_missing_source_named";
const CLOCK_KVM: &str = "boot::clock_tsc_from_kvmclock_under_kvm";

/// The TSC frequencies a calibration may give: QEMU's TSC runs at the host's, 0.5 to 10 GHz on
/// any x86_64 it runs on (a wildly wrong count, such as a timer read as the wrong width, lands
/// outside).
const PLAUSIBLE_TSC_HZ: std::ops::RangeInclusive<u64> = 500_000_000..=10_000_000_000;

/// Boots that calibrate the TSC from a named source (`tsc.source`), exiting at ready
/// (`job=none`): on q35 from the PM timer, the HPET and the PIT, each boot report naming that
/// source and a plausible frequency; on microvm `tsc.source=hpet` must fail the boot naming the
/// missing HPET; under KVM (when `/dev/kvm` can be opened, else skipped) microvm's default
/// calibration must come from kvmclock. The release kernel.
/// A user-mode check: its name, the program (`xtask/programs/NAME.c`), its arguments, the lines
/// it must print and its exit status.
type ProgramCheck = (&'static str, &'static str, &'static [&'static str], &'static [&'static str], u8);

/// The user-mode checks: C programs built with `gcc -static` (`xtask/programs/`), run in
/// ring 3 with arguments; each must print these lines and exit with this status.
const PROGRAM_CHECKS: [ProgramCheck; 4] = [
    (
        "run::static_c_program_runs_in_ring_3",
        "hello",
        &["one", "--two"],
        &["hello, 3 args: hello one --two", "malloc ok: 7168", "to stderr"],
        3,
    ),
    (
        "run::fork_wait_and_kill",
        "fork",
        &[],
        &[
            "child 2 of 1: value 2",
            "parent 1: reaped its child, exited 1 with 5, value 1",
            "spinner: signalled 1 by 9",
            "killed at once: signalled 1 by 15",
            "eight children: 28",
            "none left: 1",
        ],
        0,
    ),
    (
        "run::signals_are_delivered",
        "signals",
        &[],
        &[
            "self: 10, siginfo 1",
            "after a handler: 2.50, got 10",
            "alarm: got 14, pause -1 errno 1",
            "blocked: 0",
            "unblocked: 10",
            "timed-out child: reaped 1, signalled 1 by 9",
            "SIGTERM ignored",
            "default action: signalled 1 by 15",
        ],
        0,
    ),
    (
        "run::dmirror_device_files",
        "dmirror",
        &[],
        &[
            "device read: 0, 16 pages, same 1",
            "migrated: 0, 16 pages",
            "snapshot of page 0: 0x22",
            "CPU reads after migration: same 1",
            "device write: 0, 16 pages, CPU sees it 1",
            "tmpfile: wrote 65536, device read 0, same 1",
            "huge page size: 2048 kB",
            "no such device: 1",
            "close: 0, again EBADF: 1",
        ],
        0,
    ),
];

/// gcc with glibc's static library, installed with apt when missing and run as root; `Err` says
/// why there is none.
fn ensure_static_gcc() -> std::result::Result<(), String> {
    let have = || {
        Command::new("gcc").arg("--version").output().is_ok_and(|o| o.status.success())
            && Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists()
    };
    if !have() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !(root && Path::new("/usr/bin/apt-get").exists()) {
            return Err("gcc with a static C library is not installed (apt-get install gcc libc6-dev), and this user cannot install it".into());
        }
        eprintln!("xtask: installing gcc and the static C library (apt-get install -y gcc libc6-dev)");
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "gcc", "libc6-dev"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if !ok || !have() {
            return Err("apt-get could not install gcc and libc6-dev".into());
        }
    }
    Ok(())
}

/// `gcc -static` of `xtask/programs/NAME.c` into `target/programs/NAME`; `Err` says why it
/// cannot be built here (no gcc or no static C library, and nothing to install them with).
pub fn build_static_program(name: &str) -> std::result::Result<PathBuf, String> {
    ensure_static_gcc()?;
    let src = root().join(format!("xtask/programs/{name}.c"));
    let dir = root().join("target/programs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = dir.join(name);
    let o = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("running gcc: {e}"))?;
    if !o.status.success() {
        return Err(format!("gcc -static {} failed: {}", src.display(), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(out)
}

/// Builds each of [`PROGRAM_CHECKS`]' programs with `gcc -static` and runs it in the release
/// kernel's user mode, as `cargo xtask qemu --run` does: its lines (both streams) must be on the
/// console and its status in the `@@RUN` line.
fn program_checks(machine: &Machine, only: Option<&str>, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let wanted: Vec<_> = PROGRAM_CHECKS.iter().filter(|c| only.is_none_or(|o| c.0.contains(o))).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let kernel = build_kernel(Profile::Release)?;
    for &(name, program, args, needles, want) in wanted {
        let bin = match build_static_program(program) {
            Ok(b) => b,
            Err(why) => {
                tally.skip(name, &why);
                continue;
            }
        };
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let cmdline = super::qemu::run_args(&bin, &args)?.join(" ");
        let run = run_qemu(&Launch { initrd: Some(&bin), ..Launch::new(&kernel, machine, cmdline, secs(60, floor)) })?;
        let text = run.lines.join("\n");
        let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
        let status = json_line(&run.lines, Tag::Run).map(|r| super::qemu::run_status(&r));
        if run.outcome != Outcome::Success {
            let last = tail(&run.lines, 5);
            tally.fail(name, &format!("expected success, got '{}'; last lines: {last}", run.outcome.describe()));
        } else if !missing.is_empty() {
            tally.fail(name, &format!("output lacks {missing:?}; last lines: {}", tail(&run.lines, 5)));
        } else if status.as_ref().map(|s| s.0) != Some(want) {
            tally.fail(name, &format!("expected exit status {want}, got {status:?}"));
        } else {
            tally.pass(name);
        }
    }
    Ok(())
}

/// The check that runs Linux 6.1's own hmm-tests, unmodified, in the kernel's user mode.
const HMM_TESTS_CHECK: &str = "run::linux_hmm_tests_unmodified";

/// The tests of Linux's hmm-tests binary that do not pass here yet: (name, `fail` or `skip`,
/// why). Every other test must pass; one of these with another outcome fails the check too,
/// so the list stays true.
const HMM_TESTS_KNOWN: [(&str, &str, &str); 6] = [
    ("hmm.hmm_device_private.anon_teardown", "fail", "threads (pthread_create's clone3) are not implemented"),
    ("hmm.hmm_device_coherent.anon_teardown", "fail", "threads (pthread_create's clone3) are not implemented"),
    ("hmm.hmm_device_private.mixedmap", "fail", "mapping the device file is not implemented"),
    ("hmm.hmm_device_coherent.mixedmap", "fail", "mapping the device file is not implemented"),
    ("hmm.hmm_device_private.hmm_gup_test", "skip", "no /sys/kernel/debug/gup_test"),
    ("hmm.hmm_device_coherent.hmm_gup_test", "skip", "no /sys/kernel/debug/gup_test"),
];

/// The hmm-tests sources in Debian's `linux-source-6.1` package.
const HMM_TESTS_FILES: [&str; 5] = [
    "tools/testing/selftests/vm/hmm-tests.c",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "lib/test_hmm_uapi.h",
    "mm/gup_test.h",
];

/// Builds Linux 6.1's `tools/testing/selftests/vm/hmm-tests.c`, unmodified, with
/// `gcc -static` from Debian's `linux-source-6.1` (installed with apt when run as root) into
/// `target/hmm-tests/hmm-tests`; reuses the binary once built. `Err` says why it cannot be
/// built here.
pub fn build_hmm_tests() -> std::result::Result<PathBuf, String> {
    let out = root().join("target/hmm-tests");
    let bin = out.join("hmm-tests");
    if bin.exists() {
        return Ok(bin);
    }
    let tarball = Path::new("/usr/src/linux-source-6.1.tar.xz");
    if !tarball.exists() {
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        if !(root_user && Path::new("/usr/bin/apt-get").exists()) {
            return Err("Debian's linux-source-6.1 is not installed (apt-get install linux-source-6.1), and this user cannot install it".into());
        }
        eprintln!("xtask: installing linux-source-6.1 (apt-get install -y linux-source-6.1) for Linux's hmm-tests");
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "linux-source-6.1"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if !ok || !tarball.exists() {
            return Err("apt-get could not install linux-source-6.1".into());
        }
    }
    let src = out.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
    let members: Vec<String> = HMM_TESTS_FILES.iter().map(|f| format!("linux-source-6.1/{f}")).collect();
    let o = Command::new("tar")
        .arg("-xJf")
        .arg(tarball)
        .arg("-C")
        .arg(&src)
        .args(&members)
        .output()
        .map_err(|e| format!("running tar: {e}"))?;
    if !o.status.success() {
        return Err(format!("extracting hmm-tests from {}: {}", tarball.display(), String::from_utf8_lossy(&o.stderr)));
    }
    ensure_static_gcc()?;
    let tree = src.join("linux-source-6.1");
    let o = Command::new("gcc")
        .args(["-static", "-O2", "-I"])
        .arg(&tree)
        .arg("-o")
        .arg(&bin)
        .arg(tree.join(HMM_TESTS_FILES[0]))
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("running gcc: {e}"))?;
    if !o.status.success() {
        return Err(format!("gcc -static hmm-tests.c failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(bin)
}

/// Each test's outcome in a kselftest TAP stream: the name from its `#  RUN` line, then
/// `pass`, `fail` or `skip` from its `ok`/`not ok` line.
pub fn tap_results(lines: &[String]) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    let mut name = None;
    for l in lines {
        if let Some(rest) = l.strip_prefix("#  RUN ") {
            name = rest.trim().strip_suffix(" ...").map(str::to_string);
        } else if let Some(n) = name.take_if(|_| l.starts_with("ok ") || l.starts_with("not ok ")) {
            let outcome = if l.starts_with("not ok") {
                "fail"
            } else if l.contains("# SKIP") {
                "skip"
            } else {
                "pass"
            };
            out.push((n, outcome));
        }
    }
    out
}

/// Runs Linux's own hmm-tests binary (built by [`build_hmm_tests`]) in the release kernel's
/// user mode: every test must pass but [`HMM_TESTS_KNOWN`], which must do as that list says.
fn hmm_tests_check(machine: &Machine, only: Option<&str>, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    if !only.is_none_or(|o| HMM_TESTS_CHECK.contains(o)) {
        return Ok(());
    }
    let bin = match build_hmm_tests() {
        Ok(b) => b,
        Err(why) => {
            tally.skip(HMM_TESTS_CHECK, &why);
            return Ok(());
        }
    };
    let kernel = build_kernel(Profile::Release)?;
    let cmdline = super::qemu::run_args(&bin, &[])?.join(" ");
    let run = run_qemu(&Launch { initrd: Some(&bin), ..Launch::new(&kernel, machine, cmdline, secs(600, floor)) })?;
    let results = tap_results(&run.lines);
    if let Some(t) = run.lines.iter().find(|l| l.starts_with("# Totals:")) {
        println!("  Linux 6.1 hmm-tests, unmodified: {t}");
    }
    let mut problems = Vec::new();
    if run.outcome != Outcome::Success {
        problems.push(format!("expected the kernel to finish, got '{}'", run.outcome.describe()));
    }
    if results.len() != 58 {
        problems.push(format!("{} test results, not 58", results.len()));
    }
    for (name, got) in &results {
        let want = HMM_TESTS_KNOWN.iter().find(|k| k.0 == name).map_or("pass", |k| k.1);
        if *got != want {
            problems.push(if want == "pass" {
                format!("{name}: {got}")
            } else {
                format!("{name}: {got}, where it was known to {want}: update HMM_TESTS_KNOWN")
            });
        }
    }
    if problems.is_empty() {
        tally.pass(HMM_TESTS_CHECK);
    } else {
        tally.fail(HMM_TESTS_CHECK, &problems.join("; "));
    }
    Ok(())
}

fn clock_checks(machine: &Machine, only: Option<&str>, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let wanted = |n: &str| only.is_none_or(|o| n.contains(o));
    if !CLOCK_SOURCES.iter().map(|c| c.0).chain([CLOCK_MISSING, CLOCK_KVM]).any(wanted) {
        return Ok(());
    }
    let kernel = &build_kernel(Profile::Release)?;
    let calibrated = |run: &crate::qemu::Run, want: &str| -> std::result::Result<(), String> {
        if run.outcome != Outcome::Success {
            return Err(format!(
                "expected success, got '{}'; last lines: {}",
                run.outcome.describe(),
                tail(&run.lines, 5)
            ));
        }
        let report = json_line(&run.lines, Tag::Boot).ok_or("no boot report")?;
        let (source, hz) = (report["tsc_source"].as_str(), report["tsc_hz"].as_u64());
        if source != Some(want) {
            return Err(format!("the boot report names TSC source {source:?}, not {want}"));
        }
        match hz {
            Some(hz) if PLAUSIBLE_TSC_HZ.contains(&hz) => Ok(()),
            _ => Err(format!("the boot report gives tsc_hz {hz:?}, outside {PLAUSIBLE_TSC_HZ:?}")),
        }
    };
    for (name, source) in CLOCK_SOURCES.into_iter().filter(|c| wanted(c.0)) {
        let cmdline = format!("job=none tsc.source={source}");
        let run = run_qemu(&Launch::new(kernel, machine, cmdline, secs(60, floor)))?;
        match calibrated(&run, source) {
            Ok(()) => tally.pass(name),
            Err(why) => tally.fail(name, &why),
        }
    }
    let microvm = Machine::load(&root().join("qemu/microvm.toml"))?;
    if wanted(CLOCK_MISSING) {
        let run = run_qemu(&Launch::new(kernel, &microvm, "job=none tsc.source=hpet".into(), secs(60, floor)))?;
        let want = "BOOT FAILED: TSC calibration: tsc.source=hpet but this machine has no HPET";
        if run.outcome != Outcome::Failure {
            tally.fail(CLOCK_MISSING, &format!("expected a failed boot, got '{}'", run.outcome.describe()));
        } else if !run.lines.iter().any(|l| l.contains(want)) {
            tally.fail(CLOCK_MISSING, &format!("output lacks '{want}': {}", tail(&run.lines, 3)));
        } else {
            tally.pass(CLOCK_MISSING);
        }
    }
    if wanted(CLOCK_KVM) {
        match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Err(e) => tally.skip(CLOCK_KVM, &format!("no usable /dev/kvm ({e})")),
            Ok(_) => {
                // Nested KVM (the build machines') is slow: the boot takes seconds.
                let run = run_qemu(&Launch {
                    accel: "kvm",
                    ..Launch::new(kernel, &microvm, "job=none".into(), secs(120, floor))
                })?;
                match calibrated(&run, "kvmclock") {
                    Ok(()) => tally.pass(CLOCK_KVM),
                    Err(why) => tally.fail(CLOCK_KVM, &why),
                }
            }
        }
    }
    Ok(())
}

/// The microvm boots (`qemu/microvm.toml`, `qemu/microvm-noacpi.toml`) and their test names.
const MICROVM: [(&str, &str); 2] = [
    ("boot::microvm_acpi_runs_the_default_job", "qemu/microvm.toml"),
    ("boot::microvm_noacpi_runs_the_default_job", "qemu/microvm-noacpi.toml"),
];

/// Boots the kernel by PVH on QEMU's microvm (the Firecracker machine model: no PCI, no PM
/// timer), with and without ACPI, running the default job: it must reach ready with the TSC
/// calibrated (from CPUID or the PIT: there is no PM timer), report no PCI, and pass the job's
/// CPU-side checks, its result saying the machine has no devices. `only`: run just the checks
/// whose names contain it. The release kernel (a `ktest` build runs its suite, not the job).
fn microvm_checks(only: Option<&str>, floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    if MICROVM.iter().all(|(n, _)| only.is_some_and(|o| !n.contains(o))) {
        return Ok(());
    }
    let kernel = &build_kernel(Profile::Release)?;
    for (name, file) in MICROVM.into_iter().filter(|(n, _)| only.is_none_or(|o| n.contains(o))) {
        let machine = Machine::load(&root().join(file))?;
        let run = run_qemu(&Launch::new(kernel, &machine, "job=default".into(), secs(120, floor)))?;
        let report = json_line(&run.lines, Tag::Boot);
        let result = json_line(&run.lines, Tag::Result);
        let source = report.as_ref().and_then(|v| v["tsc_source"].as_str().map(str::to_string));
        let acpi = machine.acpi.unwrap_or(true);
        if run.outcome != Outcome::Success {
            let last = tail(&run.lines, 5);
            tally.fail(name, &format!("expected success, got '{}'; last lines: {last}", run.outcome.describe()));
        } else if let Some(problem) = report
            .as_ref()
            .map_or(Some("no boot report".to_string()), |v| microvm_report_problem(v, acpi, machine.virtio_rng))
        {
            tally.fail(name, &problem);
        } else if !matches!(source.as_deref(), Some("pit" | "cpuid-15h" | "cpuid-16h")) {
            tally.fail(name, &format!("TSC source {source:?}: microvm has no PM timer"));
        } else if let Some(problem) =
            result.as_ref().map_or(Some("the default job printed no result".into()), microvm_result_problem)
        {
            tally.fail(name, &problem);
        } else {
            tally.pass(name);
        }
    }
    Ok(())
}

/// What is wrong with a microvm boot report (`acpi`: the machine has ACPI tables; `rng`: a
/// virtio-rng on a virtio-mmio transport the command line names), if anything.
fn microvm_report_problem(v: &Value, acpi: bool, rng: bool) -> Option<String> {
    if v["has_pci"] != Value::Bool(false) {
        return Some(format!("the boot report says has_pci = {}, microvm has no PCI", v["has_pci"]));
    }
    if v["has_acpi"] != Value::Bool(acpi) {
        return Some(format!("the boot report says has_acpi = {}, the machine has acpi = {acpi}", v["has_acpi"]));
    }
    if v["devices"].as_array().is_none_or(|d| !d.is_empty()) {
        return Some(format!("the boot report lists devices {}", v["devices"]));
    }
    // virtio device id 4: entropy source; found in the DSDT with ACPI, else on the command line.
    let from = if acpi { "acpi" } else { "cmdline" };
    let rngs =
        v["virtio_mmio"].as_array().map(|a| a.iter().filter(|t| t["device_id"] == 4 && t["from"] == from).count());
    if rng && rngs != Some(1) {
        return Some(format!(
            "the boot report lists virtio-mmio transports {}, not one rng found from {from}",
            v["virtio_mmio"]
        ));
    }
    None
}

/// What is wrong with the default job's result on a machine without devices, if anything: the
/// CPU-side measurements must be there and the result must say the device checks were skipped.
fn microvm_result_problem(r: &Value) -> Option<String> {
    let keys = [
        "frame_alloc_free_ns_per_frame",
        "map_unmap_4k_ns_per_page",
        "map_unmap_2m_ns",
        "copy_mb_per_s",
        "caught_page_fault_ns",
    ];
    if let Some(k) = keys.iter().find(|k| r[**k].as_u64().is_none_or(|x| x == 0)) {
        return Some(format!("the default job's result has no {k} (or 0): {r}"));
    }
    if !r["devices"].as_str().is_some_and(|d| d.contains("this machine has no devices")) {
        return Some(format!("the default job's result does not say the machine has no devices: {r}"));
    }
    None
}

/// The experiment checks' names.
const NUMA_CHECK: &str = "experiment::numa_hmat_line_costs";
const AGREE_CHECK: &str = "experiment::host_and_guest_agree_on_default";
const AGREE_TENANTS: &str = "experiment::host_and_guest_agree_on_tenants";
const AGREE_MULTIGPU: &str = "experiment::host_and_guest_agree_on_multigpu";

/// The agreement checks, each with its experiment file.
const AGREEMENTS: [(&str, &str); 3] = [
    (AGREE_CHECK, "experiments/default.toml"),
    (AGREE_TENANTS, "experiments/tenants.toml"),
    (AGREE_MULTIGPU, "experiments/multigpu.toml"),
];

/// Runs `experiments/numa.toml` in the guest: every point passes its data check, both CPU cores
/// run CPU phases, and the core on the far node got the HMAT's far line cost.
fn numa_experiment_check(floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let name = NUMA_CHECK;
    let file = root().join("experiments/numa.toml");
    let l = experiment::load(&file, root())?;
    let (results, _) = run_points(&file, &l, false, 2, secs(300, floor).as_secs(), Profile::Release)?;
    let mut problems = Vec::new();
    for p in &l.points {
        let r = results.get(&p.id).cloned().unwrap_or(Value::Null);
        if let Some(e) = r["error"].as_str() {
            problems.push(format!("point {}: {e}", p.id));
            continue;
        }
        let proc = |n: &str, k: &str| {
            r["procs"].as_array().and_then(|a| a.iter().find(|x| x["name"] == n)).and_then(|x| x[k].as_f64())
        };
        let (c0, c1) = (proc("cpu0", "line_ns"), proc("cpu1", "line_ns"));
        // qemu/numa-devices.toml: 10 ns + 128 B at 20 GB/s near, 30 ns + 128 B at 5 GB/s far.
        // The point's memory lies in one node, whichever the frame allocator gave (node 0 or
        // 1, as the kernel's layout falls): the core on that node pays the near cost, the other
        // the far one.
        let is = |x: Option<f64>, v: f64| x.is_some_and(|x| (x - v).abs() <= 0.01);
        if !((is(c0, 16.4) && is(c1, 55.6)) || (is(c0, 55.6) && is(c1, 16.4))) {
            problems.push(format!(
                "point {}: CPU line costs {c0:?} / {c1:?}; the HMAT gives 16.4 on the memory's node and 55.6 on the other",
                p.id
            ));
        }
        if proc("cpu0", "busy_ns").is_none_or(|b| b <= 0.0) || proc("cpu1", "busy_ns").is_none_or(|b| b <= 0.0) {
            problems.push(format!("point {}: a CPU core ran no CPU phase", p.id));
        }
    }
    if problems.is_empty() {
        tally.pass(name)
    } else {
        tally.fail(name, &problems.join("; "))
    }
    Ok(())
}

/// Runs an agreement check's experiment file (`AGREEMENTS`: `experiments/default.toml`,
/// `experiments/tenants.toml` with two processes on two devices, `experiments/multigpu.toml`
/// with four devices at once) on the host and in the guest: the same engine and
/// policies over the HMM stack on two platforms must make the same decisions and count the
/// same, point by point and workload by workload (only the mechanism's measured time
/// differs); a failure names the first difference.
fn host_and_guest_agree_check((name, file): (&'static str, &str), floor: Option<u64>, tally: &mut Tally) -> Result<()> {
    let file = root().join(file);
    let l = experiment::load(&file, root())?;
    let timeout = secs(300, floor).as_secs();
    let (host, _) = run_points(&file, &l, true, 2, timeout, Profile::Release)?;
    let (guest, _) = run_points(&file, &l, false, 2, timeout, Profile::Release)?;
    let failed: Vec<String> = host
        .iter()
        .chain(&guest)
        .filter_map(|(id, r)| r["error"].as_str().map(|e| format!("point {id}: {e}")))
        .collect();
    if !failed.is_empty() {
        tally.fail(name, &failed.join("; "));
    } else if let Some(d) = experiment::agree::first_difference("host", &host, "guest", &guest) {
        tally.fail(name, &format!("host and guest differ: {d}"));
    } else {
        tally.pass(name);
    }
    Ok(())
}

/// The Slurm cluster tests whose names start with `only` (`crate::slurm::check`).
fn slurm_checks(only: &str, tally: &mut Tally) {
    use crate::slurm::check::Verdict;
    for (name, v) in crate::slurm::check::run(only) {
        match v {
            Verdict::Pass => tally.pass(name),
            Verdict::Fail(why) => tally.fail(name, &why),
            Verdict::Skip(why) => tally.skip(name, &why),
        }
    }
}

/// cargo's arguments for the host tests: `cargo test FILTER` runs only the tests whose names
/// contain FILTER.
fn host_test_args(filter: Option<&str>) -> Vec<&str> {
    ["test", "--quiet"].into_iter().chain(filter).collect()
}

/// What `cargo xtask test` runs after the host tests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Selection<'f> {
    /// No filter: every suite and check.
    Everything,
    /// A filter starting `boot::microvm`, `boot::grub` or `boot::clock`: those boots whose names contain it
    /// (they are not in-kernel tests).
    Boots(&'f str),
    /// The start of a host-driven experiment check's name (the NUMA, agreement and Slurm
    /// checks): just those (the in-kernel tests have `experiment::` names too).
    ExperimentChecks(&'f str),
    /// Any other filter: the in-kernel tests whose names contain it (`ktest.filter`) and the
    /// boot checks (GRUB and microvm boots included) whose names contain it.
    Kernel(&'f str),
}

/// Which tests `filter` selects.
fn select(filter: Option<&str>) -> Selection<'_> {
    let Some(f) = filter else { return Selection::Everything };
    if f.starts_with("boot::microvm")
        || f.starts_with("boot::grub")
        || f.starts_with("boot::clock")
        || f.starts_with("run::")
    {
        return Selection::Boots(f);
    }
    let experiment = [NUMA_CHECK]
        .iter()
        .chain(AGREEMENTS.iter().map(|a| &a.0))
        .chain(&crate::slurm::check::NAMES)
        .any(|n| n.starts_with(f));
    if f.len() > "experiment::".len() && experiment {
        return Selection::ExperimentChecks(f);
    }
    Selection::Kernel(f)
}

/// `cargo test [FILTER]` over the host-testable crates, its counts added to the tally.
fn host_tests(filter: Option<&str>, tally: &mut Tally) -> Result<()> {
    match filter {
        Some(f) => println!("== host tests (cargo test {f}) =="),
        None => println!("== host tests (cargo test) =="),
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(host_test_args(filter))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo test: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let (mut p, mut f) = (0, 0);
    for l in text.lines().filter(|l| l.starts_with("test result:")) {
        let num = |key: &str| {
            l.split(';')
                .find(|s| s.contains(key))
                .and_then(|s| s.split_whitespace().rev().nth(1)?.parse::<usize>().ok())
                .unwrap_or(0)
        };
        p += num(" passed");
        f += num(" failed");
    }
    tally.passed += p;
    for i in 0..f {
        tally.failed.push(format!("host test #{i}"));
    }
    if !out.status.success() && f == 0 {
        tally.failed.push("host tests (cargo test did not complete)".into());
    }
    println!("host: {p} passed, {f} failed");
    Ok(())
}

/// The closing line, `N passed, N failed, N skipped`, and the exit status; with a filter no
/// test matched, a failure that says so.
fn finish(tally: &Tally, filter: Option<&str>) -> Result<u8> {
    println!();
    if !tally.failed.is_empty() {
        println!("failed: {}", tally.failed.join(", "));
    }
    println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed.len(), tally.skipped);
    if let Some(f) = filter
        && tally.passed + tally.failed.len() + tally.skipped == 0
    {
        return Err(format!(
            "no test name contains '{f}' (host tests, in-kernel tests and checks); names are like `mm::fork`, `faults::`, `hmm.hmm_device_private.anon_read`, `boot::microvm_acpi_runs_the_default_job`"
        ));
    }
    Ok(if tally.failed.is_empty() { 0 } else { 1 })
}

/// `cargo xtask test`.
pub fn cmd(o: &Args) -> Result<u8> {
    let filter = o.filter();
    let floor = o.timeout;
    let machine = Machine::load(&o.machine.path_or("qemu/default.toml"))?;
    let seabios = Machine::load(&root().join("qemu/seabios.toml"))?;
    let coherent = Machine::load(&root().join("qemu/coherent.toml"))?;
    ensure_prerequisites(true)?;
    let mut tally = Tally::default();
    if !o.skip_host {
        host_tests(filter, &mut tally)?;
    }
    match select(filter) {
        Selection::Boots(f) => {
            program_checks(&machine, Some(f), floor, &mut tally)?;
            hmm_tests_check(&machine, Some(f), floor, &mut tally)?;
            microvm_checks(Some(f), floor, &mut tally)?;
            grub_checks(&machine, Some(f), floor, &mut tally)?;
            clock_checks(&machine, Some(f), floor, &mut tally)?;
            return finish(&tally, filter);
        }
        Selection::ExperimentChecks(f) => {
            if NUMA_CHECK.starts_with(f) {
                numa_experiment_check(floor, &mut tally)?;
            }
            for check in AGREEMENTS {
                if check.0.starts_with(f) {
                    host_and_guest_agree_check(check, floor, &mut tally)?;
                }
            }
            slurm_checks(f, &mut tally);
            return finish(&tally, filter);
        }
        Selection::Kernel(_) | Selection::Everything => {}
    }
    println!("\n== in-kernel tests ({}) ==", machine.description);
    let kernel = build_kernel(Profile::Ktest)?;
    if let Selection::Kernel(f) = select(filter) {
        kernel_suite(&kernel, &machine, Some(f), "", floor, &mut tally)?;
        boot_checks(&kernel, &machine, Some(f), floor, &mut tally)?;
        // `boot::` (or any filter in their names) selects the GRUB and microvm boots too.
        grub_checks(&machine, Some(f), floor, &mut tally)?;
        microvm_checks(Some(f), floor, &mut tally)?;
        clock_checks(&machine, Some(f), floor, &mut tally)?;
        return finish(&tally, filter);
    }
    kernel_suite(&kernel, &machine, None, "", floor, &mut tally)?;
    println!("\n== in-kernel PCI tests under SeaBIOS ==");
    kernel_suite(&kernel, &seabios, Some("pci::"), "seabios/", floor, &mut tally)?;
    println!("\n== in-kernel device tests with coherent device memory ({}) ==", coherent.description);
    kernel_suite(&kernel, &coherent, Some("devices::"), "coherent/", floor, &mut tally)?;
    println!("\n== boot checks ==");
    boot_checks(&kernel, &machine, None, floor, &mut tally)?;
    println!("\n== boot through GRUB (Multiboot2), BIOS and UEFI ==");
    grub_checks(&machine, None, floor, &mut tally)?;
    println!("\n== boot on microvm (the Firecracker machine model), with and without ACPI ==");
    microvm_checks(None, floor, &mut tally)?;
    println!("\n== a static C program in the kernel's user mode (ring 3) ==");
    program_checks(&machine, None, floor, &mut tally)?;
    println!("\n== Linux 6.1's own hmm-tests, unmodified, in the kernel's user mode ==");
    hmm_tests_check(&machine, None, floor, &mut tally)?;
    println!("\n== TSC calibration from each clock source (tsc.source) ==");
    clock_checks(&machine, None, floor, &mut tally)?;
    println!("\n== experiment on two NUMA nodes with an HMAT (experiments/numa.toml) ==");
    numa_experiment_check(floor, &mut tally)?;
    println!("\n== the default experiment on the host and in the guest (experiments/default.toml) ==");
    host_and_guest_agree_check(AGREEMENTS[0], floor, &mut tally)?;
    println!("\n== two processes sharing two devices, on the host and in the guest (experiments/tenants.toml) ==");
    host_and_guest_agree_check(AGREEMENTS[1], floor, &mut tally)?;
    println!(
        "\n== four devices at once, GRIT and Griffin, on the host and in the guest (experiments/multigpu.toml) =="
    );
    host_and_guest_agree_check(AGREEMENTS[2], floor, &mut tally)?;
    println!("\n== sweeps through a single-node Slurm cluster on this machine ==");
    slurm_checks("", &mut tally);
    finish(&tally, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_results_name_each_test_from_its_run_line() {
        let lines: Vec<String> = [
            "TAP version 13",
            "#  RUN           hmm.hmm_device_private.open_close ...",
            "#            OK  hmm.hmm_device_private.open_close",
            "ok 1 hmm.hmm_device_private.open_close",
            "#  RUN           hmm.hmm_device_private.hmm_gup_test ...",
            "ok 25 # SKIP Skipping test, could not find gup_test driver",
            "#  RUN           hmm.hmm_device_private.mixedmap ...",
            "# mixedmap: Test terminated by timeout",
            "not ok 20 hmm.hmm_device_private.mixedmap",
            "ok 99 a line without a RUN line before it",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = tap_results(&lines);
        assert_eq!(
            r,
            [
                ("hmm.hmm_device_private.open_close".to_string(), "pass"),
                ("hmm.hmm_device_private.hmm_gup_test".to_string(), "skip"),
                ("hmm.hmm_device_private.mixedmap".to_string(), "fail"),
            ]
        );
    }
    use boot::protocol::Text;

    #[test]
    fn the_kernels_test_lines_are_tallied() {
        // Lines as the kernel's runner writes them (`boot::protocol::Ktest`'s encoder), among log lines.
        let err = "expected 1, got 2";
        let lines: Vec<String> = [
            Ktest::Plan { total: 5 }.to_string(),
            Ktest::Start { index: 0, name: "smp::ipi" }.to_string(),
            "some log line".into(),
            Ktest::Ok { index: 0, name: "smp::ipi", us: 12 }.to_string(),
            Ktest::Start { index: 1, name: "hmm.hmm_device_coherent.anon_read" }.to_string(),
            Ktest::Skip { index: 1, name: "hmm.hmm_device_coherent.anon_read", why: Text::Str("no coherent device") }
                .to_string(),
            Ktest::Start { index: 2, name: "mm::fork" }.to_string(),
            Ktest::Fail { index: 2, name: "mm::fork", why: Text::Display(&err) }.to_string(),
            Ktest::Leak { frames: 3 }.to_string(),
            Ktest::Start { index: 3, name: "faults::spin" }.to_string(),
        ]
        .into_iter()
        .collect();
        let mut tally = Tally::default();
        let suite = read_suite(&lines, "real/", &mut tally);
        assert_eq!(suite, Suite { last_started: Some((3, "faults::spin".into())), finished: false });
        assert_eq!((tally.passed, tally.skipped), (1, 1));
        assert_eq!(tally.failed, ["real/mm::fork", "real/frame-leak-check"]);
        // The watchdog's line ends the hung test; `done` ends the run.
        let more = [
            Ktest::Hang { index: 3, name: "faults::spin", ms: 5000 }.to_string(),
            Ktest::Done { passed: 1, failed: 2, skipped: 1 }.to_string(),
        ];
        let suite = read_suite(&more, "", &mut tally);
        assert_eq!(suite, Suite { last_started: None, finished: true });
        assert_eq!(tally.failed.last().map(String::as_str), Some("faults::spin"));
    }

    /// `cargo xtask test FILTER`: the host tests get the filter (`cargo test FILTER`), the
    /// in-kernel suite gets it as `ktest.filter`, a microvm/GRUB or experiment check's name runs
    /// just those checks, and a filter no test matches is a failure that says so.
    #[test]
    fn a_filter_selects_the_host_and_in_kernel_tests_and_checks_it_names() {
        assert_eq!(host_test_args(Some("mm::fork")), ["test", "--quiet", "mm::fork"]);
        assert_eq!(host_test_args(None), ["test", "--quiet"]);
        assert_eq!(suite_cmdline(3, Some("pci::")), "log=warn ktest.from=3 ktest.filter=pci::");
        assert_eq!(suite_cmdline(0, None), "log=warn ktest.from=0");
        assert_eq!(select(None), Selection::Everything);
        assert_eq!(select(Some("faults::")), Selection::Kernel("faults::"));
        assert_eq!(select(Some("boot::microvm_acpi")), Selection::Boots("boot::microvm_acpi"));
        assert_eq!(select(Some("boot::grub")), Selection::Boots("boot::grub"));
        assert_eq!(select(Some("boot::clock_tsc")), Selection::Boots("boot::clock_tsc"));
        // A boot check that is not a microvm/GRUB boot runs with the kernel's tests.
        assert_eq!(select(Some("boot::panic")), Selection::Kernel("boot::panic"));
        assert_eq!(select(Some("experiment::numa")), Selection::ExperimentChecks("experiment::numa"));
        assert_eq!(select(Some("experiment::slurm")), Selection::ExperimentChecks("experiment::slurm"));
        // `experiment::` alone names in-kernel tests too.
        assert_eq!(select(Some("experiment::")), Selection::Kernel("experiment::"));
        assert_eq!(select(Some("experiment::nosuch")), Selection::Kernel("experiment::nosuch"));
        let e = finish(&Tally::default(), Some("nosuch")).unwrap_err();
        assert!(e.contains("no test name contains 'nosuch'"), "{e}");
        assert_eq!(finish(&Tally { passed: 1, ..Tally::default() }, Some("mm::fork")), Ok(0));
        assert_eq!(finish(&Tally { failed: vec!["mm::fork".into()], ..Tally::default() }, Some("mm::fork")), Ok(1));
    }

    #[test]
    fn microvm_reports_and_results_are_checked() {
        let ok = serde_json::json!({"has_acpi": false, "has_pci": false, "pci": [], "devices": []});
        assert_eq!(microvm_report_problem(&ok, false, false), None);
        assert!(microvm_report_problem(&ok, true, false).unwrap().contains("has_acpi"));
        assert!(microvm_report_problem(&ok, false, true).unwrap().contains("not one rng"));
        let rng = serde_json::json!({"has_acpi": false, "has_pci": false, "devices": [],
            "virtio_mmio": [{"base": 4272950784u64, "size": 512, "irq": 12, "from": "cmdline", "device_id": 4, "version": 1}]});
        assert_eq!(microvm_report_problem(&rng, false, true), None);
        // With ACPI the transport must come from the DSDT.
        let mut acpi = rng.clone();
        acpi["has_acpi"] = true.into();
        assert!(microvm_report_problem(&acpi, true, true).unwrap().contains("not one rng found from acpi"));
        acpi["virtio_mmio"][0]["from"] = "acpi".into();
        assert_eq!(microvm_report_problem(&acpi, true, true), None);
        let pci = serde_json::json!({"has_acpi": true, "has_pci": true, "pci": [], "devices": []});
        assert!(microvm_report_problem(&pci, true, false).unwrap().contains("has_pci"));
        // A report from before the field existed.
        let old = serde_json::json!({"pci": [], "devices": []});
        assert!(microvm_report_problem(&old, true, false).unwrap().contains("has_pci"));
        let mut r = serde_json::json!({
            "frame_alloc_free_ns_per_frame": 470, "map_unmap_4k_ns_per_page": 1738, "map_unmap_2m_ns": 165392,
            "copy_mb_per_s": 747, "caught_page_fault_ns": 37182,
            "devices": "this machine has no devices: the CPU-side checks ran, the device checks are skipped"
        });
        assert_eq!(microvm_result_problem(&r), None);
        r["copy_mb_per_s"] = 0.into();
        assert!(microvm_result_problem(&r).unwrap().contains("copy_mb_per_s"));
        r["copy_mb_per_s"] = 1.into();
        r["devices"] = Value::Null;
        assert!(microvm_result_problem(&r).unwrap().contains("no devices"));
    }
}
