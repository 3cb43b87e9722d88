//! `cargo xtask`: build, boot, test and benchmark the unikernel.
//!
//! - `cargo xtask qemu [--machine FILE] [--accel tcg|kvm] [--gdb] [--release|--debug]
//!   [--timeout SECS] [-- KERNEL ARGS...]`: builds the kernel, boots it on the machine
//!   described by FILE (default `qemu/default.toml`), prints the boot report and the default
//!   job's result, and exits with QEMU's decoded status.
//! - `cargo xtask test`: host tests (`cargo test`), then the in-kernel tests under qboot (the
//!   whole suite, resuming after a test that crashes or hangs), the PCI tests under SeaBIOS,
//!   and boot checks (a deliberate page fault, a triple fault and a bad kernel argument must
//!   each be reported clearly). Ends with `N passed, N failed`.
//! - `cargo xtask bench boot [--runs N]`: median time from QEMU start to kernel ready.
//! - `cargo xtask bench mm`: address-space operations (first touch, fork, COW, mprotect, munmap)
//!   per page for 4, 64 and 256 MiB, on `qemu/bench.toml` unless `--machine` says otherwise.
//! - `cargo xtask bench devices`: the real devices (copy engine and CPU-copy throughput beside
//!   the host's memcpy, migration of 256 MiB each way beside Linux, fault-batch latency), on
//!   `qemu/bench-devices.toml` unless `--machine` says otherwise.
//! - `cargo xtask bench hmm`: the HMM operations Linux 6.1 was timed on (first touch, device
//!   reads, snapshot, invalidation, migrations both ways, munmap of device pages) for 4, 64 and
//!   256 MiB, with the Linux numbers and the speedup beside ours.
//!
//! Both set up what a fresh machine lacks: the `x86_64-unknown-none` target, and QEMU (installed
//! with apt when running as root, otherwise the exact command is printed). QEMU always runs
//! under a timeout, and dies with the xtask (PR_SET_PDEATHSIG).

mod experiment;
mod machine;
mod mutants;
mod stress;

use machine::Machine;
use serde_json::Value;
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

type Result<T> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn usage() -> String {
    "usage:\n  cargo xtask qemu [--machine FILE] [--accel tcg|kvm] [--gdb] [--release|--debug] [--timeout SECS] [-- KERNEL ARGS...]\n  cargo xtask test [--machine FILE] [--skip-host] [--filter TEXT]\n  cargo xtask bench boot [--runs N] [--machine FILE]\n  cargo xtask bench mm [--machine FILE]\n  cargo xtask bench hmm [--machine FILE]\n  cargo xtask bench devices [--machine FILE]\n  cargo xtask experiment FILE [--host] [--jobs N] [--timeout SECS]\n  cargo xtask mutants [FILE[:N]...] [--sample N] [--jobs J] [--rerun-missed]\n  cargo xtask stress [--ops N] [--seed S] [--seeds K] [--threads] [--avoid F,G] [--minimize [BUDGET]] [--trace]"
        .into()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("qemu") => cmd_qemu(&args[1..]),
        Some("test") => cmd_test(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("experiment") => cmd_experiment(&args[1..]),
        Some("mutants") => mutants::cmd(&root(), &args[1..]),
        Some("stress") => stress::cmd_stress(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{}", usage());
            Ok(0)
        }
        Some(other) => Err(format!("unknown command '{other}'\n{}", usage())),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

// ---- set-up ------------------------------------------------------------------------------

const QEMU: &str = "qemu-system-x86_64";

fn ensure_prerequisites(firmware_needed: bool) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "x86_64-unknown-none") => {}
        Ok(_) => {
            eprintln!("xtask: installing the x86_64-unknown-none target");
            let ok = Command::new("rustup")
                .args(["target", "add", "x86_64-unknown-none"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("could not install the target: run `rustup target add x86_64-unknown-none`".into());
            }
        }
        Err(_) => eprintln!("xtask: rustup not found; assuming the x86_64-unknown-none target is installed"),
    }
    let have_qemu = Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success());
    let have_bios = !firmware_needed || Path::new("/usr/share/qemu/bios-microvm.bin").exists();
    if have_qemu && have_bios {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let apt = Path::new("/usr/bin/apt-get").exists();
    if root && apt {
        eprintln!("xtask: installing QEMU (apt-get install -y qemu-system-x86)");
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        return Err("apt-get could not install qemu-system-x86".into());
    }
    Err(format!(
        "{QEMU} is not installed. Install it with:\n  sudo apt-get update && sudo apt-get install -y qemu-system-x86"
    ))
}

// ---- building ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Profile {
    Debug,
    Release,
    Ktest,
}

fn build_kernel(profile: Profile) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).args(["build", "--quiet", "-p", "kernel", "--target", "x86_64-unknown-none"]);
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cmd.arg("--release");
            "release"
        }
        Profile::Ktest => {
            cmd.args(["--profile", "ktest", "--features", "ktest"]);
            "ktest"
        }
    };
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel failed (see above)".into());
    }
    Ok(root().join("target/x86_64-unknown-none").join(dir).join("kernel"))
}

// ---- running QEMU ------------------------------------------------------------------------

/// How a QEMU run ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Success,
    Failure,
    TestPanicked,
    TestHung,
    Reset,
    QemuError(i32),
    Timeout(u64),
    Killed,
}

