//! Experiments as data: `cargo xtask experiment FILE`.
//!
//! An experiment file (TOML) names a machine, workloads, policies and sweeps. This module
//! checks it against the same parameter tables the guest uses (`hmm::place`), with errors that
//! name the file, line and field and say what is allowed ([`load`], one function per section);
//! expands it into points, which `cmd::experiment` runs (several QEMU guests in parallel where
//! cores allow, or with `--host` on the host over the HMM stack on the host platform); and makes from their
//! results a CSV, a summary table, comparison tables with published numbers beside ours, SVG
//! plots, and a Chrome/Perfetto trace.
//!
//! ```toml
//! name = "example"
//! machine = "qemu/default.toml"      # default
//! device_memory = ["16M"]             # per device, at most what the machine has (default: all)
//! mechanism = "real"                  # or "host": the HMM stack over the host platform, in the guest
//! scheduler = "eft"                   # hmm::place::sched name (per [[policy]] too); default eft
//! repeat = 1                          # every point this many times, seeds shifted (1 to 100)
//! points_per_boot = 4                 # points per guest boot at most (1 to 1000; default 4; the last boots take fewer)
//! [cost]                              # hmm::place::cost parameters
//! far_fault_us = 45
//! lines = "model"                     # or "hmat": CPU line costs from the guest's ACPI HMAT
//! [[workload]]
//! kind = "bfs"                        # any hmm::place::workload generator, with its parameters
//! name = "bfs-6"                      # its label (default: its kind); labels are unique
//! degree = 6
//! process = 1                         # the process it runs in (0-3; default 0): with
//!                                     # together, workloads of different processes share the
//!                                     # devices as separate address spaces
//! allocation = "uvmsmart"             # arrays rounded and 2 MiB-aligned as UVMSmart's
//!                                     # cudaMallocManaged does; scale = "device_memory" then
//!                                     # sizes devices from the rounded sizes (default "pages")
//! [[policy]]
//! name = "TBNe+TBNp"                  # label
//! placement = "tree"                  # hmm::place::policies name
//! params = { threshold = 51 }
//! eviction = { order = "tbne" }
//! oversubscription = [1.1]            # only some of the sweep's ratios (default: all)
//! workloads = ["bfs-6"]               # only some workloads, by label (default: all)
//! [sweep]
//! oversubscription = [1.0, 1.1]       # each ratio once
//! together = true                     # all workloads in one point (default: one each)
//! alone = true                        # with together: each process's own points too (each
//!                                     # workload's, in one process), for the slowdown from
//!                                     # sharing in workloads.csv
//! scale = "footprint"                 # ratios scale footprints (default), or "device_memory":
//!                                     # footprints fixed (footprint_pages, else device_memory),
//!                                     # device memory = what the workloads allocate / ratio, as
//!                                     # UVMSmart's gddr_size
//! unscaled = [1.0]                    # under "device_memory": ratios whose points keep
//!                                     # device_memory as given (the artifact's runs without
//!                                     # oversubscription have a 1 GB GDDR, where nothing fills)
//! [[event]]                           # in every point, from simulated time `at` on, a device
//! at = "2ms"                          # has `size` of memory: what no longer fits is evicted
//! device = "dev0"                     # by the policy's order (the host taking memory back)
//! size = "1M"
//! [[table]]                           # rows: workloads; columns: policies at a ratio
//! title = "(A) prefetchers"
//! oversubscription = 1.0              # of columns without `@ratio` (default 1.0)
//! columns = ["on-demand", "TBNe+TBNp", "TBNe+TBNp@1.1"]
//! unit = "us"                         # of the published values
//! reference = "TBNe+TBNp"             # verdicts compare ours ÷ ours[reference] with published ÷ published[reference]
//! # normalise = "TBNe+TBNp"           # or: every cell ÷ this column of its row (cells are ratios, compared directly)
//! tie = 0.05                          # published values closer than 5 % are not an ordering (default)
//! ratios = [["on-demand", "TBNe+TBNp"]]
//! published = { bfs = [116942, 3845, -1] }   # one per column; -1: not published
//! ```
//!
//! Each published cell gets a verdict (within 2x of the published value or not) and each
//! published ordering of a row (held or not); the run ends with
//! `reproduction: C of T published cells within 2x; O of P orderings as published`. The rules
//! are in [`tables`].

use crate::machine::{Machine, parse_size};
use hmm::place::params::{ParamError, Params, Value};
use hmm::place::spec::{Point, RUN};
use hmm::place::{cost, policies, workload};
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use toml::Spanned;

type Table = BTreeMap<String, Spanned<toml::Value>>;

/// An experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name (the results directory).
    pub name: Spanned<String>,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Machine file, relative to the workspace.
    #[serde(default)]
    pub machine: Option<Spanned<String>>,
    /// Device memory each point may use, per device ("16M").
    #[serde(default)]
    pub device_memory: Option<Spanned<Vec<String>>>,
    /// `real` or `host`.
    #[serde(default)]
    pub mechanism: Option<Spanned<String>>,
    /// The scheduler of every point (`hmm::place::sched::NAMES`; a policy's own overrides it).
    #[serde(default)]
    pub scheduler: Option<Spanned<String>>,
    /// Engine settings (the `run` parameters: cpus, wave, batch, trace).
    #[serde(default)]
    pub run: Table,
    /// Cost model parameters.
    #[serde(default)]
    pub cost: Table,
    /// Repetitions of every point (different seeds).
    #[serde(default)]
    pub repeat: Option<Spanned<u32>>,
    /// Points per guest boot.
    #[serde(default)]
    pub points_per_boot: Option<Spanned<u32>>,
    /// Workloads.
    #[serde(rename = "workload")]
    pub workloads: Vec<Table>,
    /// Policies.
    #[serde(rename = "policy")]
    pub policies: Vec<PolicyEntry>,
    /// Sweeps.
    #[serde(default)]
    pub sweep: Sweep,
    /// Comparison tables with published numbers.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableSpec>,
    /// Changes of device memory during every point.
    #[serde(default, rename = "event")]
    pub events: Vec<EventEntry>,
}

/// An `[[event]]`: from simulated time `at` on, `device` has `size` of memory (the host takes
/// memory back, or gives more), in every point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEntry {
    /// When, simulated time from the point's start: "2ms", "500us", "1s", "0".
    pub at: Spanned<String>,
    /// The device: "dev0".
    pub device: Spanned<String>,
    /// Its memory from then on: "1M".
    pub size: Spanned<String>,
}

/// A policy in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// Label in results.
    pub name: Spanned<String>,
    /// Placement policy.
    pub placement: Spanned<String>,
    /// Its parameters.
    #[serde(default)]
    pub params: Table,
    /// Eviction parameters (`order`, `reserve`, `free_buffer`).
    #[serde(default)]
    pub eviction: Table,
    /// The scheduler of this policy's points (overrides the experiment's).
    #[serde(default)]
    pub scheduler: Option<Spanned<String>>,
    /// The sweep's oversubscription ratios this policy runs at (default: all of them).
    #[serde(default)]
    pub oversubscription: Option<Spanned<Vec<f64>>>,
    /// The workloads (labels) this policy runs on (default: all of them): a sensitivity run on
    /// one workload need not run on every other.
    #[serde(default)]
    pub workloads: Option<Spanned<Vec<String>>>,
}

/// Sweeps.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Oversubscription ratios applied to every workload.
    #[serde(default)]
    pub oversubscription: Option<Spanned<Vec<f64>>>,
    /// All workloads in one point (competing), instead of one point per workload.
    #[serde(default)]
    pub together: bool,
    /// With `together`: also each process alone (its workloads without the others'), or each
    /// workload alone when they all run in one process (their own points, at the same ratios
    /// under the same policies), so that workloads.csv gives each one's slowdown from sharing.
    #[serde(default)]
    pub alone: Option<Spanned<bool>>,
    /// What a ratio scales: `"footprint"` (the default: device memory as given, footprints
    /// ratio × it) or `"device_memory"` (footprints fixed, device memory footprint ÷ ratio).
    #[serde(default)]
    pub scale: Option<Spanned<String>>,
    /// Under `scale = "device_memory"`: ratios whose points keep `device_memory` as given instead
    /// of what the workloads allocate ÷ the ratio. The UVMSmart artifact runs its points
    /// without oversubscription on a 1 GB GDDR (`gddr_size = 1GB`), where no device fills and
    /// IPDPS'20's adaptive threshold (`1 + threshold × occupancy`) stays 1.
    #[serde(default)]
    pub unscaled: Option<Spanned<Vec<f64>>>,
}

