//! `cargo xtask qemu [--machine FILE] [--accel tcg|kvm] [--gdb] [--release|--debug]
//! [--timeout SECS] [--grub bios|uefi] [--profile [--profile-hz N]] [-- KERNEL ARGS...]`: builds the kernel, boots it on the
//! machine FILE describes (default `qemu/default.toml`), prints the kernel log, the boot
//! report, the default job's result and (with no kernel arguments, on the default machine,
//! booted by PVH) the default experiment's summary and table, and exits with QEMU's decoded
//! status. `--grub` boots the same kernel through GRUB from an ISO (`target/grub/qemu.iso`,
//! which also boots a physical machine) under SeaBIOS or OVMF.
//!
//! Kernel arguments that select in-kernel tests (`ktest.filter=`, `ktest.from=`,
//! `ktest.timeout_ms=`) only mean something to the test build, so with them this boots the
//! `ktest` build (the in-kernel test runner) instead of the release kernel
//! ([`kernel_profile`]); `--debug` with them is refused.
//!
//! `--run BINARY [--arg ARG]...` runs a static Linux x86-64 executable in the kernel's user
//! mode instead (`job=run`, the binary as the boot module): its output is on the console and
//! the xtask exits with its status (128 + the signal's number when an exception stopped it, as
//! a shell reports it).

use super::experiment::report_experiment;
use crate::decode::{json_line, points_and_traces};
use crate::experiment;
use crate::machine::Machine;
use crate::options::{Accel, MachineOpt, ProfileOpt, positive};
use crate::qemu::{Boot, Launch, run_qemu};
use crate::setup::{Profile, build_kernel, ensure_prerequisites};
use crate::{Result, root};
use boot::protocol::Tag;
use serde_json::Value;
use std::time::{Duration, Instant};

/// `cargo xtask qemu`'s options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Build the kernel and boot it in QEMU",
    long_about = "Build the kernel and boot it in QEMU: the kernel log, the boot report, the default job's result and, with no kernel arguments on the default machine, the default experiment (experiments/default.toml) with its summary and table; then the decoded QEMU exit (0 on success).\n\nKernel arguments go after `--`, e.g. `cargo xtask qemu -- log=debug,kernel::pci=trace`; `-- ktest.filter=pci::` boots the in-kernel test build and runs the tests whose names contain `pci::`."
)]
pub struct Args {
    #[command(flatten)]
    machine: MachineOpt,
    /// The accelerator: tcg (QEMU's emulator) or kvm (real hardware).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// QEMU waits for gdb on 127.0.0.1:1234 before the kernel's first instruction (no timeout then).
    #[arg(long)]
    gdb: bool,
    #[command(flatten)]
    pub(crate) profile: ProfileOpt,
    #[command(flatten)]
    sampling: crate::profile::SamplingOpt,
    /// Kill QEMU after SECS seconds (the xtask's own timeout; none with --gdb).
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = positive::<u64>, conflicts_with = "gdb")]
    timeout: u64,
    /// Boot through GRUB (Multiboot2) from an ISO under SeaBIOS (bios) or OVMF (uefi) instead of by PVH.
    #[arg(long, value_enum, value_name = "FIRMWARE")]
    grub: Option<GrubFirmware>,
    /// Run this static Linux x86-64 executable (built with `gcc -static`) in the kernel's
    /// user mode; the xtask exits with its status.
    #[arg(long, value_name = "BINARY", conflicts_with = "grub")]
    run: Option<std::path::PathBuf>,
    /// One more argument for the program of --run (may repeat; no whitespace).
    #[arg(long = "arg", value_name = "ARG", requires = "run", allow_hyphen_values = true)]
    run_args: Vec<String>,
    /// Kernel command-line arguments (after `--`), e.g. log=debug job=none ktest.filter=pci::
    #[arg(last = true, value_name = "KERNEL ARGS")]
    pub(crate) kernel_args: Vec<String>,
}

/// The kernel arguments of `--run BINARY --arg ...`: `job=run`, `run.name` (the binary's file
/// name) and a `run.arg` per argument; an argument with whitespace cannot be carried.
pub fn run_args(binary: &std::path::Path, args: &[String]) -> Result<Vec<String>> {
    let name = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let mut out = vec!["job=run".to_string()];
    for (what, v) in std::iter::once(("the program's file name", &name)).chain(args.iter().map(|a| ("an argument", a)))
    {
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            return Err(format!(
                "{what} `{v}` is empty or has whitespace: the kernel command line that carries it splits on whitespace"
            ));
        }
    }
    out.push(format!("run.name={name}"));
    out.extend(args.iter().map(|a| format!("run.arg={a}")));
    Ok(out)
}