impl Outcome {
    fn from_status(code: Option<i32>) -> Self {
        match code {
            Some(33) => Self::Success,
            Some(35) => Self::Failure,
            Some(37) => Self::TestPanicked,
            Some(39) => Self::TestHung,
            Some(0) => Self::Reset,
            Some(c) => Self::QemuError(c),
            None => Self::Killed,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Success => "the kernel finished successfully (QEMU status 33)".into(),
            Self::Failure => "the kernel reported a failure (QEMU status 35; see the log above)".into(),
            Self::TestPanicked => "an in-kernel test crashed (QEMU status 37)".into(),
            Self::TestHung => "an in-kernel test hung and was stopped by the watchdog (QEMU status 39)".into(),
            Self::Reset => "the guest reset itself: a triple fault (QEMU status 0 under -no-reboot)".into(),
            Self::QemuError(c) => format!("QEMU failed with status {c} (see its message above)"),
            Self::Timeout(s) => format!("no result within {s} s: the kernel hung; QEMU was killed"),
            Self::Killed => "QEMU was killed by a signal".into(),
        }
    }

    fn code(&self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Reset => 3,
            Self::Timeout(_) => 4,
            _ => 1,
        }
    }
}

struct Run {
    outcome: Outcome,
    lines: Vec<String>,
    ready_at: Option<Duration>,
}

/// Removes the device memory files when dropped.
struct ShmFiles(Vec<String>);

impl Drop for ShmFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

struct Launch<'a> {
    kernel: &'a Path,
    machine: &'a Machine,
    cmdline: String,
    accel: &'a str,
    gdb: bool,
    timeout: Duration,
    echo: bool,
    /// A boot module (`-initrd`): the experiment image.
    initrd: Option<&'a Path>,
    /// Called with every line as it arrives (progress).
    on_line: Option<&'a (dyn Fn(&str) + Sync)>,
}