/// A loaded, checked experiment.
#[derive(Debug)]
pub struct Loaded {
    /// The file.
    pub exp: Experiment,
    /// Its machine.
    pub machine: Machine,
    /// Every point.
    pub points: Vec<Point>,
    /// Per point: (workload label, policy label, oversubscription).
    pub keys: Vec<(String, String, f64)>,
    /// Per point: its repetition (0 for the first).
    pub reps: Vec<u32>,
}

struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn at(&self, span: std::ops::Range<usize>, field: &str, msg: impl std::fmt::Display) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = span.start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}: `{field}`: {msg}", self.path.display())
    }
}

/// A TOML value as a point parameter.
fn param(v: &toml::Value) -> Result<Value, String> {
    match v {
        toml::Value::Integer(i) => Ok(Value::Int(*i)),
        toml::Value::Float(x) => Ok(Value::Float(*x)),
        toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
        toml::Value::String(s) if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '=') => {
            Ok(Value::Text(s.clone()))
        }
        toml::Value::String(s) => Err(format!("\"{s}\" must be one word (no spaces or '=')")),
        other => Err(format!("{other} is not a number, a word or a boolean")),
    }
}

/// Converts a table, checking each value's form; `skip` keys are not parameters.
fn params(src: &Src<'_>, t: &Table, section: &str, skip: &[&str]) -> Result<Params, String> {
    let mut p = Params::new();
    for (k, v) in t.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        p.set(k, param(v.get_ref()).map_err(|e| src.at(v.span(), &format!("{section}.{k}"), e))?);
    }
    Ok(p)
}

/// Where a parameter error points: the value's span if the field is in the table, else the
/// section's first key.
fn locate(src: &Src<'_>, t: &Table, section: &str, e: &ParamError, fallback: std::ops::Range<usize>) -> String {
    match e.field().and_then(|f| t.get(f).map(|v| (f, v.span()))) {
        Some((f, span)) => src.at(span, &format!("{section}.{f}"), e),
        None => match e.field() {
            // An unknown key: point at its name (TOML spans values; the key is on that line).
            Some(f) => src.at(fallback, &format!("{section}.{f}"), e),
            None => src.at(fallback, section, e),
        },
    }
}

fn span_of(t: &Table) -> std::ops::Range<usize> {
    t.values().map(|v| v.span()).min_by_key(|s| s.start).unwrap_or(0..0)
}

/// Reads and checks an experiment file, expanding it into points.
pub fn load(path: &Path, root: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            let list = crate::machine::available(&root.join("experiments"));
            format!(
                "{}: no such experiment file; the experiment files are {} (or give the path of your own)",
                path.display(),
                if list.is_empty() { "none here".to_string() } else { list.join(", ") }
            )
        } else {
            format!("{}: cannot read: {e}", path.display())
        }
    })?;
    load_str(path, &text, root)
}

/// [`load`] from text: each section checked in file order, then the points expanded and
/// checked whole.
pub fn load_str(path: &Path, text: &str, root: &Path) -> Result<Loaded, String> {
    let src = Src { path, text };
    let exp = parse(&src)?;
    let (machine, mpath) = load_machine(&src, &exp, root)?;
    let have = device_pages(&src, &machine, &mpath)?;
    let devices = device_memory(&src, &exp, &machine, &have)?;
    let run = engine_settings(&src, &exp, &machine, &mpath)?;
    let cost = cost_params(&src, &exp, &machine, &mpath)?;
    let wls = load_workloads(&src, &exp)?;
    let pols = load_policies(&src, &exp, &run, &wls)?;
    let overs = oversubscriptions(&src, &exp)?;
    let scale_memory = scale(&src, &exp)?;
    if let Some(a) = &exp.sweep.alone
        && *a.get_ref()
        && !exp.sweep.together
    {
        return Err(src.at(
            a.span(),
            "sweep.alone",
            "alone adds each workload's own points beside the points that run them all together: set `together = true` too",
        ));
    }
    let unscaled = unscaled(&src, &exp, scale_memory)?;
    let repeat = repetitions(&src, &exp)?;
    let events = events(&src, &exp, &machine, devices.len(), &have)?;
    let axes = Axes { devices, cost, pols, wls, overs, scale_memory, unscaled, repeat, events };
    let Expanded { points, keys, reps, over_full } = expand(&exp, &axes);
    if let Some((i, allocated)) = over_full {
        let u = exp.sweep.unscaled.as_ref().map_or(0..0, |u| u.span());
        return Err(src.at(
            u,
            "sweep.unscaled",
            format!(
                "point {} ({}) allocates {allocated} pages, more than device_memory's {} at a ratio it leaves unscaled: that point would be oversubscribed; raise device_memory (a machine with more device memory) or drop the ratio from [sweep] unscaled",
                points[i].id, points[i].label, points[i].devices[0]
            ),
        ));
    }
    check_points(&src, &points, &have, &machine, &mpath)?;
    tables::check(&src, &exp.tables, &keys)?;
    Ok(Loaded { exp, machine, points, keys, reps })
}

/// The file as TOML, and its name checked.
fn parse(src: &Src<'_>) -> Result<Experiment, String> {
    let exp: Experiment = toml::from_str(src.text).map_err(|e| crate::machine::toml_error(src.path, src.text, &e))?;
    let name = exp.name.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(src.at(exp.name.span(), "name", "use letters, digits, '-' and '_'"));
    }
    Ok(exp)
}

/// `machine`: the machine file (default `qemu/default.toml`), loaded, and its path.
fn load_machine(src: &Src<'_>, exp: &Experiment, root: &Path) -> Result<(Machine, PathBuf), String> {
    let mpath = exp.machine.as_ref().map_or_else(|| root.join("qemu/default.toml"), |m| root.join(m.get_ref()));
    let machine = Machine::load(&mpath).map_err(|e| match &exp.machine {
        Some(m) => src.at(m.span(), "machine", e),
        None => e,
    })?;
    Ok((machine, mpath))
}

/// The pages of device memory each of the machine's devices has (at least one device).
fn device_pages(src: &Src<'_>, machine: &Machine, mpath: &Path) -> Result<Vec<u32>, String> {
    let have: Vec<u32> = machine
        .devices
        .iter()
        .map(|d| parse_size(&d.memory).map(|b| (b / hmm::place::PAGE) as u32).unwrap_or(0))
        .collect();
    if have.is_empty() {
        return Err(format!(
            "{}: machine {} has no devices; experiments need at least one",
            src.path.display(),
            mpath.display()
        ));
    }
    Ok(have)
}

/// `device_memory`: the pages each point may use per device (default: all the machine has).
fn device_memory(src: &Src<'_>, exp: &Experiment, machine: &Machine, have: &[u32]) -> Result<Vec<u32>, String> {
    let Some(dm) = &exp.device_memory else { return Ok(have.to_vec()) };
    if dm.get_ref().is_empty() || dm.get_ref().len() > have.len() {
        return Err(src.at(
            dm.span(),
            "device_memory",
            format!("give 1 to {} sizes (the machine has {} devices)", have.len(), have.len()),
        ));
    }
    let mut v = Vec::new();
    for (i, s) in dm.get_ref().iter().enumerate() {
        let b = parse_size(s).map_err(|e| src.at(dm.span(), "device_memory", e))?;
        let pages = (b / hmm::place::PAGE) as u32;
        if pages == 0 || pages > have[i] {
            return Err(src.at(
                dm.span(),
                "device_memory",
                format!("dev{i}: {s} asked, the machine's dev{i} has {}", machine.devices[i].memory),
            ));
        }
        v.push(pages);
    }
    Ok(v)
}

/// A simulated duration: a number and `ns`, `us`, `ms` or `s` ("0" alone is 0).
fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let what = || format!("{s:?}: a time with its unit, as \"2ms\", \"500us\", \"1s\" or \"0\"");
    let (num, mul) = [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)]
        .iter()
        .find_map(|&(u, m)| s.strip_suffix(u).map(|n| (n.trim(), m)))
        .ok_or_else(what)?;
    let x: f64 = num.parse().map_err(|_| what())?;
    if !x.is_finite() || x < 0.0 || x * mul > 1e15 {
        return Err(format!("{s:?}: a time from 0 to 1e6 s"));
    }
    Ok((x * mul) as u64)
}