/// The exit status of the program a `@@RUN` line reports: its own, or 128 + the signal's
/// number (as a shell gives it), or 1 when the kernel stopped it; with a sentence saying so.
pub fn run_status(run: &Value) -> (u8, String) {
    if let Some(c) = run["exit_code"].as_i64() {
        return ((c & 0xff) as u8, format!("the program exited with status {c}"));
    }
    if let Some(sig) = run["signal"].as_str() {
        let n = run["signo"].as_u64().and_then(|n| u8::try_from(n).ok()).filter(|n| (1..=64).contains(n)).unwrap_or(11);
        if run["vector"].is_null() {
            return (128 + n, format!("the program was ended by {sig}"));
        }
        let at = run["address"].as_str().map(|a| format!(", address {a}")).unwrap_or_default();
        return (
            128 + n,
            format!(
                "the program was stopped by {sig}: exception {} at rip {}{at}",
                run["vector"],
                run["rip"].as_str().unwrap_or("?")
            ),
        );
    }
    if let Some(what) = run["unsupported_syscall"].as_str() {
        return (
            1,
            format!("the program was stopped: it made the system call {what}, which the kernel does not implement"),
        );
    }
    (1, format!("the kernel reported the program's end in a form the xtask does not know: {run}"))
}

/// `--grub bios|uefi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GrubFirmware {
    /// SeaBIOS.
    Bios,
    /// OVMF (UEFI).
    Uefi,
}

/// The kernel arguments only the in-kernel test build reads.
const KTEST_ARGS: [&str; 3] = ["ktest.filter=", "ktest.from=", "ktest.timeout_ms="];

/// The kernel build to boot: the `ktest` build when a kernel argument selects in-kernel tests
/// (the release and debug builds have no test runner and would ignore it), else the one
/// `--release`/`--debug` chose.
pub fn kernel_profile(kernel_args: &[String], chosen: ProfileOpt) -> Result<Profile> {
    let Some(a) = kernel_args.iter().find(|a| KTEST_ARGS.iter().any(|k| a.starts_with(k))) else {
        return Ok(chosen.profile());
    };
    if chosen.debug {
        return Err(format!(
            "kernel argument '{a}' selects in-kernel tests, which only the ktest build runs (optimised, with every check on); drop --debug"
        ));
    }
    Ok(Profile::Ktest)
}

