//! `cargo xtask bench boot|mm|hmm|devices [--machine FILE] [--accel tcg|kvm] [--runs N]
//! [--timeout SECS] [--kernel ELF...] [--profile [--profile-hz N]]`: the benchmarks.
//!
//! - `boot`: median time from QEMU start to kernel ready.
//! - `mm`: address-space operations (first touch, fork, COW, mprotect, munmap) per page for 4,
//!   64 and 256 MiB, on `qemu/bench.toml` unless `--machine` says otherwise.
//! - `hmm`: the HMM operations Linux 6.1 was timed on (first touch, device reads, snapshot,
//!   invalidation, migrations both ways, munmap of device pages) for 4, 64 and 256 MiB, with
//!   the Linux numbers and the speedup beside ours.
//! - `devices`: the real devices (copy engine and CPU-copy throughput beside the host's memcpy,
//!   migration of 256 MiB each way beside Linux, fault-batch latency), on
//!   `qemu/bench-devices.toml` unless `--machine` says otherwise.
//!
//! `bench mm|hmm --kernel A --kernel B [--runs N]` compares prebuilt kernel ELFs (say, two
//! commits' `target/x86_64-unknown-none/release/kernel`) in paired runs, A B A B ..., and prints
//! each operation's ratio to the first kernel: the way to tell a regression from the noise of
//! a shared machine.
//!
//! `--profile [--profile-hz N]` (mm, hmm, devices) boots with the kernel's sampling profiler
//! on and, after the benchmark's output, writes and summarises the profile
//! (`target/profile/bench-NAME/`, [`crate::profile`]).
//!
//! Owns the published reference numbers each benchmark is printed beside.

use crate::Result;
use crate::decode::{bench_results, json_line};
use crate::machine::Machine;
use crate::options::{Accel, MachineOpt, positive};
use crate::profile::SamplingOpt;
use crate::qemu::{Launch, Outcome, run_qemu};
use crate::setup::{Profile, build_kernel, ensure_prerequisites};
use boot::protocol::Tag;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `cargo xtask bench`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Benchmarks: boot time, address-space and HMM operations, the real devices",
    long_about = "Benchmarks. `boot`: the median time from QEMU start to kernel ready over --runs boots. `mm`: address-space operations per page for 4, 64 and 256 MiB on qemu/bench.toml. `hmm`: the HMM operations Linux 6.1's lib/test_hmm was timed on, beside Linux's numbers. `devices`: the real devices (copy engines, migration, fault batches) on qemu/bench-devices.toml.\n\n`bench mm|hmm --kernel A --kernel B [--runs N]` boots prebuilt kernel ELFs in turn (A B A B ...) and prints each operation's ratio to the first kernel."
)]
pub struct Args {
    /// The benchmark.
    #[arg(value_enum)]
    bench: Bench,
    #[command(flatten)]
    machine: MachineOpt,
    /// The accelerator: tcg (QEMU's emulator) or kvm (real hardware).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Boots of `boot`, or rounds of a --kernel comparison [default: 10].
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    runs: Option<usize>,
    /// Kill a benchmark boot after SECS seconds [default: 60 for boot, 300 for the others].
    #[arg(long, value_name = "SECS", value_parser = positive::<u64>)]
    timeout: Option<u64>,
    /// A prebuilt kernel ELF to compare (repeat: --kernel A --kernel B); mm and hmm only.
    #[arg(long = "kernel", value_name = "ELF")]
    kernels: Vec<PathBuf>,
    #[command(flatten)]
    sampling: SamplingOpt,
}