/// `[[event]]`s: each one's time, device (one of the point's `devices`) and size (whole pages,
/// at most what the machine's device has), in time order.
fn events(
    src: &Src<'_>,
    exp: &Experiment,
    machine: &Machine,
    devices: usize,
    have: &[u32],
) -> Result<Vec<hmm::place::spec::Resize>, String> {
    let mut out = Vec::new();
    for (i, e) in exp.events.iter().enumerate() {
        let f = |k: &str| format!("event[{i}].{k}");
        let at_ns = parse_duration_ns(e.at.get_ref()).map_err(|m| src.at(e.at.span(), &f("at"), m))?;
        let d = e
            .device
            .get_ref()
            .strip_prefix("dev")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < devices)
            .ok_or_else(|| {
            src.at(e.device.span(), &f("device"), format!("a device of the points: dev0 to dev{}", devices - 1))
        })?;
        let bytes = parse_size(e.size.get_ref()).map_err(|m| src.at(e.size.span(), &f("size"), m))?;
        let pages = bytes / hmm::place::PAGE;
        if pages == 0 || !bytes.is_multiple_of(hmm::place::PAGE) || pages > u64::from(have[d]) {
            return Err(src.at(
                e.size.span(),
                &f("size"),
                format!("whole 4 KiB pages, 4K to the machine's dev{d} memory ({})", machine.devices[d].memory),
            ));
        }
        out.push(hmm::place::spec::Resize { at_ns, device: d as u8, pages: pages as u32 });
    }
    out.sort_by_key(|e| e.at_ns);
    Ok(out)
}

/// `[run]` and `mechanism`: the engine settings, checked against `RUN` and the machine's CPUs.
fn engine_settings(src: &Src<'_>, exp: &Experiment, machine: &Machine, mpath: &Path) -> Result<Params, String> {
    let mut run = params(src, &exp.run, "run", &[])?;
    if let Some(m) = &exp.mechanism {
        run.set(
            "mechanism",
            param(&toml::Value::String(m.get_ref().clone())).map_err(|e| src.at(m.span(), "mechanism", e))?,
        );
    }
    let checked = run.checked(RUN).map_err(|e| match (&exp.mechanism, e.field()) {
        (Some(m), Some("mechanism")) => src.at(m.span(), "mechanism", &e),
        _ => locate(src, &exp.run, "run", &e, span_of(&exp.run)),
    })?;
    // On the real mechanism each engine CPU core is a CPU of the guest.
    if checked.text("mechanism") == "real" && checked.int("cpus") > i64::from(machine.cpus) {
        let span = exp.run.get("cpus").map_or_else(|| span_of(&exp.run), |v| v.span());
        return Err(src.at(
            span,
            "run.cpus",
            format!(
                "{} CPU cores asked, the machine {} has {}; give at most {}, or mechanism = \"host\" to run them over the host platform",
                checked.int("cpus"),
                mpath.display(),
                machine.cpus,
                machine.cpus
            ),
        ));
    }
    with_scheduler(src, &run, &exp.scheduler, "scheduler")
}

/// `run` with `scheduler` set from `s` (the experiment's or a policy's `scheduler = "..."`),
/// checked against the guest's names (the `run` line's `scheduler`).
fn with_scheduler(src: &Src<'_>, run: &Params, s: &Option<Spanned<String>>, field: &str) -> Result<Params, String> {
    let mut run = run.clone();
    if let Some(s) = s {
        let v = Value::Text(s.get_ref().clone());
        let mut one = Params::new();
        one.set("scheduler", v.clone());
        let only = RUN.iter().filter(|d| d.name == "scheduler").copied().collect::<Vec<_>>();
        one.checked(&only).map_err(|e| src.at(s.span(), field, e))?;
        run.set("scheduler", v);
    }
    Ok(run)
}

/// `[cost]`: the cost model's parameters, checked (`lines = "hmat"` needs a machine with an HMAT).
fn cost_params(src: &Src<'_>, exp: &Experiment, machine: &Machine, mpath: &Path) -> Result<Params, String> {
    let costp = params(src, &exp.cost, "cost", &[])?;
    let costm =
        cost::CostModel::from_params(&costp).map_err(|e| locate(src, &exp.cost, "cost", &e, span_of(&exp.cost)))?;
    if costm.lines_from_hmat && machine.numa.as_ref().is_none_or(|n| n.hmat.is_empty()) {
        let span = exp.cost.get("lines").map_or_else(|| span_of(&exp.cost), |v| v.span());
        return Err(src.at(
            span,
            "cost.lines",
            format!(
                "\"hmat\" takes the CPU cores' line costs from the guest's ACPI HMAT, but machine {} has no [[numa.hmat]] entries; use a machine with them (qemu/numa-devices.toml) or lines = \"model\"",
                mpath.display()
            ),
        ));
    }
    Ok(costp)
}

/// A checked `[[policy]]`: its label, placement policy name, its parameters and eviction's.
struct Policy {
    label: String,
    placement: String,
    params: Params,
    eviction: Params,
    /// The engine settings with this policy's scheduler (its own, else the experiment's).
    run: Params,
    /// The sweep's ratios it runs at (`None`: all).
    overs: Option<Vec<f64>>,
    /// The workload labels it runs on (`None`: all).
    only: Option<Vec<String>>,
}

/// `[[policy]]`: at least one, each placement known, its parameters and eviction checked, the
/// labels unique.
fn load_policies(src: &Src<'_>, exp: &Experiment, run: &Params, wls: &[Workload]) -> Result<Vec<Policy>, String> {
    if exp.policies.is_empty() {
        return Err(format!("{}: no [[policy]]: name at least one", src.path.display()));
    }
    let mut pols: Vec<Policy> = Vec::new();
    for (i, p) in exp.policies.iter().enumerate() {
        let sec = format!("policy[{i}]");
        let def = policies::find(p.placement.get_ref())
            .map_err(|e| src.at(p.placement.span(), &format!("{sec}.placement"), e))?;
        let pp = params(src, &p.params, &format!("{sec}.params"), &[])?;
        pp.checked(def.params).map_err(|e| locate(src, &p.params, &format!("{sec}.params"), &e, p.placement.span()))?;
        let ep = params(src, &p.eviction, &format!("{sec}.eviction"), &[])?;
        ep.checked(policies::EVICTION.params)
            .map_err(|e| locate(src, &p.eviction, &format!("{sec}.eviction"), &e, p.placement.span()))?;
        if pols.iter().any(|q| q.label == *p.name.get_ref()) {
            return Err(src.at(p.name.span(), &format!("{sec}.name"), "two policies have this name"));
        }
        if p.name.get_ref().is_empty() || p.name.get_ref().contains('@') {
            return Err(src.at(
                p.name.span(),
                &format!("{sec}.name"),
                "give a label without '@' (a [[table]] column is `label@ratio`)",
            ));
        }
        if let Some(o) = &p.oversubscription {
            let sweep = exp.sweep.oversubscription.as_ref().map_or(&[][..], |s| s.get_ref().as_slice());
            let f = format!("{sec}.oversubscription");
            if o.get_ref().is_empty() {
                return Err(src.at(o.span(), &f, "give at least one of the sweep's ratios"));
            }
            of_the_sweep(src, o, &f, sweep, "a policy runs at some of the sweep's ratios")?;
        }
        if let Some(w) = &p.workloads {
            let f = format!("{sec}.workloads");
            let labels: Vec<&str> = wls.iter().map(|w| w.label.as_str()).collect();
            if w.get_ref().is_empty() {
                return Err(src.at(w.span(), &f, format!("give at least one workload label (of {labels:?})")));
            }
            if let Some(x) = w.get_ref().iter().find(|x| !labels.contains(&x.as_str())) {
                return Err(src.at(
                    w.span(),
                    &f,
                    format!("no [[workload]] is labelled {x:?}; the labels are {labels:?} (a workload's `name`, else its kind)"),
                ));
            }
            if let Some((i, x)) = w.get_ref().iter().enumerate().find(|(i, x)| w.get_ref()[..*i].contains(x)) {
                return Err(src.at(w.span(), &f, format!("{x:?} is given twice (entry {i}); give each workload once")));
            }
            if exp.sweep.together {
                return Err(src.at(
                    w.span(),
                    &f,
                    "with [sweep] together every point runs all workloads at once; drop `workloads` or `together`",
                ));
            }
        }
        pols.push(Policy {
            label: p.name.get_ref().clone(),
            placement: p.placement.get_ref().clone(),
            params: pp,
            eviction: ep,
            run: with_scheduler(src, run, &p.scheduler, &format!("{sec}.scheduler"))?,
            overs: p.oversubscription.as_ref().map(|o| o.get_ref().clone()),
            only: p.workloads.as_ref().map(|w| w.get_ref().clone()),
        });
    }
    Ok(pols)
}