fn run_qemu(l: &Launch<'_>) -> Result<Run> {
    // Unique per launch: experiments run several guests at once from one process, and guests
    // sharing device memory files would overwrite each other's device memory.
    static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let shm_prefix = format!("/dev/shm/hmmk-{}-{n}", std::process::id());
    let files = l.machine.shm_files(&shm_prefix);
    let _guard = ShmFiles(files.iter().map(|f| f.0.clone()).collect());
    for (path, size) in &files {
        let f = std::fs::File::create(path).map_err(|e| format!("creating device memory {path}: {e}"))?;
        f.set_len(*size).map_err(|e| format!("sizing device memory {path}: {e}"))?;
    }
    let mut cmd = Command::new(QEMU);
    cmd.args(l.machine.qemu_args(&shm_prefix))
        // TCG emulates everything "max" offers; under KVM the host's CPU is what users want.
        .args(["-cpu", if l.accel == "kvm" { "host" } else { "max" }, "-accel", l.accel])
        .arg("-kernel")
        .arg(l.kernel)
        .args(["-append", &format!("{}{}", l.cmdline, l.machine.kernel_args())])
        .args(l.initrd.iter().flat_map(|p| [std::ffi::OsStr::new("-initrd"), p.as_os_str()]))
        .args(["-display", "none", "-serial", "stdio", "-vga", "none", "-nic", "none", "-monitor", "none"])
        .args(["-no-reboot", "-nodefaults", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if l.gdb {
        cmd.args(["-s", "-S"]);
        eprintln!("xtask: QEMU waits for gdb on localhost:1234 (gdb {} -ex 'target remote :1234')", l.kernel.display());
    }
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and calls only the
        // async-signal-safe prctl.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting {QEMU}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut ready_at = None;
    let deadline = start + l.timeout;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline && !l.gdb {
            timed_out = true;
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout(deadline.saturating_duration_since(now).min(Duration::from_millis(200))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if let Some(f) = l.on_line {
                    f(&line);
                }
                if line.starts_with("@@BOOT ") && ready_at.is_none() {
                    ready_at = Some(start.elapsed());
                }
                if l.echo && !line.starts_with("@@") {
                    println!("{line}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    // Drain what is left.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                        if l.echo && !line.starts_with("@@") {
                            println!("{line}");
                        }
                        lines.push(line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let outcome = if timed_out { Outcome::Timeout(l.timeout.as_secs()) } else { Outcome::from_status(status.code()) };
    Ok(Run { outcome, lines, ready_at })
}

fn json_line(lines: &[String], tag: &str) -> Option<Value> {
    lines.iter().find_map(|l| l.strip_prefix(tag)).and_then(|j| serde_json::from_str(j).ok())
}

fn print_boot_report(v: &Value, machine: &Machine, host_ready: Option<Duration>) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    println!("\n== boot report: {} ==", machine.description);
    println!(
        "  cpu      {} (apic {}, nx {}, x2apic {})",
        v["cpu"]["brand"].as_str().unwrap_or("?"),
        v["cpu"]["apic_mode"].as_str().unwrap_or("?"),
        v["cpu"]["nx"],
        v["cpu"]["x2apic"]
    );
    println!("  tsc      {:.1} MHz", n(&v["tsc_hz"]) as f64 / 1e6);
    println!(
        "  memory   {} MiB RAM, {} frames free, heap {} KiB",
        n(&v["memory"]["ram_bytes"]) >> 20,
        n(&v["memory"]["frames_free"]),
        n(&v["memory"]["heap_bytes"]) >> 10
    );
    for r in v["memory_map"].as_array().into_iter().flatten() {
        println!("    {:#014x}-{:#014x} {}", n(&r["start"]), n(&r["end"]), r["kind"].as_str().unwrap_or("?"));
    }
    let cpus: Vec<String> = v["cpus"].as_array().into_iter().flatten().map(|c| n(&c["apic_id"]).to_string()).collect();
    let online = v["cpus"].as_array().into_iter().flatten().filter(|c| c["online"].as_bool() == Some(true)).count();
    println!("  cpus     {} (apic ids {}), {online} online", cpus.len(), cpus.join(", "));
    let tables: Vec<&str> =
        v["acpi_tables"].as_array().into_iter().flatten().filter_map(|t| t["signature"].as_str()).collect();
    println!("  acpi     {}", tables.join(" "));
    if let Some(h) = v["hmat"].as_array() {
        for e in h {
            println!(
                "    hmat   node {} -> node {}: {} = {}",
                n(&e["initiator"]),
                n(&e["target"]),
                e["type"].as_str().unwrap_or("?"),
                n(&e["value"])
            );
        }
    }
    println!("  pci      ECAM at {:#x}", n(&v["ecam_base"]));
    for f in v["pci"].as_array().into_iter().flatten() {
        let bars: Vec<String> = f["bars"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("BAR{}={:#x}+{:#x}", n(&b["index"]), n(&b["address"]), n(&b["size"])))
            .collect();
        let virtio = if f["virtio"].is_object() {
            format!(
                " [virtio, {}]",
                if f["virtio"]["bound"].as_bool() == Some(true) { "transport ok" } else { "transport FAILED" }
            )
        } else {
            String::new()
        };
        let ep = f["iommu_endpoint"].as_u64().map(|e| format!(" [iommu endpoint {e}]")).unwrap_or_default();
        println!(
            "    {} {} {:<20}{virtio}{ep} {}",
            f["bdf"].as_str().unwrap_or("?"),
            f["id"].as_str().unwrap_or("?"),
            f["name"].as_str().unwrap_or("?"),
            bars.join(" ")
        );
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        let mmu = match (d["domain"].as_u64(), d["iommu_endpoint"].as_u64()) {
            (Some(dom), Some(ep)) => format!("device MMU: virtio-iommu domain {dom} (endpoint {ep})"),
            _ => "no device MMU (no virtio-iommu)".to_string(),
        };
        println!(
            "  device   {}: {} MiB device memory at {:#x}, copy engine: virtio-blk, {} segments/request{}; {mmu}",
            d["name"].as_str().unwrap_or("?"),
            n(&d["memory_bytes"]) >> 20,
            n(&d["memory_paddr"]),
            n(&d["copy_seg_max"]),
            if d["dma_translated"].as_bool() == Some(true) { ", DMA translated" } else { "" },
        );
    }
    let kernel_ms = n(&v["ready_ns"]) as f64 / 1e6;
    match host_ready {
        Some(h) => println!(
            "  ready    {kernel_ms:.1} ms after kernel entry, {:.1} ms after QEMU start",
            h.as_secs_f64() * 1e3
        ),
        None => println!("  ready    {kernel_ms:.1} ms after kernel entry"),
    }
}

fn parse_options(args: &[String]) -> Result<(Options, Vec<String>)> {
    let mut o = Options {
        machine: root().join("qemu/default.toml"),
        accel: "tcg".into(),
        gdb: false,
        profile: Profile::Release,
        timeout: 120,
        skip_host: false,
        filter: None,
        runs: 10,
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{}", usage()));
        match a.as_str() {
            "--machine" => o.machine = PathBuf::from(value("--machine")?),
            "--accel" => {
                o.accel = value("--accel")?;
                if o.accel != "tcg" && o.accel != "kvm" {
                    return Err(format!("--accel {}: use tcg or kvm", o.accel));
                }
            }
            "--gdb" => o.gdb = true,
            "--release" => o.profile = Profile::Release,
            "--debug" => o.profile = Profile::Debug,
            "--skip-host" => o.skip_host = true,
            "--filter" => o.filter = Some(value("--filter")?),
            "--timeout" => {
                o.timeout = value("--timeout")?.parse().map_err(|_| "--timeout takes seconds".to_string())?
            }
            "--runs" => {
                o.runs = value("--runs")?.parse().ok().filter(|&r| r > 0).ok_or("--runs takes a positive count")?
            }
            "--" => rest.extend(it.by_ref().cloned()),
            other if other.starts_with('-') => return Err(format!("unknown option '{other}'\n{}", usage())),
            other => rest.push(other.to_string()),
        }
    }
    Ok((o, rest))
}

struct Options {
    machine: PathBuf,
    accel: String,
    gdb: bool,
    profile: Profile,
    timeout: u64,
    skip_host: bool,
    /// `cargo xtask test --filter P`: only the in-kernel tests whose names contain P, on
    /// the default machine (no SeaBIOS, coherent, boot or NUMA passes).
    filter: Option<String>,
    runs: usize,
}

// ---- commands ----------------------------------------------------------------------------

fn cmd_qemu(args: &[String]) -> Result<u8> {
    let (o, kernel_args) = parse_options(args)?;
    let machine = Machine::load(&o.machine)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    let kernel = build_kernel(o.profile)?;
    // With no kernel arguments the default job is followed by the default experiment, on the
    // default machine (its device memory sizes are what the experiment is written for).
    let default_exp = root().join("experiments/default.toml");
    let exp = if kernel_args.is_empty() && o.machine == root().join("qemu/default.toml") {
        Some(experiment::load(&default_exp, &root())?)
    } else {
        None
    };
    let image = match &exp {
        Some(l) => {
            let dir = experiment::out_dir(&root(), l);
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let path = dir.join("image.txt");
            let text: String = l.points.iter().map(|p| p.encode()).collect();
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let t0 = Instant::now();
    let run = run_qemu(&Launch {
        kernel: &kernel,
        machine: &machine,
        cmdline: kernel_args.join(" "),
        accel: &o.accel,
        gdb: o.gdb,
        timeout: Duration::from_secs(o.timeout),
        echo: true,
        initrd: image.as_deref(),
        on_line: None,
    })?;
    if let Some(report) = json_line(&run.lines, "@@BOOT ") {
        print_boot_report(&report, &machine, run.ready_at);
        println!("@@BOOT {report}");
    }
    if let Some(result) = json_line(&run.lines, "@@RESULT ") {
        println!("\n== default job: {} ==", result["job"].as_str().unwrap_or("?"));
        if let Some(obj) = result.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| *k != "job") {
                println!("  {k:<40} {v}");
            }
        }
    }
    let mut code = run.outcome.code();
    if let Some(l) = &exp {
        let mut results = experiment::Results::new();
        let mut traces = Vec::new();
        for line in &run.lines {
            if let Some(j) = line.strip_prefix("@@POINT ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
                if let Some(id) = j["id"].as_u64() {
                    results.insert(id as u32, j);
                }
            } else if let Some(j) = line.strip_prefix("@@TRACE ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
                traces.push(j);
            }
        }
        if !report_experiment(l, &results, &traces, t0.elapsed())? && code == 0 {
            code = 1;
        }
    }
    println!("\n{}", run.outcome.describe());
    Ok(code)
}

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
fn kernel_suite(kernel: &Path, machine: &Machine, filter: Option<&str>, label: &str, tally: &mut Tally) -> Result<()> {
    let mut from = 0usize;
    loop {
        let mut cmdline = format!("log=warn ktest.from={from}");
        if let Some(f) = filter {
            cmdline.push_str(&format!(" ktest.filter={f}"));
        }
        let run = run_qemu(&Launch {
            kernel,
            machine,
            cmdline,
            accel: "tcg",
            gdb: false,
            timeout: Duration::from_secs(240),
            echo: false,
            initrd: None,
            on_line: None,
        })?;
        let mut last_started: Option<(usize, String)> = None;
        let mut finished = None;
        for line in &run.lines {
            let Some(rest) = line.strip_prefix("ktest: ") else {
                if line.starts_with("BOOT FAILED")
                    || line.starts_with("PANIC")
                    || line.starts_with("FATAL")
                    || line.contains("WARN")
                {
                    println!("  {line}");
                }
                continue;
            };
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("start"), Some(i), Some(name)) => last_started = Some((i.parse().unwrap_or(0), name.to_string())),
                (Some("ok"), Some(_), Some(name)) => {
                    tally.pass(&format!("{label}{}", name.split(' ').next().unwrap_or(name)));
                    last_started = None;
                }
                (Some("skip"), Some(_), Some(rest)) => {
                    let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
                    tally.skip(&format!("{label}{}", name.trim_end_matches(':')), why.trim());
                    last_started = None;
                }
                (Some("FAIL" | "HANG"), Some(_), Some(rest)) => {
                    let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
                    tally.fail(&format!("{label}{}", name.trim_end_matches(':')), why.trim_start_matches(':').trim());
                    last_started = None;
                }
                (Some("LEAK"), _, _) => tally.fail(&format!("{label}frame-leak-check"), rest),
                (Some("done"), _, _) => finished = Some(()),
                _ => {}
            }
        }
        match (&run.outcome, finished) {
            (Outcome::Success | Outcome::Failure, Some(())) => return Ok(()),
            (Outcome::TestPanicked | Outcome::TestHung, _) | (Outcome::Timeout(_), _) => {
                // The crashed test has already been reported unless the kernel died silently.
                let Some((i, name)) = last_started.or_else(|| {
                    run.lines.iter().rev().find_map(|l| {
                        let r = l.strip_prefix("ktest: FAIL ").or_else(|| l.strip_prefix("ktest: HANG "))?;
                        let mut w = r.split(' ');
                        Some((w.next()?.parse().ok()?, String::new()))
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
                for l in run.lines.iter().rev().take(30).collect::<Vec<_>>().into_iter().rev() {
                    println!("  | {l}");
                }
                return Err(format!("{label}in-kernel tests did not finish: {}", outcome.describe()));
            }
        }
    }
}

/// Boots that must fail in a specific, clearly reported way.
fn boot_checks(kernel: &Path, machine: &Machine, tally: &mut Tally) -> Result<()> {
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
    for (name, cmdline, want, needles) in checks {
        let run = run_qemu(&Launch {
            kernel,
            machine,
            cmdline: cmdline.into(),
            accel: "tcg",
            gdb: false,
            timeout: Duration::from_secs(60),
            echo: false,
            initrd: None,
            on_line: None,
        })?;
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
    Ok(())
}

/// Runs `experiments/numa.toml` in the guest: every point passes its data check, both CPU cores
/// run CPU phases, and the core on the far node got the HMAT's far line cost.
fn numa_experiment_check(tally: &mut Tally) -> Result<()> {
    let name = "experiment::numa_hmat_line_costs";
    let l = experiment::load(&root().join("experiments/numa.toml"), &root())?;
    let (results, _) = run_points(&l, false, 2, 300, Profile::Release)?;
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
        let (near, far) = (proc("cpu0", "line_ns"), proc("cpu1", "line_ns"));
        // qemu/numa-devices.toml: 10 ns + 128 B at 20 GB/s near, 30 ns + 128 B at 5 GB/s far.
        if near.is_none_or(|x| (x - 16.4).abs() > 0.01) || far.is_none_or(|x| (x - 55.6).abs() > 0.01) {
            problems.push(format!("point {}: CPU line costs {near:?} / {far:?}, the HMAT gives 16.4 / 55.6", p.id));
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

fn host_tests(tally: &mut Tally) -> Result<()> {
    println!("== host tests (cargo test) ==");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["test", "--quiet"])
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

fn cmd_test(args: &[String]) -> Result<u8> {
    let (o, rest) = parse_options(args)?;
    if !rest.is_empty() {
        return Err(format!("unexpected arguments {rest:?}\n{}", usage()));
    }
    let machine = Machine::load(&o.machine)?;
    let seabios = Machine::load(&root().join("qemu/seabios.toml"))?;
    let coherent = Machine::load(&root().join("qemu/coherent.toml"))?;
    ensure_prerequisites(true)?;
    let mut tally = Tally::default();
    if !o.skip_host {
        host_tests(&mut tally)?;
    }
    println!("\n== in-kernel tests ({}) ==", machine.description);
    let kernel = build_kernel(Profile::Ktest)?;
    if let Some(f) = &o.filter {
        kernel_suite(&kernel, &machine, Some(f), "", &mut tally)?;
        println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed.len(), tally.skipped);
        return Ok(if tally.failed.is_empty() { 0 } else { 1 });
    }
    kernel_suite(&kernel, &machine, None, "", &mut tally)?;
    println!("\n== in-kernel PCI tests under SeaBIOS ==");
    kernel_suite(&kernel, &seabios, Some("pci::"), "seabios/", &mut tally)?;
    println!("\n== in-kernel device tests with coherent device memory ({}) ==", coherent.description);
    kernel_suite(&kernel, &coherent, Some("devices::"), "coherent/", &mut tally)?;
    println!("\n== boot checks ==");
    boot_checks(&kernel, &machine, &mut tally)?;
    println!("\n== experiment on two NUMA nodes with an HMAT (experiments/numa.toml) ==");
    numa_experiment_check(&mut tally)?;
    println!();
    if !tally.failed.is_empty() {
        println!("failed: {}", tally.failed.join(", "));
    }
    println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed.len(), tally.skipped);
    Ok(if tally.failed.is_empty() { 0 } else { 1 })
}

fn cmd_bench(args: &[String]) -> Result<u8> {
    let (mut o, rest) = parse_options(args)?;
    match rest.first().map(String::as_str) {
        Some("boot") => bench_boot(&o),
        Some("mm") => {
            if o.machine == root().join("qemu/default.toml") {
                o.machine = root().join("qemu/bench.toml");
            }
            bench_mm(&o)
        }
        Some("hmm") => {
            if o.machine == root().join("qemu/default.toml") {
                o.machine = root().join("qemu/bench.toml");
            }
            bench_hmm(&o)
        }
        Some("devices") => {
            if o.machine == root().join("qemu/default.toml") {
                o.machine = root().join("qemu/bench-devices.toml");
            }
            bench_devices(&o)
        }
        Some(other) => Err(format!("unknown benchmark '{other}' (available: boot, mm, hmm, devices)")),
        None => Err(format!("name a benchmark\n{}", usage())),
    }
}

/// Linux 6.1's cost of the same operation in the same QEMU (`reference/platform.md`).
const LINUX_FIRST_TOUCH_NS: u64 = 15_000;

/// Linux 6.1's lib/test_hmm timings on 256 MiB in the same QEMU, ns per 4 KiB page
/// (`reference/platform.md`). `migrate_to_dev_again` is timed like `migrate_to_dev`.
const LINUX_HMM_NS: [(&str, u64); 10] = [
    ("cpu_first_touch", 15_000),
    ("dev_read_fault", 17_900),
    ("dev_read_mapped", 11_900),
    ("snapshot", 80),
    ("invalidate_mprotect", 700),
    ("migrate_to_dev", 19_200),
    ("cpu_fault_migrate_back", 24_100),
    ("migrate_to_dev_again", 19_200),
    ("migrate_to_sys", 6_200),
    ("munmap_device_pages", 580),
];

/// Boots the release kernel with `job` on the benchmark machine and returns its `@@BENCH`
/// results (each with an `op`).
fn bench_job(o: &Options, name: &str, job: &str) -> Result<(Machine, Vec<Value>)> {
    let machine = Machine::load(&o.machine)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    let kernel = build_kernel(Profile::Release)?;
    let run = run_qemu(&Launch {
        kernel: &kernel,
        machine: &machine,
        cmdline: format!("log=warn job={job}"),
        accel: &o.accel,
        gdb: false,
        timeout: Duration::from_secs(o.timeout.max(300)),
        echo: false,
        initrd: None,
        on_line: None,
    })?;
    if run.outcome != Outcome::Success {
        for l in run.lines.iter().rev().take(20).rev() {
            eprintln!("  | {l}");
        }
        return Err(format!("{name} benchmark: {}", run.outcome.describe()));
    }
    let results: Vec<Value> = run
        .lines
        .iter()
        .filter_map(|l| l.split_once("@@BENCH ").map(|(_, j)| j))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v.get("op").is_some())
        .collect();
    if results.is_empty() {
        return Err(format!("{name} benchmark: the kernel printed no results"));
    }
    Ok((machine, results))
}

/// The largest size's `ns_per_page` for `op`.
fn largest(results: &[Value], op: &str) -> Option<(u64, u64)> {
    results
        .iter()
        .filter(|v| v["op"] == op)
        .max_by_key(|v| v["mib"].as_u64())
        .and_then(|v| Some((v["mib"].as_u64()?, v["ns_per_page"].as_u64()?)))
}

fn bench_mm(o: &Options) -> Result<u8> {
    let (machine, results) = bench_job(o, "mm", "bench-mm")?;
    println!("mm benchmark: {} ({}), ns per 4 KiB page", machine.description, o.accel);
    for v in &results {
        println!(
            "{} mib={} pages={} ns_per_page={} faults={}",
            v["op"].as_str().unwrap_or("?"),
            v["mib"],
            v["pages"],
            v["ns_per_page"],
            v["faults"]
        );
    }
    if let Some((_, ns)) = largest(&results, "first_touch_4k") {
        let ratio = LINUX_FIRST_TOUCH_NS as f64 / ns.max(1) as f64;
        println!(
            "first touch (4 KiB pages, largest size): {ns} ns/page; Linux 6.1: {LINUX_FIRST_TOUCH_NS} ns/page; {ratio:.1}x (target 3x: {})",
            if ratio >= 3.0 { "met" } else { "NOT met" }
        );
    }
    Ok(0)
}

fn bench_hmm(o: &Options) -> Result<u8> {
    let (machine, results) = bench_job(o, "hmm", "bench-hmm")?;
    println!("hmm benchmark: {} ({}), one private dmirror device, 4 KiB pages", machine.description, o.accel);
    let mut last_mib = None;
    for v in &results {
        let mib = v["mib"].as_u64();
        if mib != last_mib {
            println!("-- {} MiB", mib.unwrap_or(0));
            last_mib = mib;
        }
        let ns = v["ns_per_page"].as_u64().unwrap_or(0);
        // 4096 bytes per `ns` nanoseconds is 4096 / ns bytes per ns, i.e. GB/s.
        let gbps = if ns == 0 { 0.0 } else { 4096.0 / ns as f64 };
        println!("{} pages={} ns_per_page={ns} gbps={gbps:.3}", v["op"].as_str().unwrap_or("?"), v["pages"]);
    }
    println!("\nagainst Linux 6.1 in the same QEMU (ns per page, largest size; target 3x faster):");
    println!("{:<24} {:>10} {:>10} {:>8}  target", "op", "ours", "linux", "speedup");
    let mut missed = 0;
    for (op, linux) in LINUX_HMM_NS {
        let Some((_, ns)) = largest(&results, op) else {
            println!("{op:<24} {:>10}", "missing");
            missed += 1;
            continue;
        };
        let ratio = linux as f64 / ns.max(1) as f64;
        let met = ratio >= 3.0;
        missed += usize::from(!met);
        println!("{op:<24} {ns:>10} {linux:>10} {ratio:>7.1}x  {}", if met { "met" } else { "NOT met" });
    }
    println!("{} of {} operations meet the 3x target", LINUX_HMM_NS.len() - missed, LINUX_HMM_NS.len());
    if let (Some((_, native)), Some((_, modern))) =
        (largest(&results, "range_fault_driver_format"), largest(&results, "range_fault_modern_convert"))
    {
        let saved = 100.0 * (modern as f64 - native as f64) / modern.max(1) as f64;
        println!(
            "\noutput encoding (range fault into a device page table, largest size): driver format {native} ns/page, modern + conversion {modern} ns/page ({saved:.0}% saved by the driver format)"
        );
    }
    Ok(0)
}

/// Linux 6.1's lib/test_hmm migration timings on 256 MiB in the same QEMU, ns per 4 KiB page
/// (`reference/platform.md`), beside the devices benchmark's migration steps.
const LINUX_MIGRATION_NS: [(&str, &str, u64); 4] = [
    ("migrate_to_device", "migrate_to_dev", 19_200),
    ("cpu_fault_back", "cpu_fault_migrate_back", 24_100),
    ("cpu_fault_back_single", "cpu_fault_migrate_back", 24_100),
    ("migrate_to_ram", "migrate_to_sys", 6_200),
];

/// The host's own memcpy throughput (GB/s) in `size` pieces over 256 MiB from a 64 MiB buffer:
/// the physical limit of any copy between guest RAM and device memory (both are host memory).
fn host_memcpy(size: usize) -> f64 {
    let span = 64 << 20;
    let src = vec![0x5au8; span];
    let mut dst = vec![0u8; span];
    let total = 256usize << 20;
    let t0 = Instant::now();
    let mut off = 0;
    while off < total {
        let o = off % span;
        dst[o..o + size].copy_from_slice(&src[o..o + size]);
        off += size;
    }
    std::hint::black_box(&dst);
    total as f64 / t0.elapsed().as_nanos().max(1) as f64
}

fn bench_devices(o: &Options) -> Result<u8> {
    let (machine, results) = bench_job(o, "devices", "bench-devices")?;
    println!("devices benchmark: {} ({})", machine.description, o.accel);
    let gbps = |v: &Value| v["bytes"].as_u64().unwrap_or(0) as f64 / v["ns"].as_u64().unwrap_or(1).max(1) as f64;
    let devices: std::collections::BTreeSet<u64> = results.iter().filter_map(|v| v["device"].as_u64()).collect();
    for &n in &devices {
        let of = |op: &'static str| results.iter().filter(move |v| v["op"] == op && v["device"].as_u64() == Some(n));
        let of_name = |op: String| results.iter().find(|v| v["op"] == op.as_str() && v["device"].as_u64() == Some(n));
        println!("\n== dev{n}: copy throughput over 256 MiB, GB/s");
        println!(
            "{:<10} {:>14} {:>14} {:>14} {:>14} {:>12}",
            "size", "DMA ram->dev", "DMA dev->ram", "CPU ram->dev", "CPU dev->ram", "host memcpy"
        );
        for v in of("dma_to_device") {
            let size = v["size"].as_u64().unwrap_or(0);
            let find = |op: &'static str| of(op).find(|w| w["size"].as_u64() == Some(size)).map(gbps).unwrap_or(0.0);
            let label = if size >= 1 << 20 { format!("{} MiB", size >> 20) } else { format!("{} KiB", size >> 10) };
            println!(
                "{label:<10} {:>14.3} {:>14.3} {:>14.3} {:>14.3} {:>12.3}",
                gbps(v),
                find("dma_to_ram"),
                find("cpu_to_device"),
                find("cpu_to_ram"),
                host_memcpy(size as usize)
            );
        }
        println!("\n== dev{n}: migration of 256 MiB, ns per 4 KiB page");
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}  (Linux: lib/test_hmm, 4 KiB, CPU copy into RAM posing as device memory)",
            "step", "DMA copy", "CPU copy", "DMA, THPs", "Linux 6.1"
        );
        for (op, linux_op, linux) in LINUX_MIGRATION_NS {
            let ns = |copier: &str| {
                of(op)
                    .find(|v| v["copier"] == copier)
                    .and_then(|v| v["ns_per_page"].as_u64())
                    .map_or("missing".to_string(), |n| n.to_string())
            };
            // The same step with the memory in THPs (2 MiB device pages); none for single-page faults.
            let thp = of_name(format!("{op}_thp"))
                .and_then(|v| v["ns_per_page"].as_u64())
                .map_or("-".to_string(), |n| n.to_string());
            println!("{op:<20} {:>10} {:>10} {thp:>10} {linux:>10}  ({linux_op})", ns("dma"), ns("cpu"));
        }
        for v in of("device_to_device") {
            println!("device_to_device (dev{n} -> dev{}) {:>10} ns/page, peer to peer", v["to"], v["ns_per_page"]);
        }
        println!("\n== dev{n}: device fault service (one word per page of 64 MiB, 256 lanes)");
        for v in of("fault_batch") {
            println!(
                "policy {:<8} batches={} faults={} max_batch={} pages_to_device={} ns_per_batch={} ns_per_fault={}",
                v["policy"].as_str().unwrap_or("?"),
                v["batches"],
                v["faults"],
                v["max_batch"],
                v["pages_to_device"],
                v["ns_per_batch"],
                v["ns_per_fault"]
            );
        }
        // Published references (shared/reference/placement.md §1.7): measured fault-group
        // service times on a Pascal GPU under UVM, and UVMSmart's calibrated far-fault latency.
        if let Some(m) = of("fault_batch").find(|v| v["policy"] == "migrate") {
            let us = |k: &str| m[k].as_u64().map_or("missing".to_string(), |n| format!("{:.1}", n as f64 / 1000.0));
            println!(
                "vs UVM: {} us per batch of up to 256 faults here; UVM fault groups take {} us on a GTX 1080 Ti",
                us("ns_per_batch"),
                UVM_FAULT_GROUP_US.iter().map(|(w, t)| format!("{w} {t}")).collect::<Vec<_>>().join(", ")
            );
            println!(
                "vs UVMSmart: {} us per fault here (migration included); its simulator charges {UVMSMART_FAR_FAULT_US} us per far fault",
                us("ns_per_fault")
            );
        }
    }
    Ok(0)
}

/// Average fault-group service time under NVIDIA UVM (Pascal GTX 1080 Ti, 100 % of memory),
/// per workload, in µs (`reference/placement.md` §1.7).
const UVM_FAULT_GROUP_US: [(&str, u64); 4] = [("backprop", 155), ("fdtd", 182), ("hotspot", 198), ("bfs", 560)];
/// UVMSmart's GPGPU-Sim calibration: 66645 core cycles per far fault, in µs.
const UVMSMART_FAR_FAULT_US: u64 = 45;

fn bench_boot(o: &Options) -> Result<u8> {
    let machine = Machine::load(&o.machine)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    let kernel = build_kernel(Profile::Release)?;
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for i in 0..o.runs {
        let run = run_qemu(&Launch {
            kernel: &kernel,
            machine: &machine,
            cmdline: "log=warn job=none".into(),
            accel: &o.accel,
            gdb: false,
            timeout: Duration::from_secs(60),
            echo: false,
            initrd: None,
            on_line: None,
        })?;
        if run.outcome != Outcome::Success {
            return Err(format!("boot {i}: {}", run.outcome.describe()));
        }
        let ready = run.ready_at.ok_or("no boot report")?;
        let kernel_ns = json_line(&run.lines, "@@BOOT ").and_then(|v| v["ready_ns"].as_u64()).unwrap_or(0);
        host.push(ready.as_secs_f64() * 1e3);
        guest.push(kernel_ns as f64 / 1e6);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mh, mg) = (median(&mut host), median(&mut guest));
    println!("boot benchmark: {} ({} firmware, {}), {} runs", machine.description, machine.firmware, o.accel, o.runs);
    println!("  QEMU start -> kernel ready: median {mh:.1} ms (min {:.1}, max {:.1})", host[0], host[host.len() - 1]);
    println!("  kernel entry -> ready:      median {mg:.1} ms");
    println!("  target: under 100 ms from QEMU start: {}", if mh < 100.0 { "met" } else { "NOT met" });
    Ok(0)
}

// ---- experiments -------------------------------------------------------------------------

/// Runs every point of `l`: in QEMU guests (`jobs` at a time, `points_per_boot` each), or on
/// the host over the model mechanism. Returns the results by point and the trace events.
fn run_points(
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
                            let mut m = hmm::place::engine::model::Model::new(prepared.pages);
                            let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
                            let j = hmm::place::spec::result_json(p, &o, "model");
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
        let dir = experiment::out_dir(&root(), l);
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
                            if line.starts_with("@@POINT ") {
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
                        });
                        let mut res = results.lock().unwrap();
                        match run {
                            Ok(run) => {
                                let mut got = experiment::Results::new();
                                for line in &run.lines {
                                    if let Some(j) = line.strip_prefix("@@POINT ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
                                        if let Some(id) = j["id"].as_u64() {
                                            got.insert(id as u32, j);
                                        }
                                    } else if let Some(j) = line.strip_prefix("@@TRACE ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
                                        traces.lock().unwrap().push(j);
                                    }
                                }
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
                                        let tail: Vec<&String> = run.lines.iter().rev().take(5).collect();
                                        serde_json::json!({ "id": p.id, "error": format!("no result: the guest ended with {why}; last lines: {tail:?}") })
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
fn report_experiment(
    l: &experiment::Loaded,
    results: &experiment::Results,
    traces: &[Value],
    wall: Duration,
) -> Result<bool> {
    let dir = experiment::out_dir(&root(), l);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |name: &str, data: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("results.csv", &experiment::csv(l, results))?;
    let plots = experiment::plots(l, results);
    for (name, svg) in &plots {
        write(name, svg)?;
    }
    if !traces.is_empty() {
        write("trace.json", &experiment::trace(l, traces))?;
    }
    println!("\n== experiment {}: {} ==", l.exp.name.get_ref(), l.exp.description);
    println!("{}", experiment::summary(l, results));
    print!("{}", experiment::comparisons(l, results));
    let failed =
        results.values().filter(|r| r.get("error").is_some()).count() + l.points.len().saturating_sub(results.len());
    let sim_vs_wall: f64 = results.values().filter_map(|r| r["wall_ns"].as_f64()).sum::<f64>() / 1e9;
    println!(
        "\n{} points, {} failed; measured wall time of the runs {:.1} s (the sim ms column is the cost model's simulated device time); {:.1} s in all",
        l.points.len(),
        failed,
        sim_vs_wall,
        wall.as_secs_f64()
    );
    println!(
        "results in {} (results.csv, {} plot(s){})",
        dir.display(),
        plots.len(),
        if traces.is_empty() { "" } else { ", trace.json for Perfetto / chrome://tracing" }
    );
    Ok(failed == 0)
}

fn cmd_experiment(args: &[String]) -> Result<u8> {
    let mut host = false;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut timeout = 600;
    let mut file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--host" => host = true,
            "--jobs" => {
                jobs =
                    it.next().and_then(|v| v.parse().ok()).filter(|&j| j > 0).ok_or("--jobs takes a positive count")?
            }
            "--timeout" => {
                timeout = it.next().and_then(|v| v.parse().ok()).filter(|&t| t > 0).ok_or("--timeout takes seconds")?
            }
            other if other.starts_with('-') => return Err(format!("unknown option '{other}'\n{}", usage())),
            other if file.is_none() => file = Some(PathBuf::from(other)),
            other => return Err(format!("one experiment file at a time ('{other}' is a second)\n{}", usage())),
        }
    }
    let file = file.ok_or_else(|| {
        format!("which experiment? e.g. cargo xtask experiment experiments/reproduce.toml\n{}", usage())
    })?;
    let l = experiment::load(&file, &root())?;
    if host && l.exp.cost.get("lines").and_then(|v| v.get_ref().as_str()) == Some("hmat") {
        return Err(format!(
            "{}: cost.lines = \"hmat\" takes the line costs from the guest's ACPI HMAT, which --host has not got; run it without --host",
            file.display()
        ));
    }
    eprintln!(
        "xtask: experiment {}: {} points on {}{}",
        l.exp.name.get_ref(),
        l.points.len(),
        l.machine.description,
        if host { " (host, model mechanism)" } else { "" }
    );
    let t0 = Instant::now();
    let (results, traces) = run_points(&l, host, jobs, timeout, Profile::Release)?;
    Ok(if report_experiment(&l, &results, &traces, t0.elapsed())? { 0 } else { 1 })
}