impl Args {
    /// The options that do not apply to the benchmark asked for, as an error: `--kernel` is
    /// for `mm` and `hmm`, `--runs` for `boot` and `--kernel` comparisons (the other
    /// benchmarks boot once).
    pub fn check(&self) -> Result<()> {
        if !self.kernels.is_empty() && !matches!(self.bench, Bench::Mm | Bench::Hmm) {
            return Err("--kernel compares prebuilt kernels on bench mm or bench hmm only".into());
        }
        if self.sampling.profile && (self.bench == Bench::Boot || !self.kernels.is_empty()) {
            return Err(
                "--profile samples one benchmark boot of mm, hmm or devices; not bench boot or a --kernel comparison"
                    .into(),
            );
        }
        if self.runs.is_some() && self.kernels.is_empty() && self.bench != Bench::Boot {
            return Err(
                "--runs is the number of boots of bench boot, or of rounds of a --kernel comparison; this benchmark boots once"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Bench {
    /// Time from QEMU start to kernel ready.
    Boot,
    /// Address-space operations per page (qemu/bench.toml).
    Mm,
    /// HMM operations beside Linux 6.1's lib/test_hmm (qemu/bench.toml).
    Hmm,
    /// The real devices: copy engines, migration, fault batches (qemu/bench-devices.toml).
    Devices,
}

/// The options a benchmark runs with (the machine file resolved).
struct Options {
    machine: PathBuf,
    accel: &'static str,
    timeout: Option<u64>,
    runs: usize,
    sampling: SamplingOpt,
}

/// `cargo xtask bench NAME`.
pub fn cmd(a: &Args) -> Result<u8> {
    let machine = match a.bench {
        Bench::Boot => a.machine.path_or("qemu/default.toml"),
        Bench::Mm | Bench::Hmm => a.machine.path_or("qemu/bench.toml"),
        Bench::Devices => a.machine.path_or("qemu/bench-devices.toml"),
    };
    a.check()?;
    let o = Options {
        machine,
        accel: a.accel.name(),
        timeout: a.timeout,
        runs: a.runs.unwrap_or(10),
        sampling: a.sampling,
    };
    if !a.kernels.is_empty() {
        let (name, job) = match a.bench {
            Bench::Mm => ("mm", "bench-mm"),
            Bench::Hmm => ("hmm", "bench-hmm"),
            _ => unreachable!("checked above"),
        };
        return compare(&o, name, job, &a.kernels);
    }
    match a.bench {
        Bench::Boot => bench_boot(&o),
        Bench::Mm => bench_mm(&o),
        Bench::Hmm => bench_hmm(&o),
        Bench::Devices => bench_devices(&o),
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
    let results = boot_job(o, &machine, &kernel, name, job)?;
    Ok((machine, results))
}

/// One boot of `kernel` with `job` on `machine`: its `@@BENCH` results.
fn boot_job(o: &Options, machine: &Machine, kernel: &Path, name: &str, job: &str) -> Result<Vec<Value>> {
    let run = run_qemu(&Launch {
        accel: o.accel,
        ..Launch::new(
            kernel,
            machine,
            format!("log=warn job={job}{}", o.sampling.kernel_arg()),
            Duration::from_secs(o.timeout.unwrap_or(300)),
        )
    })?;
    if run.outcome != Outcome::Success {
        for l in &run.lines[run.lines.len().saturating_sub(20)..] {
            eprintln!("  | {}", crate::decode::brief(l));
        }
        return Err(format!("{name} benchmark ({}): {}", kernel.display(), run.outcome.describe()));
    }
    let results = bench_results(&run.lines);
    if results.is_empty() {
        return Err(format!("{name} benchmark ({}): the kernel printed no results", kernel.display()));
    }
    if o.sampling.profile {
        crate::profile::report(crate::root(), &format!("bench-{name}"), kernel, &run.lines)?;
    }
    Ok(results)
}

/// The median of `v` (not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// `bench mm|hmm --kernel A --kernel B ... --runs N`: paired runs of prebuilt kernels (no
/// build), A, B, ..., A, B, ... `N` rounds, so the machine's load drifts over all of them
/// alike. Prints, per operation and size, each kernel's median `ns_per_page`, the median over
/// rounds of its ratio to the first kernel's (above 1: slower than the first) and the ratio of
/// the two kernels' fastest rounds, then the geometric means of both over all operations. Every
/// measurement also goes to stderr (`raw round=.. kernel=.. op=.. mib=.. ns_per_page=..`).
fn compare(o: &Options, name: &str, job: &str, kernels: &[PathBuf]) -> Result<u8> {
    let machine = Machine::load(&o.machine)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    for k in kernels {
        if !k.is_file() {
            return Err(format!("--kernel {}: no such file", k.display()));
        }
    }
    // rounds[r][k]: kernel k's (op, mib) -> ns_per_page in round r.
    let mut rounds: Vec<Vec<std::collections::BTreeMap<(String, u64), f64>>> = Vec::new();
    let mut order: Vec<(String, u64)> = Vec::new();
    for r in 0..o.runs {
        let mut round = Vec::new();
        for (i, k) in kernels.iter().enumerate() {
            let t0 = Instant::now();
            let results = boot_job(o, &machine, k, name, job)?;
            eprintln!("round {}/{} kernel {i}: {:.0} s", r + 1, o.runs, t0.elapsed().as_secs_f64());
            let mut m = std::collections::BTreeMap::new();
            for v in &results {
                let (Some(op), Some(mib), Some(ns)) = (v["op"].as_str(), v["mib"].as_u64(), v["ns_per_page"].as_u64())
                else {
                    continue;
                };
                let key = (op.to_string(), mib);
                if i == 0 && r == 0 {
                    order.push(key.clone());
                }
                // Every measurement, for a closer look at the spread: on stderr.
                eprintln!("raw round={r} kernel={i} op={} mib={} ns_per_page={ns}", key.0, key.1);
                m.insert(key, ns as f64);
            }
            round.push(m);
        }
        rounds.push(round);
    }
    println!("{name} benchmark, paired: {} ({}), {} rounds", machine.description, o.accel, o.runs);
    for (i, k) in kernels.iter().enumerate() {
        println!("  kernel {i}: {}", k.display());
    }
    print!("{:<28} {:>5}", "op", "mib");
    for i in 0..kernels.len() {
        print!(" {:>10}", format!("ns k{i}"));
    }
    for i in 1..kernels.len() {
        print!(" {:>8}", format!("k{i}/k0"));
    }
    for i in 1..kernels.len() {
        print!(" {:>8}", format!("min{i}/0"));
    }
    println!();
    let mut logs = vec![Vec::new(); kernels.len()];
    let mut min_logs = vec![Vec::new(); kernels.len()];
    for key in &order {
        print!("{:<28} {:>5}", key.0, key.1);
        let mut mins = Vec::new();
        for i in 0..kernels.len() {
            let mut ns: Vec<f64> = rounds.iter().filter_map(|r| r[i].get(key).copied()).collect();
            mins.push(ns.iter().copied().reduce(f64::min));
            if ns.is_empty() {
                print!(" {:>10}", "missing");
            } else {
                print!(" {:>10.0}", median(&mut ns));
            }
        }
        for (i, log) in logs.iter_mut().enumerate().skip(1) {
            let mut ratios: Vec<f64> =
                rounds.iter().filter_map(|r| Some(r[i].get(key)?.max(1.0) / r[0].get(key)?.max(1.0))).collect();
            if ratios.is_empty() {
                print!(" {:>8}", "-");
            } else {
                let m = median(&mut ratios);
                log.push(m.ln());
                print!(" {m:>8.2}");
            }
        }
        // The fastest round of each: the machine's noise only ever adds time.
        for (i, log) in min_logs.iter_mut().enumerate().skip(1) {
            match (mins[i], mins[0]) {
                (Some(a), Some(b)) => {
                    let m = a.max(1.0) / b.max(1.0);
                    log.push(m.ln());
                    print!(" {m:>8.2}");
                }
                _ => print!(" {:>8}", "-"),
            }
        }
        println!();
    }
    let geo = |log: &[f64]| (log.iter().sum::<f64>() / log.len().max(1) as f64).exp();
    for i in 1..kernels.len() {
        println!(
            "kernel {i} / kernel 0 over all operations (geometric mean): {:.3} of the median ratios, {:.3} of the minimums' ratios",
            geo(&logs[i]),
            geo(&min_logs[i])
        );
    }
    Ok(0)
}

/// The largest size's `ns_per_page` for `op`.
fn largest(results: &[Value], op: &str) -> Option<(u64, u64)> {
    results
        .iter()
        .filter(|v| v["op"] == op)
        .max_by_key(|v| v["mib"].as_u64())
        .and_then(|v| Some((v["mib"].as_u64()?, v["ns_per_page"].as_u64()?)))
}

/// `bench mm`: address-space operations per page, beside Linux's first touch.
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

/// `bench hmm`: the HMM operations against Linux 6.1's lib/test_hmm timings.
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

/// A copy size as the machine-readable lines name it: `4k`, `64k`, `2m`.
fn size_label(size: u64) -> String {
    if size >= 1 << 20 { format!("{}m", size >> 20) } else { format!("{}k", size >> 10) }
}

/// `bench devices`' machine-readable lines, one per figure, in `bench hmm`'s form
/// `<op> [device=N] pages=N ns_per_page=X gbps=Y` (GB/s of 4 KiB pages: 4096 / ns_per_page):
/// - `copy_{dma|cpu}_{4k|64k|2m}_{ram_to_dev|dev_to_ram}`: the copy throughput rows;
/// - `host_memcpy_{size}`: the host's memcpy in the same pieces (`host` by size, GB/s);
/// - `{dma|cpu}_{migrate_to_device|cpu_fault_back|cpu_fault_back_single|migrate_to_ram}` and
///   `thp_{migrate_to_device|cpu_fault_back|migrate_to_ram}`: the migration steps;
/// - `device_to_device device=N to=M`, `copy_dma_2m_two_devices_{sequential|concurrent}`;
/// - `fault_batch_{policy} device=N faults=F ns_per_fault=X ns_per_batch=Y`: not per page.
fn machine_lines(results: &[Value], host: &std::collections::BTreeMap<u64, f64>) -> Vec<String> {
    let mut out = Vec::new();
    let per_page = |op: &str, dev: Option<u64>, pages: u64, ns_per_page: f64| {
        let device = dev.map(|d| format!(" device={d}")).unwrap_or_default();
        let gbps = if ns_per_page > 0.0 { 4096.0 / ns_per_page } else { 0.0 };
        format!("{op}{device} pages={pages} ns_per_page={ns_per_page:.0} gbps={gbps:.3}")
    };
    for v in results {
        let Some(op) = v["op"].as_str() else { continue };
        let dev = v["device"].as_u64();
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        match op {
            "dma_to_device" | "dma_to_ram" | "cpu_to_device" | "cpu_to_ram" => {
                let (engine, dir) = op.split_once('_').unwrap_or((op, ""));
                let dir = if dir == "to_device" { "ram_to_dev" } else { "dev_to_ram" };
                let pages = u("bytes") / 4096;
                let ns = u("ns") as f64 / pages.max(1) as f64;
                out.push(per_page(&format!("copy_{engine}_{}_{dir}", size_label(u("size"))), dev, pages, ns));
            }
            "migrate_to_device" | "cpu_fault_back" | "cpu_fault_back_single" | "migrate_to_ram" => {
                let copier = v["copier"].as_str().unwrap_or("?");
                out.push(per_page(&format!("{copier}_{op}"), dev, u("pages"), u("ns_per_page") as f64));
            }
            _ if op.ends_with("_thp") => {
                let base = op.trim_end_matches("_thp");
                out.push(per_page(&format!("thp_{base}"), dev, u("pages"), u("ns_per_page") as f64));
            }
            "device_to_device" => {
                let line = per_page(op, dev, u("pages"), u("ns_per_page") as f64);
                out.push(line.replacen(" pages=", &format!(" to={} pages=", u("to")), 1));
            }
            "fault_batch" => out.push(format!(
                "fault_batch_{}{} faults={} ns_per_fault={} ns_per_batch={}",
                v["policy"].as_str().unwrap_or("?"),
                dev.map(|d| format!(" device={d}")).unwrap_or_default(),
                u("faults"),
                u("ns_per_fault"),
                u("ns_per_batch")
            )),
            "dma_two_devices" => {
                let pages = u("bytes") / 4096;
                let ns = u("ns") as f64 / pages.max(1) as f64;
                let mode = v["mode"].as_str().unwrap_or("?");
                out.push(per_page(&format!("copy_dma_2m_two_devices_{mode}"), None, pages, ns));
            }
            _ => {}
        }
    }
    for (&size, &gbps) in host {
        let ns = if gbps > 0.0 { 4096.0 / gbps } else { 0.0 };
        out.push(format!(
            "host_memcpy_{} pages={} ns_per_page={ns:.0} gbps={gbps:.3}",
            size_label(size),
            (256u64 << 20) / 4096
        ));
    }
    out
}

/// `bench devices`: copy throughput, migration and fault service of the real devices.
fn bench_devices(o: &Options) -> Result<u8> {
    let (machine, results) = bench_job(o, "devices", "bench-devices")?;
    println!("devices benchmark: {} ({})", machine.description, o.accel);
    // The host's memcpy per copy size, measured once.
    let mut host = std::collections::BTreeMap::new();
    for v in results.iter().filter(|v| v["op"] == "dma_to_device") {
        if let Some(size) = v["size"].as_u64() {
            host.entry(size).or_insert_with(|| host_memcpy(size as usize));
        }
    }
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
                host.get(&size).copied().unwrap_or(0.0)
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
    let two = |mode: &str| results.iter().find(|v| v["op"] == "dma_two_devices" && v["mode"] == mode);
    if let (Some(seq), Some(conc)) = (two("sequential"), two("concurrent")) {
        println!("\n== two devices' copy engines, 256 MiB RAM -> device each, 2 MiB requests");
        println!(
            "dev0 then dev1 {:.3} GB/s ({:.1} ms); both at once {:.3} GB/s ({:.1} ms): {:.2}x",
            gbps(seq),
            seq["ns"].as_f64().unwrap_or(0.0) / 1e6,
            gbps(conc),
            conc["ns"].as_f64().unwrap_or(0.0) / 1e6,
            gbps(conc) / gbps(seq).max(1e-9)
        );
    }
    println!("\n== machine-readable, one line per figure");
    for l in machine_lines(&results, &host) {
        println!("{l}");
    }
    Ok(0)
}

/// Average fault-group service time under NVIDIA UVM (Pascal GTX 1080 Ti, 100 % of memory),
/// per workload, in µs (`reference/placement.md` §1.7).
const UVM_FAULT_GROUP_US: [(&str, u64); 4] = [("backprop", 155), ("fdtd", 182), ("hotspot", 198), ("bfs", 560)];
/// UVMSmart's GPGPU-Sim calibration: 66645 core cycles per far fault, in µs.
const UVMSMART_FAR_FAULT_US: u64 = 45;

/// `bench boot`: the median time from QEMU start to kernel ready over `--runs` boots.
fn bench_boot(o: &Options) -> Result<u8> {
    let machine = Machine::load(&o.machine)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    let kernel = build_kernel(Profile::Release)?;
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for i in 0..o.runs {
        let run = run_qemu(&Launch {
            accel: o.accel,
            ..Launch::new(&kernel, &machine, "log=warn job=none".into(), Duration::from_secs(o.timeout.unwrap_or(60)))
        })?;
        if run.outcome != Outcome::Success {
            return Err(format!("boot {i}: {}", run.outcome.describe()));
        }
        let ready = run.ready_at.ok_or("no boot report")?;
        let kernel_ns = json_line(&run.lines, Tag::Boot).and_then(|v| v["ready_ns"].as_u64()).unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn devices_figures_become_one_machine_readable_line_each() {
        let results = vec![
            json!({"op":"dma_to_device","device":0,"size":2097152,"bytes":268435456,"ns":134217728}),
            json!({"op":"cpu_to_ram","device":0,"size":4096,"bytes":268435456,"ns":268435456}),
            json!({"op":"migrate_to_device","device":0,"copier":"dma","pages":65536,"ns_per_page":8192}),
            json!({"op":"cpu_fault_back","device":1,"copier":"cpu","pages":65536,"ns_per_page":4096}),
            json!({"op":"migrate_to_device_thp","device":0,"pages":65536,"ns_per_page":2048}),
            json!({"op":"device_to_device","device":0,"to":1,"pages":1024,"ns_per_page":1000}),
            json!({"op":"fault_batch","device":0,"policy":"migrate","faults":16384,"ns_per_fault":3000,"ns_per_batch":768000}),
            json!({"op":"dma_two_devices","mode":"concurrent","bytes":536870912,"ns":268435456}),
            json!({"done":true}),
        ];
        let host = std::collections::BTreeMap::from([(2u64 << 20, 2.0)]);
        let lines = machine_lines(&results, &host);
        assert_eq!(
            lines,
            vec![
                "copy_dma_2m_ram_to_dev device=0 pages=65536 ns_per_page=2048 gbps=2.000",
                "copy_cpu_4k_dev_to_ram device=0 pages=65536 ns_per_page=4096 gbps=1.000",
                "dma_migrate_to_device device=0 pages=65536 ns_per_page=8192 gbps=0.500",
                "cpu_cpu_fault_back device=1 pages=65536 ns_per_page=4096 gbps=1.000",
                "thp_migrate_to_device device=0 pages=65536 ns_per_page=2048 gbps=2.000",
                "device_to_device device=0 to=1 pages=1024 ns_per_page=1000 gbps=4.096",
                "fault_batch_migrate device=0 faults=16384 ns_per_fault=3000 ns_per_batch=768000",
                "copy_dma_2m_two_devices_concurrent pages=131072 ns_per_page=2048 gbps=2.000",
                "host_memcpy_2m pages=65536 ns_per_page=2048 gbps=2.000",
            ]
        );
    }
}