/// A checked `[[workload]]`: its label (`name`, else its kind), kind and parameters.
struct Workload {
    label: String,
    kind: String,
    params: Params,
}

/// Whether `v` holds ratio `x` (within 1e-9).
fn has_ratio(v: &[f64], x: f64) -> bool {
    v.iter().any(|y| (x - y).abs() < 1e-9)
}

/// The first value of `v` that an earlier one equals (ratios: within 1e-9).
fn repeated(v: &[f64]) -> Option<f64> {
    v.iter().enumerate().find(|(i, x)| has_ratio(&v[..*i], **x)).map(|(_, x)| *x)
}

/// Checks that the ratios `o` (field `f`) are each given once and are all in the sweep's
/// `sweep`; `why` ends the message of a ratio that is not.
fn of_the_sweep(src: &Src<'_>, o: &Spanned<Vec<f64>>, f: &str, sweep: &[f64], why: &str) -> Result<(), String> {
    if let Some(x) = repeated(o.get_ref()) {
        return Err(src.at(o.span(), f, format!("{x} is given twice; give each ratio once")));
    }
    if let Some(x) = o.get_ref().iter().find(|&&x| !has_ratio(sweep, x)) {
        return Err(src.at(o.span(), f, format!("{x} is not in [sweep] oversubscription ({sweep:?}); {why}")));
    }
    Ok(())
}

/// `[[workload]]`: at least one, each kind known and its parameters checked, each label (its
/// `name`, else its kind) unique: results, plots and tables tell workloads apart by label.
fn load_workloads(src: &Src<'_>, exp: &Experiment) -> Result<Vec<Workload>, String> {
    if exp.workloads.is_empty() {
        return Err(format!("{}: no [[workload]]: name at least one", src.path.display()));
    }
    let mut wls = Vec::new();
    for (i, t) in exp.workloads.iter().enumerate() {
        let sec = format!("workload[{i}]");
        let kind =
            t.get("kind").ok_or_else(|| format!("{}: [[workload]] #{} has no `kind`", src.path.display(), i + 1))?;
        let kind_s = kind.get_ref().as_str().ok_or_else(|| src.at(kind.span(), &format!("{sec}.kind"), "a name"))?;
        let p = params(src, t, &sec, &["kind", "name"])?;
        workload::check(kind_s, &p).map_err(|e| match e.field() {
            None => src.at(kind.span(), &format!("{sec}.kind"), &e),
            Some(_) => locate(src, t, &sec, &e, kind.span()),
        })?;
        let label = match t.get("name") {
            None => kind_s.to_string(),
            Some(n) => match n.get_ref().as_str() {
                Some(s) if !s.is_empty() && !s.contains(['+', '/']) => s.to_string(),
                _ => {
                    return Err(src.at(
                        n.span(),
                        &format!("{sec}.name"),
                        "a label: a non-empty string without '+' or '/' (they join and separate labels in results)",
                    ));
                }
            },
        };
        if let Some(j) = wls.iter().position(|w: &Workload| w.label == label) {
            let (span, how) = match t.get("name") {
                Some(n) => (n.span(), "this name"),
                None => (kind.span(), "this label (its kind, without a `name`)"),
            };
            return Err(src.at(
                span,
                &format!("{sec}.name"),
                format!(
                    "workload[{j}] has {how} already: results, plots and tables tell workloads apart by label; give each a distinct `name = \"...\"`"
                ),
            ));
        }
        wls.push(Workload { label, kind: kind_s.to_string(), params: p });
    }
    Ok(wls)
}

/// `[sweep] oversubscription`: the ratios (`[None]` without a sweep: each workload's own).
fn oversubscriptions(src: &Src<'_>, exp: &Experiment) -> Result<Vec<Option<f64>>, String> {
    let Some(o) = &exp.sweep.oversubscription else { return Ok(vec![None]) };
    if o.get_ref().is_empty() {
        return Err(src.at(o.span(), "sweep.oversubscription", "give at least one ratio"));
    }
    for &x in o.get_ref() {
        if !(0.01..=4.0).contains(&x) {
            return Err(src.at(o.span(), "sweep.oversubscription", format!("{x}: expected 0.01 to 4.0")));
        }
    }
    if let Some(x) = repeated(o.get_ref()) {
        return Err(src.at(
            o.span(),
            "sweep.oversubscription",
            format!("{x} is given twice; give each ratio once (`repeat = N` runs every point N times)"),
        ));
    }
    Ok(o.get_ref().iter().map(|&x| Some(x)).collect())
}

/// `[sweep] scale`: whether the ratios scale device memory (`"device_memory"`, true) or the
/// footprints (`"footprint"`, the default, false).
fn scale(src: &Src<'_>, exp: &Experiment) -> Result<bool, String> {
    let Some(s) = &exp.sweep.scale else { return Ok(false) };
    match s.get_ref().as_str() {
        "footprint" => Ok(false),
        "device_memory" if exp.sweep.oversubscription.is_none() => Err(src.at(
            s.span(),
            "sweep.scale",
            "\"device_memory\" scales device memory by the sweep's ratios; give [sweep] oversubscription too",
        )),
        "device_memory" => Ok(true),
        other => Err(src.at(
            s.span(),
            "sweep.scale",
            format!("{other:?}: expected \"footprint\" (device memory fixed) or \"device_memory\" (footprints fixed)"),
        )),
    }
}

/// `[sweep] unscaled`: ratios of the sweep at which device memory stays as given (only under
/// `scale = "device_memory"`).
fn unscaled(src: &Src<'_>, exp: &Experiment, scale_memory: bool) -> Result<Vec<f64>, String> {
    let Some(u) = &exp.sweep.unscaled else { return Ok(Vec::new()) };
    if !scale_memory {
        return Err(src.at(
            u.span(),
            "sweep.unscaled",
            "only scale = \"device_memory\" scales device memory; give it, or drop unscaled (device memory is then as given at every ratio)",
        ));
    }
    let sweep = exp.sweep.oversubscription.as_ref().map_or(&[][..], |o| o.get_ref());
    of_the_sweep(src, u, "sweep.unscaled", sweep, "give some of the sweep's ratios")?;
    Ok(u.get_ref().clone())
}

/// `repeat`: 1 to 100 (default 1); and `points_per_boot`: 1 to 1000.
fn repetitions(src: &Src<'_>, exp: &Experiment) -> Result<u32, String> {
    let repeat = exp.repeat.as_ref().map_or(1, |r| *r.get_ref());
    if !(1..=100).contains(&repeat) {
        return Err(src.at(
            exp.repeat.as_ref().map_or(0..0, |r| r.span()),
            "repeat",
            format!("{repeat}: expected 1 to 100"),
        ));
    }
    if let Some(p) = &exp.points_per_boot
        && !(1..=1000).contains(p.get_ref())
    {
        return Err(src.at(
            p.span(),
            "points_per_boot",
            format!("{}: expected 1 to 1000 (the points one guest runs before the next boots)", p.get_ref()),
        ));
    }
    Ok(repeat)
}

/// The checked sections a point is made of.
struct Axes {
    devices: Vec<u32>,
    cost: Params,
    pols: Vec<Policy>,
    wls: Vec<Workload>,
    overs: Vec<Option<f64>>,
    /// `[sweep] scale = "device_memory"`.
    scale_memory: bool,
    /// `[sweep] unscaled`.
    unscaled: Vec<f64>,
    repeat: u32,
    /// `[[event]]`s, in time order.
    events: Vec<hmm::place::spec::Resize>,
}

/// The points, and per point its (workload label, policy label, oversubscription).
struct Expanded {
    points: Vec<Point>,
    keys: Vec<(String, String, f64)>,
    reps: Vec<u32>,
    /// The first point at an unscaled ratio whose workloads allocate more than its device
    /// memory, and what they allocate.
    over_full: Option<(usize, u32)>,
}