/// `cargo xtask qemu`.
pub fn cmd(o: &Args) -> Result<u8> {
    let mut kernel_args = o.kernel_args.clone();
    if let Some(bin) = &o.run {
        std::fs::metadata(bin).map_err(|e| format!("--run {}: {e}", bin.display()))?;
        kernel_args.extend(run_args(bin, &o.run_args)?);
    }
    let kernel_args = &kernel_args;
    let default_machine = root().join("qemu/default.toml");
    let machine_path = o.machine.path_or("qemu/default.toml");
    let profile = kernel_profile(kernel_args, o.profile)?;
    let machine = Machine::load(&machine_path)?;
    ensure_prerequisites(machine.firmware == "qboot")?;
    if profile == Profile::Ktest {
        eprintln!("xtask: ktest.* kernel arguments: booting the in-kernel test build (the ktest profile)");
    }
    let kernel = build_kernel(profile)?;
    let grub = o.grub.map(|g| match g {
        GrubFirmware::Bios => crate::grub::Firmware::Bios,
        GrubFirmware::Uefi => crate::grub::Firmware::Uefi,
    });
    // With no kernel arguments the default job is followed by the default experiment, on the
    // default machine (its device memory sizes are what the experiment is written for).
    let default_exp = root().join("experiments/default.toml");
    let exp = if kernel_args.is_empty() && machine_path == default_machine && grub.is_none() {
        Some(experiment::load(&default_exp, root())?)
    } else {
        None
    };
    // The default experiment's run folder (`target/experiments/default/RUN-ID`), with the guest's
    // image of its points.
    let exp_run = match &exp {
        Some(l) => {
            let base = experiment::out_dir(root(), l);
            let inv = crate::run::Invocation::now("default-job", root(), None);
            Some(crate::run::Run::create(&base, root(), &default_exp, l, inv, false)?)
        }
        None => None,
    };
    let image = match (&exp, &exp_run) {
        (Some(l), Some(r)) => {
            let path = r.dir.join("image.txt");
            let text: String = l.points.iter().map(|p| p.encode()).collect();
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Some(path)
        }
        _ => None,
    };
    let iso = match grub {
        Some(_) => {
            crate::grub::ensure_tools()?;
            let cmdline = format!("{}{}{}", kernel_args.join(" "), o.sampling.kernel_arg(), machine.kernel_args());
            Some(crate::grub::make_iso(root(), "qemu", &kernel, cmdline.trim())?)
        }
        None => None,
    };
    let boot = match (&iso, grub) {
        (Some(iso), Some(firmware)) => Boot::Grub { iso, firmware },
        _ => Boot::Pvh,
    };
    let t0 = Instant::now();
    let run = run_qemu(&Launch {
        accel: o.accel.name(),
        gdb: o.gdb,
        echo: true,
        initrd: o.run.as_deref().or(image.as_deref()),
        boot,
        ..Launch::new(
            &kernel,
            &machine,
            format!("{}{}", kernel_args.join(" "), o.sampling.kernel_arg()).trim().to_string(),
            Duration::from_secs(o.timeout),
        )
    })?;
    if let Some(report) = json_line(&run.lines, Tag::Boot) {
        print_boot_report(&report, &machine, run.ready_at);
        // The same report as JSON, for scripts: in a file, not several KB on the terminal.
        let path = root().join("target/qemu/boot.json");
        let written = std::fs::create_dir_all(root().join("target/qemu"))
            .and_then(|()| std::fs::write(&path, format!("{report}\n")));
        match written {
            Ok(()) => println!("  (the boot report as JSON: {})", path.display()),
            Err(e) => eprintln!("xtask: writing {}: {e}", path.display()),
        }
    }
    if let Some(result) = json_line(&run.lines, Tag::Result) {
        println!("\n== default job: {} ==", result["job"].as_str().unwrap_or("?"));
        if let Some(obj) = result.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| *k != "job") {
                println!("  {k:<40} {v}");
            }
        }
    }
    let mut code = run.outcome.code();
    if o.run.is_some() {
        match json_line(&run.lines, Tag::Run) {
            Some(r) if code == 0 => {
                let (status, what) = run_status(&r);
                println!("\n{what}");
                code = status;
            }
            _ => code = code.max(1),
        }
    }
    if let (Some(l), Some(r)) = (&exp, &exp_run) {
        let (results, traces) = points_and_traces(&run.lines);
        for rec in crate::run::records_of(&results, &traces) {
            r.record(&rec)?;
        }
        let (results, traces) = crate::run::results_of(&crate::run::read_records(&r.dir)?);
        if !report_experiment(l, &r.dir, &results, &traces, t0.elapsed())? && code == 0 {
            code = 1;
        }
    }
    if o.sampling.profile
        && let Err(e) = crate::profile::report(root(), "qemu", &kernel, &run.lines)
    {
        eprintln!("xtask: {e}");
        code = code.max(1);
    }
    println!("\n{}", run.outcome.describe());
    Ok(code)
}

/// The `@@BOOT` report as a readable summary.
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
    println!("  tsc      {:.1} MHz (from {})", n(&v["tsc_hz"]) as f64 / 1e6, v["tsc_source"].as_str().unwrap_or("?"));
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
    if v["has_acpi"] == Value::Bool(false) {
        println!("  acpi     none (no RSDP): one CPU, no PCI");
    } else {
        println!("  acpi     {}", tables.join(" "));
    }
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
    if v["has_pci"] == Value::Bool(false) {
        println!("  pci      none (no ECAM): this machine has no devices");
    } else {
        println!("  pci      ECAM at {:#x}", n(&v["ecam_base"]));
    }
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
    for t in v["virtio_mmio"].as_array().into_iter().flatten() {
        let what = match t["error"].as_str() {
            Some(e) => format!("FAILED: {e}"),
            None => format!("virtio device id {}, version {}", n(&t["device_id"]), n(&t["version"])),
        };
        println!("  mmio     {:#x}+{:#x} irq {}: {what}", n(&t["base"]), n(&t["size"]), n(&t["irq"]));
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