/// Every point: repetitions × ratios × policies × workload groups (each workload alone, or all
/// together with `sweep.together`); a policy with its own `oversubscription` only at those, and
/// with its own `workloads` only on those. A repetition after the first shifts each workload's seed
/// by 1000 per repetition.
fn expand(exp: &Experiment, a: &Axes) -> Expanded {
    let mut points = Vec::new();
    // Each workload's allocated pages, by its parameters but the ratio (the same at every one).
    let mut allocated: BTreeMap<String, u32> = BTreeMap::new();
    let mut keys = Vec::new();
    let mut reps = Vec::new();
    let mut over_full = None;
    // Alone: each process by itself (its workloads together) when the workloads name several
    // processes, else each workload by itself.
    let process = |i: usize| match a.wls[i].params.get("process") {
        Some(Value::Int(p)) => *p,
        _ => 0,
    };
    let mut procs: Vec<i64> = (0..a.wls.len()).map(process).collect();
    procs.sort_unstable();
    procs.dedup();
    let alone: Vec<Vec<usize>> = if procs.len() > 1 {
        procs.iter().map(|&p| (0..a.wls.len()).filter(|&i| process(i) == p).collect()).collect()
    } else {
        (0..a.wls.len()).map(|i| vec![i]).collect()
    };
    let alone = alone.into_iter();
    let groups: Vec<Vec<usize>> = match (exp.sweep.together, exp.sweep.alone.as_ref().is_some_and(|x| *x.get_ref())) {
        (true, true) => core::iter::once((0..a.wls.len()).collect()).chain(alone).collect(),
        (true, false) => vec![(0..a.wls.len()).collect()],
        (false, _) => alone.collect(),
    };
    for rep in 0..a.repeat {
        for &over in &a.overs {
            for pol in &a.pols {
                if let (Some(only), Some(x)) = (&pol.overs, over)
                    && !has_ratio(only, x)
                {
                    continue;
                }
                for g in &groups {
                    if let Some(only) = &pol.only
                        && !g.iter().all(|&i| only.contains(&a.wls[i].label))
                    {
                        continue;
                    }
                    let mut ws = Vec::new();
                    let mut labels = Vec::new();
                    let mut footprint = 0u64;
                    for &i in g {
                        let w = &a.wls[i];
                        let mut p = w.params.clone();
                        if let Some(x) = over {
                            p.set("oversubscription", Value::Float(x));
                        }
                        if a.scale_memory {
                            // The footprint stays what it is at 1.0 at every ratio.
                            let f = fixed_footprint(&w.kind, &p, &a.devices);
                            p.set("footprint_pages", Value::Int(f as i64));
                        }
                        if rep > 0 {
                            let seed = p.get("seed").map_or(1, |v| if let Value::Int(s) = v { *s } else { 1 });
                            p.set("seed", Value::Int(seed + rep as i64 * 1000));
                        }
                        if a.scale_memory {
                            let mut key = p.clone();
                            key.set("oversubscription", Value::Float(0.0));
                            let key = format!("{} {} {key:?}", w.kind, ws.len());
                            let f = *allocated
                                .entry(key)
                                .or_insert_with(|| allocated_footprint(&w.kind, &p, a.devices.len(), ws.len()));
                            footprint += f as u64;
                        }
                        labels.push(w.label.clone());
                        ws.push((w.kind.clone(), p));
                    }
                    let o = over.unwrap_or_else(|| {
                        ws[0].1.get("oversubscription").map_or(1.0, |v| match v {
                            Value::Float(x) => *x,
                            Value::Int(i) => *i as f64,
                            _ => 1.0,
                        })
                    });
                    let wl_label = labels.join("+");
                    let mut label = format!("{}/{wl_label}/{o}", pol.label);
                    if a.repeat > 1 {
                        label += &format!("/r{rep}");
                    }
                    let unscaled = over.is_some_and(|x| has_ratio(&a.unscaled, x));
                    let devices = match over {
                        // Every device: the group's footprint ÷ the ratio, as the UVMSmart
                        // artifact sizes its GDDR (`gddr_size`), at least a page.
                        Some(x) if a.scale_memory && !unscaled => {
                            vec![((footprint as f64 / x) as u32).max(1); a.devices.len()]
                        }
                        _ => a.devices.clone(),
                    };
                    if unscaled && over_full.is_none() && footprint > devices[0] as u64 {
                        over_full = Some((points.len(), footprint as u32));
                    }
                    points.push(Point {
                        id: points.len() as u32,
                        label,
                        devices,
                        run: pol.run.clone(),
                        cost: a.cost.clone(),
                        policy: pol.placement.clone(),
                        policy_params: pol.params.clone(),
                        evict: pol.eviction.clone(),
                        workloads: ws,
                        events: a.events.clone(),
                    });
                    keys.push((wl_label, pol.label.clone(), o));
                    reps.push(rep);
                }
            }
        }
    }
    Expanded { points, keys, reps, over_full }
}

/// A workload's footprint under `scale = "device_memory"`: its `footprint_pages`, else the
/// memory given for the device its phases run on (what its footprint is at ratio 1.0), as
/// [`workload::footprint`] sizes it against [`workload::basis`].
fn fixed_footprint(kind: &str, p: &Params, devices: &[u32]) -> u32 {
    // The parameters were checked when the file loaded.
    let Ok((common, _)) = workload::check(kind, p) else { return devices[0] };
    let basis = workload::basis(workload::target(&common), devices).unwrap_or(devices[0]);
    match common.int("footprint_pages") {
        0 => basis,
        n => n as u32,
    }
}

/// The pages a workload with checked parameters `p` (its `footprint_pages` set) allocates, as
/// the workload, built here as the point builds it (the `at`-th of its group), reports
/// ([`workload::Workload::allocated_pages`]): its footprint, unless its own parameters size it
/// (a graph's `vertices`), and under `allocation = "uvmsmart"` its allocations' rounded sizes.
fn allocated_footprint(kind: &str, p: &Params, devices: usize, at: usize) -> u32 {
    let Ok((common, own)) = workload::check(kind, p) else { return 0 };
    let pages = common.int("footprint_pages") as u32;
    let alloc = workload::Alloc::of(&common);
    let setup = workload::Setup {
        pages,
        device: workload::target(&common),
        devices: devices as u8,
        seed: common.int("seed") as u64 + at as u64,
        iterations: common.int("iterations") as u32,
        alloc,
    };
    // A workload that cannot be built fails again, named, when its point is checked.
    workload::build(kind, &own, &setup).map_or(pages, |w| w.allocated_pages())
}

/// Whole points: device counts, memory, and the guest's RAM for the managed pages (the kernel
/// keeps 160 MiB for itself).
fn check_points(src: &Src<'_>, points: &[Point], have: &[u32], machine: &Machine, mpath: &Path) -> Result<(), String> {
    let ram = machine.ram();
    for p in points {
        let prepared =
            p.prepare(have).map_err(|e| format!("{}: point {} ({}): {e}", src.path.display(), p.id, p.label))?;
        let need = prepared.pages as u64 * hmm::place::PAGE;
        if need + (160 << 20) > ram {
            return Err(format!(
                "{}: point {} ({}) manages {} MiB of memory; machine {} has {} MiB of RAM and the kernel needs 160 MiB: lower oversubscription or device_memory, or use a machine with more memory",
                src.path.display(),
                p.id,
                p.label,
                need >> 20,
                mpath.display(),
                ram >> 20
            ));
        }
    }
    Ok(())
}

/// The results of every point, by id (the `@@POINT` JSON, or an error object).
pub type Results = BTreeMap<u32, Json>;

/// What one guest boot's results mean for its batch of points.
#[derive(Debug, Clone, PartialEq)]
pub struct BootResults {
    /// Results to keep, by point id.
    pub keep: Vec<(u32, Json)>,
    /// Points to run again in a fresh guest, and the note their results will carry.
    pub rerun: Option<(Vec<u32>, String)>,
}

/// Whether a point of `batch` failed in the boot that gave `got`: an error result, or none.
pub fn boot_failed(batch: &[u32], got: &Results) -> bool {
    batch.iter().any(|id| got.get(id).is_none_or(|r| r.get("error").is_some()))
}

/// Sorts one boot's `@@POINT` results (`got`, by id) for its `batch` (point ids in the order
/// the guest ran them). A point that failed with a mechanism error (`"kind": "mechanism"`:
/// the devices, DMA, a CPU worker, or device memory not back to its empty state, as opposed
/// to a data check of the point itself) may have left the guest unable to run more: its
/// result is kept, and every point after it in the batch is run again in a fresh guest, its
/// result from this boot discarded. Each point of a rerun batch carries `rerun` (the note
/// this boot's batch had, if any: reruns of reruns keep the first cause) in its result.
/// Points with no result are left out (the caller reports them). Each rerun batch is shorter
/// than the batch before it, so reruns end.
pub fn sort_boot(batch: &[u32], got: &Results, rerun_note: Option<&str>) -> BootResults {
    let mut keep = Vec::new();
    for (i, id) in batch.iter().enumerate() {
        let Some(r) = got.get(id) else { continue };
        let mut r = r.clone();
        if let (Some(note), Some(o)) = (rerun_note, r.as_object_mut()) {
            o.insert("rerun".into(), Json::String(note.into()));
        }
        let mechanism = r["error"].is_string() && r["kind"].as_str() == Some("mechanism");
        let why = r["error"].as_str().unwrap_or_default().to_string();
        keep.push((*id, r));
        if mechanism && i + 1 < batch.len() {
            let note = rerun_note.map_or_else(
                || format!("rerun in a fresh guest: point {id} of the same boot failed with a mechanism error: {why}"),
                String::from,
            );
            return BootResults { keep, rerun: Some((batch[i + 1..].to_vec(), note)) };
        }
    }
    BootResults { keep, rerun: None }
}

/// Every column of `results.csv` after the per-processor ones is fixed; these say what each
/// holds and in what unit (written beside it as `results.columns.csv`).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("id", "-", "the point's number in the experiment"),
    ("label", "-", "policy/workloads/oversubscription[/rN]"),
    ("workload", "-", "the workloads of the point, joined by +"),
    ("policy", "-", "the [[policy]] name"),
    ("scheduler", "-", "the scheduler that placed the phases"),
    ("oversubscription", "ratio", "footprint / device memory (0: the sweep's device memory as given)"),
    ("repetition", "index", "which repetition of the point (0 for the first)"),
    ("seeds", "-", "each workload's seed, joined by +"),
    ("mechanism", "-", "real (the devices in QEMU) or host (the HMM stack over the host platform)"),
    ("sim_ms", "ms", "simulated time (the cost model's charge for what happened)"),
    (
        "mechanism_ms",
        "ms",
        "time the mechanism itself took, measured: TCG time of the real devices' mechanism in QEMU, host time of the HMM stack with --host (a property of the emulator and the host, not a result; sim_ms is the result)",
    ),
    ("transfer_ms", "ms", "simulated link busy time"),
    ("accesses", "accesses", "accesses executed"),
    ("dev_faults", "faults", "device faults, deduplicated per batch"),
    ("batches", "batches", "device fault batches"),
    ("cpu_faults", "faults", "CPU faults on device pages"),
    ("to_dev", "pages", "pages moved system -> device"),
    ("to_cpu", "pages", "pages moved device -> system (eviction included)"),
    ("dev_to_dev", "pages", "pages moved device -> device"),
    ("prefetched", "pages", "pages moved ahead of demand"),
    ("prefetch_unused", "pages", "prefetched pages moved away again before any access"),
    ("evicted", "pages", "pages evicted"),
    ("remote_maps", "pages", "pages mapped remotely"),
    ("duplicates", "pages", "read copies made"),
    ("invalidations", "pages", "read copies dropped by writes"),
    ("throttles", "events", "stalls the policy asked for"),
    ("fallbacks", "pages", "faulted pages the policy left unreachable, completed by the engine"),
    ("dup_unsupported", "pages", "read copies asked of a mechanism that cannot keep them"),
    ("local_lines", "lines", "128-byte lines accessed in the accessor's own memory"),
    ("remote_lines", "lines", "128-byte lines accessed remotely"),
    ("notifications", "events", "access-counter notifications"),
    ("remigrated", "pages", "pages that migrated more than once"),
];

/// The companion of `results.csv`: one row per column, `column,unit,meaning`.
pub fn csv_columns(results: &Results) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["column", "unit", "meaning"]);
    for (c, u, m) in COLUMNS {
        let _ = w.write_record([c, u, m]);
    }
    for p in &processors(results) {
        let _ = w.write_record([format!("{p}_utilisation"), "ratio".into(), format!("{p}'s busy time / sim_ms")]);
    }
    for p in &processors(results) {
        let _ = w.write_record([
            format!("{p}_line_ns"),
            "ns".into(),
            format!("{p}'s cost per 128-byte line in its own memory"),
        ]);
    }
    for l in &links(results) {
        let d = l.trim_start_matches("link");
        let _ = w.write_record([
            format!("{l}_in_mib"),
            "MiB".into(),
            format!("bytes moved into dev{d} over its link (migrations, prefetches, read copies)"),
        ]);
        let _ = w.write_record([
            format!("{l}_out_mib"),
            "MiB".into(),
            format!("bytes moved out of dev{d} over its link (migrations back, evictions, to another device)"),
        ]);
    }
    let _ = w.write_record(["error", "-", "why the point failed (empty when it passed)"]);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// The links the results name (`link0`, ...), in the guest's order.
fn links(results: &Results) -> Vec<String> {
    results
        .values()
        .find_map(|r| {
            r["links"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str().map(String::from)).collect())
        })
        .unwrap_or_default()
}

/// The processors the results name (`cpu0`, `dev0`, ...), in the guest's order.
fn processors(results: &Results) -> Vec<String> {
    results
        .values()
        .find_map(|r| {
            r["procs"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str().map(String::from)).collect())
        })
        .unwrap_or_default()
}

/// The seed each workload's generator gets in point `p`: its `seed` (or the default), plus
/// its index in the point, as the guest computes it (`spec::Point::prepare`).
pub fn point_seeds(p: &Point) -> Vec<u64> {
    let default = hmm::place::workload::COMMON.iter().find(|d| d.name == "seed").map(|d| d.default_value());
    p.workloads
        .iter()
        .enumerate()
        .filter_map(|(i, (_, params))| match params.get("seed").cloned().or(default.clone()) {
            Some(Value::Int(seed)) => Some(seed as u64 + i as u64),
            _ => None,
        })
        .collect()
}

/// The columns of `workloads.csv`: one row per workload of every point (a point of several
/// workloads, or several processes, has a row for each), with what happened to its own pages.
pub const WORKLOAD_COLUMNS: [(&str, &str); 14] = [
    ("point", "point id"),
    ("label", "the point's label"),
    ("policy", "policy name"),
    ("workload", "the workload's label"),
    ("process", "the process (address space) it ran in"),
    ("pages", "its footprint, pages"),
    ("end_ms", "when its last phase ended, simulated ms"),
    ("faults", "device faults and CPU faults on its pages"),
    ("to_dev", "its pages moved system -> device"),
    ("to_cpu", "its pages moved device -> system, evictions included"),
    ("evicted", "its pages evicted (to make room for any workload's)"),
    (
        "alone_ms",
        "with [sweep] alone: when it ended with its process alone (or alone), same policy, ratio and repetition, simulated ms",
    ),
    ("slowdown", "end_ms / alone_ms: what sharing the devices cost it"),
    ("error", "why it stopped early, if it did"),
];

/// When workload `label` of point `i` (all the workloads together) ended without the others, in
/// simulated ns: in the point of its process alone, or of it alone ([`Sweep::alone`]), with
/// point `i`'s policy, ratio and repetition, if there is one with a result.
fn alone_end(l: &Loaded, results: &Results, i: usize, label: &str) -> Option<f64> {
    let (wl, pol, o) = &l.keys[i];
    // Only a point of every workload has a baseline: a point of fewer.
    let all = wl.split('+').count();
    if all < 2 || all != l.exp.workloads.len() {
        return None;
    }
    let (j, k) = (0..l.keys.len()).find_map(|j| {
        let (w, p, x) = &l.keys[j];
        let at = w.split('+').position(|x| x == label)?;
        (w.split('+').count() < all && p == pol && x == o && l.reps.get(j) == l.reps.get(i)).then_some((j, at))
    })?;
    results.get(&l.points[j].id)?["workloads"].get(k)?["end_ns"].as_f64()
}

/// `workloads.csv` ([`WORKLOAD_COLUMNS`]).
pub fn workloads_csv(l: &Loaded, results: &Results) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(WORKLOAD_COLUMNS.iter().map(|c| c.0));
    for (pi, (p, (wl, pol, _))) in l.points.iter().zip(&l.keys).enumerate() {
        let Some(r) = results.get(&p.id) else { continue };
        // The point's workload labels, in its order (joined by '+' for a point of several).
        let labels: Vec<&str> = wl.split('+').collect();
        for (i, x) in r["workloads"].as_array().into_iter().flatten().enumerate() {
            let n = |k: &str| x[k].as_u64().map_or(String::new(), |v| v.to_string());
            let end = x["end_ns"].as_f64();
            let alone = labels.get(i).and_then(|lab| alone_end(l, results, pi, lab));
            let _ = w.write_record([
                p.id.to_string(),
                p.label.clone(),
                pol.clone(),
                labels.get(i).map_or_else(|| x["name"].as_str().unwrap_or("").to_string(), |s| s.to_string()),
                n("process"),
                n("pages"),
                x["end_ns"].as_f64().map_or(String::new(), |v| format!("{:.3}", v / 1e6)),
                n("faults"),
                n("to_dev"),
                n("to_cpu"),
                n("evicted"),
                alone.map_or(String::new(), |v| format!("{:.3}", v / 1e6)),
                match (end, alone) {
                    (Some(e), Some(a)) if a > 0.0 => format!("{:.3}", e / a),
                    _ => String::new(),
                },
                x["error"].as_str().unwrap_or("").to_string(),
            ]);
        }
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// CSV of the results, quoted by the csv crate (a label with a comma or a quote stays one
/// field); the columns are [`COLUMNS`] (whose counters are the guest's, in order), then each
/// processor's utilisation and line cost, then the MiB moved in and out over each link, then
/// the error.
pub fn csv(l: &Loaded, results: &Results) -> String {
    let counters = hmm::place::spec::counter_names();
    let procs = processors(results);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = COLUMNS.iter().map(|c| c.0.to_string()).collect();
    header.extend(procs.iter().map(|p| format!("{p}_utilisation")));
    header.extend(procs.iter().map(|p| format!("{p}_line_ns")));
    let links = links(results);
    for l in &links {
        header.push(format!("{l}_in_mib"));
        header.push(format!("{l}_out_mib"));
    }
    header.push("error".into());
    let _ = w.write_record(&header);
    for (i, (p, (wl, pol, o))) in l.points.iter().zip(&l.keys).enumerate() {
        let r = results.get(&p.id).cloned().unwrap_or(Json::Null);
        let ms = |k: &str| r[k].as_f64().map_or(String::new(), |x| format!("{:.3}", x / 1e6));
        let seeds: Vec<String> = point_seeds(p).iter().map(u64::to_string).collect();
        let mut row = vec![
            p.id.to_string(),
            p.label.clone(),
            wl.clone(),
            pol.clone(),
            r["scheduler"]
                .as_str()
                .map_or_else(|| p.run.get("scheduler").map_or(String::new(), |v| format!("{v}")), String::from),
            o.to_string(),
            l.reps.get(i).map_or(String::new(), |r| r.to_string()),
            seeds.join("+"),
            r["mechanism"].as_str().unwrap_or("").to_string(),
            ms("sim_ns"),
            ms("mechanism_ns"),
            ms("transfer_ns"),
        ];
        row.extend(counters.iter().map(|c| r[*c].as_u64().map_or(String::new(), |v| v.to_string())));
        let proc_field = |name: &str, k: &str| {
            r["procs"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"].as_str() == Some(name)))
                .and_then(|x| x[k].as_f64())
        };
        row.extend(procs.iter().map(|n| proc_field(n, "utilisation").map_or(String::new(), |u| format!("{u:.4}"))));
        row.extend(procs.iter().map(|n| proc_field(n, "line_ns").map_or(String::new(), |v| format!("{v:.2}"))));
        for l in &links {
            let link = r["links"].as_array().and_then(|a| a.iter().find(|x| x["name"].as_str() == Some(l)));
            for k in ["in_bytes", "out_bytes"] {
                row.push(
                    link.and_then(|x| x[k].as_u64()).map_or(String::new(), |b| format!("{:.3}", b as f64 / 1048576.0)),
                );
            }
        }
        let mut err = r["error"].as_str().map(String::from);
        if err.is_none() {
            err = r["workloads"].as_array().and_then(|a| a.iter().find_map(|w| w["error"].as_str().map(String::from)));
        }
        if !results.contains_key(&p.id) {
            err = Some("no result (the point did not run, or did not finish)".into());
        }
        row.push(err.unwrap_or_default());
        let _ = w.write_record(&row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn sim_ms(results: &Results, id: u32) -> Option<f64> {
    results.get(&id).and_then(|r| r["sim_ns"].as_f64()).map(|x| x / 1e6)
}

/// The per-point table's column headers.
const SUMMARY_COLUMNS: [&str; 10] =
    ["workload", "policy", "over", "sim ms", "mech ms", "faults", "to dev", "evicted", "to cpu", "remote%"];

/// What the per-point table shows of one point, the parts both renderings share: the text of
/// [`summary`] (summary.txt) and the terminal's ([`summary_terminal`]).
struct SummaryLine<'a> {
    point: &'a Point,
    workload: &'a str,
    policy: &'a str,
    over: f64,
    measured: Measured,
    /// The lines under the point.
    notes: Vec<Note>,
}

/// A point's measured columns (sim ms to remote%, formatted), or why it has none.
enum Measured {
    Cells([String; 7]),
    Error(String),
    Missing,
}

/// A line under a point in the per-point table.
enum Note {
    /// A workload of the point stopped (its name, its error).
    Stopped(String, String),
    /// Why the point ran in a fresh guest.
    Rerun(String),
    /// The trace passed the cap: events kept, dropped.
    Trace(u64, u64),
    /// One workload's share of a point of several: label, process, faults, pages to the
    /// device, evicted, end (simulated ms), and its end over its end running alone.
    Share(String, u64, u64, u64, u64, f64, Option<f64>),
}

impl Note {
    /// The note's text; `whole` keeps a rerun note whole (the text cuts it to 110 characters).
    fn text(&self, whole: bool) -> String {
        match self {
            Note::Stopped(w, e) => format!("workload {w} stopped: {e}"),
            Note::Share(w, p, f, d, e, end, slow) => {
                let alone = slow.map(|x| format!(" ({x:.2}x its time alone)")).unwrap_or_default();
                format!("{w} (process {p}): {f} faults, {d} pages to devices, {e} evicted, ends at {end:.2} ms{alone}")
            }
            Note::Rerun(n) if whole => format!("({n})"),
            Note::Rerun(n) => format!("({})", truncate(n, 110)),
            Note::Trace(kept, d) => {
                format!(
                    "trace truncated: the first {kept} events kept, {d} dropped at the cap (raise run.trace to keep them)"
                )
            }
        }
    }
}

/// The per-point table's lines, in point order.
fn summary_lines<'a>(l: &'a Loaded, results: &Results) -> Vec<SummaryLine<'a>> {
    let mut out = Vec::new();
    for (pi, (point, (workload, policy, over))) in l.points.iter().zip(&l.keys).enumerate() {
        let mut line =
            SummaryLine { point, workload, policy, over: *over, measured: Measured::Missing, notes: Vec::new() };
        let Some(r) = results.get(&point.id) else {
            out.push(line);
            continue;
        };
        let rerun = r["rerun"].as_str().map(|n| Note::Rerun(n.to_string()));
        if let Some(e) = r["error"].as_str() {
            line.measured = Measured::Error(e.to_string());
            line.notes.extend(rerun);
            out.push(line);
            continue;
        }
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let lines = n("local_lines") + n("remote_lines");
        let remote = if lines > 0 { 100.0 * n("remote_lines") as f64 / lines as f64 } else { 0.0 };
        line.measured = Measured::Cells([
            format!("{:.2}", r["sim_ns"].as_f64().unwrap_or(0.0) / 1e6),
            format!("{:.1}", r["mechanism_ns"].as_f64().unwrap_or(0.0) / 1e6),
            (n("dev_faults") + n("cpu_faults")).to_string(),
            n("to_dev").to_string(),
            n("evicted").to_string(),
            n("to_cpu").to_string(),
            format!("{remote:.1}"),
        ]);
        let wls = r["workloads"].as_array().map_or(&[][..], |a| a.as_slice());
        if wls.len() > 1 && workload.split('+').count() == wls.len() {
            // A point of several workloads (competing, perhaps as separate processes): each
            // one's share, under its label.
            for (label, w) in workload.split('+').zip(wls) {
                let n = |k: &str| w[k].as_u64().unwrap_or(0);
                let end_ns = w["end_ns"].as_f64().unwrap_or(0.0);
                let slow = alone_end(l, results, pi, label).filter(|a| *a > 0.0).map(|a| end_ns / a);
                line.notes.push(Note::Share(
                    label.to_string(),
                    n("process"),
                    n("faults"),
                    n("to_dev"),
                    n("evicted"),
                    end_ns / 1e6,
                    slow,
                ));
            }
        }
        for w in wls {
            if let Some(e) = w["error"].as_str() {
                line.notes.push(Note::Stopped(w["name"].as_str().unwrap_or("?").to_string(), e.to_string()));
            }
        }
        line.notes.extend(rerun);
        if let Some(d) = r["trace_dropped"].as_u64().filter(|d| *d > 0) {
            line.notes.push(Note::Trace(r["trace_events"].as_u64().unwrap_or(0), d));
        }
        out.push(line);
    }
    out
}

/// The per-point table as summary.txt holds it: one row per point in fixed-width columns (names
/// cut to fit, but on a row without results), the notes indented under their point.
pub fn summary(l: &Loaded, results: &Results) -> String {
    let [w, p, o, sim, mech, faults, to_dev, evicted, to_cpu, remote] = SUMMARY_COLUMNS;
    let mut s = format!(
        "{w:<28} {p:<16} {o:>6} {sim:>11} {mech:>10} {faults:>8} {to_dev:>8} {evicted:>8} {to_cpu:>8} {remote:>7}\n"
    );
    for line in summary_lines(l, results) {
        let (w, pol, o) = (line.workload, line.policy, line.over);
        match &line.measured {
            Measured::Missing => {
                let _ = writeln!(s, "{w:<28} {pol:<16} {o:>6} (no result)");
            }
            Measured::Error(e) => {
                let _ = writeln!(s, "{w:<28} {pol:<16} {o:>6} error: {e}");
            }
            Measured::Cells([sim, mech, faults, to_dev, evicted, to_cpu, remote]) => {
                let _ = writeln!(
                    s,
                    "{:<28} {:<16} {o:>6} {sim:>11} {mech:>10} {faults:>8} {to_dev:>8} {evicted:>8} {to_cpu:>8} {remote:>7}",
                    truncate(w, 28),
                    truncate(pol, 16),
                );
            }
        }
        for n in &line.notes {
            let _ = writeln!(s, "    {}", n.text(false));
        }
    }
    s
}

/// The per-point table as the terminal gets it: the same rows as [`summary`], drawn by
/// comfy-table with whole names and columns as wide as their cells; a point without results
/// says `error` or `no result` in its first measured column, and the notes follow the table,
/// each after its point's label (the error first, then the notes whole).
pub fn summary_terminal(l: &Loaded, results: &Results) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(SUMMARY_COLUMNS);
    let mut notes = Vec::new();
    for line in summary_lines(l, results) {
        let label = &line.point.label;
        let measured: Vec<String> = match line.measured {
            Measured::Cells(c) => c.into(),
            Measured::Error(e) => {
                notes.push(format!("{label}: error: {e}"));
                std::iter::once("error".to_string()).chain(std::iter::repeat_n("-".to_string(), 6)).collect()
            }
            Measured::Missing => {
                std::iter::once("no result".to_string()).chain(std::iter::repeat_n("-".to_string(), 6)).collect()
            }
        };
        notes.extend(line.notes.iter().map(|n| format!("{label}: {}", n.text(true))));
        let key = [line.workload.to_string(), line.policy.to_string(), line.over.to_string()];
        table.add_row(key.into_iter().chain(measured));
    }
    for c in table.column_iter_mut().skip(2) {
        c.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    let mut s: String = table.lines().map(|line| line + "\n").collect();
    for n in notes {
        let _ = writeln!(s, "  {n}");
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.into() } else { s.chars().take(n - 1).collect::<String>() + "…" }
}

/// What the mechanism's measured time is, in the words of the run's last line and the plots:
/// the host's time with `--host`, TCG's in QEMU.
pub fn mechanism_time(results: &Results) -> &'static str {
    if results.values().any(|r| r["mechanism"].as_str() == Some("host")) {
        "host time of the mechanism"
    } else {
        "TCG time of the real mechanism"
    }
}

/// A Chrome / Perfetto trace of the traced points: one process per point, one thread per
/// processor or link, complete events in µs of simulated time. Times are whole nanoseconds
/// (the guest's are to 0.1 ns), written as µs with three decimals, and the slices on one
/// track nest: a slice that starts inside another and would end after it (by rounding, or
/// because the engine's phases overlap a little) is cut at the other's end, so no two slices
/// of a track partly overlap. A point whose events passed the cap (`run.trace`; its result's
/// `trace_dropped`) gets an instant event saying how many were dropped, and its process name
/// says it is truncated.
pub fn trace(l: &Loaded, results: &Results, events: &[Json]) -> String {
    // (start, end) in ns per track, and the slice's fields.
    struct Slice {
        start: u64,
        end: u64,
        name: String,
        kind: String,
        pages: Json,
    }
    let ns = |v: &Json| v.as_f64().map_or(0, |x| (x.max(0.0)).round() as u64);
    let mut tracks: BTreeMap<(u64, String), Vec<Slice>> = BTreeMap::new();
    let mut order: Vec<(u64, String)> = Vec::new();
    for e in events {
        let pid = e["point"].as_u64().unwrap_or(0);
        let lane = e["lane"].as_str().unwrap_or("?").to_string();
        let what = e["what"].as_str().unwrap_or("");
        let kind = e["kind"].as_str().unwrap_or("?").to_string();
        let name = if what.is_empty() { kind.clone() } else { format!("{kind} {what}") };
        let start = ns(&e["t"]);
        // At least 1 ns, so every slice shows.
        let end = (start + ns(&e["dur"])).max(start + 1);
        let key = (pid, lane);
        if !tracks.contains_key(&key) {
            order.push(key.clone());
        }
        tracks.entry(key).or_default().push(Slice { start, end, name, kind, pages: e["pages"].clone() });
    }
    let us = |t: u64| Json::from(t as f64 / 1000.0);
    let mut out = Vec::new();
    for (tid, key) in order.iter().enumerate() {
        let tid = tid + 1;
        let slices = tracks.get_mut(key).unwrap();
        // Outer slices first: by start, then the longest.
        slices.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
        let mut open: Vec<u64> = Vec::new();
        for s in slices.iter_mut() {
            while open.last().is_some_and(|&end| end <= s.start) {
                open.pop();
            }
            if let Some(&end) = open.last() {
                s.end = s.end.min(end);
            }
            open.push(s.end);
            out.push(serde_json::json!({
                "name": s.name, "cat": s.kind, "ph": "X", "pid": key.0, "tid": tid,
                "ts": us(s.start), "dur": us(s.end - s.start), "args": { "pages": s.pages }
            }));
        }
        out.push(
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": key.0, "tid": tid, "args": {"name": key.1}}),
        );
    }
    let pids: std::collections::BTreeSet<u64> = order.iter().map(|k| k.0).collect();
    for pid in pids {
        let label = l.points.get(pid as usize).map_or(String::new(), |p| p.label.clone());
        let r = results.get(&(pid as u32));
        let dropped = r.and_then(|r| r["trace_dropped"].as_u64()).unwrap_or(0);
        let label = if dropped > 0 {
            let kept = r.and_then(|r| r["trace_events"].as_u64()).unwrap_or(0);
            let end = tracks.iter().filter(|(k, _)| k.0 == pid).flat_map(|(_, v)| v.iter().map(|s| s.end)).max();
            out.push(serde_json::json!({
                "name": format!("trace truncated: {dropped} events dropped after the first {kept} (raise run.trace)"),
                "ph": "i", "s": "p", "pid": pid, "tid": 0, "ts": us(end.unwrap_or(0)),
            }));
            format!("{label} (truncated: {dropped} events dropped)")
        } else {
            label
        };
        out.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": label}}));
    }
    serde_json::json!({ "traceEvents": out, "displayTimeUnit": "ms" }).to_string()
}

/// The points whose trace passed its cap: (point id, events kept, events dropped).
pub fn truncated_traces(results: &Results) -> Vec<(u32, u64, u64)> {
    results
        .iter()
        .filter_map(|(id, r)| {
            let dropped = r["trace_dropped"].as_u64().filter(|d| *d > 0)?;
            Some((*id, r["trace_events"].as_u64().unwrap_or(0), dropped))
        })
        .collect()
}

/// The folder of the experiment's runs (`target/experiments/NAME`): one folder per run
/// beside a `latest` link ([`crate::run`]).
pub fn out_dir(root: &Path, l: &Loaded) -> PathBuf {
    root.join("target/experiments").join(l.exp.name.get_ref())
}

pub mod agree;
pub mod plot;
pub use plot::plots;
pub mod plan;
pub mod tables;
pub use tables::{TableSpec, comparisons, comparisons_terminal, reproduction, verdicts};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;
#[cfg(test)]
mod validate_tests;
